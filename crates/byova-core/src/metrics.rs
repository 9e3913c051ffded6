//! Process-wide counters for operators (`byova serve`'s `/metrics`): token-endpoint calls, rate
//! limits, refresh outcomes and webhook outcomes, and the Prometheus text rendering that
//! adds the tokens' states and times to expiry. Counting is a relaxed atomic add on the
//! slow path only (a call to Webex, a finished refresh, a delivery); the hot path counts
//! nothing.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::http::{HttpRequest, Method};
use crate::policy::{KeyStatus, TokenState};
use crate::time::Timestamp;

/// Webhook outcomes counted, in rendering order.
const WEBHOOK_OUTCOMES: [&str; 7] =
    ["registered", "removed", "superseded", "other_application", "rejected", "invalid", "failed"];

/// Why a refresh was not made (see [`Metrics::record_refresh_skipped`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SkipReason {
    /// A 401 on a token that was itself minted because Webex rejected its predecessor.
    RejectionCooldown,
    /// A forced refresh of tokens obtained moments ago.
    ForcedFloor,
}

/// The counters. One per process: [`metrics`].
#[derive(Debug, Default)]
pub struct Metrics {
    access_token_calls: AtomicU64,
    application_token_calls: AtomicU64,
    other_calls: AtomicU64,
    rate_limited: AtomicU64,
    transport_errors: AtomicU64,
    refreshes_ok: AtomicU64,
    refreshes_failed: AtomicU64,
    budget_waits: AtomicU64,
    skipped_rejection_cooldown: AtomicU64,
    skipped_forced_floor: AtomicU64,
    webhooks: [AtomicU64; WEBHOOK_OUTCOMES.len()],
}

static METRICS: Metrics = Metrics {
    access_token_calls: AtomicU64::new(0),
    application_token_calls: AtomicU64::new(0),
    other_calls: AtomicU64::new(0),
    rate_limited: AtomicU64::new(0),
    transport_errors: AtomicU64::new(0),
    refreshes_ok: AtomicU64::new(0),
    refreshes_failed: AtomicU64::new(0),
    budget_waits: AtomicU64::new(0),
    skipped_rejection_cooldown: AtomicU64::new(0),
    skipped_forced_floor: AtomicU64::new(0),
    webhooks: [const { AtomicU64::new(0) }; WEBHOOK_OUTCOMES.len()],
};

/// This process's counters.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

fn add(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Which Webex endpoint a request went to.
fn endpoint(request: &HttpRequest) -> &'static str {
    let path = request.url.split('?').next().unwrap_or_default();
    if request.method == Method::Post && path.ends_with("/access_token") {
        "access_token"
    } else if request.method == Method::Post && path.contains("/applications/") && path.ends_with("/token") {
        "application_token"
    } else {
        "api"
    }
}

impl Metrics {
    /// A request to Webex was answered with `status` (`None`: no answer, a transport error).
    pub fn record_call(&self, request: &HttpRequest, status: Option<u16>) {
        add(match endpoint(request) {
            "access_token" => &self.access_token_calls,
            "application_token" => &self.application_token_calls,
            _ => &self.other_calls,
        });
        match status {
            Some(429) => add(&self.rate_limited),
            None => add(&self.transport_errors),
            Some(_) => {}
        }
    }

    /// A refresh (or fetch) that called Webex ended: stored new tokens, or failed.
    pub fn record_refresh(&self, succeeded: bool) {
        add(if succeeded { &self.refreshes_ok } else { &self.refreshes_failed });
    }

    /// A token call had to wait (or a still-valid token was served) because the token budget
    /// had no room.
    pub fn record_budget_wait(&self) {
        add(&self.budget_waits);
    }

    /// A refresh was not made to save Webex's per-user token cap: a 401 on a token that was
    /// itself a renewal after a 401 (`rejection_cooldown`), or a forced refresh of tokens just
    /// obtained (`forced_floor`).
    pub fn record_refresh_skipped(&self, reason: SkipReason) {
        add(match reason {
            SkipReason::RejectionCooldown => &self.skipped_rejection_cooldown,
            SkipReason::ForcedFloor => &self.skipped_forced_floor,
        });
    }

    /// Refreshes skipped so far for `reason`.
    pub fn refreshes_skipped(&self, reason: SkipReason) -> u64 {
        match reason {
            SkipReason::RejectionCooldown => &self.skipped_rejection_cooldown,
            SkipReason::ForcedFloor => &self.skipped_forced_floor,
        }
        .load(Ordering::Relaxed)
    }

    /// How often the token budget held a call back so far.
    pub fn budget_waits(&self) -> u64 {
        self.budget_waits.load(Ordering::Relaxed)
    }

    /// A webhook delivery ended as `outcome`: a [`WebhookOutcome`](crate::webhook::WebhookOutcome)'s
    /// name, or `rejected` (signature), `invalid` (body), `failed` (anything else).
    pub fn record_webhook(&self, outcome: &str) {
        if let Some(i) = WEBHOOK_OUTCOMES.iter().position(|o| *o == outcome) {
            add(&self.webhooks[i]);
        }
    }

    /// Calls to the token endpoint (`/access_token`: code exchanges and refreshes) so far.
    pub fn access_token_calls(&self) -> u64 {
        self.access_token_calls.load(Ordering::Relaxed)
    }

    /// Calls to the Service App token endpoint so far.
    pub fn application_token_calls(&self) -> u64 {
        self.application_token_calls.load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition of the counters, and of `statuses` (the tokens stored
    /// now) at `now`: counts by state, and with `per_key` one expiry gauge per key (each
    /// customer org id as a label: opt in, for a scrape that may see them).
    pub fn render_prometheus(&self, statuses: &[KeyStatus], now: Timestamp, per_key: bool) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = String::new();
        let mut family = |name: &str, kind: &str, help: &str, samples: &[(String, String)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        let label = |name: &str, value: &str| format!("{{{name}=\"{}\"}}", escape_label(value));
        let calls = [
            ("access_token", &self.access_token_calls),
            ("application_token", &self.application_token_calls),
            ("api", &self.other_calls),
        ];
        family(
            "byova_webex_calls_total",
            "counter",
            "Requests sent to Webex, by endpoint.",
            &calls.map(|(e, c)| (label("endpoint", e), get(c).to_string())),
        );
        family(
            "byova_rate_limited_total",
            "counter",
            "Webex answers with status 429.",
            &[(String::new(), get(&self.rate_limited).to_string())],
        );
        family(
            "byova_transport_errors_total",
            "counter",
            "Requests to Webex that got no answer.",
            &[(String::new(), get(&self.transport_errors).to_string())],
        );
        family(
            "byova_token_budget_waits_total",
            "counter",
            "Token calls held back by the shared token budget (waited, or a still-valid token served).",
            &[(String::new(), get(&self.budget_waits).to_string())],
        );
        family(
            "byova_refreshes_total",
            "counter",
            "Refreshes and fetches that called Webex, by outcome.",
            &[
                (label("outcome", "success"), get(&self.refreshes_ok).to_string()),
                (label("outcome", "failure"), get(&self.refreshes_failed).to_string()),
            ],
        );
        family(
            "byova_refreshes_skipped_total",
            "counter",
            "Refreshes not made to stay under Webex's per-user token cap, by reason.",
            &[
                (label("reason", "rejection_cooldown"), get(&self.skipped_rejection_cooldown).to_string()),
                (label("reason", "forced_floor"), get(&self.skipped_forced_floor).to_string()),
            ],
        );
        let webhooks: Vec<_> = WEBHOOK_OUTCOMES
            .iter()
            .zip(&self.webhooks)
            .map(|(name, c)| (label("outcome", name), get(c).to_string()))
            .collect();
        family("byova_webhook_deliveries_total", "counter", "serviceApp deliveries, by outcome.", &webhooks);
        let states: Vec<_> = [
            TokenState::Valid,
            TokenState::RefreshSoon,
            TokenState::Expired,
            TokenState::ReauthorizationRequired,
        ]
        .into_iter()
        .map(|state| {
            (label("state", state.as_str()), statuses.iter().filter(|s| s.state == state).count().to_string())
        })
        .collect();
        family("byova_tokens", "gauge", "Stored tokens, by state.", &states);
        family(
            "byova_refresh_tokens_rejected",
            "gauge",
            "Keys whose refresh token Webex rejected: the Integration needs authorizing again; an org is \
             fetched anew once the Integration is authorized, else it needs registering again.",
            &[(String::new(), statuses.iter().filter(|s| s.refresh_token_rejected).count().to_string())],
        );
        let expiry: Vec<_> = statuses
            .iter()
            .filter(|_| per_key)
            .map(|s| {
                let key = s.key.label();
                let left_ms =
                    i128::from(s.access_expires_at.as_unix_millis()) - i128::from(now.as_unix_millis());
                (label("key", &key), (left_ms / 1000).to_string())
            })
            .collect();
        family(
            "byova_token_expiry_seconds",
            "gauge",
            "Seconds until each access token expires (negative: expired).",
            &expiry,
        );
        out
    }
}

/// A Prometheus label value: backslash, quote and newline escaped.
fn escape_label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::RetryClass;
    use crate::key::OrgId;

    #[test]
    fn calls_are_classified_and_rendered() {
        let m = Metrics::default();
        let post = |url: &str| HttpRequest::new(Method::Post, url.to_owned(), RetryClass::Idempotent);
        m.record_call(&post("https://w.test/v1/access_token"), Some(200));
        m.record_call(&post("https://w.test/v1/access_token"), Some(429));
        m.record_call(&post("https://w.test/v1/applications/APP/token"), None);
        m.record_call(
            &HttpRequest::new(Method::Get, "https://w.test/v1/webhooks".into(), RetryClass::Idempotent),
            Some(200),
        );
        m.record_refresh(true);
        m.record_webhook("registered");
        m.record_webhook("no such outcome");
        let now = Timestamp::from_unix_secs(1_000);
        let statuses = [KeyStatus {
            key: crate::key::TokenKey::org(&OrgId::from_static("o\"1")),
            state: TokenState::Valid,
            access_expires_at: Timestamp::from_unix_secs(1_060),
            refresh_expires_at: None,
            refresh_at: None,
            refresh_token_rejected: true,
        }];
        let text = m.render_prometheus(&statuses, now, true);
        assert!(!m.render_prometheus(&statuses, now, false).contains("o\\\"1"), "no org ids unless asked");
        for line in [
            "byova_webex_calls_total{endpoint=\"access_token\"} 2",
            "byova_webex_calls_total{endpoint=\"application_token\"} 1",
            "byova_webex_calls_total{endpoint=\"api\"} 1",
            "byova_rate_limited_total 1",
            "byova_transport_errors_total 1",
            "byova_refresh_tokens_rejected 1",
            "byova_refreshes_total{outcome=\"success\"} 1",
            "byova_webhook_deliveries_total{outcome=\"registered\"} 1",
            "byova_tokens{state=\"valid\"} 1",
            "byova_tokens{state=\"expired\"} 0",
            "byova_token_expiry_seconds{key=\"org:o\\\"1\"} 60",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}
