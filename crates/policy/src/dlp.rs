//! Data-loss prevention: the tenant's content policies, evaluated on the
//! device before it seals anything. Pure: the same verdict on every
//! device for the same content.
//!
//! ```text
//!  DlpSet (KM-signed) ──Dlp::new──▶ compiled rules (regexes size-limited, linear time)
//!  text  ──check_text──▶ Verdict { block: first blocking policy, flags: flagging policies }
//!  file  ──check_file(name, size)──▶ Verdict
//! ```

use cloister_proto::controls::{DlpAction, DlpPolicy, DlpSet};
use regex::{Regex, RegexBuilder};

/// Most keywords, patterns and file types per policy, and policies per set.
pub const MAX_ITEMS: usize = 256;
/// Largest compiled regular expression.
const REGEX_SIZE: usize = 1 << 20;

/// What the policies say about one piece of content.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    /// The first active blocking policy that matched: (id, name, message).
    pub block: Option<(String, String, String)>,
    /// Active flagging policies that matched, by id.
    pub flags: Vec<String>,
}

struct Rule {
    policy: DlpPolicy,
    words: Vec<String>,
    patterns: Vec<Regex>,
}

/// A compiled policy set.
pub struct Dlp {
    pub version: u64,
    rules: Vec<Rule>,
}

/// A policy that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("DLP policy {id}: {reason}")]
pub struct BadPolicy {
    pub id: String,
    pub reason: String,
}

/// Check one policy (the KM refuses to sign a bad one).
pub fn validate(p: &DlpPolicy) -> Result<(), BadPolicy> {
    compile(p).map(|_| ())
}

fn compile(p: &DlpPolicy) -> Result<Rule, BadPolicy> {
    let bad = |reason: String| BadPolicy {
        id: p.id.clone(),
        reason,
    };
    if p.id.is_empty() || p.id.len() > 64 || p.name.trim().is_empty() || p.name.len() > 200 {
        return Err(bad(
            "needs an id (1-64 bytes) and a name (1-200 bytes)".into()
        ));
    }
    if p.keywords.len() > MAX_ITEMS
        || p.patterns.len() > MAX_ITEMS
        || p.file_types.len() > MAX_ITEMS
    {
        return Err(bad(format!(
            "at most {MAX_ITEMS} keywords, patterns and file types"
        )));
    }
    if p.keywords.is_empty()
        && p.patterns.is_empty()
        && p.file_types.is_empty()
        && p.max_file_bytes.is_none()
    {
        return Err(bad(
            "matches nothing: give keywords, patterns, file types or a size".into(),
        ));
    }
    let patterns = p
        .patterns
        .iter()
        .map(|src| {
            RegexBuilder::new(src)
                .case_insensitive(true)
                .size_limit(REGEX_SIZE)
                .dfa_size_limit(REGEX_SIZE)
                .build()
                .map_err(|e| bad(format!("pattern {src:?}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Rule {
        policy: p.clone(),
        words: p
            .keywords
            .iter()
            .map(|k| k.to_lowercase())
            .filter(|k| !k.trim().is_empty())
            .collect(),
        patterns,
    })
}

/// Does `text` contain `word` (lowercase) as a whole word or phrase?
fn has_word(text: &str, word: &str) -> bool {
    let is_word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
    let mut from = 0;
    while let Some(i) = text[from..].find(word) {
        let start = from + i;
        let end = start + word.len();
        if !is_word(text[..start].chars().next_back()) && !is_word(text[end..].chars().next()) {
            return true;
        }
        from = start + word.chars().next().map_or(1, char::len_utf8);
    }
    false
}

impl Dlp {
    pub fn new(set: &DlpSet) -> Result<Dlp, BadPolicy> {
        Ok(Dlp {
            version: set.version,
            rules: set
                .policies
                .iter()
                .filter(|p| p.active)
                .map(compile)
                .collect::<Result<_, _>>()?,
        })
    }

    fn verdict<'a>(&self, hits: impl Iterator<Item = &'a Rule>) -> Verdict {
        let mut v = Verdict::default();
        for r in hits {
            match r.policy.action {
                DlpAction::Block if v.block.is_none() => {
                    v.block = Some((
                        r.policy.id.clone(),
                        r.policy.name.clone(),
                        r.policy.message.clone(),
                    ));
                }
                DlpAction::Block => {}
                DlpAction::Flag => v.flags.push(r.policy.id.clone()),
            }
        }
        v
    }

    pub fn check_text(&self, text: &str) -> Verdict {
        let lower = text.to_lowercase();
        self.verdict(self.rules.iter().filter(|r| {
            r.words.iter().any(|w| has_word(&lower, w))
                || r.patterns.iter().any(|p| p.is_match(text))
        }))
    }

    /// A file by its name (its type) and size; its name is text too.
    pub fn check_file(&self, name: &str, size: u64) -> Verdict {
        let ext = name
            .rsplit_once('.')
            .map(|(_, e)| e.to_lowercase())
            .unwrap_or_default();
        let lower = name.to_lowercase();
        self.verdict(self.rules.iter().filter(|r| {
            r.policy
                .file_types
                .iter()
                .any(|t| t.trim_start_matches('.').eq_ignore_ascii_case(&ext))
                || r.policy.max_file_bytes.is_some_and(|m| size > m)
                || r.words.iter().any(|w| has_word(&lower, w))
                || r.patterns.iter().any(|p| p.is_match(name))
        }))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn policy(id: &str, action: DlpAction) -> DlpPolicy {
        DlpPolicy {
            id: id.into(),
            name: format!("policy {id}"),
            action,
            keywords: vec![],
            patterns: vec![],
            file_types: vec![],
            max_file_bytes: None,
            message: "not over chat".into(),
            active: true,
        }
    }

    #[test]
    fn keywords_patterns_types_and_sizes() {
        let set = DlpSet {
            tenant: "acme".parse().unwrap(),
            version: 3,
            policies: vec![
                DlpPolicy {
                    keywords: vec!["Project Falcon".into()],
                    ..policy("mna", DlpAction::Block)
                },
                DlpPolicy {
                    patterns: vec![r"\b\d{4}[ -]?\d{4}[ -]?\d{4}[ -]?\d{4}\b".into()],
                    ..policy("pan", DlpAction::Block)
                },
                DlpPolicy {
                    keywords: vec!["guarantee".into()],
                    ..policy("promise", DlpAction::Flag)
                },
                DlpPolicy {
                    file_types: vec!["exe".into(), ".xlsm".into()],
                    max_file_bytes: Some(1000),
                    ..policy("files", DlpAction::Block)
                },
                DlpPolicy {
                    keywords: vec!["ignored".into()],
                    active: false,
                    ..policy("off", DlpAction::Block)
                },
            ],
        };
        let d = Dlp::new(&set).unwrap();
        assert_eq!(
            d.check_text("re: PROJECT falcon timing").block.unwrap().0,
            "mna"
        );
        assert!(
            d.check_text("projectfalcon").block.is_none(),
            "whole words only"
        );
        assert_eq!(
            d.check_text("card 4111 1111 1111 1111").block.unwrap().0,
            "pan"
        );
        let v = d.check_text("we guarantee the fill");
        assert_eq!((v.block, v.flags), (None, vec!["promise".to_owned()]));
        assert!(d.check_text("this is ignored").block.is_none());
        assert_eq!(d.check_file("setup.EXE", 10).block.unwrap().0, "files");
        assert_eq!(d.check_file("model.xlsm", 10).block.unwrap().0, "files");
        assert_eq!(d.check_file("big.pdf", 1001).block.unwrap().0, "files");
        assert!(d.check_file("small.pdf", 1000).block.is_none());
        assert_eq!(
            d.check_file("project falcon.pdf", 1).block.unwrap().0,
            "mna"
        );
    }

    #[test]
    fn bad_policies_are_refused() {
        let p = DlpPolicy {
            patterns: vec!["(unclosed".into()],
            ..policy("x", DlpAction::Block)
        };
        assert!(validate(&p).unwrap_err().reason.contains("unclosed"));
        assert!(validate(&policy("empty", DlpAction::Flag)).is_err());
        let huge = DlpPolicy {
            patterns: vec!["a{100000}{100000}".into()],
            ..policy("huge", DlpAction::Block)
        };
        assert!(
            validate(&huge).is_err(),
            "a pattern past the size limit is refused"
        );
    }

    proptest! {
        #[test]
        fn a_keyword_is_found_wherever_it_stands_as_a_word(pre in "[ .,!]{0,3}[a-z ]{0,10}[ .,]", post in "[ .,!][a-z ]{0,10}") {
            let set = DlpSet {
                tenant: "acme".parse().unwrap(),
                version: 1,
                policies: vec![DlpPolicy { keywords: vec!["falcon".into()], ..policy("k", DlpAction::Block) }],
            };
            let d = Dlp::new(&set).unwrap();
            let text = format!("{pre}FaLcOn{post}");
            prop_assert!(d.check_text(&text).block.is_some());
            let longer = format!("{pre}falconry{post}");
            prop_assert!(d.check_text(&longer).block.is_none());
        }
    }
}
