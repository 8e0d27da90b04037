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

mod api;
mod compliance;
pub mod export;
mod freshness;
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

pub use api::ApiFailure;

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
}

impl ClientError {
    /// The API error code, if the failure came from a service.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api(a) => Some(&a.code),
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
    profile: Profile,
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
    escrow: Mutex<Option<cloister_proto::km::EscrowDescriptor>>,
    index_cache: Mutex<HashMap<u32, RoomKey>>,
    /// Room heads the KM signed, newest per room (freshness).
    heads: Mutex<HashMap<RoomId, cloister_proto::km::RoomHead>>,
    /// How old a KM-signed room head may be when sealing (ms).
    freshness_ms: std::sync::atomic::AtomicU64,
    /// What this device noticed the server doing (withholding, forking…).
    alerts: Mutex<Vec<String>>,
    /// What this device remembers of each room's messages.
    transcript: Mutex<transcript::Transcript>,
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
        let keys = DeviceKeys::generate()?;
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
        Ok(Self::from_parts(http, profile, keys, home))
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
            profile,
            keys,
            home,
            token: Mutex::new(None),
            key_cache: Mutex::new(cache),
            km_seq: Mutex::new(HashMap::new()),
            certs: Mutex::new(HashMap::new()),
            rooms: tokio::sync::Mutex::new(rooms),
            heads: Mutex::new(HashMap::new()),
            freshness_ms: std::sync::atomic::AtomicU64::new(freshness::DEFAULT_FRESHNESS_MS),
            alerts: Mutex::new(Vec::new()),
            vault: Mutex::new(None),
            vault_checked: Default::default(),
            escrow: Mutex::new(None),
            index_cache: Mutex::new(HashMap::new()),
        }
    }

    pub fn profile(&self) -> &Profile {
        &self.profile
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

    /// Send an authenticated request to the server.
    async fn server<T: serde::de::DeserializeOwned>(
        &self,
        build: impl Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder,
    ) -> Result<T> {
        let token = self.token().await?;
        api::send(build(&self.http, &self.profile.server).bearer_auth(token)).await
    }

    /// Send any signed request to the KM.
    pub async fn km_request<T: serde::de::DeserializeOwned>(&self, op: KmOp) -> Result<T> {
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

    /// Admin: create a user and get a one-time enrolment code.
    pub async fn admin_add_user(&self, user: &UserId, admin: bool) -> Result<AddUserResponse> {
        let roles = if admin {
            vec![Role::Admin, Role::User]
        } else {
            vec![Role::User]
        };
        self.admin_add_user_roles(user, &roles).await
    }

    /// Admin: create a user with roles (or add roles to an existing one; the
    /// new roles are in the certificate of the device enrolled with the code).
    pub async fn admin_add_user_roles(
        &self,
        user: &UserId,
        roles: &[Role],
    ) -> Result<AddUserResponse> {
        self.km_request(KmOp::AddUser {
            user: user.clone(),
            roles: roles.to_vec(),
        })
        .await
    }

    async fn forward_notice(&self, r: AdminResponse) -> Result<()> {
        if let Some(n) = r.notice {
            self.post_notice(&n).await?;
        }
        Ok(())
    }

    /// Forward a KM-signed notice to the server (it verifies the KM signature).
    pub async fn post_notice(&self, n: &SignedNotice) -> Result<()> {
        let _: serde_json::Value = api::send(
            self.http
                .post(format!("{}/v1/notices", self.profile.server))
                .json(&PostNotice { notice: n.clone() }),
        )
        .await?;
        Ok(())
    }

    /// Admin: disable a user at the KM (no more keys) and the server (no more access).
    pub async fn admin_disable_user(&self, user: &UserId) -> Result<()> {
        let r: AdminResponse = self
            .km_request(KmOp::DisableUser { user: user.clone() })
            .await?;
        self.forward_notice(r).await
    }

    /// Admin: revoke a device at the KM and the server.
    pub async fn admin_revoke_device(&self, device: &DeviceId) -> Result<()> {
        let r: AdminResponse = self
            .km_request(KmOp::RevokeDevice { device: *device })
            .await?;
        self.forward_notice(r).await
    }

    pub async fn admin_list_users(&self) -> Result<Vec<UserRecord>> {
        self.km_request(KmOp::ListUsers).await
    }

    // ---------- certificates and verified room state ----------

    /// A device certificate, fetched from the server and verified against the pinned KM key.
    pub async fn cert_of(&self, device: &DeviceId) -> Result<DeviceCert> {
        Ok(self.cert_entry(device).await?.0)
    }

    /// A device's KM-signed certificate, as verified.
    pub async fn signed_cert_of(
        &self,
        device: &DeviceId,
    ) -> Result<cloister_proto::km::SignedCert> {
        Ok(self.cert_entry(device).await?.1)
    }

    async fn cert_entry(
        &self,
        device: &DeviceId,
    ) -> Result<(DeviceCert, cloister_proto::km::SignedCert)> {
        if let Some(c) = self.certs.lock().ok().and_then(|m| m.get(device).cloned()) {
            return Ok(c);
        }
        let sc: cloister_proto::km::SignedCert = self
            .server(|h, s| h.get(format!("{s}/v1/devices/{device}")))
            .await?;
        let c = signed::verify_cert(&self.profile.km_sign_pk.0, &sc).map_err(|e| {
            ClientError::Local(format!(
                "certificate of device {device} is not from our KM: {e}"
            ))
        })?;
        if c.device != *device {
            return Err(ClientError::Local(format!(
                "server returned another device's certificate for {device}"
            )));
        }
        if let Ok(mut m) = self.certs.lock() {
            m.insert(*device, (c.clone(), sc.clone()));
        }
        Ok((c, sc))
    }

    /// The room's state, replayed locally from its membership log.
    pub async fn room_state(&self, room: &RoomId) -> Result<RoomState> {
        let mut rooms = self.rooms.lock().await;
        let from = rooms.get(room).map_or(0, |c| c.state.seq + 1);
        let mut from_seq = from;
        loop {
            let page: LogPage = self
                .server(|h, s| {
                    h.get(format!(
                        "{s}/v1/rooms/{room}/log?from={from_seq}&limit={}",
                        limits::MAX_PAGE
                    ))
                })
                .await?;
            let n = page.entries.len();
            self.apply_entries(&mut rooms, room, page.entries).await?;
            if (n as u32) < limits::MAX_PAGE {
                break;
            }
            from_seq += n as u64;
        }
        rooms
            .get(room)
            .map(|c| c.state.clone())
            .ok_or_else(|| ClientError::Local(format!("room {room} has no membership log")))
    }

    /// Verify and apply log entries (in order) to the cached room state,
    /// and keep it. An entry that does not extend what this device already
    /// verified is a fork: the server shows another history.
    async fn apply_entries(
        &self,
        rooms: &mut HashMap<RoomId, RoomCache>,
        room: &RoomId,
        entries: Vec<SignedStatement>,
    ) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        for e in entries {
            let peek = signed::peek_statement(&e)?;
            let cert = self.cert_of(&peek.actor).await?;
            let cur = rooms.get(room).map(|c| &c.state);
            let (next, _) = match cloister_policy::apply(cur, room, &e, &cert.user, &cert.sign_pk.0)
            {
                Ok(x) => x,
                Err(
                    cloister_policy::PolicyError::BrokenChain { seq }
                    | cloister_policy::PolicyError::Gap { got: seq, .. },
                ) if cur.is_some() => {
                    let msg = format!(
                        "the server {} shows room {room} a membership history that contradicts the one this device verified (entry {seq} does not extend it): a fork",
                        self.profile.server
                    );
                    self.alert(msg.clone());
                    return Err(ClientError::Audit(msg));
                }
                Err(e) => return Err(e.into()),
            };
            match rooms.get_mut(room) {
                Some(c) => {
                    c.state = next;
                    c.entries.push(e);
                }
                None => {
                    rooms.insert(
                        *room,
                        RoomCache {
                            state: next,
                            entries: vec![e],
                        },
                    );
                }
            }
        }
        if !self.home.persistent() {
            return Ok(());
        }
        let b = serde_json::to_vec(&*rooms).map_err(|e| ClientError::Local(e.to_string()))?;
        self.home.save_sealed(ROOMS_STATE, &b)
    }

    /// The room called `name` among this device's rooms, by the names in
    /// their verified logs (never the server's room list); several rooms of
    /// that name is an error.
    pub async fn resolve_room_name(&self, name: &str) -> Result<RoomId> {
        let mut ids: Vec<RoomId> = self
            .list_rooms()
            .await?
            .into_iter()
            .map(|r| r.room)
            .collect();
        ids.extend(self.rooms.lock().await.keys().copied());
        ids.sort();
        ids.dedup();
        let mut found = Vec::new();
        for id in ids {
            let Ok(st) = self.room_state(&id).await else {
                continue;
            };
            if st.settings.name == name && st.is_member(self.user()) {
                found.push(id);
            }
        }
        match found.as_slice() {
            [one] => Ok(*one),
            [] => Err(ClientError::Input(format!(
                "no room named {name:?} among your rooms (use the room id)"
            ))),
            many => Err(ClientError::Input(format!(
                "several of your rooms are named {name:?} ({}); use the room id",
                many.iter()
                    .map(|r| r.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// Run `f` on the locally verified room state, fetching new log entries only
    /// when nothing is cached or `refresh` is set.
    pub async fn with_state<R>(
        &self,
        room: &RoomId,
        refresh: bool,
        f: impl FnOnce(&RoomState) -> R,
    ) -> Result<R> {
        if !refresh {
            let rooms = self.rooms.lock().await;
            if let Some(c) = rooms.get(room) {
                return Ok(f(&c.state));
            }
        }
        self.room_state(room).await?;
        let rooms = self.rooms.lock().await;
        rooms
            .get(room)
            .map(|c| f(&c.state))
            .ok_or_else(|| ClientError::Local(format!("room {room} has no membership log")))
    }

    async fn log_since(&self, room: &RoomId, from: u64) -> Vec<SignedStatement> {
        let rooms = self.rooms.lock().await;
        rooms
            .get(room)
            .map(|c| c.entries.iter().skip(from as usize).cloned().collect())
            .unwrap_or_default()
    }

    async fn append(&self, room: &RoomId, action: Action) -> Result<RoomState> {
        for attempt in 0..3 {
            // A change is signed on the newest state the KM knows, never on
            // what a withholding server shows.
            let current = if matches!(action, Action::Create { .. }) {
                self.room_state(room).await
            } else {
                self.current_state(room, true).await
            };
            let prev = match current {
                Ok(s) => Some(s),
                Err(ClientError::Api(a))
                    if a.code == "no_such_room" && matches!(action, Action::Create { .. }) =>
                {
                    None
                }
                Err(e) => return Err(e),
            };
            let st = Statement {
                room: *room,
                seq: prev.as_ref().map_or(0, |s| s.seq + 1),
                prev: Fixed(prev.as_ref().map_or([0; 32], |s| s.head)),
                actor: self.device(),
                actor_user: self.user().clone(),
                ts: now_millis(),
                action: action.clone(),
            };
            // Check locally first: a clear error beats a round trip.
            let entry = sign_statement(&self.keys, &st)?;
            cloister_policy::apply(
                prev.as_ref(),
                room,
                &entry,
                self.user(),
                &self.keys.sign_pk(),
            )?;
            let r: Result<AppendLogResponse> = self
                .server(|h, s| {
                    h.post(format!("{s}/v1/rooms/{room}/log")).json(&AppendLog {
                        entry: entry.clone(),
                    })
                })
                .await;
            match r {
                Ok(_) => {
                    // The server took our entry: it extends what we verified.
                    {
                        let mut rooms = self.rooms.lock().await;
                        let next = rooms.get(room).map_or(0, |c| c.state.seq + 1);
                        if next == st.seq {
                            self.apply_entries(&mut rooms, room, vec![entry]).await?;
                        }
                    }
                    let state = self.room_state(room).await?;
                    // The KM learns the change now (not when someone next asks
                    // for a key): every device's freshness bound runs from here.
                    self.tell_km(room).await?;
                    return Ok(state);
                }
                Err(ClientError::Api(a)) if a.code == "log_conflict" && attempt < 2 => continue,
                Err(e) => return Err(e),
            }
        }
        Err(ClientError::Local(
            "the room's log kept changing; try again".into(),
        ))
    }

    // ---------- rooms ----------

    /// Create a room; the creator becomes its owner.
    pub async fn create_room(&self, settings: RoomSettings, members: &[UserId]) -> Result<RoomId> {
        let room = cloister_policy::room_id_from_random(cloister_crypto::random_bytes::<16>()?);
        self.append(
            &room,
            Action::Create {
                kind: RoomKind::Room,
                settings,
                members: members.to_vec(),
            },
        )
        .await?;
        Ok(room)
    }

    /// Open (creating if needed) the 1:1 conversation with `other`.
    pub async fn im(&self, other: &UserId) -> Result<RoomId> {
        if other == self.user() {
            return Err(ClientError::Input("cannot open an IM with yourself".into()));
        }
        let room = cloister_policy::im_room_id(self.user(), other);
        match self.room_state(&room).await {
            Ok(st) => {
                // The policy admits nothing else at this id; check anyway
                // before sending anything into it.
                let pair: std::collections::BTreeSet<UserId> =
                    [self.user().clone(), other.clone()].into();
                if st.kind != RoomKind::Im || st.members != pair {
                    tracing::error!(%room, "room at the 1:1 id is not this IM");
                    return Err(ClientError::Local(format!(
                        "SECURITY ALERT: room {room} at the 1:1 id of {} and {other} is not their IM \
                         (kind {:?}, members {:?}); refusing to use it",
                        self.user(),
                        st.kind,
                        st.members
                    )));
                }
                Ok(room)
            }
            Err(ClientError::Api(a)) if a.code == "no_such_room" => {
                let action = Action::Create {
                    kind: RoomKind::Im,
                    settings: RoomSettings::default(),
                    members: vec![other.clone()],
                };
                match self.append(&room, action).await {
                    Ok(_) => Ok(room),
                    // the other side created it at the same moment
                    Err(ClientError::Api(a)) if a.code == "log_conflict" => Ok(room),
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    pub async fn add_member(&self, room: &RoomId, user: &UserId) -> Result<RoomState> {
        self.append(room, Action::Add { user: user.clone() }).await
    }
    pub async fn remove_member(&self, room: &RoomId, user: &UserId) -> Result<RoomState> {
        self.append(room, Action::Remove { user: user.clone() })
            .await
    }
    pub async fn leave(&self, room: &RoomId) -> Result<RoomState> {
        self.append(room, Action::Leave).await
    }
    pub async fn promote(&self, room: &RoomId, user: &UserId) -> Result<RoomState> {
        self.append(room, Action::Promote { user: user.clone() })
            .await
    }
    pub async fn set_settings(&self, room: &RoomId, settings: RoomSettings) -> Result<RoomState> {
        self.append(room, Action::Settings { settings }).await
    }

    /// Rooms the server lists for this user (names and members as the server reports them).
    pub async fn list_rooms(&self) -> Result<Vec<RoomSummary>> {
        self.server(|h, s| h.get(format!("{s}/v1/rooms"))).await
    }

    // ---------- keys ----------

    /// Room keys for the given epochs: from the leased cache, else from the KM.
    pub async fn room_keys(&self, room: &RoomId, epochs: &[u64]) -> Result<HashMap<u64, RoomKey>> {
        let now = now_secs();
        let mut out = HashMap::new();
        let mut missing = Vec::new();
        if let Ok(cache) = self.key_cache.lock() {
            for &e in epochs {
                match cache.get(&(*room, e)) {
                    Some(k) if k.lease_until > now => {
                        out.insert(e, k.key.clone());
                    }
                    _ => missing.push(e),
                }
            }
        }
        if missing.is_empty() {
            return Ok(out);
        }
        missing.sort_unstable();
        missing.dedup();
        // The KM is the judge: if the server will not show us the log, ask
        // anyway with what we have (the KM may already hold the log).
        match self.room_state(room).await {
            Ok(_) => {}
            Err(ClientError::Api(a)) if a.code == "no_such_room" => {}
            Err(e) => return Err(e),
        }
        let from = self
            .km_seq
            .lock()
            .ok()
            .and_then(|m| m.get(room).map(|s| s + 1))
            .unwrap_or(0);
        let mut r: Result<RoomKeysResponse> = self
            .km_request(KmOp::RoomKeys {
                room: *room,
                epochs: missing.clone(),
                log_from: from,
                log: self.log_since(room, from).await,
            })
            .await;
        if matches!(&r, Err(ClientError::Api(a)) if a.code == "log_behind") {
            r = self
                .km_request(KmOp::RoomKeys {
                    room: *room,
                    epochs: missing.clone(),
                    log_from: 0,
                    log: self.log_since(room, 0).await,
                })
                .await;
        }
        let r = r?;
        if let Ok(mut m) = self.km_seq.lock() {
            m.insert(*room, r.log_seq);
        }
        self.accept_head(room, &r.head)?;
        let mut cache = self
            .key_cache
            .lock()
            .map_err(|_| ClientError::Local("key cache poisoned".into()))?;
        for sk in &r.keys {
            if sk.room != *room || !missing.contains(&sk.epoch) {
                return Err(ClientError::Local(
                    "the KM answered with a key for something else".into(),
                ));
            }
            let key =
                cloister_crypto::hpke_seal::open_room_key(&self.keys, &self.profile.tenant, sk)?;
            cache.insert(
                (*room, sk.epoch),
                CachedKey {
                    key: key.clone(),
                    lease_until: sk.lease_until,
                },
            );
            out.insert(sk.epoch, key);
        }
        self.home.save_keys(&cache)?;
        for e in &missing {
            if !out.contains_key(e) {
                return Err(ClientError::Local(format!(
                    "the KM did not release epoch {e}"
                )));
            }
        }
        Ok(out)
    }

    /// Drop keys retention destroyed (announced by the KM through the server).
    pub fn forget_keys(&self, room: &RoomId, epochs: &[u64]) -> Result<()> {
        if epochs.is_empty() {
            return Ok(());
        }
        let mut c = self
            .key_cache
            .lock()
            .map_err(|_| ClientError::Local("key cache poisoned".into()))?;
        let before = c.len();
        c.retain(|(r, e), _| !(r == room && epochs.contains(e)));
        if c.len() != before {
            tracing::info!(%room, ?epochs, "keys destroyed by retention dropped from the cache");
            self.home.save_keys(&c)?;
        }
        Ok(())
    }

    /// Forget cached keys (e.g. to force a fresh check with the KM).
    pub fn clear_key_cache(&self) -> Result<()> {
        let mut c = self
            .key_cache
            .lock()
            .map_err(|_| ClientError::Local("key cache poisoned".into()))?;
        c.clear();
        self.home.save_keys(&c)
    }

    // ---------- messages ----------

    /// Encrypt, sign and post a message; returns (message id, server seq).
    pub async fn send(&self, room: &RoomId, content: &Content) -> Result<(MessageId, u64)> {
        if let Content::Text { text } = content
            && text.len() > limits::MAX_TEXT
        {
            return Err(ClientError::Input(format!(
                "message text over {} bytes",
                limits::MAX_TEXT
            )));
        }
        for attempt in 0..2 {
            let (mut env, att) = self.seal_with(room, content, attempt > 0).await?;
            let id = message::peek_header(&env)?.id;
            // Capture first: the archive holds every message this device
            // sends, and the server may demand the vault's receipt.
            env.receipt = self
                .capture_envelope(room, &env, content, &att, false)
                .await?;
            match self.post_envelope(room, &env).await {
                Ok(seq) => return Ok((id, seq)),
                Err(ClientError::Api(a)) if a.code == "stale_epoch" && attempt == 0 => continue,
                Err(e) => return Err(e),
            }
        }
        Err(ClientError::Local(
            "the room's epoch kept changing; try again".into(),
        ))
    }

    pub async fn send_text(&self, room: &RoomId, text: &str) -> Result<(MessageId, u64)> {
        self.send(
            room,
            &Content::Text {
                text: text.to_owned(),
            },
        )
        .await
    }

    /// Post a pre-built envelope as-is (tests of the server's checks; replays).
    pub async fn post_envelope(&self, room: &RoomId, env: &Envelope) -> Result<u64> {
        let r: PostMessageResponse = self
            .server(|h, s| h.post(format!("{s}/v1/rooms/{room}/messages")).json(env))
            .await?;
        Ok(r.seq)
    }

    /// Seal a message without sending it (tests and tools).
    pub async fn seal(&self, room: &RoomId, content: &Content) -> Result<Envelope> {
        Ok(self.seal_with(room, content, false).await?.0)
    }

    async fn seal_with(
        &self,
        room: &RoomId,
        content: &Content,
        refresh: bool,
    ) -> Result<(Envelope, cloister_proto::vault::Attribution)> {
        // Never in an epoch older than the newest one the KM knows.
        let epoch = self.current_state(room, refresh).await?.epoch;
        let keys = self.room_keys(room, &[epoch]).await?;
        let key = keys
            .get(&epoch)
            .ok_or_else(|| ClientError::Local("no key".into()))?;
        let (counter, after) = self.next_counter(room)?;
        let header = MessageHeader {
            v: 1,
            room: *room,
            epoch,
            id: MessageId(cloister_crypto::random_bytes::<16>()?),
            sender: self.user().clone(),
            device: self.device(),
            ts: now_millis(),
            commit: Fixed([0; 32]),
            counter,
            after,
        };
        Ok(message::seal_attributed(&self.keys, key, &header, content)?)
    }

    /// Verify and decrypt one envelope that the server says belongs to `room`.
    pub async fn open_envelope(&self, room: &RoomId, seq: u64, env: &Envelope) -> Result<Received> {
        let bad = |id: String, reason: String| ClientError::BadMessage { id, reason };
        let h =
            message::peek_header(env).map_err(|e| bad(format!("at seq {seq}"), e.to_string()))?;
        let id = h.id.to_hex();
        if h.room != *room {
            return Err(bad(
                id,
                format!(
                    "it was addressed to room {}, not {room} (re-addressed)",
                    h.room
                ),
            ));
        }
        let cert = self
            .cert_of(&h.device)
            .await
            .map_err(|e| bad(id.clone(), e.to_string()))?;
        if cert.user != h.sender {
            return Err(bad(
                id,
                format!(
                    "device {} belongs to {}, not {}",
                    h.device, cert.user, h.sender
                ),
            ));
        }
        message::verify_envelope(&cert.sign_pk.0, env).map_err(|_| {
            bad(
                id.clone(),
                "signature does not verify (forged or tampered)".into(),
            )
        })?;
        let check = |s: &RoomState| (h.epoch <= s.epoch, s.may_read(&h.sender, h.epoch));
        let mut ok = self.with_state(room, false, check).await?;
        if !ok.0 || !ok.1 {
            // Our copy may be behind: refresh once before refusing.
            ok = self.with_state(room, true, check).await?;
        }
        if !ok.1 {
            return Err(bad(
                id,
                format!(
                    "{} was not a member of the room at epoch {}",
                    h.sender, h.epoch
                ),
            ));
        }
        let keys = self.room_keys(room, &[h.epoch]).await?;
        let key = keys
            .get(&h.epoch)
            .ok_or_else(|| ClientError::Local("no key".into()))?;
        let (content, attribution) =
            message::decrypt_attributed(key, &h, env).map_err(|e| bad(id, e.to_string()))?;
        Ok(Received {
            seq,
            id: h.id,
            room: *room,
            epoch: h.epoch,
            sender: h.sender,
            device: h.device,
            ts: h.ts,
            content,
            counter: h.counter,
            after: h.after,
            attribution,
        })
    }

    /// One page of history (oldest first), each message verified and decrypted.
    /// Messages that fail a check are returned as errors in place, not dropped silently.
    pub async fn read(
        &self,
        room: &RoomId,
        limit: u32,
        before: Option<u64>,
    ) -> Result<Vec<Result<Received>>> {
        let limit = limit.clamp(1, limits::MAX_PAGE);
        let q = match before {
            Some(b) => format!("limit={limit}&before={b}"),
            None => format!("limit={limit}"),
        };
        let page: HistoryPage = self
            .server(|h, s| h.get(format!("{s}/v1/rooms/{room}/messages?{q}")))
            .await?;
        // Keys retention destroyed leave the cache before anything is opened.
        self.forget_keys(room, &page.shredded)?;
        // Fetch all needed epochs in one KM request.
        let mut epochs: Vec<u64> = page
            .messages
            .iter()
            .filter_map(|m| message::peek_header(&m.envelope).ok().map(|h| h.epoch))
            .filter(|e| !page.shredded.contains(e))
            .collect();
        epochs.sort_unstable();
        epochs.dedup();
        let me = self.user().clone();
        let readable: Vec<u64> = self
            .with_state(room, true, |st| {
                epochs
                    .into_iter()
                    .filter(|e| st.may_read(&me, *e))
                    .collect()
            })
            .await?;
        if !readable.is_empty() {
            self.room_keys(room, &readable).await?;
        }
        let mut seen = HashSet::new();
        let mut out = Vec::with_capacity(page.messages.len());
        for m in &page.messages {
            if let Ok(h) = message::peek_header(&m.envelope)
                && page.shredded.contains(&h.epoch)
            {
                out.push(Err(ClientError::BadMessage {
                    id: h.id.to_hex(),
                    reason: format!(
                        "expired: the key of epoch {} was destroyed by retention",
                        h.epoch
                    ),
                }));
                continue;
            }
            let r = self.open_envelope(room, m.seq, &m.envelope).await;
            if let Ok(rc) = &r
                && rc.sender.tenant() == self.profile.tenant
                && rc.sender != *self.user()
            {
                // The recipient's capture (idempotent at the vault).
                if let Err(e) = self
                    .capture_envelope(room, &m.envelope, &rc.content, &rc.attribution, true)
                    .await
                {
                    tracing::warn!(message = %rc.id, "capture of a received message failed: {e}");
                }
            }
            let r = match r {
                Ok(rc) if !seen.insert(rc.id) => {
                    let reason = format!(
                        "message {} from {} appears twice (at seq {}): replayed",
                        rc.id, rc.sender, rc.seq
                    );
                    self.alert(reason.clone());
                    Err(ClientError::BadMessage {
                        id: rc.id.to_hex(),
                        reason,
                    })
                }
                other => other,
            };
            out.push(r);
        }
        self.check_page(room, &mut out, before.is_none())?;
        Ok(out)
    }

    /// One message from the live stream: verified, decrypted, and checked
    /// against what this device remembers (replays refused; gaps and
    /// disorder alerted).
    pub async fn receive(&self, room: &RoomId, seq: u64, env: &Envelope) -> Result<Received> {
        let m = self.open_envelope(room, seq, env).await?;
        self.check_live(room, &m)?;
        Ok(m)
    }

    /// Connect to the live event stream.
    pub async fn connect_events(&self) -> Result<api::EventStream> {
        let token = self.token().await?;
        api::EventStream::connect(&self.profile.server, &token).await
    }

    /// Follow a room live: verified, decrypted messages as they arrive.
    pub async fn next_message(
        &self,
        stream: &mut api::EventStream,
        room: &RoomId,
    ) -> Result<Option<Received>> {
        loop {
            match stream.next().await? {
                None => return Ok(None),
                Some(Event::Message {
                    room: r,
                    seq,
                    envelope,
                }) if r == *room => match self.receive(room, seq, &envelope).await {
                    Ok(m) => return Ok(Some(m)),
                    // a replay: alerted, not shown
                    Err(ClientError::BadMessage { reason, .. }) if reason.contains("replayed") => {
                        continue;
                    }
                    Err(e) => return Err(e),
                },
                Some(Event::KeysShredded { room: r, epochs }) => self.forget_keys(&r, &epochs)?,
                Some(_) => continue,
            }
        }
    }

    // ---------- files ----------

    /// Encrypt a file in chunks while uploading it, then send a message that carries its key.
    pub async fn send_file(&self, room: &RoomId, path: &Path) -> Result<(MessageId, u64)> {
        let meta = std::fs::metadata(path)
            .map_err(|e| ClientError::Input(format!("{}: {e}", path.display())))?;
        if !meta.is_file() {
            return Err(ClientError::Input(format!(
                "{} is not a file",
                path.display()
            )));
        }
        if meta.len() > limits::DEFAULT_MAX_ATTACHMENT {
            return Err(ClientError::Input(format!(
                "{} is {} bytes; the limit is {} bytes",
                path.display(),
                meta.len(),
                limits::DEFAULT_MAX_ATTACHMENT
            )));
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "file".into());
        let file_key = RoomKey::generate()?;
        let blob = cloister_proto::b64::Fixed(cloister_crypto::random_bytes::<16>()?);
        let blob_id = hex::encode(blob.0);
        let up = api::upload_encrypted(path, &file_key)?;
        let token = self.token().await?;
        let resp: BlobResponse = api::send(
            self.http
                .put(format!(
                    "{}/v1/rooms/{room}/blobs/{blob_id}",
                    self.profile.server
                ))
                .bearer_auth(token)
                .body(reqwest::Body::wrap_stream(up.stream)),
        )
        .await?;
        let (size, sha, blob_sha) = up
            .digests
            .await
            .map_err(|_| ClientError::Local("upload task failed".into()))??;
        if resp.size != size.1 {
            return Err(ClientError::Local(
                "the server stored a different number of bytes than were sent".into(),
            ));
        }
        let content = Content::File {
            name,
            size: size.0,
            blob: blob_id,
            key: Fixed(*file_key.expose()),
            blob_sha256: Fixed(blob_sha),
            sha256: Fixed(sha),
        };
        self.send(room, &content).await
    }

    /// Download, verify and decrypt an attachment to `out` (written only if every check passes).
    pub async fn get_file(&self, content: &Content, out: &Path) -> Result<u64> {
        let Content::File {
            blob,
            key,
            blob_sha256,
            sha256,
            size,
            ..
        } = content
        else {
            return Err(ClientError::Input("that message is not a file".into()));
        };
        let token = self.token().await?;
        let resp = api::send_raw(
            self.http
                .get(format!("{}/v1/blobs/{blob}", self.profile.server))
                .bearer_auth(token),
        )
        .await?;
        api::download_decrypt(
            resp,
            &RoomKey::from_bytes(key.0),
            &blob_sha256.0,
            &sha256.0,
            *size,
            out,
        )
        .await
    }
}

/// One verified key release, from `who_has_keys`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KeyRelease {
    pub index: u64,
    pub ts: u64,
    pub user: UserId,
    pub device: DeviceId,
    pub epochs: Vec<u64>,
    /// Released to a surveillance role (not a member of the room).
    pub surveillance: bool,
}

impl Client {
    fn log_verifier(&self) -> Result<cloister_log::NoteVerifier> {
        cloister_log::NoteVerifier::parse(&self.profile.log_key)
            .map_err(|e| ClientError::Audit(format!("pinned audit log key is unusable: {e}")))
    }

    /// Fetch the latest audit checkpoint, verify its signature, and prove it
    /// consistent with the last one this device accepted. A fork or a
    /// rollback is an [`ClientError::Audit`] error and the new checkpoint is
    /// not accepted.
    pub async fn audit_checkpoint(&self) -> Result<(cloister_log::Checkpoint, String)> {
        let r: cloister_proto::km::CheckpointResponse =
            self.km_request(KmOp::AuditCheckpoint).await?;
        let cp = self.accept_checkpoint(&r.checkpoint).await?;
        Ok((cp, r.checkpoint))
    }

    /// Require `quorum` of these witnesses' cosignatures on every audit
    /// checkpoint this device accepts from now on.
    pub fn set_witness_policy(&self, witnesses: &[String], quorum: usize) -> Result<()> {
        cloister_log::witness::WitnessPolicy::parse(witnesses, quorum)
            .map_err(|e| ClientError::Input(format!("witness policy: {e}")))?;
        self.home.save_witness_policy(&store::WitnessPolicyConfig {
            witnesses: witnesses.to_vec(),
            quorum,
        })
    }

    pub fn witness_policy(&self) -> Option<store::WitnessPolicyConfig> {
        self.home.witness_policy()
    }

    async fn accept_checkpoint(&self, note: &str) -> Result<cloister_log::Checkpoint> {
        let v = self.log_verifier()?;
        let cp = v
            .verify_checkpoint(note)
            .map_err(|e| ClientError::Audit(format!("checkpoint rejected: {e}")))?;
        if let Some(p) = self.home.witness_policy() {
            let policy = cloister_log::witness::WitnessPolicy::parse(&p.witnesses, p.quorum)
                .map_err(|e| ClientError::Audit(format!("witness policy is invalid: {e}")))?;
            policy.check(note).map_err(|e| {
                ClientError::Audit(format!(
                    "checkpoint of size {} rejected: {e} (a log that may show others another history)",
                    cp.size
                ))
            })?;
        }
        if let Some(old_note) = self.home.last_checkpoint() {
            let old = v.verify_checkpoint(&old_note).map_err(|e| {
                ClientError::Audit(format!("remembered checkpoint is invalid: {e}"))
            })?;
            if cp.size < old.size {
                return Err(ClientError::Audit(format!(
                    "the log was rolled back: it now has {} entries, but this device saw {}",
                    cp.size, old.size
                )));
            }
            if cp.size == old.size && cp.root != old.root {
                return Err(ClientError::Audit(format!(
                    "the log was forked at size {}",
                    cp.size
                )));
            }
            if cp.size > old.size {
                let p: cloister_proto::km::ConsistencyProof = self
                    .km_request(KmOp::AuditConsistency {
                        old: old.size,
                        new: Some(cp.size),
                    })
                    .await?;
                let proof: Vec<[u8; 32]> = p.proof.iter().map(|h| h.0).collect();
                cloister_log::verify_consistency(old.size, cp.size, &old.root, &cp.root, &proof).map_err(|_| {
                    ClientError::Audit(format!(
                        "the log of size {} is not an extension of the one this device saw at size {}: it was forked or rewritten",
                        cp.size, old.size
                    ))
                })?;
            }
        }
        self.home.save_checkpoint(note)?;
        Ok(cp)
    }

    /// Audit entries (admin).
    pub async fn audit_list(
        &self,
        from: u64,
        limit: u32,
        kind: Option<String>,
        room: Option<RoomId>,
        since_ms: Option<u64>,
    ) -> Result<Vec<(u64, cloister_log::AuditRecord, Vec<u8>)>> {
        let r: cloister_proto::km::AuditListResponse = self
            .km_request(KmOp::AuditList {
                from,
                limit,
                kind,
                room,
                since_ms,
            })
            .await?;
        r.entries
            .into_iter()
            .map(|e| {
                cloister_log::AuditRecord::from_bytes(e.data.as_slice())
                    .map(|rec| (e.index, rec, e.data.0.clone()))
                    .map_err(|e| ClientError::Local(format!("unreadable audit entry: {e}")))
            })
            .collect()
    }

    /// An entry with its inclusion proof, checked against a freshly watched checkpoint.
    pub async fn audit_prove(
        &self,
        index: u64,
    ) -> Result<(cloister_proto::km::InclusionProof, String)> {
        let (cp, note) = self.audit_checkpoint().await?;
        if index >= cp.size {
            return Err(ClientError::Input(format!(
                "entry {index} is not in the log of {} entries",
                cp.size
            )));
        }
        let p: cloister_proto::km::InclusionProof = self
            .km_request(KmOp::AuditProve {
                index,
                size: Some(cp.size),
            })
            .await?;
        check_inclusion(&p, &cp)?;
        Ok((p, note))
    }

    /// A consistency proof from `old` to the current checkpoint.
    pub async fn audit_consistency(
        &self,
        old: u64,
    ) -> Result<(cloister_proto::km::ConsistencyProof, String)> {
        let (cp, note) = self.audit_checkpoint().await?;
        let p: cloister_proto::km::ConsistencyProof = self
            .km_request(KmOp::AuditConsistency {
                old,
                new: Some(cp.size),
            })
            .await?;
        Ok((p, note))
    }

    /// Every device ever released a key of `room`, each release proven to be in the log.
    pub async fn who_has_keys(&self, room: &RoomId) -> Result<Vec<KeyRelease>> {
        let r: cloister_proto::km::WhoHasKeysResponse =
            self.km_request(KmOp::WhoHasKeys { room: *room }).await?;
        let cp = self.accept_checkpoint(&r.checkpoint).await?;
        let mut out = Vec::with_capacity(r.releases.len());
        for p in &r.releases {
            check_inclusion(p, &cp)?;
            let rec = cloister_log::AuditRecord::from_bytes(p.data.as_slice()).map_err(|e| {
                ClientError::Audit(format!("unreadable audit entry {}: {e}", p.index))
            })?;
            match rec.event {
                cloister_log::AuditEvent::KeyReleased {
                    room: r,
                    epochs,
                    user,
                    device,
                    surveillance,
                    ..
                } if r == *room => {
                    out.push(KeyRelease {
                        index: p.index,
                        ts: rec.ts,
                        user,
                        device,
                        epochs,
                        surveillance,
                    });
                }
                _ => {
                    return Err(ClientError::Audit(format!(
                        "entry {} is not a key release of this room",
                        p.index
                    )));
                }
            }
        }
        Ok(out)
    }
}

/// Check an inclusion proof against a verified checkpoint.
pub fn check_inclusion(
    p: &cloister_proto::km::InclusionProof,
    cp: &cloister_log::Checkpoint,
) -> Result<()> {
    if p.size != cp.size {
        return Err(ClientError::Audit(format!(
            "proof is for size {}, checkpoint is {}",
            p.size, cp.size
        )));
    }
    let proof: Vec<[u8; 32]> = p.proof.iter().map(|h| h.0).collect();
    cloister_log::verify_inclusion(
        p.index,
        p.size,
        &cloister_log::leaf_hash(p.data.as_slice()),
        &proof,
        &cp.root,
    )
    .map_err(|_| {
        ClientError::Audit(format!(
            "entry {} is not in the log the checkpoint commits to",
            p.index
        ))
    })
}
