//! Files: encrypted while uploading, decrypted and checked while downloading.

use super::*;

impl Client {
    /// Encrypt a file in chunks while uploading it, then send a message that carries its key.
    pub async fn send_file(&self, room: &RoomId, path: &Path) -> Result<(MessageId, u64)> {
        let content = self.upload_file(room, path).await?;
        self.send(room, &content).await
    }

    /// Encrypt and upload a file (after the firm's DLP rules on files); the
    /// content that carries its key, for a message (`send`).
    pub async fn upload_file(&self, room: &RoomId, path: &Path) -> Result<Content> {
        let meta = std::fs::metadata(path)
            .map_err(|e| ClientError::Input(format!("{}: {e}", path.display())))?;
        if !meta.is_file() {
            return Err(ClientError::Input(format!(
                "{} is not a file",
                path.display()
            )));
        }
        if meta.len() > limits::DEFAULT_MAX_ATTACHMENT {
            return Err(ClientError::Input(format!(
                "{} is {} bytes; the limit is {} bytes",
                path.display(),
                meta.len(),
                limits::DEFAULT_MAX_ATTACHMENT
            )));
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "file".into());
        // DLP before a byte leaves the device
        self.dlp_check_file(&name, meta.len()).await?;
        let file_key = RoomKey::generate()?;
        let blob = cloister_proto::b64::Fixed(cloister_crypto::random_bytes::<16>()?);
        let blob_id = hex::encode(blob.0);
        let up = api::upload_encrypted(path, &file_key)?;
        let token = self.token().await?;
        let resp: BlobResponse = api::send(
            self.http
                .put(format!(
                    "{}/v1/rooms/{room}/blobs/{blob_id}",
                    self.profile.server
                ))
                .bearer_auth(token)
                .body(reqwest::Body::wrap_stream(up.stream)),
        )
        .await?;
        let (size, sha, blob_sha) = up
            .digests
            .await
            .map_err(|_| ClientError::Local("upload task failed".into()))??;
        if resp.size != size.1 {
            return Err(ClientError::Local(
                "the server stored a different number of bytes than were sent".into(),
            ));
        }
        let content = Content::File {
            name,
            size: size.0,
            blob: blob_id,
            key: Fixed(*file_key.expose()),
            blob_sha256: Fixed(blob_sha),
            sha256: Fixed(sha),
        };
        Ok(content)
    }

    /// Download, verify and decrypt an attachment to `out` (written only if every check passes).
    pub async fn get_file(&self, content: &Content, out: &Path) -> Result<u64> {
        let Content::File {
            blob,
            key,
            blob_sha256,
            sha256,
            size,
            ..
        } = content.said()
        else {
            return Err(ClientError::Input("that message is not a file".into()));
        };
        let token = self.token().await?;
        let resp = api::send_raw(
            self.http
                .get(format!("{}/v1/blobs/{blob}", self.profile.server))
                .bearer_auth(token),
        )
        .await?;
        api::download_decrypt(
            resp,
            &RoomKey::from_bytes(key.0),
            &blob_sha256.0,
            &sha256.0,
            *size,
            out,
        )
        .await
    }
}
