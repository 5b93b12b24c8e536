//! A small HTTP/1.1 client over tokio: what Ollama and SearXNG need and nothing more (plain http on
//! the bridge, one request per connection, streamed bodies with chunked or length framing).
//!
//! Why not a crate: the maintained Ollama client (`ollama-rs` 0.3) reports a mid-stream
//! `{"error": ...}` line as `Err(())`, losing the message the user must see, and buffers without a
//! size bound; reqwest/hyper would triple the guest's dependencies for two plain-http calls.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// A response head larger than this is refused.
const HEAD_MAX: usize = 16 * 1024;
/// A chunk-size line longer than this is refused.
const CHUNK_LINE_MAX: usize = 1024;
const READ_SIZE: usize = 8 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("malformed HTTP response: {0}")]
    Malformed(String),
    #[error("response larger than {0} bytes")]
    TooLarge(usize),
    #[error("bad URL {0:?}: expected http://host[:port][/path]")]
    Url(String),
}

/// `http://host[:port][/prefix]` split into what a request needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Base {
    /// `host:port`, port 80 when absent.
    pub addr: String,
    /// The `Host:` header value as written in the URL.
    pub host: String,
    /// Path prefix without a trailing slash (empty for the root).
    pub prefix: String,
}

impl Base {
    pub fn parse(url: &str) -> Result<Base, HttpError> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| HttpError::Url(url.into()))?;
        let (host, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if host.is_empty() || host.contains(['@', ' ', '\r', '\n']) {
            return Err(HttpError::Url(url.into()));
        }
        let has_port = host
            .rsplit_once(':')
            .is_some_and(|(_, p)| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        let addr = if has_port {
            host.to_string()
        } else {
            format!("{host}:80")
        };
        Ok(Base {
            addr,
            host: host.to_string(),
            prefix: path.trim_end_matches('/').to_string(),
        })
    }
}

/// A response whose body is read as it arrives.
pub struct Response<R> {
    pub status: u16,
    body: Body<R>,
}

enum Framing {
    Length(u64),
    Chunked { left: u64, done: bool },
    Close,
}

struct Body<R> {
    reader: BufReader<R>,
    framing: Framing,
}

/// Sends one request (`Connection: close`) and reads the response head.
pub async fn request(
    base: &Base,
    method: &str,
    path_and_query: &str,
    json_body: Option<&[u8]>,
) -> Result<Response<TcpStream>, HttpError> {
    let connect = TcpStream::connect(&base.addr);
    let mut stream = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return Err(HttpError::Connect {
                addr: base.addr.clone(),
                reason: e.to_string(),
            })
        }
        Err(_) => {
            return Err(HttpError::Connect {
                addr: base.addr.clone(),
                reason: format!("no answer in {}s", CONNECT_TIMEOUT.as_secs()),
            })
        }
    };
    let mut head = format!(
        "{method} {}{path_and_query} HTTP/1.1\r\nHost: {}\r\nUser-Agent: fireclaw-guest/{}\r\nAccept: application/json\r\nConnection: close\r\n",
        base.prefix,
        base.host,
        env!("CARGO_PKG_VERSION")
    );
    if let Some(body) = json_body {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    if let Some(body) = json_body {
        stream.write_all(body).await?;
    }
    stream.flush().await?;
    read_head(stream).await
}

/// Reads a response head from `reader`.
pub async fn read_head<R: AsyncRead + Unpin>(reader: R) -> Result<Response<R>, HttpError> {
    let mut reader = BufReader::new(reader);
    let mut head = Vec::new();
    loop {
        let before = head.len();
        let n = (&mut reader)
            .take((HEAD_MAX + 1 - head.len()) as u64)
            .read_until(b'\n', &mut head)
            .await?;
        if n == 0 {
            return Err(HttpError::Malformed(
                "connection closed before the response head ended".into(),
            ));
        }
        if head.len() > HEAD_MAX {
            return Err(HttpError::TooLarge(HEAD_MAX));
        }
        let line = &head[before..];
        if line == b"\r\n" || line == b"\n" {
            break;
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Response::new(&mut headers);
    match parsed.parse(&head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => {
            return Err(HttpError::Malformed("incomplete response head".into()))
        }
        Err(e) => return Err(HttpError::Malformed(e.to_string())),
    }
    let status = parsed
        .code
        .ok_or_else(|| HttpError::Malformed("no status code".into()))?;
    let mut framing = Framing::Close;
    for h in parsed.headers.iter() {
        let value = String::from_utf8_lossy(h.value);
        if h.name.eq_ignore_ascii_case("transfer-encoding")
            && value.to_ascii_lowercase().contains("chunked")
        {
            framing = Framing::Chunked {
                left: 0,
                done: false,
            };
            break;
        }
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = value
                .trim()
                .parse()
                .map_err(|_| HttpError::Malformed(format!("Content-Length {value:?}")))?;
            framing = Framing::Length(n);
        }
    }
    Ok(Response {
        status,
        body: Body { reader, framing },
    })
}

impl<R: AsyncRead + Unpin> Response<R> {
    /// The next piece of the body, `None` at its end.
    pub async fn chunk(&mut self) -> Result<Option<Vec<u8>>, HttpError> {
        let body = &mut self.body;
        match &mut body.framing {
            Framing::Length(0) => Ok(None),
            Framing::Length(left) => {
                let want = (*left).min(READ_SIZE as u64) as usize;
                let mut buf = vec![0; want];
                let n = body.reader.read(&mut buf).await?;
                if n == 0 {
                    return Err(HttpError::Malformed(format!(
                        "body ended {left} bytes early"
                    )));
                }
                *left -= n as u64;
                buf.truncate(n);
                Ok(Some(buf))
            }
            Framing::Close => {
                let mut buf = vec![0; READ_SIZE];
                let n = body.reader.read(&mut buf).await?;
                if n == 0 {
                    return Ok(None);
                }
                buf.truncate(n);
                Ok(Some(buf))
            }
            Framing::Chunked { left, done } => {
                if *done {
                    return Ok(None);
                }
                if *left == 0 {
                    let size_line = read_line(&mut body.reader, CHUNK_LINE_MAX).await?;
                    let size_text = size_line.split(';').next().unwrap_or("").trim();
                    let size = u64::from_str_radix(size_text, 16)
                        .map_err(|_| HttpError::Malformed(format!("chunk size {size_line:?}")))?;
                    if size == 0 {
                        // Trailers, then the blank line.
                        while !read_line(&mut body.reader, CHUNK_LINE_MAX)
                            .await?
                            .is_empty()
                        {}
                        *done = true;
                        return Ok(None);
                    }
                    *left = size;
                }
                let want = (*left).min(READ_SIZE as u64) as usize;
                let mut buf = vec![0; want];
                let n = body.reader.read(&mut buf).await?;
                if n == 0 {
                    return Err(HttpError::Malformed("chunked body ended early".into()));
                }
                *left -= n as u64;
                buf.truncate(n);
                if *left == 0 {
                    let end = read_line(&mut body.reader, CHUNK_LINE_MAX).await?;
                    if !end.is_empty() {
                        return Err(HttpError::Malformed(format!(
                            "chunk not followed by CRLF: {end:?}"
                        )));
                    }
                }
                Ok(Some(buf))
            }
        }
    }

    /// The whole body, refused past `max` bytes.
    pub async fn read_all(&mut self, max: usize) -> Result<Vec<u8>, HttpError> {
        let mut all = Vec::new();
        while let Some(c) = self.chunk().await? {
            all.extend_from_slice(&c);
            if all.len() > max {
                return Err(HttpError::TooLarge(max));
            }
        }
        Ok(all)
    }
}

/// One CRLF- or LF-terminated line without its terminator.
async fn read_line<R: AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
    max: usize,
) -> Result<String, HttpError> {
    let mut line = Vec::new();
    let n = reader
        .take(max as u64 + 1)
        .read_until(b'\n', &mut line)
        .await?;
    if n == 0 {
        return Err(HttpError::Malformed("connection closed mid-body".into()));
    }
    if line.len() > max {
        return Err(HttpError::TooLarge(max));
    }
    while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        line.pop();
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

/// Splits a byte stream into lines (NDJSON), refusing a line longer than `max`.
pub struct Lines {
    buf: Vec<u8>,
    max: usize,
}

impl Lines {
    pub fn new(max: usize) -> Lines {
        Lines {
            buf: Vec::new(),
            max,
        }
    }

    /// Adds `bytes` and returns every line now complete (without its LF).
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<Vec<u8>>, HttpError> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
            let mut line: Vec<u8> = self.buf.drain(..=i).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            out.push(line);
        }
        if self.buf.len() > self.max {
            return Err(HttpError::TooLarge(self.max));
        }
        Ok(out)
    }

    /// What is left after the stream ended (a last line without LF).
    pub fn finish(self) -> Option<Vec<u8>> {
        (!self.buf.is_empty()).then_some(self.buf)
    }
}

/// Percent-encodes a query value (RFC 3986 unreserved characters pass).
pub fn encode_query(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_of(raw: &[u8]) -> Result<(u16, Vec<u8>), HttpError> {
        let mut r = read_head(raw).await?;
        let body = r.read_all(1 << 20).await?;
        Ok((r.status, body))
    }

    #[tokio::test]
    async fn reads_chunked_length_and_close_framing() {
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n";
        assert_eq!(
            body_of(chunked).await.unwrap(),
            (200, b"hello world".to_vec())
        );
        let length = b"HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\n\r\nabcdEXTRA";
        assert_eq!(body_of(length).await.unwrap(), (404, b"abcd".to_vec()));
        let close = b"HTTP/1.0 500 Oops\r\n\r\nall of it";
        assert_eq!(body_of(close).await.unwrap(), (500, b"all of it".to_vec()));
    }

    #[tokio::test]
    async fn hostile_responses_are_errors_not_panics() {
        for raw in [
            &b""[..],
            b"garbage\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nab",
        ] {
            assert!(
                body_of(raw).await.is_err(),
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
        let huge_head = [b"HTTP/1.1 200 OK\r\nX: ".to_vec(), vec![b'a'; 20_000]].concat();
        assert!(matches!(
            body_of(&huge_head).await,
            Err(HttpError::TooLarge(_))
        ));
        let big = [b"HTTP/1.1 200 OK\r\n\r\n".to_vec(), vec![b'a'; 2 << 20]].concat();
        let mut r = read_head(&big[..]).await.unwrap();
        assert!(matches!(
            r.read_all(1 << 20).await,
            Err(HttpError::TooLarge(_))
        ));
    }

    #[test]
    fn lines_split_across_pushes_and_refuse_giants() {
        let mut l = Lines::new(10);
        assert!(l.push(b"{\"a\"").unwrap().is_empty());
        assert_eq!(
            l.push(b":1}\r\n{}\n{").unwrap(),
            [b"{\"a\":1}".to_vec(), b"{}".to_vec()]
        );
        assert_eq!(l.finish(), Some(b"{".to_vec()));
        let mut l = Lines::new(10);
        assert!(l.push(&[b'x'; 11]).is_err());
    }

    #[test]
    fn urls_and_queries() {
        let b = Base::parse("http://10.0.0.1:11434/").unwrap();
        assert_eq!((b.addr.as_str(), b.prefix.as_str()), ("10.0.0.1:11434", ""));
        let b = Base::parse("http://searx/sub/").unwrap();
        assert_eq!((b.addr.as_str(), b.prefix.as_str()), ("searx:80", "/sub"));
        assert!(Base::parse("https://x").is_err());
        assert!(Base::parse("http://").is_err());
        assert!(Base::parse("http://a b/").is_err());
        assert_eq!(encode_query("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
    }
}
