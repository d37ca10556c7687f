//! The install manifests (`manifests/`) and the kind configs (`kind-configs/`), validated.
//!
//! The kustomize base is rendered with `kubectl kustomize` (the machine's kubectl; CI
//! installs Debian's `kubernetes-client`, whose built-in kustomize is v2.0), every object
//! is parsed into its Kubernetes type and checked (kinds, required fields, security
//! settings, least-privilege RBAC, the wiring between Deployments, Services and the
//! controller's defaults), then applied to a real kube-apiserver of the testbed, whose own
//! schema validation and RBAC authorizer (`kubectl auth can-i`) have the last word.
//! Missing kubectl or API server binaries fail the tests; they never skip.

mod support;

mod checks;

mod apply;
mod kind;
mod render;
