//! The one entry point for signed requests: standing, signature,
//! freshness, replay, then the operation's domain.

use super::*;

impl Km {
    /// Handle any signed request.
    pub async fn handle(&self, req: &SignedRequest) -> Result<serde_json::Value, Denied> {
        let cert = match self.active_cert(&req.device).await {
            Ok(c) => c,
            Err(e) => {
                self.record_refusal(req, &e).await;
                return Err(e);
            }
        };
        let body: RequestBody = verify_request(&cert.sign_pk.0, req).map_err(|_| {
            Denied::unauthenticated("bad_signature", "request signature is invalid")
        })?;
        // Limits count only requests the device really signed.
        self.limiters.requests.check(&cert.device)?;
        if matches!(body.op, KmOp::RoomKeys { .. }) {
            self.limiters.keys.check(&cert.device)?;
        }
        let now = now_millis();
        let skew = limits::MAX_SKEW_SECS * 1000;
        if !cloister_proto::within_skew(body.ts) {
            return Err(Denied::unauthenticated(
                "stale_request",
                "request timestamp is outside the allowed clock skew",
            ));
        }
        // Reads and key requests use the in-memory nonce window; admin
        // changes a durable one (docs/adr/0004-throughput-choices.md).
        let durable = matches!(
            body.op,
            KmOp::AddUser { .. }
                | KmOp::DisableUser { .. }
                | KmOp::RevokeDevice { .. }
                | KmOp::RenewCert
                | KmOp::AttestationSet { .. }
                | KmOp::RotateTmk { .. }
                | KmOp::RotateLogKey
                | KmOp::RoomRekey { .. }
                | KmOp::EscrowInit { .. }
                | KmOp::EscrowRotate { .. }
                | KmOp::EscrowRetire { .. }
                | KmOp::VaultRegister { .. }
                | KmOp::CaseOpen { .. }
                | KmOp::CaseRescope { .. }
                | KmOp::CaseApprove { .. }
                | KmOp::CaseStep { .. }
                | KmOp::RetentionSet { .. }
                | KmOp::RetentionRun
                | KmOp::Entitle { .. }
                | KmOp::GroupSet { .. }
                | KmOp::BarrierAdd { .. }
                | KmOp::BarrierDisable { .. }
                | KmOp::ProfileSet { .. }
                | KmOp::ScimTokenIssue { .. }
                | KmOp::ScimTokenRevoke { .. }
                | KmOp::DlpPut { .. }
                | KmOp::MlsPolicySet { .. }
                | KmOp::RoomLock { .. }
                | KmOp::RoomUnlock { .. }
                | KmOp::RoomBan { .. }
                | KmOp::TrustAdd { .. }
                | KmOp::DirectoryPublish { .. }
                | KmOp::TrustRemove { .. }
                | KmOp::ConnectRequest { .. }
                | KmOp::ConnectAnswer { .. }
                | KmOp::ConnectRemove { .. }
        );
        let fresh = if durable {
            self.store
                .use_nonce(
                    &req.device.to_hex(),
                    &body.nonce.0,
                    body.ts,
                    now.saturating_sub(2 * skew),
                )
                .await
                .map_err(store_err)?
        } else {
            self.use_nonce_mem(&req.device, &body.nonce.0, body.ts)
        };
        if !fresh {
            return Err(Denied::conflict(
                "replayed_request",
                "this request was already processed",
            ));
        }
        let actor = Some(&cert.user);
        match body.op {
            KmOp::RoomKeys {
                room,
                epochs,
                log_from,
                log,
                certs,
            } => {
                self.learn_certs(&certs).await?;
                json(
                    &self
                        .room_keys(&cert, &room, &epochs, log_from, &log)
                        .await?,
                )
            }
            KmOp::PartnerKeys => json(&self.partner_keys()?),
            KmOp::DirectoryPublish { fields } => self.directory_publish(&cert, &fields).await,
            KmOp::PartnerDirectorySearch { firm, query, limit } => {
                self.partner_directory_search(&cert, &firm, &query, limit)
                    .await
            }
            KmOp::AuditCheckpoint => {
                let (_, note) = self.checkpoint().await?;
                json(&CheckpointResponse {
                    checkpoint: note,
                    log_key: self.audit.verifier_key(),
                })
            }
            KmOp::AuditKeys => json(&self.audit_keys().await?),
            KmOp::RevokeDevice { device } => json(&self.revoke_device_for(&cert, &device).await?),
            KmOp::RenewCert => json(&self.renew_cert(&cert).await?),
            KmOp::MyDevices => json(&self.devices_of(&cert.user).await?),
            KmOp::DeviceStanding { devices } => json(&self.device_standing(&cert, &devices).await?),
            KmOp::AuditConsistency { old, new } => {
                let new = new.unwrap_or_else(|| self.audit.size());
                let proof = self.audit.consistency_proof(old, new)?;
                json(&ConsistencyProof {
                    old,
                    new,
                    proof: proof.into_iter().map(Fixed).collect(),
                })
            }
            KmOp::WhoHasKeys { room } => json(&self.who_has_keys(&cert, &room).await?),
            KmOp::RoomHead {
                room,
                log_from,
                log,
                certs,
            } => {
                self.learn_certs(&certs).await?;
                self.room_head(&cert, &room, log_from, &log).await
            }
            KmOp::RoomLog { room, from } => self.room_log(&cert, &room, from).await,
            KmOp::EscrowInfo => json(&self.signed_escrow().await?),
            KmOp::EscrowHistory => json(&self.escrow_history().await?),
            KmOp::MyEscrowShare => {
                let rows = self
                    .store
                    .escrow_shares_of(&cert.user)
                    .await
                    .map_err(store_err)?;
                let shares = rows
                    .into_iter()
                    .map(|(_, _, b)| serde_json::from_slice::<SealedShare>(&b))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(Denied::internal)?;
                json(&shares)
            }
            KmOp::IndexKeys { periods } => json(&self.index_keys(&cert, &periods).await?),
            op @ (KmOp::VaultRegister { .. }
            | KmOp::VaultInfo
            | KmOp::VaultList
            | KmOp::CaseOpen { .. }
            | KmOp::CaseRescope { .. }
            | KmOp::CaseList
            | KmOp::CaseApprove { .. }
            | KmOp::CaseApprovals { .. }
            | KmOp::CaseStep { .. }
            | KmOp::RetentionSet { .. }
            | KmOp::RetentionRun) => self.compliance_op(&cert, op).await,
            op @ (KmOp::DirectorySearch { .. }
            | KmOp::MyEntitlements
            | KmOp::Controls
            | KmOp::Entitle { .. }
            | KmOp::GroupSet { .. }
            | KmOp::GroupList
            | KmOp::BarrierAdd { .. }
            | KmOp::BarrierList
            | KmOp::BarrierDisable { .. }
            | KmOp::ProfileSet { .. }
            | KmOp::ScimTokenIssue { .. }
            | KmOp::ScimTokenRevoke { .. }
            | KmOp::DlpPut { .. }
            | KmOp::MlsPolicySet { .. }
            | KmOp::DlpPolicies) => self.directory_op(&cert, op).await,
            KmOp::RoomRekey { room, reason } => json(&self.room_rekey(&cert, &room, reason).await?),
            op @ (KmOp::RoomLock { .. } | KmOp::RoomUnlock { .. } | KmOp::RoomBan { .. }) => {
                self.room_control_op(&cert, op).await
            }
            op @ (KmOp::TrustSelf
            | KmOp::TrustAdd { .. }
            | KmOp::TrustList
            | KmOp::TrustRemove { .. }) => self.trust_op(&cert, op).await,
            op @ (KmOp::ConnectRequest { .. }
            | KmOp::ConnectAnswer { .. }
            | KmOp::ConnectRemove { .. }) => self.connection_op(&cert, op).await,
            op => {
                if !cert.roles.contains(&Role::Admin) {
                    tracing::warn!(user = %cert.user, "admin operation refused: not an admin");
                    return Err(Denied::forbidden(
                        "not_admin",
                        "this operation needs the admin role",
                    ));
                }
                match op {
                    KmOp::AddUser { user, roles } => {
                        json(&self.add_user(actor, &user, &roles).await?)
                    }
                    KmOp::DisableUser { user } => json(&self.disable_user(actor, &user).await?),
                    KmOp::ListUsers => json(&self.list_users().await?),
                    KmOp::LockStatus => json(&self.lock_status().await?),
                    KmOp::AttestationSet { policy } => {
                        json(&self.set_attestation_policy(actor, policy).await?)
                    }
                    KmOp::AttestationShow => json(&self.attestation_policy().await?),
                    KmOp::RotateTmk { batch } => json(&self.rotate_tmk_step(actor, batch).await?),
                    KmOp::RotateLogKey => json(&self.rotate_log_key(actor).await?),
                    KmOp::AuditList {
                        from,
                        limit,
                        kind,
                        room,
                        since_ms,
                    } => {
                        if kind
                            .as_deref()
                            .is_some_and(|k| !AuditEvent::KINDS.contains(&k))
                        {
                            return Err(Denied::malformed(
                                "bad_kind",
                                format!("unknown kind; one of {}", AuditEvent::KINDS.join(", ")),
                            ));
                        }
                        let q = cloister_store::AuditQuery {
                            from,
                            limit: limit.clamp(1, 10_000),
                            kind,
                            room: room.map(|r| r.to_hex()),
                            since_ms,
                        };
                        let rows = self.audit.store().audit_list(&q).await.map_err(store_err)?;
                        json(&AuditListResponse {
                            entries: rows
                                .into_iter()
                                .map(|r| AuditEntry {
                                    index: r.index,
                                    data: r.data.into(),
                                })
                                .collect(),
                        })
                    }
                    KmOp::AuditProve { index, size } => json(&self.prove(index, size).await?),
                    KmOp::EscrowInit {
                        public,
                        threshold,
                        shares,
                        min_jurisdictions,
                    } => json(
                        &self
                            .escrow_init(&cert.user, public, (threshold, min_jurisdictions), shares)
                            .await?,
                    ),
                    KmOp::EscrowRotate {
                        public,
                        threshold,
                        shares,
                        min_jurisdictions,
                    } => json(
                        &self
                            .escrow_rotate(
                                &cert.user,
                                public,
                                (threshold, min_jurisdictions),
                                shares,
                            )
                            .await?,
                    ),
                    KmOp::EscrowRetire { generation, counts } => {
                        json(&self.escrow_retire(&cert.user, generation, &counts).await?)
                    }
                    _ => Err(Denied::internal("unreachable op")),
                }
            }
        }
    }

    pub(crate) fn use_nonce_mem(&self, device: &DeviceId, nonce: &[u8; 16], ts: u64) -> bool {
        let Ok(mut map) = self.recent_nonces.lock() else {
            return false;
        };
        let cutoff = now_millis().saturating_sub(2 * limits::MAX_SKEW_SECS * 1000);
        if map.len() > 100_000 {
            map.retain(|_, t| *t >= cutoff);
        }
        map.insert((*device, *nonce), ts).is_none()
    }
}
