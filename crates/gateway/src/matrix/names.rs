//! Matrix user ids for Cloister users: `cloister_` then the Cloister id
//! with every byte outside Matrix's historical localpart alphabet
//! (`a-z 0-9 . _ - / +`) written as `=xx` (lower-case hex), so the mapping
//! is one-to-one and reversible (`alice@acme` → `cloister_alice=40acme`).

use cloister_proto::UserId;

pub(crate) const PREFIX: &str = "cloister_";

fn plain(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/+".contains(&b)
}

/// The localpart of the ghost of `user`.
pub fn ghost_localpart(user: &UserId) -> String {
    let mut o = String::from(PREFIX);
    for b in user.as_str().bytes() {
        if plain(b) {
            o.push(char::from(b));
        } else {
            o.push_str(&format!("={b:02x}"));
        }
    }
    o
}

/// The Cloister user a ghost localpart stands for (`None`: not a ghost's).
pub fn user_of_localpart(local: &str) -> Option<UserId> {
    let rest = local.strip_prefix(PREFIX)?.as_bytes();
    let mut out = Vec::with_capacity(rest.len());
    let mut i = 0;
    while i < rest.len() {
        match rest[i] {
            b'=' => {
                let hex = rest.get(i + 1..i + 3)?;
                let b = u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
                // one spelling per id: an escape only for a byte that needs it
                if plain(b) || hex.iter().any(u8::is_ascii_uppercase) {
                    return None;
                }
                out.push(b);
                i += 3;
            }
            b if plain(b) => {
                out.push(b);
                i += 1;
            }
            _ => return None,
        }
    }
    String::from_utf8(out).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ghost_names_round_trip_and_have_one_spelling() {
        for u in ["alice@acme", "bob.smith@bank-1", "desk_2-a@acme"] {
            let user: UserId = u.parse().unwrap();
            let l = ghost_localpart(&user);
            assert!(l.bytes().all(|b| plain(b) || b == b'='), "{l}");
            assert_eq!(user_of_localpart(&l), Some(user));
        }
        assert_eq!(
            ghost_localpart(&"alice@acme".parse().unwrap()),
            "cloister_alice=40acme"
        );
        // not ours, another spelling, a broken escape
        for l in [
            "alice=40acme",
            "cloister_alice=40Acme",
            "cloister_=61lice=40acme",
            "cloister_alice=4",
            "cloister_alice=zzacme",
            "cloister_ALICE=40acme",
        ] {
            assert_eq!(user_of_localpart(l), None, "{l}");
        }
    }
}
