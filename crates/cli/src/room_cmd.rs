//! `cloister room …`: rooms, their members and their policies.

use super::{Ctx, parse, resolve_room};
use clap::Subcommand;
use cloister_cli::BoxError;
use cloister_proto::UserId;
use cloister_proto::room::{RoomMode, RoomSettings};
use serde_json::json;

#[derive(Subcommand)]
pub enum RoomCmd {
    /// Create a room; prints its id.
    Create {
        name: String,
        #[arg(long = "member")]
        members: Vec<String>,
        /// New members cannot read messages from before they joined.
        #[arg(long)]
        no_history: bool,
        #[arg(long)]
        members_may_invite: bool,
        /// Only owners post (announcements).
        #[arg(long)]
        read_only: bool,
        /// Anyone of the firm may join (needs create_public_rooms; implies --discoverable).
        #[arg(long)]
        public: bool,
        /// Listed in the firm's room directory.
        #[arg(long)]
        discoverable: bool,
        /// No copy, forward or export of messages (cannot be removed later).
        #[arg(long)]
        copy_protected: bool,
        #[arg(long)]
        max_members: Option<u32>,
        /// Shared with users of other firms (connected users; never public
        /// or discoverable; fixed at creation).
        #[arg(long)]
        external: bool,
        /// How the room's keys are made: `managed` (the firm's KM) or `mls`
        /// (the members' devices, RFC 9420; fixed at creation).
        #[arg(long, default_value = "managed", value_parser = parse_mode)]
        mode: RoomMode,
    },
    /// A bridged room: talk with CONTACT on NETWORK (`matrix`) through the
    /// firm's gateway (needs the `federation` entitlement).
    Bridge {
        network: String,
        contact: String,
        /// The firm's gateway user (default: gateway@<your firm>).
        #[arg(long)]
        gateway: Option<String>,
        /// More of the firm's users in the conversation.
        #[arg(long = "member")]
        members: Vec<String>,
    },
    /// MLS room: bring this device's group up to date and make it match
    /// the membership (add new devices of members, remove leaves that must
    /// go); prints the epoch and the devices holding a leaf.
    Sync {
        room: String,
    },
    /// MLS room: a fresh key for this device's leaf (a commit with a new
    /// path: post-compromise security).
    Update {
        room: String,
    },
    /// MLS rooms: hand what this device has read to another device of
    /// yours (signed by this device, sealed to the other's certified key;
    /// carry the file over any channel).
    HistoryExport {
        /// The receiving device (of the same user).
        #[arg(long)]
        to: String,
        /// Only these rooms (repeatable; default: every MLS room).
        #[arg(long = "room")]
        rooms: Vec<String>,
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// MLS rooms: take a history file another device of yours made for
    /// this one (every message's sender and words are checked).
    HistoryImport {
        file: std::path::PathBuf,
    },
    Add {
        room: String,
        user: String,
    },
    Remove {
        room: String,
        user: String,
    },
    Leave {
        room: String,
    },
    /// Join a public room.
    Join {
        room: String,
    },
    Promote {
        room: String,
        user: String,
    },
    /// Make an owner a plain member again.
    Demote {
        room: String,
        user: String,
    },
    List,
    /// Discoverable rooms of the firm.
    Directory,
    Members {
        room: String,
    },
    /// Show or change settings.
    Settings {
        room: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        history: Option<bool>,
        #[arg(long)]
        members_may_invite: Option<bool>,
        #[arg(long)]
        read_only: Option<bool>,
        #[arg(long)]
        public: Option<bool>,
        #[arg(long)]
        discoverable: Option<bool>,
        #[arg(long)]
        copy_protected: Option<bool>,
        #[arg(long)]
        max_members: Option<u32>,
    },
}

pub(crate) fn parse_mode(s: &str) -> Result<RoomMode, String> {
    match s {
        "managed" => Ok(RoomMode::Managed),
        "mls" => Ok(RoomMode::Mls),
        _ => Err(format!("unknown room mode {s:?}: managed or mls")),
    }
}

fn describe(s: &RoomSettings) -> String {
    format!(
        "name={:?} mode={} view_history={} members_may_invite={} read_only={} public={} discoverable={} copy_protected={} max_members={} external={}",
        s.name,
        s.mode.name(),
        s.view_history,
        s.members_may_invite,
        s.read_only,
        s.public,
        s.discoverable,
        s.copy_protected,
        s.max_members.map_or("-".into(), |m| m.to_string()),
        s.external
    )
}

pub async fn room_cmd(ctx: &Ctx, rc: RoomCmd) -> Result<(), BoxError> {
    let c = ctx.client()?;
    let members_json = |st: &cloister_policy::RoomState| json!({"room": st.room, "epoch": st.epoch, "members": st.members, "owners": st.owners, "settings": st.settings, "locked": st.locked});
    match rc {
        RoomCmd::Create {
            name,
            members,
            no_history,
            members_may_invite,
            read_only,
            public,
            discoverable,
            copy_protected,
            max_members,
            external,
            mode,
        } => {
            let members = members
                .iter()
                .map(|m| parse(m))
                .collect::<Result<Vec<UserId>, _>>()?;
            let settings = RoomSettings {
                name,
                view_history: !no_history,
                members_may_invite,
                read_only,
                public,
                discoverable: discoverable || public,
                copy_protected,
                max_members,
                external,
                mode,
                bridge: None,
            };
            let room = c.create_room(settings, &members).await?;
            ctx.emit(room.to_hex(), json!({"room": room}));
        }
        RoomCmd::Bridge {
            network,
            contact,
            gateway,
            members,
        } => {
            let gateway = match gateway {
                Some(g) => parse(&g)?,
                None => parse(&format!("gateway@{}", c.user().tenant()))?,
            };
            let members = members
                .iter()
                .map(|m| parse(m))
                .collect::<Result<Vec<UserId>, _>>()?;
            let room = c
                .open_bridge(&network, &contact, &gateway, &members)
                .await?;
            ctx.emit(room.to_hex(), json!({"room": room}));
        }
        RoomCmd::Sync { room } => {
            let room = resolve_room(&c, &room).await?;
            c.replenish_key_packages().await?;
            c.mls_reconcile(&room).await?;
            let roster = c.mls_roster(&room).await?;
            let epoch = c.mls_sync(&room).await?;
            let devices: Vec<_> = roster
                .iter()
                .map(|l| json!({"user": l.user, "device": l.device}))
                .collect();
            ctx.emit(
                format!(
                    "MLS group at epoch {epoch}; leaves: {}",
                    roster
                        .iter()
                        .map(|l| format!("{} ({})", l.user, l.device))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                json!({"room": room, "epoch": epoch, "leaves": devices}),
            );
        }
        RoomCmd::HistoryExport { to, rooms, out } => {
            let to: cloister_proto::DeviceId = to.parse().map_err(|e| format!("--to: {e}"))?;
            let mut ids = Vec::new();
            for r in &rooms {
                ids.push(resolve_room(&c, r).await?);
            }
            let (sealed, n) = c.mls_history_export(&to, &ids).await?;
            std::fs::write(&out, serde_json::to_vec(&sealed)?)
                .map_err(|e| format!("{}: {e}", out.display()))?;
            ctx.emit(
                format!("{n} message(s) sealed for device {to} in {}", out.display()),
                json!({"to": to, "messages": n, "file": out}),
            );
        }
        RoomCmd::HistoryImport { file } => {
            let bytes = std::fs::read(&file).map_err(|e| format!("{}: {e}", file.display()))?;
            let sealed: cloister_crypto::history::SealedHistory = serde_json::from_slice(&bytes)
                .map_err(|e| format!("{}: not a history file: {e}", file.display()))?;
            let n = c.mls_history_import(&sealed).await?;
            ctx.emit(
                format!("{n} message(s) taken from device {}", sealed.from),
                json!({"from": sealed.from, "new_messages": n}),
            );
        }
        RoomCmd::Update { room } => {
            let room = resolve_room(&c, &room).await?;
            let epoch = c.mls_update(&room).await?;
            ctx.emit(
                format!("new leaf key; MLS group at epoch {epoch}"),
                json!({"room": room, "epoch": epoch}),
            );
        }
        RoomCmd::Add { room, user } => {
            let room = resolve_room(&c, &room).await?;
            let st = c.add_member(&room, &parse(&user)?).await?;
            ctx.emit(
                format!("added {user}; room at epoch {}", st.epoch),
                members_json(&st),
            );
        }
        RoomCmd::Remove { room, user } => {
            let room = resolve_room(&c, &room).await?;
            let st = c.remove_member(&room, &parse(&user)?).await?;
            ctx.emit(
                format!("removed {user}; room at epoch {}", st.epoch),
                members_json(&st),
            );
        }
        RoomCmd::Leave { room } => {
            let room = resolve_room(&c, &room).await?;
            let st = c.leave(&room).await?;
            ctx.emit(format!("left room {room}"), members_json(&st));
        }
        RoomCmd::Join { room } => {
            let room = match room.parse() {
                Ok(r) => r,
                Err(_) => c.resolve_public_room(&room).await?,
            };
            let st = c.join(&room).await?;
            ctx.emit(
                format!("joined {}; room at epoch {}", st.settings.name, st.epoch),
                members_json(&st),
            );
        }
        RoomCmd::Promote { room, user } => {
            let room = resolve_room(&c, &room).await?;
            let st = c.promote(&room, &parse(&user)?).await?;
            ctx.emit(format!("{user} is now an owner"), members_json(&st));
        }
        RoomCmd::Demote { room, user } => {
            let room = resolve_room(&c, &room).await?;
            let st = c.demote(&room, &parse(&user)?).await?;
            ctx.emit(format!("{user} is no longer an owner"), members_json(&st));
        }
        RoomCmd::List => {
            let rooms = c.list_rooms().await?;
            let lines: Vec<String> = rooms
                .iter()
                .map(|r| {
                    format!(
                        "{} {:?} {:<20} epoch {} members {}",
                        r.room,
                        r.kind,
                        r.settings.name,
                        r.epoch,
                        r.members.len()
                    )
                })
                .collect();
            ctx.emit(lines.join("\n"), serde_json::to_value(&rooms)?);
        }
        RoomCmd::Directory => {
            let rooms = c.room_directory().await?;
            let lines: Vec<String> = rooms
                .iter()
                .map(|r| {
                    format!(
                        "{} {:<20} {} members{}",
                        r.room,
                        r.settings.name,
                        r.members.len(),
                        if r.settings.public {
                            " (public: join it)"
                        } else {
                            ""
                        }
                    )
                })
                .collect();
            ctx.emit(lines.join("\n"), serde_json::to_value(&rooms)?);
        }
        RoomCmd::Members { room } => {
            let room = resolve_room(&c, &room).await?;
            let st = c.room_state(&room).await?;
            let mut lines: Vec<String> = st
                .members
                .iter()
                .map(|m| {
                    format!(
                        "{m}{}",
                        if st.owners.contains(m) {
                            " (owner)"
                        } else {
                            ""
                        }
                    )
                })
                .collect();
            if let Some(l) = &st.locked {
                lines.push(format!("LOCKED by {}: {}", l.by, l.justification));
            }
            ctx.emit(lines.join("\n"), members_json(&st));
        }
        RoomCmd::Settings {
            room,
            name,
            history,
            members_may_invite,
            read_only,
            public,
            discoverable,
            copy_protected,
            max_members,
        } => {
            let room = resolve_room(&c, &room).await?;
            let mut st = c.room_state(&room).await?;
            let mut s = st.settings.clone();
            let mut changed = false;
            let mut set = |f: &mut dyn FnMut(&mut RoomSettings)| {
                f(&mut s);
                changed = true;
            };
            if let Some(n) = name {
                set(&mut |s| s.name = n.clone());
            }
            if let Some(h) = history {
                set(&mut |s| s.view_history = h);
            }
            if let Some(m) = members_may_invite {
                set(&mut |s| s.members_may_invite = m);
            }
            if let Some(r) = read_only {
                set(&mut |s| s.read_only = r);
            }
            if let Some(p) = public {
                set(&mut |s| {
                    s.public = p;
                    s.discoverable |= p;
                });
            }
            if let Some(d) = discoverable {
                set(&mut |s| s.discoverable = d);
            }
            if let Some(cp) = copy_protected {
                set(&mut |s| s.copy_protected = cp);
            }
            if let Some(m) = max_members {
                set(&mut |s| s.max_members = Some(m));
            }
            if changed {
                st = c.set_settings(&room, s).await?;
            }
            ctx.emit(describe(&st.settings), members_json(&st));
        }
    }
    Ok(())
}
