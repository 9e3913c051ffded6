//! One org's data sources (`/v1/dataSources`), with its Service App token: listing, and
//! `ensure`, which registers, updates, extends or leaves the data source as
//! [`datasource::plan`](crate::datasource::plan) decides.

use std::sync::Arc;

use crate::datasource::{
    DataSource, DataSourceOutcome, DataSourcePlan, DataSourceSpec, list_request, new_nonce, parse_list,
    parse_one, plan, register_request, update_request,
};
use crate::engine::step::{Step, done};
use crate::engine::{ServiceAppEngine, send_with_retry};
use crate::error::Error;
use crate::key::OrgId;
use crate::secret::AccessToken;
use crate::time::Timestamp;

impl ServiceAppEngine {
    /// `org`'s data sources.
    pub fn list_data_sources(self: &Arc<Self>, org: &OrgId, now: Timestamp) -> Step<Vec<DataSource>> {
        let engine = self.clone();
        self.access_token(org, now).then(now, move |token, _| match token {
            Ok(token) => engine.send_list(&token),
            Err(e) => done(Err(e)),
        })
    }

    fn send_list(&self, token: &AccessToken) -> Step<Vec<DataSource>> {
        send_with_retry(self.config(), list_request(self.config(), token), |r, _| parse_list(r))
    }

    /// Makes sure `org` has a data source for `spec` whose token is not due: registers one,
    /// updates one that drifted, extends one that is due (each with a fresh nonce), or leaves
    /// it. The outcome says which.
    pub fn ensure_data_source(
        self: &Arc<Self>,
        org: &OrgId,
        spec: DataSourceSpec,
        now: Timestamp,
    ) -> Step<DataSourceOutcome> {
        let engine = self.clone();
        self.access_token(org, now).then(now, move |token, now| {
            let token = match token {
                Ok(token) => token,
                Err(e) => return done(Err(e)),
            };
            engine.send_list(&token).then(now, move |existing, now| {
                let existing = match existing {
                    Ok(existing) => existing,
                    Err(e) => return done(Err(e)),
                };
                let action = plan(&existing, &spec, now);
                let request = match &action {
                    DataSourcePlan::Register => {
                        register_request(engine.config(), &token, &spec, &new_nonce())
                    }
                    DataSourcePlan::Update { id } | DataSourcePlan::Extend { id } => {
                        update_request(engine.config(), &token, id, &spec, &new_nonce())
                    }
                    DataSourcePlan::Keep { id, .. } => {
                        let kept = existing.into_iter().find(|d| d.id == *id).ok_or_else(|| {
                            Error::InvalidResponse {
                                what: "the data source planned on is not in the list".into(),
                                status: 200,
                            }
                        });
                        return done(kept.map(|data_source| DataSourceOutcome { action, data_source }));
                    }
                };
                send_with_retry(engine.config(), request, |r, _| parse_one(r)).then(now, move |made, _| {
                    done(made.map(|data_source| DataSourceOutcome { action, data_source }))
                })
            })
        })
    }
}
