//! Writing values into unit files so that systemd reads back exactly what we meant.
//!
//! This module owns every byte of user data that reaches a unit file. Two kinds of
//! settings carry such data:
//!
//! * command lines (`ExecStart=`, `ExecStartPre=`, `ExecStop=`): systemd splits them into
//!   words, removes quotes, resolves C escapes (`\n`, `\x1b`, …), then expands specifiers
//!   (`%n`) in each word. [`command_line`] always writes the `:` prefix, which turns off
//!   `$VAR` expansion at exec time (systemd ≥ 249): `$` needs no escaping, and the argv
//!   systemd stores (`systemctl show -p ExecStart`) is exactly the argv the program gets.
//!   [`exec_arg`] quotes one argument so that all of this gives back the original bytes:
//!   `%`→`%%`, `\`→`\\`, `"`→`\"`, control characters as C escapes, the whole word in
//!   double quotes
//!   (words made only of letters, digits and `_-./:=+,@` are left bare, for readability).
//!   A newline in an argument therefore becomes the two characters `\n` and can never start
//!   a new unit line.
//! * plain settings that expand specifiers (`Description=`, `SourcePath=`): [`setting_value`]
//!   doubles `%` and refuses control characters, which such settings cannot express.
//!
//! NUL cannot be represented anywhere in a unit file, so both refuse it.
//! [`parse_command_line`] is the inverse of [`command_line`], written from systemd's
//! documented rules; tests use it to prove the round trip.

use std::fmt::Write as _;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EscapeError {
    #[error("a NUL byte cannot be written into a unit file")]
    Nul,
    #[error("control character U+{0:04X} cannot be written into this unit setting")]
    Control(u32),
    #[error("a value ending in a backslash would continue onto the next unit line")]
    TrailingBackslash,
    #[error("a command line of {0} bytes is longer than systemd reads")]
    TooLong(usize),
}

/// Quote one command-line argument for an `Exec*=` setting (never the executable itself:
/// see [`command_line`]).
pub fn exec_arg(arg: &str) -> Result<String, EscapeError> {
    // Plain words stay bare so `systemctl cat` reads like a shell line.
    if !arg.is_empty() && arg.chars().all(is_plain) {
        return Ok(arg.to_owned());
    }
    let mut out = String::with_capacity(arg.len() + 2);
    out.push('"');
    for c in arg.chars() {
        match c {
            '\0' => return Err(EscapeError::Nul),
            '%' => out.push_str("%%"),
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    Ok(out)
}

/// Characters that mean nothing to systemd's command-line parser, anywhere in a word
/// (`$` included: our command lines turn variable expansion off).
fn is_plain(c: char) -> bool {
    c.is_ascii_alphanumeric() || "_-./:=+,@$".contains(c)
}

/// Longest command line we write (systemd's LONG_LINE_MAX is 1 MiB, key included).
pub const LINE_MAX: usize = (1 << 20) - 4096;

/// A whole command line: `prefix` (such as `-` to ignore failure) plus `:` (no variable
/// expansion), the executable path unquoted, every further argument through [`exec_arg`]. The executable is always one of
/// our own absolute paths (see `paths`), checked here so that a bad build setting cannot
/// produce a broken unit.
pub fn command_line(prefix: &str, argv: &[String]) -> Result<String, EscapeError> {
    let mut line = format!("{prefix}:");
    let mut args = argv.iter();
    if let Some(exe) = args.next() {
        line.push_str(&setting_value(exe)?);
    }
    for arg in args {
        line.push(' ');
        line.push_str(&exec_arg(arg)?);
    }
    // systemd refuses unit lines of 1 MiB and more; validation keeps arguments far below.
    if line.len() >= LINE_MAX {
        return Err(EscapeError::TooLong(line.len()));
    }
    Ok(line)
}

/// A value for a plain setting that expands specifiers (`Description=`, `SourcePath=`).
pub fn setting_value(value: &str) -> Result<String, EscapeError> {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\0' => return Err(EscapeError::Nul),
            '%' => out.push_str("%%"),
            c if c.is_control() => {
                return Err(EscapeError::Control(c as u32));
            }
            c => out.push(c),
        }
    }
    if out.ends_with('\\') {
        return Err(EscapeError::TrailingBackslash);
    }
    Ok(out)
}

/// Split an `Exec*=` value the way systemd does: the `-@:+!` prefixes, then words
/// separated by whitespace, double or single quotes, C escapes, `%%`→`%`, and — unless the
/// `:` prefix is there — `$$`→`$`. Returns `None` for input systemd would reject. Only the
/// specifier `%%` and `$$` are understood: other specifiers and variables are kept as
/// written, since we never produce them.
pub fn parse_command_line(line: &str) -> Option<Vec<String>> {
    let mut words = Vec::new();
    let body = line.trim_start_matches(['-', '@', ':', '+', '!']);
    let expand_variables = !line[..line.len() - body.len()].contains(':');
    let mut rest = body;
    loop {
        rest = rest.trim_start_matches([' ', '\t', '\n', '\r']);
        if rest.is_empty() {
            return Some(words);
        }
        let (word, after) = extract_word(rest)?;
        words.push(unescape(&word, expand_variables)?);
        rest = after;
    }
}

/// One word with `EXTRACT_UNQUOTE|EXTRACT_CUNESCAPE`; the result may contain raw bytes from
/// `\xNN` escapes, reassembled as UTF-8.
fn extract_word(input: &str) -> Option<(Vec<u8>, &str)> {
    let bytes = input.as_bytes();
    let mut word = Vec::new();
    let mut i = 0;
    let mut quote: Option<u8> = None;
    while i < bytes.len() {
        let b = bytes[i];
        match (quote, b) {
            (None, b' ' | b'\t' | b'\n' | b'\r') => break,
            (None, b'"' | b'\'') => quote = Some(b),
            (Some(q), b) if b == q => quote = None,
            (_, b'\\') => {
                let (decoded, used) = cunescape_one(&bytes[i + 1..])?;
                word.extend_from_slice(&decoded);
                i += used;
            }
            (_, b) => word.push(b),
        }
        i += 1;
    }
    if quote.is_some() {
        return None; // unbalanced quote: systemd refuses the line
    }
    Some((word, &input[i..]))
}

/// Decode the escape after a backslash; returns the bytes and how many input bytes it used.
fn cunescape_one(s: &[u8]) -> Option<(Vec<u8>, usize)> {
    let simple = |c: u8| Some((vec![c], 1));
    match *s.first()? {
        b'a' => simple(7),
        b'b' => simple(8),
        b'f' => simple(12),
        b'n' => simple(b'\n'),
        b'r' => simple(b'\r'),
        b't' => simple(b'\t'),
        b'v' => simple(11),
        b's' => simple(b' '),
        c @ (b'\\' | b'"' | b'\'') => simple(c),
        b'x' => {
            let hex = std::str::from_utf8(s.get(1..3)?).ok()?;
            let v = u8::from_str_radix(hex, 16).ok()?;
            (v != 0).then(|| (vec![v], 3))
        }
        _ => None,
    }
}

/// `%%`→`%` always; `$$`→`$` only where systemd expands variables.
fn unescape(word: &[u8], expand_variables: bool) -> Option<String> {
    let text = String::from_utf8(word.to_vec()).ok()?;
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '%' | '$' if c == '%' || expand_variables => {
                if chars.peek() == Some(&c) {
                    chars.next();
                }
                out.push(c);
            }
            c => out.push(c),
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(args: &[&str]) {
        let argv: Vec<String> = std::iter::once("/usr/bin/docker")
            .chain(args.iter().copied())
            .map(String::from)
            .collect();
        let line = command_line("", &argv).unwrap();
        assert!(!line.contains('\n'), "line break in {line:?}");
        assert_eq!(
            parse_command_line(&line).as_deref(),
            Some(&argv[..]),
            "{line}"
        );
    }

    #[test]
    fn hostile_arguments_round_trip() {
        round_trip(&[
            "$HOME",
            "${HOME}",
            "$$",
            "%n",
            "%%",
            "100%",
            "\"double\"",
            "'single'",
            "back\\slash",
            "trailing\\",
            "two words",
            "--flag=a b",
            ";",
            "\\;",
            "",
            " ",
            "ünïcødé ✓ 日本",
            "line\nbreak",
            "tab\tand\rcr",
            "\x1b[31mred",
            "\u{7f}\u{85}\u{2028}",
            "end with quote\"",
        ]);
    }

    #[test]
    fn every_ascii_and_some_unicode_round_trip() {
        let mut s: String = (1u8..=0x7f).map(char::from).collect();
        s.push_str("é€𝄞\u{feff}");
        round_trip(&[&s, &s.chars().rev().collect::<String>()]);
    }

    #[test]
    fn quoting_is_exact() {
        assert_eq!(exec_arg("a b").unwrap(), r#""a b""#);
        assert_eq!(
            exec_arg("--name=x_1.2@y:z/w,v+u").unwrap(),
            "--name=x_1.2@y:z/w,v+u"
        );
        assert_eq!(exec_arg(";").unwrap(), r#"";""#);
        assert_eq!(exec_arg("").unwrap(), r#""""#);
        assert_eq!(exec_arg("%n $X").unwrap(), r#""%%n $X""#);
        assert_eq!(exec_arg("$HOME").unwrap(), "$HOME");
        assert_eq!(exec_arg("a\"b\\c").unwrap(), r#""a\"b\\c""#);
        assert_eq!(exec_arg("x\ny").unwrap(), r#""x\ny""#);
        assert_eq!(exec_arg("\x01").unwrap(), r#""\x01""#);
        assert_eq!(
            command_line("-", &["/bin/x".into(), "y z".into()]).unwrap(),
            r#"-:/bin/x "y z""#
        );
    }

    #[test]
    fn nul_and_controls_are_refused_where_unrepresentable() {
        assert_eq!(exec_arg("a\0b"), Err(EscapeError::Nul));
        assert_eq!(setting_value("a\nb"), Err(EscapeError::Control(0x0a)));
        assert_eq!(setting_value("50%").unwrap(), "50%%");
        assert_eq!(
            setting_value("/srv/x\\"),
            Err(EscapeError::TrailingBackslash)
        );
    }

    #[test]
    fn reader_expands_dollars_only_without_the_colon_prefix() {
        assert_eq!(
            parse_command_line(r#"/bin/x "$$A" %%"#).unwrap(),
            ["/bin/x", "$A", "%"]
        );
        assert_eq!(
            parse_command_line(r#":/bin/x "$$A" %%"#).unwrap(),
            ["/bin/x", "$$A", "%"]
        );
    }

    #[test]
    fn reader_rejects_what_systemd_rejects() {
        assert_eq!(parse_command_line(r#"/bin/x "open"#), None);
        assert_eq!(parse_command_line(r#"/bin/x "\q""#), None);
        assert_eq!(parse_command_line(r#"/bin/x "\x00""#), None);
    }
}
