//! The directory shared between firms: each firm publishes the profile
//! fields it chooses; a trusted firm's entitled users search it through
//! their own KM, which asks the other firm's KM directly (signed under the
//! pinned keys, as the key exchange). (docs/federation.md)
//!
//! ```text
//!  alice@acme ── PartnerDirectorySearch{bank, "rates"} ──▶ acme KM
//!     external_chat? bank pinned (with its address)?
//!     acme KM ── DirectoryQuery{acme→bank, alice, "rates"} signed ──▶ bank KM
//!                 POST /v1/federation/directory
//!        bank KM: acme pinned? signature? fresh? what bank publishes, of
//!                 bank's active non-guest users holding external_chat, not
//!                 walled off from alice by a bank barrier
//!     ◀── DirectoryAnswer (published fields only) signed by bank KM
//!     acme KM: under bank's pinned key; drops whoever an acme barrier walls
//!              off from alice ──▶ alice
//! ```

use super::*;
use cloister_crypto::signed::{DIRECTORY_ANSWER, DIRECTORY_QUERY, km_sign_blob, verify_blob};
use cloister_proto::controls::Entitlement;
use cloister_proto::federation::{DirectoryAnswer, DirectoryQuery, PUBLISHABLE_FIELDS};
use cloister_proto::km::{DirectoryEntry, SignedBlob};

const META_PUBLISHED: &str = "directory_published";
const MAX_QUERY: usize = 256;

impl Km {
    /// The fields this firm publishes to other firms.
    pub(crate) async fn published_fields(&self) -> Result<Vec<String>, Denied> {
        Ok(self
            .store
            .get_meta(META_PUBLISHED)
            .await
            .map_err(store_err)?
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default())
    }

    /// Admin: choose the published fields (audited).
    pub(crate) async fn directory_publish(
        &self,
        cert: &DeviceCert,
        fields: &[String],
    ) -> Result<serde_json::Value, Denied> {
        self.need(cert, Role::Admin, "publishing the directory to other firms")?;
        let mut out: Vec<String> = Vec::new();
        for f in fields {
            if !PUBLISHABLE_FIELDS.contains(&f.as_str()) {
                return Err(Denied::malformed(
                    "bad_field",
                    format!(
                        "{f:?} cannot be published; choose from {}",
                        PUBLISHABLE_FIELDS.join(", ")
                    ),
                ));
            }
            if !out.contains(f) {
                out.push(f.clone());
            }
        }
        self.record(
            Some(&cert.user),
            AuditEvent::DirectoryChanged {
                via: "admin".into(),
                resource: "publication".into(),
                id: "shared-directory".into(),
                name: self.tenant.to_string(),
                change: "published to other firms".into(),
                fields: out.clone(),
            },
        )
        .await?;
        self.store
            .set_meta(
                META_PUBLISHED,
                &serde_json::to_vec(&out).map_err(Denied::internal)?,
            )
            .await
            .map_err(store_err)?;
        json(&serde_json::json!({ "published": out }))
    }

    /// A user searches a trusted firm's directory.
    pub(crate) async fn partner_directory_search(
        &self,
        cert: &DeviceCert,
        firm: &TenantId,
        query: &str,
        limit: u32,
    ) -> Result<serde_json::Value, Denied> {
        if query.len() > MAX_QUERY {
            return Err(Denied::malformed(
                "bad_query",
                format!("a query has at most {MAX_QUERY} bytes"),
            ));
        }
        if firm == &self.tenant {
            return Err(Denied::malformed(
                "same_firm",
                "search your own firm with `directory search`",
            ));
        }
        self.entitled(&cert.user).await?;
        let Some((id, url)) = self.partner_km(firm) else {
            return Err(Denied::forbidden(
                "not_trusted",
                format!("{firm} is not a trusted firm (or its KM address was not given)"),
            ));
        };
        let q = DirectoryQuery {
            from: self.tenant.clone(),
            to: firm.clone(),
            searcher: cert.user.clone(),
            query: query.to_owned(),
            limit: if limit == 0 { 50 } else { limit.min(500) },
            ts: now_millis(),
            nonce: Fixed(cloister_crypto::random_bytes().map_err(Denied::internal)?),
        };
        let blob = km_sign_blob(&self.signer, DIRECTORY_QUERY, &q).map_err(Denied::internal)?;
        let answer = self
            .call_partner(
                firm,
                &url,
                "directory",
                &blob,
                ("partner_km_unreachable", "partner_km_refused"),
                "the search",
            )
            .await?;
        let a: DirectoryAnswer = verify_blob(&id.sign_pk, DIRECTORY_ANSWER, &answer, "answer")
            .map_err(|_| {
                Denied::forbidden(
                    "bad_signature",
                    format!("the answer is not signed by {firm}'s pinned KM key"),
                )
            })?;
        if &a.firm != firm || a.searcher != cert.user {
            return Err(Denied::forbidden(
                "bad_answer",
                "the answer is for another firm or searcher",
            ));
        }
        let rules = self.rules();
        let entries: Vec<DirectoryEntry> = a
            .entries
            .into_iter()
            .filter(|e| e.user.tenant() == *firm)
            .filter(|e| rules.barriers().blocked(&cert.user, &e.user).is_none())
            .take(q.limit as usize)
            .collect();
        json(&entries)
    }

    /// A partner firm's KM searches this firm's directory for its user.
    pub async fn serve_directory_query(&self, blob: &SignedBlob) -> Result<SignedBlob, Denied> {
        let peek: DirectoryQuery = cloister_crypto::signed::peek_blob(blob, "directory query")
            .map_err(|e| Denied::malformed("bad_request", e.to_string()))?;
        let partner = self
            .trusted(&peek.from)
            .filter(|_| peek.from != self.tenant)
            .ok_or_else(|| {
                Denied::forbidden(
                    "not_trusted",
                    format!("{} is not a trusted firm of {}", peek.from, self.tenant),
                )
            })?;
        let q: DirectoryQuery = verify_blob(&partner.sign_pk, DIRECTORY_QUERY, blob, "query")
            .map_err(|_| {
                Denied::forbidden(
                    "bad_signature",
                    format!("the query is not signed by {}'s pinned KM key", peek.from),
                )
            })?;
        if q.to != self.tenant || q.searcher.tenant() != q.from {
            return Err(Denied::forbidden(
                "wrong_tenant",
                "the query is for another firm, or for a searcher of another firm than its KM's",
            ));
        }
        if !cloister_proto::within_skew(q.ts) {
            return Err(Denied::unauthenticated(
                "stale_request",
                "query timestamp is outside the allowed clock skew",
            ));
        }
        if q.query.len() > MAX_QUERY {
            return Err(Denied::malformed(
                "bad_query",
                format!("a query has at most {MAX_QUERY} bytes"),
            ));
        }
        let published = self.published_fields().await?;
        if published.is_empty() {
            return Err(Denied::forbidden(
                "not_published",
                format!("{} publishes no directory to other firms", self.tenant),
            ));
        }
        let has = |f: &str| published.iter().any(|p| p == f);
        let words = directory::query_words(&q.query);
        let rules = self.rules();
        let d = self.dir();
        let mut entries: Vec<DirectoryEntry> = d
            .users
            .values()
            .filter(|u| u.active() && !u.guest)
            .filter(|u| rules.has(&u.user, Entitlement::ExternalChat))
            .filter(|u| rules.barriers().blocked(&u.user, &q.searcher).is_none())
            .map(|u| {
                let e = u.entry();
                let keep = |f: &str, v: String| if has(f) { v } else { String::new() };
                DirectoryEntry {
                    user: e.user,
                    display_name: keep("display_name", e.display_name),
                    title: keep("title", e.title),
                    department: keep("department", e.department),
                    desk: keep("desk", e.desk),
                    location: keep("location", e.location),
                    job_function: keep("job_function", e.job_function),
                    asset_classes: if has("asset_classes") {
                        e.asset_classes
                    } else {
                        Vec::new()
                    },
                    jurisdiction: keep("jurisdiction", e.jurisdiction),
                }
            })
            .filter(|e| directory::matches(e, &words))
            .collect();
        drop(d);
        entries.sort_by(|a, b| a.user.cmp(&b.user));
        entries.truncate(q.limit.clamp(1, 500) as usize);
        let a = DirectoryAnswer {
            firm: self.tenant.clone(),
            searcher: q.searcher,
            published,
            entries,
            ts: now_millis(),
        };
        km_sign_blob(&self.signer, DIRECTORY_ANSWER, &a).map_err(Denied::internal)
    }
}
