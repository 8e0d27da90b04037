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
    seq: u64,
    envelope: Envelope,
    franking_key: Fixed<32>,
    plaintext: cloister_proto::b64::Bytes,
}

pub(crate) struct MlsState {
    member: Member,
    seen: BTreeMap<RoomId, BTreeMap<u64, Seen>>,
}

impl std::fmt::Debug for MlsState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MlsState(..)")
    }
}

fn mls_err(e: cloister_mls::Error) -> ClientError {
    ClientError::Local(format!("MLS: {e}"))
}

impl Seen {
    fn received(&self, room: &RoomId) -> Result<Received> {
        let h = message::peek_header(&self.envelope)?;
        let content = serde_json::from_slice(self.plaintext.as_slice())
            .map_err(|_| ClientError::Local("unreadable stored message".into()))?;
        Ok(Received {
            seq: self.seq,
            id: h.id,
            room: *room,
            epoch: h.epoch,
            sender: h.sender,
            device: h.device,
            ts: h.ts,
            content,
            counter: h.counter,
            after: h.after,
            attribution: cloister_proto::vault::Attribution {
                header: self.envelope.header.clone(),
                sig: self.envelope.sig,
                franking_key: self.franking_key,
                plaintext: self.plaintext.clone(),
            },
        })
    }
}

impl Client {
    /// This device's MLS side, loaded on first use.
    pub(crate) async fn mls_state(&self) -> Result<tokio::sync::MutexGuard<'_, Option<MlsState>>> {
        let mut g = self.mls.lock().await;
        if g.is_none() {
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
            let identity = cloister_mls::KmIdentity::new(self.firm_keys().await?);
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

    fn save_mls(&self, st: &MlsState) -> Result<()> {
        if !self.home.persistent() {
            return Ok(());
        }
        self.home
            .save_sealed(MLS_STATE, &st.member.store().export())
    }

    /// Keep a message read (or sent): in memory and, before the MLS state
    /// that no longer holds its key is saved, in the sealed log.
    fn keep_seen(&self, st: &mut MlsState, room: &RoomId, seen: Seen) -> Result<()> {
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
        // only leaves already in the group: revocation is final, so a removal
        // the server judged justified still is; adds were judged at ordering
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
                let roster = st.member.roster(room).map_err(mls_err)?;
                let expected = self.expected_at(room, binding, &roster).await?;
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

    /// Make the group match the log: add the devices of members that hold
    /// no leaf, remove the leaves of users who are no longer members.
    pub async fn mls_reconcile(&self, room: &RoomId) -> Result<()> {
        for _ in 0..4 {
            self.mls_sync(room).await?;
            let state = self.current_state(room, true).await?;
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

    /// Seal a message for an MLS room at the group's current epoch.
    pub(crate) async fn mls_seal(
        &self,
        room: &RoomId,
        content: &Content,
        number: &(u64, Vec<MessageId>),
        refresh: bool,
    ) -> Result<(Envelope, cloister_proto::vault::Attribution)> {
        // the server refuses a stale epoch (409), and the send is retried
        // with `refresh`: no round trip per message otherwise
        let joined = self
            .mls_state()
            .await?
            .as_ref()
            .is_some_and(|s| s.member.has_group(room));
        if refresh || !joined {
            self.mls_sync(room).await?;
        }
        let mut g = self.mls_state().await?;
        let st = g
            .as_mut()
            .ok_or_else(|| ClientError::Local("no MLS state".into()))?;
        let pt = zeroize::Zeroizing::new(
            serde_json::to_vec(content).map_err(|e| ClientError::Local(e.to_string()))?,
        );
        let fk = zeroize::Zeroizing::new(cloister_crypto::random_bytes::<32>()?);
        let ts = now_millis();
        let id = super::messages::ordered_id(ts)?;
        let epoch = st.member.epoch(room).map_err(mls_err)?;
        let header = MessageHeader {
            v: 2,
            room: *room,
            epoch,
            id,
            sender: self.user().clone(),
            device: self.device(),
            ts,
            commit: Fixed(message::commitment(&fk, &pt)),
            counter: number.0,
            after: number.1.clone(),
        };
        let header_bytes =
            serde_json::to_vec(&header).map_err(|e| ClientError::Local(e.to_string()))?;
        let (_, ct) = st
            .member
            .encrypt(room, &cloister_mls::payload::encode(&fk, &pt), &id.0)
            .map_err(mls_err)?;
        self.save_mls(st)?;
        let env = message::sign_envelope(&self.keys, header_bytes, ct);
        let att = cloister_proto::vault::Attribution {
            header: env.header.clone(),
            sig: env.sig,
            franking_key: Fixed(*fk),
            plaintext: cloister_proto::b64::Bytes(pt.to_vec()),
        };
        Ok((env, att))
    }

    /// Keep a message this device sent (it cannot decrypt its own).
    pub(crate) async fn mls_sent(
        &self,
        room: &RoomId,
        seq: u64,
        env: &Envelope,
        att: &cloister_proto::vault::Attribution,
    ) -> Result<()> {
        let mut g = self.mls_state().await?;
        let st = g
            .as_mut()
            .ok_or_else(|| ClientError::Local("no MLS state".into()))?;
        let mut env = env.clone();
        env.receipt = None;
        self.keep_seen(
            st,
            room,
            Seen {
                seq,
                envelope: env,
                franking_key: att.franking_key,
                plaintext: att.plaintext.clone(),
            },
        )
    }

    /// Open a message of an MLS room: from what this device kept if it read
    /// it before, else decrypted now (once) after the same checks as in a
    /// managed room, with the sender's leaf matched to the signed header.
    pub(crate) async fn mls_open(
        &self,
        room: &RoomId,
        seq: u64,
        env: &Envelope,
        h: &MessageHeader,
    ) -> Result<Received> {
        let bad = |reason: String| ClientError::BadMessage {
            id: h.id.to_hex(),
            reason,
        };
        {
            let g = self.mls_state().await?;
            let st = g
                .as_ref()
                .ok_or_else(|| ClientError::Local("no MLS state".into()))?;
            if let Some(s) = st.seen.get(room).and_then(|m| m.get(&seq)) {
                if s.envelope.header != env.header || s.envelope.sig != env.sig {
                    return Err(bad(format!(
                        "the server now shows another message at seq {seq} than this device read there"
                    )));
                }
                return s.received(room);
            }
        }
        if h.device == self.device() {
            return Err(bad(
                "a message from this device that it has no record of sending".into(),
            ));
        }
        // not joined yet, or the message is of a newer epoch: catch up first
        let behind = {
            let g = self.mls_state().await?;
            g.as_ref()
                .is_none_or(|s| s.member.epoch(room).map_or(true, |e| e < h.epoch))
        };
        if behind {
            self.mls_sync(room).await?;
        }
        let mut g = self.mls_state().await?;
        let st = g
            .as_mut()
            .ok_or_else(|| ClientError::Local("no MLS state".into()))?;
        let r = st
            .member
            .process(room, env.ciphertext.as_slice(), |_| {
                Err(cloister_mls::Error::Malformed(
                    "a commit where a message belongs",
                ))
            })
            .map_err(|e| bad(format!("cannot decrypt: {e}")))?;
        let MlsReceived::Application {
            user,
            device,
            epoch,
            aad,
            data,
        } = r
        else {
            self.save_mls(st)?;
            return Err(bad("not an application message".into()));
        };
        let checked = self.check_opened(room, seq, env, h, user, device, epoch, &aad, &data);
        if let Ok(seen) = &checked {
            // kept before the state that no longer holds its key is saved
            self.keep_seen(st, room, seen.clone())?;
        }
        self.save_mls(st)?;
        checked?.received(room)
    }

    /// The checks of a decrypted MLS message against its signed header.
    #[allow(clippy::too_many_arguments)]
    fn check_opened(
        &self,
        _room: &RoomId,
        seq: u64,
        env: &Envelope,
        h: &MessageHeader,
        user: UserId,
        device: DeviceId,
        epoch: u64,
        aad: &[u8],
        data: &[u8],
    ) -> Result<Seen> {
        let bad = |reason: String| ClientError::BadMessage {
            id: h.id.to_hex(),
            reason,
        };
        if user != h.sender || device != h.device || epoch != h.epoch || aad != h.id.0 {
            return Err(bad(format!(
                "the MLS sender ({user}, device {device}, epoch {epoch}) does not match the signed header"
            )));
        }
        let (fk, content) =
            cloister_mls::payload::decode(data).ok_or_else(|| bad("truncated payload".into()))?;
        if !cloister_crypto::ct_eq(&message::commitment(&fk, content), &h.commit.0) {
            return Err(bad(
                "the content does not match the header's commitment".into()
            ));
        }
        Ok(Seen {
            seq,
            envelope: Envelope {
                receipt: None,
                ..env.clone()
            },
            franking_key: Fixed(fk),
            plaintext: cloister_proto::b64::Bytes(content.to_vec()),
        })
    }
}

/// What one device hands another of the same user: the MLS messages it
/// read, by room (signed and sealed by `cloister_crypto::history`).
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryBody {
    user: UserId,
    from: DeviceId,
    to: DeviceId,
    created_ms: u64,
    rooms: Vec<HistoryRoom>,
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryRoom {
    room: RoomId,
    messages: Vec<Seen>,
}

impl Client {
    /// Hand the MLS history this device holds (of `rooms`, or of every MLS
    /// room) to another device of the same user: signed by this device,
    /// sealed to the other's certified key. Returns the bundle and the
    /// number of messages in it.
    pub async fn mls_history_export(
        &self,
        to: &DeviceId,
        rooms: &[RoomId],
    ) -> Result<(cloister_crypto::history::SealedHistory, usize)> {
        if *to == self.device() {
            return Err(ClientError::Input(
                "history goes to another device, not this one".into(),
            ));
        }
        let cert = self.cert_of(to).await?;
        if cert.user != *self.user() {
            return Err(ClientError::Input(format!(
                "device {to} belongs to {}: history goes only to another device of {}",
                cert.user,
                self.user()
            )));
        }
        let standing: cloister_proto::km::DeviceStandingAnswer = self
            .km_request(cloister_proto::km::KmOp::DeviceStanding { devices: vec![*to] })
            .await?;
        if !standing.barred.is_empty() {
            return Err(ClientError::Input(format!(
                "device {to} is revoked (or its user disabled): no history for it"
            )));
        }
        let g = self.mls_state().await?;
        let st = g
            .as_ref()
            .ok_or_else(|| ClientError::Local("no MLS state".into()))?;
        let picked: Vec<HistoryRoom> = st
            .seen
            .iter()
            .filter(|(r, _)| rooms.is_empty() || rooms.contains(r))
            .map(|(r, m)| HistoryRoom {
                room: *r,
                messages: m.values().cloned().collect(),
            })
            .collect();
        drop(g);
        let n = picked.iter().map(|r| r.messages.len()).sum();
        let body = zeroize::Zeroizing::new(
            serde_json::to_vec(&HistoryBody {
                user: self.user().clone(),
                from: self.device(),
                to: *to,
                created_ms: now_millis(),
                rooms: picked,
            })
            .map_err(|e| ClientError::Local(e.to_string()))?,
        );
        let sealed = cloister_crypto::history::seal(&self.keys, to, &cert.hpke_pk.0, &body)?;
        Ok((sealed, n))
    }

    /// Take a history bundle another device of this user sealed to this
    /// one: the sender's certificate and signature, then every message's
    /// own attribution (its sender device's signature and the commitment
    /// to its words) are checked before it is kept. Returns how many
    /// messages were new here.
    pub async fn mls_history_import(
        &self,
        sealed: &cloister_crypto::history::SealedHistory,
    ) -> Result<usize> {
        let from = self.cert_of(&sealed.from).await?;
        if from.user != *self.user() {
            return Err(ClientError::Input(format!(
                "the bundle comes from a device of {}, not of {}",
                from.user,
                self.user()
            )));
        }
        let body = zeroize::Zeroizing::new(cloister_crypto::history::open(
            &self.keys,
            sealed,
            &from.sign_pk.0,
        )?);
        let hb: HistoryBody = serde_json::from_slice(&body)
            .map_err(|_| ClientError::Local("unreadable history bundle".into()))?;
        if hb.from != sealed.from || hb.to != self.device() || hb.user != *self.user() {
            return Err(ClientError::Local(
                "the history bundle names other devices than it was sealed between".into(),
            ));
        }
        // every message checked before any is kept
        let mut checked = Vec::new();
        for r in hb.rooms {
            for m in r.messages {
                let h = message::peek_header(&m.envelope)?;
                let id = h.id.to_hex();
                let bad = |reason: String| ClientError::BadMessage {
                    id: id.clone(),
                    reason,
                };
                if h.room != r.room || h.v != 2 {
                    return Err(bad("not a message of that MLS room".into()));
                }
                let sender = self.cert_of(&h.device).await?;
                if sender.user != h.sender {
                    return Err(bad("the header names another user than the device's".into()));
                }
                let vk = cloister_crypto::keys::VerifyKey::from_bytes(&sender.sign_pk.0)?;
                let att = cloister_proto::vault::Attribution {
                    header: m.envelope.header.clone(),
                    sig: m.envelope.sig,
                    franking_key: m.franking_key,
                    plaintext: m.plaintext.clone(),
                };
                message::verify_attribution(
                    &vk,
                    &att,
                    &cloister_crypto::sha256(m.envelope.ciphertext.as_slice()),
                )
                .map_err(|e| bad(format!("not attributable to its sender: {e}")))?;
                checked.push((r.room, m));
            }
        }
        let mut g = self.mls_state().await?;
        let st = g
            .as_mut()
            .ok_or_else(|| ClientError::Local("no MLS state".into()))?;
        let mut new = 0;
        for (room, m) in checked {
            if st.seen.get(&room).is_some_and(|s| s.contains_key(&m.seq)) {
                continue;
            }
            self.keep_seen(st, &room, m)?;
            new += 1;
        }
        Ok(new)
    }
}
