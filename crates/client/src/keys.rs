//! Room keys: released by the KM, cached with their lease, dropped when
//! retention destroys them.

use super::*;

impl Client {
    /// Room keys for the given epochs: from the leased cache, else from the KM.
    pub async fn room_keys(&self, room: &RoomId, epochs: &[u64]) -> Result<HashMap<u64, RoomKey>> {
        let now = now_secs();
        let mut out = HashMap::new();
        let mut missing = Vec::new();
        if let Ok(mut cache) = self.key_cache.lock() {
            // A key whose lease ended is gone from memory (zeroised) and
            // from the sealed cache on disk: a crypto-lock at the KM
            // reaches this device when the lease ends.
            let before = cache.len();
            cache.retain(|_, k| k.lease_until > now);
            if cache.len() < before {
                self.home.save_keys(&cache)?;
            }
            for &e in epochs {
                match cache.get(&(*room, e)) {
                    Some(k) if k.lease_until > now => {
                        out.insert(e, k.key.clone());
                    }
                    _ => missing.push(e),
                }
            }
        }
        if missing.is_empty() {
            return Ok(out);
        }
        missing.sort_unstable();
        missing.dedup();
        // The KM is the judge: if the server will not show us the log, ask
        // anyway with what we have (the KM may already hold the log).
        match self.room_state(room).await {
            Ok(_) => {}
            Err(ClientError::Api(a)) if a.code == "no_such_room" => {}
            Err(e) => return Err(e),
        }
        let from = self
            .km_seq
            .lock()
            .ok()
            .and_then(|m| m.get(room).map(|s| s + 1))
            .unwrap_or(0);
        let log = self.log_since(room, from).await;
        let mut r: Result<RoomKeysResponse> = self
            .km_request(KmOp::RoomKeys {
                room: *room,
                epochs: missing.clone(),
                log_from: from,
                certs: self.foreign_certs(&log).await,
                log,
            })
            .await;
        if matches!(&r, Err(ClientError::Api(a)) if a.code == "log_behind") {
            let log = self.log_since(room, 0).await;
            r = self
                .km_request(KmOp::RoomKeys {
                    room: *room,
                    epochs: missing.clone(),
                    log_from: 0,
                    certs: self.foreign_certs(&log).await,
                    log,
                })
                .await;
        }
        let r = r?;
        if let Ok(mut m) = self.km_seq.lock() {
            m.insert(*room, r.log_seq);
        }
        self.accept_head(room, &r.head)?;
        let mut cache = self
            .key_cache
            .lock()
            .map_err(|_| ClientError::Local("key cache poisoned".into()))?;
        for sk in &r.keys {
            if sk.room != *room || !missing.contains(&sk.epoch) {
                return Err(ClientError::Local(
                    "the KM answered with a key for something else".into(),
                ));
            }
            let key =
                cloister_crypto::hpke_seal::open_room_key(&self.keys, &self.profile.tenant, sk)?;
            cache.insert(
                (*room, sk.epoch),
                CachedKey {
                    key: key.clone(),
                    lease_until: sk.lease_until,
                },
            );
            out.insert(sk.epoch, key);
        }
        self.home.save_keys(&cache)?;
        for e in &missing {
            if !out.contains_key(e) {
                return Err(ClientError::Local(format!(
                    "the KM did not release epoch {e}"
                )));
            }
        }
        Ok(out)
    }

    /// A live `keys_shredded` notice: drop the keys of the epochs it names
    /// (a notice that does not verify names none).
    pub fn on_keys_shredded(
        &self,
        room: &RoomId,
        notice: &cloister_proto::km::SignedNotice,
    ) -> Result<()> {
        let epochs = self.shredded_epochs(room, std::slice::from_ref(notice));
        self.forget_keys(room, &epochs)
    }

    /// The epochs of `room` that KM-signed `keys_shredded` notices name (the
    /// server relays them; an unsigned or foreign claim is ignored, with an
    /// alert).
    pub(crate) fn shredded_epochs(
        &self,
        room: &RoomId,
        notices: &[cloister_proto::km::SignedNotice],
    ) -> Vec<u64> {
        let mut out = Vec::new();
        for n in notices {
            match signed::verify_notice(&self.profile.km_sign_pk.0, n) {
                Ok(cloister_proto::km::Notice::KeysShredded {
                    tenant, shredded, ..
                }) if tenant == self.profile.tenant => {
                    out.extend(shredded.iter().filter(|(r, _)| r == room).map(|(_, e)| *e));
                }
                _ => self.alert(format!(
                    "the server {} relayed a retention notice for room {room} that our KM did not sign; ignored",
                    self.profile.server
                )),
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Drop keys retention destroyed (announced by the KM through the server).
    pub fn forget_keys(&self, room: &RoomId, epochs: &[u64]) -> Result<()> {
        if epochs.is_empty() {
            return Ok(());
        }
        let mut c = self
            .key_cache
            .lock()
            .map_err(|_| ClientError::Local("key cache poisoned".into()))?;
        let before = c.len();
        c.retain(|(r, e), _| !(r == room && epochs.contains(e)));
        if c.len() != before {
            tracing::info!(%room, ?epochs, "keys destroyed by retention dropped from the cache");
            self.home.save_keys(&c)?;
        }
        Ok(())
    }

    /// Forget cached keys (e.g. to force a fresh check with the KM).
    pub fn clear_key_cache(&self) -> Result<()> {
        let mut c = self
            .key_cache
            .lock()
            .map_err(|_| ClientError::Local("key cache poisoned".into()))?;
        c.clear();
        self.home.save_keys(&c)
    }
}
