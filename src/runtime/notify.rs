//! `sd_notify(STATUS=…)`: the one line `systemctl status` shows under "Status:". A unit
//! waiting to retry (`activating (auto-restart)`) shows no log lines of its failed try,
//! so a stage that fails says why here too. Silently does nothing outside systemd.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

pub fn status(text: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let path = path.to_string_lossy().into_owned();
    let addr = match path.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes()),
        None => SocketAddr::from_pathname(&path),
    };
    let Ok(addr) = addr else { return };
    let Ok(socket) = UnixDatagram::unbound() else {
        return;
    };
    // One line, bounded: systemd keeps it in memory and shows it as is.
    let line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(1000)
        .collect();
    let _ = socket.send_to_addr(format!("STATUS={line}").as_bytes(), &addr);
}

/// `WHAT: 312.5 of 470.0 MB (66%)`, or `WHAT: 312.5 MB` when the total is not known.
pub fn progress_text(what: &str, done: u64, total: Option<u64>) -> String {
    let mb = |b: u64| b as f64 / (1 << 20) as f64;
    match total {
        Some(total) => {
            let percent = (done * 100).checked_div(total).unwrap_or(100).min(100);
            format!(
                "{what}: {:.1} of {:.1} MB ({percent}%)",
                mb(done),
                mb(total)
            )
        }
        None => format!("{what}: {:.1} MB", mb(done)),
    }
}

/// [`progress_text`] on the status line.
pub fn progress(what: &str, done: u64, total: u64) {
    status(&progress_text(what, done, Some(total)));
}

/// While `running()`, how far an engine has read an archive (`offset()`, when it can be
/// known), on the status line every 250 ms, and once more at the end.
pub fn watch_offset(
    what: &str,
    total: u64,
    offset: &mut dyn FnMut() -> Option<u64>,
    running: &mut dyn FnMut() -> bool,
) {
    let mut last = None::<std::time::Instant>;
    let mut done = 0;
    while running() {
        if last.is_none_or(|t| t.elapsed() >= std::time::Duration::from_millis(250)) {
            done = offset().unwrap_or(done);
            progress(what, done, total);
            last = Some(std::time::Instant::now());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    progress(what, total, total);
}

/// A reader that reports how far along it is on the unit's status line: the first read,
/// then at most every 250 ms, then the end (`loading app.tar: 312.5 of 470.0 MB (66%)`),
/// so `systemctl status` during a long first boot answers "is it stuck?".
pub struct Progress<R> {
    inner: R,
    what: String,
    total: u64,
    done: u64,
    last: Option<std::time::Instant>,
}

impl<R> Progress<R> {
    pub fn new(inner: R, what: impl Into<String>, total: u64) -> Self {
        Progress {
            inner,
            what: what.into(),
            total,
            done: 0,
            last: None,
        }
    }

    fn report(&mut self) {
        progress(&self.what, self.done, self.total);
        self.last = Some(std::time::Instant::now());
    }
}

impl<R: std::io::Read> std::io::Read for Progress<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.done += n as u64;
        let due = self
            .last
            .is_none_or(|t| t.elapsed() >= std::time::Duration::from_millis(250));
        if due || (n == 0 && self.done > 0 && self.last.is_some()) {
            self.report();
        }
        Ok(n)
    }
}
