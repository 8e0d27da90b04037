//! The values every node of one server shares, kept in its database: the
//! session key (a session made on one node is good on every node), the
//! operator token's hash, and the cluster id that names its NATS stream.
//! The first node to start sets each; the others read it. A data directory
//! from before (`session.key`, `operator.token`) is taken over as is.

use crate::{ServerError, io_err, operator_token_path};
use cloister_store::{ServerStore, StoreError};
use std::path::Path;

const SESSION_KEY: &str = "session_key";
const OPERATOR_TOKEN: &str = "operator_token_sha256";
const CLUSTER_ID: &str = "cluster_id";

/// The shared values.
pub(crate) struct Shared {
    pub session_key: [u8; 32],
    pub operator_token_hash: [u8; 32],
    pub cluster_id: String,
}

/// Set `key` to `value` unless another node did first; the stored value.
async fn init_once(
    store: &dyn ServerStore,
    key: &str,
    value: &[u8],
) -> Result<Vec<u8>, ServerError> {
    match store.init_server_meta(key, value).await {
        Ok(()) => Ok(value.to_vec()),
        Err(StoreError::Conflict(_)) => store
            .server_meta(key)
            .await?
            .ok_or_else(|| StoreError::Backend(format!("{key} vanished")).into()),
        Err(e) => Err(e.into()),
    }
}

fn key32(v: Vec<u8>, what: &str) -> Result<[u8; 32], ServerError> {
    v.try_into()
        .map_err(|_| StoreError::Backend(format!("corrupt {what} in the database")).into())
}

pub(crate) async fn load(store: &dyn ServerStore, dir: &Path) -> Result<Shared, ServerError> {
    let session_key = match store.server_meta(SESSION_KEY).await? {
        Some(k) => key32(k, "session key")?,
        None => {
            let legacy = dir.join("session.key");
            let k = match std::fs::read(&legacy) {
                Ok(b) if b.len() == 32 => b,
                Ok(_) => {
                    return Err(ServerError::Io {
                        path: legacy.display().to_string(),
                        reason: "corrupt key file".into(),
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    cloister_crypto::random_bytes::<32>()?.to_vec()
                }
                Err(e) => return Err(io_err(&legacy, e)),
            };
            key32(init_once(store, SESSION_KEY, &k).await?, "session key")?
        }
    };
    let tok_path = operator_token_path(dir);
    let operator_token_hash = match store.server_meta(OPERATOR_TOKEN).await? {
        Some(h) => key32(h, "operator token hash")?,
        None => {
            // The first node writes the token beside its data; the
            // database keeps only its hash.
            if !tok_path.exists() {
                let t = cloister_proto::b64::encode(&cloister_crypto::random_bytes::<24>()?);
                crate::write_private(&tok_path, t.as_bytes()).map_err(|e| io_err(&tok_path, e))?;
            }
            let token = std::fs::read(&tok_path).map_err(|e| io_err(&tok_path, e))?;
            let h = cloister_crypto::sha256(String::from_utf8_lossy(&token).trim().as_bytes());
            let stored = key32(
                init_once(store, OPERATOR_TOKEN, &h).await?,
                "operator token hash",
            )?;
            if stored != h {
                // another node was first: its token is the one
                let _ = std::fs::remove_file(&tok_path);
            }
            stored
        }
    };
    let id = hex::encode(cloister_crypto::random_bytes::<8>()?);
    let cluster_id = String::from_utf8(init_once(store, CLUSTER_ID, id.as_bytes()).await?)
        .map_err(|_| StoreError::Backend("corrupt cluster id in the database".into()))?;
    Ok(Shared {
        session_key,
        operator_token_hash,
        cluster_id,
    })
}
