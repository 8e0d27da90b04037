//! Tenant administration from an admin device (users, devices, notices).

use super::*;

impl Client {
    /// Admin: create a user and get a one-time enrolment code.
    pub async fn admin_add_user(&self, user: &UserId, admin: bool) -> Result<AddUserResponse> {
        let roles = if admin {
            vec![Role::Admin, Role::User]
        } else {
            vec![Role::User]
        };
        self.admin_add_user_roles(user, &roles).await
    }

    /// Admin: create a user with roles (or add roles to an existing one; the
    /// new roles are in the certificate of the device enrolled with the code).
    pub async fn admin_add_user_roles(
        &self,
        user: &UserId,
        roles: &[Role],
    ) -> Result<AddUserResponse> {
        self.km_request(KmOp::AddUser {
            user: user.clone(),
            roles: roles.to_vec(),
        })
        .await
    }

    pub(crate) async fn forward_notice(&self, r: AdminResponse) -> Result<()> {
        if let Some(n) = r.notice {
            self.post_notice(&n).await?;
        }
        Ok(())
    }

    /// Forward a KM-signed notice to the server (it verifies the KM signature).
    pub async fn post_notice(&self, n: &SignedNotice) -> Result<()> {
        let _: serde_json::Value = api::send(
            self.http
                .post(format!("{}/v1/notices", self.profile.server))
                .json(&PostNotice { notice: n.clone() }),
        )
        .await?;
        Ok(())
    }

    /// Admin: disable a user at the KM (no more keys) and the server (no more access).
    pub async fn admin_disable_user(&self, user: &UserId) -> Result<()> {
        let r: AdminResponse = self
            .km_request(KmOp::DisableUser { user: user.clone() })
            .await?;
        self.forward_notice(r).await
    }

    /// Admin: revoke a device at the KM and the server.
    pub async fn admin_revoke_device(&self, device: &DeviceId) -> Result<()> {
        self.revoke_device(device).await
    }

    pub async fn admin_list_users(&self) -> Result<Vec<UserRecord>> {
        self.km_request(KmOp::ListUsers).await
    }

    /// Admin: set the tenant's attestation policy (which devices the KM certifies).
    pub async fn admin_attestation_set(
        &self,
        policy: cloister_proto::km::AttestationPolicy,
    ) -> Result<cloister_proto::km::AttestationPolicy> {
        self.km_request(KmOp::AttestationSet { policy }).await
    }

    /// Admin: the tenant's attestation policy.
    pub async fn admin_attestation_show(&self) -> Result<cloister_proto::km::AttestationPolicy> {
        self.km_request(KmOp::AttestationShow).await
    }

    /// Whether the tenant is crypto-locked (admin).
    pub async fn admin_lock_status(&self) -> Result<cloister_proto::km::LockStatus> {
        self.km_request(KmOp::LockStatus).await
    }

    /// Rotate the audit log's signing key (admin): the log records the
    /// hand-over in a checkpoint both keys sign.
    pub async fn admin_rotate_log_key(&self) -> Result<cloister_proto::km::LogHandover> {
        let h: cloister_proto::km::LogHandover = self.km_request(KmOp::RotateLogKey).await?;
        // this device follows at once
        self.follow_log_handovers().await?;
        Ok(h)
    }

    /// One step of a master-key rotation (admin): starts or resumes one,
    /// re-wraps up to `batch` keys, and retires the old key when none is left.
    pub async fn admin_rotate_tmk(&self, batch: u32) -> Result<cloister_proto::km::TmkRotation> {
        self.km_request(KmOp::RotateTmk { batch }).await
    }
}
