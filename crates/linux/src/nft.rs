//! The nftables part of the data plane: table `inet kube_egress`, owned entirely by us.
//!
//! ```text
//! table inet kube_egress {
//!   set layout_2 { type mark; }                              # names the layout version
//!   set excluded_v4 { type ipv4_addr; flags interval; }      # pod CIDRs, service CIDRs, node IPs
//!   map steer_v4 { type ipv4_addr : mark; }                  # local pod IP -> EgressIP mark
//!   map link_v4 { type ipv4_addr : mark; }                   # pod IP -> secondary-link mark
//!   map snat_v4 { type ipv4_addr . ifname : ipv4_addr; }     # pod IP . out link -> egress IP
//!   (the same four for IPv6)
//!   chain prerouting {                          # filter, prerouting, priority dstnat + 10
//!     ip daddr != @excluded_v4 meta mark set ip saddr map @steer_v4
//!     ip daddr != @excluded_v4 meta mark set ip saddr map @link_v4
//!   }
//!   chain tunnel_out {                          # filter, postrouting, priority srcnat - 20
//!     oifname <tunnel> meta mark set 0          # the outer packet must not be steered again
//!   }
//!   chain postrouting {                         # nat, postrouting, priority srcnat - 10
//!     ip daddr != @excluded_v4 snat ip to ip saddr . oifname map @snat_v4
//!     oifname <tunnel> ip daddr != @excluded_v4 snat ip to ip saddr
//!   }
//! }
//! ```
//! Every map lookup is O(1) per packet whatever the number of pods. The NAT chain runs before a
//! CNI's masquerade (priority srcnat): the first NAT binding of a connection wins, so steered
//! packets keep the pod address on their way to the egress node (the identity SNAT) and served
//! packets leave with the egress IP.
//!
//! Changes are one `nft -j -f -` batch, which the kernel applies as one transaction: the whole table
//! when its layout differs (first start, upgrade), otherwise only the element changes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::process::Stdio;

use ipnet::IpNet;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

/// Table name (family `inet`).
pub const TABLE: &str = "kube_egress";
/// An empty set whose name marks the layout of the table; a table without it is replaced as a
/// whole. (nft 1.0.6 drops table comments given in JSON, so a comment cannot carry this.)
pub const LAYOUT: &str = "layout_2";
/// Priority of the prerouting chain: after DNAT (-100), so service traffic is judged by endpoint.
pub const PREROUTING_PRIORITY: i32 = -90;
/// Priority of the NAT chain: before a CNI's masquerade (srcnat, 100).
pub const POSTROUTING_PRIORITY: i32 = 90;
/// Priority of the chain that clears our mark on packets entering the tunnel: the VXLAN device
/// routes the outer packet with the inner packet's mark, which would send it back into the tunnel.
pub const TUNNEL_OUT_PRIORITY: i32 = 80;

/// The content of the table that changes with the plan.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NftState {
    /// Destinations never steered or rewritten (both families, CIDRs in network form).
    pub excluded: BTreeSet<IpNet>,
    /// Local pod IP → mark of its EgressIP (routed to the egress nodes).
    pub steer: BTreeMap<IpAddr, u32>,
    /// Pod IP → mark of the secondary link holding its egress IP on this node.
    pub link_marks: BTreeMap<IpAddr, u32>,
    /// (pod IP, output link) → egress IP.
    pub snat: BTreeMap<(IpAddr, String), IpAddr>,
}

/// Runs `nft`, optionally inside a named network namespace (`ip netns exec`).
#[derive(Debug, Clone, Default)]
pub struct Nft {
    netns: Option<String>,
    /// Name of the tunnel device steered traffic leaves by (identity SNAT).
    tunnel_device: String,
}

/// A failed `nft` invocation.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("running nft: {0} (is the nftables package installed?)")]
    Spawn(#[source] std::io::Error),
    #[error("nft {what} failed: {stderr}")]
    Failed { what: String, stderr: String },
    #[error("reading table inet {TABLE}: {0}")]
    Parse(String),
}

fn family_name(v6: bool) -> &'static str {
    if v6 { "ip6" } else { "ip" }
}

fn suffix(v6: bool) -> &'static str {
    if v6 { "v6" } else { "v4" }
}

fn addr_type(v6: bool) -> &'static str {
    if v6 { "ipv6_addr" } else { "ipv4_addr" }
}

fn table_ref() -> Value {
    json!({"family": "inet", "name": TABLE})
}

fn saddr(v6: bool) -> Value {
    json!({"payload": {"protocol": family_name(v6), "field": "saddr"}})
}

fn daddr_not_excluded(v6: bool) -> Value {
    json!({"match": {"op": "!=",
        "left": {"payload": {"protocol": family_name(v6), "field": "daddr"}},
        "right": format!("@excluded_{}", suffix(v6))}})
}

fn net_elem(net: &IpNet) -> Value {
    if net.prefix_len() == net.max_prefix_len() {
        json!(net.addr().to_string())
    } else {
        json!({"prefix": {"addr": net.network().to_string(), "len": net.prefix_len()}})
    }
}

fn element(cmd: &str, set: &str, elems: Vec<Value>) -> Value {
    json!({cmd: {"element": {"family": "inet", "table": TABLE, "name": set, "elem": elems}}})
}

impl Nft {
    /// `nft` in the current namespace.
    pub fn new(tunnel_device: &str) -> Nft {
        Nft {
            netns: None,
            tunnel_device: tunnel_device.to_string(),
        }
    }

    /// `nft` inside the named namespace.
    pub fn in_netns(netns: &str, tunnel_device: &str) -> Nft {
        Nft {
            netns: Some(netns.to_string()),
            tunnel_device: tunnel_device.to_string(),
        }
    }

    /// The batch that (re)creates the table with `state` in it, replacing any previous table.
    pub fn full_batch(&self, state: &NftState) -> Value {
        let mut cmds = vec![
            json!({"add": {"table": table_ref()}}),
            json!({"delete": {"table": table_ref()}}),
            json!({"add": {"table": table_ref()}}),
            json!({"add": {"set": {"family": "inet", "table": TABLE, "name": LAYOUT,
                "type": "mark"}}}),
        ];
        for v6 in [false, true] {
            let s = suffix(v6);
            cmds.push(json!({"add": {"set": {"family": "inet", "table": TABLE,
                "name": format!("excluded_{s}"), "type": addr_type(v6),
                "flags": ["interval"], "auto-merge": true}}}));
            for name in ["steer", "link"] {
                cmds.push(json!({"add": {"map": {"family": "inet", "table": TABLE,
                    "name": format!("{name}_{s}"), "type": addr_type(v6), "map": "mark"}}}));
            }
            cmds.push(json!({"add": {"map": {"family": "inet", "table": TABLE,
                "name": format!("snat_{s}"), "type": [addr_type(v6), "ifname"],
                "map": addr_type(v6)}}}));
        }
        cmds.push(json!({"add": {"chain": {"family": "inet", "table": TABLE, "name": "prerouting",
            "type": "filter", "hook": "prerouting", "prio": PREROUTING_PRIORITY, "policy": "accept"}}}));
        cmds.push(json!({"add": {"chain": {"family": "inet", "table": TABLE, "name": "postrouting",
            "type": "nat", "hook": "postrouting", "prio": POSTROUTING_PRIORITY, "policy": "accept"}}}));
        cmds.push(
            json!({"add": {"chain": {"family": "inet", "table": TABLE, "name": "tunnel_out",
            "type": "filter", "hook": "postrouting", "prio": TUNNEL_OUT_PRIORITY,
            "policy": "accept"}}}),
        );
        cmds.push(json!({"add": {"rule": {"family": "inet", "table": TABLE,
        "chain": "tunnel_out", "expr": [
            {"match": {"op": "==", "left": {"meta": {"key": "oifname"}},
                "right": self.tunnel_device}},
            {"mangle": {"key": {"meta": {"key": "mark"}}, "value": 0}}
        ]}}}));
        for v6 in [false, true] {
            let s = suffix(v6);
            for map in ["steer", "link"] {
                cmds.push(json!({"add": {"rule": {"family": "inet", "table": TABLE,
                "chain": "prerouting", "expr": [
                    daddr_not_excluded(v6),
                    {"mangle": {"key": {"meta": {"key": "mark"}},
                        "value": {"map": {"key": saddr(v6), "data": format!("@{map}_{s}")}}}}
                ]}}}));
            }
            cmds.push(json!({"add": {"rule": {"family": "inet", "table": TABLE,
            "chain": "postrouting", "expr": [
                daddr_not_excluded(v6),
                {"snat": {"family": family_name(v6), "addr": {"map": {
                    "key": {"concat": [saddr(v6), {"meta": {"key": "oifname"}}]},
                    "data": format!("@snat_{s}")}}}}
            ]}}}));
            cmds.push(json!({"add": {"rule": {"family": "inet", "table": TABLE,
            "chain": "postrouting", "expr": [
                {"match": {"op": "==", "left": {"meta": {"key": "oifname"}},
                    "right": self.tunnel_device}},
                daddr_not_excluded(v6),
                {"snat": {"family": family_name(v6), "addr": saddr(v6)}}
            ]}}}));
        }
        cmds.extend(diff_commands(&NftState::default(), state));
        json!({"nftables": cmds})
    }

    /// The batch that turns `current` into `desired` element by element, or `None` when equal.
    pub fn diff_batch(&self, current: &NftState, desired: &NftState) -> Option<Value> {
        let cmds = diff_commands(current, desired);
        (!cmds.is_empty()).then(|| json!({"nftables": cmds}))
    }

    /// Applies a batch as one transaction.
    pub async fn apply(&self, batch: &Value) -> Result<(), NftError> {
        self.run(&["-j", "-f", "-"], Some(batch.to_string()), "apply")
            .await
            .map(|_| ())
    }

    /// Deletes the table (nothing else is ours). Absent is fine.
    pub async fn delete_table(&self) -> Result<(), NftError> {
        let batch = json!({"nftables": [
            {"add": {"table": table_ref()}},
            {"delete": {"table": table_ref()}},
        ]});
        self.apply(&batch).await
    }

    /// Reads the table: `None` when it is absent or has another layout.
    pub async fn read(&self) -> Result<Option<NftState>, NftError> {
        let out = match self
            .run(&["-j", "list", "table", "inet", TABLE], None, "list")
            .await
        {
            Ok(out) => out,
            Err(NftError::Failed { stderr, .. }) if stderr.contains("No such file") => {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let doc: Value = serde_json::from_str(&out).map_err(|e| NftError::Parse(e.to_string()))?;
        parse_state(&doc)
    }

    async fn run(
        &self,
        args: &[&str],
        stdin: Option<String>,
        what: &str,
    ) -> Result<String, NftError> {
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = tokio::process::Command::new("ip");
                c.args(["netns", "exec", ns, "nft"]);
                c
            }
            None => tokio::process::Command::new("nft"),
        };
        cmd.args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(NftError::Spawn)?;
        if let Some(input) = stdin {
            let mut pipe = child.stdin.take().expect("stdin is piped");
            pipe.write_all(input.as_bytes())
                .await
                .map_err(NftError::Spawn)?;
            drop(pipe);
        }
        let out = child.wait_with_output().await.map_err(NftError::Spawn)?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(NftError::Failed {
                what: what.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            })
        }
    }
}

/// Element commands turning `current` into `desired`.
fn diff_commands(current: &NftState, desired: &NftState) -> Vec<Value> {
    let mut cmds = Vec::new();
    for v6 in [false, true] {
        let s = suffix(v6);
        let fam = |ip: &IpAddr| ip.is_ipv6() == v6;

        // Interval sets merge adjacent elements, so element deletes are unreliable: rewrite.
        let cur: BTreeSet<&IpNet> = current.excluded.iter().filter(|n| fam(&n.addr())).collect();
        let want: BTreeSet<&IpNet> = desired.excluded.iter().filter(|n| fam(&n.addr())).collect();
        if cur != want {
            let set = format!("excluded_{s}");
            cmds.push(json!({"flush": {"set": {"family": "inet", "table": TABLE, "name": set}}}));
            if !want.is_empty() {
                cmds.push(element(
                    "add",
                    &set,
                    want.iter().map(|n| net_elem(n)).collect(),
                ));
            }
        }

        for (name, cur, want) in [
            ("steer", &current.steer, &desired.steer),
            ("link", &current.link_marks, &desired.link_marks),
        ] {
            let map = format!("{name}_{s}");
            let mut del = Vec::new();
            let mut add = Vec::new();
            for (ip, mark) in cur.iter().filter(|(ip, _)| fam(ip)) {
                if want.get(ip) != Some(mark) {
                    del.push(json!(ip.to_string()));
                }
            }
            for (ip, mark) in want.iter().filter(|(ip, _)| fam(ip)) {
                if cur.get(ip) != Some(mark) {
                    add.push(json!([ip.to_string(), mark]));
                }
            }
            if !del.is_empty() {
                cmds.push(element("delete", &map, del));
            }
            if !add.is_empty() {
                cmds.push(element("add", &map, add));
            }
        }

        let map = format!("snat_{s}");
        let mut del = Vec::new();
        let mut add = Vec::new();
        for ((ip, link), egress) in current.snat.iter().filter(|((ip, _), _)| fam(ip)) {
            if desired.snat.get(&(*ip, link.clone())) != Some(egress) {
                del.push(json!({"concat": [ip.to_string(), link]}));
            }
        }
        for ((ip, link), egress) in desired.snat.iter().filter(|((ip, _), _)| fam(ip)) {
            if current.snat.get(&(*ip, link.clone())) != Some(egress) {
                add.push(json!([{"concat": [ip.to_string(), link]}, egress.to_string()]));
            }
        }
        if !del.is_empty() {
            cmds.push(element("delete", &map, del));
        }
        if !add.is_empty() {
            cmds.push(element("add", &map, add));
        }
    }
    cmds
}

/// Reads the state out of `nft -j list table inet kube_egress`; `None` for another layout.
fn parse_state(doc: &Value) -> Result<Option<NftState>, NftError> {
    let bad = |what: &str, v: &Value| NftError::Parse(format!("unexpected {what}: {v}"));
    let items = doc["nftables"]
        .as_array()
        .ok_or_else(|| bad("document", doc))?;
    let mut state = NftState::default();
    let mut layout_ok = false;
    for item in items {
        let Some(obj) = item.get("set").or_else(|| item.get("map")) else {
            continue;
        };
        let name = obj["name"].as_str().unwrap_or_default();
        if name == LAYOUT {
            layout_ok = true;
        }
        let elems = obj["elem"].as_array().cloned().unwrap_or_default();
        for elem in &elems {
            match name {
                "excluded_v4" | "excluded_v6" => {
                    state
                        .excluded
                        .insert(parse_net(elem).ok_or_else(|| bad("element", elem))?);
                }
                "steer_v4" | "steer_v6" | "link_v4" | "link_v6" => {
                    let (ip, mark) = parse_pair(elem)
                        .and_then(|(k, v)| Some((k.as_str()?.parse().ok()?, v.as_u64()?)))
                        .ok_or_else(|| bad("element", elem))?;
                    let map = if name.starts_with("steer") {
                        &mut state.steer
                    } else {
                        &mut state.link_marks
                    };
                    map.insert(ip, mark as u32);
                }
                "snat_v4" | "snat_v6" => {
                    let parsed = parse_pair(elem).and_then(|(k, v)| {
                        let parts = k["concat"].as_array()?;
                        let ip: IpAddr = parts.first()?.as_str()?.parse().ok()?;
                        let link = parts.get(1)?.as_str()?.to_string();
                        let egress: IpAddr = v.as_str()?.parse().ok()?;
                        Some(((ip, link), egress))
                    });
                    let (key, egress) = parsed.ok_or_else(|| bad("element", elem))?;
                    state.snat.insert(key, egress);
                }
                _ => {}
            }
        }
    }
    Ok(layout_ok.then_some(state))
}

/// A map element `[key, value]` (nft may wrap it in `{"elem": {"val": ...}}`).
fn parse_pair(elem: &Value) -> Option<(Value, Value)> {
    let pair = elem.as_array()?;
    let unwrap = |v: &Value| v.get("elem").map(|e| e["val"].clone()).unwrap_or(v.clone());
    Some((unwrap(pair.first()?), pair.get(1)?.clone()))
}

fn parse_net(elem: &Value) -> Option<IpNet> {
    let elem = elem.get("elem").map(|e| &e["val"]).unwrap_or(elem);
    if let Some(addr) = elem.as_str() {
        return addr.parse::<IpAddr>().ok().map(IpNet::from);
    }
    if let Some(prefix) = elem.get("prefix") {
        let addr: IpAddr = prefix["addr"].as_str()?.parse().ok()?;
        return IpNet::new(addr, prefix["len"].as_u64()? as u8).ok();
    }
    if let Some(range) = elem.get("range").and_then(Value::as_array) {
        // A merged range that is not one prefix: keep its first address; the next apply
        // rewrites the set.
        let addr: IpAddr = range.first()?.as_str()?.parse().ok()?;
        return Some(IpNet::from(addr));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> NftState {
        let mut s = NftState::default();
        s.excluded.insert("10.128.0.0/14".parse().unwrap());
        s.excluded.insert("192.168.126.2/32".parse().unwrap());
        s.excluded.insert("fd01::/48".parse().unwrap());
        s.steer.insert("10.128.2.10".parse().unwrap(), 50000);
        s.link_marks.insert("10.128.2.11".parse().unwrap(), 1003);
        s.snat.insert(
            ("10.128.2.10".parse().unwrap(), "eth0".into()),
            "192.168.126.10".parse().unwrap(),
        );
        s.snat.insert(
            ("fd01::5".parse().unwrap(), "eth0".into()),
            "fd00::10".parse().unwrap(),
        );
        s
    }

    #[test]
    fn diff_of_equal_states_is_empty() {
        let nft = Nft::new("kegress0");
        assert!(nft.diff_batch(&sample(), &sample()).is_none());
    }

    #[test]
    fn diff_touches_only_changed_elements() {
        let nft = Nft::new("kegress0");
        let mut want = sample();
        want.steer.insert("10.128.2.10".parse().unwrap(), 50001);
        want.snat
            .remove(&("fd01::5".parse().unwrap(), "eth0".to_string()));
        let batch = nft.diff_batch(&sample(), &want).unwrap();
        let cmds = batch["nftables"].as_array().unwrap();
        assert_eq!(cmds.len(), 3, "{batch:#}");
        assert_eq!(cmds[0]["delete"]["element"]["name"], "steer_v4");
        assert_eq!(
            cmds[1]["add"]["element"]["elem"][0],
            json!(["10.128.2.10", 50001])
        );
        assert_eq!(cmds[2]["delete"]["element"]["name"], "snat_v6");
    }

    #[test]
    fn exclusion_changes_rewrite_the_set() {
        let nft = Nft::new("kegress0");
        let mut want = sample();
        want.excluded.insert("172.30.0.0/16".parse().unwrap());
        let batch = nft.diff_batch(&sample(), &want).unwrap();
        let cmds = batch["nftables"].as_array().unwrap();
        assert_eq!(cmds[0]["flush"]["set"]["name"], "excluded_v4");
        assert_eq!(
            cmds[1]["add"]["element"]["elem"].as_array().unwrap().len(),
            3
        );
        assert_eq!(cmds.len(), 2);
    }

    #[test]
    fn parses_what_nft_lists() {
        let listed = json!({"nftables": [
            {"metainfo": {"version": "1.0.6"}},
            {"table": {"family": "inet", "name": TABLE, "handle": 1}},
            {"set": {"family": "inet", "name": LAYOUT, "table": TABLE, "type": "mark"}},
            {"set": {"family": "inet", "name": "excluded_v4", "table": TABLE, "type": "ipv4_addr",
                "flags": ["interval"], "elem": [{"prefix": {"addr": "10.128.0.0", "len": 14}},
                "192.168.126.2"]}},
            {"map": {"family": "inet", "name": "steer_v4", "table": TABLE, "type": "ipv4_addr",
                "map": "mark", "elem": [["10.128.2.10", 50000]]}},
            {"map": {"family": "inet", "name": "link_v4", "table": TABLE, "type": "ipv4_addr",
                "map": "mark", "elem": [["10.128.2.11", 1003]]}},
            {"map": {"family": "inet", "name": "snat_v4", "table": TABLE,
                "type": ["ipv4_addr", "ifname"], "map": "ipv4_addr",
                "elem": [[{"concat": ["10.128.2.10", "eth0"]}, "192.168.126.10"]]}},
            {"set": {"family": "inet", "name": "excluded_v6", "table": TABLE, "type": "ipv6_addr",
                "flags": ["interval"], "elem": [{"prefix": {"addr": "fd01::", "len": 48}}]}},
            {"map": {"family": "inet", "name": "snat_v6", "table": TABLE,
                "type": ["ipv6_addr", "ifname"], "map": "ipv6_addr",
                "elem": [[{"concat": ["fd01::5", "eth0"]}, "fd00::10"]]}},
        ]});
        assert_eq!(parse_state(&listed).unwrap(), Some(sample()));
        let mut other = listed.clone();
        other["nftables"][2]["set"]["name"] = json!("layout_0");
        assert_eq!(parse_state(&other).unwrap(), None);
    }
}
