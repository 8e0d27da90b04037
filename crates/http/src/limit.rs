//! Rate limits: one GCRA limiter (the `governor` crate) per class of
//! costly request, keyed by device or by client address. A refused
//! request is `429 rate_limited` with `Retry-After`.
//!
//! Per-device limits are checked by the service once the request's
//! signature has been verified (a limit keyed by an unverified device id
//! would let anyone spend another device's allowance); per-address limits
//! are a layer in front of every route ([`per_address`]).

use crate::ApiError;
use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// How many checks between two sweeps of idle keys.
const SWEEP_EVERY: u64 = 4096;

/// A refusal: what was limited and when to come back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limited {
    pub what: &'static str,
    pub retry_after_secs: u64,
}

impl std::fmt::Display for Limited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "too many {}; retry in {} s",
            self.what, self.retry_after_secs
        )
    }
}

impl From<Limited> for ApiError {
    fn from(l: Limited) -> Self {
        ApiError::too_many(l.retry_after_secs, l.to_string())
    }
}

/// A limiter of one class of request, per key.
pub struct Limiter<K: Hash + Eq + Clone> {
    what: &'static str,
    inner: Option<RateLimiter<K, DefaultKeyedStateStore<K>, DefaultClock>>,
    checks: AtomicU64,
}

impl<K: Hash + Eq + Clone> std::fmt::Debug for Limiter<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("what", &self.what)
            .field("on", &self.inner.is_some())
            .finish()
    }
}

impl<K: Hash + Eq + Clone> Limiter<K> {
    /// `per_second` on average with bursts of ten seconds' worth; 0 turns
    /// the limit off. `what` names the requests in the refusal ("key
    /// requests").
    pub fn per_second(what: &'static str, per_second: u32) -> Limiter<K> {
        let inner = NonZeroU32::new(per_second).map(|rate| {
            let burst = NonZeroU32::new(per_second.saturating_mul(10)).unwrap_or(rate);
            RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        Limiter {
            what,
            inner,
            checks: AtomicU64::new(0),
        }
    }

    /// `per_minute` on average with bursts of `burst` (for rare, guarded
    /// requests such as enrolments); 0 turns the limit off.
    pub fn per_minute(what: &'static str, per_minute: u32, burst: u32) -> Limiter<K> {
        let inner = NonZeroU32::new(per_minute).map(|rate| {
            let burst = NonZeroU32::new(burst).unwrap_or(rate);
            RateLimiter::keyed(Quota::per_minute(rate).allow_burst(burst))
        });
        Limiter {
            what,
            inner,
            checks: AtomicU64::new(0),
        }
    }

    /// Count one request of `key`; `Err` when it is over its limit.
    pub fn check(&self, key: &K) -> Result<(), Limited> {
        let Some(l) = &self.inner else {
            return Ok(());
        };
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            l.retain_recent();
        }
        l.check_key(key).map_err(|not_until| {
            let wait = not_until.wait_time_from(l.clock().now());
            Limited {
                what: self.what,
                // Round up: a client that waits this long gets through.
                retry_after_secs: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
            }
        })
    }
}

/// Limit every request of `router` per client address (the peer of the
/// connection; behind a proxy, the proxy's).
pub fn per_address(router: Router, limiter: Arc<Limiter<IpAddr>>) -> Router {
    if limiter.inner.is_none() {
        return router;
    }
    router.layer(axum::middleware::from_fn_with_state(limiter, by_address))
}

async fn by_address(State(l): State<Arc<Limiter<IpAddr>>>, req: Request, next: Next) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<crate::listen::Peer>>()
        .map(|c| c.0.addr.ip());
    if let Some(ip) = peer
        && let Err(e) = l.check(&ip)
    {
        return ApiError::from(e).into_response();
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_refusal_with_a_time_to_wait() {
        let l = Limiter::<u32>::per_minute("enrolments", 6, 3);
        for _ in 0..3 {
            assert_eq!(l.check(&1), Ok(()));
        }
        let e = l.check(&1).unwrap_err();
        assert_eq!(e.what, "enrolments");
        assert!((1..=10).contains(&e.retry_after_secs), "{e:?}");
        // another key has its own allowance
        assert_eq!(l.check(&2), Ok(()));
        let api = ApiError::from(e);
        assert_eq!(api.status.as_u16(), 429);
        assert_eq!(api.code, "rate_limited");
        assert!(api.retry_after.is_some());
    }

    #[test]
    fn zero_is_off() {
        let l = Limiter::<u32>::per_second("posts", 0);
        for _ in 0..10_000 {
            assert_eq!(l.check(&1), Ok(()));
        }
    }
}
