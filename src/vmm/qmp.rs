//! A minimal QMP client: line-delimited JSON over a Unix socket. QEMU interleaves asynchronous
//! events with command replies, so replies are read past events; every reply is external input
//! and is parsed defensively (bounded line length, unknown shapes become errors, not panics).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use super::VmmError;

/// Longest reply line accepted; QEMU's replies for our commands are a few hundred bytes.
const MAX_LINE: usize = 1 << 20;

pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

/// What one reply line said.
#[derive(Debug, PartialEq)]
pub enum Reply {
    Return(Value),
    Error { class: String, desc: String },
    Event(String),
    Greeting,
}

/// A line from QEMU that is not QMP. Each carries the line, printable and shortened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QmpError {
    #[error("not JSON ({reason}): {line}")]
    NotJson { reason: String, line: String },
    #[error("expected a JSON object, got {line}")]
    NotObject { line: String },
    #[error("unexpected message {line}")]
    Unexpected { line: String },
}

/// Parses one line QEMU sent.
pub fn parse_line(line: &str) -> Result<Reply, QmpError> {
    let v: Value = serde_json::from_str(line.trim()).map_err(|e| QmpError::NotJson {
        reason: e.to_string(),
        line: printable(line, 200),
    })?;
    let obj = v.as_object().ok_or_else(|| QmpError::NotObject {
        line: printable(line, 200),
    })?;
    if let Some(r) = obj.get("return") {
        return Ok(Reply::Return(r.clone()));
    }
    if let Some(e) = obj.get("error") {
        let field = |k: &str| {
            e.get(k)
                .and_then(Value::as_str)
                .map(|s| printable(s, 500))
                .unwrap_or_else(|| "(missing)".into())
        };
        return Ok(Reply::Error {
            class: field("class"),
            desc: field("desc"),
        });
    }
    if let Some(ev) = obj.get("event") {
        return Ok(Reply::Event(
            ev.as_str().map(|s| printable(s, 100)).unwrap_or_default(),
        ));
    }
    if obj.contains_key("QMP") {
        return Ok(Reply::Greeting);
    }
    Err(QmpError::Unexpected {
        line: printable(line, 200),
    })
}

/// Control characters and overlong text from another process never reach the terminal raw.
pub fn printable(s: &str, max: usize) -> String {
    let mut out: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(max)
        .collect();
    if s.chars().count() > max {
        out.push('…');
    }
    out.trim().to_string()
}

impl Qmp {
    /// Connects, reads the greeting and leaves capability negotiation mode.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Qmp, VmmError> {
        let io = |what: &str| {
            let what = format!("{what} {}", path.display());
            move |source| VmmError::Io { what, source }
        };
        let stream = UnixStream::connect(path).map_err(io("connecting to QMP socket"))?;
        stream
            .set_read_timeout(Some(timeout))
            .map_err(io("configuring"))?;
        stream
            .set_write_timeout(Some(timeout))
            .map_err(io("configuring"))?;
        let writer = stream.try_clone().map_err(io("cloning"))?;
        let mut qmp = Qmp {
            reader: BufReader::new(stream),
            writer,
        };
        match qmp.read_reply("greeting")? {
            Reply::Greeting => {}
            other => {
                return Err(VmmError::Qmp {
                    command: "greeting".into(),
                    message: format!("expected the QMP greeting, got {other:?}"),
                })
            }
        }
        qmp.execute("qmp_capabilities", None)?;
        Ok(qmp)
    }

    fn read_reply(&mut self, command: &str) -> Result<Reply, VmmError> {
        let mut buf = Vec::new();
        let n = (&mut self.reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut buf)
            .map_err(|source| VmmError::Io {
                what: format!("reading QMP reply to {command}"),
                source,
            })?;
        if n == 0 {
            return Err(VmmError::QmpClosed {
                command: command.into(),
            });
        }
        if buf.len() > MAX_LINE {
            return Err(VmmError::Qmp {
                command: command.into(),
                message: format!("reply longer than {MAX_LINE} bytes"),
            });
        }
        parse_line(&String::from_utf8_lossy(&buf)).map_err(|source| VmmError::QmpProtocol {
            command: command.into(),
            source,
        })
    }

    /// Runs one command and returns its `return` value; QMP errors become [`VmmError::Qmp`].
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value, VmmError> {
        let mut msg = json!({ "execute": command });
        if let Some(a) = arguments {
            msg["arguments"] = a;
        }
        let mut line = msg.to_string();
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .map_err(|source| VmmError::Io {
                what: format!("sending QMP {command}"),
                source,
            })?;
        loop {
            match self.read_reply(command)? {
                Reply::Return(v) => return Ok(v),
                Reply::Error { class, desc } => {
                    return Err(VmmError::QmpRefused {
                        command: command.into(),
                        class,
                        desc,
                    })
                }
                Reply::Event(_) | Reply::Greeting => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn parses_replies_events_and_errors() {
        assert_eq!(
            parse_line(r#"{"return": {}}"#).unwrap(),
            Reply::Return(json!({}))
        );
        assert_eq!(
            parse_line(r#"{"QMP": {"version": {}, "capabilities": []}}"#).unwrap(),
            Reply::Greeting
        );
        assert_eq!(
            parse_line(r#"{"timestamp": {"seconds": 1}, "event": "STOP"}"#).unwrap(),
            Reply::Event("STOP".into())
        );
        assert_eq!(
            parse_line(r#"{"error": {"class": "GenericError", "desc": "no\u001b[31m way"}}"#)
                .unwrap(),
            Reply::Error {
                class: "GenericError".into(),
                desc: "no [31m way".into()
            }
        );
    }

    #[test]
    fn hostile_lines_are_errors_not_panics() {
        for bad in [
            "",
            "not json",
            "[]",
            "42",
            "\"return\"",
            "{\"unknown\": 1}",
            "{\"return\": ",
            &format!("{{\"x\": \"{}\"}}", "a".repeat(5000)),
        ] {
            let r = parse_line(bad);
            assert!(r.is_err(), "{bad:?} gave {r:?}");
            assert!(r.unwrap_err().to_string().len() < 400);
        }
        // An error object with wrong types still yields a message.
        assert_eq!(
            parse_line(r#"{"error": {"class": 5}}"#).unwrap(),
            Reply::Error {
                class: "(missing)".into(),
                desc: "(missing)".into()
            }
        );
    }

    fn fake_qemu(script: Vec<&'static str>) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            for line in script {
                if line == "<read>" {
                    let mut l = String::new();
                    let _ = r.read_line(&mut l);
                } else {
                    let _ = s.write_all(line.as_bytes());
                }
            }
        });
        (dir, path)
    }

    #[test]
    fn client_skips_events_and_surfaces_errors() {
        let (_d, path) = fake_qemu(vec![
            "{\"QMP\": {}}\n",
            "<read>",
            "{\"return\": {}}\n",
            "<read>",
            "{\"event\": \"RESUME\"}\n{\"return\": {\"status\": \"running\"}}\n",
            "<read>",
            "{\"error\": {\"class\": \"CommandNotFound\", \"desc\": \"The command nope has not been found\"}}\n",
            "<read>",
        ]);
        let mut q = Qmp::connect(&path, Duration::from_secs(5)).unwrap();
        assert_eq!(
            q.execute("query-status", None).unwrap()["status"],
            "running"
        );
        let err = q.execute("nope", None).unwrap_err();
        assert!(
            matches!(&err, VmmError::QmpRefused { class, .. } if class == "CommandNotFound"),
            "{err:?}"
        );
        let err = err.to_string();
        assert!(
            err.contains("has not been found") && err.contains("nope"),
            "{err}"
        );
        let err = q.execute("again", None).unwrap_err();
        assert!(matches!(err, VmmError::QmpClosed { .. }), "{err:?}");
        assert!(err.to_string().contains("closed"), "{err}");
    }

    #[test]
    fn garbage_greeting_is_refused() {
        let (_d, path) = fake_qemu(vec!["HTTP/1.1 200 OK\r\n"]);
        let err = Qmp::connect(&path, Duration::from_secs(5)).err().unwrap();
        assert!(
            matches!(
                &err,
                VmmError::QmpProtocol {
                    source: QmpError::NotJson { .. },
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("not JSON"), "{err}");
    }
}
