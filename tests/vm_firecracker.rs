//! The Firecracker engine without Firecracker (none can be installed on our machines).
//!
//! - `contract_*`: every request the engine sends is validated against Firecracker's published
//!   API contract, the swagger file of v1.16.1, found through `FIRECLAW_FC_SWAGGER` or at
//!   `../shared/reference/firecracker-swagger-v1.16.1.yaml` beside the repository. A plain clone
//!   does not have it, so these are ignored unless asked for, and fail when asked for without it.
//! - The rest start the engine against stand-ins for `firecracker` and `jailer`
//!   (`vm_firecracker/stand_in.rs` lists what real behaviour each mimics, and where that fact
//!   comes from) and need nothing: no root, no KVM.
//! - `host_*`: staging files into a jail as another user; needs root.

mod support;

#[path = "vm_firecracker/stand_in.rs"]
mod stand_in;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use fireclaw::vmm::api::{self, ApiError};
use fireclaw::vmm::firecracker::{self, Firecracker, Jailer};
use fireclaw::vmm::{Boot, EngineOptions, SnapshotFiles, VmSpec, Vmm, VmmError};

const CONTRACT: &str =
    "contract: needs Firecracker's swagger file (FIRECLAW_FC_SWAGGER or ../shared/reference)";

/// Not a test: the stand-in Firecracker process the engine tests start (this binary, run again
/// with `FAKE_FC` set). Run on its own it does nothing.
#[test]
#[ignore = "the stand-in firecracker process; the engine tests start it"]
fn stand_in_firecracker() {
    if std::env::var_os("FAKE_FC").is_some() {
        stand_in::main();
    }
}

fn swagger() -> Value {
    let path = std::env::var_os("FIRECLAW_FC_SWAGGER")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../shared/reference/firecracker-swagger-v1.16.1.yaml")
        });
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; point FIRECLAW_FC_SWAGGER at Firecracker v1.16.1's swagger file \
             (src/firecracker/swagger/firecracker.yaml in its source)",
            path.display()
        )
    });
    let yaml: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    serde_json::to_value(yaml).unwrap()
}

/// Finds the operation for `method path` (path templates like `/drives/{drive_id}` match any
/// segment) and validates the body against its `in: body` schema.
fn validate(spec: &Value, method: &str, path: &str, body: &Value) -> Result<(), String> {
    let paths = spec["paths"].as_object().unwrap();
    let (template, item) = paths
        .iter()
        .find(|(t, _)| template_matches(t, path))
        .ok_or_else(|| format!("no path {path} in the API"))?;
    let op = &item[method.to_lowercase()];
    if op.is_null() {
        return Err(format!("{method} {template} is not an operation"));
    }
    let body_param = op["parameters"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["in"] == "body"))
        .ok_or_else(|| format!("{method} {template} takes no body"))?;
    check(spec, &body_param["schema"], body, "body")?;
    // Firecracker also requires the id in the path to equal the id in the body.
    if let Some(param) = template.split('/').find(|s| s.starts_with('{')) {
        let name = param.trim_matches(|c| c == '{' || c == '}');
        let seg = path.rsplit('/').next().unwrap();
        if body[name] != Value::String(seg.into()) {
            return Err(format!("path {path} does not match body {name}"));
        }
    }
    Ok(())
}

fn template_matches(template: &str, path: &str) -> bool {
    let t: Vec<_> = template.split('/').collect();
    let p: Vec<_> = path.split('/').collect();
    t.len() == p.len()
        && t.iter()
            .zip(&p)
            .all(|(a, b)| a == b || (a.starts_with('{') && !b.is_empty()))
}

/// A strict JSON-schema subset as Swagger 2.0 uses it. Unknown properties are errors because
/// Firecracker deserializes with `deny_unknown_fields`.
fn check(spec: &Value, schema: &Value, v: &Value, at: &str) -> Result<(), String> {
    if let Some(r) = schema["$ref"].as_str() {
        let name = r.trim_start_matches("#/definitions/");
        return check(spec, &spec["definitions"][name], v, at);
    }
    if let Some(allowed) = schema["enum"].as_array() {
        if !allowed.contains(v) {
            return Err(format!("{at}: {v} not in {allowed:?}"));
        }
    }
    match schema["type"].as_str() {
        Some("object") | None if schema["properties"].is_object() => {
            let obj = v.as_object().ok_or(format!("{at}: expected object"))?;
            for req in schema["required"].as_array().into_iter().flatten() {
                let req = req.as_str().unwrap();
                if !obj.contains_key(req) {
                    return Err(format!("{at}: missing required {req}"));
                }
            }
            for (k, val) in obj {
                let prop = &schema["properties"][k];
                if prop.is_null() {
                    return Err(format!("{at}: unknown property {k}"));
                }
                check(spec, prop, val, &format!("{at}.{k}"))?;
            }
        }
        Some("string") if !v.is_string() => return Err(format!("{at}: expected string")),
        Some("boolean") if !v.is_boolean() => return Err(format!("{at}: expected boolean")),
        Some("integer") => {
            let n = v.as_i64().ok_or(format!("{at}: expected integer"))?;
            if schema["minimum"].as_i64().is_some_and(|m| n < m)
                || schema["maximum"].as_i64().is_some_and(|m| n > m)
            {
                return Err(format!("{at}: {n} out of range"));
            }
        }
        Some("array") => {
            for (i, item) in v
                .as_array()
                .ok_or(format!("{at}: expected array"))?
                .iter()
                .enumerate()
            {
                check(spec, &schema["items"], item, &format!("{at}[{i}]"))?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn spec(run_dir: &Path, boot: Boot) -> VmSpec {
    VmSpec {
        id: "0123456789ab".into(),
        vcpus: 2,
        mem_mib: 512,
        kernel: "/var/lib/fireclaw/images/vmlinux".into(),
        initrd: Some("/var/lib/fireclaw/images/initrd".into()),
        cmdline: "console=ttyS0 reboot=k panic=1 ip=172.16.0.2::172.16.0.1:255.255.255.0::eth0:off"
            .into(),
        root_disk: "/var/lib/fireclaw/disks/0123456789ab.img".into(),
        extra_disk: None,
        tap: "fc-0123456789ab".into(),
        mac: "02:fc:ac:10:00:02".into(),
        run_dir: run_dir.to_path_buf(),
        boot,
    }
}

fn sequence(calls: &[firecracker::ApiCall]) -> Vec<String> {
    calls
        .iter()
        .map(|c| format!("{} {}", c.method, c.path))
        .collect()
}

#[test]
fn boot_sequence_is_exact() {
    let s = spec(Path::new("/run/x"), Boot::Kernel);
    let calls = Firecracker::start_calls(&s);
    assert_eq!(
        sequence(&calls),
        [
            "PUT /boot-source",
            "PUT /machine-config",
            "PUT /drives/rootfs",
            "PUT /network-interfaces/eth0",
            "PUT /actions"
        ]
    );
    let json: Vec<Value> = calls.iter().map(|c| c.json()).collect();
    assert_eq!(json[0]["initrd_path"], "/var/lib/fireclaw/images/initrd");
    assert_eq!(json[1]["vcpu_count"], 2);
    assert_eq!(json[2]["is_root_device"], true);
    assert_eq!(json[3]["host_dev_name"], "fc-0123456789ab");
    assert_eq!(json[4]["action_type"], "InstanceStart");
}

#[test]
fn restore_loads_paused_repoints_the_disk_then_resumes() {
    let files = SnapshotFiles::in_dir(Path::new("/var/lib/fireclaw/snapshots/base"));
    let s = spec(Path::new("/run/x"), Boot::Snapshot(files));
    let calls = Firecracker::start_calls(&s);
    assert_eq!(
        sequence(&calls),
        ["PUT /snapshot/load", "PATCH /drives/rootfs", "PATCH /vm"]
    );
    assert_eq!(calls[0].json()["resume_vm"], false);
    assert_eq!(
        calls[1].json()["path_on_host"],
        "/var/lib/fireclaw/disks/0123456789ab.img"
    );
    assert_eq!(calls[2].json()["state"], "Resumed");
}

#[test]
#[ignore = "contract: needs Firecracker's swagger file (FIRECLAW_FC_SWAGGER or ../shared/reference)"]
fn contract_boot_and_restore_requests_are_valid() {
    let api = swagger();
    let files = SnapshotFiles::in_dir(Path::new("/var/lib/fireclaw/snapshots/base"));
    let mut calls = Firecracker::start_calls(&spec(Path::new("/run/x"), Boot::Kernel));
    calls.extend(Firecracker::start_calls(&spec(
        Path::new("/run/x"),
        Boot::Snapshot(files.clone()),
    )));
    calls.extend(firecracker::snapshot_calls(&files));
    calls.push(firecracker::pause_call());
    calls.push(firecracker::resume_call());
    for c in &calls {
        validate(&api, c.method, &c.path, &c.json())
            .unwrap_or_else(|e| panic!("{} {}: {e}", c.method, c.path));
    }
    let _ = CONTRACT;
}

#[test]
#[ignore = "contract: needs Firecracker's swagger file (FIRECLAW_FC_SWAGGER or ../shared/reference)"]
fn contract_the_validator_rejects_what_firecracker_would() {
    let api = swagger();
    let bad = [
        (
            "PUT",
            "/machine-config",
            r#"{"vcpu_count": 0, "mem_size_mib": 128}"#,
        ),
        ("PUT", "/machine-config", r#"{"vcpu_count": 1}"#),
        (
            "PUT",
            "/boot-source",
            r#"{"kernel_image_path": "/k", "bootargs": "typo"}"#,
        ),
        (
            "PUT",
            "/drives/rootfs",
            r#"{"drive_id": "other", "is_root_device": true}"#,
        ),
        ("PATCH", "/drives/rootfs", r#"{"path_on_host": "/x"}"#),
        ("PUT", "/actions", r#"{"action_type": "Reboot"}"#),
        ("POST", "/actions", r#"{"action_type": "InstanceStart"}"#),
        ("PUT", "/nope", r#"{}"#),
    ];
    for (method, path, body) in bad {
        let body: Value = serde_json::from_str(body).unwrap();
        assert!(
            validate(&api, method, path, &body).is_err(),
            "{method} {path} {body}"
        );
    }
}

/// A world for one engine test: a run dir, the machine's files, stand-in binaries.
struct World {
    dir: tempfile::TempDir,
    record: PathBuf,
}

impl World {
    fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        for f in ["vmlinux", "initrd", "disk-a.img", "disk-b.img"] {
            std::fs::write(dir.path().join(f), f).unwrap();
        }
        std::fs::create_dir(dir.path().join("run")).unwrap();
        World {
            record: dir.path().join("requests.jsonl"),
            dir,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn spec(&self, id: &str, disk: &str, boot: Boot) -> VmSpec {
        let run_dir = self.path("run").join(id);
        std::fs::create_dir_all(&run_dir).unwrap();
        VmSpec {
            id: id.into(),
            kernel: self.path("vmlinux"),
            initrd: Some(self.path("initrd")),
            root_disk: self.path(disk),
            run_dir,
            ..spec(Path::new("/"), boot)
        }
    }

    /// The engine with a stand-in Firecracker installed as `name`.
    fn engine(&self, name: &str, env: &[(&str, &str)]) -> Firecracker {
        let bin = self.path("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let record = self.record.to_string_lossy().into_owned();
        let mut env = env.to_vec();
        env.push(("FAKE_FC_RECORD", &record));
        Firecracker {
            binary: stand_in::firecracker(&bin, name, &env),
            jailer: None,
            api_timeout: Duration::from_secs(10),
        }
    }

    /// The same, under the stand-in jailer with chroots in `<dir>/jails`.
    fn jailed(&self, name: &str) -> Firecracker {
        self.jailed_with(name, &[])
    }

    fn jailed_with(&self, name: &str, env: &[(&str, &str)]) -> Firecracker {
        let mut fc = self.engine(name, env);
        fc.jailer = Some(Jailer {
            binary: stand_in::jailer(&self.path("bin")),
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
            chroot_base: self.path("jails"),
        });
        fc
    }

    /// Every request the stand-in received, as `METHOD PATH` and body.
    fn requests(&self) -> Vec<(String, Value)> {
        std::fs::read_to_string(&self.record)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                (
                    v["request"].as_str().unwrap().to_string(),
                    v["body"].clone(),
                )
            })
            .collect()
    }
}

/// The stand-in's view of the machine (`GET /vm/config`).
fn vm_config(sock: &Path) -> Value {
    let r = api::call(sock, "GET", "/vm/config", None, Duration::from_secs(5)).unwrap();
    serde_json::from_str(&r.body).unwrap()
}

fn drive_of(sock: &Path) -> String {
    vm_config(sock)["drives"][0]["path_on_host"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn start_sends_the_sequence_to_the_api_socket() {
    let w = World::new();
    let s = w.spec("vm1", "disk-a.img", Boot::Kernel);
    let fc = w.engine("firecracker", &[]);
    let mut inst = fc.start(&s).unwrap();
    // Its command line names the run dir, as the real one's does: that is how `gc` finds it.
    let mentioning = || fireclaw::vm::processes_mentioning(&s.run_dir.to_string_lossy());
    assert_eq!(mentioning(), vec![inst.pid()]);
    let seen = w.requests();
    let expected = Firecracker::start_calls(&s);
    assert_eq!(seen.len(), expected.len(), "{seen:?}");
    for ((req, body), call) in seen.iter().zip(&expected) {
        assert_eq!(req, &format!("{} {}", call.method, call.path));
        assert_eq!(body, &call.json());
    }
    inst.kill().unwrap();
    assert!(!s.run_dir.join("api.sock").exists());
    assert!(mentioning().is_empty());
}

/// Item 16: Firecracker writes its log to a file of its own; the console is the guest's alone.
#[test]
fn firecracker_logs_to_its_own_file_and_the_console_is_the_guests() {
    let w = World::new();
    let s = w.spec("vm1", "disk-a.img", Boot::Kernel);
    let mut inst = w.engine("firecracker", &[]).start(&s).unwrap();
    let console = inst.console_tail();
    assert!(console.contains("stand-in guest booted"), "{console}");
    assert!(!console.contains("API server"), "{console}");
    assert!(!console.contains("Running Firecracker"), "{console}");
    let log = std::fs::read_to_string(firecracker::firecracker_log(&s)).unwrap();
    assert!(log.contains("Running Firecracker v1.16.1"), "{log}");
    assert!(log.contains("PUT request on \"/actions\""), "{log}");
    inst.kill().unwrap();
}

#[test]
fn fault_message_errors_surface_clearly_and_nothing_is_left_running() {
    let w = World::new();
    let s = w.spec("vm1", "disk-a.img", Boot::Kernel);
    let fault = r#"{"fault_message":"Invalid Memory Configuration: MmapRegion(Mmap(Os { code: 12, kind: OutOfMemory, message: \"Cannot allocate memory\" }))"}"#;
    let fc = w.engine(
        "firecracker",
        &[("FAKE_FC_FAULT", &format!("PUT /machine-config|400|{fault}"))],
    );
    let err = fc.start(&s).err().unwrap();
    match &err {
        VmmError::Api {
            error:
                ApiError::Fault {
                    status: 400,
                    message,
                },
            ..
        } => assert!(message.contains("Cannot allocate memory"), "{message}"),
        e => panic!("not an API fault: {e:?}"),
    }
    let err = err.to_string();
    assert!(err.contains("PUT /machine-config"), "{err}");
    assert!(err.contains("HTTP 400"), "{err}");
    assert!(
        err.contains("Invalid Memory Configuration") && err.contains("Cannot allocate memory"),
        "{err}"
    );
    assert!(!err.contains("fault_message"), "{err}");
    // The spawned process was killed with the failure.
    assert!(fireclaw::vm::processes_mentioning(&s.run_dir.to_string_lossy()).is_empty());
}

/// Item 15: the socket a dead Firecracker left does not cost the next start 10 s.
#[test]
fn a_stale_api_socket_does_not_stop_the_next_start() {
    let w = World::new();
    let s = w.spec("vm1", "disk-a.img", Boot::Kernel);
    // What a Firecracker that died leaves: the socket file, with no one listening.
    drop(UnixListener::bind(s.run_dir.join("api.sock")).unwrap());
    let t = Instant::now();
    let mut inst = w.engine("firecracker", &[]).start(&s).unwrap();
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    inst.kill().unwrap();
}

/// Item 15: a Firecracker that exits after binding its socket is reported at once, with why.
#[test]
fn a_firecracker_that_exits_at_start_is_reported_at_once_with_its_log() {
    let w = World::new();
    let s = w.spec("vm1", "disk-a.img", Boot::Kernel);
    let fc = w.engine("firecracker", &[("FAKE_FC_EXIT_AFTER_BIND", "1")]);
    let t = Instant::now();
    let err = fc.start(&s).err().unwrap();
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert!(matches!(err, VmmError::Exited { .. }), "{err:?}");
    let err = err.to_string();
    assert!(err.contains("exit code 1"), "{err}");
    assert!(err.contains("Permission denied opening /dev/kvm"), "{err}");
}

/// A Firecracker that lives but never listens: a timeout that says where it waited and what
/// Firecracker last logged, and nothing left running.
#[test]
fn a_firecracker_that_never_listens_times_out_with_its_log() {
    let w = World::new();
    let s = w.spec("vm1", "disk-a.img", Boot::Kernel);
    let mut fc = w.engine("firecracker", &[("FAKE_FC_HANG", "1")]);
    fc.api_timeout = Duration::from_millis(500);
    let err = fc.start(&s).err().unwrap();
    assert!(matches!(err, VmmError::Timeout { .. }), "{err:?}");
    let err = err.to_string();
    assert!(
        err.contains(&*s.run_dir.join("api.sock").to_string_lossy()),
        "{err}"
    );
    assert!(err.contains("stuck before binding the API socket"), "{err}");
    assert!(fireclaw::vm::processes_mentioning(&s.run_dir.to_string_lossy()).is_empty());
}

/// Item 14: the jailer names the chroot after the exec file, whatever the binary is called.
#[test]
fn jailed_start_finds_the_chroot_named_after_the_exec_file() {
    let w = World::new();
    let s = w.spec("vm1", "disk-a.img", Boot::Kernel);
    let fc = w.jailed("firecracker-v1.16.1-x86_64");
    let t = Instant::now();
    let mut inst = fc.start(&s).unwrap();
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    let root = w.path("jails/firecracker-v1.16.1-x86_64/vm1/root");
    assert_eq!(fc.api_socket(&s).unwrap(), root.join("api.sock"));
    let seen = w.requests();
    assert_eq!(seen[0].1["kernel_image_path"], "/kernel");
    assert_eq!(seen[0].1["initrd_path"], "/initrd");
    assert_eq!(seen[2].1["path_on_host"], "/rootfs");
    // Its own log is in the jail, not on the console.
    let log = std::fs::read_to_string(root.join("firecracker.log")).unwrap();
    assert!(log.contains("Running Firecracker"), "{log}");
    assert!(!inst.console_tail().contains("Running Firecracker"));
    inst.kill().unwrap();
}

/// Item 12: the jail goes with the machine (and with it the hard link that kept the disk's
/// blocks), a jail left by a machine that died does not stop the id starting again, one in use
/// is not taken over, and `remove_leftovers` (what teardown and `gc` call) kills what runs in a
/// jail and removes it.
#[test]
fn jails_are_removed_and_a_reused_id_starts() {
    let w = World::new();
    let s = w.spec("vm1", "disk-a.img", Boot::Kernel);
    let fc = w.jailed("firecracker");
    let jail = w.path("jails/firecracker/vm1");
    let mut inst = fc.start(&s).unwrap();
    assert_eq!(std::fs::metadata(w.path("disk-a.img")).unwrap().nlink(), 2);
    inst.kill().unwrap();
    assert!(!jail.exists());
    assert_eq!(std::fs::metadata(w.path("disk-a.img")).unwrap().nlink(), 1);

    // A machine that died: its jail, tun node and dead socket stay.
    let mut inst = fc.start(&s).unwrap();
    let pid = inst.pid();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    while inst.exited().is_none() {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::mem::forget(inst);
    assert!(jail.join("root/dev/net/tun").exists());
    let mut again = fc.start(&s).unwrap();
    again.kill().unwrap();
    assert!(!jail.exists());

    // A jail in use is never taken over by a start with the same id.
    let mut inst = fc.start(&s).unwrap();
    let err = fc.start(&s).err().unwrap().to_string();
    assert!(err.contains("in use"), "{err}");
    assert!(inst.exited().is_none());

    // gc after fireclaw died: the jailed Firecracker's command line names no run dir, so the
    // engine finds it by its jail, kills it and removes the jail.
    let opts = EngineOptions {
        firecracker: fc.clone(),
        qemu: Default::default(),
    };
    let errors = fireclaw::vmm::remove_leftovers(&opts, "vm1");
    assert!(errors.is_empty(), "{errors:?}");
    assert!(!jail.exists());
    assert!(inst.exited().is_some());
    drop(inst);
    assert!(fireclaw::vmm::remove_leftovers(&opts, "vm1").is_empty());
}

/// A jailed start that fails, while staging or at the API, leaves no jail and no process.
#[test]
fn a_failed_jailed_start_leaves_no_jail() {
    let w = World::new();
    let jail = w.path("jails/firecracker/vm1");
    let missing = w.spec("vm1", "no-such-disk.img", Boot::Kernel);
    let err = w
        .jailed("firecracker")
        .start(&missing)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("no-such-disk.img"), "{err}");
    assert!(!jail.exists());

    let s = w.spec("vm1", "disk-a.img", Boot::Kernel);
    let fault =
        r#"{"fault_message":"Unable to create the network device: Open tap device failed"}"#;
    let fc = w.jailed_with(
        "firecracker",
        &[(
            "FAKE_FC_FAULT",
            &format!("PUT /network-interfaces/eth0|400|{fault}"),
        )],
    );
    let err = fc.start(&s).err().unwrap().to_string();
    assert!(err.contains("Open tap device failed"), "{err}");
    assert!(!jail.exists());
    assert_eq!(std::fs::metadata(w.path("disk-a.img")).unwrap().nlink(), 1);
}

/// Item 11: under the jailer, snapshots are written inside the chroot and moved out, and a
/// restore stages the snapshot files (and its own disk) in; the snapshotted machine's disk may
/// be gone by then.
#[test]
fn jailed_snapshot_and_restore_stay_inside_the_chroot() {
    let w = World::new();
    let fc = w.jailed("firecracker");
    let base = w.spec("base", "disk-a.img", Boot::Kernel);
    let mut inst = fc.start(&base).unwrap();
    std::fs::create_dir(w.path("snap")).unwrap();
    let files = SnapshotFiles::in_dir(&w.path("snap"));
    inst.snapshot(&files).unwrap();
    inst.kill().unwrap();
    assert!(files.state.exists() && files.memory.exists());
    std::fs::remove_file(w.path("disk-a.img")).unwrap();

    let clone = w.spec("clone", "disk-b.img", Boot::Snapshot(files.clone()));
    let mut inst = fc.start(&clone).unwrap();
    let sock = fc.api_socket(&clone).unwrap();
    assert_eq!(drive_of(&sock), "/rootfs");
    let root = w.path("jails/firecracker/clone/root");
    assert_eq!(
        std::fs::metadata(root.join("rootfs")).unwrap().ino(),
        std::fs::metadata(w.path("disk-b.img")).unwrap().ino()
    );
    let load = &w
        .requests()
        .into_iter()
        .find(|(r, _)| r == "PUT /snapshot/load")
        .unwrap()
        .1;
    assert_eq!(load["snapshot_path"], "/snapshot/vmstate");
    assert_eq!(load["mem_backend"]["backend_path"], "/snapshot/memory");
    assert!(inst.console_tail().contains("resumed, root disk /rootfs"));
    inst.kill().unwrap();
    // The snapshot itself is untouched by the clone's teardown.
    assert!(files.state.exists() && files.memory.exists());
}

/// Item 17: a restored machine runs on its own disk, never on the snapshotted machine's.
#[test]
fn a_restored_machine_runs_on_its_own_disk() {
    let w = World::new();
    let fc = w.engine("firecracker", &[]);
    let base = w.spec("base", "disk-a.img", Boot::Kernel);
    let mut inst = fc.start(&base).unwrap();
    let files = SnapshotFiles::in_dir(&base.run_dir);
    inst.snapshot(&files).unwrap();
    inst.kill().unwrap();

    let clone = w.spec("clone", "disk-b.img", Boot::Snapshot(files));
    let mut inst = fc.start(&clone).unwrap();
    let disk_b = w.path("disk-b.img").to_string_lossy().into_owned();
    assert_eq!(drive_of(&fc.api_socket(&clone).unwrap()), disk_b);
    let console = inst.console_tail();
    assert!(
        console.contains(&format!("resumed, root disk {disk_b}")),
        "{console}"
    );
    assert!(!console.contains("disk-a.img"), "{console}");
    inst.kill().unwrap();
}

/// Item 13: staging never changes the owner of a file other machines share; only the
/// machine's own disk is given to the jail's user.
#[test]
#[ignore = "host tier: needs root (chown to another user); run with --include-ignored"]
fn host_staging_never_changes_the_owner_of_shared_files() {
    support::tier("host", true, &[]);
    use std::os::unix::fs::PermissionsExt;
    let w = World::new();
    std::fs::set_permissions(w.path("initrd"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let s = w.spec("vm1", "disk-a.img", Boot::Kernel);
    let nobody = 65534;
    let jailer = Jailer {
        binary: "/nonexistent/jailer".into(),
        uid: nobody,
        gid: nobody,
        chroot_base: w.path("jails"),
    };
    let jail = jailer
        .jail(Path::new("/usr/local/bin/firecracker"), "vm1")
        .unwrap();
    let seen = jail.stage(&s).unwrap();
    assert_eq!(seen.kernel, PathBuf::from("/kernel"));
    let meta = |p: &Path| std::fs::metadata(p).unwrap();
    // World-readable kernel: a hard link, owner unchanged.
    assert_eq!(meta(&w.path("vmlinux")).uid(), 0);
    assert_eq!(
        meta(&jail.root.join("kernel")).ino(),
        meta(&w.path("vmlinux")).ino()
    );
    // An initrd the jail's user cannot read: a copy it owns; the original is unchanged.
    assert_eq!(meta(&w.path("initrd")).uid(), 0);
    assert_ne!(
        meta(&jail.root.join("initrd")).ino(),
        meta(&w.path("initrd")).ino()
    );
    assert_eq!(meta(&jail.root.join("initrd")).uid(), nobody);
    // The machine's own disk is the jail user's.
    assert_eq!(meta(&w.path("disk-a.img")).uid(), nobody);
    jail.remove().unwrap();
}

/// A fake Firecracker API played by the test thread, for malformed answers the stand-in does
/// not give: records requests and answers each with the next canned response.
fn fake_api(sock: PathBuf, responses: Vec<String>) -> Arc<Mutex<Vec<(String, Value)>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let listener = UnixListener::bind(&sock).unwrap();
    let log = seen.clone();
    std::thread::spawn(move || {
        let mut responses = responses.into_iter();
        loop {
            let Ok((mut s, _)) = listener.accept() else {
                return;
            };
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            if line.is_empty() {
                continue;
            }
            let Some(resp) = responses.next() else { return };
            let mut len = 0;
            loop {
                let mut h = String::new();
                r.read_line(&mut h).unwrap();
                if h == "\r\n" || h.is_empty() {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; len];
            r.read_exact(&mut body).unwrap();
            let req: Vec<&str> = line.split_whitespace().collect();
            log.lock().unwrap().push((
                format!("{} {}", req[0], req[1]),
                serde_json::from_slice(&body).unwrap_or(Value::Null),
            ));
            s.write_all(resp.as_bytes()).unwrap();
        }
    });
    seen
}

fn http(status: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nServer: Firecracker API\r\nConnection: keep-alive\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

#[test]
fn http_layer_errors_with_raw_newlines_surface_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");
    let body = "{ \"error\": \"Invalid request method and/or path: PATCH /vm.\nAll methods and paths are documented in swagger.\" }";
    let _seen = fake_api(sock.clone(), vec![http("400 Bad Request", body)]);
    let err = firecracker::send(&sock, &firecracker::pause_call(), Duration::from_secs(5))
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "Firecracker API PATCH /vm: HTTP 400: Invalid request method and/or path: PATCH /vm. All methods and paths are documented in swagger."
    );
}

#[test]
fn api_errors_are_typed() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");
    let timeout = Duration::from_secs(5);
    let call = firecracker::pause_call();
    let api_error = |e: VmmError| match e {
        VmmError::Api { error, .. } => error,
        e => panic!("not an API error: {e:?}"),
    };
    // No socket, then a socket nobody listens on (what a dead Firecracker leaves).
    let e = api_error(firecracker::send(&sock, &call, timeout).unwrap_err());
    assert!(matches!(e, ApiError::Connect { .. }), "{e:?}");
    drop(UnixListener::bind(&sock).unwrap());
    let e = api_error(firecracker::send(&sock, &call, timeout).unwrap_err());
    assert!(matches!(e, ApiError::Refused { .. }), "{e:?}");
    std::fs::remove_file(&sock).unwrap();
    // Hangs up, speaks garbage, never answers.
    let _seen = fake_api(sock.clone(), vec![String::new(), "garbage\r\n\r\n".into()]);
    let e1 = api_error(firecracker::send(&sock, &call, timeout).unwrap_err());
    assert!(
        matches!(&e1, ApiError::Malformed(m) if m.contains("closed without a response")),
        "{e1:?}"
    );
    let e2 = api_error(firecracker::send(&sock, &call, timeout).unwrap_err());
    assert!(
        matches!(&e2, ApiError::Malformed(m) if m.contains("not an HTTP response")),
        "{e2:?}"
    );
    let silent = dir.path().join("silent.sock");
    let _listener = UnixListener::bind(&silent).unwrap();
    let e3 = api_error(firecracker::send(&silent, &call, Duration::from_millis(200)).unwrap_err());
    assert!(matches!(e3, ApiError::Timeout { .. }), "{e3:?}");
}
