//! Devices: enrolment, standing (the shared check over the KM's records),
//! revocation, and the record of refused requests.

use super::*;
use crate::users::{code_hash, parse_roles};

impl Km {
    /// Enrol a device with a one-time code.
    pub async fn enrol(&self, req: &EnrolRequest) -> Result<SignedCert, Denied> {
        let transcript = enrol_transcript(&req.user, &req.code, &req.sign_pk.0, &req.hpke_pk.0);
        verify(
            &req.sign_pk.0,
            cloister_crypto::signed::ENROL,
            &transcript,
            &req.pop.0,
        )
        .map_err(|_| {
            Denied::unauthenticated(
                "bad_proof",
                "proof of possession of the device key is invalid",
            )
        })?;
        // the tenant's attestation policy, before the code is spent
        let attested = self.attest(req).await?;
        let invalid = || {
            Denied::unauthenticated(
                "invalid_code",
                format!(
                    "enrolment code is invalid, expired or already used \
                     (a code is burned after {MAX_CODE_TRIES} wrong tries)"
                ),
            )
        };
        let Some((user, expires)) = self
            .store
            .take_code(&code_hash(&req.code))
            .await
            .map_err(store_err)?
        else {
            self.wrong_code(&req.user).await?;
            return Err(invalid());
        };
        if user != req.user.as_str() || expires < now_secs() {
            return Err(invalid());
        }
        // the code names this user (checked above)
        let urow = self
            .store
            .get_user(&req.user)
            .await
            .map_err(store_err)?
            .ok_or_else(invalid)?;
        if urow.status != "active" {
            return Err(Denied::forbidden(
                "user_disabled",
                format!("{user} is disabled"),
            ));
        }
        if let Some(a) = &attested {
            self.spend_evidence(a).await?;
        }
        let device_id = cloister_crypto::keys::device_id_for(&req.sign_pk.0);
        if let Some(a) = &attested {
            self.keep_attestation(&device_id, a).await?;
        }
        let device = cloister_crypto::keys::device_id_for(&req.sign_pk.0);
        let now = now_secs();
        let cert = DeviceCert {
            tenant: self.tenant.clone(),
            user: req.user.clone(),
            device,
            sign_pk: req.sign_pk,
            hpke_pk: req.hpke_pk,
            roles: parse_roles(&urow.roles),
            issued_at: now,
            not_after: now + self.config.cert_secs,
            jurisdiction: self.jurisdiction_of(&req.user),
        };
        let signed = sign_cert(&self.signer, &cert).map_err(Denied::internal)?;
        self.store
            .put_device(&KmDeviceRow {
                device: device.to_hex(),
                user: user.clone(),
                cert: serde_json::to_vec(&signed).map_err(Denied::internal)?,
                status: "active".into(),
                issued_at: now,
            })
            .await
            .map_err(|e| match e {
                cloister_store::StoreError::Conflict(_) => {
                    Denied::conflict("device_exists", "this device key is already enrolled")
                }
                e => store_err(e),
            })?;
        self.record(
            Some(&req.user),
            AuditEvent::DeviceCertified {
                user: req.user.clone(),
                device,
                attested: attested
                    .as_ref()
                    .map(|a| format!("{}:{}", a.format, a.device)),
            },
        )
        .await?;
        tracing::info!(%user, %device, "device certified");
        Ok(signed)
    }

    /// A device's certificate (issued by this KM), if the device is in good
    /// standing: the shared check over the KM's own records.
    pub(crate) async fn active_cert(&self, device: &DeviceId) -> Result<Arc<DeviceCert>, Denied> {
        // an eviction after this point (a revocation racing this load)
        // keeps what is loaded below out of the cache
        let epoch = self.active_epoch.load(std::sync::atomic::Ordering::Acquire);
        let cached = self.active.lock().ok().and_then(|m| m.get(device).cloned());
        let (cert, facts) = match cached {
            // Only active devices of active users are cached; revocation and
            // disabling evict them.
            Some(c) => (
                c,
                cloister_standing::Known {
                    revoked: false,
                    disabled: false,
                },
            ),
            None => {
                let (c, facts) = self.load_cert(device).await?;
                (Arc::new(c), facts)
            }
        };
        cloister_standing::check(&cert, Some(&self.tenant), now_millis(), &facts)?;
        if worth_caching(&facts)
            && let Ok(mut m) = self.active.lock()
            && self.active_epoch.load(std::sync::atomic::Ordering::Acquire) == epoch
        {
            m.insert(*device, cert.clone());
        }
        Ok(cert)
    }

    /// Change the cache of active devices after a standing change (the
    /// database already says so): under its lock, with the epoch moved on
    /// so that a load that read the old standing does not put it back.
    pub(crate) fn evict_active(&self, f: impl FnOnce(&mut HashMap<DeviceId, Arc<DeviceCert>>)) {
        if let Ok(mut m) = self.active.lock() {
            f(&mut m);
            self.active_epoch
                .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        }
    }

    /// A device's stored certificate and what the KM's records say of it.
    pub(crate) async fn load_cert(
        &self,
        device: &DeviceId,
    ) -> Result<(DeviceCert, cloister_standing::Known), Denied> {
        let row = self
            .store
            .get_device(device)
            .await
            .map_err(store_err)?
            .ok_or_else(|| {
                Denied::unauthenticated(
                    "unknown_device",
                    format!("device {device} is not enrolled with this KM"),
                )
            })?;
        let sc: SignedCert = serde_json::from_slice(&row.cert).map_err(Denied::internal)?;
        let cert = verify_cert(&self.signer.public(), &sc).map_err(Denied::internal)?;
        let user = self.store.get_user(&cert.user).await.map_err(store_err)?;
        let facts = cloister_standing::Known {
            revoked: row.status != "active",
            disabled: user.map(|u| u.status) != Some("active".into()),
        };
        Ok((cert, facts))
    }

    pub(crate) async fn revoke_device(
        &self,
        actor: Option<&UserId>,
        device: &DeviceId,
    ) -> Result<AdminResponse, Denied> {
        if self
            .store
            .get_device(device)
            .await
            .map_err(store_err)?
            .is_none()
        {
            return Err(Denied::not_found(
                "unknown_device",
                format!("no device {device}"),
            ));
        }
        self.record(actor, AuditEvent::DeviceRevoked { device: *device })
            .await?;
        self.store
            .set_device_status(device, "revoked")
            .await
            .map_err(store_err)?;
        self.evict_active(|m| {
            m.remove(device);
        });
        tracing::info!(%device, "device revoked");
        let n = Notice::DeviceRevoked {
            tenant: self.tenant.clone(),
            device: *device,
            ts: now_secs(),
        };
        let signed = sign_notice(&self.signer, &n).map_err(Denied::internal)?;
        // the KM tells the server itself when it can; the caller forwards it too
        self.notifier.queue(signed.clone());
        Ok(AdminResponse {
            notice: Some(signed),
        })
    }

    /// Revoke a device for `cert`'s holder: an admin any device of the
    /// tenant, a user only their own.
    pub(crate) async fn revoke_device_for(
        &self,
        cert: &DeviceCert,
        device: &DeviceId,
    ) -> Result<AdminResponse, Denied> {
        if !cert.roles.contains(&Role::Admin) {
            let row = self.store.get_device(device).await.map_err(store_err)?;
            if row.is_none_or(|r| r.user != cert.user.as_str()) {
                tracing::warn!(user = %cert.user, %device, "revocation refused: not their device");
                return Err(Denied::forbidden(
                    "not_your_device",
                    "a user revokes only their own devices (an admin any)",
                ));
            }
        }
        self.revoke_device(Some(&cert.user), device).await
    }

    /// A new certificate for a device in good standing (the caller checked
    /// it: not expired, not revoked, user active): the same keys, the
    /// user's current roles, a new expiry. No enrolment code.
    pub(crate) async fn renew_cert(&self, cert: &DeviceCert) -> Result<SignedCert, Denied> {
        self.still_attested(&cert.device).await?;
        let urow = self
            .store
            .get_user(&cert.user)
            .await
            .map_err(store_err)?
            .ok_or_else(|| Denied::forbidden("user_disabled", "the user is gone"))?;
        let now = now_secs();
        let next = DeviceCert {
            roles: parse_roles(&urow.roles),
            issued_at: now,
            not_after: now + self.config.cert_secs,
            // a move to another jurisdiction reaches the certificate here
            jurisdiction: self.jurisdiction_of(&cert.user),
            ..cert.clone()
        };
        let signed = sign_cert(&self.signer, &next).map_err(Denied::internal)?;
        let bytes = serde_json::to_vec(&signed).map_err(Denied::internal)?;
        if !self
            .store
            .renew_device(&cert.device, &bytes, now)
            .await
            .map_err(store_err)?
        {
            return Err(Denied::forbidden(
                "device_revoked",
                format!("device {} is revoked or its user disabled", cert.device),
            ));
        }
        // the next request loads the new certificate with the standing
        // facts of that moment (never a cached "active" that a revocation
        // racing this renewal evicted)
        self.evict_active(|m| {
            m.remove(&cert.device);
        });
        self.record(
            Some(&cert.user),
            AuditEvent::DeviceRenewed {
                user: cert.user.clone(),
                device: cert.device,
                not_after: next.not_after,
            },
        )
        .await?;
        tracing::info!(user = %cert.user, device = %cert.device, "certificate renewed");
        Ok(signed)
    }

    /// A user's devices and their standing.
    pub(crate) async fn devices_of(&self, user: &UserId) -> Result<Vec<DeviceRecord>, Denied> {
        Ok(self
            .store
            .devices_of_user(user)
            .await
            .map_err(store_err)?
            .into_iter()
            .filter_map(|d| {
                Some(DeviceRecord {
                    device: d.device.parse().ok()?,
                    status: d.status,
                    issued_at: d.issued_at,
                })
            })
            .collect())
    }

    /// Which of `devices` (of the asker's tenant) are revoked or belong to
    /// a disabled user; unknown ones count as barred.
    pub(crate) async fn device_standing(
        &self,
        asker: &DeviceCert,
        devices: &[DeviceId],
    ) -> Result<cloister_proto::km::DeviceStandingAnswer, Denied> {
        if devices.len() > 1000 {
            return Err(Denied::too_large("ask about at most 1,000 devices at once"));
        }
        let mut barred = Vec::new();
        for d in devices {
            let ok = match self.store.get_device(d).await.map_err(store_err)? {
                Some(row) => {
                    let user: Option<UserId> = row.user.parse().ok();
                    row.status == "active"
                        && match &user {
                            Some(u) if u.tenant() == asker.tenant => self
                                .store
                                .get_user(u)
                                .await
                                .map_err(store_err)?
                                .is_some_and(|r| r.status == "active"),
                            _ => false,
                        }
                }
                None => false,
            };
            if !ok {
                barred.push(*d);
            }
        }
        Ok(cloister_proto::km::DeviceStandingAnswer { barred })
    }

    /// Log a refused key request from a device that is no longer in good standing.
    /// A wrong code for `user`: counted, and the user's code burned (and
    /// the burning audited) at [`MAX_CODE_TRIES`].
    async fn wrong_code(&self, user: &UserId) -> Result<(), Denied> {
        if let cloister_store::CodeTries::Burned = self
            .store
            .code_failed(user, MAX_CODE_TRIES)
            .await
            .map_err(store_err)?
        {
            tracing::warn!(%user, "enrolment code burned after {MAX_CODE_TRIES} wrong tries");
            self.record(
                None,
                AuditEvent::EnrolmentCodeBurned {
                    user: user.clone(),
                    tries: MAX_CODE_TRIES,
                },
            )
            .await?;
        }
        Ok(())
    }

    pub(crate) async fn record_refusal(&self, req: &SignedRequest, e: &Denied) {
        if !matches!(e.code, "device_revoked" | "user_disabled" | "cert_expired") {
            return;
        }
        let Ok(Some(row)) = self.store.get_device(&req.device).await else {
            return;
        };
        let Ok(sc) = serde_json::from_slice::<SignedCert>(&row.cert) else {
            return;
        };
        let Ok(cert) = verify_cert(&self.signer.public(), &sc) else {
            return;
        };
        let Ok(body) = verify_request(&cert.sign_pk.0, req) else {
            return;
        };
        if let KmOp::RoomKeys { room, epochs, .. } = body.op {
            let ev = AuditEvent::KeyRefused {
                room,
                epochs,
                user: cert.user.clone(),
                device: cert.device,
                reason: e.code.to_owned(),
            };
            if let Err(err) = self.record(Some(&cert.user), ev).await {
                tracing::error!("could not log a refused key request: {err}");
            }
        }
    }
}

/// Facts that admit the device (worth caching).
pub(crate) fn worth_caching(f: &cloister_standing::Known) -> bool {
    !f.revoked && !f.disabled
}

impl Km {
    /// The user's jurisdiction in the directory, as certificates carry it.
    pub(crate) fn jurisdiction_of(&self, user: &UserId) -> String {
        self.dir()
            .user(user)
            .and_then(|u| cloister_proto::canonical_jurisdiction(&u.entry().jurisdiction))
            .unwrap_or_default()
    }
}
