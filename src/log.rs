//! The generator's logger: `/dev/kmsg` when systemd runs it (the journal is not up yet
//! when generators run), stderr otherwise. It never fails: a message that cannot be
//! written is dropped rather than stopping the generator.

use std::fs::OpenOptions;
use std::io::Write;

pub enum Level {
    Error = 3,
    Warning = 4,
}

pub struct Logger {
    kmsg: Option<std::fs::File>,
    ident: &'static str,
}

impl Logger {
    /// systemd sets `$SYSTEMD_SCOPE` for the generators it runs (systemd ≥ 251).
    pub fn for_generator(ident: &'static str) -> Self {
        let under_systemd = std::env::var_os("SYSTEMD_SCOPE").is_some();
        let kmsg = if under_systemd {
            OpenOptions::new().write(true).open("/dev/kmsg").ok()
        } else {
            None
        };
        Logger { kmsg, ident }
    }

    pub fn log(&mut self, level: Level, message: &str) {
        let level = level as u8;
        match &mut self.kmsg {
            // One write per record: kmsg takes each write as one message.
            Some(kmsg) => {
                for line in message.lines() {
                    let record =
                        format!("<{level}>{}[{}]: {line}\n", self.ident, std::process::id());
                    let _ = kmsg.write_all(record.as_bytes());
                }
            }
            None => {
                let _ = writeln!(std::io::stderr().lock(), "{}: {message}", self.ident);
            }
        }
    }
}
