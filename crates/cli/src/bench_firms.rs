//! `cloister bench-firms`: one external room of M members spread over F
//! firms, each firm's KM its own process (`km serve`), all on one messaging
//! server process. Every firm pins every other; the room's owner (of the
//! first firm, the room's home) is connected with every member of another
//! firm. Measured: after the owner removes a member, the time until every
//! remaining member holds the new epoch's key (each member's device asks
//! its own KM; each partner KM gets the key from the home KM in one
//! KM-to-KM exchange), as percentiles over all members and rounds.

use crate::BoxError;
use crate::bench::pct;
use cloister_client::{Client, Storage};
use cloister_proto::room::RoomSettings;
use cloister_proto::{RoomId, TenantId, UserId};
use futures_util::StreamExt;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug, Clone)]
pub struct FirmsBenchArgs {
    /// Firms (each with its own KM process).
    #[arg(long, default_value_t = 25)]
    pub firms: usize,
    /// Members of the room, spread evenly over the firms.
    #[arg(long, default_value_t = 300)]
    pub members: usize,
    /// Removals measured (one member each).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Keep data here (default: a temporary directory).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

const KM_PASS: &str = "bench KM passphrase (development only)";

/// Child processes, killed when dropped.
struct Children(Vec<std::process::Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Start `cloister ARGS` and wait for the address it reports listening on.
fn spawn(kids: &mut Children, args: &[&str], dir: &Path) -> Result<String, BoxError> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .env("CLOISTER_KM_PASSPHRASE", KM_PASS)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().ok_or("no stderr")?;
    kids.0.push(child);
    let mut lines = std::io::BufReader::new(stderr).lines();
    let url = loop {
        let line = lines
            .next()
            .ok_or_else(|| format!("`cloister {}` exited before listening", args.join(" ")))??;
        if let Some(at) = line.find("listening on http://") {
            break line[at + "listening on ".len()..]
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .trim_end_matches([';', ','])
                .to_owned();
        }
    };
    std::thread::spawn(move || lines.for_each(drop));
    Ok(url)
}

struct Firm {
    tenant: TenantId,
    km_url: String,
    admin: Client,
    members: Vec<Client>,
}

async fn start_firm(
    kids: &mut Children,
    dir: &Path,
    i: usize,
    server: &str,
    token: &str,
    http: &reqwest::Client,
) -> Result<Firm, BoxError> {
    let tenant: TenantId = format!("firm{i:02}").parse()?;
    let kdir = dir.join(tenant.as_str());
    let out = Command::new(std::env::current_exe()?)
        .args([
            "--json",
            "km",
            "init",
            "--tenant",
            tenant.as_str(),
            "--data-dir",
        ])
        .arg(&kdir)
        .env("CLOISTER_KM_PASSPHRASE", KM_PASS)
        .output()?;
    if !out.status.success() {
        return Err(format!("km init: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    let init: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let code = init["code"].as_str().ok_or("km init printed no code")?;
    // the bench measures the exchange, not the rate limiters
    let mut args = vec!["km", "serve", "--listen", "127.0.0.1:0", "--server", server];
    args.extend(crate::bench::target::KM_LIMITS_OFF);
    let km_url = spawn(kids, &args, &kdir)?;
    let info = cloister_client::km_info(http, &km_url).await?;
    cloister_client::register_tenant(http, server, token, &info).await?;
    let admin = Client::enrol(
        http.clone(),
        server,
        &km_url,
        &format!("admin@{tenant}").parse()?,
        code,
        Storage::Memory,
    )
    .await?;
    Ok(Firm {
        tenant,
        km_url,
        admin,
        members: Vec::new(),
    })
}

async fn add_members(
    f: &mut Firm,
    n: usize,
    server: &str,
    http: &reqwest::Client,
) -> Result<(), BoxError> {
    let mut users: Vec<UserId> = Vec::new();
    for k in 0..n {
        let user: UserId = format!("m{k:03}@{}", f.tenant).parse()?;
        let code = f.admin.admin_add_user(&user, false).await?.code;
        f.members.push(
            Client::enrol(
                http.clone(),
                server,
                &f.km_url,
                &user,
                &code,
                Storage::Memory,
            )
            .await?,
        );
        users.push(user);
    }
    f.admin
        .admin_group_set("external-desk", &users, &[])
        .await?;
    f.admin
        .admin_entitle(
            None,
            Some("external-desk"),
            &[cloister_proto::controls::Entitlement::ExternalChat],
            &[],
        )
        .await?;
    Ok(())
}

/// Every remaining member asks for `epoch` at once; each one's time from `t0`.
async fn all_hold(
    members: &[&Client],
    room: &RoomId,
    epoch: u64,
    t0: Instant,
) -> Result<Vec<f64>, BoxError> {
    let results: Vec<Result<f64, String>> = futures_util::stream::iter(members.iter())
        .map(|c| async move {
            c.room_keys(room, &[epoch])
                .await
                .map(|_| t0.elapsed().as_secs_f64() * 1000.0)
                .map_err(|e| format!("{}: {e}", c.user()))
        })
        .buffer_unordered(members.len().max(1))
        .collect()
        .await;
    results
        .into_iter()
        .collect::<Result<Vec<f64>, String>>()
        .map_err(Into::into)
}

pub async fn run(a: FirmsBenchArgs, json: bool) -> Result<(), BoxError> {
    if a.firms < 2 || a.firms > 100 || a.members < a.firms * 2 || a.members > 1000 {
        return Err("need 2 to 100 firms and 2 members per firm, at most 1,000 members".into());
    }
    if a.rounds == 0 || a.rounds >= a.members / a.firms {
        return Err("rounds: at least 1, fewer than the members of a firm".into());
    }
    let tmp = tempfile::tempdir()?;
    let dir = a.data_dir.clone().unwrap_or_else(|| tmp.path().to_owned());
    let http = cloister_tls::http_client();
    let mut kids = Children(Vec::new());
    let setup = Instant::now();
    let mut args = vec!["server", "--listen", "127.0.0.1:0"];
    args.extend(crate::bench::target::SERVER_LIMITS_OFF);
    let server = spawn(&mut kids, &args, &dir.join("server"))?;
    let token = std::fs::read_to_string(cloister_server::operator_token_path(&dir.join("server")))?;
    let token = token.trim();
    let mut firms = Vec::new();
    for i in 0..a.firms {
        firms.push(start_firm(&mut kids, &dir, i, &server, token, &http).await?);
    }
    let say = |m: String| {
        if !json {
            eprintln!("{m}");
        }
    };
    say(format!(
        "{} KM processes and a server up in {:.1} s",
        a.firms,
        setup.elapsed().as_secs_f64()
    ));
    // every firm pins every other, with its KM's address
    let ids =
        futures_util::future::try_join_all(firms.iter().map(|f| f.admin.trust_self())).await?;
    futures_util::future::try_join_all(firms.iter().enumerate().map(|(i, f)| {
        let (ids, firms) = (&ids, &firms);
        async move {
            for (j, other) in firms.iter().enumerate().filter(|(j, _)| *j != i) {
                f.admin
                    .trust_add_at(
                        &other.tenant,
                        &ids[j].km_key,
                        Some(&ids[j].fingerprint),
                        Some(&other.km_url),
                    )
                    .await?;
            }
            Ok::<_, cloister_client::ClientError>(())
        }
    }))
    .await?;
    let per = a.members / a.firms;
    let extra = a.members % a.firms;
    futures_util::future::try_join_all(firms.iter_mut().enumerate().map(|(i, f)| {
        let (server, http) = (&server, &http);
        async move { add_members(f, per + usize::from(i < extra), server, http).await }
    }))
    .await?;
    let owner = &firms[0].members[0];
    // the owner connects with every member of another firm
    let foreign: Vec<&Client> = firms[1..].iter().flat_map(|f| f.members.iter()).collect();
    let connected: Vec<Result<(), cloister_client::ClientError>> =
        futures_util::stream::iter(foreign.iter())
            .map(|m| async move {
                let v = owner.connect_request(m.user()).await?;
                m.connect_answer(&v.id, true).await?;
                Ok(())
            })
            .buffer_unordered(16)
            .collect()
            .await;
    connected.into_iter().collect::<Result<Vec<()>, _>>()?;
    let others: Vec<UserId> = firms
        .iter()
        .flat_map(|f| f.members.iter())
        .filter(|m| m.user() != owner.user())
        .map(|m| m.user().clone())
        .collect();
    let room = owner
        .create_room(
            RoomSettings {
                name: "syndicate".into(),
                external: true,
                ..Default::default()
            },
            &others,
        )
        .await?;
    let mut members: Vec<&Client> = firms.iter().flat_map(|f| f.members.iter()).collect();
    // steady state: every member holds epoch 0
    let warm = Instant::now();
    all_hold(&members, &room, 0, warm).await?;
    say(format!(
        "{} members of {} firms in room {room}; everyone holds epoch 0 ({:.2} s to warm up; setup {:.1} s)",
        members.len(),
        a.firms,
        warm.elapsed().as_secs_f64(),
        setup.elapsed().as_secs_f64()
    ));
    let mut all = Vec::new();
    let mut rounds = Vec::new();
    for r in 0..a.rounds {
        // a member of another firm than the home's, whose firm keeps others
        let victim = firms[1 + r % (a.firms - 1)].members[r / (a.firms - 1)]
            .user()
            .clone();
        let t0 = Instant::now();
        let st = owner.remove_member(&room, &victim).await?;
        let removed_ms = t0.elapsed().as_secs_f64() * 1000.0;
        members.retain(|m| m.user() != &victim);
        let mut t = all_hold(&members, &room, st.epoch, t0).await?;
        t.sort_by(f64::total_cmp);
        say(format!(
            "round {}: {victim} removed in {removed_ms:.0} ms; epoch {} held by all {} remaining members: p50 {:.0} ms  p99 {:.0} ms  max {:.0} ms",
            r + 1,
            st.epoch,
            t.len(),
            pct(&t, 0.5),
            pct(&t, 0.99),
            t.last().copied().unwrap_or(f64::NAN)
        ));
        rounds.push(serde_json::json!({
            "epoch": st.epoch, "removed_ms": removed_ms, "members": t.len(),
            "p50_ms": pct(&t, 0.5), "p99_ms": pct(&t, 0.99), "max_ms": t.last(),
        }));
        all.extend(t);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    all.sort_by(f64::total_cmp);
    let summary = serde_json::json!({
        "firms": a.firms,
        "members": a.members,
        "rounds": rounds,
        "all_ms": {"samples": all.len(), "p50": pct(&all, 0.5), "p99": pct(&all, 0.99), "max": all.last()},
    });
    if json {
        println!("{summary}");
    } else {
        println!(
            "new epoch key held by every remaining member after a removal, {} samples over {} rounds: p50 {:.0} ms  p99 {:.0} ms  max {:.0} ms",
            all.len(),
            a.rounds,
            pct(&all, 0.5),
            pct(&all, 0.99),
            all.last().copied().unwrap_or(f64::NAN)
        );
    }
    Ok(())
}
