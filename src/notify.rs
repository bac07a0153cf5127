//! systemd's notify protocol (`sd_notify`), for `Type=notify` units: READY=1 once the
//! first refresh has finished, WATCHDOG=1 while the runtime is alive, STOPPING=1 on
//! shutdown. Without NOTIFY_SOCKET (not started by systemd) every call does nothing.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Where systemd listens, if it does.
#[derive(Debug, Default)]
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
}

impl Notifier {
    /// From NOTIFY_SOCKET: a path, or `@name` for Linux's abstract namespace.
    pub fn from_env() -> Notifier {
        let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
            return Notifier::default();
        };
        let path = path.to_string_lossy().to_string();
        let address = match path.strip_prefix('@') {
            Some(name) => abstract_address(name.as_bytes()),
            None => SocketAddr::from_pathname(&path),
        };
        match (UnixDatagram::unbound(), address) {
            (Ok(socket), Ok(address)) => Notifier {
                target: Some((socket, address)),
            },
            (Err(err), _) | (_, Err(err)) => {
                tracing::warn!(socket = %path, error = %err, "cannot use NOTIFY_SOCKET; systemd will not be notified");
                Notifier::default()
            }
        }
    }

    /// Sends `state` (newline-separated `KEY=value` assignments). A failure is logged,
    /// never fatal: the exporter works without its supervisor hearing from it.
    pub fn notify(&self, state: &str) {
        if let Some((socket, address)) = &self.target
            && let Err(err) = socket.send_to_addr(state.as_bytes(), address)
        {
            tracing::warn!(error = %err, "sd_notify failed");
        }
    }

    /// Half of WATCHDOG_USEC, as systemd recommends, when the watchdog is on for this
    /// process (WATCHDOG_PID unset or ours) and NOTIFY_SOCKET is set.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.target.as_ref()?;
        if let Some(pid) = std::env::var_os("WATCHDOG_PID")
            && pid.to_string_lossy() != std::process::id().to_string()
        {
            return None;
        }
        let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
        (usec > 0).then(|| Duration::from_micros(usec / 2))
    }
}

#[cfg(target_os = "linux")]
fn abstract_address(name: &[u8]) -> std::io::Result<SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    SocketAddr::from_abstract_name(name)
}

#[cfg(not(target_os = "linux"))]
fn abstract_address(_name: &[u8]) -> std::io::Result<SocketAddr> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "abstract sockets exist only on Linux",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_socket_nothing_is_sent_and_nothing_fails() {
        let notifier = Notifier::default();
        notifier.notify("READY=1");
        assert_eq!(notifier.watchdog_interval(), None);
    }

    #[test]
    fn messages_arrive_on_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let systemd = UnixDatagram::bind(&path).unwrap();
        let notifier = Notifier {
            target: Some((
                UnixDatagram::unbound().unwrap(),
                SocketAddr::from_pathname(&path).unwrap(),
            )),
        };
        notifier.notify("READY=1\nSTATUS=serving");
        let mut buffer = [0u8; 256];
        let n = systemd.recv(&mut buffer).unwrap();
        assert_eq!(&buffer[..n], b"READY=1\nSTATUS=serving");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn messages_arrive_on_an_abstract_socket() {
        let name = format!("iam-key-exporter-test-{}", std::process::id());
        let address = abstract_address(name.as_bytes()).unwrap();
        let systemd = UnixDatagram::bind_addr(&address).unwrap();
        let notifier = Notifier {
            target: Some((UnixDatagram::unbound().unwrap(), address)),
        };
        notifier.notify("STOPPING=1");
        let mut buffer = [0u8; 64];
        let n = systemd.recv(&mut buffer).unwrap();
        assert_eq!(&buffer[..n], b"STOPPING=1");
    }
}
