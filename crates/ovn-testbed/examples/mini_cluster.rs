//! Starts the two-node mini OVN-Kubernetes cluster (pods `a` on node1, `b` and `c` on node2;
//! `a` and `b` in namespace `prod` labelled `env=prod`), writes its Kubernetes objects and an
//! EgressIP for `env=prod` (172.18.0.100) into a directory, prints where everything is, and
//! keeps running until Enter is pressed.
//!
//! ```sh
//! cargo run -p kube-egress-ovn-testbed --example mini_cluster -- /tmp/mini-cluster
//! # only the manifests, no root needed:
//! cargo run -p kube-egress-ovn-testbed --example mini_cluster -- /tmp/mini-cluster --manifests-only
//! ```

use std::path::PathBuf;

use kube_egress_ovn_testbed::{ClusterSpec, OvnCluster, manifests};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = PathBuf::from(
        args.first()
            .ok_or("usage: mini_cluster DIR [--manifests-only]")?,
    );
    let spec = ClusterSpec::two_nodes()
        .namespace_labels("prod", &[("env", "prod")])
        .pod("prod", "a", "node1")
        .pod("prod", "b", "node2")
        .pod("dev", "c", "node2");
    let layout = spec.layout()?;
    manifests::write_cluster(&layout, &dir)?;
    let eip = manifests::egress_ip(
        "eip-prod",
        &["172.18.0.100".parse()?],
        &[("env", "prod")],
        &[],
    );
    std::fs::write(dir.join("egressips.yaml"), manifests::to_yaml(&[eip])?)?;
    println!("manifests written to {}", dir.display());
    if args.iter().any(|a| a == "--manifests-only") {
        return Ok(());
    }
    let cluster = OvnCluster::start(&spec)?;
    print!("{}", cluster.describe());
    println!("export OVN_NB_DB={}", cluster.nb_address());
    println!("press Enter to stop");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    Ok(())
}
