//! The netlink layer of the data plane: links, addresses, rules, routes, the VXLAN device,
//! neighbours and FDB entries, gratuitous ARP / unsolicited NA, sysctls and change notifications.
//!
//! Everything operates in the network namespace of the **calling thread at the time the socket or
//! file is opened**: [`Netlink::connect`] binds its socket there, [`announce`] opens its raw socket
//! there and [`sysctl`] opens `/proc/sys/net/...` there. To work in a named namespace, run the code
//! on a thread that has entered it ([`crate::netns::run_in`]). Never move such work to a thread
//! pool (`tokio::fs`, `spawn_blocking`, a multi-thread runtime's other workers): those threads live
//! in another namespace.
//!
//! Everything is family-aware: addresses, rules and routes carry a [`Family`] and IPv6 takes the
//! same paths as IPv4.
//!
//! # Ownership
//! What we create is recognisable after a restart without any state file:
//! - egress IP addresses carry the address protocol [`OWNER_PROTOCOL`] (`IFA_PROTO`, Linux ≥ 5.18;
//!   iproute2 releases after 6.1 show `proto 0xee` in `ip addr`; Debian 12's iproute2 6.1 neither
//!   shows nor sets it).
//!   Adding one fails if the kernel drops the attribute, so ownership never silently degrades;
//! - rules and the routes we write carry the same value as their protocol (`FRA_PROTOCOL`,
//!   `rtm_protocol`: `ip rule`/`ip route` show `proto 238`), as do permanent neighbours
//!   (`NDA_PROTOCOL`). Tables `1000 + ifindex` and the rule priorities are owned by number anyway.
//!
//! # Errors
//! Every failure is an [`Error`] naming the operation and the object, e.g.
//! `adding 192.0.2.10/32 to eth1: File exists`.

mod address;
mod announce;
mod link;
mod neigh;
mod route;
mod rule;
pub mod sysctl;
mod vxlan;
mod watch;

use std::fmt;
use std::str::FromStr;

use futures::StreamExt;
use netlink_packet_core::{NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

pub use address::{Address, LinkMatch, select_link};
pub use announce::{announce, send_gratuitous_arp, send_unsolicited_na};
pub use kube_egress_engine::Family;
pub use link::Link;
pub use neigh::{FdbEntry, Neighbour};
pub use netlink_packet_route::address::AddressScope;
pub use netlink_packet_route::neighbour::NeighbourState;
pub use netlink_packet_route::route::{RouteProtocol, RouteScope, RouteType};
pub use netlink_packet_route::rule::RuleAction;
pub use route::{LINK_TABLE_BASE, NextHop, Route, TableSync, link_table};
pub use rule::Rule;
pub use vxlan::{Vxlan, VxlanSpec};
pub use watch::{Change, DEFAULT_RECEIVE_BUFFER, Subscription};

/// The protocol value that tags what we create: `IFA_PROTO` of egress IP addresses,
/// `FRA_PROTOCOL` of rules, `rtm_protocol` of routes, `NDA_PROTOCOL` of neighbours.
///
/// 238 (0xEE, "Egress Egress") is not used by the kernel (1–3 for addresses, 0–4 for routes) nor
/// listed in iproute2's `rt_protos`/`rt_addrprotos` nor, to our knowledge, by any routing daemon.
pub const OWNER_PROTOCOL: u8 = 238;

/// A failed netlink, socket or sysctl operation, naming what was being done.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kernel refused a request with `errno`.
    #[error("{op}: {}", errno_text(*.errno))]
    Kernel { op: String, errno: i32 },
    /// A socket or file operation failed, or the netlink connection is gone.
    #[error("{op}: {source}")]
    Io {
        op: String,
        #[source]
        source: std::io::Error,
    },
    /// We refused the operation (foreign object, invalid argument, unsupported kernel).
    #[error("{op}: {reason}")]
    Refused { op: String, reason: String },
}

impl Error {
    /// The OS error number, if the kernel or a system call reported one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Kernel { errno, .. } => Some(*errno),
            Error::Io { source, .. } => source.raw_os_error(),
            Error::Refused { .. } => None,
        }
    }

    /// The object already exists (`EEXIST`).
    pub fn is_exists(&self) -> bool {
        self.errno() == Some(libc::EEXIST)
    }

    /// The object does not exist (`ENOENT`, `ESRCH`, `ENODEV`, `EADDRNOTAVAIL`).
    pub fn is_not_found(&self) -> bool {
        matches!(
            self.errno(),
            Some(libc::ENOENT | libc::ESRCH | libc::ENODEV | libc::EADDRNOTAVAIL)
        )
    }

    pub(crate) fn refused(op: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::Refused {
            op: op.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn io(op: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            op: op.into(),
            source,
        }
    }
}

/// `strerror` text without the `(os error N)` suffix that `std::io::Error` appends.
fn errno_text(errno: i32) -> String {
    let text = std::io::Error::from_raw_os_error(errno).to_string();
    match text.find(" (os error") {
        Some(end) => text[..end].to_string(),
        None => text,
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A failure of one request before we know how to describe it.
#[derive(Debug)]
pub(crate) enum Failure {
    Errno(i32),
    Closed,
}

impl Failure {
    pub(crate) fn during(self, op: impl Into<String>) -> Error {
        match self {
            Failure::Errno(errno) => Error::Kernel {
                op: op.into(),
                errno,
            },
            Failure::Closed => Error::io(
                op,
                std::io::Error::new(
                    std::io::ErrorKind::BrokenPipe,
                    "the netlink connection is closed",
                ),
            ),
        }
    }
}

/// A MAC (EUI-48) address, displayed and parsed as `aa:bb:cc:dd:ee:ff`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    pub const BROADCAST: Mac = Mac([0xff; 6]);

    /// The address in a netlink attribute, if it is 6 bytes long.
    pub fn from_slice(bytes: &[u8]) -> Option<Mac> {
        <[u8; 6]>::try_from(bytes).ok().map(Mac)
    }

    pub fn is_zero(&self) -> bool {
        self.0 == [0; 6]
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Mac {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Mac, String> {
        let mut bytes = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut bytes {
            let part = parts
                .next()
                .ok_or_else(|| format!("invalid MAC address {s:?}"))?;
            if part.len() != 2 {
                return Err(format!("invalid MAC address {s:?}"));
            }
            *byte =
                u8::from_str_radix(part, 16).map_err(|_| format!("invalid MAC address {s:?}"))?;
        }
        if parts.next().is_some() {
            return Err(format!("invalid MAC address {s:?}"));
        }
        Ok(Mac(bytes))
    }
}

pub(crate) fn address_family(family: Family) -> AddressFamily {
    match family {
        Family::V4 => AddressFamily::Inet,
        Family::V6 => AddressFamily::Inet6,
    }
}

pub(crate) fn family_of(family: AddressFamily) -> Option<Family> {
    match family {
        AddressFamily::Inet => Some(Family::V4),
        AddressFamily::Inet6 => Some(Family::V6),
        _ => None,
    }
}

/// The host prefix length of a family (32 or 128).
pub(crate) fn host_prefix(family: Family) -> u8 {
    match family {
        Family::V4 => 32,
        Family::V6 => 128,
    }
}

/// A route-netlink connection in the network namespace of the thread that called
/// [`Netlink::connect`]. Cheap to clone; the connection ends when the last clone is dropped.
#[derive(Clone, Debug)]
pub struct Netlink {
    handle: rtnetlink::Handle,
}

impl Netlink {
    /// Opens a netlink socket in the calling thread's network namespace and spawns its connection
    /// task on the current tokio runtime (so it must be called from within one). The socket stays
    /// in that namespace whichever thread later drives the task.
    pub fn connect() -> Result<Netlink> {
        let (connection, handle, _) = rtnetlink::new_connection()
            .map_err(|e| Error::io("opening a route netlink socket", e))?;
        tokio::spawn(connection);
        Ok(Netlink { handle })
    }

    /// Sends one request and collects the messages of its answer (all parts of a dump), or the
    /// kernel's error. `flags` are added to `NLM_F_REQUEST`.
    pub(crate) async fn request(
        &self,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> std::result::Result<Vec<RouteNetlinkMessage>, Failure> {
        let mut request = NetlinkMessage::from(message);
        request.header.flags = NLM_F_REQUEST | flags;
        let mut handle = self.handle.clone();
        let mut responses = handle.request(request).map_err(|_| Failure::Closed)?;
        let mut answer = Vec::new();
        while let Some(message) = responses.next().await {
            match message.payload {
                NetlinkPayload::InnerMessage(inner) => answer.push(inner),
                NetlinkPayload::Error(error) => {
                    if let Some(code) = error.code {
                        return Err(Failure::Errno(-code.get()));
                    }
                }
                _ => {}
            }
        }
        Ok(answer)
    }

    /// A request that changes something and wants an acknowledgement.
    pub(crate) async fn change(
        &self,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> std::result::Result<(), Failure> {
        self.request(message, NLM_F_ACK | flags).await.map(drop)
    }

    /// A dump request.
    pub(crate) async fn dump(
        &self,
        message: RouteNetlinkMessage,
    ) -> std::result::Result<Vec<RouteNetlinkMessage>, Failure> {
        self.request(message, NLM_F_DUMP).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trip() {
        let mac: Mac = "0a:58:C0:a8:01:02".parse().unwrap();
        assert_eq!(mac, Mac([0x0a, 0x58, 0xc0, 0xa8, 0x01, 0x02]));
        assert_eq!(mac.to_string(), "0a:58:c0:a8:01:02");
        assert!("0a:58:c0:a8:01".parse::<Mac>().is_err());
        assert!("0a:58:c0:a8:01:02:03".parse::<Mac>().is_err());
        assert!("0a:58:c0:a8:01:2".parse::<Mac>().is_err());
        assert!("0a:58:c0:a8:01:zz".parse::<Mac>().is_err());
        assert_eq!(Mac::from_slice(&[1, 2, 3, 4]), None);
    }

    #[test]
    fn error_text_names_operation_without_os_error_suffix() {
        let error = Failure::Errno(libc::EEXIST).during("adding 192.0.2.10/32 to eth1");
        assert_eq!(
            error.to_string(),
            "adding 192.0.2.10/32 to eth1: File exists"
        );
        assert!(error.is_exists());
        assert!(!error.is_not_found());
        assert!(Failure::Errno(libc::ESRCH).during("x").is_not_found());
    }
}
