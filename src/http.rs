//! The HTTP server loop: hyper with explicit limits (header count and size, header read
//! timeout), `TCP_NODELAY` on every accepted connection, a bound on open connections, and
//! graceful shutdown that lets in-flight requests and streams finish.
//!
//! Hyper's header timeout starts with the first byte of a request, so a connection that never
//! sends one would stay open forever: every accepted connection must send its first byte
//! within `server.header_timeout_ms` or be closed. At most `max_connections` are open at once
//! (kept below the file-descriptor limit); when the bound is reached, the connection that has
//! waited longest without sending anything makes room for the new one, so silent connections
//! cannot lock out clients that talk. Failed accepts (out of descriptors) are logged at most
//! once per interval.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use lumina_gateway::config::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// How long shutdown waits for open connections before dropping them.
const DRAIN: Duration = Duration::from_secs(20);

/// Least time between two warnings about failing accepts.
const ACCEPT_WARN_INTERVAL: Duration = Duration::from_secs(10);

/// Descriptors kept free for the log, the database and upstream connections.
fn reserved_descriptors(limit: u64) -> u64 {
    (limit / 8).max(64)
}

/// Connections the kernel may hold completed but not yet accepted. A burst beyond the backlog
/// has its handshakes retried by the clients' kernels, seconds later; the kernel caps the
/// value at `net.core.somaxconn`.
const BACKLOG: u32 = 4096;

/// Binds `addr` (with `SO_REUSEADDR`) and listens with a backlog of [`BACKLOG`].
pub fn listen(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// The bound on open connections: the configured one, below the descriptor limit.
pub fn connection_limit(configured: usize) -> usize {
    let (soft, _) = rlimit::Resource::NOFILE
        .get()
        .unwrap_or((u64::MAX, u64::MAX));
    let by_descriptors = soft.saturating_sub(reserved_descriptors(soft)).max(1);
    configured.min(usize::try_from(by_descriptors).unwrap_or(usize::MAX))
}

/// Connections open now, and those still waiting for their first byte (oldest first).
struct Connections {
    limit: usize,
    open: AtomicUsize,
    silent: Mutex<Silent>,
}

#[derive(Default)]
struct Silent {
    next_id: u64,
    waiting: BTreeMap<u64, oneshot::Sender<()>>,
}

/// Counts one open connection; closing it (dropping this) frees its place.
struct OpenConnection(Arc<Connections>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        let open = self.0.open.fetch_sub(1, Ordering::Relaxed) - 1;
        metrics::gauge!("lumina_http_connections_open").set(open as f64);
    }
}

impl Connections {
    fn new(limit: usize) -> Arc<Connections> {
        metrics::gauge!("lumina_http_connections_limit").set(limit as f64);
        Arc::new(Connections {
            limit,
            open: AtomicUsize::new(0),
            silent: Mutex::new(Silent::default()),
        })
    }

    /// A place for a new connection, making room by closing the longest-silent one when the
    /// bound is reached; `None` when every open connection is talking.
    fn admit(self: &Arc<Self>) -> Option<OpenConnection> {
        if self.open.load(Ordering::Relaxed) >= self.limit && !self.shed_oldest_silent() {
            metrics::counter!("lumina_http_connections_rejected_total").increment(1);
            return None;
        }
        let open = self.open.fetch_add(1, Ordering::Relaxed) + 1;
        metrics::gauge!("lumina_http_connections_open").set(open as f64);
        Some(OpenConnection(self.clone()))
    }

    /// Closes the connection that has waited longest for its first byte.
    fn shed_oldest_silent(&self) -> bool {
        let oldest = self
            .silent
            .lock()
            .ok()
            .and_then(|mut s| s.waiting.pop_first());
        match oldest {
            Some((_, close)) => {
                let _ = close.send(());
                metrics::counter!("lumina_http_connections_shed_total").increment(1);
                true
            }
            None => false,
        }
    }

    /// Registers a connection that has not sent anything yet.
    fn wait_silently(&self) -> (u64, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        let mut id = 0;
        if let Ok(mut s) = self.silent.lock() {
            s.next_id += 1;
            id = s.next_id;
            s.waiting.insert(id, tx);
        }
        (id, rx)
    }

    fn spoke(&self, id: u64) {
        if let Ok(mut s) = self.silent.lock() {
            s.waiting.remove(&id);
        }
    }
}

/// Whether the client sends its first byte in time; false when it stayed silent, hung up, its
/// place was given to a newer connection, or the server began to stop (a silent connection
/// must not hold shutdown up for the header timeout).
async fn first_byte(
    stream: &TcpStream,
    connections: &Connections,
    timeout: Duration,
    stopping: &CancellationToken,
) -> bool {
    let (id, shed) = connections.wait_silently();
    let mut byte = [0u8; 1];
    let spoke = tokio::select! {
        _ = shed => false,
        _ = stopping.cancelled() => false,
        peeked = tokio::time::timeout(timeout, stream.peek(&mut byte)) => match peeked {
            Ok(Ok(n)) => n > 0,
            Ok(Err(_)) => false,
            Err(_) => {
                metrics::counter!("lumina_http_connections_silent_closed_total").increment(1);
                false
            }
        },
    };
    connections.spoke(id);
    spoke
}

/// Logs failed accepts at most once per [`ACCEPT_WARN_INTERVAL`], with how many were not logged.
#[derive(Default)]
struct AcceptWarnings {
    last: Option<Instant>,
    unlogged: u64,
}

impl AcceptWarnings {
    fn failed(&mut self, e: &std::io::Error) {
        metrics::counter!("lumina_http_accept_errors_total").increment(1);
        if self
            .last
            .is_some_and(|at| at.elapsed() < ACCEPT_WARN_INTERVAL)
        {
            self.unlogged += 1;
            return;
        }
        tracing::warn!(error = %e, not_logged_since_last = self.unlogged, "accept failed");
        self.last = Some(Instant::now());
        self.unlogged = 0;
    }
}

/// Serves `app` on `listener` until `shutdown` resolves, then drains connections.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: &ServerConfig,
    shutdown: impl Future<Output = ()>,
) {
    let header_timeout = Duration::from_millis(limits.header_timeout_ms);
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        // Hyper's own limit sits above the configured one, so a request with too many headers
        // gets the gateway's OpenAI-shaped 431 rather than a bare one.
        .max_headers(
            limits
                .max_headers
                .saturating_mul(4)
                .max(limits.max_headers + 1),
        );
    let limit = connection_limit(limits.max_connections);
    if limit < limits.max_connections {
        tracing::info!(
            limit,
            configured = limits.max_connections,
            "open connections bounded below the file-descriptor limit"
        );
    }
    let connections = Connections::new(limit);
    let mut warnings = AcceptWarnings::default();
    let graceful = GracefulShutdown::new();
    let stopping = CancellationToken::new();
    let service = TowerToHyperService::new(app);
    tokio::pin!(shutdown);
    loop {
        let (stream, _peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    warnings.failed(&e);
                    // Out of descriptors: a silent connection gives its place; back off
                    // instead of spinning.
                    connections.shed_oldest_silent();
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let Some(place) = connections.admit() else {
            drop(stream);
            continue;
        };
        // Without TCP_NODELAY, keep-alive responses written in two parts stall on delayed ACKs.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let builder = builder.clone();
        let service = service.clone();
        let connections = connections.clone();
        let watcher = graceful.watcher();
        let stopping = stopping.clone();
        tokio::spawn(async move {
            let _place = place;
            if !first_byte(&stream, &connections, header_timeout, &stopping).await {
                return;
            }
            let conn = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .into_owned();
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    stopping.cancel();
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after {DRAIN:?}; closing them");
    }
}
