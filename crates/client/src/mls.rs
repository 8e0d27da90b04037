//! MLS rooms (ADR 0028): this device's group state, kept in step with the
//! room's membership log through the server as delivery service.
//!
//! The device's MLS secrets (`mls.sealed`) and the messages it has read in
//! MLS rooms (`mls-seen.sealed`) are sealed under the keystore. A message
//! key is gone once used, so an MLS message is decrypted once and kept
//! here, where the user's own history lives; what came before this device
//! joined reaches it only by an explicit transfer from another device of
//! the same user.

use super::*;
use cloister_mls::{DeviceStore, Expected, LogBinding, Member, Received as MlsReceived};
use cloister_proto::mls::{
    ClaimKeyPackages, ClaimedKeyPackages, CommitAccepted, CommitPage, InitGroup, KeyPackageCount,
    PostCommit, UploadKeyPackages, Welcomes,
};
use cloister_proto::room::RoomMode;
use std::collections::BTreeMap;

const MLS_STATE: &str = "mls";
const MLS_SEEN: &str = "mls-seen";

/// One record of the seen log.
#[derive(serde::Serialize, serde::Deserialize)]
struct SeenRecord {
    room: RoomId,
    seen: Seen,
}
/// Key packages the server should hold for this device at least.
const KEY_PACKAGES_LOW: u32 = 10;
const KEY_PACKAGES_BATCH: usize = 20;

/// A message this device read (or sent) in an MLS room.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct Seen {
    pub(crate) seq: u64,
    pub(crate) envelope: Envelope,
    pub(crate) franking_key: Fixed<32>,
    pub(crate) plaintext: cloister_proto::b64::Bytes,
}

pub(crate) struct MlsState {
    pub(crate) member: Member,
    pub(crate) seen: BTreeMap<RoomId, BTreeMap<u64, Seen>>,
}

impl std::fmt::Debug for MlsState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MlsState(..)")
    }
}

pub(crate) fn mls_err(e: cloister_mls::Error) -> ClientError {
    ClientError::Local(format!("MLS: {e}"))
}

impl Seen {
    pub(crate) fn received(&self, room: &RoomId) -> Result<Received> {
        let h = message::peek_header(&self.envelope)?;
        let content: Content = serde_json::from_slice(self.plaintext.as_slice())
            .map_err(|_| ClientError::Local("unreadable stored message".into()))?;
        if let Content::Relayed { from, .. } = &content {
            // bridged rooms are managed: in an MLS room a member made it up
            return Err(ClientError::BadMessage {
                id: h.id.to_hex(),
                reason: format!(
                    "it claims to be relayed from {from}, but an MLS room is never bridged"
                ),
            });
        }
        let attribution = cloister_proto::vault::Attribution {
            header: self.envelope.header.clone(),
            sig: self.envelope.sig,
            franking_key: self.franking_key,
            plaintext: self.plaintext.clone(),
        };
        Ok(Received::of(self.seq, *room, h, content, attribution))
    }
}

impl Client {
    /// This device's MLS side, loaded on first use, trusting the firms our
    /// KM trusts now (a partner pinned since, or one no longer trusted).
    pub(crate) async fn mls_state(&self) -> Result<tokio::sync::MutexGuard<'_, Option<MlsState>>> {
        let firms = self.firm_keys().await?;
        let mut g = self.mls.lock().await;
        if let Some(st) = g.as_ref() {
            st.member.identity().trust(firms);
        } else {
            let store = match self.home.load_sealed(MLS_STATE) {
                Some(b) => {
                    DeviceStore::import(&b).map_err(|e| ClientError::Local(e.to_string()))?
                }
                None => DeviceStore::default(),
            };
            let mut seen: BTreeMap<RoomId, BTreeMap<u64, Seen>> = BTreeMap::new();
            for rec in self.home.load_sealed_log(MLS_SEEN) {
                if let Ok(r) = serde_json::from_slice::<SeenRecord>(&rec) {
                    seen.entry(r.room).or_default().insert(r.seen.seq, r.seen);
                }
            }
            let identity = cloister_mls::KmIdentity::new(firms);
            let cert = self
                .cert
                .lock()
                .map_err(|_| ClientError::Local("certificate lock".into()))?
                .clone();
            let member = Member::new(&self.keys, &cert, identity, store).map_err(mls_err)?;
            *g = Some(MlsState { member, seen });
        }
        Ok(g)
    }

    pub(crate) fn save_mls(&self, st: &MlsState) -> Result<()> {
        if !self.home.persistent() {
            return Ok(());
        }
        self.home
            .save_sealed(MLS_STATE, &st.member.store().export())
    }

    /// Keep a message read (or sent): in memory and, before the MLS state
    /// that no longer holds its key is saved, in the sealed log.
    pub(crate) fn keep_seen(&self, st: &mut MlsState, room: &RoomId, seen: Seen) -> Result<()> {
        if self.home.persistent() {
            let rec = zeroize::Zeroizing::new(
                serde_json::to_vec(&SeenRecord {
                    room: *room,
                    seen: seen.clone(),
                })
                .map_err(|e| ClientError::Local(e.to_string()))?,
            );
            self.home.append_sealed(MLS_SEEN, &rec)?;
        }
        st.seen.entry(*room).or_default().insert(seen.seq, seen);
        Ok(())
    }

    /// Keep the server stocked with this device's key packages (one-time,
    /// and a last-resort one), so that members can add it to MLS rooms.
    pub async fn replenish_key_packages(&self) -> Result<KeyPackageCount> {
        let have: KeyPackageCount = self
            .server(|h, s| h.get(format!("{s}/v1/mls/key-packages")))
            .await?;
        if have.one_time >= KEY_PACKAGES_LOW && have.last_resort {
            return Ok(have);
        }
        let mut g = self.mls_state().await?;
        let st = g
            .as_mut()
            .ok_or_else(|| ClientError::Local("no MLS state".into()))?;
        let mut kps = st
            .member
            .key_packages(KEY_PACKAGES_BATCH + 1)
            .map_err(mls_err)?;
        let last_resort = (!have.last_resort).then(|| kps.remove(0));
        let req = UploadKeyPackages {
            key_packages: kps.into_iter().map(cloister_proto::b64::Bytes).collect(),
            last_resort: last_resort.map(cloister_proto::b64::Bytes),
        };
        // the private halves are on disk before the public ones leave
        self.save_mls(st)?;
        drop(g);
        self.server(|h, s| h.post(format!("{s}/v1/mls/key-packages")).json(&req))
            .await
    }

    /// The room's mode, from the verified log.
    pub async fn room_mode(&self, room: &RoomId) -> Result<RoomMode> {
        self.with_state(room, false, |s| s.settings.mode).await
    }

    /// After the `create` statement of an MLS room: the group, with this
    /// device as its first leaf, then the other members' devices.
    pub(crate) async fn mls_create(&self, room: &RoomId) -> Result<()> {
        self.replenish_key_packages().await?;
        {
            let mut g = self.mls_state().await?;
            let st = g
                .as_mut()
                .ok_or_else(|| ClientError::Local("no MLS state".into()))?;
            let info = st.member.create(room).map_err(mls_err)?;
            self.save_mls(st)?;
            let req = InitGroup {
                group_info: cloister_proto::b64::Bytes(info),
            };
            let _: cloister_proto::server::Ok = self
                .server(|h, s| h.put(format!("{s}/v1/rooms/{room}/mls/group")).json(&req))
                .await?;
        }
        self.mls_reconcile(room).await
    }

    /// What the verified log allows at the entry a commit names (the
    /// log is fetched first if the entry is newer than what we hold).
    async fn expected_at(
        &self,
        room: &RoomId,
        binding: Option<LogBinding>,
        roster: &[cloister_mls::Leaf],
    ) -> Result<Expected> {
        let b = binding.ok_or_else(|| {
            ClientError::Local("an MLS commit that names no membership-log entry".into())
        })?;
        let have = self.with_state(room, false, |s| s.seq).await?;
        if have < b.seq {
            self.with_state(room, true, |_| ()).await?;
        }
        let state = self.state_at(room, b.seq).await?;
        if state.head != b.head {
            return Err(ClientError::Local(format!(
                "an MLS commit names log entry {} with another hash than the one this device verified",
                b.seq
            )));
        }
        // the KM's word on this firm's devices: a removal it justifies, an
        // add of a revoked device it refuses (a server that orders one is
        // reported by the caller)
        Ok(Expected {
            binding: b,
            members: state.members.clone(),
            barred: self.barred(roster).await?,
        })
    }

    /// Of these leaves, the devices of this firm that the KM says are
    /// revoked (or whose user is disabled). Partner firms' devices are
    /// judged by their own members.
    async fn barred(
        &self,
        leaves: &[cloister_mls::Leaf],
    ) -> Result<std::collections::BTreeSet<DeviceId>> {
        let own: Vec<DeviceId> = leaves
            .iter()
            .filter(|l| l.user.tenant() == *self.tenant())
            .map(|l| l.device)
            .collect();
        if own.is_empty() {
            return Ok(Default::default());
        }
        let mut out = std::collections::BTreeSet::new();
        for chunk in own.chunks(1000) {
            let a: cloister_proto::km::DeviceStandingAnswer = self
                .km_request(cloister_proto::km::KmOp::DeviceStanding {
                    devices: chunk.to_vec(),
                })
                .await?;
            out.extend(a.barred);
        }
        Ok(out)
    }

    /// The room's verified state as it was at log entry `seq`.
    async fn state_at(&self, room: &RoomId, seq: u64) -> Result<RoomState> {
        let (current, entries) = {
            let rooms = self.rooms.lock().await;
            let c = rooms
                .get(room)
                .ok_or_else(|| ClientError::Local(format!("room {room} has no membership log")))?;
            if c.state.seq == seq {
                return Ok(c.state.clone());
            }
            (c.state.seq, c.entries.clone())
        };
        if seq > current {
            return Err(ClientError::Local(format!(
                "log entry {seq} is ahead of the verified log ({current})"
            )));
        }
        let mut st: Option<RoomState> = None;
        for e in entries.iter().take(seq as usize + 1) {
            let peek = signed::peek_statement(e)?;
            let (user, pk) = if cloister_policy::signed_by_km(e) {
                let home = st
                    .as_ref()
                    .map_or_else(|| self.tenant().clone(), |s| s.tenant.clone());
                (cloister_policy::km_user(&home), self.firm_key(&home).await?)
            } else {
                let cert = self.cert_of(&peek.actor).await?;
                (cert.user.clone(), cert.sign_pk.0)
            };
            st = Some(cloister_policy::apply(st.as_ref(), room, e, &user, &pk)?.0);
        }
        st.ok_or_else(|| ClientError::Local("empty membership log".into()))
    }

    /// Bring this device's group up to the server's epoch: join from a
    /// Welcome if it holds no state yet, then apply each ordered commit
    /// after checking it against the log.
    pub async fn mls_sync(&self, room: &RoomId) -> Result<u64> {
        let members = self.with_state(room, false, |s| s.members.clone()).await?;
        self.know_firms_of(&members).await;
        let mut g = self.mls_state().await?;
        let st = g
            .as_mut()
            .ok_or_else(|| ClientError::Local("no MLS state".into()))?;
        if !st.member.has_group(room) {
            let w: Welcomes = self
                .server(|h, s| h.get(format!("{s}/v1/mls/welcomes")))
                .await?;
            let Some(pw) = w.welcomes.iter().find(|w| w.room == *room) else {
                return Err(ClientError::Local(format!(
                    "this device is not in the MLS group of room {room} yet: a member's device adds it (`cloister room sync`)"
                )));
            };
            let (joined, _) = st.member.join(pw.welcome.as_slice()).map_err(mls_err)?;
            if joined != *room {
                return Err(ClientError::Local(
                    "a Welcome for another group than it claims".into(),
                ));
            }
            self.save_mls(st)?;
            let _: cloister_proto::server::Ok = self
                .server(|h, s| h.delete(format!("{s}/v1/mls/welcomes/{room}")))
                .await?;
            // the Welcome used one of this device's key packages
            drop(g);
            if let Err(e) = self.replenish_key_packages().await {
                tracing::warn!("MLS key packages not topped up: {e}");
            }
            return Box::pin(self.mls_sync(room)).await;
        }
        loop {
            let epoch = st.member.epoch(room).map_err(mls_err)?;
            let page: CommitPage = self
                .server(|h, s| h.get(format!("{s}/v1/rooms/{room}/mls/commits?from={epoch}")))
                .await?;
            if page.commits.is_empty() {
                return Ok(epoch);
            }
            for c in page.commits {
                if c.epoch != st.member.epoch(room).map_err(mls_err)? {
                    continue;
                }
                let binding = cloister_mls::rules::peek_binding(c.commit.as_slice());
                // the leaves it touches: those in the group, and those it adds
                let mut leaves = st.member.roster(room).map_err(mls_err)?;
                leaves.extend(cloister_mls::rules::added_leaves(c.commit.as_slice()));
                let expected = self.expected_at(room, binding, &leaves).await?;
                let r = st
                    .member
                    .process(room, c.commit.as_slice(), |_| Ok(expected))
                    .map_err(|e| {
                        let m = format!(
                            "the server ordered an MLS commit for epoch {} of room {room} that this device refuses: {e}",
                            c.epoch
                        );
                        self.alert(m.clone());
                        ClientError::Audit(m)
                    })?;
                self.save_mls(st)?;
                if let MlsReceived::Commit { removed: true, .. } = r {
                    return Err(ClientError::Local(format!(
                        "this device was removed from the MLS group of room {room}"
                    )));
                }
            }
        }
    }

    /// Learn the KM keys of the members' firms our KM trusts, asking it
    /// again for a firm not in the cached list (pinned since). A firm it
    /// does not trust stays unknown: its leaves are then refused.
    async fn know_firms_of(&self, members: &std::collections::BTreeSet<cloister_proto::UserId>) {
        let firms: std::collections::BTreeSet<_> = members.iter().map(|u| u.tenant()).collect();
        for firm in firms {
            if let Err(e) = self.firm_key(&firm).await {
                tracing::warn!(%firm, "a member's firm is not trusted: {e}");
            }
        }
    }

    /// Make the group match the log: add the devices of members that hold
    /// no leaf, remove the leaves of users who are no longer members.
    pub async fn mls_reconcile(&self, room: &RoomId) -> Result<()> {
        for _ in 0..4 {
            self.mls_sync(room).await?;
            let state = self.current_state(room, true).await?;
            self.know_firms_of(&state.members).await;
            let mut g = self.mls_state().await?;
            let st = g
                .as_mut()
                .ok_or_else(|| ClientError::Local("no MLS state".into()))?;
            let roster = st.member.roster(room).map_err(mls_err)?;
            let barred = self.barred(&roster).await?;
            let remove: Vec<DeviceId> = roster
                .iter()
                .filter(|l| !state.members.contains(&l.user) || barred.contains(&l.device))
                .map(|l| l.device)
                .collect();
            let mut kps = Vec::new();
            for user in &state.members {
                let req = ClaimKeyPackages { user: user.clone() };
                let got: ClaimedKeyPackages = self
                    .server(|h, s| h.post(format!("{s}/v1/rooms/{room}/mls/claim")).json(&req))
                    .await?;
                kps.extend(got.key_packages.into_iter().map(|k| k.key_package.0));
            }
            if remove.is_empty() && kps.is_empty() {
                return Ok(());
            }
            let expected = Expected {
                binding: LogBinding {
                    seq: state.seq,
                    head: state.head,
                },
                members: state.members.clone(),
                barred,
            };
            let staged = st
                .member
                .commit(room, &kps, &remove, &expected)
                .map_err(mls_err)?;
            if self.post_staged(room, st, staged).await?.is_some() {
                return Ok(());
            }
        }
        Err(ClientError::Local(
            "the MLS group kept changing; try again".into(),
        ))
    }

    /// A self-update: a commit with a fresh path for this device's leaf
    /// (post-compromise security).
    pub async fn mls_update(&self, room: &RoomId) -> Result<u64> {
        for _ in 0..3 {
            self.mls_sync(room).await?;
            let state = self.current_state(room, true).await?;
            self.know_firms_of(&state.members).await;
            let mut g = self.mls_state().await?;
            let st = g
                .as_mut()
                .ok_or_else(|| ClientError::Local("no MLS state".into()))?;
            let expected = Expected {
                binding: LogBinding {
                    seq: state.seq,
                    head: state.head,
                },
                members: state.members.clone(),
                barred: Default::default(),
            };
            let staged = st
                .member
                .commit(room, &[], &[], &expected)
                .map_err(mls_err)?;
            if let Some(e) = self.post_staged(room, st, staged).await? {
                return Ok(e);
            }
        }
        Err(ClientError::Local(
            "the MLS group kept changing; try again".into(),
        ))
    }

    /// Order a staged commit at the server and apply it: the new epoch, or
    /// `None` when another commit won the epoch or the log moved (catch up
    /// and try again).
    async fn post_staged(
        &self,
        room: &RoomId,
        st: &mut MlsState,
        staged: cloister_mls::Staged,
    ) -> Result<Option<u64>> {
        let req = PostCommit {
            commit: cloister_proto::b64::Bytes(staged.commit.clone()),
            welcome: staged.welcome.clone().map(cloister_proto::b64::Bytes),
        };
        let r: Result<CommitAccepted> = self
            .server(|h, s| {
                h.post(format!("{s}/v1/rooms/{room}/mls/commits"))
                    .json(&req)
            })
            .await;
        match r {
            Ok(_) => {
                let e = st.member.merge(staged).map_err(mls_err)?;
                self.save_mls(st)?;
                Ok(Some(e))
            }
            // another commit won the epoch, or the log moved
            Err(ClientError::Api(a)) if a.code == "stale_epoch" || a.code == "log_behind" => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// The devices holding a leaf of the room's group (this device's view).
    pub async fn mls_roster(&self, room: &RoomId) -> Result<Vec<cloister_mls::Leaf>> {
        self.mls_sync(room).await?;
        let g = self.mls_state().await?;
        let st = g
            .as_ref()
            .ok_or_else(|| ClientError::Local("no MLS state".into()))?;
        st.member.roster(room).map_err(mls_err)
    }
}
