//! The VXLAN device that carries steered traffic between nodes.

use std::net::IpAddr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};

use super::link::check_link_name;
use super::{Error, Link, Mac, Netlink, Result};

/// What the VXLAN device must look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanSpec {
    pub name: String,
    pub vni: u32,
    /// Underlay source address (this node's IP).
    pub local: IpAddr,
    /// UDP destination port (4789 is IANA's; OVN's Geneve uses 6081).
    pub port: u16,
    pub mac: Mac,
    /// Underlay link to pin the device to (`dev`), if any.
    pub underlay: Option<u32>,
    /// MTU; `None` leaves the kernel's choice (underlay MTU - 50, or 1450).
    pub mtu: Option<u32>,
}

/// A VXLAN device as read back from the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vxlan {
    pub link: Link,
    pub vni: u32,
    pub local: Option<IpAddr>,
    pub port: u16,
    pub learning: bool,
    pub underlay: Option<u32>,
}

impl Vxlan {
    fn from_message(message: &LinkMessage) -> Option<Vxlan> {
        let link = Link::from_message(message);
        if link.kind.as_deref() != Some("vxlan") {
            return None;
        }
        let mut vxlan = Vxlan {
            link,
            vni: 0,
            local: None,
            port: 0,
            learning: true,
            underlay: None,
        };
        let infos = message
            .attributes
            .iter()
            .find_map(|attribute| match attribute {
                LinkAttribute::LinkInfo(infos) => Some(infos),
                _ => None,
            })?;
        for info in infos {
            if let LinkInfo::Data(InfoData::Vxlan(data)) = info {
                for item in data {
                    match item {
                        InfoVxlan::Id(vni) => vxlan.vni = *vni,
                        InfoVxlan::Local(ip) => vxlan.local = Some(IpAddr::V4(*ip)),
                        InfoVxlan::Local6(ip) => vxlan.local = Some(IpAddr::V6(*ip)),
                        InfoVxlan::Port(port) => vxlan.port = *port,
                        InfoVxlan::Learning(learning) => vxlan.learning = *learning,
                        InfoVxlan::Link(index) if *index != 0 => vxlan.underlay = Some(*index),
                        _ => {}
                    }
                }
            }
        }
        Some(vxlan)
    }

    /// Whether the device has the parameters that can only be set at creation.
    fn matches(&self, spec: &VxlanSpec) -> bool {
        self.vni == spec.vni
            && self.local == Some(spec.local)
            && self.port == spec.port
            && !self.learning
            && self.underlay == spec.underlay
    }
}

impl Netlink {
    /// The VXLAN device called `name`; `None` if there is no such link. A link of another kind
    /// is an error (it is not ours).
    pub async fn vxlan(&self, name: &str) -> Result<Option<Vxlan>> {
        let op = || format!("reading VXLAN device {name}");
        let mut request = LinkMessage::default();
        request
            .attributes
            .push(LinkAttribute::IfName(name.to_string()));
        let answer = match self.request(RouteNetlinkMessage::GetLink(request), 0).await {
            Ok(answer) => answer,
            Err(super::Failure::Errno(libc::ENODEV)) => return Ok(None),
            Err(failure) => return Err(failure.during(op())),
        };
        let Some(message) = answer.iter().find_map(|message| match message {
            RouteNetlinkMessage::NewLink(link) => Some(link),
            _ => None,
        }) else {
            return Ok(None);
        };
        match Vxlan::from_message(message) {
            Some(vxlan) => Ok(Some(vxlan)),
            None => Err(Error::refused(
                op(),
                format!("{name} exists and is not a VXLAN device"),
            )),
        }
    }

    /// Makes the VXLAN device look like `spec` (learning off, up) and returns it. A device with
    /// other creation-time parameters (VNI, local address, port, learning, underlay) is deleted
    /// and created anew; MAC and MTU are changed in place. A link of another kind with that name
    /// is left alone and reported.
    pub async fn ensure_vxlan(&self, spec: &VxlanSpec) -> Result<Vxlan> {
        let op = format!("creating VXLAN device {} (VNI {})", spec.name, spec.vni);
        check_link_name(&op, &spec.name)?;
        match self.vxlan(&spec.name).await? {
            Some(existing) if existing.matches(spec) => {
                let mut message = LinkMessage::default();
                message.header.index = existing.link.index;
                message.header.flags = LinkFlags::Up;
                message.header.change_mask = LinkFlags::Up;
                if existing.link.mac != Some(spec.mac) {
                    message
                        .attributes
                        .push(LinkAttribute::Address(spec.mac.0.to_vec()));
                }
                if let Some(mtu) = spec.mtu.filter(|mtu| *mtu != existing.link.mtu) {
                    message.attributes.push(LinkAttribute::Mtu(mtu));
                }
                if existing.link.up && message.attributes.is_empty() {
                    return Ok(existing);
                }
                self.change(RouteNetlinkMessage::SetLink(message), 0)
                    .await
                    .map_err(|f| f.during(format!("updating VXLAN device {}", spec.name)))?;
            }
            Some(existing) => {
                self.delete_link(&existing.link).await?;
                self.create_vxlan(&op, spec).await?;
            }
            None => self.create_vxlan(&op, spec).await?,
        }
        self.vxlan(&spec.name)
            .await?
            .ok_or_else(|| Error::refused(op, "the device vanished right after it was created"))
    }

    async fn create_vxlan(&self, op: &str, spec: &VxlanSpec) -> Result<()> {
        let mut data = vec![
            InfoVxlan::Id(spec.vni),
            match spec.local {
                IpAddr::V4(ip) => InfoVxlan::Local(ip),
                IpAddr::V6(ip) => InfoVxlan::Local6(ip),
            },
            InfoVxlan::Port(spec.port),
            InfoVxlan::Learning(false),
        ];
        if let Some(index) = spec.underlay {
            data.push(InfoVxlan::Link(index));
        }
        let mut message = LinkMessage::default();
        message.header.flags = LinkFlags::Up;
        message.header.change_mask = LinkFlags::Up;
        message
            .attributes
            .push(LinkAttribute::IfName(spec.name.clone()));
        message
            .attributes
            .push(LinkAttribute::Address(spec.mac.0.to_vec()));
        if let Some(mtu) = spec.mtu {
            message.attributes.push(LinkAttribute::Mtu(mtu));
        }
        message.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Vxlan),
            LinkInfo::Data(InfoData::Vxlan(data)),
        ]));
        self.change(
            RouteNetlinkMessage::NewLink(message),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .await
        .map_err(|f| f.during(op))
    }
}
