//! The KM's side of compliance: the vault's registration and capture policy,
//! cases and custodian approvals, decryption-session steps, and retention
//! (crypto-shredding expired room-epoch keys unless a hold covers them).
//!
//! ```text
//!  officer ──CaseOpen{scope, session_pk}──▶ KM: sign Case, log case_opened
//!  custodian ──CaseApprove{approval: share re-sealed to session_pk}──▶ KM:
//!        check signer, case version + hash, share number; log case_approved
//!  officer ──CaseApprovals──▶ case + approvals (+ certs) ─▶ session on the device
//!  officer ──CaseStep{session_opened|decrypted|exported|zeroized}──▶ log
//!  officer ──RetentionRun──▶ shred expired epoch keys not held ─▶ PurgeOrder for the vault
//! ```

mod cases;
mod retention;

use super::{Km, json, store_err};
use crate::error::Denied;
use cloister_crypto::sha256;
use cloister_crypto::signed::{self, km_sign_blob, sign_notice, verify_blob};
use cloister_log::AuditEvent;
use cloister_policy::RoomState;
use cloister_proto::b64::Fixed;
use cloister_proto::km::{
    Approval, ApprovalWithCert, Case, CaseApprovals, CaseListResponse, CaseScope, DeviceCert,
    EscrowDescriptor, KmOp, Notice, PurgeOrder, RetentionRunResponse, Role, RoomPurge, SignedBlob,
    SignedCert, VaultDescriptor, VaultRegisterResponse,
};
use cloister_proto::room::RoomKind;
use cloister_proto::{UserId, limits, now_millis};

use cloister_audit::vault_origin;

const META_VAULT: &str = "vault";
const MAX_SCOPE: usize = 100;
/// Session steps a case officer's device reports.
pub const STEPS: [&str; 4] = ["session_opened", "decrypted", "exported", "zeroized"];

impl Km {
    /// Compliance operations (vault, cases, approvals, sessions, retention).
    pub(crate) async fn compliance_op(
        &self,
        cert: &DeviceCert,
        op: KmOp,
    ) -> Result<serde_json::Value, Denied> {
        match op {
            KmOp::VaultRegister {
                url,
                receipt_pk,
                log_key,
                capture_required,
            } => {
                self.need(cert, Role::Admin, "registering the vault")?;
                json(
                    &self
                        .vault_register(&cert.user, url, receipt_pk, log_key, capture_required)
                        .await?,
                )
            }
            KmOp::VaultInfo => json(&self.vault_info().await?),
            KmOp::CaseOpen {
                case,
                title,
                scope,
                session_pk,
                hold,
            } => {
                self.need(cert, Role::Compliance, "opening a case")?;
                json(
                    &self
                        .case_open(cert, case, title, scope, session_pk, hold)
                        .await?,
                )
            }
            KmOp::CaseRescope { case, scope } => {
                self.need(cert, Role::Compliance, "rescoping a case")?;
                json(&self.case_rescope(cert, &case, scope).await?)
            }
            KmOp::CaseList => {
                if !cert.roles.contains(&Role::Compliance) && !cert.roles.contains(&Role::Custodian)
                {
                    return Err(Denied::forbidden(
                        "not_entitled",
                        "listing cases needs the compliance or custodian role",
                    ));
                }
                let cases = self
                    .store
                    .list_cases()
                    .await
                    .map_err(store_err)?
                    .iter()
                    .map(|b| serde_json::from_slice(b))
                    .collect::<Result<Vec<SignedBlob>, _>>()
                    .map_err(Denied::internal)?;
                json(&CaseListResponse { cases })
            }
            KmOp::CaseApprove { approval } => {
                self.need(cert, Role::Custodian, "approving a case")?;
                self.case_approve(cert, approval).await?;
                json(&cloister_proto::server::Ok { ok: true })
            }
            KmOp::CaseApprovals { case } => {
                self.need(cert, Role::Compliance, "reading a case's approvals")?;
                json(&self.case_approvals(cert, &case).await?)
            }
            KmOp::CaseStep { case, step, count } => {
                self.need(cert, Role::Compliance, "a decryption session")?;
                self.case_step(cert, &case, &step, count).await?;
                json(&cloister_proto::server::Ok { ok: true })
            }
            KmOp::RetentionSet { kind, days } => {
                self.need(cert, Role::Compliance, "setting retention")?;
                if kind != "im" && kind != "group" {
                    return Err(Denied::malformed(
                        "bad_retention",
                        "room kind must be `im` or `group`",
                    ));
                }
                if !(1..=36_500).contains(&days) {
                    return Err(Denied::malformed(
                        "bad_retention",
                        "retention must be 1 to 36500 days",
                    ));
                }
                self.record(
                    Some(&cert.user),
                    AuditEvent::RetentionSet {
                        room_kind: kind.clone(),
                        days,
                    },
                )
                .await?;
                self.store
                    .set_meta(&format!("retention/{kind}"), &days.to_be_bytes())
                    .await
                    .map_err(store_err)?;
                json(&cloister_proto::server::Ok { ok: true })
            }
            KmOp::RetentionRun => {
                self.need(cert, Role::Compliance, "running retention")?;
                json(&self.retention_run(cert).await?)
            }
            _ => Err(Denied::internal("not a compliance operation")),
        }
    }

    async fn vault_register(
        &self,
        actor: &UserId,
        url: String,
        receipt_pk: Fixed<32>,
        log_key: String,
        capture_required: bool,
    ) -> Result<VaultRegisterResponse, Denied> {
        if url.len() > 200 || !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(Denied::malformed(
                "bad_vault",
                "the vault URL must be http(s):// and at most 200 bytes",
            ));
        }
        let v = cloister_log::NoteVerifier::parse(&log_key).map_err(|e| {
            Denied::malformed(
                "bad_vault",
                format!("the vault's log key is malformed: {e}"),
            )
        })?;
        if v.name != vault_origin(&self.tenant) {
            return Err(Denied::malformed(
                "bad_vault",
                format!(
                    "the vault's log is named {:?}; tenant {} expects {:?}",
                    v.name,
                    self.tenant,
                    vault_origin(&self.tenant)
                ),
            ));
        }
        let now = now_millis();
        let d = VaultDescriptor {
            tenant: self.tenant.clone(),
            url: url.clone(),
            receipt_pk,
            log_key: log_key.clone(),
            capture_required,
            registered_ms: now,
        };
        let blob = km_sign_blob(&self.signer, signed::VAULT, &d).map_err(Denied::internal)?;
        self.record(
            Some(actor),
            AuditEvent::VaultRegistered {
                url,
                receipt_pk: cloister_proto::b64::encode(&receipt_pk.0),
                log_key,
                capture_required,
            },
        )
        .await?;
        self.store
            .set_meta(
                META_VAULT,
                &serde_json::to_vec(&blob).map_err(Denied::internal)?,
            )
            .await
            .map_err(store_err)?;
        let notice = Notice::CapturePolicy {
            tenant: self.tenant.clone(),
            receipt_pk,
            required: capture_required,
            ts: now,
        };
        tracing::info!(capture_required, "vault registered");
        Ok(VaultRegisterResponse {
            vault: blob,
            notice: sign_notice(&self.signer, &notice).map_err(Denied::internal)?,
        })
    }

    /// The tenant's revoked devices and disabled users, signed, for the
    /// registered vault only (it signs with its registered receipt key).
    pub async fn deny_list(
        &self,
        req: &cloister_proto::km::DenyListRequest,
    ) -> Result<SignedBlob, Denied> {
        let refuse = || {
            Denied::unauthenticated(
                "not_vault",
                "only the tenant's registered vault may ask for the deny list",
            )
        };
        if req.tenant != self.tenant {
            return Err(refuse());
        }
        if !cloister_proto::within_skew(req.ts) {
            return Err(Denied::unauthenticated(
                "stale_request",
                "request timestamp is outside the allowed clock skew",
            ));
        }
        let d: VaultDescriptor = signed::verify_blob(
            &self.signer.public(),
            signed::VAULT,
            &self.vault_info().await.map_err(|_| refuse())?,
            "vault descriptor",
        )
        .map_err(Denied::internal)?;
        cloister_crypto::keys::verify(
            &d.receipt_pk.0,
            signed::DENY_LIST_REQUEST,
            &signed::deny_list_transcript(&req.tenant, req.ts),
            &req.sig.0,
        )
        .map_err(|_| refuse())?;
        let (devices, users) = self.store.km_deny_list().await.map_err(store_err)?;
        let body = cloister_standing::DenyListBody {
            tenant: self.tenant.clone(),
            issued_ms: now_millis(),
            revoked: devices.iter().filter_map(|d| d.parse().ok()).collect(),
            disabled: users.iter().filter_map(|u| u.parse().ok()).collect(),
            partners: self.partner_list(),
        };
        km_sign_blob(&self.signer, signed::DENY_LIST, &body).map_err(Denied::internal)
    }

    async fn vault_info(&self) -> Result<SignedBlob, Denied> {
        let b = self
            .store
            .get_meta(META_VAULT)
            .await
            .map_err(store_err)?
            .ok_or_else(|| {
                Denied::not_found(
                    "no_vault",
                    "no vault is registered; run `cloister admin vault register`",
                )
            })?;
        serde_json::from_slice(&b).map_err(Denied::internal)
    }
}
