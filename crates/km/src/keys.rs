//! Room and index keys: created at random, wrapped under a destroyable key
//! generation, released sealed (HPKE) to entitled devices.

use super::*;

impl Km {
    /// Record a refused key release (before the refusal is answered).
    async fn refuse_keys(
        &self,
        cert: &DeviceCert,
        room: &RoomId,
        epochs: &[u64],
        reason: String,
    ) -> Result<(), Denied> {
        self.record(
            Some(&cert.user),
            AuditEvent::KeyRefused {
                room: *room,
                epochs: epochs.to_vec(),
                user: cert.user.clone(),
                device: cert.device,
                reason,
            },
        )
        .await?;
        Ok(())
    }

    /// Blind-index keys per period (random, wrapped under the TMK), sealed to the device.
    pub(crate) async fn index_keys(
        &self,
        cert: &DeviceCert,
        periods: &[u32],
    ) -> Result<IndexKeysResponse, Denied> {
        let _keys = self.keys_lock.read().await;
        if periods.is_empty() || periods.len() > 120 {
            return Err(Denied::malformed("bad_periods", "ask for 1 to 120 periods"));
        }
        let lease_until = now_secs() + self.config.lease_secs;
        let mut keys = Vec::with_capacity(periods.len());
        for &p in periods {
            let aad = self.key_aad(INDEX_KEYS, p as u64)?;
            let wrapped = self.wrapped_key(INDEX_KEYS, p as u64, &aad).await?;
            let k = self.unwrap_key(&aad, &wrapped)?;
            keys.push(
                hpke_seal::seal_room_key(
                    &cert.hpke_pk.0,
                    &self.tenant,
                    &INDEX_ROOM,
                    p as u64,
                    &cert.device,
                    lease_until,
                    &k,
                )
                .map_err(Denied::internal)?,
            );
        }
        self.record(
            Some(&cert.user),
            AuditEvent::IndexKeysReleased {
                periods: periods.to_vec(),
                user: cert.user.clone(),
                device: cert.device,
            },
        )
        .await?;
        Ok(IndexKeysResponse { keys })
    }

    pub(crate) async fn room_key(&self, room: &RoomId, epoch: u64) -> Result<RoomKey, Denied> {
        // Not while a retention run re-wraps keys: a wrap read before it and
        // cached after it would be under a destroyed generation.
        let _keys = self.keys_lock.read().await;
        let aad = room_key_aad(&self.tenant, room, epoch);
        let cached = self
            .wrapped
            .lock()
            .ok()
            .and_then(|m| m.get(&(*room, epoch)).cloned());
        let wrapped = match cached {
            Some(w) => w,
            None => {
                let homed_here = self
                    .room_state(room)
                    .await?
                    .is_none_or(|s| s.tenant == self.tenant);
                let w = if homed_here {
                    self.wrapped_key(&room.to_hex(), epoch, &aad).await?
                } else {
                    self.store
                        .get_room_key(&room.to_hex(), epoch)
                        .await
                        .map_err(store_err)?
                        .ok_or_else(|| {
                            Denied::unavailable(
                                "key_not_exchanged",
                                format!("the home KM has not sent epoch {epoch} of room {room}"),
                            )
                        })?
                };
                let w = Arc::new(w);
                if let Ok(mut m) = self.wrapped.lock() {
                    m.insert((*room, epoch), w.clone());
                }
                w
            }
        };
        self.unwrap_key(&aad, &wrapped)
    }

    /// The associated data a stored key (name, n) is wrapped with.
    pub(crate) fn key_aad(&self, name: &str, n: u64) -> Result<Vec<u8>, Denied> {
        if name == INDEX_KEYS {
            return Ok(format!("cloister/index-key-wrap/v1|{}|{n}", self.tenant).into_bytes());
        }
        let room: RoomId = name.parse().map_err(Denied::internal)?;
        Ok(room_key_aad(&self.tenant, &room, n))
    }

    /// Retention's destruction: a new key generation, every kept key
    /// re-wrapped under it, the older generations destroyed in the key
    /// provider, and the database's old pages scrubbed. Shredded keys were
    /// under a destroyed generation: no copy of their wrapped bytes (a page,
    /// a WAL frame, a backup) can be unwrapped again.
    pub(crate) async fn destroy_old_generations(&self) -> Result<u32, Denied> {
        let _all = self.keys_lock.write().await;
        let g = self.provider.rotate().map_err(Denied::from)?;
        let mut rewrapped = Vec::new();
        for (name, n, w) in self.store.live_wrapped_keys().await.map_err(store_err)? {
            if provider::generation_of(&w).is_some_and(|wg| wg >= g) {
                continue;
            }
            let aad = self.key_aad(&name, n)?;
            let k = self
                .provider
                .unwrap_destroyable(&aad, &w)
                .map_err(Denied::from)?;
            let nw = self
                .provider
                .wrap_destroyable(&aad, k.expose())
                .map_err(Denied::from)?;
            rewrapped.push((name, n, w, nw));
        }
        self.store
            .rewrap_keys(&rewrapped)
            .await
            .map_err(store_err)?;
        // never destroy a generation a live key is still under
        let left = self.store.count_wrapped_below(g).await.map_err(store_err)?;
        if left > 0 {
            tracing::error!(
                left,
                generation = g,
                "keys are still under older generations; none destroyed"
            );
            return Err(Denied::internal(format!(
                "{left} key(s) are still under an older generation; nothing was destroyed"
            )));
        }
        self.provider.destroy_before(g).map_err(Denied::from)?;
        if let Ok(mut m) = self.wrapped.lock() {
            m.clear();
        }
        self.store.km_scrub().await.map_err(store_err)?;
        tracing::info!(
            generation = g,
            rewrapped = rewrapped.len(),
            "older key generations destroyed"
        );
        Ok(g)
    }

    /// The key stored under (name, n), wrapped under the current generation;
    /// created at random on first use. Callers hold `keys_lock` (read).
    pub(crate) async fn wrapped_key(
        &self,
        name: &str,
        n: u64,
        aad: &[u8],
    ) -> Result<Vec<u8>, Denied> {
        if let Some(w) = self.store.get_room_key(name, n).await.map_err(store_err)? {
            if w.is_empty() {
                return Err(Denied::gone(
                    "key_shredded",
                    format!("the key of epoch {n} was destroyed by retention"),
                ));
            }
            return Ok(w);
        }
        let k = RoomKey::generate().map_err(Denied::internal)?;
        let w = self
            .provider
            .wrap_destroyable(aad, k.expose())
            .map_err(Denied::from)?;
        // If another request created it first, the stored one wins.
        self.store
            .put_room_key(name, n, &w)
            .await
            .map_err(store_err)
    }

    /// Unwrap through the key provider (every use: a crypto-lock takes effect at once).
    pub(crate) fn unwrap_key(&self, aad: &[u8], wrapped: &[u8]) -> Result<RoomKey, Denied> {
        let k = self
            .provider
            .unwrap_destroyable(aad, wrapped)
            .map_err(Denied::from)?;
        RoomKey::from_slice(k.expose()).map_err(Denied::internal)
    }

    pub(crate) async fn room_keys(
        &self,
        cert: &DeviceCert,
        room: &RoomId,
        epochs: &[u64],
        log_from: u64,
        log: &[SignedStatement],
    ) -> Result<RoomKeysResponse, Denied> {
        if epochs.is_empty() || epochs.len() > limits::MAX_EPOCHS_PER_REQUEST {
            return Err(Denied::malformed(
                "bad_epochs",
                format!("ask for 1 to {} epochs", limits::MAX_EPOCHS_PER_REQUEST),
            ));
        }
        let state = self.ingest(room, log_from, log).await?.ok_or_else(|| {
            Denied::not_found(
                "unknown_room",
                format!("the KM has no verified log for room {room}; send it"),
            )
        })?;
        // An MLS room's keys are agreed by its members' devices; the KM
        // makes none (ADR 0028).
        if state.settings.mode == cloister_proto::room::RoomMode::Mls {
            self.refuse_keys(cert, room, epochs, "mls_room".into())
                .await?;
            return Err(Denied::forbidden(
                "mls_room",
                format!(
                    "room {room} is an MLS room: its keys are agreed by the members' devices, and the KM holds none"
                ),
            ));
        }
        // The firm's gateway reads the bridged rooms it is the gateway of,
        // and nothing else.
        if cert.roles.contains(&Role::Gateway)
            && !cloister_policy::is_gateway_of(&state, &cert.user)
        {
            self.refuse_keys(cert, room, epochs, "not_bridged".into())
                .await?;
            return Err(Denied::forbidden(
                "not_bridged",
                format!(
                    "{} is a gateway: it reads only the bridged rooms it is the gateway of, and room {room} is not one",
                    cert.user
                ),
            ));
        }
        // A surveillance role may read any existing epoch of a room of its
        // tenant; every such release is logged as one.
        // the firm's malware scanner reads files the same way, logged as such
        let inspector = cert.roles.contains(&Role::Inspector);
        let surveil = cert.roles.contains(&Role::Surveillance) || inspector;
        let mut surveillance = false;
        for &e in epochs {
            if !state.may_read(&cert.user, e) && surveil && e <= state.epoch {
                surveillance = true;
                continue;
            }
            if !state.may_read(&cert.user, e) {
                let why = if e > state.epoch {
                    format!(
                        "epoch {e} of room {room} does not exist in the verified membership log"
                    )
                } else {
                    format!("{} is not entitled to epoch {e} of room {room}", cert.user)
                };
                tracing::warn!(user = %cert.user, device = %cert.device, %room, epoch = e, "key release refused");
                self.refuse_keys(cert, room, epochs, "not_entitled".into())
                    .await?;
                return Err(Denied::forbidden("not_entitled", why));
            }
        }
        // A barrier between two members (until the eviction lands), or a
        // room shared with another firm without `external_chat`: no keys.
        if !surveillance
            && state.is_member(&cert.user)
            && let Err(w) = self.rules().may_hold_keys(&self.tenant, &state, &cert.user)
        {
            tracing::warn!(user = %cert.user, %room, "key release refused: {}", w.code());
            self.refuse_keys(cert, room, epochs, format!("{}: {w}", w.code()))
                .await?;
            return Err(Denied::forbidden(w.code(), w.to_string()));
        }
        // A room homed at another firm: its keys come from that firm's KM.
        if state.tenant != self.tenant {
            self.partner_room_keys(&state, epochs).await?;
        }
        let lease_until = now_secs() + self.config.lease_secs;
        let mut keys = Vec::with_capacity(epochs.len());
        for &e in epochs {
            let k = self.room_key(room, e).await?;
            keys.push(
                hpke_seal::seal_room_key(
                    &cert.hpke_pk.0,
                    &self.tenant,
                    room,
                    e,
                    &cert.device,
                    lease_until,
                    &k,
                )
                .map_err(Denied::internal)?,
            );
        }
        // The release is acknowledged only once it is durable in the audit log.
        self.record(
            Some(&cert.user),
            AuditEvent::KeyReleased {
                room: *room,
                epochs: epochs.to_vec(),
                user: cert.user.clone(),
                device: cert.device,
                lease_until,
                surveillance: surveillance && !inspector,
                inspection: surveillance && inspector,
                gateway: cert.roles.contains(&Role::Gateway),
            },
        )
        .await?;
        tracing::info!(user = %cert.user, device = %cert.device, %room, ?epochs, surveillance, "room keys released");
        Ok(RoomKeysResponse {
            keys,
            log_seq: state.seq,
            head: self.signed_head(&state)?,
        })
    }
}

pub(crate) fn room_key_aad(tenant: &TenantId, room: &RoomId, epoch: u64) -> Vec<u8> {
    format!("cloister/room-key-wrap/v1|{}|{}|{}", tenant, room, epoch).into_bytes()
}
