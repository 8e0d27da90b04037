//! Cloister client SDK: everything a device does, with all cryptography on the device.
//!
//! ```text
//!  Client ──HTTP──▶ KM      enrol, signed requests (room keys, admin)
//!         ──HTTP──▶ server  session, membership log, messages, blobs
//!         ──WS────▶ server  live events
//!  local:  Home (encrypted keystore + leased key cache)
//!          verified room state (replays the membership log, trusting only KM-signed certs)
//! ```
//!
//! The client believes nothing the server says without checking it: the
//! membership log is replayed through `cloister-policy` with certificates
//! verified against the pinned KM key, and every message's signature, sender
//! certificate, sender membership and associated data are checked before it
//! is shown.
#![forbid(unsafe_code)]

mod admin;
mod api;
mod audit;
mod compliance;
mod controls;
mod devices;
mod dlp;
pub mod export;
mod federation;
mod files;
mod follow;
mod freshness;
mod inspect;
mod keys;
mod live;
mod messages;
mod mls;
mod mls_history;
mod mls_messages;
mod rooms;
pub mod store;
mod transcript;

use cloister_crypto::passphrase::Cost;
use cloister_crypto::signed::{self, sign_statement};
use cloister_crypto::{CryptoError, DeviceKeys, RoomKey, message};
use cloister_policy::{PolicyError, RoomState};
use cloister_proto::b64::Fixed;
use cloister_proto::km::{
    AddUserResponse, AdminResponse, DeviceCert, EnrolRequest, KmInfo, KmOp, RequestBody, Role,
    RoomKeysResponse, SignedNotice, UserRecord,
};
use cloister_proto::room::{Action, RoomKind, RoomSettings, SignedStatement, Statement};
use cloister_proto::server::{
    AppendLog, AppendLogResponse, BlobResponse, Content, Envelope, Event, HistoryPage, LogPage,
    LoginRequest, LoginResponse, MessageHeader, PinCheck, PinCheckResponse, PostMessageResponse,
    PostNotice, RegisterDevice, RegisterTenant, RoomSummary,
};
use cloister_proto::{DeviceId, MessageId, RoomId, TenantId, UserId, limits, now_millis, now_secs};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Mutex;
use store::{CachedKey, Home, Profile};

pub use api::{ApiFailure, EventStream};
pub use follow::Follow;
pub use live::{Live, Poster};

/// Everything that can go wrong on the device, each with a one-line message.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Api(#[from] ApiFailure),
    #[error("cannot reach {url}: {reason}")]
    Network { url: String, reason: String },
    #[error("{0}")]
    Crypto(#[from] CryptoError),
    #[error("membership log rejected: {0}")]
    Policy(#[from] PolicyError),
    #[error("{0}")]
    Local(String),
    #[error("rejected message {id}: {reason}")]
    BadMessage { id: String, reason: String },
    #[error("invalid input: {0}")]
    Input(String),
    /// The audit log failed a check: a bad signature, a fork or a rollback.
    #[error("AUDIT LOG ALERT: {0}")]
    Audit(String),
    /// A policy this device enforces refused (DLP, an infected file).
    #[error("{message}")]
    Refused { code: &'static str, message: String },
}

impl ClientError {
    /// The API error code, if the failure came from a service.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api(a) => Some(&a.code),
            ClientError::Refused { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The HTTP status, if the failure came from a service.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api(a) => Some(a.status),
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, ClientError>;

/// A message as shown to the user, after every check passed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Received {
    pub seq: u64,
    pub id: MessageId,
    pub room: RoomId,
    pub epoch: u64,
    pub sender: UserId,
    pub device: DeviceId,
    /// Milliseconds since the Unix epoch (sender's clock).
    pub ts: u64,
    pub content: Content,
    /// The sender device's counter in this room.
    pub counter: u64,
    /// The messages the sender had seen when sending.
    pub after: Vec<MessageId>,
    /// The sender's signed header and the commitment's opening (captured).
    #[serde(skip)]
    pub attribution: cloister_proto::vault::Attribution,
}

impl Received {
    /// A message whose header, content and attribution passed every check.
    pub(crate) fn of(
        seq: u64,
        room: RoomId,
        h: MessageHeader,
        content: Content,
        attribution: cloister_proto::vault::Attribution,
    ) -> Received {
        Received {
            seq,
            id: h.id,
            room,
            epoch: h.epoch,
            sender: h.sender,
            device: h.device,
            ts: h.ts,
            content,
            counter: h.counter,
            after: h.after,
            attribution,
        }
    }
}

/// A room's verified state and the entries it was built from (kept,
/// sealed, across runs: the past a server showed once cannot be changed).
#[derive(serde::Serialize, serde::Deserialize)]
struct RoomCache {
    state: RoomState,
    entries: Vec<SignedStatement>,
}

const ROOMS_STATE: &str = "rooms";

/// A device.
pub struct Client {
    http: reqwest::Client,
    /// Whom this device trusts over TLS (for its WebSocket; `http` was
    /// built with the same).
    tls: cloister_tls::ClientTls,
    profile: Profile,
    /// This device's certificate (renewed over the device's life).
    cert: Mutex<cloister_proto::km::SignedCert>,
    /// A renewal is under way.
    renewing: std::sync::atomic::AtomicBool,
    keys: DeviceKeys,
    home: Home,
    token: Mutex<Option<(String, u64)>>,
    key_cache: Mutex<HashMap<(RoomId, u64), CachedKey>>,
    km_seq: Mutex<HashMap<RoomId, u64>>,
    /// Verified certificates, with the signed form they came in.
    certs: Mutex<HashMap<DeviceId, (DeviceCert, cloister_proto::km::SignedCert)>>,
    rooms: tokio::sync::Mutex<HashMap<RoomId, RoomCache>>,
    vault: Mutex<Option<VaultTarget>>,
    /// Whether the KM was asked for the tenant's registered vault yet.
    vault_checked: std::sync::atomic::AtomicBool,
    /// The escrow descriptor devices seal captures to, and when it was
    /// fetched (refreshed every few minutes: the key may be rotated).
    escrow: Mutex<Option<(std::time::Instant, cloister_proto::km::EscrowDescriptor)>>,
    index_cache: Mutex<HashMap<u32, RoomKey>>,
    /// Room heads the KM signed, newest per room (freshness).
    heads: Mutex<HashMap<RoomId, cloister_proto::km::RoomHead>>,
    /// How old a KM-signed room head may be when sealing (ms).
    freshness_ms: std::sync::atomic::AtomicU64,
    /// What this device noticed the server doing (withholding, forking…).
    alerts: Mutex<Vec<String>>,
    /// What this device remembers of each room's messages.
    transcript: Mutex<transcript::Transcript>,
    /// The tenant's DLP policies (KM-signed) and when they were fetched.
    dlp: Mutex<Option<(std::sync::Arc<cloister_policy::dlp::Dlp>, u64)>>,
    /// The partner firms' KM keys our KM trusts (KM-signed), and when fetched.
    partners: Mutex<Option<federation::Partners>>,
    /// This device's MLS side (loaded on first use).
    mls: tokio::sync::Mutex<Option<mls::MlsState>>,
}

/// Where this device captures: the tenant's vault as the KM registered it.
#[derive(Debug, Clone)]
pub struct VaultTarget {
    pub url: String,
    pub receipt_pk: [u8; 32],
    /// C2SP verifier key of the vault's ingestion log.
    pub log_key: String,
    /// The tenant requires a receipt for every message.
    pub required: bool,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Client({} device {})",
            self.profile.user, self.profile.device
        )
    }
}

/// Where the device's state lives.
pub enum Storage<'a> {
    /// A profile directory sealed with a passphrase.
    Dir {
        path: &'a Path,
        passphrase: &'a [u8],
        cost: Cost,
    },
    /// Memory only (benchmarks, the in-process demo's extra devices).
    Memory,
}

fn trim_url(u: &str) -> String {
    u.trim_end_matches('/').to_owned()
}

/// Register a tenant's KM with a messaging server (operator action).
pub async fn register_tenant(
    http: &reqwest::Client,
    server: &str,
    operator_token: &str,
    km: &KmInfo,
) -> Result<()> {
    let body = RegisterTenant {
        tenant: km.tenant.clone(),
        km_sign_pk: km.sign_pk,
    };
    let _: serde_json::Value = api::send(
        http.post(format!("{}/v1/tenants", trim_url(server)))
            .bearer_auth(operator_token)
            .json(&body),
    )
    .await?;
    Ok(())
}

/// Fetch a KM's public description.
pub async fn km_info(http: &reqwest::Client, km: &str) -> Result<KmInfo> {
    api::send(http.get(format!("{}/v1/info", trim_url(km)))).await
}

/// How a device enrols beyond its code: keys made earlier (so that an
/// MDM could endorse them) and the evidence the tenant's attestation
/// policy asks for.
#[derive(Default)]
pub struct EnrolOptions {
    pub keys: Option<DeviceKeys>,
    pub evidence: Option<cloister_proto::km::Evidence>,
}

impl Client {
    /// Enrol a new device with a one-time code and save it to `storage`.
    pub async fn enrol(
        http: reqwest::Client,
        server: &str,
        km: &str,
        user: &UserId,
        code: &str,
        storage: Storage<'_>,
    ) -> Result<Client> {
        Self::enrol_with(
            http,
            server,
            km,
            user,
            code,
            storage,
            EnrolOptions::default(),
        )
        .await
    }

    /// [`Client::enrol`] with prepared keys and attestation evidence.
    pub async fn enrol_with(
        http: reqwest::Client,
        server: &str,
        km: &str,
        user: &UserId,
        code: &str,
        storage: Storage<'_>,
        opts: EnrolOptions,
    ) -> Result<Client> {
        let (server, km) = (trim_url(server), trim_url(km));
        let info = km_info(&http, &km).await?;
        if user.tenant() != info.tenant {
            return Err(ClientError::Input(format!(
                "{user} is not a user of tenant {}",
                info.tenant
            )));
        }
        // The server must know the same KM key for this tenant (pinning check).
        let pin: PinCheckResponse = api::send(
            http.post(format!("{server}/v1/tenants/{}/pin", info.tenant))
                .json(&PinCheck {
                    km_sign_pk: info.sign_pk,
                }),
        )
        .await?;
        if !pin.pinned {
            return Err(ClientError::Local(format!(
                "the server does not have this KM's key registered for tenant {}; refusing to enrol",
                info.tenant
            )));
        }
        let keys = match opts.keys {
            Some(k) => k,
            None => DeviceKeys::generate()?,
        };
        let pop = keys.sign(
            signed::ENROL,
            &signed::enrol_transcript(user, code, &keys.sign_pk(), &keys.hpke_pk()),
        );
        let req = EnrolRequest {
            user: user.clone(),
            code: code.to_owned(),
            sign_pk: Fixed(keys.sign_pk()),
            hpke_pk: Fixed(keys.hpke_pk()),
            pop: Fixed(pop),
            evidence: opts.evidence,
        };
        let cert: cloister_proto::km::SignedCert =
            api::send(http.post(format!("{km}/v1/enrol")).json(&req)).await?;
        let parsed = signed::verify_cert(&info.sign_pk.0, &cert)?;
        if parsed.device != keys.device_id()
            || parsed.hpke_pk.0 != keys.hpke_pk()
            || &parsed.user != user
        {
            return Err(ClientError::Local(
                "the KM returned a certificate for other keys".into(),
            ));
        }
        let _: serde_json::Value = api::send(
            http.post(format!("{server}/v1/devices"))
                .json(&RegisterDevice { cert: cert.clone() }),
        )
        .await?;
        let profile = Profile {
            server,
            km,
            tenant: info.tenant,
            user: user.clone(),
            device: keys.device_id(),
            km_sign_pk: info.sign_pk,
            cert,
            log_key: info.log_key,
        };
        let home = match storage {
            Storage::Dir {
                path,
                passphrase,
                cost,
            } => Home::create(path, passphrase, cost, &keys, &profile)?,
            Storage::Memory => Home::in_memory()?,
        };
        let c = Self::from_parts(http, profile, keys, home);
        // key packages on the server, so that members can add this device
        // to MLS rooms (best effort: a later `room sync` or app start tops
        // them up)
        if let Err(e) = c.replenish_key_packages().await {
            tracing::warn!("MLS key packages not uploaded at enrolment: {e}");
        }
        Ok(c)
    }

    /// Use `tls` (a CA file, a client certificate) for every connection
    /// this device makes from now on, HTTP and WebSocket alike.
    pub fn with_tls(mut self, tls: cloister_tls::ClientTls) -> Client {
        self.http = tls.http_or_default();
        self.tls = tls;
        self
    }

    /// Open an enrolled device profile.
    pub fn open(http: reqwest::Client, dir: &Path, passphrase: &[u8]) -> Result<Client> {
        let (home, keys, profile) = Home::open(dir, passphrase)?;
        Ok(Self::from_parts(http, profile, keys, home))
    }

    fn from_parts(http: reqwest::Client, profile: Profile, keys: DeviceKeys, home: Home) -> Client {
        let cache = home.load_keys();
        let transcript = Mutex::new(transcript::Transcript::load(&home));
        let rooms: HashMap<RoomId, RoomCache> = home
            .load_sealed(ROOMS_STATE)
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        Client {
            transcript,
            http,
            tls: cloister_tls::outgoing(),
            cert: Mutex::new(profile.cert.clone()),
            renewing: Default::default(),
            profile,
            keys,
            home,
            token: Mutex::new(None),
            key_cache: Mutex::new(cache),
            km_seq: Mutex::new(HashMap::new()),
            certs: Mutex::new(HashMap::new()),
            partners: Mutex::new(None),
            rooms: tokio::sync::Mutex::new(rooms),
            heads: Mutex::new(HashMap::new()),
            freshness_ms: std::sync::atomic::AtomicU64::new(freshness::DEFAULT_FRESHNESS_MS),
            alerts: Mutex::new(Vec::new()),
            vault: Mutex::new(None),
            vault_checked: Default::default(),
            dlp: Default::default(),
            escrow: Mutex::new(None),
            index_cache: Mutex::new(HashMap::new()),
            mls: tokio::sync::Mutex::new(None),
        }
    }

    pub fn profile(&self) -> &Profile {
        &self.profile
    }
    /// The KM this device was enrolled with.
    pub fn km_url(&self) -> &str {
        &self.profile.km
    }

    pub fn user(&self) -> &UserId {
        &self.profile.user
    }
    pub fn device(&self) -> DeviceId {
        self.profile.device
    }
    pub fn tenant(&self) -> &TenantId {
        &self.profile.tenant
    }

    // ---------- sessions and KM requests ----------

    async fn token(&self) -> Result<String> {
        if let Some((t, exp)) = self.token.lock().ok().and_then(|g| g.clone())
            && exp > now_secs() + 60
        {
            return Ok(t);
        }
        let ts = now_millis();
        let nonce = cloister_crypto::random_bytes::<16>()?;
        let sig = self.keys.sign(
            signed::LOGIN,
            &signed::login_transcript(&self.device(), ts, &nonce),
        );
        let req = LoginRequest {
            device: self.device(),
            ts,
            nonce: Fixed(nonce),
            sig: Fixed(sig),
        };
        let r: LoginResponse = api::send(
            self.http
                .post(format!("{}/v1/session", self.profile.server))
                .json(&req),
        )
        .await?;
        if let Ok(mut g) = self.token.lock() {
            *g = Some((r.token.clone(), r.expires_at));
        }
        Ok(r.token)
    }

    /// This device's session token with the server (for tools that call
    /// the server's API themselves).
    pub async fn session_token(&self) -> Result<String> {
        self.token().await
    }

    /// Send an authenticated request to the server.
    async fn server<T: serde::de::DeserializeOwned>(
        &self,
        build: impl Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder,
    ) -> Result<T> {
        let token = self.token().await?;
        api::send(build(&self.http, &self.profile.server).bearer_auth(token)).await
    }

    /// Send any signed request to the KM (renewing this device's
    /// certificate first when it is due).
    pub async fn km_request<T: serde::de::DeserializeOwned>(&self, op: KmOp) -> Result<T> {
        self.renew_if_due().await;
        self.km_send(op).await
    }

    /// Send a signed request to the KM as it is.
    pub(crate) async fn km_send<T: serde::de::DeserializeOwned>(&self, op: KmOp) -> Result<T> {
        let body = RequestBody {
            device: self.device(),
            ts: now_millis(),
            nonce: Fixed(cloister_crypto::random_bytes::<16>()?),
            op,
        };
        let req = signed::sign_request(&self.keys, &body)?;
        api::send(
            self.http
                .post(format!("{}/v1/request", self.profile.km))
                .json(&req),
        )
        .await
    }

    // ---------- admin ----------

    // ---------- certificates and verified room state ----------

    // ---------- rooms ----------

    // ---------- keys ----------

    // ---------- messages ----------

    // ---------- files ----------
}

pub use audit::{KeyRelease, check_inclusion};
pub use compliance::{ESCROW_REFRESH, MyShare, ResealSummary};
pub use federation::ConnectionView;
