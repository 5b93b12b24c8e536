//! Ollama's `/api/chat`, streamed (NDJSON), with tools. Every way it can fail becomes an
//! [`OllamaError`] whose [`OllamaError::sentence`] is what the channel is told.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::http::{self, Base, HttpError, Lines};

/// An error body is read up to this size.
const ERROR_BODY_MAX: usize = 64 * 1024;

/// One chat message, as Ollama takes and gives it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    #[serde(default)]
    pub content: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// On a `tool` message: which tool produced `content`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_name: Option<String>,
}

impl Message {
    pub fn new(role: &str, content: impl Into<String>) -> Message {
        Message {
            role: role.into(),
            content: content.into(),
            tool_calls: Vec::new(),
            tool_name: None,
        }
    }

    pub fn tool(name: &str, content: impl Into<String>) -> Message {
        Message {
            tool_name: Some(name.into()),
            ..Message::new("tool", content)
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    pub function: FunctionCall,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionCall {
    pub name: String,
    /// A JSON object by Ollama's documentation; anything else is the tool's to refuse.
    #[serde(default)]
    pub arguments: Value,
}

#[derive(Debug, Serialize)]
struct ChatRequest<'a> {
    model: &'a str,
    messages: &'a [Message],
    #[serde(skip_serializing_if = "<[Value]>::is_empty")]
    tools: &'a [Value],
    stream: bool,
}

/// One NDJSON line of a streamed answer (or the body of an error status).
#[derive(Debug, Deserialize)]
struct StreamLine {
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    message: Option<Message>,
    #[serde(default)]
    done: bool,
    #[serde(default)]
    done_reason: Option<String>,
    #[serde(default)]
    prompt_eval_count: Option<u64>,
    #[serde(default)]
    eval_count: Option<u64>,
}

/// What one chat request produced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reply {
    pub content: String,
    pub tool_calls: Vec<ToolCall>,
    pub prompt_eval_count: u64,
    pub eval_count: u64,
    /// The content went past the size limit and was cut there (the stream was abandoned).
    pub truncated: bool,
    pub done_reason: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum OllamaError {
    #[error("Ollama is unreachable at {addr}: {reason}")]
    Unreachable { addr: String, reason: String },
    #[error("Ollama has no model {model:?} (404: {message})")]
    UnknownModel { model: String, message: String },
    #[error("Ollama answered {status}: {message}")]
    Status { status: u16, message: String },
    #[error("Ollama failed mid-answer: {0}")]
    MidStream(String),
    #[error("Ollama sent something unreadable: {0}")]
    Protocol(String),
    #[error("Ollama did not finish within {0}s")]
    Timeout(u64),
}

impl OllamaError {
    /// The short line the channel sees.
    pub fn sentence(&self) -> String {
        let s = match self {
            OllamaError::Unreachable { .. } => {
                "I can't reach my model server (Ollama) right now; try again later.".to_string()
            }
            OllamaError::UnknownModel { model, .. } => {
                format!("My model {model:?} is not installed on the Ollama server.")
            }
            OllamaError::Status { status, message } => {
                format!("The model server failed ({status}): {message}")
            }
            OllamaError::MidStream(m) => format!("The model failed while answering: {m}"),
            OllamaError::Protocol(_) => {
                "The model server sent a reply I could not read.".to_string()
            }
            OllamaError::Timeout(s) => format!("The model did not answer within {s}s."),
        };
        crate::text::truncate_utf8(&s, 300).to_string()
    }
}

/// Sends one streamed chat request and collects the answer, reading at most `reply_bytes` of
/// content.
pub async fn chat(
    url: &str,
    model: &str,
    messages: &[Message],
    tools: &[Value],
    reply_bytes: usize,
    timeout: Duration,
) -> Result<Reply, OllamaError> {
    match tokio::time::timeout(
        timeout,
        chat_inner(url, model, messages, tools, reply_bytes),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => Err(OllamaError::Timeout(timeout.as_secs())),
    }
}

async fn chat_inner(
    url: &str,
    model: &str,
    messages: &[Message],
    tools: &[Value],
    reply_bytes: usize,
) -> Result<Reply, OllamaError> {
    let base = Base::parse(url).map_err(|e| OllamaError::Unreachable {
        addr: url.into(),
        reason: e.to_string(),
    })?;
    let body = serde_json::to_vec(&ChatRequest {
        model,
        messages,
        tools,
        stream: true,
    })
    .map_err(|e| OllamaError::Protocol(e.to_string()))?;
    let mut resp = http::request(&base, "POST", "/api/chat", Some(&body))
        .await
        .map_err(|e| match e {
            HttpError::Connect { addr, reason } => OllamaError::Unreachable { addr, reason },
            e @ (HttpError::Malformed(_) | HttpError::TooLarge(_)) => {
                OllamaError::Protocol(e.to_string())
            }
            other => OllamaError::Unreachable {
                addr: base.addr.clone(),
                reason: other.to_string(),
            },
        })?;
    if resp.status != 200 {
        let body = resp.read_all(ERROR_BODY_MAX).await.unwrap_or_default();
        let message = error_message(&body);
        return Err(if resp.status == 404 {
            OllamaError::UnknownModel {
                model: model.into(),
                message,
            }
        } else {
            OllamaError::Status {
                status: resp.status,
                message,
            }
        });
    }
    // A single NDJSON line may carry at most the whole allowed reply plus its JSON envelope.
    let mut lines = Lines::new(reply_bytes + 64 * 1024);
    let mut reply = Reply::default();
    loop {
        let chunk = resp.chunk().await.map_err(|e| match e {
            HttpError::TooLarge(_) => OllamaError::Protocol(e.to_string()),
            other => OllamaError::MidStream(format!("connection lost ({other})")),
        })?;
        let Some(chunk) = chunk else {
            // A stream without `done: true` lost its end.
            if let Some(rest) = std::mem::replace(&mut lines, Lines::new(0)).finish() {
                if absorb(&mut reply, &rest, reply_bytes)? {
                    return Ok(reply);
                }
            }
            return Err(OllamaError::MidStream(
                "the stream ended before the answer was done".into(),
            ));
        };
        let complete = match lines.push(&chunk) {
            Ok(l) => l,
            Err(_) => {
                // One enormous line: keep what fits and say so.
                reply.truncated = true;
                return Ok(reply);
            }
        };
        for line in complete {
            if absorb(&mut reply, &line, reply_bytes)? {
                return Ok(reply);
            }
        }
    }
}

/// Folds one NDJSON line into `reply`; true when the answer is complete (done, or cut at the size
/// limit).
fn absorb(reply: &mut Reply, line: &[u8], reply_bytes: usize) -> Result<bool, OllamaError> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(false);
    }
    let parsed: StreamLine = serde_json::from_slice(line).map_err(|e| {
        OllamaError::Protocol(format!(
            "{e} in {:?}",
            crate::text::truncate_utf8(&String::from_utf8_lossy(line), 200)
        ))
    })?;
    if let Some(error) = parsed.error {
        return Err(OllamaError::MidStream(one_line(&error)));
    }
    if let Some(m) = parsed.message {
        let room = reply_bytes.saturating_sub(reply.content.len());
        if m.content.len() > room {
            reply
                .content
                .push_str(crate::text::truncate_utf8(&m.content, room));
            reply.truncated = true;
            return Ok(true);
        }
        reply.content.push_str(&m.content);
        reply.tool_calls.extend(m.tool_calls);
    }
    if parsed.done {
        reply.prompt_eval_count = parsed.prompt_eval_count.unwrap_or(0);
        reply.eval_count = parsed.eval_count.unwrap_or(0);
        reply.done_reason = parsed.done_reason;
        return Ok(true);
    }
    Ok(false)
}

/// The `error` of an error body, or the body itself, on one short line.
fn error_message(body: &[u8]) -> String {
    let text = match serde_json::from_slice::<StreamLine>(body) {
        Ok(StreamLine { error: Some(e), .. }) => e,
        _ => String::from_utf8_lossy(body).into_owned(),
    };
    let text = one_line(&text);
    if text.is_empty() {
        "no error message".into()
    } else {
        text
    }
}

fn one_line(s: &str) -> String {
    let clean: String = crate::text::sanitize_line(&s.replace(['\r', '\n'], " "));
    crate::text::truncate_utf8(clean.trim(), 200).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(lines: &[&str], max: usize) -> Result<(Reply, bool), OllamaError> {
        let mut r = Reply::default();
        let mut done = false;
        for l in lines {
            done = absorb(&mut r, l.as_bytes(), max)?;
            if done {
                break;
            }
        }
        Ok((r, done))
    }

    #[test]
    fn stream_collects_content_tool_calls_and_counts() {
        let (r, done) = feed(
            &[
                r#"{"model":"m","message":{"role":"assistant","content":"Hel"},"done":false}"#,
                r#"{"model":"m","message":{"role":"assistant","content":"lo","tool_calls":[{"function":{"name":"run_command","arguments":{"command":"ls"}}}]},"done":false}"#,
                r#"{"model":"m","message":{"role":"assistant","content":""},"done":true,"done_reason":"stop","total_duration":5,"prompt_eval_count":26,"eval_count":290}"#,
            ],
            1000,
        )
        .unwrap();
        assert!(done);
        assert_eq!(r.content, "Hello");
        assert_eq!(r.tool_calls[0].function.name, "run_command");
        assert_eq!(r.tool_calls[0].function.arguments["command"], "ls");
        assert_eq!((r.prompt_eval_count, r.eval_count), (26, 290));
    }

    #[test]
    fn an_error_line_mid_stream_is_an_error_with_its_text() {
        let e = feed(
            &[
                r#"{"message":{"role":"assistant","content":"par"},"done":false}"#,
                "{\"error\":\"out of memory\\r\\nPRIVMSG #x :pwned\"}",
            ],
            1000,
        )
        .unwrap_err();
        assert_eq!(
            e,
            OllamaError::MidStream("out of memory  PRIVMSG #x :pwned".into())
        );
        assert!(!e.sentence().contains(['\r', '\n']));
    }

    #[test]
    fn garbage_lines_are_protocol_errors() {
        for bad in [
            "not json",
            "[1,2]",
            r#"{"message":{"role":5}}"#,
            "{\"done\":\"yes\"}",
        ] {
            assert!(
                matches!(feed(&[bad], 100), Err(OllamaError::Protocol(_))),
                "{bad}"
            );
        }
        assert!(!feed(&["   "], 100).unwrap().1);
    }

    #[test]
    fn content_past_the_limit_is_cut_on_a_char_boundary() {
        let big = format!(
            r#"{{"message":{{"role":"assistant","content":"{}"}},"done":false}}"#,
            "é".repeat(100)
        );
        let (r, done) = feed(&[&big], 51).unwrap();
        assert!(done && r.truncated);
        assert_eq!(r.content, "é".repeat(25));
    }

    #[test]
    fn error_bodies_become_one_short_line() {
        assert_eq!(
            error_message(br#"{"error":"model \"x\" not found, try pulling it first"}"#),
            "model \"x\" not found, try pulling it first"
        );
        assert_eq!(
            error_message(b"<html>\r\nbad gateway</html>"),
            "<html>  bad gateway</html>"
        );
        assert_eq!(error_message(b""), "no error message");
        assert!(error_message(&vec![b'x'; 10_000]).len() <= 200);
    }

    #[test]
    fn tool_results_serialize_as_ollama_documents_them() {
        let m = Message::tool("run_command", "ok");
        assert_eq!(
            serde_json::to_value(&m).unwrap(),
            serde_json::json!({"role":"tool","content":"ok","tool_name":"run_command"})
        );
        let u = Message::new("user", "hi");
        assert_eq!(
            serde_json::to_value(&u).unwrap(),
            serde_json::json!({"role":"user","content":"hi"})
        );
    }

    async fn serve_once(response: &'static [u8]) -> String {
        use tokio::io::AsyncWriteExt;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = tokio::io::AsyncReadExt::read(&mut s, &mut buf).await;
            let _ = s.write_all(response).await;
        });
        url
    }

    #[tokio::test]
    async fn transport_failures_are_told_apart() {
        let t = Duration::from_secs(5);
        let e = chat("http://127.0.0.1:9", "m", &[], &[], 100, t)
            .await
            .unwrap_err();
        assert!(matches!(e, OllamaError::Unreachable { .. }), "{e:?}");
        let url = serve_once(b"SSH-2.0-OpenSSH\r\n\r\n").await;
        let e = chat(&url, "m", &[], &[], 100, t).await.unwrap_err();
        assert!(matches!(e, OllamaError::Protocol(_)), "{e:?}");
        let url = serve_once(
            b"HTTP/1.1 200 OK\r\n\r\n{\"message\":{\"role\":\"assistant\",\"content\":\"cut\"}}\n",
        )
        .await;
        let e = chat(&url, "m", &[], &[], 100, t).await.unwrap_err();
        assert!(matches!(e, OllamaError::MidStream(_)), "{e:?}");
        let url = serve_once(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 19\r\n\r\n{\"error\":\"no such\"}",
        )
        .await;
        let e = chat(&url, "m", &[], &[], 100, t).await.unwrap_err();
        assert_eq!(
            e,
            OllamaError::UnknownModel {
                model: "m".into(),
                message: "no such".into()
            }
        );
    }
}
