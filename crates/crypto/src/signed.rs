//! Signed-bytes objects: sign the exact JSON bytes, verify before parsing.

use crate::keys::{DeviceKeys, KmSigner, verify};
use crate::{CryptoError, sha256};
use cloister_proto::b64::{Bytes, Fixed};
use cloister_proto::km::{
    DeviceCert, Notice, RequestBody, SignedCert, SignedNotice, SignedRequest,
};
use cloister_proto::room::{SignedStatement, Statement};
use cloister_proto::{DeviceId, UserId};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub const CERT: &str = "cloister/cert/v1";
pub const STATEMENT: &str = "cloister/statement/v1";
pub const KM_REQUEST: &str = "cloister/km-request/v1";
pub const NOTICE: &str = "cloister/notice/v1";
/// A malware scanner's verdict on a shared file.
pub const VERDICT: &str = "cloister/verdict/v1";
/// The tenant's DLP policy set, for its devices.
pub const DLP: &str = "cloister/dlp/v1";
/// A KM's signed query to the messaging server (its rooms' logs).
pub const KM_QUERY: &str = "cloister/km-query/v1";
pub const LOGIN: &str = "cloister/login/v1";
pub const ENROL: &str = "cloister/enrol/v1";
pub const ESCROW: &str = "cloister/escrow/v1";
pub const VAULT_REQUEST: &str = "cloister/vault-request/v1";
pub const RECEIPT: &str = "cloister/receipt/v1";
pub const CASE: &str = "cloister/case/v1";
pub const APPROVAL: &str = "cloister/approval/v1";
pub const VAULT: &str = "cloister/vault/v1";
pub const PURGE: &str = "cloister/purge/v1";
/// The vault's count of envelopes still sealed to an escrow generation.
pub const ESCROW_COUNT: &str = "cloister/escrow-count/v1";
/// The KM's signed head of a room's verified membership log.
pub const ROOM_HEAD: &str = "cloister/room-head/v1";
/// A KM vouches that its user asks another firm's user to connect.
pub const CONNECTION_REQUEST: &str = "cloister/connection-request/v1";
/// A KM vouches for its user's answer to a connection request.
pub const CONNECTION_ANSWER: &str = "cloister/connection-answer/v1";
/// A KM vouches that its user ends a connection.
pub const CONNECTION_REMOVAL: &str = "cloister/connection-removal/v1";
/// A KM's signed list of the partner firms' keys it trusts, for its devices.
pub const PARTNER_KEYS: &str = "cloister/partner-keys/v1";
/// A partner KM asks a room's home KM for epoch keys.
pub const KM_KEY_REQUEST: &str = "cloister/km-key-request/v1";
/// The home KM's answer: epoch keys sealed to the partner's exchange key.
pub const KM_KEY_GRANT: &str = "cloister/km-key-grant/v1";
/// A firm's KM asks a partner's directory for its user.
pub const DIRECTORY_QUERY: &str = "cloister/directory-query/v1";
/// The partner KM's answer: its published fields only.
pub const DIRECTORY_ANSWER: &str = "cloister/directory-answer/v1";
/// The KM's list of revoked devices and disabled users, for the vault.
pub const DENY_LIST: &str = "cloister/deny-list/v1";
/// The vault's request for that list, signed with its registered receipt key.
pub const DENY_LIST_REQUEST: &str = "cloister/deny-list-request/v1";

/// What the vault signs to ask the KM for its tenant's deny list.
pub fn deny_list_transcript(tenant: &cloister_proto::TenantId, ts: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(tenant.as_str().len() + 12);
    v.extend_from_slice(&(tenant.as_str().len() as u32).to_be_bytes());
    v.extend_from_slice(tenant.as_str().as_bytes());
    v.extend_from_slice(&ts.to_be_bytes());
    v
}
const ENTRY_HASH: &str = "cloister/log-entry/v1";

/// KM: sign any JSON object under a domain.
pub fn km_sign_blob<T: Serialize>(
    km: &KmSigner,
    domain: &str,
    v: &T,
) -> Result<cloister_proto::km::SignedBlob, CryptoError> {
    let body = to_json(v)?;
    let sig = km.sign(domain, &body);
    Ok(cloister_proto::km::SignedBlob {
        body: Bytes(body),
        sig: Fixed(sig),
    })
}

/// Device: sign any JSON object under a domain.
pub fn device_sign_blob<T: Serialize>(
    keys: &DeviceKeys,
    domain: &str,
    v: &T,
) -> Result<cloister_proto::km::SignedBlob, CryptoError> {
    let body = to_json(v)?;
    let sig = keys.sign(domain, &body);
    Ok(cloister_proto::km::SignedBlob {
        body: Bytes(body),
        sig: Fixed(sig),
    })
}

/// Parse a signed blob without verifying it: only to learn which key must
/// have signed it (its firm), never to act on it.
pub fn peek_blob<T: DeserializeOwned>(
    b: &cloister_proto::km::SignedBlob,
    what: &'static str,
) -> Result<T, CryptoError> {
    parse(b.body.as_slice(), what)
}

/// Verify a signed blob under a domain, then parse it.
pub fn verify_blob<T: DeserializeOwned>(
    pk: &[u8; 32],
    domain: &str,
    b: &cloister_proto::km::SignedBlob,
    what: &'static str,
) -> Result<T, CryptoError> {
    verify(pk, domain, b.body.as_slice(), &b.sig.0)?;
    parse(b.body.as_slice(), what)
}

/// Context a share is re-sealed under for a case's decryption session: the
/// case, its version and exact signed bytes, and the share number. A share
/// released for one case (or version) cannot be opened as another's.
pub fn approval_context(
    tenant: &cloister_proto::TenantId,
    case: &str,
    version: u32,
    case_sha256: &[u8; 32],
    (generation, number): (u32, u8),
) -> Vec<u8> {
    let mut v = format!("cloister/case-share/v1|{tenant}|{}|{case}|", case.len()).into_bytes();
    v.extend_from_slice(&version.to_be_bytes());
    v.extend_from_slice(case_sha256);
    v.push(number);
    // the first generation's context is as it was before rotation existed
    if generation != 1 {
        v.extend_from_slice(b"|generation");
        v.extend_from_slice(&generation.to_be_bytes());
    }
    v
}

fn to_json<T: Serialize>(v: &T) -> Result<Vec<u8>, CryptoError> {
    serde_json::to_vec(v).map_err(|_| CryptoError::Encrypt)
}

fn parse<T: DeserializeOwned>(b: &[u8], what: &'static str) -> Result<T, CryptoError> {
    serde_json::from_slice(b).map_err(|_| CryptoError::Malformed(what))
}

/// KM: issue a certificate.
pub fn sign_cert(km: &KmSigner, cert: &DeviceCert) -> Result<SignedCert, CryptoError> {
    let body = to_json(cert)?;
    let sig = km.sign(CERT, &body);
    Ok(SignedCert {
        body: Bytes(body),
        sig: Fixed(sig),
    })
}

/// Verify a certificate against the tenant KM key and parse it. Expiry and
/// revocation are the caller's policy.
pub fn verify_cert(km_pk: &[u8; 32], c: &SignedCert) -> Result<DeviceCert, CryptoError> {
    verify(km_pk, CERT, c.body.as_slice(), &c.sig.0)?;
    let cert: DeviceCert = parse(c.body.as_slice(), "certificate")?;
    if crate::keys::device_id_for(&cert.sign_pk.0) != cert.device {
        return Err(CryptoError::Malformed(
            "certificate (device id does not match key)",
        ));
    }
    if cert.user.tenant() != cert.tenant {
        return Err(CryptoError::Malformed("certificate (user outside tenant)"));
    }
    Ok(cert)
}

/// Device: sign a membership statement.
pub fn sign_statement(keys: &DeviceKeys, st: &Statement) -> Result<SignedStatement, CryptoError> {
    let body = to_json(st)?;
    let sig = keys.sign(STATEMENT, &body);
    Ok(SignedStatement {
        actor: keys.device_id(),
        body: Bytes(body),
        sig: Fixed(sig),
    })
}

/// Inspector device: sign a verdict.
pub fn sign_verdict(
    keys: &DeviceKeys,
    cert: &SignedCert,
    v: &cloister_proto::server::Verdict,
) -> Result<cloister_proto::server::SignedVerdict, CryptoError> {
    let body = to_json(v)?;
    let sig = keys.sign(VERDICT, &body);
    Ok(cloister_proto::server::SignedVerdict {
        body: Bytes(body),
        sig: Fixed(sig),
        cert: cert.clone(),
    })
}

/// Verify a verdict against its signer's certificate (itself checked
/// against the tenant's KM key by the caller): returns both.
pub fn verify_verdict(
    km_pk: &[u8; 32],
    v: &cloister_proto::server::SignedVerdict,
) -> Result<(DeviceCert, cloister_proto::server::Verdict), CryptoError> {
    let cert = verify_cert(km_pk, &v.cert)?;
    verify(&cert.sign_pk.0, VERDICT, v.body.as_slice(), &v.sig.0)?;
    Ok((cert, parse(v.body.as_slice(), "verdict")?))
}

/// KM: sign a statement of its own (evictions, bans, locks) as
/// [`cloister_proto::room::KM_DEVICE`].
pub fn sign_statement_km(km: &KmSigner, st: &Statement) -> Result<SignedStatement, CryptoError> {
    if st.actor != cloister_proto::room::KM_DEVICE {
        return Err(CryptoError::Malformed("KM statement (actor is not the KM)"));
    }
    let body = to_json(st)?;
    let sig = km.sign(STATEMENT, &body);
    Ok(SignedStatement {
        actor: st.actor,
        body: Bytes(body),
        sig: Fixed(sig),
    })
}

/// Parse a statement's body without verifying it (to learn who must have signed it).
pub fn peek_statement(s: &SignedStatement) -> Result<Statement, CryptoError> {
    let st: Statement = parse(s.body.as_slice(), "membership statement")?;
    if st.actor != s.actor {
        return Err(CryptoError::Malformed(
            "membership statement (actor mismatch)",
        ));
    }
    Ok(st)
}

/// Verify a statement's signature with the actor's signing key and parse it.
pub fn verify_statement(
    actor_pk: &[u8; 32],
    s: &SignedStatement,
) -> Result<Statement, CryptoError> {
    verify(actor_pk, STATEMENT, s.body.as_slice(), &s.sig.0)?;
    peek_statement(s)
}

/// A connection's id: the SHA-256 of its KM-signed request's bytes (the
/// answer and the removal name it; the server keys it by it).
pub fn connection_id(request: &cloister_proto::km::SignedBlob) -> [u8; 32] {
    sha256(request.body.as_slice())
}

/// Chain hash of a log entry: SHA-256 over domain, body length, body and signature.
pub fn entry_hash(s: &SignedStatement) -> [u8; 32] {
    let body = s.body.as_slice();
    let mut v = Vec::with_capacity(ENTRY_HASH.len() + 9 + body.len() + 64);
    v.extend_from_slice(ENTRY_HASH.as_bytes());
    v.push(0);
    v.extend_from_slice(&(body.len() as u64).to_be_bytes());
    v.extend_from_slice(body);
    v.extend_from_slice(&s.sig.0);
    sha256(&v)
}

/// Device: sign a KM request.
pub fn sign_request(keys: &DeviceKeys, body: &RequestBody) -> Result<SignedRequest, CryptoError> {
    let b = to_json(body)?;
    let sig = keys.sign(KM_REQUEST, &b);
    Ok(SignedRequest {
        device: keys.device_id(),
        body: Bytes(b),
        sig: Fixed(sig),
    })
}

/// KM: verify a request with the device's key and parse it.
pub fn verify_request(sign_pk: &[u8; 32], r: &SignedRequest) -> Result<RequestBody, CryptoError> {
    verify(sign_pk, KM_REQUEST, r.body.as_slice(), &r.sig.0)?;
    let body: RequestBody = parse(r.body.as_slice(), "KM request")?;
    if body.device != r.device {
        return Err(CryptoError::Malformed("KM request (device mismatch)"));
    }
    Ok(body)
}

pub fn sign_notice(km: &KmSigner, n: &Notice) -> Result<SignedNotice, CryptoError> {
    let body = to_json(n)?;
    let sig = km.sign(NOTICE, &body);
    Ok(SignedNotice {
        body: Bytes(body),
        sig: Fixed(sig),
    })
}

pub fn verify_notice(km_pk: &[u8; 32], n: &SignedNotice) -> Result<Notice, CryptoError> {
    verify(km_pk, NOTICE, n.body.as_slice(), &n.sig.0)?;
    parse(n.body.as_slice(), "notice")
}

/// KM: sign the escrow descriptor.
pub fn sign_escrow(
    km: &KmSigner,
    d: &cloister_proto::km::EscrowDescriptor,
) -> Result<cloister_proto::km::SignedEscrow, CryptoError> {
    km_sign_blob(km, ESCROW, d)
}

/// Verify an escrow descriptor against the tenant KM key.
pub fn verify_escrow(
    km_pk: &[u8; 32],
    s: &cloister_proto::km::SignedEscrow,
) -> Result<cloister_proto::km::EscrowDescriptor, CryptoError> {
    verify_blob(km_pk, ESCROW, s, "escrow descriptor")
}

/// Device: sign a vault request (the certificate travels with it).
pub fn sign_vault_request(
    keys: &DeviceKeys,
    cert: &SignedCert,
    op: &cloister_proto::vault::VaultOp,
) -> Result<cloister_proto::vault::VaultRequest, CryptoError> {
    let body = to_json(op)?;
    let sig = keys.sign(VAULT_REQUEST, &body);
    Ok(cloister_proto::vault::VaultRequest {
        cert: cert.clone(),
        body: Bytes(body),
        sig: Fixed(sig),
    })
}

/// Vault: sign a receipt.
pub fn sign_receipt(
    vault: &KmSigner,
    r: &cloister_proto::vault::Receipt,
) -> Result<cloister_proto::vault::SignedReceipt, CryptoError> {
    km_sign_blob(vault, RECEIPT, r)
}

/// Verify a receipt against the vault's key.
pub fn verify_receipt(
    vault_pk: &[u8; 32],
    r: &cloister_proto::vault::SignedReceipt,
) -> Result<cloister_proto::vault::Receipt, CryptoError> {
    verify_blob(vault_pk, RECEIPT, r, "receipt")
}

/// Context a share is sealed under: tenant, escrow key, share number.
pub fn share_context(tenant: &cloister_proto::TenantId, public: &[u8; 32], number: u8) -> Vec<u8> {
    let mut v = format!("cloister/escrow-share/v1|{tenant}|").into_bytes();
    v.extend_from_slice(public);
    v.push(number);
    v
}

/// Bytes a device signs to log in to the server.
pub fn login_transcript(device: &DeviceId, ts: u64, nonce: &[u8; 16]) -> Vec<u8> {
    let mut v = Vec::with_capacity(16 + 8 + 16);
    v.extend_from_slice(device.as_bytes());
    v.extend_from_slice(&ts.to_be_bytes());
    v.extend_from_slice(nonce);
    v
}

/// Bytes a device signs when enrolling (proof of possession of both keys' owner).
pub fn enrol_transcript(
    user: &UserId,
    code: &str,
    sign_pk: &[u8; 32],
    hpke_pk: &[u8; 32],
) -> Vec<u8> {
    let mut v = Vec::new();
    for part in [user.as_str().as_bytes(), code.as_bytes()] {
        v.extend_from_slice(&(part.len() as u32).to_be_bytes());
        v.extend_from_slice(part);
    }
    v.extend_from_slice(sign_pk);
    v.extend_from_slice(hpke_pk);
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use cloister_proto::RoomId;
    use cloister_proto::km::Role;
    use cloister_proto::room::{Action, RoomKind, RoomSettings};

    fn cert_for(k: &DeviceKeys) -> DeviceCert {
        DeviceCert {
            tenant: "acme".parse().unwrap(),
            user: "alice@acme".parse().unwrap(),
            device: k.device_id(),
            sign_pk: Fixed(k.sign_pk()),
            hpke_pk: Fixed(k.hpke_pk()),
            roles: vec![Role::User],
            issued_at: 1,
            not_after: 2,
            jurisdiction: String::new(),
        }
    }

    #[test]
    fn certs() {
        let km = KmSigner::generate().unwrap();
        let k = DeviceKeys::generate().unwrap();
        let sc = sign_cert(&km, &cert_for(&k)).unwrap();
        assert_eq!(verify_cert(&km.public(), &sc).unwrap(), cert_for(&k));
        let other = KmSigner::generate().unwrap();
        assert!(verify_cert(&other.public(), &sc).is_err());
        let mut bad = sc.clone();
        bad.body.0[5] ^= 1;
        assert!(verify_cert(&km.public(), &bad).is_err());
        // a cert whose device id does not match its key is refused even if signed
        let mut c = cert_for(&k);
        c.device = DeviceId([0; 16]);
        assert!(verify_cert(&km.public(), &sign_cert(&km, &c).unwrap()).is_err());
    }

    #[test]
    fn statements_and_chain_hash() {
        let k = DeviceKeys::generate().unwrap();
        let st = Statement {
            room: RoomId([1; 16]),
            seq: 0,
            prev: Fixed([0; 32]),
            actor: k.device_id(),
            actor_user: "alice@acme".parse().unwrap(),
            ts: 5,
            action: Action::Create {
                kind: RoomKind::Room,
                settings: RoomSettings::default(),
                members: vec![],
            },
            connections: Vec::new(),
        };
        let s = sign_statement(&k, &st).unwrap();
        assert_eq!(verify_statement(&k.sign_pk(), &s).unwrap(), st);
        let h = entry_hash(&s);
        let mut s2 = s.clone();
        s2.sig.0[0] ^= 1;
        assert_ne!(entry_hash(&s2), h);
        assert!(verify_statement(&k.sign_pk(), &s2).is_err());
        let mut s3 = s.clone();
        s3.actor = DeviceId([9; 16]);
        assert!(peek_statement(&s3).is_err());
    }
}
