//! This device's certificate over its life: renewed without a code while
//! in good standing, and the user's other devices (a lost one revoked from
//! here).

use super::*;
use cloister_proto::km::{AdminResponse, DeviceRecord, SignedCert};
use cloister_proto::server::RegisterDevice;

impl Client {
    /// This device's current certificate (as renewed).
    pub fn cert(&self) -> SignedCert {
        self.cert
            .lock()
            .map(|c| c.clone())
            .unwrap_or_else(|_| self.profile.cert.clone())
    }

    /// The roles this device's certificate carries.
    pub fn roles(&self) -> Result<Vec<cloister_proto::km::Role>> {
        Ok(signed::verify_cert(&self.profile.km_sign_pk.0, &self.cert())?.roles)
    }

    /// This device's certificate, parsed: (issued at, not after), seconds.
    pub fn cert_validity(&self) -> Result<(u64, u64)> {
        let c = signed::verify_cert(&self.profile.km_sign_pk.0, &self.cert())?;
        Ok((c.issued_at, c.not_after))
    }

    /// Ask the KM for a fresh certificate (same keys, current roles, a new
    /// expiry) and give it to the server. Refused once the certificate
    /// expired or the device was revoked: enrol again with a code.
    pub async fn renew_cert(&self) -> Result<DeviceCert> {
        let signed: SignedCert = self.km_send(KmOp::RenewCert).await?;
        let cert = signed::verify_cert(&self.profile.km_sign_pk.0, &signed)?;
        if cert.device != self.device()
            || cert.hpke_pk.0 != self.keys.hpke_pk()
            || cert.user != self.profile.user
        {
            return Err(ClientError::Local(
                "the KM renewed a certificate for other keys".into(),
            ));
        }
        let _: serde_json::Value = api::send(
            self.http
                .post(format!("{}/v1/devices", self.profile.server))
                .json(&RegisterDevice {
                    cert: signed.clone(),
                }),
        )
        .await?;
        let mut profile = self.profile.clone();
        profile.cert = signed.clone();
        self.home.save_profile(&profile)?;
        if let Ok(mut c) = self.cert.lock() {
            *c = signed;
        }
        // sessions made under the old certificate end with it
        if let Ok(mut t) = self.token.lock() {
            *t = None;
        }
        Ok(cert)
    }

    /// Renew when two thirds of the certificate's life are gone. A failed
    /// renewal is logged; the request goes on under the current one.
    pub(crate) async fn renew_if_due(&self) {
        let Ok((issued, not_after)) = self.cert_validity() else {
            return;
        };
        let now = now_secs();
        if now >= not_after || now < issued + (not_after.saturating_sub(issued)) * 2 / 3 {
            return;
        }
        if self
            .renewing
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            return;
        }
        if let Err(e) = self.renew_cert().await {
            tracing::warn!("certificate renewal failed: {e}");
        }
        self.renewing
            .store(false, std::sync::atomic::Ordering::Release);
    }

    /// This user's devices and their standing.
    pub async fn my_devices(&self) -> Result<Vec<DeviceRecord>> {
        self.km_request(KmOp::MyDevices).await
    }

    /// Revoke a device at the KM and the server: one of this user's own
    /// (a lost laptop), or, for an admin, any device of the tenant.
    pub async fn revoke_device(&self, device: &DeviceId) -> Result<()> {
        let r: AdminResponse = self
            .km_request(KmOp::RevokeDevice { device: *device })
            .await?;
        self.forward_notice(r).await
    }
}
