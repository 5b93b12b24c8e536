//! A small HTTP/1.1 client for Firecracker's API socket: one request per connection, bodies
//! delimited by Content-Length (what Firecracker sends). Responses are external input: status
//! lines, headers and bodies are bounded and parsed without trusting them.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use super::qmp::printable;

const MAX_HEADERS: usize = 16 * 1024;
const MAX_BODY: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

/// Sends one request and reads the response.
pub fn request(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> Result<Response, String> {
    let mut s = UnixStream::connect(socket)
        .map_err(|e| format!("cannot connect to {}: {e}", socket.display()))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
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
        .map_err(|e| format!("sending request: {e}"))?;
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
            .map_err(|e| format!("reading response: {e}"))?;
        if n == 0 {
            return match parse_response(&raw)? {
                Some(r) => Ok(r),
                None if raw.is_empty() => Err("connection closed without a response".into()),
                None => Err(format!(
                    "connection closed mid-response: {}",
                    printable(&String::from_utf8_lossy(&raw), 200)
                )),
            };
        }
        raw.extend_from_slice(&chunk[..n]);
        if raw.len() > MAX_HEADERS + MAX_BODY {
            return Err("response too large".into());
        }
    }
}

/// `Ok(None)` while more bytes are needed; `Err` for a response that can never be valid.
pub fn parse_response(raw: &[u8]) -> Result<Option<Response>, String> {
    let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        if raw.len() > MAX_HEADERS {
            return Err("response headers too long".into());
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
        return Err(format!(
            "not an HTTP response: {}",
            printable(status_line, 100)
        ));
    }
    let status: u16 = status
        .parse()
        .ok()
        .filter(|s| (100..=599).contains(s))
        .ok_or_else(|| format!("bad HTTP status line: {}", printable(status_line, 100)))?;
    let mut length = 0usize;
    for line in lines {
        if let Some((k, v)) = line.split_once(':') {
            if k.trim().eq_ignore_ascii_case("content-length") {
                length = v
                    .trim()
                    .parse()
                    .ok()
                    .filter(|l| *l <= MAX_BODY)
                    .ok_or_else(|| format!("bad Content-Length: {}", printable(v, 50)))?;
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
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&cleaned) {
        for key in ["fault_message", "error"] {
            if let Some(m) = v.get(key).and_then(|m| m.as_str()) {
                let m = printable(m, 1000);
                return m.split_whitespace().collect::<Vec<_>>().join(" ");
            }
        }
    }
    if body.trim().is_empty() {
        return "(empty response body)".into();
    }
    printable(body, 300)
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
