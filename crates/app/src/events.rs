//! A room's membership log shown inline with its messages: who created
//! it, who was added or removed (and by what), settings, locks, and each
//! new key epoch, from the log this device verified.

use crate::App;
use cloister_proto::room::{Action, Statement};
use maud::{Markup, html};

/// Whether a statement starts a new key epoch.
fn new_epoch(a: &Action) -> bool {
    matches!(
        a,
        Action::Remove { .. }
            | Action::Leave
            | Action::Evict { .. }
            | Action::Ban { .. }
            | Action::Rekey { .. }
    )
}

/// What a statement says, in words.
fn say(app: &App, s: &Statement) -> String {
    let who = app.name_of(s.actor_user.as_str());
    let name = |u: &cloister_proto::UserId| app.name_of(u.as_str());
    match &s.action {
        Action::Create { members, .. } => {
            let others: Vec<String> = members.iter().map(&name).collect();
            if others.is_empty() {
                format!("{who} created the room")
            } else {
                format!("{who} created the room with {}", others.join(", "))
            }
        }
        Action::Add { user } => format!("{who} added {}", name(user)),
        Action::Remove { user } => format!("{who} removed {}", name(user)),
        Action::Leave => format!("{who} left"),
        Action::Promote { user } => format!("{who} made {} an owner", name(user)),
        Action::Demote { user } => format!("{who} made {} a member", name(user)),
        Action::Settings { .. } => format!("{who} changed the room's settings"),
        Action::Join => format!("{who} joined"),
        Action::Evict { user, reason } => {
            format!(
                "{} was removed by an information barrier: {reason}",
                name(user)
            )
        }
        Action::Ban {
            user,
            by,
            justification,
        } => format!("{} was banned by {}: {justification}", name(user), name(by)),
        Action::Lock { by, justification } => {
            format!("{} locked the room: {justification}", name(by))
        }
        Action::Unlock { by, justification } => {
            format!("{} unlocked the room: {justification}", name(by))
        }
        Action::Rekey { by, reason } => {
            format!("{} rotated the room's key: {reason}", name(by))
        }
    }
}

/// One log statement as a list item.
pub(crate) fn render_statement(app: &App, s: &Statement) -> Markup {
    html! {
        li.event id={ "e" (s.seq) } {
            p {
                (say(app, s))
                @if new_epoch(&s.action) { " · a new key epoch begins" }
                " "
                time datetime=(s.ts) { (crate::pages::when(s.ts)) }
            }
        }
    }
}

/// The statements with `lo <= ts < hi`, for a page of history.
pub(crate) fn between(all: &[Statement], lo: u64, hi: u64) -> Vec<&Statement> {
    all.iter().filter(|s| s.ts >= lo && s.ts < hi).collect()
}
