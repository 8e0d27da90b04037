//! The tenant's communication controls as the server enforces them (the
//! second line: the KM refuses the keys): the newest KM-signed controls
//! per tenant, evaluated by the same `cloister_policy::controls::Rules`.
//! A tenant whose KM has sent none yet is not restricted here.

use crate::Server;
use cloister_http::ApiError;
use cloister_policy::RoomState;
use cloister_policy::controls::{Refusal, Rules};
use cloister_proto::controls::{Controls, Entitlement};
use cloister_proto::km::{Notice, SignedNotice};
use cloister_proto::room::Statement;
use cloister_proto::{TenantId, UserId};
use std::sync::Arc;

fn refusal(r: Refusal) -> ApiError {
    ApiError::forbidden(r.code(), r.to_string())
}

impl Server {
    pub(crate) fn rules(&self, tenant: &TenantId) -> Option<Arc<Rules>> {
        self.controls.read().ok()?.get(tenant).cloned()
    }

    /// Load the stored controls (verified when they arrived).
    pub(crate) async fn load_controls(&self) -> Result<(), cloister_store::StoreError> {
        for n in self.store.tenant_notices("controls").await? {
            let Ok(sn) = serde_json::from_slice::<SignedNotice>(&n) else {
                continue;
            };
            if let Ok(Notice::Controls {
                tenant, controls, ..
            }) = serde_json::from_slice(sn.body.as_slice())
                && let Ok(mut m) = self.controls.write()
            {
                m.insert(tenant, Arc::new(Rules::new(&controls)));
            }
        }
        Ok(())
    }

    /// A verified controls notice: kept if newer than what the server has.
    pub(crate) async fn accept_controls(
        &self,
        tenant: &TenantId,
        controls: &Controls,
        notice: &SignedNotice,
    ) -> Result<(), ApiError> {
        if let Some(u) = controls
            .entitlements
            .keys()
            .chain(controls.groups.values().flatten())
            .find(|u| u.tenant() != *tenant)
        {
            return Err(ApiError::forbidden(
                "wrong_tenant",
                format!("a KM's controls can only name its own users, not {u}"),
            ));
        }
        let bytes = serde_json::to_vec(notice).map_err(ApiError::internal)?;
        if !self
            .store
            .put_tenant_notice(tenant, "controls", controls.version, &bytes)
            .await
            .map_err(ApiError::internal)?
        {
            return Err(ApiError::conflict(
                "stale_notice",
                format!(
                    "controls version {} is not newer than the ones in force (replayed notice)",
                    controls.version
                ),
            ));
        }
        if let Ok(mut m) = self.controls.write() {
            m.insert(tenant.clone(), Arc::new(Rules::new(controls)));
        }
        self.fanout.notices(tenant).await;
        tracing::info!(%tenant, version = controls.version, "controls updated by KM notice");
        Ok(())
    }

    /// May this membership change take effect (entitlements, barriers)?
    /// Each firm with users in the room (and the actor's) judges its own.
    pub(crate) fn check_step(
        &self,
        before: Option<&RoomState>,
        st: &Statement,
        after: &RoomState,
    ) -> Result<(), ApiError> {
        let mut firms = cloister_policy::federation::firms(after);
        let actor_firm = st.actor_user.tenant();
        if !firms.contains(&actor_firm) {
            firms.push(actor_firm);
        }
        for firm in firms {
            if let Some(r) = self.rules(&firm) {
                r.check_step(&firm, before, st, after).map_err(refusal)?;
            }
        }
        Ok(())
    }

    /// No routing for a member a barrier of their firm now separates from
    /// another (until the KM's eviction lands), nor for one in a room
    /// shared with another firm without `external_chat`.
    pub(crate) fn check_walled(&self, st: &RoomState, user: &UserId) -> Result<(), ApiError> {
        let firm = user.tenant();
        match self.rules(&firm) {
            Some(r) => r.may_hold_keys(&firm, st, user).map_err(refusal),
            None => Ok(()),
        }
    }

    /// May `user` add to the room (a message or a file)? Not in a locked or
    /// read-only room, nor past a wall (`check_walled`).
    pub(crate) fn check_may_post(&self, st: &RoomState, user: &UserId) -> Result<(), ApiError> {
        if let Some(why) = st.why_not_post(user) {
            let code = if st.locked.is_some() {
                "locked"
            } else {
                "read_only"
            };
            return Err(ApiError::forbidden(code, why));
        }
        self.check_walled(st, user)
    }

    pub(crate) fn require(
        &self,
        tenant: &TenantId,
        user: &UserId,
        e: Entitlement,
    ) -> Result<(), ApiError> {
        match self.rules(tenant) {
            Some(r) => r.require(user, e).map_err(refusal),
            None => Ok(()),
        }
    }
}
