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
        threshold: u8,
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
        let d = EscrowDescriptor {
            tenant: self.tenant.clone(),
            public,
            threshold,
            custodians: custodians.clone(),
            created: now_secs(),
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
