//! The vault's metrics: captures by outcome, refusals by reason, the
//! queues in front of signature checks, status reads and the ingestion
//! log, and the log's size and checkpoint age.

use cloister_http::ops::{CounterBy, Metrics};
use std::sync::Arc;

pub(crate) struct VaultMetrics {
    pub(crate) ops: Arc<Metrics>,
    /// `stored`, `repeated` (the stored receipt again), `refused`.
    pub(crate) captures: CounterBy,
    pub(crate) refused: CounterBy,
}

impl VaultMetrics {
    pub(crate) fn new(
        log: &Arc<cloister_audit::AuditLog>,
        verifier: &crate::verifier::Verifier,
        statuses: &crate::status::StatusReader,
    ) -> VaultMetrics {
        let ops = Metrics::new("vault");
        let captures = ops.counter_by(
            "captures",
            "Captures received, by outcome (stored, repeated, refused)",
            "outcome",
        );
        let refused = ops.counter_by("captures_refused", "Captures refused, by reason", "reason");
        log.register_metrics(&ops);
        for (name, help, probe) in [
            (
                "verify_queue",
                "Signatures waiting for the batch verifier",
                Box::new(verifier.queued_probe()) as Box<dyn Fn() -> i64 + Send + Sync>,
            ),
            (
                "status_queue",
                "Captures waiting for their status read",
                Box::new(statuses.queued_probe()),
            ),
        ] {
            let g = ops.gauge(name, help);
            ops.on_scrape(move || {
                g.set(probe());
            });
        }
        VaultMetrics {
            ops,
            captures,
            refused,
        }
    }
}
