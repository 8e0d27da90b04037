//! Trust between firms (admin devices): this firm's KM identity, and the
//! partner KMs it pins. Connections between users of two firms: the
//! user's KM signs each step, the server relays it.

use crate::{Client, ClientError, Result};
use cloister_proto::federation::{
    Connection, ConnectionAnswer, ConnectionPost, ConnectionRemoval, ConnectionRequest,
    OwnIdentity, TrustedFirm,
};
use cloister_proto::km::{KmOp, SignedBlob};
use cloister_proto::{TenantId, UserId};

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
        self.km_request(KmOp::TrustAdd {
            tenant: tenant.clone(),
            km_key: km_key.to_owned(),
            fingerprint: fingerprint.map(str::to_owned),
        })
        .await
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
