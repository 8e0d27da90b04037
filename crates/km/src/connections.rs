//! Connections between users of trusted firms. The KM vouches for its own
//! user's step (request, answer, removal) with its signature; the other
//! firm's blobs are believed only under that firm's pinned key. Each step
//! needs the user's `external_chat` entitlement (a removal does not: anyone
//! may leave) and is an audit record. (docs/federation.md)

use super::*;
use cloister_crypto::signed::{
    CONNECTION_ANSWER, CONNECTION_REMOVAL, CONNECTION_REQUEST, connection_id, km_sign_blob,
    verify_blob,
};
use cloister_proto::controls::Entitlement;
use cloister_proto::federation::{ConnectionAnswer, ConnectionRemoval, ConnectionRequest};
use cloister_proto::km::SignedBlob;

impl Km {
    pub(crate) async fn connection_op(
        &self,
        cert: &DeviceCert,
        op: KmOp,
    ) -> Result<serde_json::Value, Denied> {
        match op {
            KmOp::ConnectRequest { to } => json(&self.connect_request(&cert.user, &to).await?),
            KmOp::ConnectAnswer { request, accept } => {
                json(&self.connect_answer(&cert.user, &request, accept).await?)
            }
            KmOp::ConnectRemove { request } => {
                json(&self.connect_remove(&cert.user, &request).await?)
            }
            _ => Err(Denied::internal("not a connection operation")),
        }
    }

    pub(crate) async fn entitled(&self, user: &UserId) -> Result<(), Denied> {
        match self.rules().require(user, Entitlement::ExternalChat) {
            Ok(()) => Ok(()),
            Err(r) => Err(self.refused("connection", user, None, r).await),
        }
    }

    /// No connection across one of this firm's barriers (a group walled off
    /// from the other user's firm).
    async fn not_walled(&self, user: &UserId, other: &UserId) -> Result<(), Denied> {
        match self.rules().barriers().blocked(user, other) {
            None => Ok(()),
            Some(w) => Err(self
                .refused(
                    "connection",
                    user,
                    None,
                    cloister_policy::controls::Refusal::Walled(w),
                )
                .await),
        }
    }

    /// The key that must have signed a blob of `tenant`'s KM: this KM's own,
    /// or the pinned key of a trusted firm.
    fn km_key_of(&self, tenant: &TenantId) -> Result<[u8; 32], Denied> {
        if tenant == &self.tenant {
            return Ok(self.signer.public());
        }
        self.trusted(tenant).map(|id| id.sign_pk).ok_or_else(|| {
            Denied::forbidden(
                "not_trusted",
                format!("{tenant} is not a trusted firm (an admin pins its KM key first)"),
            )
        })
    }

    /// A request as the KM of its asker signed it.
    fn verified_request(&self, request: &SignedBlob) -> Result<ConnectionRequest, Denied> {
        let peek: ConnectionRequest = serde_json::from_slice(request.body.as_slice())
            .map_err(|e| Denied::malformed("bad_connection", e.to_string()))?;
        let key = self.km_key_of(&peek.from.tenant())?;
        verify_blob(&key, CONNECTION_REQUEST, request, "connection request").map_err(|_| {
            Denied::forbidden(
                "bad_signature",
                format!("the request is not signed by {}'s KM", peek.from.tenant()),
            )
        })
    }

    async fn connect_request(&self, from: &UserId, to: &UserId) -> Result<SignedBlob, Denied> {
        if to.tenant() == self.tenant {
            return Err(Denied::malformed(
                "same_firm",
                "connections are between firms; colleagues need none",
            ));
        }
        self.km_key_of(&to.tenant())?;
        self.entitled(from).await?;
        self.not_walled(from, to).await?;
        let req = ConnectionRequest {
            from: from.clone(),
            to: to.clone(),
            ts: now_millis(),
            nonce: Fixed(cloister_crypto::random_bytes().map_err(Denied::internal)?),
        };
        let blob =
            km_sign_blob(&self.signer, CONNECTION_REQUEST, &req).map_err(Denied::internal)?;
        self.record_connection(&blob, &req.from, &req.to, "request")
            .await?;
        Ok(blob)
    }

    async fn connect_answer(
        &self,
        user: &UserId,
        request: &SignedBlob,
        accept: bool,
    ) -> Result<SignedBlob, Denied> {
        let req = self.verified_request(request)?;
        if &req.to != user {
            return Err(Denied::forbidden(
                "not_yours",
                format!("this request is addressed to {}", req.to),
            ));
        }
        if accept {
            self.entitled(user).await?;
            self.not_walled(user, &req.from).await?;
        }
        let ans = ConnectionAnswer {
            request: Fixed(connection_id(request)),
            from: req.from.clone(),
            to: req.to.clone(),
            accept,
            ts: now_millis(),
        };
        let blob = km_sign_blob(&self.signer, CONNECTION_ANSWER, &ans).map_err(Denied::internal)?;
        let step = if accept { "accept" } else { "reject" };
        self.record_connection(request, &req.from, &req.to, step)
            .await?;
        Ok(blob)
    }

    async fn connect_remove(
        &self,
        user: &UserId,
        request: &SignedBlob,
    ) -> Result<SignedBlob, Denied> {
        let req = self.verified_request(request)?;
        if &req.from != user && &req.to != user {
            return Err(Denied::forbidden(
                "not_yours",
                "only the two connected users end a connection",
            ));
        }
        let rem = ConnectionRemoval {
            request: Fixed(connection_id(request)),
            by: user.clone(),
            ts: now_millis(),
        };
        let blob =
            km_sign_blob(&self.signer, CONNECTION_REMOVAL, &rem).map_err(Denied::internal)?;
        self.record_connection(request, &req.from, &req.to, "remove")
            .await?;
        Ok(blob)
    }

    async fn record_connection(
        &self,
        request: &SignedBlob,
        from: &UserId,
        to: &UserId,
        step: &str,
    ) -> Result<(), Denied> {
        self.record(
            None,
            AuditEvent::Connection {
                id: hex::encode(connection_id(request)),
                from: from.clone(),
                to: to.clone(),
                step: step.into(),
            },
        )
        .await?;
        Ok(())
    }
}
