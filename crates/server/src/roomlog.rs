//! Appending to a room's membership log, for a device and for the tenant's
//! KM (its evictions, bans and locks), in one place; and the KM's signed
//! read of a log (to catch up before it signs).
//!
//! ```text
//!  device POST /v1/rooms/{room}/log           (session; entry signed by the device)
//!  KM     POST /v1/km/rooms/{room}/log        (entry signed by the tenant's KM key)
//!  KM     POST /v1/km/rooms/{room}/log-read   (query signed by the KM key, fresh)
//!     └─▶ append_entry: policy::apply + controls + tenant checks ─▶ store ─▶ tell members
//! ```

use crate::Server;
use crate::api::parse_room;
use axum::Json;
use axum::extract::{Path, State};
use cloister_http::{ApiError, ApiJson};
use cloister_proto::b64::Fixed;
use cloister_proto::km::SignedBlob;
use cloister_proto::room::SignedStatement;
use cloister_proto::server::{AppendLog, AppendLogResponse, Event, KmLogQuery, LogPage};
use cloister_proto::{RoomId, TenantId, UserId, limits};
use cloister_store::LogRow;
use std::sync::Arc;

/// Who signed an entry, as the server established it.
pub(crate) struct Signer {
    pub user: UserId,
    pub pk: [u8; 32],
    pub tenant: TenantId,
}

impl Server {
    /// Verify and append one log entry (under the log lock), then tell old
    /// and new members.
    pub(crate) async fn append_entry(
        &self,
        room: &RoomId,
        entry: &SignedStatement,
        by: &Signer,
    ) -> Result<AppendLogResponse, ApiError> {
        let _guard = self.log_lock.lock(&room.to_hex()).await;
        let current = self.room(room).await?;
        let (next, st) = cloister_policy::apply(current.as_deref(), room, entry, &by.user, &by.pk)
            .map_err(|e| match e {
                cloister_policy::PolicyError::Gap { .. }
                | cloister_policy::PolicyError::BrokenChain { .. } => {
                    ApiError::conflict("log_conflict", format!("{e}; fetch the log and retry"))
                }
                cloister_policy::PolicyError::BadSignature { .. } => {
                    ApiError::unauthorized("bad_signature", e.to_string())
                }
                cloister_policy::PolicyError::Locked { .. } => {
                    ApiError::forbidden("locked", e.to_string())
                }
                e => ApiError::forbidden("policy", e.to_string()),
            })?;
        if next.tenant != by.tenant {
            return Err(ApiError::forbidden(
                "wrong_tenant",
                "rooms can only be changed by their own tenant's users",
            ));
        }
        if let Some(u) = next.members.iter().find(|u| u.tenant() != next.tenant) {
            return Err(ApiError::forbidden(
                "cross_tenant",
                format!(
                    "{u} belongs to another firm; cross-firm rooms are not enabled on this server"
                ),
            ));
        }
        // The statement's time is checked here, where it is appended: the KM
        // trusts it later to tell history from a change made now.
        if !cloister_proto::within_skew(st.ts) {
            return Err(ApiError::bad_request(
                "stale_statement",
                "membership statement timestamp is outside the allowed clock skew",
            ));
        }
        self.check_step(&next.tenant, current.as_deref(), &st, &next)?;
        let row = LogRow {
            seq: st.seq,
            entry: serde_json::to_vec(entry).map_err(ApiError::internal)?,
            hash: next.head.to_vec(),
        };
        let members: Vec<String> = next.members.iter().map(|m| m.to_string()).collect();
        let state_bytes = serde_json::to_vec(&next).map_err(ApiError::internal)?;
        self.store
            .append_log(&room.to_hex(), &row, &state_bytes, &members)
            .await
            .map_err(|e| match e {
                cloister_store::StoreError::Conflict(m) => ApiError::conflict("log_conflict", m),
                e => ApiError::internal(e),
            })?;
        let next = Arc::new(next);
        if let Ok(mut m) = self.rooms.lock() {
            m.insert(*room, next.clone());
        }
        if current.is_none() {
            self.store
                .set_room_tenant(&room.to_hex(), next.tenant.as_str())
                .await
                .map_err(ApiError::internal)?;
        }
        let listed =
            next.settings.discoverable && next.kind == cloister_proto::room::RoomKind::Room;
        if current
            .as_ref()
            .is_none_or(|c| c.settings.discoverable != listed)
        {
            self.store
                .set_listed(&room.to_hex(), next.tenant.as_str(), listed)
                .await
                .map_err(ApiError::internal)?;
        }
        let ev = Event::Membership {
            room: *room,
            seq: st.seq,
        };
        if let Ok(j) = serde_json::to_string(&ev) {
            let mut users: Vec<_> = next.members.iter().collect();
            if let Some(cur) = &current {
                users.extend(cur.members.iter().filter(|u| !next.members.contains(*u)));
            }
            self.hub.send(users.into_iter(), None, j.into());
        }
        tracing::info!(%room, seq = st.seq, actor = %by.user, op = st.action.name(), "membership statement accepted");
        Ok(AppendLogResponse {
            seq: st.seq,
            head: Fixed(next.head),
        })
    }

    /// The tenant a KM acts for on `room`, and its key.
    async fn km_of_room(&self, room: &RoomId) -> Result<(TenantId, [u8; 32]), ApiError> {
        let st = self
            .room(room)
            .await?
            .ok_or_else(|| ApiError::not_found("no_such_room", format!("no room {room}")))?;
        let key = self.tenant_key(&st.tenant).await?;
        Ok((st.tenant.clone(), key))
    }
}

/// The firm's discoverable rooms (name, members, settings: what joining
/// needs), for any of its users.
pub(crate) async fn directory(
    State(s): State<Arc<Server>>,
    c: crate::Caller,
) -> Result<Json<Vec<cloister_proto::server::RoomSummary>>, ApiError> {
    let ids = s
        .store
        .listed_rooms(c.tenant.as_str())
        .await
        .map_err(ApiError::internal)?;
    let mut out = Vec::new();
    for id in ids.iter().filter_map(|i| i.parse::<RoomId>().ok()) {
        if let Some(st) = s.room(&id).await?
            && st.settings.discoverable
            && st.tenant == c.tenant
        {
            out.push(crate::api::summary(&st));
        }
    }
    Ok(Json(out))
}

/// A statement the tenant's KM signed (anyone may relay it: the signature
/// is what counts). The KM never creates rooms.
pub(crate) async fn km_append(
    State(s): State<Arc<Server>>,
    Path(room): Path<String>,
    ApiJson(req): ApiJson<AppendLog>,
) -> Result<Json<AppendLogResponse>, ApiError> {
    let room = parse_room(&room)?;
    if !cloister_policy::signed_by_km(&req.entry) {
        return Err(ApiError::forbidden(
            "not_actor",
            "only statements signed by the tenant's KM are taken here",
        ));
    }
    let (tenant, pk) = s.km_of_room(&room).await?;
    let by = Signer {
        user: cloister_policy::km_user(&tenant),
        pk,
        tenant,
    };
    Ok(Json(s.append_entry(&room, &req.entry, &by).await?))
}

/// A KM reads its room's log (to extend the head it signs on).
pub(crate) async fn km_read(
    State(s): State<Arc<Server>>,
    Path(room): Path<String>,
    ApiJson(q): ApiJson<SignedBlob>,
) -> Result<Json<LogPage>, ApiError> {
    let room = parse_room(&room)?;
    let (tenant, pk) = s.km_of_room(&room).await?;
    let query: KmLogQuery = cloister_crypto::signed::verify_blob(
        &pk,
        cloister_crypto::signed::KM_QUERY,
        &q,
        "KM query",
    )
    .map_err(|_| ApiError::forbidden("bad_signature", "query is not signed by the room's KM"))?;
    if query.tenant != tenant || query.room != room {
        return Err(ApiError::forbidden(
            "wrong_tenant",
            "the query names another tenant or room",
        ));
    }
    if !cloister_proto::within_skew(query.ts) {
        return Err(ApiError::unauthorized(
            "stale_request",
            "query timestamp is outside the allowed clock skew",
        ));
    }
    let rows = s
        .store
        .get_log(&room.to_hex(), query.from, limits::MAX_PAGE)
        .await
        .map_err(ApiError::internal)?;
    let entries = rows
        .into_iter()
        .map(|r| serde_json::from_slice(&r.entry))
        .collect::<Result<Vec<SignedStatement>, _>>()
        .map_err(ApiError::internal)?;
    Ok(Json(LogPage { room, entries }))
}
