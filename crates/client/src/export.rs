//! eDiscovery export of a case, and its offline verification.
//!
//! ```text
//!  DIR/messages/<ts>-<message id>.eml   RFC 5322 (MIME attachments), one per message
//!  DIR/sealed/<message id>.json         the sealed envelope as the vault ingested it
//!  DIR/messages.jsonl                   one JSON object per message
//!  DIR/manifest.json                    every file's SHA-256 and size; every envelope's
//!                                       ingestion-log entry + inclusion proof; the signed
//!                                       checkpoint; the KM-signed case and vault descriptor;
//!                                       the exporting device's certificate
//!  DIR/manifest.sig                     the exporting device's signature over manifest.json
//! ```
//!
//! `verify` needs nothing but the directory (and, to pin it, the tenant KM
//! key): a changed, missing or added file, a forged proof or checkpoint, an
//! edited manifest, or a message its named sender did not sign fails it.
//!
//! Attribution: every exported message carries its sender device's
//! KM-signed certificate, the signed header and signature, and the opening
//! of the header's franking commitment (the exact plaintext and the
//! franking key). An envelope that fails this check when the export is
//! written (an insider sealed words nobody signed) is left out of the
//! messages and listed under `unattributable` with the reason.

use cloister_crypto::keys::verify as verify_sig;
use cloister_crypto::signed::{self, verify_blob, verify_cert};
use cloister_crypto::{DeviceKeys, sha256};
use cloister_log::{AuditRecord, NoteVerifier};
use cloister_proto::b64::{self, Fixed};
use cloister_proto::km::{Case, InclusionProof, SignedBlob, SignedCert, VaultDescriptor};
use cloister_proto::server::Content;
use cloister_proto::vault::{Attribution, AuditEnvelope};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Domain of the exporting device's signature over `manifest.json`.
pub const EXPORT: &str = "cloister/export/v1";
pub const FORMAT: &str = "cloister-export/v1";

/// One decrypted message to export.
pub struct ExportItem {
    pub envelope: AuditEnvelope,
    /// The sealed envelope's exact bytes (as ingested).
    pub sealed: Vec<u8>,
    /// Its ingestion-log entry with an inclusion proof.
    pub entry: InclusionProof,
    /// The decrypted attachment, if the message is a file and it could be fetched.
    pub attachment: Option<Vec<u8>>,
    /// The sender device's KM-signed certificate (`None`: not found).
    pub sender_cert: Option<SignedCert>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    pub case: SignedBlob,
    pub vault: SignedBlob,
    /// The tenant KM's signing key (compare it with the one you trust, or pin it).
    pub km_sign_pk: Fixed<32>,
    /// C2SP signed note of the vault's ingestion log every proof is against.
    pub checkpoint: String,
    pub exported_by: SignedCert,
    pub exported_ms: u64,
    /// The partner firms' KM keys, as the tenant KM signed them (domain
    /// `cloister/partner-keys/v1`): the certificates of other firms'
    /// senders in shared rooms verify under them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partners: Option<SignedBlob>,
    pub files: Vec<FileEntry>,
    pub envelopes: Vec<EnvelopeEntry>,
    /// Envelopes in scope whose content their named sender did not sign.
    pub unattributable: Vec<Unattributable>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Unattributable {
    pub message_id: String,
    pub log_index: u64,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    pub path: String,
    pub sha256: String,
    pub size: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvelopeEntry {
    pub message_id: String,
    pub eml: String,
    pub sealed: String,
    pub entry: InclusionProof,
    pub sender_cert: SignedCert,
    pub attribution: Attribution,
}

fn managed() -> String {
    "managed".into()
}

/// The mode a captured message was sent in, from its signed header.
fn mode_of(e: &cloister_proto::vault::AuditEnvelope) -> String {
    cloister_crypto::message::read_signed_header(e.attribution.header.as_slice())
        .map(|h| h.mode().name())
        .unwrap_or("managed")
        .to_owned()
}

/// One line of `messages.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JsonLine {
    pub message_id: String,
    pub room: String,
    /// The room's mode when the message was sent (`managed` or `mls`), as
    /// the sender's signed header says.
    #[serde(default = "managed")]
    pub mode: String,
    pub epoch: u64,
    pub sender: String,
    pub device: String,
    pub participants: Vec<String>,
    pub ts: u64,
    pub date: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<JsonFile>,
    pub ciphertext_sha256: String,
    pub envelope_sha256: String,
    pub log_index: u64,
    pub eml: String,
    /// DLP policies that flagged the message (ids).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dlp_flags: Vec<String>,
    /// Relayed by the firm's gateway from a contact on another network
    /// (the sender is the gateway).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relayed: Option<JsonRelayed>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JsonRelayed {
    pub network: String,
    /// The contact's address there.
    pub from: String,
    /// The network's id of the message.
    pub id: String,
}

fn relayed_of(c: &Content) -> Option<JsonRelayed> {
    match c {
        Content::Relayed {
            network, from, id, ..
        } => Some(JsonRelayed {
            network: network.clone(),
            from: from.clone(),
            id: id.clone(),
        }),
        _ => None,
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JsonFile {
    pub name: String,
    pub size: u64,
    pub sha256: String,
    pub included: bool,
}

/// Who exports, and what vouches for the export.
#[derive(Clone, Copy)]
pub struct Source<'a> {
    /// The case officer's device (signs the manifest).
    pub keys: &'a DeviceKeys,
    pub cert: &'a SignedCert,
    /// The KM-signed case and vault descriptor.
    pub case: &'a SignedBlob,
    pub vault: &'a SignedBlob,
    pub km_sign_pk: [u8; 32],
    /// The vault log's checkpoint every inclusion proof is against.
    pub checkpoint: &'a str,
    /// In-scope envelopes that did not even open under the escrow key.
    pub unopened: &'a [Unattributable],
    /// The KM-signed partner keys (for other firms' senders), if any.
    pub partners: Option<&'a SignedBlob>,
}

/// KM signing keys by firm: the tenant's own and its partners'.
pub type FirmKeys = std::collections::HashMap<cloister_proto::TenantId, [u8; 32]>;

/// The firm keys an export's attributions are checked under: the tenant
/// KM's, and the partners' it signed (`tenant` must be the list's firm).
pub fn firm_keys(
    km: &[u8; 32],
    tenant: &cloister_proto::TenantId,
    partners: Option<&SignedBlob>,
) -> Result<FirmKeys, String> {
    let mut m = FirmKeys::new();
    if let Some(b) = partners {
        let p: cloister_proto::federation::PartnerKeys =
            verify_blob(km, signed::PARTNER_KEYS, b, "partner keys")
                .map_err(|_| "TAMPERED: the partner keys are not signed by the KM".to_owned())?;
        if &p.tenant != tenant {
            return Err("TAMPERED: the partner keys are another firm's".into());
        }
        m.extend(p.partners.into_iter().map(|k| (k.tenant, k.sign_pk.0)));
    }
    m.insert(tenant.clone(), *km);
    Ok(m)
}

/// What was written.
#[derive(Debug, Clone, Serialize)]
pub struct ExportSummary {
    pub messages: u64,
    /// Left out: their named sender did not sign them.
    pub unattributable: u64,
    pub files: u64,
    pub bytes: u64,
}

/// What `verify` checked.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub case: String,
    pub tenant: String,
    pub messages: u64,
    /// Envelopes the exporter left out as unattributable (listed, with reasons).
    pub unattributable: u64,
    pub files: u64,
    pub bytes: u64,
    pub checkpoint_size: u64,
    pub km_sign_pk: String,
}

fn io_err(p: &Path, e: std::io::Error) -> String {
    format!("{}: {e}", p.display())
}

fn eml(item: &ExportItem, envelope_sha256: &str, tenant: &str) -> Result<Vec<u8>, String> {
    use mail_builder::MessageBuilder;
    use mail_builder::headers::address::Address;
    use mail_builder::headers::raw::Raw;
    let e = &item.envelope;
    let others: Vec<Address> = e
        .participants
        .iter()
        .filter(|p| **p != e.sender)
        .map(|p| Address::from(p.to_string()))
        .collect();
    let names: Vec<String> = e.participants.iter().map(|p| p.to_string()).collect();
    let preview = match e.content.said() {
        Content::Text { text } => text.lines().next().unwrap_or("").chars().take(60).collect(),
        Content::File { name, .. } => format!("file {name}"),
        Content::Relayed { .. } => String::new(),
    };
    let mut m = MessageBuilder::new()
        .from(Address::from(e.sender.to_string()))
        .to(if others.is_empty() {
            Address::from(e.sender.to_string())
        } else {
            Address::new_list(others)
        })
        .subject(format!(
            "[room {}] {} | {}",
            e.room,
            names.join(", "),
            preview
        ))
        .date((e.ts / 1000) as i64)
        .message_id(format!("{}@{tenant}.cloister", e.message_id))
        .header("X-Cloister-Room", Raw::new(e.room.to_string()))
        .header("X-Cloister-Epoch", Raw::new(e.epoch.to_string()))
        .header("X-Cloister-Room-Mode", Raw::new(mode_of(e)))
        .header("X-Cloister-Message-Id", Raw::new(e.message_id.to_string()))
        .header("X-Cloister-Envelope", Raw::new(envelope_sha256.to_owned()))
        .header(
            "X-Cloister-Log-Index",
            Raw::new(item.entry.index.to_string()),
        )
        .header("X-Cloister-Device", Raw::new(e.device.to_string()))
        .header("X-Cloister-Timestamp-Ms", Raw::new(e.ts.to_string()));
    if !e.dlp_flags.is_empty() {
        m = m.header("X-Cloister-DLP-Flags", Raw::new(e.dlp_flags.join(", ")));
    }
    if let Some(r) = relayed_of(&e.content) {
        // one header line each, whatever the network sent
        let line = |v: String| Raw::new(v.chars().filter(|c| !c.is_control()).collect::<String>());
        m = m
            .header("X-Cloister-Relayed-Network", line(r.network))
            .header("X-Cloister-Relayed-From", line(r.from))
            .header("X-Cloister-Relayed-Id", line(r.id));
    }
    match e.content.said() {
        Content::Text { text } => m = m.text_body(text.clone()),
        Content::File {
            name, size, sha256, ..
        } => {
            m = m.text_body(format!(
                "File: {name} ({size} bytes, SHA-256 {})\n{}",
                hex::encode(sha256.0),
                if item.attachment.is_some() {
                    "The file is attached."
                } else {
                    "The file could not be retrieved from the messaging server."
                }
            ));
            if let Some(bytes) = &item.attachment {
                m = m.attachment("application/octet-stream", name.clone(), bytes.as_slice());
            }
        }
        Content::Relayed { .. } => m = m.text_body("[relayed twice: not shown]"),
    }
    m.write_to_vec().map_err(|e| e.to_string())
}

/// Does `env` say exactly what its named sender's device signed? Checks
/// the device certificate against the tenant KM key, the signature over the
/// header and `ciphertext_sha256`, the franking commitment over the
/// plaintext, and that the header and content are the envelope's.
pub fn check_attribution(
    keys: &FirmKeys,
    sender_cert: &SignedCert,
    att: &Attribution,
    ciphertext_sha256: &[u8; 32],
) -> Result<(cloister_proto::server::MessageHeader, Content), String> {
    let issuer: cloister_proto::km::DeviceCert = signed::peek_blob(
        &SignedBlob {
            body: sender_cert.body.clone(),
            sig: sender_cert.sig,
        },
        "certificate",
    )
    .map_err(|e| e.to_string())?;
    let km = keys.get(&issuer.tenant).ok_or_else(|| {
        format!(
            "the sender's firm {} is not one the tenant KM trusts",
            issuer.tenant
        )
    })?;
    let cert = verify_cert(km, sender_cert).map_err(|_| {
        format!(
            "the sender's certificate is not signed by {}'s KM",
            issuer.tenant
        )
    })?;
    if cert.user.tenant() != cert.tenant {
        return Err("the sender's certificate names a user of another firm".into());
    }
    let key =
        cloister_crypto::keys::VerifyKey::from_bytes(&cert.sign_pk.0).map_err(|e| e.to_string())?;
    let (h, content) = cloister_crypto::message::verify_attribution(&key, att, ciphertext_sha256)
        .map_err(|e| match e {
        cloister_crypto::CryptoError::BadCommitment => {
            "the content is not what the sender committed to".to_owned()
        }
        _ => "the sender's signature does not cover this message".to_owned(),
    })?;
    if h.device != cert.device || h.sender != cert.user {
        return Err(format!(
            "the header names {} on device {}, not the certificate's holder {}",
            h.sender, h.device, cert.user
        ));
    }
    Ok((h, content))
}

fn attributed(e: &AuditEnvelope, keys: &FirmKeys, cert: Option<&SignedCert>) -> Result<(), String> {
    let cert = cert.ok_or("the sender device's certificate was not found")?;
    let (h, content) = check_attribution(keys, cert, &e.attribution, &e.ciphertext_sha256.0)?;
    if h.id != e.message_id
        || h.room != e.room
        || h.epoch != e.epoch
        || h.ts != e.ts
        || h.sender != e.sender
        || h.device != e.device
        || content != e.content
    {
        return Err("the envelope's message, sender or content differ from what was signed".into());
    }
    Ok(())
}

/// Write an export. `progress(done, total)` is called after each message.
pub fn write(
    dir: &Path,
    src: &Source<'_>,
    items: &[ExportItem],
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<ExportSummary, String> {
    let Source {
        keys,
        cert,
        case,
        vault,
        km_sign_pk,
        checkpoint,
        unopened,
        partners,
    } = *src;
    if dir.exists()
        && std::fs::read_dir(dir)
            .map_err(|e| io_err(dir, e))?
            .next()
            .is_some()
    {
        return Err(format!(
            "{} is not empty; export into a new directory",
            dir.display()
        ));
    }
    let c: Case = serde_json::from_slice(case.body.as_slice()).map_err(|e| e.to_string())?;
    let firms = firm_keys(&km_sign_pk, &c.tenant, partners)?;
    for sub in ["messages", "sealed"] {
        std::fs::create_dir_all(dir.join(sub)).map_err(|e| io_err(dir, e))?;
    }
    let mut files = Vec::new();
    let mut envelopes = Vec::new();
    let mut unattributable = unopened.to_vec();
    let mut jsonl = Vec::new();
    let mut bytes = 0u64;
    let mut put = |rel: String, data: &[u8], files: &mut Vec<FileEntry>| -> Result<(), String> {
        let p = dir.join(&rel);
        std::fs::write(&p, data).map_err(|e| io_err(&p, e))?;
        bytes += data.len() as u64;
        files.push(FileEntry {
            path: rel,
            sha256: hex::encode(sha256(data)),
            size: data.len() as u64,
        });
        Ok(())
    };
    let total = items.len() as u64;
    for (n, it) in items.iter().enumerate() {
        let e = &it.envelope;
        if let Err(reason) = attributed(e, &firms, it.sender_cert.as_ref()) {
            tracing::warn!(message = %e.message_id, "unattributable envelope left out: {reason}");
            unattributable.push(Unattributable {
                message_id: e.message_id.to_string(),
                log_index: it.entry.index,
                reason,
            });
            progress(n as u64 + 1, total);
            continue;
        }
        let env_sha = hex::encode(sha256(&it.sealed));
        let eml_path = format!("messages/{}-{}.eml", e.ts, e.message_id);
        let sealed_path = format!("sealed/{}.json", e.message_id);
        put(
            eml_path.clone(),
            &eml(it, &env_sha, c.tenant.as_str())?,
            &mut files,
        )?;
        put(sealed_path.clone(), &it.sealed, &mut files)?;
        let (text, file) = match e.content.said() {
            Content::Text { text } => (Some(text.clone()), None),
            Content::File {
                name, size, sha256, ..
            } => (
                None,
                Some(JsonFile {
                    name: name.clone(),
                    size: *size,
                    sha256: hex::encode(sha256.0),
                    included: it.attachment.is_some(),
                }),
            ),
            Content::Relayed { .. } => (None, None),
        };
        let line = JsonLine {
            message_id: e.message_id.to_string(),
            room: e.room.to_string(),
            mode: mode_of(e),
            epoch: e.epoch,
            sender: e.sender.to_string(),
            device: e.device.to_string(),
            participants: e.participants.iter().map(|p| p.to_string()).collect(),
            ts: e.ts,
            date: cloister_crypto::blind::rfc3339(e.ts),
            text,
            file,
            ciphertext_sha256: hex::encode(e.ciphertext_sha256.0),
            envelope_sha256: env_sha,
            log_index: it.entry.index,
            eml: eml_path.clone(),
            dlp_flags: e.dlp_flags.clone(),
            relayed: relayed_of(&e.content),
        };
        serde_json::to_writer(&mut jsonl, &line).map_err(|e| e.to_string())?;
        jsonl.push(b'\n');
        envelopes.push(EnvelopeEntry {
            message_id: e.message_id.to_string(),
            eml: eml_path,
            sealed: sealed_path,
            entry: it.entry.clone(),
            sender_cert: it.sender_cert.clone().ok_or("no sender certificate")?,
            attribution: e.attribution.clone(),
        });
        progress(n as u64 + 1, total);
    }
    put("messages.jsonl".into(), &jsonl, &mut files)?;
    let m = Manifest {
        format: FORMAT.into(),
        case: case.clone(),
        vault: vault.clone(),
        km_sign_pk: Fixed(km_sign_pk),
        checkpoint: checkpoint.to_owned(),
        exported_by: cert.clone(),
        exported_ms: cloister_proto::now_millis(),
        partners: partners.cloned(),
        files: files.clone(),
        envelopes,
        unattributable,
    };
    let mb = serde_json::to_vec_pretty(&m).map_err(|e| e.to_string())?;
    let p = dir.join("manifest.json");
    std::fs::write(&p, &mb).map_err(|e| io_err(&p, e))?;
    let sig = keys.sign(EXPORT, &mb);
    let p = dir.join("manifest.sig");
    std::fs::write(&p, b64::encode(&sig)).map_err(|e| io_err(&p, e))?;
    Ok(ExportSummary {
        messages: m.envelopes.len() as u64,
        unattributable: m.unattributable.len() as u64,
        files: files.len() as u64 + 2,
        bytes: bytes + mb.len() as u64,
    })
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<(), String> {
    for e in std::fs::read_dir(dir).map_err(|e| io_err(dir, e))? {
        let e = e.map_err(|e| io_err(dir, e))?;
        let p: PathBuf = e.path();
        let ft = e.file_type().map_err(|e| io_err(&p, e))?;
        if ft.is_dir() {
            walk(root, &p, out)?;
        } else {
            let rel = p
                .strip_prefix(root)
                .map_err(|e| e.to_string())?
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("/");
            out.push(rel);
        }
    }
    Ok(())
}

/// Verify an export directory offline. With `pinned_km`, the export must
/// come from that tenant KM.
pub fn verify(dir: &Path, pinned_km: Option<[u8; 32]>) -> Result<VerifyReport, String> {
    let mp = dir.join("manifest.json");
    let mb = std::fs::read(&mp).map_err(|e| format!("TAMPERED: {}", io_err(&mp, e)))?;
    let sp = dir.join("manifest.sig");
    let sig_text =
        std::fs::read_to_string(&sp).map_err(|e| format!("TAMPERED: {}", io_err(&sp, e)))?;
    let m: Manifest = serde_json::from_slice(&mb)
        .map_err(|e| format!("TAMPERED: manifest.json is malformed: {e}"))?;
    if m.format != FORMAT {
        return Err(format!("unsupported export format {:?}", m.format));
    }
    let km = m.km_sign_pk.0;
    if let Some(p) = pinned_km
        && p != km
    {
        return Err("TAMPERED: the export names another tenant KM key than the pinned one".into());
    }
    let cert = verify_cert(&km, &m.exported_by)
        .map_err(|_| "TAMPERED: the exporting device's certificate is not signed by the KM")?;
    let sig: [u8; 64] = b64::decode(sig_text.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or("TAMPERED: manifest.sig is malformed")?;
    verify_sig(&cert.sign_pk.0, EXPORT, &mb, &sig)
        .map_err(|_| "TAMPERED: manifest.json does not match the exporting device's signature")?;
    let case: Case = verify_blob(&km, signed::CASE, &m.case, "case")
        .map_err(|_| "TAMPERED: the case is not signed by the KM")?;
    let vault: VaultDescriptor = verify_blob(&km, signed::VAULT, &m.vault, "vault")
        .map_err(|_| "TAMPERED: the vault descriptor is not signed by the KM")?;
    if cert.user != case.officer || cert.tenant != case.tenant || vault.tenant != case.tenant {
        return Err("TAMPERED: the export was not made by the case officer of this tenant".into());
    }
    let keys = firm_keys(&km, &case.tenant, m.partners.as_ref())?;
    let verifier = NoteVerifier::parse(&vault.log_key).map_err(|e| e.to_string())?;
    let cp = verifier.verify_checkpoint(&m.checkpoint).map_err(|e| {
        format!("TAMPERED: the checkpoint does not verify under the vault's log key: {e}")
    })?;

    // Files: exactly the listed ones, each with its hash.
    let mut present = Vec::new();
    walk(dir, dir, &mut present)?;
    let listed: BTreeMap<&str, &FileEntry> = m.files.iter().map(|f| (f.path.as_str(), f)).collect();
    for p in &present {
        if p != "manifest.json" && p != "manifest.sig" && !listed.contains_key(p.as_str()) {
            return Err(format!(
                "TAMPERED: {p} is not listed in the manifest (added)"
            ));
        }
    }
    let mut bytes = 0u64;
    for f in &m.files {
        let p = dir.join(&f.path);
        let data = std::fs::read(&p).map_err(|_| format!("TAMPERED: {} is missing", f.path))?;
        if hex::encode(sha256(&data)) != f.sha256 || data.len() as u64 != f.size {
            return Err(format!("TAMPERED: {} was altered", f.path));
        }
        bytes += data.len() as u64;
    }
    let jl = std::fs::read(dir.join("messages.jsonl"))
        .map_err(|_| "TAMPERED: messages.jsonl is missing".to_owned())?;
    let mut lines: BTreeMap<String, JsonLine> = BTreeMap::new();
    for l in jl.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let line: JsonLine = serde_json::from_slice(l)
            .map_err(|_| "TAMPERED: messages.jsonl is malformed".to_owned())?;
        if let Some(dup) = lines.insert(line.message_id.clone(), line) {
            return Err(format!(
                "TAMPERED: message {} appears twice in messages.jsonl",
                dup.message_id
            ));
        }
    }
    if lines.len() != m.envelopes.len() {
        return Err(format!(
            "TAMPERED: messages.jsonl has {} messages, the manifest proves {}",
            lines.len(),
            m.envelopes.len()
        ));
    }
    // Envelopes: each sealed file is the one the vault's log recorded.
    for e in &m.envelopes {
        if e.entry.size != cp.size {
            return Err(format!(
                "TAMPERED: the proof of {} is for size {}, the checkpoint is {}",
                e.message_id, e.entry.size, cp.size
            ));
        }
        let proof: Vec<[u8; 32]> = e.entry.proof.iter().map(|h| h.0).collect();
        cloister_log::verify_inclusion(
            e.entry.index,
            e.entry.size,
            &cloister_log::leaf_hash(e.entry.data.as_slice()),
            &proof,
            &cp.root,
        )
        .map_err(|_| format!("TAMPERED: {} is not in the vault's log", e.message_id))?;
        let rec = AuditRecord::from_bytes(e.entry.data.as_slice())
            .map_err(|_| format!("TAMPERED: the log entry of {} is unreadable", e.message_id))?;
        let Some((message_id, envelope_sha256)) = rec.event.stored_envelope() else {
            return Err(format!(
                "TAMPERED: the log entry of {} is not an ingestion",
                e.message_id
            ));
        };
        let sealed = std::fs::read(dir.join(&e.sealed))
            .map_err(|_| format!("TAMPERED: {} is missing", e.sealed))?;
        if message_id != e.message_id || hex::encode(sha256(&sealed)) != envelope_sha256 {
            return Err(format!(
                "TAMPERED: {} does not match the envelope the vault ingested",
                e.sealed
            ));
        }
        if !listed.contains_key(e.eml.as_str()) {
            return Err(format!("TAMPERED: {} is not listed", e.eml));
        }
        // Attribution: the named sender's device signed exactly this.
        let s: cloister_proto::vault::SealedEnvelope = serde_json::from_slice(&sealed)
            .map_err(|_| format!("TAMPERED: {} is malformed", e.sealed))?;
        let (h, content) = check_attribution(
            &keys,
            &e.sender_cert,
            &e.attribution,
            &s.ciphertext_sha256.0,
        )
        .map_err(|why| format!("UNATTRIBUTABLE: message {}: {why}", e.message_id))?;
        let line = lines.get(e.message_id.as_str()).ok_or_else(|| {
            format!(
                "TAMPERED: message {} is missing from messages.jsonl",
                e.message_id
            )
        })?;
        if relayed_of(&content) != line.relayed {
            return Err(format!(
                "TAMPERED: message {}: who it was relayed from differs from what was signed",
                e.message_id
            ));
        }
        let said = content.said();
        let text = match said {
            Content::Text { text } => Some(text),
            _ => None,
        };
        let file_ok = match (said, &line.file) {
            (
                Content::File {
                    name, size, sha256, ..
                },
                Some(f),
            ) => f.name == *name && f.size == *size && f.sha256 == hex::encode(sha256.0),
            (Content::Text { .. }, None) => true,
            _ => false,
        };
        if h.id != s.message_id
            || h.room != s.room
            || h.ts != s.ts
            || line.sender != h.sender.as_str()
            || line.device != h.device.to_string()
            || line.ts != h.ts
            || line.room != h.room.to_string()
            || line.text.as_ref() != text
            || line.epoch != h.epoch
            || line.mode != h.mode().name()
            || !file_ok
        {
            return Err(format!(
                "UNATTRIBUTABLE: message {} is not shown as its sender signed it",
                e.message_id
            ));
        }
    }
    Ok(VerifyReport {
        case: case.case,
        tenant: case.tenant.to_string(),
        messages: m.envelopes.len() as u64,
        unattributable: m.unattributable.len() as u64,
        files: m.files.len() as u64,
        bytes,
        checkpoint_size: cp.size,
        km_sign_pk: b64::encode(&km),
    })
}
