//! The control socket: HTTP/1.1 + JSON on a Unix socket (docs/api.md).
//!
//! axum provides routing, typed extractors and body limits over hyper; the accept loop is ours
//! (tokio's `UnixListener` + hyper's HTTP/1 connection) because every connection's peer
//! credentials are checked before any request on it is read, and because stopping must refuse new
//! connections at once while in-flight requests finish.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{MatchedPath, Path as UrlPath, Query, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use fireclaw_proto::control::{
    self as proto, ErrorBody, ExecRequest, Health, Removed, RuntimeStatus, VmList,
};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::UnixListener;

use super::access::{Access, Peer};
use super::{vms, Service};

type Svc = Arc<Service>;

/// How long a connection may take to send a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds the socket `0660 root:<group>`. A socket file left by a runtime that died is replaced;
/// one that answers belongs to a running runtime, and this one refuses to start.
pub async fn bind(socket: &Path, access: &Access) -> anyhow::Result<UnixListener> {
    let dir = socket
        .parent()
        .with_context(|| format!("{} has no parent directory", socket.display()))?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    if socket.exists() {
        if tokio::net::UnixStream::connect(socket).await.is_ok() {
            anyhow::bail!(
                "another fireclaw runtime answers on {}; stop it first (`systemctl stop fireclaw`)",
                socket.display()
            );
        }
        std::fs::remove_file(socket)
            .with_context(|| format!("removing the stale socket {}", socket.display()))?;
        tracing::info!(
            "removed the stale socket {} (a runtime died)",
            socket.display()
        );
    }
    let listener = UnixListener::bind(socket)
        .with_context(|| format!("binding the control socket {}", socket.display()))?;
    // Connections made before these two calls are still checked by their peer credentials.
    nix::unistd::chown(socket, None, Some(access.gid))
        .with_context(|| format!("chown :{} {}", access.group, socket.display()))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("chmod 0660 {}", socket.display()))?;
    Ok(listener)
}

/// Accepts connections until `stop` turns true; then in-flight requests get a grace period.
pub async fn accept_loop(
    listener: UnixListener,
    service: Svc,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let app = router(service.clone());
    let forbidden = Router::new().fallback(forbidden);
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let stream = tokio::select! {
            _ = stop.changed() => break,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!("accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let peer = match stream.peer_cred() {
            Ok(c) => Peer {
                uid: c.uid(),
                gid: c.gid(),
                pid: c.pid(),
            },
            Err(e) => {
                tracing::warn!("reading a connection's peer credentials: {e}; refused");
                continue;
            }
        };
        let svc = if service.access.allows(&peer) {
            // Handlers that audit name the peer.
            app.clone().layer(axum::Extension(peer))
        } else {
            tracing::warn!(
                uid = peer.uid,
                gid = peer.gid,
                pid = peer.pid,
                "refused a control socket connection: not root and not in group {}",
                service.access.group
            );
            forbidden.clone()
        };
        let mut stop = stop.clone();
        conns.spawn(async move {
            // A client that opens a connection and sends nothing does not hold it for ever.
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc));
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!("control connection: {e}");
                    }
                }
                _ = stop.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                }
            }
        });
        // Reap finished connections so the set does not grow with every request.
        while conns.try_join_next().is_some() {}
    }
    drop(listener);
    while conns.join_next().await.is_some() {}
}

pub fn router(service: Svc) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/status", get(status))
        .route("/v1/vms", get(list_vms))
        .route("/v1/vms/{id}", delete(remove_vm))
        .route("/v1/vms/{id}/exec", post(exec_vm))
        .route("/v1/vms/{id}/console", get(console))
        .route("/v1/run", post(run_vm))
        .route("/v1/agents", get(agents::list).post(agents::start))
        .route("/v1/agents/{name}", delete(agents::remove))
        .route("/v1/agents/{name}/reload", post(agents::reload))
        .route("/v1/agents/{name}/logs", get(agents::logs))
        .route("/metrics", get(metrics))
        .route_layer(axum::middleware::from_fn_with_state(
            service.clone(),
            count_requests,
        ))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(
            proto::MAX_REQUEST_BYTES,
        ))
        .with_state(service)
}

async fn count_requests(State(service): State<Svc>, req: Request, next: Next) -> Response {
    let method = req.method().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let resp = next.run(req).await;
    service
        .metrics
        .requests
        .get_or_create(&super::metrics::RequestLabels {
            method,
            route,
            status: resp.status().as_u16(),
        })
        .inc();
    resp
}

/// An error answer: the status and `{"error": "..."}`.
pub struct ApiError(StatusCode, String);

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError(status, message.into())
    }

    fn internal(e: impl std::fmt::Display) -> ApiError {
        ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(ErrorBody { error: self.1 })).into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

async fn not_found(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!(
            "no such endpoint: {method} {}; see docs/api.md (routes start with /{})",
            uri.path(),
            proto::API_VERSION
        ),
    )
}

async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed on {}", uri.path()),
    )
}

async fn forbidden() -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        format!(
            "permission denied: the control socket serves root and members of group {}",
            super::SOCKET_GROUP
        ),
    )
}

/// The id from the path, refused unless it is a VM id as fireclaw makes them.
pub fn check_id(id: &str) -> ApiResult<()> {
    if proto::valid_vm_id(id) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "invalid VM id {:?}: expected 12 lowercase hexadecimal digits (see `fireclaw ps`)",
                id.chars().take(64).collect::<String>()
            ),
        ))
    }
}

/// A JSON body of type `T`, or the 400/413 that says what is wrong with it.
pub fn parse_body<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<T> {
    let bytes = body.map_err(|r| {
        let status = r.status();
        let msg = if status == StatusCode::PAYLOAD_TOO_LARGE {
            format!(
                "request body too large: at most {} bytes",
                proto::MAX_REQUEST_BYTES
            )
        } else {
            format!("reading the request body: {}", r.body_text())
        };
        ApiError::new(status, msg)
    })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("malformed JSON body: {e}")))
}

/// Runs blocking work (database, /proc, netlink) off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(ApiError::internal)?
        .map_err(|e| ApiError::internal(format!("{e:#}")))
}

/// `/v1/agents`: the agent manager's operations, with the IRC commands' semantics, audited with
/// the peer's uid and pid (the socket's group is the authorization, as for every route).
mod agents {
    use super::*;
    use crate::agents::manager::Manager;
    use crate::agents::store::{self, Source};
    use crate::irc::overseer::{AgentOps as _, Answer};
    use fireclaw_proto::control::{AgentAnswer, AgentReload, AgentStart};

    #[derive(serde::Deserialize)]
    pub struct Purge {
        #[serde(default)]
        purge: bool,
    }

    #[derive(serde::Deserialize)]
    pub struct Lines {
        n: Option<u16>,
    }

    fn manager(s: &Svc) -> ApiResult<Arc<Manager>> {
        s.agents.get().cloned().ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the agent manager is starting",
            )
        })
    }

    fn check_name(name: &str) -> ApiResult<()> {
        if crate::irc::command::is_agent_name(name) {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "invalid agent name {:?}: a letter, then letters, digits, - or _, at most 16",
                    name.chars().take(40).collect::<String>()
                ),
            ))
        }
    }

    /// Audits and turns the manager's answer into a response: its sentence is a 409.
    async fn answer(
        s: &Svc,
        peer: &Peer,
        command: String,
        a: Answer,
    ) -> ApiResult<Json<AgentAnswer>> {
        let (ok, summary) = match &a {
            Ok(lines) => (true, lines.first().cloned().unwrap_or_default()),
            Err(e) => (false, e.clone()),
        };
        let host = s.host();
        let actor = format!("uid {} pid {}", peer.uid, peer.pid.unwrap_or(0));
        if let Err(e) = blocking(move || {
            store::audit(&host.db()?, Source::Socket, &actor, &command, ok, &summary)?;
            Ok(())
        })
        .await
        {
            tracing::error!("audit: cannot record: {}", e.1);
        }
        a.map(|lines| Json(AgentAnswer { lines }))
            .map_err(|e| ApiError::new(StatusCode::CONFLICT, e))
    }

    pub async fn list(
        State(s): State<Svc>,
        axum::Extension(peer): axum::Extension<Peer>,
    ) -> ApiResult<Json<AgentAnswer>> {
        let a = manager(&s)?.list().await;
        answer(&s, &peer, "agent ls".into(), a).await
    }

    pub async fn start(
        State(s): State<Svc>,
        axum::Extension(peer): axum::Extension<Peer>,
        body: Result<Bytes, BytesRejection>,
    ) -> ApiResult<Json<AgentAnswer>> {
        let req: AgentStart = parse_body(body)?;
        let m = manager(&s)?;
        let a = m
            .invoke(&req.template, req.name.as_deref(), req.model.as_deref())
            .await;
        let command = format!(
            "agent start {} {} {}",
            req.template,
            req.name.as_deref().unwrap_or(""),
            req.model.as_deref().unwrap_or("")
        );
        answer(&s, &peer, command.trim_end().into(), a).await
    }

    pub async fn remove(
        State(s): State<Svc>,
        axum::Extension(peer): axum::Extension<Peer>,
        UrlPath(name): UrlPath<String>,
        Query(q): Query<Purge>,
    ) -> ApiResult<Json<AgentAnswer>> {
        check_name(&name)?;
        let a = manager(&s)?.destroy(&name, q.purge).await;
        let command = format!("agent rm {name}{}", if q.purge { " --purge" } else { "" });
        answer(&s, &peer, command, a).await
    }

    pub async fn reload(
        State(s): State<Svc>,
        axum::Extension(peer): axum::Extension<Peer>,
        UrlPath(name): UrlPath<String>,
        body: Result<Bytes, BytesRejection>,
    ) -> ApiResult<Json<AgentAnswer>> {
        check_name(&name)?;
        let req: AgentReload = parse_body(body)?;
        let a = manager(&s)?.reload(&name, req.model.as_deref()).await;
        let command = format!("agent reload {name} {}", req.model.as_deref().unwrap_or(""));
        answer(&s, &peer, command.trim_end().into(), a).await
    }

    pub async fn logs(
        State(s): State<Svc>,
        axum::Extension(peer): axum::Extension<Peer>,
        UrlPath(name): UrlPath<String>,
        Query(q): Query<Lines>,
    ) -> ApiResult<Json<AgentAnswer>> {
        check_name(&name)?;
        let n =
            q.n.unwrap_or(crate::irc::command::DEFAULT_LOG_LINES)
                .clamp(1, crate::irc::command::MAX_LOG_LINES);
        let a = manager(&s)?.logs(&name, n).await;
        answer(&s, &peer, format!("agent logs {name} -n {n}"), a).await
    }
}

async fn health() -> Json<Health> {
    Json(Health {
        ok: true,
        version: env!("CARGO_PKG_VERSION").into(),
        api: proto::API_VERSION.into(),
        pid: std::process::id(),
    })
}

async fn list_vms(State(s): State<Svc>) -> ApiResult<Json<VmList>> {
    let vms = blocking(move || vms::list(&s)).await?;
    Ok(Json(VmList { vms }))
}

async fn status(State(s): State<Svc>) -> ApiResult<Json<RuntimeStatus>> {
    let svc = s.clone();
    let vms = blocking(move || vms::list(&svc)).await?;
    Ok(Json(RuntimeStatus {
        version: env!("CARGO_PKG_VERSION").into(),
        pid: std::process::id(),
        uptime_secs: s.started.elapsed().as_secs(),
        vms_by_state: vms::by_state(&vms),
        pools: s.pool.status(&s.host().config),
        startup: s.startup_lines(),
    }))
}

async fn metrics(State(s): State<Svc>) -> ApiResult<Response> {
    let svc = s.clone();
    let vms = blocking(move || vms::list(&svc)).await?;
    let text = s.metrics.render(
        &vms::by_state(&vms),
        &s.pool.status(&s.host().config),
        s.started.elapsed().as_secs_f64(),
    );
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

async fn remove_vm(State(s): State<Svc>, UrlPath(id): UrlPath<String>) -> ApiResult<Json<Removed>> {
    check_id(&id)?;
    let vm = id.clone();
    match blocking(move || vms::remove(&s, &vm)).await? {
        vms::RemoveOutcome::Removed => Ok(Json(Removed { id })),
        vms::RemoveOutcome::NotFound => Err(no_such_vm(&id)),
        vms::RemoveOutcome::Failed(e) => Err(ApiError::internal(format!(
            "VM {id}: teardown incomplete (the row stays for `fireclaw gc`): {e}"
        ))),
    }
}

fn no_such_vm(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no VM {id} (see `fireclaw ps`)"),
    )
}

async fn exec_vm(
    State(s): State<Svc>,
    UrlPath(id): UrlPath<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<proto::ExecResult>> {
    check_id(&id)?;
    let req: ExecRequest = parse_body(body)?;
    req.check()
        .map_err(|m| ApiError::new(StatusCode::BAD_REQUEST, m))?;
    match super::exec::exec(&s, &id, &req).await {
        Ok(r) => Ok(Json(r)),
        Err(super::exec::ExecError::NoVm) => Err(no_such_vm(&id)),
        Err(super::exec::ExecError::NotReady(m)) => Err(ApiError::new(StatusCode::CONFLICT, m)),
        Err(super::exec::ExecError::Timeout(t)) => Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            format!("the command did not finish within {t} s"),
        )),
        Err(super::exec::ExecError::Failed(m)) => Err(ApiError::new(StatusCode::BAD_GATEWAY, m)),
    }
}

async fn run_vm(
    State(s): State<Svc>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<proto::RunResult>> {
    let req: proto::RunRequest = parse_body(body)?;
    req.check()
        .map_err(|m| ApiError::new(StatusCode::BAD_REQUEST, m))?;
    if s.is_stopping() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the runtime is stopping",
        ));
    }
    match super::run::run(&s, &req).await {
        Ok(r) => Ok(Json(r)),
        Err(super::run::RunError::BadRequest(m)) => Err(ApiError::new(StatusCode::BAD_REQUEST, m)),
        Err(super::run::RunError::Timeout(t)) => Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            format!("the VM or the command did not finish within {t} s"),
        )),
        Err(super::run::RunError::Failed(m)) => Err(ApiError::new(StatusCode::BAD_GATEWAY, m)),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsoleQuery {
    #[serde(default)]
    follow: Option<String>,
}

async fn console(
    State(s): State<Svc>,
    UrlPath(id): UrlPath<String>,
    query: Result<Query<ConsoleQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    check_id(&id)?;
    let Query(q) = query.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("bad query: {} (only ?follow=1 is known)", e.body_text()),
        )
    })?;
    let follow = match q.follow.as_deref() {
        None | Some("0") | Some("false") => false,
        Some("1") | Some("true") => true,
        Some(other) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("follow={other:?}: expected 1 or 0"),
            ))
        }
    };
    let svc = s.clone();
    let vm = id.clone();
    let exists =
        blocking(move || Ok(crate::vm::record::get(&svc.host().db()?, &vm)?.is_some())).await?;
    if !exists {
        return Err(no_such_vm(&id));
    }
    // The path comes from the validated id, never from the request or the row.
    let path = s.host().run_dir(&id).join("console.log");
    let body = if follow {
        Body::from_stream(super::exec::follow_console(s, id, path))
    } else {
        match tokio::fs::read(&path).await {
            Ok(b) => Body::from(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Body::empty(),
            Err(e) => {
                return Err(ApiError::internal(format!(
                    "reading {}: {e}",
                    path.display()
                )))
            }
        }
    };
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Request;
    use tower::ServiceExt as _;

    fn service(dir: &Path) -> Svc {
        let root = crate::root::RootPrefix::new(dir);
        let opts = super::super::Options {
            root,
            config: crate::config::Config::default(),
            config_path: None,
            db_path: dir.join("state.db"),
            engines: crate::vmm::EngineOptions::installed(&dir.join("bin")),
        };
        Arc::new(Service::new(
            &opts,
            Access {
                group: "fireclaw".into(),
                gid: nix::unistd::Gid::from_raw(4242),
            },
        ))
    }

    async fn call(app: &Router, method: &str, uri: &str, body: Vec<u8>) -> (StatusCode, String) {
        let resp = app
            .clone()
            .oneshot(
                Request::builder()
                    .method(method)
                    .uri(uri)
                    .body(Body::from(body))
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = resp.status();
        let bytes = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap()
            .to_bytes();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Every error is JSON `{"error": ...}` with a message that says what was wrong.
    fn error_of(body: &str) -> String {
        serde_json::from_str::<ErrorBody>(body)
            .unwrap_or_else(|e| panic!("not an error body ({e}): {body}"))
            .error
    }

    #[tokio::test]
    async fn hostile_requests_get_400_404_405_413_with_a_message() {
        let dir = tempfile::tempdir().unwrap();
        let app = router(service(dir.path()));
        let exec = |id: &str| format!("/v1/vms/{id}/exec");
        let good = br#"{"argv":["true"]}"#.to_vec();
        for (method, uri, body, status, needle) in [
            (
                "GET",
                "/v2/vms".to_string(),
                vec![],
                404,
                "no such endpoint",
            ),
            ("GET", "/".to_string(), vec![], 404, "no such endpoint"),
            (
                "GET",
                "/v1/vms/../../etc/passwd".to_string(),
                vec![],
                404,
                "no such endpoint",
            ),
            ("PUT", "/v1/health".to_string(), vec![], 405, "not allowed"),
            (
                "DELETE",
                "/v1/vms/..%2F..%2Fetc".to_string(),
                vec![],
                400,
                "invalid VM id",
            ),
            (
                "DELETE",
                "/v1/vms/fcbr0".to_string(),
                vec![],
                400,
                "invalid VM id",
            ),
            (
                "DELETE",
                "/v1/vms/0123456789AB".to_string(),
                vec![],
                400,
                "invalid VM id",
            ),
            (
                "POST",
                exec("0123456789abc"),
                good.clone(),
                400,
                "invalid VM id",
            ),
            (
                "POST",
                exec("0123456789ab"),
                b"{not json".to_vec(),
                400,
                "malformed JSON",
            ),
            ("POST", exec("0123456789ab"), vec![], 400, "malformed JSON"),
            (
                "POST",
                exec("0123456789ab"),
                br#"{"argv":["x"],"path":"/etc"}"#.to_vec(),
                400,
                "unknown field",
            ),
            (
                "POST",
                exec("0123456789ab"),
                br#"{"argv":[]}"#.to_vec(),
                400,
                "argv is empty",
            ),
            (
                "POST",
                exec("0123456789ab"),
                vec![b'x'; proto::MAX_REQUEST_BYTES + 1],
                413,
                "too large",
            ),
            (
                "GET",
                "/v1/vms/0123456789ab/console?follow=yes".to_string(),
                vec![],
                400,
                "follow",
            ),
            (
                "GET",
                "/v1/vms/0123456789ab/console?file=/etc/shadow".to_string(),
                vec![],
                400,
                "bad query",
            ),
        ] {
            let (got, body) = call(&app, method, &uri, body).await;
            assert_eq!(got.as_u16(), status, "{method} {uri}: {body}");
            let msg = error_of(&body);
            assert!(msg.contains(needle), "{method} {uri}: {msg}");
        }
    }

    #[tokio::test]
    async fn run_requests_name_only_configured_images_and_known_policies() {
        let dir = tempfile::tempdir().unwrap();
        let app = router(service(dir.path()));
        for (body, needle) in [
            (r#"{"argv": []}"#, "argv is empty"),
            (r#"{"argv": ["true"], "policy": "open"}"#, "policy \"open\""),
            (
                r#"{"argv": ["true"], "image": "/etc/shadow"}"#,
                "is not one of the runtime's images",
            ),
            (r#"{"argv": ["true"], "disk": "/dev/sda"}"#, "unknown field"),
        ] {
            let (got, text) = call(&app, "POST", "/v1/run", body.as_bytes().to_vec()).await;
            assert_eq!(got, StatusCode::BAD_REQUEST, "{body}: {text}");
            let msg = error_of(&text);
            assert!(msg.contains(needle), "{body}: {msg}");
        }
    }

    #[tokio::test]
    async fn health_answers_and_the_forbidden_service_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let app = router(service(dir.path()));
        let (status, body) = call(&app, "GET", "/v1/health", vec![]).await;
        assert_eq!(status, StatusCode::OK);
        let h: Health = serde_json::from_str(&body).unwrap();
        assert_eq!((h.ok, h.api.as_str()), (true, proto::API_VERSION));
        let no = Router::new().fallback(forbidden);
        let (status, body) = call(&no, "GET", "/v1/health", vec![]).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert!(error_of(&body).contains("group fireclaw"));
    }
}
