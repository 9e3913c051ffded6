//! What a `Byova` facade does beyond one key: a `serviceApp` webhook delivery (verified, then
//! judged against the store), the `/webhooks` API (paged listing; `ensure` creates what is
//! missing, re-activates and moves webhooks to the current secret), the status of every org,
//! and the bulk refresh with progress.

use std::sync::{Arc, Mutex};

use crate::engine::refresh::{Authorization, Mode};
use crate::engine::step::{Step, StorageCall, StorageResult, Then, done};
use crate::engine::{ServiceAppEngine, send_with_retry};
use crate::error::{Error, Result};
use crate::http::HttpRequest;
use crate::key::OrgId;
use crate::key::{TokenKey, Versioned};
use crate::policy::KeyStatus;
use crate::secret::{AccessToken, WebhookSecret};
use crate::time::Timestamp;
use crate::tokens::OAuthTokens;
use crate::webhook::{
    Admission, NewWebhook, ServiceAppEventKind, Webhook, WebhookChange, WebhookOutcome,
    create_webhook_request, delete_webhook_request, list_webhooks_request, next_page_request, parse_webhook,
    parse_webhook_deletion, parse_webhook_page, update_webhook_request, webhook_changes,
};

/// How far ahead of this clock a delivery's event time may lie and still be believed.
const MAX_EVENT_CLOCK_SKEW: std::time::Duration = std::time::Duration::from_secs(300);

/// The most pages a webhook listing follows.
const MAX_PAGES: usize = 10_000;

/// The result of refreshing one org in a bulk refresh.
#[derive(Debug)]
#[non_exhaustive]
pub struct OrgRefresh {
    /// The org.
    pub org_id: OrgId,
    /// Its new tokens, or why it failed.
    pub result: Result<OAuthTokens>,
}

/// Progress of a bulk refresh, reported after each org.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct BulkProgress {
    /// Orgs finished so far.
    pub done: usize,
    /// Orgs in all.
    pub total: usize,
    /// Orgs that failed so far.
    pub failed: usize,
    /// The org that just finished.
    pub org_id: OrgId,
    /// Whether it succeeded (the error is in the final results).
    pub ok: bool,
}

/// Receives [`BulkProgress`] reports; called from whichever thread finished the org.
pub type ProgressFn = Arc<dyn Fn(&BulkProgress) + Send + Sync>;

impl ServiceAppEngine {
    /// Handles one `serviceApp` webhook delivery: verifies the signature (when a secret is
    /// set), then on `authorized` fetches tokens unless the stored registration is already at
    /// least as new as the event, and on `deauthorized` removes the org unless it was authorized
    /// again after the event. Nothing is remembered about deliveries: a repeated, late or
    /// reordered one is answered by what the store holds. The work is a flight of the org's,
    /// detached from the delivery's connection; a delivery for the same event arriving
    /// meanwhile joins it.
    pub fn handle_webhook(
        self: &Arc<Self>,
        raw_body: &[u8],
        signature_header: Option<&str>,
        now: Timestamp,
    ) -> Step<WebhookOutcome> {
        let event = match self.gate.admit(raw_body, signature_header) {
            Ok(Admission::Act(event)) => event,
            Ok(Admission::Done(outcome)) => return done(Ok(outcome)),
            Err(e) => return done(Err(e)),
        };
        tracing::debug!(org = %event.org_id, field = event.org_source, event = event.kind.as_str(), "serviceApp delivery");
        let key = TokenKey::org(&event.org_id);
        // An event time far ahead of this clock is not believed: a far-future authorization
        // would make every later deauthorization look older. It counts as arrival time.
        let occurred_at = event.occurred_at.filter(|at| {
            let believable = *at <= now.saturating_add(MAX_EVENT_CLOCK_SKEW);
            if !believable {
                tracing::warn!(org = %event.org_id, at = %at.to_rfc3339(), "a delivery's event time lies in the future; taken as its arrival time");
            }
            believable
        });
        let at = occurred_at.unwrap_or(now);
        let org_id = event.org_id.clone();
        let work = match event.kind {
            ServiceAppEventKind::Authorized => {
                let auth =
                    Authorization { at, exact: occurred_at.is_some(), delivery: delivery_digest(raw_body) };
                self.token_engine
                    .obtain(key, Mode::Fetch(Some(auth)), now)
                    .map(now, |_| WebhookOutcome::Registered { org_id })
            }
            ServiceAppEventKind::Deauthorized => {
                let (engine, exact) = (self.clone(), occurred_at.is_some());
                self.removing_data_source(org_id.clone(), now, move |org_id, now| {
                    let removal = if exact {
                        engine.token_engine.remove(org_id.clone(), Some(at), now)
                    } else {
                        // Without a time of its own a deauthorization cannot be placed
                        // against the stored authorization (a captured old one replayed
                        // looks the same): Webex is asked, and the org goes only if it
                        // refuses a Service App fetch for it.
                        engine.token_engine.remove_unless_authorized(org_id.clone(), now)
                    };
                    removal.map(now, |held| match held {
                        None => WebhookOutcome::Removed { org_id },
                        Some(_) => WebhookOutcome::Superseded { org_id },
                    })
                })
            }
        };
        work.then(now, move |outcome, _| {
            if let Ok(outcome) = &outcome {
                tracing::info!(org = %event.org_id, event = event.kind.as_str(), ?outcome, "serviceApp webhook handled");
            }
            done(outcome)
        })
    }

    /// Runs `removal`; when it removed the org and
    /// [`remove_data_source_on_deauthorize`](crate::ByovaConfig::remove_data_source_on_deauthorize)
    /// names a data source, removes that from Webex too, with the org's last access token
    /// (read before the removal): one `DELETE` (two calls when the shared record does not name
    /// the data source), each tried once within the request timeout, outside the budget. Best
    /// effort: a failure is logged, and the delivery is answered as the removal decided.
    fn removing_data_source(
        self: &Arc<Self>,
        org_id: OrgId,
        now: Timestamp,
        removal: impl FnOnce(OrgId, Timestamp) -> Step<WebhookOutcome> + Send + 'static,
    ) -> Step<WebhookOutcome> {
        let Some(spec) = self.config().remove_data_source_on_deauthorize.clone() else {
            return removal(org_id, now);
        };
        let engine = self.clone();
        Step::Storage(StorageCall::Load(
            TokenKey::org(&org_id),
            Then::new(move |loaded: StorageResult<Option<Versioned<OAuthTokens>>>, now| {
                let token = match loaded {
                    Ok(stored) => stored.map(|stored| stored.value.access_token),
                    Err(e) => {
                        tracing::warn!(org = %org_id, error = %e, "the org's token could not be read; its data source is not removed from Webex");
                        None
                    }
                };
                removal(org_id, now).then(now, move |outcome, now| match (outcome, token) {
                    (Ok(WebhookOutcome::Removed { org_id }), Some(token)) => {
                        let mut once = engine.config().retry.clone();
                        once.max_attempts = 1;
                        engine.remove_with(org_id.clone(), spec, token, once, now).then(now, move |removed, _| {
                            match removed {
                                Ok(Some(id)) => tracing::info!(org = %org_id, data_source = %id, "the deauthorized org's data source was removed"),
                                Ok(None) => tracing::info!(org = %org_id, "the deauthorized org had no data source to remove"),
                                Err(e) => tracing::warn!(org = %org_id, error = %e, "the deauthorized org's data source could not be removed; its token lapses on its own"),
                            }
                            done(Ok(WebhookOutcome::Removed { org_id }))
                        })
                    }
                    (Ok(WebhookOutcome::Removed { org_id }), None) => {
                        tracing::warn!(org = %org_id, "the deauthorized org had no stored token; its data source is not removed from Webex and lapses on its own");
                        done(Ok(WebhookOutcome::Removed { org_id }))
                    }
                    (outcome, _) => done(outcome),
                })
            }),
        ))
    }

    /// Every registered webhook, following `Link` pagination.
    pub fn list_webhooks(self: &Arc<Self>) -> Step<Vec<Webhook>> {
        let engine = self.clone();
        with_bearer(move |token, now| {
            let request = list_webhooks_request(engine.config(), &token, 100);
            engine.list_pages(token, request, Vec::new(), 1, now)
        })
    }

    fn list_pages(
        self: Arc<Self>,
        token: AccessToken,
        request: HttpRequest,
        mut all: Vec<Webhook>,
        pages: usize,
        now: Timestamp,
    ) -> Step<Vec<Webhook>> {
        send_with_retry(self.config(), request, |r, _| parse_webhook_page(r)).then(now, move |page, now| {
            let page = match page {
                Ok(page) => page,
                Err(e) => return done(Err(e)),
            };
            all.extend(page.items);
            match page.next {
                None => done(Ok(all)),
                Some(_) if pages >= MAX_PAGES => done(Err(Error::InvalidResponse {
                    what: format!("the webhook list did not end after {MAX_PAGES} pages"),
                    status: 200,
                })),
                Some(next) => match next_page_request(self.config(), &token, &next) {
                    Ok(request) => self.list_pages(token, request, all, pages + 1, now),
                    Err(e) => done(Err(e)),
                },
            }
        })
    }

    /// Creates a webhook.
    pub fn create_webhook(self: &Arc<Self>, webhook: NewWebhook) -> Step<Webhook> {
        let engine = self.clone();
        with_bearer(move |token, _| {
            let request = create_webhook_request(engine.config(), &token, &webhook);
            send_with_retry(engine.config(), request, |r, _| parse_webhook(r))
        })
    }

    /// Deletes a webhook (an unknown id counts as deleted).
    pub fn delete_webhook(self: &Arc<Self>, webhook_id: &str) -> Step<()> {
        let (engine, id) = (self.clone(), webhook_id.to_owned());
        with_bearer(move |token, _| {
            let request = delete_webhook_request(engine.config(), &token, &id);
            send_with_retry(engine.config(), request, |r, _| parse_webhook_deletion(r))
        })
    }

    /// Makes sure the `serviceApp` `authorized` and `deauthorized` webhooks deliver to
    /// `target_url`: creates what is missing, re-activates what Webex disabled, and moves
    /// webhooks signed with another secret to `secret` (without one, the current secret
    /// deliveries are verified with). Returns the webhooks it created or updated.
    ///
    /// Fails with [`Error::Configuration`] when there is no secret at all and unsigned
    /// webhooks were not allowed by name (rule 12: a left-out setting never makes them unsigned).
    pub fn ensure_webhooks(
        self: &Arc<Self>,
        target_url: &str,
        secret: Option<&WebhookSecret>,
        now: Timestamp,
    ) -> Step<Vec<Webhook>> {
        let verification = self.gate.verification();
        let secret = secret.or(verification.current_secret());
        if secret.is_none() && !verification.allows_unsigned() {
            return done(Err(Error::Configuration(
                "webhooks are created with a secret: give one (BYOVA_WEBHOOK_SECRET, --secret-file), or allow \
                 unsigned webhooks by name (ByovaBuilder::allow_unsigned_webhooks, `--unsigned`)"
                    .into(),
            )));
        }
        let wanted = NewWebhook::service_app_pair(self.application_id(), target_url, secret);
        let engine = self.clone();
        self.list_webhooks().then(now, move |existing, now| match existing {
            Ok(existing) => {
                let changes: Vec<(Option<String>, NewWebhook)> = webhook_changes(&wanted, &existing)
                    .into_iter()
                    .map(|change| match change {
                        WebhookChange::Create(w) => (None, w.clone()),
                        WebhookChange::Update { id, webhook } => (Some(id), webhook.clone()),
                    })
                    .collect();
                engine.change_each(changes.into_iter(), Vec::new(), now)
            }
            Err(e) => done(Err(e)),
        })
    }

    fn change_each(
        self: Arc<Self>,
        mut changes: std::vec::IntoIter<(Option<String>, NewWebhook)>,
        mut changed: Vec<Webhook>,
        now: Timestamp,
    ) -> Step<Vec<Webhook>> {
        let Some((id, webhook)) = changes.next() else { return done(Ok(changed)) };
        let step = match id {
            None => self.create_webhook(webhook),
            Some(id) => self.update_webhook(&id, webhook),
        };
        step.then(now, move |made, now| match made {
            Ok(webhook) => {
                changed.push(webhook);
                self.change_each(changes, changed, now)
            }
            Err(e) => done(Err(e)),
        })
    }

    /// Updates a webhook: its name, target and secret, and active again.
    pub fn update_webhook(self: &Arc<Self>, webhook_id: &str, webhook: NewWebhook) -> Step<Webhook> {
        let (engine, id) = (self.clone(), webhook_id.to_owned());
        with_bearer(move |token, _| {
            let request = update_webhook_request(engine.config(), &token, &id, &webhook);
            send_with_retry(engine.config(), request, |r, _| parse_webhook(r))
        })
    }

    /// The status of every registered org. Holds no secret. Records are read in batches
    /// ([`CoordinatedTokenStorage::load_many`](crate::backend::CoordinatedTokenStorage::load_many)), so a store that can
    /// batch reads a large fleet in few round trips. Records that cannot be read are left out.
    pub fn statuses(self: &Arc<Self>) -> Step<Vec<KeyStatus>> {
        let now = Timestamp::EPOCH;
        self.status_report(false).map(now, |report| report.keys)
    }

    /// The status of every registered org (and of the Integration, with `integration`), and
    /// the keys whose records cannot be read (corrupt, sealed under a key not configured,
    /// written by a newer byova): left out of the statuses, never in their way.
    pub fn status_report(self: &Arc<Self>, integration: bool) -> Step<StatusReport> {
        let engine = self.clone();
        Step::Storage(StorageCall::ListOrgs(Then::new(
            move |orgs: StorageResult<Vec<OrgId>>, _| match orgs {
                Ok(orgs) => {
                    let keys: Vec<TokenKey> = integration
                        .then_some(TokenKey::Integration)
                        .into_iter()
                        .chain(orgs.into_iter().map(TokenKey::Org))
                        .collect();
                    engine.status_batches(keys, 0, StatusReport::default())
                }
                Err(e) => done(Err(e.into())),
            },
        )))
    }

    fn status_batches(
        self: Arc<Self>,
        keys: Vec<TokenKey>,
        from: usize,
        mut all: StatusReport,
    ) -> Step<StatusReport> {
        const BATCH: usize = 200;
        if from >= keys.len() {
            return done(Ok(all));
        }
        let batch = keys[from..(from + BATCH).min(keys.len())].to_vec();
        Step::Storage(StorageCall::LoadMany(
            batch.clone(),
            Then::new(move |loaded: StorageResult<Vec<Option<Versioned<OAuthTokens>>>>, now| match loaded {
                Ok(records) if records.len() == batch.len() => {
                    for (key, record) in batch.iter().zip(records) {
                        if let Some(record) = record {
                            all.keys.push(self.token_engine.cache().status(key, &record.value, now));
                        }
                    }
                    self.status_batches(keys, from + BATCH, all)
                }
                // One unreadable record (corrupt, sealed under a retired key) must not hide
                // the others: read this batch key by key and count what cannot be read.
                _ => self.status_one_by_one(keys, from, from + BATCH, all),
            }),
        ))
    }

    fn status_one_by_one(
        self: Arc<Self>,
        keys: Vec<TokenKey>,
        at: usize,
        batch_end: usize,
        mut all: StatusReport,
    ) -> Step<StatusReport> {
        if at >= batch_end.min(keys.len()) {
            return self.status_batches(keys, batch_end, all);
        }
        let key = keys[at].clone();
        Step::Storage(StorageCall::Load(
            key.clone(),
            Then::new(move |loaded: StorageResult<Option<Versioned<OAuthTokens>>>, now| {
                match loaded {
                    Ok(Some(record)) => {
                        all.keys.push(self.token_engine.cache().status(&key, &record.value, now))
                    }
                    Ok(None) => {}
                    Err(e) if e.is_retryable() => return done(Err(e.into())),
                    Err(e) => {
                        tracing::warn!(key = %key, error = %e, "left out of the status: its record cannot be read");
                        all.unreadable.push(key);
                    }
                }
                self.status_one_by_one(keys, at + 1, batch_end, all)
            }),
        ))
    }

    /// Refreshes every registered org, at most `concurrency` at a time, reporting progress
    /// after each; one failing never stops the others. Every org gets a result (one whose
    /// refresh never finished, an `Internal` error); results are sorted by org.
    pub fn refresh_all(
        self: &Arc<Self>,
        concurrency: usize,
        progress: Option<ProgressFn>,
    ) -> Step<Vec<OrgRefresh>> {
        let engine = self.clone();
        Step::Storage(StorageCall::ListOrgs(Then::new(move |orgs: StorageResult<Vec<OrgId>>, _| {
            let orgs = match orgs {
                Ok(orgs) => orgs,
                Err(e) => return done(Err(e.into())),
            };
            let tally = Arc::new(Mutex::new(Tally { results: Vec::with_capacity(orgs.len()), failed: 0 }));
            let total = orgs.len();
            let plans = orgs
                .iter()
                .map(|org_id| {
                    let (engine, tally, progress, org_id) =
                        (engine.clone(), tally.clone(), progress.clone(), org_id.clone());
                    Then::new(move |(), now| {
                        engine.refresh_for_org(&org_id, now).then(now, move |result, _| {
                            let report =
                                tally.lock().unwrap_or_else(|e| e.into_inner()).record(org_id, result, total);
                            if let Some(progress) = &progress {
                                progress(&report);
                            }
                            done(Ok(()))
                        })
                    })
                })
                .collect();
            Step::Concurrently(
                plans,
                concurrency.max(1),
                Then::new(move |(), _| {
                    let mut all =
                        std::mem::take(&mut tally.lock().unwrap_or_else(|e| e.into_inner()).results);
                    let finished: std::collections::HashSet<OrgId> =
                        all.iter().map(|r| r.org_id.clone()).collect();
                    for org_id in orgs.into_iter().filter(|o| !finished.contains(o)) {
                        let result =
                            Err(Error::Internal(format!("the refresh of org {org_id} did not finish")));
                        all.push(OrgRefresh { org_id, result });
                    }
                    all.sort_by(|a, b| a.org_id.cmp(&b.org_id));
                    done(Ok(all))
                }),
            )
        })))
    }
}

/// Every key's status, and the keys whose records cannot be read.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct StatusReport {
    /// The status of every key that could be read.
    pub keys: Vec<KeyStatus>,
    /// Keys whose records cannot be read (corrupt, sealed under a key not configured, written
    /// by a newer byova): an `authorized` delivery or a fetch replaces them; `byova org reseal`
    /// rewrites what the configured keys still open.
    pub unreadable: Vec<TokenKey>,
}

/// A bulk refresh's results so far.
struct Tally {
    results: Vec<OrgRefresh>,
    failed: usize,
}

impl Tally {
    fn record(&mut self, org_id: OrgId, result: Result<OAuthTokens>, total: usize) -> BulkProgress {
        let ok = result.is_ok();
        self.failed += usize::from(!ok);
        self.results.push(OrgRefresh { org_id: org_id.clone(), result });
        BulkProgress { done: self.results.len(), total, failed: self.failed, org_id, ok }
    }
}

/// A digest of a delivery's body: Webex's redelivery of it, or the same delivery to another
/// replica, has the same.
fn delivery_digest(raw_body: &[u8]) -> u64 {
    use sha2::Digest;
    let hash = sha2::Sha256::digest(raw_body);
    u64::from_le_bytes(hash[..8].try_into().unwrap_or_default())
}

/// Gets the Integration's bearer, then continues with `then`.
fn with_bearer<T: Send + 'static>(
    then: impl FnOnce(AccessToken, Timestamp) -> Step<T> + Send + 'static,
) -> Step<T> {
    Step::IntegrationToken(Then::new(move |token: Result<AccessToken>, now| match token {
        Ok(token) => then(token, now),
        Err(e) => done(Err(e)),
    }))
}
