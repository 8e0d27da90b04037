//! Appending to a room's membership log, for a device and for the tenant's
//! KM (its evictions, bans and locks), in one place; and the KM's signed
//! read of a log (to catch up before it signs).
//!
//! ```text
//!  device POST /v1/rooms/{room}/log           (session; entry signed by the device)
//!  KM     POST /v1/km/rooms/{room}/log        (entry signed by the tenant's KM key)
//!  KM     POST /v1/km/log                     (KM-signed entries of many rooms, one transaction)
//!  KM     POST /v1/km/rooms/{room}/log-read   (query signed by the KM key, fresh)
//!     └─▶ append_entry: policy::apply + controls + tenant checks ─▶ store ─▶ tell members
//! ```

use crate::Server;
use crate::api::parse_room;
use axum::Json;
use axum::extract::{Path, State};
use cloister_http::{ApiError, ApiJson};
use cloister_policy::RoomState;
use cloister_proto::ErrorBody;
use cloister_proto::b64::Fixed;
use cloister_proto::km::SignedBlob;
use cloister_proto::room::SignedStatement;
use cloister_proto::room::Statement;
use cloister_proto::server::{
    AppendLog, AppendLogResponse, AppendOutcome, Event, KmAppendBatch, KmAppendBatchResponse,
    KmLogQuery, LogPage,
};
use cloister_proto::{RoomId, TenantId, UserId, limits};
use cloister_store::LogRow;
use std::sync::Arc;

/// Firms' registered KM keys, for checking connection proofs.
type FirmKeys = std::collections::HashMap<TenantId, [u8; 32]>;

/// Who signed an entry, as the server established it.
pub(crate) struct Signer {
    pub user: UserId,
    pub pk: [u8; 32],
    pub tenant: TenantId,
}

/// A verified entry, ready to store, with what telling members needs.
struct Staged {
    current: Option<Arc<RoomState>>,
    next: Arc<RoomState>,
    st: Statement,
    row: LogRow,
    actor: UserId,
}

fn policy_error(e: cloister_policy::PolicyError) -> ApiError {
    match e {
        cloister_policy::PolicyError::Gap { .. }
        | cloister_policy::PolicyError::BrokenChain { .. } => {
            ApiError::conflict("log_conflict", format!("{e}; fetch the log and retry"))
        }
        cloister_policy::PolicyError::BadSignature { .. } => {
            ApiError::unauthorized("bad_signature", e.to_string())
        }
        cloister_policy::PolicyError::Locked { .. } => ApiError::forbidden("locked", e.to_string()),
        e => ApiError::forbidden("policy", e.to_string()),
    }
}

fn store_error(e: cloister_store::StoreError) -> ApiError {
    match e {
        cloister_store::StoreError::Conflict(m) => ApiError::conflict("log_conflict", m),
        e => ApiError::internal(e),
    }
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
        let keys = self.proof_keys(entry).await?;
        let _guard = self.log_lock.lock(room).await;
        let current = self.room(room).await?;
        let staged = self.stage(room, current, entry, by, &keys)?;
        let members = member_list(&staged.next);
        let state = serde_json::to_vec(&*staged.next).map_err(ApiError::internal)?;
        self.store
            .append_log(
                room,
                staged.row.seq.checked_sub(1),
                std::slice::from_ref(&staged.row),
                &state,
                &members,
            )
            .await
            .map_err(|e| {
                // another node appended first: this node's copy is stale
                self.forget_room(room);
                store_error(e)
            })?;
        self.publish(room, &staged).await
    }

    /// Every check an entry must pass before it is stored: the room's
    /// policy, its tenant, this deployment's reach, the statement's time
    /// and the tenant's controls.
    fn stage(
        &self,
        room: &RoomId,
        current: Option<Arc<RoomState>>,
        entry: &SignedStatement,
        by: &Signer,
        keys: &FirmKeys,
    ) -> Result<Staged, ApiError> {
        let (next, st) = cloister_policy::apply(current.as_deref(), room, entry, &by.user, &by.pk)
            .map_err(policy_error)?;
        if by.user.tenant() != by.tenant {
            return Err(ApiError::forbidden(
                "wrong_tenant",
                "a statement is signed by its own firm's device or KM",
            ));
        }
        // Users of several firms: an IM or an external room, and for each
        // user of another firm than the actor's a connection, both halves
        // signed under the firms' registered KM keys.
        let keys_of = |t: &TenantId| keys.get(t).copied();
        cloister_policy::federation::check_step(current.as_deref(), &st, &next, &keys_of)
            .map_err(|e| ApiError::forbidden(e.code(), e.to_string()))?;
        // The statement's time is checked here, where it is appended: the KM
        // trusts it later to tell history from a change made now.
        if !cloister_proto::within_skew(st.ts) {
            return Err(ApiError::bad_request(
                "stale_statement",
                "membership statement timestamp is outside the allowed clock skew",
            ));
        }
        self.check_step(current.as_deref(), &st, &next)?;
        let row = LogRow {
            seq: st.seq,
            entry: serde_json::to_vec(entry).map_err(ApiError::internal)?,
            hash: next.head.to_vec(),
        };
        Ok(Staged {
            current,
            next: Arc::new(next),
            st,
            row,
            actor: by.user.clone(),
        })
    }

    /// After an entry is stored: the cached state, the room indexes, and a
    /// membership event to old and new members.
    async fn publish(&self, room: &RoomId, s: &Staged) -> Result<AppendLogResponse, ApiError> {
        let (current, next, st) = (&s.current, &s.next, &s.st);
        if let Ok(mut m) = self.rooms.lock() {
            m.insert(*room, next.clone());
        }
        if current.is_none() {
            self.store
                .set_room_tenant(room, &next.tenant)
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
                .set_listed(room, &next.tenant, listed)
                .await
                .map_err(ApiError::internal)?;
        }
        let ev = Event::Membership {
            room: *room,
            seq: st.seq,
        };
        if let Ok(event) = serde_json::to_string(&ev) {
            let mut users: Vec<_> = next.members.iter().cloned().collect();
            if let Some(cur) = current {
                users.extend(
                    cur.members
                        .iter()
                        .filter(|u| !next.members.contains(*u))
                        .cloned(),
                );
            }
            let d = crate::cluster::Delivery {
                tenant: next.tenant.clone(),
                users,
                skip: None,
                watchers: false,
                event,
            };
            self.fanout.room(*room, d).await;
        }
        tracing::info!(%room, seq = st.seq, actor = %s.actor, op = st.action.name(), "membership statement accepted");
        Ok(AppendLogResponse {
            seq: st.seq,
            head: Fixed(next.head),
        })
    }

    /// KM-signed statements for many rooms, stored in one transaction.
    /// Each room's entries are checked in order against its state under its
    /// log lock (locks taken in room order); a refused entry refuses that
    /// room's later entries, and the other rooms go on.
    async fn km_append_batch(&self, entries: &[SignedStatement]) -> Vec<AppendOutcome> {
        use std::collections::BTreeMap;
        // each room's entries, in their order
        let mut out: Vec<AppendOutcome> = Vec::with_capacity(entries.len());
        let mut by_room: BTreeMap<RoomId, Vec<usize>> = BTreeMap::new();
        for (i, e) in entries.iter().enumerate() {
            let peek = cloister_crypto::signed::peek_statement(e);
            let (room, seq) = peek
                .as_ref()
                .map_or((RoomId([0; 16]), 0), |p| (p.room, p.seq));
            out.push(AppendOutcome {
                room,
                seq,
                head: None,
                error: None,
            });
            match peek {
                Err(e) => {
                    out[i].error = Some(body(ApiError::bad_request("bad_statement", e.to_string())))
                }
                Ok(_) => by_room.entry(room).or_default().push(i),
            }
        }
        let mut guards = Vec::with_capacity(by_room.len());
        for room in by_room.keys() {
            guards.push(self.log_lock.lock(room).await);
        }
        // stage every room's entries against its state
        let mut staged: Vec<(RoomId, Vec<(usize, Staged)>)> = Vec::new();
        // a statement its room's KM did not sign ends the reading: one
        // signature check is all a forged batch costs the server
        let mut forged = false;
        for (room, idx) in &by_room {
            if forged {
                refuse_from(
                    &mut out,
                    idx,
                    idx[0],
                    ApiError::forbidden(
                        "after_forged",
                        "an earlier statement of this batch was not signed by its room's KM; the rest was not read",
                    ),
                );
                continue;
            }
            let mut done = Vec::new();
            let first = match self.km_of_room(room).await {
                Ok((tenant, pk)) => {
                    let by = Signer {
                        user: cloister_policy::km_user(&tenant),
                        pk,
                        tenant,
                    };
                    match self.room(room).await {
                        Ok(mut current) => {
                            let mut failed = None;
                            for &i in idx {
                                let staged = if cloister_policy::signed_by_km(&entries[i]) {
                                    // a KM's statements bring no one in: no proofs
                                    self.stage(
                                        room,
                                        current.clone(),
                                        &entries[i],
                                        &by,
                                        &FirmKeys::new(),
                                    )
                                } else {
                                    Err(ApiError::forbidden(
                                        "not_actor",
                                        "only statements signed by the tenant's KM are taken here",
                                    ))
                                };
                                match staged {
                                    Ok(s) => {
                                        current = Some(s.next.clone());
                                        done.push((i, s));
                                    }
                                    Err(e) => {
                                        failed = Some((i, e));
                                        break;
                                    }
                                }
                            }
                            failed
                        }
                        Err(e) => Some((idx[0], e)),
                    }
                }
                Err(e) => Some((idx[0], e)),
            };
            if let Some((i, e)) = first {
                forged = matches!(e.code, "bad_signature" | "not_actor");
                refuse_from(&mut out, idx, i, e);
            }
            if !done.is_empty() {
                staged.push((*room, done));
            }
        }
        // one transaction for every room
        type Rows = (RoomId, Vec<LogRow>, Vec<u8>, Vec<String>, Option<u64>);
        let rows: Result<Vec<Rows>, ApiError> = staged
            .iter()
            .map(|(room, done)| {
                let (first, last) = (&done[0].1, &done[done.len() - 1].1);
                Ok((
                    *room,
                    done.iter().map(|(_, s)| s.row.clone()).collect(),
                    serde_json::to_vec(&*last.next).map_err(ApiError::internal)?,
                    member_list(&last.next),
                    first.current.as_ref().map(|c| c.seq),
                ))
            })
            .collect();
        let rows = match rows {
            Ok(r) => r,
            Err(e) => {
                fail_all(&mut out, &staged, &e);
                return out;
            }
        };
        let batch: Vec<cloister_store::RoomAppend<'_>> = rows
            .iter()
            .map(
                |(room, entries, state, members, expected)| cloister_store::RoomAppend {
                    room,
                    expected_seq: *expected,
                    entries,
                    state,
                    members,
                },
            )
            .collect();
        if let Err(e) = self.store.append_logs(&batch).await {
            for (room, _) in &staged {
                self.forget_room(room);
            }
            fail_all(&mut out, &staged, &store_error(e));
            return out;
        }
        for (room, done) in &staged {
            for (i, s) in done {
                match self.publish(room, s).await {
                    Ok(r) => out[*i].head = Some(r.head),
                    // stored: the index or the event failed, not the entry
                    Err(e) => tracing::warn!(%room, error = %e.message, "after a batch append"),
                }
            }
        }
        drop(guards);
        out
    }

    /// The registered KM keys of the firms a statement's connection proofs
    /// name; a proof of a connection the server saw removed is refused.
    async fn proof_keys(&self, entry: &SignedStatement) -> Result<FirmKeys, ApiError> {
        let mut keys = FirmKeys::new();
        let Ok(st) = cloister_crypto::signed::peek_statement(entry) else {
            return Ok(keys);
        };
        if st.connections.len() > cloister_policy::federation::MAX_PROOFS {
            return Ok(keys); // the policy check names the limit
        }
        for p in &st.connections {
            let Ok(req) = cloister_crypto::signed::peek_blob::<
                cloister_proto::federation::ConnectionRequest,
            >(&p.request, "connection request") else {
                continue;
            };
            for t in [req.from.tenant(), req.to.tenant()] {
                if !keys.contains_key(&t)
                    && let Ok(k) = self.tenant_key(&t).await
                {
                    keys.insert(t, k);
                }
            }
            let id = cloister_crypto::signed::connection_id(&p.request);
            if let Some(row) = self
                .store
                .get_connection(&id)
                .await
                .map_err(ApiError::internal)?
                && row.removal.is_some()
            {
                return Err(ApiError::forbidden(
                    "connection_removed",
                    format!(
                        "the connection between {} and {} was ended",
                        req.from, req.to
                    ),
                ));
            }
        }
        Ok(keys)
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
#[utoipa::path(get, path = "/v1/room-directory", tag = "rooms", security(("session" = [])), responses((status = 200, body = Vec<cloister_proto::server::RoomSummary>), (status = "default", description = "refused: the error body names why", body = cloister_proto::ErrorBody)))]
pub(crate) async fn directory(
    State(s): State<Arc<Server>>,
    c: crate::Caller,
) -> Result<Json<Vec<cloister_proto::server::RoomSummary>>, ApiError> {
    let ids = s
        .store
        .listed_rooms(&c.tenant)
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
#[utoipa::path(post, path = "/v1/km/rooms/{room}/log", tag = "km", params(("room" = String, Path, description = "room id, 32 hex digits")), request_body = cloister_proto::server::AppendLog, responses((status = 200, body = cloister_proto::server::AppendLogResponse), (status = "default", description = "refused: the error body names why", body = cloister_proto::ErrorBody)))]
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

/// Many KM-signed statements at once (a barrier's evictions across rooms).
#[utoipa::path(post, path = "/v1/km/log", tag = "km", request_body = cloister_proto::server::KmAppendBatch, responses((status = 200, body = cloister_proto::server::KmAppendBatchResponse), (status = "default", description = "refused: the error body names why", body = cloister_proto::ErrorBody)))]
pub(crate) async fn km_append_batch(
    State(s): State<Arc<Server>>,
    ApiJson(req): ApiJson<KmAppendBatch>,
) -> Result<Json<KmAppendBatchResponse>, ApiError> {
    if req.entries.len() > limits::MAX_KM_BATCH {
        return Err(ApiError::too_large(format!(
            "at most {} statements per batch",
            limits::MAX_KM_BATCH
        )));
    }
    Ok(Json(KmAppendBatchResponse {
        results: s.km_append_batch(&req.entries).await,
    }))
}

/// A KM reads its room's log (to extend the head it signs on).
#[utoipa::path(post, path = "/v1/km/rooms/{room}/log-read", tag = "km", params(("room" = String, Path, description = "room id, 32 hex digits")), request_body = cloister_proto::km::SignedBlob, responses((status = 200, body = cloister_proto::server::LogPage), (status = "default", description = "refused: the error body names why", body = cloister_proto::ErrorBody)))]
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
        .room_log(&room, query.from, limits::MAX_PAGE)
        .await
        .map_err(ApiError::internal)?;
    let entries = rows
        .into_iter()
        .map(|r| serde_json::from_slice(&r.entry))
        .collect::<Result<Vec<SignedStatement>, _>>()
        .map_err(ApiError::internal)?;
    Ok(Json(LogPage { room, entries }))
}

fn member_list(st: &RoomState) -> Vec<String> {
    st.members.iter().map(|m| m.to_string()).collect()
}

fn body(e: ApiError) -> ErrorBody {
    ErrorBody {
        error: e.code.to_string(),
        message: e.message,
    }
}

/// Nothing staged was stored.
fn fail_all(out: &mut [AppendOutcome], staged: &[(RoomId, Vec<(usize, Staged)>)], e: &ApiError) {
    for (_, done) in staged {
        for (i, _) in done {
            out[*i].error = Some(body(e.clone()));
        }
    }
}

/// Entry `i` of a room was refused: it and the room's later entries fail.
fn refuse_from(out: &mut [AppendOutcome], idx: &[usize], i: usize, e: ApiError) {
    for &j in idx.iter().filter(|&&j| j >= i) {
        out[j].error = Some(if j == i {
            body(e.clone())
        } else {
            ErrorBody {
                error: "after_refused".into(),
                message: format!("an earlier statement of room {} was refused", out[j].room),
            }
        });
    }
}
