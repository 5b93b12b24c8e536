//! rtnetlink connections that are safe to use from any thread, a tokio worker included.
//!
//! A netlink socket talks to the network namespace it was opened in. So a [`Netlink`] is opened
//! by a thread spawned from the caller's thread (a new thread starts in its creator's namespace)
//! and is driven there, on a private current-thread runtime, until the last clone of the handle is
//! dropped. What callers hold is rtnetlink's [`Handle`], which is a channel: requests on it can be
//! awaited on any runtime, or blocked on with [`Netlink::block_on`] from synchronous code, without
//! ever starting a runtime inside a runtime (tokio panics on that, and a panic in `Drop` during
//! unwinding aborts the process).
//!
//! [`Netlink::shared`] gives one connection per namespace per process (what machines use);
//! [`Netlink::open`] a private one that closes when dropped (what the synchronous façades in
//! [`super::link`] and [`super::tap`] use, so short-lived namespaces are not kept alive).

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rtnetlink::Handle;

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("starting the netlink thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error("opening a netlink socket: {0}")]
    Open(#[source] std::io::Error),
    #[error("the netlink connection closed before it was ready")]
    Closed,
    #[error("{what}: {source}")]
    Request {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
}

impl NetlinkError {
    pub fn request(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
        let what = what.into();
        move |source| NetlinkError::Request { what, source }
    }

    /// The kernel's errno when the kernel refused the request (positive, e.g. 17 for EEXIST).
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Request { source, .. } => errno_of(source),
            _ => None,
        }
    }
}

/// The positive errno of a netlink error reply.
pub fn errno_of(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(-m.raw_code()).filter(|c| *c > 0),
        _ => None,
    }
}

/// A connection to the kernel's routing netlink, in the namespace it was opened in. Cheap to
/// clone; the connection closes when the last clone is dropped.
#[derive(Clone)]
pub struct Netlink {
    inner: Arc<Inner>,
}

struct Inner {
    handle: Handle,
    alive: Arc<AtomicBool>,
    // Dropping it tells the driver thread to stop.
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl std::fmt::Debug for Netlink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Netlink")
            .field("alive", &self.is_alive())
            .finish()
    }
}

impl Netlink {
    /// Opens a connection in the calling thread's network namespace. Blocks only until the
    /// socket is open; safe to call from synchronous and asynchronous code alike.
    pub fn open() -> Result<Netlink, NetlinkError> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let alive = Arc::new(AtomicBool::new(true));
        let flag = alive.clone();
        std::thread::Builder::new()
            .name("fireclaw-netlink".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_io()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(NetlinkError::Thread(e)));
                        return;
                    }
                };
                rt.block_on(async move {
                    let (connection, handle, _) = match rtnetlink::new_connection() {
                        Ok(c) => c,
                        Err(e) => {
                            let _ = ready_tx.send(Err(NetlinkError::Open(e)));
                            return;
                        }
                    };
                    if ready_tx.send(Ok(handle)).is_err() {
                        return;
                    }
                    tokio::select! {
                        _ = connection => {}
                        _ = stop_rx => {}
                    }
                });
                flag.store(false, Ordering::SeqCst);
            })
            .map_err(NetlinkError::Thread)?;
        let handle = ready_rx.recv().map_err(|_| NetlinkError::Closed)??;
        Ok(Netlink {
            inner: Arc::new(Inner {
                handle,
                alive,
                _stop: stop_tx,
            }),
        })
    }

    /// The process's connection for the calling thread's network namespace, opened on first use.
    /// It stays open for the life of the process (and keeps that namespace alive): use it for
    /// long-lived namespaces such as the host's, and [`Netlink::open`] for short-lived ones.
    pub fn shared() -> Result<Netlink, NetlinkError> {
        static CACHE: Mutex<Option<HashMap<(u64, u64), Netlink>>> = Mutex::new(None);
        let key = current_namespace();
        let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
        let map = cache.get_or_insert_with(HashMap::new);
        if let Some(k) = key {
            if let Some(nl) = map.get(&k).filter(|nl| nl.is_alive()) {
                return Ok(nl.clone());
            }
        }
        let nl = Netlink::open()?;
        // Without /proc the namespace cannot be told apart: never share then.
        if let Some(k) = key {
            map.insert(k, nl.clone());
        }
        Ok(nl)
    }

    pub fn handle(&self) -> &Handle {
        &self.inner.handle
    }

    /// False once the driver thread has stopped (the socket failed).
    pub fn is_alive(&self) -> bool {
        self.inner.alive.load(Ordering::SeqCst)
    }

    /// Runs a netlink future to completion on the calling thread. The connection is driven by
    /// its own thread, so this works inside and outside a tokio runtime; inside one it blocks
    /// the worker for the length of the request, like any other blocking call.
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        futures::executor::block_on(f)
    }
}

/// The calling thread's network namespace, as the (device, inode) of its nsfs file.
fn current_namespace() -> Option<(u64, u64)> {
    std::fs::metadata("/proc/thread-self/ns/net")
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn loopback_index(h: &Handle) -> Option<u32> {
        use futures::TryStreamExt;
        let mut links = h.link().get().match_name("lo".into()).execute();
        links
            .try_next()
            .await
            .ok()
            .flatten()
            .map(|l| l.header.index)
    }

    #[test]
    fn usable_from_inside_a_runtime_and_from_plain_threads() {
        // Reading links needs no privilege.
        let nl = Netlink::shared().unwrap();
        assert!(nl.block_on(loopback_index(nl.handle())).is_some());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            // Synchronous use on a worker (what Drop of a machine does) must not panic.
            let on_worker = tokio::spawn(async {
                let nl = Netlink::shared().unwrap();
                nl.block_on(loopback_index(nl.handle()))
            })
            .await
            .unwrap();
            assert!(on_worker.is_some());
            let nl = Netlink::open().unwrap();
            assert!(loopback_index(nl.handle()).await.is_some());
        });
        // One connection per namespace: the same thread gets the same one.
        let again = Netlink::shared().unwrap();
        assert!(Arc::ptr_eq(&again.inner, &Netlink::shared().unwrap().inner));
    }

    #[test]
    fn dropping_the_last_handle_stops_the_driver() {
        let nl = Netlink::open().unwrap();
        let alive = nl.inner.alive.clone();
        drop(nl);
        let start = std::time::Instant::now();
        while alive.load(Ordering::SeqCst) {
            assert!(start.elapsed() < std::time::Duration::from_secs(5));
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}
