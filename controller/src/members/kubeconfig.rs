//! Accepting a registration kubeconfig: the allow-list lives in the `meridian-crd` crate,
//! which `meridianctl` shares to refuse what the controller would refuse.

pub use meridian_crd::kubeconfig::*;
