//! The tenant's k-of-n escrow key: registration of the public half and the
//! custodians' sealed shares.

use super::*;

impl Km {
    /// The tenant's KM-signed escrow descriptor.
    pub(crate) async fn signed_escrow(&self) -> Result<SignedEscrow, Denied> {
        let d = self
            .store
            .get_escrow()
            .await
            .map_err(store_err)?
            .ok_or_else(|| {
                Denied::not_found("no_escrow", "the tenant's escrow key is not initialised")
            })?;
        serde_json::from_slice(&d).map_err(Denied::internal)
    }

    /// Register the escrow key and its custodians' sealed shares (once).
    pub(crate) async fn escrow_init(
        &self,
        actor: &UserId,
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
        };
        let signed =
            cloister_crypto::signed::sign_escrow(&self.signer, &d).map_err(Denied::internal)?;
        if self.store.get_escrow().await.map_err(store_err)?.is_some() {
            return Err(Denied::conflict(
                "escrow_exists",
                "the tenant's escrow key is already initialised",
            ));
        }
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
                &serde_json::to_vec(&signed).map_err(Denied::internal)?,
                &rows,
            )
            .await
            .map_err(|e| match e {
                cloister_store::StoreError::Conflict(m) => Denied::conflict("escrow_exists", m),
                e => store_err(e),
            })?;
        tracing::info!(threshold, shares = n, "escrow key initialised");
        Ok(signed)
    }
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
