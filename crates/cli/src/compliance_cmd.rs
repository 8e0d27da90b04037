//! `cloister vault …`, `cloister admin vault …`, `cloister compliance …` and
//! `cloister export verify`.

use super::{Ctx, parse, resolve_room, shutdown_signal};
use clap::Subcommand;
use cloister_cli::BoxError;
use cloister_crypto::blind::{Field, parse_day};
use cloister_proto::km::CaseScope;
use cloister_proto::{RoomId, UserId};
use serde_json::json;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum VaultCmd {
    /// Create the tenant's vault (receipt and ingestion-log keys), pinning its KM's key.
    Init {
        #[command(flatten)]
        data: cloister_cli::DataArgs,
        /// The tenant KM's URL (its signing key is fetched and pinned).
        #[arg(long)]
        km: String,
        /// Expected KM signing key (base64); refuse if the KM shows another.
        #[arg(long)]
        km_key: Option<String>,
        /// Pin this vault to a jurisdiction (ISO 3166: UK, US-NY): it keeps
        /// the captures of users certified there, and only theirs.
        #[arg(long)]
        jurisdiction: Option<String>,
    },
    /// Serve the vault API.
    Serve {
        /// A TOML file of this command's flags (`config-example` prints one).
        #[arg(long, env = "CLOISTER_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
        #[command(flatten)]
        ops: cloister_cli::ops_args::OpsArgs,
        #[command(flatten)]
        data: cloister_cli::DataArgs,
        #[arg(long, default_value = "127.0.0.1:7500")]
        listen: String,
        #[command(flatten)]
        tls: cloister_cli::tls_args::ListenTls,
        /// The KM's URL, if it moved since `vault init` (its deny list of
        /// revoked devices and disabled users is pulled from there).
        #[arg(long)]
        km: Option<String>,
        /// Seconds between pulls of the KM's deny list.
        #[arg(long, default_value_t = 5)]
        refresh_secs: u64,
        /// Refuse every request once the deny list is this many seconds old.
        #[arg(long, default_value_t = 60)]
        max_age_secs: u64,
        #[command(flatten)]
        limits: cloister_cli::limit_args::VaultLimitArgs,
    },
    /// Print a commented example of `vault serve --config FILE`.
    ConfigExample,
}

#[derive(Subcommand)]
pub enum AdminVaultCmd {
    /// Register the tenant's vault with the KM and set the capture policy.
    Register {
        #[arg(long)]
        url: String,
        /// `required`: the server refuses messages without a vault receipt.
        #[arg(long, default_value = "required", value_parser = ["required", "optional"])]
        capture: String,
    },
    /// Show the KM-signed vault descriptor.
    Show,
}

#[derive(Subcommand)]
pub enum ComplianceCmd {
    /// Search the archive (every term must match); terms become blind tokens on this device.
    Search {
        /// A keyword (repeat: all must appear).
        #[arg(long = "term")]
        terms: Vec<String>,
        #[arg(long)]
        sender: Option<String>,
        /// A participant of the conversation (repeatable).
        #[arg(long = "participant")]
        participants: Vec<String>,
        #[arg(long)]
        room: Option<String>,
        /// First day, YYYY-MM-DD (UTC; default 30 days ago).
        #[arg(long)]
        from: Option<String>,
        /// Last day, YYYY-MM-DD (UTC; default today).
        #[arg(long)]
        to: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Cases: scope, list.
    #[command(subcommand)]
    Case(CaseCmd),
    /// Custodian: approve a case, releasing your escrow share to its session only.
    Approve { case: String },
    /// After an escrow-key rotation: re-seal the case's envelopes that are
    /// under an older generation to the newest (needs that generation's
    /// approvals); then `admin escrow retire` the old one.
    Reseal {
        case: String,
        /// Re-seal in the vault pinned to this jurisdiction (as for export).
        #[arg(long)]
        jurisdiction: Option<String>,
    },
    /// Decrypt exactly the case's envelopes (needs K approvals) and write an eDiscovery export.
    Export {
        case: String,
        #[arg(long)]
        out: PathBuf,
        /// Read the vault pinned to this jurisdiction (default: the vault
        /// of this device's own jurisdiction; `--jurisdiction ''`: the
        /// default vault).
        #[arg(long)]
        jurisdiction: Option<String>,
    },
    /// Retention policies.
    #[command(subcommand)]
    Retention(RetentionCmd),
    /// Lock a room: no posts, no membership or settings changes (owners
    /// cannot unlock it).
    Lock {
        room: String,
        #[arg(long)]
        justification: String,
    },
    Unlock {
        room: String,
        #[arg(long)]
        justification: String,
    },
    /// Ban a member: removed into a new epoch, never re-added.
    Ban {
        room: String,
        user: String,
        #[arg(long)]
        justification: String,
    },
}

#[derive(clap::Args)]
pub struct ScopeArgs {
    /// A person whose conversations are in scope (repeatable).
    #[arg(long = "custodian")]
    custodians: Vec<String>,
    /// A room in scope (repeatable; default: every room).
    #[arg(long = "room")]
    rooms: Vec<String>,
    /// First day, YYYY-MM-DD (UTC).
    #[arg(long)]
    from: String,
    /// Last day, YYYY-MM-DD (UTC), inclusive.
    #[arg(long)]
    to: String,
    /// A re-seal case: every envelope still sealed to this escrow
    /// generation (any room), for `compliance reseal` after a rotation.
    #[arg(long)]
    reseal_generation: Option<u32>,
}

#[derive(Subcommand)]
pub enum CaseCmd {
    /// Open a case (this device holds its decryption session key).
    Open {
        case: String,
        #[arg(long, default_value = "")]
        title: String,
        #[command(flatten)]
        scope: ScopeArgs,
        /// Put the scope under legal hold (retention keeps it).
        #[arg(long)]
        hold: bool,
    },
    /// Replace a case's scope (approvals must be given again).
    Scope {
        case: String,
        #[command(flatten)]
        scope: ScopeArgs,
    },
    List,
}

#[derive(Subcommand)]
pub enum RetentionCmd {
    /// Keep messages of a room kind (`im` or `group`) for DAYS.
    Set {
        #[arg(long, value_parser = ["im", "group"])]
        kind: String,
        #[arg(long)]
        days: u32,
    },
    /// Apply retention now: shred expired epoch keys and delete expired envelopes, except held ones.
    Run,
}

#[derive(Subcommand)]
pub enum ExportCmd {
    /// Verify an eDiscovery export offline; fails on any altered, missing or added file.
    Verify {
        dir: PathBuf,
        /// The tenant KM's signing key (base64) the export must come from.
        #[arg(long)]
        km_key: Option<String>,
    },
}

fn day(s: &str, end: bool) -> Result<u64, BoxError> {
    let d = parse_day(s).ok_or_else(|| format!("{s:?} is not a date (YYYY-MM-DD)"))?;
    Ok(if end { d + 86_400_000 - 1 } else { d })
}

fn key32(s: &str) -> Result<[u8; 32], BoxError> {
    cloister_proto::b64::decode(s.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| "a key is 32 bytes of base64".into())
}

async fn scope(c: &cloister_client::Client, a: &ScopeArgs) -> Result<CaseScope, BoxError> {
    let mut rooms: Vec<RoomId> = Vec::new();
    for r in &a.rooms {
        rooms.push(match r.parse() {
            Ok(id) => id,
            Err(_) => resolve_room(c, r).await?,
        });
    }
    Ok(CaseScope {
        custodians: a
            .custodians
            .iter()
            .map(|u| parse(u))
            .collect::<Result<Vec<UserId>, _>>()?,
        rooms,
        from_ms: day(&a.from, false)?,
        to_ms: day(&a.to, true)?,
        reseal: a.reseal_generation,
    })
}

fn case_line(c: &cloister_proto::km::Case) -> String {
    format!(
        "{} v{} {:?} officer {}{}: {} to {}, custodians [{}], rooms [{}]",
        c.case,
        c.version,
        c.title,
        c.officer,
        if c.hold { " HOLD" } else { "" },
        cloister_crypto::blind::day_of(c.scope.from_ms),
        cloister_crypto::blind::day_of(c.scope.to_ms),
        c.scope
            .custodians
            .iter()
            .map(|u| u.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        c.scope
            .rooms
            .iter()
            .map(|r| r.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

pub async fn vault_cmd(ctx: &Ctx, vc: VaultCmd) -> Result<(), BoxError> {
    match vc {
        VaultCmd::Init {
            data:
                cloister_cli::DataArgs {
                    data_dir,
                    database_url,
                },
            km,
            km_key,
            jurisdiction,
        } => {
            let pin = match &jurisdiction {
                Some(j) => Some(cloister_proto::canonical_jurisdiction(j).ok_or_else(|| {
                    format!("{j:?} is not a jurisdiction (an ISO 3166 code such as UK or US-NY)")
                })?),
                None => None,
            };
            if database_url.is_none() && cloister_vault::db_path(&data_dir).exists() {
                return Err(format!("{} already holds a vault", data_dir.display()).into());
            }
            let info = cloister_client::km_info(&cloister_tls::http_client(), &km).await?;
            if let Some(k) = km_key
                && key32(&k)? != info.sign_pk.0
            {
                return Err("the KM shows another signing key than --km-key".into());
            }
            let v = cloister_vault::Vault::open_url(
                &data_dir,
                database_url.as_deref(),
                Some((&info.tenant, info.sign_pk.0)),
            )
            .await?;
            v.set_km_url(&km).await?;
            if let Some(j) = &pin {
                v.set_jurisdiction(j).await?;
            }
            let i = v.info();
            ctx.emit(
                format!(
                    "vault for tenant {}{} created\nreceipt key: {}\nlog key: {}\nnext: an admin runs `cloister admin vault register --url URL`",
                    i.tenant,
                    pin.as_deref()
                        .map(|j| format!(" pinned to {j}"))
                        .unwrap_or_default(),
                    cloister_proto::b64::encode(&i.receipt_pk.0),
                    i.log_key
                ),
                serde_json::to_value(&i)?,
            );
        }
        VaultCmd::ConfigExample => {
            print!(
                "{}",
                cloister_cli::config::example::<crate::Cli>(&["vault", "serve"])
            );
        }
        VaultCmd::Serve {
            config: _,
            ops,
            data:
                cloister_cli::DataArgs {
                    data_dir,
                    database_url,
                },
            listen,
            tls,
            km,
            refresh_secs,
            max_age_secs,
            limits,
        } => {
            // Before the vault opens: its pulls from the KM use it.
            tls.set_outgoing(ctx.ca_file.as_ref())?;
            let vault_tls = tls.load()?;
            if refresh_secs == 0 || refresh_secs >= max_age_secs {
                return Err("--refresh-secs must be at least 1 and below --max-age-secs".into());
            }
            let mut v =
                cloister_vault::Vault::open_url(&data_dir, database_url.as_deref(), None).await?;
            v.set_limits(limits.limits());
            let v = std::sync::Arc::new(v);
            if let Some(km) = km {
                v.set_km_url(&km).await?;
            }
            v.set_standing_max_age(max_age_secs * 1000);
            tokio::spawn(v.clone().keep_standing(
                std::time::Duration::from_secs(refresh_secs),
                std::future::pending(),
            ));
            let l = tokio::net::TcpListener::bind(&listen)
                .await
                .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
            eprintln!(
                "vault for tenant {} listening on {}://{} ({} envelopes)",
                v.tenant(),
                tls.scheme(),
                l.local_addr()?,
                v.envelope_count().await.map_err(|e| e.message)?
            );
            let (metrics, ready) = (v.metrics().clone(), v.ready_check());
            ops.run_service(
                l,
                vault_tls.as_ref(),
                cloister_vault::router(v),
                metrics,
                ready,
                shutdown_signal(),
            )
            .await?;
        }
    }
    Ok(())
}

pub async fn admin_vault_cmd(ctx: &Ctx, vc: AdminVaultCmd) -> Result<(), BoxError> {
    let c = ctx.client()?;
    let d = match vc {
        AdminVaultCmd::Register { url, capture } => {
            c.admin_vault_register(&url, capture == "required").await?
        }
        AdminVaultCmd::Show => {
            c.vault_descriptor()
                .await?
                .ok_or("no vault is registered")?
                .1
        }
    };
    ctx.emit(
        format!(
            "vault {} for tenant {}: capture {}; receipt key {}",
            d.url,
            d.tenant,
            if d.capture_required {
                "required"
            } else {
                "optional"
            },
            cloister_proto::b64::encode(&d.receipt_pk.0)
        ),
        serde_json::to_value(&d)?,
    );
    Ok(())
}

pub async fn compliance_cmd(ctx: &Ctx, cc: ComplianceCmd) -> Result<(), BoxError> {
    let c = ctx.client()?;
    // officers' actions on rooms go to the KM only (no vault needed)
    let room_id = |r: &str| -> Result<RoomId, BoxError> {
        r.parse()
            .map_err(|_| format!("{r:?} is not a room id (32 hex characters)").into())
    };
    let done = |what: &str, r: &cloister_proto::km::RoomControlResponse| {
        ctx.emit(
            format!(
                "{what} room {} (log entry {}, epoch {})",
                r.room, r.seq, r.epoch
            ),
            json!({"room": r.room, "seq": r.seq, "epoch": r.epoch, "action": what}),
        )
    };
    match &cc {
        ComplianceCmd::Lock {
            room,
            justification,
        } => {
            let r = c.room_lock(&room_id(room)?, justification).await?;
            done("locked", &r);
            return Ok(());
        }
        ComplianceCmd::Unlock {
            room,
            justification,
        } => {
            let r = c.room_unlock(&room_id(room)?, justification).await?;
            done("unlocked", &r);
            return Ok(());
        }
        ComplianceCmd::Ban {
            room,
            user,
            justification,
        } => {
            let u: UserId = parse(user)?;
            let r = c.room_ban(&room_id(room)?, &u, justification).await?;
            done(&format!("banned {u} from"), &r);
            return Ok(());
        }
        _ => {}
    }
    c.use_registered_vault().await?;
    match cc {
        ComplianceCmd::Lock { .. } | ComplianceCmd::Unlock { .. } | ComplianceCmd::Ban { .. } => {}
        ComplianceCmd::Search {
            terms,
            sender,
            participants,
            room,
            from,
            to,
            limit,
        } => {
            let mut q: Vec<(Field, String)> = Vec::new();
            for t in &terms {
                let words = cloister_crypto::blind::keywords(t);
                if words.is_empty() {
                    return Err(format!("{t:?} holds no searchable word").into());
                }
                q.extend(words.into_iter().map(|w| (Field::Keyword, w)));
            }
            if let Some(s) = sender {
                q.push((Field::Sender, parse::<UserId>(&s)?.to_string()));
            }
            for p in participants {
                q.push((Field::Participant, parse::<UserId>(&p)?.to_string()));
            }
            if let Some(r) = room {
                let id: RoomId = match r.parse() {
                    Ok(id) => id,
                    Err(_) => resolve_room(&c, &r).await?,
                };
                q.push((Field::Room, id.to_hex()));
            }
            if q.is_empty() {
                return Err("give at least one --term, --sender, --participant or --room".into());
            }
            let now = cloister_proto::now_millis();
            let from_ms = match from {
                Some(f) => day(&f, false)?,
                None => now.saturating_sub(30 * 86_400_000),
            };
            let to_ms = match to {
                Some(t) => day(&t, true)?,
                None => now,
            };
            let hits = c.compliance_search(&q, from_ms, to_ms, limit).await?;
            let lines: Vec<String> = hits
                .iter()
                .map(|h| {
                    format!(
                        "{} room {} at {}",
                        h.message_id,
                        h.room,
                        cloister_crypto::blind::rfc3339(h.ts)
                    )
                })
                .collect();
            ctx.emit(
                if lines.is_empty() {
                    "no matching messages".to_owned()
                } else {
                    format!(
                        "{} matching message(s) (metadata only; reading content needs a case):\n{}",
                        lines.len(),
                        lines.join("\n")
                    )
                },
                json!({"hits": hits}),
            );
        }
        ComplianceCmd::Case(CaseCmd::Open {
            case,
            title,
            scope: s,
            hold,
        }) => {
            let sc = scope(&c, &s).await?;
            let k = c.case_open(&case, &title, sc, hold).await?;
            ctx.emit(
                format!("case opened: {}", case_line(&k)),
                serde_json::to_value(&k)?,
            );
        }
        ComplianceCmd::Case(CaseCmd::Scope { case, scope: s }) => {
            let sc = scope(&c, &s).await?;
            let k = c.case_rescope(&case, sc).await?;
            ctx.emit(
                format!("case rescoped: {}", case_line(&k)),
                serde_json::to_value(&k)?,
            );
        }
        ComplianceCmd::Case(CaseCmd::List) => {
            let cases = c.case_list().await?;
            let lines: Vec<String> = cases.iter().map(|(_, k)| case_line(k)).collect();
            let v: Vec<_> = cases.iter().map(|(_, k)| k).collect();
            ctx.emit(
                if lines.is_empty() {
                    "no cases".into()
                } else {
                    lines.join("\n")
                },
                serde_json::to_value(&v)?,
            );
        }
        ComplianceCmd::Approve { case } => {
            let k = c.case_approve(&case).await?;
            ctx.emit(
                format!(
                    "approved case {} v{}: your share is released to its decryption session only",
                    k.case, k.version
                ),
                json!({"case": k.case, "version": k.version, "approved": true}),
            );
        }
        ComplianceCmd::Reseal { case, jurisdiction } => {
            if let Some(j) = &jurisdiction {
                c.use_vault_in(j).await?;
            }
            super::escrow_cmd::reseal(ctx, &c, &case).await?
        }
        ComplianceCmd::Export {
            case,
            out,
            jurisdiction,
        } => {
            if let Some(j) = &jurisdiction {
                c.use_vault_in(j).await?;
            }
            let bar = if ctx.json {
                indicatif::ProgressBar::hidden()
            } else {
                let b = indicatif::ProgressBar::new(0);
                b.set_style(
                    indicatif::ProgressStyle::with_template(
                        "exporting {bar:30} {pos}/{len} messages {per_sec}",
                    )
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                );
                b
            };
            let progress = |done: u64, total: u64| {
                bar.set_length(total);
                bar.set_position(done);
            };
            let r = c.case_export(&case, &out, &progress).await?;
            bar.finish_and_clear();
            ctx.emit(
                format!(
                    "exported case {} v{} ({} of {} approvals): {} message(s), {} files, {} bytes in {}\nverify with: cloister export verify {}",
                    r.case,
                    r.version,
                    r.approvals,
                    r.threshold,
                    r.summary.messages,
                    r.summary.files,
                    r.summary.bytes,
                    out.display(),
                    out.display()
                ),
                serde_json::to_value(&r)?,
            );
        }
        ComplianceCmd::Retention(RetentionCmd::Set { kind, days }) => {
            c.retention_set(&kind, days).await?;
            ctx.emit(
                format!("{kind} conversations are kept {days} days"),
                json!({"kind": kind, "days": days}),
            );
        }
        ComplianceCmd::Retention(RetentionCmd::Run) => {
            let (r, p) = c.retention_run().await?;
            ctx.emit(
                format!(
                    "retention: {} epoch key(s) shredded, {} kept for holds; {} envelope(s) deleted, {} kept for holds",
                    r.shredded.len(),
                    r.held.len(),
                    p.deleted,
                    p.kept_for_hold
                ),
                json!({"shredded": r.shredded, "held_keys": r.held, "deleted": p.deleted, "kept_for_hold": p.kept_for_hold}),
            );
        }
    }
    Ok(())
}

pub fn export_cmd(ctx: &Ctx, ec: ExportCmd) -> Result<(), BoxError> {
    match ec {
        ExportCmd::Verify { dir, km_key } => {
            let pinned = km_key.as_deref().map(key32).transpose()?;
            let r = cloister_client::export::verify(&dir, pinned)?;
            ctx.emit(
                format!(
                    "OK: case {} of tenant {}: {} message(s), {} files ({} bytes) match the manifest; every envelope is proven in the vault log (checkpoint size {}); manifest signed by the case officer; KM key {}",
                    r.case,
                    r.tenant,
                    r.messages,
                    r.files,
                    r.bytes,
                    r.checkpoint_size,
                    r.km_sign_pk
                ),
                serde_json::to_value(&r)?,
            );
        }
    }
    Ok(())
}
