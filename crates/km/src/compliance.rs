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
    Approval, ApprovalWithCert, Case, CaseApprovals, CaseListResponse, CaseScope, DeviceCert, KmOp,
    PurgeOrder, RetentionRunResponse, Role, RoomPurge, SignedBlob, SignedCert,
};
use cloister_proto::room::RoomKind;
use cloister_proto::{limits, now_millis};

const MAX_SCOPE: usize = 100;
/// Session steps a case officer's device reports.
pub const STEPS: [&str; 5] = [
    "session_opened",
    "decrypted",
    "exported",
    "resealed",
    "zeroized",
];

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
                jurisdiction,
            } => {
                self.need(cert, Role::Admin, "registering the vault")?;
                let v = crate::vaults::Registration {
                    url,
                    receipt_pk,
                    log_key,
                    capture_required,
                    jurisdiction,
                };
                json(&self.vault_register(&cert.user, v).await?)
            }
            KmOp::VaultInfo => json(&self.vault_for(cert).await?),
            KmOp::VaultList => {
                if !cert.roles.contains(&Role::Admin) {
                    self.need(cert, Role::Compliance, "listing the vaults")?;
                }
                json(&self.vaults().await?)
            }
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
}
