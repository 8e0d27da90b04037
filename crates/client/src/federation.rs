//! Trust between firms (admin devices): this firm's KM identity, and the
//! partner KMs it pins. Connections between users of two firms: the
//! user's KM signs each step, the server relays it.

use crate::{Client, ClientError, Result};
use cloister_crypto::signed::{self, PARTNER_KEYS, verify_blob};
use cloister_proto::federation::{
    Connection, ConnectionAnswer, ConnectionPost, ConnectionProof, ConnectionRemoval,
    ConnectionRequest, OwnIdentity, PartnerKeys, TrustedFirm,
};
use cloister_proto::km::{KmOp, SignedBlob, SignedCert};
use cloister_proto::room::SignedStatement;
use cloister_proto::{TenantId, UserId, now_millis};
use std::collections::HashMap;

/// The partner firms' KM keys (KM-signed) and when they were fetched.
pub(crate) type Partners = (HashMap<TenantId, [u8; 32]>, u64);

/// How long a device uses its KM's signed partner list before asking again
/// (a firm it does not know yet is asked for at once).
const PARTNERS_TTL_MS: u64 = 60_000;

/// A connection as a user sees it (the blobs parsed, not judged: each
/// firm's KM judges them under the keys it pinned).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConnectionView {
    pub id: String,
    pub from: UserId,
    pub to: UserId,
    /// `pending`, `accepted`, `rejected` or `removed`.
    pub state: &'static str,
}

fn body<T: serde::de::DeserializeOwned>(b: &SignedBlob) -> Result<T> {
    serde_json::from_slice(b.body.as_slice()).map_err(|e| {
        ClientError::Local(format!("a connection from the server does not parse: {e}"))
    })
}

impl ConnectionView {
    pub fn of(c: &Connection) -> Result<ConnectionView> {
        let r: ConnectionRequest = body(&c.request)?;
        let state = match (&c.answer, &c.removal) {
            (_, Some(_)) => "removed",
            (Some(a), None) => {
                if body::<ConnectionAnswer>(a)?.accept {
                    "accepted"
                } else {
                    "rejected"
                }
            }
            (None, None) => "pending",
        };
        Ok(ConnectionView {
            id: hex::encode(c.id.0),
            from: r.from,
            to: r.to,
            state,
        })
    }
}

impl Client {
    /// This firm's KM identity and fingerprint, to give a partner firm.
    pub async fn trust_self(&self) -> Result<OwnIdentity> {
        self.km_request(KmOp::TrustSelf).await
    }

    /// Pin `tenant`'s KM identity; `fingerprint`, when given, must match.
    pub async fn trust_add(
        &self,
        tenant: &TenantId,
        km_key: &str,
        fingerprint: Option<&str>,
    ) -> Result<TrustedFirm> {
        self.trust_add_at(tenant, km_key, fingerprint, None).await
    }

    /// [`Client::trust_add`] with the partner KM's address (needed for
    /// rooms homed at that firm: its KM hands their keys to ours).
    pub async fn trust_add_at(
        &self,
        tenant: &TenantId,
        km_key: &str,
        fingerprint: Option<&str>,
        km_url: Option<&str>,
    ) -> Result<TrustedFirm> {
        let r = self
            .km_request(KmOp::TrustAdd {
                tenant: tenant.clone(),
                km_key: km_key.to_owned(),
                fingerprint: fingerprint.map(str::to_owned),
                km_url: km_url.map(str::to_owned),
            })
            .await;
        if let Ok(mut p) = self.partners.lock() {
            *p = None;
        }
        r
    }

    pub async fn trust_list(&self) -> Result<Vec<TrustedFirm>> {
        self.km_request(KmOp::TrustList).await
    }

    pub async fn trust_remove(&self, tenant: &TenantId, reason: &str) -> Result<TrustedFirm> {
        self.km_request(KmOp::TrustRemove {
            tenant: tenant.clone(),
            reason: reason.to_owned(),
        })
        .await
    }

    /// Ask `to` (a user of a trusted firm) to connect.
    pub async fn connect_request(&self, to: &UserId) -> Result<ConnectionView> {
        let blob: SignedBlob = self
            .km_request(KmOp::ConnectRequest { to: to.clone() })
            .await?;
        let c: Connection = self
            .server(|h, s| {
                h.post(format!("{s}/v1/connections"))
                    .json(&ConnectionPost { blob: blob.clone() })
            })
            .await?;
        ConnectionView::of(&c)
    }

    /// My connections, as the server keeps them.
    pub async fn connections(&self) -> Result<Vec<Connection>> {
        self.server(|h, s| h.get(format!("{s}/v1/connections")))
            .await
    }

    async fn connection(&self, id: &str) -> Result<Connection> {
        self.connections()
            .await?
            .into_iter()
            .find(|c| hex::encode(c.id.0) == id)
            .ok_or_else(|| ClientError::Local(format!("no connection {id} of yours")))
    }

    /// Accept or reject a request addressed to me.
    pub async fn connect_answer(&self, id: &str, accept: bool) -> Result<ConnectionView> {
        let c = self.connection(id).await?;
        let blob: SignedBlob = self
            .km_request(KmOp::ConnectAnswer {
                request: c.request.clone(),
                accept,
            })
            .await?;
        let c: Connection = self
            .server(|h, s| {
                h.post(format!("{s}/v1/connections/{id}/answer"))
                    .json(&ConnectionPost { blob: blob.clone() })
            })
            .await?;
        ConnectionView::of(&c)
    }

    /// End a connection I am part of.
    pub async fn connect_remove(&self, id: &str) -> Result<ConnectionView> {
        let c = self.connection(id).await?;
        let blob: SignedBlob = self
            .km_request(KmOp::ConnectRemove {
                request: c.request.clone(),
            })
            .await?;
        let _: ConnectionRemoval = body(&blob)?;
        let c: Connection = self
            .server(|h, s| {
                h.post(format!("{s}/v1/connections/{id}/remove"))
                    .json(&ConnectionPost { blob: blob.clone() })
            })
            .await?;
        ConnectionView::of(&c)
    }
}

impl Client {
    /// The signing keys of the firms our KM trusts, as it signed them.
    async fn partner_map(&self, refresh: bool) -> Result<HashMap<TenantId, [u8; 32]>> {
        let now = now_millis();
        if !refresh
            && let Some((m, at)) = self.partners.lock().ok().and_then(|p| p.clone())
            && now.saturating_sub(at) < PARTNERS_TTL_MS
        {
            return Ok(m);
        }
        let blob: SignedBlob = self.km_request(KmOp::PartnerKeys).await?;
        let pk: PartnerKeys = verify_blob(
            &self.profile.km_sign_pk.0,
            PARTNER_KEYS,
            &blob,
            "partner keys",
        )
        .map_err(|_| ClientError::Local("the partner list is not signed by our KM".into()))?;
        if pk.tenant != self.profile.tenant {
            return Err(ClientError::Local(
                "the KM answered with another firm's partner list".into(),
            ));
        }
        let m: HashMap<TenantId, [u8; 32]> = pk
            .partners
            .into_iter()
            .map(|p| (p.tenant, p.sign_pk.0))
            .collect();
        if let Ok(mut p) = self.partners.lock() {
            *p = Some((m.clone(), now));
        }
        Ok(m)
    }

    /// The KM key `tenant`'s statements and certificates must verify
    /// under: our own KM's, or a partner's our KM trusts.
    pub(crate) async fn firm_key(&self, tenant: &TenantId) -> Result<[u8; 32]> {
        if *tenant == self.profile.tenant {
            return Ok(self.profile.km_sign_pk.0);
        }
        if let Some(k) = self.partner_map(false).await?.get(tenant) {
            return Ok(*k);
        }
        self.partner_map(true)
            .await?
            .get(tenant)
            .copied()
            .ok_or_else(|| {
                ClientError::Local(format!(
                    "{tenant} is not a firm our KM trusts: its users' certificates and statements are refused"
                ))
            })
    }

    /// Read the firms our KM trusts from it again now (they are otherwise
    /// cached for a minute): a trust removed takes effect on this device
    /// at once. Returns how many partner firms it trusts.
    pub async fn refresh_trust(&self) -> Result<usize> {
        Ok(self.partner_map(true).await?.len())
    }

    /// [`Self::firm_keys`], with the partner list fetched from the KM again.
    pub(crate) async fn fresh_firm_keys(&self) -> Result<HashMap<TenantId, [u8; 32]>> {
        let mut m = self.partner_map(true).await?;
        m.insert(self.profile.tenant.clone(), self.profile.km_sign_pk.0);
        Ok(m)
    }

    /// Every firm key this device trusts now (own and partners').
    pub(crate) async fn firm_keys(&self) -> Result<HashMap<TenantId, [u8; 32]>> {
        let mut m = self.partner_map(false).await?;
        m.insert(self.profile.tenant.clone(), self.profile.km_sign_pk.0);
        Ok(m)
    }

    /// For each user of another firm: the accepted connection between me
    /// and them, as a proof to put in the statement that brings them in.
    pub(crate) async fn proofs_for(&self, users: &[&UserId]) -> Result<Vec<ConnectionProof>> {
        let foreign: Vec<&&UserId> = users
            .iter()
            .filter(|u| u.tenant() != self.profile.tenant)
            .collect();
        if foreign.is_empty() {
            return Ok(Vec::new());
        }
        // my accepted, standing connections, by the other user
        let mut mine: HashMap<UserId, ConnectionProof> = HashMap::new();
        for c in self.connections().await? {
            let (Ok(r), Some(answer)) = (body::<ConnectionRequest>(&c.request), c.answer.clone())
            else {
                continue;
            };
            let Ok(a) = body::<ConnectionAnswer>(&answer) else {
                continue;
            };
            let other = if &r.from == self.user() {
                r.to
            } else if &r.to == self.user() {
                r.from
            } else {
                continue;
            };
            if a.accept && c.removal.is_none() {
                mine.insert(
                    other,
                    ConnectionProof {
                        request: c.request,
                        answer,
                    },
                );
            }
        }
        let mut out = Vec::new();
        for u in foreign {
            out.push(mine.get(*u).cloned().ok_or_else(|| ClientError::Refused {
                code: "not_connected",
                message: format!(
                    "you and {u} are not connected: `cloister connect request {u}` and wait for them to accept"
                ),
            })?);
        }
        Ok(out)
    }

    /// Certificates of the actors of `entries` from other firms (their
    /// firm's KM signed them; our KM checks them under its pinned keys).
    pub(crate) async fn foreign_certs(&self, entries: &[SignedStatement]) -> Vec<SignedCert> {
        let mut out: Vec<SignedCert> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for e in entries {
            if cloister_policy::signed_by_km(e) || !seen.insert(e.actor) {
                continue;
            }
            if let Ok((c, sc)) = self.cert_entry(&e.actor).await
                && c.tenant != self.profile.tenant
            {
                out.push(sc);
            }
        }
        out
    }
}

/// A signed blob's body, parsed (the signature is the caller's to check).
pub(crate) fn peek<T: serde::de::DeserializeOwned>(b: &SignedBlob) -> Result<T> {
    signed::peek_blob(b, "signed object").map_err(|e| ClientError::Local(e.to_string()))
}
