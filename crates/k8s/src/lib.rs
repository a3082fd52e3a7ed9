//! The Kubernetes edge of kube-egress.
//!
//! - [`watch`]: kube-runtime watchers of Nodes, Namespaces, Pods, EgressIPs (and ServiceCIDRs when
//!   served) as one stream of updates; relists after `410 Gone` remove what vanished.
//! - [`feed`]: the engine fed from those updates, loaded in one pass once everything is listed.
//! - [`controller`]: probes, Lease-based leader election ([`lease`]) and the leader's writes
//!   ([`writer`]: `status.items`, the mark annotation, Events).
//! - [`agent`]: the node agent's source (its plan from the same objects, taking the controller's
//!   statuses as the assignment) and the node addressing annotations it publishes.
//!
//! The engine decides everything; this crate only moves data between it and the API server.

pub mod agent;
pub mod controller;
#[cfg(feature = "test-api-server")]
pub mod fake;
pub mod feed;
pub mod lease;
pub mod watch;
pub mod writer;

pub use kube::Client;

/// Builds a client from a kubeconfig file, or from the environment (in-cluster service account,
/// `KUBECONFIG`, `~/.kube/config`) when no path is given.
pub async fn client(kubeconfig: Option<&std::path::Path>) -> Result<kube::Client, String> {
    let config = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| format!("reading kubeconfig {}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| format!("kubeconfig {}: {e}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| format!("finding the Kubernetes API (in-cluster or kubeconfig): {e}"))?,
    };
    kube::Client::try_from(config).map_err(|e| format!("building the Kubernetes client: {e}"))
}

/// One log line on stderr, prefixed with the component.
pub(crate) fn log(component: &str, message: impl AsRef<str>) {
    eprintln!("kube-egress {component}: {}", message.as_ref());
}
