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

/// UTC calendar date of a millisecond timestamp, `YYYY-MM-DD`.
pub fn day_of(ts_ms: u64) -> String {
    let (y, m, d) = civil(ts_ms / 86_400_000);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Index-key period of a timestamp: months since 1970-01 (UTC).
pub fn period_of(ts_ms: u64) -> u32 {
    let (y, m, _) = civil(ts_ms / 86_400_000);
    ((y - 1970) * 12 + (m - 1)) as u32
}

/// Milliseconds at 00:00 UTC of `YYYY-MM-DD`, or `None` if it is not a date.
pub fn parse_day(s: &str) -> Option<u64> {
    let mut it = s.trim().split('-');
    let (y, m, d) = (
        it.next()?.parse::<i64>().ok()?,
        it.next()?.parse::<i64>().ok()?,
        it.next()?.parse::<i64>().ok()?,
    );
    if it.next().is_some()
        || !(1970..=9999).contains(&y)
        || !(1..=12).contains(&m)
        || !(1..=31).contains(&d)
    {
        return None;
    }
    // H. Hinnant's days_from_civil.
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let ms = u64::try_from(days).ok()? * 86_400_000;
    (day_of(ms) == format!("{y:04}-{m:02}-{d:02}")).then_some(ms)
}

/// Every period from `from_ms` to `to_ms` inclusive (at most `max`).
pub fn periods_between(from_ms: u64, to_ms: u64, max: usize) -> Vec<u32> {
    let (a, b) = (period_of(from_ms), period_of(to_ms));
    (a..=b).take(max).collect()
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (H. Hinnant's `civil_from_days`).
fn civil(days: u64) -> (i64, i64, i64) {
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
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
