//! `cloister directory …`, `cloister entitlements` and the controls of
//! `cloister admin …`: entitlements, groups, barriers, profiles, SCIM tokens.

use super::{Ctx, parse};
use clap::Subcommand;
use cloister_cli::BoxError;
use cloister_proto::UserId;
use cloister_proto::controls::Entitlement;
use cloister_proto::km::{BarrierInfo, ProfileUpdate};
use serde_json::json;

#[derive(Subcommand)]
pub enum DirectoryCmd {
    /// Find people by name, title, department, desk, location, asset class
    /// or job function (people a barrier separates from you are not shown).
    Search {
        /// Words that must all match.
        query: Vec<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Search a trusted firm's shared directory instead (the fields it
        /// publishes; needs external_chat).
        #[arg(long)]
        firm: Option<String>,
    },
    /// Admin: the profile fields this firm publishes to trusted firms
    /// (display_name, title, department, desk, location, job_function,
    /// asset_classes; none: not searchable by other firms).
    Publish {
        #[arg(long = "field")]
        fields: Vec<String>,
    },
}

#[derive(Subcommand)]
pub enum ControlsAdminCmd {
    /// Grant or deny entitlements to a user, or grant them to a group's members.
    Entitle {
        /// The user (or use --group).
        user: Option<String>,
        #[arg(long, conflicts_with = "user")]
        group: Option<String>,
        /// create_rooms, create_public_rooms, send_files, external_chat,
        /// compliance, custodian, surveillance (repeatable).
        #[arg(long)]
        grant: Vec<String>,
        /// Denied even if SCIM or a group grants it (repeatable).
        #[arg(long)]
        revoke: Vec<String>,
    },
    /// Groups (barrier and entitlement groups; SCIM keeps them too).
    #[command(subcommand)]
    Group(GroupCmd),
    /// Information barriers between groups.
    #[command(subcommand)]
    Barrier(BarrierCmd),
    /// Set a user's directory attributes.
    Profile {
        user: String,
        #[arg(long)]
        display_name: Option<String>,
        #[arg(long)]
        title: Option<String>,
        #[arg(long)]
        department: Option<String>,
        #[arg(long)]
        desk: Option<String>,
        #[arg(long)]
        location: Option<String>,
        #[arg(long)]
        job_function: Option<String>,
        /// An asset class (repeatable; replaces the list).
        #[arg(long = "asset-class")]
        asset_classes: Vec<String>,
        /// The legal jurisdiction the user works under (UK, US-NY, SG):
        /// escrow policies count custodians by it.
        #[arg(long)]
        jurisdiction: Option<String>,
    },
    /// Data-loss-prevention policies every device enforces before sealing.
    #[command(subcommand)]
    Dlp(DlpCmd),
    /// Whether new named rooms may (allowed), must (required) or must not
    /// (forbidden) be end-to-end MLS rooms.
    Mls {
        #[arg(value_parser = ["allowed", "required", "forbidden"])]
        policy: String,
    },
    /// Mint a bearer token for the SCIM endpoint (shown once), or revoke one.
    ScimToken {
        /// What the token is for (e.g. "okta").
        label: Option<String>,
        #[arg(long, conflicts_with = "label")]
        revoke: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum DlpCmd {
    /// Add or replace a policy (by id).
    Put {
        id: String,
        #[arg(long)]
        name: String,
        /// block: refuse to send; flag: send and mark the archived copy.
        #[arg(long, value_parser = ["block", "flag"])]
        action: String,
        /// A word or phrase (any case, whole words; repeatable).
        #[arg(long = "keyword")]
        keywords: Vec<String>,
        /// A regular expression (repeatable).
        #[arg(long = "pattern")]
        patterns: Vec<String>,
        /// A file extension (repeatable).
        #[arg(long = "file-type")]
        file_types: Vec<String>,
        #[arg(long)]
        max_file_bytes: Option<u64>,
        /// Shown to the sender when the policy blocks.
        #[arg(long, default_value = "")]
        message: String,
        /// Keep the policy on record but stop enforcing it.
        #[arg(long)]
        disabled: bool,
    },
    List,
}

#[derive(Subcommand)]
pub enum GroupCmd {
    /// Create a group if new and change its members.
    Set {
        name: String,
        #[arg(long)]
        add: Vec<String>,
        #[arg(long)]
        remove: Vec<String>,
    },
    List,
}

#[derive(Subcommand)]
pub enum BarrierCmd {
    /// Block all communication between two groups.
    Add {
        a: String,
        b: String,
        #[arg(long)]
        reason: String,
    },
    /// Every barrier, active and disabled.
    List,
    /// Disable a barrier (it stays in the record; barriers are never deleted).
    Disable {
        id: String,
        #[arg(long)]
        reason: String,
    },
}

fn ents(v: &[String]) -> Result<Vec<Entitlement>, BoxError> {
    v.iter().map(|s| parse::<Entitlement>(s)).collect()
}

fn users(v: &[String]) -> Result<Vec<UserId>, BoxError> {
    v.iter().map(|s| parse::<UserId>(s)).collect()
}

fn barrier_line(b: &BarrierInfo) -> String {
    let state = if b.barrier.active {
        "active".to_owned()
    } else {
        format!("disabled: {}", b.disabled_reason)
    };
    format!(
        "{}  {} | {}  ({state})  reason: {}",
        b.barrier.id, b.barrier.a, b.barrier.b, b.barrier.reason
    )
}

pub async fn directory_cmd(ctx: &Ctx, cmd: DirectoryCmd) -> Result<(), BoxError> {
    match cmd {
        DirectoryCmd::Publish { fields } => {
            let c = ctx.client()?;
            let f: Vec<&str> = fields.iter().map(String::as_str).collect();
            let published = c.admin_directory_publish(&f).await?;
            ctx.emit(
                if published.is_empty() {
                    "nothing published: other firms cannot search this directory".to_owned()
                } else {
                    format!("published to trusted firms: {}", published.join(", "))
                },
                serde_json::json!({ "published": published }),
            );
        }
        DirectoryCmd::Search { query, limit, firm } => {
            let c = ctx.client()?;
            let hits = match firm {
                Some(f) => {
                    let t: cloister_proto::TenantId = f
                        .parse()
                        .map_err(|e| format!("{f:?} is not a tenant id: {e}"))?;
                    c.partner_directory_search(&t, &query.join(" "), limit)
                        .await?
                }
                None => c.directory_search(&query.join(" "), limit).await?,
            };
            let lines: Vec<String> = hits
                .iter()
                .map(|e| {
                    format!(
                        "{}  {}  {}  {}  {}  {}",
                        e.user, e.display_name, e.title, e.department, e.desk, e.location
                    )
                })
                .collect();
            let human = if lines.is_empty() {
                "no one found".to_owned()
            } else {
                lines.join("\n")
            };
            ctx.emit(human, serde_json::to_value(&hits)?);
        }
    }
    Ok(())
}

pub async fn entitlements_cmd(ctx: &Ctx) -> Result<(), BoxError> {
    let c = ctx.client()?;
    let e = c.my_entitlements().await?;
    let names: Vec<&str> = e.iter().map(|x| x.as_str()).collect();
    ctx.emit(
        names.join(" "),
        json!({"user": c.user(), "entitlements": names}),
    );
    Ok(())
}

pub async fn admin_cmd(ctx: &Ctx, cmd: ControlsAdminCmd) -> Result<(), BoxError> {
    let c = ctx.client()?;
    match cmd {
        ControlsAdminCmd::Mls { policy } => {
            let p: cloister_proto::controls::MlsPolicy = policy.parse()?;
            c.mls_policy_set(p).await?;
            ctx.emit(
                format!("new named rooms: MLS {}", p.as_str()),
                json!({"mls": p}),
            );
        }
        ControlsAdminCmd::Entitle {
            user,
            group,
            grant,
            revoke,
        } => {
            let user: Option<UserId> = user.as_deref().map(parse).transpose()?;
            if user.is_none() && group.is_none() {
                return Err("name a user or --group".into());
            }
            let (g, r) = (ents(&grant)?, ents(&revoke)?);
            c.admin_entitle(user.as_ref(), group.as_deref(), &g, &r)
                .await?;
            let who = user.map(|u| u.to_string()).or(group).unwrap_or_default();
            ctx.emit(
                format!("{who}: granted {grant:?}, revoked {revoke:?}"),
                json!({"target": who, "grant": grant, "revoke": revoke}),
            );
        }
        ControlsAdminCmd::Group(GroupCmd::Set { name, add, remove }) => {
            let g = c
                .admin_group_set(&name, &users(&add)?, &users(&remove)?)
                .await?;
            let ms: Vec<String> = g.members.iter().map(|m| m.to_string()).collect();
            ctx.emit(
                format!("group {}: {}", g.name, ms.join(", ")),
                serde_json::to_value(&g)?,
            );
        }
        ControlsAdminCmd::Group(GroupCmd::List) => {
            let gs = c.group_list().await?;
            let lines: Vec<String> = gs
                .iter()
                .map(|g| {
                    let ms: Vec<String> = g.members.iter().map(|m| m.to_string()).collect();
                    let es: Vec<&str> = g.entitlements.iter().map(|e| e.as_str()).collect();
                    format!("{}: {} [{}]", g.name, ms.join(", "), es.join(" "))
                })
                .collect();
            ctx.emit(lines.join("\n"), serde_json::to_value(&gs)?);
        }
        ControlsAdminCmd::Barrier(BarrierCmd::Add { a, b, reason }) => {
            let r = c.barrier_add(&a, &b, &reason).await?;
            let mut lines = vec![format!("barrier added: {}", barrier_line(&r.barrier))];
            for e in &r.evicted {
                lines.push(format!(
                    "  evicted {} from room {}: {}",
                    e.user, e.room, e.reason
                ));
            }
            for p in &r.pending {
                lines.push(format!("  pending: {p}"));
            }
            ctx.emit(lines.join("\n"), serde_json::to_value(&r)?);
        }
        ControlsAdminCmd::Barrier(BarrierCmd::List) => {
            let bs = c.barrier_list().await?;
            let lines: Vec<String> = bs.iter().map(barrier_line).collect();
            ctx.emit(lines.join("\n"), serde_json::to_value(&bs)?);
        }
        ControlsAdminCmd::Barrier(BarrierCmd::Disable { id, reason }) => {
            let r = c.barrier_disable(&id, &reason).await?;
            ctx.emit(
                format!("barrier disabled: {}", barrier_line(&r)),
                serde_json::to_value(&r)?,
            );
        }
        ControlsAdminCmd::Profile {
            user,
            display_name,
            title,
            department,
            desk,
            location,
            job_function,
            asset_classes,
            jurisdiction,
        } => {
            let u: UserId = parse(&user)?;
            let p = ProfileUpdate {
                display_name,
                title,
                department,
                desk,
                location,
                job_function,
                asset_classes: (!asset_classes.is_empty()).then_some(asset_classes),
                jurisdiction,
            };
            c.admin_profile_set(&u, p.clone()).await?;
            ctx.emit(
                format!("profile of {u} updated"),
                json!({"user": u, "profile": p}),
            );
        }
        ControlsAdminCmd::Dlp(DlpCmd::Put {
            id,
            name,
            action,
            keywords,
            patterns,
            file_types,
            max_file_bytes,
            message,
            disabled,
        }) => {
            let policy = cloister_proto::controls::DlpPolicy {
                id: id.clone(),
                name,
                action: if action == "block" {
                    cloister_proto::controls::DlpAction::Block
                } else {
                    cloister_proto::controls::DlpAction::Flag
                },
                keywords,
                patterns,
                file_types,
                max_file_bytes,
                message,
                active: !disabled,
            };
            c.dlp_put(policy.clone()).await?;
            ctx.emit(
                format!("DLP policy {id} saved"),
                serde_json::to_value(&policy)?,
            );
        }
        ControlsAdminCmd::Dlp(DlpCmd::List) => {
            let ps = c.dlp_policies().await?;
            let lines: Vec<String> = ps
                .iter()
                .map(|p| {
                    format!(
                        "{}  {:?}  {}  keywords={:?} patterns={:?} types={:?} max={:?}{}",
                        p.id,
                        p.action,
                        p.name,
                        p.keywords,
                        p.patterns,
                        p.file_types,
                        p.max_file_bytes,
                        if p.active { "" } else { "  (disabled)" }
                    )
                })
                .collect();
            ctx.emit(lines.join("\n"), serde_json::to_value(&ps)?);
        }
        ControlsAdminCmd::ScimToken { label, revoke } => match (label, revoke) {
            (Some(label), None) => {
                let t = c.admin_scim_token(&label).await?;
                ctx.emit(
                    format!(
                        "SCIM token {} for {label} (shown once; give it to the identity provider):\n{}\nendpoint: {}/scim/v2",
                        t.id,
                        t.token,
                        c.km_url()
                    ),
                    json!({"id": t.id, "token": t.token, "endpoint": format!("{}/scim/v2", c.km_url())}),
                );
            }
            (None, Some(id)) => {
                c.admin_scim_token_revoke(&id).await?;
                ctx.emit(format!("SCIM token {id} revoked"), json!({"revoked": id}));
            }
            _ => return Err("give a LABEL to mint a token, or --revoke ID".into()),
        },
    }
    Ok(())
}
