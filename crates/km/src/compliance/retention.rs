//! Retention: which epoch keys expired, their destruction, and the signed
//! purge order and shredding notice.

use super::*;

impl Km {
    pub(crate) async fn retention_days(&self, kind: &str) -> Result<Option<u32>, Denied> {
        Ok(self
            .store
            .get_meta(&format!("retention/{kind}"))
            .await
            .map_err(store_err)?
            .and_then(|b| <[u8; 4]>::try_from(b.as_slice()).ok())
            .map(u32::from_be_bytes))
    }

    pub(crate) async fn retention_run(
        &self,
        cert: &DeviceCert,
    ) -> Result<RetentionRunResponse, Denied> {
        let now = now_millis();
        let days_im = self.retention_days("im").await?;
        let days_group = self.retention_days("group").await?;
        let holds: Vec<Case> = self
            .store
            .list_cases()
            .await
            .map_err(store_err)?
            .iter()
            .filter_map(|b| serde_json::from_slice::<SignedBlob>(b).ok())
            .filter_map(|b| serde_json::from_slice::<Case>(b.body.as_slice()).ok())
            .filter(|c| c.hold)
            .collect();
        let skew = limits::MAX_SKEW_SECS * 1000;
        let mut rooms = Vec::new();
        let mut shredded = Vec::new();
        // the server takes a KM's retention notice for the rooms homed at
        // its firm only: a room homed at a partner firm is that firm's to
        // announce (this KM destroys its own copies all the same)
        let mut notify = Vec::new();
        let mut held_keys = Vec::new();
        for row in self.store.list_rooms().await.map_err(store_err)? {
            let st: RoomState = serde_json::from_slice(&row.state).map_err(Denied::internal)?;
            let days = match st.kind {
                RoomKind::Im => days_im,
                _ => days_group,
            };
            let Some(days) = days else { continue };
            let cutoff = now.saturating_sub(days as u64 * 86_400_000);
            // A hold covers this room if it names it (or no room) and names one
            // of its present or past members (or no custodian).
            let held: Vec<(u64, u64)> = holds
                .iter()
                .filter(|c| c.scope.rooms.is_empty() || c.scope.rooms.contains(&st.room))
                .filter(|c| {
                    c.scope.custodians.is_empty()
                        || c.scope.custodians.iter().any(|u| st.grants.contains_key(u))
                })
                .map(|c| (c.scope.from_ms, c.scope.to_ms))
                .collect();
            let keys = self
                .store
                .room_keys_of(&row.room)
                .await
                .map_err(store_err)?;
            // Epoch e's messages were all sent after its key was created and
            // before the next epoch's key was: a successor created before the
            // cutoff means every message of e has expired. The current epoch
            // is never shredded.
            for w in keys.windows(2) {
                let ((e, start, gone), (e2, next, _)) = (w[0], w[1]);
                if gone || e2 != e + 1 || next >= cutoff || e >= st.epoch {
                    continue;
                }
                let (lo, hi) = (start.saturating_sub(skew), next.saturating_add(skew));
                if held.iter().any(|(a, b)| *a <= hi && *b >= lo) {
                    held_keys.push((st.room, e));
                    continue;
                }
                self.record(
                    Some(&cert.user),
                    AuditEvent::KeyShredded {
                        room: st.room,
                        epoch: e,
                    },
                )
                .await?;
                self.store
                    .shred_room_key(&row.room, e)
                    .await
                    .map_err(store_err)?;
                if let Ok(mut m) = self.wrapped.lock() {
                    m.remove(&(st.room, e));
                }
                shredded.push((st.room, e));
                if st.tenant == self.tenant {
                    notify.push((st.room, e));
                }
            }
            rooms.push(RoomPurge {
                room: st.room,
                before_ms: cutoff,
                held,
            });
        }
        // A run that failed after shredding left older generations behind:
        // destroy them now even if nothing new expired.
        if !shredded.is_empty() || self.provider.generations() > 1 {
            self.destroy_old_generations().await?;
        }
        let notice = if notify.is_empty() {
            None
        } else {
            Some(
                sign_notice(
                    &self.signer,
                    &cloister_proto::km::Notice::KeysShredded {
                        tenant: self.tenant.clone(),
                        shredded: notify,
                        ts: cloister_proto::now_secs(),
                    },
                )
                .map_err(Denied::internal)?,
            )
        };
        let order = PurgeOrder {
            tenant: self.tenant.clone(),
            rooms,
            issued_ms: now,
        };
        tracing::info!(
            shredded = shredded.len(),
            held = held_keys.len(),
            "retention run"
        );
        Ok(RetentionRunResponse {
            order: km_sign_blob(&self.signer, signed::PURGE, &order).map_err(Denied::internal)?,
            shredded,
            held: held_keys,
            notice,
        })
    }
}
