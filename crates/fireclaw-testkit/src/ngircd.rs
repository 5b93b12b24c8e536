//! A real ngircd, started the way the distribution's `ngircd.service` starts it: as the unit's
//! `User=`/`Group=` (with the user's supplementary groups), with its `NoNewPrivileges=` and
//! `CapabilityBoundingSet=`, running the unit's `ExecStart=` command line, all read from the
//! installed unit file. So a configuration the daemon cannot read as that user fails here as it
//! would on the host.
//!
//! Two things differ from systemd, both needed to run it from a test: `-f <config>` names the file
//! under test instead of the compiled-in default, and `--nodaemon` keeps the process in the
//! foreground (the unit is `Type=forking`) so the fixture owns it and stops it on drop.
//!
//! ```no_run
//! # fn demo(conf: &std::path::Path) -> Result<(), String> {
//! let irc = fireclaw_testkit::ngircd::Ngircd::start(conf, "my-netns", "127.0.0.1:6667".parse().unwrap())?;
//! let stream = irc.connect().map_err(|e| e.to_string())?;
//! # drop(stream); Ok(()) }
//! ```
//!
//! Needs root (to switch to the unit's user), `ip`, `setpriv` and ngircd installed. The config's
//! directory and every directory above it must be searchable by that user (a `tempfile` directory
//! is 0700: chmod it 0755).

use std::io::Read as _;
use std::net::{SocketAddr, SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::unit::{self, Service};

/// Where Debian and Ubuntu install the unit.
pub const UNIT_FILE: &str = "/lib/systemd/system/ngircd.service";

/// How long [`Ngircd::start`] waits for the daemon to listen.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(20);

/// The distribution's ngircd unit, read from [`UNIT_FILE`].
pub fn service() -> Result<Service, String> {
    unit::read(Path::new(UNIT_FILE))
}

/// A running ngircd; stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Ngircd {
    child: Child,
    netns: String,
    addr: SocketAddrV4,
    log: tempfile::NamedTempFile,
}

/// The command that runs `extra` appended to the unit's command line, as the unit's user, in the
/// namespace.
fn command(service: &Service, netns: &str, extra: &[&str]) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", netns, "setpriv"])
        .args(service.setpriv_args())
        .arg("--")
        .args(&service.exec_start)
        .args(extra);
    cmd
}

/// Runs `ngircd --configtest -f config` as the unit's user; its stdout when the file passes, or an
/// error holding everything it printed.
pub fn configtest(config: &Path, netns: &str) -> Result<String, String> {
    let service = service()?;
    let conf = config.to_str().ok_or("config path is not UTF-8")?;
    let out = command(&service, netns, &["--configtest", "-f", conf])
        .output()
        .map_err(|e| format!("running ngircd --configtest: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "ngircd --configtest -f {conf} failed ({}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

impl Ngircd {
    /// Starts ngircd with `config` in network namespace `netns` (a name under /run/netns) and
    /// waits until it accepts connections on `listen`. An error carries the daemon's output (for
    /// "Can't read configuration ... Permission denied").
    pub fn start(config: &Path, netns: &str, listen: SocketAddrV4) -> Result<Ngircd, String> {
        let service = service()?;
        let conf = config.to_str().ok_or("config path is not UTF-8")?;
        let log = tempfile::NamedTempFile::new().map_err(|e| format!("log file: {e}"))?;
        let out = log.reopen().map_err(|e| format!("log file: {e}"))?;
        let err = out.try_clone().map_err(|e| format!("log file: {e}"))?;
        let child = command(&service, netns, &["--nodaemon", "-f", conf])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("starting ngircd: {e}"))?;
        let mut server = Ngircd {
            child,
            netns: netns.to_string(),
            addr: listen,
            log,
        };
        server.wait_listening()?;
        Ok(server)
    }

    fn wait_listening(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + LISTEN_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "ngircd exited ({status}) before listening on {}:\n{}",
                    self.addr,
                    self.output()
                ));
            }
            match self.connect() {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() > deadline => {
                    return Err(format!(
                        "ngircd never listened on {} ({e}):\n{}",
                        self.addr,
                        self.output()
                    ))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// A TCP connection to the server, made from inside its namespace (the socket stays there).
    pub fn connect(&self) -> std::io::Result<TcpStream> {
        connect_in(&self.netns, self.addr)
    }

    pub fn addr(&self) -> SocketAddrV4 {
        self.addr
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the daemon printed so far (ngircd logs to the console under `--nodaemon`).
    pub fn output(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = self.log.reopen() {
            let _ = f.read_to_string(&mut text);
        }
        text
    }
}

impl Drop for Ngircd {
    fn drop(&mut self) {
        // `ip netns exec` and setpriv exec in place: the child is ngircd itself.
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Connects to `addr` from inside network namespace `netns`: setns(2) affects only the calling
/// thread, so a short-lived thread joins the namespace and makes the socket.
pub fn connect_in(netns: &str, addr: SocketAddrV4) -> std::io::Result<TcpStream> {
    let path = PathBuf::from("/run/netns").join(netns);
    std::thread::spawn(move || {
        let fd = std::fs::File::open(&path)?;
        nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(std::io::Error::from)?;
        TcpStream::connect_timeout(&SocketAddr::V4(addr), Duration::from_secs(2))
    })
    .join()
    .map_err(|_| std::io::Error::other("connect thread panicked"))?
}
