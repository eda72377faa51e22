//! Parsers of command-line values shared by the subcommands' arguments.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs as _},
    time::Duration,
};

/// A duration above zero: none of the durations taken means anything at 0
/// (a retention of 0 would drop each finding as soon as it is recorded).
pub fn positive_duration(s: &str) -> Result<Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if d.is_zero() => Err("must be more than 0".into()),
        Ok(d) => Ok(d),
        Err(e) => Err(e.to_string()),
    }
}

/// A listen address as node_exporter takes one: `IP:PORT` (`[v6]:PORT`),
/// `:PORT` for every address of the host (IPv6 and IPv4 where the host has
/// IPv6), or `HOST:PORT` with a host name resolved now (its first address,
/// IPv4 first: `localhost:9809` is 127.0.0.1).
pub fn listen_address(s: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let hint = "expected HOST:PORT, e.g. 127.0.0.1:9809, :9809 or localhost:9809";
    let (host, port) = s.rsplit_once(':').ok_or_else(|| hint.to_string())?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{port:?} is not a port number; {hint}"))?;
    if host.is_empty() {
        let any = if crate::proc::ipv6_enabled() {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        } else {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        };
        return Ok(SocketAddr::new(any, port));
    }
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host:?}: {e}"))?
        .min_by_key(SocketAddr::is_ipv6)
        .ok_or_else(|| format!("{host:?} has no address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_as_node_exporter_takes_them() {
        let parse = |s| listen_address(s).unwrap();
        assert_eq!(parse("127.0.0.1:9809"), "127.0.0.1:9809".parse().unwrap());
        assert_eq!(parse("[::1]:9809"), "[::1]:9809".parse().unwrap());
        assert_eq!(parse("localhost:9809"), "127.0.0.1:9809".parse().unwrap());
        let any = parse(":9809");
        assert!(any.ip().is_unspecified() && any.port() == 9809, "{any}");
        assert_eq!(parse(":0").port(), 0);
        for bad in [
            "9809",
            "localhost",
            "localhost:http",
            ":99999",
            "no-such-host.invalid:1",
        ] {
            assert!(listen_address(bad).is_err(), "{bad} accepted");
        }
    }
}
