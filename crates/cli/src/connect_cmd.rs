//! `cloister connect …`: connections with users of other (trusted) firms.

use super::Ctx;
use clap::Subcommand;
use cloister_cli::BoxError;
use cloister_client::ConnectionView;
use cloister_proto::UserId;
use serde_json::json;

#[derive(Subcommand)]
pub enum ConnectCmd {
    /// Ask a user of another firm to connect (needs external_chat).
    Request { user: String },
    /// Accept a request addressed to you.
    Accept { id: String },
    /// Reject a request addressed to you.
    Reject { id: String },
    /// Your connections and requests.
    List,
    /// End a connection.
    Remove { id: String },
}

fn line(v: &ConnectionView) -> String {
    format!("{}  {} → {}  {}", v.id, v.from, v.to, v.state)
}

pub async fn connect_cmd(ctx: &Ctx, cmd: ConnectCmd) -> Result<(), BoxError> {
    let c = ctx.client()?;
    let v = match cmd {
        ConnectCmd::Request { user } => {
            let to: UserId = user
                .parse()
                .map_err(|e| format!("{user:?} is not a user id: {e}"))?;
            c.connect_request(&to).await?
        }
        ConnectCmd::Accept { id } => c.connect_answer(&id, true).await?,
        ConnectCmd::Reject { id } => c.connect_answer(&id, false).await?,
        ConnectCmd::Remove { id } => c.connect_remove(&id).await?,
        ConnectCmd::List => {
            let all = c
                .connections()
                .await?
                .iter()
                .map(ConnectionView::of)
                .collect::<Result<Vec<_>, _>>()?;
            let text = if all.is_empty() {
                "no connections".to_owned()
            } else {
                all.iter().map(line).collect::<Vec<_>>().join("\n")
            };
            ctx.emit(text, json!(all));
            return Ok(());
        }
    };
    ctx.emit(line(&v), serde_json::to_value(&v)?);
    Ok(())
}
