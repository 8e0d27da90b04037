//! Files: the page hands the file to the app (with upload progress), the
//! app encrypts and uploads it through the SDK; a download is fetched,
//! verified against the hash the sender signed, and decrypted here.

use crate::App;
use crate::live::PageEvent;
use crate::messaging::{parse_room, render_message};
use crate::pages::{Failure, status_of};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use cloister_proto::server::Content;
use futures_util::StreamExt;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;

/// A private scratch directory for one file in flight, removed with it.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new(app: &App) -> std::io::Result<Scratch> {
        let dir = app.home.join("app-scratch").join(hex::encode(
            cloister_crypto::random_bytes::<8>().map_err(std::io::Error::other)?,
        ));
        std::fs::create_dir_all(&dir)?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The file's name from the page (`x-file-name`, percent-encoded), made
/// safe as one path component.
fn file_name(headers: &HeaderMap) -> String {
    let raw = headers
        .get("x-file-name")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("file");
    let decoded = percent_encoding::percent_decode_str(raw).decode_utf8_lossy();
    let name: String = decoded
        .chars()
        .map(|c| {
            if c == '/' || c == '\\' || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect();
    let name = name.trim_matches('.').trim().to_owned();
    if name.is_empty() { "file".into() } else { name }
}

/// `POST /r/ROOM/upload`: the file's bytes as the body; answered with the
/// message's seq once it is encrypted, uploaded and posted.
pub(crate) async fn upload(
    State(app): State<Arc<App>>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(c) = app.client() else {
        return (StatusCode::UNAUTHORIZED, "the app is locked").into_response();
    };
    let room = match parse_room(&room) {
        Ok(r) => r,
        Err(f) => return (f.status, f.why).into_response(),
    };
    let name = file_name(&headers);
    let scratch = match Scratch::new(&app) {
        Ok(s) => s,
        Err(e) => {
            return (StatusCode::INTERNAL_SERVER_ERROR, format!("Not sent: {e}")).into_response();
        }
    };
    let path = scratch.0.join(&name);
    let mut limit = cloister_proto::limits::DEFAULT_MAX_ATTACHMENT;
    let written = async {
        let mut f = tokio::fs::File::create(&path).await?;
        let mut stream = body.into_data_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(std::io::Error::other)?;
            limit = limit
                .checked_sub(chunk.len() as u64)
                .ok_or_else(|| std::io::Error::other("the file is over the size limit"))?;
            f.write_all(&chunk).await?;
        }
        f.flush().await
    }
    .await;
    if let Err(e) = written {
        return (StatusCode::PAYLOAD_TOO_LARGE, format!("Not sent: {e}")).into_response();
    }
    match c.send_file(&room, &path).await {
        Ok((_, seq)) => {
            drop(scratch);
            // this device's pages learn of it here, as for a text
            if let Ok(page) = c.read(&room, 1, Some(seq + 1)).await
                && let Some(Ok(m)) = page.into_iter().next()
                && m.seq == seq
            {
                let me = c.user().to_string();
                let html = render_message(&app, &me, (&m).into());
                let _ = app.events.send(PageEvent::Message {
                    room,
                    seq,
                    html: html.into_string(),
                });
            }
            seq.to_string().into_response()
        }
        Err(e) => (status_of(&e), format!("Not sent: {e}")).into_response(),
    }
}

/// `GET /r/ROOM/file/SEQ`: the file of message SEQ, downloaded, checked
/// against the hashes its sender signed, and decrypted by the app.
pub(crate) async fn download(
    State(app): State<Arc<App>>,
    Path((room, seq)): Path<(String, u64)>,
) -> Result<Response, Failure> {
    let Some(c) = app.client() else {
        return Ok(crate::pages::locked());
    };
    let room = parse_room(&room)?;
    let not_found = || {
        Failure::new(
            StatusCode::NOT_FOUND,
            "No such file",
            "that message carries no file",
        )
    };
    let m = c
        .read(&room, 1, Some(seq + 1))
        .await
        .map_err(|e| Failure::of("File not loaded", &e))?
        .into_iter()
        .next()
        .and_then(Result::ok)
        .filter(|m| m.seq == seq)
        .ok_or_else(not_found)?;
    let Content::File { name, .. } = m.content.said() else {
        return Err(not_found());
    };
    let scratch = Scratch::new(&app).map_err(|e| {
        Failure::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "File not loaded",
            e.to_string(),
        )
    })?;
    let out = scratch.0.join("file");
    c.get_file(&m.content, &out)
        .await
        .map_err(|e| Failure::of("File not loaded", &e))?;
    let bytes = tokio::fs::read(&out).await.map_err(|e| {
        Failure::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "File not loaded",
            e.to_string(),
        )
    })?;
    drop(scratch);
    let mut r = bytes.into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    let ascii: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || ".-_ ".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{ascii}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(r)
}
