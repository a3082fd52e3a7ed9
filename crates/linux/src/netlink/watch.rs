//! Change notifications: links, addresses and routes, from the rtnetlink multicast groups.
//!
//! The kernel does not wait for a slow reader: when the socket's receive buffer is full it drops
//! notifications and the next read fails with `ENOBUFS`. That is surfaced as [`Change::Resync`]:
//! the reader must then re-read the state it follows, since it missed changes.

use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use futures::channel::mpsc::UnboundedReceiver;
use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::MulticastGroup;
use rtnetlink::sys::{AsyncSocket, SocketAddr};

use super::{Address, Error, Family, Link, Result, Route};

/// Receive buffer of a subscription: room for tens of thousands of notifications.
pub const DEFAULT_RECEIVE_BUFFER: usize = 4 << 20;

/// One notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A link appeared or changed (`RTM_NEWLINK`).
    Link(Link),
    LinkRemoved(Link),
    Address(Address),
    AddressRemoved(Address),
    /// A route appeared or was replaced (`RTM_NEWROUTE`), in any table.
    Route(Route),
    RouteRemoved(Route),
    /// Notifications were lost (`ENOBUFS`): re-read everything that is followed.
    Resync,
}

/// A stream of [`Change`]s in the network namespace of the thread that subscribed. Its connection
/// task runs on the tokio runtime of that thread; dropping the subscription stops it. The stream
/// ends only if the socket fails; subscribe again (and resync) then.
pub struct Subscription {
    messages: UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, SocketAddr)>,
    connection: tokio::task::JoinHandle<()>,
}

impl Subscription {
    /// Subscribes to link changes and to the address and route changes of `families`, with a
    /// [`DEFAULT_RECEIVE_BUFFER`]. Must be called from within a tokio runtime.
    pub fn new(families: &[Family]) -> Result<Subscription> {
        Subscription::with_receive_buffer(families, DEFAULT_RECEIVE_BUFFER)
    }

    /// As [`Subscription::new`], with a receive buffer of `bytes` (`SO_RCVBUFFORCE` when allowed,
    /// else `SO_RCVBUF`, which `net.core.rmem_max` caps; the kernel doubles the value).
    pub fn with_receive_buffer(families: &[Family], bytes: usize) -> Result<Subscription> {
        let op = "subscribing to route netlink notifications";
        let mut groups = vec![MulticastGroup::Link];
        for family in families {
            match family {
                Family::V4 => {
                    groups.extend([MulticastGroup::Ipv4Ifaddr, MulticastGroup::Ipv4Route])
                }
                Family::V6 => {
                    groups.extend([MulticastGroup::Ipv6Ifaddr, MulticastGroup::Ipv6Route])
                }
            }
        }
        let (mut connection, _handle, messages) =
            rtnetlink::new_multicast_connection(&groups).map_err(|e| Error::io(op, e))?;
        let fd = connection.socket_mut().socket_mut().as_raw_fd();
        set_receive_buffer(fd, bytes)
            .map_err(|e| Error::io(format!("{op} (receive buffer of {bytes} bytes)"), e))?;
        let connection = tokio::spawn(connection);
        Ok(Subscription {
            messages,
            connection,
        })
    }
}

fn set_receive_buffer(fd: i32, bytes: usize) -> std::io::Result<()> {
    let value = libc::c_int::try_from(bytes / 2).unwrap_or(libc::c_int::MAX / 2);
    for option in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        // SAFETY: `value` is a c_int of the given size and `fd` an open socket.
        let result = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                option,
                (&raw const value).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if result == 0 {
            return Ok(());
        }
    }
    Err(std::io::Error::last_os_error())
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

fn change_of(message: NetlinkMessage<RouteNetlinkMessage>) -> Option<Change> {
    match message.payload {
        NetlinkPayload::Overrun(_) => Some(Change::Resync),
        NetlinkPayload::InnerMessage(inner) => match inner {
            RouteNetlinkMessage::NewLink(link) => Some(Change::Link(Link::from_message(&link))),
            RouteNetlinkMessage::DelLink(link) => {
                Some(Change::LinkRemoved(Link::from_message(&link)))
            }
            RouteNetlinkMessage::NewAddress(address) => {
                Address::from_message(&address).map(Change::Address)
            }
            RouteNetlinkMessage::DelAddress(address) => {
                Address::from_message(&address).map(Change::AddressRemoved)
            }
            RouteNetlinkMessage::NewRoute(route) => Route::from_message(&route).map(Change::Route),
            RouteNetlinkMessage::DelRoute(route) => {
                Route::from_message(&route).map(Change::RouteRemoved)
            }
            _ => None,
        },
        _ => None,
    }
}

impl Stream for Subscription {
    type Item = Change;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Change>> {
        loop {
            match Pin::new(&mut self.messages).poll_next(cx) {
                Poll::Ready(Some((message, _))) => {
                    if let Some(change) = change_of(message) {
                        return Poll::Ready(Some(change));
                    }
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
