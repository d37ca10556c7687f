use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use meridian_api::proto::SignCertificateRequest;
use meridian_api::proto::certificates_client::CertificatesClient;
use meridian_identity::ca::INTERMEDIATE_TTL;
use meridian_identity::{CertificateRequest, Identity, RootCa};
use meridian_testbed::SYSTEM_NAMESPACE;
use meridian_testbed::mesh::{CONTROLLER_AUDIENCE, GATEWAY_SERVICE_ACCOUNT, service_account_token};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_csrs_are_signed_with_the_mesh_ca_from_its_secret() {
    let testbed = testbed().await;
    let east1 = testbed.cluster("east1").unwrap();
    let ip = testbed.allocate_address().unwrap();
    let ctl = Controller::start(&testbed, east1, ip, &[]).await;
    let mut client = CertificatesClient::connect(format!("http://{}", ctl.grpc))
        .await
        .unwrap();
    let identity = Identity::gateway("meridian.local", "east1").unwrap();
    let csr = CertificateRequest::generate(&identity).unwrap();
    let token = ctl.token.clone();
    let signed_in = move |token: &str| {
        let mut r = tonic::Request::new(SignCertificateRequest {
            csr_pem: csr.pem().to_owned(),
            cluster: "east1".into(),
            ttl_seconds: 0,
        });
        let value = format!("Bearer {token}").parse().unwrap();
        r.metadata_mut().insert("authorization", value);
        r
    };
    let request = || signed_in(&token);

    // Only the gateway ServiceAccount may ask: no token, a bad token or another
    // account's token are refused before anything is signed.
    let anonymous = SignCertificateRequest {
        csr_pem: String::new(),
        cluster: "east1".into(),
        ttl_seconds: 0,
    };
    let err = client.sign_certificate(anonymous).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");
    let err = client
        .sign_certificate(signed_in("not-a-token"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");
    // The gateway's own token, but for the API server's default audience.
    let default_audience = service_account_token(east1, GATEWAY_SERVICE_ACCOUNT, None)
        .await
        .unwrap();
    let err = client
        .sign_certificate(signed_in(&default_audience))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");
    assert!(err.message().contains(AUDIENCE_REFUSED), "{err}");
    let intruder = service_account_token(east1, "intruder", Some(CONTROLLER_AUDIENCE))
        .await
        .unwrap();
    let err = client
        .sign_certificate(signed_in(&intruder))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
    assert!(
        err.message()
            .contains("system:serviceaccount:meridian-system:intruder"),
        "{err}"
    );

    // No CA yet: a clear refusal.
    let err = client.sign_certificate(request()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");

    // `meridianctl ca issue-intermediate` writes this Secret; the controller picks it up.
    let root = RootCa::generate("meridian.local").unwrap();
    let ca = root
        .issue_intermediate("meridian.local", "east1", INTERMEDIATE_TTL)
        .unwrap();
    let secrets = Api::<Secret>::namespaced(east1.client(), SYSTEM_NAMESPACE);

    // The one-tier layout (the mesh root key in the member) is refused, naming the
    // migration, rather than used to sign.
    let mut legacy = meridian_controller::grpc::certificates::ca_secret(&ca, SYSTEM_NAMESPACE);
    legacy.data = Some(
        [
            ("ca.crt", root.cert_pem().to_owned()),
            ("ca.key", root.key_pem()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), k8s_openapi::ByteString(v.into_bytes())))
        .collect(),
    );
    secrets
        .create(&PostParams::default(), &legacy)
        .await
        .unwrap();
    let err = eventually("the one-tier Secret is read", || {
        let mut client = client.clone();
        let req = request();
        async move {
            let err = client.sign_certificate(req).await.unwrap_err();
            err.message().contains("one-tier").then_some(err)
        }
    })
    .await;
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");
    assert!(err.message().contains("issue-intermediate"), "{err}");
    secrets
        .delete("meridian-ca", &Default::default())
        .await
        .unwrap();

    let secret = meridian_controller::grpc::certificates::ca_secret(&ca, SYSTEM_NAMESPACE);
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let resp = eventually("the CA is picked up", || {
        let mut client = client.clone();
        let req = request();
        async move { client.sign_certificate(req).await.ok() }
    })
    .await
    .into_inner();
    assert_eq!(resp.root_pem, root.cert_pem());
    let certs = meridian_identity::credentials::parse_certs("chain", &resp.cert_chain_pem).unwrap();
    assert_eq!(
        meridian_identity::identity::identities_in(&certs[0]).unwrap(),
        vec![identity]
    );
    assert_eq!(
        &certs[1],
        ca.cert_der(),
        "leaf + the cluster's intermediate"
    );
    ctl.kill().await;
}
