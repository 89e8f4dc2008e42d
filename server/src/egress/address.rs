//! What kind of address an IP is, for the egress proxy: only public addresses are reachable
//! unless an admin lists the address (or its network) in a policy's `allow_addresses`. The classes
//! follow the IANA special-purpose registries; an address that embeds an IPv4 address (IPv4-mapped,
//! 6to4) is judged by the IPv4 address inside, so `::ffff:127.0.0.1` is loopback.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The class of an address, as far as the egress proxy cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressClass {
    /// Routable on the internet: the only class allowed without an admin's exception.
    Public,
    /// 127.0.0.0/8, ::1: this machine.
    Loopback,
    /// RFC 1918 (10/8, 172.16/12, 192.168/16) and the deprecated IPv6 site-local fec0::/10.
    Private,
    /// 169.254/16, fe80::/10.
    LinkLocal,
    /// Carrier-grade NAT, 100.64.0.0/10.
    Cgnat,
    /// IPv6 unique local addresses, fc00::/7.
    UniqueLocal,
    /// 0.0.0.0/8, ::: "this host", which connects to the local machine on Linux.
    Unspecified,
    /// 224.0.0.0/4, ff00::/8.
    Multicast,
    /// 255.255.255.255.
    Broadcast,
    /// 192.0.2/24, 198.51.100/24, 203.0.113/24, 2001:db8::/32.
    Documentation,
    /// The NAT64 prefixes 64:ff9b::/96 and 64:ff9b:1::/48: a translator reaches an IPv4 address
    /// the proxy cannot see.
    Nat64,
    /// A cloud metadata service: 169.254.169.254, 100.100.100.200, fd00:ec2::254.
    Metadata,
    /// Anything else special-purpose (240/4, 198.18/15 benchmarking, 192.0.0/24, Teredo, the
    /// discard prefix, IPv4-compatible IPv6).
    Reserved,
}

impl AddressClass {
    /// Whether the proxy may connect without an admin's exception.
    pub fn is_public(self) -> bool {
        self == AddressClass::Public
    }
}

impl fmt::Display for AddressClass {
    /// With its article, as it reads in a refusal: "a loopback address".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AddressClass::Public => "a public address",
            AddressClass::Loopback => "a loopback address",
            AddressClass::Private => "a private address",
            AddressClass::LinkLocal => "a link-local address",
            AddressClass::Cgnat => "a carrier-grade NAT address",
            AddressClass::UniqueLocal => "a unique local (private IPv6) address",
            AddressClass::Unspecified => "an unspecified address",
            AddressClass::Multicast => "a multicast address",
            AddressClass::Broadcast => "a broadcast address",
            AddressClass::Documentation => "a documentation address",
            AddressClass::Nat64 => "a NAT64 address",
            AddressClass::Metadata => "a cloud metadata address",
            AddressClass::Reserved => "a reserved address",
        })
    }
}

/// The class of `ip`.
pub fn classify(ip: IpAddr) -> AddressClass {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> AddressClass {
    let [a, b, c, _] = ip.octets();
    if ip == Ipv4Addr::new(169, 254, 169, 254) || ip == Ipv4Addr::new(100, 100, 100, 200) {
        AddressClass::Metadata
    } else if a == 0 {
        AddressClass::Unspecified
    } else if a == 127 {
        AddressClass::Loopback
    } else if ip.is_private() {
        AddressClass::Private
    } else if ip.is_link_local() {
        AddressClass::LinkLocal
    } else if a == 100 && (b & 0xc0) == 64 {
        AddressClass::Cgnat
    } else if ip.is_broadcast() {
        AddressClass::Broadcast
    } else if ip.is_multicast() {
        AddressClass::Multicast
    } else if ip.is_documentation() {
        AddressClass::Documentation
    } else if a >= 240 || (a == 198 && (b & 0xfe) == 18) || (a == 192 && b == 0 && c == 0) {
        AddressClass::Reserved
    } else {
        AddressClass::Public
    }
}

fn classify_v6(ip: Ipv6Addr) -> AddressClass {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return classify_v4(v4);
    }
    let seg = ip.segments();
    if ip == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
        AddressClass::Metadata
    } else if ip.is_loopback() {
        AddressClass::Loopback
    } else if ip.is_unspecified() {
        AddressClass::Unspecified
    } else if seg[0] == 0x64 && seg[1] == 0xff9b && (seg[2..6] == [0; 4] || seg[2] == 1) {
        AddressClass::Nat64
    } else if seg[0] == 0x2002 {
        // 6to4 carries an IPv4 address in its second and third segments.
        let [a, b] = seg[1].to_be_bytes();
        let [c, d] = seg[2].to_be_bytes();
        classify_v4(Ipv4Addr::new(a, b, c, d))
    } else if (seg[0] & 0xfe00) == 0xfc00 {
        AddressClass::UniqueLocal
    } else if (seg[0] & 0xffc0) == 0xfe80 {
        AddressClass::LinkLocal
    } else if (seg[0] & 0xffc0) == 0xfec0 {
        AddressClass::Private
    } else if (seg[0] & 0xff00) == 0xff00 {
        AddressClass::Multicast
    } else if seg[0] == 0x2001 && seg[1] == 0xdb8 {
        AddressClass::Documentation
    } else if seg[0] == 0
        || (seg[0] == 0x2001 && seg[1] == 0)
        || (seg[0] == 0x100 && seg[1..4] == [0; 3])
    {
        // ::/8 (IPv4-compatible and the rest), Teredo 2001::/32, discard 100::/64.
        AddressClass::Reserved
    } else if (seg[0] & 0xe000) == 0x2000 {
        AddressClass::Public
    } else {
        // Outside 2000::/3 nothing is allocated for global unicast.
        AddressClass::Reserved
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case("8.8.8.8", AddressClass::Public)]
    #[case("1.1.1.1", AddressClass::Public)]
    #[case("127.0.0.1", AddressClass::Loopback)]
    #[case("127.255.0.9", AddressClass::Loopback)]
    #[case("10.1.2.3", AddressClass::Private)]
    #[case("172.16.0.1", AddressClass::Private)]
    #[case("172.31.255.255", AddressClass::Private)]
    #[case("172.32.0.1", AddressClass::Public)]
    #[case("192.168.1.1", AddressClass::Private)]
    #[case("169.254.1.1", AddressClass::LinkLocal)]
    #[case("169.254.169.254", AddressClass::Metadata)]
    #[case("100.100.100.200", AddressClass::Metadata)]
    #[case("100.64.0.1", AddressClass::Cgnat)]
    #[case("100.127.255.255", AddressClass::Cgnat)]
    #[case("100.128.0.1", AddressClass::Public)]
    #[case("0.0.0.0", AddressClass::Unspecified)]
    #[case("0.1.2.3", AddressClass::Unspecified)]
    #[case("224.0.0.1", AddressClass::Multicast)]
    #[case("255.255.255.255", AddressClass::Broadcast)]
    #[case("192.0.2.1", AddressClass::Documentation)]
    #[case("198.51.100.1", AddressClass::Documentation)]
    #[case("203.0.113.1", AddressClass::Documentation)]
    #[case("240.0.0.1", AddressClass::Reserved)]
    #[case("198.18.0.1", AddressClass::Reserved)]
    #[case("192.0.0.8", AddressClass::Reserved)]
    #[case("2606:4700::1111", AddressClass::Public)]
    #[case("::1", AddressClass::Loopback)]
    #[case("::", AddressClass::Unspecified)]
    #[case("fe80::1", AddressClass::LinkLocal)]
    #[case("fec0::1", AddressClass::Private)]
    #[case("fc00::1", AddressClass::UniqueLocal)]
    #[case("fd12:3456::1", AddressClass::UniqueLocal)]
    #[case("fd00:ec2::254", AddressClass::Metadata)]
    #[case("ff02::1", AddressClass::Multicast)]
    #[case("2001:db8::1", AddressClass::Documentation)]
    #[case("64:ff9b::7f00:1", AddressClass::Nat64)]
    #[case("64:ff9b::808:808", AddressClass::Nat64)]
    #[case("64:ff9b:1::1", AddressClass::Nat64)]
    #[case("::ffff:127.0.0.1", AddressClass::Loopback)]
    #[case("::ffff:169.254.169.254", AddressClass::Metadata)]
    #[case("::ffff:10.0.0.1", AddressClass::Private)]
    #[case("::ffff:8.8.8.8", AddressClass::Public)]
    #[case("2002:7f00:1::1", AddressClass::Loopback)]
    #[case("2002:a9fe:a9fe::", AddressClass::Metadata)]
    #[case("2001::1", AddressClass::Reserved)]
    #[case("::7f00:1", AddressClass::Reserved)]
    #[case("100::1", AddressClass::Reserved)]
    #[case("4000::1", AddressClass::Reserved)]
    fn every_class(#[case] ip: &str, #[case] class: AddressClass) {
        assert_eq!(classify(ip.parse().unwrap()), class, "{ip}");
        assert_eq!(class.is_public(), class == AddressClass::Public);
    }
}
