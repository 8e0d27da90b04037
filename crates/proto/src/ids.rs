//! Identifiers. Every identifier is validated when parsed, so a value of one of
//! these types is always well formed (safe in paths, SQL parameters and logs).

use serde::{Deserialize, Deserializer, Serialize};
use std::fmt;
use std::str::FromStr;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    #[error("invalid tenant id {0:?}: use 1-32 of a-z, 0-9 and '-'")]
    Tenant(String),
    #[error("invalid user id {0:?}: expected name@tenant, name 1-64 of a-z, 0-9, '.', '_', '-'")]
    User(String),
    #[error("invalid {kind} id {value:?}: expected 32 lowercase hex digits")]
    Hex { kind: &'static str, value: String },
}

fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

fn valid_tenant(s: &str) -> bool {
    (1..=32).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
}

fn valid_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'_' || b == b'-'
        })
}

/// A customer firm.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct TenantId(String);

impl TenantId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for TenantId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        if valid_tenant(s) {
            Ok(TenantId(s.to_owned()))
        } else {
            Err(IdError::Tenant(truncate(s)))
        }
    }
}

/// A person, `name@tenant`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct UserId(String);

impl UserId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
    pub fn tenant(&self) -> TenantId {
        let t = self.0.rsplit_once('@').map(|(_, t)| t).unwrap_or("");
        TenantId(t.to_owned())
    }
    pub fn name(&self) -> &str {
        self.0.rsplit_once('@').map(|(n, _)| n).unwrap_or("")
    }
    /// `name@tenant` for a name known to be valid (a reserved name such as
    /// the KM's): a valid tenant and a valid name make a valid user id.
    pub fn reserved(name: &'static str, tenant: &TenantId) -> UserId {
        debug_assert!(valid_name(name));
        UserId(format!("{name}@{tenant}"))
    }
}

impl FromStr for UserId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        match s.split_once('@') {
            Some((n, t)) if valid_name(n) && valid_tenant(t) => Ok(UserId(s.to_owned())),
            _ => Err(IdError::User(truncate(s))),
        }
    }
}

macro_rules! hex_id {
    ($name:ident, $kind:literal, $doc:literal) => {
        #[doc = $doc]
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; 16]);

        impl $name {
            /// Hex form, as used in URLs and storage.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }
            pub fn as_bytes(&self) -> &[u8; 16] {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                let err = || IdError::Hex {
                    kind: $kind,
                    value: truncate(s),
                };
                if s.len() != 32 || s.bytes().any(|b| b.is_ascii_uppercase()) {
                    return Err(err());
                }
                let mut out = [0u8; 16];
                hex::decode_to_slice(s, &mut out).map_err(|_| err())?;
                Ok($name(out))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", $kind, self.to_hex())
            }
        }
        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_hex())
            }
        }
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

hex_id!(
    DeviceId,
    "device",
    "A device: the first 16 bytes of SHA-256 of its signing key."
);
hex_id!(
    RoomId,
    "room",
    "A room or 1:1 conversation (random, or derived for IMs)."
);
hex_id!(
    MessageId,
    "message",
    "A message (random, chosen by the sender)."
);

macro_rules! str_id_impls {
    ($name:ident) => {
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", self.0)
            }
        }
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
str_id_impls!(TenantId);
str_id_impls!(UserId);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_reserved_user_id_parses_like_any_other() {
        let t: TenantId = "acme-bank".parse().unwrap();
        let km = UserId::reserved("km", &t);
        assert_eq!(km.as_str().parse::<UserId>().unwrap(), km);
        assert_eq!(km.tenant(), t);
    }

    #[test]
    fn user_ids() {
        let u: UserId = "alice.smith@acme-bank".parse().unwrap();
        assert_eq!(u.tenant().as_str(), "acme-bank");
        assert_eq!(u.name(), "alice.smith");
        for bad in [
            "",
            "alice",
            "@acme",
            "alice@",
            "Alice@acme",
            "a@b@c",
            "a b@acme",
            "a@-x",
        ] {
            assert!(bad.parse::<UserId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn hex_ids() {
        let r: RoomId = "00112233445566778899aabbccddeeff".parse().unwrap();
        assert_eq!(r.to_hex(), "00112233445566778899aabbccddeeff");
        assert!(
            "00112233445566778899AABBCCDDEEFF"
                .parse::<RoomId>()
                .is_err()
        );
        assert!("0011".parse::<RoomId>().is_err());
        assert!(
            "../../../etc/passwd0000000000000"
                .parse::<RoomId>()
                .is_err()
        );
    }

    proptest! {
        #[test]
        fn parsers_never_panic_and_roundtrip(s in "\\PC{0,80}") {
            if let Ok(u) = s.parse::<UserId>() { prop_assert_eq!(u.as_str(), s.as_str()); }
            if let Ok(t) = s.parse::<TenantId>() { prop_assert_eq!(t.as_str(), s.as_str()); }
            if let Ok(r) = s.parse::<RoomId>() { prop_assert_eq!(r.to_hex(), s.clone()); }
        }

        #[test]
        fn json_roundtrip(b in proptest::array::uniform16(any::<u8>())) {
            let id = DeviceId(b);
            let j = serde_json::to_string(&id).unwrap();
            prop_assert_eq!(serde_json::from_str::<DeviceId>(&j).unwrap(), id);
        }
    }
}
