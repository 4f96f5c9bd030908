//! The HTTPS server loop every site server and DP runs, safe against
//! hostile clients: a deadline for the TLS handshake and for each
//! request's headers (which is also how long a kept-alive connection may
//! sit idle), a cap on open connections answered with a clear 503 when
//! reached, and the open-files limit raised at start so that the cap, not
//! the kernel, says no. A plain-HTTP request is answered with a clear 400
//! naming the `https://` URL, and closed: TLS is the only way in.
//!
//! Every connection is closed lingering (as nginx does): the server shuts
//! its side, then reads and discards what the client still sends for a
//! few seconds. Closing a socket with unread bytes makes the kernel reset
//! the connection, and a reset can overtake an answer the client has not
//! read yet: a 413 to an oversize body would reach the client as a
//! broken pipe.
//!
//! Request-body limits are the router's (axum's `DefaultBodyLimit`), per
//! route.

use crate::types::{ErrorBody, ErrorDetail};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// What a server allows its clients.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Most connections open at once; one more is answered 503 and closed.
    /// Never more than the open-files limit leaves room for
    /// ([`FILES_RESERVED`] are kept for the database, the content store and
    /// outgoing connections).
    pub max_connections: usize,
    /// Longest a client may take to send a request's headers, counted from
    /// when the connection is ready for the next request: a connection
    /// idle (or trickling a request head) longer is closed.
    pub header_timeout: Duration,
    /// Longest a request may take from its head to its answer's head
    /// (reading its body included; long polls are held at most a minute):
    /// past it the connection is closed. An answer's streamed body (a
    /// chunk stream to a DP or a child site) is not counted.
    pub request_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }
}

/// Default of [`Limits::max_connections`]: room for a site's held polls.
pub const DEFAULT_MAX_CONNECTIONS: usize = 250_000;

/// Default of [`Limits::header_timeout`]. The clients of this crate drop a
/// pooled connection after [`crate::client::POOL_IDLE`], before a server
/// closes it.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(20);

/// Default of [`Limits::request_timeout`].
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(600);

/// Open files kept free of connections.
pub const FILES_RESERVED: u64 = 256;

/// Longest the server waits at shutdown for requests in progress.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Refusals (503) being written at once; beyond, a connection over the cap
/// is closed without an answer.
const MAX_REFUSING: usize = 64;

/// Longest a closing connection is read (and what it sends discarded)
/// after the server shut its side: time for a client to finish sending a
/// body that was answered before it was read.
const LINGER: Duration = Duration::from_secs(5);

/// Raises the soft limit on open files to the hard limit (as a service
/// manager's `LimitNOFILE` would), and returns the soft limit in force.
pub fn raise_open_files_limit() -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    let wanted = limit.maximum.unwrap_or(1 << 20);
    if limit.current.is_some_and(|current| current < wanted) {
        let raised = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(wanted),
                maximum: limit.maximum,
            },
        );
        if let Err(err) = raised {
            tracing::warn!(error = %err, "cannot raise the open-files limit");
        }
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// Serves `service` over TLS (`tls`) on `listener` until `shutdown`
/// resolves, then lets requests in progress finish (for at most a few
/// seconds).
pub async fn serve<S, B>(
    listener: TcpListener,
    service: S,
    limits: Limits,
    tls: crate::tls::Acceptor,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()>
where
    S: tower_service::Service<hyper::Request<Incoming>, Response = hyper::Response<B>>
        + Clone
        + Send
        + Unpin
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let open_files = raise_open_files_limit();
    let cap = limits
        .max_connections
        .min(open_files.saturating_sub(FILES_RESERVED).max(16) as usize);
    tracing::info!(
        max_connections = cap,
        open_files,
        header_timeout_ms = limits.header_timeout.as_millis() as u64,
        "accepting connections"
    );
    let permits = Arc::new(Semaphore::new(cap));
    let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
    // Every connection task watches it, and finishes its request in
    // progress once it turns true.
    let (closing, closing_seen) = tokio::sync::watch::channel(false);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    // Out of file descriptors, most likely: wait for some
                    // to close rather than spin.
                    tracing::warn!(error = %err, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            if let Ok(refusal) = refusing.clone().try_acquire_owned() {
                let tls = tls.clone();
                tokio::spawn(async move {
                    refuse_full(stream, cap, &tls).await;
                    drop(refusal);
                });
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = Deadline {
            inner: service.clone(),
            limit: limits.request_timeout,
        };
        let (http, tls, closing) = (http.clone(), tls.clone(), closing_seen.clone());
        let handshake_timeout = limits.header_timeout;
        tokio::spawn(async move {
            if let Some(stream) = handshake(stream, &tls, handshake_timeout).await {
                serve_connection(&http, stream, service, closing).await;
            }
            drop(permit);
        });
    }
    drop(listener);
    let _ = closing.send(true);
    // Every connection holds a permit until it is closed.
    let all = u32::try_from(cap).unwrap_or(u32::MAX);
    if tokio::time::timeout(SHUTDOWN_GRACE, permits.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!("requests still in progress at shutdown were cut");
    }
    Ok(())
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Serves the requests of one connection until either side ends it (or
/// `closing` turns true and the request in progress is answered), then
/// closes it lingering.
async fn serve_connection<S, B>(
    http: &hyper::server::conn::http1::Builder,
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    service: Deadline<S>,
    mut closing: tokio::sync::watch::Receiver<bool>,
) where
    S: tower_service::Service<hyper::Request<Incoming>, Response = hyper::Response<B>>
        + Clone
        + Send
        + Unpin
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut connection = http.serve_connection(
        TokioIo::new(stream),
        hyper_util::service::TowerToHyperService::new(service),
    );
    let mut asked_to_close = false;
    let ended = loop {
        tokio::select! {
            ended = std::future::poll_fn(|cx| connection.poll_without_shutdown(cx)) => break ended,
            _ = closing.wait_for(|closing| *closing), if !asked_to_close => {
                std::pin::Pin::new(&mut connection).graceful_shutdown();
                asked_to_close = true;
            }
        }
    };
    if let Err(err) = ended {
        tracing::debug!(error = %err, "connection ended with an error");
    }
    close_lingering(connection.into_parts().io.into_inner()).await;
}

/// Shuts the server's side of `stream`, then reads and discards what the
/// client still sends, for at most [`LINGER`] (see the module's
/// documentation), and closes it.
async fn close_lingering(mut stream: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin) {
    let _ = tokio::time::timeout(LINGER, async {
        stream.shutdown().await?;
        tokio::io::copy(&mut stream, &mut tokio::io::sink()).await
    })
    .await;
}

/// A service whose every request must reach its answer within `limit`;
/// past it the request fails and hyper closes the connection.
#[derive(Clone)]
struct Deadline<S> {
    inner: S,
    limit: Duration,
}

impl<S, R> tower_service::Service<R> for Deadline<S>
where
    S: tower_service::Service<R>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: R) -> Self::Future {
        let answer = self.inner.call(request);
        let limit = self.limit;
        Box::pin(async move {
            match tokio::time::timeout(limit, answer).await {
                Ok(answer) => answer.map_err(Into::into),
                Err(_) => Err(format!(
                    "the request took longer than {} s; connection closed",
                    limit.as_secs()
                )
                .into()),
            }
        })
    }
}

/// The first byte of every TLS connection (a handshake record).
const TLS_HANDSHAKE: u8 = 0x16;

/// Whether the client starts a TLS handshake (Some(true)) or speaks
/// plain HTTP (Some(false)); None if it sent nothing within `timeout`.
async fn speaks_tls(stream: &TcpStream, timeout: Duration) -> Option<bool> {
    let mut first = [0u8; 1];
    match tokio::time::timeout(timeout, stream.peek(&mut first)).await {
        Ok(Ok(1)) => Some(first[0] == TLS_HANDSHAKE),
        _ => None,
    }
}

/// Completes the TLS handshake within `timeout`, or answers a plain-HTTP
/// request with a clear 400 and closes the connection. None when the
/// connection is not to be served.
async fn handshake(
    stream: TcpStream,
    tls: &crate::tls::Acceptor,
    timeout: Duration,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    match speaks_tls(&stream, timeout).await {
        Some(true) => {}
        Some(false) => {
            refuse_plain(stream).await;
            return None;
        }
        None => return None,
    }
    match tokio::time::timeout(timeout, tls.accept(stream)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(err)) => {
            tracing::debug!(error = %err, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!("TLS handshake timed out");
            None
        }
    }
}

/// Answers a plain-HTTP request with 400 and closes the connection.
async fn refuse_plain(stream: TcpStream) {
    let host = stream
        .local_addr()
        .map(crate::url_for)
        .unwrap_or_else(|_| "https://HOST:PORT".into());
    answer_and_close(
        stream,
        "400 Bad Request",
        "plain_http_refused",
        format!("this server speaks HTTPS only; use {host}"),
        "",
    )
    .await;
}

/// How long a connection over the cap gets to complete its handshake and
/// read its 503.
const REFUSAL_DEADLINE: Duration = Duration::from_secs(2);

/// Answers a connection over the cap with 503 (over TLS, so that the
/// client reads it) and closes it.
async fn refuse_full(stream: TcpStream, cap: usize, tls: &crate::tls::Acceptor) {
    if speaks_tls(&stream, REFUSAL_DEADLINE).await != Some(true) {
        return;
    }
    let Ok(Ok(stream)) = tokio::time::timeout(REFUSAL_DEADLINE, tls.accept(stream)).await else {
        return;
    };
    answer_and_close(
        stream,
        "503 Service Unavailable",
        "too_many_connections",
        format!("the server holds the most connections it allows ({cap}); try again shortly"),
        "retry-after: 5\r\n",
    )
    .await;
}

/// Writes one answer (an [`ErrorBody`]) and closes the connection.
async fn answer_and_close(
    mut stream: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    status: &str,
    code: &str,
    message: String,
    headers: &str,
) {
    let body = serde_json::to_string(&ErrorBody {
        error: ErrorDetail {
            code: code.into(),
            message,
        },
    })
    .expect("an error body always serialises");
    let answer = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\n{headers}connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let written = tokio::time::timeout(REFUSAL_DEADLINE, stream.write_all(answer.as_bytes())).await;
    if matches!(written, Ok(Ok(()))) {
        close_lingering(stream).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::convert::Infallible;
    use std::task::{Context, Poll};

    /// Answers 413 at once to a request declaring a body over 1 MiB,
    /// without reading it (as axum's `DefaultBodyLimit` does); anything
    /// else 200.
    #[derive(Clone)]
    struct RefuseLarge;

    impl tower_service::Service<hyper::Request<Incoming>> for RefuseLarge {
        type Response = hyper::Response<String>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Self::Response, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: hyper::Request<Incoming>) -> Self::Future {
            let declared: u64 = request
                .headers()
                .get(hyper::header::CONTENT_LENGTH)
                .and_then(|value| value.to_str().ok()?.parse().ok())
                .unwrap_or(0);
            let status = if declared > 1 << 20 { 413 } else { 200 };
            std::future::ready(Ok(hyper::Response::builder()
                .status(status)
                .body(String::new())
                .expect("a valid answer")))
        }
    }

    /// Regression (CI, 2026-12-08: `bad_input` saw "error sending
    /// request" instead of its 413): a server that answers before reading
    /// a large body must not reset the connection under the client, which
    /// is still sending and has not read the answer yet.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_early_answer_to_a_large_body_reaches_the_client() {
        let dir = tempfile::tempdir().unwrap();
        let pin = crate::tls::Identity::create(dir.path(), &[]).unwrap();
        let acceptor = crate::tls::Identity::load(dir.path())
            .unwrap()
            .acceptor()
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = crate::url_for(listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            listener,
            RefuseLarge,
            Limits::default(),
            acceptor,
            async move {
                let _ = stopped.await;
            },
        ));
        let body = Bytes::from(vec![b' '; 8 << 20]);
        for attempt in 0..20 {
            // A fresh client each time: a new connection, as the failing
            // test made.
            let client = crate::tls::client_builder(Some(pin)).build().unwrap();
            let answer = client
                .post(format!("{url}/upload"))
                .body(body.clone())
                .send()
                .await
                .unwrap_or_else(|err| panic!("attempt {attempt}: {err:?}"));
            assert_eq!(answer.status(), 413, "attempt {attempt}");
        }
        let _ = stop.send(());
        server.await.unwrap().unwrap();
    }
}
