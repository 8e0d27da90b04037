//! Cases: scope, approvals by custodians (re-sealed shares), and the
//! decryption session's logged steps.

use super::*;

impl Km {
    pub(crate) async fn check_scope(&self, scope: &CaseScope) -> Result<(), Denied> {
        if scope.from_ms > scope.to_ms {
            return Err(Denied::malformed(
                "bad_scope",
                "the case's time range ends before it starts",
            ));
        }
        if let Some(g) = scope.reseal {
            let live = self.escrow_generations().await?;
            if !live.iter().rev().skip(1).any(|d| d.generation == g) {
                return Err(Denied::malformed(
                    "bad_scope",
                    format!(
                        "a re-seal case names a live escrow generation older than the newest ({}); {g} is not one",
                        live.last().map(|d| d.generation).unwrap_or_default()
                    ),
                ));
            }
        } else if scope.custodians.is_empty() && scope.rooms.is_empty() {
            return Err(Denied::malformed(
                "bad_scope",
                "a case names at least one custodian or room",
            ));
        }
        if scope.custodians.len() > MAX_SCOPE || scope.rooms.len() > MAX_SCOPE {
            return Err(Denied::malformed(
                "bad_scope",
                format!("a case names at most {MAX_SCOPE} custodians and {MAX_SCOPE} rooms"),
            ));
        }
        if let Some(u) = scope.custodians.iter().find(|u| u.tenant() != self.tenant) {
            return Err(Denied::malformed(
                "bad_scope",
                format!("{u} is not a user of tenant {}", self.tenant),
            ));
        }
        Ok(())
    }

    pub(crate) async fn get_case(&self, case: &str) -> Result<(SignedBlob, Case), Denied> {
        let b = self
            .store
            .get_case(case)
            .await
            .map_err(store_err)?
            .ok_or_else(|| Denied::not_found("unknown_case", format!("no case {case:?}")))?;
        let blob: SignedBlob = serde_json::from_slice(&b).map_err(Denied::internal)?;
        let c: Case = serde_json::from_slice(blob.body.as_slice()).map_err(Denied::internal)?;
        Ok((blob, c))
    }

    pub(crate) async fn put_case(&self, c: &Case) -> Result<SignedBlob, Denied> {
        let blob = km_sign_blob(&self.signer, signed::CASE, c).map_err(Denied::internal)?;
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
                &serde_json::to_vec(&blob).map_err(Denied::internal)?,
            )
            .await
            .map_err(store_err)?;
        Ok(blob)
    }

    pub(crate) async fn case_open(
        &self,
        cert: &DeviceCert,
        case: String,
        title: String,
        scope: CaseScope,
        session_pk: Fixed<32>,
        hold: bool,
    ) -> Result<SignedBlob, Denied> {
        if !valid_case_id(&case) {
            return Err(Denied::malformed(
                "bad_case",
                "a case id is 1 to 64 of a-z, 0-9, '-', '_', '.'",
            ));
        }
        if title.len() > 200 || title.chars().any(char::is_control) {
            return Err(Denied::malformed(
                "bad_case",
                "a case title is at most 200 bytes without control characters",
            ));
        }
        self.check_scope(&scope).await?;
        if self
            .store
            .get_case(&case)
            .await
            .map_err(store_err)?
            .is_some()
        {
            return Err(Denied::conflict(
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

    pub(crate) async fn case_rescope(
        &self,
        cert: &DeviceCert,
        case: &str,
        scope: CaseScope,
    ) -> Result<SignedBlob, Denied> {
        self.check_scope(&scope).await?;
        let (_, mut c) = self.get_case(case).await?;
        if c.officer != cert.user {
            return Err(Denied::forbidden(
                "not_case_officer",
                format!("case {case:?} belongs to {}", c.officer),
            ));
        }
        c.scope = scope;
        c.version = c.version.saturating_add(1);
        self.put_case(&c).await
    }

    pub(crate) async fn case_approve(
        &self,
        cert: &DeviceCert,
        blob: SignedBlob,
    ) -> Result<(), Denied> {
        let a: Approval = verify_blob(&cert.sign_pk.0, signed::APPROVAL, &blob, "approval")
            .map_err(|e| {
                Denied::unauthenticated(
                    "bad_signature",
                    format!("the approval is not signed by this device: {e}"),
                )
            })?;
        if a.custodian != cert.user || a.device != cert.device || a.tenant != self.tenant {
            return Err(Denied::forbidden(
                "not_signer",
                "an approval names its own custodian and device",
            ));
        }
        if !cloister_proto::within_skew(a.ts) {
            return Err(Denied::malformed(
                "stale_approval",
                "the approval's timestamp is outside the allowed clock skew",
            ));
        }
        let (case_blob, c) = self.get_case(&a.case).await?;
        if a.version != c.version || a.case_sha256.0 != sha256(case_blob.body.as_slice()) {
            return Err(Denied::conflict(
                "stale_approval",
                format!(
                    "the approval is for another version of case {:?} (now version {})",
                    a.case, c.version
                ),
            ));
        }
        let mine = self
            .store
            .escrow_shares_of(&cert.user)
            .await
            .map_err(store_err)?;
        if mine.is_empty() {
            return Err(Denied::forbidden(
                "not_custodian",
                format!("{} holds no escrow share", cert.user),
            ));
        }
        // every share released is one of the custodian's, each generation once
        let mut released = vec![(a.generation, a.number)];
        released.extend(a.more.iter().map(|m| (m.generation, m.number)));
        let mut generations: Vec<u32> = released.iter().map(|(g, _)| *g).collect();
        generations.sort_unstable();
        generations.dedup();
        if generations.len() != released.len() {
            return Err(Denied::malformed(
                "bad_approval",
                "an approval releases one share per escrow generation",
            ));
        }
        if let Some((g, n)) = released
            .iter()
            .find(|(g, n)| !mine.iter().any(|(mg, mn, _)| mg == g && mn == n))
        {
            return Err(Denied::forbidden(
                "not_custodian",
                format!("share {n} of escrow generation {g} is not {}'s", cert.user),
            ));
        }
        self.store
            .put_approval(
                &a.case,
                a.version,
                &cert.user,
                &serde_json::to_vec(&blob).map_err(Denied::internal)?,
            )
            .await
            .map_err(|e| match e {
                cloister_store::StoreError::Conflict(m) => Denied::conflict("already_approved", m),
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

    pub(crate) async fn case_approvals(
        &self,
        cert: &DeviceCert,
        case: &str,
    ) -> Result<CaseApprovals, Denied> {
        let (blob, c) = self.get_case(case).await?;
        if c.officer != cert.user {
            return Err(Denied::forbidden(
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
            let approval: SignedBlob = serde_json::from_slice(&b).map_err(Denied::internal)?;
            let a: Approval =
                serde_json::from_slice(approval.body.as_slice()).map_err(Denied::internal)?;
            let row = self
                .store
                .get_device(&a.device)
                .await
                .map_err(store_err)?
                .ok_or_else(|| Denied::internal("approving device vanished"))?;
            let cert: SignedCert = serde_json::from_slice(&row.cert).map_err(Denied::internal)?;
            approvals.push(ApprovalWithCert { approval, cert });
        }
        Ok(CaseApprovals {
            case: blob,
            approvals,
        })
    }

    pub(crate) async fn case_step(
        &self,
        cert: &DeviceCert,
        case: &str,
        step: &str,
        count: u64,
    ) -> Result<(), Denied> {
        let Some(step) = STEPS.iter().find(|s| **s == step) else {
            return Err(Denied::malformed(
                "bad_step",
                format!("a session step is one of {}", STEPS.join(", ")),
            ));
        };
        let (_, c) = self.get_case(case).await?;
        if c.officer != cert.user || c.officer_device != cert.device {
            return Err(Denied::forbidden(
                "not_case_officer",
                format!(
                    "case {case:?} belongs to {}'s device {}",
                    c.officer, c.officer_device
                ),
            ));
        }
        if *step == "session_opened" {
            // enough approvals to open at least one live generation
            let approvers: Vec<String> = self
                .store
                .approvals(case, c.version)
                .await
                .map_err(store_err)?
                .into_iter()
                .map(|(u, _)| u)
                .collect();
            let live = self.escrow_generations().await?;
            let (have, k) = live
                .iter()
                .map(|g| {
                    let have = approvers
                        .iter()
                        .filter(|u| g.custodians.iter().any(|c| c.as_str() == u.as_str()))
                        .count();
                    (have, g.threshold as usize)
                })
                .max_by_key(|(have, k)| (have >= k, *have))
                .unwrap_or((0, 2));
            if have < k {
                return Err(Denied::conflict(
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
}

pub(crate) fn valid_case_id(c: &str) -> bool {
    (1..=64).contains(&c.len())
        && c.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
}
