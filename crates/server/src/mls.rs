//! The server as MLS delivery service (MLS rooms, ADR 0028).
//!
//! | method | path | auth | body / answer |
//! |---|---|---|---|
//! | GET/POST | `/v1/mls/key-packages` | session | `UploadKeyPackages` → `KeyPackageCount` |
//! | POST | `/v1/rooms/{room}/mls/claim` | member | `ClaimKeyPackages` → `ClaimedKeyPackages` |
//! | GET | `/v1/rooms/{room}/mls` | member | `GroupStatus` |
//! | PUT | `/v1/rooms/{room}/mls/group` | member | `InitGroup` |
//! | GET/POST | `/v1/rooms/{room}/mls/commits` | member | `CommitPage` / `PostCommit` → `CommitAccepted` |
//! | GET | `/v1/mls/welcomes` | session | `Welcomes` |
//! | DELETE | `/v1/mls/welcomes/{room}` | session | |
//!
//! The server holds no MLS secret: it follows each group's public state
//! (`cloister_mls::Observer`), orders commits per epoch (the first valid
//! one stored wins, atomically), and checks each commit against the room's
//! membership log with the same rules every member runs.

use crate::api::parse_room;
use crate::{Caller, Server};
use axum::Json;
use axum::extract::{Path, Query, State};
use cloister_http::{ApiError, ApiJson};
use cloister_mls::{CommitRefusal, Expected, KmIdentity, LogBinding, Observed, Observer};
use cloister_policy::RoomState;
use cloister_proto::b64::Bytes;
use cloister_proto::mls::{
    ClaimKeyPackages, ClaimedKeyPackage, ClaimedKeyPackages, CommitAccepted, CommitPage,
    GroupStatus, InitGroup, KeyPackageCount, MAX_KEY_PACKAGE, MAX_KEY_PACKAGES, OrderedCommit,
    PendingWelcome, PostCommit, UploadKeyPackages, Welcomes,
};
use cloister_proto::room::RoomMode;
use cloister_proto::server::{Event, Ok as OkBody};
use cloister_proto::{DeviceId, RoomId, TenantId};
use cloister_standing::Facts;
use serde::Deserialize;
use std::collections::BTreeSet;
use std::sync::Arc;

type S = State<Arc<Server>>;

fn mls_error(e: cloister_mls::Error) -> ApiError {
    use cloister_mls::Error as E;
    match e {
        E::Refused(CommitRefusal::StaleEpoch { got, current }) => ApiError::conflict(
            "stale_epoch",
            format!("the commit is for epoch {got}; the group is at epoch {current}"),
        ),
        E::Refused(r @ CommitRefusal::WrongLogEntry { .. }) => {
            ApiError::conflict("log_behind", r.to_string())
        }
        E::Refused(r) => ApiError::forbidden("commit_refused", r.to_string()),
        E::Malformed(what) => ApiError::bad_request("bad_mls", format!("malformed {what}")),
        E::Mls(m) => ApiError::bad_request("bad_mls", m),
        E::Untrusted(_) => ApiError::forbidden("untrusted_firm", e.to_string()),
        E::NoGroup | E::NotInGroup(_) => ApiError::internal(e),
    }
}

fn no_group(room: &RoomId) -> ApiError {
    ApiError::conflict(
        "no_group",
        format!("the MLS group of room {room} was not set up by its creator yet"),
    )
}

impl Server {
    /// The KM keys a room's leaves may be certified under: those of its
    /// members' firms, as registered on this server.
    async fn mls_identity(&self, st: &RoomState) -> Result<KmIdentity, ApiError> {
        let tenants: BTreeSet<TenantId> = st.members.iter().map(|u| u.tenant()).collect();
        let mut keys = Vec::with_capacity(tenants.len());
        for t in tenants {
            let k = self.tenant_key(&t).await?;
            keys.push((t, k));
        }
        Ok(KmIdentity::new(keys))
    }

    /// What the verified log and the deny list allow now.
    fn mls_expected(&self, st: &RoomState, devices: impl Iterator<Item = DeviceId>) -> Expected {
        let deny = self.deny.read().ok();
        let disabled = |u: &cloister_proto::UserId| deny.as_ref().is_some_and(|d| d.is_disabled(u));
        let revoked = |d: &DeviceId| deny.as_ref().is_some_and(|l| l.is_revoked(d));
        Expected {
            binding: LogBinding {
                seq: st.seq,
                head: st.head,
            },
            members: st
                .members
                .iter()
                .filter(|u| !disabled(u))
                .cloned()
                .collect(),
            barred: devices.filter(|d| revoked(d)).collect(),
        }
    }

    /// An MLS room the caller is a member of.
    async fn mls_room(&self, room: &RoomId, c: &Caller) -> Result<Arc<RoomState>, ApiError> {
        let st = self.member_room(room, &c.user).await?;
        if st.settings.mode != RoomMode::Mls {
            return Err(ApiError::bad_request(
                "not_mls",
                format!("room {room} is a managed room, not an MLS room"),
            ));
        }
        Ok(st)
    }

    async fn observed(
        &self,
        room: &RoomId,
        st: &RoomState,
    ) -> Result<(Observer, Observed, cloister_store::MlsGroupRow), ApiError> {
        let row = self
            .store
            .mls_group(room)
            .await
            .map_err(ApiError::internal)?
            .ok_or_else(|| no_group(room))?;
        let observer = Observer::new(self.mls_identity(st).await?);
        let observed = observer.load(&row.state).map_err(ApiError::internal)?;
        Ok((observer, observed, row))
    }

    /// Before a message is accepted in an MLS room: the header's epoch is
    /// the group's, and no leaf of this epoch has outstayed the grace period
    /// (a revoked device, a disabled user or a non-member still in the
    /// group: a member must commit its removal first).
    pub(crate) async fn check_mls_post(
        &self,
        room: &RoomId,
        st: &RoomState,
        epoch: u64,
    ) -> Result<(), ApiError> {
        let (current, stale_since) = self
            .store
            .mls_epoch(room)
            .await
            .map_err(ApiError::internal)?
            .ok_or_else(|| no_group(room))?;
        if epoch != current {
            return Err(ApiError::conflict(
                "stale_epoch",
                format!("the group is at epoch {current}; message was sealed for epoch {epoch}"),
            ));
        }
        let cached = self.mls_rosters.lock().ok().and_then(|m| {
            m.get(room)
                .filter(|(e, _)| *e == current)
                .map(|(_, r)| r.clone())
        });
        let roster = match cached {
            Some(r) => r,
            None => {
                let (_, observed, row) = self.observed(room, st).await?;
                let r = Arc::new(observed.roster());
                if let Ok(mut m) = self.mls_rosters.lock() {
                    m.insert(*room, (row.epoch, r.clone()));
                }
                if row.epoch != current {
                    // a commit landed in between: the sender must catch up
                    return Err(ApiError::conflict(
                        "stale_epoch",
                        format!("the group moved to epoch {}", row.epoch),
                    ));
                }
                r
            }
        };
        let row = cloister_store::MlsGroupRow {
            epoch: current,
            state: Vec::new(),
            stale_since,
        };
        let expected = self.mls_expected(st, roster.iter().map(|l| l.device));
        let outstaying: Vec<_> = roster
            .iter()
            .filter(|l| !expected.allows(&l.user, &l.device))
            .collect();
        let now = cloister_proto::now_millis();
        match (outstaying.first(), row.stale_since) {
            (None, None) => Ok(()),
            (None, Some(_)) => {
                self.store
                    .set_mls_stale_since(room, row.epoch, None)
                    .await
                    .map_err(ApiError::internal)?;
                Ok(())
            }
            (Some(_), None) => {
                self.store
                    .set_mls_stale_since(room, row.epoch, Some(now))
                    .await
                    .map_err(ApiError::internal)?;
                Ok(())
            }
            (Some(l), Some(since)) if now.saturating_sub(since) > self.config.mls_grace_ms => {
                Err(ApiError::conflict(
                    "commit_required",
                    format!(
                        "epoch {} still holds device {} of {}, which is revoked, disabled or no longer a member; a member must commit its removal before anyone posts",
                        row.epoch, l.device, l.user
                    ),
                ))
            }
            (Some(_), Some(_)) => Ok(()),
        }
    }
}

/// `POST /v1/mls/key-packages`.
#[utoipa::path(post, path = "/v1/mls/key-packages", tag = "mls", request_body = UploadKeyPackages, security(("session" = [])), responses((status = 200, body = KeyPackageCount), (status = "default", description = "refused", body = cloister_proto::ErrorBody)))]
pub(crate) async fn upload_key_packages(
    State(s): S,
    c: Caller,
    ApiJson(req): ApiJson<UploadKeyPackages>,
) -> Result<Json<KeyPackageCount>, ApiError> {
    if req.key_packages.len() > MAX_KEY_PACKAGES {
        return Err(ApiError::too_large(format!(
            "at most {MAX_KEY_PACKAGES} key packages at once"
        )));
    }
    let observer = Observer::new(KmIdentity::new([(
        c.tenant.clone(),
        s.tenant_key(&c.tenant).await?,
    )]));
    let check = |b: &Bytes| -> Result<(String, Vec<u8>), ApiError> {
        if b.len() > MAX_KEY_PACKAGE {
            return Err(ApiError::too_large(format!(
                "a key package is at most {MAX_KEY_PACKAGE} bytes"
            )));
        }
        let (cert, reference) = observer.key_package(b.as_slice()).map_err(mls_error)?;
        if cert.device != c.device {
            return Err(ApiError::forbidden(
                "not_your_device",
                "a device uploads only its own key packages",
            ));
        }
        Ok((reference, b.0.clone()))
    };
    let one_time = req
        .key_packages
        .iter()
        .map(check)
        .collect::<Result<Vec<_>, _>>()?;
    let last_resort = req.last_resort.as_ref().map(check).transpose()?;
    let (had, _) = s
        .store
        .key_package_count(&c.device)
        .await
        .map_err(ApiError::internal)?;
    s.store
        .put_key_packages(&c.device, &one_time, last_resort.as_ref(), MAX_KEY_PACKAGES)
        .await
        .map_err(ApiError::internal)?;
    if had == 0 && !one_time.is_empty() {
        s.prompt_new_device(&c).await;
    }
    count(&s, &c.device).await
}

impl Server {
    /// A device put up its first key packages: tell the members of each
    /// MLS room of its user whose group lacks it, so that one of them adds
    /// it.
    async fn prompt_new_device(&self, c: &Caller) {
        let Ok(rows) = self.store.rooms_of_user(&c.user).await else {
            return;
        };
        for row in rows {
            let Ok(Some(st)) = self.room(&row.room).await else {
                continue;
            };
            if st.settings.mode != RoomMode::Mls || !st.is_member(&c.user) {
                continue;
            }
            let Ok((_, observed, _)) = self.observed(&row.room, &st).await else {
                continue;
            };
            if observed.roster().iter().any(|l| l.device == c.device) {
                continue;
            }
            let ev = Event::MlsNewDevice {
                room: row.room,
                device: c.device,
            };
            if let Ok(event) = serde_json::to_string(&ev) {
                let d = crate::cluster::Delivery {
                    tenant: st.tenant.clone(),
                    users: st.members.iter().cloned().collect(),
                    skip: Some(c.device),
                    watchers: false,
                    event,
                };
                self.fanout.room(row.room, d).await;
            }
        }
    }
}

async fn count(s: &Server, device: &DeviceId) -> Result<Json<KeyPackageCount>, ApiError> {
    let (one_time, last_resort) = s
        .store
        .key_package_count(device)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(KeyPackageCount {
        one_time,
        last_resort,
    }))
}

/// `GET /v1/mls/key-packages`: how many the server holds for the caller.
#[utoipa::path(get, path = "/v1/mls/key-packages", tag = "mls", security(("session" = [])), responses((status = 200, body = KeyPackageCount)))]
pub(crate) async fn key_package_count(
    State(s): S,
    c: Caller,
) -> Result<Json<KeyPackageCount>, ApiError> {
    count(&s, &c.device).await
}

/// `POST /v1/rooms/{room}/mls/claim`.
#[utoipa::path(post, path = "/v1/rooms/{room}/mls/claim", tag = "mls", params(("room" = String, Path, description = "room id")), request_body = ClaimKeyPackages, security(("session" = [])), responses((status = 200, body = ClaimedKeyPackages), (status = "default", description = "refused", body = cloister_proto::ErrorBody)))]
pub(crate) async fn claim(
    State(s): S,
    c: Caller,
    Path(room): Path<String>,
    ApiJson(req): ApiJson<ClaimKeyPackages>,
) -> Result<Json<ClaimedKeyPackages>, ApiError> {
    let room = parse_room(&room)?;
    let st = s.mls_room(&room, &c).await?;
    if !st.is_member(&req.user) {
        return Err(ApiError::forbidden(
            "not_member",
            format!(
                "{} is not a member of room {room}: add them to the room first",
                req.user
            ),
        ));
    }
    // devices already holding a leaf need no key package
    let (_, observed, _) = s.observed(&room, &st).await?;
    let in_group: BTreeSet<DeviceId> = observed.roster().into_iter().map(|l| l.device).collect();
    let mut out = Vec::new();
    for row in s
        .store
        .devices_of_user(&req.user)
        .await
        .map_err(ApiError::internal)?
    {
        let Ok(device) = row.device.parse::<DeviceId>() else {
            continue;
        };
        if in_group.contains(&device) {
            continue;
        }
        let Ok(cert) = s.cert(&device).await else {
            continue;
        };
        if row.revoked || s.check_standing(&cert.cert).is_err() {
            continue;
        }
        if let Some(kp) = s
            .store
            .claim_key_package(&device)
            .await
            .map_err(ApiError::internal)?
        {
            out.push(ClaimedKeyPackage {
                device,
                key_package: Bytes(kp),
            });
        }
    }
    Ok(Json(ClaimedKeyPackages { key_packages: out }))
}

/// `GET /v1/rooms/{room}/mls`.
#[utoipa::path(get, path = "/v1/rooms/{room}/mls", tag = "mls", params(("room" = String, Path, description = "room id")), security(("session" = [])), responses((status = 200, body = GroupStatus), (status = "default", description = "refused", body = cloister_proto::ErrorBody)))]
pub(crate) async fn status(
    State(s): S,
    c: Caller,
    Path(room): Path<String>,
) -> Result<Json<GroupStatus>, ApiError> {
    let room = parse_room(&room)?;
    let st = s.mls_room(&room, &c).await?;
    let (_, observed, row) = s.observed(&room, &st).await?;
    Ok(Json(GroupStatus {
        room,
        epoch: row.epoch,
        devices: observed.roster().into_iter().map(|l| l.device).collect(),
    }))
}

/// `PUT /v1/rooms/{room}/mls/group`: the creator's new group.
#[utoipa::path(put, path = "/v1/rooms/{room}/mls/group", tag = "mls", params(("room" = String, Path, description = "room id")), request_body = InitGroup, security(("session" = [])), responses((status = 200, body = cloister_proto::server::Ok), (status = "default", description = "refused", body = cloister_proto::ErrorBody)))]
pub(crate) async fn init_group(
    State(s): S,
    c: Caller,
    Path(room): Path<String>,
    ApiJson(req): ApiJson<InitGroup>,
) -> Result<Json<OkBody>, ApiError> {
    let room = parse_room(&room)?;
    let st = s.mls_room(&room, &c).await?;
    let observer = Observer::new(s.mls_identity(&st).await?);
    let observed = observer
        .observe(&room, req.group_info.as_slice())
        .map_err(mls_error)?;
    let roster = observed.roster();
    if observed.epoch() != 0 || roster.len() != 1 || roster[0].device != c.device {
        return Err(ApiError::bad_request(
            "bad_mls",
            "a new group is at epoch 0 with the creating device as its only leaf",
        ));
    }
    let state = observed.snapshot().map_err(ApiError::internal)?;
    if !s
        .store
        .init_mls_group(&room, &state)
        .await
        .map_err(ApiError::internal)?
    {
        return Err(ApiError::conflict(
            "group_exists",
            format!("room {room} has its MLS group already"),
        ));
    }
    Ok(Json(OkBody { ok: true }))
}

#[derive(Deserialize)]
pub(crate) struct FromEpoch {
    #[serde(default)]
    from: u64,
}

/// `GET /v1/rooms/{room}/mls/commits?from=E`.
#[utoipa::path(get, path = "/v1/rooms/{room}/mls/commits", tag = "mls", params(("room" = String, Path, description = "room id"), ("from" = Option<u64>, Query, description = "first epoch")), security(("session" = [])), responses((status = 200, body = CommitPage), (status = "default", description = "refused", body = cloister_proto::ErrorBody)))]
pub(crate) async fn commits(
    State(s): S,
    c: Caller,
    Path(room): Path<String>,
    Query(q): Query<FromEpoch>,
) -> Result<Json<CommitPage>, ApiError> {
    let room = parse_room(&room)?;
    s.mls_room(&room, &c).await?;
    let rows = s
        .store
        .mls_commits(&room, q.from, cloister_proto::limits::MAX_PAGE)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(CommitPage {
        commits: rows
            .into_iter()
            .map(|(epoch, b)| OrderedCommit {
                epoch,
                commit: Bytes(b),
            })
            .collect(),
    }))
}

/// `POST /v1/rooms/{room}/mls/commits`: order a commit.
#[utoipa::path(post, path = "/v1/rooms/{room}/mls/commits", tag = "mls", params(("room" = String, Path, description = "room id")), request_body = PostCommit, security(("session" = [])), responses((status = 200, body = CommitAccepted), (status = "default", description = "refused", body = cloister_proto::ErrorBody)))]
pub(crate) async fn post_commit(
    State(s): S,
    c: Caller,
    Path(room): Path<String>,
    ApiJson(req): ApiJson<PostCommit>,
) -> Result<Json<CommitAccepted>, ApiError> {
    let room = parse_room(&room)?;
    let st = s.mls_room(&room, &c).await?;
    if let Some(lock) = &st.locked {
        return Err(ApiError::forbidden(
            "room_locked",
            format!("room {room} is locked by {}", lock.by),
        ));
    }
    let (observer, mut observed, row) = s.observed(&room, &st).await?;
    let roster = observed.roster();
    if !roster.iter().any(|l| l.device == c.device) {
        return Err(ApiError::forbidden(
            "not_in_group",
            "only a device holding a leaf of the group commits",
        ));
    }
    let added = Observed::added_devices(req.commit.as_slice());
    let expected = s.mls_expected(
        &st,
        roster.iter().map(|l| l.device).chain(added.iter().copied()),
    );
    let changes = observer
        .apply_commit(&mut observed, req.commit.as_slice(), &expected)
        .map_err(mls_error)?;
    let welcomed: Vec<DeviceId> = changes
        .iter()
        .filter_map(|ch| match ch {
            cloister_mls::Change::Add { device, .. } => Some(*device),
            _ => None,
        })
        .collect();
    if !welcomed.is_empty() && req.welcome.is_none() {
        return Err(ApiError::bad_request(
            "bad_mls",
            "a commit that adds devices comes with their Welcome",
        ));
    }
    let state = observed.snapshot().map_err(ApiError::internal)?;
    if !s
        .store
        .put_mls_commit(
            &room,
            row.epoch,
            req.commit.as_slice(),
            &state,
            req.welcome.as_ref().map(|w| w.as_slice()),
            &welcomed,
        )
        .await
        .map_err(ApiError::internal)?
    {
        return Err(ApiError::conflict(
            "stale_epoch",
            format!("another commit was ordered for epoch {} first", row.epoch),
        ));
    }
    let epoch = row.epoch + 1;
    tracing::info!(%room, epoch, changes = changes.len(), "MLS commit ordered");
    let deliver = |users: Vec<cloister_proto::UserId>, ev: Event| {
        serde_json::to_string(&ev)
            .ok()
            .map(|event| crate::cluster::Delivery {
                tenant: st.tenant.clone(),
                users,
                skip: None,
                watchers: false,
                event,
            })
    };
    if let Some(d) = deliver(
        st.members.iter().cloned().collect(),
        Event::MlsCommit { room, epoch },
    ) {
        s.fanout.room(room, d).await;
    }
    let welcomed_users: BTreeSet<_> = changes
        .iter()
        .filter_map(|ch| match ch {
            cloister_mls::Change::Add { user, .. } => Some(user.clone()),
            _ => None,
        })
        .collect();
    if !welcomed_users.is_empty()
        && let Some(d) = deliver(
            welcomed_users.into_iter().collect(),
            Event::MlsWelcome { room },
        )
    {
        s.fanout.room(room, d).await;
    }
    Ok(Json(CommitAccepted { epoch }))
}

/// `GET /v1/mls/welcomes`.
#[utoipa::path(get, path = "/v1/mls/welcomes", tag = "mls", security(("session" = [])), responses((status = 200, body = Welcomes)))]
pub(crate) async fn welcomes(State(s): S, c: Caller) -> Result<Json<Welcomes>, ApiError> {
    let rows = s
        .store
        .mls_welcomes(&c.device)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(Welcomes {
        welcomes: rows
            .into_iter()
            .map(|(room, epoch, w)| PendingWelcome {
                room,
                epoch,
                welcome: Bytes(w),
            })
            .collect(),
    }))
}

/// `DELETE /v1/mls/welcomes/{room}`: the device joined (or gave up).
#[utoipa::path(delete, path = "/v1/mls/welcomes/{room}", tag = "mls", params(("room" = String, Path, description = "room id")), security(("session" = [])), responses((status = 200, body = cloister_proto::server::Ok)))]
pub(crate) async fn delete_welcome(
    State(s): S,
    c: Caller,
    Path(room): Path<String>,
) -> Result<Json<OkBody>, ApiError> {
    let room = parse_room(&room)?;
    s.store
        .delete_mls_welcome(&c.device, &room)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(OkBody { ok: true }))
}
