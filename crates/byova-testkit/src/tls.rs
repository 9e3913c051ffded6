//! What the flavours' TLS set-up promises, checked once for both.

use rustls::NamedGroup;

/// Panics unless the process's default rustls crypto provider (the one a flavour's
/// `HttpClient::new` installs when the application installed none) offers the post-quantum
/// hybrid key exchange X25519MLKEM768 first and keeps X25519 as the classical fallback.
pub fn assert_prefers_post_quantum_key_exchange() {
    let provider = rustls::crypto::CryptoProvider::get_default().expect("a crypto provider is installed");
    let groups: Vec<NamedGroup> = provider.kx_groups.iter().map(|g| g.name()).collect();
    assert_eq!(groups.first(), Some(&NamedGroup::X25519MLKEM768), "{groups:?}");
    assert!(groups.contains(&NamedGroup::X25519), "a classical fallback remains: {groups:?}");
}
