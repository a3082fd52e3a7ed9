//! Addresses: listing, finding the link whose subnet holds an IP, and the egress IP addresses we
//! own (tagged with [`OWNER_PROTOCOL`] in `IFA_PROTO`).

use std::net::IpAddr;

use ipnet::IpNet;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressMessage, AddressProtocol, AddressScope,
};

use super::{
    Error, Family, Link, Netlink, OWNER_PROTOCOL, Result, address_family, family_of, host_prefix,
};

/// An address of a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    /// Index of the link.
    pub index: u32,
    /// The address with its prefix length, e.g. `192.0.2.5/24` (host bits kept).
    pub net: IpNet,
    pub scope: AddressScope,
    /// `IFA_F_SECONDARY` (IPv4: another address of the link already covers the subnet).
    pub secondary: bool,
    /// `IFA_F_DEPRECATED` (IPv6: preferred lifetime over).
    pub deprecated: bool,
    /// `IFA_F_PERMANENT` (configured, not autoconfigured).
    pub permanent: bool,
    /// `IFA_LABEL` (IPv4 only; the link name unless set otherwise).
    pub label: Option<String>,
    /// `IFA_PROTO`, when set: [`OWNER_PROTOCOL`] for the addresses we placed.
    pub protocol: Option<u8>,
}

impl Address {
    pub fn ip(&self) -> IpAddr {
        self.net.addr()
    }

    pub fn family(&self) -> Family {
        Family::of(&self.net.addr())
    }

    /// Whether we placed this address (its `IFA_PROTO` is [`OWNER_PROTOCOL`]).
    pub fn is_owned(&self) -> bool {
        self.protocol == Some(OWNER_PROTOCOL)
    }

    pub(crate) fn from_message(message: &AddressMessage) -> Option<Address> {
        family_of(message.header.family)?;
        let mut local = None;
        let mut address = None;
        let mut label = None;
        let mut protocol = None;
        let mut flags = AddressFlags::from_bits_retain(u32::from(message.header.flags.bits()));
        for attribute in &message.attributes {
            match attribute {
                AddressAttribute::Local(ip) => local = Some(*ip),
                AddressAttribute::Address(ip) => address = Some(*ip),
                AddressAttribute::Label(text) => label = Some(text.clone()),
                AddressAttribute::Flags(all) => flags = *all,
                AddressAttribute::Protocol(value) => protocol = Some(u8::from(*value)),
                _ => {}
            }
        }
        // IFA_LOCAL is the local address; IFA_ADDRESS is the peer on point-to-point links and the
        // only one given for most IPv6 addresses.
        let ip = local.or(address)?;
        let net = IpNet::new(ip, message.header.prefix_len).ok()?;
        Some(Address {
            index: message.header.index,
            net,
            scope: message.header.scope,
            secondary: flags.contains(AddressFlags::Secondary),
            deprecated: flags.contains(AddressFlags::Deprecated),
            permanent: flags.contains(AddressFlags::Permanent),
            label,
            protocol,
        })
    }
}

/// The result of [`Netlink::find_link_for`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkMatch {
    pub link: Link,
    /// The matching subnet in network form, e.g. `192.0.2.0/24`.
    pub prefix: IpNet,
}

/// Longest-prefix match of `ip` over the addresses of up links, as OVN-Kubernetes'
/// `findLinkOnSameNetworkAsIPUsingLPM`: candidates exclude links that are not up, single-host
/// prefixes (/32, /128), secondary and deprecated addresses, link-local addresses and keepalived
/// addresses (label ending in `vip`). On equal prefix lengths the lowest link index wins.
pub fn select_link(links: &[Link], addresses: &[Address], ip: IpAddr) -> Option<LinkMatch> {
    let family = Family::of(&ip);
    let mut best: Option<(&Link, IpNet)> = None;
    for address in addresses {
        let prefix = address.net.trunc();
        if address.family() != family
            || address.net.prefix_len() == host_prefix(family)
            || address.secondary
            || address.deprecated
            || is_link_local(address.ip())
            || address
                .label
                .as_deref()
                .is_some_and(|label| label.ends_with("vip"))
            || !prefix.contains(&ip)
        {
            continue;
        }
        let Some(link) = links
            .iter()
            .find(|link| link.index == address.index && link.up)
        else {
            continue;
        };
        let better = match best {
            None => true,
            Some((best_link, best_prefix)) => {
                prefix.prefix_len() > best_prefix.prefix_len()
                    || (prefix.prefix_len() == best_prefix.prefix_len()
                        && link.index < best_link.index)
            }
        };
        if better {
            best = Some((link, prefix));
        }
    }
    best.map(|(link, prefix)| LinkMatch {
        link: link.clone(),
        prefix,
    })
}

fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.is_unicast_link_local(),
    }
}

fn message_for(index: u32, ip: IpAddr) -> AddressMessage {
    let family = Family::of(&ip);
    let mut message = AddressMessage::default();
    message.header.family = address_family(family);
    message.header.prefix_len = host_prefix(family);
    message.header.index = index;
    message.header.scope = AddressScope::Universe;
    message.attributes.push(AddressAttribute::Local(ip));
    message.attributes.push(AddressAttribute::Address(ip));
    message
}

impl Netlink {
    /// All IPv4 and IPv6 addresses of all links.
    pub async fn addresses(&self) -> Result<Vec<Address>> {
        let answer = self
            .dump(RouteNetlinkMessage::GetAddress(AddressMessage::default()))
            .await
            .map_err(|f| f.during("listing addresses"))?;
        Ok(answer
            .iter()
            .filter_map(|message| match message {
                RouteNetlinkMessage::NewAddress(address) => Address::from_message(address),
                _ => None,
            })
            .collect())
    }

    /// The link whose subnet holds `ip` (see [`select_link`]), or `None`.
    pub async fn find_link_for(&self, ip: IpAddr) -> Result<Option<LinkMatch>> {
        let links = self.links().await?;
        let addresses = self.addresses().await?;
        Ok(select_link(&links, &addresses, ip))
    }

    /// Adds `ip` as `/32` (`/128`) scope global on `link`, tagged with [`OWNER_PROTOCOL`]; IPv6
    /// addresses skip duplicate address detection (`nodad`) so they are usable at once.
    /// Fails with `File exists` if the address is already there (ours or not). Fails, and removes
    /// the address again, if the kernel does not keep the tag (`IFA_PROTO` needs Linux 5.18).
    pub async fn add_owned_address(&self, link: &Link, ip: IpAddr) -> Result<Address> {
        let op = || {
            format!(
                "adding {ip}/{} to {}",
                host_prefix(Family::of(&ip)),
                link.name
            )
        };
        let mut message = message_for(link.index, ip);
        if ip.is_ipv6() {
            message
                .attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        message
            .attributes
            .push(AddressAttribute::Protocol(AddressProtocol::from(
                OWNER_PROTOCOL,
            )));
        self.change(
            RouteNetlinkMessage::NewAddress(message),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .await
        .map_err(|f| f.during(op()))?;
        let placed = self
            .addresses()
            .await?
            .into_iter()
            .find(|address| address.index == link.index && address.ip() == ip);
        match placed {
            Some(address) if address.is_owned() => Ok(address),
            Some(address) => {
                self.delete_address_unchecked(&address).await?;
                Err(Error::refused(
                    op(),
                    "the kernel did not keep the address protocol (IFA_PROTO needs Linux 5.18 or later)",
                ))
            }
            None => Err(Error::refused(
                op(),
                "the address vanished right after it was added",
            )),
        }
    }

    /// The addresses we placed (tagged with [`OWNER_PROTOCOL`]), on any link.
    pub async fn owned_addresses(&self) -> Result<Vec<Address>> {
        Ok(self
            .addresses()
            .await?
            .into_iter()
            .filter(Address::is_owned)
            .collect())
    }

    /// Deletes an address we placed; refuses any other.
    pub async fn delete_owned_address(&self, address: &Address) -> Result<()> {
        if !address.is_owned() {
            let name = self.link_label(address.index).await;
            return Err(Error::refused(
                format!("deleting {} from {name}", address.net),
                format!("not ours (address protocol is not {OWNER_PROTOCOL})"),
            ));
        }
        self.delete_address_unchecked(address).await
    }

    async fn delete_address_unchecked(&self, address: &Address) -> Result<()> {
        let mut message = message_for(address.index, address.ip());
        message.header.prefix_len = address.net.prefix_len();
        match self
            .change(RouteNetlinkMessage::DelAddress(message), 0)
            .await
        {
            Ok(()) => Ok(()),
            Err(failure) => {
                let name = self.link_label(address.index).await;
                Err(failure.during(format!("deleting {} from {name}", address.net)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(index: u32, name: &str, up: bool) -> Link {
        Link {
            index,
            name: name.into(),
            up,
            mac: None,
            kind: None,
            mtu: 1500,
        }
    }

    fn address(index: u32, net: &str) -> Address {
        Address {
            index,
            net: net.parse().unwrap(),
            scope: AddressScope::Universe,
            secondary: false,
            deprecated: false,
            permanent: true,
            label: None,
            protocol: None,
        }
    }

    fn pick(links: &[Link], addresses: &[Address], ip: &str) -> Option<(String, String)> {
        select_link(links, addresses, ip.parse().unwrap())
            .map(|m| (m.link.name, m.prefix.to_string()))
    }

    #[test]
    fn longest_prefix_wins() {
        let links = [link(2, "eth0", true), link(3, "eth1", true)];
        let addresses = [address(2, "10.0.0.5/8"), address(3, "10.1.2.3/24")];
        assert_eq!(
            pick(&links, &addresses, "10.1.2.99"),
            Some(("eth1".into(), "10.1.2.0/24".into()))
        );
        assert_eq!(
            pick(&links, &addresses, "10.9.9.9"),
            Some(("eth0".into(), "10.0.0.0/8".into()))
        );
        assert_eq!(pick(&links, &addresses, "192.0.2.1"), None);
        assert_eq!(pick(&links, &addresses, "2001:db8::1"), None);
    }

    #[test]
    fn excluded_candidates() {
        let links = [
            link(2, "eth0", true),
            link(3, "down0", false),
            link(4, "eth2", true),
        ];
        let mut secondary = address(4, "10.1.2.4/26");
        secondary.secondary = true;
        let mut deprecated = address(4, "2001:db8:1::4/64");
        deprecated.deprecated = true;
        let mut vip = address(4, "10.1.2.5/28");
        vip.label = Some("eth2vip".into());
        let addresses = [
            address(2, "10.0.0.5/8"),
            address(3, "10.1.2.3/24"),    // link down
            address(4, "10.1.2.10/32"),   // single host
            secondary,                    // secondary
            vip,                          // keepalived
            address(4, "169.254.0.1/16"), // link-local
            deprecated,
            address(2, "fe80::1/64"),
        ];
        assert_eq!(
            pick(&links, &addresses, "10.1.2.10"),
            Some(("eth0".into(), "10.0.0.0/8".into()))
        );
        assert_eq!(pick(&links, &addresses, "169.254.0.9"), None);
        assert_eq!(pick(&links, &addresses, "2001:db8:1::9"), None);
        assert_eq!(pick(&links, &addresses, "fe80::9"), None);
    }

    #[test]
    fn ipv6_and_ties() {
        let links = [link(7, "b", true), link(5, "a", true)];
        let addresses = [address(7, "2001:db8::7/64"), address(5, "2001:db8::5/64")];
        assert_eq!(
            pick(&links, &addresses, "2001:db8::99"),
            Some(("a".into(), "2001:db8::/64".into()))
        );
    }
}
