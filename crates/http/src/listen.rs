//! Listeners: plain TCP, or TLS on top (`cloister_tls::ServerTls`). TLS
//! handshakes run in their own tasks, so a slow or silent client never holds
//! up the next connection; a handshake that does not finish within
//! [`HANDSHAKE_TIMEOUT`] is dropped. Every connection gets `TCP_NODELAY`:
//! small frames (WebSocket events, JSON answers) leave at once instead of
//! waiting on Nagle's algorithm and delayed ACKs.

use axum::serve::Listener;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;

/// The longest a TLS handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes finished but not yet taken by the server.
const READY: usize = 64;

/// A TCP listener whose connections come out TLS-wrapped.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    accepting: tokio::task::JoinHandle<()>,
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        // Stop accepting with the server (graceful shutdown drops it).
        self.accepting.abort();
    }
}

impl TlsListener {
    /// Accept on `listener`, handshaking with `tls`.
    pub fn new(listener: TcpListener, tls: &cloister_tls::ServerTls) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let acceptor = tls.acceptor();
        let (tx, ready) = mpsc::channel(READY);
        let accepting = tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of descriptors and the like: wait, as axum does.
                        tracing::debug!("accept: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                nodelay(&tcp);
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener {
            ready,
            local,
            accepting,
        })
    }
}

impl Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(c) => c,
            // The accept task is gone (aborted): nothing more comes.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

pub(crate) fn nodelay(tcp: &TcpStream) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!("cannot set TCP_NODELAY: {e}");
    }
}

/// The peer address of a connection, for handlers and layers
/// (`ConnectInfo<Peer>`), over TCP and TLS alike, and whether it presented
/// a client certificate (verified under the listener's `--tls-client-ca`
/// during the handshake: a service, not a user's device).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    pub addr: SocketAddr,
    pub client_cert: bool,
}

impl<'a> axum::extract::connect_info::Connected<axum::serve::IncomingStream<'a, TlsListener>>
    for Peer
{
    fn connect_info(stream: axum::serve::IncomingStream<'a, TlsListener>) -> Self {
        let client_cert = stream
            .io()
            .get_ref()
            .1
            .peer_certificates()
            .is_some_and(|c| !c.is_empty());
        Peer {
            addr: *stream.remote_addr(),
            client_cert,
        }
    }
}

/// A plain TCP listener whose connections have `TCP_NODELAY`.
pub struct TcpNoDelay(pub TcpListener);

impl Listener for TcpNoDelay {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (tcp, addr) = Listener::accept(&mut self.0).await;
        nodelay(&tcp);
        (tcp, addr)
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Listener::local_addr(&self.0)
    }
}

impl<'a> axum::extract::connect_info::Connected<axum::serve::IncomingStream<'a, TcpNoDelay>>
    for Peer
{
    fn connect_info(stream: axum::serve::IncomingStream<'a, TcpNoDelay>) -> Self {
        Peer {
            addr: *stream.remote_addr(),
            client_cert: false,
        }
    }
}

/// Refuse every request of `router` that did not come over a connection
/// with a client certificate (routes only services call: KM to KM, vault
/// to KM).
pub fn require_client_cert(router: axum::Router) -> axum::Router {
    router.layer(axum::middleware::from_fn(by_certificate))
}

async fn by_certificate(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let ok = req
        .extensions()
        .get::<axum::extract::ConnectInfo<Peer>>()
        .is_some_and(|c| c.0.client_cert);
    if !ok {
        return crate::ApiError::forbidden(
            "client_certificate_required",
            "this endpoint is for services: connect with a client certificate from the services' CA",
        )
        .into_response();
    }
    next.run(req).await
}
