//! Client channels for gRPC calls to other nodes and to plugins: one HTTP/2 connection per
//! channel, made on the first call, made again once it has closed, and shared by every call.
//!
//! tonic's own `Channel` hands each call to a `Buffer` task that owns the connection: one hop
//! between tasks on the way out and one on the way back, often between runtime workers. hyper's
//! HTTP/2 client is shared by cloning its `SendRequest`, so here each call goes to the
//! connection from the caller's own task (BENCHMARKS.md: "Calls without tonic's Buffer"). What
//! tonic's channel does besides is done here too: the origin on each request, the caller's
//! `grpc-timeout` as a local deadline, the connect timeout, keep-alive pings, and a failure to
//! connect read as `UNAVAILABLE` with its cause kept (a link's refusal among them).

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt, Shared};
use http::Uri;
use http::uri::{Authority, Scheme};
use hyper::client::conn::http2::{Builder, SendRequest};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tonic::body::Body;
use tower::{Service, ServiceExt};

/// Spawns hyper's futures (the connection's, and one for each call's answer) boxed, as tonic's
/// own channel does: spawned as they are, each lives in its task at its full size, which is the
/// connection's, and is copied whole when the task is made and again when it ends.
#[derive(Debug, Clone, Copy)]
struct BoxingExecutor;

impl<F> hyper::rt::Executor<F> for BoxingExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        tokio::spawn(Box::pin(future));
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Pings on the connection, idle or not, so that a peer that stopped answering is noticed
/// within `interval + timeout` even with no call under way.
#[derive(Debug, Clone, Copy)]
pub struct KeepAlive {
    pub interval: Duration,
    pub timeout: Duration,
}

/// A gRPC channel to one address; clones share its connection. Connects on first use.
#[derive(Clone)]
pub struct Channel {
    inner: Arc<Inner>,
}

struct Inner {
    scheme: Scheme,
    authority: Authority,
    connect: Box<dyn Fn() -> Attempt + Send + Sync>,
    state: Mutex<State>,
}

/// One try at connecting, awaited by every call that needs the connection meanwhile: they
/// share its outcome, so an unreachable address costs them one connect timeout, not one each.
type Attempt = Shared<BoxFuture<'static, Result<SendRequest<Body>, ConnectFailed>>>;

enum State {
    Idle,
    Connecting(Attempt),
    Connected(SendRequest<Body>),
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Channel")
            .field("authority", &self.inner.authority)
            .finish_non_exhaustive()
    }
}

impl Channel {
    /// A channel to `uri` (`http://host:port`) over connections that `connector` opens, each
    /// given `connect_timeout` to open and hand over (TLS handshakes included).
    pub fn new<C>(
        uri: &Uri,
        connect_timeout: Duration,
        keep_alive: Option<KeepAlive>,
        connector: C,
    ) -> Result<Self, String>
    where
        C: Service<Uri> + Clone + Send + Sync + 'static,
        C::Future: Send,
        C::Error: Into<BoxError>,
        C::Response: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
            return Err(format!("{uri} is not an http://host:port address"));
        };
        let mut settings = Builder::new(BoxingExecutor);
        settings.timer(TokioTimer::new());
        if let Some(KeepAlive { interval, timeout }) = keep_alive {
            settings
                .keep_alive_interval(interval)
                .keep_alive_timeout(timeout)
                .keep_alive_while_idle(true);
        }
        let uri = uri.clone();
        let connect = move || {
            let connection = open(connector.clone(), uri.clone(), settings.clone());
            async move {
                let error = match tokio::time::timeout(connect_timeout, connection).await {
                    Ok(Ok(sender)) => return Ok(sender),
                    Ok(Err(error)) => error,
                    Err(_elapsed) => std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no connection within {connect_timeout:?}"),
                    )
                    .into(),
                };
                Err(ConnectFailed(Arc::new(tonic::ConnectError(error))))
            }
            .boxed()
            .shared()
        };
        Ok(Self {
            inner: Arc::new(Inner {
                scheme: scheme.clone(),
                authority: authority.clone(),
                connect: Box::new(connect),
                state: Mutex::new(State::Idle),
            }),
        })
    }

    /// A channel to `uri` over plain TCP.
    pub fn plaintext(
        uri: &Uri,
        connect_timeout: Duration,
        keep_alive: Option<KeepAlive>,
    ) -> Result<Self, String> {
        let connector = tower::service_fn(|uri: Uri| async move {
            Ok::<_, std::io::Error>(TokioIo::new(connect_tcp(&uri).await?))
        });
        Self::new(uri, connect_timeout, keep_alive, connector)
    }

    /// The connection, once open; while none is, the try under way or a new one.
    async fn sender(&self) -> Result<SendRequest<Body>, ConnectFailed> {
        let attempt = {
            let mut state = self.inner.state.lock().expect("lock is never poisoned");
            match &*state {
                State::Connected(sender) if !sender.is_closed() => return Ok(sender.clone()),
                State::Connecting(attempt) => attempt.clone(),
                State::Connected(_) | State::Idle => {
                    let attempt = (self.inner.connect)();
                    *state = State::Connecting(attempt.clone());
                    attempt
                }
            }
        };
        let outcome = attempt.clone().await;
        let mut state = self.inner.state.lock().expect("lock is never poisoned");
        if matches!(&*state, State::Connecting(current) if current.ptr_eq(&attempt)) {
            *state = match &outcome {
                Ok(sender) => State::Connected(sender.clone()),
                Err(_) => State::Idle,
            };
        }
        outcome
    }

    fn with_origin(&self, uri: Uri) -> Result<Uri, http::uri::InvalidUriParts> {
        let mut parts = uri.into_parts();
        parts.scheme = Some(self.inner.scheme.clone());
        parts.authority = Some(self.inner.authority.clone());
        Uri::from_parts(parts)
    }
}

impl Service<http::Request<Body>> for Channel {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Self::Response, BoxError>>;

    /// Always ready: the connection is made, or waited for, by the call.
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        let channel = self.clone();
        async move {
            *request.uri_mut() = channel.with_origin(std::mem::take(request.uri_mut()))?;
            // The caller's deadline, which `tonic::Request::set_timeout` writes.
            let deadline = request
                .headers()
                .get("grpc-timeout")
                .and_then(|value| value.to_str().ok())
                .and_then(sphere_plugin::parse_grpc_timeout);
            let mut sender = channel.sender().await?;
            let answer = sender.send_request(request);
            match deadline {
                // Connecting is bounded by the connect timeout, as with tonic's channel.
                Some(deadline) => tokio::time::timeout(deadline, answer)
                    .await
                    .map_err(|_elapsed| tonic::TimeoutExpired(()))?,
                None => answer.await,
            }
            .map_err(Into::into)
        }
        .boxed()
    }
}

/// Opens a connection with `connector` and starts driving it.
async fn open<C>(
    mut connector: C,
    uri: Uri,
    settings: Builder<BoxingExecutor>,
) -> Result<SendRequest<Body>, BoxError>
where
    C: Service<Uri>,
    C::Error: Into<BoxError>,
    C::Response: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let io = connector
        .ready()
        .await
        .map_err(Into::into)?
        .call(uri)
        .await
        .map_err(Into::into)?;
    let (sender, connection) = settings.handshake(io).await?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "a client connection ended with an error");
        }
    });
    Ok(sender)
}

/// Opens a TCP connection to `uri`'s host and port (80 when it names none), without Nagle's
/// delay: gRPC messages are written whole.
pub async fn connect_tcp(uri: &Uri) -> std::io::Result<TcpStream> {
    let host = uri.host().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let tcp = TcpStream::connect((host, uri.port_u16().unwrap_or(80))).await?;
    if let Err(error) = tcp.set_nodelay(true) {
        tracing::debug!(%error, "could not set TCP_NODELAY");
    }
    Ok(tcp)
}

/// Why a connection could not be made, handed to every call that waited for it. Its source is
/// tonic's `ConnectError`, which tonic reads as `UNAVAILABLE`, and the cause under that.
#[derive(Debug, Clone)]
struct ConnectFailed(Arc<tonic::ConnectError>);

impl std::fmt::Display for ConnectFailed {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(formatter)
    }
}

impl std::error::Error for ConnectFailed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::sync::oneshot;
    use tokio::task::JoinHandle;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;

    use super::*;

    const LONG: Duration = Duration::from_secs(10);

    /// A gRPC health service on a port of its own, serving until `stop` is sent.
    async fn health_server() -> (SocketAddr, oneshot::Sender<()>, JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let (_reporter, service) = tonic_health::server::health_reporter();
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener),
                    async {
                        let _ = stopped.await;
                    },
                )
                .await
                .expect("serves");
        });
        (address, stop, server)
    }

    fn uri(address: SocketAddr) -> Uri {
        format!("http://{address}").parse().expect("a URI")
    }

    async fn check(channel: &Channel) -> Result<(), tonic::Status> {
        let mut request = tonic::Request::new(HealthCheckRequest::default());
        request.set_timeout(LONG);
        HealthClient::new(channel.clone())
            .check(request)
            .await
            .map(drop)
    }

    /// Whether `status` carries an I/O error whose text contains `text` among its causes.
    fn caused_by(status: &tonic::Status, text: &str) -> bool {
        let mut cause = std::error::Error::source(status);
        while let Some(error) = cause {
            if error
                .downcast_ref::<std::io::Error>()
                .is_some_and(|error| error.to_string().contains(text))
            {
                return true;
            }
            cause = error.source();
        }
        false
    }

    #[tokio::test]
    async fn calls_made_together_share_one_connection_and_a_closed_one_is_made_again() {
        let (first, stop, server) = health_server().await;
        let to = Arc::new(Mutex::new(first));
        let made = Arc::new(AtomicUsize::new(0));
        let connector = tower::service_fn({
            let (to, made) = (Arc::clone(&to), Arc::clone(&made));
            move |_: Uri| {
                made.fetch_add(1, Ordering::SeqCst);
                let address = *to.lock().expect("lock");
                async move { Ok::<_, std::io::Error>(TokioIo::new(TcpStream::connect(address).await?)) }
            }
        });
        let channel = Channel::new(&uri(first), LONG, None, connector).expect("channel");

        let calls = futures_util::future::join_all((0..20).map(|_| check(&channel))).await;
        assert!(calls.iter().all(Result::is_ok), "{calls:?}");
        check(&channel).await.expect("a later call");
        assert_eq!(made.load(Ordering::SeqCst), 1, "one connection for all");

        // The server goes away, closing the connection; another takes its place elsewhere.
        stop.send(()).expect("server running");
        server.await.expect("server stopped");
        let (second, _stop, _server) = health_server().await;
        *to.lock().expect("lock") = second;
        let deadline = tokio::time::Instant::now() + LONG;
        // A call may still meet the closed connection before its end was read; the next one
        // connects again.
        while check(&channel).await.is_err() {
            assert!(tokio::time::Instant::now() < deadline, "never reconnected");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(made.load(Ordering::SeqCst), 2, "one new connection");
    }

    #[tokio::test]
    async fn calls_waiting_for_a_connection_that_fails_get_its_cause_from_one_try() {
        let made = Arc::new(AtomicUsize::new(0));
        let connector = tower::service_fn({
            let made = Arc::clone(&made);
            move |_: Uri| {
                made.fetch_add(1, Ordering::SeqCst);
                async {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Err::<TokioIo<TcpStream>, _>(std::io::Error::new(
                        std::io::ErrorKind::ConnectionRefused,
                        "nobody home",
                    ))
                }
            }
        });
        let channel =
            Channel::new(&uri(([127, 0, 0, 1], 9).into()), LONG, None, connector).expect("channel");

        let calls = futures_util::future::join_all((0..10).map(|_| check(&channel))).await;
        for call in &calls {
            let status = call.as_ref().expect_err("no connection");
            assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
            assert!(caused_by(status, "nobody home"), "{status:?}");
        }
        assert_eq!(
            made.load(Ordering::SeqCst),
            1,
            "one try for the calls waiting"
        );
        check(&channel).await.expect_err("still no connection");
        assert_eq!(made.load(Ordering::SeqCst), 2, "a later call tries again");
    }

    #[tokio::test]
    async fn a_connection_not_made_within_the_connect_timeout_is_unavailable() {
        let connector = tower::service_fn(|_: Uri| {
            std::future::pending::<std::io::Result<TokioIo<TcpStream>>>()
        });
        let channel = Channel::new(
            &uri(([127, 0, 0, 1], 9).into()),
            Duration::from_millis(100),
            None,
            connector,
        )
        .expect("channel");
        let status = tokio::time::timeout(LONG, check(&channel))
            .await
            .expect("the connect timeout ends the call")
            .expect_err("no connection");
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        assert!(caused_by(&status, "no connection within"), "{status:?}");
    }

    /// A peer that accepts connections and keeps them, reading and writing nothing.
    async fn silent_peer() -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move {
            let mut kept = Vec::new();
            while let Ok((tcp, _)) = listener.accept().await {
                kept.push(tcp);
            }
        });
        address
    }

    #[tokio::test]
    async fn a_call_past_its_grpc_timeout_ends_as_timed_out_on_a_peer_that_never_answers() {
        let channel = Channel::plaintext(&uri(silent_peer().await), LONG, None).expect("channel");
        let mut request = tonic::Request::new(HealthCheckRequest::default());
        request.set_timeout(Duration::from_millis(200));
        let status = tokio::time::timeout(LONG, HealthClient::new(channel).check(request))
            .await
            .expect("the call's own timeout ends it")
            .expect_err("no answer");
        assert!(crate::error::is_timeout(&status), "{status:?}");
    }

    #[tokio::test]
    async fn a_peer_that_stops_answering_pings_is_dropped_before_the_calls_deadline() {
        let keep_alive = KeepAlive {
            interval: Duration::from_millis(100),
            timeout: Duration::from_millis(100),
        };
        let channel =
            Channel::plaintext(&uri(silent_peer().await), LONG, Some(keep_alive)).expect("channel");
        // The call's own deadline is `LONG`; only the unanswered ping can end it sooner.
        let status = tokio::time::timeout(LONG, check(&channel))
            .await
            .expect("the keep-alive ends the call before its deadline")
            .expect_err("no answer");
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        assert!(!crate::error::is_timeout(&status), "{status:?}");
    }

    #[test]
    fn an_address_without_a_host_is_refused() {
        let uri: Uri = "/just/a/path".parse().expect("a URI");
        assert!(Channel::plaintext(&uri, LONG, None).is_err());
    }
}
