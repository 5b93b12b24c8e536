//! A small HTTP/1.1 client for Firecracker's API socket: one request per connection, bodies
//! delimited by Content-Length (what Firecracker sends). Responses are external input: status
//! lines, headers and bodies are bounded and parsed without trusting them.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::qmp::printable;

const MAX_HEADERS: usize = 16 * 1024;
const MAX_BODY: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

/// Why a request to the API socket failed, in the cases a caller acts on differently.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The socket file exists but nothing listens: the VMM has not bound it yet, or it died and
    /// left the file behind.
    #[error("nothing listens on {} (connection refused)", socket.display())]
    Refused { socket: PathBuf },
    /// Any other failure to connect (no such file, permissions).
    #[error("cannot connect to {}: {source}", socket.display())]
    Connect {
        socket: PathBuf,
        source: std::io::Error,
    },
    /// Firecracker answered with a non-2xx status; `message` is its own, from either error shape.
    #[error("HTTP {status}: {message}")]
    Fault { status: u16, message: String },
    /// No complete answer in time.
    #[error("no answer within {after:?}")]
    Timeout { after: Duration },
    /// Something that is not a Firecracker HTTP response (or a connection closed mid-way).
    #[error("{0}")]
    Malformed(String),
    /// Reading or writing the connection failed.
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
}

fn io_error(what: &'static str, timeout: Duration) -> impl Fn(std::io::Error) -> ApiError {
    move |source| match source.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            ApiError::Timeout { after: timeout }
        }
        _ => ApiError::Io { what, source },
    }
}

/// Sends one request and returns the answer whatever its status.
pub fn request(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> Result<Response, ApiError> {
    let mut s = UnixStream::connect(socket).map_err(|source| {
        if source.kind() == std::io::ErrorKind::ConnectionRefused {
            ApiError::Refused {
                socket: socket.to_path_buf(),
            }
        } else {
            ApiError::Connect {
                socket: socket.to_path_buf(),
                source,
            }
        }
    })?;
    s.set_read_timeout(Some(timeout))
        .map_err(io_error("setting a timeout", timeout))?;
    s.set_write_timeout(Some(timeout))
        .map_err(io_error("setting a timeout", timeout))?;
    let body = body.unwrap_or("");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\nConnection: close\r\n"
    );
    if !body.is_empty() {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes())
        .map_err(io_error("sending the request", timeout))?;
    let mut raw = Vec::new();
    let mut chunk = [0u8; 4096];
    // Read until the headers are complete and Content-Length bytes of body arrived (Firecracker
    // keeps connections open, so EOF cannot be the delimiter).
    loop {
        if let Some(resp) = parse_response(&raw)? {
            return Ok(resp);
        }
        let n = s
            .read(&mut chunk)
            .map_err(io_error("reading the response", timeout))?;
        if n == 0 {
            return match parse_response(&raw)? {
                Some(r) => Ok(r),
                None if raw.is_empty() => Err(ApiError::Malformed(
                    "connection closed without a response".into(),
                )),
                None => Err(ApiError::Malformed(format!(
                    "connection closed mid-response: {}",
                    printable(&String::from_utf8_lossy(&raw), 200)
                ))),
            };
        }
        raw.extend_from_slice(&chunk[..n]);
        if raw.len() > MAX_HEADERS + MAX_BODY {
            return Err(ApiError::Malformed("response too large".into()));
        }
    }
}

/// Sends one request; a non-2xx answer is [`ApiError::Fault`] with Firecracker's own message.
pub fn call(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> Result<Response, ApiError> {
    let resp = request(socket, method, path, body, timeout)?;
    if (200..300).contains(&resp.status) {
        Ok(resp)
    } else {
        Err(ApiError::Fault {
            status: resp.status,
            message: error_message(&resp.body),
        })
    }
}

/// `Ok(None)` while more bytes are needed; `Err` for a response that can never be valid.
pub fn parse_response(raw: &[u8]) -> Result<Option<Response>, ApiError> {
    let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        if raw.len() > MAX_HEADERS {
            return Err(ApiError::Malformed("response headers too long".into()));
        }
        return Ok(None);
    };
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    let status = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        return Err(ApiError::Malformed(format!(
            "not an HTTP response: {}",
            printable(status_line, 100)
        )));
    }
    let status: u16 = status
        .parse()
        .ok()
        .filter(|s| (100..=599).contains(s))
        .ok_or_else(|| {
            ApiError::Malformed(format!(
                "bad HTTP status line: {}",
                printable(status_line, 100)
            ))
        })?;
    let mut length = 0usize;
    for line in lines {
        if let Some((k, v)) = line.split_once(':') {
            if k.trim().eq_ignore_ascii_case("content-length") {
                length = v
                    .trim()
                    .parse()
                    .ok()
                    .filter(|l| *l <= MAX_BODY)
                    .ok_or_else(|| {
                        ApiError::Malformed(format!("bad Content-Length: {}", printable(v, 50)))
                    })?;
            }
        }
    }
    let body = &raw[end + 4..];
    if body.len() < length {
        return Ok(None);
    }
    Ok(Some(Response {
        status,
        body: String::from_utf8_lossy(&body[..length]).into_owned(),
    }))
}

/// The message in a Firecracker error body. The API proper answers `{"fault_message": "..."}`;
/// its HTTP layer answers `{ "error": "..." }` with a raw newline inside the string, which is not
/// valid JSON, so control characters are neutralised before parsing. Anything else is shown raw
/// (made printable and bounded).
pub fn error_message(body: &str) -> String {
    let cleaned: String = body
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let message = serde_json::from_str::<ErrorBody>(&cleaned)
        .ok()
        .map(|b| match b {
            ErrorBody::Fault(f) => f.fault_message,
            ErrorBody::Http(h) => h.error,
        });
    if let Some(m) = message {
        let m = printable(&m, 1000);
        return m.split_whitespace().collect::<Vec<_>>().join(" ");
    }
    if body.trim().is_empty() {
        return "(empty response body)".into();
    }
    printable(body, 300)
}

/// Firecracker's two error bodies.
#[derive(Deserialize)]
#[serde(untagged)]
enum ErrorBody {
    Fault(ApiFault),
    Http(HttpLayerError),
}

/// The API proper's error body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ApiFault {
    /// What went wrong, in Firecracker's words.
    fault_message: String,
}

/// The HTTP layer's error body (an unknown path or method, a malformed request).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpLayerError {
    /// What went wrong, in Firecracker's words (may hold a raw newline).
    error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_complete_and_partial_responses() {
        let full = b"HTTP/1.1 400 \r\nServer: Firecracker API\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(
            parse_response(full).unwrap(),
            Some(Response {
                status: 400,
                body: "hello".into()
            })
        );
        assert_eq!(parse_response(&full[..full.len() - 1]).unwrap(), None);
        assert_eq!(parse_response(b"HTTP/1.1 204 \r\n").unwrap(), None);
        assert_eq!(
            parse_response(b"HTTP/1.1 204 No Content\r\n\r\n").unwrap(),
            Some(Response {
                status: 204,
                body: String::new()
            })
        );
    }

    #[test]
    fn hostile_responses_are_errors() {
        for bad in [
            &b"SSH-2.0-OpenSSH\r\n\r\n"[..],
            b"HTTP/1.1 abc\r\n\r\n",
            b"HTTP/1.1 999 x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2000000\r\n\r\n",
        ] {
            assert!(
                parse_response(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(parse_response(&vec![b'a'; MAX_HEADERS + 1]).is_err());
    }

    #[test]
    fn both_firecracker_error_shapes_surface() {
        assert_eq!(
            error_message(
                r#"{"fault_message": "The requested operation is not supported after starting the microVM."}"#
            ),
            "The requested operation is not supported after starting the microVM."
        );
        // The HTTP layer's shape, raw newline included.
        assert_eq!(
            error_message("{ \"error\": \"Invalid request method and/or path: DELETE /actions.\nAll methods and paths are documented.\" }"),
            "Invalid request method and/or path: DELETE /actions. All methods and paths are documented."
        );
        assert_eq!(error_message(""), "(empty response body)");
        assert_eq!(error_message("<html>\u{1b}[31mboom"), "<html> [31mboom");
        assert_eq!(
            error_message(r#"{"fault_message": 42}"#),
            r#"{"fault_message": 42}"#
        );
        assert!(error_message(&"x".repeat(10_000)).chars().count() <= 301);
    }
}
