//! `cloister demo`: the whole stack in one process, a realistic morning on a
//! rates desk, and a final scan of the server's storage for plaintext.

use crate::{BoxError, Stack, StackOptions};
use cloister_client::{Client, Received, Storage};
use cloister_crypto::passphrase::Cost;
use cloister_proto::UserId;
use cloister_proto::km::Role;
use cloister_proto::room::RoomSettings;
use cloister_proto::server::Content;
use std::path::Path;

mod controls;
mod custody;
mod firms;
mod gateway;
mod mls;

struct Demo {
    json: bool,
    failures: Vec<String>,
    steps: Vec<serde_json::Value>,
}

impl Demo {
    fn say(&mut self, who: &str, what: impl AsRef<str>) {
        if !self.json {
            println!("  {who:<14} {}", what.as_ref());
        }
        self.steps
            .push(serde_json::json!({"who": who, "what": what.as_ref()}));
    }
    fn section(&self, title: &str) {
        if !self.json {
            println!("\n== {title}");
        }
    }
    fn check(&mut self, ok: bool, what: &str) {
        let mark = if ok { "ok  " } else { "FAIL" };
        if !self.json {
            println!("  [{mark}] {what}");
        }
        self.steps
            .push(serde_json::json!({"check": what, "ok": ok}));
        if !ok {
            self.failures.push(what.to_owned());
        }
    }
}

fn uid(s: &str) -> Result<UserId, BoxError> {
    s.parse()
        .map_err(|e: cloister_proto::IdError| e.to_string().into())
}

fn render(r: &Received) -> String {
    let who = match &r.content {
        Content::Relayed { from, network, .. } => format!("{from} (on {network}, via the gateway)"),
        _ => r.sender.name().to_owned(),
    };
    match r.content.said() {
        Content::Text { text } => format!("{who} (epoch {}): {}", r.epoch, text),
        Content::File { name, size, .. } => {
            format!("{who} (epoch {}): [file {name}, {size} bytes]", r.epoch)
        }
        Content::Relayed { .. } => format!("{who}: [relayed twice]"),
    }
}

async fn enrol(stack: &Stack, admin: &Client, dir: &Path, name: &str) -> Result<Client, BoxError> {
    enrol_as(stack, admin, dir, name, &[Role::User]).await
}

async fn enrol_as(
    stack: &Stack,
    admin: &Client,
    dir: &Path,
    name: &str,
    roles: &[Role],
) -> Result<Client, BoxError> {
    let user = uid(&format!("{name}@acme"))?;
    let code = admin.admin_add_user_roles(&user, roles).await?.code;
    let path = dir.join(name);
    Ok(Client::enrol(
        cloister_tls::http_client(),
        &stack.server_url,
        &stack.km_url,
        &user,
        &code,
        Storage::Dir {
            path: &path,
            passphrase: b"demo device passphrase",
            cost: Cost::DEFAULT,
        },
    )
    .await?)
}

async fn show_history(
    d: &mut Demo,
    who: &str,
    c: &Client,
    room: &cloister_proto::RoomId,
) -> Result<Vec<Received>, BoxError> {
    let msgs = c.read(room, 100, None).await?;
    let mut ok = Vec::new();
    for m in msgs {
        match m {
            Ok(r) => {
                d.say(who, format!("sees  {}", render(&r)));
                ok.push(r);
            }
            Err(e) => d.say(who, format!("cannot read: {e}")),
        }
    }
    Ok(ok)
}

/// Bytes of every file under `dir`.
fn scan_for(dir: &Path, needles: &[Vec<u8>]) -> Result<(usize, u64, Vec<String>), BoxError> {
    let mut found = Vec::new();
    let (mut files, mut bytes) = (0usize, 0u64);
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let data = std::fs::read(&p)?;
            files += 1;
            bytes += data.len() as u64;
            for n in needles {
                if data.windows(n.len()).any(|w| w == n.as_slice()) {
                    found.push(format!(
                        "{} contains {:?}",
                        p.display(),
                        String::from_utf8_lossy(n)
                    ));
                }
            }
        }
    }
    Ok((files, bytes, found))
}

/// Run the demo; `Ok(true)` only if every check held.
/// Run the demo; with `tls`, every service listens on HTTPS with a
/// certificate from a development CA made in the data directory, and every
/// client verifies it.
pub async fn run(data_dir: Option<&Path>, json: bool, tls: bool) -> Result<bool, BoxError> {
    let tmp;
    let dir = match data_dir {
        Some(d) => {
            if d.join("km").exists() || d.join("server").exists() {
                return Err(format!(
                    "{} already holds demo data; give an empty or new directory",
                    d.display()
                )
                .into());
            }
            d.to_owned()
        }
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_owned()
        }
    };
    let mut d = Demo {
        json,
        failures: Vec::new(),
        steps: Vec::new(),
    };
    let local_tls = if tls {
        Some(crate::tls_args::LocalTls::create(&dir.join("tls"))?)
    } else {
        None
    };
    // Two witnesses of Acme's audit log: one on the vault's host, one run by
    // the messaging operator.
    let mut witnesses = Vec::new();
    for (name, sub) in [
        ("witness.acme-vault/w1", "witness-vault"),
        ("witness.operator/w2", "witness-operator"),
    ] {
        let w = std::sync::Arc::new(
            cloister_witness::Witness::open_dir(&dir.join(sub), Some(name)).await?,
        );
        let (l, wtls, url) = crate::tls_args::bind_local(sub, local_tls.as_ref()).await?;
        let r = cloister_witness::router(w.clone());
        tokio::spawn(async move {
            let _ = cloister_http::serve_with(l, wtls.as_ref(), r, std::future::pending()).await;
        });
        witnesses.push((w, url));
    }
    // Acme's master key in an HSM when SoftHSM2 is installed
    let hsm = custody::demo_token();
    let witness_urls: Vec<String> = witnesses.iter().map(|(_, u)| u.clone()).collect();
    let make_opts = || {
        let mut opts = StackOptions::new("acme".parse().unwrap_or_else(|_| unreachable!()));
        opts.tls = local_tls.clone();
        opts.km_config.witnesses = witness_urls.clone();
        opts.km_custody = hsm.clone().map(crate::custody::Custody::Pkcs11);
        opts
    };
    let stack = match Stack::start(&dir, make_opts()).await {
        Ok(s) => s,
        Err(e) => {
            if let Some(h) = &hsm {
                custody::drop_token(h);
            }
            return Err(e);
        }
    };
    for (w, _) in &witnesses {
        w.follow(&stack.km.info().log_key).await?;
    }
    let witness_keys: Vec<String> = witnesses.iter().map(|(w, _)| w.key()).collect();
    let clients = dir.join("clients");

    d.section("Acme Bank starts Cloister");
    d.say(
        "operator",
        format!(
            "server on {} (data in {})",
            stack.server_url,
            dir.join("server").display()
        ),
    );
    d.say(
        "key custodian",
        format!(
            "KM on {} holds Acme's master key (data in {})",
            stack.km_url,
            dir.join("km").display()
        ),
    );
    let admin_code = stack
        .admin_code
        .clone()
        .ok_or("KM was not freshly initialised")?;
    let admin = Client::enrol(
        cloister_tls::http_client(),
        &stack.server_url,
        &stack.km_url,
        &uid("admin@acme")?,
        &admin_code,
        Storage::Dir {
            path: &clients.join("admin"),
            passphrase: b"demo device passphrase",
            cost: Cost::DEFAULT,
        },
    )
    .await?;
    d.say("admin", "enrolled the admin laptop with the bootstrap code");
    let alice = enrol(&stack, &admin, &clients, "alice").await?;
    let bob = enrol(&stack, &admin, &clients, "bob").await?;
    let carol = enrol(&stack, &admin, &clients, "carol").await?;
    d.say(
        "admin",
        "enrolled alice (rates trader), bob (rates trader), carol (sales) with one-time codes",
    );

    d.section("Compliance is set up before anyone talks");
    let olivia = enrol_as(&stack, &admin, &clients, "olivia", &[Role::Compliance]).await?;
    let mut custodians = Vec::new();
    for n in ["cora", "cole", "cruz"] {
        custodians.push(enrol_as(&stack, &admin, &clients, n, &[Role::Custodian]).await?);
    }
    d.say(
        "admin",
        "enrolled olivia (compliance officer) and cora, cole, cruz (escrow custodians)",
    );
    let names: Vec<UserId> = custodians.iter().map(|c| c.user().clone()).collect();
    let esc = admin.admin_escrow_init(&names, 2).await?;
    d.say(
        "admin",
        format!(
            "created the escrow key; any {} of {} custodians can open the archive, nobody alone; the whole private key was never stored",
            esc.threshold,
            esc.custodians.len()
        ),
    );
    let vd = admin.admin_vault_register(&stack.vault_url, true).await?;
    d.say(
        "admin",
        format!(
            "registered the vault on {} with capture = required: the server refuses any message without the vault's receipt",
            vd.url
        ),
    );

    d.section("The rates desk talks");
    let desk = alice
        .create_room(
            RoomSettings {
                name: "rates-desk".into(),
                ..Default::default()
            },
            &[bob.user().clone(), carol.user().clone()],
        )
        .await?;
    d.say(
        "alice",
        format!("created room rates-desk ({desk}) with bob and carol"),
    );
    // Alice's device remembers the audit log's checkpoint as it is now.
    let (early, _) = alice.audit_checkpoint().await?;
    let mut secrets: Vec<String> = Vec::new();
    let lines = [
        (
            &alice,
            "Morning all. UST 10y trading 4.12 bid, looks heavy into CPI",
        ),
        (
            &bob,
            "Client XJ-77 wants 250mm 5y payer swaption, indication by 10:30",
        ),
        (
            &carol,
            "Pension fund Harbourview asking for 2s10s steepener ideas",
        ),
    ];
    for (c, t) in lines {
        c.send_text(&desk, t).await?;
        d.say(c.user().name(), format!("says  {t}"));
        secrets.push(t.to_owned());
    }

    d.section("A private IM");
    let im = alice.im(bob.user()).await?;
    let t1 = "Between us: I am axed to sell 40mm of the 2033s";
    alice.send_text(&im, t1).await?;
    secrets.push(t1.into());
    let got = bob.read(&im, 10, None).await?;
    let seen = got
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .any(|r| matches!(&r.content, Content::Text { text } if text == t1));
    d.say("bob", format!("reads alice's IM: {t1:?}"));
    d.check(seen, "bob decrypts and verifies alice's IM");
    let carol_im = carol.read(&im, 10, None).await;
    d.check(
        carol_im.is_err(),
        "carol, not in the IM, is refused by the server",
    );

    d.section("A file");
    let file_text = "TERM SHEET: 5y payer swaption, notional 250mm, strike ATM+10, client XJ-77. CONFIDENTIAL. ";
    let file_body = file_text.repeat(3000); // ~270 KB, several encrypted chunks
    let src = dir.join("termsheet.txt");
    std::fs::write(&src, &file_body)?;
    let (_, fseq) = bob.send_file(&desk, &src).await?;
    std::fs::remove_file(&src)?;
    d.say(
        "bob",
        format!(
            "sends termsheet.txt ({} bytes), encrypted in 64 KiB chunks",
            file_body.len()
        ),
    );
    let msgs = carol.read(&desk, 20, None).await?;
    let fmsg = msgs
        .into_iter()
        .filter_map(Result::ok)
        .find(|m| m.seq == fseq)
        .ok_or("carol cannot see the file message")?;
    let out = dir.join("carol-termsheet.txt");
    carol.get_file(&fmsg.content, &out).await?;
    let same = std::fs::read(&out)? == file_body.as_bytes();
    std::fs::remove_file(&out)?;
    d.say(
        "carol",
        "downloads and decrypts termsheet.txt; hashes verified",
    );
    d.check(same, "carol's copy of the file is byte-identical");
    secrets.push("TERM SHEET: 5y payer swaption".into());

    d.section("Carol moves to another desk");
    let st = alice.remove_member(&desk, carol.user()).await?;
    d.say(
        "alice",
        format!("removes carol; the room moves to epoch {}", st.epoch),
    );
    let t2 = "Now that sales is out: we pull the XJ-77 indication to 4.05";
    alice.send_text(&desk, t2).await?;
    secrets.push(t2.into());
    d.say("alice", format!("says  {t2}"));
    carol.clear_key_cache()?;
    let refused = carol.room_keys(&desk, &[st.epoch]).await;
    match &refused {
        Err(e) => d.say(
            "carol",
            format!("asks the KM for epoch {}: refused: {e}", st.epoch),
        ),
        Ok(_) => d.say("carol", "was given the new key!"),
    }
    d.check(
        matches!(&refused, Err(e) if e.code() == Some("not_entitled")),
        "the KM refuses carol the key of the new epoch",
    );
    d.check(
        carol.read(&desk, 10, None).await.is_err(),
        "the server no longer serves carol the room",
    );

    d.section("Bob gets a new laptop");
    let code = admin.admin_add_user(bob.user(), false).await?.code;
    let bob2 = Client::enrol(
        cloister_tls::http_client(),
        &stack.server_url,
        &stack.km_url,
        bob.user(),
        &code,
        Storage::Dir {
            path: &clients.join("bob-laptop2"),
            passphrase: b"demo device passphrase",
            cost: Cost::DEFAULT,
        },
    )
    .await?;
    d.say(
        "admin",
        format!("issues bob a code; new device {}", bob2.device()),
    );
    let hist = show_history(&mut d, "bob (new)", &bob2, &desk).await?;
    let texts: Vec<String> = hist
        .iter()
        .filter_map(|r| match &r.content {
            Content::Text { text } => Some(text.clone()),
            _ => None,
        })
        .collect();
    d.check(
        texts.iter().any(|t| t.starts_with("Morning all")) && texts.iter().any(|t| t == t2),
        "bob's new device reads the whole history, both epochs (keys fetched from the KM)",
    );
    admin.admin_revoke_device(&bob.device()).await?;
    d.say(
        "admin",
        format!("revokes bob's old device {}", bob.device()),
    );
    // Straight to the KM, as a modified client would (the server refuses it too).
    let r: Result<serde_json::Value, _> = bob
        .km_request(cloister_proto::km::KmOp::RoomKeys {
            room: desk,
            epochs: vec![0],
            log_from: 0,
            log: vec![],
            certs: Vec::new(),
        })
        .await;
    d.check(
        matches!(&r, Err(e) if e.code() == Some("device_revoked")),
        "the KM refuses keys to the revoked device",
    );
    d.check(
        bob.read(&desk, 5, None).await.is_err(),
        "the server refuses the revoked device",
    );

    d.section("The audit trail");
    let (cp, note) = admin.audit_checkpoint().await?;
    d.say(
        "auditor",
        format!("latest signed checkpoint ({} entries):", cp.size),
    );
    for line in note.trim_end().lines() {
        d.say("", format!("    {line}"));
    }
    alice.set_witness_policy(&witness_keys, 2)?;
    d.say(
        "alice",
        "requires both witnesses (the vault's host and the operator) to cosign every checkpoint",
    );
    let watched = alice.audit_checkpoint().await;
    d.check(
        watched.as_ref().is_ok_and(|(_, n)| n.matches('\u{2014}').count() == 3),
        "the checkpoint alice accepts is cosigned by both witnesses: no one can be shown another history",
    );
    d.check(
        watched.as_ref().is_ok_and(|(c, _)| c.size >= cp.size),
        &format!(
            "alice's device proves the log consistent with the checkpoint it saw at size {}",
            early.size
        ),
    );
    let rows = admin.audit_list(0, 10_000, None, None, None).await?;
    let pick = |kind: &str| {
        rows.iter()
            .find(|(_, r, _)| r.event.kind() == kind)
            .map(|(i, _, _)| *i)
    };
    let mut proven = 0;
    for (kind, idx) in [
        ("key_released", pick("key_released")),
        ("key_refused", pick("key_refused")),
        ("device_revoked", pick("device_revoked")),
    ] {
        if let Some(i) = idx {
            let (p, _) = admin.audit_prove(i).await?;
            d.say(
                "auditor",
                format!(
                    "entry {i} ({kind}) is in the log: {} proof hashes, verified",
                    p.proof.len()
                ),
            );
            proven += 1;
        }
    }
    d.check(
        proven == 3,
        "inclusion proofs verify for a key release, a refusal and a revocation",
    );
    let who = bob2.who_has_keys(&desk).await?;
    d.say(
        "bob (new)",
        "asks who ever received the keys of rates-desk (each release proven in the log):",
    );
    for r in &who {
        d.say(
            "",
            format!("    {} device {} epochs {:?}", r.user, r.device, r.epochs),
        );
    }
    d.check(
        who.iter()
            .any(|r| r.user == *carol.user() && r.epochs == vec![0])
            && !who
                .iter()
                .any(|r| r.user == *carol.user() && r.epochs.contains(&1)),
        "key release transparency: carol got epoch 0 and never epoch 1",
    );

    d.section("Compliance reviews the desk");
    olivia.use_registered_vault().await?;
    let now = cloister_proto::now_millis();
    let hits = olivia
        .compliance_search(
            &[(cloister_crypto::blind::Field::Keyword, "harbourview".into())],
            now - 86_400_000,
            now + 86_400_000,
            100,
        )
        .await?;
    d.say(
        "olivia",
        format!(
            "searches the archive for \"harbourview\" with blind tokens: {} hit(s), metadata only",
            hits.len()
        ),
    );
    d.check(
        !hits.is_empty(),
        "keyword search finds the captured message",
    );
    let case = olivia
        .case_open(
            "harbourview-inquiry",
            "Harbourview inquiry",
            cloister_proto::km::CaseScope {
                custodians: vec![alice.user().clone()],
                rooms: vec![],
                from_ms: now - 86_400_000,
                to_ms: now + 86_400_000,
                reseal: None,
            },
            true,
        )
        .await?;
    d.say(
        "olivia",
        format!(
            "opens case {} (alice's conversations today, under legal hold)",
            case.case
        ),
    );
    custodians[0].case_approve(&case.case).await?;
    d.say(
        "cora",
        "approves the case: her share is re-sealed to the case's session key",
    );
    let out = dir.join("export");
    let refused = olivia.case_export(&case.case, &out, &|_, _| {}).await;
    if let Err(e) = &refused {
        d.say("olivia", format!("tries to export with 1 approval: {e}"));
    }
    d.check(refused.is_err(), "with K-1 approvals nothing is decrypted");
    custodians[1].case_approve(&case.case).await?;
    d.say("cole", "approves the case");
    let x = olivia.case_export(&case.case, &out, &|_, _| {}).await?;
    d.say(
        "olivia",
        format!(
            "exports with {} of {} approvals: {} message(s), {} files, {} bytes (EML + JSONL + signed manifest) in {}",
            x.approvals,
            x.threshold,
            x.summary.messages,
            x.summary.files,
            x.summary.bytes,
            out.display()
        ),
    );
    let v = cloister_client::export::verify(&out, Some(stack.km.info().sign_pk.0));
    if let Ok(r) = &v {
        d.say(
            "regulator",
            format!(
                "cloister export verify: {} message(s), {} files match; every envelope proven in the vault log (size {}); every message signed by its sender's device, exactly as shown",
                r.messages, r.files, r.checkpoint_size
            ),
        );
    }
    d.check(
        v.is_ok() && x.summary.messages > 0,
        "the export verifies offline",
    );
    d.check(
        v.as_ref().is_ok_and(|r| r.unattributable == 0) && x.summary.unattributable == 0,
        "every exported message is attributable to its sender's KM-certified device",
    );

    controls::run(
        &mut d,
        controls::Cast {
            stack: &stack,
            admin: &admin,
            alice: &alice,
            carol: &carol,
            olivia: &olivia,
            clients: &clients,
            dir: &dir,
        },
    )
    .await?;
    secrets.push("Project Falcon: the issuer signs Friday".into());

    mls::run(
        &mut d,
        mls::Cast {
            alice: &alice,
            bob: &bob2,
            carol: &carol,
            olivia: &olivia,
        },
        &mut secrets,
    )
    .await?;

    firms::run(
        &mut d,
        firms::Cast {
            stack: &stack,
            admin: &admin,
            alice: &alice,
            olivia: &olivia,
            custodians: &custodians,
            dir: &dir,
        },
        &mut secrets,
    )
    .await?;

    gateway::run(
        &mut d,
        gateway::Cast {
            stack: &stack,
            admin: &admin,
            alice: &alice,
            olivia: &olivia,
            clients: &clients,
            dir: &dir,
        },
        &mut secrets,
    )
    .await?;

    let stack = custody::run(
        &mut d,
        stack,
        hsm.as_ref(),
        make_opts,
        custody::Cast {
            admin: &admin,
            reader: &alice,
            room: desk,
            dir: &dir,
        },
    )
    .await?;

    d.section("What the operator holds");
    let needles: Vec<Vec<u8>> = secrets
        .iter()
        .flat_map(|s| {
            // whole sentences and distinctive fragments of each
            let mut v = vec![s.as_bytes().to_vec()];
            v.extend(
                s.split_whitespace()
                    .filter(|w| w.len() >= 8)
                    .map(|w| w.as_bytes().to_vec()),
            );
            v
        })
        .collect();
    let (files, bytes, found) = scan_for(&dir.join("server"), &needles)?;
    d.say(
        "auditor",
        format!(
            "scanned {files} files, {bytes} bytes of server storage for {} plaintext strings",
            needles.len()
        ),
    );
    for f in &found {
        d.say("auditor", format!("FOUND: {f}"));
    }
    d.check(
        found.is_empty(),
        "the server's storage holds none of the plaintext it carried",
    );
    let (vfiles, vbytes, vfound) = scan_for(&dir.join("vault"), &needles)?;
    d.say(
        "auditor",
        format!("scanned {vfiles} files, {vbytes} bytes of the vault for the same strings"),
    );
    for f in &vfound {
        d.say("auditor", format!("FOUND: {f}"));
    }
    d.check(
        vfound.is_empty(),
        "the vault's storage holds no plaintext either (envelopes are sealed to the escrow key)",
    );
    let (hfiles, hbytes, hfound) = scan_for(&dir.join("harbour").join("vault"), &needles)?;
    d.say(
        "auditor",
        format!("scanned {hfiles} files, {hbytes} bytes of Harbour's vault for the same strings"),
    );
    for f in &hfound {
        d.say("auditor", format!("FOUND: {f}"));
    }
    d.check(
        hfound.is_empty(),
        "Harbour's vault holds no plaintext either (sealed to Harbour's own escrow key)",
    );

    stack.stop().await;
    if let Some(h) = &hsm {
        custody::drop_token(h);
    }
    let ok = d.failures.is_empty();
    if json {
        println!(
            "{}",
            serde_json::json!({"ok": ok, "failures": d.failures, "steps": d.steps})
        );
    } else if ok {
        println!("\nAll checks held.");
    } else {
        println!("\n{} check(s) failed: {:?}", d.failures.len(), d.failures);
    }
    Ok(ok)
}
