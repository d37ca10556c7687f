//! Runs the real `meridianctl` against testbed clusters.

use std::process::{Command, Output};

pub(crate) fn meridianctl(args: &[&str]) -> Output {
    // Never fall back to a kubeconfig of the machine running the tests.
    Command::new(env!("CARGO_BIN_EXE_meridianctl"))
        .args(args)
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .output()
        .unwrap()
}

pub(crate) fn ok(args: &[&str]) -> String {
    let out = meridianctl(args);
    assert!(
        out.status.success(),
        "meridianctl {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}
