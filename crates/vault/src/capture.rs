//! Capture: who wrote the message (authorship), tombstones, and the
//! group-committed ingestion with its signed receipt.

use super::*;

impl Vault {
    pub(crate) fn receipt(
        &self,
        message_id: MessageId,
        m: &CaptureMeta,
    ) -> Result<SignedReceipt, ApiError> {
        let r = Receipt {
            tenant: self.tenant.clone(),
            message_id,
            ciphertext_sha256: Fixed(
                m.ciphertext_sha256
                    .clone()
                    .try_into()
                    .map_err(|_| ApiError::internal("corrupt hash"))?,
            ),
            envelope_sha256: Fixed(
                m.envelope_sha256
                    .clone()
                    .try_into()
                    .map_err(|_| ApiError::internal("corrupt hash"))?,
            ),
            received_ms: m.received_ms,
            log_index: m.log_index,
        };
        // Ed25519 is deterministic: a re-issued receipt is the same bytes.
        sign_receipt(&self.signer, &r).map_err(ApiError::internal)
    }

    /// A certificate verified under the KM key (or found in the cache).
    pub(crate) fn verified_cert(
        &self,
        sc: &cloister_proto::km::SignedCert,
    ) -> Result<Arc<VerifiedCert>, cloister_crypto::CryptoError> {
        let h = cloister_crypto::sha256(&[sc.body.as_slice(), &sc.sig.0].concat());
        if let Some(e) = self.certs.lock().ok().and_then(|m| m.get(&h).cloned()) {
            return Ok(e);
        }
        let cert = signed::verify_cert(&self.km_pk, sc)?;
        let key = VerifyKey::from_bytes(&cert.sign_pk.0)?;
        let e = Arc::new((cert, key));
        if let Ok(mut m) = self.certs.lock() {
            if m.len() >= MAX_CACHED_CERTS {
                m.clear();
            }
            m.insert(h, e.clone());
        }
        Ok(e)
    }

    /// The sender's certificate: this firm's under the KM key; another
    /// firm's (a message one of this firm's users received in a room
    /// shared with that firm) under the partner key the KM vouches for.
    async fn sender_cert(
        &self,
        sc: &cloister_proto::km::SignedCert,
        received: bool,
    ) -> Result<Arc<VerifiedCert>, ApiError> {
        let refuse =
            |why: String| ApiError::forbidden("unattributable", format!("capture refused: {why}"));
        let peek: DeviceCert = signed::peek_blob(
            &cloister_proto::km::SignedBlob {
                body: sc.body.clone(),
                sig: sc.sig,
            },
            "certificate",
        )
        .map_err(|e| refuse(e.to_string()))?;
        if peek.tenant == self.tenant {
            return self.verified_cert(sc).map_err(|_| {
                refuse("the sender's certificate is not signed by the tenant's KM".into())
            });
        }
        if !received {
            return Err(refuse("the sender belongs to another tenant".into()));
        }
        let partner = || {
            self.partners
                .read()
                .ok()
                .and_then(|p| p.get(&peek.tenant).copied())
        };
        if partner().is_none() {
            // a firm pinned since the last pull: ask the KM now, once
            if let Err(e) = self.pull_deny_list().await {
                tracing::warn!("vault deny list not refreshed: {e}");
            }
        }
        let key = partner().ok_or_else(|| {
            refuse(format!(
                "the sender's firm {} is not one the tenant's KM trusts",
                peek.tenant
            ))
        })?;
        let cert = signed::verify_cert(&key, sc).map_err(|_| {
            refuse(format!(
                "the sender's certificate is not signed by {}'s KM",
                peek.tenant
            ))
        })?;
        if cert.user.tenant() != cert.tenant {
            return Err(refuse(
                "the certificate names a user of another firm".into(),
            ));
        }
        let vk = VerifyKey::from_bytes(&cert.sign_pk.0)
            .map_err(|_| refuse("the sender's key is malformed".into()))?;
        Ok(Arc::new((cert, vk)))
    }

    /// Who wrote the captured message: the sender device's certificate
    /// (signed by the tenant KM) and its signature over the header and the
    /// ciphertext's hash; the header must name the envelope's message, room
    /// and time. A device captures as sender only its own messages.
    pub(crate) async fn check_authorship(
        &self,
        cert: &DeviceCert,
        env: &SealedEnvelope,
        capture: &Capture,
    ) -> Result<(), ApiError> {
        let refuse =
            |why: String| ApiError::forbidden("unattributable", format!("capture refused: {why}"));
        let sender = self
            .sender_cert(&capture.sender_cert, capture.received)
            .await?;
        let signed = cloister_crypto::message::header_signed_bytes(
            capture.header.as_slice(),
            &env.ciphertext_sha256.0,
        );
        let not_covered = || refuse("the sender's signature does not cover this message".into());
        if !self.verifier.check(&sender.1, signed, &capture.sig.0).await {
            return Err(not_covered());
        }
        let h = cloister_crypto::message::read_signed_header(capture.header.as_slice())
            .map_err(|_| not_covered())?;
        if h.id != env.message_id || h.room != env.room || h.ts != env.ts {
            return Err(refuse(
                "the envelope's message, room or time differ from the signed header".into(),
            ));
        }
        if h.device != sender.0.device || h.sender != sender.0.user {
            return Err(refuse(format!(
                "the header names {} on device {}, not the certificate's holder",
                h.sender, h.device
            )));
        }
        if !capture.received && h.device != cert.device {
            return Err(refuse(
                "a device captures as sender only the messages it signed".into(),
            ));
        }
        Ok(())
    }

    async fn status(&self, message_id: &MessageId) -> Result<CaptureStatus, ApiError> {
        self.statuses
            .status(*message_id)
            .await
            .map_err(ApiError::internal)
    }

    pub(crate) async fn capture(
        &self,
        cert: &DeviceCert,
        capture: Capture,
    ) -> Result<SignedReceipt, ApiError> {
        let r = self.capture_checked(cert, capture).await;
        if let Err(e) = &r {
            self.metrics.captures.inc("refused");
            self.metrics.refused.inc(e.code);
        }
        r
    }

    async fn capture_checked(
        &self,
        cert: &DeviceCert,
        capture: Capture,
    ) -> Result<SignedReceipt, ApiError> {
        if capture.envelope.len() > MAX_ENVELOPE || capture.tokens.len() > MAX_TOKENS {
            return Err(ApiError::too_large(format!(
                "a capture holds at most {MAX_ENVELOPE} bytes of envelope and {MAX_TOKENS} tokens"
            )));
        }
        let env: SealedEnvelope =
            serde_json::from_slice(capture.envelope.as_slice()).map_err(|e| {
                ApiError::bad_request("bad_envelope", format!("sealed envelope is malformed: {e}"))
            })?;
        if env.tenant != self.tenant {
            return Err(ApiError::forbidden(
                "wrong_tenant",
                "the envelope is sealed for another tenant",
            ));
        }
        self.check_region(cert).await?;
        self.check_generation(env.generation).await?;
        // One capture of a message at a time: taken before its status is
        // read, so the status cannot change until this capture is done.
        let _one = Inflight::take(&self.inflight, env.message_id)?;
        self.capture_one(cert, &env, &capture).await
    }

    /// A capture while no other capture of its message can start: a message
    /// deleted by retention is refused before anything else; then who wrote
    /// it; then idempotency (the same envelope, or from a recipient any
    /// envelope of the same ciphertext, gets the stored receipt).
    async fn capture_one(
        &self,
        cert: &DeviceCert,
        env: &SealedEnvelope,
        capture: &Capture,
    ) -> Result<SignedReceipt, ApiError> {
        let status = self.status(&env.message_id).await?;
        if status == CaptureStatus::Deleted {
            return Err(deleted());
        }
        self.check_authorship(cert, env, capture).await?;
        let envelope_sha256 = cloister_crypto::sha256(capture.envelope.as_slice());
        if let CaptureStatus::Captured(m) = status {
            if m.envelope_sha256 == envelope_sha256
                || (capture.received && m.ciphertext_sha256 == env.ciphertext_sha256.0)
            {
                self.metrics.captures.inc("repeated");
                return self.receipt(env.message_id, &m);
            }
            return Err(ApiError::conflict(
                "capture_conflict",
                "another envelope is already captured for this message",
            ));
        }
        let r = self.ingest(cert, env, capture, envelope_sha256).await;
        if r.is_ok() {
            self.metrics.captures.inc("stored");
        }
        r
    }

    /// Store a new capture with its log entry; its receipt.
    async fn ingest(
        &self,
        cert: &DeviceCert,
        env: &SealedEnvelope,
        capture: &Capture,
        envelope_sha256: [u8; 32],
    ) -> Result<SignedReceipt, ApiError> {
        let id = env.message_id.to_hex();
        let received_ms = now_millis();
        let row = CaptureRow {
            message_id: id.clone(),
            room: env.room.to_hex(),
            ts: env.ts,
            ciphertext_sha256: env.ciphertext_sha256.0.to_vec(),
            envelope: capture.envelope.0.clone(),
            envelope_sha256: envelope_sha256.to_vec(),
            received_ms,
            period: capture.period,
            tokens: capture.tokens.iter().map(|t| t.0.to_vec()).collect(),
            device: cert.device.to_hex(),
            generation: env.generation,
        };
        let rec = AuditRecord {
            ts: received_ms,
            actor: Some(cert.user.clone()),
            event: AuditEvent::EnvelopeIngested {
                message_id: id,
                room: env.room,
                envelope_sha256: hex::encode(envelope_sha256),
                ciphertext_sha256: hex::encode(env.ciphertext_sha256.0),
                device: cert.device,
            },
        };
        let log_index = self
            .log
            .append_with(&rec, Some(SideEffect::Capture(Box::new(row))))
            .await?;
        tracing::debug!(message = %env.message_id, device = %cert.device, log_index, "envelope captured");
        self.receipt(
            env.message_id,
            &CaptureMeta {
                ciphertext_sha256: env.ciphertext_sha256.0.to_vec(),
                envelope_sha256: envelope_sha256.to_vec(),
                received_ms,
                log_index,
            },
        )
    }
}

/// A message being captured; released when the capture ends, however it
/// ends (a request dropped half way included).
pub(crate) struct Inflight<'a> {
    set: &'a std::sync::Mutex<std::collections::HashSet<MessageId>>,
    id: MessageId,
}

impl<'a> Inflight<'a> {
    pub(crate) fn take(
        set: &'a std::sync::Mutex<std::collections::HashSet<MessageId>>,
        id: MessageId,
    ) -> Result<Self, ApiError> {
        let mut f = set
            .lock()
            .map_err(|_| ApiError::internal("inflight lock"))?;
        if !f.insert(id) {
            return Err(ApiError::conflict(
                "capture_in_progress",
                "this message is being captured; retry",
            ));
        }
        Ok(Inflight { set, id })
    }
}

impl Drop for Inflight<'_> {
    fn drop(&mut self) {
        if let Ok(mut f) = self.set.lock() {
            f.remove(&self.id);
        }
    }
}

fn deleted() -> ApiError {
    ApiError::new(
        axum::http::StatusCode::GONE,
        "capture_deleted",
        "this message was deleted by retention; it is not captured again",
    )
}
