//! `cloister km serve`: one KM on SQLite, or one of several KM processes
//! sharing a PostgreSQL database, of which the one holding the appender
//! lease is active and the others stand by.
//!
//! A standby listens from the start but answers every request with 503
//! `km_standby` (a load balancer's health check on `/v1/info` sends
//! traffic to the active one only). When it gets the lease (the active
//! process died: PostgreSQL freed its lock when its connection closed) it
//! opens the KM from the database, as a restart would, and serves. An
//! active KM that loses the lease's connection exits at once rather than
//! serve beside the one taking over; even if it did not, the audit log's
//! store refuses any append that does not continue the log.

use crate::BoxError;
use axum::Router;
use axum::extract::Request;
use axum::response::IntoResponse;
use cloister_crypto::passphrase::Cost;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tower::ServiceExt;

/// The lease two KMs of one tenant compete for.
const LEASE: &str = "cloister-km-appender";
/// How often a standby asks for the lease and the active one checks it.
const POLL: Duration = Duration::from_millis(500);

pub struct KmServe {
    pub data_dir: PathBuf,
    pub database_url: Option<String>,
    pub listen: String,
    /// The operations listener (`/metrics`, `/healthz`, `/readyz`).
    pub ops: crate::ops_args::OpsArgs,
    pub tls: Option<cloister_tls::ServerTls>,
    /// Where the master key is.
    pub custody: crate::custody::Custody,
    pub config: cloister_km::KmConfig,
    /// The messaging server to push notices to.
    pub server: Option<String>,
}

/// What a standby answers: alive at `/healthz`, 503 `km_standby` to
/// everything else (`/readyz` included, so a load balancer sends traffic to
/// the active KM only).
fn standby() -> Router {
    Router::new()
        .route(
            "/healthz",
            axum::routing::get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }),
        )
        .fallback(|| async {
            let mut r = cloister_http::ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "km_standby",
                "this KM is the standby: another KM process holds the appender lease",
            )
            .into_response();
            r.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
            r
        })
}

/// A router that serves whatever `slot` holds now.
fn switchable(slot: Arc<RwLock<Router>>) -> Router {
    Router::new().fallback(move |req: Request| {
        let router = slot.read().map(|r| r.clone()).unwrap_or_else(|_| standby());
        async move {
            match router.oneshot(req).await {
                Ok(r) => r,
                Err(never) => match never {},
            }
        }
    })
}

fn ops_router(km: &Arc<cloister_km::Km>) -> Router {
    cloister_http::ops::ops_router(km.metrics().clone(), km.ready_check())
}

pub async fn run(
    o: KmServe,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), BoxError> {
    let l = tokio::net::TcpListener::bind(&o.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", o.listen))?;
    let addr = l.local_addr()?;
    let scheme = if o.tls.is_some() { "https" } else { "http" };
    let pg = match &o.database_url {
        Some(u) => cloister_store::backend_of(u)? == cloister_store::Backend::Postgres,
        None => false,
    };
    if !pg {
        let (km, _) = open(&o).await?;
        eprintln!(
            "KM for tenant {} listening on {scheme}://{addr}; {}",
            km.tenant(),
            crate::custody::describe(&o.custody)
        );
        if let Some(server) = &o.server {
            km.push_notices_to(server);
        }
        let (metrics, ready) = (km.metrics().clone(), km.ready_check());
        return o
            .ops
            .run_service(
                l,
                o.tls.as_ref(),
                cloister_km::http::router(km),
                metrics,
                ready,
                shutdown,
            )
            .await;
    }
    // Several KM processes may share this database: serve as a standby
    // until this one holds the lease.
    let slot = Arc::new(RwLock::new(standby()));
    let app = switchable(slot.clone());
    let ops_slot = Arc::new(RwLock::new(standby()));
    o.ops
        .serve(o.tls.as_ref(), switchable(ops_slot.clone()))
        .await?;
    let tls = o.tls.clone();
    let served =
        tokio::spawn(
            async move { cloister_http::serve_with(l, tls.as_ref(), app, shutdown).await },
        );
    let url = o.database_url.clone().unwrap_or_default();
    eprintln!("KM listening on {scheme}://{addr}; waiting for the appender lease");
    let mut lease = cloister_store::Lease::acquire(&url, LEASE, POLL, || {
        eprintln!("standby: another KM process holds the appender lease; taking over when it goes")
    })
    .await?;
    let (km, _) = open(&o).await?;
    if let Some(server) = &o.server {
        km.push_notices_to(server);
    }
    if let Ok(mut r) = slot.write() {
        *r = cloister_km::http::router(km.clone());
    }
    if let Ok(mut r) = ops_slot.write() {
        *r = ops_router(&km);
    }
    eprintln!(
        "KM for tenant {} active on {scheme}://{addr} (holds the appender lease); {}",
        km.tenant(),
        crate::custody::describe(&o.custody)
    );
    tokio::select! {
        e = lease.lost(POLL) => {
            // Never serve beside the process that takes over.
            eprintln!("{e}; exiting so that another KM process takes over");
            std::process::exit(75);
        }
        r = served => {
            r.map_err(|e| format!("KM server task: {e}"))??;
        }
    }
    Ok(())
}

async fn open(o: &KmServe) -> Result<(Arc<cloister_km::Km>, Option<String>), BoxError> {
    crate::open_km_with(
        &o.data_dir,
        o.database_url.as_deref(),
        None,
        &o.custody,
        Cost::DEFAULT,
        o.config.clone(),
    )
    .await
}
