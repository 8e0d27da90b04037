//! The directory as the KM holds it in memory: users (with their SCIM
//! resource and the admin's grants), groups, barriers and SCIM tokens.
//! Pure: no I/O; `directory/mod.rs` loads and writes it through the store.

use cloister_proto::UserId;
use cloister_proto::controls::{Barrier, Controls, Entitlement};
use cloister_proto::km::Role;
use cloister_store::DirRow;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Cloister's SCIM extension of a user: the directory attributes a trading
/// floor searches by, and the Cloister user id (read-only).
pub(crate) const SCHEMA_CLOISTER_USER: &str = "urn:cloister:params:scim:schemas:extension:2.0:User";

/// Who manages a user record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Managed {
    /// Created by `cloister admin add-user` (SCIM may adopt it by userName).
    Admin,
    /// Provisioned by the identity provider over SCIM.
    Scim,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct UserRec {
    pub scim_id: String,
    pub user: UserId,
    /// The SCIM resource as stored (no `meta.location`: the edge adds it).
    pub doc: Value,
    pub version: u64,
    pub managed: Managed,
    /// Deleted over SCIM: disabled, devices revoked, history kept, gone
    /// from SCIM and the directory.
    pub deleted: bool,
    /// Entitlements the admin granted or denied (a denial beats any grant).
    #[serde(default)]
    pub granted: BTreeSet<Entitlement>,
    #[serde(default)]
    pub denied: BTreeSet<Entitlement>,
    /// A guest the firm sponsors: sends files, nothing else (no room, no
    /// invitation, no other firm), whatever is granted.
    #[serde(default)]
    pub guest: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct GroupRec {
    pub scim_id: String,
    pub doc: Value,
    pub version: u64,
    /// Entitlements every member holds (set by the admin).
    #[serde(default)]
    pub entitlements: BTreeSet<Entitlement>,
}

impl GroupRec {
    pub fn name(&self) -> &str {
        self.doc
            .get("displayName")
            .and_then(Value::as_str)
            .unwrap_or("")
    }
    /// SCIM ids of the members.
    pub fn member_ids(&self) -> impl Iterator<Item = &str> {
        self.doc
            .get("members")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|m| m.get("value").and_then(Value::as_str))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct TokenRec {
    pub id: String,
    pub label: String,
    /// SHA-256 of the token, hex.
    pub hash: String,
    pub created_ms: u64,
    pub revoked: bool,
}

/// A barrier as the KM keeps it: the policy and its history.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct BarrierRec {
    pub barrier: Barrier,
    pub created_ms: u64,
    pub created_by: Option<UserId>,
    pub disabled_ms: Option<u64>,
    pub disabled_by: Option<UserId>,
    #[serde(default)]
    pub disabled_reason: String,
}

/// The directory.
#[derive(Debug, Default, Clone)]
pub(crate) struct Directory {
    pub users: HashMap<String, UserRec>,
    pub by_user: HashMap<UserId, String>,
    pub groups: HashMap<String, GroupRec>,
    pub barriers: BTreeMap<String, BarrierRec>,
    pub tokens: HashMap<String, TokenRec>,
    pub dlp: BTreeMap<String, cloister_proto::controls::DlpPolicy>,
    /// Firms whose KM this firm pinned (removed ones are kept).
    pub trusts: BTreeMap<cloister_proto::TenantId, cloister_proto::federation::TrustedFirm>,
    /// Live users in SCIM list order: (userName in lower case, SCIM id).
    pub user_order: std::collections::BTreeSet<(String, String)>,
    /// The firm's rule on MLS rooms.
    pub mls: cloister_proto::controls::MlsPolicy,
    /// Bumped by every change that can change the controls.
    pub version: u64,
}

pub(crate) const K_USER: &str = "user";
pub(crate) const K_GROUP: &str = "group";
pub(crate) const K_BARRIER: &str = "barrier";
pub(crate) const K_TOKEN: &str = "scim_token";
pub(crate) const K_STATE: &str = "state";
pub(crate) const K_DLP: &str = "dlp";
pub(crate) const K_TRUST: &str = "trust";
pub(crate) const K_MLS: &str = "mls_policy";

pub(crate) fn mls_row(
    p: &cloister_proto::controls::MlsPolicy,
) -> Result<DirRow, serde_json::Error> {
    row(K_MLS, "tenant", p)
}

pub(crate) fn trust_row(
    t: &cloister_proto::federation::TrustedFirm,
) -> Result<DirRow, serde_json::Error> {
    row(K_TRUST, t.tenant.as_str(), t)
}

pub(crate) fn dlp_row(
    p: &cloister_proto::controls::DlpPolicy,
) -> Result<DirRow, serde_json::Error> {
    row(K_DLP, &p.id, p)
}

fn row<T: Serialize>(kind: &str, id: &str, v: &T) -> Result<DirRow, serde_json::Error> {
    Ok(DirRow {
        kind: kind.into(),
        id: id.into(),
        doc: serde_json::to_vec(v)?,
    })
}

impl UserRec {
    pub fn row(&self) -> Result<DirRow, serde_json::Error> {
        row(K_USER, &self.scim_id, self)
    }
    fn order_key(&self) -> (String, String) {
        (
            self.attr("userName").unwrap_or("").to_lowercase(),
            self.scim_id.clone(),
        )
    }
    pub fn active(&self) -> bool {
        !self.deleted && self.doc.get("active").and_then(Value::as_bool) != Some(false)
    }
    fn attr(&self, name: &str) -> Option<&str> {
        self.doc.get(name).and_then(Value::as_str)
    }
    fn ext(&self, schema: &str, name: &str) -> Option<&Value> {
        self.doc.get(schema).and_then(|e| e.get(name))
    }
    /// Entitlements named in the SCIM resource (unknown values are kept
    /// in the resource and ignored here).
    fn scim_entitlements(&self) -> impl Iterator<Item = Entitlement> + '_ {
        self.doc
            .get("entitlements")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|e| e.get("value").and_then(Value::as_str)?.parse().ok())
    }
    /// The public directory entry.
    pub fn entry(&self) -> cloister_proto::km::DirectoryEntry {
        let s = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or("").to_owned();
        cloister_proto::km::DirectoryEntry {
            user: self.user.clone(),
            display_name: self
                .attr("displayName")
                .or_else(|| {
                    self.doc
                        .get("name")
                        .and_then(|n| n.get("formatted"))
                        .and_then(Value::as_str)
                })
                .unwrap_or("")
                .to_owned(),
            title: self.attr("title").unwrap_or("").to_owned(),
            department: s(self.ext(cloister_scim::SCHEMA_ENTERPRISE, "department")),
            desk: s(self.ext(SCHEMA_CLOISTER_USER, "desk")),
            location: s(self.ext(SCHEMA_CLOISTER_USER, "location")),
            job_function: s(self.ext(SCHEMA_CLOISTER_USER, "jobFunction")),
            jurisdiction: s(self.ext(SCHEMA_CLOISTER_USER, "jurisdiction")),
            asset_classes: self
                .ext(SCHEMA_CLOISTER_USER, "assetClasses")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }
}

impl GroupRec {
    pub fn row(&self) -> Result<DirRow, serde_json::Error> {
        row(K_GROUP, &self.scim_id, self)
    }
}

impl BarrierRec {
    pub fn row(&self) -> Result<DirRow, serde_json::Error> {
        row(K_BARRIER, &self.barrier.id, self)
    }
}

impl TokenRec {
    pub fn row(&self) -> Result<DirRow, serde_json::Error> {
        row(K_TOKEN, &self.id, self)
    }
}

pub(crate) fn state_row(version: u64) -> Result<DirRow, serde_json::Error> {
    row(K_STATE, "version", &version)
}

impl Directory {
    /// Rebuild from stored rows (unknown kinds are an error: a newer KM wrote them).
    pub fn load(rows: Vec<DirRow>) -> Result<Directory, String> {
        let mut d = Directory::default();
        for r in rows {
            let bad = |e: serde_json::Error| format!("directory record {}/{}: {e}", r.kind, r.id);
            match r.kind.as_str() {
                K_USER => {
                    let u: UserRec = serde_json::from_slice(&r.doc).map_err(bad)?;
                    d.by_user.insert(u.user.clone(), u.scim_id.clone());
                    d.order_user(None, &u);
                    d.users.insert(u.scim_id.clone(), u);
                }
                K_GROUP => {
                    let g: GroupRec = serde_json::from_slice(&r.doc).map_err(bad)?;
                    d.groups.insert(g.scim_id.clone(), g);
                }
                K_BARRIER => {
                    let b: BarrierRec = serde_json::from_slice(&r.doc).map_err(bad)?;
                    d.barriers.insert(b.barrier.id.clone(), b);
                }
                K_TOKEN => {
                    let t: TokenRec = serde_json::from_slice(&r.doc).map_err(bad)?;
                    d.tokens.insert(t.id.clone(), t);
                }
                K_STATE => d.version = serde_json::from_slice(&r.doc).map_err(bad)?,
                K_MLS => d.mls = serde_json::from_slice(&r.doc).map_err(bad)?,
                K_DLP => {
                    let p: cloister_proto::controls::DlpPolicy =
                        serde_json::from_slice(&r.doc).map_err(bad)?;
                    d.dlp.insert(p.id.clone(), p);
                }
                K_TRUST => {
                    let t: cloister_proto::federation::TrustedFirm =
                        serde_json::from_slice(&r.doc).map_err(bad)?;
                    d.trusts.insert(t.tenant.clone(), t);
                }
                k => return Err(format!("unknown directory record kind {k:?}")),
            }
        }
        Ok(d)
    }

    /// Put a user in (or take them out of) the list order.
    pub fn order_user(&mut self, old: Option<&UserRec>, new: &UserRec) {
        if let Some(o) = old {
            self.user_order.remove(&o.order_key());
        }
        if !new.deleted {
            self.user_order.insert(new.order_key());
        }
    }

    pub fn user(&self, u: &UserId) -> Option<&UserRec> {
        self.users.get(self.by_user.get(u)?)
    }

    pub fn group_by_name(&self, name: &str) -> Option<&GroupRec> {
        self.groups
            .values()
            .find(|g| g.name().eq_ignore_ascii_case(name))
    }

    /// SCIM user id -> names of the groups they are in.
    fn memberships(&self) -> HashMap<&str, Vec<&GroupRec>> {
        let mut m: HashMap<&str, Vec<&GroupRec>> = HashMap::new();
        for g in self.groups.values() {
            for id in g.member_ids() {
                m.entry(id).or_default().push(g);
            }
        }
        m
    }

    fn effective_with(&self, u: &UserRec, groups: &[&GroupRec]) -> BTreeSet<Entitlement> {
        if u.guest {
            return [Entitlement::SendFiles]
                .into_iter()
                .filter(|x| !u.denied.contains(x))
                .collect();
        }
        let mut e: BTreeSet<Entitlement> = Entitlement::DEFAULT.into_iter().collect();
        e.extend(u.scim_entitlements());
        e.extend(u.granted.iter().copied());
        for g in groups {
            e.extend(g.entitlements.iter().copied());
        }
        e.retain(|x| !u.denied.contains(x));
        e
    }

    /// A user's effective entitlements (none for an unknown or inactive user).
    pub fn effective(&self, user: &UserId) -> BTreeSet<Entitlement> {
        let Some(u) = self.user(user).filter(|u| u.active()) else {
            return BTreeSet::new();
        };
        let groups: Vec<&GroupRec> = self
            .groups
            .values()
            .filter(|g| g.member_ids().any(|m| m == u.scim_id))
            .collect();
        self.effective_with(u, &groups)
    }

    /// Privileged roles the entitlements confer, and those an admin denied.
    pub fn role_overrides(&self, user: &UserId) -> (Vec<Role>, Vec<Role>) {
        let granted = self
            .effective(user)
            .into_iter()
            .filter_map(Entitlement::role)
            .collect();
        let denied = self
            .user(user)
            .map(|u| u.denied.iter().filter_map(|e| e.role()).collect())
            .unwrap_or_default();
        (granted, denied)
    }

    /// The controls the server and the KM's own checks enforce.
    pub fn controls(&self) -> Controls {
        let members = self.memberships();
        let barriers: Vec<Barrier> = self.barriers.values().map(|b| b.barrier.clone()).collect();
        let walled: BTreeSet<&str> = barriers
            .iter()
            .filter(|b| b.active)
            .flat_map(|b| [b.a.as_str(), b.b.as_str()])
            .collect();
        let mut groups: BTreeMap<String, Vec<UserId>> = BTreeMap::new();
        for g in self.groups.values() {
            let name = g.name();
            if !walled.iter().any(|w| w.eq_ignore_ascii_case(name)) {
                continue;
            }
            let mut us: Vec<UserId> = g
                .member_ids()
                .filter_map(|id| self.users.get(id))
                .filter(|u| !u.deleted)
                .map(|u| u.user.clone())
                .collect();
            us.sort();
            groups.insert(name.to_ascii_lowercase(), us);
        }
        let barriers = barriers
            .into_iter()
            .map(|mut b| {
                b.a = b.a.to_ascii_lowercase();
                b.b = b.b.to_ascii_lowercase();
                b
            })
            .collect();
        // only who differs from the default travels (a directory of 10^5
        // mostly-default people stays small)
        let default: BTreeSet<Entitlement> = Entitlement::DEFAULT.into_iter().collect();
        let entitlements = self
            .users
            .values()
            .filter_map(|u| {
                let set = if u.active() {
                    let gs = members.get(u.scim_id.as_str()).cloned().unwrap_or_default();
                    self.effective_with(u, &gs)
                } else {
                    BTreeSet::new()
                };
                (set != default).then(|| (u.user.clone(), set.into_iter().collect()))
            })
            .collect();
        let guests = self
            .users
            .values()
            .filter(|u| u.guest && !u.deleted)
            .map(|u| u.user.clone())
            .collect();
        Controls {
            version: self.version,
            barriers,
            groups,
            default_entitlements: default.into_iter().collect(),
            entitlements,
            guests,
            mls: self.mls,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A pinned firm survives a restart: its record is written and read
    /// back by the same directory rows as every other record.
    #[test]
    fn trust_records_load_back() {
        let t = cloister_proto::federation::TrustedFirm {
            tenant: "bank".parse().unwrap(),
            km_key: "cloister-km1.bank.x".into(),
            fingerprint: "ab12".into(),
            added_ms: 1,
            added_by: "admin@acme".parse().unwrap(),
            km_url: Some("https://km.bank.example".into()),
            removed: None,
        };
        let d = Directory::load(vec![trust_row(&t).unwrap(), state_row(7).unwrap()]).unwrap();
        assert_eq!(d.trusts.get(&t.tenant), Some(&t));
        assert_eq!(d.version, 7);
    }
}
