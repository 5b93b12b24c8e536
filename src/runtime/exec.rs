//! Exec in a VM over SSH and the console stream, for the control socket.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Bytes;
use fireclaw_proto::control::{ExecRequest, ExecResult};
use futures::Stream;
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _, AsyncWrite};

use crate::vm::{image, record, ssh};

use super::Service;

/// Each of stdout and stderr is cut here: the answer is one JSON document in memory.
pub const MAX_OUTPUT_BYTES: usize = 1024 * 1024;
const DEFAULT_TIMEOUT_SECS: u64 = 60;

pub enum ExecError {
    NoVm,
    NotReady(String),
    Timeout(u64),
    Failed(String),
}

/// A writer that keeps the first `cap` bytes and drops the rest, remembering that it did.
pub(crate) struct Capped {
    pub(crate) buf: Vec<u8>,
    cap: usize,
    pub(crate) cut: bool,
}

impl Capped {
    pub(crate) fn new(cap: usize) -> Capped {
        Capped {
            buf: Vec::new(),
            cap,
            cut: false,
        }
    }
}

impl AsyncWrite for Capped {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let room = self.cap.saturating_sub(self.buf.len());
        let take = room.min(data.len());
        self.buf.extend_from_slice(&data[..take]);
        if take < data.len() {
            self.cut = true;
        }
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Runs `req.argv` in VM `id` as the image's user, with the host key pinned from its manifest.
pub async fn exec(service: &Service, id: &str, req: &ExecRequest) -> Result<ExecResult, ExecError> {
    let host = service.host();
    let vm = id.to_string();
    let target = tokio::task::spawn_blocking(move || -> Result<ssh::Target, ExecError> {
        let db = host.db().map_err(|e| ExecError::Failed(format!("{e:#}")))?;
        let r = record::get(&db, &vm)
            .map_err(|e| ExecError::Failed(e.to_string()))?
            .ok_or(ExecError::NoVm)?;
        let ip =
            r.ip.ok_or_else(|| ExecError::NotReady(format!("VM {vm} has no address yet")))?;
        let spec = image::resolve(
            &r.image,
            &host.root.host(&host.config.paths.image_dir),
            &image::Overrides::default(),
        )
        .map_err(|e| ExecError::Failed(e.to_string()))?;
        let key = ssh::load_private_key(&host.key_path())
            .map_err(|e| ExecError::Failed(e.to_string()))?;
        Ok(ssh::Target {
            addr: SocketAddr::new(ip.into(), 22),
            user: spec.user,
            key: Arc::new(key),
            host_key: spec.host_key,
        })
    })
    .await
    .map_err(|e| ExecError::Failed(e.to_string()))??;
    let secs = req.timeout_secs.unwrap_or(DEFAULT_TIMEOUT_SECS);
    let command = ssh::shell_join(&req.argv);
    let mut out = Capped {
        buf: Vec::new(),
        cap: MAX_OUTPUT_BYTES,
        cut: false,
    };
    let mut err = Capped {
        buf: Vec::new(),
        cap: MAX_OUTPUT_BYTES,
        cut: false,
    };
    let run = async {
        let session = ssh::connect(&target, Duration::from_secs(5))
            .await
            .map_err(|e| ExecError::NotReady(e.to_string()))?;
        let exit = session
            .exec(&command, &mut out, &mut err)
            .await
            .map_err(|e| ExecError::Failed(e.to_string()));
        session.close().await;
        exit
    };
    let exit = tokio::time::timeout(Duration::from_secs(secs), run)
        .await
        .map_err(|_| ExecError::Timeout(secs))??;
    tracing::info!(vm = id, exit = exit.shell_code(), "exec {command}");
    Ok(ExecResult {
        exit_code: exit.shell_code(),
        truncated: out.cut || err.cut,
        stdout: String::from_utf8_lossy(&out.buf).into_owned(),
        stderr: String::from_utf8_lossy(&err.buf).into_owned(),
    })
}

/// The console file from the start, then whatever is appended, until the VM's row goes away, the
/// runtime stops, or the client hangs up (the stream is dropped).
pub fn follow_console(
    service: Arc<Service>,
    id: String,
    path: PathBuf,
) -> impl Stream<Item = std::io::Result<Bytes>> + Send {
    struct St {
        service: Arc<Service>,
        id: String,
        path: PathBuf,
        offset: u64,
        idle_polls: u32,
        done: bool,
    }
    let st = St {
        service,
        id,
        path,
        offset: 0,
        idle_polls: 0,
        done: false,
    };
    futures::stream::unfold(st, |mut st| async move {
        loop {
            if st.done || st.service.is_stopping() {
                return None;
            }
            match read_from(&st.path, st.offset).await {
                Ok(chunk) if !chunk.is_empty() => {
                    st.offset += chunk.len() as u64;
                    st.idle_polls = 0;
                    return Some((Ok(Bytes::from(chunk)), st));
                }
                Ok(_) => {}
                Err(e) => {
                    st.done = true;
                    return Some((Err(e), st));
                }
            }
            st.idle_polls += 1;
            // Every few seconds of silence, see whether the VM is still there.
            if st.idle_polls % 10 == 0 {
                let svc = st.service.clone();
                let vm = st.id.clone();
                let gone = tokio::task::spawn_blocking(move || {
                    svc.host()
                        .db()
                        .ok()
                        .and_then(|db| record::get(&db, &vm).ok())
                        .is_some_and(|r| r.is_none())
                })
                .await
                .unwrap_or(true);
                if gone {
                    return None;
                }
            }
            tokio::time::sleep(super::vms::FOLLOW_POLL).await;
        }
    })
}

async fn read_from(path: &std::path::Path, offset: u64) -> std::io::Result<Vec<u8>> {
    let mut f = match tokio::fs::File::open(path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    f.seek(std::io::SeekFrom::Start(offset)).await?;
    let mut buf = Vec::new();
    f.take(64 * 1024).read_to_end(&mut buf).await?;
    Ok(buf)
}
