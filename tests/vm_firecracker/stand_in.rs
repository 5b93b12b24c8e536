//! Stand-ins for `firecracker` and `jailer`, which cannot be installed on our machines. They
//! behave like the real v1.16.1 programs in the ways the engine depends on; each behaviour names
//! where the fact comes from ("issue 8" is the report of a run against a real v1.16.1 API server
//! built from source; "docs" is Firecracker's own documentation; "swagger" the API contract).
//! Exact wording of messages is approximate; what is mimicked is when they happen.
//!
//! The Firecracker stand-in is this test binary run again as its `stand_in_firecracker` test (a
//! shell wrapper named like the real binary sets `FAKE_FC=1` and passes its arguments after
//! `--`), so it needs nothing but the test itself:
//! - stdout is the guest's serial console; without `--log-path` its own log goes to stdout too,
//!   with it to that file, which must already exist (docs: logger.md "create the resource
//!   first"; issue 8 item 16).
//! - it refuses to bind over an existing `--api-sock` file and exits at once with a log line,
//!   and when it dies the socket file stays (issue 8 item 15).
//! - under the jailer every path it is given is inside the chroot: a host path that does not
//!   exist there fails with HTTP 400, e.g. "Cannot perform open on the snapshot backing file"
//!   (issue 8 item 11). The chroot is emulated by resolving paths under `FAKE_FC_ROOT`.
//! - request bodies are parsed with `deny_unknown_fields` (Firecracker's vmm_config), errors come
//!   as `{"fault_message": ...}`, an unknown path as `{ "error": ... }` with a raw newline.
//! - `/snapshot/load` only before any configuration (docs: snapshotting.md), opens the
//!   state, the memory file and the drive path recorded in the snapshot, failing if any is gone;
//!   the restored drive is the recorded one until `PATCH /drives/{id}` (issue 8 item 17, which
//!   reports a real v1.16.1 accepting that PATCH after a load).
//! - `PUT /snapshot/create` only while paused; it writes the state (recording the drive path)
//!   and the memory file where it is told.
//! - `GET /vm/config` reports the drives and network interfaces (swagger: FullVmConfiguration).
//!
//! The jailer stand-in is a shell script: it names the chroot `<chroot_base>/<exec file
//! name>/<id>/root` (docs: jailer.md; issue 8 item 14), creates `dev/net/tun` in it and fails
//! with "File exists" when a reused jail already has one (the real jailer's mknod; issue 8 item
//! 12), copies the exec file in as `<exec file name>` and execs that with `--id <id>` and the
//! arguments after `--` (docs: jailer.md). It does not chroot or drop privileges (that needs root and would
//! hide the test binary from itself); the Firecracker stand-in resolves paths under the chroot
//! instead.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use fireclaw::vmm::firecracker::requests::*;

/// Writes an executable `firecracker` stand-in called `name` into `dir`. `env` adds settings:
/// `FAKE_FC_RECORD` (a file that receives every request as a JSON line), `FAKE_FC_FAULT`
/// (`METHOD PATH|status|body`: answer that request so), `FAKE_FC_EXIT_AFTER_BIND` (log a fatal
/// error and exit once the socket is bound), `FAKE_FC_HANG` (never bind it).
pub fn firecracker(dir: &Path, name: &str, env: &[(&str, &str)]) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let mut script = String::from(
        "#!/bin/sh\n# Stand-in for Firecracker v1.16.1 (tests/vm_firecracker/stand_in.rs).\n",
    );
    script.push_str("FAKE_FC=1\nexport FAKE_FC\n");
    for (k, v) in env {
        script.push_str(&format!("{k}='{v}'\nexport {k}\n"));
    }
    // The guest console is fd 3; the test harness's own chatter goes nowhere.
    script.push_str(&format!(
        "exec 3>&1 >/dev/null\nexec '{}' --ignored --exact --nocapture --test-threads=1 -q stand_in_firecracker -- \"$@\"\n",
        exe.display()
    ));
    executable(&dir.join(name), &script)
}

/// Writes an executable `jailer` stand-in into `dir`.
pub fn jailer(dir: &Path) -> PathBuf {
    executable(
        &dir.join("jailer"),
        r#"#!/bin/sh
# Stand-in for Firecracker's jailer v1.16.1 (tests/vm_firecracker/stand_in.rs).
PATH=/usr/bin:/bin
set -eu
while [ $# -gt 0 ]; do
  case "$1" in
    --id) id=$2; shift 2;;
    --exec-file) exec_file=$2; shift 2;;
    --uid) shift 2;;
    --gid) shift 2;;
    --chroot-base-dir) base=$2; shift 2;;
    --) shift; break;;
    *) echo "Jailer error: unknown argument $1" >&2; exit 1;;
  esac
done
name=${exec_file##*/}
root="$base/$name/$id/root"
mkdir -p "$root/dev/net"
if [ -e "$root/dev/net/tun" ]; then
  echo "Jailer error: Failed to create /dev/net/tun via mknod inside the jail: File exists (os error 17)" >&2
  exit 1
fi
: > "$root/dev/net/tun"
cp "$exec_file" "$root/$name"
cd "$root"
FAKE_FC_ROOT=$root
export FAKE_FC_ROOT
exec "$root/$name" --id "$id" "$@"
"#,
    )
}

fn executable(path: &Path, script: &str) -> PathBuf {
    std::fs::write(path, script).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.to_path_buf()
}

/// The stand-in process's main, when this test binary runs as one: Firecracker's arguments are
/// the ones after `--` (to the test harness they are filters that match nothing, and they keep
/// the process's command line like the real one's).
pub fn main() -> ! {
    let args: Vec<String> = std::env::args().skip_while(|a| a != "--").skip(1).collect();
    std::process::exit(run(args))
}

struct Machine {
    root: PathBuf,
    log: Box<dyn Write>,
    console: std::fs::File,
    configured: bool,
    running: bool,
    paused: bool,
    kernel: Option<String>,
    drive: Option<String>,
    tap: Option<String>,
}

impl Machine {
    /// A path as the chrooted process would open it.
    fn host(&self, p: &str) -> PathBuf {
        match p.strip_prefix('/') {
            Some(rel) => self.root.join(rel),
            None => PathBuf::from(p),
        }
    }
}

fn run(args: Vec<String>) -> i32 {
    use std::os::fd::FromRawFd;
    // SAFETY: the wrapper script opened fd 3 (the VMM's stdout) for us, and nothing else owns it.
    let console = unsafe { std::fs::File::from_raw_fd(3) };
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let root = PathBuf::from(std::env::var("FAKE_FC_ROOT").unwrap_or_else(|_| "/".into()));
    let mut m = Machine {
        root,
        log: Box::new(console.try_clone().unwrap()),
        console,
        configured: false,
        running: false,
        paused: false,
        kernel: None,
        drive: None,
        tap: None,
    };
    if let Some(path) = arg("--log-path") {
        match std::fs::OpenOptions::new().append(true).open(m.host(&path)) {
            Ok(f) => m.log = Box::new(f),
            Err(e) => {
                eprintln!("Failed to initialize logger: {path}: {e}");
                return 1;
            }
        }
    }
    let id = arg("--id").unwrap_or_else(|| "anonymous-instance".into());
    let _ = writeln!(m.log, "[{id}:main] Running Firecracker v1.16.1");
    let Some(sock) = arg("--api-sock") else {
        eprintln!("the stand-in needs --api-sock");
        return 1;
    };
    let sock = m.host(&sock);
    if std::env::var_os("FAKE_FC_HANG").is_some() {
        let _ = writeln!(m.log, "[{id}:main] stuck before binding the API socket");
        loop {
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
    }
    if sock.exists() {
        let _ = writeln!(
            m.log,
            "[{id}:main] Error creating the HTTP server: IO error: Address in use (os error 98)"
        );
        return 1;
    }
    let listener = match UnixListener::bind(&sock) {
        Ok(l) => l,
        Err(e) => {
            let _ = writeln!(m.log, "[{id}:main] Failed to bind {}: {e}", sock.display());
            return 1;
        }
    };
    if std::env::var_os("FAKE_FC_EXIT_AFTER_BIND").is_some() {
        let _ = writeln!(
            m.log,
            "[{id}:main] Error creating the vmm: Kvm(Kvm(Error(13))): Permission denied opening /dev/kvm"
        );
        return 1;
    }
    let record = std::env::var_os("FAKE_FC_RECORD").map(PathBuf::from);
    let fault = std::env::var("FAKE_FC_FAULT").ok();
    for conn in listener.incoming() {
        let Ok(mut s) = conn else { continue };
        let Some((method, path, body)) = read_request(&mut s) else {
            continue;
        };
        let _ = writeln!(
            m.log,
            "[{id}:fc_api] The API server received a {method} request on \"{path}\" with body {body:?}."
        );
        if let Some(rec) = &record {
            let line = json!({
                "request": format!("{method} {path}"),
                "body": serde_json::from_str::<Value>(&body).unwrap_or(Value::Null),
            });
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(rec)
                .unwrap();
            writeln!(f, "{line}").unwrap();
        }
        let (status, answer) = match fault
            .as_deref()
            .and_then(|f| <[&str; 3]>::try_from(f.splitn(3, '|').collect::<Vec<_>>()).ok())
        {
            Some([which, status, canned]) if which == format!("{method} {path}") => {
                (status.parse().unwrap(), canned.to_string())
            }
            _ => handle(&mut m, &method, &path, &body),
        };
        let reason = if status < 300 { "" } else { "Bad Request" };
        let _ = write!(
            s,
            "HTTP/1.1 {status} {reason}\r\nServer: Firecracker API\r\nConnection: keep-alive\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{answer}",
            answer.len()
        );
    }
    0
}

fn read_request(s: &mut UnixStream) -> Option<(String, String, String)> {
    let mut r = BufReader::new(s.try_clone().ok()?);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    // A connection that sends nothing is the engine probing that we listen.
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next()?.to_string(), parts.next()?.to_string());
    let mut len = 0;
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        if h == "\r\n" || h.is_empty() {
            break;
        }
        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().ok()?;
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some((method, path, String::from_utf8_lossy(&body).into_owned()))
}

fn fault(message: &str) -> (u16, String) {
    (400, json!({ "fault_message": message }).to_string())
}

fn parse<T: serde::de::DeserializeOwned>(body: &str) -> Result<T, (u16, String)> {
    serde_json::from_str(body).map_err(|e| {
        fault(&format!(
            "An error occurred when deserializing the json body of a request: {e}."
        ))
    })
}

fn exists(m: &Machine, p: &str, what: &str) -> Result<(), (u16, String)> {
    std::fs::metadata(m.host(p))
        .map(|_| ())
        .map_err(|e| fault(&format!("{what} {p}: {e}")))
}

fn handle(m: &mut Machine, method: &str, path: &str, body: &str) -> (u16, String) {
    match handle_inner(m, method, path, body) {
        Ok(None) => (204, String::new()),
        Ok(Some(v)) => (200, v.to_string()),
        Err(e) => e,
    }
}

fn handle_inner(
    m: &mut Machine,
    method: &str,
    path: &str,
    body: &str,
) -> Result<Option<Value>, (u16, String)> {
    const AFTER_START: &str =
        "The requested operation is not supported after starting the microVM.";
    const BEFORE_START: &str =
        "The requested operation is not supported before starting the microVM.";
    let pre_boot = |m: &mut Machine| {
        if m.running {
            Err(fault(AFTER_START))
        } else {
            m.configured = true;
            Ok(())
        }
    };
    match (method, path) {
        ("PUT", "/boot-source") => {
            let b: BootSource = parse(body)?;
            pre_boot(m)?;
            exists(m, &b.kernel_image_path, "Cannot open kernel image")?;
            if let Some(i) = &b.initrd_path {
                exists(m, i, "Cannot open initrd")?;
            }
            m.kernel = Some(b.kernel_image_path);
        }
        ("PUT", "/machine-config") => {
            let _: MachineConfig = parse(body)?;
            pre_boot(m)?;
        }
        ("PUT", "/drives/rootfs") => {
            let d: Drive = parse(body)?;
            pre_boot(m)?;
            exists(
                m,
                &d.path_on_host,
                "Unable to create the block device: Cannot open the backing file",
            )?;
            m.drive = Some(d.path_on_host);
        }
        ("PUT", "/network-interfaces/eth0") => {
            let n: NetworkInterface = parse(body)?;
            pre_boot(m)?;
            m.tap = Some(n.host_dev_name);
        }
        ("PUT", "/actions") => {
            let _: InstanceAction = parse(body)?;
            if m.running {
                return Err(fault(AFTER_START));
            }
            if m.kernel.is_none() {
                return Err(fault("Cannot start microvm without kernel configuration."));
            }
            m.running = true;
            let _ = writeln!(m.log, "Successfully started microvm");
            guest_runs(m, "booted");
        }
        ("PATCH", "/vm") => {
            let v: Vm = parse(body)?;
            if !m.running {
                return Err(fault(BEFORE_START));
            }
            m.paused = v.state == VmState::Paused;
            if !m.paused {
                guest_runs(m, "resumed");
            }
        }
        ("PATCH", "/drives/rootfs") => {
            let d: PartialDrive = parse(body)?;
            if !m.running {
                return Err(fault(BEFORE_START));
            }
            exists(m, &d.path_on_host, "Unable to patch the block device: Cannot open the backing file")?;
            m.drive = Some(d.path_on_host);
        }
        ("PUT", "/snapshot/create") => {
            let c: SnapshotCreate = parse(body)?;
            if !m.paused {
                return Err(fault("Create snapshot error: the microVM must be paused"));
            }
            let state = json!({ "drive": m.drive, "tap": m.tap });
            std::fs::write(m.host(&c.snapshot_path), state.to_string()).map_err(|e| {
                fault(&format!(
                    "Create snapshot error: Cannot save the microVM state: {e}"
                ))
            })?;
            std::fs::write(m.host(&c.mem_file_path), b"guest memory").map_err(|e| {
                fault(&format!("Create snapshot error: Cannot write the memory file: {e}"))
            })?;
        }
        ("PUT", "/snapshot/load") => {
            let l: SnapshotLoad = parse(body)?;
            if m.configured || m.running {
                return Err(fault(
                    "Loading a microVM snapshot not allowed after configuring boot-specific resources.",
                ));
            }
            let state = std::fs::read_to_string(m.host(&l.snapshot_path)).map_err(|e| {
                fault(&format!(
                    "Load snapshot error: Cannot perform open on the snapshot backing file: {e}"
                ))
            })?;
            exists(
                m,
                &l.mem_backend.backend_path,
                "Load snapshot error: Cannot open the memory file",
            )?;
            let state: Value = serde_json::from_str(&state)
                .map_err(|e| fault(&format!("Load snapshot error: bad state: {e}")))?;
            let drive = state["drive"].as_str().unwrap_or_default().to_string();
            exists(
                m,
                &drive,
                "Load snapshot error: Failed to restore the block device: Cannot open the backing file",
            )?;
            m.drive = Some(drive);
            m.tap = l
                .network_overrides
                .first()
                .map(|o| o.host_dev_name.clone())
                .or_else(|| state["tap"].as_str().map(String::from));
            m.running = true;
            m.paused = !l.resume_vm;
            if l.resume_vm {
                guest_runs(m, "resumed");
            }
        }
        ("GET", "/vm/config") => {
            return Ok(Some(json!({
                "drives": [{ "drive_id": "rootfs", "path_on_host": m.drive }],
                "network-interfaces": [{ "iface_id": "eth0", "host_dev_name": m.tap }],
            })))
        }
        _ => {
            return Err((
                400,
                format!("{{ \"error\": \"Invalid request method and/or path: {method} {path}.\nAll methods and paths are documented in swagger.\" }}"),
            ))
        }
    }
    Ok(None)
}

/// What the guest prints on its serial console when it runs.
fn guest_runs(m: &mut Machine, how: &str) {
    let _ = writeln!(
        m.console,
        "[    0.000000] stand-in guest {how}, root disk {}",
        m.drive.as_deref().unwrap_or("none")
    );
}
