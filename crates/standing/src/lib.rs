//! Device standing: may this certificate act here, now?
//!
//! ```text
//!  verified DeviceCert ──check(cert, expect tenant, now, facts)──▶ Ok / StandingError
//!  facts: what the service knows of revocations and disabled users
//!         KM:     its own records            (Known)
//!         server: KM-signed notices          (DenyList, never stale: pushed)
//!         vault:  KM-signed deny lists       (DenyList, fails closed when stale)
//! ```
//!
//! The KM, the messaging server and the compliance vault each call this one
//! function; none of them carries its own copy of the rules. Pure: the
//! caller supplies the clock and the facts. HTTP status codes are chosen at
//! the edge (`cloister-http`).
#![forbid(unsafe_code)]

use cloister_proto::km::{DeviceCert, Role};
use cloister_proto::{DeviceId, TenantId, UserId};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

/// Why a device may not act.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StandingError {
    #[error("this service serves tenant {expected}; the device belongs to {got}")]
    WrongTenant { expected: TenantId, got: TenantId },
    #[error("the certificate of device {0} has expired")]
    Expired(DeviceId),
    #[error("device {0} is revoked")]
    Revoked(DeviceId),
    #[error("{0} is disabled")]
    Disabled(UserId),
    #[error("{what} needs the {} role", role.as_str())]
    MissingRole { role: Role, what: &'static str },
    /// The service cannot tell (its deny list is stale): fail closed.
    #[error("device standing cannot be confirmed: {0}")]
    Unknown(String),
}

/// What a service knows about revocations and disabled users.
pub trait Facts {
    fn is_revoked(&self, device: &DeviceId) -> bool;
    fn is_disabled(&self, user: &UserId) -> bool;
    /// `Err` when the service cannot tell (it must then refuse).
    fn current(&self, _now_ms: u64) -> Result<(), StandingError> {
        Ok(())
    }
}

/// Check a verified certificate: tenant (if the service serves one),
/// expiry, revocation, disabled user; in that order.
pub fn check(
    cert: &DeviceCert,
    tenant: Option<&TenantId>,
    now_ms: u64,
    facts: &impl Facts,
) -> Result<(), StandingError> {
    if let Some(t) = tenant
        && &cert.tenant != t
    {
        return Err(StandingError::WrongTenant {
            expected: t.clone(),
            got: cert.tenant.clone(),
        });
    }
    if cert.not_after < now_ms / 1000 {
        return Err(StandingError::Expired(cert.device));
    }
    facts.current(now_ms)?;
    if facts.is_revoked(&cert.device) {
        return Err(StandingError::Revoked(cert.device));
    }
    if facts.is_disabled(&cert.user) {
        return Err(StandingError::Disabled(cert.user.clone()));
    }
    Ok(())
}

/// The certificate must carry `role` for `what`.
pub fn require_role(
    cert: &DeviceCert,
    role: Role,
    what: &'static str,
) -> Result<(), StandingError> {
    if cert.roles.contains(&role) {
        Ok(())
    } else {
        Err(StandingError::MissingRole { role, what })
    }
}

/// Facts about one device read from the KM's own records.
#[derive(Debug, Clone, Copy)]
pub struct Known {
    pub revoked: bool,
    pub disabled: bool,
}

impl Facts for Known {
    fn is_revoked(&self, _: &DeviceId) -> bool {
        self.revoked
    }
    fn is_disabled(&self, _: &UserId) -> bool {
        self.disabled
    }
}

/// A tenant's revoked devices and disabled users as the KM signs them for
/// the vault (`cloister/deny-list/v1`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DenyListBody {
    pub tenant: TenantId,
    pub issued_ms: u64,
    pub revoked: Vec<DeviceId>,
    pub disabled: Vec<UserId>,
    /// The partner firms' KM keys the firm trusts now: the vault checks
    /// the certificates of other firms' senders its users received
    /// messages from under them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partners: Vec<cloister_proto::federation::PartnerKey>,
    /// The newest escrow generation (0: no escrow key yet). The vault
    /// refuses captures sealed to an older one.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub escrow_generation: u32,
    /// Jurisdictions that have a vault of their own: the default vault
    /// refuses captures from devices certified in one of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pinned: Vec<String>,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

/// Revoked devices and disabled users, as of a time. With a `max_age` the
/// list fails closed once it is older than that.
#[derive(Debug, Clone, Default)]
pub struct DenyList {
    revoked: HashSet<DeviceId>,
    disabled: HashSet<UserId>,
    /// When the list was issued (ms); `None`: never loaded.
    as_of_ms: Option<u64>,
    max_age_ms: Option<u64>,
}

impl DenyList {
    /// A list kept current by pushed notices (the messaging server's).
    pub fn pushed() -> DenyList {
        DenyList {
            as_of_ms: Some(0),
            ..Default::default()
        }
    }

    /// A pulled list that is refused once older than `max_age_ms` (the vault's).
    pub fn pulled(max_age_ms: u64) -> DenyList {
        DenyList {
            max_age_ms: Some(max_age_ms),
            ..Default::default()
        }
    }

    /// Change how old a pulled list may get (the list itself is kept).
    pub fn set_max_age(&mut self, max_age_ms: u64) {
        self.max_age_ms = Some(max_age_ms);
    }

    pub fn revoke(&mut self, device: DeviceId) {
        self.revoked.insert(device);
    }

    pub fn disable(&mut self, user: UserId) {
        self.disabled.insert(user);
    }

    /// A disabled user is active again (a newer KM notice).
    pub fn enable(&mut self, user: &UserId) {
        self.disabled.remove(user);
    }

    /// Replace the whole list with a newer one; an older or equal one is
    /// ignored (`false`), so a replayed list cannot undo a revocation.
    pub fn replace(&mut self, body: DenyListBody) -> bool {
        if self.as_of_ms.is_some_and(|t| body.issued_ms <= t) {
            return false;
        }
        self.revoked = body.revoked.into_iter().collect();
        self.disabled = body.disabled.into_iter().collect();
        self.as_of_ms = Some(body.issued_ms);
        true
    }

    pub fn as_of_ms(&self) -> Option<u64> {
        self.as_of_ms
    }
}

impl Facts for DenyList {
    fn is_revoked(&self, device: &DeviceId) -> bool {
        self.revoked.contains(device)
    }
    fn is_disabled(&self, user: &UserId) -> bool {
        self.disabled.contains(user)
    }
    fn current(&self, now_ms: u64) -> Result<(), StandingError> {
        let Some(max) = self.max_age_ms else {
            return Ok(());
        };
        match self.as_of_ms {
            None => Err(StandingError::Unknown(
                "no revocation list has been received from the KM yet".into(),
            )),
            Some(t) if now_ms.saturating_sub(t) > max => Err(StandingError::Unknown(format!(
                "the revocation list from the KM is {} s old (at most {} s allowed)",
                now_ms.saturating_sub(t) / 1000,
                max / 1000
            ))),
            Some(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use cloister_proto::b64::Fixed;

    fn cert(user: &str, not_after: u64) -> DeviceCert {
        let user: UserId = user.parse().unwrap();
        DeviceCert {
            tenant: user.tenant(),
            user,
            device: DeviceId([1; 16]),
            sign_pk: Fixed([0; 32]),
            hpke_pk: Fixed([0; 32]),
            roles: vec![Role::User],
            issued_at: 0,
            not_after,
            jurisdiction: String::new(),
        }
    }

    #[test]
    fn every_rule_in_order() {
        let acme: TenantId = "acme".parse().unwrap();
        let c = cert("alice@acme", 100);
        let ok = DenyList::pushed();
        assert_eq!(check(&c, Some(&acme), 50_000, &ok), Ok(()));
        let other: TenantId = "globex".parse().unwrap();
        assert!(matches!(
            check(&c, Some(&other), 50_000, &ok),
            Err(StandingError::WrongTenant { .. })
        ));
        assert_eq!(
            check(&c, None, 101_000, &ok),
            Err(StandingError::Expired(c.device))
        );
        let mut l = DenyList::pushed();
        l.revoke(c.device);
        assert_eq!(
            check(&c, None, 0, &l),
            Err(StandingError::Revoked(c.device))
        );
        let mut l = DenyList::pushed();
        l.disable(c.user.clone());
        assert_eq!(
            check(&c, None, 0, &l),
            Err(StandingError::Disabled(c.user.clone()))
        );
        assert!(require_role(&c, Role::Compliance, "searching").is_err());
        assert!(require_role(&c, Role::User, "reading").is_ok());
    }

    #[test]
    fn a_pulled_list_fails_closed_and_never_goes_back() {
        let c = cert("alice@acme", u64::MAX);
        let mut l = DenyList::pulled(60_000);
        assert!(matches!(
            check(&c, None, 1_000, &l),
            Err(StandingError::Unknown(_))
        ));
        let body = |t, revoked: Vec<DeviceId>| DenyListBody {
            tenant: "acme".parse().unwrap(),
            issued_ms: t,
            revoked,
            disabled: vec![],
            partners: vec![],
            escrow_generation: 0,
            pinned: vec![],
        };
        assert!(l.replace(body(10_000, vec![c.device])));
        assert_eq!(
            check(&c, None, 20_000, &l),
            Err(StandingError::Revoked(c.device))
        );
        // a replayed older list that predates the revocation is ignored
        assert!(!l.replace(body(5_000, vec![])));
        assert_eq!(
            check(&c, None, 20_000, &l),
            Err(StandingError::Revoked(c.device))
        );
        // too old: refused whatever it says
        assert!(matches!(
            check(&c, None, 80_000, &l),
            Err(StandingError::Unknown(_))
        ));
    }
}
