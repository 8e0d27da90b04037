//! Communication controls from a device: directory search, the caller's
//! entitlements, and the admin's and compliance officer's changes
//! (entitlements, groups, barriers, profiles, SCIM tokens). After a change
//! that alters the controls, the KM-signed controls are forwarded to the
//! server (the KM also pushes them itself when it knows the server).

use super::*;
use cloister_proto::controls::Entitlement;
use cloister_proto::km::{
    BarrierAdded, BarrierInfo, DirectoryEntry, EntitlementsResponse, GroupInfo, ProfileUpdate,
    RoomControlResponse, ScimTokenResponse,
};

impl Client {
    /// People matching every word of `query`, minus those a barrier
    /// separates from me.
    pub async fn directory_search(&self, query: &str, limit: u32) -> Result<Vec<DirectoryEntry>> {
        self.km_request(KmOp::DirectorySearch {
            query: query.to_owned(),
            limit,
        })
        .await
    }

    /// Search a trusted firm's directory (its published fields, of its
    /// people who may talk externally; needs `external_chat`).
    pub async fn partner_directory_search(
        &self,
        firm: &cloister_proto::TenantId,
        query: &str,
        limit: u32,
    ) -> Result<Vec<DirectoryEntry>> {
        self.km_request(KmOp::PartnerDirectorySearch {
            firm: firm.clone(),
            query: query.to_owned(),
            limit,
        })
        .await
    }

    /// Admin: the profile fields this firm publishes to other firms.
    pub async fn admin_directory_publish(&self, fields: &[&str]) -> Result<Vec<String>> {
        let v: serde_json::Value = self
            .km_request(KmOp::DirectoryPublish {
                fields: fields.iter().map(|f| (*f).to_owned()).collect(),
            })
            .await?;
        serde_json::from_value(v["published"].clone())
            .map_err(|e| ClientError::Local(e.to_string()))
    }

    pub async fn my_entitlements(&self) -> Result<Vec<Entitlement>> {
        let r: EntitlementsResponse = self.km_request(KmOp::MyEntitlements).await?;
        Ok(r.entitlements)
    }

    /// Forward the KM's current signed controls to the server.
    pub async fn sync_controls(&self) -> Result<()> {
        let n: SignedNotice = self.km_request(KmOp::Controls).await?;
        match self.post_notice(&n).await {
            // the KM pushed it first
            Err(e) if e.code() == Some("stale_notice") => Ok(()),
            r => r,
        }
    }

    pub async fn admin_entitle(
        &self,
        user: Option<&UserId>,
        group: Option<&str>,
        grant: &[Entitlement],
        revoke: &[Entitlement],
    ) -> Result<()> {
        let _: serde_json::Value = self
            .km_request(KmOp::Entitle {
                user: user.cloned(),
                group: group.map(str::to_owned),
                grant: grant.to_vec(),
                revoke: revoke.to_vec(),
            })
            .await?;
        self.sync_controls().await
    }

    pub async fn admin_group_set(
        &self,
        name: &str,
        add: &[UserId],
        remove: &[UserId],
    ) -> Result<GroupInfo> {
        let g = self
            .km_request(KmOp::GroupSet {
                name: name.to_owned(),
                add: add.to_vec(),
                remove: remove.to_vec(),
            })
            .await?;
        self.sync_controls().await?;
        Ok(g)
    }

    pub async fn group_list(&self) -> Result<Vec<GroupInfo>> {
        self.km_request(KmOp::GroupList).await
    }

    /// Add a barrier; the KM moves the walled members out of shared rooms
    /// and says who left where.
    pub async fn barrier_add(&self, a: &str, b: &str, reason: &str) -> Result<BarrierAdded> {
        let r = self
            .km_request(KmOp::BarrierAdd {
                a: a.to_owned(),
                b: b.to_owned(),
                reason: reason.to_owned(),
            })
            .await?;
        self.sync_controls().await?;
        Ok(r)
    }

    pub async fn barrier_list(&self) -> Result<Vec<BarrierInfo>> {
        self.km_request(KmOp::BarrierList).await
    }

    pub async fn barrier_disable(&self, id: &str, reason: &str) -> Result<BarrierInfo> {
        let r = self
            .km_request(KmOp::BarrierDisable {
                id: id.to_owned(),
                reason: reason.to_owned(),
            })
            .await?;
        self.sync_controls().await?;
        Ok(r)
    }

    pub async fn admin_profile_set(&self, user: &UserId, profile: ProfileUpdate) -> Result<()> {
        let _: serde_json::Value = self
            .km_request(KmOp::ProfileSet {
                user: user.clone(),
                profile,
            })
            .await?;
        Ok(())
    }

    /// Compliance: lock a room (no posts, no changes) with a justification.
    pub async fn room_lock(
        &self,
        room: &RoomId,
        justification: &str,
    ) -> Result<RoomControlResponse> {
        self.km_request(KmOp::RoomLock {
            room: *room,
            justification: justification.to_owned(),
        })
        .await
    }

    pub async fn room_unlock(
        &self,
        room: &RoomId,
        justification: &str,
    ) -> Result<RoomControlResponse> {
        self.km_request(KmOp::RoomUnlock {
            room: *room,
            justification: justification.to_owned(),
        })
        .await
    }

    /// Emergency rotation of a room's key (an owner, an admin or a
    /// compliance officer): the KM signs a new epoch into the room's log.
    pub async fn room_rekey(&self, room: &RoomId, reason: &str) -> Result<RoomControlResponse> {
        self.km_request(KmOp::RoomRekey {
            room: *room,
            reason: reason.to_owned(),
        })
        .await
    }

    /// Compliance: ban a member (a new epoch without them, never re-added).
    pub async fn room_ban(
        &self,
        room: &RoomId,
        user: &UserId,
        justification: &str,
    ) -> Result<RoomControlResponse> {
        self.km_request(KmOp::RoomBan {
            room: *room,
            user: user.clone(),
            justification: justification.to_owned(),
        })
        .await
    }

    pub async fn admin_scim_token(&self, label: &str) -> Result<ScimTokenResponse> {
        self.km_request(KmOp::ScimTokenIssue {
            label: label.to_owned(),
        })
        .await
    }

    pub async fn admin_scim_token_revoke(&self, id: &str) -> Result<()> {
        let _: serde_json::Value = self
            .km_request(KmOp::ScimTokenRevoke { id: id.to_owned() })
            .await?;
        Ok(())
    }
}
