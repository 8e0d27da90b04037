//! Retention at the vault: a KM-signed purge order deletes expired
//! envelopes outside holds, leaves tombstones and scrubs the database.

use super::*;

impl Vault {
    pub(crate) async fn purge(
        &self,
        cert: &DeviceCert,
        order: &cloister_proto::km::SignedBlob,
    ) -> Result<PurgeResponse, ApiError> {
        let o: PurgeOrder =
            verify_blob(&self.km_pk, signed::PURGE, order, "purge order").map_err(|_| {
                ApiError::forbidden(
                    "bad_order",
                    "the purge order is not signed by the tenant's KM",
                )
            })?;
        if o.tenant != self.tenant {
            return Err(ApiError::forbidden(
                "wrong_tenant",
                "the purge order is for another tenant",
            ));
        }
        let last = self
            .store
            .vault_meta(META_LAST_PURGE)
            .await
            .map_err(ApiError::internal)?
            .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0);
        if o.issued_ms <= last || o.issued_ms.saturating_add(3_600_000) < now_millis() {
            return Err(ApiError::conflict(
                "stale_order",
                "this purge order is older than one already applied, or over an hour old (replayed)",
            ));
        }
        let (mut deleted, mut kept) = (0u64, 0u64);
        for rp in &o.rooms {
            let (expired, held) = self
                .store
                .expired(&rp.room, rp.before_ms, &rp.held)
                .await
                .map_err(ApiError::internal)?;
            kept += held;
            for (message_id, sha) in expired {
                let rec = AuditRecord {
                    ts: now_millis(),
                    actor: Some(cert.user.clone()),
                    event: AuditEvent::EnvelopeDeleted {
                        message_id: message_id.clone(),
                        room: rp.room,
                        envelope_sha256: hex::encode(&sha),
                    },
                };
                self.log
                    .append_with(&rec, Some(SideEffect::DeleteEnvelope { message_id }))
                    .await?;
                deleted += 1;
            }
        }
        self.store
            .vault_set_meta(META_LAST_PURGE, &o.issued_ms.to_be_bytes())
            .await
            .map_err(ApiError::internal)?;
        if deleted > 0 {
            // No WAL frame keeps a deleted envelope's page image; the
            // database's freed space is already zero (secure_delete).
            self.store.vault_scrub().await.map_err(ApiError::internal)?;
        }
        tracing::info!(deleted, kept, "retention purge applied");
        Ok(PurgeResponse {
            deleted,
            kept_for_hold: kept,
        })
    }
}
