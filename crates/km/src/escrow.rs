//! The tenant's k-of-n escrow key: registration of the public half and the
//! custodians' sealed shares.

use super::*;
use cloister_crypto::signed;
use cloister_proto::km::{SignedBlob, VaultDescriptor};

impl Km {
    /// The tenant's KM-signed escrow descriptor (the newest generation).
    pub(crate) async fn signed_escrow(&self) -> Result<SignedEscrow, Denied> {
        let d = self
            .store
            .get_escrow()
            .await
            .map_err(store_err)?
            .ok_or_else(no_escrow)?;
        serde_json::from_slice(&d).map_err(Denied::internal)
    }

    /// Every live generation, KM-signed, oldest first.
    pub(crate) async fn escrow_history(&self) -> Result<Vec<SignedEscrow>, Denied> {
        let rows = self.store.escrow_generations().await.map_err(store_err)?;
        if rows.is_empty() {
            return Err(no_escrow());
        }
        rows.iter()
            .map(|(_, d)| serde_json::from_slice(d).map_err(Denied::internal))
            .collect()
    }

    /// Every live generation's descriptor (as this KM signed them).
    pub(crate) async fn escrow_generations(&self) -> Result<Vec<EscrowDescriptor>, Denied> {
        self.escrow_history()
            .await?
            .iter()
            .map(|s| signed::verify_escrow(&self.signer.public(), s).map_err(Denied::internal))
            .collect()
    }

    /// Register the escrow key and its custodians' sealed shares (once).
    pub(crate) async fn escrow_init(
        &self,
        actor: &UserId,
        public: Fixed<32>,
        rule: (u8, u8),
        shares: Vec<SealedShare>,
    ) -> Result<SignedEscrow, Denied> {
        if self.store.get_escrow().await.map_err(store_err)?.is_some() {
            return Err(Denied::conflict(
                "escrow_exists",
                "the tenant's escrow key is already initialised (rotate it with `cloister admin escrow rotate`)",
            ));
        }
        self.register_escrow(actor, 1, public, rule, shares).await
    }

    /// An emergency rotation: generation n+1, split among custodians under
    /// the same checks; the older generations stay live until retired.
    pub(crate) async fn escrow_rotate(
        &self,
        actor: &UserId,
        public: Fixed<32>,
        rule: (u8, u8),
        shares: Vec<SealedShare>,
    ) -> Result<SignedEscrow, Denied> {
        let live = self.escrow_generations().await?;
        let newest = live.last().ok_or_else(no_escrow)?;
        if live.iter().any(|d| d.public == public) {
            return Err(Denied::malformed(
                "bad_escrow",
                "the new escrow key must be a new key",
            ));
        }
        let (from, generation) = (newest.generation, newest.generation + 1);
        let signed = self
            .register_escrow(actor, generation, public, rule, shares)
            .await?;
        self.record_escrow_step(actor, "started", from, generation)
            .await?;
        tracing::warn!(from, to = generation, "escrow key rotated");
        Ok(signed)
    }

    /// Retire an older generation once the vault(s) say no envelope is left
    /// under it: its descriptor and sealed shares are deleted.
    pub(crate) async fn escrow_retire(
        &self,
        actor: &UserId,
        generation: u32,
        counts: &[SignedBlob],
    ) -> Result<serde_json::Value, Denied> {
        let live = self.escrow_generations().await?;
        let newest = live.last().map(|d| d.generation).unwrap_or_default();
        if !live.iter().any(|d| d.generation == generation) {
            return Err(Denied::not_found(
                "no_such_generation",
                format!("escrow generation {generation} is not live"),
            ));
        }
        if generation == newest {
            return Err(Denied::conflict(
                "newest_generation",
                format!("generation {generation} is the escrow key in use; rotate first"),
            ));
        }
        // every registered vault counted, each under its own key
        let vaults = self.vault_descriptors().await?;
        if vaults.is_empty() {
            return Err(Denied::not_found(
                "no_vault",
                "no vault is registered to count the envelopes",
            ));
        }
        for v in &vaults {
            let c = counts
                .iter()
                .find_map(|b| self.vault_count(v, b).ok())
                .ok_or_else(|| {
                    Denied::unauthenticated(
                        "bad_count",
                        format!(
                            "no fresh count signed by the vault at {} (every registered vault counts)",
                            v.url
                        ),
                    )
                })?;
            if c.generation != generation {
                return Err(Denied::malformed(
                    "bad_count",
                    format!(
                        "the count of the vault at {} is of generation {}, not {generation}",
                        v.url, c.generation
                    ),
                ));
            }
            if c.newest <= generation {
                return Err(Denied::conflict(
                    "vault_behind",
                    format!(
                        "the vault at {} still accepts captures sealed to generation {generation} (it knows generation {} as the newest); let it pull the KM's deny list and count again",
                        v.url, c.newest
                    ),
                ));
            }
            if c.remaining > 0 {
                return Err(Denied::conflict(
                    "envelopes_remain",
                    format!(
                        "{} envelope(s) in the vault at {} are still sealed to generation {generation}: re-seal them under a case first (`cloister compliance reseal`)",
                        c.remaining, v.url
                    ),
                ));
            }
        }
        self.record_escrow_step(actor, "finished", generation, newest)
            .await?;
        self.store
            .retire_escrow(generation)
            .await
            .map_err(|e| match e {
                cloister_store::StoreError::Conflict(m) => {
                    Denied::not_found("no_such_generation", m)
                }
                e => store_err(e),
            })?;
        tracing::warn!(
            generation,
            "escrow generation retired; its shares are deleted"
        );
        Ok(serde_json::json!({ "retired": generation, "newest": newest }))
    }

    /// The audit entry of an escrow rotation's step (`key_rotation`).
    async fn record_escrow_step(
        &self,
        actor: &UserId,
        step: &str,
        from: u32,
        to: u32,
    ) -> Result<(), Denied> {
        self.record(
            Some(actor),
            AuditEvent::KeyRotation {
                key: "escrow".into(),
                step: step.into(),
                from: format!("generation {from}"),
                to: format!("generation {to}"),
                count: 0,
            },
        )
        .await?;
        Ok(())
    }

    /// A vault's signed count, checked under that vault's registered
    /// receipt key and fresh.
    fn vault_count(
        &self,
        vault: &VaultDescriptor,
        blob: &SignedBlob,
    ) -> Result<cloister_proto::km::EscrowCount, Denied> {
        let c: cloister_proto::km::EscrowCount = signed::verify_blob(
            &vault.receipt_pk.0,
            signed::ESCROW_COUNT,
            blob,
            "escrow count",
        )
        .map_err(|_| {
            Denied::unauthenticated(
                "bad_count",
                "the count is not signed by the tenant's registered vault",
            )
        })?;
        if c.tenant != self.tenant || !cloister_proto::within_skew(c.ts) {
            return Err(Denied::malformed(
                "bad_count",
                "the vault's count is of another tenant or not fresh; count again",
            ));
        }
        Ok(c)
    }

    /// One generation's key and shares, after the checks every generation
    /// passes (shares numbered 1..=n, one per custodian, each sealed to the
    /// custodian's active device holding the custodian role; the
    /// jurisdiction rule).
    async fn register_escrow(
        &self,
        actor: &UserId,
        generation: u32,
        public: Fixed<32>,
        (threshold, min_jurisdictions): (u8, u8),
        shares: Vec<SealedShare>,
    ) -> Result<SignedEscrow, Denied> {
        let n = shares.len();
        if !(2..=32).contains(&n) || threshold < 2 || threshold as usize > n {
            return Err(Denied::malformed(
                "bad_escrow",
                format!(
                    "need 2 to 32 shares and a threshold of 2..={n}; got {n} shares, threshold {threshold}"
                ),
            ));
        }
        let mut numbers: Vec<u8> = shares.iter().map(|s| s.number).collect();
        numbers.sort_unstable();
        if numbers != (1..=n as u8).collect::<Vec<_>>() {
            return Err(Denied::malformed(
                "bad_escrow",
                "shares must be numbered 1..=n, each once",
            ));
        }
        if let Some(s) = shares.iter().find(|s| s.generation != generation) {
            return Err(Denied::malformed(
                "bad_escrow",
                format!(
                    "share {} names escrow generation {}; this registers generation {generation}",
                    s.number, s.generation
                ),
            ));
        }
        let mut custodians: Vec<UserId> = Vec::new();
        for sh in &shares {
            let dev = self.active_cert(&sh.device).await.map_err(|e| {
                Denied::malformed(
                    "bad_escrow",
                    format!("custodian device {}: {}", sh.device, e.message),
                )
            })?;
            if !dev.roles.contains(&Role::Custodian) {
                return Err(Denied::malformed(
                    "bad_escrow",
                    format!(
                        "{} does not have the custodian role (its device was enrolled without it)",
                        sh.custodian
                    ),
                ));
            }
            if dev.user != sh.custodian {
                return Err(Denied::malformed(
                    "bad_escrow",
                    format!("device {} does not belong to {}", sh.device, sh.custodian),
                ));
            }
            if custodians.contains(&sh.custodian) {
                return Err(Denied::malformed(
                    "bad_escrow",
                    format!("{} holds two shares", sh.custodian),
                ));
            }
            custodians.push(sh.custodian.clone());
        }
        let jurisdictions: Vec<String> = {
            let dir = self.dir();
            custodians
                .iter()
                .map(|c| {
                    dir.user(c)
                        .map(|u| u.entry().jurisdiction.trim().to_ascii_uppercase())
                        .unwrap_or_default()
                })
                .collect()
        };
        if min_jurisdictions > 1 {
            if let Some((c, _)) = custodians
                .iter()
                .zip(&jurisdictions)
                .find(|(_, j)| j.is_empty())
            {
                return Err(Denied::malformed(
                    "bad_escrow",
                    format!(
                        "{c} has no jurisdiction in the directory (admin profile set --jurisdiction)"
                    ),
                ));
            }
            spread_ok(&jurisdictions, threshold, min_jurisdictions)
                .map_err(|m| Denied::malformed("bad_escrow", m))?;
        }
        let d = EscrowDescriptor {
            tenant: self.tenant.clone(),
            public,
            threshold,
            custodians: custodians.clone(),
            created: now_secs(),
            jurisdictions: if jurisdictions.iter().all(String::is_empty) {
                Vec::new()
            } else {
                jurisdictions
            },
            min_jurisdictions,
            generation,
        };
        let signed =
            cloister_crypto::signed::sign_escrow(&self.signer, &d).map_err(Denied::internal)?;
        self.record(
            Some(actor),
            AuditEvent::EscrowInitialised {
                public: cloister_proto::b64::encode(&public.0),
                threshold,
                custodians,
            },
        )
        .await?;
        let rows = shares
            .iter()
            .map(|s| Ok((s.custodian.to_string(), s.number, serde_json::to_vec(s)?)))
            .collect::<Result<Vec<_>, serde_json::Error>>()
            .map_err(Denied::internal)?;
        self.store
            .init_escrow(
                generation,
                &serde_json::to_vec(&signed).map_err(Denied::internal)?,
                &rows,
            )
            .await
            .map_err(|e| match e {
                cloister_store::StoreError::Conflict(m) => Denied::conflict("escrow_exists", m),
                e => store_err(e),
            })?;
        tracing::info!(generation, threshold, shares = n, "escrow key registered");
        Ok(signed)
    }
}

fn no_escrow() -> Denied {
    Denied::not_found("no_escrow", "the tenant's escrow key is not initialised")
}

/// Whether any `k` of the shares (one per custodian, in `jurisdictions`)
/// come from at least `m` jurisdictions: exactly when the `m - 1`
/// jurisdictions holding the most shares hold fewer than `k` together.
pub(crate) fn spread_ok(jurisdictions: &[String], k: u8, m: u8) -> Result<(), String> {
    if m > k {
        return Err(format!(
            "{k} shares cannot come from {m} jurisdictions: the threshold is below the rule"
        ));
    }
    let mut counts: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for j in jurisdictions {
        *counts.entry(j.as_str()).or_default() += 1;
    }
    let mut by_size: Vec<(&str, usize)> = counts.into_iter().collect();
    by_size.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let top: Vec<(&str, usize)> = by_size.into_iter().take(usize::from(m) - 1).collect();
    let held: usize = top.iter().map(|(_, n)| n).sum();
    if held >= usize::from(k) {
        let names: Vec<String> = top.iter().map(|(j, n)| format!("{j} ({n})")).collect();
        return Err(format!(
            "{k} custodians from {} alone could open the escrow: spread the shares over more jurisdictions",
            names.join(" and ")
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::spread_ok;

    fn j(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn any_threshold_of_shares_spans_enough_jurisdictions() {
        // 2-of-3, no two from the same jurisdiction
        assert!(spread_ok(&j(&["UK", "US", "SG"]), 2, 2).is_ok());
        let e = spread_ok(&j(&["UK", "UK", "SG"]), 2, 2).unwrap_err();
        assert!(e.contains("UK (2)"), "{e}");
        // 3-of-5 from at least 2: the biggest jurisdiction holds at most 2
        assert!(spread_ok(&j(&["UK", "UK", "US", "US", "SG"]), 3, 2).is_ok());
        assert!(spread_ok(&j(&["UK", "UK", "UK", "US", "SG"]), 3, 2).is_err());
        // 3-of-5 from at least 3: the two biggest hold at most 2 together
        assert!(spread_ok(&j(&["UK", "US", "SG", "DE", "JP"]), 3, 3).is_ok());
        assert!(spread_ok(&j(&["UK", "UK", "US", "SG", "DE"]), 3, 3).is_err());
        // the rule cannot ask for more jurisdictions than shares needed
        assert!(spread_ok(&j(&["UK", "US", "SG"]), 2, 3).is_err());
    }
}
