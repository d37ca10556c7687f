use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use meridian_controller::crd::{MemberCluster, Phase};
use meridian_testbed::{PodSpec, SYSTEM_NAMESPACE, ServicePortSpec, ServiceSpec};

use crate::support::*;

/// A credential no status or log may ever show.
const TOKEN: &str = "s3cr3t-t0ken-DO-NOT-LEAK";

async fn member_in_phase(members: &Api<MemberCluster>, name: &str, phase: Phase) -> MemberCluster {
    eventually(&format!("MemberCluster {name} {phase}"), || {
        let members = members.clone();
        async move {
            let mc = members.get(name).await.ok()?;
            (mc.status.as_ref()?.phase == phase).then_some(mc)
        }
    })
    .await
}

/// An `exec` credential plugin that would create a marker file is refused before anything
/// runs: no marker, `InvalidCredentials` naming `users[0].user.exec`, no credential shown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exec_plugin_in_a_registration_secret_is_never_run() {
    let testbed = testbed_of(&["east1"]).await;
    let east1 = testbed.cluster("east1").unwrap();
    let marker = testbed.dir().join("exec-ran");
    let script = testbed.dir().join("credential-plugin.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ntouch '{}'\necho '{{\"apiVersion\":\"client.authentication.k8s.io/v1beta1\",\
             \"kind\":\"ExecCredential\",\"status\":{{\"token\":\"{TOKEN}\"}}}}'\n",
            marker.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    // The plugin works: run by hand, it leaves the marker (then removed again).
    let ran = std::process::Command::new(&script).output().unwrap();
    assert!(ran.status.success() && marker.exists());
    std::fs::remove_file(&marker).unwrap();

    // east1's own kubeconfig with its user swapped for the plugin, plus a token the
    // status must not echo.
    let mut kc: serde_yaml_ng::Value = serde_yaml_ng::from_str(east1.kubeconfig()).unwrap();
    let exec: serde_yaml_ng::Value = serde_yaml_ng::from_str(&format!(
        "{{apiVersion: client.authentication.k8s.io/v1beta1, command: '{}', \
         args: ['{TOKEN}'], env: [{{name: TOKEN, value: '{TOKEN}'}}]}}",
        script.display()
    ))
    .unwrap();
    let user = kc["users"][0]["user"].as_mapping_mut().unwrap();
    user.clear();
    user.insert("exec".into(), exec);
    let spare: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&format!("{{name: spare, user: {{token: '{TOKEN}'}}}}")).unwrap();
    kc["users"].as_sequence_mut().unwrap().push(spare);
    register(
        east1,
        "sneaky",
        None,
        &serde_yaml_ng::to_string(&kc).unwrap(),
        None,
    )
    .await;

    let ip = testbed.allocate_address().unwrap();
    let ctl = Controller::start(&testbed, east1, ip, &[]).await;
    let members: Api<MemberCluster> = Api::all(east1.client());
    member_in_phase(&members, "east1", Phase::Synced).await;
    let mc = member_in_phase(&members, "sneaky", Phase::InvalidCredentials).await;
    let message = mc.status.unwrap().message.unwrap_or_default();
    assert!(
        message.contains("users[0].user.exec: exec credential plugins are refused"),
        "{message}"
    );
    assert!(
        !message.contains(TOKEN),
        "the status echoes a credential: {message}"
    );
    assert!(!marker.exists(), "the exec plugin ran");
    let metrics = ctl.metrics_text().await;
    assert!(
        metrics.contains(r#"meridian_registrations_rejected{phase="InvalidCredentials"} 1"#),
        "{metrics}"
    );
    let log = std::fs::read_to_string(&ctl.log).unwrap();
    assert!(!log.contains(TOKEN), "the log echoes a credential");
    ctl.kill().await;
    assert!(!marker.exists(), "the exec plugin ran");
}

/// A newer Secret claiming a registered cluster's name does not replace it, even when
/// its name sorts first: it is reported as `Conflict` naming the owner, and the member
/// keeps syncing from its own API server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_secret_cannot_take_over_a_registered_cluster() {
    let testbed = testbed_of(&["east1", "west"]).await;
    let east1 = testbed.cluster("east1").unwrap();
    let west = testbed.cluster("west").unwrap();
    west.create_service(
        &ServiceSpec::new("echo").port(ServicePortSpec::http("http", 80).target(8080)),
    )
    .await
    .unwrap();
    west.add_pod(PodSpec::new("echo-w1").app("echo"))
        .await
        .unwrap();
    register(east1, "west-secret", Some("west"), west.kubeconfig(), None).await;

    let ip = testbed.allocate_address().unwrap();
    let ctl = Controller::start(&testbed, east1, ip, &[]).await;
    let members: Api<MemberCluster> = Api::all(east1.client());
    member_in_phase(&members, "west", Phase::Synced).await;

    // Creation times have one-second resolution: the impostor must be strictly newer.
    let secrets: Api<Secret> = Api::namespaced(east1.client(), SYSTEM_NAMESPACE);
    let created = secrets
        .get("west-secret")
        .await
        .unwrap()
        .metadata
        .creation_timestamp
        .unwrap()
        .0;
    let owner_created = SystemTime::from(created);
    while SystemTime::now() < owner_created + Duration::from_millis(1100) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Points at east1's API server: a takeover would change what "west" is.
    register(east1, "a-west", Some("west"), east1.kubeconfig(), None).await;

    let conflict = member_in_phase(&members, "west.a-west", Phase::Conflict).await;
    assert_eq!(
        conflict.spec.secret.as_deref(),
        Some("meridian-system/a-west")
    );
    let message = conflict.status.unwrap().message.unwrap_or_default();
    assert!(
        message.contains("already registered by Secret meridian-system/west-secret"),
        "{message}"
    );
    let mc = members.get("west").await.unwrap();
    assert_eq!(
        mc.spec.secret.as_deref(),
        Some("meridian-system/west-secret")
    );
    let st = eventually("west still synced from its own API server", || {
        let members = members.clone();
        async move {
            let st = members.get("west").await.ok()?.status?;
            (st.phase == Phase::Synced && st.endpoints == 1).then_some(st)
        }
    })
    .await;
    let server = st.server.unwrap_or_default();
    assert!(
        server.starts_with(west.server_url().trim_end_matches('/')),
        "{server}"
    );
    ctl.kill().await;
}
