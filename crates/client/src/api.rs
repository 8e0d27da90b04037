//! HTTP and WebSocket plumbing of the client, and streamed file transfer.

use crate::{ClientError, Result};
use cloister_crypto::file::{FileOpener, FileSealer, SEALED_CHUNK};
use cloister_crypto::{RoomKey, Sha256Stream};
use cloister_proto::ErrorBody;
use cloister_proto::limits::FILE_CHUNK;
use cloister_proto::server::Event;
use futures_util::{Stream, StreamExt};
use std::io::Read;
use std::path::Path;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot};

/// An error answered by a Cloister service.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message} [{code}, HTTP {status}]")]
pub struct ApiFailure {
    pub status: u16,
    pub code: String,
    pub message: String,
}

fn net(e: reqwest::Error) -> ClientError {
    let url = e
        .url()
        .map(|u| format!("{}://{}", u.scheme(), u.authority()))
        .unwrap_or_default();
    let reason = if e.is_connect() {
        match tls_failure(&e) {
            Some(why) => {
                format!("TLS handshake failed: {why} (a server under a private CA needs --ca-file)")
            }
            None => "connection refused or unreachable".to_string(),
        }
    } else if e.is_timeout() {
        "timed out".to_string()
    } else {
        e.without_url().to_string()
    };
    ClientError::Network { url, reason }
}

/// The TLS reason under a connect error, if that is what it was (the
/// deepest cause that speaks of certificates or TLS).
fn tls_failure(e: &reqwest::Error) -> Option<String> {
    let mut found = None;
    let mut cause: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(c) = cause {
        let m = c.to_string();
        let l = m.to_ascii_lowercase();
        if l.contains("certificate") || l.contains("tls") || l.contains("handshake") {
            found = Some(m);
        }
        cause = c.source();
    }
    found
}

/// Send a request; map non-2xx answers to [`ApiFailure`].
pub(crate) async fn send_raw(req: reqwest::RequestBuilder) -> Result<reqwest::Response> {
    let resp = req.send().await.map_err(net)?;
    if resp.status().is_success() {
        return Ok(resp);
    }
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.unwrap_or_default();
    let body: ErrorBody = serde_json::from_slice(&bytes).unwrap_or(ErrorBody {
        error: "http_error".into(),
        message: format!("HTTP {status}"),
    });
    Err(ClientError::Api(ApiFailure {
        status,
        code: body.error,
        message: body.message,
    }))
}

pub(crate) async fn send<T: serde::de::DeserializeOwned>(
    req: reqwest::RequestBuilder,
) -> Result<T> {
    let resp = send_raw(req).await?;
    let bytes = resp.bytes().await.map_err(net)?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ClientError::Local(format!("unexpected answer from the service: {e}")))
}

/// Live events from the server.
pub struct EventStream {
    ws: Socket,
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Open the live socket (`/v1/ws`) of a server with a session token.
pub(crate) async fn ws_connect(
    server: &str,
    token: &str,
    tls: &cloister_tls::ClientTls,
) -> Result<Socket> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let url = if let Some(rest) = server.strip_prefix("http://") {
        format!("ws://{rest}/v1/ws")
    } else if let Some(rest) = server.strip_prefix("https://") {
        format!("wss://{rest}/v1/ws")
    } else {
        return Err(ClientError::Input(format!(
            "server URL {server} must start with http:// or https://"
        )));
    };
    let mut req = url
        .as_str()
        .into_client_request()
        .map_err(|e| ClientError::Network {
            url: url.clone(),
            reason: e.to_string(),
        })?;
    let auth = format!("Bearer {token}")
        .parse()
        .map_err(|_| ClientError::Local("bad token".into()))?;
    req.headers_mut().insert("authorization", auth);
    // Our TLS configuration (whom this device trusts), never a default;
    // TCP_NODELAY: events are small.
    let connector = tokio_tungstenite::Connector::Rustls(tls.config());
    let (ws, _) =
        tokio_tungstenite::connect_async_tls_with_config(req, None, true, Some(connector))
            .await
            .map_err(|e| ClientError::Network {
                url,
                reason: e.to_string(),
            })?;
    Ok(ws)
}

impl EventStream {
    pub(crate) async fn connect(
        server: &str,
        token: &str,
        tls: &cloister_tls::ClientTls,
    ) -> Result<Self> {
        Ok(EventStream {
            ws: ws_connect(server, token, tls).await?,
        })
    }

    /// The next event, or `None` when the server closed the stream.
    pub async fn next(&mut self) -> Result<Option<Event>> {
        use tokio_tungstenite::tungstenite::Message;
        loop {
            match self.ws.next().await {
                None | Some(Ok(Message::Close(_))) => return Ok(None),
                Some(Err(e)) => {
                    return Err(ClientError::Network {
                        url: "live stream".into(),
                        reason: e.to_string(),
                    });
                }
                Some(Ok(Message::Text(t))) => {
                    return serde_json::from_str(t.as_str())
                        .map(Some)
                        .map_err(|e| ClientError::Local(format!("bad event from server: {e}")));
                }
                Some(Ok(_)) => continue,
            }
        }
    }
}

type Digests = Result<((u64, u64), [u8; 32], [u8; 32])>;

pub(crate) struct Upload {
    pub stream: std::pin::Pin<Box<dyn Stream<Item = std::io::Result<bytes::Bytes>> + Send>>,
    /// ((plaintext bytes, ciphertext bytes), plaintext SHA-256, ciphertext SHA-256)
    pub digests: oneshot::Receiver<Digests>,
}

fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        let r = f.read(&mut buf[n..])?;
        if r == 0 {
            break;
        }
        n += r;
    }
    Ok(n)
}

/// Read, encrypt and stream a file in bounded memory (a few chunks in flight).
pub(crate) fn upload_encrypted(path: &Path, key: &RoomKey) -> Result<Upload> {
    let mut f = std::fs::File::open(path)
        .map_err(|e| ClientError::Input(format!("{}: {e}", path.display())))?;
    let mut sealer = FileSealer::new(key)?;
    let (tx, rx) = mpsc::channel::<std::io::Result<bytes::Bytes>>(4);
    let (dtx, drx) = oneshot::channel();
    tokio::task::spawn_blocking(move || {
        let mut run = || -> Digests {
            let (mut plain_sha, mut ct_sha) = (Sha256Stream::default(), Sha256Stream::default());
            let (mut plain_n, mut ct_n) = (0u64, 0u64);
            let mut cur = vec![0u8; FILE_CHUNK];
            let mut next = vec![0u8; FILE_CHUNK];
            let io = |e: std::io::Error| ClientError::Local(format!("reading the file: {e}"));
            let mut n = read_full(&mut f, &mut cur).map_err(io)?;
            loop {
                let m = if n == FILE_CHUNK {
                    read_full(&mut f, &mut next).map_err(io)?
                } else {
                    0
                };
                plain_sha.update(&cur[..n]);
                plain_n += n as u64;
                let last = m == 0;
                let ct = if last {
                    let s = std::mem::replace(
                        &mut sealer,
                        FileSealer::new(&RoomKey::from_bytes([0; 32]))?,
                    );
                    s.last(&cur[..n])?
                } else {
                    sealer.next(&cur[..n])?
                };
                ct_sha.update(&ct);
                ct_n += ct.len() as u64;
                if tx.blocking_send(Ok(bytes::Bytes::from(ct))).is_err() {
                    return Err(ClientError::Local("upload aborted".into()));
                }
                if last {
                    return Ok(((plain_n, ct_n), plain_sha.finish(), ct_sha.finish()));
                }
                std::mem::swap(&mut cur, &mut next);
                n = m;
            }
        };
        let _ = dtx.send(run());
    });
    let stream = Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }));
    Ok(Upload {
        stream,
        digests: drx,
    })
}

/// Stream-decrypt a download to a temporary file; rename into place only if
/// the ciphertext hash, the plaintext hash and the size all match.
pub(crate) async fn download_decrypt(
    resp: reqwest::Response,
    key: &RoomKey,
    blob_sha: &[u8; 32],
    sha: &[u8; 32],
    size: u64,
    out: &Path,
) -> Result<u64> {
    let tmp = out.with_extension("cloister-part");
    let r = async {
        let mut file = tokio::fs::File::create(&tmp)
            .await
            .map_err(|e| ClientError::Local(format!("{}: {e}", tmp.display())))?;
        let mut opener = Some(FileOpener::new(key)?);
        let (mut ct_sha, mut pt_sha) = (Sha256Stream::default(), Sha256Stream::default());
        let mut buf: Vec<u8> = Vec::with_capacity(2 * SEALED_CHUNK);
        let mut written = 0u64;
        let mut stream = resp.bytes_stream();
        let bad = || {
            ClientError::Local(
                "attachment failed to decrypt: altered, truncated or the wrong key".into(),
            )
        };
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(net)?;
            ct_sha.update(&chunk);
            buf.extend_from_slice(&chunk);
            // Keep at least one full chunk back: only EOF tells which chunk is last.
            while buf.len() > SEALED_CHUNK {
                let rest = buf.split_off(SEALED_CHUNK);
                let o = opener.as_mut().ok_or_else(bad)?;
                let pt = o.next(&buf).map_err(|_| bad())?;
                pt_sha.update(&pt);
                written += pt.len() as u64;
                if written > size {
                    return Err(bad());
                }
                file.write_all(&pt)
                    .await
                    .map_err(|e| ClientError::Local(e.to_string()))?;
                buf = rest;
            }
        }
        let o = opener.take().ok_or_else(bad)?;
        let pt = o.last(&buf).map_err(|_| bad())?;
        pt_sha.update(&pt);
        written += pt.len() as u64;
        file.write_all(&pt)
            .await
            .map_err(|e| ClientError::Local(e.to_string()))?;
        file.sync_all()
            .await
            .map_err(|e| ClientError::Local(e.to_string()))?;
        if ct_sha.finish() != *blob_sha || pt_sha.finish() != *sha || written != size {
            return Err(ClientError::Local(
                "attachment does not match the hashes in its message".into(),
            ));
        }
        Ok(written)
    }
    .await;
    match r {
        Ok(n) => {
            tokio::fs::rename(&tmp, out)
                .await
                .map_err(|e| ClientError::Local(format!("{}: {e}", out.display())))?;
            Ok(n)
        }
        Err(e) => {
            let _ = tokio::fs::remove_file(&tmp).await;
            Err(e)
        }
    }
}
