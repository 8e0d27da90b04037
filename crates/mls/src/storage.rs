//! A device's MLS secrets: group states, the few prior epochs kept for
//! late messages, and the private halves of its key packages. Held in
//! memory and written out as one blob that the SDK seals under the device's
//! keystore key; nothing here touches a disk.
//!
//! Forward secrecy depends on what is kept: each epoch's secrets are
//! dropped once [`PRIOR_EPOCHS`] newer ones exist, and a message key is
//! gone from the group state once used (mls-rs deletes it from the secret
//! tree), so a blob stolen later opens neither.

use cloister_proto::b64::Bytes;
use mls_rs::mls_rs_codec::{MlsDecode, MlsEncode};
use mls_rs::storage_provider::KeyPackageData;
use mls_rs::{GroupStateStorage, KeyPackageStorage};
use mls_rs_core::group::{EpochRecord, GroupState};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use zeroize::Zeroizing;

/// Prior epochs a device keeps (to read messages sent just before a commit).
pub const PRIOR_EPOCHS: usize = 2;

#[derive(Debug, thiserror::Error)]
#[error("MLS storage: {0}")]
pub struct StorageError(&'static str);

impl mls_rs::error::IntoAnyError for StorageError {
    fn into_dyn_error(self) -> Result<Box<dyn std::error::Error + Send + Sync>, Self> {
        Ok(Box::new(self))
    }
}

#[derive(Default, Serialize, Deserialize)]
struct Group {
    state: Bytes,
    epochs: BTreeMap<u64, Bytes>,
}

#[derive(Default, Serialize, Deserialize)]
struct Data {
    groups: BTreeMap<String, Group>,
    /// Key package reference (hex) → encoded `KeyPackageData`.
    key_packages: BTreeMap<String, Bytes>,
}

impl Drop for Data {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        for g in self.groups.values_mut() {
            g.state.0.zeroize();
            for e in g.epochs.values_mut() {
                e.0.zeroize();
            }
        }
        for k in self.key_packages.values_mut() {
            k.0.zeroize();
        }
    }
}

/// The device's MLS store (cheap to clone: clones share one state).
#[derive(Clone, Default)]
pub struct DeviceStore {
    data: Arc<Mutex<Data>>,
}

impl std::fmt::Debug for DeviceStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeviceStore(..)")
    }
}

impl DeviceStore {
    fn lock(&self) -> MutexGuard<'_, Data> {
        // A panic while holding the lock cannot leave a half-written map:
        // every write below replaces whole values.
        self.data.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The whole store as bytes, to be sealed by the caller.
    pub fn export(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(serde_json::to_vec(&*self.lock()).unwrap_or_default())
    }

    /// A store from bytes [`export`](Self::export) wrote.
    pub fn import(bytes: &[u8]) -> Result<Self, StorageError> {
        let data: Data =
            serde_json::from_slice(bytes).map_err(|_| StorageError("unreadable state"))?;
        Ok(DeviceStore {
            data: Arc::new(Mutex::new(data)),
        })
    }

    /// Groups (room ids, hex) this device holds a state for.
    pub fn groups(&self) -> Vec<String> {
        self.lock().groups.keys().cloned().collect()
    }

    /// Is there a state for this group?
    pub fn state_exists(&self, group_id: &[u8]) -> bool {
        self.lock().groups.contains_key(&hex(group_id))
    }

    /// Forget a group (the device left or was removed).
    pub fn forget_group(&self, group_id: &[u8]) {
        self.lock().groups.remove(&hex(group_id));
    }

    /// Key packages whose private half is still held (not yet used).
    pub fn key_package_count(&self) -> usize {
        self.lock().key_packages.len()
    }

    /// The retained epoch ids of a group (for tests of forward secrecy).
    pub fn retained_epochs(&self, group_id: &[u8]) -> Vec<u64> {
        self.lock()
            .groups
            .get(&hex(group_id))
            .map(|g| g.epochs.keys().copied().collect())
            .unwrap_or_default()
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl GroupStateStorage for DeviceStore {
    type Error = StorageError;

    fn state(&self, group_id: &[u8]) -> Result<Option<Zeroizing<Vec<u8>>>, Self::Error> {
        Ok(self
            .lock()
            .groups
            .get(&hex(group_id))
            .map(|g| Zeroizing::new(g.state.0.clone())))
    }

    fn epoch(
        &self,
        group_id: &[u8],
        epoch_id: u64,
    ) -> Result<Option<Zeroizing<Vec<u8>>>, Self::Error> {
        Ok(self
            .lock()
            .groups
            .get(&hex(group_id))
            .and_then(|g| g.epochs.get(&epoch_id))
            .map(|e| Zeroizing::new(e.0.clone())))
    }

    fn write(
        &mut self,
        state: GroupState,
        epoch_inserts: Vec<EpochRecord>,
        epoch_updates: Vec<EpochRecord>,
    ) -> Result<(), Self::Error> {
        let mut data = self.lock();
        let group = data.groups.entry(hex(&state.id)).or_default();
        group.state = Bytes(state.data.to_vec());
        for e in epoch_inserts.into_iter().chain(epoch_updates) {
            group.epochs.insert(e.id, Bytes(e.data.to_vec()));
        }
        while group.epochs.len() > PRIOR_EPOCHS {
            if let Some(mut first) = group.epochs.first_entry() {
                zeroize::Zeroize::zeroize(&mut first.get_mut().0);
                first.remove();
            }
        }
        Ok(())
    }

    fn max_epoch_id(&self, group_id: &[u8]) -> Result<Option<u64>, Self::Error> {
        Ok(self
            .lock()
            .groups
            .get(&hex(group_id))
            .and_then(|g| g.epochs.keys().next_back().copied()))
    }
}

impl KeyPackageStorage for DeviceStore {
    type Error = StorageError;

    fn delete(&mut self, id: &[u8]) -> Result<(), Self::Error> {
        if let Some(mut v) = self.lock().key_packages.remove(&hex(id)) {
            zeroize::Zeroize::zeroize(&mut v.0);
        }
        Ok(())
    }

    fn insert(&mut self, id: Vec<u8>, pkg: KeyPackageData) -> Result<(), Self::Error> {
        let bytes = pkg
            .mls_encode_to_vec()
            .map_err(|_| StorageError("key package"))?;
        self.lock().key_packages.insert(hex(&id), Bytes(bytes));
        Ok(())
    }

    fn get(&self, id: &[u8]) -> Result<Option<KeyPackageData>, Self::Error> {
        let data = self.lock();
        let Some(v) = data.key_packages.get(&hex(id)) else {
            return Ok(None);
        };
        KeyPackageData::mls_decode(&mut v.0.as_slice())
            .map(Some)
            .map_err(|_| StorageError("key package"))
    }
}
