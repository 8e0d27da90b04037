//! The operations listener every service can open beside its API:
//! `/metrics` (Prometheus text), `/healthz`, `/readyz`.

use crate::BoxError;
use axum::Router;

#[derive(clap::Args, Debug, Clone, Default)]
pub struct OpsArgs {
    /// Serve /metrics, /healthz and /readyz on this address (host:port),
    /// apart from the API; with the listener's TLS when it has one.
    #[arg(long, env = "CLOISTER_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<String>,
}

impl OpsArgs {
    /// Serve a service: its operations listener (if asked for) with
    /// `metrics` and `ready`, then its API on `l` until `shutdown`.
    pub async fn run_service(
        &self,
        l: tokio::net::TcpListener,
        tls: Option<&cloister_tls::ServerTls>,
        api: Router,
        metrics: std::sync::Arc<cloister_http::ops::Metrics>,
        ready: cloister_http::ops::ReadyCheck,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), BoxError> {
        self.serve(tls, cloister_http::ops::ops_router(metrics, ready))
            .await?;
        cloister_http::serve_with(l, tls, api, shutdown).await?;
        Ok(())
    }

    /// Bind the operations listener, if asked for, and serve `router` on
    /// it until the process ends.
    pub async fn serve(
        &self,
        tls: Option<&cloister_tls::ServerTls>,
        router: Router,
    ) -> Result<(), BoxError> {
        let Some(addr) = &self.metrics_listen else {
            return Ok(());
        };
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot listen on {addr} (--metrics-listen): {e}"))?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        eprintln!("metrics on {scheme}://{}/metrics", l.local_addr()?);
        let tls = tls.cloned();
        tokio::spawn(async move {
            if let Err(e) =
                cloister_http::serve_with(l, tls.as_ref(), router, std::future::pending()).await
            {
                tracing::error!("the operations listener stopped: {e}");
            }
        });
        Ok(())
    }
}
