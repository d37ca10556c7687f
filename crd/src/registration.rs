//! The registration Secret: one per member cluster, in the controller's namespace of every
//! cluster whose controller should watch that member. Labelled `meridian.io/cluster:
//! "true"`, it holds the member's kubeconfig under the key `kubeconfig`;
//! `meridian.io/cluster-name` names the member (default: the Secret's name),
//! `meridian.io/context` picks a context of a kubeconfig that has several and
//! `meridian.io/gateway-address` gives the member gateway's `host:port`.
//!
//! [`Registration`] is the one place that writes such a Secret (`meridianctl cluster add`,
//! the tests); the controller reads it back with the same constants.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// Label that marks a registration Secret.
pub const CLUSTER_LABEL: &str = "meridian.io/cluster";
/// Annotation naming the member (default: the Secret's name).
pub const CLUSTER_NAME_ANNOTATION: &str = "meridian.io/cluster-name";
/// Annotation naming the kubeconfig context to use; required when it has several.
pub const CONTEXT_ANNOTATION: &str = "meridian.io/context";
/// Annotation with the member gateway's `host:port`, used when its gateway Service has no
/// LoadBalancer ingress.
pub const GATEWAY_ADDRESS_ANNOTATION: &str = "meridian.io/gateway-address";
/// Secret key holding the kubeconfig.
pub const KUBECONFIG_KEY: &str = "kubeconfig";

/// The label selector of every registration Secret.
pub fn selector() -> String {
    format!("{CLUSTER_LABEL}=true")
}

/// Whether `s` is a DNS-1123 label: member names become parts of DNS names and SPIFFE IDs.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Builds a registration Secret.
///
/// ```
/// use meridian_crd::registration::Registration;
///
/// let secret = Registration::new("west", "apiVersion: v1\nkind: Config\n")
///     .cluster_name("west")
///     .gateway_address("192.0.2.7:15008")
///     .secret();
/// assert_eq!(secret.metadata.labels.unwrap()["meridian.io/cluster"], "true");
/// ```
#[derive(Debug, Clone)]
pub struct Registration {
    name: String,
    namespace: Option<String>,
    kubeconfig: String,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
}

impl Registration {
    /// A Secret named `name` registering the cluster `kubeconfig` points at.
    pub fn new(name: impl Into<String>, kubeconfig: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            namespace: None,
            kubeconfig: kubeconfig.into(),
            labels: BTreeMap::from([(CLUSTER_LABEL.to_owned(), "true".to_owned())]),
            annotations: BTreeMap::new(),
        }
    }

    /// The Secret's namespace (default: none, the API client's).
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// The member's name, when it differs from the Secret's.
    pub fn cluster_name(self, cluster: impl Into<String>) -> Self {
        self.annotation(CLUSTER_NAME_ANNOTATION, cluster)
    }

    /// The kubeconfig context to use.
    pub fn context(self, context: impl Into<String>) -> Self {
        self.annotation(CONTEXT_ANNOTATION, context)
    }

    /// The member gateway's `host:port`.
    pub fn gateway_address(self, address: impl Into<String>) -> Self {
        self.annotation(GATEWAY_ADDRESS_ANNOTATION, address)
    }

    /// Another label (e.g. who manages the Secret).
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    fn annotation(mut self, key: &str, value: impl Into<String>) -> Self {
        self.annotations.insert(key.to_owned(), value.into());
        self
    }

    /// The Secret.
    pub fn secret(self) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some(self.name),
                namespace: self.namespace,
                labels: Some(self.labels),
                annotations: Some(self.annotations),
                ..ObjectMeta::default()
            },
            data: Some(BTreeMap::from([(
                KUBECONFIG_KEY.to_owned(),
                ByteString(self.kubeconfig.into_bytes()),
            )])),
            type_: Some("Opaque".into()),
            ..Secret::default()
        }
    }
}

/// The kubeconfig of a registration Secret read from `data`, when present and UTF-8.
pub fn kubeconfig(secret: &Secret) -> Option<String> {
    let bytes = secret.data.as_ref()?.get(KUBECONFIG_KEY)?;
    String::from_utf8(bytes.0.clone()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builder_writes_what_the_controller_reads() {
        let secret = Registration::new("reg-west", "kc")
            .namespace("meridian-system")
            .cluster_name("west")
            .context("ctx")
            .gateway_address("192.0.2.7:15008")
            .label("app.kubernetes.io/managed-by", "meridianctl")
            .secret();
        let labels = secret.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[CLUSTER_LABEL], "true");
        assert_eq!(labels["app.kubernetes.io/managed-by"], "meridianctl");
        let annotations = secret.metadata.annotations.as_ref().unwrap();
        assert_eq!(annotations[CLUSTER_NAME_ANNOTATION], "west");
        assert_eq!(annotations[CONTEXT_ANNOTATION], "ctx");
        assert_eq!(annotations[GATEWAY_ADDRESS_ANNOTATION], "192.0.2.7:15008");
        assert_eq!(
            secret.metadata.namespace.as_deref(),
            Some("meridian-system")
        );
        assert_eq!(kubeconfig(&secret).as_deref(), Some("kc"));
    }

    #[test]
    fn dns_labels() {
        for ok in ["west", "a", "eu-1", &"a".repeat(63)] {
            assert!(is_dns_label(ok), "{ok}");
        }
        for bad in ["", "West", "-a", "a-", "a.b", "a_b", &"a".repeat(64)] {
            assert!(!is_dns_label(bad), "{bad}");
        }
    }
}
