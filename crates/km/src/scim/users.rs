//! SCIM Users: the directory's people. A user's Cloister id is fixed when
//! it is created (from `userName`, or adopted from an account the admin
//! made with that id); `userName` and every other attribute may change.

use super::{Answer, ListQuery, Req, check_if_match, list_response, scim_error};
use crate::directory::model::SCHEMA_CLOISTER_USER;
use crate::directory::{Change, Managed, UserRec, meta, new_id, touched_meta};
use crate::{Denied, Km, store_err};
use cloister_crypto::signed::sign_notice;
use cloister_log::AuditEvent;
use cloister_proto::km::Notice;
use cloister_proto::{UserId, now_millis};
use cloister_scim::{AttrPath, Ctx, SCHEMA_ENTERPRISE, SCHEMA_USER};
use cloister_store::KmUserRow;
use serde_json::{Value, json};

pub(crate) const USER_CTX: Ctx<'static> = Ctx {
    core: SCHEMA_USER,
    case_exact: &["id", "externalid"],
    extensions: &EXTENSIONS,
};
pub(crate) const ALWAYS: &[&str] = &["id", "schemas"];
/// Largest stored resource.
const MAX_RESOURCE: usize = 64 * 1024;
const EXTENSIONS: [&str; 2] = [SCHEMA_ENTERPRISE, SCHEMA_CLOISTER_USER];

fn invalid(msg: impl Into<String>) -> Denied {
    Denied::malformed("invalidValue", msg)
}

fn not_found(id: &str) -> Denied {
    Denied::not_found("not_found", format!("no user {id}"))
}

/// Check and normalise a User resource from a client (readOnly attributes
/// are ignored, as RFC 7643 §7 asks).
fn clean(mut v: Value) -> Result<Value, Denied> {
    let obj = v
        .as_object_mut()
        .ok_or_else(|| Denied::malformed("invalidSyntax", "a User must be a JSON object"))?;
    let has_core = cloister_scim::get_ci(obj, "schemas")
        .and_then(Value::as_array)
        .is_some_and(|a| {
            a.iter().any(|s| {
                s.as_str()
                    .is_some_and(|s| s.eq_ignore_ascii_case(SCHEMA_USER))
            })
        });
    if !has_core {
        return Err(invalid(format!("schemas must contain {SCHEMA_USER}")));
    }
    for ro in ["id", "meta", "groups"] {
        if let Some(k) = cloister_scim::key_ci(obj, ro) {
            obj.remove(&k);
        }
    }
    // canonical spelling of the attributes Cloister reads
    for name in [
        "userName",
        "active",
        "displayName",
        "title",
        "entitlements",
        "externalId",
        "name",
    ] {
        if let Some(k) = cloister_scim::key_ci(obj, name)
            && k != name
            && let Some(val) = obj.remove(&k)
        {
            obj.insert(name.to_owned(), val);
        }
    }
    let user_name = obj
        .get("userName")
        .and_then(Value::as_str)
        .map(str::trim)
        .unwrap_or("");
    if user_name.is_empty() || user_name.len() > 256 {
        return Err(invalid("userName is required (1 to 256 bytes)"));
    }
    match obj.get("active") {
        None | Some(Value::Bool(_)) => {}
        // Entra ID sends "True" / "False"
        Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => {
            obj.insert("active".into(), json!(true));
        }
        Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => {
            obj.insert("active".into(), json!(false));
        }
        Some(other) => return Err(invalid(format!("active must be a boolean, not {other}"))),
    }
    for (k, val) in obj.iter_mut() {
        if !k.starts_with("urn:") {
            continue;
        }
        if !EXTENSIONS.iter().any(|e| e.eq_ignore_ascii_case(k)) {
            return Err(invalid(format!("unknown schema extension {k}")));
        }
        let Some(ext) = val.as_object_mut() else {
            return Err(invalid(format!("{k} must be an object")));
        };
        // a whole extension may come with its own `schemas`: not stored
        if let Some(sk) = cloister_scim::key_ci(ext, "schemas") {
            ext.remove(&sk);
        }
    }
    // canonical extension keys, and `schemas` naming exactly those present
    let mut schemas = vec![json!(SCHEMA_USER)];
    for e in EXTENSIONS {
        if let Some(k) = cloister_scim::key_ci(obj, e) {
            let val = obj.remove(&k).unwrap_or(Value::Null);
            if val.as_object().is_some_and(|o| !o.is_empty()) {
                obj.insert(e.to_owned(), val);
                schemas.push(json!(e));
            }
        }
    }
    obj.insert("schemas".into(), Value::Array(schemas));
    if v.to_string().len() > MAX_RESOURCE {
        return Err(Denied::too_large(format!(
            "a User is at most {MAX_RESOURCE} bytes"
        )));
    }
    Ok(v)
}

fn user_name(doc: &Value) -> &str {
    doc.get("userName").and_then(Value::as_str).unwrap_or("")
}

fn active(doc: &Value) -> bool {
    doc.get("active").and_then(Value::as_bool) != Some(false)
}

/// A Cloister user name from a SCIM userName: the part before any `@`,
/// lower-cased, other characters turned into `-`.
fn cloister_name(user_name: &str) -> String {
    let local = user_name.split('@').next().unwrap_or("");
    let mut s: String = local
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(48)
        .collect();
    if s.is_empty() {
        s = "user".into();
    }
    s
}

impl Km {
    fn render_user(&self, base: &str, rec: &UserRec) -> Value {
        let mut v = rec.doc.clone();
        v["meta"]["location"] = json!(format!("{base}/Users/{}", rec.scim_id));
        v
    }

    fn live_user(&self, id: &str) -> Result<UserRec, Denied> {
        self.dir()
            .users
            .get(id)
            .filter(|u| !u.deleted)
            .cloned()
            .ok_or_else(|| not_found(id))
    }

    fn user_name_taken(&self, name: &str, except: Option<&str>) -> bool {
        self.dir().users.values().any(|u| {
            !u.deleted
                && Some(u.scim_id.as_str()) != except
                && user_name(&u.doc).eq_ignore_ascii_case(name)
        })
    }

    pub(crate) fn scim_users_list(&self, req: &Req, q: &ListQuery) -> Result<Answer, Denied> {
        let d = self.dir();
        // in list order already (userName, then id): no sort per request
        let mut hits: Vec<&UserRec> = Vec::new();
        for u in d.user_order.iter().filter_map(|(_, id)| d.users.get(id)) {
            let keep = match &q.filter {
                Some(f) => f.matches(&u.doc, &USER_CTX).map_err(scim_error)?,
                None => true,
            };
            if keep {
                hits.push(u);
            }
        }
        let total = hits.len();
        let page = hits
            .into_iter()
            .skip(q.start - 1)
            .take(q.count)
            .map(|u| {
                cloister_scim::project(
                    &self.render_user(&req.base, u),
                    &q.attributes,
                    &q.excluded,
                    ALWAYS,
                    &USER_CTX,
                )
            })
            .collect();
        Ok(Answer {
            created: false,
            body: list_response(total, q.start, page),
            version: None,
        })
    }

    pub(crate) fn scim_user_get(
        &self,
        req: &Req,
        id: &str,
        attributes: &[AttrPath],
        excluded: &[AttrPath],
    ) -> Result<Answer, Denied> {
        let rec = self.live_user(id)?;
        Ok(Answer {
            created: false,
            body: cloister_scim::project(
                &self.render_user(&req.base, &rec),
                attributes,
                excluded,
                ALWAYS,
                &USER_CTX,
            ),
            version: Some(rec.version),
        })
    }

    pub(crate) async fn scim_user_create(&self, req: &Req, body: Value) -> Result<Answer, Denied> {
        let mut doc = clean(body)?;
        let _w = self.directory.write.lock().await;
        let name = user_name(&doc).to_owned();
        let now = now_millis();
        // adopt the admin-made account of that name, else a fresh id
        let base = cloister_name(&name);
        let exact: Option<UserId> = name
            .to_ascii_lowercase()
            .parse()
            .ok()
            .filter(|u: &UserId| u.tenant() == self.tenant);
        let wanted: UserId = match exact {
            Some(u) => u,
            None => format!("{base}@{}", self.tenant)
                .parse()
                .map_err(|_| invalid(format!("userName {name:?} cannot name a Cloister user")))?,
        };
        let adopt = self
            .dir()
            .user(&wanted)
            .filter(|u| u.managed == Managed::Admin && !u.deleted)
            .cloned();
        if self.user_name_taken(&name, adopt.as_ref().map(|u| u.scim_id.as_str())) {
            return Err(Denied::conflict(
                "uniqueness",
                format!("a user with userName {name:?} exists"),
            ));
        }
        let (scim_id, user, created_ms, granted, denied) = match adopt {
            Some(u) => {
                let created = u.doc.pointer("/meta/created").cloned();
                (u.scim_id, u.user, created, u.granted, u.denied)
            }
            None => {
                let scim_id = new_id()?;
                let mut user = wanted.clone();
                if self.dir().user(&user).is_some()
                    || self
                        .store
                        .get_user(&user)
                        .await
                        .map_err(store_err)?
                        .is_some()
                {
                    user = format!(
                        "{}-{}@{}",
                        &base[..base.len().min(40)],
                        &scim_id[..6],
                        self.tenant
                    )
                    .parse()
                    .map_err(|_| invalid("userName cannot name a Cloister user"))?;
                }
                (scim_id, user, None, Default::default(), Default::default())
            }
        };
        let adopted = created_ms.is_some();
        doc["id"] = json!(scim_id);
        doc["meta"] = meta("User", now, now, 1);
        if let Some(c) = created_ms {
            doc["meta"]["created"] = c;
        }
        let is_active = active(&doc);
        let rec = UserRec {
            scim_id: scim_id.clone(),
            user: user.clone(),
            doc,
            version: 1,
            managed: Managed::Scim,
            deleted: false,
            granted,
            denied,
            guest: false,
        };
        self.record(
            None,
            AuditEvent::DirectoryChanged {
                via: format!("scim ({})", req.token),
                resource: "user".into(),
                id: scim_id,
                name: user.to_string(),
                change: if adopted { "adopted" } else { "created" }.into(),
                fields: fields_of(&rec.doc),
            },
        )
        .await?;
        let existing = self.store.get_user(&user).await.map_err(store_err)?;
        if existing.is_none() {
            self.store
                .upsert_user(&KmUserRow {
                    user: user.to_string(),
                    roles: "user".into(),
                    status: if is_active { "active" } else { "disabled" }.into(),
                })
                .await
                .map_err(store_err)?;
            self.record(
                None,
                AuditEvent::UserAdded {
                    user: user.clone(),
                    roles: vec![cloister_proto::km::Role::User],
                },
            )
            .await?;
        } else {
            self.set_standing(&user, is_active).await?;
        }
        self.dir_apply(vec![Change::User(rec.clone())]).await?;
        self.sync_roles(&user).await?;
        Ok(Answer {
            created: true,
            body: self.render_user(&req.base, &rec),
            version: Some(rec.version),
        })
    }

    pub(crate) async fn scim_user_put(
        &self,
        req: &Req,
        id: &str,
        body: Value,
    ) -> Result<Answer, Denied> {
        let doc = clean(body)?;
        let _w = self.directory.write.lock().await;
        let old = self.live_user(id)?;
        check_if_match(req, old.version)?;
        self.commit_user(req, old, doc, "replaced").await
    }

    pub(crate) async fn scim_user_patch(
        &self,
        req: &Req,
        id: &str,
        body: Value,
    ) -> Result<Answer, Denied> {
        let ops = cloister_scim::parse_patch(&body).map_err(scim_error)?;
        let _w = self.directory.write.lock().await;
        let old = self.live_user(id)?;
        check_if_match(req, old.version)?;
        let mut doc = old.doc.clone();
        cloister_scim::apply_patch(&mut doc, &ops, &USER_CTX).map_err(scim_error)?;
        let doc = clean(doc)?;
        self.commit_user(req, old, doc, "patched").await
    }

    /// Store a changed user (the caller holds the directory lock).
    async fn commit_user(
        &self,
        req: &Req,
        old: UserRec,
        mut doc: Value,
        change: &str,
    ) -> Result<Answer, Denied> {
        let name = user_name(&doc).to_owned();
        if self.user_name_taken(&name, Some(&old.scim_id)) {
            return Err(Denied::conflict(
                "uniqueness",
                format!("a user with userName {name:?} exists"),
            ));
        }
        let version = old.version + 1;
        doc["id"] = json!(old.scim_id);
        doc["meta"] = touched_meta(&old.doc, "User", version);
        let fields = changed_fields(&old.doc, &doc);
        let (was, now) = (active(&old.doc), active(&doc));
        let rec = UserRec {
            doc,
            version,
            managed: Managed::Scim,
            ..old
        };
        self.record(
            None,
            AuditEvent::DirectoryChanged {
                via: format!("scim ({})", req.token),
                resource: "user".into(),
                id: rec.scim_id.clone(),
                name: rec.user.to_string(),
                change: change.into(),
                fields,
            },
        )
        .await?;
        if was != now {
            self.set_standing(&rec.user, now).await?;
        }
        self.dir_apply(vec![Change::User(rec.clone())]).await?;
        self.sync_roles(&rec.user).await?;
        Ok(Answer {
            created: false,
            body: self.render_user(&req.base, &rec),
            version: Some(rec.version),
        })
    }

    pub(crate) async fn scim_user_delete(&self, req: &Req, id: &str) -> Result<(), Denied> {
        let _w = self.directory.write.lock().await;
        let mut rec = self.live_user(id)?;
        check_if_match(req, rec.version)?;
        self.record(
            None,
            AuditEvent::DirectoryChanged {
                via: format!("scim ({})", req.token),
                resource: "user".into(),
                id: rec.scim_id.clone(),
                name: rec.user.to_string(),
                change: "deleted".into(),
                fields: Vec::new(),
            },
        )
        .await?;
        self.set_standing(&rec.user, false).await?;
        // every device revoked; the history (log, keys, archive) stays
        for d in self
            .store
            .devices_of_user(&rec.user)
            .await
            .map_err(store_err)?
        {
            if d.status == "active"
                && let Ok(dev) = d.device.parse()
            {
                let r = self.revoke_device(None, &dev).await?;
                if let Some(n) = r.notice {
                    self.notifier.queue(n);
                }
            }
        }
        // out of every group
        let mut changes = Vec::new();
        for g in self.dir().groups.values() {
            if g.member_ids().any(|m| m == rec.scim_id) {
                let mut g = g.clone();
                if let Some(ms) = g.doc.get_mut("members").and_then(Value::as_array_mut) {
                    ms.retain(|m| {
                        m.get("value").and_then(Value::as_str) != Some(rec.scim_id.as_str())
                    });
                }
                g.version += 1;
                g.doc["meta"] = crate::directory::touched_meta(&g.doc, "Group", g.version);
                changes.push(Change::Group(g));
            }
        }
        rec.deleted = true;
        rec.version += 1;
        rec.doc["active"] = json!(false);
        changes.push(Change::User(rec));
        self.dir_apply(changes).await
    }

    /// Make the user's standing follow `active`: disable (keys refused at
    /// once, the server told) or enable again. Audited.
    pub(crate) async fn set_standing(&self, user: &UserId, active: bool) -> Result<(), Denied> {
        let Some(row) = self.store.get_user(user).await.map_err(store_err)? else {
            return Ok(());
        };
        if (row.status == "active") == active {
            return Ok(());
        }
        let ts = now_millis();
        let n = if active {
            self.record(None, AuditEvent::UserEnabled { user: user.clone() })
                .await?;
            self.store
                .set_user_status(user, "active")
                .await
                .map_err(store_err)?;
            Notice::UserEnabled {
                tenant: self.tenant.clone(),
                user: user.clone(),
                ts,
            }
        } else {
            self.record(None, AuditEvent::UserDisabled { user: user.clone() })
                .await?;
            self.store
                .set_user_status(user, "disabled")
                .await
                .map_err(store_err)?;
            self.evict_active(|m| m.retain(|_, c| &c.user != user));
            Notice::UserDisabled {
                tenant: self.tenant.clone(),
                user: user.clone(),
                ts,
            }
        };
        tracing::info!(%user, active, "user standing changed over SCIM");
        self.notifier
            .queue(sign_notice(&self.signer, &n).map_err(Denied::internal)?);
        Ok(())
    }
}

fn fields_of(doc: &Value) -> Vec<String> {
    doc.as_object()
        .map(|o| {
            o.keys()
                .filter(|k| !matches!(k.as_str(), "id" | "meta" | "schemas"))
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

/// Top-level attributes (and extension attributes) that differ.
pub(crate) fn changed_fields(old: &Value, new: &Value) -> Vec<String> {
    let (Some(o), Some(n)) = (old.as_object(), new.as_object()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for k in o.keys().chain(n.keys().filter(|k| !o.contains_key(*k))) {
        if matches!(k.as_str(), "meta" | "id") || o.get(k) == n.get(k) {
            continue;
        }
        match (o.get(k), n.get(k)) {
            (Some(Value::Object(a)), Some(Value::Object(b))) if k.starts_with("urn:") => {
                for s in a.keys().chain(b.keys().filter(|s| !a.contains_key(*s))) {
                    if a.get(s) != b.get(s) {
                        out.push(format!("{k}:{s}"));
                    }
                }
            }
            _ => out.push(k.clone()),
        }
    }
    out
}
