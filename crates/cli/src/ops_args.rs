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
