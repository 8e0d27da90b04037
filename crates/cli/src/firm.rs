//! Another firm on an existing messaging server, run in this process: its
//! own KM (pushing its notices to the server) and its own vault, each on
//! an ephemeral loopback port, the tenant registered with the server. The
//! demo's client firm and the tests' partner firms start this way.

use crate::{BoxError, open_km};
use cloister_crypto::passphrase::Cost;
use cloister_proto::TenantId;
use std::path::Path;
use std::sync::Arc;

/// A running partner firm.
pub struct PartnerFirm {
    pub tenant: TenantId,
    pub km: Arc<cloister_km::Km>,
    pub km_url: String,
    pub vault_url: String,
    /// The bootstrap admin's one-time code.
    pub admin_code: String,
    pub tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// How to start it.
pub struct FirmOptions<'a> {
    pub tenant: TenantId,
    pub km_passphrase: &'a [u8],
    pub cost: Cost,
    pub server_url: &'a str,
    pub operator_token: &'a str,
    /// How often the vault pulls its KM's deny list (and partner keys).
    pub vault_refresh: std::time::Duration,
    /// Serve over TLS with certificates from this CA.
    pub tls: Option<&'a crate::tls_args::LocalTls>,
}

/// Start a new firm in `dir/km` and `dir/vault`.
pub async fn start_partner_firm(dir: &Path, o: FirmOptions<'_>) -> Result<PartnerFirm, BoxError> {
    let (km, code) = open_km(
        &dir.join("km"),
        None,
        Some(&o.tenant),
        o.km_passphrase,
        o.cost,
        cloister_km::KmConfig::default(),
    )
    .await?;
    let admin_code = code.ok_or("the firm's KM was not freshly initialised")?;
    let (l, km_tls, km_url) = crate::tls_args::bind_local("partner-km", o.tls).await?;
    let router = cloister_km::http::router(km.clone());
    let mut tasks = vec![tokio::spawn(async move {
        if let Err(e) =
            cloister_http::serve_with(l, km_tls.as_ref(), router, std::future::pending()).await
        {
            tracing::error!("partner KM stopped: {e}");
        }
    })];
    tasks.extend(km.push_notices_to(o.server_url));
    let vault = Arc::new(
        cloister_vault::Vault::open_dir(&dir.join("vault"), Some((&o.tenant, km.info().sign_pk.0)))
            .await?,
    );
    vault.set_km_url(&km_url).await?;
    let (vl, vault_tls, vault_url) = crate::tls_args::bind_local("partner-vault", o.tls).await?;
    let vr = cloister_vault::router(vault.clone());
    tasks.push(tokio::spawn(async move {
        if let Err(e) =
            cloister_http::serve_with(vl, vault_tls.as_ref(), vr, std::future::pending()).await
        {
            tracing::error!("partner vault stopped: {e}");
        }
    }));
    tasks.push(tokio::spawn(
        vault.keep_standing(o.vault_refresh, std::future::pending()),
    ));
    cloister_client::register_tenant(
        &cloister_tls::http_client(),
        o.server_url,
        o.operator_token,
        &km.info(),
    )
    .await?;
    Ok(PartnerFirm {
        tenant: o.tenant,
        km,
        km_url,
        vault_url,
        admin_code,
        tasks,
    })
}
