//! A device as an MLS member: key packages, groups it creates or joins,
//! commits it makes (staged until the server orders them), commits and
//! messages it receives. Sans-IO: bytes in, bytes out; the SDK carries them.

use crate::identity::{KmIdentity, signing_identity_for};
use crate::rules::{self, Change, Expected, Leaf, LogBinding, Roster};
use crate::storage::DeviceStore;
use crate::{CIPHER_SUITE, Error, crypto_provider};
use cloister_crypto::DeviceKeys;
use cloister_proto::km::SignedCert;
use cloister_proto::{DeviceId, RoomId, UserId};
use mls_rs::client_builder::{
    BaseConfig, PaddingMode, WithCryptoProvider, WithGroupStateStorage, WithIdentityProvider,
    WithKeyPackageRepo, WithMlsRules,
};
use mls_rs::group::{CommitEffect, ReceivedMessage};
use mls_rs::mls_rules::{CommitOptions, DefaultMlsRules, EncryptionOptions};
use mls_rs::{Client, ExtensionList, Group, MlsMessage};
use mls_rs_crypto_rustcrypto::RustCryptoProvider;
use std::time::Duration;

/// The mls-rs configuration of a Cloister device.
pub type DeviceConfig = WithIdentityProvider<
    KmIdentity,
    WithCryptoProvider<
        RustCryptoProvider,
        WithGroupStateStorage<
            DeviceStore,
            WithKeyPackageRepo<DeviceStore, WithMlsRules<DefaultMlsRules, BaseConfig>>,
        >,
    >,
>;

/// How long a key package is valid.
pub const KEY_PACKAGE_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);

/// Cloister's group rules: commits in the clear (the server orders and
/// checks them), the ratchet tree in every Welcome, application messages
/// padded to hide their length.
pub fn group_rules() -> DefaultMlsRules {
    DefaultMlsRules::new()
        .with_commit_options(
            CommitOptions::new()
                .with_ratchet_tree_extension(true)
                .with_single_welcome_message(true),
        )
        .with_encryption_options(EncryptionOptions::new(false, PaddingMode::StepFunction))
}

/// One device's MLS side.
pub struct Member {
    client: Client<DeviceConfig>,
    /// Groups in use, as loaded (saved to the store after every change;
    /// a group whose operation failed is dropped and read again).
    open: std::sync::Mutex<std::collections::HashMap<RoomId, Group<DeviceConfig>>>,
    store: DeviceStore,
    identity: KmIdentity,
    device: DeviceId,
}

impl std::fmt::Debug for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Member({})", self.device)
    }
}

/// A commit this device made, not yet applied: apply it with
/// [`Member::merge`] once the server ordered it; drop it if refused.
pub struct Staged {
    group: Group<DeviceConfig>,
    /// The commit (an MLS public message), for the server and the members.
    pub commit: Vec<u8>,
    /// The Welcome for the devices it adds (one message for all).
    pub welcome: Option<Vec<u8>>,
    /// The epoch the commit leads to.
    pub new_epoch: u64,
    /// The membership changes it makes.
    pub changes: Vec<Change>,
}

impl std::fmt::Debug for Staged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Staged(epoch {}, {:?})", self.new_epoch, self.changes)
    }
}

/// What a received message was.
#[derive(Debug)]
pub enum Received {
    /// A commit that passed the check and was applied.
    Commit {
        epoch: u64,
        changes: Vec<Change>,
        /// This device was removed: its group state is gone.
        removed: bool,
    },
    /// An application message from a leaf of the group.
    Application {
        user: UserId,
        device: DeviceId,
        epoch: u64,
        aad: Vec<u8>,
        data: zeroize::Zeroizing<Vec<u8>>,
    },
}

struct GroupRoster<'a>(&'a Group<DeviceConfig>);

impl Roster for GroupRoster<'_> {
    fn leaf(&self, index: u32) -> Option<Leaf> {
        let m = self.0.member_at_index(index)?;
        let (user, device) = rules::existing_owner(m.signing_identity())?;
        Some(Leaf {
            index,
            user,
            device,
        })
    }
    fn has_device(&self, device: &DeviceId, _: &mls_rs::identity::SigningIdentity) -> bool {
        self.0.member_with_identity(&device.0).is_ok()
    }
}

impl Member {
    /// The MLS side of a device whose certificate is `cert`.
    pub fn new(
        keys: &DeviceKeys,
        cert: &SignedCert,
        identity: KmIdentity,
        store: DeviceStore,
    ) -> Result<Member, Error> {
        let signer = keys.mls_signature_secret();
        let client = Client::builder()
            .mls_rules(group_rules())
            .key_package_repo(store.clone())
            .group_state_storage(store.clone())
            .crypto_provider(crypto_provider())
            .identity_provider(identity.clone())
            .key_package_lifetime(KEY_PACKAGE_LIFETIME)
            .signing_identity(
                signing_identity_for(cert, &keys.sign_pk()),
                signer.expose().to_vec().into(),
                CIPHER_SUITE,
            )
            .build();
        Ok(Member {
            client,
            open: Default::default(),
            store,
            identity,
            device: keys.device_id(),
        })
    }

    pub fn store(&self) -> &DeviceStore {
        &self.store
    }

    /// The firms whose certificates this device's groups accept.
    pub fn identity(&self) -> &KmIdentity {
        &self.identity
    }

    pub fn device(&self) -> DeviceId {
        self.device
    }

    /// `n` new key packages (MLS messages) to upload; their private halves
    /// stay in the store until a Welcome uses them.
    pub fn key_packages(&self, n: usize) -> Result<Vec<Vec<u8>>, Error> {
        (0..n)
            .map(|_| {
                self.client
                    .generate_key_package_message(ExtensionList::new(), ExtensionList::new(), None)
                    .and_then(|m| m.to_bytes())
                    .map_err(Error::mls)
            })
            .collect()
    }

    /// Create the group of an MLS room with this device as its only leaf;
    /// returns the GroupInfo (with the ratchet tree) for the server.
    pub fn create(&self, room: &RoomId) -> Result<Vec<u8>, Error> {
        let mut g = self
            .client
            .create_group_with_id(
                room.0.to_vec(),
                ExtensionList::new(),
                ExtensionList::new(),
                None,
            )
            .map_err(Error::mls)?;
        g.write_to_storage().map_err(Error::mls)?;
        let info = group_info(&g);
        self.keep(room, g);
        info
    }

    /// Put a group back among the open ones.
    fn keep(&self, room: &RoomId, g: Group<DeviceConfig>) {
        if let Ok(mut m) = self.open.lock() {
            m.insert(*room, g);
        }
    }

    fn load(&self, room: &RoomId) -> Result<Group<DeviceConfig>, Error> {
        if let Some(g) = self.open.lock().ok().and_then(|mut m| m.remove(room)) {
            return Ok(g);
        }
        self.client.load_group(&room.0).map_err(|e| match e {
            mls_rs::error::MlsError::GroupNotFound => Error::NoGroup,
            e => Error::mls(e),
        })
    }

    /// Does this device hold the group of `room`?
    pub fn has_group(&self, room: &RoomId) -> bool {
        self.store.state_exists(&room.0)
    }

    pub fn epoch(&self, room: &RoomId) -> Result<u64, Error> {
        let g = self.load(room)?;
        let e = g.current_epoch();
        self.keep(room, g);
        Ok(e)
    }

    /// The group's leaves (user and device of each).
    pub fn roster(&self, room: &RoomId) -> Result<Vec<Leaf>, Error> {
        let g = self.load(room)?;
        let leaves = g
            .roster()
            .members_iter()
            .filter_map(|m| {
                let (user, device) = rules::existing_owner(m.signing_identity())?;
                Some(Leaf {
                    index: m.index(),
                    user,
                    device,
                })
            })
            .collect();
        self.keep(room, g);
        Ok(leaves)
    }

    /// The GroupInfo of the current epoch (with the ratchet tree).
    pub fn group_info(&self, room: &RoomId) -> Result<Vec<u8>, Error> {
        let g = self.load(room)?;
        let info = group_info(&g);
        self.keep(room, g);
        info
    }

    /// Stage a commit that adds the devices of `key_packages` and removes
    /// the leaves of `remove`, bound to the log entry `binding`. With no
    /// changes it is an update of this device's own leaf (post-compromise
    /// security). It is checked by the same rules as a received commit.
    pub fn commit(
        &self,
        room: &RoomId,
        key_packages: &[Vec<u8>],
        remove: &[DeviceId],
        expected: &Expected,
    ) -> Result<Staged, Error> {
        let mut g = self.load(room)?;
        let indices = remove
            .iter()
            .map(|d| {
                g.member_with_identity(&d.0)
                    .map(|m| m.index())
                    .map_err(|_| Error::NotInGroup(*d))
            })
            .collect::<Result<Vec<u32>, Error>>()?;
        let mut builder = g.commit_builder();
        for kp in key_packages {
            let msg = MlsMessage::from_bytes(kp).map_err(|_| Error::Malformed("key package"))?;
            builder = builder.add_member(msg).map_err(Error::mls)?;
        }
        for index in indices {
            builder = builder.remove_member(index).map_err(Error::mls)?;
        }
        let out = builder
            .authenticated_data(expected.binding.encode())
            .build()
            .map_err(Error::mls)?;
        let commit = out.commit_message().to_bytes().map_err(Error::mls)?;
        let welcome = match out.welcome_messages().first() {
            Some(w) => Some(w.to_bytes().map_err(Error::mls)?),
            None => None,
        };
        let epoch = g.current_epoch();
        // Our own commit must pass the rules every member will run.
        let parsed = MlsMessage::from_bytes(&commit).map_err(Error::mls)?;
        let changes = rules::check_commit(
            &parsed,
            &room.0,
            epoch,
            &GroupRoster(&g),
            &self.identity,
            expected,
        )?;
        Ok(Staged {
            group: g,
            commit,
            welcome,
            new_epoch: epoch + 1,
            changes,
        })
    }

    /// Apply a commit the server accepted.
    pub fn merge(&self, mut staged: Staged) -> Result<u64, Error> {
        staged.group.apply_pending_commit().map_err(Error::mls)?;
        staged.group.write_to_storage().map_err(Error::mls)?;
        let e = staged.group.current_epoch();
        if let Ok(room) = <[u8; 16]>::try_from(staged.group.group_id()) {
            self.keep(&RoomId(room), staged.group);
        }
        Ok(e)
    }

    /// Join a group from a Welcome; returns the room and epoch joined.
    pub fn join(&self, welcome: &[u8]) -> Result<(RoomId, u64), Error> {
        let msg = MlsMessage::from_bytes(welcome).map_err(|_| Error::Malformed("welcome"))?;
        let (mut g, _) = self
            .client
            .join_group(None, &msg, None)
            .map_err(Error::mls)?;
        let room = <[u8; 16]>::try_from(g.group_id())
            .map(RoomId)
            .map_err(|_| Error::Malformed("group id"))?;
        g.write_to_storage().map_err(Error::mls)?;
        let e = g.current_epoch();
        self.keep(&room, g);
        Ok((room, e))
    }

    /// Encrypt application data for the group's current epoch.
    /// Refused while the group holds a leaf of a firm this device no
    /// longer trusts (a trust removed after it joined).
    pub fn encrypt(&self, room: &RoomId, data: &[u8], aad: &[u8]) -> Result<(u64, Vec<u8>), Error> {
        let mut g = self.load(room)?;
        let untrusted = g
            .roster()
            .members_iter()
            .filter_map(|m| rules::existing_owner(m.signing_identity()))
            .map(|(user, _)| user.tenant())
            .find(|t| !self.identity.trusts(t));
        if let Some(t) = untrusted {
            self.keep(room, g);
            return Err(Error::Untrusted(t));
        }
        let epoch = g.current_epoch();
        let msg = g
            .encrypt_application_message(data, aad.to_vec())
            .map_err(Error::mls)?;
        g.write_to_storage().map_err(Error::mls)?;
        self.keep(room, g);
        Ok((epoch, msg.to_bytes().map_err(Error::mls)?))
    }

    /// Process a message from the group: a commit is checked against
    /// `expected` (the log at the entry it names) before it is applied; an
    /// application message is decrypted and its sender named.
    pub fn process(
        &self,
        room: &RoomId,
        bytes: &[u8],
        expected: impl FnOnce(Option<LogBinding>) -> Result<Expected, Error>,
    ) -> Result<Received, Error> {
        let msg = MlsMessage::from_bytes(bytes).map_err(|_| Error::Malformed("MLS message"))?;
        let mut g = self.load(room)?;
        let mut changes = Vec::new();
        let is_commit = matches!(
            msg.description(),
            mls_rs::MlsMessageDescription::PublicProtocolMessage { .. }
        );
        if is_commit {
            let binding = match msg.description() {
                mls_rs::MlsMessageDescription::PublicProtocolMessage {
                    authenticated_data, ..
                } => LogBinding::decode(authenticated_data),
                _ => None,
            };
            let expected = expected(binding)?;
            changes = rules::check_commit(
                &msg,
                &room.0,
                g.current_epoch(),
                &GroupRoster(&g),
                &self.identity,
                &expected,
            )?;
        }
        let sender_of = |g: &Group<DeviceConfig>, index: u32| {
            g.member_at_index(index)
                .and_then(|m| rules::existing_owner(m.signing_identity()))
        };
        // the message's own epoch (a late one may be of a prior epoch)
        let msg_epoch = msg.epoch().unwrap_or_else(|| g.current_epoch());
        match g.process_incoming_message(msg).map_err(Error::mls)? {
            ReceivedMessage::ApplicationMessage(app) => {
                let (user, device) =
                    sender_of(&g, app.sender_index).ok_or(Error::Malformed("sender leaf"))?;
                if !self.identity.trusts(&user.tenant()) {
                    // the key is spent either way: keep the advanced tree
                    g.write_to_storage().map_err(Error::mls)?;
                    self.keep(room, g);
                    return Err(Error::Untrusted(user.tenant()));
                }
                // The secret tree advanced: the used key is gone from storage too.
                g.write_to_storage().map_err(Error::mls)?;
                self.keep(room, g);
                Ok(Received::Application {
                    user,
                    device,
                    epoch: msg_epoch,
                    aad: app.authenticated_data.clone(),
                    data: zeroize::Zeroizing::new(app.data().to_vec()),
                })
            }
            ReceivedMessage::Commit(c) => match c.effect {
                CommitEffect::NewEpoch(e) => {
                    g.write_to_storage().map_err(Error::mls)?;
                    self.keep(room, g);
                    Ok(Received::Commit {
                        epoch: e.epoch,
                        changes,
                        removed: false,
                    })
                }
                CommitEffect::Removed { new_epoch, .. } => {
                    self.store.forget_group(&room.0);
                    Ok(Received::Commit {
                        epoch: new_epoch.epoch,
                        changes,
                        removed: true,
                    })
                }
                CommitEffect::ReInit(_) => Err(Error::Refused(
                    rules::CommitRefusal::ProposalNotAllowed("re-init"),
                )),
            },
            _ => Err(Error::Malformed("not a group message")),
        }
    }
}

fn group_info(g: &Group<DeviceConfig>) -> Result<Vec<u8>, Error> {
    g.group_info_message(true)
        .and_then(|m| m.to_bytes())
        .map_err(Error::mls)
}
