//! Routes: listing a table, adding, replacing, deleting; copying a link's main-table routes into
//! its own table; multipath (ECMP) routes.
//!
//! Table ids above 255 travel in `RTA_TABLE`; in dumps the header byte then holds a placeholder
//! (`RT_TABLE_COMPAT`, 252), so reading always prefers the attribute.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteNextHop,
    RouteNextHopFlags, RouteProtocol, RouteScope, RouteType, RouteVia,
};

use super::{Error, Family, Link, Netlink, OWNER_PROTOCOL, Result, address_family, family_of};

/// Per-link tables are `LINK_TABLE_BASE + ifindex`, as OVN-Kubernetes' `CalculateRouteTableID`.
pub const LINK_TABLE_BASE: u32 = 1000;

/// The table of a link: `1000 + ifindex`.
pub fn link_table(index: u32) -> u32 {
    LINK_TABLE_BASE + index
}

const RT_TABLE_MAIN: u32 = RouteHeader::RT_TABLE_MAIN as u32;

/// One path of a multipath route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextHop {
    pub gateway: Option<IpAddr>,
    pub oif: u32,
    /// `onlink`: the gateway is reachable on `oif` even though no subnet of `oif` holds it.
    pub onlink: bool,
    /// Relative weight, 1..=256 (`rtnh_hops + 1`).
    pub weight: u16,
}

/// A route (`ip route`). A multipath route has `nexthops` and neither `gateway` nor `oif`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub family: Family,
    pub table: u32,
    /// Destination in network form; `0.0.0.0/0` (`::/0`) is the default route.
    pub dst: IpNet,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    /// Preferred source address (`src`, `RTA_PREFSRC`).
    pub src: Option<IpAddr>,
    /// `metric` (`RTA_PRIORITY`); 0 when absent. IPv6 routes always have one (default 1024).
    pub metric: u32,
    pub scope: RouteScope,
    pub kind: RouteType,
    pub protocol: RouteProtocol,
    pub onlink: bool,
    pub nexthops: Vec<NextHop>,
}

fn default_net(family: Family) -> IpNet {
    match family {
        Family::V4 => IpNet::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0).expect("valid"),
        Family::V6 => IpNet::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0).expect("valid"),
    }
}

/// The metric IPv6 gives a route written without one; IPv4 keeps 0.
fn default_metric(family: Family) -> u32 {
    match family {
        Family::V4 => 0,
        Family::V6 => 1024,
    }
}

impl Route {
    /// Whether the destination is the default route.
    pub fn is_default(&self) -> bool {
        self.dst.prefix_len() == 0
    }

    /// `default dev OIF table TABLE proto 238`, scope link for IPv4 (IPv6 routes have no scope:
    /// the kernel reports them all as universe).
    pub fn default_dev(family: Family, oif: u32, table: u32) -> Route {
        Route {
            family,
            table,
            dst: default_net(family),
            gateway: None,
            oif: Some(oif),
            src: None,
            metric: default_metric(family),
            scope: match family {
                Family::V4 => RouteScope::Link,
                Family::V6 => RouteScope::Universe,
            },
            kind: RouteType::Unicast,
            protocol: RouteProtocol::from(OWNER_PROTOCOL),
            onlink: false,
            nexthops: Vec::new(),
        }
    }

    /// `default table TABLE proto 238 nexthop via X dev D onlink ...`: one equal-weight path per
    /// `(gateway, oif)`, for ECMP.
    pub fn multipath_default(family: Family, table: u32, paths: &[(IpAddr, u32)]) -> Route {
        let mut route = Route {
            family,
            table,
            dst: default_net(family),
            gateway: None,
            oif: None,
            src: None,
            metric: default_metric(family),
            scope: RouteScope::Universe,
            kind: RouteType::Unicast,
            protocol: RouteProtocol::from(OWNER_PROTOCOL),
            onlink: false,
            nexthops: Vec::new(),
        };
        // The kernel stores a single path as a plain gateway route and reports it so: write it that
        // way, or it never reads back equal and is rewritten on every sync.
        if let [(gateway, oif)] = paths {
            route.gateway = Some(*gateway);
            route.oif = Some(*oif);
            route.onlink = true;
            return route;
        }
        route.nexthops = paths
            .iter()
            .map(|(gateway, oif)| NextHop {
                gateway: Some(*gateway),
                oif: *oif,
                onlink: true,
                weight: 1,
            })
            .collect();
        route
    }

    pub(crate) fn from_message(message: &RouteMessage) -> Option<Route> {
        let family = family_of(message.header.address_family)?;
        if message.header.flags.contains(RouteFlags::Cloned) {
            return None;
        }
        let mut route = Route {
            family,
            table: u32::from(message.header.table),
            dst: default_net(family),
            gateway: None,
            oif: None,
            src: None,
            metric: 0,
            scope: message.header.scope,
            kind: message.header.kind,
            protocol: message.header.protocol,
            onlink: message.header.flags.contains(RouteFlags::Onlink),
            nexthops: Vec::new(),
        };
        for attribute in &message.attributes {
            match attribute {
                RouteAttribute::Table(table) => route.table = *table,
                RouteAttribute::Destination(address) => {
                    let ip = route_ip(address)?;
                    route.dst = IpNet::new(ip, message.header.destination_prefix_length)
                        .ok()?
                        .trunc();
                }
                RouteAttribute::Gateway(address) => route.gateway = route_ip(address),
                RouteAttribute::Via(RouteVia::Inet(ip)) => route.gateway = Some(IpAddr::V4(*ip)),
                RouteAttribute::Via(RouteVia::Inet6(ip)) => route.gateway = Some(IpAddr::V6(*ip)),
                RouteAttribute::Oif(index) => route.oif = Some(*index),
                RouteAttribute::PrefSource(address) => route.src = route_ip(address),
                RouteAttribute::Priority(metric) => route.metric = *metric,
                RouteAttribute::MultiPath(hops) => {
                    route.nexthops = hops.iter().map(next_hop).collect()
                }
                _ => {}
            }
        }
        Some(route)
    }

    /// Whether the kernel identifies both routes as the same one: a replace of one overwrites the
    /// other, a delete of one removes the other. (The TOS of IPv4 routes and the source prefix of
    /// IPv6 routes, also part of the key, are not modelled and always 0.)
    fn same_key(&self, other: &Route) -> bool {
        self.family == other.family
            && self.table == other.table
            && self.dst == other.dst
            && self.metric == other.metric
    }

    fn to_message(&self) -> RouteMessage {
        let mut message = RouteMessage::default();
        message.header.address_family = address_family(self.family);
        message.header.destination_prefix_length = self.dst.prefix_len();
        message.header.scope = self.scope;
        message.header.kind = self.kind;
        message.header.protocol = self.protocol;
        if self.onlink {
            message.header.flags.insert(RouteFlags::Onlink);
        }
        // Tables above 255 only fit RTA_TABLE; the header then says RT_TABLE_UNSPEC.
        message.header.table = if self.table > 255 {
            0
        } else {
            self.table as u8
        };
        message.attributes.push(RouteAttribute::Table(self.table));
        if self.dst.prefix_len() > 0 {
            message
                .attributes
                .push(RouteAttribute::Destination(RouteAddress::from(
                    self.dst.addr(),
                )));
        }
        if let Some(gateway) = self.gateway {
            message
                .attributes
                .push(gateway_attribute(self.family, gateway));
        }
        if let Some(oif) = self.oif {
            message.attributes.push(RouteAttribute::Oif(oif));
        }
        if let Some(src) = self.src {
            message
                .attributes
                .push(RouteAttribute::PrefSource(RouteAddress::from(src)));
        }
        if self.metric != 0 {
            message
                .attributes
                .push(RouteAttribute::Priority(self.metric));
        }
        if !self.nexthops.is_empty() {
            let hops = self
                .nexthops
                .iter()
                .map(|hop| {
                    let mut raw = RouteNextHop::default();
                    raw.interface_index = hop.oif;
                    raw.hops = hop.weight.clamp(1, 256).saturating_sub(1) as u8;
                    if hop.onlink {
                        raw.flags.insert(RouteNextHopFlags::Onlink);
                    }
                    if let Some(gateway) = hop.gateway {
                        raw.attributes.push(gateway_attribute(self.family, gateway));
                    }
                    raw
                })
                .collect();
            message.attributes.push(RouteAttribute::MultiPath(hops));
        }
        message
    }
}

fn route_ip(address: &RouteAddress) -> Option<IpAddr> {
    match address {
        RouteAddress::Inet(ip) => Some(IpAddr::V4(*ip)),
        RouteAddress::Inet6(ip) => Some(IpAddr::V6(*ip)),
        _ => None,
    }
}

fn gateway_attribute(family: Family, gateway: IpAddr) -> RouteAttribute {
    match (family, gateway) {
        // An IPv6 gateway of an IPv4 route (RFC 5549) travels in RTA_VIA.
        (Family::V4, IpAddr::V6(v6)) => RouteAttribute::Via(RouteVia::Inet6(v6)),
        (_, ip) => RouteAttribute::Gateway(RouteAddress::from(ip)),
    }
}

fn next_hop(raw: &RouteNextHop) -> NextHop {
    let mut gateway = None;
    for attribute in &raw.attributes {
        match attribute {
            RouteAttribute::Gateway(address) => gateway = route_ip(address),
            RouteAttribute::Via(RouteVia::Inet(ip)) => gateway = Some(IpAddr::V4(*ip)),
            RouteAttribute::Via(RouteVia::Inet6(ip)) => gateway = Some(IpAddr::V6(*ip)),
            _ => {}
        }
    }
    NextHop {
        gateway,
        oif: raw.interface_index,
        onlink: raw.flags.contains(RouteNextHopFlags::Onlink),
        weight: u16::from(raw.hops) + 1,
    }
}

impl Route {
    /// Like `ip route`, naming links with `link_name`.
    fn render(&self, link_name: &dyn Fn(u32) -> String) -> String {
        let mut text = String::new();
        if self.family == Family::V6 {
            text.push_str("-6 ");
        }
        if self.kind != RouteType::Unicast {
            text.push_str(&format!("{:?} ", self.kind).to_lowercase());
        }
        if self.is_default() {
            text.push_str("default");
        } else {
            text.push_str(&self.dst.to_string());
        }
        if let Some(gateway) = self.gateway {
            text.push_str(&format!(" via {gateway}"));
        }
        if let Some(oif) = self.oif {
            text.push_str(&format!(" dev {}", link_name(oif)));
        }
        text.push_str(&format!(" table {}", self.table));
        if let Some(src) = self.src {
            text.push_str(&format!(" src {src}"));
        }
        if self.metric != 0 {
            text.push_str(&format!(" metric {}", self.metric));
        }
        if self.onlink {
            text.push_str(" onlink");
        }
        for hop in &self.nexthops {
            text.push_str(" nexthop");
            if let Some(gateway) = hop.gateway {
                text.push_str(&format!(" via {gateway}"));
            }
            text.push_str(&format!(
                " dev {} weight {}",
                link_name(hop.oif),
                hop.weight
            ));
            if hop.onlink {
                text.push_str(" onlink");
            }
        }
        text
    }
}

impl fmt::Display for Route {
    /// Like `ip route`: `default via 192.0.2.1 dev #3 table 1003` (`-6 ` first for IPv6).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render(&|index| format!("#{index}")))
    }
}

/// The routes `table` must hold for `link` (see [`Netlink::copy_link_routes`]), from the routes of
/// the main table.
pub(crate) fn routes_for_link_table(
    main: &[Route],
    link: &Link,
    family: Family,
    table: u32,
) -> Vec<Route> {
    let mut routes: Vec<Route> = main
        .iter()
        .filter(|route| {
            route.family == family
                && route.table == RT_TABLE_MAIN
                && route.oif == Some(link.index)
                && route.nexthops.is_empty()
        })
        .map(|route| Route {
            table,
            src: None,
            protocol: RouteProtocol::from(OWNER_PROTOCOL),
            ..route.clone()
        })
        .collect();
    if !routes.iter().any(Route::is_default) {
        routes.push(Route::default_dev(family, link.index, table));
    }
    routes
}

impl Netlink {
    /// The routes of `table` in `family` (cached clones excluded).
    pub async fn routes(&self, family: Family, table: u32) -> Result<Vec<Route>> {
        let mut request = RouteMessage::default();
        request.header.address_family = address_family(family);
        let answer = self
            .dump(RouteNetlinkMessage::GetRoute(request))
            .await
            .map_err(|f| f.during(format!("listing {family:?} routes of table {table}")))?;
        Ok(answer
            .iter()
            .filter_map(|message| match message {
                RouteNetlinkMessage::NewRoute(route) => Route::from_message(route),
                _ => None,
            })
            .filter(|route| route.table == table && route.family == family)
            .collect())
    }

    /// Adds a route; `File exists` if one with the same key (destination, metric, ...) exists.
    pub async fn add_route(&self, route: &Route) -> Result<()> {
        self.write_route(route, NLM_F_CREATE | NLM_F_EXCL, "adding")
            .await
    }

    /// Adds a route or replaces the one with the same key, atomically.
    pub async fn replace_route(&self, route: &Route) -> Result<()> {
        self.write_route(route, NLM_F_CREATE | NLM_F_REPLACE, "replacing")
            .await
    }

    async fn write_route(&self, route: &Route, flags: u16, verb: &str) -> Result<()> {
        match self
            .change(RouteNetlinkMessage::NewRoute(route.to_message()), flags)
            .await
        {
            Ok(()) => Ok(()),
            Err(failure) => {
                Err(failure.during(format!("{verb} route {}", self.describe(route).await)))
            }
        }
    }

    /// Deletes a route.
    pub async fn delete_route(&self, route: &Route) -> Result<()> {
        match self
            .change(RouteNetlinkMessage::DelRoute(route.to_message()), 0)
            .await
        {
            Ok(()) => Ok(()),
            Err(failure) => {
                Err(failure.during(format!("deleting route {}", self.describe(route).await)))
            }
        }
    }

    /// The route as `ip route` would print it, with link names (for error messages).
    async fn describe(&self, route: &Route) -> String {
        let mut names = HashMap::new();
        for index in route
            .oif
            .into_iter()
            .chain(route.nexthops.iter().map(|hop| hop.oif))
        {
            if let Entry::Vacant(entry) = names.entry(index) {
                entry.insert(self.link_label(index).await);
            }
        }
        route.render(&|index| {
            names
                .get(&index)
                .cloned()
                .unwrap_or_else(|| format!("#{index}"))
        })
    }

    /// The routes the per-link table must hold: every main-table route of `family` whose output
    /// link is `link` (gateway routes included; multipath routes excluded, as OVN-Kubernetes'
    /// filter on the output link does), with `src` cleared, `table` set and our protocol, plus
    /// `default dev LINK` when none of them is a default route.
    pub async fn link_table_routes(
        &self,
        link: &Link,
        family: Family,
        table: u32,
    ) -> Result<Vec<Route>> {
        let main = self.routes(family, RT_TABLE_MAIN).await?;
        Ok(routes_for_link_table(&main, link, family, table))
    }

    /// Makes `table` hold exactly [`Netlink::link_table_routes`] in `family`. Missing or
    /// different routes are written with replace first, so a changed gateway swaps atomically;
    /// routes of `table` no longer wanted are deleted afterwards. Call it again on every change of
    /// the main table (see [`super::Subscription`]). The table must be ours.
    pub async fn copy_link_routes(
        &self,
        link: &Link,
        family: Family,
        table: u32,
    ) -> Result<TableSync> {
        check_own_table(
            &format!("copying the routes of {} into table {table}", link.name),
            table,
        )?;
        let wanted = self.link_table_routes(link, family, table).await?;
        self.sync_table(family, table, wanted).await
    }

    /// Makes `table` hold exactly `wanted` in `family` (routes of the other family are left
    /// alone): replaces what is missing or different, then deletes the rest. The table must be
    /// ours; main, local, default and unspecified are refused.
    pub async fn sync_table(
        &self,
        family: Family,
        table: u32,
        wanted: Vec<Route>,
    ) -> Result<TableSync> {
        let op = format!("setting the {family:?} routes of table {table}");
        check_own_table(&op, table)?;
        if let Some(stray) = wanted
            .iter()
            .find(|route| route.table != table || route.family != family)
        {
            return Err(Error::refused(
                op,
                format!("route {stray} does not belong there"),
            ));
        }
        let actual = self.routes(family, table).await?;
        let mut sync = TableSync {
            routes: wanted,
            written: 0,
            deleted: 0,
        };
        for route in &sync.routes {
            if !actual.contains(route) {
                self.replace_route(route).await?;
                sync.written += 1;
            }
        }
        // A route sharing its key with a wanted one was overwritten by the replace: deleting it
        // now would delete the wanted route.
        for route in &actual {
            if !sync.routes.iter().any(|keep| keep.same_key(route)) {
                match self.delete_route(route).await {
                    Ok(()) => sync.deleted += 1,
                    // Gone meanwhile (e.g. its link went down).
                    Err(error) if error.is_not_found() => {}
                    Err(error) => return Err(error),
                }
            }
        }
        Ok(sync)
    }
}

/// What [`Netlink::sync_table`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSync {
    /// The routes the table now holds in the family.
    pub routes: Vec<Route>,
    /// Routes written (added or replaced).
    pub written: usize,
    /// Stale routes deleted (not counting those a replace swapped out).
    pub deleted: usize,
}

/// Refuses the kernel's own tables: unspecified (0), default (253), main (254), local (255).
fn check_own_table(op: &str, table: u32) -> Result<()> {
    if matches!(table, 0 | 253 | 254 | 255) {
        return Err(Error::refused(op, "not a table of ours"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(dst: &str, gateway: Option<&str>, oif: u32) -> Route {
        Route {
            family: Family::V4,
            table: RT_TABLE_MAIN,
            dst: dst.parse().unwrap(),
            gateway: gateway.map(|g| g.parse().unwrap()),
            oif: Some(oif),
            src: Some("192.0.2.5".parse().unwrap()),
            metric: 0,
            scope: if gateway.is_some() {
                RouteScope::Universe
            } else {
                RouteScope::Link
            },
            kind: RouteType::Unicast,
            protocol: RouteProtocol::Kernel,
            onlink: false,
            nexthops: Vec::new(),
        }
    }

    fn link(index: u32) -> Link {
        Link {
            index,
            name: format!("eth{index}"),
            up: true,
            mac: None,
            kind: None,
            mtu: 1500,
        }
    }

    #[test]
    fn copies_gateway_routes_and_adds_default() {
        let main = [
            route("192.0.2.0/24", None, 3),
            route("198.51.100.0/24", Some("192.0.2.1"), 3),
            route("10.0.0.0/8", None, 2),
        ];
        let copied = routes_for_link_table(&main, &link(3), Family::V4, 1003);
        assert_eq!(copied.len(), 3);
        assert!(
            copied
                .iter()
                .all(|r| r.table == 1003 && r.src.is_none() && r.oif == Some(3))
        );
        assert_eq!(copied[1].gateway, Some("192.0.2.1".parse().unwrap()));
        assert!(
            copied[2].is_default()
                && copied[2].gateway.is_none()
                && copied[2].scope == RouteScope::Link
        );
    }

    #[test]
    fn keeps_existing_default() {
        let main = [
            route("192.0.2.0/24", None, 3),
            route("0.0.0.0/0", Some("192.0.2.1"), 3),
        ];
        let copied = routes_for_link_table(&main, &link(3), Family::V4, 1003);
        assert_eq!(copied.len(), 2);
        assert_eq!(copied.iter().filter(|r| r.is_default()).count(), 1);
        assert_eq!(copied[1].gateway, Some("192.0.2.1".parse().unwrap()));
    }

    #[test]
    fn message_round_trip_with_big_table_and_multipath() {
        let ecmp = Route::multipath_default(
            Family::V4,
            50_123,
            &[
                ("10.0.0.1".parse().unwrap(), 7),
                ("10.0.0.2".parse().unwrap(), 7),
            ],
        );
        let message = ecmp.to_message();
        assert_eq!(message.header.table, 0);
        assert_eq!(Route::from_message(&message), Some(ecmp));
        let gateway = Route {
            table: 1003,
            metric: 100,
            ..route("198.51.100.0/24", Some("192.0.2.1"), 3)
        };
        assert_eq!(Route::from_message(&gateway.to_message()), Some(gateway));
    }
}
