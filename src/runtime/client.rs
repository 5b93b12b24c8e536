//! The control socket's client, as the CLI uses it: one HTTP/1.1 connection per request over the
//! Unix socket (hyper's client connection; no pool needed for a CLI).

use std::path::PathBuf;

use fireclaw_proto::control::{self as proto, ErrorBody};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the runtime is not running (no answer on {socket}): `systemctl start fireclaw` or `fireclaw runtime`")]
    NotRunning { socket: PathBuf },
    #[error("permission denied on {socket}: run as root or as a member of group {group}")]
    Denied {
        socket: PathBuf,
        group: &'static str,
    },
    #[error("{socket}: {source}")]
    Io {
        socket: PathBuf,
        source: std::io::Error,
    },
    #[error("the runtime answered {status}: {message}")]
    Api { status: u16, message: String },
    #[error("talking to the runtime: {0}")]
    Protocol(String),
}

impl ClientError {
    /// True when there is no runtime to talk to (as opposed to one that said no).
    pub fn not_running(&self) -> bool {
        matches!(self, ClientError::NotRunning { .. })
    }
}

pub struct Client {
    socket: PathBuf,
}

impl Client {
    pub fn new(socket: PathBuf) -> Client {
        Client { socket }
    }

    pub fn socket(&self) -> &std::path::Path {
        &self.socket
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                    ClientError::NotRunning {
                        socket: self.socket.clone(),
                    }
                }
                std::io::ErrorKind::PermissionDenied => ClientError::Denied {
                    socket: self.socket.clone(),
                    group: super::SOCKET_GROUP,
                },
                _ => ClientError::Io {
                    socket: self.socket.clone(),
                    source: e,
                },
            })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "fireclaw");
        if body.is_some() {
            req = req.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        sender
            .send_request(req)
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// One request; the status and the whole body. Errors only when no answer came.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let resp = self.send(method, path, body).await?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))?
            .to_bytes();
        Ok((status, bytes))
    }

    /// A request whose success answer is JSON of type `T`; an error answer becomes
    /// [`ClientError::Api`] with the runtime's message.
    pub async fn json<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, ClientError> {
        let (status, bytes) = self.raw(method, path, body).await?;
        if !status.is_success() {
            return Err(api_error(status, &bytes));
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| ClientError::Protocol(format!("unexpected answer to {path}: {e}")))
    }

    pub async fn health(&self) -> Result<proto::Health, ClientError> {
        self.json(Method::GET, "/v1/health", None).await
    }

    /// Streams a response body to `sink` as it arrives (the console with `?follow=1`).
    pub async fn stream(
        &self,
        path: &str,
        mut sink: impl FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<(), ClientError> {
        let resp = self.send(Method::GET, path, None).await?;
        let status = resp.status();
        let mut body = resp.into_body();
        if !status.is_success() {
            let bytes = body
                .collect()
                .await
                .map_err(|e| ClientError::Protocol(e.to_string()))?
                .to_bytes();
            return Err(api_error(status, &bytes));
        }
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| ClientError::Protocol(e.to_string()))?;
            if let Some(data) = frame.data_ref() {
                sink(data).map_err(|e| ClientError::Protocol(format!("writing output: {e}")))?;
            }
        }
        Ok(())
    }
}

fn api_error(status: StatusCode, body: &[u8]) -> ClientError {
    let message = serde_json::from_slice::<ErrorBody>(body)
        .map(|e| e.error)
        .unwrap_or_else(|_| String::from_utf8_lossy(body).trim().to_string());
    ClientError::Api {
        status: status.as_u16(),
        message,
    }
}

/// Runs one client call on a small runtime of its own (the CLI's commands are synchronous).
pub fn block_on<T>(f: impl std::future::Future<Output = T>) -> anyhow::Result<T> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok(rt.block_on(f))
}
