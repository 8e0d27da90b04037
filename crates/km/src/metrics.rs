//! The KM's metrics: key releases by kind, refusals by reason (a stable
//! code), and its audit log's size and checkpoint age. Read at
//! `/metrics` on the operations listener.

use cloister_http::ops::{CounterBy, Metrics};
use cloister_log::AuditEvent;
use std::sync::Arc;

pub(crate) struct KmMetrics {
    pub(crate) ops: Arc<Metrics>,
    released: CounterBy,
    refused: CounterBy,
}

impl KmMetrics {
    pub(crate) fn new(audit: &Arc<cloister_audit::AuditLog>) -> KmMetrics {
        let ops = Metrics::new("km");
        let released = ops.counter_by(
            "key_releases",
            "Key releases to devices, by whom they went to (member, surveillance, inspection)",
            "to",
        );
        let refused = ops.counter_by("key_refusals", "Key requests refused, by reason", "reason");
        audit.register_metrics(&ops);
        KmMetrics {
            ops,
            released,
            refused,
        }
    }

    /// Count what an audit record says (every release and refusal is one).
    pub(crate) fn observe(&self, ev: &AuditEvent) {
        match ev {
            AuditEvent::KeyReleased {
                surveillance,
                inspection,
                ..
            } => self.released.inc(if *inspection {
                "inspection"
            } else if *surveillance {
                "surveillance"
            } else {
                "member"
            }),
            AuditEvent::KeyRefused { reason, .. } => self.refused.inc(&reason_code(reason)),
            _ => {}
        }
    }
}

/// The stable code at the head of a refusal's reason ("barrier: …" →
/// "barrier"); anything else is "other", so no text reaches a label.
fn reason_code(reason: &str) -> String {
    let code = reason.split(':').next().unwrap_or_default().trim();
    let ok = !code.is_empty()
        && code.len() <= 40
        && code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
    if ok {
        code.to_owned()
    } else {
        "other".to_owned()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reasons_become_codes_and_nothing_else() {
        assert_eq!(super::reason_code("not_entitled"), "not_entitled");
        assert_eq!(super::reason_code("barrier: alice and bob"), "barrier");
        assert_eq!(super::reason_code("Alice@acme is not"), "other");
        assert_eq!(super::reason_code(""), "other");
    }
}
