//! `cloister device …`: this device's certificate and the user's devices.

use super::{Ctx, parse};
use clap::Subcommand;
use cloister_cli::BoxError;
use cloister_proto::DeviceId;
use serde_json::json;

#[derive(Subcommand)]
pub enum DeviceCmd {
    /// Make this device's keys before enrolling (an MDM endorses them for
    /// a tenant that requires attestation); prints the public keys.
    Keygen,
    /// This device's certificate: when it was issued and when it expires
    /// (devices renew it by themselves after two thirds of its life).
    Show,
    /// Renew this device's certificate now (no code; refused once it
    /// expired or the device was revoked).
    Renew,
    /// My devices and their standing.
    List,
    /// Revoke one of my devices (a lost laptop, from my phone); an admin
    /// may revoke any device of the firm. Takes effect at the KM and the
    /// server at once.
    Revoke { device: String },
}

pub async fn device_cmd(ctx: &Ctx, dc: DeviceCmd) -> Result<(), BoxError> {
    if let DeviceCmd::Keygen = dc {
        return super::enrol_cmd::device_keygen(ctx);
    }
    let c = ctx.client()?;
    match dc {
        DeviceCmd::Keygen => {}
        DeviceCmd::Show => {
            let (issued, not_after) = c.cert_validity()?;
            ctx.emit(
                format!(
                    "device {} of {}: certificate issued {issued}, valid until {not_after} (Unix seconds)",
                    c.device(),
                    c.user()
                ),
                json!({"device": c.device(), "user": c.user(), "issued_at": issued, "not_after": not_after}),
            );
        }
        DeviceCmd::Renew => {
            let cert = c.renew_cert().await?;
            ctx.emit(
                format!("certificate renewed: valid until {}", cert.not_after),
                json!({"device": cert.device, "issued_at": cert.issued_at, "not_after": cert.not_after}),
            );
        }
        DeviceCmd::List => {
            let devices = c.my_devices().await?;
            let me = c.device();
            let human = devices
                .iter()
                .map(|d| {
                    let this = if d.device == me { " (this device)" } else { "" };
                    format!("{} {} issued {}{this}", d.device, d.status, d.issued_at)
                })
                .collect::<Vec<_>>()
                .join("\n");
            ctx.emit(human, serde_json::to_value(&devices)?);
        }
        DeviceCmd::Revoke { device } => {
            let device: DeviceId = parse(&device)?;
            c.revoke_device(&device).await?;
            ctx.emit(
                format!("device {device} revoked"),
                json!({"device": device, "revoked": true}),
            );
        }
    }
    Ok(())
}
