//! Notices the KM pushes to the messaging server itself (SCIM changes have
//! no admin device to forward them): user and device standing changes in
//! order, then the newest controls. At start the KM re-sends the standing
//! of every disabled user and revoked device, so a notice lost in a crash
//! is sent again.

use super::*;
use std::collections::VecDeque;

#[derive(Default)]
pub(crate) struct Notifier {
    /// Set once the KM pushes to a server.
    server: std::sync::OnceLock<String>,
    wake: tokio::sync::Notify,
    pending: Mutex<VecDeque<SignedNotice>>,
}

impl Notifier {
    /// The messaging server, once the KM pushes to one.
    pub fn server(&self) -> Option<String> {
        self.server.get().cloned()
    }

    pub fn wake(&self) {
        self.wake.notify_one();
    }

    pub fn queue(&self, n: SignedNotice) {
        if self.server.get().is_none() {
            return;
        }
        if let Ok(mut p) = self.pending.lock() {
            p.push_back(n);
        }
        self.wake();
    }
}

impl Km {
    /// Push notices to the messaging server at `server` until the KM stops
    /// (without this an admin device forwards them). Once per KM.
    pub fn push_notices_to(self: &Arc<Self>, server: &str) -> Option<tokio::task::JoinHandle<()>> {
        self.notifier.server.set(server.to_owned()).ok()?;
        let server = server.to_owned();
        let km = Arc::downgrade(self);
        Some(tokio::spawn(async move {
            let http = cloister_tls::http_builder()
                .timeout(std::time::Duration::from_secs(10))
                .build()
                .unwrap_or_default();
            let url = format!("{}/v1/notices", server.trim_end_matches('/'));
            let mut sent_version = None;
            let mut resynced = false;
            let mut swept_ok = true;
            loop {
                let Some(km) = km.upgrade() else { return };
                if !resynced {
                    resynced = km.queue_standing().await.is_ok();
                }
                let before = sent_version;
                let ok = km.push_pending(&http, &url, &mut sent_version).await;
                // the controls changed: move walled members out of rooms
                // (unless a sweep already ran on this version, as the
                // request that added a barrier runs one itself)
                if ok && (sent_version != before || !swept_ok) && !km.swept_current() {
                    let (_, pending) = km.evict_walled().await;
                    swept_ok = pending.is_empty();
                }
                let wait = if ok { 5 } else { 1 };
                let notify = km.notifier_wait();
                drop(km);
                let _ = tokio::time::timeout(std::time::Duration::from_secs(wait), notify).await;
            }
        }))
    }

    fn notifier_wait(self: &Arc<Self>) -> impl std::future::Future<Output = ()> + use<> {
        let me = self.clone();
        async move { me.notifier.wake.notified().await }
    }

    /// Queue the current standing of every disabled user and revoked device.
    async fn queue_standing(&self) -> Result<(), Denied> {
        let (devices, users) = self.store.km_deny_list().await.map_err(store_err)?;
        let ts = now_millis();
        for u in users.iter().filter_map(|u| u.parse().ok()) {
            let n = Notice::UserDisabled {
                tenant: self.tenant.clone(),
                user: u,
                ts,
            };
            self.notifier
                .queue(sign_notice(&self.signer, &n).map_err(Denied::internal)?);
        }
        for d in devices.iter().filter_map(|d| d.parse().ok()) {
            let n = Notice::DeviceRevoked {
                tenant: self.tenant.clone(),
                device: d,
                ts,
            };
            self.notifier
                .queue(sign_notice(&self.signer, &n).map_err(Denied::internal)?);
        }
        Ok(())
    }

    /// Send what is pending, then the controls if they changed. False if
    /// the server could not be reached (try again soon).
    async fn push_pending(
        &self,
        http: &reqwest::Client,
        url: &str,
        sent_version: &mut Option<u64>,
    ) -> bool {
        loop {
            let next = self
                .notifier
                .pending
                .lock()
                .ok()
                .and_then(|p| p.front().cloned());
            let Some(n) = next else { break };
            match post(http, url, &n).await {
                Delivery::Done => {
                    if let Ok(mut p) = self.notifier.pending.lock() {
                        p.pop_front();
                    }
                }
                Delivery::Retry => return false,
            }
        }
        let version = self.dir().version;
        if *sent_version == Some(version) {
            return true;
        }
        let Ok(n) = self.signed_controls() else {
            return false;
        };
        match post(http, url, &n).await {
            Delivery::Done => {
                *sent_version = Some(version);
                true
            }
            Delivery::Retry => false,
        }
    }
}

enum Delivery {
    Done,
    Retry,
}

async fn post(http: &reqwest::Client, url: &str, n: &SignedNotice) -> Delivery {
    let body = json!({ "notice": n });
    match http.post(url).json(&body).send().await {
        Ok(r) if r.status().is_success() => Delivery::Done,
        // refused for good (stale, unknown device): nothing to retry
        Ok(r) if r.status().is_client_error() => {
            tracing::warn!(status = %r.status(), "messaging server refused a KM notice");
            Delivery::Done
        }
        Ok(r) => {
            tracing::warn!(status = %r.status(), "messaging server failed a KM notice; retrying");
            Delivery::Retry
        }
        Err(e) => {
            tracing::warn!("messaging server unreachable for KM notices: {e}");
            Delivery::Retry
        }
    }
}
