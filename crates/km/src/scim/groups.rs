//! SCIM Groups: barrier groups and entitlement groups. Members are users;
//! a group an active barrier names cannot be renamed or deleted (disable
//! the barrier first), so a directory change never silently lifts a wall.

use super::{Answer, ListQuery, Req, check_if_match, list_response, scim_error};
use crate::directory::{Change, GroupRec, meta, new_id, touched_meta};
use crate::{Denied, Km};
use cloister_log::AuditEvent;
use cloister_proto::now_millis;
use cloister_scim::{AttrPath, Ctx, SCHEMA_GROUP};
use serde_json::{Value, json};

pub(crate) const GROUP_CTX: Ctx<'static> = Ctx {
    core: SCHEMA_GROUP,
    case_exact: &["id", "externalid", "members.value"],
    extensions: &[],
};
const ALWAYS: &[&str] = &["id", "schemas"];
/// Most members of one group.
const MAX_MEMBERS: usize = 100_000;

fn invalid(msg: impl Into<String>) -> Denied {
    Denied::malformed("invalidValue", msg)
}

fn not_found(id: &str) -> Denied {
    Denied::not_found("not_found", format!("no group {id}"))
}

fn display_name(doc: &Value) -> &str {
    doc.get("displayName").and_then(Value::as_str).unwrap_or("")
}

impl Km {
    /// Check and normalise a Group from a client: members must be users of
    /// this directory (nested groups are not supported).
    fn clean_group(&self, mut v: Value) -> Result<Value, Denied> {
        let obj = v
            .as_object_mut()
            .ok_or_else(|| Denied::malformed("invalidSyntax", "a Group must be a JSON object"))?;
        let has_core = cloister_scim::get_ci(obj, "schemas")
            .and_then(Value::as_array)
            .is_some_and(|a| {
                a.iter().any(|s| {
                    s.as_str()
                        .is_some_and(|s| s.eq_ignore_ascii_case(SCHEMA_GROUP))
                })
            });
        if !has_core {
            return Err(invalid(format!("schemas must contain {SCHEMA_GROUP}")));
        }
        for ro in ["id", "meta"] {
            if let Some(k) = cloister_scim::key_ci(obj, ro) {
                obj.remove(&k);
            }
        }
        for name in ["displayName", "members", "externalId"] {
            if let Some(k) = cloister_scim::key_ci(obj, name)
                && k != name
                && let Some(val) = obj.remove(&k)
            {
                obj.insert(name.to_owned(), val);
            }
        }
        obj.insert("schemas".into(), json!([SCHEMA_GROUP]));
        let name = obj
            .get("displayName")
            .and_then(Value::as_str)
            .map(str::trim)
            .unwrap_or("");
        if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
            return Err(invalid(
                "displayName is required (1 to 128 bytes of printable text)",
            ));
        }
        let members = match obj.remove("members") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => a,
            Some(_) => return Err(invalid("members must be an array")),
        };
        if members.len() > MAX_MEMBERS {
            return Err(invalid(format!(
                "a group has at most {MAX_MEMBERS} members"
            )));
        }
        let d = self.dir();
        let mut out: Vec<Value> = Vec::with_capacity(members.len());
        for m in members {
            let id = m
                .get("value")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid("each member needs a value (a user's id)"))?;
            if d.groups.contains_key(id) {
                return Err(invalid(format!(
                    "member {id} is a group: nested groups are not supported"
                )));
            }
            if d.users.get(id).is_none_or(|u| u.deleted) {
                return Err(invalid(format!(
                    "member {id} is not a user of this directory"
                )));
            }
            if out
                .iter()
                .any(|o| o.get("value").and_then(Value::as_str) == Some(id))
            {
                continue;
            }
            // kept as sent ($ref, type): clients compare what they get back
            out.push(m);
        }
        if !out.is_empty() {
            obj.insert("members".into(), Value::Array(out));
        }
        Ok(v)
    }

    fn render_group(&self, base: &str, g: &GroupRec) -> Value {
        let mut v = g.doc.clone();
        v["meta"]["location"] = json!(format!("{base}/Groups/{}", g.scim_id));
        v
    }

    fn live_group(&self, id: &str) -> Result<GroupRec, Denied> {
        self.dir()
            .groups
            .get(id)
            .cloned()
            .ok_or_else(|| not_found(id))
    }

    /// The active barrier naming this group, if any.
    fn walled_by(&self, name: &str) -> Option<String> {
        self.dir()
            .barriers
            .values()
            .find(|b| {
                b.barrier.active
                    && (b.barrier.a.eq_ignore_ascii_case(name)
                        || b.barrier.b.eq_ignore_ascii_case(name))
            })
            .map(|b| b.barrier.id.clone())
    }

    fn group_name_taken(&self, name: &str, except: Option<&str>) -> bool {
        self.dir()
            .groups
            .values()
            .any(|g| Some(g.scim_id.as_str()) != except && g.name().eq_ignore_ascii_case(name))
    }

    pub(crate) fn scim_groups_list(&self, req: &Req, q: &ListQuery) -> Result<Answer, Denied> {
        let d = self.dir();
        let mut hits: Vec<&GroupRec> = Vec::new();
        for g in d.groups.values() {
            let keep = match &q.filter {
                Some(f) => f.matches(&g.doc, &GROUP_CTX).map_err(scim_error)?,
                None => true,
            };
            if keep {
                hits.push(g);
            }
        }
        hits.sort_by_cached_key(|g| (g.name().to_lowercase(), g.scim_id.clone()));
        let total = hits.len();
        let page = hits
            .into_iter()
            .skip(q.start - 1)
            .take(q.count)
            .map(|g| {
                cloister_scim::project(
                    &self.render_group(&req.base, g),
                    &q.attributes,
                    &q.excluded,
                    ALWAYS,
                    &GROUP_CTX,
                )
            })
            .collect();
        Ok(Answer {
            created: false,
            body: list_response(total, q.start, page),
            version: None,
        })
    }

    pub(crate) fn scim_group_get(
        &self,
        req: &Req,
        id: &str,
        attributes: &[AttrPath],
        excluded: &[AttrPath],
    ) -> Result<Answer, Denied> {
        let g = self.live_group(id)?;
        Ok(Answer {
            created: false,
            body: cloister_scim::project(
                &self.render_group(&req.base, &g),
                attributes,
                excluded,
                ALWAYS,
                &GROUP_CTX,
            ),
            version: Some(g.version),
        })
    }

    pub(crate) async fn scim_group_create(&self, req: &Req, body: Value) -> Result<Answer, Denied> {
        let _w = self.directory.write.lock().await;
        let mut doc = self.clean_group(body)?;
        let name = display_name(&doc).to_owned();
        if self.group_name_taken(&name, None) {
            return Err(Denied::conflict(
                "uniqueness",
                format!("a group named {name:?} exists"),
            ));
        }
        let id = new_id()?;
        let now = now_millis();
        doc["id"] = json!(id);
        doc["meta"] = meta("Group", now, now, 1);
        let g = GroupRec {
            scim_id: id,
            doc,
            version: 1,
            entitlements: Default::default(),
        };
        self.audit_group(
            req,
            &g,
            "created",
            vec!["displayName".into(), "members".into()],
        )
        .await?;
        self.dir_apply(vec![Change::Group(g.clone())]).await?;
        self.sync_group_roles(&g, &[]).await?;
        Ok(Answer {
            created: true,
            body: self.render_group(&req.base, &g),
            version: Some(g.version),
        })
    }

    pub(crate) async fn scim_group_put(
        &self,
        req: &Req,
        id: &str,
        body: Value,
    ) -> Result<Answer, Denied> {
        let _w = self.directory.write.lock().await;
        let old = self.live_group(id)?;
        check_if_match(req, old.version)?;
        let doc = self.clean_group(body)?;
        self.commit_group(req, old, doc, "replaced").await
    }

    pub(crate) async fn scim_group_patch(
        &self,
        req: &Req,
        id: &str,
        body: Value,
    ) -> Result<Answer, Denied> {
        let ops = cloister_scim::parse_patch(&body).map_err(scim_error)?;
        let _w = self.directory.write.lock().await;
        let old = self.live_group(id)?;
        check_if_match(req, old.version)?;
        let mut doc = old.doc.clone();
        cloister_scim::apply_patch(&mut doc, &ops, &GROUP_CTX).map_err(scim_error)?;
        let doc = self.clean_group(doc)?;
        self.commit_group(req, old, doc, "patched").await
    }

    async fn commit_group(
        &self,
        req: &Req,
        old: GroupRec,
        mut doc: Value,
        change: &str,
    ) -> Result<Answer, Denied> {
        let name = display_name(&doc).to_owned();
        if !name.eq_ignore_ascii_case(old.name()) {
            if let Some(b) = self.walled_by(old.name()) {
                return Err(Denied::conflict(
                    "mutability",
                    format!(
                        "group {} is part of information barrier {b}; disable the barrier before renaming the group",
                        old.name()
                    ),
                ));
            }
            if self.group_name_taken(&name, Some(&old.scim_id)) {
                return Err(Denied::conflict(
                    "uniqueness",
                    format!("a group named {name:?} exists"),
                ));
            }
        }
        let version = old.version + 1;
        doc["id"] = json!(old.scim_id);
        doc["meta"] = touched_meta(&old.doc, "Group", version);
        let fields = super::users::changed_fields(&old.doc, &doc);
        let before: Vec<String> = old.member_ids().map(str::to_owned).collect();
        let g = GroupRec {
            doc,
            version,
            ..old
        };
        self.audit_group(req, &g, change, fields).await?;
        self.dir_apply(vec![Change::Group(g.clone())]).await?;
        self.sync_group_roles(&g, &before).await?;
        Ok(Answer {
            created: false,
            body: self.render_group(&req.base, &g),
            version: Some(g.version),
        })
    }

    pub(crate) async fn scim_group_delete(&self, req: &Req, id: &str) -> Result<(), Denied> {
        let _w = self.directory.write.lock().await;
        let g = self.live_group(id)?;
        check_if_match(req, g.version)?;
        if let Some(b) = self.walled_by(g.name()) {
            return Err(Denied::conflict(
                "mutability",
                format!(
                    "group {} is part of information barrier {b}; disable the barrier before deleting the group",
                    g.name()
                ),
            ));
        }
        self.audit_group(req, &g, "deleted", Vec::new()).await?;
        let before: Vec<String> = g.member_ids().map(str::to_owned).collect();
        let mut gone = g.clone();
        gone.doc["members"] = json!([]);
        self.dir_apply(vec![Change::GroupGone(g.scim_id)]).await?;
        self.sync_group_roles(&gone, &before).await
    }

    async fn audit_group(
        &self,
        req: &Req,
        g: &GroupRec,
        change: &str,
        fields: Vec<String>,
    ) -> Result<(), Denied> {
        self.record(
            None,
            AuditEvent::DirectoryChanged {
                via: format!("scim ({})", req.token),
                resource: "group".into(),
                id: g.scim_id.clone(),
                name: g.name().to_owned(),
                change: change.into(),
                fields,
            },
        )
        .await
        .map(|_| ())
    }
}
