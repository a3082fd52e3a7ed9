//! Diff-and-apply of a node plan in the current network namespace.
//!
//! The applier reads what exists, computes what the plan wants ([`crate::desired`]) and changes
//! only the difference, in an order that never interrupts traffic that stays wanted:
//! 1. the tunnel device;
//! 2. removal of the egress IP addresses we placed that the plan no longer puts here: a node that
//!    comes back after its egress IPs were taken over drops them before anything else;
//! 3. the tunnel's neighbour and FDB entries and the steering tables;
//! 4. the secondary-link tables;
//! 5. new addresses;
//! 6. new rules;
//! 7. the nftables table (one transaction);
//! 8. removal of the rules no longer wanted, each after the table it selects has been emptied.
//!
//! Everything it removes carries our ownership tag (route protocol [`OWNER_PROTOCOL`], address
//! protocol, the nft table), so nothing foreign is ever touched.
//! Starting against existing state adopts it: still-wanted objects are left as they are.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use kube_egress_engine::{Family, NodePlan};

use crate::desired::{
    Desired, RULE_PRIORITY, TUNNEL_ADDRESS, TUNNEL_DEVICE, TUNNEL_PORT, TUNNEL_VNI, desired,
    tunnel_mac,
};
use crate::netlink::{
    self, FdbEntry, Link, Mac, Neighbour, Netlink, OWNER_PROTOCOL, Route, Rule, VxlanSpec,
    select_link, sysctl,
};
use crate::nft::{Nft, NftState};

/// Why applying failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Netlink(#[from] netlink::Error),
    #[error(transparent)]
    Nft(#[from] crate::nft::NftError),
}

/// What an apply did and what it could not do.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Kernel objects added, replaced or removed.
    pub changes: usize,
    /// Parts of the plan this node cannot carry out, and unmet prerequisites (clear sentences).
    pub problems: Vec<String>,
    /// Egress IPs the plan places on this node (those it has a link for).
    pub egress_ips: usize,
}

/// Applies node plans in the network namespace it was created in.
pub struct Applier {
    nl: Netlink,
    nft: Nft,
    /// This node's tunnel endpoint (its primary address); `None` disables steering.
    tunnel_local: Option<IpAddr>,
    /// The nftables content last written, to diff against without re-reading.
    nft_state: Option<NftState>,
}

/// Owned addresses wanted on the node: the egress IPs and the tunnel's address.
fn wanted_addresses(d: &Desired, tunnel: Option<&Link>) -> BTreeMap<IpAddr, u32> {
    let mut wanted: BTreeMap<IpAddr, u32> =
        d.addresses.iter().map(|(ip, (i, _))| (*ip, *i)).collect();
    if let Some(tunnel) = tunnel {
        wanted.insert(IpAddr::V4(TUNNEL_ADDRESS), tunnel.index);
    }
    wanted
}

fn mac_of(ip: &IpAddr) -> Mac {
    Mac(tunnel_mac(ip))
}

/// How the tunnel's neighbour and FDB entries differ from what its peers need.
#[derive(Debug, Default, PartialEq, Eq)]
struct PeerDiff {
    /// Peers without a neighbour entry that maps them to their tunnel MAC.
    missing_neighbours: Vec<IpAddr>,
    /// Peers without an FDB entry that sends their tunnel MAC to their address.
    missing_fdb: Vec<IpAddr>,
    /// Neighbour entries we wrote for addresses that are no peer.
    stale_neighbours: Vec<IpAddr>,
    /// FDB entries of the device (MAC, destination) that no peer needs; the all-zero MAC (the
    /// default destination) is never one of them.
    stale_fdb: Vec<(Mac, IpAddr)>,
}

/// Compares the tunnel's neighbour and FDB entries with `peers`: each peer needs a neighbour entry
/// (its address → its tunnel MAC) and an FDB entry (that MAC → its address).
fn peer_diff(peers: &BTreeSet<IpAddr>, neighbours: &[Neighbour], fdb: &[FdbEntry]) -> PeerDiff {
    let mut diff = PeerDiff::default();
    for peer in peers {
        let mac = mac_of(peer);
        if !neighbours
            .iter()
            .any(|n| n.ip == *peer && n.mac == Some(mac))
        {
            diff.missing_neighbours.push(*peer);
        }
        if !fdb.iter().any(|f| f.mac == mac && f.dst == Some(*peer)) {
            diff.missing_fdb.push(*peer);
        }
    }
    for n in neighbours {
        if n.protocol == Some(OWNER_PROTOCOL) && !peers.contains(&n.ip) {
            diff.stale_neighbours.push(n.ip);
        }
    }
    let wanted_macs: BTreeMap<Mac, IpAddr> = peers.iter().map(|p| (mac_of(p), *p)).collect();
    for f in fdb.iter().filter(|f| f.own && !f.mac.is_zero()) {
        if let Some(dst) = f.dst
            && wanted_macs.get(&f.mac) != Some(&dst)
        {
            diff.stale_fdb.push((f.mac, dst));
        }
    }
    diff
}

impl Applier {
    /// `nft` must act on the namespace of `nl` ([`Nft::new`] on a thread in it, or [`Nft::in_netns`]).
    pub fn new(nl: Netlink, nft: Nft, tunnel_local: Option<IpAddr>) -> Applier {
        Applier {
            nl,
            nft,
            tunnel_local,
            nft_state: None,
        }
    }

    /// The kernel objects the plan wants on this node, given its links now.
    pub async fn desired(&self, plan: &NodePlan) -> Result<(Desired, Vec<String>), ApplyError> {
        let links = self.nl.links().await?;
        let addresses = self.nl.addresses().await?;
        let (d, problems) = desired(plan, |ip| {
            select_link(&links, &addresses, *ip).map(|m| (m.link.index, m.link.name))
        });
        let mut problems: Vec<String> = problems.into_iter().map(|p| p.message).collect();
        problems.extend(self.prerequisites(&d));
        Ok((d, problems))
    }

    /// Unmet prerequisites: forwarding off, strict reverse-path filtering on links where replies
    /// arrive on another link than the one the request's source is routed by. Links that are
    /// down need no check here: no egress IP is placed on them, and [`crate::desired::desired`]
    /// reports each egress IP that no link that is up can hold.
    fn prerequisites(&self, d: &Desired) -> Vec<String> {
        let mut problems = Vec::new();
        let mut families: BTreeSet<Family> = d.addresses.keys().map(Family::of).collect();
        families.extend(d.steering_tables.keys().map(|(_, f)| *f));
        for family in families {
            if matches!(sysctl::forwarding(family), Ok(false)) {
                problems.push(format!(
                    "{family:?} forwarding is off on this node: steered and served traffic is dropped \
                     (set {}=1)",
                    match family {
                        Family::V4 => "net.ipv4.ip_forward",
                        Family::V6 => "net.ipv6.conf.all.forwarding",
                    }
                ));
            }
        }
        for ((_, family), name) in &d.link_tables {
            if *family == Family::V4 {
                let value = |iface: &str| {
                    sysctl::read(&sysctl::conf(Family::V4, iface, "rp_filter"))
                        .ok()
                        .and_then(|v| v.parse::<u32>().ok())
                        .unwrap_or(0)
                };
                if value("all").max(value(name)) == 1 {
                    problems.push(format!(
                        "strict reverse-path filtering on {name}: replies to egress IPs on this \
                         secondary link are dropped (set net.ipv4.conf.{name}.rp_filter=2)"
                    ));
                }
            }
        }
        problems
    }

    /// Brings the kernel in line with the plan, in the order of the module documentation.
    pub async fn apply(&mut self, plan: &NodePlan) -> Result<Report, ApplyError> {
        let (d, problems) = self.desired(plan).await?;
        let mut report = Report {
            changes: 0,
            problems,
            egress_ips: d.addresses.len(),
        };

        // 1. The tunnel.
        let tunnel = self.ensure_tunnel(&mut report).await?;

        // 2. Addresses we placed that the plan no longer has here, before anything else: after a
        // takeover the node that comes back gives up the egress IP before it adds or steers
        // anything, so the IP answers on one node only.
        let owned = self.nl.owned_addresses().await?;
        let wanted_addresses = wanted_addresses(&d, tunnel.as_ref());
        for address in &owned {
            if wanted_addresses.get(&address.ip()) != Some(&address.index) {
                self.nl.delete_owned_address(address).await?;
                report.changes += 1;
            }
        }

        // 3. The tunnel's peers and the steering tables.
        if let Some(tunnel) = &tunnel {
            self.sync_peers(tunnel, &d.tunnel_peers, &mut report)
                .await?;
            for ((mark, family), hops) in &d.steering_tables {
                let paths: Vec<(IpAddr, u32)> = hops.iter().map(|h| (*h, tunnel.index)).collect();
                let route = Route::multipath_default(*family, *mark, &paths);
                report.changes += self.sync_table(*family, *mark, &[route]).await?;
            }
            if !d.steering_tables.is_empty() {
                for family in d.steering_tables.keys().map(|(_, f)| *f) {
                    let key = format!("{}/fib_multipath_hash_policy", sysctl::family_dir(family));
                    if sysctl::read(&key).ok().as_deref() != Some("1") {
                        sysctl::write(&key, "1")?;
                    }
                }
            }
        } else if !d.steering_tables.is_empty() {
            report.problems.push(
                "pods here are served by egress IPs on other nodes, but this node has no tunnel \
                 address (k8s.ovn.org/node-primary-ifaddr or an InternalIP)"
                    .into(),
            );
        }

        // 4. Secondary-link tables: a copy of the link's main-table routes (seed 000).
        let links = self.nl.links().await?;
        for (index, family) in d.link_tables.keys() {
            if let Some(link) = links.iter().find(|l| l.index == *index) {
                let sync = self
                    .nl
                    .copy_link_routes(link, *family, 1000 + index)
                    .await?;
                report.changes += sync.written + sync.deleted;
            }
        }

        // 5. Egress IP addresses, announced when placed (and the tunnel's own address).
        for (ip, index) in &wanted_addresses {
            if owned.iter().any(|a| a.ip() == *ip && a.index == *index) {
                continue;
            }
            let Some(link) = links.iter().find(|l| l.index == *index) else {
                continue;
            };
            self.nl.add_owned_address(link, *ip).await?;
            if Some(*index) == tunnel.as_ref().map(|t| t.index) {
                report.changes += 1;
                continue;
            }
            if let Err(e) = netlink::announce(link, *ip) {
                report
                    .problems
                    .push(format!("announcing {ip} on {}: {e}", link.name));
            }
            report.changes += 1;
        }

        // 6. Rules.
        let rules = self.nl.rules_at(RULE_PRIORITY).await?;
        let wanted_rules: Vec<Rule> = d
            .rules
            .iter()
            .map(|r| Rule::fwmark_lookup(r.family, r.mark, r.table, RULE_PRIORITY))
            .collect();
        for rule in &wanted_rules {
            if !rules.contains(rule) {
                self.nl.add_rule(rule).await?;
                report.changes += 1;
            }
        }

        // 7. nftables, one transaction.
        let current = match self.nft_state.take() {
            Some(state) => Some(state),
            None => self.nft.read().await?,
        };
        let batch = match &current {
            Some(current) => self.nft.diff_batch(current, &d.nft),
            None => Some(self.nft.full_batch(&d.nft)),
        };
        if let Some(batch) = batch {
            if let Err(e) = self.nft.apply(&batch).await {
                // What is in the kernel is unknown now: read it next time.
                return Err(e.into());
            }
            report.changes += 1;
        }
        self.nft_state = Some(d.nft.clone());

        // 8. Removals: the rules we own and no longer want, each after the table it selects.
        let mut wanted_tables: BTreeSet<(Family, u32)> =
            d.steering_tables.keys().map(|(m, f)| (*f, *m)).collect();
        wanted_tables.extend(d.link_tables.keys().map(|(i, f)| (*f, 1000 + i)));
        for rule in rules.iter().filter(|r| r.is_owned()) {
            if !wanted_rules.contains(rule) {
                report.changes += self.remove_rule(rule, &wanted_tables).await?;
            }
        }
        Ok(report)
    }

    /// The differences between the kernel and the plan (empty when they match): addresses, the
    /// tunnel device and its neighbour and FDB entries, rules, steering and secondary-link
    /// tables, the nftables table.
    pub async fn verify(&mut self, plan: &NodePlan) -> Result<Vec<String>, ApplyError> {
        let (d, _) = self.desired(plan).await?;
        let mut diffs = Vec::new();
        let owned = self.nl.owned_addresses().await?;
        for (ip, (index, name)) in &d.addresses {
            if !owned.iter().any(|a| a.ip() == *ip && a.index == *index) {
                diffs.push(format!("egress IP {ip} is not on {name}"));
            }
        }
        let tunnel = self.nl.link(TUNNEL_DEVICE).await?;
        let wanted_addresses = wanted_addresses(&d, tunnel.as_ref());
        for a in &owned {
            if wanted_addresses.get(&a.ip()) != Some(&a.index) {
                diffs.push(format!("stale egress IP {} on link #{}", a.ip(), a.index));
            }
        }
        match &tunnel {
            Some(tunnel) => {
                let neighbours = self.nl.neighbours(tunnel).await?;
                let fdb = self.nl.fdb(tunnel).await?;
                let peers = peer_diff(&d.tunnel_peers, &neighbours, &fdb);
                for peer in &peers.missing_neighbours {
                    diffs.push(format!(
                        "no neighbour entry {peer} lladdr {} on {TUNNEL_DEVICE}",
                        mac_of(peer)
                    ));
                }
                for peer in &peers.missing_fdb {
                    diffs.push(format!(
                        "no FDB entry {} dst {peer} on {TUNNEL_DEVICE}",
                        mac_of(peer)
                    ));
                }
                for ip in &peers.stale_neighbours {
                    diffs.push(format!("stale neighbour entry {ip} on {TUNNEL_DEVICE}"));
                }
                for (mac, dst) in &peers.stale_fdb {
                    diffs.push(format!(
                        "stale FDB entry {mac} dst {dst} on {TUNNEL_DEVICE}"
                    ));
                }
            }
            None if self.tunnel_local.is_some() => {
                diffs.push(format!("tunnel device {TUNNEL_DEVICE} is missing"));
            }
            None => {}
        }
        let rules = self.nl.rules_at(RULE_PRIORITY).await?;
        let wanted_rules: Vec<Rule> = d
            .rules
            .iter()
            .map(|r| Rule::fwmark_lookup(r.family, r.mark, r.table, RULE_PRIORITY))
            .collect();
        for r in &wanted_rules {
            if !rules.contains(r) {
                diffs.push(format!(
                    "missing rule fwmark {} lookup {}",
                    r.fwmark.unwrap_or(0),
                    r.table
                ));
            }
        }
        for r in rules.iter().filter(|r| r.is_owned()) {
            if !wanted_rules.contains(r) {
                diffs.push(format!(
                    "stale rule fwmark {} lookup {}",
                    r.fwmark.unwrap_or(0),
                    r.table
                ));
            }
        }
        for ((mark, family), hops) in &d.steering_tables {
            let routes = self.nl.routes(*family, *mark).await?;
            let gateways: BTreeSet<IpAddr> = routes
                .iter()
                .filter(|r| r.is_default())
                .flat_map(|r| r.nexthops.iter().filter_map(|h| h.gateway).chain(r.gateway))
                .collect();
            if gateways != hops.iter().copied().collect() {
                diffs.push(format!("table {mark} does not route to {hops:?}"));
            }
        }
        let links = self.nl.links().await?;
        for ((index, family), name) in &d.link_tables {
            let Some(link) = links.iter().find(|l| l.index == *index) else {
                continue;
            };
            let wanted = self
                .nl
                .link_table_routes(link, *family, 1000 + index)
                .await?;
            let actual = self.nl.routes(*family, 1000 + index).await?;
            if wanted.iter().any(|r| !actual.contains(r)) {
                diffs.push(format!(
                    "table {} does not mirror the routes of {name}",
                    1000 + index
                ));
            }
        }
        let nft = self.nft.read().await?;
        if nft.as_ref() != Some(&d.nft) {
            diffs.push(format!(
                "nft table {} differs from the plan",
                crate::nft::TABLE
            ));
            self.nft_state = None;
        }
        Ok(diffs)
    }

    /// Re-copies the routes of the secondary links after a change in the main table.
    pub async fn refresh_link_tables(&mut self, plan: &NodePlan) -> Result<usize, ApplyError> {
        let (d, _) = self.desired(plan).await?;
        let links = self.nl.links().await?;
        let mut changes = 0;
        for (index, family) in d.link_tables.keys() {
            if let Some(link) = links.iter().find(|l| l.index == *index) {
                let sync = self
                    .nl
                    .copy_link_routes(link, *family, 1000 + index)
                    .await?;
                changes += sync.written + sync.deleted;
            }
        }
        Ok(changes)
    }

    /// Removes everything we own (the node leaves the data plane).
    pub async fn remove_all(&mut self) -> Result<(), ApplyError> {
        self.nft.delete_table().await?;
        self.nft_state = None;
        for rule in self.nl.rules_at(RULE_PRIORITY).await? {
            if rule.is_owned() {
                self.remove_rule(&rule, &BTreeSet::new()).await?;
            }
        }
        for address in self.nl.owned_addresses().await? {
            self.nl.delete_owned_address(&address).await?;
        }
        if let Some(tunnel) = self.nl.link(TUNNEL_DEVICE).await? {
            self.nl.delete_link(&tunnel).await?;
        }
        Ok(())
    }

    /// Deletes one of our rules, emptying the table it selects first unless `keep` holds that
    /// table (another rule still selects it); returns the number of changes.
    ///
    /// The table is emptied first so that an interruption at any point (a crash, a failed
    /// request) leaves nothing that misroutes packets and nothing the next run cannot find:
    /// - no packet carries the rule's mark any more: [`Applier::apply`] removes the mark from
    ///   nftables before it removes rules, [`Applier::remove_all`] deletes the nftables table
    ///   first;
    /// - interrupted while the table is emptied, or right after: the rule still selects a table
    ///   that holds some of its routes or none. A lookup that finds no route there goes on with
    ///   the next rule (the main table), exactly as without the rule; nothing is blackholed.
    ///   The rule is ours and stale, so the next run finds it, empties the rest and deletes it;
    /// - the other order (rule first) is just as harmless for packets, but interrupted after the
    ///   rule it leaves the table's routes where no later run looks: our tables are found only
    ///   through our rules.
    async fn remove_rule(
        &self,
        rule: &Rule,
        keep: &BTreeSet<(Family, u32)>,
    ) -> Result<usize, ApplyError> {
        let mut changes = 0;
        if !keep.contains(&(rule.family, rule.table)) {
            changes += self.sync_table(rule.family, rule.table, &[]).await?;
        }
        self.nl.delete_rule(rule).await?;
        Ok(changes + 1)
    }

    async fn ensure_tunnel(&self, report: &mut Report) -> Result<Option<Link>, ApplyError> {
        let Some(local) = self.tunnel_local else {
            return Ok(None);
        };
        // Pinned to the link holding the local address, so its MTU is that link's minus the
        // VXLAN overhead.
        let underlay = self
            .nl
            .addresses()
            .await?
            .iter()
            .find(|a| a.ip() == local)
            .map(|a| a.index);
        let spec = VxlanSpec {
            name: TUNNEL_DEVICE.into(),
            vni: TUNNEL_VNI,
            local,
            port: TUNNEL_PORT,
            mac: mac_of(&local),
            underlay,
            mtu: None,
        };
        let before = self.nl.vxlan(TUNNEL_DEVICE).await?;
        let vxlan = self.nl.ensure_vxlan(&spec).await?;
        if before.as_ref() != Some(&vxlan) {
            report.changes += 1;
        }
        // Steered packets arrive here from pods routed elsewhere: loose reverse-path filtering.
        let key = sysctl::conf(Family::V4, TUNNEL_DEVICE, "rp_filter");
        if sysctl::read(&key).ok().as_deref() != Some("2") {
            sysctl::write(&key, "2")?;
        }
        Ok(Some(vxlan.link))
    }

    async fn sync_peers(
        &self,
        tunnel: &Link,
        peers: &BTreeSet<IpAddr>,
        report: &mut Report,
    ) -> Result<(), ApplyError> {
        let neighbours = self.nl.neighbours(tunnel).await?;
        let fdb = self.nl.fdb(tunnel).await?;
        let diff = peer_diff(peers, &neighbours, &fdb);
        for peer in &diff.missing_neighbours {
            self.nl
                .replace_neighbour(tunnel, *peer, mac_of(peer))
                .await?;
            report.changes += 1;
        }
        for peer in &diff.missing_fdb {
            self.nl.replace_fdb(tunnel, mac_of(peer), *peer).await?;
            report.changes += 1;
        }
        for ip in &diff.stale_neighbours {
            self.nl.delete_neighbour(tunnel, *ip).await?;
            report.changes += 1;
        }
        for (mac, dst) in &diff.stale_fdb {
            self.nl.delete_fdb(tunnel, *mac, *dst).await?;
            report.changes += 1;
        }
        Ok(())
    }

    /// Makes `table` hold exactly `wanted`; returns 1 when it changed.
    async fn sync_table(
        &self,
        family: Family,
        table: u32,
        wanted: &[Route],
    ) -> Result<usize, ApplyError> {
        let sync = self.nl.sync_table(family, table, wanted.to_vec()).await?;
        Ok(sync.written + sync.deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::NeighbourState;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn neighbour(address: &str, mac: Mac, protocol: Option<u8>) -> Neighbour {
        Neighbour {
            index: 7,
            ip: ip(address),
            mac: Some(mac),
            state: NeighbourState::Permanent,
            protocol,
        }
    }

    fn fdb(mac: Mac, dst: &str) -> FdbEntry {
        FdbEntry {
            index: 7,
            mac,
            dst: Some(ip(dst)),
            permanent: true,
            own: true,
        }
    }

    #[test]
    fn peer_diff_finds_missing_and_stale_entries() {
        let (a, b, gone) = (ip("192.0.2.3"), ip("192.0.2.4"), ip("192.0.2.9"));
        let peers: BTreeSet<IpAddr> = [a, b].into();
        let neighbours = vec![
            neighbour("192.0.2.3", mac_of(&a), Some(OWNER_PROTOCOL)),
            // b's entry points at another MAC: missing.
            neighbour("192.0.2.4", mac_of(&gone), Some(OWNER_PROTOCOL)),
            neighbour("192.0.2.9", mac_of(&gone), Some(OWNER_PROTOCOL)),
            // Not ours: left alone.
            neighbour("192.0.2.50", Mac([2, 0, 0, 0, 0, 1]), None),
        ];
        let fdb = vec![
            fdb(mac_of(&b), "192.0.2.4"),
            // a's MAC sent elsewhere: missing, and stale.
            fdb(mac_of(&a), "192.0.2.9"),
            // The default destination is never stale.
            fdb(Mac::default(), "192.0.2.9"),
        ];
        assert_eq!(
            peer_diff(&peers, &neighbours, &fdb),
            PeerDiff {
                missing_neighbours: vec![b],
                missing_fdb: vec![a],
                stale_neighbours: vec![gone],
                stale_fdb: vec![(mac_of(&a), gone)],
            }
        );
    }

    #[test]
    fn peer_diff_is_empty_when_every_peer_has_its_entries() {
        let a = ip("2001:db8::3");
        let peers: BTreeSet<IpAddr> = [a].into();
        let neighbours = vec![neighbour("2001:db8::3", mac_of(&a), Some(OWNER_PROTOCOL))];
        let fdb = vec![fdb(mac_of(&a), "2001:db8::3")];
        assert_eq!(peer_diff(&peers, &neighbours, &fdb), PeerDiff::default());
        assert_eq!(peer_diff(&BTreeSet::new(), &[], &[]), PeerDiff::default());
    }
}
