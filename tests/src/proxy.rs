//! Simulated Service networking: what kube-proxy and a cloud load balancer would provide.
//!
//! ClusterIPs are allocated by the real API server (`172.(16+i).0.0/16` in cluster `i`) but
//! nothing routes them; [`resolve_cluster_ip`] answers where a connection to `vip:port`
//! would land (the ready endpoints, mapped onto loopback), so a test can dial it; like
//! kube-proxy it reads EndpointSlices where the cluster uses them, else Endpoints. A
//! LoadBalancer Service gets a reachable address by writing its status, as a cloud
//! controller would ([`set_load_balancer_ingress`]); unlike Endpoints, that field accepts
//! loopback IPs, so it can name a process the test runs (a gateway).

use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::core::v1::{Endpoints, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client};

use crate::cluster::EndpointApi;
use crate::endpoint_slices::SERVICE_NAME_LABEL;
use crate::error::{Error, Result};
use crate::network::pod_ip_to_loopback;

/// The loopback socket addresses of the ready endpoints behind `vip` (a Service's
/// `clusterIP:port`), in address order.
pub(crate) async fn resolve_cluster_ip(
    client: &Client,
    api: EndpointApi,
    vip: SocketAddr,
) -> Result<Vec<SocketAddr>> {
    let services: Api<Service> = Api::all(client.clone());
    let services = services
        .list(&ListParams::default())
        .await
        .map_err(Error::kube("listing Services"))?;
    let not_found = || Error::NotFound {
        kind: "Service with ClusterIP",
        name: vip.to_string(),
    };
    let (service, port_name) = services
        .items
        .iter()
        .find_map(|s| {
            let spec = s.spec.as_ref()?;
            if spec.cluster_ip.as_deref()?.parse::<IpAddr>().ok()? != vip.ip() {
                return None;
            }
            let port = spec
                .ports
                .iter()
                .flatten()
                .find(|p| p.port == i32::from(vip.port()))?;
            Some((s, port.name.clone()))
        })
        .ok_or_else(not_found)?;
    let namespace = service.metadata.namespace.as_deref().unwrap_or_default();
    let name = service.metadata.name.as_deref().unwrap_or_default();
    let mut backends = match api {
        EndpointApi::EndpointSlices => {
            slice_backends(client, namespace, name, port_name.as_deref()).await?
        }
        EndpointApi::Endpoints => {
            endpoints_backends(client, namespace, name, port_name.as_deref()).await?
        }
    };
    backends.sort();
    backends.dedup();
    Ok(backends)
}

/// Ready endpoints of a Service's slices (kube-proxy skips those not ready, which
/// includes terminating ones).
async fn slice_backends(
    client: &Client,
    namespace: &str,
    name: &str,
    port_name: Option<&str>,
) -> Result<Vec<SocketAddr>> {
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), namespace);
    let slices = slices
        .list(&ListParams::default().labels(&format!("{SERVICE_NAME_LABEL}={name}")))
        .await
        .map_err(Error::kube(format!(
            "listing EndpointSlices of {namespace}/{name}"
        )))?;
    let mut backends = Vec::new();
    for slice in &slices.items {
        let Some(port) = slice
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == port_name)
            .and_then(|p| u16::try_from(p.port?).ok())
        else {
            continue;
        };
        for endpoint in &slice.endpoints {
            let conditions = endpoint.conditions.clone().unwrap_or_default();
            if conditions.ready == Some(false) || conditions.terminating == Some(true) {
                continue;
            }
            for address in &endpoint.addresses {
                if let Ok(ip) = address.parse::<IpAddr>() {
                    backends.push(SocketAddr::new(pod_ip_to_loopback(ip), port));
                }
            }
        }
    }
    Ok(backends)
}

/// Ready addresses of a Service's Endpoints.
async fn endpoints_backends(
    client: &Client,
    namespace: &str,
    name: &str,
    port_name: Option<&str>,
) -> Result<Vec<SocketAddr>> {
    let endpoints: Api<Endpoints> = Api::namespaced(client.clone(), namespace);
    let Some(endpoints) = endpoints
        .get_opt(name)
        .await
        .map_err(Error::kube(format!("reading Endpoints {namespace}/{name}")))?
    else {
        return Ok(Vec::new());
    };
    let mut backends = Vec::new();
    for subset in endpoints.subsets.iter().flatten() {
        // Endpoints ports carry the Service port's name (None for a single unnamed port).
        let Some(port) = subset
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == port_name)
        else {
            continue;
        };
        let Ok(port) = u16::try_from(port.port) else {
            continue;
        };
        for address in subset.addresses.iter().flatten() {
            if let Ok(ip) = address.ip.parse::<IpAddr>() {
                backends.push(SocketAddr::new(pod_ip_to_loopback(ip), port));
            }
        }
    }
    Ok(backends)
}

/// Writes `status.loadBalancer.ingress: [{ip}]` on a Service.
pub(crate) async fn set_load_balancer_ingress(
    client: &Client,
    namespace: &str,
    name: &str,
    ip: IpAddr,
) -> Result<()> {
    let services: Api<Service> = Api::namespaced(client.clone(), namespace);
    let patch = serde_json::json!({
        "status": { "loadBalancer": { "ingress": [ { "ip": ip.to_string() } ] } }
    });
    services
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(Error::kube(format!(
            "writing load balancer status of Service {namespace}/{name}"
        )))?;
    Ok(())
}
