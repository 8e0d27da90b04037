//! Directory and control operations of signed requests: search, the
//! caller's entitlements, entitlements, groups, barriers, profiles, SCIM
//! tokens. Barriers belong to admins and compliance officers; the rest of
//! the changes to admins.

use super::*;
use cloister_proto::controls::{Barrier, Entitlement};
use cloister_proto::km::{
    BarrierInfo, DirectoryEntry, EntitlementsResponse, GroupInfo, ProfileUpdate, ScimTokenResponse,
};
use std::collections::BTreeSet;
use subtle::ConstantTimeEq;

const MAX_NAME: usize = 128;
const MAX_REASON: usize = 1000;

fn check_text(what: &'static str, s: &str, max: usize) -> Result<(), Denied> {
    if s.trim().is_empty() || s.len() > max || s.chars().any(char::is_control) {
        return Err(Denied::malformed(
            "bad_text",
            format!("{what} must be 1 to {max} bytes of printable text"),
        ));
    }
    Ok(())
}

impl Km {
    pub(crate) async fn directory_op(
        &self,
        cert: &DeviceCert,
        op: KmOp,
    ) -> Result<serde_json::Value, Denied> {
        let actor = Some(&cert.user);
        let admin = || self.need(cert, Role::Admin, "changing the directory");
        let officer = || {
            self.need(cert, Role::Admin, "information barriers")
                .or_else(|_| self.need(cert, Role::Compliance, "information barriers"))
                .map_err(|_| {
                    Denied::forbidden(
                        "not_admin",
                        "information barriers and groups are for admins and compliance officers",
                    )
                })
        };
        match op {
            KmOp::DirectorySearch { query, limit } => json(&self.search(&cert.user, &query, limit)),
            KmOp::MyEntitlements => json(&EntitlementsResponse {
                user: cert.user.clone(),
                entitlements: self.dir().effective(&cert.user).into_iter().collect(),
            }),
            KmOp::Controls => json(&self.signed_controls()?),
            KmOp::Entitle {
                user,
                group,
                grant,
                revoke,
            } => {
                admin()?;
                self.entitle(actor, user, group, grant, revoke).await?;
                json(&serde_json::json!({}))
            }
            KmOp::GroupSet { name, add, remove } => {
                admin()?;
                json(&self.group_set(actor, &name, &add, &remove).await?)
            }
            KmOp::GroupList => {
                officer()?;
                json(&self.group_list())
            }
            KmOp::BarrierAdd { a, b, reason } => {
                officer()?;
                let info = self.barrier_add(actor, &a, &b, &reason).await?;
                json(&self.barrier_added(info).await)
            }
            KmOp::BarrierList => {
                officer()?;
                json(&self.barrier_list())
            }
            KmOp::BarrierDisable { id, reason } => {
                officer()?;
                json(&self.barrier_disable(actor, &id, &reason).await?)
            }
            KmOp::ProfileSet { user, profile } => {
                admin()?;
                self.profile_set(actor, &user, profile).await?;
                json(&serde_json::json!({}))
            }
            KmOp::ScimTokenIssue { label } => {
                admin()?;
                json(&self.scim_token_issue(actor, &label).await?)
            }
            KmOp::DlpPut { policy } => {
                officer()?;
                self.dlp_put(actor, policy).await?;
                json(&self.signed_dlp()?)
            }
            KmOp::DlpPolicies => json(&self.signed_dlp()?),
            KmOp::MlsPolicySet { policy } => {
                officer()?;
                let _w = self.directory.write.lock().await;
                self.record(
                    actor,
                    AuditEvent::MlsPolicySet {
                        policy: policy.as_str().into(),
                    },
                )
                .await?;
                self.dir_apply(vec![Change::Mls(policy)]).await?;
                json(&serde_json::json!({"mls": policy}))
            }
            KmOp::ScimTokenRevoke { id } => {
                admin()?;
                self.scim_token_revoke(actor, &id).await?;
                json(&serde_json::json!({}))
            }
            _ => Err(Denied::internal("not a directory op")),
        }
    }

    /// People matching every word of `query` (in name, title, department,
    /// desk, location, job function or asset class), active, and not
    /// walled off from the searcher.
    pub(crate) fn search(&self, searcher: &UserId, query: &str, limit: u32) -> Vec<DirectoryEntry> {
        let limit = if limit == 0 { 50 } else { limit.min(500) } as usize;
        let words = super::query_words(query);
        let rules = self.rules();
        let d = self.dir();
        let mut out: Vec<DirectoryEntry> = d
            .users
            .values()
            .filter(|u| u.active() && &u.user != searcher)
            .map(UserRec::entry)
            .filter(|e| super::matches(e, &words))
            .filter(|e| rules.barriers().blocked(searcher, &e.user).is_none())
            .collect();
        out.sort_by(|a, b| a.user.cmp(&b.user));
        out.truncate(limit);
        out
    }

    async fn entitle(
        &self,
        actor: Option<&UserId>,
        user: Option<UserId>,
        group: Option<String>,
        grant: Vec<Entitlement>,
        revoke: Vec<Entitlement>,
    ) -> Result<(), Denied> {
        if grant.iter().any(|g| revoke.contains(g)) {
            return Err(Denied::malformed(
                "bad_entitlements",
                "an entitlement cannot be both granted and revoked",
            ));
        }
        let _w = self.directory.write.lock().await;
        let (target, change) = match (user, group) {
            (Some(u), None) => {
                let mut rec = self
                    .dir()
                    .user(&u)
                    .filter(|r| !r.deleted)
                    .cloned()
                    .ok_or_else(|| Denied::not_found("unknown_user", format!("no user {u}")))?;
                for g in &grant {
                    rec.denied.remove(g);
                    rec.granted.insert(*g);
                }
                for r in &revoke {
                    rec.granted.remove(r);
                    rec.denied.insert(*r);
                }
                (u.to_string(), Change::User(rec))
            }
            (None, Some(name)) => {
                let mut g = self.dir().group_by_name(&name).cloned().ok_or_else(|| {
                    Denied::not_found("unknown_group", format!("no group {name}"))
                })?;
                g.entitlements.extend(grant.iter().copied());
                g.entitlements.retain(|e| !revoke.contains(e));
                (format!("group:{}", g.name()), Change::Group(g))
            }
            _ => {
                return Err(Denied::malformed(
                    "bad_target",
                    "name exactly one of a user and a group",
                ));
            }
        };
        self.record(
            actor,
            AuditEvent::EntitlementsChanged {
                target,
                grant,
                revoke: revoke.clone(),
            },
        )
        .await?;
        let synced = match &change {
            Change::User(u) => Synced::User(u.user.clone()),
            Change::Group(g) => Synced::Group(g.clone()),
            _ => Synced::Nothing,
        };
        self.dir_apply(vec![change]).await?;
        match synced {
            Synced::User(u) => self.sync_roles(&u).await,
            Synced::Group(g) => {
                // a role taken from a group: its members lose it too
                let mut g2 = g.clone();
                g2.entitlements.extend(revoke.iter().copied());
                self.sync_group_roles(&g2, &[]).await
            }
            Synced::Nothing => Ok(()),
        }
    }

    /// After a group changed: keep its members' (and former members')
    /// stored roles in step, if the group confers a role.
    pub(crate) async fn sync_group_roles(
        &self,
        g: &GroupRec,
        before: &[String],
    ) -> Result<(), Denied> {
        if !g.entitlements.iter().any(|e| e.role().is_some()) {
            return Ok(());
        }
        let users: Vec<UserId> = {
            let d = self.dir();
            g.member_ids()
                .map(str::to_owned)
                .chain(before.iter().cloned())
                .filter_map(|i| d.users.get(&i).map(|u| u.user.clone()))
                .collect()
        };
        for u in users {
            self.sync_roles(&u).await?;
        }
        Ok(())
    }

    pub(crate) async fn sync_roles(&self, user: &UserId) -> Result<(), Denied> {
        let Some(row) = self.store.get_user(user).await.map_err(store_err)? else {
            return Ok(());
        };
        let (granted, denied) = self.dir().role_overrides(user);
        let mut roles: BTreeSet<Role> = users::parse_roles(&row.roles).into_iter().collect();
        roles.extend(granted);
        roles.retain(|r| !denied.contains(r));
        let roles: Vec<Role> = roles.into_iter().collect();
        let s = users::roles_str(&roles);
        if s != row.roles {
            self.store
                .upsert_user(&KmUserRow { roles: s, ..row })
                .await
                .map_err(store_err)?;
        }
        Ok(())
    }

    async fn group_set(
        &self,
        actor: Option<&UserId>,
        name: &str,
        add: &[UserId],
        remove: &[UserId],
    ) -> Result<GroupInfo, Denied> {
        check_text("a group name", name, MAX_NAME)?;
        let _w = self.directory.write.lock().await;
        let (mut g, created) = match self.dir().group_by_name(name).cloned() {
            Some(g) => (g, false),
            None => {
                let id = new_id()?;
                let now = now_millis();
                (
                    GroupRec {
                        doc: json!({
                            "schemas": [cloister_scim::SCHEMA_GROUP],
                            "id": id,
                            "displayName": name,
                            "members": [],
                            "meta": meta("Group", now, now, 1),
                        }),
                        scim_id: id,
                        version: 1,
                        entitlements: Default::default(),
                    },
                    true,
                )
            }
        };
        let ids = |us: &[UserId]| -> Result<Vec<String>, Denied> {
            let d = self.dir();
            us.iter()
                .map(|u| {
                    d.user(u)
                        .filter(|r| !r.deleted)
                        .map(|r| r.scim_id.clone())
                        .ok_or_else(|| Denied::not_found("unknown_user", format!("no user {u}")))
                })
                .collect()
        };
        let (add_ids, remove_ids) = (ids(add)?, ids(remove)?);
        let before: Vec<String> = g.member_ids().map(str::to_owned).collect();
        let mut members: Vec<Value> = g
            .doc
            .get("members")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        members.retain(|m| {
            m.get("value")
                .and_then(Value::as_str)
                .is_none_or(|v| !remove_ids.iter().any(|r| r == v))
        });
        for id in add_ids {
            if !members
                .iter()
                .any(|m| m.get("value").and_then(Value::as_str) == Some(&id))
            {
                members.push(json!({ "value": id }));
            }
        }
        if !created {
            g.version += 1;
            g.doc["meta"] = touched_meta(&g.doc, "Group", g.version);
        }
        g.doc["members"] = Value::Array(members);
        self.record(
            actor,
            AuditEvent::DirectoryChanged {
                via: "admin".into(),
                resource: "group".into(),
                id: g.scim_id.clone(),
                name: g.name().to_owned(),
                change: if created { "created" } else { "patched" }.into(),
                fields: vec!["members".into()],
            },
        )
        .await?;
        self.dir_apply(vec![Change::Group(g.clone())]).await?;
        self.sync_group_roles(&g, &before).await?;
        Ok(self.group_info(&g))
    }

    fn group_info(&self, g: &GroupRec) -> GroupInfo {
        let d = self.dir();
        let mut members: Vec<UserId> = g
            .member_ids()
            .filter_map(|id| d.users.get(id))
            .map(|u| u.user.clone())
            .collect();
        members.sort();
        GroupInfo {
            name: g.name().to_owned(),
            scim_id: g.scim_id.clone(),
            members,
            entitlements: g.entitlements.iter().copied().collect(),
        }
    }

    fn group_list(&self) -> Vec<GroupInfo> {
        let groups: Vec<GroupRec> = self.dir().groups.values().cloned().collect();
        let mut out: Vec<GroupInfo> = groups.iter().map(|g| self.group_info(g)).collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    async fn barrier_add(
        &self,
        actor: Option<&UserId>,
        a: &str,
        b: &str,
        reason: &str,
    ) -> Result<BarrierInfo, Denied> {
        check_text("a group name", a, MAX_NAME)?;
        check_text("a group name", b, MAX_NAME)?;
        check_text("the reason", reason, MAX_REASON)?;
        if a.eq_ignore_ascii_case(b) {
            return Err(Denied::malformed(
                "bad_barrier",
                "a barrier separates two different groups",
            ));
        }
        let firm_groups = [a, b]
            .iter()
            .filter(|g| {
                g.to_ascii_lowercase()
                    .starts_with(cloister_policy::barriers::FIRM_GROUP)
            })
            .count();
        for g in [a, b] {
            if !g
                .to_ascii_lowercase()
                .starts_with(cloister_policy::barriers::FIRM_GROUP)
            {
                continue;
            }
            match cloister_policy::barriers::firm_of_group(&g.to_ascii_lowercase()) {
                Some(t) if t != self.tenant => {}
                _ => {
                    return Err(Denied::malformed(
                        "bad_barrier",
                        format!("{g}: a firm group names another firm (firm:TENANT)"),
                    ));
                }
            }
        }
        if firm_groups == 2 {
            return Err(Denied::malformed(
                "bad_barrier",
                "a barrier walls one of this firm's groups off from another firm",
            ));
        }
        let _w = self.directory.write.lock().await;
        {
            let d = self.dir();
            for g in [a, b] {
                let firm = g
                    .to_ascii_lowercase()
                    .starts_with(cloister_policy::barriers::FIRM_GROUP);
                if !firm && d.group_by_name(g).is_none() {
                    return Err(Denied::not_found(
                        "unknown_group",
                        format!("no group {g} (create it first, or provision it over SCIM)"),
                    ));
                }
            }
            if let Some(dup) = d.barriers.values().find(|x| {
                x.barrier.active
                    && ((x.barrier.a.eq_ignore_ascii_case(a)
                        && x.barrier.b.eq_ignore_ascii_case(b))
                        || (x.barrier.a.eq_ignore_ascii_case(b)
                            && x.barrier.b.eq_ignore_ascii_case(a)))
            }) {
                return Err(Denied::conflict(
                    "barrier_exists",
                    format!("barrier {} already separates {a} and {b}", dup.barrier.id),
                ));
            }
        }
        let id = format!("ib-{}", &new_id()?[..8]);
        let rec = BarrierRec {
            barrier: Barrier {
                id: id.clone(),
                a: a.to_owned(),
                b: b.to_owned(),
                active: true,
                reason: reason.to_owned(),
            },
            created_ms: now_millis(),
            created_by: actor.cloned(),
            disabled_ms: None,
            disabled_by: None,
            disabled_reason: String::new(),
        };
        self.record(
            actor,
            AuditEvent::BarrierAdded {
                id,
                a: a.into(),
                b: b.into(),
                reason: reason.into(),
            },
        )
        .await?;
        self.dir_apply(vec![Change::Barrier(rec.clone())]).await?;
        Ok(barrier_info(&rec))
    }

    fn barrier_list(&self) -> Vec<BarrierInfo> {
        self.dir().barriers.values().map(barrier_info).collect()
    }

    async fn barrier_disable(
        &self,
        actor: Option<&UserId>,
        id: &str,
        reason: &str,
    ) -> Result<BarrierInfo, Denied> {
        check_text("the reason", reason, MAX_REASON)?;
        let _w = self.directory.write.lock().await;
        let mut rec = self
            .dir()
            .barriers
            .get(id)
            .cloned()
            .ok_or_else(|| Denied::not_found("unknown_barrier", format!("no barrier {id}")))?;
        if !rec.barrier.active {
            return Err(Denied::conflict(
                "barrier_disabled",
                format!("barrier {id} is already disabled"),
            ));
        }
        rec.barrier.active = false;
        rec.disabled_ms = Some(now_millis());
        rec.disabled_by = actor.cloned();
        rec.disabled_reason = reason.to_owned();
        self.record(
            actor,
            AuditEvent::BarrierDisabled {
                id: id.into(),
                reason: reason.into(),
            },
        )
        .await?;
        self.dir_apply(vec![Change::Barrier(rec.clone())]).await?;
        Ok(barrier_info(&rec))
    }

    async fn profile_set(
        &self,
        actor: Option<&UserId>,
        user: &UserId,
        p: ProfileUpdate,
    ) -> Result<(), Denied> {
        let _w = self.directory.write.lock().await;
        let mut rec = self
            .dir()
            .user(user)
            .filter(|r| !r.deleted)
            .cloned()
            .ok_or_else(|| Denied::not_found("unknown_user", format!("no user {user}")))?;
        let mut fields = Vec::new();
        let mut set = |path: (&str, Option<&str>), v: Value, name: &str| {
            match path {
                (k, None) => rec.doc[k] = v,
                (ext, Some(k)) => {
                    if !rec.doc.get(ext).is_some_and(Value::is_object) {
                        rec.doc[ext] = json!({});
                    }
                    rec.doc[ext][k] = v;
                }
            }
            fields.push(name.to_owned());
        };
        let ent = cloister_scim::SCHEMA_ENTERPRISE;
        let clo = model::SCHEMA_CLOISTER_USER;
        let mut p = p;
        if let Some(j) = p.jurisdiction.take() {
            p.jurisdiction = Some(cloister_proto::canonical_jurisdiction(&j).ok_or_else(|| {
                Denied::malformed(
                    "bad_jurisdiction",
                    format!(
                        "jurisdiction {j:?}: an ISO 3166 code, a country (UK, US, SG) or a subdivision (US-NY)"
                    ),
                )
            })?);
        }
        for (v, path, name) in [
            (p.display_name, ("displayName", None), "displayName"),
            (p.title, ("title", None), "title"),
            (p.department, (ent, Some("department")), "department"),
            (p.desk, (clo, Some("desk")), "desk"),
            (p.location, (clo, Some("location")), "location"),
            (p.job_function, (clo, Some("jobFunction")), "jobFunction"),
            (p.jurisdiction, (clo, Some("jurisdiction")), "jurisdiction"),
        ] {
            if let Some(v) = v {
                if v.len() > 256 || v.chars().any(char::is_control) {
                    return Err(Denied::malformed(
                        "bad_text",
                        format!("{name} must be at most 256 bytes of printable text"),
                    ));
                }
                set(path, json!(v), name);
            }
        }
        if let Some(a) = p.asset_classes {
            if a.len() > 32 || a.iter().any(|x| x.len() > 64) {
                return Err(Denied::malformed(
                    "bad_text",
                    "at most 32 asset classes of at most 64 bytes",
                ));
            }
            set((clo, Some("assetClasses")), json!(a), "assetClasses");
        }
        let schemas: Vec<&str> = [cloister_scim::SCHEMA_USER, ent, clo]
            .into_iter()
            .filter(|s| *s == cloister_scim::SCHEMA_USER || rec.doc.get(*s).is_some())
            .collect();
        rec.doc["schemas"] = json!(schemas);
        rec.version += 1;
        rec.doc["meta"] = touched_meta(&rec.doc, "User", rec.version);
        self.record(
            actor,
            AuditEvent::DirectoryChanged {
                via: "admin".into(),
                resource: "user".into(),
                id: rec.scim_id.clone(),
                name: user.to_string(),
                change: "patched".into(),
                fields,
            },
        )
        .await?;
        self.dir_apply(vec![Change::User(rec)]).await
    }

    async fn dlp_put(
        &self,
        actor: Option<&UserId>,
        policy: cloister_proto::controls::DlpPolicy,
    ) -> Result<(), Denied> {
        cloister_policy::dlp::validate(&policy)
            .map_err(|e| Denied::malformed("bad_policy", e.to_string()))?;
        let _w = self.directory.write.lock().await;
        if !self.dir().dlp.contains_key(&policy.id)
            && self.dir().dlp.len() >= cloister_policy::dlp::MAX_ITEMS
        {
            return Err(Denied::malformed("too_many", "at most 256 DLP policies"));
        }
        self.record(
            actor,
            AuditEvent::DlpChanged {
                id: policy.id.clone(),
                name: policy.name.clone(),
                action: format!("{:?}", policy.action).to_lowercase(),
                active: policy.active,
            },
        )
        .await?;
        self.dir_apply(vec![Change::Dlp(policy)]).await
    }

    /// The DLP set, signed for the tenant's devices.
    pub(crate) fn signed_dlp(&self) -> Result<cloister_proto::km::SignedBlob, Denied> {
        let d = self.dir();
        let set = cloister_proto::controls::DlpSet {
            tenant: self.tenant.clone(),
            version: d.version,
            policies: d.dlp.values().cloned().collect(),
        };
        cloister_crypto::signed::km_sign_blob(&self.signer, cloister_crypto::signed::DLP, &set)
            .map_err(Denied::internal)
    }

    async fn scim_token_issue(
        &self,
        actor: Option<&UserId>,
        label: &str,
    ) -> Result<ScimTokenResponse, Denied> {
        check_text("the label", label, MAX_NAME)?;
        let _w = self.directory.write.lock().await;
        let id = format!("st-{}", &new_id()?[..8]);
        let secret = cloister_crypto::random_bytes::<32>().map_err(Denied::internal)?;
        let token = format!("cst_{}", hex::encode(secret));
        let rec = TokenRec {
            id: id.clone(),
            label: label.to_owned(),
            hash: hex::encode(sha256(token.as_bytes())),
            created_ms: now_millis(),
            revoked: false,
        };
        self.record(
            actor,
            AuditEvent::ScimTokenIssued {
                id: id.clone(),
                label: label.into(),
            },
        )
        .await?;
        self.dir_apply(vec![Change::Token(rec)]).await?;
        Ok(ScimTokenResponse { id, token })
    }

    async fn scim_token_revoke(&self, actor: Option<&UserId>, id: &str) -> Result<(), Denied> {
        let _w = self.directory.write.lock().await;
        let mut rec = self
            .dir()
            .tokens
            .get(id)
            .cloned()
            .ok_or_else(|| Denied::not_found("unknown_token", format!("no SCIM token {id}")))?;
        rec.revoked = true;
        self.record(actor, AuditEvent::ScimTokenRevoked { id: id.into() })
            .await?;
        self.dir_apply(vec![Change::Token(rec)]).await
    }

    /// The token's id if `bearer` is a live SCIM token (constant-time compare
    /// of hashes).
    pub(crate) fn scim_token(&self, bearer: &str) -> Option<String> {
        let h = sha256(bearer.as_bytes());
        let d = self.dir();
        d.tokens
            .values()
            .filter(|t| !t.revoked)
            .find(|t| hex::decode(&t.hash).is_ok_and(|x| bool::from(x.ct_eq(&h[..]))))
            .map(|t| t.id.clone())
    }
}

enum Synced {
    User(UserId),
    Group(GroupRec),
    Nothing,
}

fn barrier_info(r: &BarrierRec) -> BarrierInfo {
    BarrierInfo {
        barrier: r.barrier.clone(),
        created_ms: r.created_ms,
        created_by: r.created_by.clone(),
        disabled_ms: r.disabled_ms,
        disabled_by: r.disabled_by.clone(),
        disabled_reason: r.disabled_reason.clone(),
    }
}
