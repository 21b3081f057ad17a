//! Accepted connections of the REST and gRPC listeners, held within limits so that strangers
//! cannot exhaust them.
//!
//! A connection is *pending* until its first complete request (HTTP/1 headers, or the HTTP/2
//! preface and a request's headers) and *idle* while no request is in flight. Pending
//! connections are closed after [`ConnectionLimits::handshake_timeout_ms`], idle ones after
//! [`ConnectionLimits::idle_timeout_ms`]. At [`ConnectionLimits::max`] sockets (closed ones
//! count until their server drops them), the listener closes the oldest pending connection, else
//! the one idle longest, and accepts only once a socket is dropped; while every connection has a
//! request in flight, newcomers wait in the kernel's backlog. Past
//! [`ConnectionLimits::max_pending`], the oldest pending connection is closed if it has had a
//! second to speak. A flood of connections that never speak crowds out only itself, a burst of
//! clients connecting at once is served, and requests in flight are never cut.
//!
//! The servers (axum, tonic) see a [`GuardedStream`]; closing a connection makes its reads and
//! writes fail, so the server drops it. [`TrackRequestsLayer`] tells each connection when its
//! requests start and end.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// File descriptors kept for everything but the two listeners' connections: the database, chunk
/// files, plugin and peer connections.
const RESERVED_FILE_DESCRIPTORS: u64 = 256;

/// How long a pending connection is spared when `max_pending` is reached.
const PENDING_GRACE: Duration = Duration::from_secs(1);

/// How often expired connections are looked for.
const WATCH_INTERVAL: Duration = Duration::from_millis(500);

/// Limits on one listener's connections.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConnectionLimits {
    /// Most connections open at once. Lowered at start-up when the process's file limit cannot
    /// hold both listeners' connections.
    pub max: u32,
    /// Most connections that have not sent a complete request yet.
    pub max_pending: u32,
    /// How long a new connection may take to send its first complete request.
    pub handshake_timeout_ms: u64,
    /// How long a connection with no request in flight is kept open.
    pub idle_timeout_ms: u64,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max: 1024,
            max_pending: 128,
            handshake_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
        }
    }
}

/// Raises the process's soft limit on open files to its hard limit and returns the soft limit
/// now in force (`None` when it cannot be read).
pub fn raise_file_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return None;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    Some(limit.rlim_cur)
}

/// Lowers `limits.max` (and `max_pending` with it) so that `listeners` listeners fit in
/// `file_limit` open files, and says so in the log.
pub fn fit_to_file_limit(limits: &mut ConnectionLimits, field: &str, file_limit: u64) {
    let share = file_limit.saturating_sub(RESERVED_FILE_DESCRIPTORS) / 2;
    let fitting = u32::try_from(share).unwrap_or(u32::MAX).max(16);
    if limits.max > fitting {
        tracing::warn!(
            "{field}.max lowered from {} to {fitting} to fit the limit of {file_limit} open files \
             (raise it with `ulimit -n` or LimitNOFILE=)",
            limits.max
        );
        limits.max = fitting;
    }
    limits.max_pending = limits.max_pending.min(limits.max / 2).max(1);
}

/// One accepted connection, as the registry and the request tracker see it.
#[derive(Debug)]
pub struct Connection {
    accepted_at: Instant,
    /// Milliseconds after `accepted_at` at which the last request ended.
    last_request_end_ms: AtomicU64,
    in_flight: AtomicU32,
    has_requested: AtomicBool,
    closed: AtomicBool,
    read_waker: AtomicWaker,
    write_waker: AtomicWaker,
    registry: Weak<Registry>,
    id: u64,
    /// The node at the other end, once a link's handshake proved it.
    linked_node: std::sync::OnceLock<crate::identity::NodeId>,
}

impl Connection {
    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.read_waker.wake();
        self.write_waker.wake();
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    fn is_pending(&self) -> bool {
        !self.has_requested.load(Ordering::Acquire)
    }

    /// How long the connection has had no request in flight, or `None` while it has one.
    fn idle_for(&self, now: Instant) -> Option<Duration> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let last_end = self.accepted_at
            + Duration::from_millis(self.last_request_end_ms.load(Ordering::Acquire));
        Some(now.saturating_duration_since(last_end))
    }

    fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        if self.has_requested.load(Ordering::Acquire) {
            return;
        }
        // Under the registry's lock, so that a connection closed meanwhile is not counted out
        // of the pending ones twice.
        let Some(registry) = self.registry.upgrade() else {
            self.has_requested.store(true, Ordering::Release);
            return;
        };
        let mut connections = registry.lock();
        if !self.has_requested.swap(true, Ordering::AcqRel)
            && connections.open.contains_key(&self.id)
        {
            connections.pending -= 1;
        }
    }

    fn request_ended(&self) {
        let since_accept = self.accepted_at.elapsed().as_millis() as u64;
        self.last_request_end_ms
            .store(since_accept, Ordering::Release);
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Debug, Default)]
struct Connections {
    open: HashMap<u64, Arc<Connection>>,
    pending: usize,
    /// Connections whose socket is not dropped yet, closed ones included: the descriptors held.
    held: usize,
    next_id: u64,
}

impl Connections {
    /// Forgets `id`, if still open, and closes it.
    fn remove(&mut self, id: u64) {
        if let Some(connection) = self.open.remove(&id) {
            if connection.is_pending() {
                self.pending -= 1;
            }
            connection.close();
        }
    }

    /// Returns the connection to close to make room: the oldest pending one, else the one idle
    /// longest; `None` when every connection has a request in flight.
    fn victim(&self, now: Instant) -> Option<u64> {
        let oldest_pending = self
            .open
            .values()
            .filter(|connection| connection.is_pending())
            .min_by_key(|connection| (connection.accepted_at, connection.id));
        match oldest_pending {
            Some(connection) => Some(connection.id),
            None => self
                .open
                .values()
                .filter_map(|c| c.idle_for(now).map(|idle| (idle, c.id)))
                .max()
                .map(|(_, id)| id),
        }
    }
}

/// The open connections of one listener.
#[derive(Debug)]
struct Registry {
    /// The listener's name in metrics: `http` or `grpc`.
    name: &'static str,
    limits: ConnectionLimits,
    connections: Mutex<Connections>,
    /// Signalled when a connection's socket is dropped.
    room: tokio::sync::Notify,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, Connections> {
        self.connections
            .lock()
            .expect("connection registry lock is never poisoned")
    }

    /// Returns once fewer than `max` sockets are held, closing the oldest pending connection,
    /// else the one idle longest, to make room. While every connection has a request in flight,
    /// it waits: new connections wait in the kernel's backlog, holding no descriptor.
    async fn make_room(&self) {
        loop {
            let dropped = self.room.notified();
            tokio::pin!(dropped);
            dropped.as_mut().enable();
            {
                let mut connections = self.lock();
                if connections.held < self.limits.max as usize {
                    return;
                }
                // Close only what makes room for one: the rest are closing already.
                if connections.open.len() >= self.limits.max as usize
                    && let Some(victim) = connections.victim(Instant::now())
                {
                    connections.remove(victim);
                    continue;
                }
            }
            // A closed connection frees its descriptor once its server drops it.
            let _ = tokio::time::timeout(Duration::from_millis(100), dropped).await;
        }
    }

    /// Registers a new connection. Past `max_pending`, the oldest pending connection is closed
    /// first if it has had [`PENDING_GRACE`] to speak: a burst of clients connecting at once is
    /// not a flood.
    fn admit(self: &Arc<Self>) -> Arc<Connection> {
        let mut connections = self.lock();
        let now = Instant::now();
        if connections.pending >= self.limits.max_pending as usize {
            let stale = connections
                .open
                .values()
                .filter(|connection| connection.is_pending())
                .min_by_key(|connection| (connection.accepted_at, connection.id))
                .filter(|connection| {
                    now.saturating_duration_since(connection.accepted_at) >= PENDING_GRACE
                })
                .map(|connection| connection.id);
            if let Some(id) = stale {
                connections.remove(id);
            }
        }
        let id = connections.next_id;
        connections.next_id += 1;
        let connection = Arc::new(Connection {
            accepted_at: now,
            last_request_end_ms: AtomicU64::new(0),
            in_flight: AtomicU32::new(0),
            has_requested: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            read_waker: AtomicWaker::new(),
            write_waker: AtomicWaker::new(),
            registry: Arc::downgrade(self),
            id,
            linked_node: std::sync::OnceLock::new(),
        });
        connections.open.insert(id, Arc::clone(&connection));
        connections.pending += 1;
        connections.held += 1;
        crate::metrics::open_connections(self.name, connections.held);
        connection
    }

    /// Forgets the connection `id` whose socket was dropped.
    fn release(&self, id: u64) {
        let mut connections = self.lock();
        connections.remove(id);
        connections.held -= 1;
        crate::metrics::open_connections(self.name, connections.held);
        drop(connections);
        self.room.notify_waiters();
    }

    /// Closes the pending connections past the handshake timeout and the idle ones past the
    /// idle timeout.
    fn close_expired(&self) {
        let now = Instant::now();
        let handshake = Duration::from_millis(self.limits.handshake_timeout_ms);
        let idle = Duration::from_millis(self.limits.idle_timeout_ms);
        let mut connections = self.lock();
        let expired: Vec<u64> = connections
            .open
            .values()
            .filter(|connection| {
                if connection.is_pending() {
                    now.saturating_duration_since(connection.accepted_at) >= handshake
                } else {
                    connection
                        .idle_for(now)
                        .is_some_and(|idle_for| idle_for >= idle)
                }
            })
            .map(|connection| connection.id)
            .collect();
        for id in expired {
            connections.remove(id);
        }
    }
}

/// A TCP listener that admits connections within [`ConnectionLimits`].
#[derive(Debug)]
pub struct GuardedListener {
    listener: TcpListener,
    registry: Arc<Registry>,
}

impl GuardedListener {
    /// Wraps `listener` (named `name` in metrics), and starts closing its expired connections in the background.
    pub fn new(listener: TcpListener, name: &'static str, limits: ConnectionLimits) -> Self {
        let registry = Arc::new(Registry {
            name,
            limits,
            connections: Mutex::default(),
            room: tokio::sync::Notify::new(),
        });
        let watched = Arc::downgrade(&registry);
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(WATCH_INTERVAL);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                let Some(registry) = watched.upgrade() else {
                    return;
                };
                registry.close_expired();
            }
        });
        Self { listener, registry }
    }

    /// Waits for the next connection the limits admit.
    pub async fn accept(&mut self) -> (GuardedStream, SocketAddr) {
        loop {
            self.registry.make_room().await;
            let (stream, peer) = match self.listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors or a connection reset before it was accepted:
                    // waiting a little lets closing connections free their descriptors.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let connection = self.registry.admit();
            if let Err(error) = stream.set_nodelay(true) {
                tracing::debug!(%error, "could not set TCP_NODELAY");
            }
            return (GuardedStream { stream, connection }, peer);
        }
    }
}

impl axum::serve::Listener for GuardedListener {
    type Io = GuardedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        GuardedListener::accept(self).await
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

/// An admitted connection: reads and writes fail once it is closed.
#[derive(Debug)]
pub struct GuardedStream {
    stream: TcpStream,
    connection: Arc<Connection>,
}

/// The handle through which requests on a connection report themselves: a request extension
/// (tonic puts it there itself; axum as `ConnectInfo`).
#[derive(Debug, Clone)]
pub struct ConnectionHandle(Arc<Connection>);

impl GuardedStream {
    /// Looks at the first bytes the client sent without taking them; fails once the
    /// connection is closed by its limits, like a read.
    pub async fn peek(&self, buffer: &mut [u8]) -> io::Result<usize> {
        std::future::poll_fn(|cx| {
            self.connection.read_waker.register(cx.waker());
            if self.connection.is_closed() {
                return Poll::Ready(Err(closed_error()));
            }
            self.stream.poll_peek(cx, &mut ReadBuf::new(buffer))
        })
        .await
    }

    /// The client's address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.stream.peer_addr()
    }

    /// The handle requests on this connection report to.
    pub fn handle(&self) -> ConnectionHandle {
        ConnectionHandle(Arc::clone(&self.connection))
    }

    /// Records the node a link's handshake proved at the other end.
    pub fn set_linked_node(&self, node: crate::identity::NodeId) {
        let _ = self.connection.linked_node.set(node);
    }
}

impl ConnectionHandle {
    /// The node at the other end, when the connection is a link whose handshake proved it;
    /// `None` for plaintext clients.
    pub fn linked_node(&self) -> Option<crate::identity::NodeId> {
        self.0.linked_node.get().copied()
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, GuardedListener>>
    for ConnectionHandle
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, GuardedListener>) -> Self {
        ConnectionHandle(Arc::clone(&stream.io().connection))
    }
}

impl Drop for GuardedStream {
    fn drop(&mut self) {
        if let Some(registry) = self.connection.registry.upgrade() {
            registry.release(self.connection.id);
        }
    }
}

fn closed_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "connection closed by its limits",
    )
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.connection.read_waker.register(cx.waker());
        if self.connection.is_closed() {
            return Poll::Ready(Err(closed_error()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.connection.write_waker.register(cx.waker());
        if self.connection.is_closed() {
            return Poll::Ready(Err(closed_error()));
        }
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.connection.write_waker.register(cx.waker());
        if self.connection.is_closed() {
            return Poll::Ready(Err(closed_error()));
        }
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Tells each request's connection when the request starts and when its answer has been sent
/// (or dropped), so that only connections without requests in flight count as idle.
#[derive(Debug, Clone, Copy, Default)]
pub struct TrackRequestsLayer;

impl<S> tower::Layer<S> for TrackRequestsLayer {
    type Service = TrackRequests<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TrackRequests { inner }
    }
}

/// See [`TrackRequestsLayer`].
#[derive(Debug, Clone)]
pub struct TrackRequests<S> {
    inner: S,
}

/// A request in flight on a connection; dropping it ends the request.
#[derive(Debug)]
struct InFlight(Option<Arc<Connection>>);

impl InFlight {
    fn start<B>(request: &http::Request<B>) -> Self {
        let connection = request
            .extensions()
            .get::<ConnectionHandle>()
            .or_else(|| {
                request
                    .extensions()
                    .get::<axum::extract::ConnectInfo<ConnectionHandle>>()
                    .map(|info| &info.0)
            })
            .map(|handle| Arc::clone(&handle.0));
        if let Some(connection) = &connection {
            connection.request_started();
        }
        Self(connection)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(connection) = &self.0 {
            connection.request_ended();
        }
    }
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for TrackRequests<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<TrackedBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let in_flight = InFlight::start(&request);
        let answer = self.inner.call(request);
        Box::pin(async move {
            let response = answer.await?;
            Ok(response.map(|body| TrackedBody {
                body,
                _in_flight: in_flight,
            }))
        })
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request in flight until it is sent or dropped.
    pub struct TrackedBody<B> {
        #[pin]
        body: B,
        _in_flight: InFlight,
    }
}

impl<B: http_body::Body> http_body::Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry(max: u32, max_pending: u32) -> Arc<Registry> {
        Arc::new(Registry {
            name: "test",
            limits: ConnectionLimits {
                max,
                max_pending,
                handshake_timeout_ms: 10_000,
                idle_timeout_ms: 60_000,
            },
            connections: Mutex::default(),
            room: tokio::sync::Notify::new(),
        })
    }

    /// Drops the sockets of those of `connections` that were closed, as their servers would.
    fn drop_closed(registry: &Registry, connections: &[&Arc<Connection>]) {
        for connection in connections.iter().filter(|c| c.is_closed()) {
            assert!(
                !registry.lock().open.contains_key(&connection.id),
                "a closed connection no longer counts as open"
            );
            registry.release(connection.id);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn past_max_pending_the_oldest_pending_connection_is_closed_once_it_had_time() {
        let registry = registry(10, 2);
        let first = registry.admit();
        let second = registry.admit();
        let burst = registry.admit();
        assert!(
            !first.is_closed(),
            "a burst of young connections is admitted whole"
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        let late = registry.admit();
        assert!(first.is_closed());
        assert!(!second.is_closed() && !burst.is_closed() && !late.is_closed());
        assert_eq!(registry.lock().pending, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn at_max_the_oldest_pending_connection_makes_room_however_young() {
        let registry = registry(2, 2);
        let first = registry.admit();
        let second = registry.admit();
        let making_room = tokio::spawn({
            let registry = Arc::clone(&registry);
            async move { registry.make_room().await }
        });
        tokio::task::yield_now().await;
        assert!(first.is_closed() && !second.is_closed());
        assert!(
            !making_room.is_finished(),
            "room comes when the socket is dropped"
        );
        drop_closed(&registry, &[&first, &second]);
        making_room.await.expect("room made");
        assert_eq!(registry.lock().held, 1);
    }

    #[test]
    fn a_connection_that_sent_a_request_is_no_longer_pending() {
        let registry = registry(10, 1);
        let first = registry.admit();
        first.request_started();
        let second = registry.admit();
        assert!(
            !first.is_closed(),
            "a connection with a request in flight is kept"
        );
        assert!(!second.is_closed());
        assert_eq!(registry.lock().pending, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn at_max_the_idle_connection_goes_and_busy_ones_make_newcomers_wait() {
        let registry = registry(2, 2);
        let busy = registry.admit();
        busy.request_started();
        let idle = registry.admit();
        idle.request_started();
        idle.request_ended();
        let making_room = tokio::spawn({
            let registry = Arc::clone(&registry);
            async move { registry.make_room().await }
        });
        tokio::task::yield_now().await;
        assert!(idle.is_closed() && !busy.is_closed());
        drop_closed(&registry, &[&idle]);
        making_room.await.expect("room made");

        let newcomer = registry.admit();
        newcomer.request_started();
        let waiting = tokio::spawn({
            let registry = Arc::clone(&registry);
            async move { registry.make_room().await }
        });
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(
            !waiting.is_finished(),
            "every connection has a request in flight: the next one waits"
        );
        assert!(!busy.is_closed() && !newcomer.is_closed());
        busy.request_ended();
        tokio::time::advance(Duration::from_millis(200)).await;
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(busy.is_closed(), "once idle, it makes room");
        drop_closed(&registry, &[&busy]);
        waiting.await.expect("room made");
    }

    #[tokio::test(start_paused = true)]
    async fn pending_and_idle_connections_expire_but_busy_ones_do_not() {
        let registry = registry(10, 10);
        let pending = registry.admit();
        let idle = registry.admit();
        idle.request_started();
        idle.request_ended();
        let busy = registry.admit();
        busy.request_started();
        tokio::time::advance(Duration::from_secs(11)).await;
        registry.close_expired();
        assert!(pending.is_closed());
        assert!(!idle.is_closed() && !busy.is_closed());
        tokio::time::advance(Duration::from_secs(60)).await;
        registry.close_expired();
        assert!(idle.is_closed());
        assert!(!busy.is_closed());
        assert_eq!(registry.lock().open.len(), 1);
    }
}
