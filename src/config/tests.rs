use super::*;

fn effective(text: &str) -> Effective {
    parse(text.as_bytes()).effective()
}

/// Every problem as the user sees it.
fn problems(text: &str) -> Vec<String> {
    effective(text)
        .all_problems()
        .iter()
        .map(|p| p.display("c.yaml").to_string())
        .collect()
}

fn valid(text: &str) -> Vec<Entry> {
    let eff = effective(text);
    assert_eq!(eff.all_problems(), Vec::<&Problem>::new(), "{text}");
    eff.items
        .into_iter()
        .map(|n| match n {
            Named::Valid(e) => e,
            Named::Invalid { .. } => unreachable!(),
        })
        .collect()
}

#[test]
fn original_readme_example() {
    let text = "\
- name: busybox_sleep
  image: docker.io/busybox
  run:
    extra_args:
      - sleep
      - \"999\"

- name: etcd
  image: docker.io/gscrivano/etcd
  install:
    system: true
    setvalues:
      - ETCD_NAME=myetcd
  run: {} # use default vars
";
    let eff = effective(text);
    assert_eq!(eff.items.len(), 2);
    let Named::Valid(busybox) = &eff.items[0] else {
        panic!("{:?}", eff.items[0])
    };
    assert_eq!(busybox.run.as_ref().unwrap().extra_args, ["sleep", "999"]);
    assert_eq!(busybox.install, None);
    let Named::Valid(etcd) = &eff.items[1] else {
        panic!("{:?}", eff.items[1])
    };
    assert!(etcd.is_system() && !busybox.is_system());
    assert_eq!(
        etcd.install.as_ref().unwrap().setvalues,
        ["ETCD_NAME=myetcd"]
    );
    assert!(problems(text).is_empty());
}

#[test]
fn every_key() {
    let entries = valid(
        "\
- name: all.keys-1
  image: registry.example:5000/team/app@sha256:abc
  archive: [app.tar.gz, base.tar]
  engine: podman
  install:
    system: false
    user: false
    setvalues: [A=1, B_2=x=y, C=]
    extra_args: [--force, 2]
  run:
    spc: true
    extra_args: [--flag=a b, 999, 1.5, 0x10, 1e3, -0, 007]
- name: single-archive
  image: x
  archive: one.tar.zst
",
    );
    assert_eq!(
        entries[0],
        Entry {
            name: "all.keys-1".into(),
            image: "registry.example:5000/team/app@sha256:abc".into(),
            archives: vec!["app.tar.gz".into(), "base.tar".into()],
            install: Some(Install {
                system: false,
                user: false,
                remote: None,
                setvalues: vec!["A=1".into(), "B_2=x=y".into(), "C=".into()],
                extra_args: vec!["--force".into(), "2".into()],
            }),
            run: Some(Run {
                spc: true,
                extra_args: ["--flag=a b", "999", "1.5", "0x10", "1e3", "-0", "007"]
                    .map(String::from)
                    .into()
            }),
            engine: Some(EngineKind::Podman),
            before_kubelet: true,
        }
    );
    assert_eq!(entries[1].archives, ["one.tar.zst"]);
    assert_eq!(entries[1].engine, None);
}

#[test]
fn run_and_install_presence() {
    let e = valid(
        "- {name: ab, image: x}\n- {name: cd, image: x, run: {}}\n- {name: ef, image: x, run: , install: }\n",
    );
    assert_eq!((e[0].run.is_some(), e[0].install.is_some()), (false, false));
    assert_eq!(e[1].run, Some(Run::default()));
    assert_eq!((e[2].run.is_some(), e[2].install.is_some()), (true, true));
}

#[test]
fn later_entry_replaces_earlier_entirely() {
    let e = valid(
        "- name: app\n  image: x\n  run: {extra_args: [a]}\n  install: {}\n- name: other\n  image: y\n- name: app\n  image: z\n",
    );
    assert_eq!(e.len(), 2);
    assert_eq!(
        e[0],
        Entry {
            name: "app".into(),
            image: "z".into(),
            archives: vec![],
            install: None,
            run: None,
            engine: None,
            before_kubelet: true,
        }
    );
}

#[test]
fn invalid_override_replaces_valid_entry_and_keeps_others() {
    let eff = effective(
        "- {name: app, image: x}\n- {name: app, image: x, typo: 1}\n- {name: ok, image: y}\n",
    );
    assert_eq!(eff.items.len(), 2);
    assert!(matches!(&eff.items[0], Named::Invalid { name, .. } if name == "app"));
    assert!(matches!(&eff.items[1], Named::Valid(e) if e.name == "ok"));
    assert_eq!(
        problems("- {name: app, image: x}\n- {name: app, image: x, typo: 1}\n"),
        [
            "c.yaml:2:25: unknown key \"typo\" in an entry (known keys: name, image, archive, engine, install, run, before_kubelet)"
        ]
    );
}

#[test]
fn empty_and_comment_only_configs_have_no_entries() {
    for text in ["", "\n", "# nothing\n", "---\n", "~\n", "\u{feff}"] {
        assert_eq!(effective(text), Effective::default(), "{text:?}");
    }
}

#[test]
fn messages_point_at_line_and_column() {
    let cases: &[(&str, &str)] = &[
        (
            "foo: bar\n",
            "c.yaml:1:1: the config must be a list of entries (\"- name: ...\"), found a mapping",
        ),
        (
            "- name: a\n  image: [\n",
            "c.yaml:2:10: invalid YAML: unclosed bracket '['",
        ),
        (
            "- just a string\n",
            "c.yaml:1:3: an entry must be a mapping, found a string",
        ),
        ("- image: x\n", "c.yaml:1:3: entry has no \"name\""),
        (
            "- name: ab\n",
            "c.yaml:1:3: entry has no \"image\" (give it one; put it after an entry named \"ab\", whose image it then keeps; or stage it with the one archive that holds its image)",
        ),
        (
            "- name: a b\n  image: x\n",
            "c.yaml:1:9: \"name\" must match [a-zA-Z0-9][a-zA-Z0-9_.-]+ (Docker's container-name rule, at most 200 characters), found \"a b\"",
        ),
        (
            "- name: ../x\n  image: x\n",
            "c.yaml:1:9: \"name\" must match [a-zA-Z0-9][a-zA-Z0-9_.-]+ (Docker's container-name rule, at most 200 characters), found \"../x\"",
        ),
        (
            "- name: preload-web\n  image: x\n  install: {system: true}\n",
            "c.yaml:1:9: a system container cannot be named \"preload-web\": it would install /etc/systemd/system/preload-web.service, overriding the unit atomic-preload generates for an entry named \"web\"",
        ),
        (
            "- name: atomic-preload-refresh\n  image: x\n  install: {system: true}\n",
            "c.yaml:1:9: a system container cannot be named \"atomic-preload-refresh\": it would install /etc/systemd/system/atomic-preload-refresh.service, overriding one of atomic-preload's own units",
        ),
        (
            "- name: docker\n  image: x\n  install: {system: true}\n",
            "c.yaml:1:9: a system container cannot be named \"docker\": it would install /etc/systemd/system/docker.service, overriding the docker unit of the host",
        ),
        (
            "- name: systemd-journald\n  image: x\n  install: {system: true}\n",
            "c.yaml:1:9: a system container cannot be named \"systemd-journald\": it would install /etc/systemd/system/systemd-journald.service, overriding one of systemd's own units",
        ),
        (
            "- name: [a]\n  image: x\n",
            "c.yaml:1:9: \"name\" must be a string, found a list",
        ),
        (
            "- name: ab\n  image: -x\n",
            "c.yaml:2:10: \"image\" must not start with '-', found \"-x\"",
        ),
        (
            "- name: ab\n  image: \"a b\"\n",
            "c.yaml:2:10: \"image\" must be an image reference like registry/repo:tag, found \"a b\" (character ' ' is not allowed)",
        ),
        (
            "- name: ab\n  image: x\n  name: cd\n",
            "c.yaml:3:3: duplicate key \"name\" in an entry (first at line 1, column 9)",
        ),
        (
            "- name: ab\n  image: x\n  run: {spc: yes}\n",
            "c.yaml:3:14: \"spc\" must be true or false, found a string",
        ),
        (
            "- name: ab\n  image: x\n  run: {extra_args: sleep}\n",
            "c.yaml:3:21: \"extra_args\" must be a list, found a string",
        ),
        (
            "- name: ab\n  image: x\n  run: {extra_args: [true]}\n",
            "c.yaml:3:22: items of \"extra_args\" must be strings, found a boolean (write \"true\" in quotes)",
        ),
        (
            "- name: ab\n  image: x\n  run: {extra_args: [\"a\\0b\"]}\n",
            "c.yaml:3:22: \"extra_args\" contains a NUL character, which cannot be passed to a program",
        ),
        (
            "- name: ab\n  image: x\n  run: [a]\n",
            "c.yaml:3:8: \"run\" must be a mapping, found a list",
        ),
        (
            "- name: ab\n  image: x\n  run: {spc: true, net: host}\n",
            "c.yaml:3:20: unknown key \"net\" in \"run\" (known keys: spc, extra_args)",
        ),
        (
            "- name: ab\n  image: x\n  install: {setvalues: [FOO]}\n",
            "c.yaml:3:25: \"setvalues\" items must look like KEY=VALUE with KEY a variable name, found \"FOO\"",
        ),
        (
            "- name: ab\n  image: x\n  install: {setvalues: [1X=a]}\n",
            "c.yaml:3:25: \"setvalues\" items must look like KEY=VALUE with KEY a variable name, found \"1X=a\"",
        ),
        (
            "- name: ab\n  image: x\n  install: {user: true}\n",
            "c.yaml:3:19: install.user (rootless containers of a login user) is not supported: preloaded containers are system services started at boot; use install.system",
        ),
        (
            "- name: ab\n  image: x\n  install: {remote: /srv/rootfs}\n",
            "c.yaml:3:21: install.remote (a rootfs kept outside the image) is not supported: a preloaded archive carries its rootfs; use install.system",
        ),
        (
            "- name: ab\n  image: x\n  install: {system: true, extra_args: [-x]}\n",
            "c.yaml:3:39: install.extra_args does not apply to system containers (their templates take install.setvalues)",
        ),
        (
            "- name: ab\n  image: x\n  install: {system: true}\n  run: {spc: true}\n",
            "c.yaml:4:14: run.spc does not apply to system containers (the image's config.json sets their privileges)",
        ),
        (
            "- name: ab\n  image: x\n  install: {system: true}\n  run: {extra_args: [a]}\n",
            "c.yaml:4:21: run.extra_args does not apply to system containers (the image's config.json sets their command)",
        ),
        (
            "- name: ab\n  image: x\n  archive: ../etc/shadow.tar\n",
            "c.yaml:3:12: \"archive\" must be a file name in docker/ (ostree/ for system containers), not a path: \"../etc/shadow.tar\"",
        ),
        (
            "- name: ab\n  image: x\n  archive: app.zip\n",
            "c.yaml:3:12: \"archive\" \"app.zip\" does not end in one of .tar, .tar.gz, .tgz, .tar.xz, .tar.zst, .tar.bz2",
        ),
        (
            "- name: ab\n  image: x\n  1: x\n",
            "c.yaml:3:3: keys in an entry must be strings, found a number",
        ),
    ];
    let wrong: Vec<String> = cases
        .iter()
        .filter(|(text, expected)| problems(text) != [*expected])
        .map(|(text, expected)| {
            format!(
                "{text:?}\n  expected {expected}\n  got      {:?}",
                problems(text)
            )
        })
        .collect();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn a_broken_entry_does_not_hide_the_others() {
    let eff = effective(
        "- {name: good1, image: a}\n- {image: b}\n- {name: bad, image: [c]}\n- {name: good2, image: d}\n",
    );
    let names: Vec<(&str, bool)> = eff
        .items
        .iter()
        .map(|n| match n {
            Named::Valid(e) => (e.name.as_str(), true),
            Named::Invalid { name, .. } => (name.as_str(), false),
        })
        .collect();
    assert_eq!(names, [("bad", false), ("good1", true), ("good2", true)]);
    // The nameless entry's problem has no unit of its own: it goes to the config's.
    assert_eq!(eff.problems.len(), 1);
    assert_eq!(eff.problems[0].position, Position { line: 2, column: 3 });
}

#[test]
fn an_entrys_arguments_are_bounded() {
    let big = "x".repeat(ARGUMENT_BYTES_MAX / 2 + 1);
    let text = format!("- name: ab\n  image: x\n  run:\n    extra_args: [{big}, {big}]\n");
    let column = 18 + big.len() + 2;
    assert_eq!(
        problems(&text),
        [format!(
            "c.yaml:4:{column}: the arguments of this entry add up to more than {ARGUMENT_BYTES_MAX} bytes"
        )]
    );
}

#[test]
fn names_follow_dockers_rule() {
    for ok in ["ab", "a1", "A.b_c-d", "0x", &"a".repeat(NAME_MAX)] {
        assert!(is_valid_name(ok), "{ok}");
    }
    for bad in [
        "",
        "a",
        "-ab",
        ".ab",
        "_ab",
        "a/b",
        "a b",
        "a:b",
        "a@b",
        "ü-x",
        &"a".repeat(NAME_MAX + 1),
    ] {
        assert!(!is_valid_name(bad), "{bad}");
    }
}

#[test]
fn non_utf8_is_reported_with_its_position() {
    let c = parse(b"- name: ab\n  image: \xff\n");
    assert_eq!(
        c.problems[0].display("c.yaml").to_string(),
        "c.yaml:2:10: the file is not valid UTF-8"
    );
}

#[test]
fn aliases_are_followed_and_bounded() {
    let e = valid("- {name: cd, image: x, run: &r {spc: true}}\n- {name: ef, image: y, run: *r}\n");
    assert_eq!(e[0].run, e[1].run);
    // A billion-laughs document fails cleanly instead of exhausting memory.
    let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..12 {
        bomb.push_str(&format!(
            "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n",
            p = i - 1
        ));
    }
    let c = parse(bomb.as_bytes());
    assert!(c.items.is_empty());
    assert_eq!(c.problems.len(), 1, "{c:?}");
}

#[test]
fn kubernetes_engines_hold_images_and_run_nothing() {
    let entry = valid("- {name: ab, image: x, engine: containerd}\n").remove(0);
    assert_eq!(
        (entry.engine, entry.before_kubelet),
        (Some(EngineKind::Containerd), true)
    );
    let entry = valid("- {name: ab, image: x, engine: cri-o, before_kubelet: false}\n").remove(0);
    assert_eq!(
        (entry.engine, entry.before_kubelet),
        (Some(EngineKind::CriO), false)
    );
    assert_eq!(
        problems("- {name: ab, image: x, engine: containerd, run: {}, install: {}}\n"),
        [
            "c.yaml:1:49: \"run\" does not apply to engine containerd: kubelet runs the pods, containerd only holds their images (run it as a static pod with imagePullPolicy: Never: see the README's Kubernetes nodes)",
            "c.yaml:1:62: \"install\" does not apply to engine containerd: kubelet runs the pods, containerd only holds their images (run it as a static pod with imagePullPolicy: Never: see the README's Kubernetes nodes)",
        ]
    );
    assert_eq!(
        problems("- {name: ab, image: x, engine: docker, before_kubelet: false}\n"),
        ["c.yaml:1:56: \"before_kubelet\" applies to engines containerd and cri-o, not docker"]
    );
    assert_eq!(
        problems("- {name: ab, image: x, before_kubelet: yes}\n"),
        ["c.yaml:1:40: \"before_kubelet\" must be true or false, found a string"]
    );
}

#[test]
fn engine_must_be_docker_or_podman_and_not_for_system_containers() {
    assert_eq!(
        problems("- {name: ab, image: x, engine: Docker}\n"),
        [
            "c.yaml:1:32: \"engine\" must be docker, podman, containerd or cri-o (or left out: the host's engine), found \"Docker\""
        ]
    );
    assert_eq!(
        problems("- {name: ab, image: x, engine: podman, install: {system: true}}\n"),
        [
            "c.yaml:1:32: \"engine\" does not apply to system containers (runc runs them from a checkout, with no engine)"
        ]
    );
    assert_eq!(
        valid("- {name: ab, image: x, engine: docker}\n")[0].engine,
        Some(EngineKind::Docker)
    );
}

#[test]
fn an_override_without_image_keeps_the_earlier_image_and_archives() {
    let yaml = "- {name: web, image: example/web:1, archive: web.tar, run: {}}\n\
                - {name: sys, image: example/sys:1, install: {system: true}, run: {}}\n\
                - {name: web, run: {extra_args: [-v]}}\n\
                - {name: sys, archive: other.tar, install: {system: true, setvalues: [A=1]}}\n\
                - {name: lone}\n";
    let effective = parse(yaml.as_bytes()).effective();
    let get = |n: &str| {
        effective
            .items
            .iter()
            .find(|i| {
                matches!(i, Named::Valid(e) if e.name == n)
                    || matches!(i, Named::Invalid { name, .. } if name == n)
            })
            .unwrap()
            .clone()
    };
    let Named::Valid(web) = get("web") else {
        panic!("web")
    };
    assert_eq!(web.image, "example/web:1");
    assert_eq!(
        web.archives,
        ["web.tar"],
        "its archive too, naming none itself"
    );
    assert_eq!(web.run.unwrap().extra_args, ["-v"]);
    let Named::Valid(sys) = get("sys") else {
        panic!("sys")
    };
    assert_eq!(sys.image, "example/sys:1");
    assert_eq!(sys.archives, ["other.tar"], "its own archive wins");
    assert!(sys.run.is_none(), "everything else replaces");
    assert!(matches!(get("lone"), Named::Invalid { .. }));
}

#[test]
fn with_image_fills_in_block_and_flow_entries_and_keeps_the_rest() {
    // The reference's kickstart body, verbatim: the image goes beside `name`.
    let reference = "- name: mysyscontainer\n  install:\n    system: true\n  run: {}\n";
    assert_eq!(
        with_image(reference, 0, "example.com/sys:1").as_deref(),
        Some(
            "- name: mysyscontainer\n  image: \"example.com/sys:1\"\n  install:\n    system: true\n  run: {}\n"
        )
    );
    // Second entry, name not first, comments and a missing final newline kept.
    let text = "# mine\n- name: aa\n  image: x\n-   run: {}   # start it\n    name: bb # here\n    engine: docker";
    assert_eq!(
        with_image(text, 1, "y:2").as_deref(),
        Some(
            "# mine\n- name: aa\n  image: x\n-   run: {}   # start it\n    name: bb # here\n    image: \"y:2\"\n    engine: docker"
        )
    );
    // At the very end without a newline.
    assert_eq!(
        with_image("- name: ab", 0, "y").as_deref(),
        Some("- name: ab\n  image: \"y\"\n")
    );
    // Flow mappings, and CRLF line ends.
    assert_eq!(
        with_image("- {run: {}, name: ab}\n", 0, "y").as_deref(),
        Some("- {run: {}, image: \"y\", name: ab}\n")
    );
    assert_eq!(
        with_image("- name: ab\r\n  run: {}\r\n", 0, "y").as_deref(),
        Some("- name: ab\r\n  image: \"y\"\r\n  run: {}\r\n")
    );
    // An entry that has an image, a bad image name, an index past the end, invalid
    // YAML: no.
    assert_eq!(with_image("- name: ab\n  image: x\n", 0, "y"), None);
    assert_eq!(with_image("- name: ab\n", 0, "-bad"), None);
    assert_eq!(with_image("- name: ab\n", 1, "y"), None);
    assert_eq!(with_image("- name: ab\n  install: [\n", 0, "y"), None);
    // A name given as a YAML key in explicit form: written some other way, so no.
    assert_eq!(with_image("- ? name\n  : ab\n", 0, "y"), None);
    // Every result is an entry with that image and nothing else changed.
    for text in [reference, "- {name: ab, install: {system: true}}\n"] {
        let filled = with_image(text, 0, "reg.example/a/b:1@sha256:00").unwrap();
        let entry = valid(&filled).remove(0);
        assert_eq!(entry.image, "reg.example/a/b:1@sha256:00");
        assert!(entry.is_system());
    }
}
