//! HPKE (RFC 9180) base mode, DHKEM(X25519, HKDF-SHA256) / HKDF-SHA256 / AES-256-GCM,
//! used by the KM to release a room key to exactly one device.

use crate::keys::{DeviceKeys, HpkeKem};
use crate::{CryptoError, RoomKey};
use cloister_proto::km::SealedRoomKey;
use cloister_proto::{DeviceId, RoomId, TenantId};
use hpke::{Deserializable, OpModeR, OpModeS, Serializable};

pub type Aead = hpke::aead::AesGcm256;
pub type Kdf = hpke::kdf::HkdfSha256;
pub type Kem = HpkeKem;

const INFO: &[u8] = b"cloister/room-key/v1";

/// Associated data binding a released key to its tenant, room, epoch,
/// recipient and lease: a sealed key cannot be replayed for another context.
pub fn room_key_aad(
    tenant: &TenantId,
    room: &RoomId,
    epoch: u64,
    device: &DeviceId,
    lease_until: u64,
) -> Vec<u8> {
    let mut v = Vec::with_capacity(80);
    v.extend_from_slice(&(tenant.as_str().len() as u32).to_be_bytes());
    v.extend_from_slice(tenant.as_str().as_bytes());
    v.extend_from_slice(room.as_bytes());
    v.extend_from_slice(&epoch.to_be_bytes());
    v.extend_from_slice(device.as_bytes());
    v.extend_from_slice(&lease_until.to_be_bytes());
    v
}

/// Seal arbitrary bytes to an X25519 public key. Returns (enc, ciphertext).
pub fn seal(
    recipient_pk: &[u8; 32],
    info: &[u8],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<([u8; 32], Vec<u8>), CryptoError> {
    let pk = <Kem as hpke::Kem>::PublicKey::from_bytes(recipient_pk)
        .map_err(|_| CryptoError::Malformed("HPKE public key"))?;
    let (enc, ct) =
        hpke::single_shot_seal::<Aead, Kdf, Kem>(&OpModeS::Base, &pk, info, plaintext, aad)
            .map_err(|_| CryptoError::Encrypt)?;
    let mut e = [0u8; 32];
    e.copy_from_slice(&enc.to_bytes());
    Ok((e, ct))
}

/// Open bytes sealed with [`seal`].
pub fn open(
    sk: &[u8; 32],
    enc: &[u8; 32],
    info: &[u8],
    aad: &[u8],
    ct: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let sk = <Kem as hpke::Kem>::PrivateKey::from_bytes(sk)
        .map_err(|_| CryptoError::Malformed("HPKE private key"))?;
    let enc = <Kem as hpke::Kem>::EncappedKey::from_bytes(enc)
        .map_err(|_| CryptoError::Malformed("HPKE encapsulated key"))?;
    hpke::single_shot_open::<Aead, Kdf, Kem>(&OpModeR::Base, &sk, &enc, info, ct, aad)
        .map_err(|_| CryptoError::Decrypt)
}

/// KM: seal a room key to a device.
pub fn seal_room_key(
    device_hpke_pk: &[u8; 32],
    tenant: &TenantId,
    room: &RoomId,
    epoch: u64,
    device: &DeviceId,
    lease_until: u64,
    key: &RoomKey,
) -> Result<SealedRoomKey, CryptoError> {
    let aad = room_key_aad(tenant, room, epoch, device, lease_until);
    let (enc, ct) = seal(device_hpke_pk, INFO, &aad, key.expose())?;
    Ok(SealedRoomKey {
        room: *room,
        epoch,
        lease_until,
        enc: cloister_proto::b64::Fixed(enc),
        ct: ct.into(),
    })
}

/// Device: open a room key released by the KM.
pub fn open_room_key(
    keys: &DeviceKeys,
    tenant: &TenantId,
    sealed: &SealedRoomKey,
) -> Result<RoomKey, CryptoError> {
    let aad = room_key_aad(
        tenant,
        &sealed.room,
        sealed.epoch,
        &keys.device_id(),
        sealed.lease_until,
    );
    let pt = zeroize::Zeroizing::new(open(
        keys.hpke_secret(),
        &sealed.enc.0,
        INFO,
        &aad,
        sealed.ct.as_slice(),
    )?);
    RoomKey::from_slice(&pt)
}

const EXCHANGE_INFO: &[u8] = b"cloister/km-key-exchange/v1";

/// Associated data of an epoch key one firm's KM seals to another's: the
/// room's home firm, the receiving firm, the room and the epoch.
fn exchange_aad(home: &TenantId, to: &TenantId, room: &RoomId, epoch: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(64);
    for t in [home, to] {
        v.extend_from_slice(&(t.as_str().len() as u32).to_be_bytes());
        v.extend_from_slice(t.as_str().as_bytes());
    }
    v.extend_from_slice(room.as_bytes());
    v.extend_from_slice(&epoch.to_be_bytes());
    v
}

/// Home KM: seal a room's epoch key to a partner firm's pinned exchange key.
pub fn seal_exchanged_key(
    partner_exchange_pk: &[u8; 32],
    home: &TenantId,
    to: &TenantId,
    room: &RoomId,
    epoch: u64,
    key: &RoomKey,
) -> Result<([u8; 32], Vec<u8>), CryptoError> {
    let aad = exchange_aad(home, to, room, epoch);
    seal(partner_exchange_pk, EXCHANGE_INFO, &aad, key.expose())
}

/// Partner KM: open an epoch key its firm received from the room's home KM.
pub fn open_exchanged_key(
    own: &crate::ExchangeKey,
    home: &TenantId,
    to: &TenantId,
    room: &RoomId,
    epoch: u64,
    enc: &[u8; 32],
    ct: &[u8],
) -> Result<RoomKey, CryptoError> {
    let aad = exchange_aad(home, to, room, epoch);
    let pt = zeroize::Zeroizing::new(open(own.expose(), enc, EXCHANGE_INFO, &aad, ct)?);
    RoomKey::from_slice(&pt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exchanged_key_opens_only_in_its_context() {
        let bank = crate::ExchangeKey::generate().unwrap();
        let other = crate::ExchangeKey::generate().unwrap();
        let (acme, bk): (TenantId, TenantId) = ("acme".parse().unwrap(), "bank".parse().unwrap());
        let room = RoomId([7; 16]);
        let k = RoomKey::generate().unwrap();
        let (enc, ct) = seal_exchanged_key(&bank.public(), &acme, &bk, &room, 3, &k).unwrap();
        let got = open_exchanged_key(&bank, &acme, &bk, &room, 3, &enc, &ct).unwrap();
        assert_eq!(got.expose(), k.expose());
        // another epoch, room, receiving firm, home or key: refused
        assert!(open_exchanged_key(&bank, &acme, &bk, &room, 4, &enc, &ct).is_err());
        assert!(open_exchanged_key(&bank, &acme, &bk, &RoomId([8; 16]), 3, &enc, &ct).is_err());
        assert!(open_exchanged_key(&bank, &acme, &acme, &room, 3, &enc, &ct).is_err());
        assert!(open_exchanged_key(&bank, &bk, &bk, &room, 3, &enc, &ct).is_err());
        assert!(open_exchanged_key(&other, &acme, &bk, &room, 3, &enc, &ct).is_err());
    }

    #[test]
    fn room_key_roundtrip_and_context_binding() {
        let dev = DeviceKeys::generate().unwrap();
        let t: TenantId = "acme".parse().unwrap();
        let room = RoomId([3; 16]);
        let key = RoomKey::generate().unwrap();
        let s = seal_room_key(&dev.hpke_pk(), &t, &room, 4, &dev.device_id(), 99, &key).unwrap();
        assert_eq!(open_room_key(&dev, &t, &s).unwrap(), key);

        let mut wrong_epoch = s.clone();
        wrong_epoch.epoch = 5;
        assert_eq!(
            open_room_key(&dev, &t, &wrong_epoch),
            Err(CryptoError::Decrypt)
        );
        let mut longer_lease = s.clone();
        longer_lease.lease_until = 1000;
        assert_eq!(
            open_room_key(&dev, &t, &longer_lease),
            Err(CryptoError::Decrypt)
        );
        let other = DeviceKeys::generate().unwrap();
        assert!(open_room_key(&other, &t, &s).is_err());
    }
}
