//! Proofs out of the audit log: inclusion of one entry, and every key
//! release of a room.

use super::*;

impl Km {
    /// The newest checkpoint as devices get it: with the witnesses'
    /// cosignatures when witnesses are configured.
    pub(crate) async fn checkpoint(&self) -> Result<(cloister_log::Checkpoint, String), Denied> {
        if self.witnesses.is_empty() {
            Ok(self.audit.checkpoint().await?)
        } else {
            Ok(self.audit.cosigned_checkpoint(&self.witnesses).await?)
        }
    }

    pub(crate) async fn prove(
        &self,
        index: u64,
        size: Option<u64>,
    ) -> Result<InclusionProof, Denied> {
        let size = size.unwrap_or_else(|| self.audit.size());
        let proof = self.audit.inclusion_proof(index, size)?;
        let data = self
            .audit
            .store()
            .audit_get(index)
            .await
            .map_err(store_err)?
            .ok_or_else(|| Denied::not_found("no_such_entry", format!("no audit entry {index}")))?;
        Ok(InclusionProof {
            index,
            size,
            data: data.into(),
            proof: proof.into_iter().map(Fixed).collect(),
        })
    }

    /// Every key release of a room with inclusion proofs against one checkpoint.
    pub(crate) async fn who_has_keys(
        &self,
        cert: &DeviceCert,
        room: &RoomId,
    ) -> Result<WhoHasKeysResponse, Denied> {
        let allowed = cert.roles.contains(&Role::Admin)
            || self
                .room_state(room)
                .await?
                .is_some_and(|s| s.grants.contains_key(&cert.user));
        if !allowed {
            return Err(Denied::forbidden(
                "not_entitled",
                format!("{} was never a member of room {room}", cert.user),
            ));
        }
        let (cp, note) = self.checkpoint().await?;
        let mut releases = Vec::new();
        let mut from = 0;
        loop {
            let q = cloister_store::AuditQuery {
                from,
                limit: 1000,
                kind: Some("key_released".into()),
                room: Some(room.to_hex()),
                since_ms: None,
            };
            let rows = self.audit.store().audit_list(&q).await.map_err(store_err)?;
            let n = rows.len();
            for r in rows {
                from = r.index + 1;
                if r.index >= cp.size {
                    continue;
                }
                let proof = self.audit.inclusion_proof(r.index, cp.size)?;
                releases.push(InclusionProof {
                    index: r.index,
                    size: cp.size,
                    data: r.data.into(),
                    proof: proof.into_iter().map(Fixed).collect(),
                });
            }
            if n < 1000 {
                break;
            }
        }
        Ok(WhoHasKeysResponse {
            checkpoint: note,
            releases,
        })
    }
}
