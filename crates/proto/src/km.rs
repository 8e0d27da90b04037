//! Key Manager protocol: certificates, enrolment, signed requests, sealed keys.

use crate::b64::{Bytes, Fixed};
use crate::{DeviceId, RoomId, TenantId, UserId, room::SignedStatement};
use serde::{Deserialize, Serialize};

/// A role carried in a device certificate.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Tenant administrator: users, devices, enrolment codes.
    Admin,
    /// Ordinary user.
    User,
    /// Compliance officer: searches the archive, opens cases, exports, holds
    /// and runs retention.
    Compliance,
    /// Holds one share of the escrow key; approves cases.
    Custodian,
    /// May read rooms it is not a member of (live surveillance); every such
    /// key release is logged.
    Surveillance,
    /// The firm's malware scanner (`cloister inspect`): reads every file
    /// shared in the tenant's rooms and signs a verdict; every key release
    /// to it is logged.
    Inspector,
    /// An external guest the firm sponsors (their organisation runs no
    /// KM): takes part only in rooms the firm's users put them in, never
    /// with other firms; captured by the firm's vault.
    Guest,
    /// The firm's gateway to another messaging network (`cloister
    /// gateway`), where end-to-end encryption ends on purpose: it gets the
    /// keys of bridged rooms it is the gateway of, and of no other room;
    /// every key release to it is logged.
    Gateway,
}

impl Role {
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::User => "user",
            Role::Compliance => "compliance",
            Role::Custodian => "custodian",
            Role::Surveillance => "surveillance",
            Role::Inspector => "inspector",
            Role::Guest => "guest",
            Role::Gateway => "gateway",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "admin" => Role::Admin,
            "user" => Role::User,
            "compliance" => Role::Compliance,
            "custodian" => Role::Custodian,
            "surveillance" => Role::Surveillance,
            "inspector" => Role::Inspector,
            "guest" => Role::Guest,
            "gateway" => Role::Gateway,
            _ => {
                return Err(format!(
                    "unknown role {s:?} (admin, user, compliance, custodian, surveillance, inspector, guest, gateway)"
                ));
            }
        })
    }
}

/// The body of a device certificate, signed by the tenant KM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceCert {
    pub tenant: TenantId,
    pub user: UserId,
    pub device: DeviceId,
    /// Ed25519 verifying key of the device.
    pub sign_pk: Fixed<32>,
    /// X25519 HPKE public key of the device.
    pub hpke_pk: Fixed<32>,
    pub roles: Vec<Role>,
    pub issued_at: u64,
    pub not_after: u64,
    /// The user's jurisdiction in the directory when the certificate was
    /// issued (empty: none): a vault pinned to it takes the captures of
    /// this device, and only such a vault.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub jurisdiction: String,
}

/// A certificate as it travels: the exact signed bytes plus the KM signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignedCert {
    pub body: Bytes,
    pub sig: Fixed<64>,
}

/// Public description of a tenant KM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct KmInfo {
    pub tenant: TenantId,
    /// Ed25519 key that signs certificates and notices.
    pub sign_pk: Fixed<32>,
    /// Verifier key (C2SP note format) of the tenant's audit log.
    pub log_key: String,
}

/// A device asks for a certificate with a one-time enrolment code.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrolRequest {
    pub user: UserId,
    pub code: String,
    pub sign_pk: Fixed<32>,
    pub hpke_pk: Fixed<32>,
    /// Proof of possession: the device's signature over the enrolment transcript.
    pub pop: Fixed<64>,
    /// Evidence about the device the tenant's attestation policy may require.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<Evidence>,
}

/// Evidence an enrolment carries about the device (attestation): a format
/// (`mdm`) and its bytes, which that format's verifier reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Evidence {
    pub format: String,
    pub body: Bytes,
}

/// The tenant's attestation policy: which devices the KM certifies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AttestationPolicy {
    /// Refuse an enrolment without accepted evidence.
    pub required: bool,
    /// The evidence formats accepted (`mdm`).
    pub formats: Vec<String>,
    /// The tenant's MDM keys (Ed25519) an `mdm` endorsement must be signed by.
    #[serde(default)]
    pub mdm_keys: Vec<Fixed<32>>,
    /// The oldest evidence accepted, in seconds since it was issued.
    pub max_age_secs: u64,
}

impl Default for AttestationPolicy {
    fn default() -> Self {
        AttestationPolicy {
            required: false,
            formats: Vec::new(),
            mdm_keys: Vec::new(),
            max_age_secs: 24 * 3600,
        }
    }
}

/// The signed body of any authenticated request to the KM.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestBody {
    pub device: DeviceId,
    /// Milliseconds since the Unix epoch; must be within the allowed skew.
    pub ts: u64,
    /// Random, single use within the skew window (replay protection).
    pub nonce: Fixed<16>,
    pub op: KmOp,
}

/// Authenticated KM operations.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum KmOp {
    /// Room keys for the given epochs. `log` carries membership-log entries the
    /// KM may not have yet, starting at `log_from`.
    RoomKeys {
        room: RoomId,
        epochs: Vec<u64>,
        log_from: u64,
        log: Vec<SignedStatement>,
        /// Certificates of the log's actors from other firms (each checked
        /// under that firm's pinned KM key).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        certs: Vec<SignedCert>,
    },
    /// Admin: create a user (or re-issue a code) and return an enrolment code.
    AddUser { user: UserId, roles: Vec<Role> },
    /// Admin: disable a user; all their devices lose key access.
    DisableUser { user: UserId },
    /// Revoke one device: an admin any device of the tenant, a user their
    /// own (a lost laptop, from their phone).
    RevokeDevice { device: DeviceId },
    /// A fresh certificate for the requesting device, without a code,
    /// while it is in good standing (current roles, a new expiry).
    RenewCert,
    /// The requesting user's devices.
    MyDevices,
    /// Which of these devices of the tenant are revoked (or their user
    /// disabled): what a member of an MLS room needs to judge a commit
    /// that removes a leaf, or adds one (at most 1,000 devices).
    DeviceStanding { devices: Vec<DeviceId> },
    /// Admin: set the tenant's attestation policy.
    AttestationSet { policy: AttestationPolicy },
    /// Admin: the tenant's attestation policy.
    AttestationShow,
    /// Admin: list users and devices.
    ListUsers,
    /// Admin: whether the tenant's master key can be used (crypto-lock).
    LockStatus,
    /// Emergency rotation of a room's key: the KM signs a `rekey` into
    /// its log, a new epoch now (an admin, a compliance officer, or an
    /// owner of the room).
    RoomRekey { room: RoomId, reason: String },
    /// Admin: one step of a master-key rotation (the first starts one, or
    /// resumes an unfinished one): re-wrap up to `batch` keys under the
    /// new master key; the step that finds none left retires the old key.
    RotateTmk { batch: u32 },
    /// The audit log's latest signed checkpoint.
    AuditCheckpoint,
    /// The audit log's key hand-overs, each proven in the log (any device:
    /// a device that pinned an older key learns the newer one from them).
    AuditKeys,
    /// Admin: rotate the audit log's signing key (the log records the
    /// hand-over in a checkpoint both keys sign).
    RotateLogKey,
    /// Admin: audit entries, filtered.
    AuditList {
        #[serde(default)]
        from: u64,
        limit: u32,
        kind: Option<String>,
        room: Option<RoomId>,
        since_ms: Option<u64>,
    },
    /// Admin: an entry with its inclusion proof in the tree of `size` (default: current).
    AuditProve { index: u64, size: Option<u64> },
    /// Consistency proof from `old` to `new` (default: current).
    AuditConsistency { old: u64, new: Option<u64> },
    /// Every key release of a room, each with its inclusion proof.
    WhoHasKeys { room: RoomId },
    /// The KM-signed head of a room's verified log (freshness). `log` may
    /// carry entries from `log_from` the KM does not have yet.
    RoomHead {
        room: RoomId,
        log_from: u64,
        log: Vec<SignedStatement>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        certs: Vec<SignedCert>,
    },
    /// Entries of a room's log as the KM verified them, from `from` (for a
    /// client whose server withholds them).
    RoomLog { room: RoomId, from: u64 },
    /// Admin: register the tenant's escrow public key and the shares of its
    /// private key, each sealed to one custodian's device (once per tenant).
    EscrowInit {
        public: Fixed<32>,
        threshold: u8,
        shares: Vec<SealedShare>,
        /// Any `threshold` shares must come from at least this many
        /// jurisdictions (0 or 1: no such rule).
        #[serde(default)]
        min_jurisdictions: u8,
    },
    /// Admin: an emergency rotation of the escrow key: register generation
    /// n+1 (a new key split among custodians, under the same checks as
    /// [`KmOp::EscrowInit`]). Older generations stay until retired, so
    /// their quorum still opens what was sealed to them.
    EscrowRotate {
        public: Fixed<32>,
        threshold: u8,
        shares: Vec<SealedShare>,
        #[serde(default)]
        min_jurisdictions: u8,
    },
    /// Every live escrow generation, KM-signed, oldest first.
    EscrowHistory,
    /// Admin: retire an older escrow generation (its shares are deleted).
    /// `counts` are the vaults' signed statements that no envelope is left
    /// under it, one from every registered vault, each checked under that
    /// vault's registered key.
    EscrowRetire {
        generation: u32,
        counts: Vec<SignedBlob>,
    },
    /// The KM-signed escrow descriptor (any device: it seals audit envelopes to it).
    EscrowInfo,
    /// Custodian: my sealed shares (one per live generation I hold one of).
    MyEscrowShare,
    /// Blind-index keys of the given periods, sealed to the requesting device.
    IndexKeys { periods: Vec<u32> },
    /// Admin: register the tenant's vault (its receipt and log keys) and its
    /// capture policy; answered with the KM-signed descriptor and a notice for
    /// the messaging server.
    VaultRegister {
        url: String,
        receipt_pk: Fixed<32>,
        log_key: String,
        capture_required: bool,
        /// The jurisdiction the vault is pinned to (its `/v1/info`); empty:
        /// the tenant's default vault.
        #[serde(default)]
        jurisdiction: String,
    },
    /// The KM-signed descriptor of the vault this device captures into:
    /// the one pinned to its certificate's jurisdiction, else the default.
    VaultInfo,
    /// Compliance or admin: every registered vault's descriptor.
    VaultList,
    /// Compliance: open a case with its scope and the decryption session's
    /// ephemeral public key.
    CaseOpen {
        case: String,
        title: String,
        scope: CaseScope,
        session_pk: Fixed<32>,
        hold: bool,
    },
    /// Compliance (the case's officer): replace a case's scope (approvals
    /// given for the old scope no longer count).
    CaseRescope { case: String, scope: CaseScope },
    /// Compliance and custodians: every case.
    CaseList,
    /// Custodian: approve a case, releasing my share re-sealed to its session key.
    CaseApprove { approval: SignedBlob },
    /// Compliance (the case's officer): the case and its approvals.
    CaseApprovals { case: String },
    /// Compliance (the case's officer): record a step of the decryption session
    /// (`session_opened` must succeed before anything is decrypted).
    CaseStep {
        case: String,
        step: String,
        count: u64,
    },
    /// Compliance: set retention (days) for a room kind (`im` or `group`).
    RetentionSet { kind: String, days: u32 },
    /// Compliance: apply retention now: crypto-shred the room-epoch keys that
    /// expired and no hold covers; answered with a KM-signed purge order for
    /// the vault.
    RetentionRun,
    /// Search the directory (name, title, department, desk, location, asset
    /// class, job function); people a barrier separates from the searcher
    /// are left out.
    DirectorySearch {
        query: String,
        #[serde(default)]
        limit: u32,
    },
    /// The caller's own entitlements.
    MyEntitlements,
    /// The KM-signed controls notice (barriers, groups, entitlements).
    Controls,
    /// Admin: grant or deny entitlements to a user, or grant them to every
    /// member of a group (exactly one of `user` and `group`).
    Entitle {
        user: Option<UserId>,
        group: Option<String>,
        #[serde(default)]
        grant: Vec<crate::controls::Entitlement>,
        #[serde(default)]
        revoke: Vec<crate::controls::Entitlement>,
    },
    /// Admin: create a group (if new) and change its members.
    GroupSet {
        name: String,
        #[serde(default)]
        add: Vec<UserId>,
        #[serde(default)]
        remove: Vec<UserId>,
    },
    /// Admin or compliance: every group with its members.
    GroupList,
    /// Admin or compliance: a BLOCK policy between two groups.
    BarrierAdd {
        a: String,
        b: String,
        reason: String,
    },
    /// Admin or compliance: every barrier, active and disabled.
    BarrierList,
    /// Admin or compliance: disable a barrier (it stays in the record).
    BarrierDisable { id: String, reason: String },
    /// Admin: set a user's directory attributes (absent fields unchanged).
    ProfileSet {
        user: UserId,
        profile: ProfileUpdate,
    },
    /// Admin: mint a bearer token for the SCIM endpoint (shown once).
    ScimTokenIssue { label: String },
    /// Admin: revoke a SCIM token.
    ScimTokenRevoke { id: String },
    /// Admin or compliance: add or replace a DLP policy (disable it with
    /// `active: false`; policies are never deleted).
    DlpPut { policy: crate::controls::DlpPolicy },
    /// The KM-signed DLP policy set (any device: it enforces them).
    DlpPolicies,
    /// Admin or compliance: may, must or must not the firm's new named
    /// rooms be MLS rooms.
    MlsPolicySet { policy: crate::controls::MlsPolicy },
    /// Admin: this firm's KM identity and fingerprint, to give a partner.
    TrustSelf,
    /// Admin: pin another firm's KM identity (`fingerprint`, when given,
    /// must be the one compared out of band).
    TrustAdd {
        tenant: TenantId,
        km_key: String,
        #[serde(default)]
        fingerprint: Option<String>,
        /// Where the partner's KM answers other KMs (the KM-to-KM key
        /// exchange); needed only for rooms homed at that firm.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        km_url: Option<String>,
    },
    /// The KM-signed keys of the firms trusted now (any device: it checks
    /// partner firms' certificates and room statements under them).
    PartnerKeys,
    /// Admin: the profile fields this firm publishes to trusted firms'
    /// users (`display_name`, `title`, `department`, `desk`, `location`,
    /// `job_function`, `asset_classes`); none: the firm is not searchable.
    DirectoryPublish { fields: Vec<String> },
    /// Search a trusted firm's directory (needs `external_chat`): the
    /// fields that firm publishes, of its people who may talk externally.
    PartnerDirectorySearch {
        firm: TenantId,
        query: String,
        #[serde(default)]
        limit: u32,
    },
    /// Admin: every firm trusted now or before.
    TrustList,
    /// Admin: stop trusting a firm's KM (new key exchange stops at once).
    TrustRemove { tenant: TenantId, reason: String },
    /// A user (with `external_chat`) asks a user of a trusted firm to
    /// connect: the KM signs the request.
    ConnectRequest { to: UserId },
    /// The asked user answers a request their firm's KM can verify.
    ConnectAnswer { request: SignedBlob, accept: bool },
    /// Either user ends a connection.
    ConnectRemove { request: SignedBlob },
    /// Compliance: lock a room (no posts, no changes) with a justification.
    RoomLock { room: RoomId, justification: String },
    /// Compliance: unlock a room.
    RoomUnlock { room: RoomId, justification: String },
    /// Compliance: ban a member (a new epoch without them; never re-added).
    RoomBan {
        room: RoomId,
        user: UserId,
        justification: String,
    },
}

/// What a KM-signed room statement did.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RoomControlResponse {
    pub room: RoomId,
    pub seq: u64,
    pub epoch: u64,
}

/// A member an information barrier moved out of a room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Eviction {
    pub room: RoomId,
    pub user: UserId,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BarrierAdded {
    pub barrier: BarrierInfo,
    /// Rooms where the barrier now applied: who left and why.
    pub evicted: Vec<Eviction>,
    /// Evictions the KM could not deliver yet (it retries).
    pub pending: Vec<String>,
}

/// Directory attributes to change (`None`: unchanged).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfileUpdate {
    pub display_name: Option<String>,
    pub title: Option<String>,
    pub department: Option<String>,
    pub desk: Option<String>,
    pub location: Option<String>,
    pub job_function: Option<String>,
    pub asset_classes: Option<Vec<String>>,
    /// The legal jurisdiction the person works under (`UK`, `US-NY`, `SG`):
    /// escrow policies count custodians by it.
    #[serde(default)]
    pub jurisdiction: Option<String>,
}

/// A person as directory search shows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DirectoryEntry {
    pub user: UserId,
    pub display_name: String,
    pub title: String,
    pub department: String,
    pub desk: String,
    pub location: String,
    pub job_function: String,
    pub asset_classes: Vec<String>,
    #[serde(default)]
    pub jurisdiction: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EntitlementsResponse {
    pub user: UserId,
    pub entitlements: Vec<crate::controls::Entitlement>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GroupInfo {
    pub name: String,
    pub scim_id: String,
    pub members: Vec<UserId>,
    pub entitlements: Vec<crate::controls::Entitlement>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BarrierInfo {
    pub barrier: crate::controls::Barrier,
    pub created_ms: u64,
    pub created_by: Option<UserId>,
    pub disabled_ms: Option<u64>,
    pub disabled_by: Option<UserId>,
    pub disabled_reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ScimTokenResponse {
    pub id: String,
    /// Shown once; the KM keeps only its hash.
    pub token: String,
}

/// What a case covers: messages in `[from_ms, to_ms]` in any of `rooms`
/// (all rooms if empty) that any of `custodians` sent or received (anyone if
/// empty). At least one room or custodian must be named (or, for a
/// re-seal case, the escrow generation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CaseScope {
    pub custodians: Vec<UserId>,
    pub rooms: Vec<RoomId>,
    pub from_ms: u64,
    pub to_ms: u64,
    /// A re-seal case (after an escrow-key rotation): every envelope still
    /// sealed to this escrow generation, in any room, inside the time
    /// range; it re-seals them to the newest generation and exports nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reseal: Option<u32>,
}

impl CaseScope {
    /// Is a message (room, time, sender and participants) inside this scope?
    pub fn covers(&self, room: &RoomId, ts: u64, people: &[&UserId]) -> bool {
        ts >= self.from_ms
            && ts <= self.to_ms
            && (self.rooms.is_empty() || self.rooms.contains(room))
            && (self.custodians.is_empty() || people.iter().any(|p| self.custodians.contains(p)))
    }
}

/// A compliance case, signed by the KM (domain `cloister/case/v1`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub tenant: TenantId,
    pub case: String,
    pub title: String,
    pub officer: UserId,
    pub officer_device: DeviceId,
    /// X25519 key of the decryption session; its private half never leaves
    /// the officer's device.
    pub session_pk: Fixed<32>,
    pub scope: CaseScope,
    /// Bumped on every rescope; approvals name the version they approve.
    pub version: u32,
    /// The scope is under legal hold: retention does not delete it.
    pub hold: bool,
    pub opened_ms: u64,
}

/// A custodian's approval of one version of a case, signed by the
/// custodian's device (domain `cloister/approval/v1`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Approval {
    pub tenant: TenantId,
    pub case: String,
    pub version: u32,
    /// SHA-256 of the KM-signed case body being approved.
    pub case_sha256: Fixed<32>,
    pub custodian: UserId,
    pub device: DeviceId,
    /// The custodian's escrow share, re-sealed to the case's session key.
    pub number: u8,
    pub enc: Fixed<32>,
    pub ct: Bytes,
    pub ts: u64,
    /// The escrow generation of the share above.
    #[serde(
        default = "crate::first_generation",
        skip_serializing_if = "crate::is_first_generation"
    )]
    pub generation: u32,
    /// The custodian's shares of the other live generations, each
    /// re-sealed the same way (so the old quorum still opens old envelopes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub more: Vec<ShareRelease>,
}

/// One more escrow share in an [`Approval`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ShareRelease {
    pub generation: u32,
    pub number: u8,
    pub enc: Fixed<32>,
    pub ct: Bytes,
}

/// The vault's signed count of the envelopes still sealed to an escrow
/// generation (domain `cloister/escrow-count/v1`, receipt key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EscrowCount {
    pub tenant: TenantId,
    pub generation: u32,
    pub remaining: u64,
    /// The newest escrow generation the vault knows (it refuses captures
    /// sealed to any older one, so a zero count stays zero).
    pub newest: u32,
    pub ts: u64,
}

/// Any signed JSON object as it travels: the exact signed bytes and the signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignedBlob {
    pub body: Bytes,
    pub sig: Fixed<64>,
}

/// A case and the approvals given for its current version, each with the
/// approving device's certificate.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CaseApprovals {
    pub case: SignedBlob,
    pub approvals: Vec<ApprovalWithCert>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ApprovalWithCert {
    pub approval: SignedBlob,
    pub cert: SignedCert,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CaseListResponse {
    pub cases: Vec<SignedBlob>,
}

/// The vault asks the KM for the tenant's revoked devices and disabled
/// users, signing with the receipt key the KM registered for it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DenyListRequest {
    pub tenant: TenantId,
    pub ts: u64,
    pub sig: Fixed<64>,
}

/// The tenant's vault as registered with the KM (signed, domain `cloister/vault/v1`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VaultDescriptor {
    pub tenant: TenantId,
    pub url: String,
    /// Ed25519 key that signs capture receipts.
    pub receipt_pk: Fixed<32>,
    /// C2SP verifier key of the vault's ingestion log.
    pub log_key: String,
    pub capture_required: bool,
    pub registered_ms: u64,
    /// The jurisdiction it is pinned to (empty: the default vault).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub jurisdiction: String,
}

/// A vault pinned to a jurisdiction, as the messaging server checks its
/// receipts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegionalVault {
    pub jurisdiction: String,
    pub receipt_pk: Fixed<32>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VaultRegisterResponse {
    pub vault: SignedBlob,
    /// Forward to the messaging server (capture policy).
    pub notice: SignedNotice,
}

/// What retention may delete in one room: envelopes older than `before_ms`
/// outside every held range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RoomPurge {
    pub room: RoomId,
    pub before_ms: u64,
    /// `[from_ms, to_ms]` ranges under hold.
    pub held: Vec<(u64, u64)>,
}

/// KM-signed order for the vault to delete expired envelopes (domain `cloister/purge/v1`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PurgeOrder {
    pub tenant: TenantId,
    pub rooms: Vec<RoomPurge>,
    pub issued_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RetentionRunResponse {
    pub order: SignedBlob,
    /// (room, epoch) keys destroyed by this run.
    pub shredded: Vec<(RoomId, u64)>,
    /// (room, epoch) keys that expired but are kept for a hold.
    pub held: Vec<(RoomId, u64)>,
    /// `KeysShredded`, for the messaging server (when anything was shredded).
    #[serde(default)]
    pub notice: Option<SignedNotice>,
}

/// One escrow share sealed (HPKE) to a custodian's device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SealedShare {
    pub custodian: UserId,
    pub device: DeviceId,
    /// 1-based share number.
    pub number: u8,
    pub enc: Fixed<32>,
    pub ct: Bytes,
    /// The escrow generation this share belongs to.
    #[serde(
        default = "crate::first_generation",
        skip_serializing_if = "crate::is_first_generation"
    )]
    pub generation: u32,
}

/// The tenant's escrow public key and policy, signed by the KM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EscrowDescriptor {
    pub tenant: TenantId,
    pub public: Fixed<32>,
    pub threshold: u8,
    pub custodians: Vec<UserId>,
    pub created: u64,
    /// Each custodian's jurisdiction when the key was split (in the order
    /// of `custodians`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jurisdictions: Vec<String>,
    /// Any `threshold` shares span at least this many jurisdictions.
    #[serde(default)]
    pub min_jurisdictions: u8,
    /// 1 for the first key; each emergency rotation adds one.
    #[serde(
        default = "crate::first_generation",
        skip_serializing_if = "crate::is_first_generation"
    )]
    pub generation: u32,
}

/// A KM-signed escrow descriptor (signed bytes, domain `cloister/escrow/v1`).
pub type SignedEscrow = SignedBlob;

/// Blind-index keys, each sealed like a room key (its "room" is the zero id and
/// its "epoch" the period).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct IndexKeysResponse {
    pub keys: Vec<SealedRoomKey>,
}

/// A signed audit checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CheckpointResponse {
    /// C2SP signed note holding a tlog-checkpoint.
    pub checkpoint: String,
    pub log_key: String,
}

/// An audit entry: its index and the exact bytes hashed into the log.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditEntry {
    pub index: u64,
    pub data: Bytes,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditListResponse {
    pub entries: Vec<AuditEntry>,
}

/// An entry and its inclusion proof in the tree of `size` leaves.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InclusionProof {
    pub index: u64,
    pub size: u64,
    pub data: Bytes,
    pub proof: Vec<Fixed<32>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ConsistencyProof {
    pub old: u64,
    pub new: u64,
    pub proof: Vec<Fixed<32>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WhoHasKeysResponse {
    /// The checkpoint all proofs are against.
    pub checkpoint: String,
    pub releases: Vec<InclusionProof>,
}

/// A signed KM request as it travels.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignedRequest {
    pub device: DeviceId,
    /// JSON of [`RequestBody`], exactly as signed.
    pub body: Bytes,
    pub sig: Fixed<64>,
}

/// One released room key, sealed with HPKE to the requesting device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SealedRoomKey {
    pub room: RoomId,
    pub epoch: u64,
    /// Lease end, seconds since the Unix epoch; the device must not use the key after it.
    pub lease_until: u64,
    /// HPKE encapsulated key.
    pub enc: Fixed<32>,
    /// HPKE ciphertext of the 32-byte room key.
    pub ct: Bytes,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RoomKeysResponse {
    pub keys: Vec<SealedRoomKey>,
    /// Head of the KM's verified copy of the room's log.
    pub log_seq: u64,
    /// The same head, KM-signed ([`RoomHead`], `cloister/room-head/v1`).
    pub head: SignedBlob,
}

/// The newest head of a room's log the KM has verified, as of `issued_ms`.
/// A device seals only in `epoch` (or later) once it holds a head of at most
/// its freshness bound's age.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RoomHead {
    pub tenant: TenantId,
    pub room: RoomId,
    pub seq: u64,
    pub head: Fixed<32>,
    pub epoch: u64,
    pub issued_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RoomHeadResponse {
    pub head: SignedBlob,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RoomLogResponse {
    pub entries: Vec<SignedStatement>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AddUserResponse {
    pub user: UserId,
    /// One-time enrolment code; shown once, stored only as a hash.
    pub code: String,
    pub expires_at: u64,
}

/// A statement by the KM that the server must act on (user disabled, device revoked).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Notice {
    UserDisabled {
        tenant: TenantId,
        user: UserId,
        ts: u64,
    },
    DeviceRevoked {
        tenant: TenantId,
        device: DeviceId,
        ts: u64,
    },
    /// The tenant's capture policy: with `required`, every message needs a
    /// receipt signed by `receipt_pk`. The newest `ts` wins.
    CapturePolicy {
        tenant: TenantId,
        receipt_pk: Fixed<32>,
        required: bool,
        ts: u64,
        /// Vaults pinned to a jurisdiction: a sender whose certificate
        /// names one needs that vault's receipt (`receipt_pk` is the
        /// default vault's, for everyone else).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        regional: Vec<RegionalVault>,
    },
    /// Retention destroyed these (room, epoch) keys: devices drop them from
    /// their caches and the server tells every member.
    KeysShredded {
        tenant: TenantId,
        shredded: Vec<(RoomId, u64)>,
        ts: u64,
    },
    /// A disabled user is active again (SCIM `active: true`).
    UserEnabled {
        tenant: TenantId,
        user: UserId,
        ts: u64,
    },
    /// The tenant's communication controls; the highest version wins.
    Controls {
        tenant: TenantId,
        controls: crate::controls::Controls,
        ts: u64,
    },
}

impl Notice {
    pub fn tenant(&self) -> &TenantId {
        match self {
            Notice::UserDisabled { tenant, .. }
            | Notice::DeviceRevoked { tenant, .. }
            | Notice::CapturePolicy { tenant, .. }
            | Notice::KeysShredded { tenant, .. }
            | Notice::UserEnabled { tenant, .. }
            | Notice::Controls { tenant, .. } => tenant,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignedNotice {
    pub body: Bytes,
    pub sig: Fixed<64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AdminResponse {
    /// Present for user/device changes: forward it to the messaging server.
    pub notice: Option<SignedNotice>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UserRecord {
    pub user: UserId,
    pub status: String,
    pub roles: Vec<Role>,
    pub devices: Vec<DeviceRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeviceStandingAnswer {
    /// Those of the asked devices that may not hold a leaf.
    pub barred: Vec<DeviceId>,
}

/// One of a user's devices as the KM knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeviceRecord {
    pub device: DeviceId,
    pub status: String,
    pub issued_at: u64,
}

/// The answer to `RotateTmk`: where the rotation stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TmkRotation {
    /// The master-key version keys move from.
    pub from: u32,
    /// The master-key version keys move to (new wraps use it already).
    pub to: u32,
    /// The key generation the re-wrapped keys are under.
    pub generation: u32,
    /// Keys re-wrapped by this step.
    pub rewrapped: u64,
    /// Keys still under an older generation.
    pub remaining: u64,
    /// The old master key is retired: the rotation is complete.
    pub finished: bool,
}

/// One hand-over of the audit log to a new key: the entry that records
/// it, in a checkpoint both keys signed, with its inclusion proof.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LogHandover {
    /// The old verifier key (`name+id+key`).
    pub from: String,
    /// The new verifier key.
    pub to: String,
    /// The `key_rotation` entry's index.
    pub index: u64,
    /// A checkpoint that includes the entry, signed by both keys.
    pub checkpoint: String,
    /// The entry's bytes.
    pub entry: Bytes,
    /// Its inclusion proof in `checkpoint`.
    pub proof: Vec<Fixed<32>>,
}

/// The answer to `AuditKeys`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditKeys {
    /// The key that signs checkpoints now.
    pub current: String,
    /// Every hand-over, oldest first.
    pub handovers: Vec<LogHandover>,
}

/// The answer to `LockStatus`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LockStatus {
    /// `true`: the master key cannot be used and no key is released.
    pub locked: bool,
    /// Which provider holds the key (`file`, `pkcs11`).
    pub provider: String,
    /// Why it is locked (the provider's words, never a secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The key lease devices get: the longest a lock takes to reach them.
    pub lease_secs: u64,
    /// The master-key versions that exist; more than one: a rotation is
    /// unfinished (`cloister admin rotate master-key` finishes it).
    #[serde(default)]
    pub tmk_versions: Vec<u32>,
}
