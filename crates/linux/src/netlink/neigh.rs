//! Permanent neighbour entries (IP → MAC) and FDB entries of a VXLAN device (MAC → underlay IP).

use std::net::IpAddr;

use netlink_packet_core::{NLM_F_APPEND, NLM_F_CREATE, NLM_F_REPLACE};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{RouteProtocol, RouteType};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::{Family, Link, Mac, Netlink, OWNER_PROTOCOL, Result, address_family};

/// A neighbour (ARP / NDP) entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbour {
    pub index: u32,
    pub ip: IpAddr,
    pub mac: Option<Mac>,
    pub state: NeighbourState,
    /// `NDA_PROTOCOL`: [`OWNER_PROTOCOL`] for the entries we wrote.
    pub protocol: Option<u8>,
}

/// A forwarding database entry of a device (`bridge fdb`), e.g. a VXLAN remote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdbEntry {
    pub index: u32,
    pub mac: Mac,
    /// Underlay destination (`dst`) of a VXLAN entry.
    pub dst: Option<IpAddr>,
    pub permanent: bool,
    /// `NTF_SELF`: the entry lives in the device itself (VXLAN), not in a bridge it is part of.
    pub own: bool,
}

fn neighbour_address(ip: IpAddr) -> NeighbourAddress {
    match ip {
        IpAddr::V4(v4) => NeighbourAddress::Inet(v4),
        IpAddr::V6(v6) => NeighbourAddress::Inet6(v6),
    }
}

/// The IP in `NDA_DST`. In `AF_BRIDGE` (FDB) messages netlink-packet-route cannot know the
/// family of the underlay address and leaves the raw bytes in `Other`: 4 bytes are IPv4, 16 IPv6.
fn ip_of(address: &NeighbourAddress) -> Option<IpAddr> {
    match address {
        NeighbourAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        NeighbourAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        NeighbourAddress::Other(bytes) => match bytes.len() {
            4 => <[u8; 4]>::try_from(bytes.as_slice()).ok().map(IpAddr::from),
            16 => <[u8; 16]>::try_from(bytes.as_slice())
                .ok()
                .map(IpAddr::from),
            _ => None,
        },
        _ => None,
    }
}

fn neighbour_message(index: u32, ip: IpAddr) -> NeighbourMessage {
    let mut message = NeighbourMessage::default();
    message.header.family = address_family(Family::of(&ip));
    message.header.ifindex = index;
    message.header.kind = RouteType::Unspec;
    message
        .attributes
        .push(NeighbourAttribute::Destination(neighbour_address(ip)));
    message
}

fn fdb_message(index: u32, mac: Mac, dst: IpAddr) -> NeighbourMessage {
    let mut message = NeighbourMessage::default();
    message.header.family = AddressFamily::Bridge;
    message.header.ifindex = index;
    message.header.state = NeighbourState::Permanent;
    message.header.flags = NeighbourFlags::Own;
    message.header.kind = RouteType::Unspec;
    message
        .attributes
        .push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
    message
        .attributes
        .push(NeighbourAttribute::Destination(neighbour_address(dst)));
    message
}

impl Netlink {
    /// The IPv4 and IPv6 neighbour entries of `link`.
    pub async fn neighbours(&self, link: &Link) -> Result<Vec<Neighbour>> {
        let mut entries = Vec::new();
        for family in [Family::V4, Family::V6] {
            let mut request = NeighbourMessage::default();
            request.header.family = address_family(family);
            let answer = self
                .dump(RouteNetlinkMessage::GetNeighbour(request))
                .await
                .map_err(|f| f.during(format!("listing the neighbours of {}", link.name)))?;
            for message in &answer {
                let RouteNetlinkMessage::NewNeighbour(message) = message else {
                    continue;
                };
                if message.header.ifindex != link.index {
                    continue;
                }
                let mut ip = None;
                let mut mac = None;
                let mut protocol = None;
                for attribute in &message.attributes {
                    match attribute {
                        NeighbourAttribute::Destination(address) => ip = ip_of(address),
                        NeighbourAttribute::LinkLayerAddress(bytes) => mac = Mac::from_slice(bytes),
                        NeighbourAttribute::Protocol(value) => protocol = Some(u8::from(*value)),
                        _ => {}
                    }
                }
                if let Some(ip) = ip {
                    entries.push(Neighbour {
                        index: message.header.ifindex,
                        ip,
                        mac,
                        state: message.header.state,
                        protocol,
                    });
                }
            }
        }
        Ok(entries)
    }

    /// Adds or replaces the permanent entry `ip lladdr mac` on `link`, tagged with
    /// [`OWNER_PROTOCOL`].
    pub async fn replace_neighbour(&self, link: &Link, ip: IpAddr, mac: Mac) -> Result<()> {
        let mut message = neighbour_message(link.index, ip);
        message.header.state = NeighbourState::Permanent;
        message
            .attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
        message
            .attributes
            .push(NeighbourAttribute::Protocol(RouteProtocol::from(
                OWNER_PROTOCOL,
            )));
        self.change(
            RouteNetlinkMessage::NewNeighbour(message),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .await
        .map_err(|f| {
            f.during(format!(
                "setting neighbour {ip} lladdr {mac} on {}",
                link.name
            ))
        })
    }

    /// Deletes the neighbour entry of `ip` on `link`.
    pub async fn delete_neighbour(&self, link: &Link, ip: IpAddr) -> Result<()> {
        self.change(
            RouteNetlinkMessage::DelNeighbour(neighbour_message(link.index, ip)),
            0,
        )
        .await
        .map_err(|f| f.during(format!("deleting neighbour {ip} on {}", link.name)))
    }

    /// The FDB entries of `link` (for a VXLAN device: its remotes).
    pub async fn fdb(&self, link: &Link) -> Result<Vec<FdbEntry>> {
        let mut request = NeighbourMessage::default();
        request.header.family = AddressFamily::Bridge;
        let answer = self
            .dump(RouteNetlinkMessage::GetNeighbour(request))
            .await
            .map_err(|f| f.during(format!("listing the FDB of {}", link.name)))?;
        let mut entries = Vec::new();
        for message in &answer {
            let RouteNetlinkMessage::NewNeighbour(message) = message else {
                continue;
            };
            if message.header.ifindex != link.index {
                continue;
            }
            let mut mac = None;
            let mut dst = None;
            for attribute in &message.attributes {
                match attribute {
                    NeighbourAttribute::LinkLayerAddress(bytes) => mac = Mac::from_slice(bytes),
                    NeighbourAttribute::Destination(address) => dst = ip_of(address),
                    _ => {}
                }
            }
            if let Some(mac) = mac {
                entries.push(FdbEntry {
                    index: message.header.ifindex,
                    mac,
                    dst,
                    permanent: message.header.state == NeighbourState::Permanent,
                    own: message.header.flags.contains(NeighbourFlags::Own),
                });
            }
        }
        Ok(entries)
    }

    /// Adds the entry `mac dst DST` to the device (`bridge fdb append ... self permanent`).
    /// Only the all-zeros MAC (flooding of broadcast and unknown destinations) and multicast MACs
    /// hold several remotes: for a unicast MAC that already has an entry the kernel keeps it and
    /// silently ignores the append (use [`Netlink::replace_fdb`]).
    pub async fn append_fdb(&self, link: &Link, mac: Mac, dst: IpAddr) -> Result<()> {
        self.change(
            RouteNetlinkMessage::NewNeighbour(fdb_message(link.index, mac, dst)),
            NLM_F_CREATE | NLM_F_APPEND,
        )
        .await
        .map_err(|f| {
            f.during(format!(
                "appending FDB entry {mac} dst {dst} to {}",
                link.name
            ))
        })
    }

    /// Sets the entry `mac dst DST` on the device (`bridge fdb replace ... self permanent`): the
    /// first remote of `mac` becomes `dst`.
    pub async fn replace_fdb(&self, link: &Link, mac: Mac, dst: IpAddr) -> Result<()> {
        self.change(
            RouteNetlinkMessage::NewNeighbour(fdb_message(link.index, mac, dst)),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .await
        .map_err(|f| {
            f.during(format!(
                "setting FDB entry {mac} dst {dst} on {}",
                link.name
            ))
        })
    }

    /// Deletes the entry `mac dst DST` of the device.
    pub async fn delete_fdb(&self, link: &Link, mac: Mac, dst: IpAddr) -> Result<()> {
        self.change(
            RouteNetlinkMessage::DelNeighbour(fdb_message(link.index, mac, dst)),
            0,
        )
        .await
        .map_err(|f| {
            f.during(format!(
                "deleting FDB entry {mac} dst {dst} from {}",
                link.name
            ))
        })
    }
}
