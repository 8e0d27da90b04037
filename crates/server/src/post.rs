//! Posting a message: the checks a request passes before the writer, the
//! same for an HTTP request and for a `post` frame on the live socket.

use crate::api::parse_room;
use crate::writer::{Job, WriteError};
use crate::{Caller, Server};
use axum::Json;
use axum::extract::{Path, State};
use cloister_http::{ApiError, ApiJson};
use cloister_proto::server::{Envelope, PostMessageResponse};
use cloister_proto::{RoomId, limits};
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
        check_receipt(&policy, &c.cert, &h.id, &env)?;
    }
    // The receipt served its purpose; it is neither stored nor forwarded.
    env.receipt = None;
    let st = s.member_room(&room, &c.user).await?;
    s.check_may_post(&st, &c.user)?;
    if h.mode() != st.settings.mode {
        return Err(ApiError::bad_request(
            "wrong_mode",
            format!(
                "the room is a {} room; the message is sealed for a {} room",
                st.settings.mode.name(),
                h.mode().name()
            ),
        ));
    }
    if h.mode() == cloister_proto::room::RoomMode::Mls {
        s.check_mls_post(&room, &st, h.epoch).await?;
    } else if h.epoch != st.epoch {
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
    sender: &cloister_proto::km::DeviceCert,
    id: &cloister_proto::MessageId,
    env: &Envelope,
) -> Result<(), ApiError> {
    let tenant = &sender.tenant;
    let Some(r) = &env.receipt else {
        return Err(ApiError::forbidden(
            "capture_required",
            "tenant policy requires every message to be captured by the compliance vault first; no vault receipt was attached",
        ));
    };
    // a sender certified in a jurisdiction with its own vault needs that
    // vault's receipt, and only that vault's
    policy
        .receipt_key_for(&sender.jurisdiction)
        .verify(
            cloister_crypto::signed::RECEIPT,
            r.body.as_slice(),
            &r.sig.0,
        )
        .map_err(|_| {
            ApiError::forbidden(
                "bad_receipt",
                "the vault receipt is not signed by the vault the tenant registered for this sender",
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use cloister_crypto::KmSigner;
    use cloister_proto::b64::{Bytes, Fixed};
    use cloister_proto::km::{DeviceCert, RegionalVault, Role};

    fn sender(jurisdiction: &str) -> DeviceCert {
        DeviceCert {
            tenant: "acme".parse().unwrap(),
            user: "alice@acme".parse().unwrap(),
            device: cloister_proto::DeviceId([1; 16]),
            sign_pk: Fixed([2; 32]),
            hpke_pk: Fixed([3; 32]),
            roles: vec![Role::User],
            issued_at: 1,
            not_after: 2,
            jurisdiction: jurisdiction.into(),
        }
    }

    #[test]
    fn a_sender_in_a_pinned_jurisdiction_needs_that_vaults_receipt() {
        let (default, uk) = (KmSigner::generate().unwrap(), KmSigner::generate().unwrap());
        let policy = crate::CapturePolicy::of(
            &default.public(),
            &[RegionalVault {
                jurisdiction: "UK".into(),
                receipt_pk: Fixed(uk.public()),
            }],
            true,
            1,
        )
        .unwrap();
        let id = cloister_proto::MessageId([9; 16]);
        let ciphertext = Bytes(b"sealed".to_vec());
        let env_from = |vault: &KmSigner| {
            let r = cloister_proto::vault::Receipt {
                tenant: "acme".parse().unwrap(),
                message_id: id,
                ciphertext_sha256: Fixed(cloister_crypto::sha256(ciphertext.as_slice())),
                envelope_sha256: Fixed([0; 32]),
                received_ms: 1,
                log_index: 0,
            };
            Envelope {
                header: Bytes(vec![]),
                ciphertext: ciphertext.clone(),
                sig: Fixed([0; 64]),
                receipt: Some(cloister_crypto::signed::sign_receipt(vault, &r).unwrap()),
            }
        };
        let code = |r: Result<(), ApiError>| r.err().map(|e| e.code);
        // the UK sender: the UK vault's receipt only
        assert_eq!(
            code(check_receipt(&policy, &sender("UK"), &id, &env_from(&uk))),
            None
        );
        assert_eq!(
            code(check_receipt(
                &policy,
                &sender("UK"),
                &id,
                &env_from(&default)
            )),
            Some("bad_receipt")
        );
        // everyone else: the default vault's only
        for j in ["", "US-NY"] {
            assert_eq!(
                code(check_receipt(&policy, &sender(j), &id, &env_from(&default))),
                None
            );
            assert_eq!(
                code(check_receipt(&policy, &sender(j), &id, &env_from(&uk))),
                Some("bad_receipt")
            );
        }
    }
}
