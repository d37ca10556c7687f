//! Registration kubeconfigs: what a Secret writer controls, read by
//! `meridian_controller::kubeconfig::accept` (the allow-list in front of every member client).
//!
//! Input: the first line, if it starts with `@`, names the context (as the
//! `meridian.io/context` annotation would); the rest is the kubeconfig text.
//!
//! Invariants: no panic; a refusal names a field and never repeats a `token:` value of the
//! input; an accepted kubeconfig has an `https://` server and builds a client configuration
//! with no proxy and no certificate file (nothing from the controller's environment).
#![no_main]

use libfuzzer_sys::fuzz_target;
use meridian_controller::kubeconfig::accept;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (context, text) = match text.strip_prefix('@').and_then(|t| t.split_once('\n')) {
        Some((context, rest)) => (Some(context), rest),
        None => (None, text),
    };
    match accept(text, context) {
        Ok(accepted) => {
            assert!(
                accepted.server().starts_with("https://"),
                "{}",
                accepted.server()
            );
            let config = accepted.config();
            assert!(config.proxy_url.is_none());
            assert!(config.root_cert_file.is_none());
            assert!(!config.accept_invalid_certs);
            assert!(config.auth_info.exec.is_none() && config.auth_info.auth_provider.is_none());
        }
        Err(e) => {
            let message = e.to_string();
            // Any token value of at least 8 characters (shorter ones may be field names).
            for line in text.lines() {
                if let Some(value) = line.trim().strip_prefix("token:") {
                    let value = value.trim().trim_matches(|c| c == '"' || c == '\'');
                    if value.len() >= 8 {
                        assert!(!message.contains(value), "{message:?} repeats a token");
                    }
                }
            }
        }
    }
});
