//! Connections between users of two firms, as the operator relays them.
//! The server keeps the KM-signed request, answer and removal and checks
//! each against the signing firm's registered KM key and against the
//! caller: only the asker posts a request, only the asked user answers,
//! only one of the two removes. It decides nothing else: each firm's KM
//! judges a connection itself under the keys it pinned.
//!
//! ```text
//!  POST /v1/connections               {request}   asker's KM-signed request
//!  POST /v1/connections/{id}/answer   {blob}      asked user's KM-signed answer
//!  POST /v1/connections/{id}/remove   {blob}      either user's KM-signed removal
//!  GET  /v1/connections                            the caller's connections
//! ```

use crate::{Caller, Server};
use axum::Json;
use axum::extract::{Path, State};
use cloister_crypto::signed::{
    CONNECTION_ANSWER, CONNECTION_REMOVAL, CONNECTION_REQUEST, verify_blob,
};
use cloister_http::{ApiError, ApiJson};
use cloister_proto::TenantId;
use cloister_proto::b64::Fixed;
use cloister_proto::federation::{
    Connection, ConnectionAnswer, ConnectionPost, ConnectionRemoval, ConnectionRequest,
};
use cloister_proto::km::SignedBlob;
use cloister_store::ConnectionRow;
use std::sync::Arc;

fn parse_id(id: &str) -> Result<[u8; 32], ApiError> {
    let v = hex::decode(id)
        .ok()
        .and_then(|v| <[u8; 32]>::try_from(v).ok())
        .ok_or_else(|| ApiError::bad_request("bad_param", "a connection id is 64 hex digits"))?;
    Ok(v)
}

impl Server {
    /// Verify a blob under `tenant`'s registered KM key.
    async fn km_blob<T: serde::de::DeserializeOwned>(
        &self,
        tenant: &TenantId,
        domain: &str,
        blob: &SignedBlob,
        what: &'static str,
    ) -> Result<T, ApiError> {
        let key = self.tenant_key(tenant).await?;
        verify_blob(&key, domain, blob, what).map_err(|_| {
            ApiError::forbidden(
                "bad_signature",
                format!("the {what} is not signed by {tenant}'s KM"),
            )
        })
    }

    async fn connection(
        &self,
        id: &[u8; 32],
    ) -> Result<(ConnectionRow, ConnectionRequest), ApiError> {
        let row = self
            .store
            .get_connection(id)
            .await
            .map_err(ApiError::internal)?
            .ok_or_else(|| {
                ApiError::not_found(
                    "unknown_connection",
                    format!("no connection {}", hex::encode(id)),
                )
            })?;
        let request: SignedBlob =
            serde_json::from_slice(&row.request).map_err(ApiError::internal)?;
        let req: ConnectionRequest =
            serde_json::from_slice(request.body.as_slice()).map_err(ApiError::internal)?;
        Ok((row, req))
    }
}

fn show(row: &ConnectionRow) -> Result<Connection, ApiError> {
    let parse = |b: &[u8]| serde_json::from_slice::<SignedBlob>(b).map_err(ApiError::internal);
    Ok(Connection {
        id: Fixed(parse_id(&row.id)?),
        request: parse(&row.request)?,
        answer: row.answer.as_deref().map(parse).transpose()?,
        removal: row.removal.as_deref().map(parse).transpose()?,
    })
}

/// The asker posts their KM-signed request.
#[utoipa::path(post, path = "/v1/connections", tag = "connections", request_body = cloister_proto::federation::ConnectionPost, security(("session" = [])), responses((status = 200, body = cloister_proto::federation::Connection), (status = "default", description = "refused: the error body names why", body = cloister_proto::ErrorBody)))]
pub(crate) async fn request(
    State(s): State<Arc<Server>>,
    c: Caller,
    ApiJson(p): ApiJson<ConnectionPost>,
) -> Result<Json<Connection>, ApiError> {
    let req: ConnectionRequest = s
        .km_blob(&c.tenant, CONNECTION_REQUEST, &p.blob, "connection request")
        .await?;
    if req.from != c.user {
        return Err(ApiError::forbidden(
            "not_yours",
            "only the asker posts a connection request",
        ));
    }
    if req.to.tenant() == c.tenant {
        return Err(ApiError::bad_request(
            "same_firm",
            "connections are between firms",
        ));
    }
    // the other firm must be served here
    s.tenant_key(&req.to.tenant()).await?;
    let id = cloister_crypto::signed::connection_id(&p.blob);
    let blob = serde_json::to_vec(&p.blob).map_err(ApiError::internal)?;
    if !s
        .store
        .put_connection(&id, &req.from, &req.to, &blob)
        .await
        .map_err(ApiError::internal)?
    {
        return Err(ApiError::conflict(
            "replayed_request",
            "this request was posted already",
        ));
    }
    tracing::info!(from = %req.from, to = %req.to, "connection requested");
    let (row, _) = s.connection(&id).await?;
    Ok(Json(show(&row)?))
}

/// The asked user posts their KM-signed answer.
#[utoipa::path(post, path = "/v1/connections/{id}/answer", tag = "connections", params(("id" = String, Path, description = "connection id, 64 hex digits")), request_body = cloister_proto::federation::ConnectionPost, security(("session" = [])), responses((status = 200, body = cloister_proto::federation::Connection), (status = "default", description = "refused: the error body names why", body = cloister_proto::ErrorBody)))]
pub(crate) async fn answer(
    State(s): State<Arc<Server>>,
    c: Caller,
    Path(id): Path<String>,
    ApiJson(p): ApiJson<ConnectionPost>,
) -> Result<Json<Connection>, ApiError> {
    let raw = parse_id(&id)?;
    let (_, req) = s.connection(&raw).await?;
    if req.to != c.user {
        return Err(ApiError::forbidden(
            "not_yours",
            format!("this request is addressed to {}", req.to),
        ));
    }
    let ans: ConnectionAnswer = s
        .km_blob(&c.tenant, CONNECTION_ANSWER, &p.blob, "connection answer")
        .await?;
    if ans.request.0 != raw || ans.to != c.user || ans.from != req.from {
        return Err(ApiError::bad_request(
            "wrong_connection",
            "the answer is for another connection",
        ));
    }
    keep(&s, &raw, &p.blob, Step::Answer).await
}

/// Either user posts their KM-signed removal.
#[utoipa::path(post, path = "/v1/connections/{id}/remove", tag = "connections", params(("id" = String, Path, description = "connection id, 64 hex digits")), request_body = cloister_proto::federation::ConnectionPost, security(("session" = [])), responses((status = 200, body = cloister_proto::federation::Connection), (status = "default", description = "refused: the error body names why", body = cloister_proto::ErrorBody)))]
pub(crate) async fn remove(
    State(s): State<Arc<Server>>,
    c: Caller,
    Path(id): Path<String>,
    ApiJson(p): ApiJson<ConnectionPost>,
) -> Result<Json<Connection>, ApiError> {
    let raw = parse_id(&id)?;
    let (_, req) = s.connection(&raw).await?;
    if req.to != c.user && req.from != c.user {
        return Err(ApiError::forbidden(
            "not_yours",
            "only the two connected users end a connection",
        ));
    }
    let rem: ConnectionRemoval = s
        .km_blob(&c.tenant, CONNECTION_REMOVAL, &p.blob, "connection removal")
        .await?;
    if rem.request.0 != raw || rem.by != c.user {
        return Err(ApiError::bad_request(
            "wrong_connection",
            "the removal is for another connection or user",
        ));
    }
    keep(&s, &raw, &p.blob, Step::Removal).await
}

enum Step {
    Answer,
    Removal,
}

/// Store a verified answer or removal, once; the connection as it is now.
async fn keep(
    s: &Server,
    id: &[u8; 32],
    blob: &SignedBlob,
    step: Step,
) -> Result<Json<Connection>, ApiError> {
    let bytes = serde_json::to_vec(blob).map_err(ApiError::internal)?;
    let stored = match step {
        Step::Answer => s.store.set_connection_answer(id, &bytes).await,
        Step::Removal => s.store.set_connection_removal(id, &bytes).await,
    }
    .map_err(ApiError::internal)?;
    if !stored {
        return Err(match step {
            Step::Answer => {
                ApiError::conflict("answered", "this request was answered or removed already")
            }
            Step::Removal => ApiError::conflict("removed", "this connection was removed already"),
        });
    }
    let (row, _) = s.connection(id).await?;
    Ok(Json(show(&row)?))
}

/// The caller's connections.
#[utoipa::path(get, path = "/v1/connections", tag = "connections", security(("session" = [])), responses((status = 200, body = Vec<cloister_proto::federation::Connection>), (status = "default", description = "refused: the error body names why", body = cloister_proto::ErrorBody)))]
pub(crate) async fn list(
    State(s): State<Arc<Server>>,
    c: Caller,
) -> Result<Json<Vec<Connection>>, ApiError> {
    let rows = s
        .store
        .connections_of(&c.user)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(rows.iter().map(show).collect::<Result<_, _>>()?))
}
