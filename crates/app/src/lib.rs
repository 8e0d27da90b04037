//! The app: the device's web UI, served by the device's own process on a
//! loopback address (docs/adr/0027-the-app-a-loopback-web-ui.md).
//!
//! ```text
//!  browser ──GET /launch/SECRET (once)──▶ app: session cookie
//!  browser ──pages, forms, fetch──▶ app ──SDK (seal, open, verify)──▶ KM, server, vault
//!  browser ◀──Server-Sent Events (rendered messages)── app ◀──live socket── server
//! ```
//!
//! The browser only renders: device keys, room keys and plaintext stay in
//! this process, where the SDK does every cryptographic step.
#![forbid(unsafe_code)]

mod admin;
mod admin_controls;
mod admin_firms;
mod audit;
mod compliance;
mod connections;
mod directory;
mod events;
mod files;
mod guard;
mod live;
mod messaging;
mod pages;
mod room_tools;

use cloister_client::Client;
use cloister_proto::RoomId;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

/// How the app is started.
pub struct AppConfig {
    /// The device's home (as `cloister --home`).
    pub home: PathBuf,
    /// Where to listen: a loopback address (`127.0.0.1:0` picks a port).
    pub listen: std::net::SocketAddr,
    /// The HTTP client the SDK talks to the KM, server and vault with.
    pub http: reqwest::Client,
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("the app listens on a loopback address only, not {0}")]
    NotLoopback(std::net::SocketAddr),
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: String, reason: String },
    #[error("no device home at {0}: enrol first (`cloister enrol`)")]
    NoHome(String),
    #[error("{0}")]
    Random(String),
}

/// What the running app shares between requests.
pub(crate) struct App {
    home: PathBuf,
    http: reqwest::Client,
    /// `http://127.0.0.1:PORT`: the only Host and Origin accepted.
    origin: String,
    host: String,
    /// The launch secret, until it is spent.
    launch: Mutex<Option<[u8; 32]>>,
    /// Session ids handed out (cookies), by their SHA-256.
    sessions: Mutex<HashSet<[u8; 32]>>,
    /// The opened SDK client, once the keystore is unlocked.
    client: RwLock<Option<Arc<Client>>>,
    /// Rendered live events for the open pages.
    events: tokio::sync::broadcast::Sender<live::PageEvent>,
    /// Messages that arrived in each room since it was last shown.
    unread: Mutex<HashMap<RoomId, u64>>,
    /// Display names from the directory, by user id.
    names: Mutex<HashMap<String, String>>,
    /// Which rooms open pages show (their messages are not unread).
    viewing: live::Viewing,
    /// Exports running or done, by case.
    jobs: Mutex<HashMap<String, compliance::Job>>,
    /// The live feed's task (stopped when the app is locked).
    feed: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl App {
    pub(crate) fn client(&self) -> Option<Arc<Client>> {
        self.client.read().ok().and_then(|c| c.clone())
    }
}

/// A running app: its launch URL (open it once) and its task.
pub struct Running {
    pub url: String,
    pub launch_url: String,
    pub task: tokio::task::JoinHandle<()>,
}

/// Start the app: bind, and serve until the process ends.
pub async fn start(cfg: AppConfig) -> Result<Running, AppError> {
    if !cfg.listen.ip().is_loopback() {
        return Err(AppError::NotLoopback(cfg.listen));
    }
    if !cfg.home.join("keys.sealed").exists() {
        return Err(AppError::NoHome(cfg.home.display().to_string()));
    }
    // files a previous run was handing to the SDK when it stopped
    let _ = std::fs::remove_dir_all(cfg.home.join("app-scratch"));
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| AppError::Listen {
            addr: cfg.listen.to_string(),
            reason: e.to_string(),
        })?;
    let addr = listener.local_addr().map_err(|e| AppError::Listen {
        addr: cfg.listen.to_string(),
        reason: e.to_string(),
    })?;
    let host = format!("127.0.0.1:{}", addr.port());
    let secret =
        cloister_crypto::random_bytes::<32>().map_err(|e| AppError::Random(e.to_string()))?;
    let (events, _) = tokio::sync::broadcast::channel(1024);
    let app = Arc::new(App {
        home: cfg.home,
        http: cfg.http,
        origin: format!("http://{host}"),
        host: host.clone(),
        launch: Mutex::new(Some(secret)),
        sessions: Mutex::new(HashSet::new()),
        client: RwLock::new(None),
        events,
        unread: Mutex::new(HashMap::new()),
        names: Mutex::new(HashMap::new()),
        viewing: live::Viewing::new(),
        jobs: Mutex::new(HashMap::new()),
        feed: Mutex::new(None),
    });
    let router = router(app);
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!("the app stopped: {e}");
        }
    });
    Ok(Running {
        url: format!("http://{host}/"),
        launch_url: format!("http://{host}/launch/{}", hex::encode(secret)),
        task,
    })
}

fn router(app: Arc<App>) -> axum::Router {
    use axum::routing::{get, post};
    axum::Router::new()
        .route("/", get(pages::home))
        .route("/unlock", post(pages::unlock))
        .route("/lock", post(pages::lock))
        .route("/assets/app.js", get(pages::script))
        .route("/assets/app.css", get(pages::style))
        .route("/r/{room}", get(messaging::room_page))
        .route("/r/{room}/older", get(messaging::older))
        .route("/r/{room}/newer", get(messaging::newer))
        .route("/r/{room}/send", post(messaging::send))
        .route("/r/{room}/upload", post(files::upload))
        .route("/r/{room}/file/{seq}", get(files::download))
        .route("/r/{room}/people", get(room_tools::people))
        .route("/r/{room}/people/add", post(room_tools::add))
        .route("/r/{room}/people/remove", post(room_tools::remove))
        .route("/im", post(messaging::start_im))
        .route("/rooms", post(messaging::create_room))
        .route("/bridge", post(messaging::open_bridge))
        .route("/events", get(live::events))
        .route("/directory", get(directory::directory))
        .route(
            "/connections",
            get(connections::list).post(connections::ask),
        )
        .route("/connections/answer", post(connections::answer))
        .route("/connections/remove", post(connections::remove))
        .route("/admin/firms/trust", post(admin_firms::trust_add))
        .route("/admin/firms/remove", post(admin_firms::trust_remove))
        .route("/compliance/cases/{case}/scope", post(compliance::rescope))
        .route("/admin", get(admin::users))
        .route("/admin/users", post(admin::add_user))
        .route("/admin/users/disable", post(admin::disable_user))
        .route("/admin/devices/revoke", post(admin::revoke_device))
        .route("/admin/controls", get(admin_controls::controls))
        .route("/admin/groups", post(admin_controls::group_set))
        .route("/admin/entitle", post(admin_controls::entitle))
        .route("/admin/barriers", post(admin_controls::barrier_add))
        .route(
            "/admin/barriers/disable",
            post(admin_controls::barrier_disable),
        )
        .route("/admin/dlp", post(admin_controls::dlp_put))
        .route("/admin/firms", get(admin_firms::firms))
        .route("/admin/scim", post(admin_firms::scim_issue))
        .route("/admin/scim/revoke", post(admin_firms::scim_revoke))
        .route("/admin/audit", get(audit::audit))
        .route(
            "/compliance",
            get(compliance::search).post(compliance::search),
        )
        .route(
            "/compliance/cases",
            get(compliance::cases).post(compliance::open_case),
        )
        .route(
            "/compliance/cases/{case}/approve",
            post(compliance::approve),
        )
        .route("/compliance/cases/{case}/export", post(compliance::export))
        .route("/compliance/cases/{case}/verify", post(compliance::verify))
        .route(
            "/compliance/retention",
            get(compliance::retention).post(compliance::retention_set),
        )
        .route("/compliance/retention/run", post(compliance::retention_run))
        // an upload streams to the app's scratch directory, up to the
        // attachment limit (the SDK checks it again)
        .layer(axum::extract::DefaultBodyLimit::max(
            cloister_proto::limits::DEFAULT_MAX_ATTACHMENT as usize + 1,
        ))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            guard::guard,
        ))
        .route("/launch/{secret}", get(guard::launch))
        .layer(axum::middleware::from_fn(guard::headers))
        .with_state(app)
}
