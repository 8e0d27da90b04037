//! Users: creation (and new enrolment codes), disabling, listing.

use super::*;

impl Km {
    /// Create (or reactivate) a user and issue a fresh one-time enrolment code.
    pub async fn add_user(
        &self,
        actor: Option<&UserId>,
        user: &UserId,
        roles: &[Role],
    ) -> Result<AddUserResponse, Denied> {
        if user.tenant() != self.tenant {
            return Err(Denied::malformed(
                "wrong_tenant",
                format!("{user} is not a user of tenant {}", self.tenant),
            ));
        }
        let mut roles: Vec<Role> = roles.to_vec();
        let guest = roles.contains(&Role::Guest);
        if guest && roles.iter().any(|r| !matches!(r, Role::Guest | Role::User)) {
            return Err(Denied::malformed(
                "bad_roles",
                "a guest holds no other role (admin, compliance, custodian, surveillance, inspector)",
            ));
        }
        if guest {
            roles.retain(|r| *r == Role::Guest);
        } else if !roles.contains(&Role::User) {
            roles.push(Role::User);
        }
        // An existing user gets a new code for another device: roles are only
        // ever added here, never taken away; a disabled user stays disabled
        // (the server keeps refusing them, so re-enabling would split the two).
        if let Some(existing) = self.store.get_user(user).await.map_err(store_err)? {
            if existing.status != "active" {
                return Err(Denied::conflict(
                    "user_disabled",
                    format!("{user} is disabled; re-enabling is not supported"),
                ));
            }
            let had = parse_roles(&existing.roles);
            if had.contains(&Role::Guest) != guest {
                return Err(Denied::conflict(
                    "guest_mismatch",
                    format!(
                        "{user} is already a {}; a guest is never made a user, nor a user a guest",
                        if guest { "user" } else { "guest" }
                    ),
                ));
            }
            roles.extend(had);
        }
        roles.sort();
        roles.dedup();
        self.store
            .upsert_user(&KmUserRow {
                user: user.to_string(),
                roles: roles_str(&roles),
                status: "active".into(),
            })
            .await
            .map_err(store_err)?;
        self.record(
            actor,
            AuditEvent::UserAdded {
                user: user.clone(),
                roles: roles.clone(),
            },
        )
        .await?;
        self.ensure_dir_user(user, true, guest).await?;
        let code = random_code().map_err(Denied::internal)?;
        let expires_at = now_secs() + self.config.code_secs;
        self.store
            .put_code(&code_hash(&code), user, expires_at)
            .await
            .map_err(store_err)?;
        tracing::info!(%user, "enrolment code issued");
        Ok(AddUserResponse {
            user: user.clone(),
            code,
            expires_at,
        })
    }

    pub(crate) async fn disable_user(
        &self,
        actor: Option<&UserId>,
        user: &UserId,
    ) -> Result<AdminResponse, Denied> {
        if self
            .store
            .get_user(user)
            .await
            .map_err(store_err)?
            .is_none()
        {
            return Err(Denied::not_found("unknown_user", format!("no user {user}")));
        }
        self.record(actor, AuditEvent::UserDisabled { user: user.clone() })
            .await?;
        self.store
            .set_user_status(user, "disabled")
            .await
            .map_err(store_err)?;
        self.evict_active(|m| m.retain(|_, c| &c.user != user));
        self.dir_mark_inactive(user).await?;
        tracing::info!(%user, "user disabled");
        let n = Notice::UserDisabled {
            tenant: self.tenant.clone(),
            user: user.clone(),
            ts: now_millis(),
        };
        Ok(AdminResponse {
            notice: Some(sign_notice(&self.signer, &n).map_err(Denied::internal)?),
        })
    }

    pub(crate) async fn list_users(&self) -> Result<Vec<UserRecord>, Denied> {
        let mut out = Vec::new();
        for u in self.store.list_users().await.map_err(store_err)? {
            let id: UserId = u
                .user
                .parse()
                .map_err(|_| Denied::internal("a stored user id does not parse"))?;
            let devices = self.devices_of(&id).await?;
            let Ok(user) = u.user.parse() else { continue };
            out.push(UserRecord {
                user,
                status: u.status,
                roles: parse_roles(&u.roles),
                devices,
            });
        }
        Ok(out)
    }
}

pub(crate) fn random_code() -> Result<String, cloister_crypto::CryptoError> {
    // 20 characters of Crockford base32 = 100 bits.
    const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let raw = cloister_crypto::random_bytes::<20>()?;
    let s: String = raw
        .iter()
        .map(|b| ALPHABET[(b & 31) as usize] as char)
        .collect();
    Ok(format!(
        "{}-{}-{}-{}",
        &s[..5],
        &s[5..10],
        &s[10..15],
        &s[15..]
    ))
}

pub(crate) fn code_hash(code: &str) -> [u8; 32] {
    let norm: String = code
        .chars()
        .filter(|c| *c != '-')
        .collect::<String>()
        .to_ascii_uppercase();
    sha256(norm.as_bytes())
}

pub(crate) fn roles_str(r: &[Role]) -> String {
    r.iter().map(Role::as_str).collect::<Vec<_>>().join(",")
}

pub(crate) fn parse_roles(s: &str) -> Vec<Role> {
    s.split(',').filter_map(|r| r.parse().ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_normalised_and_unique() {
        let c = random_code().unwrap();
        assert_eq!(c.len(), 23);
        assert_eq!(code_hash(&c), code_hash(&c.to_lowercase().replace('-', "")));
        assert_ne!(random_code().unwrap(), c);
    }
}
