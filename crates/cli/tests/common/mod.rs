//! Shared helpers for integration tests: a real KM and server on ephemeral
//! ports, SDK clients, and "raw" devices that speak the wire protocol directly.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod procs;
pub mod proxy;
pub mod softhsm;
pub mod webdriver;

use cloister_cli::{Stack, StackOptions};
use cloister_client::{Client, Storage};
use cloister_crypto::DeviceKeys;
use cloister_crypto::passphrase::Cost;
use cloister_crypto::signed;
use cloister_proto::b64::Fixed;
use cloister_proto::km::{DeviceCert, EnrolRequest, KmOp, RequestBody, SignedCert};
use cloister_proto::{ErrorBody, UserId};
use std::path::Path;

pub struct World {
    pub dir: tempfile::TempDir,
    pub stack: Stack,
    pub admin: Client,
    pub http: reqwest::Client,
}

pub fn opts() -> StackOptions {
    let mut o = StackOptions::new("acme".parse().unwrap());
    o.cost = Cost::TEST;
    o.vault_refresh = std::time::Duration::from_millis(200);
    // The stack speaks TLS in the tests, as in production.
    o.tls = Some(test_tls());
    o
}

/// One development CA per test process: every world's services get
/// certificates from it, and this process trusts it.
pub fn test_tls() -> cloister_cli::tls_args::LocalTls {
    static TLS: std::sync::OnceLock<cloister_cli::tls_args::LocalTls> = std::sync::OnceLock::new();
    TLS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        cloister_cli::tls_args::LocalTls::create(&dir).unwrap()
    })
    .clone()
}

/// The live socket's URL of a server (`ws://` or `wss://`).
pub fn ws_url(server_url: &str) -> String {
    let url = if let Some(rest) = server_url.strip_prefix("https://") {
        format!("wss://{rest}")
    } else {
        server_url.replacen("http://", "ws://", 1)
    };
    url + "/v1/ws"
}

/// Open a WebSocket with this process's TLS (the test CA).
pub async fn ws_connect(
    req: impl tokio_tungstenite::tungstenite::client::IntoClientRequest + Unpin,
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    tokio_tungstenite::tungstenite::Error,
> {
    let connector = tokio_tungstenite::Connector::Rustls(cloister_tls::outgoing().config());
    tokio_tungstenite::connect_async_tls_with_config(req, None, true, Some(connector))
        .await
        .map(|(ws, _)| ws)
}

impl World {
    pub async fn new() -> World {
        Self::with(opts()).await
    }

    pub async fn with(o: StackOptions) -> World {
        let dir = tempfile::tempdir().unwrap();
        let stack = Stack::start(dir.path(), o).await.unwrap();
        let http = cloister_tls::http_client();
        let admin = Client::enrol(
            http.clone(),
            &stack.server_url,
            &stack.km_url,
            &"admin@acme".parse().unwrap(),
            stack.admin_code.as_deref().unwrap(),
            Storage::Memory,
        )
        .await
        .unwrap();
        World {
            dir,
            stack,
            admin,
            http,
        }
    }

    pub fn uid(name: &str) -> UserId {
        format!("{name}@acme").parse().unwrap()
    }

    /// A new user with one in-memory device.
    pub async fn user(&self, name: &str) -> Client {
        self.device_of(&Self::uid(name)).await
    }

    /// A new user whose in-memory device talks to the server at `server`
    /// (another node, a proxy in front of the stack's server).
    pub async fn user_on(&self, name: &str, server: &str) -> Client {
        let user = Self::uid(name);
        let code = self.admin.admin_add_user(&user, false).await.unwrap().code;
        Client::enrol(
            self.http.clone(),
            server,
            &self.stack.km_url,
            &user,
            &code,
            Storage::Memory,
        )
        .await
        .unwrap()
    }

    /// A new user with roles (compliance, custodian, surveillance…).
    pub async fn user_with(&self, name: &str, roles: &[cloister_proto::km::Role]) -> Client {
        let user = Self::uid(name);
        let code = self
            .admin
            .admin_add_user_roles(&user, roles)
            .await
            .unwrap()
            .code;
        self.enrol_in_memory(&user, &code).await
    }

    async fn enrol_in_memory(&self, user: &UserId, code: &str) -> Client {
        Client::enrol(
            self.http.clone(),
            &self.stack.server_url,
            &self.stack.km_url,
            user,
            code,
            Storage::Memory,
        )
        .await
        .unwrap()
    }

    /// Register the stack's vault with the KM (capture required or not) and
    /// return its URL.
    pub async fn register_vault(&self, required: bool) -> String {
        self.admin
            .admin_vault_register(&self.stack.vault_url, required)
            .await
            .unwrap();
        self.stack.vault_url.clone()
    }

    /// Another device for an existing (or new) user.
    pub async fn device_of(&self, user: &UserId) -> Client {
        let code = self.admin.admin_add_user(user, false).await.unwrap().code;
        self.enrol_in_memory(user, &code).await
    }

    /// A device stored on disk (for restart tests).
    pub async fn disk_user(&self, name: &str, dir: &Path) -> Client {
        self.disk_user_with(name, &[], dir).await
    }

    /// A user with these roles whose device keeps its keys in `dir`
    /// (passphrase `pw`).
    pub async fn disk_user_with(
        &self,
        name: &str,
        roles: &[cloister_proto::km::Role],
        dir: &Path,
    ) -> Client {
        let user = Self::uid(name);
        let code = self
            .admin
            .admin_add_user_roles(&user, roles)
            .await
            .unwrap()
            .code;
        Client::enrol(
            self.http.clone(),
            &self.stack.server_url,
            &self.stack.km_url,
            &user,
            &code,
            Storage::Dir {
                path: dir,
                passphrase: b"pw",
                cost: Cost::TEST,
            },
        )
        .await
        .unwrap()
    }

    pub async fn raw_with(&self, name: &str, roles: &[cloister_proto::km::Role]) -> RawDevice {
        let user = Self::uid(name);
        let code = self
            .admin
            .admin_add_user_roles(&user, roles)
            .await
            .unwrap()
            .code;
        RawDevice::enrol(self, &user, &code).await
    }

    pub async fn raw(&self, name: &str) -> RawDevice {
        let user = Self::uid(name);
        let code = self.admin.admin_add_user(&user, false).await.unwrap().code;
        RawDevice::enrol(self, &user, &code).await
    }
}

/// A device driven by hand, to send what an honest SDK never would.
pub struct RawDevice {
    pub keys: DeviceKeys,
    pub user: UserId,
    pub cert: DeviceCert,
    pub signed_cert: SignedCert,
    pub km_url: String,
    pub server_url: String,
    pub http: reqwest::Client,
}

impl RawDevice {
    pub async fn enrol(w: &World, user: &UserId, code: &str) -> RawDevice {
        Self::enrol_at(
            &w.http,
            &w.stack.km_url,
            &w.stack.km.info().sign_pk.0,
            &w.stack.server_url,
            user,
            code,
        )
        .await
    }

    /// Enrol with the KM at `km_url` (whose key is `km_pk`) and register
    /// the certificate with the server at `server_url`.
    pub async fn enrol_at(
        http: &reqwest::Client,
        km_url: &str,
        km_pk: &[u8; 32],
        server_url: &str,
        user: &UserId,
        code: &str,
    ) -> RawDevice {
        let keys = DeviceKeys::generate().unwrap();
        let pop = keys.sign(
            signed::ENROL,
            &signed::enrol_transcript(user, code, &keys.sign_pk(), &keys.hpke_pk()),
        );
        let req = EnrolRequest {
            user: user.clone(),
            code: code.into(),
            sign_pk: Fixed(keys.sign_pk()),
            hpke_pk: Fixed(keys.hpke_pk()),
            pop: Fixed(pop),
            evidence: None,
        };
        let r = http
            .post(format!("{km_url}/v1/enrol"))
            .json(&req)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let signed_cert: SignedCert = r.json().await.unwrap();
        let cert = signed::verify_cert(km_pk, &signed_cert).unwrap();
        let r = http
            .post(format!("{server_url}/v1/devices"))
            .json(&cloister_proto::server::RegisterDevice {
                cert: signed_cert.clone(),
            })
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        RawDevice {
            keys,
            user: user.clone(),
            cert,
            signed_cert,
            km_url: km_url.to_owned(),
            server_url: server_url.to_owned(),
            http: http.clone(),
        }
    }

    /// Send a signed vault request; returns (status, JSON body).
    pub async fn vault(
        &self,
        vault_url: &str,
        op: &cloister_proto::vault::VaultOp,
    ) -> (u16, serde_json::Value) {
        let req = signed::sign_vault_request(&self.keys, &self.signed_cert, op).unwrap();
        let r = self
            .http
            .post(format!("{vault_url}/v1/request"))
            .json(&req)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }

    /// Send a signed KM request; returns (status, JSON body).
    pub async fn km(&self, op: KmOp) -> (u16, serde_json::Value) {
        self.km_at(&self.km_url.clone(), op).await
    }

    /// Send a signed request to the KM at `km_url` (perhaps not its own).
    pub async fn km_at(&self, km_url: &str, op: KmOp) -> (u16, serde_json::Value) {
        let body = RequestBody {
            device: self.keys.device_id(),
            ts: cloister_proto::now_millis(),
            nonce: Fixed(cloister_crypto::random_bytes::<16>().unwrap()),
            op,
        };
        let req = signed::sign_request(&self.keys, &body).unwrap();
        let r = self
            .http
            .post(format!("{km_url}/v1/request"))
            .json(&req)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }

    /// `GET path` at the server with a fresh session; the JSON answer.
    pub async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> T {
        let r = self
            .http
            .get(format!("{}{path}", self.server_url))
            .bearer_auth(self.token().await)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "GET {path}: {}", r.status());
        r.json().await.unwrap()
    }

    pub async fn token(&self) -> String {
        let ts = cloister_proto::now_millis();
        let nonce = cloister_crypto::random_bytes::<16>().unwrap();
        let sig = self.keys.sign(
            signed::LOGIN,
            &signed::login_transcript(&self.keys.device_id(), ts, &nonce),
        );
        let req = cloister_proto::server::LoginRequest {
            device: self.keys.device_id(),
            ts,
            nonce: Fixed(nonce),
            sig: Fixed(sig),
        };
        let r = self
            .http
            .post(format!("{}/v1/session", self.server_url))
            .json(&req)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.json::<cloister_proto::server::LoginResponse>()
            .await
            .unwrap()
            .token
    }
}

/// Assert an error response: status, JSON body with the given code.
/// Every audit record of the tenant as (kind, JSON).
pub async fn audit_kinds(w: &World) -> Vec<(String, String)> {
    w.admin
        .audit_list(0, 10_000, None, None, None)
        .await
        .unwrap()
        .into_iter()
        .map(|(_, r, b)| {
            (
                r.event.kind().to_owned(),
                String::from_utf8_lossy(&b).into_owned(),
            )
        })
        .collect()
}

pub async fn expect_error(r: reqwest::Response, status: u16, code: &str) -> String {
    assert_eq!(r.status().as_u16(), status, "status");
    let b: ErrorBody = r.json().await.expect("error body is JSON {error, message}");
    assert_eq!(b.error, code, "error code (message: {})", b.message);
    assert!(!b.message.is_empty());
    b.message
}

/// Every file under `dir`, concatenated per file.
pub fn files_under(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out
}

pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// A second firm on the same messaging server: its own KM (in this
/// process) registered with the server, and a raw device of its admin.
pub struct Foreign {
    pub km: std::sync::Arc<cloister_km::Km>,
    pub km_url: String,
    pub device: RawDevice,
    _firm: Firm,
}

impl World {
    pub async fn foreign(&self, tenant: &str) -> Foreign {
        let firm = self.firm(tenant).await;
        let admin = firm.uid("admin");
        let code = firm.admin.admin_add_user(&admin, true).await.unwrap().code;
        let device = RawDevice::enrol_at(
            &self.http,
            &firm.km_url,
            &firm.km.info().sign_pk.0,
            &self.stack.server_url,
            &admin,
            &code,
        )
        .await;
        Foreign {
            km: firm.km.clone(),
            km_url: firm.km_url.clone(),
            device,
            _firm: firm,
        }
    }
}

/// Another firm on the same messaging server, with its own KM (its own
/// HTTP listener) and an SDK admin: for rooms between firms.
pub struct Firm {
    pub tenant: cloister_proto::TenantId,
    pub km: std::sync::Arc<cloister_km::Km>,
    pub km_url: String,
    pub admin: Client,
    pub server_url: String,
    /// The firm's own compliance vault (its admin registers it with the KM).
    pub vault_url: String,
    pub dir: tempfile::TempDir,
    http: reqwest::Client,
    _tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl World {
    /// A second firm registered with this world's server.
    pub async fn firm(&self, tenant: &str) -> Firm {
        let dir = tempfile::tempdir().unwrap();
        let f = cloister_cli::firm::start_partner_firm(
            dir.path(),
            cloister_cli::firm::FirmOptions {
                tenant: tenant.parse().unwrap(),
                km_passphrase: b"other firm",
                cost: Cost::TEST,
                server_url: &self.stack.server_url,
                operator_token: &self.stack.operator_token,
                vault_refresh: std::time::Duration::from_millis(200),
                tls: self.stack.tls.as_ref(),
            },
        )
        .await
        .unwrap();
        let admin = Client::enrol(
            self.http.clone(),
            &self.stack.server_url,
            &f.km_url,
            &format!("admin@{tenant}").parse().unwrap(),
            &f.admin_code,
            Storage::Memory,
        )
        .await
        .unwrap();
        Firm {
            tenant: f.tenant,
            km: f.km,
            km_url: f.km_url,
            admin,
            server_url: self.stack.server_url.clone(),
            vault_url: f.vault_url,
            dir,
            http: self.http.clone(),
            _tasks: f.tasks,
        }
    }

    /// Acme and `other` pin each other (each with the other's KM address).
    pub async fn trust_each_other(&self, other: &Firm) {
        let acme = self.admin.trust_self().await.unwrap();
        pin(&self.admin, &other.admin, &other.km_url).await;
        pin_id(&other.admin, &acme, &self.stack.km_url).await;
    }
}

/// `admin`'s firm pins the firm whose admin is `theirs`, at `km_url`.
pub async fn pin(admin: &Client, theirs: &Client, km_url: &str) {
    pin_id(admin, &theirs.trust_self().await.unwrap(), km_url).await;
}

async fn pin_id(admin: &Client, id: &cloister_proto::federation::OwnIdentity, km_url: &str) {
    admin
        .trust_add_at(&id.tenant, &id.km_key, Some(&id.fingerprint), Some(km_url))
        .await
        .unwrap();
}

impl Firm {
    pub fn uid(&self, name: &str) -> UserId {
        format!("{name}@{}", self.tenant).parse().unwrap()
    }

    /// A new user of this firm with one in-memory device.
    pub async fn user(&self, name: &str) -> Client {
        self.user_with(name, &[]).await
    }

    /// A new user with roles (compliance, custodian…).
    pub async fn user_with(&self, name: &str, roles: &[cloister_proto::km::Role]) -> Client {
        let user = self.uid(name);
        let roles = if roles.is_empty() {
            vec![cloister_proto::km::Role::User]
        } else {
            roles.to_vec()
        };
        let code = self
            .admin
            .admin_add_user_roles(&user, &roles)
            .await
            .unwrap()
            .code;
        Client::enrol(
            self.http.clone(),
            &self.server_url,
            &self.km_url,
            &user,
            &code,
            Storage::Memory,
        )
        .await
        .unwrap()
    }
}

impl Firm {
    /// Pin acme (the world's firm).
    pub async fn trust_acme(&self, w: &World) {
        pin(&self.admin, &w.admin, &w.stack.km_url).await;
    }
}

/// Grant `external_chat` to users (through their firm's admin).
pub async fn entitle_external(admin: &Client, users: &[&Client]) {
    for u in users {
        admin
            .admin_entitle(
                Some(u.user()),
                None,
                &[cloister_proto::controls::Entitlement::ExternalChat],
                &[],
            )
            .await
            .unwrap();
    }
}

/// `a` asks `b` (of another firm) to connect and `b` accepts.
pub async fn connect(a: &Client, b: &Client) {
    let v = a.connect_request(b.user()).await.unwrap();
    let v = b.connect_answer(&v.id, true).await.unwrap();
    assert_eq!(v.state, "accepted");
}

/// A witness on a loopback port, following nothing yet.
pub async fn start_witness(
    name: &str,
) -> (
    std::sync::Arc<cloister_witness::Witness>,
    String,
    tempfile::TempDir,
) {
    let dir = tempfile::tempdir().unwrap();
    let w = std::sync::Arc::new(
        cloister_witness::Witness::open_dir(dir.path(), Some(name))
            .await
            .unwrap(),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let r = cloister_witness::router(w.clone());
    tokio::spawn(async move {
        let _ = cloister_http::serve(l, r, std::future::pending()).await;
    });
    (w, url, dir)
}

/// A case scope of the last and the next hour: these people's
/// conversations in these rooms (either may be empty).
pub fn today_scope(
    custodians: Vec<cloister_proto::UserId>,
    rooms: Vec<cloister_proto::RoomId>,
) -> cloister_proto::km::CaseScope {
    let now = cloister_proto::now_millis();
    cloister_proto::km::CaseScope {
        custodians,
        rooms,
        from_ms: now - 3_600_000,
        to_ms: now + 3_600_000,
        reseal: None,
    }
}
