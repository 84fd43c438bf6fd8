//! config.yaml: parse and validate, pure (no file system, no processes).
//!
//! The result keeps going past every problem: each list item is validated on its own, so
//! one broken entry never hides the others, and every problem carries a line and column.

mod node;

use crate::engines::EngineKind;
use node::{Node, SNode};
use std::fmt;

/// A place in config.yaml, 1-based, as editors count; line 0 means the whole file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Position {
    pub line: u64,
    pub column: u64,
}

/// One thing wrong with the config, where it is and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub position: Position,
    pub message: String,
}

impl Problem {
    fn new(position: Position, message: impl Into<String>) -> Self {
        Problem {
            position,
            message: message.into(),
        }
    }

    /// `FILE:LINE:COL: message`, the form editors and compilers use.
    pub fn display<'a>(&'a self, file: &'a str) -> impl fmt::Display + 'a {
        DisplayProblem {
            file,
            problem: self,
        }
    }
}

struct DisplayProblem<'a> {
    file: &'a str,
    problem: &'a Problem,
}

impl fmt::Display for DisplayProblem<'_> {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self.problem.position {
            // Line 0: a problem with the file as a whole (unreadable, too large).
            Position { line: 0, .. } => write!(f, "{}: {}", self.file, self.problem.message),
            Position { line, column } => {
                write!(f, "{}:{line}:{column}: {}", self.file, self.problem.message)
            }
        }
    }
}

/// A container entry that passed validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub image: String,
    /// File names under `<preload-dir>/docker/` this entry's unit loads itself.
    pub archives: Vec<String>,
    pub install: Option<Install>,
    pub run: Option<Run>,
    /// `engine:`; none means the host's (see `EngineKind::detect`).
    pub engine: Option<EngineKind>,
    /// On a Kubernetes node (containerd, CRI-O): the unit is done before kubelet starts
    /// (`before_kubelet: false` lets kubelet start without waiting for this image).
    pub before_kubelet: bool,
}

impl Entry {
    /// A system container (`install: {system: true}`): runc from a checkout, no engine.
    pub fn is_system(&self) -> bool {
        self.install.as_ref().is_some_and(|i| i.system)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Install {
    pub system: bool,
    pub user: bool,
    pub remote: Option<String>,
    /// `KEY=VALUE`, checked to have a valid key.
    pub setvalues: Vec<String>,
    pub extra_args: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Run {
    pub spc: bool,
    pub extra_args: Vec<String>,
}

/// An entry that did not pass validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidEntry {
    /// The entry's name when it is present and valid: it still gets a (failing) unit.
    pub name: Option<String>,
    pub position: Position,
    pub problems: Vec<Problem>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Valid(Entry),
    Invalid(InvalidEntry),
    /// Valid but for its missing `image:`, which an earlier entry of the same name gives
    /// it (with its `archive:` when this one names none): the reference's cloud-init
    /// override, `- name: mysyscontainer` with new `setvalues`.
    WithoutImage {
        entry: Entry,
        position: Position,
    },
}

/// An entry without `image:` that nothing earlier resolves.
pub fn no_image(name: &str) -> String {
    format!(
        "entry has no \"image\" (give it one; put it after an entry named {name:?}, whose image it then keeps; or stage it with the one archive that holds its image)"
    )
}

/// Everything config.yaml said, in document order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Config {
    pub items: Vec<Item>,
    /// Problems that belong to no named entry: syntax errors, a top level that is not a
    /// list, entries without a usable name.
    pub problems: Vec<Problem>,
}

/// The config after overrides: what the units are made from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Effective {
    /// One per name, each the last entry in the file with that name, sorted by name.
    pub items: Vec<Named>,
    /// Problems no named entry can carry (see [`Config::problems`]), in file order.
    pub problems: Vec<Problem>,
}

/// An effective entry: valid, or invalid but with a usable name (it gets a failing unit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Named {
    Valid(Entry),
    Invalid {
        name: String,
        problems: Vec<Problem>,
    },
}

impl Config {
    /// Apply the override rule: a later entry with the same name replaces the earlier one
    /// entirely, even when the later one is invalid (it then fails loudly instead of the
    /// old one running silently) — except that one without `image:` keeps the earlier
    /// valid entry's image (and archives, when it names none).
    pub fn effective(self) -> Effective {
        let mut by_name = std::collections::BTreeMap::new();
        let mut problems = self.problems;
        for item in self.items {
            match item {
                Item::Valid(entry) => {
                    by_name.insert(entry.name.clone(), Named::Valid(entry));
                }
                Item::Invalid(InvalidEntry {
                    name: Some(name),
                    problems,
                    ..
                }) => {
                    by_name.insert(name.clone(), Named::Invalid { name, problems });
                }
                Item::Invalid(InvalidEntry {
                    name: None,
                    problems: own,
                    ..
                }) => problems.extend(own),
                Item::WithoutImage {
                    mut entry,
                    position,
                } => {
                    let named = match by_name.get(&entry.name) {
                        Some(Named::Valid(earlier)) => {
                            entry.image = earlier.image.clone();
                            if entry.archives.is_empty() {
                                entry.archives = earlier.archives.clone();
                            }
                            Named::Valid(entry)
                        }
                        _ => Named::Invalid {
                            name: entry.name.clone(),
                            problems: vec![Problem::new(position, no_image(&entry.name))],
                        },
                    };
                    by_name.insert(entry_name(&named), named);
                }
            }
        }
        problems.sort_by_key(|p| p.position);
        Effective {
            items: by_name.into_values().collect(),
            problems,
        }
    }
}

impl Effective {
    /// Every problem, for `atomic-preload validate`, in file order.
    pub fn all_problems(&self) -> Vec<&Problem> {
        let mut all: Vec<&Problem> = self.problems.iter().collect();
        for item in &self.items {
            if let Named::Invalid { problems, .. } = item {
                all.extend(problems);
            }
        }
        all.sort_by_key(|p| p.position);
        all
    }
}

/// Parse config.yaml's bytes. An empty file (or one with only comments) has no entries.
pub fn parse(bytes: &[u8]) -> Config {
    let text = match decode(bytes) {
        Ok(text) => text,
        Err(problem) => {
            return Config {
                items: vec![],
                problems: vec![problem],
            };
        }
    };
    let root = match root_node(text) {
        Ok(root) => root,
        Err(problem) => {
            return Config {
                items: vec![],
                problems: vec![problem],
            };
        }
    };
    let Some(root) = root else {
        return Config::default();
    };
    match root.value {
        Node::Null => Config::default(),
        Node::Seq(items) => Config {
            items: items
                .iter()
                .map(|item| validate_entry(text, item))
                .collect(),
            problems: vec![],
        },
        other => Config {
            items: vec![],
            problems: vec![Problem::new(
                pos(&root.referenced),
                format!(
                    "the config must be a list of entries (\"- name: ...\"), found {}",
                    other.kind()
                ),
            )],
        },
    }
}

/// The YAML tree of a config text (none for an empty one).
fn root_node(text: &str) -> Result<Option<SNode>, Problem> {
    let mut options = serde_saphyr::options! {
        // Our own validation reports duplicate keys with both positions.
        duplicate_keys: serde_saphyr::DuplicateKeyPolicy::PassThrough,
        // YAML 1.2: only true/false are booleans, so `image: y` or `- no` stay strings.
        strict_booleans: true,
    };
    // A real config expands a few aliases; an alias bomb must fail in milliseconds at boot.
    options.alias_limits.max_total_replayed_events = 50_000;
    serde_saphyr::from_str_with_options(text, options).map_err(|err| yaml_problem(&err))
}

/// `text` with `image: "IMAGE"` added to its `index`-th entry (which has none), everything
/// else kept as written: `stage` filling in the image of the one archive staged with an
/// entry. A new line beside the entry's `name:` in a block mapping, or `image: "IMAGE", `
/// before `name` in a flow mapping; `None` when the entry is written some other way (or
/// `image` is not a valid image name), so the caller says what to write instead.
pub fn with_image(text: &str, index: usize, image: &str) -> Option<String> {
    if image_problem(image).is_some() {
        return None;
    }
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let Ok(Some(root)) = root_node(text) else {
        return None;
    };
    let Node::Seq(items) = &root.value else {
        return None;
    };
    let Node::Map(pairs) = &items.get(index)?.value else {
        return None;
    };
    if pairs
        .iter()
        .any(|(k, _)| matches!(&k.value, Node::Str(s) if s == "image"))
    {
        return None;
    }
    let (key, value) = pairs
        .iter()
        .find(|(k, _)| matches!(&k.value, Node::Str(s) if s == "name"))?;
    let key_at = byte_offset(text, key.referenced.line(), key.referenced.column())?;
    let line_start = text[..key_at].rfind('\n').map_or(0, |i| i + 1);
    let before = &text[line_start..key_at];
    // Image names have none of YAML's special characters, so plain double quotes do.
    let pair = format!("image: \"{image}\"");
    let filled = if before.chars().all(|c| c == ' ' || c == '-') {
        // Block mapping: the keys line up at the name's column; the new line goes after
        // the line the name's value is on.
        let value_at = byte_offset(text, value.referenced.line(), value.referenced.column())?;
        let (insert_at, newline) = match text[value_at..].find('\n') {
            Some(i) if text[..value_at + i].ends_with('\r') => (value_at + i + 1, "\r\n"),
            Some(i) => (value_at + i + 1, "\n"),
            None => (text.len(), "\n"),
        };
        let indent = " ".repeat(before.chars().count());
        let mut filled = text[..insert_at].to_owned();
        if insert_at == text.len() && !text.ends_with('\n') {
            filled.push_str(newline);
        }
        filled.push_str(&format!("{indent}{pair}{newline}"));
        filled.push_str(&text[insert_at..]);
        filled
    } else if before.trim_end().ends_with(['{', ',']) {
        format!("{}{pair}, {}", &text[..key_at], &text[key_at..])
    } else {
        return None;
    };
    // The oracle: the filled text parses to the same entries, this one with the image.
    let (old, new) = (parse(text.as_bytes()).items, parse(filled.as_bytes()).items);
    match (old.get(index), new.get(index)) {
        (Some(Item::WithoutImage { entry: was, .. }), Some(Item::Valid(now)))
            if old.len() == new.len()
                && now.image == image
                && Entry {
                    image: String::new(),
                    ..now.clone()
                } == *was =>
        {
            Some(filled)
        }
        _ => None,
    }
}

/// The byte offset of a 1-based line and (character) column.
fn byte_offset(text: &str, line: u64, column: u64) -> Option<usize> {
    let start: usize = text
        .split_inclusive('\n')
        .take(usize::try_from(line).ok()?.checked_sub(1)?)
        .map(str::len)
        .sum();
    let rest = text.get(start..)?;
    let column = usize::try_from(column).ok()?.checked_sub(1)?;
    rest.char_indices()
        .nth(column)
        .map(|(i, _)| start + i)
        .or((rest.chars().count() == column).then_some(start + rest.len()))
}

fn decode(bytes: &[u8]) -> Result<&str, Problem> {
    let bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
    std::str::from_utf8(bytes).map_err(|err| {
        let good = &bytes[..err.valid_up_to()];
        let line = good.iter().filter(|&&b| b == b'\n').count() as u64 + 1;
        let line_start = good.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let column = String::from_utf8_lossy(&good[line_start..]).chars().count() as u64 + 1;
        Problem::new(Position { line, column }, "the file is not valid UTF-8")
    })
}

fn yaml_problem(err: &serde_saphyr::Error) -> Problem {
    let position = err
        .location()
        .map(|l| pos(&l))
        .unwrap_or(Position { line: 1, column: 1 });
    // The first line of saphyr's report is the message; the rest is a snippet that
    // repeats the position, which our FILE:LINE:COL prefix already gives.
    let rendered = err.without_snippet().to_string();
    let message = rendered.lines().next().unwrap_or("invalid YAML").trim();
    let message = strip_location_suffix(message);
    Problem::new(position, format!("invalid YAML: {message}"))
}

/// saphyr appends " at line L, column C" (and where an alias was defined and used) to
/// its messages; we say the position in front already.
fn strip_location_suffix(message: &str) -> &str {
    match message.find(" at line ") {
        Some(i) => &message[..i],
        None => message,
    }
}

fn pos(location: &serde_saphyr::Location) -> Position {
    Position {
        line: location.line(),
        column: location.column(),
    }
}

/// Docker's container-name rule, plus a length bound that keeps the unit name (and so
/// the file name) far below systemd's and the file system's limits.
pub const NAME_RULE: &str = "[a-zA-Z0-9][a-zA-Z0-9_.-]+";
pub const NAME_MAX: usize = 200;

pub fn is_valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    first_ok
        && name.len() >= 2
        && name.len() <= NAME_MAX
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Why `NAME.service` must not be a system container's unit (it is installed in
/// /etc/systemd/system, which overrides every other unit of that name), or `None`.
pub fn system_name_taken(name: &str) -> Option<String> {
    /// Engines' and Kubernetes' units, which a preloaded container must not replace.
    const ENGINE_UNITS: &[&str] = &[
        "docker",
        "containerd",
        "podman",
        "crio",
        "cri-o",
        "kubelet",
        "runc",
    ];
    if let Some(entry) = name.strip_prefix("preload-") {
        Some(format!(
            "overriding the unit atomic-preload generates for an entry named {entry:?}"
        ))
    } else if name == "atomic-preload" || name.starts_with("atomic-preload-") {
        Some("overriding one of atomic-preload's own units".into())
    } else if name.starts_with("systemd-") || name == "dbus" {
        Some("overriding one of systemd's own units".into())
    } else if ENGINE_UNITS.contains(&name) {
        Some(format!("overriding the {name} unit of the host"))
    } else {
        None
    }
}

/// A Docker image reference as far as we need it: what `docker` accepts as one word and
/// cannot mistake for an option.
fn image_problem(image: &str) -> Option<String> {
    if image.is_empty() {
        return Some("\"image\" must not be empty".into());
    }
    if image.starts_with('-') {
        return Some(format!(
            "\"image\" must not start with '-', found {image:?}"
        ));
    }
    if image.len() > 255 {
        return Some("\"image\" is longer than 255 characters".into());
    }
    if let Some(c) = image
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "._-/:@".contains(*c)))
    {
        return Some(format!(
            "\"image\" must be an image reference like registry/repo:tag, found {image:?} (character {c:?} is not allowed)"
        ));
    }
    None
}

/// Archive suffixes we load, longest first so `.tar.gz` wins over `.gz`.
pub const ARCHIVE_SUFFIXES: &[&str] =
    &[".tar", ".tar.gz", ".tgz", ".tar.xz", ".tar.zst", ".tar.bz2"];

pub fn is_archive_name(name: &str) -> bool {
    ARCHIVE_SUFFIXES
        .iter()
        .any(|s| name.len() > s.len() && name.ends_with(s))
}

/// Why `name` is not an archive file name we load, if it is not.
/// The longest archive file name: a file name's 255 bytes less room for stage's
/// temporary name.
pub const ARCHIVE_NAME_MAX: usize = 200;

pub fn archive_problem(name: &str) -> Option<String> {
    if name.contains('/') || name == "." || name == ".." {
        return Some(format!(
            "\"archive\" must be a file name in docker/ (ostree/ for system containers), not a path: {name:?}"
        ));
    }
    if name.chars().any(char::is_control) {
        return Some(format!(
            "\"archive\" must not contain control characters: {name:?}"
        ));
    }
    // `stage` fetches into `.stage-PID-NAME` beside it, which must fit in 255 bytes too.
    if name.len() > ARCHIVE_NAME_MAX {
        return Some(format!(
            "\"archive\" is longer than {ARCHIVE_NAME_MAX} bytes: {:?}…",
            name.chars().take(40).collect::<String>()
        ));
    }
    // Dot-files in docker/ are stage's temporary files, which the load stage skips.
    if name.starts_with('.') {
        return Some(format!(
            "\"archive\" must not start with '.' (the load stage skips hidden files): {name:?}"
        ));
    }
    if !is_archive_name(name) {
        return Some(format!(
            "\"archive\" {name:?} does not end in one of {}",
            ARCHIVE_SUFFIXES.join(", ")
        ));
    }
    None
}

fn is_env_name(key: &str) -> bool {
    let mut chars = key.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

const ENTRY_KEYS: &[&str] = &[
    "name",
    "image",
    "archive",
    "engine",
    "install",
    "run",
    "before_kubelet",
];
const INSTALL_KEYS: &[&str] = &["system", "user", "remote", "setvalues", "extra_args"];
const RUN_KEYS: &[&str] = &["spc", "extra_args"];

/// What all of an entry's arguments (setvalues and extra_args) may add up to, in bytes.
/// Escaped, even the worst case (every byte as `\xNN`) stays far below the 1 MiB line
/// systemd reads.
pub const ARGUMENT_BYTES_MAX: usize = 128 << 10;

/// Collects problems while reading one entry.
struct Checker<'t> {
    /// The config text, to take numbers as written (`0x10` stays "0x10", not "16").
    text: &'t str,
    problems: Vec<Problem>,
    /// Bytes of arguments so far (see [`ARGUMENT_BYTES_MAX`]).
    argument_bytes: usize,
}

impl Checker<'_> {
    fn problem(&mut self, node: &SNode, message: impl Into<String>) {
        self.problems
            .push(Problem::new(pos(&node.referenced), message));
    }

    /// The pairs of a mapping node with string keys; reports unknown and duplicate keys.
    fn mapping<'a>(
        &mut self,
        node: &'a SNode,
        what: &str,
        known: &[&str],
    ) -> Vec<(&'a str, &'a SNode)> {
        let Node::Map(pairs) = &node.value else {
            self.problem(
                node,
                format!("{what} must be a mapping, found {}", node.value.kind()),
            );
            return vec![];
        };
        let mut seen: Vec<(&str, &SNode)> = Vec::new();
        for (key, value) in pairs {
            let Node::Str(k) = &key.value else {
                self.problem(
                    key,
                    format!("keys in {what} must be strings, found {}", key.value.kind()),
                );
                continue;
            };
            if !known.contains(&k.as_str()) {
                self.problem(
                    key,
                    format!(
                        "unknown key {k:?} in {what} (known keys: {})",
                        known.join(", ")
                    ),
                );
                continue;
            }
            if let Some((_, first)) = seen.iter().find(|(s, _)| s == k) {
                let p = pos(&first.referenced);
                self.problem(
                    key,
                    format!(
                        "duplicate key {k:?} in {what} (first at line {}, column {})",
                        p.line, p.column
                    ),
                );
                continue;
            }
            seen.push((k.as_str(), value));
        }
        seen
    }

    fn string(&mut self, node: &SNode, key: &str) -> Option<String> {
        match &node.value {
            Node::Str(s) => self.no_nul(node, key, s),
            other => {
                self.problem(
                    node,
                    format!("{key:?} must be a string, found {}", other.kind()),
                );
                None
            }
        }
    }

    /// An argument: no NUL, and the entry's arguments within [`ARGUMENT_BYTES_MAX`].
    fn argument(&mut self, node: &SNode, key: &str, s: &str) -> Option<String> {
        let s = self.no_nul(node, key, s)?;
        self.argument_bytes += s.len();
        if self.argument_bytes > ARGUMENT_BYTES_MAX {
            self.problem(
                node,
                format!(
                    "the arguments of this entry add up to more than {ARGUMENT_BYTES_MAX} bytes"
                ),
            );
            return None;
        }
        Some(s)
    }

    fn no_nul(&mut self, node: &SNode, key: &str, s: &str) -> Option<String> {
        if s.contains('\0') {
            self.problem(
                node,
                format!("{key:?} contains a NUL character, which cannot be passed to a program"),
            );
            return None;
        }
        Some(s.to_owned())
    }

    /// The source text of a plain scalar, when saphyr knows where it is.
    fn as_written(&self, node: &SNode) -> Option<&str> {
        let span = node.referenced.span();
        let start = usize::try_from(span.byte_offset()?).ok()?;
        let len = usize::try_from(span.byte_len()?).ok()?;
        self.text
            .get(start..start.checked_add(len)?)
            .filter(|t| !t.is_empty())
    }

    fn boolean(&mut self, node: &SNode, key: &str) -> bool {
        match node.value {
            Node::Bool(b) => b,
            ref other => {
                self.problem(
                    node,
                    format!("{key:?} must be true or false, found {}", other.kind()),
                );
                false
            }
        }
    }

    /// A list of arguments; numbers are taken as written (`999` is the argument "999").
    fn args(&mut self, node: &SNode, key: &str) -> Vec<String> {
        let Node::Seq(items) = &node.value else {
            self.problem(
                node,
                format!("{key:?} must be a list, found {}", node.value.kind()),
            );
            return vec![];
        };
        let mut out = Vec::new();
        for item in items {
            match &item.value {
                Node::Str(s) => out.extend(self.argument(item, key, s)),
                Node::Number(n) => {
                    let written = self.as_written(item).unwrap_or(n).to_owned();
                    out.extend(self.argument(item, key, &written));
                }
                Node::Bool(b) => self.problem(
                    item,
                    format!("items of {key:?} must be strings, found a boolean (write \"{b}\" in quotes)"),
                ),
                other => self.problem(item, format!("items of {key:?} must be strings, found {}", other.kind())),
            }
        }
        out
    }
}

fn validate_entry(text: &str, node: &SNode) -> Item {
    let mut c = Checker {
        text,
        problems: vec![],
        argument_bytes: 0,
    };
    let entry_pos = pos(&node.referenced);
    if !matches!(node.value, Node::Map(_)) {
        c.problem(
            node,
            format!("an entry must be a mapping, found {}", node.value.kind()),
        );
        return Item::Invalid(InvalidEntry {
            name: None,
            position: entry_pos,
            problems: c.problems,
        });
    }
    let pairs = c.mapping(node, "an entry", ENTRY_KEYS);
    let get = |key: &str| pairs.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);

    let mut name = None;
    match get("name") {
        None => c
            .problems
            .push(Problem::new(entry_pos, "entry has no \"name\"")),
        Some(n) => {
            if let Some(s) = c.string(n, "name") {
                if is_valid_name(&s) {
                    name = Some(s);
                } else {
                    c.problem(
                        n,
                        format!("\"name\" must match {NAME_RULE} (Docker's container-name rule, at most {NAME_MAX} characters), found {s:?}"),
                    );
                }
            }
        }
    }
    let mut image = None;
    match get("image") {
        // Decided when overrides are applied (see `Item::WithoutImage`), unless the entry
        // has other problems too.
        None => {}
        Some(n) => {
            if let Some(s) = c.string(n, "image") {
                match image_problem(&s) {
                    Some(msg) => c.problem(n, msg),
                    None => image = Some(s),
                }
            }
        }
    }
    let archives = get("archive")
        .map(|n| archives(&mut c, n))
        .unwrap_or_default();
    let engine = get("engine").and_then(|n| engine(&mut c, n));
    let install = get("install").map(|n| install(&mut c, n));
    let run = get("run").map(|n| run(&mut c, n));
    let before_kubelet = get("before_kubelet").is_none_or(|n| c.boolean(n, "before_kubelet"));
    node_keys(&mut c, engine, &get);
    if install.as_ref().is_some_and(|i| i.system) {
        system_only_keys(&mut c, get("install"), get("run"));
        if let Some(n) = get("engine") {
            c.problem(n, "\"engine\" does not apply to system containers (runc runs them from a checkout, with no engine)");
        }
        if let Some(n) = get("before_kubelet") {
            c.problem(n, "\"before_kubelet\" does not apply to system containers (it orders a node's image loads before kubelet)");
        }
        if let (Some(n), Some(found)) = (get("name"), name.as_deref())
            && let Some(why) = system_name_taken(found)
        {
            c.problem(n, format!("a system container cannot be named {found:?}: it would install /etc/systemd/system/{found}.service, {why}"));
        }
    }

    match (c.problems.is_empty(), image) {
        (true, Some(image)) if name.is_some() => Item::Valid(Entry {
            name: name.unwrap_or_default(),
            image,
            archives,
            install,
            run,
            engine,
            before_kubelet,
        }),
        (true, None) if get("image").is_none() && name.is_some() => Item::WithoutImage {
            entry: Entry {
                name: name.unwrap_or_default(),
                image: String::new(),
                archives,
                install,
                run,
                engine,
                before_kubelet,
            },
            position: entry_pos,
        },
        _ => {
            if get("image").is_none() {
                let shown = name.as_deref().unwrap_or("NAME");
                c.problems.push(Problem::new(entry_pos, no_image(shown)));
            }
            Item::Invalid(InvalidEntry {
                name,
                position: entry_pos,
                problems: c.problems,
            })
        }
    }
}

fn entry_name(named: &Named) -> String {
    match named {
        Named::Valid(entry) => entry.name.clone(),
        Named::Invalid { name, .. } => name.clone(),
    }
}

/// The value of `key` in a mapping node, if it has one.
fn value_of<'a>(node: Option<&'a SNode>, key: &str) -> Option<&'a SNode> {
    let Node::Map(pairs) = &node?.value else {
        return None;
    };
    pairs
        .iter()
        .find(|(k, _)| matches!(&k.value, Node::Str(s) if s == key))
        .map(|(_, v)| v)
}

/// Keys that mean nothing for a system container: an error, never silently ignored.
fn system_only_keys(c: &mut Checker<'_>, install: Option<&SNode>, run: Option<&SNode>) {
    let not_empty = |n: &&SNode| !matches!(&n.value, Node::Seq(items) if items.is_empty());
    if let Some(n) = value_of(install, "extra_args").filter(not_empty) {
        c.problem(n, "install.extra_args does not apply to system containers (their templates take install.setvalues)");
    }
    if let Some(n) = value_of(run, "spc").filter(|n| n.value == Node::Bool(true)) {
        c.problem(n, "run.spc does not apply to system containers (the image's config.json sets their privileges)");
    }
    if let Some(n) = value_of(run, "extra_args").filter(not_empty) {
        c.problem(n, "run.extra_args does not apply to system containers (the image's config.json sets their command)");
    }
}

fn archives(c: &mut Checker<'_>, node: &SNode) -> Vec<String> {
    let items: Vec<&SNode> = match &node.value {
        Node::Seq(items) => items.iter().collect(),
        _ => vec![node],
    };
    let mut out = Vec::new();
    for item in items {
        if let Some(name) = c.string(item, "archive") {
            match archive_problem(&name) {
                Some(msg) => c.problem(item, msg),
                None => out.push(name),
            }
        }
    }
    out
}

/// What a Kubernetes node's engine (containerd, CRI-O) does not do, and what only it does.
fn node_keys<'a>(
    c: &mut Checker<'_>,
    engine: Option<EngineKind>,
    get: &dyn Fn(&str) -> Option<&'a SNode>,
) {
    match engine {
        Some(kind) if !kind.runs_containers() => {
            for key in ["run", "install"] {
                if let Some(n) = get(key) {
                    c.problem(n, format!("\"{key}\" does not apply to engine {}: kubelet runs the pods, {} only holds their images (run it as a static pod with imagePullPolicy: Never: see the README's Kubernetes nodes)", kind.as_str(), kind.title()));
                }
            }
        }
        Some(kind) => {
            if let Some(n) = get("before_kubelet") {
                c.problem(
                    n,
                    format!(
                        "\"before_kubelet\" applies to engines containerd and cri-o, not {}",
                        kind.as_str()
                    ),
                );
            }
        }
        None => {}
    }
}

fn engine(c: &mut Checker<'_>, node: &SNode) -> Option<EngineKind> {
    let value = c.string(node, "engine")?;
    let kind = EngineKind::parse(&value);
    if kind.is_none() {
        c.problem(
            node,
            format!("\"engine\" must be docker, podman, containerd or cri-o (or left out: the host's engine), found {value:?}"),
        );
    }
    kind
}

fn install(c: &mut Checker<'_>, node: &SNode) -> Install {
    let mut install = Install::default();
    // `install:` with nothing after it means "install with defaults".
    if node.value == Node::Null {
        return install;
    }
    for (key, value) in c.mapping(node, "\"install\"", INSTALL_KEYS) {
        match key {
            "system" => install.system = c.boolean(value, "system"),
            "user" => install.user = c.boolean(value, "user"),
            "remote" => install.remote = c.string(value, "remote"),
            "extra_args" => install.extra_args = c.args(value, "extra_args"),
            "setvalues" => {
                let Node::Seq(items) = &value.value else {
                    c.problem(
                        value,
                        format!("\"setvalues\" must be a list, found {}", value.value.kind()),
                    );
                    continue;
                };
                for item in items {
                    let Some(s) = c.string(item, "setvalues") else {
                        continue;
                    };
                    match s.split_once('=') {
                        Some((k, _)) if is_env_name(k) => install.setvalues.push(s),
                        _ => c.problem(item, format!("\"setvalues\" items must look like KEY=VALUE with KEY a variable name, found {s:?}")),
                    }
                }
            }
            _ => {}
        }
        // What we do not do is an error, never silently dropped (README: Limitations).
        let unsupported = match key {
            "user" if install.user => Some(
                "install.user (rootless containers of a login user) is not supported: preloaded containers are system services started at boot; use install.system",
            ),
            "remote" if install.remote.is_some() => Some(
                "install.remote (a rootfs kept outside the image) is not supported: a preloaded archive carries its rootfs; use install.system",
            ),
            _ => None,
        };
        if let Some(message) = unsupported {
            c.problem(value, message);
        }
    }
    install
}

fn run(c: &mut Checker<'_>, node: &SNode) -> Run {
    let mut run = Run::default();
    if node.value == Node::Null {
        return run;
    }
    for (key, value) in c.mapping(node, "\"run\"", RUN_KEYS) {
        match key {
            "spc" => run.spc = c.boolean(value, "spc"),
            "extra_args" => run.extra_args = c.args(value, "extra_args"),
            _ => {}
        }
    }
    run
}

#[cfg(test)]
mod tests;
