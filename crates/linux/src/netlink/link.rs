//! Links: listing, looking up, bringing up, deleting.

use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkInfo, LinkMessage};

use super::{Error, Failure, Mac, Netlink, Result};

/// A network interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// Administratively up (`IFF_UP`), as `ip link` shows `UP` inside `<...>`.
    pub up: bool,
    /// The hardware address, when it is an Ethernet-style 6-byte address.
    pub mac: Option<Mac>,
    /// `IFLA_INFO_KIND` (`veth`, `bridge`, `vxlan`, ...); `None` for physical devices and `lo`.
    pub kind: Option<String>,
    pub mtu: u32,
}

impl Link {
    pub(crate) fn from_message(message: &LinkMessage) -> Link {
        let mut link = Link {
            index: message.header.index,
            name: String::new(),
            up: message.header.flags.contains(LinkFlags::Up),
            mac: None,
            kind: None,
            mtu: 0,
        };
        for attribute in &message.attributes {
            match attribute {
                LinkAttribute::IfName(name) => link.name = name.clone(),
                LinkAttribute::Address(bytes) => link.mac = Mac::from_slice(bytes),
                LinkAttribute::Mtu(mtu) => link.mtu = *mtu,
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        if let LinkInfo::Kind(kind) = info {
                            link.kind = Some(kind.to_string());
                        }
                    }
                }
                _ => {}
            }
        }
        link
    }
}

impl Netlink {
    /// All links of the namespace, by index.
    pub async fn links(&self) -> Result<Vec<Link>> {
        let answer = self
            .dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))
            .await
            .map_err(|f| f.during("listing links"))?;
        let mut links: Vec<Link> = answer
            .iter()
            .filter_map(|message| match message {
                RouteNetlinkMessage::NewLink(link) => Some(Link::from_message(link)),
                _ => None,
            })
            .collect();
        links.sort_by_key(|link| link.index);
        Ok(links)
    }

    /// The link called `name`, if any.
    pub async fn link(&self, name: &str) -> Result<Option<Link>> {
        let mut message = LinkMessage::default();
        message
            .attributes
            .push(LinkAttribute::IfName(name.to_string()));
        self.get_link(message, || format!("looking up link {name}"))
            .await
    }

    /// The link with index `index`, if any.
    pub async fn link_by_index(&self, index: u32) -> Result<Option<Link>> {
        let mut message = LinkMessage::default();
        message.header.index = index;
        self.get_link(message, || format!("looking up link #{index}"))
            .await
    }

    async fn get_link(
        &self,
        message: LinkMessage,
        op: impl Fn() -> String,
    ) -> Result<Option<Link>> {
        match self.request(RouteNetlinkMessage::GetLink(message), 0).await {
            Ok(answer) => Ok(answer.iter().find_map(|message| match message {
                RouteNetlinkMessage::NewLink(link) => Some(Link::from_message(link)),
                _ => None,
            })),
            Err(Failure::Errno(libc::ENODEV)) => Ok(None),
            Err(failure) => Err(failure.during(op())),
        }
    }

    /// Sets the link administratively up.
    pub async fn set_link_up(&self, link: &Link) -> Result<()> {
        let mut message = LinkMessage::default();
        message.header.index = link.index;
        message.header.flags = LinkFlags::Up;
        message.header.change_mask = LinkFlags::Up;
        self.change(RouteNetlinkMessage::SetLink(message), 0)
            .await
            .map_err(|f| f.during(format!("setting link {} up", link.name)))
    }

    /// Deletes a link (a VXLAN device we created; never call it on anything else).
    pub async fn delete_link(&self, link: &Link) -> Result<()> {
        let mut message = LinkMessage::default();
        message.header.index = link.index;
        self.change(RouteNetlinkMessage::DelLink(message), 0)
            .await
            .map_err(|f| f.during(format!("deleting link {}", link.name)))
    }

    /// A name for error messages: the link's name, or `#index` if it cannot be found.
    pub(crate) async fn link_label(&self, index: u32) -> String {
        match self.link_by_index(index).await {
            Ok(Some(link)) => link.name,
            _ => format!("#{index}"),
        }
    }
}

/// Rejects names the kernel would refuse (`IFNAMSIZ` is 16 including the NUL).
pub(crate) fn check_link_name(op: &str, name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 15
        || name.contains(['/', ' ', ':'])
        || name == "."
        || name == ".."
    {
        return Err(Error::refused(op, format!("invalid link name {name:?}")));
    }
    Ok(())
}
