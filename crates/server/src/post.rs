//! Posting a message: the checks a request passes before the writer, the
//! same for an HTTP request and for a `post` frame on the live socket.

use crate::api::parse_room;
use crate::writer::{Job, WriteError};
use crate::{Caller, Server};
use axum::Json;
use axum::extract::{Path, State};
use cloister_http::{ApiError, ApiJson};
use cloister_proto::server::{Envelope, PostMessageResponse};
use cloister_proto::{RoomId, TenantId, limits};
use cloister_store::{Inserted, NewMessage};
use std::sync::Arc;

/// `POST /v1/rooms/{room}/messages`.
#[utoipa::path(post, path = "/v1/rooms/{room}/messages", tag = "messages", params(("room" = String, Path, description = "room id, 32 hex digits")), request_body = cloister_proto::server::Envelope, security(("session" = [])), responses((status = 200, body = cloister_proto::server::PostMessageResponse), (status = "default", description = "refused: the error body names why", body = cloister_proto::ErrorBody)))]
pub(crate) async fn post_message(
    State(s): State<Arc<Server>>,
    c: Caller,
    Path(room): Path<String>,
    ApiJson(env): ApiJson<Envelope>,
) -> Result<Json<PostMessageResponse>, ApiError> {
    let room = parse_room(&room)?;
    let seq = accept(&s, &c, room, env).await?;
    Ok(Json(PostMessageResponse { seq }))
}

/// Every check on a posted message, then the writer (batched signature
/// check, group commit, fan-out): its seq once it is durable. The HTTP
/// handler and the live socket's `post` frames both come here.
pub(crate) async fn accept(
    s: &Server,
    c: &Caller,
    room: RoomId,
    mut env: Envelope,
) -> Result<u64, ApiError> {
    s.limiters.posts.check(&c.device)?;
    if env.ciphertext.len() > limits::MAX_MESSAGE_CIPHERTEXT {
        return Err(ApiError::too_large(format!(
            "message ciphertext over {} bytes",
            limits::MAX_MESSAGE_CIPHERTEXT
        )));
    }
    // The header is believed only once the signature holds: the writer
    // checks signatures in batches (ADR 0017) and refuses the message then.
    // Until that point the header only decides which refusal comes first.
    let h = cloister_crypto::message::peek_header(&env)
        .map_err(|e| ApiError::bad_request("bad_header", format!("message rejected: {e}")))?;
    if h.device != c.device || h.sender != c.user {
        return Err(ApiError::forbidden(
            "not_sender",
            "the message header names another sender",
        ));
    }
    if h.room != room {
        return Err(ApiError::bad_request(
            "wrong_room",
            "the message header names another room",
        ));
    }
    if !cloister_proto::within_skew(h.ts) {
        return Err(ApiError::bad_request(
            "stale_message",
            "message timestamp is outside the allowed clock skew",
        ));
    }
    if let Some(policy) = s.capture_policy(&c.tenant)
        && policy.required
    {
        check_receipt(&policy, &c.tenant, &h.id, &env)?;
    }
    // The receipt served its purpose; it is neither stored nor forwarded.
    env.receipt = None;
    let st = s.member_room(&room, &c.user).await?;
    s.check_may_post(&st, &c.user)?;
    if h.epoch != st.epoch {
        return Err(ApiError::conflict(
            "stale_epoch",
            format!(
                "the room is at epoch {}; message was sealed for epoch {}",
                st.epoch, h.epoch
            ),
        ));
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job = Job {
        msg: NewMessage {
            room: room.to_hex(),
            msg_id: h.id.to_hex(),
            epoch: h.epoch,
            device: c.device.to_hex(),
            ts: h.ts,
            header: env.header.0.clone(),
            ciphertext: env.ciphertext.0.clone(),
            sig: env.sig.0.to_vec(),
        },
        room,
        signed: cloister_crypto::message::envelope_signed_bytes(&env),
        envelope: env,
        state: st,
        sender: c.device,
        key: c.cert.key.clone(),
        reply: tx,
    };
    if !s.writer.submit(job).await {
        return Err(ApiError::internal("message writer stopped"));
    }
    match rx.await {
        Ok(Ok(Inserted::Seq { seq, .. })) => Ok(seq),
        Ok(Ok(Inserted::Duplicate)) => Err(ApiError::conflict(
            "duplicate_message",
            format!("message {} was already accepted (replay)", h.id),
        )),
        Ok(Err(WriteError::BadSignature)) => Err(ApiError::unauthorized(
            "bad_signature",
            "message rejected: the signature does not verify under the sending device's key",
        )),
        Ok(Err(WriteError::Store(e))) => Err(ApiError::internal(e)),
        Err(_) => Err(ApiError::internal("message writer dropped the request")),
    }
}

/// `capture = required`: the message needs a receipt from the sender's
/// tenant vault for exactly this message id and ciphertext.
fn check_receipt(
    policy: &crate::CapturePolicy,
    tenant: &TenantId,
    id: &cloister_proto::MessageId,
    env: &Envelope,
) -> Result<(), ApiError> {
    let Some(r) = &env.receipt else {
        return Err(ApiError::forbidden(
            "capture_required",
            "tenant policy requires every message to be captured by the compliance vault first; no vault receipt was attached",
        ));
    };
    policy
        .receipt_key
        .verify(
            cloister_crypto::signed::RECEIPT,
            r.body.as_slice(),
            &r.sig.0,
        )
        .map_err(|_| {
            ApiError::forbidden(
                "bad_receipt",
                "the vault receipt is not signed by the tenant's registered vault",
            )
        })?;
    let receipt: cloister_proto::vault::Receipt = serde_json::from_slice(r.body.as_slice())
        .map_err(|_| ApiError::bad_request("bad_receipt", "the vault receipt is malformed"))?;
    if receipt.tenant != *tenant
        || receipt.message_id != *id
        || receipt.ciphertext_sha256.0 != cloister_crypto::sha256(env.ciphertext.as_slice())
    {
        return Err(ApiError::forbidden(
            "bad_receipt",
            "the vault receipt is for another message or ciphertext",
        ));
    }
    Ok(())
}
