use meridian_testbed::mesh::{
    CONTROLLER_AUDIENCE, DNS_SERVICE_ACCOUNT, GATEWAY_SERVICE_ACCOUNT, service_account_token,
};

use crate::support::*;

/// `meridian_grpc_refusals_total{service="Watch",reason}` (0 when absent).
async fn refusals(ctl: &Controller, reason: &str) -> u64 {
    let series = format!("meridian_grpc_refusals_total{{service=\"Watch\",reason=\"{reason}\"}}");
    sample(&ctl.metrics_text().await, &series).map_or(0, |v| v as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_needs_a_gateway_or_dns_token_for_the_controller_audience() {
    let testbed = testbed_of(&["east1"]).await;
    let east1 = testbed.cluster("east1").unwrap();
    let ip = testbed.allocate_address().unwrap();
    let ctl = Controller::start(&testbed, east1, ip, &[]).await;

    // Anonymous: no token at all.
    let err = ctl.watch_as(None).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");
    assert!(
        err.message().contains("needs a ServiceAccount token"),
        "{err}"
    );
    // Something that is no token the API server issued.
    let err = ctl.watch_as(Some("not-a-token")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");
    assert!(err.message().contains("not accepted"), "{err}");
    // The gateway's own token, but for the API server's default audience (what a pod's
    // automounted token is): refused, so tokens minted for other uses do not work here.
    let default_audience = service_account_token(east1, GATEWAY_SERVICE_ACCOUNT, None)
        .await
        .unwrap();
    let err = ctl.watch_as(Some(&default_audience)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");
    assert!(err.message().contains(AUDIENCE_REFUSED), "{err}");
    // A valid token for the right audience, of another ServiceAccount.
    let intruder = service_account_token(east1, "intruder", Some(CONTROLLER_AUDIENCE))
        .await
        .unwrap();
    let err = ctl.watch_as(Some(&intruder)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
    assert!(
        err.message()
            .contains("system:serviceaccount:meridian-system:intruder may not call Watch"),
        "{err}"
    );
    assert!(
        !err.message().contains(&intruder),
        "the token is not echoed"
    );
    assert_eq!(refusals(&ctl, "unauthenticated").await, 3);
    assert_eq!(refusals(&ctl, "permission_denied").await, 1);

    // The gateway's and the DNS server's tokens for the controller's audience are served.
    let mut gateway = ctl.subscribe().await;
    gateway.wait_for("a first snapshot", |_| true).await;
    let dns = service_account_token(east1, DNS_SERVICE_ACCOUNT, Some(CONTROLLER_AUDIENCE))
        .await
        .unwrap();
    let mut stream = ctl.watch_as(Some(&dns)).await.unwrap();
    assert!(stream.message().await.unwrap().is_some());
    ctl.kill().await;
}

/// DeltaWatch streams the same data as Watch, so it checks the same token the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_watch_needs_a_gateway_or_dns_token_too() {
    let testbed = testbed_of(&["east1"]).await;
    let east1 = testbed.cluster("east1").unwrap();
    let ip = testbed.allocate_address().unwrap();
    let ctl = Controller::start(&testbed, east1, ip, &[]).await;
    let delta_refusals = |reason: &'static str| {
        let ctl = &ctl;
        async move {
            let series = format!(
                "meridian_grpc_refusals_total{{service=\"DeltaWatch\",reason=\"{reason}\"}}"
            );
            sample(&ctl.metrics_text().await, &series).map_or(0, |v| v as u64)
        }
    };

    let err = ctl.delta_watch_as(None).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");
    assert!(
        err.message().contains("needs a ServiceAccount token"),
        "{err}"
    );
    let intruder = service_account_token(east1, "intruder", Some(CONTROLLER_AUDIENCE))
        .await
        .unwrap();
    let err = ctl.delta_watch_as(Some(&intruder)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
    assert!(
        err.message()
            .contains("system:serviceaccount:meridian-system:intruder may not call DeltaWatch"),
        "{err}"
    );
    assert_eq!(delta_refusals("unauthenticated").await, 1);
    assert_eq!(delta_refusals("permission_denied").await, 1);

    // The gateway's token is served: the first answer is the whole state, as resources.
    let gateway = service_account_token(east1, GATEWAY_SERVICE_ACCOUNT, Some(CONTROLLER_AUDIENCE))
        .await
        .unwrap();
    let mut stream = ctl.delta_watch_as(Some(&gateway)).await.unwrap();
    let first = stream.message().await.unwrap().expect("a first answer");
    assert!(
        first.resources.iter().any(|r| r.name == "header"),
        "{first:?}"
    );
    assert_ne!(first.system_version, 0);
    ctl.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_over_the_cap_are_refused_and_counted() {
    let testbed = testbed_of(&["east1"]).await;
    let east1 = testbed.cluster("east1").unwrap();
    let ip = testbed.allocate_address().unwrap();
    let ctl = Controller::start(&testbed, east1, ip, &["--max-subscribers", "2"]).await;
    let mut first = ctl.subscribe().await;
    first.wait_for("a first snapshot", |_| true).await;
    let second = ctl.subscribe().await;
    let err = ctl.watch_as(Some(&ctl.token)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err}");
    assert!(err.message().contains("--max-subscribers"), "{err}");
    assert_eq!(refusals(&ctl, "subscriber_limit").await, 1);
    // A closed stream frees its slot.
    drop(second);
    let mut third = eventually("a slot after a stream closed", || async {
        ctl.watch_as(Some(&ctl.token)).await.ok()
    })
    .await;
    assert!(third.message().await.unwrap().is_some());
    ctl.kill().await;
}
