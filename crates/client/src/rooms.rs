//! Rooms as this device verifies them: certificates, membership logs
//! (kept across runs), names, and membership changes.

use super::*;
use cloister_proto::room::RoomMode;

impl Client {
    /// A device certificate, fetched from the server and verified against the pinned KM key.
    pub async fn cert_of(&self, device: &DeviceId) -> Result<DeviceCert> {
        Ok(self.cert_entry(device).await?.0)
    }

    /// A device's KM-signed certificate, as verified.
    pub async fn signed_cert_of(
        &self,
        device: &DeviceId,
    ) -> Result<cloister_proto::km::SignedCert> {
        Ok(self.cert_entry(device).await?.1)
    }

    pub(crate) async fn cert_entry(
        &self,
        device: &DeviceId,
    ) -> Result<(DeviceCert, cloister_proto::km::SignedCert)> {
        if let Some(c) = self.certs.lock().ok().and_then(|m| m.get(device).cloned()) {
            return Ok(c);
        }
        let sc: cloister_proto::km::SignedCert = self
            .server(|h, s| h.get(format!("{s}/v1/devices/{device}")))
            .await?;
        // our firm's devices under our KM's key; a partner firm's under the
        // key our KM pinned for it
        let issuer: cloister_proto::km::DeviceCert =
            crate::federation::peek(&cloister_proto::km::SignedBlob {
                body: sc.body.clone(),
                sig: sc.sig,
            })?;
        let key = self.firm_key(&issuer.tenant).await?;
        let c = signed::verify_cert(&key, &sc).map_err(|e| {
            ClientError::Local(format!(
                "certificate of device {device} is not from {}'s KM: {e}",
                issuer.tenant
            ))
        })?;
        if c.device != *device {
            return Err(ClientError::Local(format!(
                "server returned another device's certificate for {device}"
            )));
        }
        if let Ok(mut m) = self.certs.lock() {
            m.insert(*device, (c.clone(), sc.clone()));
        }
        Ok((c, sc))
    }

    /// The room's state, replayed locally from its membership log.
    pub async fn room_state(&self, room: &RoomId) -> Result<RoomState> {
        let mut rooms = self.rooms.lock().await;
        let from = rooms.get(room).map_or(0, |c| c.state.seq + 1);
        let mut from_seq = from;
        loop {
            let page: LogPage = self
                .server(|h, s| {
                    h.get(format!(
                        "{s}/v1/rooms/{room}/log?from={from_seq}&limit={}",
                        limits::MAX_PAGE
                    ))
                })
                .await?;
            let n = page.entries.len();
            self.apply_entries(&mut rooms, room, page.entries).await?;
            if (n as u32) < limits::MAX_PAGE {
                break;
            }
            from_seq += n as u64;
        }
        rooms
            .get(room)
            .map(|c| c.state.clone())
            .ok_or_else(|| ClientError::Local(format!("room {room} has no membership log")))
    }

    /// Verify and apply log entries (in order) to the cached room state,
    /// and keep it. An entry that does not extend what this device already
    /// verified is a fork: the server shows another history.
    pub(crate) async fn apply_entries(
        &self,
        rooms: &mut HashMap<RoomId, RoomCache>,
        room: &RoomId,
        entries: Vec<SignedStatement>,
    ) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        for e in entries {
            let peek = signed::peek_statement(&e)?;
            // the home KM's own statements (evictions, bans, locks) carry its key
            let (actor_user, actor_pk) = if cloister_policy::signed_by_km(&e) {
                let home = rooms
                    .get(room)
                    .map_or_else(|| self.tenant().clone(), |c| c.state.tenant.clone());
                (cloister_policy::km_user(&home), self.firm_key(&home).await?)
            } else {
                let cert = self.cert_of(&peek.actor).await?;
                (cert.user.clone(), cert.sign_pk.0)
            };
            let cur = rooms.get(room).map(|c| &c.state);
            let (next, _) = match cloister_policy::apply(cur, room, &e, &actor_user, &actor_pk) {
                Ok(x) => x,
                Err(
                    cloister_policy::PolicyError::BrokenChain { seq }
                    | cloister_policy::PolicyError::Gap { got: seq, .. },
                ) if cur.is_some() => {
                    let msg = format!(
                        "the server {} shows room {room} a membership history that contradicts the one this device verified (entry {seq} does not extend it): a fork",
                        self.profile.server
                    );
                    self.alert(msg.clone());
                    return Err(ClientError::Audit(msg));
                }
                Err(e) => return Err(e.into()),
            };
            // users of several firms: an IM or an external room, and a
            // connection for each user of another firm brought in
            let st = signed::peek_statement(&e)?;
            if !st.connections.is_empty() || cloister_policy::federation::mixed(&next) {
                let keys = self.firm_keys().await?;
                let keys_of = |t: &TenantId| keys.get(t).copied();
                if cloister_policy::federation::check_step(cur, &st, &next, &keys_of).is_err() {
                    // our copy of the partner list may predate a new trust
                    let keys = self.fresh_firm_keys().await?;
                    let keys_of = |t: &TenantId| keys.get(t).copied();
                    cloister_policy::federation::check_step(cur, &st, &next, &keys_of)
                        .map_err(|e| ClientError::Local(format!("membership log rejected: {e}")))?;
                }
            }
            match rooms.get_mut(room) {
                Some(c) => {
                    c.state = next;
                    c.entries.push(e);
                }
                None => {
                    rooms.insert(
                        *room,
                        RoomCache {
                            state: next,
                            entries: vec![e],
                        },
                    );
                }
            }
        }
        if !self.home.persistent() {
            return Ok(());
        }
        let b = serde_json::to_vec(&*rooms).map_err(|e| ClientError::Local(e.to_string()))?;
        self.home.save_sealed(ROOMS_STATE, &b)
    }

    /// The room called `name` among this device's rooms, by the names in
    /// their verified logs (never the server's room list); several rooms of
    /// that name is an error.
    pub async fn resolve_room_name(&self, name: &str) -> Result<RoomId> {
        let mut ids: Vec<RoomId> = self
            .list_rooms()
            .await?
            .into_iter()
            .map(|r| r.room)
            .collect();
        ids.extend(self.rooms.lock().await.keys().copied());
        ids.sort();
        ids.dedup();
        let mut found = Vec::new();
        for id in ids {
            let Ok(st) = self.room_state(&id).await else {
                continue;
            };
            if st.settings.name == name && st.is_member(self.user()) {
                found.push(id);
            }
        }
        match found.as_slice() {
            [one] => Ok(*one),
            [] => Err(ClientError::Input(format!(
                "no room named {name:?} among your rooms (use the room id)"
            ))),
            many => Err(ClientError::Input(format!(
                "several of your rooms are named {name:?} ({}); use the room id",
                many.iter()
                    .map(|r| r.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// The room's membership log as this device verified it, oldest first:
    /// who did what and when (creation, additions, removals, settings,
    /// evictions, bans, locks, key rotations).
    pub async fn room_events(&self, room: &RoomId) -> Result<Vec<cloister_proto::room::Statement>> {
        self.room_state(room).await?;
        let rooms = self.rooms.lock().await;
        let Some(c) = rooms.get(room) else {
            return Ok(Vec::new());
        };
        c.entries
            .iter()
            .map(|e| {
                serde_json::from_slice(e.body.as_slice()).map_err(|e| {
                    ClientError::Local(format!("a verified log entry is unreadable: {e}"))
                })
            })
            .collect()
    }

    /// Run `f` on the locally verified room state, fetching new log entries only
    /// when nothing is cached or `refresh` is set.
    pub async fn with_state<R>(
        &self,
        room: &RoomId,
        refresh: bool,
        f: impl FnOnce(&RoomState) -> R,
    ) -> Result<R> {
        if !refresh {
            let rooms = self.rooms.lock().await;
            if let Some(c) = rooms.get(room) {
                return Ok(f(&c.state));
            }
        }
        self.room_state(room).await?;
        let rooms = self.rooms.lock().await;
        rooms
            .get(room)
            .map(|c| f(&c.state))
            .ok_or_else(|| ClientError::Local(format!("room {room} has no membership log")))
    }

    pub(crate) async fn log_since(&self, room: &RoomId, from: u64) -> Vec<SignedStatement> {
        let rooms = self.rooms.lock().await;
        rooms
            .get(room)
            .map(|c| c.entries.iter().skip(from as usize).cloned().collect())
            .unwrap_or_default()
    }

    pub(crate) async fn append(&self, room: &RoomId, action: Action) -> Result<RoomState> {
        for attempt in 0..3 {
            // A change is signed on the newest state the KM knows, never on
            // what a withholding server shows.
            let current = if matches!(action, Action::Create { .. }) {
                self.room_state(room).await
            } else {
                self.current_state(room, true).await
            };
            let prev = match current {
                Ok(s) => Some(s),
                Err(ClientError::Api(a))
                    if a.code == "no_such_room" && matches!(action, Action::Create { .. }) =>
                {
                    None
                }
                Err(e) => return Err(e),
            };
            let st = Statement {
                room: *room,
                seq: prev.as_ref().map_or(0, |s| s.seq + 1),
                prev: Fixed(prev.as_ref().map_or([0; 32], |s| s.head)),
                actor: self.device(),
                actor_user: self.user().clone(),
                ts: now_millis(),
                action: action.clone(),
                connections: self.proofs_for(&joining(&action)).await?,
            };
            // Check locally first: a clear error beats a round trip.
            let entry = sign_statement(&self.keys, &st)?;
            cloister_policy::apply(
                prev.as_ref(),
                room,
                &entry,
                self.user(),
                &self.keys.sign_pk(),
            )?;
            let r: Result<AppendLogResponse> = self
                .server(|h, s| {
                    h.post(format!("{s}/v1/rooms/{room}/log")).json(&AppendLog {
                        entry: entry.clone(),
                    })
                })
                .await;
            match r {
                Ok(_) => {
                    // The server took our entry: it extends what we verified.
                    {
                        let mut rooms = self.rooms.lock().await;
                        let next = rooms.get(room).map_or(0, |c| c.state.seq + 1);
                        if next == st.seq {
                            self.apply_entries(&mut rooms, room, vec![entry]).await?;
                        }
                    }
                    let state = self.room_state(room).await?;
                    // The KM learns the change now (not when someone next asks
                    // for a key): every device's freshness bound runs from here.
                    self.tell_km(room).await?;
                    return Ok(state);
                }
                Err(ClientError::Api(a)) if a.code == "log_conflict" && attempt < 2 => continue,
                Err(e) => return Err(e),
            }
        }
        Err(ClientError::Local(
            "the room's log kept changing; try again".into(),
        ))
    }

    /// Create a room; the creator becomes its owner.
    pub async fn create_room(&self, settings: RoomSettings, members: &[UserId]) -> Result<RoomId> {
        let room = cloister_policy::room_id_from_random(cloister_crypto::random_bytes::<16>()?);
        let mls = settings.mode == cloister_proto::room::RoomMode::Mls;
        self.append(
            &room,
            Action::Create {
                kind: RoomKind::Room,
                settings,
                members: members.to_vec(),
            },
        )
        .await?;
        if mls {
            self.mls_create(&room).await?;
        }
        Ok(room)
    }

    /// A bridged room: this user (and `members` of the firm) with `contact`
    /// on `network`, through the firm's `gateway` user (ADR 0029).
    pub async fn open_bridge(
        &self,
        network: &str,
        contact: &str,
        gateway: &UserId,
        members: &[UserId],
    ) -> Result<RoomId> {
        let bridge = cloister_proto::room::Bridge {
            network: network.to_owned(),
            contact: contact.trim().to_owned(),
            gateway: gateway.clone(),
        };
        if let Some(why) = bridge.malformed() {
            return Err(ClientError::Input(why));
        }
        let mut all = vec![gateway.clone()];
        all.extend(members.iter().filter(|m| *m != gateway).cloned());
        let settings = RoomSettings {
            name: format!("{} ({network})", bridge.contact),
            bridge: Some(bridge),
            ..RoomSettings::default()
        };
        self.create_room(settings, &all).await
    }

    /// Open (creating if needed) the 1:1 conversation with `other`. A new
    /// one is managed unless a firm's policy requires MLS, then MLS.
    pub async fn im(&self, other: &UserId) -> Result<RoomId> {
        self.im_with_mode(other, None).await
    }

    /// [`Self::im`], creating a new IM in `mode` (`None`: as the firms'
    /// policies allow, managed first). An existing IM keeps its mode.
    pub async fn im_with_mode(&self, other: &UserId, mode: Option<RoomMode>) -> Result<RoomId> {
        if other == self.user() {
            return Err(ClientError::Input("cannot open an IM with yourself".into()));
        }
        let room = cloister_policy::im_room_id(self.user(), other);
        match self.room_state(&room).await {
            Ok(st) => {
                // The policy admits nothing else at this id; check anyway
                // before sending anything into it.
                let pair: std::collections::BTreeSet<UserId> =
                    [self.user().clone(), other.clone()].into();
                if st.kind != RoomKind::Im || st.members != pair {
                    tracing::error!(%room, "room at the 1:1 id is not this IM");
                    return Err(ClientError::Local(format!(
                        "SECURITY ALERT: room {room} at the 1:1 id of {} and {other} is not their IM \
                         (kind {:?}, members {:?}); refusing to use it",
                        self.user(),
                        st.kind,
                        st.members
                    )));
                }
                Ok(room)
            }
            Err(ClientError::Api(a)) if a.code == "no_such_room" => {
                let create = |mode: RoomMode| Action::Create {
                    kind: RoomKind::Im,
                    settings: RoomSettings {
                        mode,
                        ..RoomSettings::default()
                    },
                    members: vec![other.clone()],
                };
                let first = mode.unwrap_or(RoomMode::Managed);
                let mut created = self.append(&room, create(first)).await.map(|_| first);
                if mode.is_none()
                    && matches!(&created, Err(ClientError::Api(a)) if a.code == "room_mode")
                {
                    // a firm's policy requires end-to-end rooms
                    created = self
                        .append(&room, create(RoomMode::Mls))
                        .await
                        .map(|_| RoomMode::Mls);
                }
                match created {
                    Ok(RoomMode::Mls) => {
                        self.mls_create(&room).await?;
                        Ok(room)
                    }
                    Ok(RoomMode::Managed) => Ok(room),
                    // the other side created it at the same moment
                    Err(ClientError::Api(a)) if a.code == "log_conflict" => Ok(room),
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    pub async fn add_member(&self, room: &RoomId, user: &UserId) -> Result<RoomState> {
        let st = self
            .append(room, Action::Add { user: user.clone() })
            .await?;
        self.after_change(room, st).await
    }

    pub async fn remove_member(&self, room: &RoomId, user: &UserId) -> Result<RoomState> {
        let st = self
            .append(room, Action::Remove { user: user.clone() })
            .await?;
        self.after_change(room, st).await
    }

    /// In an MLS room a change of members is followed at once by the
    /// commit that makes the group match it.
    async fn after_change(&self, room: &RoomId, st: RoomState) -> Result<RoomState> {
        if st.settings.mode == cloister_proto::room::RoomMode::Mls {
            self.mls_reconcile(room).await?;
        }
        Ok(st)
    }

    pub async fn leave(&self, room: &RoomId) -> Result<RoomState> {
        self.append(room, Action::Leave).await
    }

    pub async fn promote(&self, room: &RoomId, user: &UserId) -> Result<RoomState> {
        self.append(room, Action::Promote { user: user.clone() })
            .await
    }

    pub async fn demote(&self, room: &RoomId, user: &UserId) -> Result<RoomState> {
        self.append(room, Action::Demote { user: user.clone() })
            .await
    }

    /// Join a public room of my firm.
    pub async fn join(&self, room: &RoomId) -> Result<RoomState> {
        self.append(room, Action::Join).await
    }

    /// The firm's discoverable rooms (as the server lists them; joining
    /// one replays and verifies its log first).
    pub async fn room_directory(&self) -> Result<Vec<RoomSummary>> {
        self.server(|h, s| h.get(format!("{s}/v1/room-directory")))
            .await
    }

    /// A discoverable room by name (exactly one of that name).
    pub async fn resolve_public_room(&self, name: &str) -> Result<RoomId> {
        let hits: Vec<RoomId> = self
            .room_directory()
            .await?
            .into_iter()
            .filter(|r| r.settings.name == name)
            .map(|r| r.room)
            .collect();
        match hits.as_slice() {
            [one] => Ok(*one),
            [] => Err(ClientError::Input(format!(
                "no discoverable room called {name:?}"
            ))),
            _ => Err(ClientError::Input(format!(
                "several discoverable rooms are called {name:?}; use the room id"
            ))),
        }
    }

    pub async fn set_settings(&self, room: &RoomId, settings: RoomSettings) -> Result<RoomState> {
        self.append(room, Action::Settings { settings }).await
    }

    /// Rooms the server lists for this user (names and members as the server reports them).
    pub async fn list_rooms(&self) -> Result<Vec<RoomSummary>> {
        self.server(|h, s| h.get(format!("{s}/v1/rooms"))).await
    }
}

/// The users a statement brings into a room.
fn joining(a: &Action) -> Vec<&UserId> {
    match a {
        Action::Create { members, .. } => members.iter().collect(),
        Action::Add { user } => vec![user],
        _ => Vec::new(),
    }
}
