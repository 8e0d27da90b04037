//! Rooms between firms at the KM: certificates of other firms' devices,
//! the partner keys this firm's devices trust, and the KM-to-KM exchange of
//! epoch keys. (docs/federation.md, ADR 0014)
//!
//! ```text
//!  partner KM (bank)                                  home KM (acme)
//!   bob's device asks for epoch e of acme's room
//!   verify the log itself (own policy, own controls)
//!   bob may read e? ── no ──▶ refused
//!   key stored? ── no ──▶ KmKeyRequest{room, epochs, log, certs}
//!                         signed by bank's KM ───POST /v1/federation/room-keys──▶
//!                                                   bank pinned? signature? fresh?
//!                                                   verify the log (own policy)
//!                                                   a bank member may read e?
//!                         ◀── KmKeyGrant, keys HPKE-sealed to bank's pinned
//!                             exchange key, signed by acme's KM; audited
//!   verify under acme's pinned key, open, re-wrap under bank's TMK, audit
//!   seal to bob's device ──▶ released
//! ```

use super::*;
use cloister_crypto::signed::{
    KM_KEY_GRANT, KM_KEY_REQUEST, PARTNER_KEYS, km_sign_blob, verify_blob,
};
use cloister_proto::federation::{ExchangedKey, KmKeyGrant, KmKeyRequest, PartnerKey, PartnerKeys};
use cloister_proto::km::SignedBlob;

/// Prefix of the `meta` rows that keep other firms' device certificates.
const META_FOREIGN_CERT: &str = "foreign_cert:";
/// How long a KM-to-KM call may take.
const EXCHANGE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl Km {
    /// The signing key of `tenant`'s KM as this KM trusts it: its own, or
    /// a partner's pinned key.
    pub(crate) fn firm_key(&self, tenant: &TenantId) -> Option<[u8; 32]> {
        if tenant == &self.tenant {
            return Some(self.signer.public());
        }
        self.trusted(tenant).map(|id| id.sign_pk)
    }

    /// Take certificates of other firms' devices (relayed by a device or a
    /// partner KM): each must verify under its firm's pinned key. Kept, so
    /// later log entries of those devices verify.
    pub(crate) async fn learn_certs(&self, certs: &[SignedCert]) -> Result<(), Denied> {
        if certs.len() > limits::MAX_LOG_BATCH {
            return Err(Denied::too_large("too many certificates"));
        }
        for sc in certs {
            let peek: DeviceCert = serde_json::from_slice(sc.body.as_slice())
                .map_err(|e| Denied::malformed("bad_cert", e.to_string()))?;
            if peek.tenant == self.tenant {
                // this firm's own devices are known from its own records
                continue;
            }
            // a renewed certificate (issued later) replaces the one known
            if self
                .foreign_cached(&peek.device)
                .is_some_and(|c| (c.issued_at, c.not_after) >= (peek.issued_at, peek.not_after))
            {
                continue;
            }
            let key = self.firm_key(&peek.tenant).ok_or_else(|| {
                Denied::forbidden(
                    "not_trusted",
                    format!("{} is not a trusted firm", peek.tenant),
                )
            })?;
            let cert = verify_cert(&key, sc).map_err(|_| {
                Denied::forbidden(
                    "bad_cert",
                    format!("a certificate is not signed by {}'s KM", peek.tenant),
                )
            })?;
            if cert.user.tenant() != cert.tenant {
                return Err(Denied::forbidden(
                    "bad_cert",
                    "a certificate names a user of another firm than its issuer",
                ));
            }
            let key = format!("{META_FOREIGN_CERT}{}", cert.device.to_hex());
            self.store
                .set_meta(&key, &serde_json::to_vec(sc).map_err(Denied::internal)?)
                .await
                .map_err(store_err)?;
            if let Ok(mut m) = self.foreign.lock() {
                m.insert(cert.device, Arc::new(cert));
            }
        }
        Ok(())
    }

    fn foreign_cached(&self, device: &DeviceId) -> Option<Arc<DeviceCert>> {
        self.foreign
            .lock()
            .ok()
            .and_then(|m| m.get(device).cloned())
    }

    /// Another firm's device certificate this KM verified before (under a
    /// key it still trusts), with the expiry check of the shared standing
    /// code. Revocation is that firm's KM's and the server's to enforce.
    async fn foreign_cert(&self, device: &DeviceId) -> Result<Arc<DeviceCert>, Denied> {
        let cert = match self.foreign_cached(device) {
            Some(c) => c,
            None => {
                let key = format!("{META_FOREIGN_CERT}{}", device.to_hex());
                let sc: SignedCert = self
                    .store
                    .get_meta(&key)
                    .await
                    .map_err(store_err)?
                    .and_then(|b| serde_json::from_slice(&b).ok())
                    .ok_or_else(|| {
                        Denied::unauthenticated(
                            "unknown_device",
                            format!(
                                "device {device} is not enrolled with this KM and no partner certificate for it was sent"
                            ),
                        )
                    })?;
                self.learn_certs(std::slice::from_ref(&sc)).await?;
                self.foreign_cached(device).ok_or_else(|| {
                    Denied::unauthenticated("unknown_device", format!("device {device}"))
                })?
            }
        };
        if self.firm_key(&cert.tenant).is_none() {
            return Err(Denied::forbidden(
                "not_trusted",
                format!("{} is no longer a trusted firm", cert.tenant),
            ));
        }
        cloister_standing::check(
            &cert,
            Some(&cert.tenant),
            now_millis(),
            &cloister_standing::Known {
                revoked: false,
                disabled: false,
            },
        )?;
        Ok(cert)
    }

    /// Who signed a log entry, and with which key: the room's home KM for
    /// its own statements, this firm's device (full standing), or another
    /// firm's device under its pinned firm key.
    pub(crate) async fn actor_of(
        &self,
        home: Option<&TenantId>,
        entry: &SignedStatement,
        actor: &DeviceId,
    ) -> Result<(UserId, [u8; 32]), Denied> {
        if cloister_policy::signed_by_km(entry) {
            let home = home.unwrap_or(&self.tenant);
            let key = self.firm_key(home).ok_or_else(|| {
                Denied::forbidden("not_trusted", format!("{home} is not a trusted firm"))
            })?;
            return Ok((cloister_policy::km_user(home), key));
        }
        let cert = match self.active_cert(actor).await {
            Ok(c) => c,
            Err(e) if e.code == "unknown_device" => self.foreign_cert(actor).await?,
            Err(e) => return Err(e),
        };
        Ok((cert.user.clone(), cert.sign_pk.0))
    }

    /// The signing keys of the firms trusted now.
    pub(crate) fn partner_list(&self) -> Vec<PartnerKey> {
        self.dir()
            .trusts
            .values()
            .filter(|t| t.active())
            .filter_map(|t| cloister_proto::federation::KmIdentity::parse(&t.km_key).ok())
            .map(|id| PartnerKey {
                tenant: id.tenant,
                sign_pk: Fixed(id.sign_pk),
            })
            .collect()
    }

    /// The keys of the firms trusted now, signed for this firm's devices.
    pub(crate) fn partner_keys(&self) -> Result<SignedBlob, Denied> {
        let pk = PartnerKeys {
            tenant: self.tenant.clone(),
            partners: self.partner_list(),
            issued_ms: now_millis(),
        };
        km_sign_blob(&self.signer, PARTNER_KEYS, &pk).map_err(Denied::internal)
    }

    async fn exchange_refused(
        &self,
        room: &RoomId,
        epochs: &[u64],
        tenant: &TenantId,
        e: Denied,
    ) -> Denied {
        tracing::warn!(%room, %tenant, code = e.code, "key exchange refused");
        if let Err(err) = self
            .record(
                None,
                AuditEvent::KeyExchange {
                    room: *room,
                    epochs: epochs.to_vec(),
                    tenant: tenant.clone(),
                    step: "refused".into(),
                    reason: Some(format!("{}: {}", e.code, e.message)),
                },
            )
            .await
        {
            return err;
        }
        e
    }

    /// Home KM: a partner KM asks for epoch keys of a room homed here.
    pub async fn serve_key_request(&self, blob: &SignedBlob) -> Result<SignedBlob, Denied> {
        let peek: KmKeyRequest = serde_json::from_slice(blob.body.as_slice())
            .map_err(|e| Denied::malformed("bad_request", e.to_string()))?;
        let (room, epochs, from) = (peek.room, peek.epochs.clone(), peek.from.clone());
        match self.grant(blob, &peek).await {
            Ok(g) => Ok(g),
            Err(e) => Err(self.exchange_refused(&room, &epochs, &from, e).await),
        }
    }

    async fn grant(&self, blob: &SignedBlob, peek: &KmKeyRequest) -> Result<SignedBlob, Denied> {
        let partner = self
            .trusted(&peek.from)
            .filter(|_| peek.from != self.tenant);
        let partner = partner.ok_or_else(|| {
            Denied::forbidden(
                "not_trusted",
                format!("{} is not a trusted firm of {}", peek.from, self.tenant),
            )
        })?;
        let req: KmKeyRequest = verify_blob(&partner.sign_pk, KM_KEY_REQUEST, blob, "key request")
            .map_err(|_| {
                Denied::forbidden(
                    "bad_signature",
                    format!("the request is not signed by {}'s pinned KM key", peek.from),
                )
            })?;
        if req.home != self.tenant {
            return Err(Denied::forbidden(
                "wrong_tenant",
                format!("the request is for {}'s KM", req.home),
            ));
        }
        if req.epochs.is_empty() || req.epochs.len() > limits::MAX_EPOCHS_PER_REQUEST {
            return Err(Denied::malformed(
                "bad_epochs",
                format!("ask for 1 to {} epochs", limits::MAX_EPOCHS_PER_REQUEST),
            ));
        }
        if !cloister_proto::within_skew(req.ts) {
            return Err(Denied::unauthenticated(
                "stale_request",
                "request timestamp is outside the allowed clock skew",
            ));
        }
        let skew = limits::MAX_SKEW_SECS * 1000;
        let fresh = self
            .store
            .use_nonce(
                &format!("km:{}", req.from),
                &req.nonce.0,
                req.ts,
                now_millis().saturating_sub(2 * skew),
            )
            .await
            .map_err(store_err)?;
        if !fresh {
            return Err(Denied::conflict(
                "replayed_request",
                "this request was already processed",
            ));
        }
        self.learn_certs(&req.certs).await?;
        let state = self
            .judged_state(&req.room, &req.log)
            .await?
            .ok_or_else(|| Denied::not_found("unknown_room", format!("no room {}", req.room)))?;
        if state.tenant != self.tenant {
            return Err(Denied::forbidden(
                "not_home",
                format!("room {} is homed at {}, not here", req.room, state.tenant),
            ));
        }
        for &e in &req.epochs {
            let has_member = state
                .grants
                .keys()
                .filter(|u| u.tenant() == req.from)
                .any(|u| state.may_read(u, e));
            if !has_member {
                return Err(Denied::forbidden(
                    "no_members",
                    format!(
                        "{} has no member entitled to epoch {e} of room {} in the verified log",
                        req.from, req.room
                    ),
                ));
            }
        }
        let mut keys = Vec::with_capacity(req.epochs.len());
        for &e in &req.epochs {
            let k = self.room_key(&req.room, e).await?;
            let (enc, ct) = hpke_seal::seal_exchanged_key(
                &partner.exchange_pk,
                &self.tenant,
                &req.from,
                &req.room,
                e,
                &k,
            )
            .map_err(Denied::internal)?;
            keys.push(ExchangedKey {
                epoch: e,
                enc: Fixed(enc),
                ct: ct.into(),
            });
        }
        self.record(
            None,
            AuditEvent::KeyExchange {
                room: req.room,
                epochs: req.epochs.clone(),
                tenant: req.from.clone(),
                step: "sent".into(),
                reason: None,
            },
        )
        .await?;
        tracing::info!(room = %req.room, partner = %req.from, epochs = ?req.epochs, "epoch keys sealed to a partner KM");
        let g = KmKeyGrant {
            home: self.tenant.clone(),
            to: req.from,
            room: req.room,
            seq: state.seq,
            head: Fixed(state.head),
            keys,
            ts: now_millis(),
        };
        km_sign_blob(&self.signer, KM_KEY_GRANT, &g).map_err(Denied::internal)
    }

    /// A trusted firm's pinned identity and its KM's address (both are
    /// needed to call it).
    pub(crate) fn partner_km(
        &self,
        firm: &TenantId,
    ) -> Option<(cloister_proto::federation::KmIdentity, String)> {
        let url = self
            .dir()
            .trusts
            .get(firm)
            .filter(|t| t.active())
            .and_then(|t| t.km_url.clone())?;
        Some((self.trusted(firm)?, url))
    }

    /// Post a signed blob to a partner KM's `/v1/federation/{path}` and take
    /// its signed answer (the caller verifies it under the pinned key).
    /// `codes`: the refusal codes for an unreachable and a refusing KM.
    pub(crate) async fn call_partner(
        &self,
        firm: &TenantId,
        url: &str,
        path: &str,
        blob: &SignedBlob,
        codes: (&'static str, &'static str),
        what: &str,
    ) -> Result<SignedBlob, Denied> {
        let (unreachable, refused) = codes;
        let resp = self
            .km_http()
            .post(format!(
                "{}/v1/federation/{path}",
                url.trim_end_matches('/')
            ))
            .timeout(EXCHANGE_TIMEOUT)
            .json(blob)
            .send()
            .await
            .map_err(|e| {
                Denied::unavailable(
                    unreachable,
                    format!("the KM of {firm} cannot be reached: {}", e.without_url()),
                )
            })?;
        if !resp.status().is_success() {
            let status = resp.status().as_u16();
            let body: cloister_proto::ErrorBody =
                resp.json().await.unwrap_or(cloister_proto::ErrorBody {
                    error: "unknown".into(),
                    message: String::new(),
                });
            return Err(Denied::forbidden(
                refused,
                format!(
                    "the KM of {firm} refused {what} ({status} {}: {})",
                    body.error, body.message
                ),
            ));
        }
        resp.json().await.map_err(|e| {
            Denied::unavailable(
                unreachable,
                format!("the KM of {firm} answered badly: {}", e.without_url()),
            )
        })
    }

    /// The state a home KM judges a partner's request on: its own log
    /// caught up from the messaging server when it knows the server (a
    /// partner KM cannot make it take entries the server never had);
    /// otherwise the partner's log, verified like any relayed log.
    async fn judged_state(
        &self,
        room: &RoomId,
        partner_log: &[SignedStatement],
    ) -> Result<Option<Arc<RoomState>>, Denied> {
        let Some(server) = self.notifier.server() else {
            return self.ingest(room, 0, partner_log).await;
        };
        let http = self.km_http();
        for _ in 0..(limits::MAX_LOG_BATCH / limits::MAX_PAGE as usize) {
            let before = self.room_state(room).await?.map(|s| s.seq);
            let from = before.map_or(0, |s| s + 1);
            self.catch_up(&http, &server, room, from).await?;
            let after = self.room_state(room).await?.map(|s| s.seq);
            if after == before || after.is_some_and(|s| s + 1 - from < limits::MAX_PAGE as u64) {
                break;
            }
        }
        self.room_state(room).await
    }

    /// Partner KM: make sure the keys of `epochs` of a room homed at
    /// another firm are stored here, asking the home KM for those missing.
    pub(crate) async fn partner_room_keys(
        &self,
        state: &RoomState,
        epochs: &[u64],
    ) -> Result<(), Denied> {
        let room = state.room;
        let _one = self.exchanges.lock(&room).await;
        let mut missing = Vec::new();
        for &e in epochs {
            if self
                .store
                .get_room_key(&room.to_hex(), e)
                .await
                .map_err(store_err)?
                .is_none()
            {
                missing.push(e);
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        let home = &state.tenant;
        let Some((id, url)) = self.partner_km(home) else {
            return Err(Denied::forbidden(
                "not_trusted",
                format!(
                    "room {room} is homed at {home}, which this firm does not trust (or whose KM address it was not given)"
                ),
            ));
        };
        let blob = self.key_request(state, &missing).await?;
        let grant = self
            .call_partner(
                home,
                &url,
                "room-keys",
                &blob,
                ("home_km_unreachable", "home_km_refused"),
                "the key exchange",
            )
            .await?;
        let g: KmKeyGrant =
            verify_blob(&id.sign_pk, KM_KEY_GRANT, &grant, "key grant").map_err(|_| {
                Denied::forbidden(
                    "bad_signature",
                    format!("the key grant is not signed by {home}'s pinned KM key"),
                )
            })?;
        if g.home != *home || g.to != self.tenant || g.room != room {
            return Err(Denied::forbidden(
                "bad_grant",
                "the key grant is for another room or firm",
            ));
        }
        let _keys = self.keys_lock.read().await;
        let mut got = Vec::new();
        for k in &g.keys {
            if !missing.contains(&k.epoch) || got.contains(&k.epoch) {
                return Err(Denied::forbidden(
                    "bad_grant",
                    format!(
                        "the key grant holds epoch {}, which was not asked for",
                        k.epoch
                    ),
                ));
            }
            let key = hpke_seal::open_exchanged_key(
                &self.exchange,
                home,
                &self.tenant,
                &room,
                k.epoch,
                &k.enc.0,
                k.ct.as_slice(),
            )
            .map_err(|_| Denied::forbidden("bad_grant", "an exchanged key does not open"))?;
            let aad = keys::room_key_aad(&self.tenant, &room, k.epoch);
            let w = self
                .provider
                .wrap_destroyable(&aad, key.expose())
                .map_err(Denied::from)?;
            self.store
                .put_room_key(&room.to_hex(), k.epoch, &w)
                .await
                .map_err(store_err)?;
            got.push(k.epoch);
        }
        self.record(
            None,
            AuditEvent::KeyExchange {
                room,
                epochs: got.clone(),
                tenant: home.clone(),
                step: "received".into(),
                reason: None,
            },
        )
        .await?;
        tracing::info!(%room, %home, epochs = ?got, "epoch keys received from the home KM");
        Ok(())
    }

    /// The signed request for `epochs` of a room homed elsewhere: this KM's
    /// verified log and the certificates of its actors not of the home firm.
    pub async fn key_request(
        &self,
        state: &RoomState,
        epochs: &[u64],
    ) -> Result<SignedBlob, Denied> {
        let rows = self
            .store
            .room_log(&state.room, 0, limits::MAX_LOG_BATCH as u32)
            .await
            .map_err(store_err)?;
        let log = rows
            .iter()
            .map(|r| serde_json::from_slice(&r.entry))
            .collect::<Result<Vec<SignedStatement>, _>>()
            .map_err(Denied::internal)?;
        let mut certs = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for e in &log {
            if cloister_policy::signed_by_km(e) || !seen.insert(e.actor) {
                continue;
            }
            if let Some(sc) = self.signed_cert_of(&e.actor, &state.tenant).await? {
                certs.push(sc);
            }
        }
        let req = KmKeyRequest {
            from: self.tenant.clone(),
            home: state.tenant.clone(),
            room: state.room,
            epochs: epochs.to_vec(),
            log,
            certs,
            ts: now_millis(),
            nonce: Fixed(cloister_crypto::random_bytes().map_err(Denied::internal)?),
        };
        km_sign_blob(&self.signer, KM_KEY_REQUEST, &req).map_err(Denied::internal)
    }

    /// A device's signed certificate, unless it is of firm `skip`.
    async fn signed_cert_of(
        &self,
        device: &DeviceId,
        skip: &TenantId,
    ) -> Result<Option<SignedCert>, Denied> {
        if let Some(row) = self.store.get_device(device).await.map_err(store_err)? {
            return Ok(Some(
                serde_json::from_slice(&row.cert).map_err(Denied::internal)?,
            ));
        }
        let key = format!("{META_FOREIGN_CERT}{}", device.to_hex());
        let Some(b) = self.store.get_meta(&key).await.map_err(store_err)? else {
            return Ok(None);
        };
        let sc: SignedCert = serde_json::from_slice(&b).map_err(Denied::internal)?;
        let peek: DeviceCert =
            serde_json::from_slice(sc.body.as_slice()).map_err(Denied::internal)?;
        Ok((peek.tenant != *skip).then_some(sc))
    }
}
