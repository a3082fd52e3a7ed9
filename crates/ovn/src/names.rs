//! Names, priorities and `external_ids` exactly as ovnkube spells them for the default network
//! (reference: ovnk-behaviour.md §0 and §3), so that rows we write and rows ovnkube wrote are the
//! same rows.

use std::collections::BTreeMap;

use kube_egress_engine::Family;

/// The controller that owns every row we write (`k8s.ovn.org/owner-controller`).
pub const CONTROLLER: &str = "default-network-controller";
/// The network of every row we write (`network`).
pub const NETWORK: &str = "default";

pub const OWNER_CONTROLLER_KEY: &str = "k8s.ovn.org/owner-controller";
pub const OWNER_TYPE_KEY: &str = "k8s.ovn.org/owner-type";
pub const NAME_KEY: &str = "k8s.ovn.org/name";
/// The primary id: `<controller>:<owner type>:<values of the type's keys, in order>`.
pub const ID_KEY: &str = "k8s.ovn.org/id";
pub const PRIORITY_KEY: &str = "priority";
pub const IP_FAMILY_KEY: &str = "ip-family";
pub const NETWORK_KEY: &str = "network";

/// Owner type of everything the Egress IP feature writes.
pub const OWNER_EGRESS_IP: &str = "EgressIP";
/// Owner type of the Egress Service served-pods address set that the 102 pod→node policy names.
pub const OWNER_EGRESS_SERVICE: &str = "EgressService";

pub const CLUSTER_ROUTER: &str = "ovn_cluster_router";

/// The gateway router of a node.
pub fn gateway_router(node: &str) -> String {
    format!("GR_{node}")
}

/// The management port (logical switch port) of a node.
pub fn management_port(node: &str) -> String {
    format!("k8s-{node}")
}

/// Per-pod reroute policies (`EgressIPReroutePriority`).
pub const REROUTE_PRIORITY: i64 = 100;
/// East-west "no reroute" allow policies (`DefaultNoRereoutePriority`).
pub const NO_REROUTE_PRIORITY: i64 = 102;
/// The reply-traffic QoS rule on node switches.
pub const QOS_PRIORITY: i64 = 103;
/// `pkt_mark` of pod → node-IP traffic (`EgressIPNodeConnectionMark`, 0x3f0).
pub const NODE_CONNECTION_MARK: u32 = 1008;
/// Mark of reply traffic of connections that entered a served pod.
pub const REPLY_TRAFFIC_MARK: u32 = 42;

pub const POD_TO_POD: &str = "EIP-No-Reroute-Pod-To-Pod";
pub const POD_TO_JOIN: &str = "EIP-No-Reroute-Pod-To-Join";
pub const POD_TO_NODE: &str = "EIP-No-Reroute-Pod-To-Node";
pub const REPLY_TRAFFIC: &str = "EIP-No-Reroute-reply-traffic";
pub const QOS_REPLY_TRAFFIC: &str = "EgressIP-Mark-Reply-Traffic";

pub const SERVED_PODS_SET: &str = "egressip-served-pods";
pub const NODE_IPS_SET: &str = "node-ips";
pub const EGRESS_SERVICE_SERVED_PODS_SET: &str = "egresssvc-served-pods";

/// `ip4` / `ip6`: the family value of policies, NATs and QoS rules.
pub fn policy_family(family: Family) -> &'static str {
    match family {
        Family::V4 => "ip4",
        Family::V6 => "ip6",
    }
}

/// `v4` / `v6`: the family value of address sets.
pub fn address_set_family(family: Family) -> &'static str {
    match family {
        Family::V4 => "v4",
        Family::V6 => "v6",
    }
}

/// `a` + decimal FNV-1a 64 of the text (ovnkube's `HashForOVN`): address set names.
pub fn hash_for_ovn(text: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("a{hash}")
}

/// `external_ids` of an owned row: owner keys, the type's keys, and the primary id built from the
/// values in `keys` order.
fn ids(owner_type: &str, keys: &[(&str, &str)]) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    map.insert(OWNER_CONTROLLER_KEY.to_string(), CONTROLLER.to_string());
    map.insert(OWNER_TYPE_KEY.to_string(), owner_type.to_string());
    let mut primary = format!("{CONTROLLER}:{owner_type}");
    for (key, value) in keys {
        map.insert(key.to_string(), value.to_string());
        primary.push(':');
        primary.push_str(value);
    }
    map.insert(ID_KEY.to_string(), primary);
    map
}

/// `<eipName>_<namespace>/<pod>`: the name of a pod's reroute policy and NAT rows.
pub fn pod_object_name(egress_ip: &str, pod_key: &str) -> String {
    format!("{egress_ip}_{pod_key}")
}

/// `external_ids` of a logical router policy (`LogicalRouterPolicyEgressIP`: priority, name,
/// family, network).
pub fn policy_ids(priority: i64, name: &str, family: &str) -> BTreeMap<String, String> {
    ids(
        OWNER_EGRESS_IP,
        &[
            (PRIORITY_KEY, &priority.to_string()),
            (NAME_KEY, name),
            (IP_FAMILY_KEY, family),
            (NETWORK_KEY, NETWORK),
        ],
    )
}

/// `external_ids` of a SNAT row (`NATEgressIP`: name, family).
pub fn nat_ids(name: &str, family: Family) -> BTreeMap<String, String> {
    ids(
        OWNER_EGRESS_IP,
        &[(NAME_KEY, name), (IP_FAMILY_KEY, policy_family(family))],
    )
}

/// `external_ids` of the reply-traffic QoS rule (built like a policy's, as ovnkube does).
pub fn qos_ids(family: Family) -> BTreeMap<String, String> {
    policy_ids(QOS_PRIORITY, QOS_REPLY_TRAFFIC, policy_family(family))
}

/// Name and `external_ids` of an Egress IP address set (`AddressSetEgressIP`: name, family,
/// network); the name hashes the primary id.
pub fn egress_ip_address_set(set: &str, family: Family) -> (String, BTreeMap<String, String>) {
    let ids = ids(
        OWNER_EGRESS_IP,
        &[
            (NAME_KEY, set),
            (IP_FAMILY_KEY, address_set_family(family)),
            (NETWORK_KEY, NETWORK),
        ],
    );
    (hash_for_ovn(&ids[ID_KEY]), ids)
}

/// Name and `external_ids` of the Egress Service served-pods address set (`AddressSetEgressService`:
/// name, family).
pub fn egress_service_address_set(family: Family) -> (String, BTreeMap<String, String>) {
    let ids = ids(
        OWNER_EGRESS_SERVICE,
        &[
            (NAME_KEY, EGRESS_SERVICE_SERVED_PODS_SET),
            (IP_FAMILY_KEY, address_set_family(family)),
        ],
    );
    (hash_for_ovn(&ids[ID_KEY]), ids)
}

/// Whether a row belongs to the Egress IP feature of the default network controller: the only
/// rows we ever change or delete.
pub fn is_owned(external_ids: &BTreeMap<String, String>) -> bool {
    external_ids.get(OWNER_CONTROLLER_KEY).map(String::as_str) == Some(CONTROLLER)
        && external_ids.get(OWNER_TYPE_KEY).map(String::as_str) == Some(OWNER_EGRESS_IP)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_matches_ovnkube() {
        // Seed 001 shows the address sets of an older ovnkube, named by the hash of
        // `<name>_v4`; the same function names today's sets.
        assert_eq!(
            hash_for_ovn("egressip-served-pods_v4"),
            "a12749576804119081385"
        );
        assert_eq!(
            hash_for_ovn("egresssvc-served-pods_v4"),
            "a16335301576733828072"
        );
        assert_eq!(hash_for_ovn("cluster-node-ips_v4"), "a11079093880111560446");
    }

    #[test]
    fn primary_ids_follow_key_order() {
        let (name, ids) = egress_ip_address_set(SERVED_PODS_SET, Family::V4);
        assert_eq!(
            ids[ID_KEY],
            "default-network-controller:EgressIP:egressip-served-pods:v4:default"
        );
        assert_eq!(name, hash_for_ovn(&ids[ID_KEY]));
        assert_eq!(ids[IP_FAMILY_KEY], "v4");
        let p = policy_ids(100, "eip_ns/pod", "ip4");
        assert_eq!(
            p[ID_KEY],
            "default-network-controller:EgressIP:100:eip_ns/pod:ip4:default"
        );
        assert_eq!(p[PRIORITY_KEY], "100");
        assert_eq!(
            nat_ids("eip_ns/pod", Family::V6)[ID_KEY],
            "default-network-controller:EgressIP:eip_ns/pod:ip6"
        );
        assert_eq!(
            egress_service_address_set(Family::V4).1[ID_KEY],
            "default-network-controller:EgressService:egresssvc-served-pods:v4"
        );
        assert!(is_owned(&p));
        assert!(!is_owned(&egress_service_address_set(Family::V4).1));
    }
}
