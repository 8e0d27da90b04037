//! The directory and the controls it carries: profiles, groups,
//! entitlements, barriers, SCIM tokens. Held in memory (a bank's directory
//! is 10^4–10^5 people), written through to the store; every change is an
//! audit record and bumps the controls version.
//!
//! ```text
//!  SCIM / admin op ──changes──▶ dir_apply ──▶ store (one tx) ──▶ memory ──▶ rules dirty
//!  key release / log ingest ──rules()──▶ cloister_policy::controls::Rules (rebuilt when dirty)
//!  notifier ──signed Notice::Controls (newest version)──▶ messaging server
//! ```

pub(crate) mod admin;
pub(crate) mod model;
pub(crate) mod notify;

use super::*;
use cloister_policy::controls::Rules;
pub(crate) use model::{BarrierRec, Directory, GroupRec, Managed, TokenRec, UserRec};
use serde_json::{Value, json};

/// One change to the directory.
pub(crate) enum Change {
    User(UserRec),
    Group(GroupRec),
    GroupGone(String),
    Barrier(BarrierRec),
    Token(TokenRec),
    Dlp(cloister_proto::controls::DlpPolicy),
    Trust(cloister_proto::federation::TrustedFirm),
    Mls(cloister_proto::controls::MlsPolicy),
}

/// The directory state of a running KM.
#[derive(Default)]
pub(crate) struct DirState {
    pub dir: std::sync::RwLock<Directory>,
    /// Serialises changes (read, decide, write).
    pub write: tokio::sync::Mutex<()>,
    /// The rules of the current version (`None`: rebuild on next use).
    pub rules: Mutex<Option<Arc<Rules>>>,
    /// One eviction sweep at a time.
    pub sweep: tokio::sync::Mutex<()>,
    /// The directory version the last complete sweep ran on (nothing left
    /// pending): a later trigger for the same version has nothing to do.
    pub swept: std::sync::atomic::AtomicU64,
    /// HTTP client for the KM's own calls to the messaging server.
    pub http: std::sync::OnceLock<reqwest::Client>,
}

impl Km {
    pub(crate) fn dir(&self) -> std::sync::RwLockReadGuard<'_, Directory> {
        match self.directory.dir.read() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Load the directory; give every KM user without a record one (users
    /// created before the directory existed, the bootstrap admin).
    pub(crate) async fn load_directory(&self) -> Result<(), KmError> {
        let rows = self.store.dir_all().await?;
        let d = Directory::load(rows).map_err(|e| {
            tracing::error!("{e}");
            KmError::Corrupt("directory record")
        })?;
        *self
            .directory
            .dir
            .write()
            .map_err(|_| KmError::Corrupt("directory lock"))? = d;
        for u in self.store.list_users().await? {
            let Ok(user) = u.user.parse::<UserId>() else {
                continue;
            };
            if self.dir().user(&user).is_none() {
                let guest = crate::users::parse_roles(&u.roles).contains(&Role::Guest);
                self.ensure_dir_user(&user, u.status == "active", guest)
                    .await
                    .map_err(|_| KmError::Corrupt("could not write the directory"))?;
            }
        }
        Ok(())
    }

    /// A directory record for a user the admin created (idempotent).
    pub(crate) async fn ensure_dir_user(
        &self,
        user: &UserId,
        active: bool,
        guest: bool,
    ) -> Result<(), Denied> {
        let _w = self.directory.write.lock().await;
        let existing = self.dir().user(user).cloned();
        if let Some(rec) = existing {
            if guest && !rec.guest {
                let mut rec = rec;
                rec.guest = true;
                return self.dir_apply(vec![Change::User(rec)]).await;
            }
            return Ok(());
        }
        let scim_id = new_id()?;
        let now = now_millis();
        let doc = json!({
            "schemas": [cloister_scim::SCHEMA_USER],
            "id": scim_id,
            "userName": user.as_str(),
            "active": active,
            "meta": meta("User", now, now, 1),
        });
        let rec = UserRec {
            scim_id,
            user: user.clone(),
            doc,
            version: 1,
            managed: Managed::Admin,
            deleted: false,
            granted: Default::default(),
            denied: Default::default(),
            guest,
        };
        self.dir_apply(vec![Change::User(rec)]).await
    }

    /// The directory shows a user the admin disabled as inactive.
    pub(crate) async fn dir_mark_inactive(&self, user: &UserId) -> Result<(), Denied> {
        let _w = self.directory.write.lock().await;
        let Some(mut rec) = self.dir().user(user).cloned() else {
            return Ok(());
        };
        if rec.doc.get("active") == Some(&json!(false)) {
            return Ok(());
        }
        rec.doc["active"] = json!(false);
        rec.version += 1;
        rec.doc["meta"] = touched_meta(&rec.doc, "User", rec.version);
        self.dir_apply(vec![Change::User(rec)]).await
    }

    /// Persist changes (one transaction), then make them visible.
    /// The caller holds `directory.write`.
    pub(crate) async fn dir_apply(&self, changes: Vec<Change>) -> Result<(), Denied> {
        let version = self.dir().version + 1;
        let mut put = Vec::with_capacity(changes.len() + 1);
        let mut del = Vec::new();
        for c in &changes {
            match c {
                Change::User(u) => put.push(u.row()),
                Change::Group(g) => put.push(g.row()),
                Change::Barrier(b) => put.push(b.row()),
                Change::Token(t) => put.push(t.row()),
                Change::Dlp(p) => put.push(model::dlp_row(p)),
                Change::Trust(t) => put.push(model::trust_row(t)),
                Change::Mls(m) => put.push(model::mls_row(m)),
                Change::GroupGone(id) => del.push((model::K_GROUP.to_owned(), id.clone())),
            }
        }
        put.push(model::state_row(version));
        let put = put
            .into_iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(Denied::internal)?;
        self.store.dir_write(&put, &del).await.map_err(store_err)?;
        {
            let mut d = match self.directory.dir.write() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            for c in changes {
                match c {
                    Change::User(u) => {
                        d.by_user.insert(u.user.clone(), u.scim_id.clone());
                        let old = d.users.get(&u.scim_id).cloned();
                        d.order_user(old.as_ref(), &u);
                        d.users.insert(u.scim_id.clone(), u);
                    }
                    Change::Group(g) => {
                        d.groups.insert(g.scim_id.clone(), g);
                    }
                    Change::GroupGone(id) => {
                        d.groups.remove(&id);
                    }
                    Change::Barrier(b) => {
                        d.barriers.insert(b.barrier.id.clone(), b);
                    }
                    Change::Token(t) => {
                        d.tokens.insert(t.id.clone(), t);
                    }
                    Change::Dlp(p) => {
                        d.dlp.insert(p.id.clone(), p);
                    }
                    Change::Trust(t) => {
                        d.trusts.insert(t.tenant.clone(), t);
                    }
                    Change::Mls(m) => d.mls = m,
                }
            }
            d.version = version;
        }
        if let Ok(mut r) = self.directory.rules.lock() {
            *r = None;
        }
        self.notifier.wake();
        Ok(())
    }

    /// The rules of the current controls (rebuilt after a change).
    pub(crate) fn rules(&self) -> Arc<Rules> {
        if let Ok(r) = self.directory.rules.lock()
            && let Some(r) = r.as_ref()
        {
            return r.clone();
        }
        let rules = Arc::new(Rules::new(&self.dir().controls()));
        if let Ok(mut r) = self.directory.rules.lock() {
            // a concurrent change may have cleared it again: keep ours only
            // if it is of the current version
            if rules.version == self.dir().version {
                *r = Some(rules.clone());
            }
        }
        rules
    }

    /// The controls, signed, for the messaging server and for clients.
    pub(crate) fn signed_controls(&self) -> Result<SignedNotice, Denied> {
        let n = Notice::Controls {
            tenant: self.tenant.clone(),
            controls: self.dir().controls(),
            ts: now_secs(),
        };
        sign_notice(&self.signer, &n).map_err(Denied::internal)
    }

    /// Record a control's refusal in the audit log and turn it into a denial.
    pub(crate) async fn refused(
        &self,
        action: &str,
        user: &UserId,
        room: Option<RoomId>,
        r: cloister_policy::controls::Refusal,
    ) -> Denied {
        let code = r.code();
        if let Err(e) = self
            .record(
                Some(user),
                AuditEvent::ControlRefused {
                    action: action.into(),
                    user: user.clone(),
                    room,
                    code: code.into(),
                    reason: r.to_string(),
                },
            )
            .await
        {
            return e;
        }
        Denied::forbidden(code, r.to_string())
    }
}

/// A new opaque SCIM / directory id.
pub(crate) fn new_id() -> Result<String, Denied> {
    Ok(hex::encode(
        cloister_crypto::random_bytes::<16>().map_err(Denied::internal)?,
    ))
}

/// RFC 3339 UTC timestamp of a Unix-milliseconds time.
pub(crate) fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        .to_string()
}

/// A resource's `meta` (its `location` is added at the edge).
pub(crate) fn meta(resource_type: &str, created: u64, modified: u64, version: u64) -> Value {
    json!({
        "resourceType": resource_type,
        "created": rfc3339(created),
        "lastModified": rfc3339(modified),
        "version": etag(version),
    })
}

/// A changed resource's `meta`: the next version, modified now, its
/// creation time kept.
pub(crate) fn touched_meta(old: &Value, resource_type: &str, version: u64) -> Value {
    let mut m = meta(resource_type, 0, now_millis(), version);
    m["created"] = old.pointer("/meta/created").cloned().unwrap_or(Value::Null);
    m
}

pub(crate) fn etag(version: u64) -> String {
    format!("W/\"{version}\"")
}

/// The words of a directory query (at most 16, lower-cased).
pub(crate) fn query_words(query: &str) -> Vec<String> {
    query
        .split_whitespace()
        .take(16)
        .map(str::to_lowercase)
        .collect()
}

/// Does a directory entry match every word (in any of its shown fields)?
pub(crate) fn matches(e: &cloister_proto::km::DirectoryEntry, words: &[String]) -> bool {
    let hay = format!(
        "{} {} {} {} {} {} {} {}",
        e.user,
        e.display_name,
        e.title,
        e.department,
        e.desk,
        e.location,
        e.job_function,
        e.asset_classes.join(" ")
    )
    .to_lowercase();
    words.iter().all(|w| hay.contains(w.as_str()))
}
