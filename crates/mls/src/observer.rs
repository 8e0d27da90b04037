//! The server as MLS delivery service: it follows each group's public state
//! (the ratchet tree and group context, no secrets) from the GroupInfo its
//! creator uploads and then from every commit it orders. With that state it
//! can run the same commit check as the members ([`crate::rules`]) and tell
//! which devices hold a leaf in the current epoch.

use crate::identity::KmIdentity;
use crate::rules::{self, Change, Expected, Leaf, Roster};
use crate::{Error, crypto_provider};
use cloister_proto::km::DeviceCert;
use cloister_proto::{DeviceId, RoomId};
use mls_rs::MlsMessage;
use mls_rs::external_client::builder::{
    ExternalBaseConfig, WithCryptoProvider, WithIdentityProvider,
};
use mls_rs::external_client::{
    ExternalClient, ExternalGroup, ExternalReceivedMessage, ExternalSnapshot,
};
use mls_rs::group::CommitEffect;
use mls_rs::identity::SigningIdentity;
use mls_rs_crypto_rustcrypto::RustCryptoProvider;

type ServerConfig =
    WithIdentityProvider<KmIdentity, WithCryptoProvider<RustCryptoProvider, ExternalBaseConfig>>;

/// Follows groups for the server.
pub struct Observer {
    client: ExternalClient<ServerConfig>,
    identity: KmIdentity,
}

/// One group as the server follows it.
pub struct Observed {
    group: ExternalGroup<ServerConfig>,
}

struct ObservedRoster<'a>(&'a ExternalGroup<ServerConfig>);

impl Roster for ObservedRoster<'_> {
    fn leaf(&self, index: u32) -> Option<Leaf> {
        let m = self.0.roster().member_with_index(index).ok()?;
        let (user, device) = rules::existing_owner(m.signing_identity())?;
        Some(Leaf {
            index,
            user,
            device,
        })
    }
    fn has_device(&self, _device: &DeviceId, si: &SigningIdentity) -> bool {
        self.0.get_member_with_identity(si).is_ok()
    }
}

impl Observer {
    /// An observer that accepts leaves certified under `identity`'s keys.
    pub fn new(identity: KmIdentity) -> Observer {
        let client = ExternalClient::builder()
            .crypto_provider(crypto_provider())
            .identity_provider(identity.clone())
            .build();
        Observer { client, identity }
    }

    /// Start following a new group from its GroupInfo (with the ratchet
    /// tree), as its creator uploads it: it must be the group of `room`, at
    /// epoch 0, with exactly one leaf.
    pub fn observe(&self, room: &RoomId, group_info: &[u8]) -> Result<Observed, Error> {
        let msg = MlsMessage::from_bytes(group_info).map_err(|_| Error::Malformed("group info"))?;
        let group = self
            .client
            .observe_group(msg, None, None)
            .map_err(Error::mls)?;
        if group.group_context().group_id() != room.0.as_slice() {
            return Err(Error::Malformed("group info (another group)"));
        }
        Ok(Observed { group })
    }

    /// Check a key package a device uploads: an MLS key package of
    /// Cloister's ciphersuite, validly signed, whose leaf is a device
    /// certified by a pinned KM. Returns the certificate and the package's
    /// reference (hex), which a Welcome names.
    pub fn key_package(&self, bytes: &[u8]) -> Result<(DeviceCert, String), Error> {
        use mls_rs::CryptoProvider;
        let msg = MlsMessage::from_bytes(bytes).map_err(|_| Error::Malformed("key package"))?;
        if msg.cipher_suite() != Some(crate::CIPHER_SUITE) {
            return Err(Error::Malformed("key package (not Cloister's ciphersuite)"));
        }
        let cs = crypto_provider()
            .cipher_suite_provider(crate::CIPHER_SUITE)
            .ok_or(Error::Malformed("ciphersuite"))?;
        let reference = msg
            .key_package_reference(&cs)
            .map_err(Error::mls)?
            .ok_or(Error::Malformed("key package"))?;
        let kp = self
            .client
            .validate_key_package(msg, Some(mls_rs::time::MlsTime::now()))
            .map_err(Error::mls)?;
        let cert = self
            .identity
            .certificate(kp.signing_identity())
            .map_err(|e| Error::Mls(e.to_string()))?;
        let hex: String = reference.iter().map(|b| format!("{b:02x}")).collect();
        Ok((cert, hex))
    }

    /// A group from its stored state.
    pub fn load(&self, snapshot: &[u8]) -> Result<Observed, Error> {
        let snap = ExternalSnapshot::from_bytes(snapshot).map_err(Error::mls)?;
        let group = self.client.load_group(snap).map_err(Error::mls)?;
        Ok(Observed { group })
    }

    /// Check a commit against the log (`expected`) and, if it passes,
    /// apply it: the changes it made.
    pub fn apply_commit(
        &self,
        observed: &mut Observed,
        commit: &[u8],
        expected: &Expected,
    ) -> Result<Vec<Change>, Error> {
        let msg = MlsMessage::from_bytes(commit).map_err(|_| Error::Malformed("commit"))?;
        let g = &mut observed.group;
        let changes = rules::check_commit(
            &msg,
            g.group_context().group_id(),
            g.group_context().epoch(),
            &ObservedRoster(g),
            &self.identity,
            expected,
        )?;
        match g.process_incoming_message(msg).map_err(Error::mls)? {
            ExternalReceivedMessage::Commit(c) => match c.effect {
                CommitEffect::NewEpoch(_) | CommitEffect::Removed { .. } => Ok(changes),
                CommitEffect::ReInit(_) => Err(Error::Refused(
                    rules::CommitRefusal::ProposalNotAllowed("re-init"),
                )),
            },
            _ => Err(Error::Malformed("commit")),
        }
    }
}

impl Observed {
    pub fn epoch(&self) -> u64 {
        self.group.group_context().epoch()
    }

    /// The leaves of the current epoch.
    pub fn roster(&self) -> Vec<Leaf> {
        self.group
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
            .collect()
    }

    /// The devices a commit (not yet applied) brings in, read without
    /// verifying: only to look up their standing before the check.
    pub fn added_devices(commit: &[u8]) -> Vec<DeviceId> {
        rules::added_leaves(commit)
            .into_iter()
            .map(|l| l.device)
            .collect()
    }

    /// The state to store.
    pub fn snapshot(&self) -> Result<Vec<u8>, Error> {
        self.group.snapshot().to_bytes().map_err(Error::mls)
    }
}
