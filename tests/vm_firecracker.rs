//! The Firecracker engine without Firecracker: every request it sends is validated against the
//! published API contract (shared/reference/firecracker-swagger-v1.16.1.yaml, read at test time
//! from the repository's parent directory), and a fake API server shows that Firecracker's two
//! error shapes surface as clear messages. Tier `unit`: no root needed.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::Value;

use fireclaw::vmm::firecracker::{self, ApiCall, Firecracker};
use fireclaw::vmm::{Boot, SnapshotFiles, VmSpec, Vmm};

fn swagger() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/reference/firecracker-swagger-v1.16.1.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; the API contract must be at ../shared/reference relative to the repository",
            path.display()
        )
    });
    let yaml: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    serde_json::to_value(yaml).unwrap()
}

/// Finds the operation for `method path` (path templates like `/drives/{drive_id}` match any
/// segment) and validates the body against its `in: body` schema.
fn validate(spec: &Value, call: &ApiCall) -> Result<(), String> {
    let paths = spec["paths"].as_object().unwrap();
    let (template, item) = paths
        .iter()
        .find(|(t, _)| template_matches(t, &call.path))
        .ok_or_else(|| format!("no path {} in the API", call.path))?;
    let op = &item[call.method.to_lowercase()];
    if op.is_null() {
        return Err(format!("{} {template} is not an operation", call.method));
    }
    let body_param = op["parameters"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["in"] == "body"))
        .ok_or_else(|| format!("{} {template} takes no body", call.method))?;
    check(spec, &body_param["schema"], &call.body, "body")?;
    // Firecracker also requires the id in the path to equal the id in the body.
    if let Some(param) = template.split('/').find(|s| s.starts_with('{')) {
        let name = param.trim_matches(|c| c == '{' || c == '}');
        let seg = call.path.rsplit('/').next().unwrap();
        if call.body[name] != Value::String(seg.into()) {
            return Err(format!("path {} does not match body {name}", call.path));
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
        tap: "fc-0123456789ab".into(),
        mac: "02:fc:ac:10:00:02".into(),
        run_dir: run_dir.to_path_buf(),
        boot,
    }
}

#[test]
fn boot_sequence_is_exact_and_valid() {
    let api = swagger();
    let s = spec(Path::new("/run/x"), Boot::Kernel);
    let calls = Firecracker::start_calls(&s);
    let seq: Vec<String> = calls
        .iter()
        .map(|c| format!("{} {}", c.method, c.path))
        .collect();
    assert_eq!(
        seq,
        [
            "PUT /boot-source",
            "PUT /machine-config",
            "PUT /drives/rootfs",
            "PUT /network-interfaces/eth0",
            "PUT /actions"
        ]
    );
    assert_eq!(
        calls[0].body["initrd_path"],
        "/var/lib/fireclaw/images/initrd"
    );
    assert_eq!(calls[1].body["vcpu_count"], 2);
    assert_eq!(calls[2].body["is_root_device"], true);
    assert_eq!(calls[3].body["host_dev_name"], "fc-0123456789ab");
    assert_eq!(calls[4].body["action_type"], "InstanceStart");
    for c in &calls {
        validate(&api, c).unwrap_or_else(|e| panic!("{} {}: {e}", c.method, c.path));
    }
}

#[test]
fn snapshot_restore_pause_resume_requests_are_valid() {
    let api = swagger();
    let files = SnapshotFiles::in_dir(Path::new("/var/lib/fireclaw/snapshots/base"));
    let s = spec(Path::new("/run/x"), Boot::Snapshot(files.clone()));
    let mut calls = Firecracker::start_calls(&s);
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].path, "/snapshot/load");
    calls.extend(firecracker::snapshot_calls(&files));
    calls.push(firecracker::pause_call());
    calls.push(firecracker::resume_call());
    for c in &calls {
        validate(&api, c).unwrap_or_else(|e| panic!("{} {}: {e}", c.method, c.path));
    }
}

#[test]
fn the_validator_rejects_what_firecracker_would() {
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
        ("PUT", "/actions", r#"{"action_type": "Reboot"}"#),
        ("POST", "/actions", r#"{"action_type": "InstanceStart"}"#),
        ("PUT", "/nope", r#"{}"#),
    ];
    for (method, path, body) in bad {
        let c = ApiCall {
            method,
            path: path.into(),
            body: serde_json::from_str(body).unwrap(),
        };
        assert!(validate(&api, &c).is_err(), "{method} {path} {body}");
    }
}

/// A fake Firecracker API: records requests and answers each with the next canned response.
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
            // A connection that sends nothing is the engine probing that we listen.
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

/// A stand-in `firecracker` binary that just stays alive; the test thread plays its API.
fn idle_binary(dir: &Path) -> PathBuf {
    let p = dir.join("firecracker");
    std::fs::write(&p, "#!/bin/sh\nexec sleep 30\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

#[test]
fn start_sends_the_sequence_to_the_api_socket() {
    let dir = tempfile::tempdir().unwrap();
    let s = spec(dir.path(), Boot::Kernel);
    let no_content =
        "HTTP/1.1 204 \r\nServer: Firecracker API\r\nConnection: keep-alive\r\n\r\n".to_string();
    let seen = fake_api(dir.path().join("api.sock"), vec![no_content; 5]);
    let fc = Firecracker {
        binary: idle_binary(dir.path()),
        jailer: None,
        api_timeout: std::time::Duration::from_secs(5),
    };
    let mut inst = fc.start(&s).unwrap();
    let seen = seen.lock().unwrap().clone();
    let expected = Firecracker::start_calls(&s);
    assert_eq!(seen.len(), expected.len());
    for ((req, body), call) in seen.iter().zip(&expected) {
        assert_eq!(req, &format!("{} {}", call.method, call.path));
        assert_eq!(body, &call.body);
    }
    inst.kill().unwrap();
}

#[test]
fn fault_message_errors_surface_clearly_and_nothing_is_left_running() {
    let dir = tempfile::tempdir().unwrap();
    let s = spec(dir.path(), Boot::Kernel);
    let fault = r#"{"fault_message":"Invalid Memory Configuration: MmapRegion(Mmap(Os { code: 12, kind: OutOfMemory, message: \"Cannot allocate memory\" }))"}"#;
    let _seen = fake_api(
        dir.path().join("api.sock"),
        vec!["HTTP/1.1 204 \r\n\r\n".into(), http("400 ", fault)],
    );
    let fc = Firecracker {
        binary: idle_binary(dir.path()),
        jailer: None,
        api_timeout: std::time::Duration::from_secs(5),
    };
    let err = fc.start(&s).err().unwrap().to_string();
    assert!(err.contains("PUT /machine-config"), "{err}");
    assert!(err.contains("HTTP 400"), "{err}");
    assert!(
        err.contains("Invalid Memory Configuration") && err.contains("Cannot allocate memory"),
        "{err}"
    );
    assert!(!err.contains("fault_message"), "{err}");
    // The spawned process was killed with the failure.
    assert!(fireclaw::vm::processes_mentioning(&dir.path().to_string_lossy()).is_empty());
}

#[test]
fn http_layer_errors_with_raw_newlines_surface_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");
    let body = "{ \"error\": \"Invalid request method and/or path: PUT /boot-sourc.\nAll methods and paths are documented in swagger.\" }";
    let _seen = fake_api(sock.clone(), vec![http("400 Bad Request", body)]);
    let call = ApiCall {
        method: "PUT",
        path: "/boot-sourc".into(),
        body: serde_json::json!({}),
    };
    let err = firecracker::send(&sock, &call, std::time::Duration::from_secs(5))
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "Firecracker API PUT /boot-sourc: HTTP 400: Invalid request method and/or path: PUT /boot-sourc. All methods and paths are documented in swagger."
    );
}

#[test]
fn a_server_that_hangs_up_or_speaks_garbage_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");
    let _seen = fake_api(sock.clone(), vec![String::new(), "garbage\r\n\r\n".into()]);
    let call = firecracker::pause_call();
    let timeout = std::time::Duration::from_secs(5);
    let e1 = firecracker::send(&sock, &call, timeout)
        .unwrap_err()
        .to_string();
    assert!(e1.contains("closed without a response"), "{e1}");
    let e2 = firecracker::send(&sock, &call, timeout)
        .unwrap_err()
        .to_string();
    assert!(e2.contains("not an HTTP response"), "{e2}");
}

#[test]
fn jailer_arguments_and_paths() {
    let j = firecracker::Jailer {
        binary: "/usr/local/bin/jailer".into(),
        uid: 123,
        gid: 456,
        chroot_base: "/srv/jailer".into(),
    };
    assert_eq!(
        j.args(Path::new("/usr/local/bin/firecracker"), "abc").join(" "),
        "--id abc --exec-file /usr/local/bin/firecracker --uid 123 --gid 456 --chroot-base-dir /srv/jailer -- --api-sock /api.sock"
    );
    assert_eq!(
        j.root("abc"),
        PathBuf::from("/srv/jailer/firecracker/abc/root")
    );
}
