//! Client-side compliance capture: seal an audit envelope to the escrow key
//! and compute its blind-index tokens.

use crate::blind::{self, Field};
use crate::escrow::{self, EscrowSecret};
use crate::{CryptoError, RoomKey};
use cloister_proto::TenantId;
use cloister_proto::b64::{Bytes, Fixed};
use cloister_proto::server::Content;
use cloister_proto::vault::{AuditEnvelope, SealedEnvelope};
use zeroize::Zeroizing;

fn aad(tenant: &TenantId, env: &SealedEnvelopeHeader<'_>) -> Vec<u8> {
    let mut v = Vec::with_capacity(96);
    v.extend_from_slice(&(tenant.as_str().len() as u32).to_be_bytes());
    v.extend_from_slice(tenant.as_str().as_bytes());
    v.extend_from_slice(env.message_id);
    v.extend_from_slice(env.room);
    v.extend_from_slice(&env.ts.to_be_bytes());
    v.extend_from_slice(env.ciphertext_sha256);
    // the first generation's associated data is as it was before rotation
    if env.generation != 1 {
        v.extend_from_slice(b"generation");
        v.extend_from_slice(&env.generation.to_be_bytes());
    }
    v
}

struct SealedEnvelopeHeader<'a> {
    message_id: &'a [u8; 16],
    room: &'a [u8; 16],
    ts: u64,
    ciphertext_sha256: &'a [u8; 32],
    generation: u32,
}

/// Seal an audit envelope to the tenant's escrow public key (generation 1).
pub fn seal(
    escrow_pk: &[u8; 32],
    tenant: &TenantId,
    env: &AuditEnvelope,
) -> Result<SealedEnvelope, CryptoError> {
    seal_to(escrow_pk, 1, tenant, env)
}

/// Seal an audit envelope to the escrow key of `generation`.
pub fn seal_to(
    escrow_pk: &[u8; 32],
    generation: u32,
    tenant: &TenantId,
    env: &AuditEnvelope,
) -> Result<SealedEnvelope, CryptoError> {
    let h = SealedEnvelopeHeader {
        message_id: env.message_id.as_bytes(),
        room: env.room.as_bytes(),
        ts: env.ts,
        ciphertext_sha256: &env.ciphertext_sha256.0,
        generation,
    };
    let pt = Zeroizing::new(serde_json::to_vec(env).map_err(|_| CryptoError::Encrypt)?);
    let (enc, ct) = escrow::seal_envelope(escrow_pk, &aad(tenant, &h), &pt)?;
    Ok(SealedEnvelope {
        tenant: tenant.clone(),
        message_id: env.message_id,
        room: env.room,
        ts: env.ts,
        ciphertext_sha256: env.ciphertext_sha256,
        enc: Fixed(enc),
        ct: Bytes(ct),
        generation,
    })
}

/// Open a sealed envelope in a decryption session; its cleartext fields must match the sealed ones.
pub fn open(secret: &EscrowSecret, sealed: &SealedEnvelope) -> Result<AuditEnvelope, CryptoError> {
    let h = SealedEnvelopeHeader {
        message_id: sealed.message_id.as_bytes(),
        room: sealed.room.as_bytes(),
        ts: sealed.ts,
        ciphertext_sha256: &sealed.ciphertext_sha256.0,
        generation: sealed.generation,
    };
    let pt = escrow::open_envelope(
        secret,
        &aad(&sealed.tenant, &h),
        &sealed.enc.0,
        sealed.ct.as_slice(),
    )?;
    let env: AuditEnvelope = serde_json::from_slice(pt.expose())
        .map_err(|_| CryptoError::Malformed("audit envelope"))?;
    if env.message_id != sealed.message_id
        || env.room != sealed.room
        || env.ts != sealed.ts
        || env.ciphertext_sha256 != sealed.ciphertext_sha256
    {
        return Err(CryptoError::Malformed(
            "audit envelope does not match its sealed header",
        ));
    }
    Ok(env)
}

/// Blind-index tokens of an envelope under the index key of its period.
pub fn tokens(index_key: &RoomKey, env: &AuditEnvelope) -> Vec<[u8; 16]> {
    let mut out = vec![
        blind::token(index_key, Field::Sender, env.sender.as_str()),
        blind::token(index_key, Field::Room, &env.room.to_hex()),
        blind::token(index_key, Field::Day, &blind::day_of(env.ts)),
    ];
    for p in &env.participants {
        out.push(blind::token(index_key, Field::Participant, p.as_str()));
    }
    // a contact on another network is a participant too
    if let Content::Relayed { from, .. } = &env.content {
        out.push(blind::token(index_key, Field::Participant, from));
    }
    let text = match env.content.said() {
        Content::Text { text } => text.as_str(),
        Content::File { name, .. } => name.as_str(),
        Content::Relayed { .. } => "",
    };
    for w in blind::keywords(text) {
        out.push(blind::token(index_key, Field::Keyword, &w));
    }
    out.sort_unstable();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use cloister_proto::{DeviceId, MessageId, RoomId};

    fn env() -> AuditEnvelope {
        AuditEnvelope {
            message_id: MessageId([1; 16]),
            room: RoomId([2; 16]),
            epoch: 0,
            sender: "alice@acme".parse().unwrap(),
            device: DeviceId([3; 16]),
            participants: vec!["alice@acme".parse().unwrap(), "bob@acme".parse().unwrap()],
            ts: 1_795_305_600_000,
            ciphertext_sha256: Fixed([4; 32]),
            content: Content::Text {
                text: "Sell 40mm of the 2033s to Harbourview".into(),
            },
            attachment_sha256: vec![],
            attribution: cloister_proto::vault::Attribution {
                header: Bytes(b"{}".to_vec()),
                sig: Fixed([5; 64]),
                franking_key: Fixed([6; 32]),
                plaintext: Bytes(b"{}".to_vec()),
            },
            dlp_flags: vec![],
            sender_cert: None,
        }
    }

    #[test]
    fn seal_open_and_bound_metadata() {
        let (pk, sk) = escrow::generate().unwrap();
        let t: TenantId = "acme".parse().unwrap();
        let s = seal(&pk, &t, &env()).unwrap();
        assert!(!String::from_utf8_lossy(s.ct.as_slice()).contains("Harbourview"));
        assert_eq!(open(&sk, &s).unwrap(), env());
        let mut moved = s.clone();
        moved.room = RoomId([9; 16]);
        assert!(open(&sk, &moved).is_err(), "metadata is bound");
        let mut other_ct = s.clone();
        other_ct.ciphertext_sha256 = Fixed([5; 32]);
        assert!(open(&sk, &other_ct).is_err());
        let (_, sk2) = escrow::generate().unwrap();
        assert!(open(&sk2, &s).is_err());
    }

    #[test]
    fn a_later_generation_is_bound_and_gen_one_keeps_its_bytes() {
        let (pk, sk) = escrow::generate().unwrap();
        let t: TenantId = "acme".parse().unwrap();
        let first = seal(&pk, &t, &env()).unwrap();
        let json = serde_json::to_string(&first).unwrap();
        assert!(!json.contains("generation"), "{json}");
        let s = seal_to(&pk, 2, &t, &env()).unwrap();
        assert_eq!(s.generation, 2);
        assert_eq!(open(&sk, &s).unwrap(), env());
        // a vault that relabels the generation breaks the opening
        let mut relabelled = s.clone();
        relabelled.generation = 1;
        assert!(open(&sk, &relabelled).is_err());
        let mut promoted = first.clone();
        promoted.generation = 3;
        assert!(open(&sk, &promoted).is_err());
    }

    #[test]
    fn tokens_match_queries_and_leak_no_terms() {
        let k = RoomKey::from_bytes([7; 32]);
        let toks = tokens(&k, &env());
        assert!(toks.contains(&blind::token(&k, Field::Keyword, "HARBOURVIEW")));
        assert!(toks.contains(&blind::token(&k, Field::Sender, "alice@acme")));
        assert!(toks.contains(&blind::token(&k, Field::Participant, "bob@acme")));
        assert!(toks.contains(&blind::token(&k, Field::Day, "2026-11-22")));
        assert!(!toks.contains(&blind::token(&k, Field::Keyword, "never-sent")));
        assert!(!toks.contains(&blind::token(
            &RoomKey::from_bytes([8; 32]),
            Field::Keyword,
            "harbourview"
        )));
    }
}
