//! Registration kubeconfigs: what a Secret writer controls, read by
//! `meridian_crd::kubeconfig::accept` (the allow-list in front of every member client).
//!
//! Input: the first line, if it starts with `@`, names the context (as the
//! `meridian.io/context` annotation would); the rest is the kubeconfig text.
//!
//! Invariants: no panic; a refusal's problem (beside the field path, made of keys) never
//! repeats a secret-like `token:` value of the input; an accepted kubeconfig has an `https://` server
//! and builds a client configuration with no proxy and no certificate file (nothing from
//! the controller's environment).
#![no_main]

use libfuzzer_sys::fuzz_target;
use meridian_crd::kubeconfig::accept;

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
            // The field path is made of the document's keys; the problem must never carry a
            // value. Checked for secret-like `token:` values only (16+ characters of
            // `[A-Za-z0-9_-]` with a digit and a letter), which no fixed problem text holds.
            let problem = e.problem.to_string();
            for line in text.lines() {
                if let Some(value) = line.trim().strip_prefix("token:") {
                    let value = value.trim().trim_matches(|c| c == '"' || c == '\'');
                    let secret_like = value.len() >= 16
                        && value
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                        && value.bytes().any(|b| b.is_ascii_digit())
                        && value.bytes().any(|b| b.is_ascii_alphabetic());
                    if secret_like {
                        assert!(!problem.contains(value), "{e} repeats a token");
                    }
                }
            }
        }
    }
});
