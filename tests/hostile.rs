//! Hostile and broken configs, one row each: what `atomic-preload validate` prints, exactly.
//! The same table is in the README (between the `hostile-inputs` markers); this test fails
//! if the two differ, and prints the table to paste.

use std::fs;
use std::path::Path;
use std::process::Command;

enum Input {
    Text(&'static str),
    Bytes(&'static [u8]),
    /// Set up the file system at `config.yaml` in the given directory.
    Setup(fn(&Path)),
}

struct Row {
    what: &'static str,
    input: Input,
    /// validate's output, one problem per line, `FILE` = config.yaml; "" = valid.
    says: &'static str,
}

fn long_name() -> String {
    format!("- name: {}\n  image: x\n", "a".repeat(300))
}

fn rows() -> Vec<Row> {
    use Input::*;
    vec![
        Row { what: "name of the wrong type", input: Text("- {name: [a], image: x}\n"), says: "config.yaml:1:10: \"name\" must be a string, found a list" },
        Row { what: "run that is a list", input: Text("- {name: ab, image: x, run: [a]}\n"), says: "config.yaml:1:29: \"run\" must be a mapping, found a list" },
        Row { what: "spc that is a string", input: Text("- {name: ab, image: x, run: {spc: \"yes\"}}\n"), says: "config.yaml:1:35: \"spc\" must be true or false, found a string" },
        Row { what: "extra_args that is a string", input: Text("- {name: ab, image: x, run: {extra_args: sleep}}\n"), says: "config.yaml:1:42: \"extra_args\" must be a list, found a string" },
        Row { what: "a boolean argument", input: Text("- {name: ab, image: x, run: {extra_args: [true]}}\n"), says: "config.yaml:1:43: items of \"extra_args\" must be strings, found a boolean (write \"true\" in quotes)" },
        Row { what: "unknown key (typo)", input: Text("- {name: ab, image: x, rnu: {}}\n"), says: "config.yaml:1:24: unknown key \"rnu\" in an entry (known keys: name, image, archive, engine, install, run, before_kubelet)" },
        Row { what: "unknown key in run", input: Text("- {name: ab, image: x, run: {net: host}}\n"), says: "config.yaml:1:30: unknown key \"net\" in \"run\" (known keys: spc, extra_args)" },
        Row { what: "unknown key in install", input: Text("- {name: ab, image: x, install: {set: [A=1]}}\n"), says: "config.yaml:1:34: unknown key \"set\" in \"install\" (known keys: system, user, remote, setvalues, extra_args)" },
        Row { what: "duplicate key", input: Text("- name: ab\n  image: x\n  image: y\n"), says: "config.yaml:3:3: duplicate key \"image\" in an entry (first at line 2, column 10)" },
        Row { what: "name with /", input: Text("- {name: a/b, image: x}\n"), says: "config.yaml:1:10: \"name\" must match [a-zA-Z0-9][a-zA-Z0-9_.-]+ (Docker's container-name rule, at most 200 characters), found \"a/b\"" },
        Row { what: "name ..", input: Text("- {name: .., image: x}\n"), says: "config.yaml:1:10: \"name\" must match [a-zA-Z0-9][a-zA-Z0-9_.-]+ (Docker's container-name rule, at most 200 characters), found \"..\"" },
        Row { what: "name with spaces", input: Text("- {name: my app, image: x}\n"), says: "config.yaml:1:10: \"name\" must match [a-zA-Z0-9][a-zA-Z0-9_.-]+ (Docker's container-name rule, at most 200 characters), found \"my app\"" },
        Row {
            what: "name of 300 characters",
            input: Setup(|d| fs::write(d.join("config.yaml"), long_name()).unwrap()),
            says: format!("config.yaml:1:9: \"name\" must match [a-zA-Z0-9][a-zA-Z0-9_.-]+ (Docker's container-name rule, at most 200 characters), found \"{}\"", "a".repeat(300)).leak(),
        },
        Row { what: "no name", input: Text("- {image: x}\n"), says: "config.yaml:1:3: entry has no \"name\"" },
        Row { what: "no image", input: Text("- {name: ab}\n"), says: "config.yaml:1:3: entry has no \"image\" (give it one; put it after an entry named \"ab\", whose image it then keeps; or stage it with the one archive that holds its image)" },
        Row { what: "no image, after an entry of that name (accepted: keeps its image)", input: Text("- {name: ab, image: x, run: {}}\n- {name: ab, install: {setvalues: [A=1]}}\n"), says: "" },
        Row { what: "image that looks like an option", input: Text("- {name: ab, image: --privileged}\n"), says: "config.yaml:1:21: \"image\" must not start with '-', found \"--privileged\"" },
        Row { what: "image with a space", input: Text("- {name: ab, image: \"a b\"}\n"), says: "config.yaml:1:21: \"image\" must be an image reference like registry/repo:tag, found \"a b\" (character ' ' is not allowed)" },
        Row { what: "NUL in an argument", input: Text("- {name: ab, image: x, run: {extra_args: [\"a\\0b\"]}}\n"), says: "config.yaml:1:43: \"extra_args\" contains a NUL character, which cannot be passed to a program" },
        Row { what: "newline and tab in an argument (accepted, escaped in the unit)", input: Text("- {name: ab, image: x, run: {extra_args: [\"a\\nb\\tc\"]}}\n"), says: "" },
        Row { what: "setvalues item without =", input: Text("- {name: ab, image: x, install: {setvalues: [FOO]}}\n"), says: "config.yaml:1:46: \"setvalues\" items must look like KEY=VALUE with KEY a variable name, found \"FOO\"" },
        Row { what: "setvalues with a bad key", input: Text("- {name: ab, image: x, install: {setvalues: [\"1X=a\"]}}\n"), says: "config.yaml:1:46: \"setvalues\" items must look like KEY=VALUE with KEY a variable name, found \"1X=a\"" },
        Row { what: "system container (accepted)", input: Text("- {name: ab, image: x, install: {system: true}}\n"), says: "" },
        Row { what: "run.spc on a system container", input: Text("- {name: ab, image: x, install: {system: true}, run: {spc: true}}\n"), says: "config.yaml:1:60: run.spc does not apply to system containers (the image's config.json sets their privileges)" },
        Row { what: "system container named after a unit it would override (`preload-*`, `atomic-preload*`, `docker`, `containerd`, `podman`, `crio`, `cri-o`, `kubelet`, `runc`, `systemd-*`, `dbus`)", input: Text("- {name: preload-web, image: x, install: {system: true}}\n"), says: "config.yaml:1:10: a system container cannot be named \"preload-web\": it would install /etc/systemd/system/preload-web.service, overriding the unit atomic-preload generates for an entry named \"web\"" },
        Row { what: "user container", input: Text("- {name: ab, image: x, install: {user: true}}\n"), says: "config.yaml:1:40: install.user (rootless containers of a login user) is not supported: preloaded containers are system services started at boot; use install.system" },
        Row { what: "archive escaping the preload dir", input: Text("- {name: ab, image: x, archive: ../../etc/x.tar}\n"), says: "config.yaml:1:33: \"archive\" must be a file name in docker/ (ostree/ for system containers), not a path: \"../../etc/x.tar\"" },
        Row { what: "archive as an absolute path", input: Text("- {name: ab, image: x, archive: /etc/x.tar}\n"), says: "config.yaml:1:33: \"archive\" must be a file name in docker/ (ostree/ for system containers), not a path: \"/etc/x.tar\"" },
        Row { what: "archive with an unknown suffix", input: Text("- {name: ab, image: x, archive: x.zip}\n"), says: "config.yaml:1:33: \"archive\" \"x.zip\" does not end in one of .tar, .tar.gz, .tgz, .tar.xz, .tar.zst, .tar.bz2" },
        Row { what: "archive that is a hidden file", input: Text("- {name: ab, image: x, archive: ..tar}\n"), says: "config.yaml:1:33: \"archive\" must not start with '.' (the load stage skips hidden files): \"..tar\"" },
        Row {
            what: "archive name of 300 characters",
            input: Setup(|d| fs::write(d.join("config.yaml"), format!("- {{name: ab, image: x, archive: {}.tar}}\n", "a".repeat(296))).unwrap()),
            says: "config.yaml:1:33: \"archive\" is longer than 200 bytes: \"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"…",
        },
        Row { what: "archive that looks like an option (accepted: written as `--archive=-h.tar`)", input: Text("- {name: ab, image: x, archive: -h.tar}\n"), says: "" },
        Row { what: "top level that is not a list", input: Text("name: ab\nimage: x\n"), says: "config.yaml:1:1: the config must be a list of entries (\"- name: ...\"), found a mapping" },
        Row { what: "YAML syntax error", input: Text("- {name: ab, image: [x}\n"), says: "config.yaml:1:21: invalid YAML: mismatched bracket '[' closed by '}'" },
        Row { what: "tab indentation", input: Text("- name: ab\n\timage: x\n"), says: "config.yaml:1:9: invalid YAML: while scanning a plain scalar, found a tab" },
        Row { what: "alias bomb", input: Text("a: &a [x,x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: [*e,*e,*e,*e,*e,*e,*e,*e,*e,*e]\n"), says: "config.yaml:5:14: invalid YAML: alias replay limit exceeded: total_replayed_events=50001 > 50000" },
        Row { what: "non-UTF-8 bytes", input: Bytes(b"- name: ab\n  image: \xff\n"), says: "config.yaml:2:10: the file is not valid UTF-8" },
        Row { what: "UTF-8 byte order mark (accepted)", input: Bytes(b"\xef\xbb\xbf- {name: ab, image: x}\n"), says: "" },
        Row { what: "empty file (accepted: no containers)", input: Text(""), says: "" },
        Row { what: "config that is a directory", input: Setup(|d| fs::create_dir(d.join("config.yaml")).unwrap()), says: "config.yaml: cannot read the config: not a regular file" },
        Row { what: "symlink loop", input: Setup(|d| std::os::unix::fs::symlink("config.yaml", d.join("config.yaml")).unwrap()), says: "config.yaml: cannot read the config: Too many levels of symbolic links (os error 40)" },
        Row { what: "unreadable (a path through a file)", input: Setup(|d| { fs::write(d.join("file"), "").unwrap(); std::os::unix::fs::symlink("file/config.yaml", d.join("config.yaml")).unwrap() }), says: "config.yaml: cannot read the config: Not a directory (os error 20)" },
        Row { what: "larger than 4 MiB", input: Setup(|d| fs::write(d.join("config.yaml"), "#".repeat(5 << 20)).unwrap()), says: "config.yaml: the config is larger than 4194304 bytes" },
    ]
}

fn markdown(rows: &[Row]) -> String {
    let mut t =
        String::from("| input | `atomic-preload validate config.yaml` prints |\n|---|---|\n");
    for row in rows {
        let says = if row.says.is_empty() {
            "(nothing: valid, exit 0)".to_owned()
        } else {
            format!("`{}`", row.says.replace('|', "\\|"))
        };
        let says = if says.len() > 200 {
            format!("{}…`", &says[..160])
        } else {
            says
        };
        t.push_str(&format!("| {} | {says} |\n", row.what));
    }
    t
}

#[test]
fn every_hostile_input_gets_its_exact_message() {
    let rows = rows();
    assert!(rows.len() >= 25);
    let mut wrong = Vec::new();
    for row in &rows {
        let dir = tempfile::tempdir().unwrap();
        match &row.input {
            Input::Text(t) => fs::write(dir.path().join("config.yaml"), t).unwrap(),
            Input::Bytes(b) => fs::write(dir.path().join("config.yaml"), b).unwrap(),
            Input::Setup(f) => f(dir.path()),
        }
        let out = Command::new(env!("CARGO_BIN_EXE_atomic-preload"))
            .args(["validate", "config.yaml"])
            .current_dir(dir.path())
            .output()
            .unwrap();
        let printed = String::from_utf8_lossy(&out.stdout).trim_end().to_owned();
        let code = out.status.code();
        let expected_code = if row.says.is_empty() {
            Some(0)
        } else {
            Some(1)
        };
        if printed != row.says || code != expected_code {
            wrong.push(format!(
                "{}:\n  expected {:?} ({expected_code:?})\n  printed  {printed:?} ({code:?})",
                row.what, row.says
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn readme_lists_the_same_table() {
    let readme = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let table = markdown(&rows());
    assert!(
        readme.contains(&table),
        "README.md's hostile-inputs table is out of date; it should be:\n{table}"
    );
}
