//! The flavours' manager methods and their documentation, written once. `byova-async` and
//! `byova-blocking` each expand these macros inside their own `impl` blocks with their storage
//! trait and with `async`/`.await` or nothing, so a method, its body and its rustdoc exist in
//! one place and the two flavours cannot drift apart. Not a public API: the macros are hidden
//! and may change in any release, so the workspace's crates require byova-core at an exact
//! version and are released together.
//!
//! The types are written here too (`__flavour_types!`, `__redirect_listener!`), their
//! documentation examples built per flavour. What stays in each flavour: the driver, the HTTP
//! client, the listener's I/O (`RedirectListener::wait`) and `authorize`.

/// A documentation line for one flavour only: `async` gets the first text, `blocking` the
/// second.
#[doc(hidden)]
#[macro_export]
macro_rules! __flavoured {
    (async, $async:literal, $blocking:literal) => {
        $async
    };
    (blocking, $async:literal, $blocking:literal) => {
        $blocking
    };
}

/// A method's cancel-safety note, in the async flavour's docs only (a blocking call cannot be
/// dropped half way).
#[doc(hidden)]
#[macro_export]
macro_rules! __cancel_safety {
    (async, $text:literal) => {
        concat!("Cancel safety: ", $text)
    };
    (blocking, $text:literal) => {
        ""
    };
}

/// `IntegrationTokenManager`'s constructors and methods (all but `authorize`, which each
/// flavour writes around its listener). Expects fields `agent: Arc<Agent>` and
/// `engine: Arc<IntegrationEngine>`, and `Agent`, `HttpClient` and `Drive` in scope.
#[doc(hidden)]
#[macro_export]
macro_rules! __integration_manager_methods {
    ($flavour:ident, $storage:ty, {$($async:tt)*}, {$($await:tt)*}) => {
        /// A manager for `credentials`, storing tokens in `storage`, with `config`
        /// ([`ByovaConfig::default`](byova_core::ByovaConfig::default) is production Webex).
        pub fn new(
            credentials: $crate::IntegrationCredentials,
            http: HttpClient,
            storage: ::std::sync::Arc<$storage>,
            config: $crate::ByovaConfig,
        ) -> Self {
            Self::with_clock(credentials, http, storage, config, ::std::sync::Arc::new($crate::engine::CoarseClock))
        }

        /// [`new`](Self::new) with an explicit clock (tests use a fake one).
        pub fn with_clock(
            credentials: $crate::IntegrationCredentials,
            http: HttpClient,
            storage: ::std::sync::Arc<$storage>,
            config: $crate::ByovaConfig,
            clock: ::std::sync::Arc<dyn $crate::Clock>,
        ) -> Self {
            // Never hand out a value sealed at rest as a token: without keys the wrapper
            // refuses one (build with `Byova::builder(…).storage_keys(…)` to seal).
            let storage: ::std::sync::Arc<$storage> =
                ::std::sync::Arc::new($crate::SealedStorage::new(storage, None));
            Self::from_parts($crate::engine::IntegrationEngine::new(credentials, config), storage, http, clock)
        }

        pub(crate) fn from_parts(
            engine: ::std::sync::Arc<$crate::engine::IntegrationEngine>,
            storage: ::std::sync::Arc<$storage>,
            http: HttpClient,
            clock: ::std::sync::Arc<dyn $crate::Clock>,
        ) -> Self {
            let agent = Agent::new(engine.token_engine().clone(), storage, http, clock, None);
            Self { agent: ::std::sync::Arc::new(agent), engine }
        }

        /// The Integration's client credentials.
        pub fn credentials(&self) -> &$crate::IntegrationCredentials {
            self.engine.credentials()
        }

        /// The configuration.
        pub fn config(&self) -> &$crate::ByovaConfig {
            self.engine.config()
        }

        /// The token storage.
        pub fn storage(&self) -> &::std::sync::Arc<$storage> {
            &self.agent.storage
        }

        /// The authorization URL (with `state` and PKCE S256) and its `state`. The verifier is
        /// kept for [`exchange_code`](Self::exchange_code) in this process and written to the
        /// storage for ten minutes, so [`exchange_code_for_state`](Self::exchange_code_for_state)
        /// works in any process sharing it
        #[doc = $crate::__flavoured!($flavour,
            "(the write runs in the background and a failure is logged).",
            "(written before this returns; a failure is logged).")]
        /// Errors: an empty or malformed scope list.
        pub fn get_authorization_url(
            &self,
            scopes: Option<&[&str]>,
            state: Option<&str>,
        ) -> $crate::Result<$crate::AuthorizationUrl> {
            let (issued, save) = self.engine.authorization_url(scopes, state, self.agent.now())?;
            self.agent.start(save);
            Ok(issued)
        }

        /// [`get_authorization_url`](Self::get_authorization_url) that returns once the pending
        /// authorization is in the storage, so another process can exchange its code at once.
        /// Errors: a bad scope list, or the storage's.
        #[doc = $crate::__cancel_safety!($flavour, "dropped before it returns, the URL may or may not be usable elsewhere.")]
        pub $($async)* fn start_authorization(
            &self,
            scopes: Option<&[&str]>,
            state: Option<&str>,
        ) -> $crate::Result<$crate::AuthorizationUrl> {
            let (issued, save) = self.engine.authorization_url_stored(scopes, state, self.agent.now())?;
            self.agent.run(save)$($await)*?;
            Ok(issued)
        }

        /// Exchanges an authorization code (with the verifier of the latest authorization URL)
        /// and stores the tokens; never retried once Webex may have seen the code. Errors: the
        /// token endpoint's ([`Validation`](byova_core::Error::Validation) for a used code) or
        /// storage's.
        #[doc = $crate::__cancel_safety!($flavour, "once started, the exchange completes and stores the tokens on its own.")]
        pub $($async)* fn exchange_code(&self, code: &str) -> $crate::Result<$crate::OAuthTokens> {
            self.agent.run(self.engine.exchange_code(code, None, self.agent.now()))$($await)*
        }

        /// [`exchange_code`](Self::exchange_code) with the verifier issued with `state`, by this
        /// process or by any process sharing the storage (a web app's callback on another
        /// replica). Errors: [`UnknownAuthorizationState`](byova_core::Error::UnknownAuthorizationState)
        /// for a state not issued, already used, or older than ten minutes.
        #[doc = $crate::__cancel_safety!($flavour, "as [`exchange_code`](Self::exchange_code).")]
        pub $($async)* fn exchange_code_for_state(&self, code: &str, state: &str) -> $crate::Result<$crate::OAuthTokens> {
            self.agent.run(self.engine.exchange_code(code, Some(state), self.agent.now()))$($await)*
        }

        /// Refreshes now (with `refresh_token`, or the stored one) and stores the result before
        /// returning. Errors: [`NotAuthorized`](byova_core::Error::NotAuthorized) without a
        /// refresh token, [`ReauthorizationRequired`](byova_core::Error::ReauthorizationRequired)
        /// when Webex rejects it or rejected it before (the mark is stored).
        #[doc = $crate::__cancel_safety!($flavour, "once started, the refresh completes and stores the tokens on its own.")]
        pub $($async)* fn refresh(&self, refresh_token: Option<&str>) -> $crate::Result<$crate::OAuthTokens> {
            let token = refresh_token.map($crate::RefreshToken::new);
            self.agent.run(self.engine.refresh(token, self.agent.now()))$($await)*
        }

        /// A valid Integration access token: from the process-local cache when fresh (no
        /// storage trip), else refreshed. Errors: [`NotAuthorized`](byova_core::Error::NotAuthorized)
        /// before authorization; the refresh's when the stored token cannot be used.
        #[doc = $crate::__cancel_safety!($flavour, "a refresh it started completes on its own; the next call gets its result.")]
        pub $($async)* fn get_access_token(&self) -> $crate::Result<$crate::AccessToken> {
            let now = self.agent.now();
            if let Some(token) = self.agent.engine.fresh_integration(now) {
                return Ok(token);
            }
            self.agent.run(self.agent.engine.access_token($crate::TokenKey::Integration, now))$($await)*
        }

        /// Valid Integration tokens with at least `min_valid` left, for a process that hands the
        /// access token on with its expiry (`byova serve`'s token endpoint): the cached or
        /// stored ones when they last that long, else refreshed first. No refresh is made when
        /// a fresh token could not last that long either, nor for tokens obtained moments ago;
        /// when the refresh fails, the still-valid tokens are the answer. So `min_valid` is a
        /// wish, not a promise: check `expires_at`. Errors: as
        /// [`get_access_token`](Self::get_access_token).
        #[doc = $crate::__cancel_safety!($flavour, "a refresh it started completes on its own; the next call gets its result.")]
        pub $($async)* fn get_valid_tokens(&self, min_valid: ::std::time::Duration) -> $crate::Result<$crate::OAuthTokens> {
            self.agent.run(self.engine.valid_tokens(min_valid, self.agent.now()))$($await)*
        }

        /// The Integration's status, `None` when not authorized. Errors: storage's.
        #[doc = $crate::__cancel_safety!($flavour, "it only reads.")]
        pub $($async)* fn status(&self) -> $crate::Result<Option<$crate::KeyStatus>> {
            self.agent.run(self.engine.status())$($await)*
        }

        /// Stops serving `rejected`, a token Webex answered 401 to (revoked early, or replaced by
        /// a re-authorization elsewhere): the next [`get_access_token`](Self::get_access_token)
        /// refreshes, unless a newer token than `rejected` is already stored, which it then
        /// serves. Any number of callers invalidating the same token cost one refresh, in this
        /// process and in every process sharing the store (they stop serving it once their
        /// cache revalidates, 30 s at most by default). Errors: storage's.
        #[doc = $crate::__cancel_safety!($flavour, "the record is marked in one versioned write, or not at all.")]
        ///
        /// A token that was itself obtained because Webex rejected the one before it, and is
        /// rejected again within [`RefreshPolicy::rejection_cooldown`](byova_core::RefreshPolicy::rejection_cooldown)
        /// (10 minutes, doubling with each repetition), is not renewed: the answer is
        /// [`Invalidation::NotAboutTheToken`](byova_core::Invalidation::NotAboutTheToken), and the
        /// 401 belongs to the caller (a missing scope, say). Webex caps the live tokens of a
        /// user; every refresh mints one.
        pub $($async)* fn invalidate(&self, rejected: &$crate::AccessToken) -> $crate::Result<$crate::Invalidation> {
            self.agent.run(self.engine.invalidate(rejected, self.agent.now()))$($await)*
        }

        /// Webex rejected `renewed` too: the token a request was retried with after a 401 and
        /// [`invalidate`](Self::invalidate). That 401 is not about the token (a missing scope, a
        /// resource the Integration may not see): for the cool-down
        /// ([`RefreshPolicy::rejection_cooldown`](byova_core::RefreshPolicy::rejection_cooldown),
        /// 10 minutes, doubling while it repeats) `invalidate` answers
        /// [`Invalidation::NotAboutTheToken`](byova_core::Invalidation::NotAboutTheToken) for it
        /// and renews nothing, here and in every process sharing the store. `BearerAuth` calls
        /// it for you. Errors: storage's.
        pub $($async)* fn rejected_again(&self, renewed: &$crate::AccessToken) -> $crate::Result<$crate::Invalidation> {
            self.agent.run(self.engine.rejected_again(renewed, self.agent.now()))$($await)*
        }
    };
}

/// `ServiceAppTokenManager`'s constructors and methods. Expects fields `agent: Arc<Agent>`,
/// `engine: Arc<ServiceAppEngine>` and `integration: IntegrationTokenManager`, and `Agent`,
/// `HttpClient` and `Drive` in scope.
#[doc(hidden)]
#[macro_export]
macro_rules! __service_app_manager_methods {
    ($flavour:ident, $storage:ty, {$($async:tt)*}, {$($await:tt)*}) => {
        /// A manager for the Service App `credentials`, using `integration`'s bearer,
        /// configuration and clock.
        pub fn new(
            credentials: $crate::ServiceAppCredentials,
            integration: IntegrationTokenManager,
            http: HttpClient,
            storage: ::std::sync::Arc<$storage>,
        ) -> Self {
            let engine =
                $crate::engine::ServiceAppEngine::new(credentials, integration.config().clone(), Default::default());
            let storage: ::std::sync::Arc<$storage> =
                ::std::sync::Arc::new($crate::SealedStorage::new(storage, None));
            Self::from_parts(engine, integration, http, storage)
        }

        pub(crate) fn from_parts(
            engine: ::std::sync::Arc<$crate::engine::ServiceAppEngine>,
            integration: IntegrationTokenManager,
            http: HttpClient,
            storage: ::std::sync::Arc<$storage>,
        ) -> Self {
            let (engine_of_org_tokens, clock) = (engine.token_engine().clone(), integration.agent.clock().clone());
            let integration_agent = Some(integration.agent.clone());
            let agent = Agent::new(engine_of_org_tokens, storage, http, clock, integration_agent);
            Self { agent: ::std::sync::Arc::new(agent), engine, integration }
        }

        /// The base64url application id derived from the client id.
        pub fn application_id(&self) -> &str {
            self.engine.application_id()
        }

        /// The Service App's client credentials.
        pub fn credentials(&self) -> &$crate::ServiceAppCredentials {
            self.engine.credentials()
        }

        /// The Integration manager whose bearer fetches tokens.
        pub fn integration(&self) -> &IntegrationTokenManager {
            &self.integration
        }

        /// Fetches tokens for `org_id` with the Integration's bearer and stores them.
        #[doc = $crate::__cancel_safety!($flavour, "once started, the fetch completes and stores the tokens on its own.")]
        pub $($async)* fn fetch_token_for_org(&self, org_id: &$crate::OrgId) -> $crate::Result<$crate::ServiceAppTokens> {
            self.agent.run(self.engine.fetch(org_id, self.agent.now()))$($await)*
        }

        /// Decodes a `serviceApp` webhook's org id (a base64 Webex id) and fetches its tokens.
        #[doc = $crate::__cancel_safety!($flavour, "as [`fetch_token_for_org`](Self::fetch_token_for_org).")]
        pub $($async)* fn fetch_token_from_webhook_org(
            &self,
            encoded_org_id: &str,
        ) -> $crate::Result<($crate::OrgId, $crate::ServiceAppTokens)> {
            self.agent.run(self.engine.fetch_from_webhook_org(encoded_org_id, self.agent.now()))$($await)*
        }

        /// Registers an org from an existing refresh token (the sandbox path): refreshes with it
        /// and stores the result.
        #[doc = $crate::__cancel_safety!($flavour, "once started, the refresh completes and stores the tokens on its own.")]
        pub $($async)* fn save_registration(&self, org_id: &$crate::OrgId, refresh_token: &str) -> $crate::Result<$crate::ServiceAppTokens> {
            let token = $crate::RefreshToken::new(refresh_token);
            self.agent.run(self.engine.save_registration(org_id, token, self.agent.now()))$($await)*
        }

        /// Refreshes now; without a usable refresh token (or when Webex rejects it) fetches new
        /// ones with the Integration's bearer.
        #[doc = $crate::__cancel_safety!($flavour, "once started, the refresh or fetch completes and stores on its own.")]
        pub $($async)* fn refresh_for_org(&self, org_id: &$crate::OrgId) -> $crate::Result<$crate::ServiceAppTokens> {
            self.agent.run(self.engine.refresh_for_org(org_id, self.agent.now()))$($await)*
        }

        /// A valid access token for org-scoped calls: cached when fresh, else refreshed. After
        /// Webex rejected the org's refresh token it is served until it expires, then
        /// [`ReauthorizationRequired`](byova_core::Error::ReauthorizationRequired).
        #[doc = $crate::__cancel_safety!($flavour, "a refresh it started completes on its own; the next call gets its result.")]
        pub $($async)* fn get_access_token(&self, org_id: &$crate::OrgId) -> $crate::Result<$crate::AccessToken> {
            let now = self.agent.now();
            if let Some(token) = self.engine.fresh_org(org_id, now) {
                return Ok(token);
            }
            self.agent.run(self.engine.access_token(org_id, now))$($await)*
        }

        /// Valid tokens for the org with at least `min_valid` left: as
        /// [`IntegrationTokenManager::get_valid_tokens`](crate::IntegrationTokenManager::get_valid_tokens).
        /// Errors: as [`get_access_token`](Self::get_access_token).
        #[doc = $crate::__cancel_safety!($flavour, "a refresh it started completes on its own; the next call gets its result.")]
        pub $($async)* fn get_valid_tokens(&self, org_id: &$crate::OrgId, min_valid: ::std::time::Duration) -> $crate::Result<$crate::ServiceAppTokens> {
            self.agent.run(self.engine.valid_tokens(org_id, min_valid, self.agent.now()))$($await)*
        }

        /// Removes the org's tokens (deauthorization); an unknown org is not an error.
        #[doc = $crate::__cancel_safety!($flavour, "the delete either happened or did not.")]
        pub $($async)* fn remove_org(&self, org_id: &$crate::OrgId) -> $crate::Result<()> {
            self.agent.run(self.engine.remove_org(org_id, self.agent.now()))$($await)*
        }

        /// Registered org ids.
        #[doc = $crate::__cancel_safety!($flavour, "it only reads.")]
        pub $($async)* fn list_orgs(&self) -> $crate::Result<Vec<$crate::OrgId>> {
            self.agent.run(self.engine.list_orgs())$($await)*
        }

        /// The org's status, `None` when not registered.
        #[doc = $crate::__cancel_safety!($flavour, "it only reads.")]
        pub $($async)* fn status(&self, org_id: &$crate::OrgId) -> $crate::Result<Option<$crate::KeyStatus>> {
            self.agent.run(self.engine.status(org_id))$($await)*
        }

        /// Stops serving `rejected` for `org_id`, a token Webex answered 401 to: as
        /// [`IntegrationTokenManager::invalidate`](crate::IntegrationTokenManager::invalidate).
        #[doc = $crate::__cancel_safety!($flavour, "the record is marked in one versioned write, or not at all.")]
        pub $($async)* fn invalidate(&self, org_id: &$crate::OrgId, rejected: &$crate::AccessToken) -> $crate::Result<$crate::Invalidation> {
            self.agent.run(self.engine.invalidate(org_id, rejected, self.agent.now()))$($await)*
        }

        /// Webex rejected `renewed` too, the token a request for `org_id` was retried with: as
        /// [`IntegrationTokenManager::rejected_again`](crate::IntegrationTokenManager::rejected_again).
        pub $($async)* fn rejected_again(&self, org_id: &$crate::OrgId, renewed: &$crate::AccessToken) -> $crate::Result<$crate::Invalidation> {
            self.agent.run(self.engine.rejected_again(org_id, renewed, self.agent.now()))$($await)*
        }
    };
}

/// `Byova`'s methods. Expects `integration: IntegrationTokenManager` and
/// `service_app: ServiceAppTokenManager` on `Self` and `Drive` in scope.
#[doc(hidden)]
#[macro_export]
macro_rules! __byova_methods {
    ($flavour:ident, $storage:ty, {$($async:tt)*}, {$($await:tt)*}) => {
        /// Refreshes, fetches, code exchanges and removals running now (they run on their own,
        /// whoever started them): a process that is about to exit waits for this to reach zero,
        /// so no token Webex issued is dropped unsaved.
        pub fn work_in_progress(&self) -> usize {
            self.integration.agent.engine.flights_in_progress()
                + self.service_app.agent.engine.flights_in_progress()
        }

        /// A builder from both apps' credentials (production Webex, in-memory storage).
        pub fn builder(
            integration: $crate::IntegrationCredentials,
            service_app: $crate::ServiceAppCredentials,
        ) -> ByovaBuilder {
            ByovaBuilder::new(integration, service_app)
        }

        /// From the environment (the `WEBEX_*` credentials, `BYOVA_BASE_URL`,
        /// `BYOVA_WEBHOOK_SECRET`), with in-memory storage. Errors: a missing or invalid
        /// variable.
        pub fn from_env() -> $crate::Result<Self> {
            ByovaBuilder::from_env()?.build()
        }

        /// [`from_env`](Self::from_env) with the given storage.
        pub fn from_env_with_storage(storage: ::std::sync::Arc<$storage>) -> $crate::Result<Self> {
            ByovaBuilder::from_env()?.storage(storage).build()
        }

        /// The Integration manager.
        pub fn integration(&self) -> &IntegrationTokenManager {
            &self.integration
        }

        /// The Service App manager.
        pub fn service_app(&self) -> &ServiceAppTokenManager {
            &self.service_app
        }

        /// Handles one `serviceApp` webhook delivery: verifies `X-Spark-Signature` over the raw
        /// body (when secrets are set), fetches tokens on `authorized` unless the stored
        /// registration is already as new, removes them on `deauthorized` unless the org was
        /// authorized again after it. Repeated, late and reordered deliveries are answered by
        /// the store. Errors: [`WebhookSignature`](byova_core::Error::WebhookSignature),
        /// [`InvalidInput`](byova_core::Error::InvalidInput) (malformed), or the fetch's (answer
        /// 5xx so Webex retries).
        #[doc = $crate::__cancel_safety!($flavour, "the fetch or removal it started completes on its own.")]
        pub $($async)* fn handle_service_app_webhook(
            &self,
            raw_body: &[u8],
            signature_header: Option<&str>,
        ) -> $crate::Result<$crate::webhook::WebhookOutcome> {
            let sa = &self.service_app;
            sa.agent.run(sa.engine.handle_webhook(raw_body, signature_header, sa.agent.now()))$($await)*
        }

        /// Every registered webhook, following `Link` pagination.
        #[doc = $crate::__cancel_safety!($flavour, "it only reads.")]
        pub $($async)* fn list_webhooks(&self) -> $crate::Result<Vec<$crate::webhook::Webhook>> {
            self.service_app.agent.run(self.service_app.engine.list_webhooks())$($await)*
        }

        /// Creates a webhook.
        #[doc = $crate::__cancel_safety!($flavour, "once sent, the webhook may exist; list to see.")]
        pub $($async)* fn create_webhook(&self, webhook: &$crate::webhook::NewWebhook) -> $crate::Result<$crate::webhook::Webhook> {
            self.service_app.agent.run(self.service_app.engine.create_webhook(webhook.clone()))$($await)*
        }

        /// Deletes a webhook (an unknown id counts as deleted).
        #[doc = $crate::__cancel_safety!($flavour, "the webhook is deleted or not; deleting again is harmless.")]
        pub $($async)* fn delete_webhook(&self, webhook_id: &str) -> $crate::Result<()> {
            self.service_app.agent.run(self.service_app.engine.delete_webhook(webhook_id))$($await)*
        }

        /// Makes sure the `serviceApp` `authorized` and `deauthorized` webhooks deliver to
        /// `target_url`, signed with `secret`: creates what is missing, re-activates what Webex
        /// disabled, moves webhooks to `secret` after a rotation; returns those it changed.
        #[doc = $crate::__cancel_safety!($flavour, "what was changed stays; ensuring again does only the rest.")]
        pub $($async)* fn ensure_service_app_webhooks(
            &self,
            target_url: &str,
            secret: Option<&$crate::WebhookSecret>,
        ) -> $crate::Result<Vec<$crate::webhook::Webhook>> {
            let sa = &self.service_app;
            sa.agent.run(sa.engine.ensure_webhooks(target_url, secret, sa.agent.now()))$($await)*
        }

        /// `org_id`'s data sources (`/v1/dataSources`, with its Service App token; outside the
        /// data-source budget).
        #[doc = $crate::__cancel_safety!($flavour, "it only reads.")]
        pub $($async)* fn list_data_sources(&self, org_id: &$crate::OrgId) -> $crate::Result<Vec<$crate::datasource::DataSource>> {
            let sa = &self.service_app;
            sa.agent.run(sa.engine.list_data_sources(org_id, sa.agent.now()))$($await)*
        }

        /// Makes sure `org_id` has a data source for `spec` (its URL and schema) whose token is
        /// not due: reads Webex's list, then registers one, updates one that drifted, extends one
        /// whose token is due (each with a fresh nonce), or leaves it; the outcome says which and
        /// when to look again. Coordinated with every process sharing the store (one claims the
        /// data source before sending; another finds it
        /// [`Busy`](byova_core::datasource::DataSourceAction::Busy)). Each call to Webex is sent
        /// once and takes one from the data-source budget; with no room, or after a 429, the
        /// answer is [`Deferred`](byova_core::datasource::DataSourceAction::Deferred). After
        /// `Busy`, `Deferred` or an error, look again later (the outcome's `next_check`). If the
        /// token lapses, Webex stops calling the gateway for that org.
        #[doc = $crate::__cancel_safety!($flavour, "once sent, the register or update may be done: the shared record is then claimed until its claim runs out, and the next call reads the list before sending anything.")]
        pub $($async)* fn ensure_data_source(
            &self,
            org_id: &$crate::OrgId,
            spec: &$crate::datasource::DataSourceSpec,
        ) -> $crate::Result<$crate::datasource::DataSourceOutcome> {
            let sa = &self.service_app;
            sa.agent.run(sa.engine.ensure_data_source(org_id, spec.clone(), sa.agent.now()))$($await)*
        }

        /// What to call at each of `org_id`'s extension points (as `byova serve
        /// --data-source-url` does): like [`ensure_data_source`](Self::ensure_data_source), but
        /// while the shared record is fresh nothing is sent before the extension point, and then
        /// only the extension. Call again at the outcome's `next_check`.
        #[doc = $crate::__cancel_safety!($flavour, "once sent, the extension may be done: the shared record is then claimed until its claim runs out, and the next call reads the list before sending anything.")]
        pub $($async)* fn keep_data_source(
            &self,
            org_id: &$crate::OrgId,
            spec: &$crate::datasource::DataSourceSpec,
        ) -> $crate::Result<$crate::datasource::DataSourceOutcome> {
            let sa = &self.service_app;
            sa.agent.run(sa.engine.keep_data_source(org_id, spec.clone(), sa.agent.now()))$($await)*
        }

        /// Removes `org_id`'s data source for `spec` from Webex and resets its shared record;
        /// the id of the one removed (`None`: there was none).
        #[doc = $crate::__cancel_safety!($flavour, "the removal may be done once sent; removing again finds nothing.")]
        pub $($async)* fn remove_data_source(
            &self,
            org_id: &$crate::OrgId,
            spec: &$crate::datasource::DataSourceSpec,
        ) -> $crate::Result<Option<String>> {
            let sa = &self.service_app;
            sa.agent.run(sa.engine.remove_data_source(org_id, spec.clone(), sa.agent.now()))$($await)*
        }

        /// The status of the Integration and of every registered org. Holds no secret. Records
        /// that cannot be read are left out ([`status_report`](Self::status_report) counts them).
        #[doc = $crate::__cancel_safety!($flavour, "it only reads.")]
        pub $($async)* fn status(&self) -> $crate::Result<Vec<$crate::KeyStatus>> {
            Ok(self.status_report()$($await)*?.keys)
        }

        /// [`status`](Self::status), with the keys whose records cannot be read.
        #[doc = $crate::__cancel_safety!($flavour, "it only reads.")]
        pub $($async)* fn status_report(&self) -> $crate::Result<$crate::StatusReport> {
            self.service_app.agent.run(self.service_app.engine.status_report(true))$($await)*
        }

        /// Refreshes every registered org, at most `concurrency` at a time; one failing never
        /// stops the others (per-org failures are in the results).
        #[doc = $crate::__cancel_safety!($flavour, "refreshes already started complete; the rest do not start.")]
        pub $($async)* fn refresh_all_orgs(&self, concurrency: usize) -> $crate::Result<Vec<$crate::OrgRefresh>> {
            self.service_app.agent.run(self.service_app.engine.refresh_all(concurrency, None))$($await)*
        }

        /// [`refresh_all_orgs`](Self::refresh_all_orgs), calling `progress` after each org.
        #[doc = $crate::__cancel_safety!($flavour, "as [`refresh_all_orgs`](Self::refresh_all_orgs).")]
        pub $($async)* fn refresh_all_orgs_with_progress(
            &self,
            concurrency: usize,
            progress: impl Fn(&$crate::BulkProgress) + Send + Sync + 'static,
        ) -> $crate::Result<Vec<$crate::OrgRefresh>> {
            let plan = self.service_app.engine.refresh_all(concurrency, Some(::std::sync::Arc::new(progress)));
            self.service_app.agent.run(plan)$($await)*
        }
    };
}

/// `Byova` as a [`Facade`](crate::engine::Facade) over `$storage`: what the builder needs to
/// assemble one. Expects `Byova`, `IntegrationTokenManager`, `ServiceAppTokenManager` and
/// `HttpClient` in scope.
#[doc(hidden)]
#[macro_export]
macro_rules! __byova_facade {
    ($storage:ty) => {
        impl $crate::engine::Facade for Byova {
            type Storage = $storage;

            fn memory_storage() -> ::std::sync::Arc<$storage> {
                ::std::sync::Arc::new($crate::InMemoryTokenStorage::new())
            }

            fn seal(
                storage: ::std::sync::Arc<$storage>,
                keys: Option<$crate::StorageKeys>,
                require_sealed: bool,
            ) -> ::std::sync::Arc<$storage> {
                ::std::sync::Arc::new(
                    $crate::SealedStorage::new(storage, keys).requiring_sealed(require_sealed),
                )
            }

            fn assemble(parts: $crate::engine::Parts<$storage>) -> $crate::Result<Self> {
                let http = HttpClient::new(parts.integration.config().timeout)?;
                let integration = IntegrationTokenManager::from_parts(
                    parts.integration,
                    parts.storage.clone(),
                    http.clone(),
                    parts.clock,
                );
                let service_app = ServiceAppTokenManager::from_parts(
                    parts.service_app,
                    integration.clone(),
                    http,
                    parts.storage,
                );
                Ok(Self { integration, service_app })
            }
        }
    };
}

/// The flavours' `HttpClient` documentation on TLS (a paragraph of its own).
#[doc(hidden)]
#[macro_export]
macro_rules! __tls_provider_doc {
    () => {
        "\n\nTLS uses the process's rustls crypto provider. Unless the application installed one\n\
         before, building a client installs aws-lc-rs, whose handshakes offer the post-quantum\n\
         hybrid key exchange X25519MLKEM768 first (falling back to X25519 and the NIST curves with\n\
         servers that lack it). An application that needs another provider (FIPS, *ring*)\n\
         installs it first; byova then uses that one."
    };
}

/// `.await` in the async flavour's documentation, nothing in the blocking one's.
#[doc(hidden)]
#[macro_export]
macro_rules! __await {
    (async) => {
        ".await"
    };
    (blocking) => {
        ""
    };
}

/// The opening lines of a documentation example's hidden `main` in each flavour.
#[doc(hidden)]
#[macro_export]
macro_rules! __example_main {
    (async) => {
        "# #[tokio::main(flavor = \"multi_thread\")]\n# async fn main() -> Result<(), Box<dyn std::error::Error>> {\n"
    };
    (blocking) => {
        "# fn main() -> Result<(), Box<dyn std::error::Error>> {\n"
    };
}

/// A flavour's three types with their documentation and examples: `IntegrationTokenManager`,
/// `ServiceAppTokenManager` and `Byova` (with `ByovaBuilder`), their methods (from the macros
/// above) and `Byova`'s `Facade`. `authorize` stays with each flavour's listener. Expects
/// `Agent`, `HttpClient` and `Drive` in scope; `$krate` names the flavour in the examples.
#[doc(hidden)]
#[macro_export]
macro_rules! __flavour_types {
    ($flavour:ident, $krate:ident, $storage:ty, {$($async:tt)*}, {$($await:tt)*}) => {
        #[doc = concat!(
            "Manages Integration OAuth tokens for the developer-initiated flow: authorization URL, the\n",
            "full browser flow with a loopback redirect listener, code exchange, refresh, and a valid\n",
            "token on demand. Cheap to clone; clones share one cache.\n\n",
            $crate::__flavoured!($flavour,
                "**Cancel safety.** Every method may be dropped at any `.await`: a refresh, fetch or code\n\
                 exchange that has begun runs to its end (stored, lease released) on its own task, and the\n\
                 next call gets its result. Dropping a call never loses a token or leaves a lease held.\n\n",
                "**Threads.** Concurrent callers share one refresh per key and all get its outcome; a\n\
                 thread that panics mid-refresh leaves nothing held (waiters get an error, the next run\n\
                 releases its lease).\n\n"),
            "```\n",
            $crate::__example_main!($flavour),
            "use std::sync::Arc;\n",
            "use ", stringify!($krate), "::*;\n",
            "# let fake = byova_testkit::FakeWebex::start();\n",
            "# let (credentials, config) = (fake.integration_credentials(), fake.config());\n",
            "let http = HttpClient::new(std::time::Duration::from_secs(30))?;\n",
            "let storage = Arc::new(InMemoryTokenStorage::new());\n",
            "let integration = IntegrationTokenManager::new(credentials, http, storage, config);\n\n",
            "// `authorize` runs the whole browser flow on a loopback listener; by hand it is:\n",
            "let authorization = integration.get_authorization_url(None, None)?; // state and PKCE inside\n",
            "# let redirected = fake.", $crate::__flavoured!($flavour, "browser_visit_async", "browser_visit"),
            "(&authorization.url)", $crate::__await!($flavour), "?; // the user's browser\n",
            "# let code = byova_testkit::wire::query_param(&redirected, \"code\").unwrap();\n",
            "let tokens = integration.exchange_code_for_state(&code, &authorization.state)", $crate::__await!($flavour), "?;\n",
            "assert!(tokens.refresh_token.is_some());\n\n",
            "let bearer = integration.get_access_token()", $crate::__await!($flavour), "?; // cached; refreshed when due\n",
            "# let _ = bearer;\n",
            "# Ok(()) }\n",
            "```",
        )]
        #[derive(Clone, Debug)]
        pub struct IntegrationTokenManager {
            pub(crate) agent: ::std::sync::Arc<Agent>,
            pub(crate) engine: ::std::sync::Arc<$crate::engine::IntegrationEngine>,
        }

        impl IntegrationTokenManager {
            $crate::__integration_manager_methods!($flavour, $storage, {$($async)*}, {$($await)*});
        }

        #[doc = concat!(
            "Fetches, refreshes and stores per-organization Service App tokens, obtained once a\n",
            "customer admin authorizes the Service App in Control Hub. Cheap to clone. ",
            $crate::__flavoured!($flavour, "Cancel safe", "Shared by threads"), " as [`IntegrationTokenManager`] is.\n\n",
            "Errors common to its methods: [`ServiceAppNotAuthorized`](byova_core::Error::ServiceAppNotAuthorized)\n",
            "when the org's admin has not authorized the app, [`OrgNotRegistered`](byova_core::Error::OrgNotRegistered)\n",
            "for an org with no tokens, the Integration's errors (its bearer fetches), storage's.\n\n",
            "```\n",
            $crate::__example_main!($flavour),
            "use std::sync::Arc;\n",
            "use ", stringify!($krate), "::*;\n",
            "# let fake = byova_testkit::FakeWebex::start();\n",
            "# let (integration_credentials, config) = (fake.integration_credentials(), fake.config());\n",
            "# let service_app_credentials = fake.service_app_credentials();\n",
            "let http = HttpClient::new(std::time::Duration::from_secs(30))?;\n",
            "let storage = Arc::new(InMemoryTokenStorage::new());\n",
            "let integration = IntegrationTokenManager::new(integration_credentials, http.clone(), storage.clone(), config);\n",
            "# let issued = fake.issue_integration_tokens();\n",
            "# integration.refresh(Some(&issued.refresh_token))", $crate::__await!($flavour), "?; // stands in for authorize()\n",
            "let service_app = ServiceAppTokenManager::new(service_app_credentials, integration, http, storage);\n\n",
            "// An org id as a webhook, a request or a configuration gives it: parsed once.\n",
            "let org: OrgId = \"63b02f90-9cc6-43b8-aa6d-cad425ac554c\".parse()?;\n",
            "# fake.authorize_org(&org); // a customer admin authorizes the Service App\n",
            "service_app.fetch_token_for_org(&org)", $crate::__await!($flavour), "?; // with the Integration's bearer; stored\n",
            "let token = service_app.get_access_token(&org)", $crate::__await!($flavour), "?; // cached; refreshed when due\n",
            "assert_eq!(service_app.list_orgs()", $crate::__await!($flavour), "?, [org]);\n",
            "# let _ = token;\n",
            "# Ok(()) }\n",
            "```",
        )]
        #[derive(Clone, Debug)]
        pub struct ServiceAppTokenManager {
            pub(crate) agent: ::std::sync::Arc<Agent>,
            pub(crate) engine: ::std::sync::Arc<$crate::engine::ServiceAppEngine>,
            integration: IntegrationTokenManager,
        }

        impl ServiceAppTokenManager {
            $crate::__service_app_manager_methods!($flavour, $storage, {$($async)*}, {$($await)*});
        }

        /// Builds a [`Byova`]: `Byova::builder(integration, service_app)`, then `.config(…)`,
        /// `.storage(…)`, `.clock(…)`, `.webhook_secret(…)` as needed, then `.build()`.
        pub type ByovaBuilder = $crate::ByovaBuilder<Byova>;

        #[doc = concat!(
            "The whole authentication side of a BYOVA provider.",
            $crate::__flavoured!($flavour, " Every method is cancel safe in the sense of [`IntegrationTokenManager`].", ""),
            "\n\n```\n",
            $crate::__example_main!($flavour),
            "use ", stringify!($krate), "::{Byova, OrgId, ServiceAppEventKind, WebhookSecret};\n",
            "# let fake = byova_testkit::FakeWebex::start();\n",
            "# let (integration, service_app) = (fake.integration_credentials(), fake.service_app_credentials());\n",
            "let secret = WebhookSecret::new(\"the secret Webex signs deliveries with\");\n",
            "let byova = Byova::builder(integration, service_app)\n",
            "    .config(fake.config()) // ByovaConfig::default() is production Webex\n",
            "    .webhook_secret(secret.clone())\n",
            "    .build()?; // in-memory storage unless .storage(…) says otherwise\n",
            "# let issued = fake.issue_integration_tokens();\n",
            "# byova.integration().refresh(Some(&issued.refresh_token))", $crate::__await!($flavour), "?; // stands in for authorize()\n\n",
            "// A customer admin authorized the Service App; Webex posts the serviceApp webhook.\n",
            "let org: OrgId = \"63b02f90-9cc6-43b8-aa6d-cad425ac554c\".parse()?;\n",
            "# fake.authorize_org(&org);\n",
            "# let (raw_body, signature) = fake.service_app_delivery(ServiceAppEventKind::Authorized, &org, Some(&secret));\n",
            "let outcome = byova.handle_service_app_webhook(&raw_body, signature.as_deref())", $crate::__await!($flavour), "?;\n",
            "assert_eq!(outcome.org_id(), Some(&org)); // its tokens are fetched and stored\n\n",
            "let token = byova.service_app().get_access_token(&org)", $crate::__await!($flavour), "?; // cached; refreshed when due\n",
            "# let _ = token;\n",
            "# Ok(()) }\n",
            "```",
        )]
        #[derive(Clone, Debug)]
        pub struct Byova {
            integration: IntegrationTokenManager,
            service_app: ServiceAppTokenManager,
        }

        $crate::__byova_facade!($storage);

        impl Byova {
            $crate::__byova_methods!($flavour, $storage, {$($async)*}, {$($await)*});
        }
    };
}

/// A flavour's `RedirectListener` (the struct, `bind` and its accessors; each flavour writes
/// `wait` on its own I/O) and `wait_for_redirect`. Expects `TcpListener` (std's or tokio's)
/// and `present_url` in scope.
#[doc(hidden)]
#[macro_export]
macro_rules! __redirect_listener {
    ($flavour:ident, {$($async:tt)*}, {$($await:tt)*}) => {
        /// A listener bound on the redirect URI's loopback address, waiting for one redirect.
        ///
        /// Bind it before opening the browser (so the port is ready), read back
        /// [`redirect_uri`](Self::redirect_uri) (the port may have been chosen by the OS), then
        /// [`wait`](Self::wait). The port closes when `wait` returns or the listener is dropped.
        #[derive(Debug)]
        pub struct RedirectListener {
            listener: TcpListener,
            redirect: $crate::redirect::LoopbackRedirect,
            port: u16,
        }

        impl RedirectListener {
            /// Binds the loopback address of `redirect_uri` (port 0 picks a free port).
            ///
            /// # Errors
            /// [`Error::Configuration`](byova_core::Error::Configuration) for a non-loopback URI,
            /// [`Error::Listen`](byova_core::Error::Listen) for a port already in use.
            #[doc = $crate::__cancel_safety!($flavour, "dropped, nothing is bound.")]
            pub $($async)* fn bind(redirect_uri: &str) -> $crate::Result<Self> {
                let redirect = $crate::redirect::LoopbackRedirect::parse(redirect_uri)?;
                let listen = |e| $crate::Error::listen(redirect.listen_address(), e);
                let listener = TcpListener::bind((redirect.bind_host(), redirect.port))$($await)*.map_err(listen)?;
                let port = listener.local_addr().map_err(listen)?.port();
                Ok(Self { listener, redirect, port })
            }

            /// The redirect URI with the bound port.
            pub fn redirect_uri(&self) -> String {
                self.redirect.uri_with_port(self.port)
            }

            /// The bound port.
            pub fn port(&self) -> u16 {
                self.port
            }
        }

        /// Waits for the OAuth redirect on `redirect_uri` (the Python SDK's `wait_for_redirect`):
        /// binds the listener, opens (or prints) the authorization URL, and returns `(code, state)`.
        ///
        /// # Errors
        /// As [`RedirectListener::bind`] and [`RedirectListener::wait`];
        /// [`Error::InvalidInput`](byova_core::Error::InvalidInput) without `expected_state`.
        #[doc = $crate::__cancel_safety!($flavour, "dropped, the port closes and the flow ends.")]
        pub $($async)* fn wait_for_redirect(
            redirect_uri: &str,
            options: $crate::RedirectOptions,
        ) -> $crate::Result<(String, Option<String>)> {
            let state = options.required_state()?;
            let listener = RedirectListener::bind(redirect_uri)$($await)*?;
            if let Some(url) = &options.authorization_url {
                present_url(url, options.open_browser, options.browser.clone());
            }
            let code = listener.wait(state.clone(), options.timeout)$($await)*?;
            Ok((code.expose_secret().to_owned(), Some(state.expose_secret().to_owned())))
        }
    };
}
