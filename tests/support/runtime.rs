//! The runtime's tests: the `fireclaw` group for the run, a started runtime with its
//! NOTIFY_SOCKET and log.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use fireclaw::runtime::client::Client;
use fireclaw_proto::control::RuntimeStatus;

use super::run_ok;

/// The `fireclaw` group for the duration of the tests that need it: created when missing and
/// removed when the last user is done, so the host is left as it was.
static GROUP: Mutex<(usize, bool)> = Mutex::new((0, false));

pub struct GroupGuard;

impl GroupGuard {
    pub fn new() -> GroupGuard {
        let mut g = GROUP.lock().unwrap_or_else(|p| p.into_inner());
        if g.0 == 0 && nix::unistd::Group::from_name("fireclaw").unwrap().is_none() {
            run_ok(Command::new("groupadd").args(["--system", "fireclaw"]));
            g.1 = true;
        }
        g.0 += 1;
        GroupGuard
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        let mut g = GROUP.lock().unwrap_or_else(|p| p.into_inner());
        g.0 -= 1;
        if g.0 == 0 && g.1 {
            let _ = Command::new("groupdel").arg("fireclaw").status();
            g.1 = false;
        }
    }
}

pub struct Runtime {
    pub child: Child,
    notify: UnixDatagram,
    log: PathBuf,
    messages: Vec<String>,
}

impl Runtime {
    /// Spawns `cmd` (a `fireclaw ... runtime`) with a NOTIFY_SOCKET bound in `dir`, its stderr
    /// logged to a file there, and waits for READY=1.
    pub fn start(mut cmd: Command, dir: &Path) -> Runtime {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let notify_path = dir.join(format!("notify-{n}.sock"));
        let notify = UnixDatagram::bind(&notify_path).expect("bind notify socket");
        notify
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        let log = dir.join(format!("runtime-{n}.log"));
        let child = cmd
            .env("NOTIFY_SOCKET", &notify_path)
            // FIRECLAW_TEST_RUNTIME_LOG (a `tracing` filter) to read more of a failing run.
            .env(
                "RUST_LOG",
                std::env::var("FIRECLAW_TEST_RUNTIME_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn runtime");
        let mut rt = Runtime {
            child,
            notify,
            log,
            messages: Vec::new(),
        };
        rt.wait_message("READY=1", Duration::from_secs(60));
        rt
    }

    pub fn wait_message(&mut self, needle: &str, timeout: Duration) {
        let start = Instant::now();
        let mut buf = [0u8; 4096];
        while !self.messages.iter().any(|m| m.lines().any(|l| l == needle)) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "the runtime exited ({status}) before {needle}:\n{}",
                    self.log_text()
                );
            }
            assert!(
                start.elapsed() < timeout,
                "no {needle} from the runtime within {timeout:?}:\n{}",
                self.log_text()
            );
            if let Ok(n) = self.notify.recv(&mut buf) {
                self.messages
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn wait_log(&self, needle: &str) {
        self.wait_log_for(needle, Duration::from_secs(30))
    }

    pub fn wait_log_for(&self, needle: &str, timeout: Duration) {
        let start = Instant::now();
        while !self.log_text().contains(needle) {
            assert!(
                start.elapsed() < timeout,
                "the runtime did not log {needle:?}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig)
            .expect("signal runtime");
    }

    /// SIGTERM, then the exit status (waits at most 30 s).
    pub fn stop(mut self) -> (std::process::ExitStatus, String) {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        self.wait_message("STOPPING=1", Duration::from_secs(30));
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return (status, self.log_text());
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the runtime did not exit after SIGTERM:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Runtime {
    /// SIGKILL, as `kill -9` sends it: no STOPPING, no cleanup of any kind. Returns the log.
    pub fn kill(mut self) -> String {
        self.signal(nix::sys::signal::Signal::SIGKILL);
        let status = self.child.wait().expect("wait");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9),
            "{status}"
        );
        self.log_text()
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < timeout,
            "condition not met within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The image's manifest (and the files it names beside it) under the root's image directory.
pub fn install_manifest(root: &Path, manifest: &Path) -> String {
    let text = std::fs::read_to_string(manifest).unwrap();
    let m: serde_json::Value = serde_json::from_str(&text).unwrap();
    let name = m["name"].as_str().unwrap().to_string();
    let images = root.join("var/lib/fireclaw/images");
    std::fs::create_dir_all(&images).unwrap();
    std::os::unix::fs::symlink(manifest, images.join(format!("{name}.manifest.json"))).unwrap();
    if let Some(image) = m["image"].as_str().filter(|i| !i.starts_with('/')) {
        std::os::unix::fs::symlink(manifest.parent().unwrap().join(image), images.join(image))
            .unwrap();
    }
    name
}

pub fn status(client: &Client) -> RuntimeStatus {
    fireclaw::runtime::client::block_on(client.json::<RuntimeStatus>(
        hyper::Method::GET,
        "/v1/status",
        None,
    ))
    .unwrap()
    .unwrap()
}

pub fn ready(client: &Client) -> u32 {
    status(client).pools.iter().map(|p| p.ready).sum()
}

/// Waits until the pool has `n` ready VMs, failing with the runtime's log.
pub fn wait_ready(client: &Client, rt: &Runtime, n: u32, timeout: Duration) {
    let start = std::time::Instant::now();
    while ready(client) != n {
        assert!(
            start.elapsed() < timeout,
            "the pool did not reach {n} ready VMs within {timeout:?}:\n{}",
            rt.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
