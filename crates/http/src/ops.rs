//! What an operator's tools ask of every service: `/healthz` (the process
//! answers), `/readyz` (its storage and the services it needs answer) and
//! `/metrics` (Prometheus text exposition, version 0.0.4).
//!
//! Each service owns one [`Metrics`]: the per-route request counts and
//! latency histograms are recorded here for every service alike
//! ([`instrument`]); a service registers its own domain metrics beside them
//! and may refresh gauges just before each scrape ([`Metrics::on_scrape`]).
//! Labels never carry ids, names or content: routes are templates
//! (`/v1/rooms/{room}`), reasons are stable codes.

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Metric, Registry};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

pub use prometheus_client;
pub use prometheus_client::metrics::gauge::Gauge;

/// A gauge of seconds (ages, durations).
pub type SecondsGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

/// A counter split by one label whose values are stable codes (never ids,
/// names or content).
#[derive(Clone, Debug)]
pub struct CounterBy {
    key: &'static str,
    family: Family<[(&'static str, String); 1], Counter>,
}

impl CounterBy {
    pub fn inc(&self, value: &str) {
        self.family
            .get_or_create(&[(self.key, value.to_owned())])
            .inc();
    }

    /// The count for one label value (tests, the demo).
    pub fn get(&self, value: &str) -> u64 {
        self.family
            .get_or_create(&[(self.key, value.to_owned())])
            .get()
    }
}

/// A request's labels: method, route template, status.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: u16,
}

/// A route's labels for its latency.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: String,
    route: String,
}

type Refresh = Box<dyn Fn() + Send + Sync>;

fn latency_histogram() -> Histogram {
    // 100 µs to about 13 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

/// One service's metrics registry.
pub struct Metrics {
    registry: Mutex<Registry>,
    refresh: Mutex<Vec<Refresh>>,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// A registry whose names all start `cloister_SERVICE_`.
    pub fn new(service: &str) -> Arc<Metrics> {
        let mut registry = Registry::with_prefix(format!("cloister_{service}"));
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        registry.register(
            "http_requests",
            "HTTP requests answered, by method, route template and status",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time to answer an HTTP request, by method and route template",
            latency.clone(),
        );
        Arc::new(Metrics {
            registry: Mutex::new(registry),
            refresh: Mutex::new(Vec::new()),
            requests,
            latency,
        })
    }

    /// Register a service's own metric (its name gets the service's prefix).
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        if let Ok(mut r) = self.registry.lock() {
            r.register(name, help, metric);
        }
    }

    /// Register a counter split by the label `key`.
    pub fn counter_by(&self, name: &str, help: &str, key: &'static str) -> CounterBy {
        let c = CounterBy {
            key,
            family: Family::default(),
        };
        self.register(name, help, c.family.clone());
        c
    }

    /// Register a plain counter.
    pub fn counter(&self, name: &str, help: &str) -> Counter {
        let c = Counter::default();
        self.register(name, help, c.clone());
        c
    }

    /// Register a gauge.
    pub fn gauge(&self, name: &str, help: &str) -> Gauge {
        let g = Gauge::default();
        self.register(name, help, g.clone());
        g
    }

    /// Register a gauge of seconds.
    pub fn seconds_gauge(&self, name: &str, help: &str) -> SecondsGauge {
        let g = SecondsGauge::default();
        self.register(name, help, g.clone());
        g
    }

    /// Run `f` before every scrape (to set gauges read from elsewhere:
    /// sizes, ages, queue depths).
    pub fn on_scrape(&self, f: impl Fn() + Send + Sync + 'static) {
        if let Ok(mut v) = self.refresh.lock() {
            v.push(Box::new(f));
        }
    }

    /// The exposition text.
    pub fn encode(&self) -> String {
        if let Ok(v) = self.refresh.lock() {
            for f in v.iter() {
                f();
            }
        }
        let mut out = String::new();
        if let Ok(r) = self.registry.lock() {
            // Writing into a String cannot fail.
            let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &r);
        }
        out
    }

    fn observe(&self, method: &str, route: &str, status: StatusCode, secs: f64) {
        self.requests
            .get_or_create(&RequestLabels {
                method: method.to_owned(),
                route: route.to_owned(),
                status: status.as_u16(),
            })
            .inc();
        self.latency
            .get_or_create(&RouteLabels {
                method: method.to_owned(),
                route: route.to_owned(),
            })
            .observe(secs);
    }
}

async fn track(State(m): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    // Unknown paths share one label: a scanner cannot grow the registry.
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = req.method().as_str().to_owned();
    let started = std::time::Instant::now();
    let resp = next.run(req).await;
    m.observe(
        &method,
        &route,
        resp.status(),
        started.elapsed().as_secs_f64(),
    );
    resp
}

/// A service's readiness check: `Err` says what is not reachable.
pub type ReadyCheck =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// Make a [`ReadyCheck`] from an async closure.
pub fn ready_check<F, Fut>(f: F) -> ReadyCheck
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    Arc::new(move || Box::pin(f()))
}

/// Count and time every request of `router`, and add `/healthz` and
/// `/readyz` to it. Call on the whole router, after every route is added.
pub fn instrument(router: Router, metrics: &Arc<Metrics>, ready: ReadyCheck) -> Router {
    router
        .merge(health_routes(ready))
        .layer(axum::middleware::from_fn_with_state(metrics.clone(), track))
}

fn health_routes(ready: ReadyCheck) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(ready)
}

async fn healthz() -> impl IntoResponse {
    axum::Json(serde_json::json!({ "status": "ok" }))
}

async fn readyz(State(ready): State<ReadyCheck>) -> Response {
    match ready().await {
        Ok(()) => axum::Json(serde_json::json!({ "status": "ready" })).into_response(),
        Err(why) => {
            crate::ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", why).into_response()
        }
    }
}

async fn metrics_text(State(m): State<Arc<Metrics>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        )],
        m.encode(),
    )
        .into_response()
}

/// The operations listener's router: `/metrics`, `/healthz`, `/readyz`
/// (kept off the public listener: metrics tell an observer about traffic).
pub fn ops_router(metrics: Arc<Metrics>, ready: ReadyCheck) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .with_state(metrics)
        .merge(health_routes(ready))
        .fallback(crate::not_found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_labels_are_templates_and_the_text_is_prometheus() {
        let m = Metrics::new("test");
        m.observe("GET", "/v1/rooms/{room}", StatusCode::OK, 0.002);
        m.observe("GET", "/v1/rooms/{room}", StatusCode::OK, 0.004);
        let c = Counter::<u64>::default();
        m.register("things", "Things done", c.clone());
        let c2 = c.clone();
        m.on_scrape(move || {
            c2.inc();
        });
        let text = m.encode();
        assert!(text.contains(
            "cloister_test_http_requests_total{method=\"GET\",route=\"/v1/rooms/{room}\",status=\"200\"} 2"
        ), "{text}");
        assert!(text.contains("# TYPE cloister_test_http_request_duration_seconds histogram"));
        assert!(text.contains("cloister_test_things_total 1"), "{text}");
        assert!(!text.contains("# EOF"), "0.0.4 text, not OpenMetrics");
    }
}
