//! Blind-index tokens for compliance search.
//!
//! `token = HMAC-SHA-256(index key of the period, field ‖ 0x00 ‖ normalized term)[0..16]`.
//! The client computes tokens for a message's sender, participants, room,
//! day and keywords; a compliance officer's query is turned into tokens the
//! same way; the vault only ever compares tokens. The index key comes from
//! the KM and changes every period (calendar month), so equal terms in
//! different months give unrelated tokens.

use crate::RoomKey;

/// Which attribute a token indexes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Sender,
    Participant,
    Room,
    Day,
    Keyword,
}

impl Field {
    fn tag(self) -> &'static [u8] {
        match self {
            Field::Sender => b"sender",
            Field::Participant => b"participant",
            Field::Room => b"room",
            Field::Day => b"day",
            Field::Keyword => b"kw",
        }
    }
}

/// Longest keyword indexed (characters); longer ones are not indexed.
pub const MAX_TERM_CHARS: usize = 64;
/// Most keywords indexed per message.
pub const MAX_TERMS: usize = 512;

/// Unicode-aware keywords: lowercase, split at every character that is not
/// alphanumeric, deduplicated in first-seen order.
pub fn keywords(text: &str) -> Vec<String> {
    let lower = text.to_lowercase();
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for w in lower.split(|c: char| !c.is_alphanumeric()) {
        let n = w.chars().count();
        if n == 0 || n > MAX_TERM_CHARS {
            continue;
        }
        if seen.insert(w) {
            out.push(w.to_owned());
            if out.len() == MAX_TERMS {
                break;
            }
        }
    }
    out
}

/// Normalise a single query or identifier term the same way.
pub fn normalize(term: &str) -> String {
    term.trim().to_lowercase()
}

/// The token for one (field, term) under an index key.
pub fn token(index_key: &RoomKey, field: Field, term: &str) -> [u8; 16] {
    let mac = crate::hmac_sha256(
        index_key.expose(),
        &[field.tag(), &[0], normalize(term).as_bytes()],
    );
    let mut t = [0u8; 16];
    t.copy_from_slice(&mac[..16]);
    t
}

/// Last millisecond of the year 9999, the latest time RFC 3339 can write.
const MAX_MS: u64 = 253_402_300_799_999;

/// RFC 3339 UTC time of a millisecond timestamp (`YYYY-MM-DDTHH:MM:SS.mmmZ`);
/// timestamps past the year 9999 (only a forged message can carry one) are
/// written as its last millisecond.
pub fn rfc3339(ts_ms: u64) -> String {
    humantime::format_rfc3339_millis(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(ts_ms.min(MAX_MS)),
    )
    .to_string()
}

/// UTC calendar date of a millisecond timestamp, `YYYY-MM-DD`.
pub fn day_of(ts_ms: u64) -> String {
    let mut s = rfc3339(ts_ms);
    s.truncate(10);
    s
}

/// Index-key period of a timestamp: months since 1970-01 (UTC).
pub fn period_of(ts_ms: u64) -> u32 {
    let d = day_of(ts_ms);
    let y: u32 = d[..4].parse().unwrap_or(1970);
    let m: u32 = d[5..7].parse().unwrap_or(1);
    (y.saturating_sub(1970)) * 12 + m.saturating_sub(1)
}

/// Milliseconds at 00:00 UTC of `YYYY-MM-DD`, or `None` if it is not a date.
pub fn parse_day(s: &str) -> Option<u64> {
    let s = s.trim();
    if s.len() != 10 {
        return None;
    }
    let t = humantime::parse_rfc3339(&format!("{s}T00:00:00Z")).ok()?;
    let ms = t.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis();
    u64::try_from(ms).ok()
}

/// Every period from `from_ms` to `to_ms` inclusive (at most `max`).
pub fn periods_between(from_ms: u64, to_ms: u64, max: usize) -> Vec<u32> {
    let (a, b) = (period_of(from_ms), period_of(to_ms));
    (a..=b).take(max).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keywords_are_unicode_aware() {
        assert_eq!(keywords("Buy 100 ACME, buy!"), vec!["buy", "100", "acme"]);
        assert_eq!(
            keywords("ÜBER Straße — Ελλάδα/ΑΘΉΝΑ"),
            vec!["über", "straße", "ελλάδα", "αθήνα"]
        );
        assert_eq!(keywords("日本 株式"), vec!["日本", "株式"]);
        assert!(keywords(&"x".repeat(65)).is_empty());
        assert_eq!(
            keywords(&(0..1000).map(|i| format!("w{i} ")).collect::<String>()).len(),
            MAX_TERMS
        );
    }

    #[test]
    fn tokens_depend_on_key_field_and_normalized_term() {
        let k1 = RoomKey::from_bytes([1; 32]);
        let k2 = RoomKey::from_bytes([2; 32]);
        assert_eq!(
            token(&k1, Field::Keyword, "ACME"),
            token(&k1, Field::Keyword, " acme ")
        );
        assert_ne!(
            token(&k1, Field::Keyword, "acme"),
            token(&k2, Field::Keyword, "acme")
        );
        assert_ne!(
            token(&k1, Field::Keyword, "acme"),
            token(&k1, Field::Sender, "acme")
        );
        assert_ne!(
            token(&k1, Field::Keyword, "acme"),
            token(&k1, Field::Keyword, "acmf")
        );
    }

    #[test]
    fn dates_and_periods() {
        assert_eq!(day_of(0), "1970-01-01");
        assert_eq!(rfc3339(u64::MAX), "9999-12-31T23:59:59.999Z");
        assert_eq!(period_of(u64::MAX), period_of(MAX_MS));
        assert_eq!(day_of(951_782_400_000), "2000-02-29");
        assert_eq!(day_of(1_795_305_600_000), "2026-11-22");
        assert_eq!(period_of(0), 0);
        assert_eq!(period_of(1_795_305_600_000), 56 * 12 + 10);
        assert_ne!(period_of(1_795_305_600_000), period_of(1_798_761_600_000)); // Nov vs Jan
        assert_eq!(parse_day("2026-11-22"), Some(1_795_305_600_000));
        assert_eq!(parse_day("2000-02-29"), Some(951_782_400_000));
        assert_eq!(parse_day("2001-02-29"), None);
        assert_eq!(parse_day("2026-13-01"), None);
        assert_eq!(parse_day("yesterday"), None);
        assert_eq!(
            periods_between(1_795_305_600_000, 1_798_761_600_000, 100).len(),
            3
        );
    }
}
