//! A scripted double of Ollama's HTTP API (Ollama cannot be installed here). It speaks the
//! documented endpoints the guest uses — `POST /api/chat` streamed (NDJSON over chunked encoding)
//! and not, with tool calls; `GET /api/tags`; `POST /api/show` — answers an unknown model with 404
//! and `{"error": ...}` as Ollama does, and plays the replies a test queued, in order. Every request
//! is recorded so a test can assert on what the client sent (the system prompt, tool results...).
//!
//! ```no_run
//! use fireclaw_testkit::ollama::{OllamaDouble, Reply};
//! let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
//! let double = OllamaDouble::start(listener, &["qwen2.5:7b"]);
//! double.push(Reply::tool_call("run_command", serde_json::json!({"command": "ls"})));
//! double.push(Reply::text("done"));
//! // ... point the client at double.url() ...
//! let chats = double.chat_requests();
//! ```

use std::collections::VecDeque;
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// `prompt_eval_count` and `eval_count` of every successful chat answer.
pub const PROMPT_EVAL_COUNT: u64 = 11;
pub const EVAL_COUNT: u64 = 7;

/// What the double answers to the next `/api/chat` (for a known model).
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// The assistant's text (streamed in several pieces when the request streams).
    Text(String),
    /// One message carrying these `(name, arguments)` tool calls.
    ToolCalls(Vec<(String, Value)>),
    /// An HTTP error status with `{"error": message}`.
    Status(u16, String),
    /// Status 200, some content, then an `{"error": message}` NDJSON line and the end.
    MidStreamError { partial: String, error: String },
    /// These NDJSON lines as they are (for hostile input), then the end.
    RawLines(Vec<String>),
    /// Read the request and never answer.
    Hang,
    /// Text: `prefix` followed by the content of the request's last `tool` message, so a test
    /// can show that what a tool produced (in a VM, say) reached the reply.
    EchoToolResult(String),
}

impl Reply {
    pub fn text(s: impl Into<String>) -> Reply {
        Reply::Text(s.into())
    }

    pub fn tool_call(name: &str, arguments: Value) -> Reply {
        Reply::ToolCalls(vec![(name.to_string(), arguments)])
    }
}

/// One request the double received.
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    /// The JSON body (`Null` when there was none or it was not JSON).
    pub body: Value,
}

struct State {
    models: Vec<String>,
    script: VecDeque<Reply>,
    requests: Vec<Recorded>,
}

/// The running double; stops when dropped.
pub struct OllamaDouble {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl OllamaDouble {
    /// Serves on `listener` (bind it inside a test's network namespace to serve there) with
    /// `models` installed.
    pub fn start(listener: TcpListener, models: &[&str]) -> OllamaDouble {
        let addr = listener.local_addr().expect("listener address");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let state = Arc::new(Mutex::new(State {
            models: models.iter().map(|m| m.to_string()).collect(),
            script: VecDeque::new(),
            requests: Vec::new(),
        }));
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let shared = state.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("double runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                tokio::pin!(stop_rx);
                loop {
                    tokio::select! {
                        _ = &mut stop_rx => break,
                        accepted = listener.accept() => {
                            if let Ok((stream, _)) = accepted {
                                tokio::spawn(serve(stream, shared.clone()));
                            }
                        }
                    }
                }
            });
            // Dropping the runtime drops every connection, hanging ones included.
        });
        OllamaDouble {
            addr,
            state,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://addr`, what a client's Ollama URL is set to.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Queues the answer to a coming chat request; with an empty queue the double answers "ok".
    pub fn push(&self, reply: Reply) {
        self.lock().script.push_back(reply);
    }

    pub fn set_models(&self, models: &[&str]) {
        self.lock().models = models.iter().map(|m| m.to_string()).collect();
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.lock().requests.clone()
    }

    /// The bodies of every `/api/chat` request so far.
    pub fn chat_requests(&self) -> Vec<Value> {
        self.requests()
            .into_iter()
            .filter(|r| r.path == "/api/chat")
            .map(|r| r.body)
            .collect()
    }

    /// Waits until at least `n` chat requests arrived; returns them (fewer on timeout).
    pub fn wait_chats(&self, n: usize, timeout: Duration) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let chats = self.chat_requests();
            if chats.len() >= n || Instant::now() > deadline {
                return chats;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Replies still queued.
    pub fn pending(&self) -> usize {
        self.lock().script.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for OllamaDouble {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Request {
    method: String,
    path: String,
    body: Vec<u8>,
}

async fn read_request(stream: &mut BufReader<TcpStream>) -> Option<Request> {
    let mut line = String::new();
    stream.read_line(&mut line).await.ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let mut length = 0usize;
    loop {
        let mut h = String::new();
        if stream.read_line(&mut h).await.ok()? == 0 {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().ok()?;
            }
        }
    }
    let mut body = vec![0; length];
    stream.read_exact(&mut body).await.ok()?;
    Some(Request { method, path, body })
}

async fn serve(stream: TcpStream, state: Arc<Mutex<State>>) {
    let mut stream = BufReader::new(stream);
    let Some(req) = read_request(&mut stream).await else {
        return;
    };
    let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
    let lock = || state.lock().unwrap_or_else(|p| p.into_inner());
    lock().requests.push(Recorded {
        method: req.method.clone(),
        path: req.path.clone(),
        body: body.clone(),
    });
    let s = stream.get_mut();
    let path = req.path.split('?').next().unwrap_or("");
    let _ = match (req.method.as_str(), path) {
        ("GET", "/api/tags") => {
            let models: Vec<Value> = lock()
                .models
                .iter()
                .map(|m| {
                    json!({"name": m, "model": m, "modified_at": "2026-01-01T00:00:00Z",
                       "size": 4_683_087_332u64, "digest": "sha256:0",
                       "details": {"format": "gguf", "family": "test", "parameter_size": "7B",
                                   "quantization_level": "Q4_K_M"}})
                })
                .collect();
            send_json(s, 200, &json!({ "models": models })).await
        }
        ("POST", "/api/show") => {
            let model = body["model"].as_str().unwrap_or_default().to_string();
            if lock().models.contains(&model) {
                let show = json!({"modelfile": format!("FROM {model}"), "parameters": "",
                    "template": "{{ .Prompt }}", "details": {"format": "gguf", "family": "test"},
                    "capabilities": ["completion", "tools"]});
                send_json(s, 200, &show).await
            } else {
                send_json(s, 404, &not_found(&model)).await
            }
        }
        ("POST", "/api/chat") => chat(s, &body, &state).await,
        _ => send(s, 404, "text/plain", b"404 page not found").await,
    };
    let _ = s.shutdown().await;
}

fn not_found(model: &str) -> Value {
    json!({ "error": format!("model \"{model}\" not found, try pulling it first") })
}

async fn chat(s: &mut TcpStream, body: &Value, state: &Arc<Mutex<State>>) -> std::io::Result<()> {
    let Some(model) = body["model"].as_str().map(str::to_string) else {
        return send_json(s, 400, &json!({"error": "model is required"})).await;
    };
    let streaming = body["stream"].as_bool().unwrap_or(true);
    let reply = {
        let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
        if !st.models.contains(&model) {
            None
        } else {
            Some(st.script.pop_front().unwrap_or_else(|| Reply::text("ok")))
        }
    };
    let Some(mut reply) = reply else {
        return send_json(s, 404, &not_found(&model)).await;
    };
    if let Reply::EchoToolResult(prefix) = &reply {
        let result = body["messages"]
            .as_array()
            .and_then(|m| m.iter().rev().find(|m| m["role"] == "tool"))
            .and_then(|m| m["content"].as_str())
            .unwrap_or("(no tool result)");
        reply = Reply::Text(format!("{prefix}{result}"));
    }
    let message = |content: &str, calls: &[(String, Value)]| {
        let mut m = json!({"role": "assistant", "content": content});
        if !calls.is_empty() {
            m["tool_calls"] = calls
                .iter()
                .map(|(n, a)| json!({"function": {"name": n, "arguments": a}}))
                .collect();
        }
        json!({"model": model, "created_at": "2026-01-01T00:00:00Z", "message": m, "done": false})
    };
    let done = || {
        json!({"model": model, "created_at": "2026-01-01T00:00:00Z",
               "message": {"role": "assistant", "content": ""}, "done": true, "done_reason": "stop",
               "total_duration": 1_000_000u64, "load_duration": 1000u64,
               "prompt_eval_count": PROMPT_EVAL_COUNT, "prompt_eval_duration": 1000u64,
               "eval_count": EVAL_COUNT, "eval_duration": 1000u64})
    };
    match reply {
        Reply::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(())
        }
        Reply::Status(code, error) => send_json(s, code, &json!({ "error": error })).await,
        Reply::Text(text) if !streaming => {
            let mut d = done();
            d["message"]["content"] = json!(text);
            send_json(s, 200, &d).await
        }
        Reply::ToolCalls(calls) if !streaming => {
            let mut d = done();
            d["message"] = message("", &calls)["message"].clone();
            send_json(s, 200, &d).await
        }
        Reply::Text(text) => {
            let mut lines: Vec<Value> = pieces(&text).map(|p| message(p, &[])).collect();
            lines.push(done());
            stream_lines(s, lines.iter().map(Value::to_string)).await
        }
        Reply::ToolCalls(calls) => {
            let lines = [message("", &calls), done()];
            stream_lines(s, lines.iter().map(Value::to_string)).await
        }
        Reply::MidStreamError { partial, error } => {
            let mut lines: Vec<String> = pieces(&partial)
                .map(|p| message(p, &[]).to_string())
                .collect();
            lines.push(json!({ "error": error }).to_string());
            stream_lines(s, lines.into_iter()).await
        }
        Reply::RawLines(lines) => stream_lines(s, lines.into_iter()).await,
        // Replaced by text above.
        Reply::EchoToolResult(_) => Ok(()),
    }
}

/// Splits `text` into about 64 pieces on character boundaries, as a model streams tokens.
fn pieces(text: &str) -> impl Iterator<Item = &str> {
    let size = (text.len() / 64).max(8);
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut cut = size.min(rest.len());
        while !rest.is_char_boundary(cut) {
            cut += 1;
        }
        let (piece, tail) = rest.split_at(cut);
        rest = tail;
        Some(piece)
    })
}

async fn stream_lines(
    s: &mut TcpStream,
    lines: impl Iterator<Item = String>,
) -> std::io::Result<()> {
    s.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n",
    )
    .await?;
    for line in lines {
        let data = format!("{line}\n");
        s.write_all(format!("{:x}\r\n{data}\r\n", data.len()).as_bytes())
            .await?;
        s.flush().await?;
    }
    s.write_all(b"0\r\n\r\n").await
}

async fn send_json(s: &mut TcpStream, status: u16, body: &Value) -> std::io::Result<()> {
    send(
        s,
        status,
        "application/json; charset=utf-8",
        body.to_string().as_bytes(),
    )
    .await
}

async fn send(s: &mut TcpStream, status: u16, kind: &str, body: &[u8]) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        500 => "Internal Server Error",
        _ => "Status",
    };
    s.write_all(
        format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .await?;
    s.write_all(body).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn call(d: &OllamaDouble, method: &str, path: &str, body: &str) -> String {
        let mut s = std::net::TcpStream::connect(d.addr()).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn speaks_the_documented_endpoints() {
        let d = OllamaDouble::start(TcpListener::bind("127.0.0.1:0").unwrap(), &["m1"]);
        assert!(call(&d, "GET", "/api/tags", "").contains("\"name\":\"m1\""));
        assert!(call(&d, "POST", "/api/show", r#"{"model":"m1"}"#).starts_with("HTTP/1.1 200"));
        let missing = call(&d, "POST", "/api/chat", r#"{"model":"nope","messages":[]}"#);
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
        assert!(missing.contains(r#"model \"nope\" not found"#), "{missing}");

        d.push(Reply::tool_call("run_command", json!({"command": "ls"})));
        d.push(Reply::text("hello world, streamed"));
        d.push(Reply::text("whole"));
        let tool = call(&d, "POST", "/api/chat", r#"{"model":"m1","messages":[]}"#);
        assert!(tool.contains("Transfer-Encoding: chunked"));
        assert!(tool.contains(r#""tool_calls":[{"function":"#), "{tool}");
        assert!(tool.contains(r#""name":"run_command""#) && tool.contains(r#"{"command":"ls"}"#));
        let text = call(&d, "POST", "/api/chat", r#"{"model":"m1","messages":[]}"#);
        assert!(text.contains(r#""done":true"#) && text.contains(r#""eval_count":7"#));
        let whole = call(&d, "POST", "/api/chat", r#"{"model":"m1","stream":false}"#);
        assert!(whole.contains("Content-Length") && whole.contains(r#""content":"whole""#));
        assert_eq!(d.chat_requests().len(), 4);
        assert_eq!(d.requests()[1].body["model"], "m1");
    }

    #[test]
    fn plays_errors() {
        let d = OllamaDouble::start(TcpListener::bind("127.0.0.1:0").unwrap(), &["m1"]);
        d.push(Reply::Status(500, "boom".into()));
        d.push(Reply::MidStreamError {
            partial: "par".into(),
            error: "oom".into(),
        });
        let r = call(&d, "POST", "/api/chat", r#"{"model":"m1"}"#);
        assert!(
            r.starts_with("HTTP/1.1 500") && r.ends_with(r#"{"error":"boom"}"#),
            "{r}"
        );
        let r = call(&d, "POST", "/api/chat", r#"{"model":"m1"}"#);
        assert!(r.contains(r#"{"error":"oom"}"#) && r.contains("par"), "{r}");
    }

    #[test]
    fn pieces_cover_the_text() {
        let t = "é".repeat(1000);
        assert_eq!(pieces(&t).collect::<String>(), t);
        assert!(pieces(&t).count() <= 70);
    }
}
