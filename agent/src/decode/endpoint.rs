//! Remote endpoints ("ip:port") from the kernel's address and port.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use sockerr_common::Endpoint;

/// None for an address family other than IPv4 and IPv6.
pub fn endpoint(ep: &Endpoint) -> Option<SocketAddr> {
    let ip = match i32::from(ep.family) {
        libc::AF_INET => IpAddr::V4(Ipv4Addr::new(
            ep.addr[0], ep.addr[1], ep.addr[2], ep.addr[3],
        )),
        libc::AF_INET6 => IpAddr::V6(Ipv6Addr::from(ep.addr)),
        _ => return None,
    };
    Some(SocketAddr::new(ip, ep.port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_format_like_users_expect() {
        let mut v4 = Endpoint {
            family: libc::AF_INET as u16,
            port: 8080,
            ..Default::default()
        };
        v4.addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        assert_eq!(endpoint(&v4).unwrap().to_string(), "127.0.0.1:8080");
        let v6 = Endpoint {
            family: libc::AF_INET6 as u16,
            port: 443,
            addr: Ipv6Addr::LOCALHOST.octets(),
            ..Default::default()
        };
        assert_eq!(endpoint(&v6).unwrap().to_string(), "[::1]:443");
        assert!(endpoint(&Endpoint::default()).is_none());
    }
}
