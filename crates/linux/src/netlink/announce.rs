//! Announcing an address that moved to this host: gratuitous ARP (IPv4) and unsolicited neighbour
//! advertisement (IPv6). Neighbours that already have an entry for the address replace the MAC at
//! once instead of waiting for their entry to go stale (Linux overrides even a fresh `REACHABLE`
//! entry for a gratuitous ARP or an NA with the override flag).
//!
//! The sockets are opened in the calling thread's network namespace.

use std::io;
use std::mem::size_of;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::{Error, Link, Mac, Result};

const ETH_P_ARP: u16 = 0x0806;
const ARPOP_REQUEST: u16 = 1;
const ARPOP_REPLY: u16 = 2;
const ICMPV6_NEIGHBOUR_ADVERTISEMENT: u8 = 136;
/// Flags byte of an NA: override (`O`), neither router nor solicited.
const NA_FLAG_OVERRIDE: u8 = 0x20;
const ND_OPT_TARGET_LINK_ADDRESS: u8 = 2;

/// Announces `ip`, just placed on `link`: [`send_gratuitous_arp`] for IPv4,
/// [`send_unsolicited_na`] for IPv6.
pub fn announce(link: &Link, ip: IpAddr) -> Result<()> {
    match ip {
        IpAddr::V4(v4) => send_gratuitous_arp(link, v4),
        IpAddr::V6(v6) => send_unsolicited_na(link, v6),
    }
}

fn link_mac(op: &str, link: &Link) -> Result<Mac> {
    link.mac
        .filter(|mac| !mac.is_zero())
        .ok_or_else(|| Error::refused(op, format!("{} has no Ethernet address", link.name)))
}

/// The ARP payload (after the Ethernet header) announcing `ip` at `mac`: sender and target
/// protocol address are both `ip`; the request form has a zero target hardware address, the
/// reply form repeats `mac` there (Linux only takes a reply as gratuitous if it does).
pub(crate) fn arp_payload(operation: u16, mac: Mac, ip: Ipv4Addr) -> [u8; 28] {
    let mut frame = [0u8; 28];
    frame[0..2].copy_from_slice(&1u16.to_be_bytes()); // hardware: Ethernet
    frame[2..4].copy_from_slice(&0x0800u16.to_be_bytes()); // protocol: IPv4
    frame[4] = 6;
    frame[5] = 4;
    frame[6..8].copy_from_slice(&operation.to_be_bytes());
    frame[8..14].copy_from_slice(&mac.0);
    frame[14..18].copy_from_slice(&ip.octets());
    if operation == ARPOP_REPLY {
        frame[18..24].copy_from_slice(&mac.0);
    }
    frame[24..28].copy_from_slice(&ip.octets());
    frame
}

/// Broadcasts a gratuitous ARP request and a gratuitous ARP reply for `ip` with the MAC of `link`
/// (an `AF_PACKET` datagram socket; the kernel writes the Ethernet header).
pub fn send_gratuitous_arp(link: &Link, ip: Ipv4Addr) -> Result<()> {
    let op = format!("sending gratuitous ARP for {ip} on {}", link.name);
    let mac = link_mac(&op, link)?;
    let socket = open(
        libc::AF_PACKET,
        libc::SOCK_DGRAM,
        i32::from(ETH_P_ARP.to_be()),
    )
    .map_err(|e| Error::io(&op, e))?;
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
    let mut target: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    target.sll_family = libc::AF_PACKET as u16;
    target.sll_protocol = ETH_P_ARP.to_be();
    target.sll_ifindex = link.index as i32;
    target.sll_halen = 6;
    target.sll_addr[..6].copy_from_slice(&Mac::BROADCAST.0);
    for operation in [ARPOP_REQUEST, ARPOP_REPLY] {
        let frame = arp_payload(operation, mac, ip);
        // SAFETY: the buffer and the address are valid for the given lengths.
        let sent = unsafe {
            libc::sendto(
                socket.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const target).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(Error::io(&op, io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// The ICMPv6 neighbour advertisement for `target` at `mac` (checksum left to the kernel).
pub(crate) fn na_payload(mac: Mac, target: Ipv6Addr) -> [u8; 32] {
    let mut packet = [0u8; 32];
    packet[0] = ICMPV6_NEIGHBOUR_ADVERTISEMENT;
    packet[4] = NA_FLAG_OVERRIDE;
    packet[8..24].copy_from_slice(&target.octets());
    packet[24] = ND_OPT_TARGET_LINK_ADDRESS;
    packet[25] = 1; // option length in units of 8 bytes
    packet[26..32].copy_from_slice(&mac.0);
    packet
}

/// Sends an unsolicited neighbour advertisement for `ip` to all nodes (`ff02::1`) on `link`, with
/// the override flag and the link's MAC as target link-layer address, from `ip` itself (which must
/// be usable, i.e. not tentative: [`super::Netlink::add_owned_address`] adds it with `nodad`),
/// hop limit 255 as neighbour discovery requires.
pub fn send_unsolicited_na(link: &Link, ip: Ipv6Addr) -> Result<()> {
    let op = format!(
        "sending unsolicited neighbour advertisement for {ip} on {}",
        link.name
    );
    let mac = link_mac(&op, link)?;
    let socket = open(libc::AF_INET6, libc::SOCK_RAW, libc::IPPROTO_ICMPV6)
        .map_err(|e| Error::io(&op, e))?;
    let fd = socket.as_raw_fd();
    let hops: libc::c_int = 255;
    let index = link.index as libc::c_int;
    setsockopt(fd, libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_HOPS, &hops)
        .map_err(|e| Error::io(&op, e))?;
    setsockopt(fd, libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS, &hops)
        .map_err(|e| Error::io(&op, e))?;
    setsockopt(fd, libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_IF, &index)
        .map_err(|e| Error::io(&op, e))?;
    let source = sockaddr_in6(ip, 0);
    // SAFETY: `source` is a valid sockaddr_in6 of the given length.
    if unsafe {
        libc::bind(
            fd,
            (&raw const source).cast(),
            size_of::<libc::sockaddr_in6>() as libc::socklen_t,
        )
    } < 0
    {
        return Err(Error::io(
            format!("{op} (binding to {ip})"),
            io::Error::last_os_error(),
        ));
    }
    let destination = sockaddr_in6(Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1), link.index);
    let packet = na_payload(mac, ip);
    // SAFETY: the buffer and the address are valid for the given lengths.
    let sent = unsafe {
        libc::sendto(
            fd,
            packet.as_ptr().cast(),
            packet.len(),
            0,
            (&raw const destination).cast(),
            size_of::<libc::sockaddr_in6>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(Error::io(&op, io::Error::last_os_error()));
    }
    Ok(())
}

fn sockaddr_in6(ip: Ipv6Addr, scope_id: u32) -> libc::sockaddr_in6 {
    // SAFETY: sockaddr_in6 is plain old data; all-zero is a valid value.
    let mut address: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    address.sin6_family = libc::AF_INET6 as libc::sa_family_t;
    address.sin6_addr.s6_addr = ip.octets();
    address.sin6_scope_id = scope_id;
    address
}

fn open(domain: i32, kind: i32, protocol: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain system call; the descriptor is owned by the returned OwnedFd.
    let fd = unsafe { libc::socket(domain, kind | libc::SOCK_CLOEXEC, protocol) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn setsockopt(fd: i32, level: i32, name: i32, value: &libc::c_int) -> io::Result<()> {
    // SAFETY: `value` points to a c_int of the given size.
    let result = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arp_request_and_reply_layout() {
        let mac = Mac([2, 0, 0, 0, 0, 1]);
        let ip = Ipv4Addr::new(192, 0, 2, 10);
        let request = arp_payload(ARPOP_REQUEST, mac, ip);
        assert_eq!(&request[..8], &[0, 1, 8, 0, 6, 4, 0, 1]);
        assert_eq!(&request[8..14], &mac.0);
        assert_eq!(&request[14..18], &[192, 0, 2, 10]);
        assert_eq!(&request[18..24], &[0; 6]);
        assert_eq!(&request[24..28], &[192, 0, 2, 10]);
        let reply = arp_payload(ARPOP_REPLY, mac, ip);
        assert_eq!(&reply[6..8], &[0, 2]);
        assert_eq!(&reply[18..24], &mac.0);
    }

    #[test]
    fn na_layout() {
        let mac = Mac([2, 0, 0, 0, 0, 1]);
        let ip: Ipv6Addr = "2001:db8::10".parse().unwrap();
        let packet = na_payload(mac, ip);
        assert_eq!(packet[0], 136);
        assert_eq!(packet[4], 0x20);
        assert_eq!(&packet[8..24], &ip.octets());
        assert_eq!(&packet[24..26], &[2, 1]);
        assert_eq!(&packet[26..32], &mac.0);
    }
}
