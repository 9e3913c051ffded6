//! A blocking tool (no async runtime): calls Webex's `GET /people/me` with the Integration's
//! token, or with an org's Service App token when an org id is given. Tokens come from the
//! file store the `byova` CLI writes by default (`BYOVA_STORAGE=file:///…` to name another;
//! run `byova authorize` once), are refreshed when due, and a token Webex rejects is replaced
//! on the spot by `BearerAuth`.
//!
//! ```sh
//! cargo run -p example-blocking-tool              # as the Integration
//! cargo run -p example-blocking-tool -- ORG_ID    # as the Service App in that org
//! ```

use std::sync::Arc;

use byova_blocking::{BearerAuth, Byova};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Where the `byova` CLI keeps its files unless BYOVA_STORAGE says otherwise.
    let url = std::env::var("BYOVA_STORAGE").unwrap_or_else(|_| {
        let data = std::env::var("XDG_DATA_HOME")
            .unwrap_or_else(|_| format!("{}/.local/share", std::env::var("HOME").unwrap_or_default()));
        format!("file://{data}/byova")
    });
    let storage = Arc::new(byova_storage_file::FileTokenStorage::from_url(&url)?);
    let byova = Arc::new(Byova::from_env_with_storage(storage)?);
    let url = format!("{}/people/me", byova.integration().config().base_url);
    let auth = match std::env::args().nth(1) {
        Some(org_id) => BearerAuth::org(byova, org_id.parse()?),
        None => BearerAuth::integration(byova),
    };
    let webex: ureq::Agent = ureq::Agent::config_builder().middleware(auth).build().into();
    let mut response = webex.get(&url).call()?;
    println!("{}", response.body_mut().read_to_string()?);
    Ok(())
}
