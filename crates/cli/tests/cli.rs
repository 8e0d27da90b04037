//! The `cloister` binary end to end: real `km serve` and `server` processes,
//! devices in profile directories, every command a person uses.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::Value;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

mod common;

use common::procs::*;

struct Env {
    _dir: tempfile::TempDir,
    root: PathBuf,
    km: String,
    server: String,
    _procs: Procs,
}

impl Env {
    fn home(&self, name: &str) -> PathBuf {
        self.root.join("homes").join(name)
    }
    fn run(&self, who: &str, args: &[&str]) -> Output {
        cmd(Some(&self.home(who))).args(args).output().unwrap()
    }
    fn enrol(&self, who: &str, code: &str) {
        let out = self.run(
            who,
            &[
                "--json",
                "enrol",
                "--server",
                &self.server,
                "--km",
                &self.km,
                "--user",
                &format!("{who}@acme"),
                "--code",
                code,
            ],
        );
        let v = json(out);
        assert_eq!(v["user"], format!("{who}@acme"));
    }
    fn add_user(&self, who: &str) -> String {
        let v = json(self.run(
            "admin",
            &["--json", "admin", "add-user", &format!("{who}@acme")],
        ));
        v["code"].as_str().unwrap().to_owned()
    }
}

fn setup() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    let init = json(
        cmd(None)
            .args(["--json", "km", "init", "--tenant", "acme", "--data-dir"])
            .arg(root.join("km"))
            .output()
            .unwrap(),
    );
    let code = init["code"].as_str().unwrap().to_owned();
    // a second init refuses to overwrite the master key
    fails(
        cmd(None)
            .args(["km", "init", "--tenant", "acme", "--data-dir"])
            .arg(root.join("km"))
            .output()
            .unwrap(),
    );
    let mut km_cmd = cmd(None);
    km_cmd
        .args(["km", "serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(root.join("km"));
    let (km_child, km) = spawn_service(km_cmd);
    let mut server_cmd = cmd(None);
    server_cmd
        .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(root.join("server"));
    let (server_child, server) = spawn_service(server_cmd);
    let procs = Procs(vec![km_child, server_child]);
    wait_http(&km);
    wait_http(&server);
    let token = root.join("server/operator.token");
    for _ in 0..100 {
        if token.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    ok(cmd(None)
        .args([
            "admin",
            "register-tenant",
            "--server",
            &server,
            "--km",
            &km,
            "--operator-token-file",
        ])
        .arg(&token)
        .output()
        .unwrap());
    let env = Env {
        _dir: dir,
        root,
        km,
        server,
        _procs: procs,
    };
    let out = env.run(
        "admin",
        &[
            "--json",
            "enrol",
            "--server",
            &env.server,
            "--km",
            &env.km,
            "--user",
            "admin@acme",
            "--code",
            &code,
        ],
    );
    json(out);
    env
}

#[test]
fn a_morning_on_the_desk_through_the_cli() {
    let e = setup();
    for u in ["alice", "bob", "carol"] {
        let code = e.add_user(u);
        e.enrol(u, &code);
    }
    // whoami
    let me = json(e.run("alice", &["--json", "whoami"]));
    assert_eq!(me["user"], "alice@acme");
    // rooms
    let room = json(e.run(
        "alice",
        &[
            "--json",
            "room",
            "create",
            "rates",
            "--member",
            "bob@acme",
            "--member",
            "carol@acme",
        ],
    ));
    let room = room["room"].as_str().unwrap().to_owned();
    let list = json(e.run("bob", &["--json", "room", "list"]));
    assert_eq!(list[0]["room"], room);
    let members = ok(e.run("alice", &["room", "members", "rates"]));
    assert!(
        members.contains("alice@acme (owner)") && members.contains("carol@acme"),
        "{members}"
    );
    // send by name, read by id, both verified
    ok(e.run("alice", &["send", "rates", "UST 10y 4.12 bid"]));
    ok(e.run("bob", &["send", &room, "seen, thanks"]));
    let read = json(e.run("carol", &["--json", "read", "rates", "--limit", "10"]));
    let msgs = read["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 2);
    assert_eq!(msgs[0]["content"]["text"], "UST 10y 4.12 bid");
    assert_eq!(msgs[0]["sender"], "alice@acme");
    assert_eq!(msgs[0]["verified"], true);
    // IM
    let im = json(e.run("alice", &["--json", "im", "bob@acme"]))["room"]
        .as_str()
        .unwrap()
        .to_owned();
    ok(e.run("alice", &["send", &im, "private: axed in the 2033s"]));
    let text = ok(e.run("bob", &["read", &im]));
    assert!(text.contains("private: axed in the 2033s"), "{text}");
    // files
    let src = e.root.join("sheet.txt");
    std::fs::write(&src, "TERM SHEET\n".repeat(20_000)).unwrap();
    let sent = json(e.run(
        "bob",
        &["--json", "send", "rates", "--file", src.to_str().unwrap()],
    ));
    let seq = sent["seq"].as_u64().unwrap().to_string();
    let out = e.root.join("got.txt");
    ok(e.run(
        "carol",
        &["get-file", "rates", &seq, "--out", out.to_str().unwrap()],
    ));
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&src).unwrap());
    // live: carol tails, alice sends
    let mut tail = cmd(Some(&e.home("carol")))
        .args(["--json", "tail", &room, "--count", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    ok(e.run("alice", &["send", "rates", "live update"]));
    let mut waited = 0;
    while tail.try_wait().unwrap().is_none() && waited < 100 {
        std::thread::sleep(Duration::from_millis(100));
        waited += 1;
    }
    let out = tail.wait_with_output().unwrap();
    let line: Value = serde_json::from_str(ok(out).trim()).unwrap();
    assert_eq!(line["content"]["text"], "live update");
    // settings and removal
    ok(e.run(
        "alice",
        &["room", "settings", "rates", "--history", "false"],
    ));
    let s = json(e.run("alice", &["--json", "room", "settings", "rates"]));
    assert_eq!(s["settings"]["view_history"], false);
    let r = json(e.run(
        "alice",
        &["--json", "room", "remove", "rates", "carol@acme"],
    ));
    assert_eq!(r["epoch"], 1);
    let err = fails(e.run("carol", &["read", &room]));
    assert!(err.contains("no_such_room"), "{err}");
    // admin: list, disable, revoke
    let users = json(e.run("admin", &["--json", "admin", "list-users"]));
    assert_eq!(users.as_array().unwrap().len(), 4);
    ok(e.run("admin", &["admin", "disable-user", "carol@acme"]));
    let err = fails(e.run("carol", &["room", "list"]));
    assert!(err.contains("disabled"), "{err}");
    let bob_dev = json(e.run("bob", &["--json", "whoami"]))["device"]
        .as_str()
        .unwrap()
        .to_owned();
    ok(e.run("admin", &["admin", "revoke-device", &bob_dev]));
    let err = fails(e.run("bob", &["send", &room, "hello?"]));
    assert!(err.contains("revoked"), "{err}");
}

#[test]
fn cli_errors_are_one_clear_line() {
    let e = setup();
    // no passphrase
    let out = Command::new(BIN)
        .arg("--home")
        .arg(e.home("admin"))
        .args(["room", "list"])
        .env_remove("CLOISTER_PASSPHRASE")
        .output()
        .unwrap();
    assert!(fails(out).contains("CLOISTER_PASSPHRASE"));
    // wrong passphrase
    let out = cmd(Some(&e.home("admin")))
        .env("CLOISTER_PASSPHRASE", "nope")
        .args(["room", "list"])
        .output()
        .unwrap();
    assert!(fails(out).contains("wrong passphrase"));
    // no home
    assert!(fails(cmd(None).args(["room", "list"]).output().unwrap()).contains("--home"));
    // home without a device
    assert!(fails(e.run("nobody", &["whoami"])).contains("cloister enrol"));
    // bad ids
    assert!(
        fails(e.run("admin", &["admin", "add-user", "Not A User"])).contains("invalid user id")
    );
    assert!(
        fails(e.run("admin", &["admin", "revoke-device", "xyz"])).contains("invalid device id")
    );
    assert!(fails(e.run("admin", &["read", "no-such-room"])).contains("no room named"));
    // a bad or reused enrolment code
    let out = e.run(
        "eve",
        &[
            "enrol",
            "--server",
            &e.server,
            "--km",
            &e.km,
            "--user",
            "eve@acme",
            "--code",
            "AAAAA-BBBBB-CCCCC-DDDDD",
        ],
    );
    let err = fails(out);
    assert!(err.contains("invalid_code"), "{err}");
    assert!(
        !e.home("eve").join("keys.sealed").exists(),
        "no half-enrolled profile is left behind"
    );
    // a service that is down
    let out = e.run(
        "admin",
        &[
            "enrol",
            "--server",
            "http://127.0.0.1:9",
            "--km",
            "http://127.0.0.1:9",
            "--user",
            "x@acme",
            "--code",
            "c",
        ],
    );
    assert!(fails(out).contains("cannot reach"));
    // a file that is too big or missing
    let out = e.run("admin", &["send", "x", "--file", "/definitely/not/here"]);
    fails(out);
    // the operator token file must be right
    let bad = e.root.join("bad.token");
    std::fs::write(&bad, "nope").unwrap();
    let out = cmd(None)
        .args([
            "admin",
            "register-tenant",
            "--server",
            &e.server,
            "--km",
            &e.km,
            "--operator-token-file",
        ])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(fails(out).contains("not_operator"));
    // KM with the wrong passphrase refuses to start
    let out = cmd(None)
        .env("CLOISTER_KM_PASSPHRASE", "wrong")
        .args(["km", "serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(e.root.join("km"))
        .output()
        .unwrap();
    assert!(fails(out).contains("cannot unlock"));
}

#[test]
fn the_demo_runs_and_every_check_holds() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("demo");
    let v = json(
        cmd(None)
            .args(["--json", "demo", "--data-dir"])
            .arg(&data)
            .output()
            .unwrap(),
    );
    assert_eq!(v["ok"], true, "{v}");
    assert!(v["failures"].as_array().unwrap().is_empty());
    let checks = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s.get("check").is_some())
        .count();
    assert!(checks >= 9, "{checks} checks");
    assert!(data.join("server/server.db").exists());
    // the master key in SoftHSM (CI installs it): no key file, the token's record
    assert!(data.join("km/provider.json").exists() && !data.join("km/tmk.sealed").exists());
    let lock = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s.get("check").and_then(|c| c.as_str()))
        .find(|c| c.contains("crypto-locked at once"));
    assert!(lock.is_some(), "the demo shows a crypto-lock: {v}");
    // refusing to reuse a directory that already holds demo data
    assert!(
        fails(
            cmd(None)
                .args(["demo", "--data-dir"])
                .arg(&data)
                .output()
                .unwrap()
        )
        .contains("already holds")
    );
}

#[test]
fn audit_commands_through_the_cli() {
    let e = setup();
    for u in ["alice", "bob"] {
        let code = e.add_user(u);
        e.enrol(u, &code);
    }
    ok(e.run("alice", &["room", "create", "desk", "--member", "bob@acme"]));
    ok(e.run("alice", &["send", "desk", "hello"]));
    // alice remembers an early checkpoint
    let early = json(e.run("alice", &["--json", "audit", "checkpoint"]));
    let early_note = e.root.join("early.note");
    std::fs::write(&early_note, early["note"].as_str().unwrap()).unwrap();
    let early_size = early["size"].as_u64().unwrap();
    ok(e.run("bob", &["read", "desk"]));
    // who has the keys: alice and bob, proven
    let who = json(e.run("bob", &["--json", "audit", "who-has-keys", "desk"]));
    let users: Vec<&str> = who["releases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["user"].as_str().unwrap())
        .collect();
    assert!(
        users.contains(&"alice@acme") && users.contains(&"bob@acme"),
        "{users:?}"
    );
    // admin: list, prove, consistency, export
    let list = json(e.run(
        "admin",
        &["--json", "audit", "list", "--kind", "key_released"],
    ));
    assert!(list["entries"].as_array().unwrap().len() >= 2);
    let proof = ok(e.run("admin", &["--json", "audit", "prove", "1"]));
    let proof_file = e.root.join("proof.json");
    std::fs::write(&proof_file, proof).unwrap();
    let cons = ok(e.run(
        "admin",
        &["--json", "audit", "consistency", &early_size.to_string()],
    ));
    let cons_file = e.root.join("cons.json");
    std::fs::write(&cons_file, cons).unwrap();
    let dir = e.root.join("export");
    ok(e.run(
        "admin",
        &["audit", "export", "--out", dir.to_str().unwrap()],
    ));
    let key = format!("@{}", dir.join("log.key").display());
    // offline verification: no home, no services needed
    let v = json(
        cmd(None)
            .args([
                "--json",
                "audit",
                "verify",
                "--key",
                &key,
                "--dir",
                dir.to_str().unwrap(),
                "--inclusion",
            ])
            .arg(&proof_file)
            .arg("--previous")
            .arg(&early_note)
            .arg("--consistency")
            .arg(&cons_file)
            .output()
            .unwrap(),
    );
    assert_eq!(v["ok"], true, "{v}");
    // delete one exported entry: the verifier says TAMPERED in one line
    let entries = dir.join("entries.jsonl");
    let text = std::fs::read_to_string(&entries).unwrap();
    let kept: Vec<&str> = text
        .lines()
        .enumerate()
        .filter(|(i, _)| *i != 2)
        .map(|(_, l)| l)
        .collect();
    std::fs::write(&entries, kept.join("\n")).unwrap();
    let err = fails(
        cmd(None)
            .args([
                "audit",
                "verify",
                "--key",
                &key,
                "--dir",
                dir.to_str().unwrap(),
            ])
            .output()
            .unwrap(),
    );
    assert!(err.contains("TAMPERED"), "{err}");
    // a wrong key is refused
    let err = fails(
        cmd(None)
            .args([
                "audit",
                "verify",
                "--key",
                "x+00000000+AAAA",
                "--dir",
                dir.to_str().unwrap(),
            ])
            .output()
            .unwrap(),
    );
    assert!(err.contains("log key"), "{err}");
    // users cannot list the log
    assert!(fails(e.run("bob", &["audit", "list"])).contains("not_admin"));
}

#[test]
fn compliance_through_the_cli() {
    let mut e = setup();
    let add = |e: &Env, who: &str, role: &str| {
        let v = json(e.run(
            "admin",
            &[
                "--json",
                "admin",
                "add-user",
                &format!("{who}@acme"),
                "--role",
                role,
            ],
        ));
        e.enrol(who, v["code"].as_str().unwrap());
    };
    for u in ["cust1", "cust2", "cust3"] {
        add(&e, u, "custodian");
    }
    add(&e, "officer", "compliance");
    for u in ["alice", "bob"] {
        let code = e.add_user(u);
        e.enrol(u, &code);
    }
    // escrow: 2 of 3, once
    let d = json(e.run(
        "admin",
        &[
            "--json",
            "admin",
            "escrow",
            "init",
            "--custodian",
            "cust1@acme",
            "--custodian",
            "cust2@acme",
            "--custodian",
            "cust3@acme",
            "--threshold",
            "2",
        ],
    ));
    assert_eq!(d["threshold"], 2);
    let shown = json(e.run("cust2", &["--json", "admin", "escrow", "show"]));
    assert_eq!(shown[0]["public"], d["public"]);
    let err = fails(e.run(
        "admin",
        &[
            "admin",
            "escrow",
            "init",
            "--custodian",
            "cust1@acme",
            "--custodian",
            "cust2@acme",
            "--threshold",
            "2",
        ],
    ));
    assert!(err.contains("escrow_exists"), "{err}");
    let err = fails(e.run(
        "admin",
        &[
            "admin",
            "escrow",
            "init",
            "--custodian",
            "cust1@acme",
            "--threshold",
            "2",
        ],
    ));
    assert!(err.contains("invalid input"), "{err}");

    // the vault: its own process and data directory, registered with the KM
    let vdir = e.root.join("vault");
    let err = fails(
        cmd(None)
            .args(["vault", "init", "--km", &e.km, "--jurisdiction", "Britain"])
            .arg("--data-dir")
            .arg(&vdir)
            .output()
            .unwrap(),
    );
    assert!(err.contains("not a jurisdiction"), "{err}");
    assert!(!vdir.join("vault.db").exists(), "nothing was created");
    let v = json(
        cmd(None)
            .args(["--json", "vault", "init", "--km", &e.km, "--data-dir"])
            .arg(&vdir)
            .output()
            .unwrap(),
    );
    assert_eq!(v["tenant"], "acme");
    let mut vault_cmd = cmd(None);
    vault_cmd
        .args(["vault", "serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&vdir);
    let (vault_child, vault_url) = spawn_service(vault_cmd);
    e._procs.0.push(vault_child);
    wait_http(&vault_url);
    let err = fails(e.run(
        "alice",
        &["admin", "vault", "register", "--url", &vault_url],
    ));
    assert!(err.contains("not_admin"), "{err}");
    let r = json(e.run(
        "admin",
        &[
            "--json",
            "admin",
            "vault",
            "register",
            "--url",
            &vault_url,
            "--capture",
            "required",
        ],
    ));
    assert_eq!(r["capture_required"], true);

    // traffic: captured on send (the server demands the receipt)
    let room = ok(e.run("alice", &["room", "create", "desk", "--member", "bob@acme"]))
        .trim()
        .to_owned();
    ok(e.run(
        "alice",
        &["send", &room, "Harbourview 2033s: sell 40mm at 101.5"],
    ));
    ok(e.run("bob", &["send", &room, "agreed, lunch later"]));

    // search: metadata only, officer only
    let hits = json(e.run(
        "officer",
        &[
            "--json",
            "compliance",
            "search",
            "--term",
            "harbourview",
            "--sender",
            "alice@acme",
        ],
    ));
    assert_eq!(hits["hits"].as_array().unwrap().len(), 1);
    let none = json(e.run(
        "officer",
        &["--json", "compliance", "search", "--term", "neversent"],
    ));
    assert!(none["hits"].as_array().unwrap().is_empty());
    let err = fails(e.run("alice", &["compliance", "search", "--term", "harbourview"]));
    assert!(err.contains("not_compliance"), "{err}");

    // a case, approvals, a refused and a successful export, offline verify
    let today = cloister_crypto::blind::day_of(cloister_proto::now_millis());
    ok(e.run(
        "officer",
        &[
            "compliance",
            "case",
            "open",
            "case-1",
            "--title",
            "Harbourview",
            "--custodian",
            "alice@acme",
            "--from",
            &today,
            "--to",
            &today,
        ],
    ));
    let list = json(e.run("cust1", &["--json", "compliance", "case", "list"]));
    assert_eq!(list[0]["case"], "case-1");
    ok(e.run("cust1", &["compliance", "approve", "case-1"]));
    let out = e.root.join("export");
    let err = fails(e.run(
        "officer",
        &[
            "compliance",
            "export",
            "case-1",
            "--out",
            out.to_str().unwrap(),
        ],
    ));
    assert!(err.contains("nothing was decrypted"), "{err}");
    ok(e.run("cust3", &["compliance", "approve", "case-1"]));
    let x = json(e.run(
        "officer",
        &[
            "--json",
            "compliance",
            "export",
            "case-1",
            "--out",
            out.to_str().unwrap(),
        ],
    ));
    assert_eq!(x["summary"]["messages"], 2);
    let v = json(e.run(
        "bob",
        &["--json", "export", "verify", out.to_str().unwrap()],
    ));
    assert_eq!(v["messages"], 2);
    let jsonl = out.join("messages.jsonl");
    let mut t = std::fs::read_to_string(&jsonl).unwrap();
    t = t.replace("101.5", "99.0");
    std::fs::write(&jsonl, t).unwrap();
    let err = fails(e.run("bob", &["export", "verify", out.to_str().unwrap()]));
    assert!(
        err.contains("TAMPERED") && err.contains("messages.jsonl"),
        "{err}"
    );

    // an emergency rotation of the escrow key, a re-seal, the retirement
    let cust = [
        "--custodian",
        "cust1@acme",
        "--custodian",
        "cust2@acme",
        "--custodian",
        "cust3@acme",
    ];
    let err = fails(e.run("admin", &["admin", "escrow", "retire", "1"]));
    assert!(err.contains("newest_generation"), "{err}");
    let mut args = vec!["--json", "admin", "escrow", "rotate", "--threshold", "2"];
    args.extend(cust);
    let g2 = json(e.run("admin", &args));
    assert_eq!(g2["generation"], 2);
    let shown = json(e.run("bob", &["--json", "admin", "escrow", "show"]));
    assert_eq!(shown.as_array().unwrap().len(), 2);
    ok(e.run("bob", &["send", &room, "after the rotation"]));
    let err = fails(e.run("admin", &["admin", "escrow", "retire", "1"]));
    assert!(err.contains("2 envelope(s)"), "{err}");
    ok(e.run(
        "officer",
        &[
            "compliance",
            "case",
            "open",
            "reseal-1",
            "--reseal-generation",
            "1",
            "--from",
            &today,
            "--to",
            &today,
        ],
    ));
    ok(e.run("cust1", &["compliance", "approve", "reseal-1"]));
    ok(e.run("cust2", &["compliance", "approve", "reseal-1"]));
    let r = json(e.run("officer", &["--json", "compliance", "reseal", "reseal-1"]));
    assert_eq!(
        (r["resealed"].as_u64(), r["generation"].as_u64()),
        (Some(2), Some(2))
    );
    let r = json(e.run("admin", &["--json", "admin", "escrow", "retire", "1"]));
    assert_eq!(r["retired"], 1);
    let shown = json(e.run("bob", &["--json", "admin", "escrow", "show"]));
    assert_eq!(shown[0]["generation"], 2);
}

/// Two firms, each with its own KM process, on one messaging server: trust
/// pinned both ways with the KMs' addresses, a connection, an external
/// room, messages both ways (bank's KM gets the key from acme's KM), a
/// member removed and refused, each KM's audit of the exchange.
#[test]
fn two_firms_each_with_its_own_km_process() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    let mut server_cmd = cmd(None);
    server_cmd
        .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(root.join("server"));
    let (server_child, server) = spawn_service(server_cmd);
    let mut procs = Procs(vec![server_child]);
    wait_http(&server);
    let token = root.join("server/operator.token");
    let mut kms = Vec::new();
    for firm in ["acme", "bank"] {
        let kdir = root.join(format!("km-{firm}"));
        let init = json(
            cmd(None)
                .args(["--json", "km", "init", "--tenant", firm, "--data-dir"])
                .arg(&kdir)
                .output()
                .unwrap(),
        );
        let mut c = cmd(None);
        c.args([
            "km",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--server",
            &server,
        ])
        .arg("--data-dir")
        .arg(&kdir);
        let (child, km) = spawn_service(c);
        procs.0.push(child);
        wait_http(&km);
        ok(cmd(None)
            .args(["admin", "register-tenant", "--server", &server, "--km", &km])
            .arg("--operator-token-file")
            .arg(&token)
            .output()
            .unwrap());
        kms.push((firm, km, init["code"].as_str().unwrap().to_owned()));
    }
    let home = |who: &str| root.join("homes").join(who);
    let run = |who: &str, args: &[&str]| cmd(Some(&home(who))).args(args).output().unwrap();
    let km_of = |firm: &str| kms.iter().find(|k| k.0 == firm).unwrap().1.clone();
    let enrol = |who: &str, firm: &str, code: &str| {
        json(run(
            &format!("{who}-{firm}"),
            &[
                "--json",
                "enrol",
                "--server",
                &server,
                "--km",
                &km_of(firm),
                "--user",
                &format!("{who}@{firm}"),
                "--code",
                code,
            ],
        ));
    };
    for (firm, _, code) in &kms {
        enrol("admin", firm, code);
    }
    // each admin reads its KM identity and pins the other's, with its address
    let ids: Vec<Value> = ["acme", "bank"]
        .iter()
        .map(|f| {
            json(run(
                &format!("admin-{f}"),
                &["--json", "admin", "trust", "self"],
            ))
        })
        .collect();
    for (me, other, id) in [("acme", "bank", &ids[1]), ("bank", "acme", &ids[0])] {
        ok(run(
            &format!("admin-{me}"),
            &[
                "admin",
                "trust",
                "add",
                other,
                "--km-key",
                id["km_key"].as_str().unwrap(),
                "--fingerprint",
                id["fingerprint"].as_str().unwrap(),
                "--km-url",
                &km_of(other),
            ],
        ));
    }
    for (who, firm) in [("alice", "acme"), ("bob", "bank")] {
        let code = json(run(
            &format!("admin-{firm}"),
            &["--json", "admin", "add-user", &format!("{who}@{firm}")],
        ))["code"]
            .as_str()
            .unwrap()
            .to_owned();
        enrol(who, firm, &code);
        ok(run(
            &format!("admin-{firm}"),
            &[
                "admin",
                "entitle",
                &format!("{who}@{firm}"),
                "--grant",
                "external_chat",
            ],
        ));
    }
    // without a connection, no shared room: refused, one clear line
    let err = fails(run(
        "alice-acme",
        &[
            "room",
            "create",
            "early",
            "--external",
            "--member",
            "bob@bank",
        ],
    ));
    assert!(err.contains("not connected"), "{err}");
    let req = json(run(
        "alice-acme",
        &["--json", "connect", "request", "bob@bank"],
    ));
    ok(run(
        "bob-bank",
        &["connect", "accept", req["id"].as_str().unwrap()],
    ));
    let room = json(run(
        "alice-acme",
        &[
            "--json",
            "room",
            "create",
            "deal",
            "--external",
            "--member",
            "bob@bank",
        ],
    ))["room"]
        .as_str()
        .unwrap()
        .to_owned();
    ok(run("alice-acme", &["send", &room, "term sheet attached"]));
    let text = ok(run("bob-bank", &["read", &room]));
    assert!(text.contains("term sheet attached"), "{text}");
    ok(run("bob-bank", &["send", &room, "countersigned"]));
    let text = ok(run("alice-acme", &["read", &room]));
    assert!(text.contains("countersigned"), "{text}");
    // not an external room: refused
    let err = fails(run(
        "alice-acme",
        &["room", "create", "plain", "--member", "bob@bank"],
    ));
    assert!(err.contains("not_external"), "{err}");
    // each KM's record of the exchange
    let sent = ok(run(
        "admin-acme",
        &["--json", "audit", "list", "--kind", "key_exchange"],
    ));
    assert!(sent.contains("\"sent\"") && sent.contains("bank"), "{sent}");
    let got = ok(run(
        "admin-bank",
        &["--json", "audit", "list", "--kind", "key_exchange"],
    ));
    assert!(
        got.contains("\"received\"") && got.contains("acme"),
        "{got}"
    );
    // bob removed: no longer served by either side
    ok(run("alice-acme", &["room", "remove", &room, "bob@bank"]));
    ok(run("alice-acme", &["send", &room, "between us"]));
    let err = fails(run("bob-bank", &["read", &room]));
    assert!(err.contains("no_such_room"), "{err}");
    // acme stops trusting bank: bank's users get no new epoch of acme's rooms
    ok(run(
        "admin-acme",
        &[
            "admin",
            "trust",
            "remove",
            "bank",
            "--reason",
            "relationship ended",
        ],
    ));
    let listed = ok(run("admin-acme", &["admin", "trust", "list"]));
    assert!(listed.contains("removed"), "{listed}");
}

/// Cluster and bench flags that cannot work are refused with one clear
/// line before anything starts.
#[test]
fn cluster_and_bench_misconfigurations_get_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let server = |extra: &[&str]| {
        cmd(None)
            .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data)
            .args(extra)
            .output()
            .unwrap()
    };
    // several nodes cannot share one node's own SQLite file
    let err = fails(server(&["--nats", "nats://127.0.0.1:4222"]));
    assert!(
        err.contains("--nats needs --database-url postgres://"),
        "{err}"
    );
    // a node name NATS could not carry (it names a durable consumer)
    let rt = tokio::runtime::Runtime::new().unwrap();
    if let Some(pg) = rt.block_on(cloister_store::testkit::PgDatabase::create()) {
        for bad in ["bad name", "a.b", "x*", ""] {
            let err = fails(server(&[
                "--database-url",
                &pg.url,
                "--nats",
                "nats://127.0.0.1:4222",
                "--node",
                bad,
            ]));
            assert!(err.contains("invalid node name"), "{bad:?}: {err}");
        }
        // NATS that is not there
        let err = fails(server(&[
            "--database-url",
            &pg.url,
            "--nats",
            "nats://127.0.0.1:9",
            "--node",
            "n1",
        ]));
        assert!(err.contains("NATS at nats://127.0.0.1:9"), "{err}");
    }
    // bench: what it would need and what it cannot do
    let bench = |args: &[&str]| fails(cmd(None).arg("bench").args(args).output().unwrap());
    for (args, want) in [
        (
            &["--nodes", "3"][..],
            "--nodes above 1 needs --database-url",
        ),
        (&["--nodes", "0"][..], "--nodes: 1 to 16"),
        (&["--nodes", "17"][..], "--nodes: 1 to 16"),
        (
            &["--server", "http://127.0.0.1:9"][..],
            "--server needs --km",
        ),
        (
            &[
                "--server",
                "http://127.0.0.1:9",
                "--km",
                "http://127.0.0.1:9",
            ][..],
            "--server needs --admin-home",
        ),
        (&["--clients", "1"][..], "need clients >= room-size >= 2"),
    ] {
        let err = bench(args);
        assert!(err.contains(want), "{args:?}: {err}");
    }
    assert!(!data.join("server.db").exists(), "nothing was created");
}

#[test]
fn the_demo_runs_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("demo");
    // and with the development file provider: the lock is a withdrawn key file
    let v = json(
        cmd(None)
            .env("CLOISTER_DEMO_FILE_KEY", "1")
            .args(["--json", "demo", "--tls", "--data-dir"])
            .arg(&data)
            .output()
            .unwrap(),
    );
    assert_eq!(v["ok"], true, "{v}");
    assert!(v["failures"].as_array().unwrap().is_empty());
    assert!(data.join("km/tmk.sealed").exists());
    // its own CA and a certificate per service, keys readable by the owner only
    assert!(data.join("tls/ca.pem").exists());
    for s in ["km", "server", "vault"] {
        assert!(data.join(format!("tls/{s}.pem")).exists(), "{s}");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(data.join(format!("tls/{s}.key")))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o077, 0, "{s}.key is {mode:o}");
    }
}

#[test]
fn a_service_with_a_bad_tls_file_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.pem");
    let out = cmd(None)
        .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("server"))
        .arg("--tls-cert")
        .arg(&missing)
        .arg("--tls-key")
        .arg(&missing)
        .output()
        .unwrap();
    let err = fails(out);
    assert!(
        err.contains("TLS certificate") && err.contains(&missing.display().to_string()),
        "{err}"
    );
    // a key without its certificate: the usage error names what is missing
    let out = cmd(None)
        .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("server"))
        .arg("--tls-key")
        .arg(&missing)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("required") && err.contains("--tls-cert"),
        "{err}"
    );
}
