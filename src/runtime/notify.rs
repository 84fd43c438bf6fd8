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
