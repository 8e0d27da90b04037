//! The tenant's escrow key on the device: creating and splitting it among
//! custodians, rotating it in an emergency, retiring an old generation,
//! and a custodian's own shares.

use super::*;
use cloister_proto::km::{EscrowDescriptor, SealedShare, SignedEscrow};

/// A custodian's opened share: (escrow generation, share number, share).
pub type MyShare = (u32, u8, cloister_crypto::SecretBytes);

impl Client {
    /// Admin: create the tenant's escrow key, split its private key k-of-n
    /// among `custodians` (one share each, sealed to their newest active
    /// device), register the public key and the sealed shares with the KM,
    /// and forget the private key. Returns the KM-signed descriptor.
    pub async fn admin_escrow_init(
        &self,
        custodians: &[UserId],
        threshold: u8,
    ) -> Result<EscrowDescriptor> {
        self.admin_escrow_init_spread(custodians, threshold, 0)
            .await
    }

    /// [`Client::admin_escrow_init`] where any `threshold` shares must come
    /// from at least `min_jurisdictions` jurisdictions (the custodians'
    /// jurisdictions in the directory; the KM checks the spread).
    pub async fn admin_escrow_init_spread(
        &self,
        custodians: &[UserId],
        threshold: u8,
        min_jurisdictions: u8,
    ) -> Result<EscrowDescriptor> {
        let (public, shares) = self.split_escrow(custodians, threshold, 1).await?;
        let signed: SignedEscrow = self
            .km_request(KmOp::EscrowInit {
                public: Fixed(public),
                threshold,
                shares,
                min_jurisdictions,
            })
            .await?;
        self.check_registered(&signed, &public, 1)
    }

    /// Admin: an emergency rotation of the escrow key. A new key is split
    /// among `custodians` as generation n+1; devices seal to it from now
    /// on; what was sealed to older generations stays openable by their
    /// quorum until it is re-sealed (`case_reseal`) and the old generation
    /// retired ([`Client::admin_escrow_retire`]).
    pub async fn admin_escrow_rotate(
        &self,
        custodians: &[UserId],
        threshold: u8,
        min_jurisdictions: u8,
    ) -> Result<EscrowDescriptor> {
        let generation = self.escrow_info().await?.generation + 1;
        let (public, shares) = self.split_escrow(custodians, threshold, generation).await?;
        let signed: SignedEscrow = self
            .km_request(KmOp::EscrowRotate {
                public: Fixed(public),
                threshold,
                shares,
                min_jurisdictions,
            })
            .await?;
        let d = self.check_registered(&signed, &public, generation)?;
        if let Ok(mut e) = self.escrow.lock() {
            *e = Some((std::time::Instant::now(), d.clone()));
        }
        Ok(d)
    }

    /// Admin: retire an older escrow generation. Every vault counts, and
    /// signs, how many envelopes are still sealed to it; the KM retires it
    /// (deleting its shares) only at zero everywhere. Returns the total.
    pub async fn admin_escrow_retire(
        &self,
        generation: u32,
    ) -> Result<cloister_proto::km::EscrowCount> {
        // every registered vault counts what it holds under that generation
        let mut counts = Vec::new();
        let mut total: Option<cloister_proto::km::EscrowCount> = None;
        for vault in self.vault_targets().await? {
            let blob: SignedBlob = self
                .vault_request(
                    &vault,
                    &VaultOp::EscrowCount {
                        ts: now_millis(),
                        generation,
                    },
                )
                .await?;
            let c: cloister_proto::km::EscrowCount = signed::verify_blob(
                &vault.receipt_pk,
                signed::ESCROW_COUNT,
                &blob,
                "escrow count",
            )
            .map_err(|_| {
                ClientError::Local(format!(
                    "the count is not signed by the vault at {}",
                    vault.url
                ))
            })?;
            total = Some(match total {
                None => c,
                Some(t) => cloister_proto::km::EscrowCount {
                    remaining: t.remaining + c.remaining,
                    newest: t.newest.min(c.newest),
                    ..t
                },
            });
            counts.push(blob);
        }
        let count =
            total.ok_or_else(|| ClientError::Input("no vault is registered with the KM".into()))?;
        let _: serde_json::Value = self
            .km_request(KmOp::EscrowRetire { generation, counts })
            .await?;
        Ok(count)
    }

    /// The KM answered with the key this device made, for the tenant, as
    /// the generation asked for.
    fn check_registered(
        &self,
        signed: &SignedEscrow,
        public: &[u8; 32],
        generation: u32,
    ) -> Result<EscrowDescriptor> {
        let d = signed::verify_escrow(&self.profile.km_sign_pk.0, signed)?;
        if d.public.0 != *public || d.generation != generation || d.tenant != self.profile.tenant {
            return Err(ClientError::Local(
                "the KM registered another escrow key".into(),
            ));
        }
        Ok(d)
    }

    /// A new escrow key split k-of-n, each share sealed to a custodian's
    /// newest active device; the private key is gone when this returns.
    async fn split_escrow(
        &self,
        custodians: &[UserId],
        threshold: u8,
        generation: u32,
    ) -> Result<([u8; 32], Vec<SealedShare>)> {
        let n = custodians.len();
        if !(2..=32).contains(&n) || threshold < 2 || threshold as usize > n {
            return Err(ClientError::Input(format!(
                "need 2 to 32 custodians and 2 <= threshold <= custodians; got {n} and {threshold}"
            )));
        }
        let users = self.admin_list_users().await?;
        let mut devices = Vec::with_capacity(n);
        for c in custodians {
            let u = users
                .iter()
                .find(|u| &u.user == c && u.status == "active")
                .ok_or_else(|| ClientError::Input(format!("{c} is not an active user")))?;
            let d = u
                .devices
                .iter()
                .filter(|d| d.status == "active")
                .max_by_key(|d| d.issued_at)
                .ok_or_else(|| {
                    ClientError::Input(format!("{c} has no enrolled device to hold a share"))
                })?;
            devices.push(self.cert_of(&d.device).await?);
        }
        let (public, secret) = escrow::generate()?;
        let shares = escrow::split(&secret, threshold, n as u8)?;
        // Check the split before anything leaves this process.
        let check: Vec<_> = shares.iter().take(threshold as usize).cloned().collect();
        escrow::combine(&check, threshold, &public)?;
        drop(secret);
        let mut sealed = Vec::with_capacity(n);
        for (i, (share, cert)) in shares.iter().zip(&devices).enumerate() {
            let number = i as u8 + 1;
            let ctx = signed::share_context(&self.profile.tenant, &public, number);
            let (enc, ct) = escrow::seal_share(&cert.hpke_pk.0, &ctx, share)?;
            sealed.push(SealedShare {
                custodian: cert.user.clone(),
                device: cert.device,
                number,
                enc: Fixed(enc),
                ct: ct.into(),
                generation,
            });
        }
        drop(shares);
        Ok((public, sealed))
    }

    /// The tenant's escrow descriptor (the newest generation), verified
    /// against the pinned KM key.
    pub async fn escrow_info(&self) -> Result<EscrowDescriptor> {
        let signed: SignedEscrow = self.km_request(KmOp::EscrowInfo).await?;
        self.verify_escrow(&signed)
    }

    /// Every live escrow generation, oldest first, verified.
    pub async fn escrow_history(&self) -> Result<Vec<EscrowDescriptor>> {
        let all: Vec<SignedEscrow> = self.km_request(KmOp::EscrowHistory).await?;
        let mut out = all
            .iter()
            .map(|s| self.verify_escrow(s))
            .collect::<Result<Vec<_>>>()?;
        out.sort_by_key(|d| d.generation);
        Ok(out)
    }

    fn verify_escrow(&self, signed: &SignedEscrow) -> Result<EscrowDescriptor> {
        let d = signed::verify_escrow(&self.profile.km_sign_pk.0, signed)?;
        if d.tenant != self.profile.tenant {
            return Err(ClientError::Local(
                "escrow descriptor of another tenant".into(),
            ));
        }
        Ok(d)
    }

    /// Custodian: open my escrow shares, one per live generation I hold one of.
    pub async fn my_escrow_shares(&self) -> Result<Vec<MyShare>> {
        let live = self.escrow_history().await?;
        let shares: Vec<SealedShare> = self.km_request(KmOp::MyEscrowShare).await?;
        let mut out = Vec::new();
        for s in shares {
            if s.device != self.device() {
                return Err(ClientError::Input(format!(
                    "your share of escrow generation {} is sealed to your device {}, not this one",
                    s.generation, s.device
                )));
            }
            let Some(d) = live.iter().find(|d| d.generation == s.generation) else {
                continue;
            };
            let ctx = signed::share_context(&self.profile.tenant, &d.public.0, s.number);
            let share =
                cloister_crypto::escrow::open_share(&self.keys, &ctx, &s.enc.0, s.ct.as_slice())?;
            out.push((s.generation, s.number, share));
        }
        Ok(out)
    }
}
