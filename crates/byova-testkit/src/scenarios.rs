//! One scenario table that drives both flavours: every method of the Python SDK's API, the loopback listener, the
//! faults, the herds, strict rotation and canary secrets. Each flavour's tests implement
//! [`Flavour`] and [`Sdk`] (a thin adapter over its own API) and call [`run_all`].
//!
//! The scenarios talk to a fresh [`FakeWebex`] each and assert on what the fake saw (calls,
//! redeemed refresh tokens) as much as on what the SDK returned. [`lifecycle`] holds the
//! webhook lifecycle matrix, which storage crates also run against their own stores.

#[path = "lifecycle.rs"]
pub mod lifecycle;

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use byova_core::{
    AccessToken, BlockingTokenStorage, ByovaConfig, Clock, Error, InMemoryTokenStorage,
    IntegrationCredentials, KeyStatus, OAuthTokens, OrgId, RefreshToken, ServiceAppCredentials, StorageError,
    SystemClock, TokenKey, TokenState, TokenStorage, WebhookSecret,
    backend::{
        BlockingCoordinatedTokenStorage, CoordinatedTokenStorage, PendingAuthorization, SingleProcess,
        pending_key,
    },
    datasource::{DataSourceOutcome, DataSourceSpec},
    webhook::ServiceAppEventKind,
};

use crate::fake::{AuthorizeMode, Endpoint, FakeWebex, Fault};
use crate::wire;

/// A boxed, sendable future.
pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
/// Plays the browser: receives the authorization URL.
pub type Browser = Arc<dyn Fn(&str) -> io::Result<()> + Send + Sync>;
type Res<T> = Result<T, Error>;

/// What the SDK under test is built from.
#[derive(Clone)]
#[non_exhaustive]
pub struct Setup {
    /// The configuration (pointing at the fake, with fast retries).
    pub config: ByovaConfig,
    /// The Integration's credentials.
    pub integration: IntegrationCredentials,
    /// The Service App's credentials.
    pub service_app: ServiceAppCredentials,
    /// The in-memory store behind both trait objects below, for the scenarios' own checks.
    pub storage: Arc<InMemoryTokenStorage>,
    /// The storage an async flavour uses (`storage`, or `storage` seen as a six-method
    /// backend through `SingleProcess`).
    pub async_storage: Arc<dyn CoordinatedTokenStorage>,
    /// The storage a blocking flavour uses.
    pub blocking_storage: Arc<dyn BlockingCoordinatedTokenStorage>,
    /// The clock.
    pub clock: Arc<dyn Clock>,
    /// The webhook secret deliveries are verified with.
    pub webhook_secret: Option<WebhookSecret>,
    /// Whether unsigned deliveries are allowed by name (the scenarios without a secret).
    pub allow_unsigned_webhooks: bool,
}

impl std::fmt::Debug for Setup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Setup")
            .field("config", &self.config)
            .field("integration", &self.integration)
            .field("service_app", &self.service_app)
            .field("webhook_secret", &self.webhook_secret)
            .finish_non_exhaustive()
    }
}

/// A flavour's API behind one async face. Blocking flavours run each call on a blocking thread.
pub trait Sdk: Send + Sync {
    /// `IntegrationTokenManager::get_access_token`
    fn get_access_token(&self) -> BoxFut<'_, Res<AccessToken>>;
    /// `IntegrationTokenManager::refresh`
    fn refresh(&self, refresh_token: Option<String>) -> BoxFut<'_, Res<OAuthTokens>>;
    /// `IntegrationTokenManager::get_authorization_url` (default scopes)
    fn get_authorization_url(&self) -> Res<byova_core::AuthorizationUrl>;
    /// `IntegrationTokenManager::exchange_code`
    fn exchange_code(&self, code: String) -> BoxFut<'_, Res<OAuthTokens>>;
    /// `IntegrationTokenManager::exchange_code_for_state`
    fn exchange_code_for_state(&self, code: String, state: String) -> BoxFut<'_, Res<OAuthTokens>>;
    /// `IntegrationTokenManager::authorize` with an injected browser and a timeout
    fn authorize(&self, browser: Browser, timeout: Duration) -> BoxFut<'_, Res<OAuthTokens>>;
    /// `wait_for_redirect(redirect_uri, timeout, expected_state)` without opening a browser
    fn wait_for_redirect(
        &self,
        redirect_uri: String,
        state: String,
        timeout: Duration,
    ) -> BoxFut<'_, Res<(String, Option<String>)>>;
    /// `ServiceAppTokenManager::get_access_token`
    fn org_token(&self, org_id: String) -> BoxFut<'_, Res<AccessToken>>;
    /// `IntegrationTokenManager::invalidate`
    fn invalidate(&self, rejected: AccessToken) -> BoxFut<'_, Res<byova_core::Invalidation>>;
    /// `ServiceAppTokenManager::invalidate`
    fn invalidate_org(
        &self,
        org_id: String,
        rejected: AccessToken,
    ) -> BoxFut<'_, Res<byova_core::Invalidation>>;
    /// `IntegrationTokenManager::rejected_again` (`None`) or the Service App's for an org
    fn rejected_again(
        &self,
        org_id: Option<String>,
        renewed: AccessToken,
    ) -> BoxFut<'_, Res<byova_core::Invalidation>>;
    /// `ServiceAppTokenManager::fetch_token_for_org`
    fn fetch_token_for_org(&self, org_id: String) -> BoxFut<'_, Res<OAuthTokens>>;
    /// `ServiceAppTokenManager::fetch_token_from_webhook_org`
    fn fetch_token_from_webhook_org(&self, encoded: String) -> BoxFut<'_, Res<(OrgId, OAuthTokens)>>;
    /// `ServiceAppTokenManager::save_registration`
    fn save_registration(&self, org_id: String, refresh_token: String) -> BoxFut<'_, Res<OAuthTokens>>;
    /// `ServiceAppTokenManager::refresh_for_org`
    fn refresh_for_org(&self, org_id: String) -> BoxFut<'_, Res<OAuthTokens>>;
    /// `ServiceAppTokenManager::remove_org`
    fn remove_org(&self, org_id: String) -> BoxFut<'_, Res<()>>;
    /// `ServiceAppTokenManager::application_id`
    fn application_id(&self) -> String;
    /// `Byova::handle_service_app_webhook`, the outcome's `Debug` text
    fn handle_webhook(&self, body: Vec<u8>, signature: Option<String>) -> BoxFut<'_, Res<String>>;
    /// `Byova::ensure_service_app_webhooks`, how many were created
    fn ensure_webhooks(&self, target_url: String, secret: Option<WebhookSecret>) -> BoxFut<'_, Res<usize>>;
    /// `Byova::list_webhooks`, how many exist
    fn count_webhooks(&self) -> BoxFut<'_, Res<usize>>;
    /// `Byova::status`
    fn status(&self) -> BoxFut<'_, Res<Vec<KeyStatus>>>;
    /// `Byova::refresh_all_orgs`: `(org, succeeded)`
    fn refresh_all_orgs(&self, concurrency: usize) -> BoxFut<'_, Res<Vec<(OrgId, bool)>>>;
    /// `Byova::keep_data_source`, or `Byova::ensure_data_source` when `reconcile`
    fn keep_data_source(
        &self,
        org_id: String,
        spec: DataSourceSpec,
        reconcile: bool,
    ) -> BoxFut<'_, Res<DataSourceOutcome>>;
    /// `Byova::remove_data_source`
    fn remove_data_source(&self, org_id: String, spec: DataSourceSpec) -> BoxFut<'_, Res<Option<String>>>;
}

/// A flavour: builds its SDK from a [`Setup`].
pub trait Flavour: Send + Sync {
    /// `async` or `blocking`.
    fn name(&self) -> &'static str;
    /// A fresh SDK instance.
    fn build(&self, setup: &Setup) -> Arc<dyn Sdk>;
}

/// One scenario.
pub struct Scenario {
    /// Its name, as printed.
    pub name: &'static str,
    run: fn(Arc<dyn Flavour>) -> BoxFut<'static, ()>,
}

impl std::fmt::Debug for Scenario {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

const ORG: &str = "63b02f90-9cc6-43b8-aa6d-cad425ac554c";

/// An org id the scenarios name by string, as a user's configuration does.
pub(crate) fn org_id(org: &str) -> OrgId {
    OrgId::new(org).expect("a scenario's org id is valid")
}

struct World {
    fake: Arc<FakeWebex>,
    setup: Setup,
    sdk: Arc<dyn Sdk>,
}

fn fast_config(fake: &FakeWebex) -> ByovaConfig {
    let mut config = fake.config();
    config.retry.base_delay = Duration::from_millis(10);
    config.retry.max_delay = Duration::from_millis(50);
    config.coordination.poll_interval = Duration::from_millis(10);
    config.timeout = Duration::from_secs(10);
    // The fake has no rate limit unless a scenario sets one; scenarios about the budget set
    // their own.
    config.token_budget = Some(byova_core::TokenBudget::per_minute(60_000));
    config.data_source_budget = Some(byova_core::TokenBudget::per_minute(60_000));
    // Scenarios force refreshes back to back; the floor has its own scenario.
    config.refresh.forced_refresh_floor = Duration::ZERO;
    config
}

fn world(flavour: &dyn Flavour, secret: Option<&str>) -> World {
    world_with(flavour, secret, true)
}

fn world_with(flavour: &dyn Flavour, secret: Option<&str>, coordinated: bool) -> World {
    let storage = Arc::new(InMemoryTokenStorage::new());
    let (async_storage, blocking_storage): (
        Arc<dyn CoordinatedTokenStorage>,
        Arc<dyn BlockingCoordinatedTokenStorage>,
    ) = if coordinated {
        (storage.clone(), storage.clone())
    } else {
        (
            Arc::new(SingleProcess::new(SixMethodsOnly(storage.clone()))),
            Arc::new(SingleProcess::new(SixMethodsOnly(storage.clone()))),
        )
    };
    world_on(flavour, secret, storage, async_storage, blocking_storage)
}

/// A world whose fake, store and SDK all read `clock` (time moves when the scenario says).
fn world_clocked(flavour: &dyn Flavour, secret: Option<&str>, clock: Arc<crate::FakeClock>) -> World {
    let storage = Arc::new(InMemoryTokenStorage::with_clock(clock.clone()));
    let fake = Arc::new(FakeWebex::builder().clock(clock.clone()).start());
    let mut w = world_of(flavour, secret, fake, storage.clone(), storage.clone(), storage);
    w.setup.clock = clock;
    w.sdk = flavour.build(&w.setup);
    w
}

fn world_on(
    flavour: &dyn Flavour,
    secret: Option<&str>,
    storage: Arc<InMemoryTokenStorage>,
    async_storage: Arc<dyn CoordinatedTokenStorage>,
    blocking_storage: Arc<dyn BlockingCoordinatedTokenStorage>,
) -> World {
    world_of(flavour, secret, Arc::new(FakeWebex::start()), storage, async_storage, blocking_storage)
}

fn world_of(
    flavour: &dyn Flavour,
    secret: Option<&str>,
    fake: Arc<FakeWebex>,
    storage: Arc<InMemoryTokenStorage>,
    async_storage: Arc<dyn CoordinatedTokenStorage>,
    blocking_storage: Arc<dyn BlockingCoordinatedTokenStorage>,
) -> World {
    let mut integration = fake.integration_credentials();
    integration.redirect_uri = "http://127.0.0.1:0/callback".into();
    let setup = Setup {
        config: fast_config(&fake),
        integration,
        service_app: fake.service_app_credentials(),
        storage,
        async_storage,
        blocking_storage,
        clock: Arc::new(SystemClock),
        webhook_secret: secret.map(WebhookSecret::new),
        allow_unsigned_webhooks: secret.is_none(),
    };
    let sdk = flavour.build(&setup);
    World { fake, setup, sdk }
}

impl World {
    fn now(&self) -> byova_core::Timestamp {
        self.setup.clock.now()
    }

    async fn seed_expired_integration(&self) -> crate::IssuedTokens {
        let issued = self.fake.issue_integration_tokens();
        TokenStorage::set_integration_tokens(self.setup.storage.as_ref(), &issued.expired_at(self.now()))
            .await
            .unwrap();
        issued
    }

    async fn seed_fresh_integration(&self) -> crate::IssuedTokens {
        let issued = self.fake.issue_integration_tokens();
        self.setup.async_storage.set_integration_tokens(&issued.to_oauth_tokens(self.now())).await.unwrap();
        issued
    }

    async fn seed_expired_org(&self, org: &str) -> crate::IssuedTokens {
        let issued = self.fake.issue_service_app_tokens(org);
        TokenStorage::set_service_app_tokens(
            self.setup.storage.as_ref(),
            &org_id(org),
            &issued.expired_at(self.now()),
        )
        .await
        .unwrap();
        issued
    }

    async fn seed_fresh_org(&self, org: &str) -> crate::IssuedTokens {
        let issued = self.fake.issue_service_app_tokens(org);
        self.setup
            .async_storage
            .set_service_app_tokens(&org_id(org), &issued.to_oauth_tokens(self.now()))
            .await
            .unwrap();
        issued
    }

    async fn stored(&self, key: &TokenKey) -> Option<OAuthTokens> {
        self.setup.async_storage.load(key).await.unwrap().map(|v| v.value)
    }

    /// A browser that visits the URL and follows the redirect to the listener, on its own
    /// thread (as a real browser would: the flow must not wait for it).
    fn browser(&self) -> Browser {
        let fake = self.fake.clone();
        Arc::new(move |url: &str| {
            let (fake, url) = (fake.clone(), url.to_owned());
            std::thread::spawn(move || {
                if let Ok(location) = fake.browser_visit(&url) {
                    let _ = wire::send(&wire::get(&location));
                }
            });
            Ok(())
        })
    }
}

/// A store offering only the Python SDK's six methods, given to byova through
/// [`SingleProcess`]: only in-process single-flight stands between a herd and Webex.
struct SixMethodsOnly(Arc<InMemoryTokenStorage>);

#[byova_core::async_trait]
impl TokenStorage for SixMethodsOnly {
    async fn get_integration_tokens(&self) -> Result<Option<OAuthTokens>, StorageError> {
        BlockingTokenStorage::get_integration_tokens(self.0.as_ref())
    }
    async fn set_integration_tokens(&self, tokens: &OAuthTokens) -> Result<(), StorageError> {
        BlockingTokenStorage::set_integration_tokens(self.0.as_ref(), tokens)
    }
    async fn get_service_app_tokens(&self, org_id: &OrgId) -> Result<Option<OAuthTokens>, StorageError> {
        BlockingTokenStorage::get_service_app_tokens(self.0.as_ref(), org_id)
    }
    async fn set_service_app_tokens(&self, org_id: &OrgId, tokens: &OAuthTokens) -> Result<(), StorageError> {
        BlockingTokenStorage::set_service_app_tokens(self.0.as_ref(), org_id, tokens)
    }
    async fn delete_service_app_tokens(&self, org_id: &OrgId) -> Result<(), StorageError> {
        BlockingTokenStorage::delete_service_app_tokens(self.0.as_ref(), org_id)
    }
    async fn list_registered_orgs(&self) -> Result<Vec<OrgId>, StorageError> {
        BlockingTokenStorage::list_registered_orgs(self.0.as_ref())
    }
}

impl BlockingTokenStorage for SixMethodsOnly {
    fn get_integration_tokens(&self) -> Result<Option<OAuthTokens>, StorageError> {
        BlockingTokenStorage::get_integration_tokens(self.0.as_ref())
    }
    fn set_integration_tokens(&self, tokens: &OAuthTokens) -> Result<(), StorageError> {
        BlockingTokenStorage::set_integration_tokens(self.0.as_ref(), tokens)
    }
    fn get_service_app_tokens(&self, org_id: &OrgId) -> Result<Option<OAuthTokens>, StorageError> {
        BlockingTokenStorage::get_service_app_tokens(self.0.as_ref(), org_id)
    }
    fn set_service_app_tokens(&self, org_id: &OrgId, tokens: &OAuthTokens) -> Result<(), StorageError> {
        BlockingTokenStorage::set_service_app_tokens(self.0.as_ref(), org_id, tokens)
    }
    fn delete_service_app_tokens(&self, org_id: &OrgId) -> Result<(), StorageError> {
        BlockingTokenStorage::delete_service_app_tokens(self.0.as_ref(), org_id)
    }
    fn list_registered_orgs(&self) -> Result<Vec<OrgId>, StorageError> {
        BlockingTokenStorage::list_registered_orgs(self.0.as_ref())
    }
}

/// Memory storage whose next `store` panics while `armed`: a backend with a bug, hit in the
/// middle of a refresh.
struct PanicsOnce {
    inner: Arc<InMemoryTokenStorage>,
    armed: std::sync::atomic::AtomicBool,
}

impl PanicsOnce {
    fn check(&self) {
        if self.armed.swap(false, std::sync::atomic::Ordering::SeqCst) {
            panic!("the storage backend panicked (injected)");
        }
    }
}

macro_rules! panics_once_impl {
    ($(#[$attr:meta])* $trait:path, $inner:path $(, $async_kw:ident, $await:tt)?) => {
        $(#[$attr])*
        impl $trait for PanicsOnce {
            $($async_kw)? fn load(&self, key: &TokenKey) -> Result<Option<byova_core::backend::Versioned<OAuthTokens>>, StorageError> {
                <InMemoryTokenStorage as $inner>::load(&self.inner, key)$(.$await)?
            }
            $($async_kw)? fn store(&self, key: &TokenKey, t: &OAuthTokens, e: byova_core::backend::Expect) -> Result<u64, StorageError> {
                self.check();
                <InMemoryTokenStorage as $inner>::store(&self.inner, key, t, e)$(.$await)?
            }
            $($async_kw)? fn delete_org(&self, org: &OrgId, expect: byova_core::backend::Expect) -> Result<(), StorageError> {
                <InMemoryTokenStorage as $inner>::delete_org(&self.inner, org, expect)$(.$await)?
            }
            $($async_kw)? fn list_orgs(&self) -> Result<Vec<OrgId>, StorageError> {
                <InMemoryTokenStorage as $inner>::list_orgs(&self.inner)$(.$await)?
            }
            $($async_kw)? fn try_acquire_lease(&self, key: &TokenKey, ttl: Duration) -> Result<Option<byova_core::backend::Lease>, StorageError> {
                <InMemoryTokenStorage as $inner>::try_acquire_lease(&self.inner, key, ttl)$(.$await)?
            }
            $($async_kw)? fn release_lease(&self, lease: &byova_core::backend::Lease) -> Result<(), StorageError> {
                <InMemoryTokenStorage as $inner>::release_lease(&self.inner, lease)$(.$await)?
            }
            $($async_kw)? fn extend_lease(&self, lease: &byova_core::backend::Lease, ttl: Duration) -> Result<bool, StorageError> {
                <InMemoryTokenStorage as $inner>::extend_lease(&self.inner, lease, ttl)$(.$await)?
            }
        }
    };
}

panics_once_impl!(
    byova_core::backend::BlockingCoordinatedTokenStorage,
    byova_core::backend::BlockingCoordinatedTokenStorage
);
panics_once_impl!(
    #[byova_core::async_trait]
    byova_core::backend::CoordinatedTokenStorage,
    byova_core::backend::CoordinatedTokenStorage,
    async,
    await
);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}

async fn wait_until_listening(port: u16) {
    for _ in 0..500 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("the listener never came up on port {port}");
}

async fn raw(port: u16, request: String) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return "refused".into();
    };
    let _ = s.write_all(request.as_bytes()).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn status_of(response: &str) -> u16 {
    response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

fn get(port: u16, target: &str) -> String {
    format!("GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n")
}

macro_rules! scenarios {
    ($($name:ident),* $(,)?) => {
        /// Every scenario, in order.
        pub fn all() -> Vec<Scenario> {
            vec![$(Scenario { name: stringify!($name), run: |f| Box::pin($name(f)) }),*]
        }
    };
}

scenarios!(
    authorize_runs_the_browser_flow_and_stores_tokens,
    authorize_reports_a_denial_at_once,
    authorize_times_out_without_a_redirect,
    authorization_url_then_exchange_code,
    exchange_code_for_state_in_another_instance,
    get_access_token_before_authorization_is_a_typed_error,
    refresh_uses_the_stored_or_the_given_refresh_token,
    service_app_fetch_token_and_remove,
    fetch_token_from_webhook_org_decodes_the_id,
    save_registration_from_an_existing_refresh_token,
    refresh_for_org_without_a_refresh_token_fetches,
    webhooks_are_verified_applied_and_idempotent,
    an_unreadable_record_never_blocks_its_org,
    the_webhook_lifecycle_matrix_in_memory,
    a_far_future_event_time_counts_as_arrival_time,
    ensure_webhooks_creates_only_what_is_missing,
    without_a_secret_deliveries_and_registrations_are_refused_unless_allowed_by_name,
    status_and_refresh_all_orgs,
    rate_limits_honour_retry_after,
    server_errors_and_dropped_connections_are_retried,
    invalid_grant_requires_reauthorization_and_keeps_the_record,
    a_proxy_page_or_an_empty_400_never_locks_anyone_out,
    rotation_stores_the_new_refresh_token,
    refresh_keeps_old_refresh_token_when_response_omits_it,
    slow_responses_are_waited_for,
    service_app_invalid_grant_falls_back_to_the_integration_bearer,
    an_org_refresh_token_lost_in_flight_is_marked_and_never_sent_again,
    a_failing_refresh_serves_the_still_valid_token,
    herd_of_1000_on_an_expired_integration_token_makes_one_call,
    herd_of_1000_on_an_expired_org_token_makes_one_call,
    herd_on_a_seed_only_backend_relies_on_in_process_single_flight,
    a_caller_dropped_mid_refresh_loses_nothing,
    an_org_caller_dropped_mid_refresh_loses_nothing,
    ten_second_tokens_across_twenty_processes_cost_one_refresh,
    a_rejected_refresh_token_is_seen_by_every_process,
    a_thousand_callers_on_a_dead_refresh_token_make_one_call,
    a_herd_on_a_failing_token_endpoint_shares_one_retry_sequence,
    a_store_that_panics_mid_refresh_leaves_nothing_held,
    a_bulk_refresh_reports_every_org_even_when_one_panics,
    a_hundred_orgs_expiring_together_cost_one_call_each,
    a_cohort_registered_together_spreads_its_refreshes_over_the_window,
    fifty_requests_on_a_revoked_token_cost_one_refresh,
    fifty_requests_on_a_revoked_org_token_cost_one_refresh,
    a_401_no_fresh_token_cures_costs_one_refresh_in_every_process,
    a_client_that_never_reports_a_rejected_retry_stops_after_three_renewals,
    forced_refreshes_of_tokens_just_obtained_call_nobody,
    invalidating_a_replaced_token_refreshes_nothing,
    an_invalidation_reaches_another_process_through_the_store,
    two_replicas_share_one_token_budget_and_meet_no_429,
    a_429_pauses_every_replica_until_retry_after,
    two_replicas_keep_data_sources_alive_extending_each_once_per_period,
    a_lost_answer_a_deleted_data_source_and_a_429_cost_no_lapse_and_no_duplicate,
    a_deauthorization_removes_the_data_source_when_configured,
    strict_rotation_over_1000_refresh_cycles_reuses_nothing,
    canary_secrets_never_reach_logs_errors_or_debug,
    listener_refuses_everything_but_the_matching_callback,
    listener_error_with_wrong_state_keeps_waiting,
    listener_flows_do_not_interfere,
    listener_survives_idle_connections,
    listener_caps_header_size,
    listener_refuses_non_loopback_and_busy_ports,
);

/// Runs every scenario against `flavour`, printing one line each, and panics listing every
/// failure at the end. Call from a multi-threaded tokio test.
pub async fn run_all(flavour: Arc<dyn Flavour>) {
    let mut failures = Vec::new();
    for scenario in all() {
        let started = Instant::now();
        let outcome = tokio::spawn((scenario.run)(flavour.clone())).await;
        match outcome {
            Ok(()) => {
                println!("scenario {} [{}] ... ok ({:.0?})", scenario.name, flavour.name(), started.elapsed())
            }
            Err(e) => {
                let why = e
                    .try_into_panic()
                    .ok()
                    .and_then(|p| {
                        p.downcast_ref::<String>()
                            .cloned()
                            .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    })
                    .unwrap_or_else(|| "cancelled".into());
                println!("scenario {} [{}] ... FAILED: {why}", scenario.name, flavour.name());
                failures.push(format!("{}: {why}", scenario.name));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} scenario(s) failed for the {} flavour:\n  {}",
        failures.len(),
        flavour.name(),
        failures.join("\n  ")
    );
}

// ---- seed methods ----

async fn authorize_runs_the_browser_flow_and_stores_tokens(f: Arc<dyn Flavour>) {
    let w = world(f.as_ref(), None);
    let tokens = w.sdk.authorize(w.browser(), Duration::from_secs(10)).await.expect("authorize");
    assert!(w.fake.is_access_token_valid(tokens.access_token.expose_secret()));
    let stored = w.stored(&TokenKey::Integration).await.expect("stored");
    assert!(stored.access_token.ct_eq(&tokens.access_token));
    let token = w.sdk.get_access_token().await.unwrap();
    assert!(token.ct_eq(&tokens.access_token), "a fresh token is served as stored");
    assert_eq!(w.fake.calls(Endpoint::AccessToken), 1, "one code exchange, no refresh");
}

/// A denial that echoes `state` ends the flow at once. One without `state` (RFC 6749 says it
/// must be there; Webex's behaviour is not documented) could come from any web page, so it
/// ends nothing, but it is what the flow reports when its time is up.
async fn authorize_reports_a_denial_at_once(f: Arc<dyn Flavour>) {
    for (echoes_state, timeout) in [(true, Duration::from_secs(30)), (false, Duration::from_millis(1500))] {
        let w = world(f.as_ref(), None);
        w.fake.update_settings(|s| {
            s.authorize_mode = AuthorizeMode::Deny("access_denied".into());
            s.denial_echoes_state = echoes_state;
        });
        let started = Instant::now();
        let err = w.sdk.authorize(w.browser(), timeout).await.unwrap_err();
        assert!(
            matches!(&err, Error::OAuthRedirect { error } if error == "access_denied"),
            "state echoed: {echoes_state}: {err:?}"
        );
        let took = started.elapsed();
        if echoes_state {
            assert!(took < Duration::from_secs(5), "{took:?}");
        } else {
            assert!(took >= timeout, "a state-less denial does not end the flow early: {took:?}");
        }
        assert!(w.stored(&TokenKey::Integration).await.is_none());
    }
}

async fn authorize_times_out_without_a_redirect(f: Arc<dyn Flavour>) {
    let w = world(f.as_ref(), None);
    let started = Instant::now();
    let nobody: Browser = Arc::new(|_| Ok(()));
    let err = w.sdk.authorize(nobody, Duration::from_millis(400)).await.unwrap_err();
    assert!(matches!(err, Error::OAuthRedirectTimeout(_)), "{err:?}");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(400) && took < Duration::from_secs(3), "{took:?}");
}

async fn authorization_url_then_exchange_code(f: Arc<dyn Flavour>) {
    let w = world(f.as_ref(), None);
    let byova_core::AuthorizationUrl { url, state, .. } = w.sdk.get_authorization_url().unwrap();
    assert!(url.contains("code_challenge_method=S256") && url.contains(&format!("state={state}")));
    assert!(state.len() >= 22);
    // The manager's redirect URI has port 0 here; the fake accepts any loopback port.
    let code = code_of(&w.fake.browser_visit_async(&url).await.unwrap());
    let tokens = w.sdk.exchange_code(code.clone()).await.unwrap();
    assert!(w.stored(&TokenKey::Integration).await.unwrap().access_token.ct_eq(&tokens.access_token));
    let again = w.sdk.exchange_code(code).await.unwrap_err();
    assert!(matches!(again, Error::Validation(_)), "a code is single use: {again:?}");
    assert_eq!(w.fake.calls(Endpoint::AccessToken), 2, "the failed exchange was not retried");
}

fn code_of(location: &str) -> String {
    crate::wire::query_param(location, "code").unwrap_or_else(|| panic!("no code in {location}"))
}

/// The split flow of a web app: one instance builds the URL, another (sharing the store)
/// exchanges the code its callback received. Each pending authorization is used once and
/// only within ten minutes; an unknown state costs no call.
async fn exchange_code_for_state_in_another_instance(f: Arc<dyn Flavour>) {
    let w = world(f.as_ref(), None);
    let other = f.build(&w.setup);
    let byova_core::AuthorizationUrl { url, state, .. } = w.sdk.get_authorization_url().unwrap();
    let code = code_of(&w.fake.browser_visit_async(&url).await.unwrap());
    let tokens = other
        .exchange_code_for_state(code.clone(), state.clone())
        .await
        .expect("the other instance finds the verifier in the store (the fake checks PKCE)");
    assert!(w.stored(&TokenKey::Integration).await.unwrap().access_token.ct_eq(&tokens.access_token));
    let again = other.exchange_code_for_state(code, state).await.unwrap_err();
    assert!(matches!(again, Error::UnknownAuthorizationState), "used once: {again:?}");
    let unknown = other.exchange_code_for_state("c".into(), "never-issued".into()).await.unwrap_err();
    assert!(matches!(unknown, Error::UnknownAuthorizationState), "{unknown:?}");
    // Issued eleven minutes ago by some replica: expired.
    let old = PendingAuthorization::new(
        byova_core::oauth::PkceCodeVerifier::new_random(),
        w.setup.integration.redirect_uri.clone(),
        w.now().saturating_sub(Duration::from_secs(660)),
    );
    CoordinatedTokenStorage::save_pending_authorization(
        w.setup.storage.as_ref(),
        &pending_key("old-state"),
        &old,
    )
    .await
    .unwrap();
    let expired = other.exchange_code_for_state("c".into(), "old-state".into()).await.unwrap_err();
    assert!(matches!(expired, Error::UnknownAuthorizationState), "{expired:?}");
    assert_eq!(w.fake.calls(Endpoint::AccessToken), 1, "only the one real exchange reached Webex");
}

async fn get_access_token_before_authorization_is_a_typed_error(f: Arc<dyn Flavour>) {
    let w = world(f.as_ref(), None);
    assert!(matches!(w.sdk.get_access_token().await, Err(Error::NotAuthorized)));
    assert!(matches!(w.sdk.refresh(None).await, Err(Error::NotAuthorized)));
    assert!(matches!(w.sdk.org_token(ORG.into()).await, Err(Error::OrgNotRegistered { .. })));
    assert_eq!(w.fake.calls(Endpoint::AccessToken), 0);
}

async fn refresh_uses_the_stored_or_the_given_refresh_token(f: Arc<dyn Flavour>) {
    let w = world(f.as_ref(), None);
    let issued = w.seed_fresh_integration().await;
    let t1 = w.sdk.refresh(None).await.unwrap();
    assert!(!t1.access_token.ct_eq_str(&issued.access_token));
    let other = w.fake.issue_integration_tokens();
    let t2 = w.sdk.refresh(Some(other.refresh_token.clone())).await.unwrap();
    assert!(t2.refresh_token.unwrap().ct_eq_str(&other.refresh_token));
    let redeemed: Vec<String> = w.fake.redemptions().into_iter().map(|r| r.refresh_token).collect();
    assert_eq!(redeemed, [issued.refresh_token, other.refresh_token]);
    let stored = w.stored(&TokenKey::Integration).await.unwrap();
    assert!(stored.access_token.ct_eq(&t2.access_token), "refresh persists");
    assert!(w.sdk.get_access_token().await.unwrap().ct_eq(&t2.access_token));
}

async fn service_app_fetch_token_and_remove(f: Arc<dyn Flavour>) {
    let w = world(f.as_ref(), None);
    w.seed_fresh_integration().await;
    let err = w.sdk.fetch_token_for_org(ORG.into()).await.unwrap_err();
    assert!(matches!(err, Error::ServiceAppNotAuthorized { .. }), "{err:?}");
    w.fake.authorize_org(ORG);
    let t = w.sdk.fetch_token_for_org(ORG.into()).await.unwrap();
    assert_eq!(w.fake.org_of_access_token(t.access_token.expose_secret()).as_deref(), Some(ORG));
    assert!(w.sdk.org_token(ORG.into()).await.unwrap().ct_eq(&t.access_token));
    assert_eq!(w.fake.calls(Endpoint::ApplicationToken), 2);
    w.sdk.remove_org(ORG.into()).await.unwrap();
    assert!(matches!(w.sdk.org_token(ORG.into()).await, Err(Error::OrgNotRegistered { .. })));
    w.sdk.remove_org(ORG.into()).await.expect("removing twice is fine");
    let expected = byova_core::ids::derive_application_id(&w.setup.service_app.client_id);
    assert_eq!(w.sdk.application_id(), expected);
}

async fn fetch_token_from_webhook_org_decodes_the_id(f: Arc<dyn Flavour>) {
    let w = world(f.as_ref(), None);
    w.seed_fresh_integration().await;
    w.fake.authorize_org(ORG);
    let encoded = byova_core::ids::encode_webex_id("us", "ORGANIZATION", ORG);
    let (org, t) = w.sdk.fetch_token_from_webhook_org(encoded).await.unwrap();
    assert_eq!(org, ORG);
    assert!(w.stored(&TokenKey::org(&org_id(ORG))).await.unwrap().access_token.ct_eq(&t.access_token));
    assert!(matches!(w.sdk.fetch_token_from_webhook_org("%%%".into()).await, Err(Error::InvalidInput(_))));
}

async fn save_registration_from_an_existing_refresh_token(f: Arc<dyn Flavour>) {
    let w = world(f.as_ref(), None);
    let issued = w.fake.issue_service_app_tokens(ORG);
    let t = w.sdk.save_registration(ORG.into(), issued.refresh_token.clone()).await.unwrap();
    assert!(w.fake.is_access_token_valid(t.access_token.expose_secret()));
    assert!(w.stored(&TokenKey::org(&org_id(ORG))).await.is_some());
    let err = w.sdk.save_registration("another-org".into(), "not-a-token".into()).await.unwrap_err();
    assert!(matches!(err, Error::ReauthorizationRequired { .. }), "{err:?}");
    assert!(w.stored(&TokenKey::org(&org_id("another-org"))).await.is_none());
}

async fn refresh_for_org_without_a_refresh_token_fetches(f: Arc<dyn Flavour>) {
    let w = world(f.as_ref(), None);
    w.seed_fresh_integration().await;
    w.fake.authorize_org(ORG);
    let t = w.sdk.refresh_for_org(ORG.into()).await.unwrap();
    assert_eq!(w.fake.calls(Endpoint::ApplicationToken), 1);
    let t2 = w.sdk.refresh_for_org(ORG.into()).await.unwrap();
    assert_eq!(w.fake.calls(Endpoint::ApplicationToken), 1, "a stored refresh token is used next");
    assert_eq!(w.fake.refresh_calls(), 1);
    assert!(!t2.access_token.ct_eq(&t.access_token));
}

async fn webhooks_are_verified_applied_and_idempotent(f: Arc<dyn Flavour>) {
    let w = world(f.as_ref(), Some("hook-secret"));
    w.seed_fresh_integration().await;
    w.fake.authorize_org(ORG);
    let secret = WebhookSecret::new("hook-secret");
    let (body, sig) = w.fake.service_app_delivery(ServiceAppEventKind::Authorized, ORG, Some(&secret));
    let unsigned = w.sdk.handle_webhook(body.clone(), None).await.unwrap_err();
    assert!(matches!(unsigned, Error::WebhookSignature(_)), "{unsigned:?}");
    let forged = w.sdk.handle_webhook(body.clone(), Some("0".repeat(40))).await.unwrap_err();
    assert!(matches!(forged, Error::WebhookSignature(_)));
    let mut tampered = body.clone();
    tampered.push(b' ');
    assert!(w.sdk.handle_webhook(tampered, sig.clone()).await.is_err());
    assert_eq!(w.fake.calls(Endpoint::ApplicationToken), 0, "nothing happened before a valid signature");
    let outcome = w.sdk.handle_webhook(body.clone(), sig.clone()).await.unwrap();
    assert!(outcome.contains("Registered"), "{outcome}");
    assert!(w.stored(&TokenKey::org(&org_id(ORG))).await.is_some());
    let again = w.sdk.handle_webhook(body, sig).await.unwrap();
    assert!(again.contains("Registered"), "a repeat is answered by the store: {again}");
    assert_eq!(w.fake.calls(Endpoint::ApplicationToken), 1, "and costs no second fetch");
    let (body, sig) = w.fake.service_app_delivery(ServiceAppEventKind::Deauthorized, ORG, Some(&secret));
    assert!(w.sdk.handle_webhook(body, sig).await.unwrap().contains("Removed"));
    assert!(w.stored(&TokenKey::org(&org_id(ORG))).await.is_none());
    let junk = b"{\"resource\":\"messages\"}".to_vec();
    let sig = byova_core::webhook::sign(&secret, &junk);
    assert!(matches!(w.sdk.handle_webhook(junk, Some(sig)).await, Err(Error::InvalidInput(_))));
}

/// An `authorized` delivery whose event time lies far ahead of this clock (a skewed sender,
/// or a forged-then-signed body of a leaked secret) is taken as arriving now: it cannot make
/// every later `deauthorized` look older.
async fn a_far_future_event_time_counts_as_arrival_time(f: Arc<dyn Flavour>) {
    let w = world(f.as_ref(), Some("hook-secret"));
    w.seed_fresh_integration().await;
    let secret = WebhookSecret::new("hook-secret");
    w.fake.authorize_org(ORG);
    let (body, _) = w.fake.service_app_delivery(ServiceAppEventKind::Authorized, ORG, Some(&secret));
    let text = String::from_utf8(body).unwrap();
    let date =
        text.split("\"authorizationDate\":\"").nth(1).and_then(|r| r.split('"').next()).unwrap().to_owned();
    let future = text.replace(&date, "2099-01-01T00:00:00.000Z").into_bytes();
    let sig = byova_core::webhook::sign(&secret, &future);
    assert!(w.sdk.handle_webhook(future, Some(sig)).await.unwrap().contains("Registered"));
    let stored = w.stored(&TokenKey::org(&org_id(ORG))).await.unwrap();
    let at = stored.authorized_at.expect("an authorization time");
    assert!(at <= w.now().saturating_add(Duration::from_secs(1)), "taken as arrival time: {at:?}");
    w.fake.deauthorize_org(ORG);
    let (body, sig) = w.fake.service_app_delivery(ServiceAppEventKind::Deauthorized, ORG, Some(&secret));
    let outcome = w.sdk.handle_webhook(body, sig).await.unwrap();
    assert!(outcome.contains("Removed"), "the later deauthorization is not 'older': {outcome}");
    assert!(w.stored(&TokenKey::org(&org_id(ORG))).await.is_none());
}

/// Item 4 of the brief: an org whose stored record cannot be read (corrupt, written by a newer
/// byova) is registered by its next `authorized` delivery or fetch, the old record kept aside;
/// meanwhile a caller gets a typed storage error, and the status leaves it out.
async fn an_unreadable_record_never_blocks_its_org(f: Arc<dyn Flavour>) {
    let w = world(f.as_ref(), Some("hook-secret"));
    w.seed_fresh_integration().await;
    let secret = WebhookSecret::new("hook-secret");
    let newer = br#"{"schema":9,"access_token":"x","expires_in":1,"token_type":"Bearer","obtained_at_ms":1}"#;
    for (org, bytes) in [(ORG, &b"{not json"[..]), ("org-newer", &newer[..])] {
        w.setup.storage.put_raw_record(&TokenKey::org(&org_id(org)), bytes.to_vec());
        let err = w.sdk.org_token(org.into()).await.unwrap_err();
        assert!(
            matches!(&err, Error::Storage(e) if e.kind() == byova_core::StorageErrorKind::Corrupt),
            "{err:?}"
        );
    }
    let status = w.sdk.status().await.unwrap();
    assert_eq!(status.len(), 1, "only the Integration is readable: {status:?}");
    w.fake.authorize_org(ORG);
    let (body, sig) = w.fake.service_app_delivery(ServiceAppEventKind::Authorized, ORG, Some(&secret));
    let outcome = w.sdk.handle_webhook(body, sig).await.expect("the delivery is applied");
    assert!(outcome.contains("Registered"), "{outcome}");
    let token = w.sdk.org_token(ORG.into()).await.expect("registered");
    assert!(w.fake.is_access_token_valid(token.expose_secret()));
    w.fake.authorize_org("org-newer");
    w.sdk.fetch_token_for_org("org-newer".into()).await.expect("a fetch replaces it too");
    assert!(w.sdk.org_token("org-newer".into()).await.is_ok());
    let kept = w.setup.storage.state_names().iter().filter(|n| n.starts_with("unreadable-")).count();
    assert_eq!(kept, 2, "both unreadable records were kept aside");
}

async fn the_webhook_lifecycle_matrix_in_memory(f: Arc<dyn Flavour>) {
    let cells = lifecycle::run_matrix(f.clone(), lifecycle::memory()).await;
    lifecycle::print(f.name(), "memory", &cells);
}

async fn ensure_webhooks_creates_only_what_is_missing(f: Arc<dyn Flavour>) {
    let w = world(f.as_ref(), None);
    w.seed_fresh_integration().await;
    let secret = WebhookSecret::new("s");
    assert_eq!(
        w.sdk.ensure_webhooks("https://hooks.example.test/webex".into(), Some(secret.clone())).await.unwrap(),
        2
    );
    assert_eq!(
        w.sdk.ensure_webhooks("https://hooks.example.test/webex".into(), Some(secret)).await.unwrap(),
        0
    );
    assert_eq!(w.sdk.count_webhooks().await.unwrap(), 2);
    w.fake.update_settings(|s| s.max_page_size = 1);
    assert_eq!(w.sdk.count_webhooks().await.unwrap(), 2, "pagination is followed");
}

/// Rule 12: a `Byova` built without a webhook secret refuses every delivery (signed or not)
/// and creates no unsigned webhook; `allow_unsigned_webhooks` is the named way to take them.
async fn without_a_secret_deliveries_and_registrations_are_refused_unless_allowed_by_name(
    f: Arc<dyn Flavour>,
) {
    let mut w = world(f.as_ref(), None);
    w.setup.allow_unsigned_webhooks = false;
    let sdk = f.build(&w.setup);
    w.seed_fresh_integration().await;
    w.fake.authorize_org(ORG);
    let (body, _) = w.fake.service_app_delivery(ServiceAppEventKind::Authorized, ORG, None);
    let forged = byova_core::webhook::sign(&WebhookSecret::new("anything"), &body);
    for signature in [None, Some(forged)] {
        let err = sdk.handle_webhook(body.clone(), signature).await.unwrap_err();
        assert!(matches!(&err, Error::Configuration(m) if m.contains("no webhook secret")), "{err:?}");
    }
    assert!(w.stored(&TokenKey::org(&org_id(ORG))).await.is_none(), "nothing was registered");
    let err = sdk.ensure_webhooks("https://hooks.example.test/webex".into(), None).await.unwrap_err();
    assert!(matches!(&err, Error::Configuration(m) if m.contains("secret")), "{err:?}");
    assert_eq!(w.fake.calls(Endpoint::Webhooks), 0, "no webhook was created or even listed");
    // With the opt-in, the same delivery is applied and webhooks may be created unsigned.
    w.setup.allow_unsigned_webhooks = true;
    let open = f.build(&w.setup);
    open.handle_webhook(body, None).await.expect("allowed by name");
    assert!(w.stored(&TokenKey::org(&org_id(ORG))).await.is_some());
    assert_eq!(open.ensure_webhooks("https://hooks.example.test/webex".into(), None).await.unwrap(), 2);
}

async fn status_and_refresh_all_orgs(f: Arc<dyn Flavour>) {
    let w = world(f.as_ref(), None);
    w.seed_fresh_integration().await;
    let orgs = ["org-a", "org-b", "org-c"];
    for org in orgs {
        w.seed_expired_org(org).await;
    }
    let status = w.sdk.status().await.unwrap();
    assert_eq!(status.len(), 4);
    assert_eq!(status[0].key, TokenKey::Integration);
    assert_eq!(status[0].state, TokenState::Valid);
    assert!(status[1..].iter().all(|s| s.state == TokenState::Expired));
    let results = w.sdk.refresh_all_orgs(2).await.unwrap();
    assert_eq!(results, orgs.iter().map(|o| (org_id(o), true)).collect::<Vec<_>>());
    assert!(w.sdk.status().await.unwrap().iter().all(|s| s.state == TokenState::Valid));
    assert_eq!(w.fake.refresh_calls(), 3);
}

// ---- faults ----

async fn rate_limits_honour_retry_after(f: Arc<dyn Flavour>) {
    let w = world(f.as_ref(), None);
    w.seed_expired_integration().await;
    w.fake.inject(Endpoint::AccessToken, Fault::rate_limited(1));
    let started = Instant::now();
    w.sdk.get_access_token().await.unwrap();
    assert!(started.elapsed() >= Duration::from_secs(1), "Retry-After was not honoured");
    assert_eq!(w.fake.calls(Endpoint::AccessToken), 2);
}

async fn server_errors_and_dropped_connections_are_retried(f: Arc<dyn Flavour>) {
    let w = world(f.as_ref(), None);
    let issued = w.seed_expired_integration().await;
    w.fake.inject(Endpoint::AccessToken, Fault::status(503));
    w.fake.inject(Endpoint::AccessToken, Fault::Drop);
    w.fake.inject(Endpoint::AccessToken, Fault::status(502));
    let token = w.sdk.get_access_token().await.unwrap();
    assert!(w.fake.is_access_token_valid(token.expose_secret()));
    assert_eq!(w.fake.calls(Endpoint::AccessToken), 4);
    assert!(w.fake.redemptions().iter().all(|r| r.refresh_token == issued.refresh_token));
}

async fn invalid_grant_requires_reauthorization_and_keeps_the_record(f: Arc<dyn Flavour>) {
    let w = world(f.as_ref(), None);
    let issued = w.seed_expired_integration().await;
    w.fake.inject_always(Endpoint::AccessToken, Fault::InvalidGrant);
    let err = w.sdk.get_access_token().await.unwrap_err();
    assert!(matches!(err, Error::ReauthorizationRequired { .. }), "{err:?}");
    assert_eq!(w.fake.calls(Endpoint::AccessToken), 1, "invalid_grant is final, not retried");
    let stored = w.stored(&TokenKey::Integration).await.expect("the record is kept");
    assert!(stored.refresh_token.unwrap().ct_eq_str(&issued.refresh_token));
    let status = w.sdk.status().await.unwrap();
    assert_eq!(status[0].state, TokenState::ReauthorizationRequired);
}

/// Rule 10: a 400 that is not Webex's JSON naming the grant (a proxy's or firewall's HTML
/// page, an empty body) is retried and then reported as retryable; the record is never marked,
/// a still-valid token goes on being served, and once the path is clear the next call refreshes.
async fn a_proxy_page_or_an_empty_400_never_locks_anyone_out(f: Arc<dyn Flavour>) {
    for fault in [Fault::proxy_page(400), Fault::empty(400), Fault::proxy_page(401)] {
        let w = world(f.as_ref(), None);
        let issued = w.seed_expired_integration().await;
        let org_issued = w.seed_expired_org(ORG).await;
        w.fake.inject_always(Endpoint::AccessToken, fault.clone());
        let err = w.sdk.get_access_token().await.unwrap_err();
        assert!(matches!(err, Error::UnrecognizedAnswer(_)) && err.is_retryable(), "{fault:?}: {err:?}");
        assert!(!err.to_string().contains("invalid_grant"), "no invalid_grant is claimed: {err}");
        let err = w.sdk.org_token(ORG.into()).await.unwrap_err();
        assert!(err.is_retryable(), "{fault:?}: {err:?}");
        for (key, issued) in [(TokenKey::Integration, &issued), (TokenKey::org(&org_id(ORG)), &org_issued)] {
            let stored = w.stored(&key).await.expect("kept");
            assert!(!stored.reauthorization_required, "{fault:?}: {key} must not be marked");
            assert!(stored.refresh_token.unwrap().ct_eq_str(&issued.refresh_token));
        }
        let states: Vec<TokenState> = w.sdk.status().await.unwrap().iter().map(|s| s.state).collect();
        assert!(!states.contains(&TokenState::ReauthorizationRequired), "{fault:?}: {states:?}");
        assert_eq!(w.fake.calls(Endpoint::ApplicationToken), 0, "no fallback fetch: nothing was refused");
        w.fake.clear_faults();
        let token = w.sdk.get_access_token().await.expect("a healthy path refreshes at once");
        assert!(w.fake.is_access_token_valid(token.expose_secret()));
        let token = w.sdk.org_token(ORG.into()).await.expect("the org too");
        assert!(w.fake.is_access_token_valid(token.expose_secret()));
    }
    // A token that is still valid (in its refresh window) goes on being served behind the proxy.
    let w = world(f.as_ref(), None);
    let issued = w.fake.issue_integration_tokens();
    let lifetime = Duration::from_secs(issued.expires_in);
    let in_window = issued.to_oauth_tokens(w.now().saturating_sub(lifetime.mul_f64(0.85)));
    w.setup.async_storage.set_integration_tokens(&in_window).await.unwrap();
    w.fake.inject_always(Endpoint::AccessToken, Fault::proxy_page(400));
    let token = w.sdk.get_access_token().await.expect("the still-valid token is served");
    assert!(token.ct_eq_str(&issued.access_token));
    assert!(!w.stored(&TokenKey::Integration).await.unwrap().reauthorization_required);
}

async fn rotation_stores_the_new_refresh_token(f: Arc<dyn Flavour>) {
    let w = world(f.as_ref(), None);
    w.fake.update_settings(|s| {
        s.rotate_refresh_tokens = true;
        s.strict_rotation = true;
    });
    let issued = w.seed_expired_integration().await;
    w.sdk.get_access_token().await.unwrap();
    let stored = w.stored(&TokenKey::Integration).await.unwrap();
    let rotated = stored.refresh_token.unwrap();
    assert!(!rotated.ct_eq_str(&issued.refresh_token));
    w.sdk.refresh(None).await.unwrap();
    let log = w.fake.redemptions();
    assert_eq!(log.len(), 2);
    assert_eq!(log[1].refresh_token, rotated.expose_secret());
    assert_eq!(w.fake.reused_refresh_tokens(), 0);
}

async fn refresh_keeps_old_refresh_token_when_response_omits_it(f: Arc<dyn Flavour>) {
    let w = world(f.as_ref(), None);
    w.fake.update_settings(|s| s.omit_refresh_token = true);
    let issued = w.seed_expired_integration().await;
    let before = w.stored(&TokenKey::Integration).await.unwrap();
    w.sdk.get_access_token().await.unwrap();
    let after = w.stored(&TokenKey::Integration).await.unwrap();
    assert!(after.refresh_token.as_ref().unwrap().ct_eq_str(&issued.refresh_token));
    // The kept token keeps its expiry (to the second, rounded down: never later than real).
    let (kept, was) = (after.refresh_token_expires_at().unwrap(), before.refresh_token_expires_at().unwrap());
    assert!(
        kept <= was && was.saturating_duration_since(kept) < Duration::from_secs(1),
        "{kept:?} vs {was:?}"
    );
}

async fn slow_responses_are_waited_for(f: Arc<dyn Flavour>) {
    let w = world(f.as_ref(), None);
    w.seed_expired_integration().await;
    w.fake.set_latency(Endpoint::AccessToken, Duration::from_millis(300));
    let started = Instant::now();
    w.sdk.get_access_token().await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(w.fake.calls(Endpoint::AccessToken), 1);
}

async fn service_app_invalid_grant_falls_back_to_the_integration_bearer(f: Arc<dyn Flavour>) {
    let w = world(f.as_ref(), None);
    w.seed_fresh_integration().await;
    w.seed_expired_org(ORG).await;
    w.fake.inject(Endpoint::AccessToken, Fault::InvalidGrant);
    let token = w.sdk.org_token(ORG.into()).await.unwrap();
    assert_eq!(w.fake.org_of_access_token(token.expose_secret()).as_deref(), Some(ORG));
    assert_eq!(w.fake.calls(Endpoint::ApplicationToken), 1);
}

/// Rule 10 and item 10 of the brief: a refresh whose answer never arrives (the process died,
/// the connection dropped after Webex rotated the token) leaves a spent refresh token in the
/// store. Webex's rejection of it is remembered in the record even when no fetch can stand in
/// for it (no Integration authorized): no call sends it again, the status says what to do, and
/// once the Integration is authorized the org is fetched anew without anyone noticing.
async fn an_org_refresh_token_lost_in_flight_is_marked_and_never_sent_again(f: Arc<dyn Flavour>) {
    let w = world(f.as_ref(), None);
    w.fake.update_settings(|s| {
        s.rotate_refresh_tokens = true;
        s.strict_rotation = true;
    });
    let issued = w.seed_expired_org(ORG).await;
    w.fake.authorize_org(ORG);
    w.fake.inject(Endpoint::AccessToken, Fault::DropAfterProcessing);
    let err = w.sdk.org_token(ORG.into()).await.unwrap_err();
    assert!(
        matches!(&err, Error::ReauthorizationRequired { subject: byova_core::TokenSubject::Org(o), .. } if o == ORG),
        "{err:?}"
    );
    let stored = w.stored(&TokenKey::org(&org_id(ORG))).await.expect("the record is kept");
    assert!(stored.reauthorization_required, "the rejection is remembered in the store");
    let rejection = stored.rejection.expect("with what Webex answered");
    assert!(rejection.tracking_id.is_some(), "{rejection:?}");
    let sent = |t: &str| w.fake.redemptions().iter().filter(|r| r.refresh_token == t).count();
    assert_eq!(sent(&issued.refresh_token), 2, "the lost call and the one Webex refused");
    let other = f.build(&w.setup);
    for sdk in [&w.sdk, &other] {
        for _ in 0..10 {
            let err = sdk.org_token(ORG.into()).await.unwrap_err();
            assert!(matches!(err, Error::ReauthorizationRequired { .. }), "{err:?}");
        }
    }
    assert_eq!(sent(&issued.refresh_token), 2, "no process sends the spent token again");
    assert_eq!(w.fake.reused_refresh_tokens(), 1);
    let status = w.sdk.status().await.unwrap();
    let org = status.iter().find(|s| s.key == TokenKey::org(&org_id(ORG))).unwrap();
    assert!(org.refresh_token_rejected, "{org:?}");
    // The Integration is authorized: the org is fetched anew on its next use.
    w.seed_fresh_integration().await;
    let token = w.sdk.org_token(ORG.into()).await.expect("fetched with the Integration's bearer");
    assert!(w.fake.is_access_token_valid(token.expose_secret()));
    assert_eq!(w.fake.calls(Endpoint::ApplicationToken), 1);
    let stored = w.stored(&TokenKey::org(&org_id(ORG))).await.unwrap();
    assert!(
        !stored.reauthorization_required && stored.rejection.is_none(),
        "a successful fetch clears the mark"
    );
    let status = w.sdk.status().await.unwrap();
    assert!(status.iter().all(|s| !s.refresh_token_rejected), "{status:?}");
    assert_eq!(sent(&issued.refresh_token), 2);
}

async fn a_failing_refresh_serves_the_still_valid_token(f: Arc<dyn Flavour>) {
    let w = world(f.as_ref(), None);
    let issued = w.fake.issue_integration_tokens();
    // 90 % of the lifetime gone: due for refresh-ahead, not expired.
    let obtained = w.now().saturating_sub(Duration::from_secs(issued.expires_in * 9 / 10));
    TokenStorage::set_integration_tokens(w.setup.storage.as_ref(), &issued.to_oauth_tokens(obtained))
        .await
        .unwrap();
    w.fake.inject_always(Endpoint::AccessToken, Fault::status(500));
    let token = w.sdk.get_access_token().await.unwrap();
    assert!(token.ct_eq_str(&issued.access_token));
    let stored = w.stored(&TokenKey::Integration).await.unwrap();
    assert!(stored.refresh_token.unwrap().ct_eq_str(&issued.refresh_token), "nothing was dropped");
}

// ---- herds ----

async fn herd(sdk: &Arc<dyn Sdk>, callers: usize, org: Option<&str>) -> Vec<AccessToken> {
    let mut tasks = Vec::new();
    for _ in 0..callers {
        let sdk = sdk.clone();
        let org = org.map(str::to_owned);
        tasks.push(tokio::spawn(async move {
            match org {
                Some(org) => sdk.org_token(org).await,
                None => sdk.get_access_token().await,
            }
        }));
    }
    let mut tokens = Vec::new();
    for t in tasks {
        tokens.push(t.await.expect("caller task").expect("every caller gets a token"));
    }
    tokens
}

async fn herd_of_1000_on_an_expired_integration_token_makes_one_call(f: Arc<dyn Flavour>) {
    let w = world(f.as_ref(), None);
    w.seed_expired_integration().await;
    w.fake.set_latency(Endpoint::AccessToken, Duration::from_millis(50));
    let tokens = herd(&w.sdk, 1000, None).await;
    assert_eq!(w.fake.calls(Endpoint::AccessToken), 1);
    assert!(tokens.iter().all(|t| t.ct_eq(&tokens[0])), "all callers got the same token");
}

async fn herd_of_1000_on_an_expired_org_token_makes_one_call(f: Arc<dyn Flavour>) {
    let w = world(f.as_ref(), None);
    w.seed_fresh_integration().await;
    w.seed_expired_org(ORG).await;
    w.fake.set_latency(Endpoint::AccessToken, Duration::from_millis(50));
    let tokens = herd(&w.sdk, 1000, Some(ORG)).await;
    assert_eq!(w.fake.calls(Endpoint::AccessToken), 1);
    assert_eq!(w.fake.calls(Endpoint::ApplicationToken), 0);
    assert!(tokens.iter().all(|t| t.ct_eq(&tokens[0])));
}

async fn herd_on_a_seed_only_backend_relies_on_in_process_single_flight(f: Arc<dyn Flavour>) {
    let w = world_with(f.as_ref(), None, false);
    w.seed_expired_integration().await;
    w.fake.set_latency(Endpoint::AccessToken, Duration::from_millis(50));
    let tokens = herd(&w.sdk, 500, None).await;
    assert_eq!(w.fake.calls(Endpoint::AccessToken), 1);
    assert!(tokens.iter().all(|t| t.ct_eq(&tokens[0])));
}

/// The next call after a caller was dropped mid-refresh: against strict rotation and a token
/// endpoint that redeems at once but answers 2 s later, the dropped caller's refresh still
/// finishes and stores its tokens, the next caller gets them within 1 s of that, and no
/// refresh token is ever presented twice.
async fn dropped_caller_case(f: Arc<dyn Flavour>, org: Option<&str>) {
    let w = world(f.as_ref(), None);
    w.fake.update_settings(|s| {
        s.rotate_refresh_tokens = true;
        s.strict_rotation = true;
    });
    match org {
        None => drop(w.seed_expired_integration().await),
        Some(org) => {
            w.seed_fresh_integration().await;
            w.seed_expired_org(org).await;
        }
    }
    let answer = Duration::from_secs(2);
    w.fake.set_answer_latency(Endpoint::AccessToken, answer);
    let call = |sdk: Arc<dyn Sdk>| async move {
        match org {
            None => sdk.get_access_token().await,
            Some(org) => sdk.org_token(org.to_owned()).await,
        }
    };
    let started = Instant::now();
    let dropped = tokio::time::timeout(Duration::from_millis(300), call(w.sdk.clone())).await;
    assert!(dropped.is_err(), "the first caller gave up after 300 ms");
    let token = call(w.sdk.clone()).await.expect("the next call succeeds");
    let took = started.elapsed();
    assert!(took < answer + Duration::from_secs(1), "next call answered {took:?} after the drop");
    assert!(w.fake.is_access_token_valid(token.expose_secret()));
    assert_eq!(w.fake.refresh_calls(), 1, "one refresh for both callers");
    w.fake.set_answer_latency(Endpoint::AccessToken, Duration::ZERO);
    let key = match org {
        None => TokenKey::Integration,
        Some(org) => TokenKey::org(&org_id(org)),
    };
    let stored = w.stored(&key).await.expect("stored");
    assert!(stored.access_token.ct_eq(&token), "the dropped caller's refresh was stored");
    // The rotated refresh token is the one stored: it works, and nothing was reused.
    match org {
        None => drop(w.sdk.refresh(None).await.expect("the stored refresh token works")),
        Some(org) => {
            drop(w.sdk.refresh_for_org(org.to_owned()).await.expect("the stored refresh token works"))
        }
    }
    assert_eq!(w.fake.reused_refresh_tokens(), 0);
}

async fn a_caller_dropped_mid_refresh_loses_nothing(f: Arc<dyn Flavour>) {
    dropped_caller_case(f, None).await;
}

async fn an_org_caller_dropped_mid_refresh_loses_nothing(f: Arc<dyn Flavour>) {
    dropped_caller_case(f, Some(ORG)).await;
}

async fn ten_second_tokens_across_twenty_processes_cost_one_refresh(f: Arc<dyn Flavour>) {
    let w = world(f.as_ref(), None);
    w.fake.update_settings(|s| s.expires_in = 10);
    w.seed_expired_integration().await;
    w.fake.set_latency(Endpoint::AccessToken, Duration::from_millis(100));
    // Twenty SDK instances on one store: each has its own cache and flights, as a process does.
    let processes: Vec<Arc<dyn Sdk>> = (0..20).map(|_| f.build(&w.setup)).collect();
    let started = Instant::now();
    let mut calls = Vec::new();
    for sdk in &processes {
        for _ in 0..5 {
            let sdk = sdk.clone();
            calls.push(tokio::spawn(async move { sdk.get_access_token().await }));
        }
    }
    let mut tokens = Vec::new();
    for call in calls {
        tokens.push(call.await.expect("caller").expect("every caller gets a token"));
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(2), "all 100 callers done in {took:?}");
    assert_eq!(w.fake.refresh_calls(), 1, "one refresh for twenty processes");
    assert!(tokens.iter().all(|t| t.ct_eq(&tokens[0])));
    // A 10 s token is usable: asked again at once, nobody refreshes.
    for sdk in &processes {
        assert!(sdk.get_access_token().await.unwrap().ct_eq(&tokens[0]));
    }
    assert_eq!(w.fake.refresh_calls(), 1);
}

async fn a_rejected_refresh_token_is_seen_by_every_process(f: Arc<dyn Flavour>) {
    let w = world(f.as_ref(), None);
    w.seed_expired_integration().await;
    w.fake.inject_always(Endpoint::AccessToken, Fault::InvalidGrant);
    let err = w.sdk.get_access_token().await.unwrap_err();
    assert!(matches!(err, Error::ReauthorizationRequired { .. }), "{err:?}");
    assert_eq!(w.fake.calls(Endpoint::AccessToken), 1);
    let other = f.build(&w.setup);
    let status = other.status().await.unwrap();
    assert_eq!(status[0].state, TokenState::ReauthorizationRequired, "another process sees the stored mark");
    for _ in 0..3 {
        let err = other.get_access_token().await.unwrap_err();
        assert!(matches!(err, Error::ReauthorizationRequired { .. }), "{err:?}");
        let err = other.refresh(None).await.unwrap_err();
        assert!(matches!(err, Error::ReauthorizationRequired { .. }), "{err:?}");
    }
    assert_eq!(w.fake.calls(Endpoint::AccessToken), 1, "nobody spends the rejected token again");
    // New tokens (here an explicit refresh token) clear the mark.
    w.fake.clear_faults();
    let fresh = w.fake.issue_integration_tokens();
    other.refresh(Some(fresh.refresh_token)).await.expect("new tokens are accepted");
    assert_eq!(w.sdk.status().await.unwrap()[0].state, TokenState::Valid);
}

async fn a_thousand_callers_on_a_dead_refresh_token_make_one_call(f: Arc<dyn Flavour>) {
    let w = world(f.as_ref(), None);
    w.fake.update_settings(|s| {
        s.rotate_refresh_tokens = true;
        s.strict_rotation = true;
    });
    let issued = w.seed_expired_integration().await;
    // The stored refresh token is spent elsewhere; the fake no longer accepts it.
    let creds = &w.setup.integration;
    let status = w
        .fake
        .redeem_refresh_token(&creds.client_id, creds.client_secret.expose_secret(), &issued.refresh_token)
        .await
        .unwrap();
    assert_eq!(status, 200);
    w.fake.reset_counters();
    w.fake.set_latency(Endpoint::AccessToken, Duration::from_millis(50));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..1000 {
        let sdk = w.sdk.clone();
        tasks.push(tokio::spawn(async move { (sdk.get_access_token().await, Instant::now()) }));
    }
    for task in tasks {
        let (result, at) = task.await.unwrap();
        assert!(matches!(result, Err(Error::ReauthorizationRequired { .. })), "{result:?}");
        assert!(
            at.duration_since(started) < Duration::from_secs(1),
            "every caller has its answer within 1 s"
        );
    }
    assert_eq!(w.fake.calls(Endpoint::AccessToken), 1, "one token-endpoint call for the whole herd");
}

async fn a_herd_on_a_failing_token_endpoint_shares_one_retry_sequence(f: Arc<dyn Flavour>) {
    let w = world(f.as_ref(), None);
    w.seed_expired_integration().await;
    w.fake.inject_always(Endpoint::AccessToken, Fault::status(503));
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let sdk = w.sdk.clone();
        tasks.push(tokio::spawn(async move { sdk.get_access_token().await }));
    }
    for task in tasks {
        let result = task.await.unwrap();
        assert!(matches!(result, Err(Error::Server(_))), "{result:?}");
    }
    let attempts = u64::from(w.setup.config.retry.max_attempts);
    assert_eq!(w.fake.calls(Endpoint::AccessToken), attempts, "one retry sequence, not one per caller");
    // The record is untouched: a 503 never costs a token.
    assert!(w.stored(&TokenKey::Integration).await.unwrap().refresh_token.is_some());
}

async fn a_store_that_panics_mid_refresh_leaves_nothing_held(f: Arc<dyn Flavour>) {
    let storage = Arc::new(InMemoryTokenStorage::new());
    let panics = Arc::new(PanicsOnce { inner: storage.clone(), armed: false.into() });
    let w = world_on(f.as_ref(), None, storage, panics.clone(), panics.clone());
    w.seed_expired_integration().await;
    panics.armed.store(true, std::sync::atomic::Ordering::SeqCst);
    w.fake.set_latency(Endpoint::AccessToken, Duration::from_millis(50));
    let mut waiters = Vec::new();
    for _ in 0..20 {
        let sdk = w.sdk.clone();
        waiters.push(tokio::spawn(async move { sdk.get_access_token().await }));
    }
    for waiter in waiters {
        // The caller whose thread ran the refresh may panic (blocking); every other one gets an
        // error promptly instead of waiting forever.
        if let Ok(result) =
            tokio::time::timeout(Duration::from_secs(5), waiter).await.expect("no caller hangs")
        {
            assert!(result.is_err(), "the refresh never finished: {result:?}");
        }
    }
    let started = Instant::now();
    let token = w.sdk.get_access_token().await.expect("the next call refreshes");
    assert!(started.elapsed() < Duration::from_secs(2), "no lease left held for its whole TTL");
    assert!(w.fake.is_access_token_valid(token.expose_secret()));
}

async fn a_bulk_refresh_reports_every_org_even_when_one_panics(f: Arc<dyn Flavour>) {
    let storage = Arc::new(InMemoryTokenStorage::new());
    let panics = Arc::new(PanicsOnce { inner: storage.clone(), armed: false.into() });
    let w = world_on(f.as_ref(), None, storage, panics.clone(), panics.clone());
    w.seed_fresh_integration().await;
    let orgs: Vec<String> = (0..5).map(|i| format!("bulk-org-{i}")).collect();
    for org in &orgs {
        w.seed_expired_org(org).await;
    }
    panics.armed.store(true, std::sync::atomic::Ordering::SeqCst);
    for concurrency in [1, 3] {
        let results = w.sdk.refresh_all_orgs(concurrency).await.expect("the bulk refresh itself succeeds");
        let named: Vec<&str> = results.iter().map(|(org, _)| org.as_str()).collect();
        assert_eq!(named, orgs.iter().map(String::as_str).collect::<Vec<_>>(), "every org has a result");
        let failed = results.iter().filter(|(_, ok)| !ok).count();
        assert_eq!(failed, usize::from(concurrency == 1), "only the org whose store call panicked failed");
    }
}

async fn a_hundred_orgs_expiring_together_cost_one_call_each(f: Arc<dyn Flavour>) {
    let w = world(f.as_ref(), None);
    w.seed_fresh_integration().await;
    let orgs: Vec<String> = (0..100).map(|i| format!("org-{i:03}")).collect();
    for org in &orgs {
        w.seed_expired_org(org).await;
    }
    let mut tasks = Vec::new();
    for org in orgs.iter().cycle().take(500) {
        let (sdk, org) = (w.sdk.clone(), org.clone());
        tasks.push(tokio::spawn(async move { (org.clone(), sdk.org_token(org).await) }));
    }
    for t in tasks {
        let (org, token) = t.await.unwrap();
        let token = token.unwrap();
        assert_eq!(
            w.fake.org_of_access_token(token.expose_secret()).as_deref(),
            Some(org.as_str()),
            "an org got another org's token"
        );
    }
    assert_eq!(w.fake.calls(Endpoint::AccessToken), 100);
}

/// `GET /v1/people/me` at the fake with `token`: the status Webex answers.
async fn call_webex(fake: &Arc<FakeWebex>, token: &AccessToken) -> u16 {
    let url = format!("{}/people/me", fake.base_url());
    let auth = format!("Bearer {}", token.expose_secret());
    tokio::task::spawn_blocking(move || {
        wire::send(&wire::request(
            byova_core::engine::Method::Get,
            &url,
            Vec::new(),
            &[("Authorization", auth.as_str())],
        ))
        .map_or(0, |r| r.status)
    })
    .await
    .unwrap_or(0)
}

/// What a client does with a 401: invalidate the token it sent, get a fresh one, retry once.
async fn request_with_retry(sdk: Arc<dyn Sdk>, fake: Arc<FakeWebex>, org: Option<String>) -> u16 {
    let token = |sdk: Arc<dyn Sdk>, org: Option<String>| async move {
        match org {
            Some(org) => sdk.org_token(org).await,
            None => sdk.get_access_token().await,
        }
    };
    let first = token(sdk.clone(), org.clone()).await.expect("a token");
    let status = call_webex(&fake, &first).await;
    if status != 401 {
        return status;
    }
    let invalidated = match &org {
        Some(org) => sdk.invalidate_org(org.clone(), first).await.expect("invalidate"),
        None => sdk.invalidate(first).await.expect("invalidate"),
    };
    assert_eq!(invalidated, byova_core::Invalidation::Renew, "a revoked ordinary token renews");
    let second = token(sdk, org).await.expect("a fresh token");
    call_webex(&fake, &second).await
}

/// The Integration's token is revoked early; 50 concurrent requests meet the 401, invalidate
/// it, and retry: one refresh, every retry succeeds.
async fn fifty_requests_on_a_revoked_token_cost_one_refresh(f: Arc<dyn Flavour>) {
    let w = world(f.as_ref(), None);
    w.seed_fresh_integration().await;
    let revoked = w.sdk.get_access_token().await.unwrap();
    assert_eq!(call_webex(&w.fake, &revoked).await, 200);
    assert!(w.fake.revoke_access_token(revoked.expose_secret()));
    let tasks: Vec<_> =
        (0..50).map(|_| tokio::spawn(request_with_retry(w.sdk.clone(), w.fake.clone(), None))).collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200, "the retried request succeeds");
    }
    assert_eq!(w.fake.refresh_calls(), 1, "one refresh for fifty 401s");
    let requests = w.fake.calls(Endpoint::PeopleMe);
    // A probe, fifty requests, and a retry for each that met the revoked token (the later
    // ones may already get the new one).
    assert!((52..=101).contains(&requests), "{requests} requests to Webex");
}

/// The same for an org's Service App token.
async fn fifty_requests_on_a_revoked_org_token_cost_one_refresh(f: Arc<dyn Flavour>) {
    let w = world(f.as_ref(), None);
    w.seed_fresh_integration().await;
    let issued = w.fake.issue_service_app_tokens(ORG);
    w.setup
        .async_storage
        .set_service_app_tokens(&org_id(ORG), &issued.to_oauth_tokens(w.now()))
        .await
        .unwrap();
    let revoked = w.sdk.org_token(ORG.into()).await.unwrap();
    assert!(w.fake.revoke_access_token(revoked.expose_secret()));
    let tasks: Vec<_> = (0..50)
        .map(|_| tokio::spawn(request_with_retry(w.sdk.clone(), w.fake.clone(), Some(ORG.into()))))
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200, "the retried request succeeds");
    }
    let calls = w.fake.calls(Endpoint::AccessToken) + w.fake.calls(Endpoint::ApplicationToken);
    assert_eq!(calls, 1, "one refresh for fifty 401s");
}

/// GET `path` of the fake's API with `token`; the status.
async fn call_webex_at(fake: &Arc<FakeWebex>, path: &str, token: &AccessToken) -> u16 {
    let url = format!("{}/{path}", fake.base_url());
    let auth = format!("Bearer {}", token.expose_secret());
    tokio::task::spawn_blocking(move || {
        wire::send(&wire::request(
            byova_core::engine::Method::Get,
            &url,
            Vec::new(),
            &[("Authorization", auth.as_str())],
        ))
        .map_or(0, |r| r.status)
    })
    .await
    .unwrap_or(0)
}

/// Rule 11 through the managers, for the Integration and an org: a 401 renews once; when the
/// retry with the renewed token is refused too (`rejected_again`), later 401s on that token
/// are `NotAboutTheToken` and renew nothing, in this process and in another sharing the store;
/// with the cool-down off, every 401 renews as before.
async fn a_401_no_fresh_token_cures_costs_one_refresh_in_every_process(f: Arc<dyn Flavour>) {
    use byova_core::Invalidation;
    for org in [None, Some(ORG.to_owned())] {
        let w = world(f.as_ref(), None);
        w.seed_fresh_integration().await;
        if org.is_some() {
            let issued = w.fake.issue_service_app_tokens(ORG);
            w.setup
                .async_storage
                .set_service_app_tokens(&org_id(ORG), &issued.to_oauth_tokens(w.now()))
                .await
                .unwrap();
        }
        let token = |sdk: Arc<dyn Sdk>| {
            let org = org.clone();
            async move {
                match org {
                    Some(org) => sdk.org_token(org).await.unwrap(),
                    None => sdk.get_access_token().await.unwrap(),
                }
            }
        };
        let invalidate = |sdk: Arc<dyn Sdk>, t: AccessToken| {
            let org = org.clone();
            async move {
                match org {
                    Some(org) => sdk.invalidate_org(org, t).await.unwrap(),
                    None => sdk.invalidate(t).await.unwrap(),
                }
            }
        };
        let calls = || w.fake.refresh_calls() as u64 + w.fake.calls(Endpoint::ApplicationToken);
        let first = token(w.sdk.clone()).await;
        assert_eq!(call_webex_at(&w.fake, "devices", &first).await, 401);
        assert_eq!(invalidate(w.sdk.clone(), first.clone()).await, Invalidation::Renew, "{org:?}");
        let renewed = token(w.sdk.clone()).await;
        assert!(!renewed.ct_eq(&first));
        assert_eq!(call_webex_at(&w.fake, "devices", &renewed).await, 401, "not about the token");
        let answer = w.sdk.rejected_again(org.clone(), renewed.clone()).await.unwrap();
        assert!(matches!(answer, Invalidation::NotAboutTheToken { .. }), "{org:?}: {answer:?}");
        for _ in 0..100 {
            let answer = invalidate(w.sdk.clone(), renewed.clone()).await;
            assert!(matches!(answer, Invalidation::NotAboutTheToken { .. }), "{org:?}: {answer:?}");
            assert!(token(w.sdk.clone()).await.ct_eq(&renewed), "the token is still served");
        }
        let other = f.build(&w.setup);
        let answer = invalidate(other.clone(), renewed.clone()).await;
        assert!(matches!(answer, Invalidation::NotAboutTheToken { .. }), "{org:?}: the cool-down is stored");
        assert_eq!(calls(), 1, "{org:?}: one refresh for every 401");
        assert_eq!(
            call_webex_at(&w.fake, "people/me", &renewed).await,
            200,
            "it works where its scopes reach"
        );
        // With the cool-down off, each 401 renews (the old behaviour, by choice).
        let mut off = w.setup.clone();
        off.config.refresh.rejection_cooldown = Duration::ZERO;
        let open = f.build(&off);
        let served = token(open.clone()).await;
        assert_eq!(open.rejected_again(org.clone(), served.clone()).await.unwrap(), Invalidation::Renew);
        assert_eq!(invalidate(open.clone(), served.clone()).await, Invalidation::Renew);
        assert!(!token(open).await.ct_eq(&served));
        assert_eq!(calls(), 2);
    }
}

/// A client that calls only `invalidate` on a resource that always answers 401 (and never
/// reports its rejected retries) still stops renewing: the third renewal in a row is not
/// renewed again within its cool-down.
async fn a_client_that_never_reports_a_rejected_retry_stops_after_three_renewals(f: Arc<dyn Flavour>) {
    let w = world(f.as_ref(), None);
    w.seed_fresh_integration().await;
    let mut not_about = 0;
    for _ in 0..50 {
        let t = w.sdk.get_access_token().await.unwrap();
        assert_eq!(call_webex_at(&w.fake, "devices", &t).await, 401);
        if matches!(w.sdk.invalidate(t).await.unwrap(), byova_core::Invalidation::NotAboutTheToken { .. }) {
            not_about += 1;
        }
    }
    assert_eq!(w.fake.refresh_calls(), 3, "three renewals, then the cool-down");
    assert_eq!(not_about, 47);
}

/// Rule 11 for forced paths: `refresh`, `refresh_for_org` and `refresh_all_orgs` of tokens
/// obtained moments ago return them without calling Webex (a floor of 10 minutes by default);
/// a refresh with the caller's own refresh token is never held back; tokens past the floor, or
/// expired, are refreshed.
async fn forced_refreshes_of_tokens_just_obtained_call_nobody(f: Arc<dyn Flavour>) {
    let mut w = world(f.as_ref(), None);
    w.setup.config.refresh.forced_refresh_floor = Duration::from_secs(600);
    let sdk = f.build(&w.setup);
    let issued = w.seed_fresh_integration().await;
    for org in ["org-a", "org-b"] {
        w.seed_expired_org(org).await;
    }
    let first = sdk.refresh(None).await.unwrap();
    assert_eq!(w.fake.refresh_calls(), 0, "tokens obtained just now are the answer");
    assert!(first.access_token.ct_eq_str(&issued.access_token));
    let outcome = sdk.refresh_all_orgs(2).await.unwrap();
    assert!(outcome.iter().all(|(_, ok)| *ok), "{outcome:?}");
    assert_eq!(w.fake.refresh_calls(), 2, "expired orgs are refreshed");
    let again = sdk.refresh_all_orgs(2).await.unwrap();
    assert!(again.iter().all(|(_, ok)| *ok));
    assert_eq!(w.fake.refresh_calls(), 2, "a second bulk refresh right after calls nobody");
    assert_eq!(sdk.refresh_for_org("org-a".into()).await.map(drop).ok(), Some(()));
    assert_eq!(w.fake.refresh_calls(), 2);
    sdk.refresh(Some(issued.refresh_token.clone())).await.unwrap();
    assert_eq!(w.fake.refresh_calls(), 3, "the caller's own refresh token is always used");
    // Tokens older than the floor are refreshed when forced.
    let old = issued.to_oauth_tokens(w.now().saturating_sub(Duration::from_secs(601)));
    w.setup.async_storage.set_integration_tokens(&old).await.unwrap();
    let sdk = f.build(&w.setup);
    sdk.refresh(None).await.unwrap();
    assert_eq!(w.fake.refresh_calls(), 4);
}

/// Invalidating a token that was already replaced (another caller refreshed since) serves the
/// newer one and calls Webex for nothing.
async fn invalidating_a_replaced_token_refreshes_nothing(f: Arc<dyn Flavour>) {
    let w = world(f.as_ref(), None);
    w.seed_fresh_integration().await;
    let old = w.sdk.get_access_token().await.unwrap();
    let newer = w.sdk.refresh(None).await.unwrap().access_token;
    let calls = w.fake.refresh_calls();
    w.sdk.invalidate(old).await.unwrap();
    let served = w.sdk.get_access_token().await.unwrap();
    assert!(served.ct_eq(&newer), "the newer token is served");
    assert_eq!(w.fake.refresh_calls(), calls, "no refresh");
}

/// One process invalidates; the other, sharing the store, stops serving the token once its
/// cache revalidates, and the two refresh once between them.
async fn an_invalidation_reaches_another_process_through_the_store(f: Arc<dyn Flavour>) {
    let mut w = world(f.as_ref(), None);
    w.setup.config.coordination.cache_revalidate = Duration::from_millis(200);
    let (a, b) = (f.build(&w.setup), f.build(&w.setup));
    w.seed_fresh_integration().await;
    let token = a.get_access_token().await.unwrap();
    assert!(b.get_access_token().await.unwrap().ct_eq(&token), "both serve it");
    assert!(w.fake.revoke_access_token(token.expose_secret()));
    a.invalidate(token.clone()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let from_b = b.get_access_token().await.unwrap();
    let from_a = a.get_access_token().await.unwrap();
    assert!(!from_b.ct_eq(&token), "the other process stopped serving the revoked token");
    assert!(from_a.ct_eq(&from_b), "both serve the one new token");
    assert!(w.fake.is_access_token_valid(from_b.expose_secret()));
    assert_eq!(w.fake.refresh_calls(), 1, "one refresh between the two processes");
}

/// 200 orgs registered in the same second with 1,000 s tokens: their refresh points spread
/// over 50-80 % of the life (no 50 s stretch holds more than a quarter of them), and two
/// replicas agree on every one of them.
async fn a_cohort_registered_together_spreads_its_refreshes_over_the_window(f: Arc<dyn Flavour>) {
    let w = world(f.as_ref(), None);
    let other = f.build(&w.setup);
    let obtained = w.now();
    for i in 0..200 {
        let tokens = OAuthTokens::new(AccessToken::new(format!("A{i}")), 1_000, obtained)
            .with_refresh_token(RefreshToken::new(format!("R{i}")), Some(7_775_999));
        w.setup.async_storage.set_service_app_tokens(&org_id(&format!("org-{i:03}")), &tokens).await.unwrap();
    }
    let points = |statuses: Vec<KeyStatus>| -> Vec<u64> {
        statuses
            .iter()
            .filter(|s| matches!(s.key, TokenKey::Org(_)))
            .map(|s| s.refresh_at.expect("renewable").as_unix_millis() - obtained.as_unix_millis())
            .collect()
    };
    let mine = points(w.sdk.status().await.unwrap());
    assert_eq!(mine.len(), 200);
    assert_eq!(mine, points(other.status().await.unwrap()), "every replica places them alike");
    assert!(mine.iter().all(|ms| (500_000..=800_000).contains(ms)), "inside 50-80 % of the life: {mine:?}");
    let mut bins = [0usize; 6];
    for ms in &mine {
        bins[((ms - 500_000) / 50_000).min(5) as usize] += 1;
    }
    assert!(bins.iter().all(|n| (10..=50).contains(n)), "spread over the window, 50 s bins: {bins:?}");
}

/// Sixteen expired orgs, both replicas asking for every one of them at once, against a
/// Webex that allows 10 token calls a second. Without a budget the burst meets 429s; with
/// a budget of 8 a second shared through the store, none.
async fn two_replicas_share_one_token_budget_and_meet_no_429(f: Arc<dyn Flavour>) {
    let orgs: Vec<String> = (0..16).map(|i| format!("org-{i:02}")).collect();
    let run = |budget: Option<byova_core::TokenBudget>| {
        let (f, orgs) = (f.clone(), orgs.clone());
        async move {
            let mut w = world(f.as_ref(), None);
            w.fake.update_settings(|s| s.token_rate_limit = Some((10, Duration::from_secs(1))));
            w.setup.config.token_budget = budget;
            let replicas = [f.build(&w.setup), f.build(&w.setup)];
            w.seed_fresh_integration().await;
            for org in &orgs {
                w.seed_expired_org(org).await;
            }
            let mut tasks = Vec::new();
            for org in &orgs {
                for replica in &replicas {
                    let (sdk, org) = (replica.clone(), org.clone());
                    tasks.push(tokio::spawn(async move { sdk.org_token(org).await }));
                }
            }
            for t in tasks {
                let token = t.await.unwrap().expect("every org gets a token");
                assert!(
                    w.fake.is_access_token_valid(token.expose_secret()),
                    "no token served after its expiry"
                );
            }
            w
        }
    };
    let unbudgeted = run(None).await;
    assert!(unbudgeted.fake.rate_limited() > 0, "the control run meets the rate limit");
    let started = Instant::now();
    let w = run(Some(byova_core::TokenBudget::new(8, Duration::from_secs(1)))).await;
    assert_eq!(w.fake.rate_limited(), 0, "no 429 within the budget");
    assert_eq!(w.fake.calls(Endpoint::AccessToken), 16, "one refresh per org across both replicas");
    let busiest = w.fake.busiest_token_window(Duration::from_secs(1));
    assert!(busiest <= 8, "at most 8 calls in any second, saw {busiest}");
    assert!(started.elapsed() < Duration::from_secs(10), "paced, not stalled: {:?}", started.elapsed());
}

/// One replica's 429 (`Retry-After: 2`) holds the other replica's token calls too.
async fn a_429_pauses_every_replica_until_retry_after(f: Arc<dyn Flavour>) {
    let w = world(f.as_ref(), None);
    let replicas = [f.build(&w.setup), f.build(&w.setup)];
    w.seed_fresh_integration().await;
    w.seed_expired_org("org-a").await;
    w.seed_expired_org("org-b").await;
    w.fake.inject(Endpoint::AccessToken, Fault::rate_limited(2));
    let first = {
        let sdk = replicas[0].clone();
        tokio::spawn(async move { sdk.org_token("org-a".into()).await })
    };
    while w.fake.calls(Endpoint::AccessToken) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    replicas[1].org_token("org-b".into()).await.expect("org-b after the pause");
    let waited = started.elapsed();
    first.await.unwrap().expect("org-a after its Retry-After");
    assert!(waited >= Duration::from_millis(1500), "the second replica waited out the pause: {waited:?}");
    assert_eq!(w.fake.calls(Endpoint::AccessToken), 3, "the 429, then one call per org");
}

const DATA_SOURCE_URL: &str = "https://gateway.example.com/byova";

fn two_minute_data_source() -> DataSourceSpec {
    DataSourceSpec::new(DATA_SOURCE_URL).unwrap().with_lifetime_minutes(2).unwrap()
}

/// Twelve orgs with 2-minute data-source tokens, kept by two replicas sharing a store for ten
/// minutes (a fake clock, 5-second steps; each replica calls `keep` when its last outcome
/// said): no token lapses, each data source is registered once and extended once per period
/// (six times in ten minutes), and the second replica sends nothing the first already did.
async fn two_replicas_keep_data_sources_alive_extending_each_once_per_period(f: Arc<dyn Flavour>) {
    let clock = Arc::new(crate::FakeClock::default());
    let w = world_clocked(f.as_ref(), None, clock.clone());
    let replicas = [f.build(&w.setup), f.build(&w.setup)];
    w.seed_fresh_integration().await;
    let orgs: Vec<String> = (0..12).map(|i| format!("org-{i:02}")).collect();
    for org in &orgs {
        w.seed_fresh_org(org).await;
    }
    let spec = two_minute_data_source();
    let start = clock.now();
    let mut next: Vec<std::collections::HashMap<String, byova_core::Timestamp>> =
        vec![orgs.iter().map(|o| (o.clone(), start)).collect(); 2];
    let mut actions = std::collections::BTreeMap::<&'static str, usize>::new();
    // Per replica: looks that renewed, and looks that found the other's work (kept, busy).
    let mut took_part = [(0, 0); 2];
    while clock.now() < start.saturating_add(Duration::from_secs(600)) {
        let now = clock.now();
        let mut calls = Vec::new();
        for (r, replica) in replicas.iter().enumerate() {
            for org in orgs.iter().filter(|o| next[r][*o] <= now) {
                let (sdk, org, spec) = (replica.clone(), org.clone(), spec.clone());
                calls.push(tokio::spawn(async move {
                    let outcome = sdk.keep_data_source(org.clone(), spec, false).await;
                    (r, org, outcome)
                }));
            }
        }
        for call in calls {
            let (r, org, outcome) = call.await.unwrap();
            let outcome = outcome.unwrap_or_else(|e| panic!("{org} kept by replica {r}: {e}"));
            assert!(outcome.next_check > now, "{org}: looked at again later, not {:?}", outcome.next_check);
            *actions.entry(outcome.action.as_str()).or_default() += 1;
            if outcome.action.renewed() {
                took_part[r].0 += 1;
            } else {
                took_part[r].1 += 1;
            }
            next[r].insert(org, outcome.next_check);
        }
        clock.advance(Duration::from_secs(5));
    }
    assert_eq!(w.fake.data_source_lapses(), 0, "no token lapsed: {actions:?}");
    assert!(
        took_part.iter().all(|(renewed, found)| *renewed > 0 && *found > 0),
        "both replicas renewed some and found the other's work on others: {took_part:?}"
    );
    let renewals = w.fake.data_source_renewals();
    let early: Vec<_> = renewals
        .iter()
        .filter(|r| {
            r.previous_expiry.is_some_and(|e| e.saturating_duration_since(r.at) > Duration::from_secs(30))
        })
        .collect();
    assert!(early.is_empty(), "no extension before a quarter of the life was left: {early:?}");
    for org in &orgs {
        let of_org: Vec<_> = renewals.iter().filter(|r| r.org == *org).collect();
        assert_eq!(of_org.iter().filter(|r| r.previous_expiry.is_none()).count(), 1, "{org} registered once");
        assert_eq!(of_org.len(), 7, "{org}: registered, then extended at 90, 180, ... 540 s: {of_org:?}");
        assert_eq!(w.fake.data_sources_of(org).len(), 1);
    }
    assert_eq!(
        w.fake.calls(Endpoint::DataSources),
        (orgs.len() * 8) as u64,
        "one list, one register and six extensions per org, whichever replica: {actions:?}"
    );
}

/// An extension whose answer is lost (Webex acted on it) is not sent again: the next call
/// reads the list and finds the new expiry. A data source deleted at Webex is registered again
/// at its next extension (404, the list, a register). A 429 defers every replica until its
/// `Retry-After`, with no further call; then the extension goes through. Nothing lapses.
async fn a_lost_answer_a_deleted_data_source_and_a_429_cost_no_lapse_and_no_duplicate(f: Arc<dyn Flavour>) {
    use byova_core::datasource::DataSourceAction;
    let clock = Arc::new(crate::FakeClock::default());
    let w = world_clocked(f.as_ref(), None, clock.clone());
    let other = f.build(&w.setup);
    w.seed_fresh_integration().await;
    w.seed_fresh_org(ORG).await;
    let spec = two_minute_data_source();
    let keep = |sdk: &Arc<dyn Sdk>| {
        let (sdk, spec) = (sdk.clone(), spec.clone());
        async move { sdk.keep_data_source(ORG.into(), spec, false).await }
    };
    assert_eq!(keep(&w.sdk).await.unwrap().action, DataSourceAction::Registered);
    clock.advance(Duration::from_secs(90));
    w.fake.inject(Endpoint::DataSources, Fault::DropAfterProcessing);
    let lost = keep(&w.sdk).await.unwrap_err();
    assert!(matches!(lost, Error::Transport { .. }), "{lost:?}");
    assert_eq!(w.fake.data_source_renewals().len(), 2, "Webex extended it");
    let found = keep(&other).await.unwrap();
    assert_eq!(found.action, DataSourceAction::Kept, "the list shows the extension: {found:?}");
    assert_eq!(w.fake.data_source_renewals().len(), 2, "and it is not sent again");
    assert_eq!(found.expires_at, Some(clock.now().saturating_add(Duration::from_secs(120))));

    // Deleted at Webex by someone else: the next extension registers it again.
    w.fake.forget_data_sources_of(ORG);
    clock.advance(Duration::from_secs(90));
    let again = keep(&w.sdk).await.unwrap();
    assert_eq!(again.action, DataSourceAction::Registered, "{again:?}");
    assert_eq!(w.fake.data_sources_of(ORG).len(), 1);

    // A 429 pauses both replicas until its Retry-After.
    clock.advance(Duration::from_secs(90));
    w.fake.inject(Endpoint::DataSources, Fault::rate_limited(20));
    let deferred = keep(&w.sdk).await.unwrap();
    assert_eq!(deferred.action, DataSourceAction::Deferred, "{deferred:?}");
    assert_eq!(deferred.next_check, clock.now().saturating_add(Duration::from_secs(20)));
    let calls = w.fake.calls(Endpoint::DataSources);
    let held = keep(&other).await.unwrap();
    assert_eq!(held.action, DataSourceAction::Deferred, "the other replica honours the pause: {held:?}");
    assert_eq!(w.fake.calls(Endpoint::DataSources), calls, "without calling Webex");
    clock.advance(Duration::from_secs(20));
    assert_eq!(keep(&other).await.unwrap().action, DataSourceAction::Extended);

    // A 401 renews the org's token once and tries again; a 403 renews nothing.
    let token_calls = || w.fake.calls(Endpoint::AccessToken) + w.fake.calls(Endpoint::ApplicationToken);
    clock.advance(Duration::from_secs(90));
    let before = token_calls();
    w.fake.inject(Endpoint::DataSources, Fault::status(401));
    assert_eq!(keep(&w.sdk).await.unwrap().action, DataSourceAction::Extended);
    assert_eq!(token_calls(), before + 1, "one renewal of the org's token");
    clock.advance(Duration::from_secs(90));
    w.fake.inject(Endpoint::DataSources, Fault::status(403));
    let refused = keep(&w.sdk).await.unwrap_err();
    assert_eq!(refused.status(), Some(403), "{refused:?}");
    assert_eq!(token_calls(), before + 1, "a 403 is not about the token");
    assert_eq!(keep(&other).await.unwrap().action, DataSourceAction::Extended, "the next look extends it");

    // A proxy's HTML 401 is not Webex's verdict on the token: nothing is renewed, and the
    // next look reads the list and extends.
    clock.advance(Duration::from_secs(90));
    w.fake.inject(Endpoint::DataSources, Fault::proxy_page(401));
    let blocked = keep(&w.sdk).await.unwrap_err();
    assert!(matches!(blocked, Error::UnrecognizedAnswer(_)), "{blocked:?}");
    assert_eq!(token_calls(), before + 1, "no renewal for an answer that is not Webex's");
    assert_eq!(keep(&other).await.unwrap().action, DataSourceAction::Extended);
    assert_eq!(w.fake.data_source_lapses(), 0);
}

/// With `remove_data_source_on_deauthorize`, a `deauthorized` delivery that removes the org
/// removes its data source from Webex too (with the org's last token); when Webex already
/// revoked that token the delivery is still answered, and the data source is left to lapse.
/// Without the setting the data source stays.
async fn a_deauthorization_removes_the_data_source_when_configured(f: Arc<dyn Flavour>) {
    let secret = WebhookSecret::new("hook-secret");
    for (configured, revoked) in [(true, false), (true, true), (false, false)] {
        let mut w = world(f.as_ref(), Some("hook-secret"));
        let spec = DataSourceSpec::new(DATA_SOURCE_URL).unwrap();
        if configured {
            w.setup.config.remove_data_source_on_deauthorize = Some(spec.clone());
            w.sdk = f.build(&w.setup);
        }
        w.seed_fresh_integration().await;
        w.fake.authorize_org(ORG);
        let (body, sig) = w.fake.service_app_delivery(ServiceAppEventKind::Authorized, ORG, Some(&secret));
        assert!(w.sdk.handle_webhook(body, sig).await.unwrap().contains("Registered"));
        w.sdk.keep_data_source(ORG.into(), spec.clone(), true).await.unwrap();
        assert_eq!(w.fake.data_sources_of(ORG).len(), 1);
        if revoked {
            w.fake.deauthorize_org(ORG);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        let (body, sig) = w.fake.service_app_delivery(ServiceAppEventKind::Deauthorized, ORG, Some(&secret));
        let outcome = w.sdk.handle_webhook(body, sig).await.unwrap();
        assert!(outcome.contains("Removed"), "{outcome}");
        let left = w.fake.data_sources_of(ORG).len();
        assert_eq!(left, usize::from(!configured || revoked), "configured {configured}, revoked {revoked}");
    }
}

async fn strict_rotation_over_1000_refresh_cycles_reuses_nothing(f: Arc<dyn Flavour>) {
    let w = world(f.as_ref(), None);
    w.fake.update_settings(|s| {
        s.rotate_refresh_tokens = true;
        s.strict_rotation = true;
    });
    w.seed_fresh_integration().await;
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let sdk = w.sdk.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..250 {
                sdk.refresh(None).await.expect("refresh under strict rotation");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(w.fake.refresh_calls(), 1000);
    assert_eq!(w.fake.reused_refresh_tokens(), 0);
    let token = w.sdk.get_access_token().await.unwrap();
    assert!(w.fake.is_access_token_valid(token.expose_secret()), "the family is intact");
}

// ---- secrets ----

async fn canary_secrets_never_reach_logs_errors_or_debug(f: Arc<dyn Flavour>) {
    let logs = crate::logcapture::capture().expect("the capturing subscriber is the global default");
    let w = world(f.as_ref(), Some("WEBHOOK-CANARY-SECRET"));
    let issued = w.seed_expired_integration().await;
    w.fake.authorize_org(ORG);
    let mut seen = Vec::new();
    let token = w.sdk.get_access_token().await.unwrap();
    seen.push(format!("{token:?}"));
    let sa = w.sdk.fetch_token_for_org(ORG.into()).await.unwrap();
    seen.push(format!("{sa:?}"));
    w.fake.inject(Endpoint::AccessToken, Fault::InvalidGrant);
    let err = w.sdk.refresh(Some(issued.refresh_token.clone())).await.unwrap_err();
    seen.push(format!("{err} {err:?}"));
    w.fake.inject_times(Endpoint::AccessToken, Fault::status(500), 10);
    if let Err(e) = w.sdk.refresh(None).await {
        seen.push(format!("{e} {e:?}"));
    }
    let bad = w.sdk.handle_webhook(b"{}".to_vec(), Some("f".repeat(40))).await.unwrap_err();
    seen.push(format!("{bad} {bad:?}"));
    let byova_core::AuthorizationUrl { url, state, .. } = w.sdk.get_authorization_url().unwrap();
    let err = w.sdk.exchange_code("CODE-CANARY-0001".into()).await.unwrap_err();
    seen.push(format!("{err} {err:?} {:?}", w.setup));
    let status = w.sdk.status().await.unwrap();
    seen.push(format!("{status:?}"));
    let mut canaries = vec![
        w.setup.integration.client_secret.expose_secret().to_owned(),
        w.setup.service_app.client_secret.expose_secret().to_owned(),
        "WEBHOOK-CANARY-SECRET".to_owned(),
        "CODE-CANARY-0001".to_owned(),
        state,
        token.expose_secret().to_owned(),
        sa.access_token.expose_secret().to_owned(),
        issued.access_token.clone(),
        issued.refresh_token.clone(),
    ];
    canaries.extend(w.fake.redemptions().into_iter().map(|r| r.refresh_token));
    let _ = url;
    let logged = logs.contents();
    assert!(logged.contains("refreshed"), "the capture saw the flows' log lines");
    for canary in &canaries {
        let encoded: String = form_urlencoded::byte_serialize(canary.as_bytes()).collect();
        for text in seen.iter().chain(std::iter::once(&logged)) {
            assert!(
                !text.contains(canary.as_str()) && !text.contains(&encoded),
                "a secret leaked into: {text:.200}"
            );
        }
    }
}

// ---- the loopback listener (RFC 8252; checklist A) ----

async fn listener_refuses_everything_but_the_matching_callback(f: Arc<dyn Flavour>) {
    let w = world(f.as_ref(), None);
    let port = free_port();
    let sdk = w.sdk.clone();
    let flow = tokio::spawn(async move {
        sdk.wait_for_redirect(
            format!("http://127.0.0.1:{port}/callback"),
            "RIGHT-STATE".into(),
            Duration::from_secs(20),
        )
        .await
    });
    wait_until_listening(port).await;
    for target in ["/favicon.ico", "/", "/callback/../x", "/cb?code=x&state=RIGHT-STATE"] {
        assert_eq!(status_of(&raw(port, get(port, target)).await), 404, "{target}");
    }
    for i in 0..20 {
        assert_eq!(status_of(&raw(port, get(port, &format!("/probe{i}"))).await), 404);
    }
    let head = format!("HEAD /callback?code=x&state=RIGHT-STATE HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n");
    assert_eq!(status_of(&raw(port, head).await), 405);
    for i in 0..100 {
        let r = raw(port, get(port, &format!("/callback?code=WRONG-{i}&state=WRONG-STATE"))).await;
        assert_eq!(status_of(&r), 400);
        assert!(!r.contains("WRONG-"), "nothing from the query is echoed");
    }
    let evil =
        format!("GET /callback?code=x&state=RIGHT-STATE HTTP/1.1\r\nHost: evil.example:{port}\r\n\r\n");
    assert_eq!(status_of(&raw(port, evil).await), 400, "DNS-rebinding Host refused");
    let ok = raw(port, get(port, "/callback?code=THE-CODE&state=RIGHT-STATE")).await;
    assert_eq!(status_of(&ok), 200);
    for header in [
        "Cache-Control: no-store",
        "Referrer-Policy: no-referrer",
        "Content-Security-Policy: default-src 'none'",
    ] {
        assert!(ok.contains(header), "{header}");
    }
    assert!(!ok.contains("THE-CODE") && !ok.contains("http://") && !ok.contains("https://"));
    let (code, state) = flow.await.unwrap().unwrap();
    assert_eq!((code.as_str(), state.as_deref()), ("THE-CODE", Some("RIGHT-STATE")));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let replay = raw(port, get(port, "/callback?code=THE-CODE&state=RIGHT-STATE")).await;
    assert!(
        replay == "refused" || status_of(&replay) == 410 || replay.is_empty(),
        "replay after success: {replay:.60}"
    );
    assert!(std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(), "the port is released");
}

async fn listener_error_with_wrong_state_keeps_waiting(f: Arc<dyn Flavour>) {
    let w = world(f.as_ref(), None);
    let port = free_port();
    let sdk = w.sdk.clone();
    let started = Instant::now();
    let flow = tokio::spawn(async move {
        sdk.wait_for_redirect(format!("http://127.0.0.1:{port}/cb"), "S".into(), Duration::from_millis(800))
            .await
    });
    wait_until_listening(port).await;
    assert_eq!(status_of(&raw(port, get(port, "/cb?error=access_denied&state=NOT-S")).await), 400);
    let err = flow.await.unwrap().unwrap_err();
    assert!(matches!(err, Error::OAuthRedirectTimeout(_)), "{err:?}");
    assert!(started.elapsed() >= Duration::from_millis(800));
    let port2 = free_port();
    let sdk = w.sdk.clone();
    let started = Instant::now();
    let flow = tokio::spawn(async move {
        sdk.wait_for_redirect(format!("http://127.0.0.1:{port2}/cb"), "S".into(), Duration::from_secs(20))
            .await
    });
    wait_until_listening(port2).await;
    raw(port2, get(port2, "/cb?error=access_denied&state=S")).await;
    let err = flow.await.unwrap().unwrap_err();
    assert!(matches!(&err, Error::OAuthRedirect { error } if error == "access_denied"), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

async fn listener_flows_do_not_interfere(f: Arc<dyn Flavour>) {
    let w = world(f.as_ref(), None);
    let (p1, p2) = (free_port(), free_port());
    let (s1, s2) = (w.sdk.clone(), w.sdk.clone());
    let f1 = tokio::spawn(async move {
        s1.wait_for_redirect(format!("http://127.0.0.1:{p1}/cb"), "A".into(), Duration::from_secs(20)).await
    });
    let f2 = tokio::spawn(async move {
        s2.wait_for_redirect(format!("http://127.0.0.1:{p2}/cb"), "B".into(), Duration::from_secs(20)).await
    });
    wait_until_listening(p1).await;
    wait_until_listening(p2).await;
    assert_eq!(status_of(&raw(p1, get(p1, "/cb?code=for-b&state=B")).await), 400, "flow A ignores B's state");
    raw(p2, get(p2, "/cb?code=for-b&state=B")).await;
    raw(p1, get(p1, "/cb?code=for-a&state=A")).await;
    assert_eq!(f1.await.unwrap().unwrap().0, "for-a");
    assert_eq!(f2.await.unwrap().unwrap().0, "for-b");
}

async fn listener_survives_idle_connections(f: Arc<dyn Flavour>) {
    let w = world(f.as_ref(), None);
    let port = free_port();
    let sdk = w.sdk.clone();
    let flow = tokio::spawn(async move {
        sdk.wait_for_redirect(format!("http://127.0.0.1:{port}/cb"), "S".into(), Duration::from_secs(20))
            .await
    });
    wait_until_listening(port).await;
    let mut idle = Vec::new();
    for _ in 0..500 {
        idle.push(tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let r = raw(port, get(port, "/cb?code=C&state=S")).await;
    assert_eq!(status_of(&r), 200, "the real redirect is served after 500 idle connections");
    assert_eq!(flow.await.unwrap().unwrap().0, "C");
    let took = started.elapsed();
    println!("listener [{}]: the redirect after 500 idle connections took {took:?}", f.name());
    assert!(took < Duration::from_secs(2), "{took:?}");
    drop(idle);
}

async fn listener_caps_header_size(f: Arc<dyn Flavour>) {
    let w = world(f.as_ref(), None);
    let port = free_port();
    let sdk = w.sdk.clone();
    let flow = tokio::spawn(async move {
        sdk.wait_for_redirect(format!("http://127.0.0.1:{port}/cb"), "S".into(), Duration::from_secs(20))
            .await
    });
    wait_until_listening(port).await;
    let huge = format!(
        "GET /cb?code=C&state=S HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(1 << 20)
    );
    let r = raw(port, huge).await;
    assert!(r.is_empty() || matches!(status_of(&r), 400 | 431), "{r:.80}");
    raw(port, get(port, "/cb?code=C2&state=S")).await;
    assert_eq!(flow.await.unwrap().unwrap().0, "C2", "the oversized request did not end the flow");
}

async fn listener_refuses_non_loopback_and_busy_ports(f: Arc<dyn Flavour>) {
    let w = world(f.as_ref(), None);
    for uri in ["http://0.0.0.0:8765/cb", "http://example.com/cb", "https://127.0.0.1:8765/cb"] {
        let err = w.sdk.wait_for_redirect(uri.into(), "S".into(), Duration::from_secs(1)).await.unwrap_err();
        assert!(matches!(err, Error::Configuration(_)), "{uri}: {err:?}");
    }
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let err = w
        .sdk
        .wait_for_redirect(format!("http://127.0.0.1:{port}/cb"), "S".into(), Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Listen { address, source } if address.contains(&port.to_string())
            && source.kind() == std::io::ErrorKind::AddrInUse),
        "{err:?}"
    );
    assert!(std::error::Error::source(&err).is_some(), "the io::Error is kept as the source");
}
