//! The member clusters: the [`registry`] of registration Secrets (whose kubeconfigs are
//! checked by [`kubeconfig`] before anything connects), one [`member`] task tree per
//! cluster (client, endpoint-API detection, reflectors, probe), and what the reflectors
//! keep of each object ([`reflected`]).

pub mod kubeconfig;
pub(crate) mod member;
pub mod reflected;
pub mod registry;
