//! Device attestation: a tenant that requires it certifies only devices
//! whose enrolment carries evidence its policy accepts: an endorsement of
//! the device's keys by the tenant's MDM key. Rejected, replayed and
//! expired evidence is refused; a rejected or expired one does not spend
//! the code (a replay does: it is an attack).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use cloister_attest::mdm::{Endorsement, endorse};
use cloister_client::{Client, EnrolOptions, Storage};
use cloister_crypto::{DeviceKeys, KmSigner};
use cloister_proto::b64::Fixed;
use cloister_proto::km::{AttestationPolicy, Evidence, Role};
use cloister_proto::{UserId, now_secs};
use common::procs::{cmd, json, ok};
use common::*;

fn endorsement(user: &UserId, keys: &DeviceKeys, serial: &str, from: u64, to: u64) -> Endorsement {
    Endorsement {
        tenant: user.tenant(),
        user: user.clone(),
        sign_pk: Fixed(keys.sign_pk()),
        hpke_pk: Fixed(keys.hpke_pk()),
        device: serial.into(),
        issued_at: from,
        expires_at: to,
        nonce: Fixed(cloister_crypto::random_bytes().unwrap()),
    }
}

async fn enrol(
    w: &World,
    user: &UserId,
    code: &str,
    keys: &DeviceKeys,
    evidence: Option<Evidence>,
) -> Result<Client, cloister_client::ClientError> {
    Client::enrol_with(
        w.http.clone(),
        &w.stack.server_url,
        &w.stack.km_url,
        user,
        code,
        Storage::Memory,
        EnrolOptions {
            keys: Some(DeviceKeys::from_secret_bytes(keys.to_secret_bytes().expose()).unwrap()),
            evidence,
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_devices_with_accepted_evidence_are_certified() {
    let w = World::new().await;
    let mdm = KmSigner::generate().unwrap();
    let policy = AttestationPolicy {
        required: true,
        formats: vec!["mdm".into()],
        mdm_keys: vec![Fixed(mdm.public())],
        max_age_secs: 3_600,
    };
    // only an admin sets it, and only a policy that can work
    let bob = w.user("bob").await;
    let e = bob.admin_attestation_set(policy.clone()).await.unwrap_err();
    assert_eq!(e.code(), Some("not_admin"), "{e}");
    for bad in [
        AttestationPolicy {
            formats: vec!["tpm9".into()],
            ..policy.clone()
        },
        AttestationPolicy {
            mdm_keys: vec![],
            ..policy.clone()
        },
        AttestationPolicy {
            formats: vec![],
            ..policy.clone()
        },
        AttestationPolicy {
            max_age_secs: 1,
            ..policy.clone()
        },
    ] {
        let e = w.admin.admin_attestation_set(bad).await.unwrap_err();
        assert_eq!(e.code(), Some("bad_policy"), "{e}");
    }
    assert!(!w.admin.admin_attestation_show().await.unwrap().required);
    w.admin.admin_attestation_set(policy.clone()).await.unwrap();
    assert_eq!(w.admin.admin_attestation_show().await.unwrap(), policy);

    let alice: UserId = "alice@acme".parse().unwrap();
    let code = w.admin.admin_add_user(&alice, false).await.unwrap().code;
    let keys = DeviceKeys::generate().unwrap();
    let now = now_secs();
    let refused = |r: Result<Client, cloister_client::ClientError>| r.err().unwrap();

    // no evidence
    let e = refused(enrol(&w, &alice, &code, &keys, None).await);
    assert_eq!(e.code(), Some("attestation_required"), "{e}");
    // signed by a key the tenant does not trust
    let rogue = KmSigner::generate().unwrap();
    let ev = endorse(&rogue, &endorsement(&alice, &keys, "SN-1", now, now + 600)).unwrap();
    let e = refused(enrol(&w, &alice, &code, &keys, Some(ev)).await);
    assert_eq!(e.code(), Some("attestation_rejected"), "{e}");
    // endorsing another device's keys (a stolen endorsement)
    let other = DeviceKeys::generate().unwrap();
    let ev = endorse(&mdm, &endorsement(&alice, &other, "SN-2", now, now + 600)).unwrap();
    let e = refused(enrol(&w, &alice, &code, &keys, Some(ev)).await);
    assert_eq!(e.code(), Some("attestation_rejected"), "{e}");
    // for another user
    let ev = endorse(
        &mdm,
        &endorsement(&"bob@acme".parse().unwrap(), &keys, "SN-1", now, now + 600),
    )
    .unwrap();
    let e = refused(enrol(&w, &alice, &code, &keys, Some(ev)).await);
    assert_eq!(e.code(), Some("attestation_rejected"), "{e}");
    // expired, and older than the policy allows
    let ev = endorse(
        &mdm,
        &endorsement(&alice, &keys, "SN-1", now - 900, now - 300),
    )
    .unwrap();
    let e = refused(enrol(&w, &alice, &code, &keys, Some(ev)).await);
    assert_eq!(e.code(), Some("attestation_expired"), "{e}");
    let ev = endorse(
        &mdm,
        &endorsement(&alice, &keys, "SN-1", now - 7_200, now + 600),
    )
    .unwrap();
    let e = refused(enrol(&w, &alice, &code, &keys, Some(ev)).await);
    assert_eq!(e.code(), Some("attestation_expired"), "{e}");
    // a format the tenant does not accept
    let e = refused(
        enrol(
            &w,
            &alice,
            &code,
            &keys,
            Some(Evidence {
                format: "tpm2".into(),
                body: cloister_proto::b64::Bytes(vec![1, 2, 3]),
            }),
        )
        .await,
    );
    assert_eq!(e.code(), Some("attestation_rejected"), "{e}");

    // good evidence: certified with the same code (no refusal spent it)
    let good = endorse(&mdm, &endorsement(&alice, &keys, "SN-1", now, now + 600)).unwrap();
    let device = enrol(&w, &alice, &code, &keys, Some(good.clone()))
        .await
        .unwrap();
    assert!(device.cert_validity().is_ok());
    let certified = w
        .admin
        .audit_list(0, 1_000, Some("device_certified".into()), None, None)
        .await
        .unwrap();
    assert!(certified.iter().any(|(_, r, _)| matches!(&r.event,
        cloister_log::AuditEvent::DeviceCertified { device: d, attested: Some(a), .. }
            if *d == device.device() && a == "mdm:SN-1")));

    // Renewal: the attested device renews; bob, enrolled before the policy
    // required evidence, does not (he enrols again with evidence); and once
    // the MDM key that vouched is withdrawn, neither does the laptop.
    device.renew_cert().await.unwrap();
    let e = bob.renew_cert().await.unwrap_err();
    assert_eq!(e.code(), Some("attestation_required"), "{e}");
    let new_mdm = KmSigner::generate().unwrap();
    w.admin
        .admin_attestation_set(AttestationPolicy {
            mdm_keys: vec![Fixed(new_mdm.public())],
            ..policy.clone()
        })
        .await
        .unwrap();
    let e = device.renew_cert().await.unwrap_err();
    assert_eq!(e.code(), Some("attestation_required"), "{e}");
    w.admin.admin_attestation_set(policy.clone()).await.unwrap();

    // the same evidence again, with a new code: a replay
    let code2 = w
        .admin
        .admin_add_user_roles(&alice, &[Role::User])
        .await
        .unwrap()
        .code;
    let e = refused(enrol(&w, &alice, &code2, &keys, Some(good)).await);
    assert_eq!(e.code(), Some("attestation_replayed"), "{e}");
}

/// The same, as an operator runs it: the MDM's key, the policy, keys made
/// on the device first, the MDM's endorsement, enrolment with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_flow_mdm_keygen_endorse_and_enrol() {
    let w = World::new().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (srv, km) = (w.stack.server_url.clone(), w.stack.km_url.clone());
    let admin_code = w
        .admin
        .admin_add_user(&"root@acme".parse().unwrap(), true)
        .await
        .unwrap()
        .code;
    let admin = d.join("admin");
    ok(cmd(Some(&admin))
        .args([
            "enrol",
            "--server",
            &srv,
            "--km",
            &km,
            "--user",
            "root@acme",
        ])
        .args(["--code", &admin_code])
        .output()
        .unwrap());
    let mdm = json(
        cmd(None)
            .args(["--json", "mdm", "keygen", "--out"])
            .arg(d.join("mdm.key"))
            .output()
            .unwrap(),
    );
    let public = mdm["public"].as_str().unwrap().to_owned();
    ok(cmd(Some(&admin))
        .args([
            "admin",
            "attestation",
            "set",
            "--required",
            "--format",
            "mdm",
        ])
        .args(["--mdm-key", &public]) // may begin with '-': taken as a value
        .output()
        .unwrap());
    // a key beginning with '-' is a value, not a flag (base64 may start so)
    let out = cmd(Some(&admin))
        .args(["admin", "attestation", "set", "--format", "mdm"])
        .args(["--mdm-key", "-notakey"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("32-byte") && !err.contains("unexpected argument"),
        "{err}"
    );
    let code = w
        .admin
        .admin_add_user(&"carol@acme".parse().unwrap(), false)
        .await
        .unwrap()
        .code;
    let carol = d.join("carol");
    // without evidence: refused, one clear line
    let out = cmd(Some(&carol))
        .args([
            "enrol",
            "--server",
            &srv,
            "--km",
            &km,
            "--user",
            "carol@acme",
        ])
        .args(["--code", &code])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("attested"), "{err}");
    let keys = ok(cmd(Some(&carol))
        .args(["--json", "device", "keygen"])
        .output()
        .unwrap());
    std::fs::write(d.join("carol.pub"), keys).unwrap();
    ok(cmd(None)
        .args(["mdm", "endorse", "--key"])
        .arg(d.join("mdm.key"))
        .args([
            "--user",
            "carol@acme",
            "--device",
            "LAPTOP-0042",
            "--device-keys",
        ])
        .arg(d.join("carol.pub"))
        .arg("--out")
        .arg(d.join("carol.evidence"))
        .output()
        .unwrap());
    let enrolled = json(
        cmd(Some(&carol))
            .args(["--json", "enrol", "--server", &srv, "--km", &km])
            .args(["--user", "carol@acme", "--code", &code, "--evidence"])
            .arg(d.join("carol.evidence"))
            .output()
            .unwrap(),
    );
    assert_eq!(enrolled["user"], "carol@acme");
    assert!(!carol.join("pending-keys.sealed").exists());
}
