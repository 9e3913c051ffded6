//! The scenario table's adapter for a flavour, written once: `flavour_adapter!` generates a
//! [`Flavour`](crate::scenarios::Flavour) and its [`Sdk`](crate::scenarios::Sdk) over a
//! flavour crate's public API, so adding a method to the table touches one place.
//!
//! ```text
//! byova_testkit::flavour_adapter!(async byova_async);     // in byova-async's tests
//! byova_testkit::flavour_adapter!(blocking byova_blocking); // in byova-blocking's tests
//! // then: byova_testkit::scenarios::run_all(Arc::new(Adapter)).await;
//! ```
//!
//! Each `Sdk` method is one call into the flavour's `Byova`; the async form awaits it, the
//! blocking form runs it on the runtime's blocking pool (as async callers of a blocking API
//! must), so dropping the returned future abandons the blocking call without stopping it.

/// Runs `$e` (an expression over `$b: Arc<Byova>`) as the async flavour's call.
#[doc(hidden)]
#[macro_export]
macro_rules! __adapter_call_async {
    ($self:ident, |$b:ident| $e:expr) => {{
        let $b = $self.byova.clone();
        ::std::boxed::Box::pin(async move { $e.await })
    }};
}

/// Runs `$e` (an expression over `$b: Arc<Byova>`) as the blocking flavour's call.
#[doc(hidden)]
#[macro_export]
macro_rules! __adapter_call_blocking {
    ($self:ident, |$b:ident| $e:expr) => {{
        let $b = $self.byova.clone();
        ::std::boxed::Box::pin(async move {
            $crate::__private::tokio::task::spawn_blocking(move || $e).await.unwrap_or_else(|e| {
                Err(byova_core::Error::Internal(format!("the blocking call panicked: {e}")))
            })
        })
    }};
}

/// Generates `Adapter` (a [`Flavour`](crate::scenarios::Flavour)) and its
/// [`Sdk`](crate::scenarios::Sdk) for a flavour crate: `flavour_adapter!(async byova_async)` or
/// `flavour_adapter!(blocking byova_blocking)`. The invoking crate depends on `byova-core` and
/// the flavour.
#[macro_export]
macro_rules! flavour_adapter {
    (async $krate:ident) => {
        $crate::flavour_adapter!(@impl $krate, "async", async_storage, __adapter_call_async);
    };
    (blocking $krate:ident) => {
        $crate::flavour_adapter!(@impl $krate, "blocking", blocking_storage, __adapter_call_blocking);
    };
    (@impl $krate:ident, $name:literal, $storage:ident, $call:ident) => {
        /// The flavour under test.
        pub struct Adapter;

        /// The flavour's `Byova`, behind the scenario table's face.
        pub struct AdapterSdk {
            byova: ::std::sync::Arc<$krate::Byova>,
        }

        impl $crate::scenarios::Flavour for Adapter {
            fn name(&self) -> &'static str {
                $name
            }

            fn build(&self, setup: &$crate::scenarios::Setup) -> ::std::sync::Arc<dyn $crate::scenarios::Sdk> {
                let mut builder = $krate::Byova::builder(setup.integration.clone(), setup.service_app.clone())
                    .config(setup.config.clone())
                    .storage(setup.$storage.clone())
                    .clock(setup.clock.clone());
                if let Some(secret) = &setup.webhook_secret {
                    builder = builder.webhook_secret(secret.clone());
                }
                if setup.allow_unsigned_webhooks {
                    builder = builder.allow_unsigned_webhooks();
                }
                ::std::sync::Arc::new(AdapterSdk { byova: ::std::sync::Arc::new(builder.build().expect("build Byova")) })
            }
        }

        impl $crate::scenarios::Sdk for AdapterSdk {
            fn get_access_token(&self) -> $crate::scenarios::BoxFut<'_, byova_core::Result<byova_core::AccessToken>> {
                $crate::$call!(self, |b| b.integration().get_access_token())
            }
            fn refresh(&self, refresh_token: Option<String>) -> $crate::scenarios::BoxFut<'_, byova_core::Result<byova_core::OAuthTokens>> {
                $crate::$call!(self, |b| b.integration().refresh(refresh_token.as_deref()))
            }
            fn get_authorization_url(&self) -> byova_core::Result<byova_core::AuthorizationUrl> {
                self.byova.integration().get_authorization_url(None, None)
            }
            fn exchange_code(&self, code: String) -> $crate::scenarios::BoxFut<'_, byova_core::Result<byova_core::OAuthTokens>> {
                $crate::$call!(self, |b| b.integration().exchange_code(&code))
            }
            fn exchange_code_for_state(&self, code: String, state: String) -> $crate::scenarios::BoxFut<'_, byova_core::Result<byova_core::OAuthTokens>> {
                $crate::$call!(self, |b| b.integration().exchange_code_for_state(&code, &state))
            }
            fn authorize(
                &self,
                browser: $crate::scenarios::Browser,
                timeout: ::std::time::Duration,
            ) -> $crate::scenarios::BoxFut<'_, byova_core::Result<byova_core::OAuthTokens>> {
                let mut options = byova_core::AuthorizeOptions::default().with_timeout(timeout);
                options.browser = Some(browser);
                $crate::$call!(self, |b| b.integration().authorize(options))
            }
            fn wait_for_redirect(
                &self,
                redirect_uri: String,
                state: String,
                timeout: ::std::time::Duration,
            ) -> $crate::scenarios::BoxFut<'_, byova_core::Result<(String, Option<String>)>> {
                let mut options = byova_core::RedirectOptions::default();
                options.timeout = timeout;
                options.open_browser = false;
                options.expected_state = Some(state);
                $crate::$call!(self, |_b| $krate::wait_for_redirect(&redirect_uri, options))
            }
            fn org_token(&self, org_id: String) -> $crate::scenarios::BoxFut<'_, byova_core::Result<byova_core::AccessToken>> {
                $crate::$call!(self, |b| b.service_app().get_access_token(&byova_core::OrgId::new(&org_id)?))
            }
            fn invalidate(&self, rejected: byova_core::AccessToken) -> $crate::scenarios::BoxFut<'_, byova_core::Result<byova_core::Invalidation>> {
                $crate::$call!(self, |b| b.integration().invalidate(&rejected))
            }
            fn invalidate_org(&self, org_id: String, rejected: byova_core::AccessToken) -> $crate::scenarios::BoxFut<'_, byova_core::Result<byova_core::Invalidation>> {
                $crate::$call!(self, |b| b.service_app().invalidate(&byova_core::OrgId::new(&org_id)?, &rejected))
            }
            fn rejected_again(&self, org_id: Option<String>, renewed: byova_core::AccessToken) -> $crate::scenarios::BoxFut<'_, byova_core::Result<byova_core::Invalidation>> {
                match org_id {
                    None => $crate::$call!(self, |b| b.integration().rejected_again(&renewed)),
                    Some(org_id) => $crate::$call!(self, |b| b.service_app().rejected_again(&byova_core::OrgId::new(&org_id)?, &renewed)),
                }
            }
            fn fetch_token_for_org(&self, org_id: String) -> $crate::scenarios::BoxFut<'_, byova_core::Result<byova_core::OAuthTokens>> {
                $crate::$call!(self, |b| b.service_app().fetch_token_for_org(&byova_core::OrgId::new(&org_id)?))
            }
            fn fetch_token_from_webhook_org(
                &self,
                encoded: String,
            ) -> $crate::scenarios::BoxFut<'_, byova_core::Result<(byova_core::OrgId, byova_core::OAuthTokens)>> {
                $crate::$call!(self, |b| b.service_app().fetch_token_from_webhook_org(&encoded))
            }
            fn save_registration(
                &self,
                org_id: String,
                refresh_token: String,
            ) -> $crate::scenarios::BoxFut<'_, byova_core::Result<byova_core::OAuthTokens>> {
                $crate::$call!(self, |b| b.service_app().save_registration(&byova_core::OrgId::new(&org_id)?, &refresh_token))
            }
            fn refresh_for_org(&self, org_id: String) -> $crate::scenarios::BoxFut<'_, byova_core::Result<byova_core::OAuthTokens>> {
                $crate::$call!(self, |b| b.service_app().refresh_for_org(&byova_core::OrgId::new(&org_id)?))
            }
            fn remove_org(&self, org_id: String) -> $crate::scenarios::BoxFut<'_, byova_core::Result<()>> {
                $crate::$call!(self, |b| b.service_app().remove_org(&byova_core::OrgId::new(&org_id)?))
            }
            fn application_id(&self) -> String {
                self.byova.service_app().application_id().to_owned()
            }
            fn handle_webhook(&self, body: Vec<u8>, signature: Option<String>) -> $crate::scenarios::BoxFut<'_, byova_core::Result<String>> {
                let outcome = $crate::$call!(self, |b| b.handle_service_app_webhook(&body, signature.as_deref()));
                ::std::boxed::Box::pin(async move { outcome.await.map(|o| format!("{o:?}")) })
            }
            fn ensure_webhooks(
                &self,
                target_url: String,
                secret: Option<byova_core::WebhookSecret>,
            ) -> $crate::scenarios::BoxFut<'_, byova_core::Result<usize>> {
                let created = $crate::$call!(self, |b| b.ensure_service_app_webhooks(&target_url, secret.as_ref()));
                ::std::boxed::Box::pin(async move { created.await.map(|c| c.len()) })
            }
            fn count_webhooks(&self) -> $crate::scenarios::BoxFut<'_, byova_core::Result<usize>> {
                let listed = $crate::$call!(self, |b| b.list_webhooks());
                ::std::boxed::Box::pin(async move { listed.await.map(|w| w.len()) })
            }
            fn status(&self) -> $crate::scenarios::BoxFut<'_, byova_core::Result<Vec<byova_core::KeyStatus>>> {
                $crate::$call!(self, |b| b.status())
            }
            fn keep_data_source(
                &self,
                org_id: String,
                spec: byova_core::datasource::DataSourceSpec,
                reconcile: bool,
            ) -> $crate::scenarios::BoxFut<'_, byova_core::Result<byova_core::datasource::DataSourceOutcome>> {
                if reconcile {
                    $crate::$call!(self, |b| b.ensure_data_source(&byova_core::OrgId::new(&org_id)?, &spec))
                } else {
                    $crate::$call!(self, |b| b.keep_data_source(&byova_core::OrgId::new(&org_id)?, &spec))
                }
            }
            fn remove_data_source(
                &self,
                org_id: String,
                spec: byova_core::datasource::DataSourceSpec,
            ) -> $crate::scenarios::BoxFut<'_, byova_core::Result<Option<String>>> {
                $crate::$call!(self, |b| b.remove_data_source(&byova_core::OrgId::new(&org_id)?, &spec))
            }
            fn refresh_all_orgs(&self, concurrency: usize) -> $crate::scenarios::BoxFut<'_, byova_core::Result<Vec<(byova_core::OrgId, bool)>>> {
                let all = $crate::$call!(self, |b| b.refresh_all_orgs(concurrency));
                ::std::boxed::Box::pin(async move {
                    Ok(all.await?.into_iter().map(|r| (r.org_id, r.result.is_ok())).collect())
                })
            }
        }
    };
}
