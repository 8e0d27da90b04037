//! Services and commands as processes: the `cloister` binary started the
//! way an operator starts it.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::Value;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_cloister");

pub struct Procs(pub Vec<Child>);
impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn cmd(home: Option<&Path>) -> Command {
    let mut c = Command::new(BIN);
    c.env_remove("CLOISTER_HOME")
        .env("CLOISTER_PASSPHRASE", "device pass")
        .env("CLOISTER_KM_PASSPHRASE", "km pass")
        // the tests' stacks speak TLS under this process's CA
        .env("CLOISTER_CA_FILE", super::test_tls().ca_file());
    if let Some(h) = home {
        c.arg("--home").arg(h);
    }
    c
}

pub fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "command failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub fn json(out: Output) -> Value {
    serde_json::from_str(ok(out).trim()).unwrap()
}

/// A failing command: non-zero exit, exactly one line on stderr starting with "error:".
pub fn fails(out: Output) -> String {
    assert!(
        !out.status.success(),
        "expected failure, got: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let err = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one clear line on stderr, got: {err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    lines[0].to_owned()
}

/// Starts a service on an ephemeral port it binds itself (`--listen
/// 127.0.0.1:0`) and returns it with the URL it reports on stderr
/// ("... listening on http://ADDR ..."). Picking a free port first and
/// passing it in raced with every other test binding ports meanwhile.
pub fn spawn_service(c: Command) -> (Child, String) {
    let (child, mut urls) = spawn_reporting(c, &["listening on "]);
    (child, urls.remove(0))
}

/// Start `cloister`, reading stderr until each marker has been printed;
/// the word after each (a URL), in the markers' order.
pub fn spawn_reporting(mut c: Command, markers: &[&str]) -> (Child, Vec<String>) {
    use std::io::BufRead;
    let mut child = c
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut urls = vec![String::new(); markers.len()];
    while urls.iter().any(String::is_empty) {
        let line = lines
            .next()
            .expect("service exited before it listened")
            .unwrap();
        for (i, m) in markers.iter().enumerate() {
            if let Some(at) = line.find(m) {
                urls[i] = line[at + m.len()..]
                    .split_whitespace()
                    .next()
                    .unwrap()
                    .trim_end_matches([';', ','])
                    .to_owned();
            }
        }
    }
    // keep draining stderr so the service never blocks on a full pipe
    std::thread::spawn(move || for _ in lines {});
    (child, urls)
}

pub fn wait_http(url: &str) {
    for _ in 0..200 {
        if std::net::TcpStream::connect(url.trim_start_matches("http://")).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{url} never came up");
}

/// A KM pair's directories: `km init` of tenant acme in `first` on the
/// database at `db`, and `second` a copy of it (the sealed master key), as
/// an operator provisions a standby. The init's JSON (the admin's code).
pub fn init_km_pair(first: &Path, second: &Path, db: &str) -> Value {
    let init = json(
        cmd(None)
            .env("CLOISTER_DATABASE_URL", db)
            .args(["--json", "km", "init", "--tenant", "acme", "--data-dir"])
            .arg(first)
            .output()
            .unwrap(),
    );
    std::fs::create_dir_all(second).unwrap();
    for f in std::fs::read_dir(first).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), second.join(f.file_name())).unwrap();
    }
    init
}
