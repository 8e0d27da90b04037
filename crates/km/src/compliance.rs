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

use super::{Km, json, store_err};
use cloister_crypto::sha256;
use cloister_crypto::signed::{self, km_sign_blob, sign_notice, verify_blob};
use cloister_http::ApiError;
use cloister_log::AuditEvent;
use cloister_policy::RoomState;
use cloister_proto::b64::Fixed;
use cloister_proto::km::{
    Approval, ApprovalWithCert, Case, CaseApprovals, CaseListResponse, CaseScope, DeviceCert,
    EscrowDescriptor, KmOp, Notice, PurgeOrder, RetentionRunResponse, Role, RoomPurge, SignedBlob,
    SignedCert, SignedEscrow, VaultDescriptor, VaultRegisterResponse,
};
use cloister_proto::room::RoomKind;
use cloister_proto::{UserId, limits, now_millis};

use cloister_audit::vault_origin;

const META_VAULT: &str = "vault";
const MAX_SCOPE: usize = 100;
/// Session steps a case officer's device reports.
pub const STEPS: [&str; 4] = ["session_opened", "decrypted", "exported", "zeroized"];

fn need(cert: &DeviceCert, role: Role, what: &'static str) -> Result<(), ApiError> {
    Ok(cloister_standing::require_role(cert, role, what)?)
}

fn valid_case_id(c: &str) -> bool {
    (1..=64).contains(&c.len())
        && c.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
}

impl Km {
    /// Compliance operations (vault, cases, approvals, sessions, retention).
    pub(crate) async fn compliance_op(
        &self,
        cert: &DeviceCert,
        op: KmOp,
    ) -> Result<serde_json::Value, ApiError> {
        match op {
            KmOp::VaultRegister {
                url,
                receipt_pk,
                log_key,
                capture_required,
            } => {
                need(cert, Role::Admin, "registering the vault")?;
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
                need(cert, Role::Compliance, "opening a case")?;
                json(
                    &self
                        .case_open(cert, case, title, scope, session_pk, hold)
                        .await?,
                )
            }
            KmOp::CaseRescope { case, scope } => {
                need(cert, Role::Compliance, "rescoping a case")?;
                json(&self.case_rescope(cert, &case, scope).await?)
            }
            KmOp::CaseList => {
                if !cert.roles.contains(&Role::Compliance) && !cert.roles.contains(&Role::Custodian)
                {
                    return Err(ApiError::forbidden(
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
                    .map_err(ApiError::internal)?;
                json(&CaseListResponse { cases })
            }
            KmOp::CaseApprove { approval } => {
                need(cert, Role::Custodian, "approving a case")?;
                self.case_approve(cert, approval).await?;
                json(&cloister_proto::server::Ok { ok: true })
            }
            KmOp::CaseApprovals { case } => {
                need(cert, Role::Compliance, "reading a case's approvals")?;
                json(&self.case_approvals(cert, &case).await?)
            }
            KmOp::CaseStep { case, step, count } => {
                need(cert, Role::Compliance, "a decryption session")?;
                self.case_step(cert, &case, &step, count).await?;
                json(&cloister_proto::server::Ok { ok: true })
            }
            KmOp::RetentionSet { kind, days } => {
                need(cert, Role::Compliance, "setting retention")?;
                if kind != "im" && kind != "group" {
                    return Err(ApiError::bad_request(
                        "bad_retention",
                        "room kind must be `im` or `group`",
                    ));
                }
                if !(1..=36_500).contains(&days) {
                    return Err(ApiError::bad_request(
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
                need(cert, Role::Compliance, "running retention")?;
                json(&self.retention_run(cert).await?)
            }
            _ => Err(ApiError::internal("not a compliance operation")),
        }
    }

    async fn vault_register(
        &self,
        actor: &UserId,
        url: String,
        receipt_pk: Fixed<32>,
        log_key: String,
        capture_required: bool,
    ) -> Result<VaultRegisterResponse, ApiError> {
        if url.len() > 200 || !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(ApiError::bad_request(
                "bad_vault",
                "the vault URL must be http(s):// and at most 200 bytes",
            ));
        }
        let v = cloister_log::NoteVerifier::parse(&log_key).map_err(|e| {
            ApiError::bad_request(
                "bad_vault",
                format!("the vault's log key is malformed: {e}"),
            )
        })?;
        if v.name != vault_origin(&self.tenant) {
            return Err(ApiError::bad_request(
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
        let blob = km_sign_blob(&self.signer, signed::VAULT, &d).map_err(ApiError::internal)?;
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
                &serde_json::to_vec(&blob).map_err(ApiError::internal)?,
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
            notice: sign_notice(&self.signer, &notice).map_err(ApiError::internal)?,
        })
    }

    /// The tenant's revoked devices and disabled users, signed, for the
    /// registered vault only (it signs with its registered receipt key).
    pub async fn deny_list(
        &self,
        req: &cloister_proto::km::DenyListRequest,
    ) -> Result<SignedBlob, ApiError> {
        let refuse = || {
            ApiError::unauthorized(
                "not_vault",
                "only the tenant's registered vault may ask for the deny list",
            )
        };
        if req.tenant != self.tenant {
            return Err(refuse());
        }
        if !cloister_proto::within_skew(req.ts) {
            return Err(ApiError::unauthorized(
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
        .map_err(ApiError::internal)?;
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
        };
        km_sign_blob(&self.signer, signed::DENY_LIST, &body).map_err(ApiError::internal)
    }

    async fn vault_info(&self) -> Result<SignedBlob, ApiError> {
        let b = self
            .store
            .get_meta(META_VAULT)
            .await
            .map_err(store_err)?
            .ok_or_else(|| {
                ApiError::not_found(
                    "no_vault",
                    "no vault is registered; run `cloister admin vault register`",
                )
            })?;
        serde_json::from_slice(&b).map_err(ApiError::internal)
    }

    fn check_scope(&self, scope: &CaseScope) -> Result<(), ApiError> {
        if scope.from_ms > scope.to_ms {
            return Err(ApiError::bad_request(
                "bad_scope",
                "the case's time range ends before it starts",
            ));
        }
        if scope.custodians.is_empty() && scope.rooms.is_empty() {
            return Err(ApiError::bad_request(
                "bad_scope",
                "a case names at least one custodian or room",
            ));
        }
        if scope.custodians.len() > MAX_SCOPE || scope.rooms.len() > MAX_SCOPE {
            return Err(ApiError::bad_request(
                "bad_scope",
                format!("a case names at most {MAX_SCOPE} custodians and {MAX_SCOPE} rooms"),
            ));
        }
        if let Some(u) = scope.custodians.iter().find(|u| u.tenant() != self.tenant) {
            return Err(ApiError::bad_request(
                "bad_scope",
                format!("{u} is not a user of tenant {}", self.tenant),
            ));
        }
        Ok(())
    }

    async fn get_case(&self, case: &str) -> Result<(SignedBlob, Case), ApiError> {
        let b = self
            .store
            .get_case(case)
            .await
            .map_err(store_err)?
            .ok_or_else(|| ApiError::not_found("unknown_case", format!("no case {case:?}")))?;
        let blob: SignedBlob = serde_json::from_slice(&b).map_err(ApiError::internal)?;
        let c: Case = serde_json::from_slice(blob.body.as_slice()).map_err(ApiError::internal)?;
        Ok((blob, c))
    }

    async fn put_case(&self, c: &Case) -> Result<SignedBlob, ApiError> {
        let blob = km_sign_blob(&self.signer, signed::CASE, c).map_err(ApiError::internal)?;
        self.record(
            Some(&c.officer),
            AuditEvent::CaseOpened {
                case: c.case.clone(),
                version: c.version,
                custodians: c.scope.custodians.clone(),
                rooms: c.scope.rooms.clone(),
                from_ms: c.scope.from_ms,
                to_ms: c.scope.to_ms,
                hold: c.hold,
            },
        )
        .await?;
        self.store
            .put_case(
                &c.case,
                c.version,
                &serde_json::to_vec(&blob).map_err(ApiError::internal)?,
            )
            .await
            .map_err(store_err)?;
        Ok(blob)
    }

    async fn case_open(
        &self,
        cert: &DeviceCert,
        case: String,
        title: String,
        scope: CaseScope,
        session_pk: Fixed<32>,
        hold: bool,
    ) -> Result<SignedBlob, ApiError> {
        if !valid_case_id(&case) {
            return Err(ApiError::bad_request(
                "bad_case",
                "a case id is 1 to 64 of a-z, 0-9, '-', '_', '.'",
            ));
        }
        if title.len() > 200 || title.chars().any(char::is_control) {
            return Err(ApiError::bad_request(
                "bad_case",
                "a case title is at most 200 bytes without control characters",
            ));
        }
        self.check_scope(&scope)?;
        if self
            .store
            .get_case(&case)
            .await
            .map_err(store_err)?
            .is_some()
        {
            return Err(ApiError::conflict(
                "case_exists",
                format!("case {case:?} already exists"),
            ));
        }
        let c = Case {
            tenant: self.tenant.clone(),
            case,
            title,
            officer: cert.user.clone(),
            officer_device: cert.device,
            session_pk,
            scope,
            version: 1,
            hold,
            opened_ms: now_millis(),
        };
        let blob = self.put_case(&c).await?;
        tracing::info!(case = %c.case, "case opened");
        Ok(blob)
    }

    async fn case_rescope(
        &self,
        cert: &DeviceCert,
        case: &str,
        scope: CaseScope,
    ) -> Result<SignedBlob, ApiError> {
        self.check_scope(&scope)?;
        let (_, mut c) = self.get_case(case).await?;
        if c.officer != cert.user {
            return Err(ApiError::forbidden(
                "not_case_officer",
                format!("case {case:?} belongs to {}", c.officer),
            ));
        }
        c.scope = scope;
        c.version = c.version.saturating_add(1);
        self.put_case(&c).await
    }

    async fn escrow(&self) -> Result<EscrowDescriptor, ApiError> {
        let d = self
            .store
            .get_escrow()
            .await
            .map_err(store_err)?
            .ok_or_else(|| {
                ApiError::not_found("no_escrow", "the tenant's escrow key is not initialised")
            })?;
        let s: SignedEscrow = serde_json::from_slice(&d).map_err(ApiError::internal)?;
        serde_json::from_slice(s.body.as_slice()).map_err(ApiError::internal)
    }

    async fn case_approve(&self, cert: &DeviceCert, blob: SignedBlob) -> Result<(), ApiError> {
        let a: Approval = verify_blob(&cert.sign_pk.0, signed::APPROVAL, &blob, "approval")
            .map_err(|e| {
                ApiError::unauthorized(
                    "bad_signature",
                    format!("the approval is not signed by this device: {e}"),
                )
            })?;
        if a.custodian != cert.user || a.device != cert.device || a.tenant != self.tenant {
            return Err(ApiError::forbidden(
                "not_signer",
                "an approval names its own custodian and device",
            ));
        }
        if !cloister_proto::within_skew(a.ts) {
            return Err(ApiError::bad_request(
                "stale_approval",
                "the approval's timestamp is outside the allowed clock skew",
            ));
        }
        let (case_blob, c) = self.get_case(&a.case).await?;
        if a.version != c.version || a.case_sha256.0 != sha256(case_blob.body.as_slice()) {
            return Err(ApiError::conflict(
                "stale_approval",
                format!(
                    "the approval is for another version of case {:?} (now version {})",
                    a.case, c.version
                ),
            ));
        }
        let escrow = self.escrow().await?;
        if !escrow.custodians.contains(&cert.user) {
            return Err(ApiError::forbidden(
                "not_custodian",
                format!("{} holds no escrow share", cert.user),
            ));
        }
        let mine = self
            .store
            .escrow_shares_of(cert.user.as_str())
            .await
            .map_err(store_err)?;
        if !mine.iter().any(|(n, _)| *n == a.number) {
            return Err(ApiError::forbidden(
                "not_custodian",
                format!("share {} is not {}'s", a.number, cert.user),
            ));
        }
        self.store
            .put_approval(
                &a.case,
                a.version,
                cert.user.as_str(),
                &serde_json::to_vec(&blob).map_err(ApiError::internal)?,
            )
            .await
            .map_err(|e| match e {
                cloister_store::StoreError::Conflict(m) => {
                    ApiError::conflict("already_approved", m)
                }
                e => store_err(e),
            })?;
        self.record(
            Some(&cert.user),
            AuditEvent::CaseApproved {
                case: a.case.clone(),
                version: a.version,
                custodian: cert.user.clone(),
                device: cert.device,
            },
        )
        .await?;
        tracing::info!(case = %a.case, custodian = %cert.user, "case approved");
        Ok(())
    }

    async fn case_approvals(
        &self,
        cert: &DeviceCert,
        case: &str,
    ) -> Result<CaseApprovals, ApiError> {
        let (blob, c) = self.get_case(case).await?;
        if c.officer != cert.user {
            return Err(ApiError::forbidden(
                "not_case_officer",
                format!("case {case:?} belongs to {}", c.officer),
            ));
        }
        let mut approvals = Vec::new();
        for (_, b) in self
            .store
            .approvals(case, c.version)
            .await
            .map_err(store_err)?
        {
            let approval: SignedBlob = serde_json::from_slice(&b).map_err(ApiError::internal)?;
            let a: Approval =
                serde_json::from_slice(approval.body.as_slice()).map_err(ApiError::internal)?;
            let row = self
                .store
                .get_device(&a.device.to_hex())
                .await
                .map_err(store_err)?
                .ok_or_else(|| ApiError::internal("approving device vanished"))?;
            let cert: SignedCert = serde_json::from_slice(&row.cert).map_err(ApiError::internal)?;
            approvals.push(ApprovalWithCert { approval, cert });
        }
        Ok(CaseApprovals {
            case: blob,
            approvals,
        })
    }

    async fn case_step(
        &self,
        cert: &DeviceCert,
        case: &str,
        step: &str,
        count: u64,
    ) -> Result<(), ApiError> {
        let Some(step) = STEPS.iter().find(|s| **s == step) else {
            return Err(ApiError::bad_request(
                "bad_step",
                format!("a session step is one of {}", STEPS.join(", ")),
            ));
        };
        let (_, c) = self.get_case(case).await?;
        if c.officer != cert.user || c.officer_device != cert.device {
            return Err(ApiError::forbidden(
                "not_case_officer",
                format!(
                    "case {case:?} belongs to {}'s device {}",
                    c.officer, c.officer_device
                ),
            ));
        }
        if *step == "session_opened" {
            let k = self.escrow().await?.threshold as usize;
            let have = self
                .store
                .approvals(case, c.version)
                .await
                .map_err(store_err)?
                .len();
            if have < k {
                return Err(ApiError::conflict(
                    "not_enough_approvals",
                    format!(
                        "case {case:?} has {have} of the {k} approvals it needs; nothing may be decrypted"
                    ),
                ));
            }
        }
        self.record(
            Some(&cert.user),
            AuditEvent::CaseStep {
                case: case.to_owned(),
                version: c.version,
                step: (*step).to_owned(),
                count,
            },
        )
        .await?;
        Ok(())
    }

    async fn retention_days(&self, kind: &str) -> Result<Option<u32>, ApiError> {
        Ok(self
            .store
            .get_meta(&format!("retention/{kind}"))
            .await
            .map_err(store_err)?
            .and_then(|b| <[u8; 4]>::try_from(b.as_slice()).ok())
            .map(u32::from_be_bytes))
    }

    async fn retention_run(&self, cert: &DeviceCert) -> Result<RetentionRunResponse, ApiError> {
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
        let mut held_keys = Vec::new();
        for row in self.store.list_rooms().await.map_err(store_err)? {
            let st: RoomState = serde_json::from_slice(&row.state).map_err(ApiError::internal)?;
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
            }
            rooms.push(RoomPurge {
                room: st.room,
                before_ms: cutoff,
                held,
            });
        }
        let notice = if shredded.is_empty() {
            None
        } else {
            self.destroy_old_generations().await?;
            Some(
                sign_notice(
                    &self.signer,
                    &cloister_proto::km::Notice::KeysShredded {
                        tenant: self.tenant.clone(),
                        shredded: shredded.clone(),
                        ts: cloister_proto::now_secs(),
                    },
                )
                .map_err(ApiError::internal)?,
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
            order: km_sign_blob(&self.signer, signed::PURGE, &order).map_err(ApiError::internal)?,
            shredded,
            held: held_keys,
            notice,
        })
    }
}
