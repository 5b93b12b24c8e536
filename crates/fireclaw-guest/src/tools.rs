//! The tools a model may call: `run_command`, `web_search` (only with a SearXNG URL) and
//! `save_memory`. A bad call is an [`Outcome`] with a `problem`, never a panic: the model gets the
//! error as the tool's result (so it can correct itself) and the channel gets a short note.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::config::Limits;
use crate::http::{self, Base};
use crate::memory;

/// What one tool call produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The `content` of the `tool` message sent back to the model.
    pub content: String,
    /// A short sentence for the channel when the call failed.
    pub problem: Option<String>,
    /// `MEMORY.md` changed: the context must be re-read.
    pub memory_changed: bool,
}

impl Outcome {
    fn ok(content: String) -> Outcome {
        Outcome {
            content,
            problem: None,
            memory_changed: false,
        }
    }

    fn failed(problem: String) -> Outcome {
        Outcome {
            content: format!("error: {problem}"),
            problem: Some(problem),
            memory_changed: false,
        }
    }
}

/// The tools of one agent, as its configuration sets them up.
#[derive(Debug, Clone)]
pub struct Tools {
    pub workspace: PathBuf,
    pub searxng: Option<String>,
    pub limits: Limits,
}

#[derive(Deserialize)]
struct RunCommandArgs {
    command: String,
    #[serde(default)]
    timeout_secs: Option<u64>,
}

#[derive(Deserialize)]
struct WebSearchArgs {
    query: String,
}

#[derive(Deserialize)]
struct SaveMemoryArgs {
    text: String,
}

impl Tools {
    /// The names the model may call, in the order they are offered.
    pub fn names(&self) -> Vec<&'static str> {
        let mut names = vec!["run_command"];
        if self.searxng.is_some() {
            names.push("web_search");
        }
        names.push("save_memory");
        names
    }

    /// Ollama's `tools` array.
    pub fn specs(&self) -> Vec<Value> {
        let mut specs = vec![function(
            "run_command",
            &format!(
                "Run a shell command (sh -c) in your workspace {} and get its exit status and output. Killed after {}s.",
                self.workspace.display(),
                self.limits.command_timeout_secs
            ),
            json!({
                "type": "object",
                "properties": {
                    "command": {"type": "string", "description": "the shell command line"},
                    "timeout_secs": {"type": "integer", "description": "optional shorter timeout in seconds"}
                },
                "required": ["command"]
            }),
        )];
        if self.searxng.is_some() {
            specs.push(function(
                "web_search",
                "Search the web; returns titles, URLs and snippets.",
                json!({
                    "type": "object",
                    "properties": {"query": {"type": "string", "description": "what to search for"}},
                    "required": ["query"]
                }),
            ));
        }
        specs.push(function(
            "save_memory",
            "Append a note to your MEMORY.md, which you see at the start of every conversation, also after a restart.",
            json!({
                "type": "object",
                "properties": {"text": {"type": "string", "description": "the note to remember"}},
                "required": ["text"]
            }),
        ));
        specs
    }

    /// Runs the tool `name` with the model's `arguments`.
    pub async fn call(&self, name: &str, arguments: &Value) -> Outcome {
        match name {
            "run_command" => match args::<RunCommandArgs>(name, arguments) {
                Ok(a) if a.command.trim().is_empty() => {
                    Outcome::failed("run_command needs a non-empty `command`".into())
                }
                Ok(a) => {
                    let max = self.limits.command_timeout_secs;
                    let secs = a.timeout_secs.unwrap_or(max).clamp(1, max);
                    run_command(
                        &a.command,
                        &self.workspace,
                        Duration::from_secs(secs),
                        self.limits.command_output_bytes,
                    )
                    .await
                }
                Err(o) => o,
            },
            "web_search" if self.searxng.is_some() => {
                match args::<WebSearchArgs>(name, arguments) {
                    Ok(a) if a.query.trim().is_empty() => {
                        Outcome::failed("web_search needs a non-empty `query`".into())
                    }
                    Ok(a) => {
                        let url = self.searxng.as_deref().unwrap_or_default();
                        web_search(url, &a.query, self.limits.search_results).await
                    }
                    Err(o) => o,
                }
            }
            "save_memory" => match args::<SaveMemoryArgs>(name, arguments) {
                Ok(a) if a.text.trim().is_empty() => {
                    Outcome::failed("save_memory needs a non-empty `text`".into())
                }
                Ok(a) => {
                    match memory::append(&self.workspace, &a.text, self.limits.memory_bytes).await {
                        Ok(size) => Outcome {
                            memory_changed: true,
                            ..Outcome::ok(format!("saved; MEMORY.md is now {size} bytes"))
                        },
                        Err(e) => Outcome::failed(format!("save_memory: {e}")),
                    }
                }
                Err(o) => o,
            },
            other => Outcome::failed(format!(
                "unknown tool {:?}; available: {}",
                crate::text::truncate_utf8(&crate::text::sanitize_line(other), 60),
                self.names().join(", ")
            )),
        }
    }
}

fn function(name: &str, description: &str, parameters: Value) -> Value {
    json!({
        "type": "function",
        "function": {"name": name, "description": description, "parameters": parameters}
    })
}

/// The arguments as `T`. Ollama documents an object; some models send the object as a JSON string,
/// which is accepted too.
fn args<T: for<'de> Deserialize<'de>>(tool: &str, arguments: &Value) -> Result<T, Outcome> {
    let parsed;
    let object = match arguments {
        Value::Object(_) => arguments,
        Value::String(s) => match serde_json::from_str::<Value>(s) {
            Ok(v @ Value::Object(_)) => {
                parsed = v;
                &parsed
            }
            _ => {
                return Err(Outcome::failed(format!(
                    "{tool}: arguments must be a JSON object"
                )))
            }
        },
        _ => {
            return Err(Outcome::failed(format!(
                "{tool}: arguments must be a JSON object"
            )))
        }
    };
    serde_json::from_value(object.clone()).map_err(|e| {
        Outcome::failed(format!(
            "{tool}: malformed arguments ({})",
            crate::text::truncate_utf8(&e.to_string(), 120)
        ))
    })
}

/// Runs `sh -c command` in `dir` in a process group of its own; on timeout (and after the shell
/// exits, for anything it left running) the whole group is killed.
pub async fn run_command(command: &str, dir: &Path, timeout: Duration, cap: usize) -> Outcome {
    let mut cmd = tokio::process::Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(command)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return Outcome::failed(format!("run_command could not start sh: {e}")),
    };
    let pgid = child.id().and_then(|id| i32::try_from(id).ok());
    let out = child
        .stdout
        .take()
        .map(|s| tokio::spawn(read_capped(s, cap)));
    let err = child
        .stderr
        .take()
        .map(|s| tokio::spawn(read_capped(s, cap)));
    let status = tokio::time::timeout(timeout, child.wait()).await;
    if let Some(pgid) = pgid {
        // Kill the group: on timeout the command itself, otherwise whatever it left running in
        // the background holding our pipes open.
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pgid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let (status_line, problem) = match status {
        Ok(Ok(s)) => match (s.code(), std::os::unix::process::ExitStatusExt::signal(&s)) {
            (Some(code), _) => (format!("exit status: {code}"), None),
            (None, Some(sig)) => (format!("killed by signal {sig}"), None),
            _ => (format!("ended: {s}"), None),
        },
        Ok(Err(e)) => (
            format!("could not wait for the command: {e}"),
            Some(format!("run_command failed: {e}")),
        ),
        Err(_) => {
            let _ = child.wait().await;
            let secs = timeout.as_secs();
            (
                format!("timed out after {secs}s: the command and its process group were killed"),
                Some(format!(
                    "run_command timed out after {secs}s and was killed."
                )),
            )
        }
    };
    let stdout = collect(out).await;
    let stderr = collect(err).await;
    let mut content = status_line;
    for (name, (bytes, total)) in [("stdout", stdout), ("stderr", stderr)] {
        if total == 0 {
            continue;
        }
        content.push_str(&format!("\n--- {name} ---\n"));
        content.push_str(&String::from_utf8_lossy(&bytes));
        if total > bytes.len() {
            content.push_str(&format!("\n[{name} cut: {total} bytes in all]"));
        }
    }
    Outcome {
        content,
        problem,
        memory_changed: false,
    }
}

async fn collect(task: Option<tokio::task::JoinHandle<(Vec<u8>, usize)>>) -> (Vec<u8>, usize) {
    let Some(task) = task else {
        return (Vec::new(), 0);
    };
    // A process that escaped the group (setsid) may hold the pipe: stop waiting after a while.
    match tokio::time::timeout(Duration::from_secs(2), task).await {
        Ok(Ok(r)) => r,
        _ => (Vec::new(), 0),
    }
}

/// Reads all of `r`, keeping the first `cap` bytes; returns them and the total read.
async fn read_capped<R: AsyncRead + Unpin>(mut r: R, cap: usize) -> (Vec<u8>, usize) {
    let mut kept = Vec::new();
    let mut total = 0;
    let mut buf = [0u8; 8192];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                total += n;
                let room = cap.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
    (kept, total)
}

#[derive(Deserialize)]
struct SearxAnswer {
    #[serde(default)]
    results: Vec<SearxResult>,
}

#[derive(Clone, Deserialize)]
struct SearxResult {
    #[serde(default)]
    title: String,
    #[serde(default)]
    url: String,
    #[serde(default)]
    content: String,
}

/// SearXNG's JSON API, results trimmed to title, URL and snippet.
pub async fn web_search(url: &str, query: &str, max_results: usize) -> Outcome {
    let base = match Base::parse(url) {
        Ok(b) => b,
        Err(e) => return Outcome::failed(format!("web_search: {e}")),
    };
    let path = format!("/search?q={}&format=json", http::encode_query(query));
    let fetch = async {
        let mut resp = http::request(&base, "GET", &path, None).await?;
        let body = resp.read_all(4 << 20).await?;
        Ok::<_, http::HttpError>((resp.status, body))
    };
    let (status, body) = match tokio::time::timeout(Duration::from_secs(30), fetch).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return Outcome::failed(format!("web search failed: {e}")),
        Err(_) => return Outcome::failed("web search did not answer within 30s".into()),
    };
    match status {
        200 => {}
        403 => {
            return Outcome::failed(
                "web search is refused by SearXNG (403): its JSON output is not enabled (add `json` to search.formats in its settings.yml)".into(),
            )
        }
        s => return Outcome::failed(format!("web search failed: SearXNG answered {s}")),
    }
    let answer: SearxAnswer = match serde_json::from_slice(&body) {
        Ok(a) => a,
        Err(e) => return Outcome::failed(format!("web search: unreadable SearXNG answer ({e})")),
    };
    Outcome::ok(format_results(&answer.results, max_results))
}

fn format_results(results: &[SearxResult], max: usize) -> String {
    if results.is_empty() {
        return "no results".into();
    }
    let mut out = String::new();
    for (i, r) in results.iter().take(max).enumerate() {
        let clean = |s: &str, n: usize| {
            let s = crate::text::sanitize_line(&s.replace(['\r', '\n'], " "));
            crate::text::truncate_utf8(s.trim(), n).to_string()
        };
        out.push_str(&format!(
            "{}. {}\n   {}\n   {}\n",
            i + 1,
            clean(&r.title, 200),
            clean(&r.url, 300),
            clean(&r.content, 300)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tools(dir: &Path, searx: bool) -> Tools {
        Tools {
            workspace: dir.to_path_buf(),
            searxng: searx.then(|| "http://127.0.0.1:9".to_string()),
            limits: Limits {
                command_timeout_secs: 2,
                command_output_bytes: 100,
                memory_bytes: 200,
                ..Limits::default()
            },
        }
    }

    #[test]
    fn web_search_is_offered_only_with_a_searxng_url() {
        let d = tempfile::tempdir().unwrap();
        let names = |t: &Tools| -> Vec<String> {
            t.specs()
                .iter()
                .map(|s| s["function"]["name"].as_str().unwrap().to_string())
                .collect()
        };
        assert_eq!(
            names(&tools(d.path(), false)),
            ["run_command", "save_memory"]
        );
        assert_eq!(
            names(&tools(d.path(), true)),
            ["run_command", "web_search", "save_memory"]
        );
    }

    #[tokio::test]
    async fn hostile_tool_calls_are_refused_with_a_reason() {
        let d = tempfile::tempdir().unwrap();
        let t = tools(d.path(), false);
        for (name, args, want) in [
            ("rm_rf", json!({}), "unknown tool \"rm_rf\""),
            (
                "web_search",
                json!({"query": "x"}),
                "unknown tool \"web_search\"",
            ),
            ("a\r\nQUIT", json!({}), "unknown tool \"aQUIT\""),
            ("run_command", json!([1]), "must be a JSON object"),
            ("run_command", json!("not json"), "must be a JSON object"),
            ("run_command", json!({"cmd": "ls"}), "malformed arguments"),
            ("run_command", json!({"command": 5}), "malformed arguments"),
            ("run_command", json!({"command": "  "}), "non-empty"),
            ("save_memory", json!(null), "must be a JSON object"),
            ("save_memory", json!({"text": ""}), "non-empty"),
        ] {
            let o = t.call(name, &args).await;
            let p = o.problem.unwrap_or_default();
            assert!(p.contains(want), "{name} {args}: {p}");
            assert!(o.content.starts_with("error: "), "{}", o.content);
            assert!(!p.contains(['\r', '\n']), "{p:?}");
        }
    }

    #[tokio::test]
    async fn arguments_as_a_json_string_are_accepted() {
        let d = tempfile::tempdir().unwrap();
        let o = tools(d.path(), false)
            .call("run_command", &json!("{\"command\":\"echo hi\"}"))
            .await;
        assert_eq!(o.problem, None);
        assert!(o.content.contains("hi"), "{}", o.content);
    }

    #[tokio::test]
    async fn run_command_reports_status_output_and_caps_it() {
        let d = tempfile::tempdir().unwrap();
        let o = run_command(
            "pwd; echo err >&2; head -c 5000 /dev/zero | tr '\\0' x; exit 3",
            d.path(),
            Duration::from_secs(5),
            100,
        )
        .await;
        assert!(o.content.starts_with("exit status: 3"), "{}", o.content);
        assert!(o.content.contains(&d.path().display().to_string()));
        assert!(o.content.contains("--- stderr ---\nerr"));
        assert!(o.content.contains("[stdout cut: "), "{}", o.content);
        assert!(o.content.len() < 400);
    }

    #[tokio::test]
    async fn a_command_that_never_ends_is_killed_with_its_group() {
        let d = tempfile::tempdir().unwrap();
        let pidfile = d.path().join("bg.pid");
        let started = std::time::Instant::now();
        let o = run_command(
            &format!("sleep 1000 & echo $! > {}; wait", pidfile.display()),
            d.path(),
            Duration::from_secs(1),
            100,
        )
        .await;
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(o.problem.unwrap().contains("timed out after 1s"));
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The background sleep was in the group: it is gone (or a zombie about to be reaped by
        // init), never still sleeping.
        std::thread::sleep(Duration::from_millis(200));
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(state.is_empty() || state.contains(") Z"), "{state}");
    }

    #[test]
    fn search_results_are_trimmed_and_clean() {
        let results = vec![
            SearxResult {
                title: "T\r\nQUIT".into(),
                url: "http://x/".into(),
                content: "s".repeat(1000),
            };
            8
        ];
        let text = format_results(&results, 3);
        assert_eq!(text.matches("http://x/").count(), 3);
        assert!(text.starts_with("1. T  QUIT\n"), "{text}");
        assert!(text.len() < 3 * 400);
        assert_eq!(format_results(&[], 3), "no results");
    }

    #[tokio::test]
    async fn unreachable_search_is_a_sentence() {
        let o = web_search("http://127.0.0.1:9", "x", 3).await;
        assert!(o.problem.unwrap().starts_with("web search failed"));
    }

    /// Serves one canned HTTP response on a local port; returns its URL and the request line it
    /// got.
    async fn canned(response: &'static str) -> (String, tokio::task::JoinHandle<String>) {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let mut s = tokio::io::BufReader::new(s);
            let mut first = String::new();
            s.read_line(&mut first).await.unwrap();
            loop {
                let mut h = String::new();
                s.read_line(&mut h).await.unwrap();
                if h.trim().is_empty() {
                    break;
                }
            }
            s.get_mut().write_all(response.as_bytes()).await.unwrap();
            s.get_mut().shutdown().await.unwrap();
            first
        });
        (url, task)
    }

    #[tokio::test]
    async fn web_search_asks_for_json_and_trims_results() {
        let (url, req) = canned(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 139\r\n\r\n{\"query\":\"x\",\"results\":[{\"url\":\"http://a/\",\"title\":\"A\",\"content\":\"first\",\"engine\":\"e\"},{\"url\":\"http://b/\",\"title\":\"B\",\"content\":\"second\"}]}",
        )
        .await;
        let o = web_search(&url, "rust & musl", 1).await;
        assert_eq!(o.problem, None, "{}", o.content);
        assert_eq!(o.content, "1. A\n   http://a/\n   first\n");
        assert_eq!(
            req.await.unwrap().trim_end(),
            "GET /search?q=rust%20%26%20musl&format=json HTTP/1.1"
        );
    }

    #[tokio::test]
    async fn a_403_from_searxng_says_json_is_not_enabled() {
        let (url, _req) =
            canned("HTTP/1.1 403 Forbidden\r\nContent-Length: 9\r\n\r\nForbidden").await;
        let o = web_search(&url, "x", 3).await;
        let p = o.problem.unwrap();
        assert!(p.contains("403") && p.contains("json"), "{p}");
        assert!(o.content.starts_with("error: "));
    }
}
