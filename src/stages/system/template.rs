//! Python's `string.Template.substitute`, which atomic used for every `*.template` file,
//! `renameFiles` and `installedFilesTemplate`: `$NAME` and `${NAME}` (NAME matching
//! `[_a-zA-Z][_a-zA-Z0-9]*`) are replaced, `$$` is one `$`, any other `$` is an error, and
//! so is a variable without a value. Images written for atomic rely on exactly this.

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// atomic's own wording, with the file it was in.
    #[error("the template file '{file}' still contains an unreplaced value for: '{name}'")]
    Unknown { file: String, name: String },
    #[error(
        "the template file '{file}' has an invalid placeholder at line {line}, column {column} (write $$ for a dollar sign)"
    )]
    Invalid {
        file: String,
        line: usize,
        column: usize,
    },
}

fn is_start(c: u8) -> bool {
    c == b'_' || c.is_ascii_alphabetic()
}

fn is_rest(c: u8) -> bool {
    c == b'_' || c.is_ascii_alphanumeric()
}

/// Substitute `values` into `text`; `file` names the template in errors.
pub fn substitute(
    text: &str,
    values: &BTreeMap<String, String>,
    file: &str,
) -> Result<String, TemplateError> {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let mut copied = 0;
    while let Some(off) = text[i..].find('$') {
        let at = i + off;
        out.push_str(&text[copied..at]);
        let rest = &bytes[at + 1..];
        let (name, len) = if rest.first() == Some(&b'$') {
            out.push('$');
            i = at + 2;
            copied = i;
            continue;
        } else if rest.first().copied().is_some_and(is_start) {
            let n = rest.iter().take_while(|c| is_rest(**c)).count();
            (&text[at + 1..at + 1 + n], n + 1)
        } else if rest.first() == Some(&b'{') && rest.get(1).copied().is_some_and(is_start) {
            let n = rest[1..].iter().take_while(|c| is_rest(**c)).count();
            if rest.get(1 + n) != Some(&b'}') {
                return Err(invalid(text, at, file));
            }
            (&text[at + 2..at + 2 + n], n + 3)
        } else {
            return Err(invalid(text, at, file));
        };
        match values.get(name) {
            Some(v) => out.push_str(v),
            None => {
                return Err(TemplateError::Unknown {
                    file: file.to_owned(),
                    name: name.to_owned(),
                });
            }
        }
        i = at + len;
        copied = i;
    }
    out.push_str(&text[copied..]);
    Ok(out)
}

fn invalid(text: &str, at: usize, file: &str) -> TemplateError {
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    TemplateError::Invalid {
        file: file.to_owned(),
        line,
        column,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values() -> BTreeMap<String, String> {
        [
            ("NAME", "etcd"),
            ("A_1", "x"),
            ("DESTDIR", "/var/lib/containers/atomic/etcd.0"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    #[test]
    fn substitutes_like_python_string_template() {
        let v = values();
        let ok = |t: &str| substitute(t, &v, "f").unwrap();
        assert_eq!(
            ok("$NAME ${NAME}x $$NAME $$ ${A_1}"),
            "etcd etcdx $NAME $ x"
        );
        assert_eq!(ok("$NAME.service"), "etcd.service");
        assert_eq!(ok("a$NAME-b"), "aetcd-b");
        assert_eq!(ok("no dollars"), "no dollars");
        assert_eq!(ok("ünïcode $NAME ✓"), "ünïcode etcd ✓");
    }

    #[test]
    fn unknown_names_and_bad_placeholders_are_errors() {
        let v = values();
        assert_eq!(
            substitute("x $NOPE", &v, "service.template")
                .unwrap_err()
                .to_string(),
            "the template file 'service.template' still contains an unreplaced value for: 'NOPE'"
        );
        for (t, line, column) in [
            ("$", 1, 1),
            ("a\n b $1", 2, 4),
            ("${ NAME}", 1, 1),
            ("${NAME", 1, 1),
        ] {
            assert_eq!(
                substitute(t, &v, "f").unwrap_err(),
                TemplateError::Invalid {
                    file: "f".into(),
                    line,
                    column
                },
                "{t:?}"
            );
        }
    }
}
