//! Target URL rules and the private-target guard (SPEC §6).
//!
//! A webhook engine makes HTTP requests to URLs its users choose; without this guard a
//! subscriber could point a hook at `http://169.254.169.254/` or an internal admin port
//! and read the answer in the delivery log. Targets are checked when a hook is created
//! or changed, and again on every connection: the addresses checked are the addresses
//! connected to (see `dispatch::client`), so DNS that changes in between does not help.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};

use ipnet::IpNet;

/// Longest target URL accepted.
pub const MAX_URL: usize = 2048;

/// Which targets are allowed.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// `--allow-private-targets`: no address is refused.
    pub allow_private: bool,
    /// `--allow-target-net`: networks opened one by one.
    pub allowed_nets: Vec<IpNet>,
    /// `--resolve HOST=IP`: fixed answers for names, like curl's `--resolve` (for tests
    /// and for split-horizon setups).
    pub overrides: HashMap<String, Vec<IpAddr>>,
}

/// Why an address is not public, or `None` if it is.
pub fn non_public(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => non_public_v4(v4),
        IpAddr::V6(v6) => non_public_v6(v6),
    }
}

fn non_public_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        _ if ip == Ipv4Addr::new(168, 63, 129, 16) => "a cloud metadata address",
        (0, _, _) => "unspecified (0.0.0.0/8)",
        (10, _, _) => "private (10.0.0.0/8)",
        (100, 64..=127, _) => "shared address space (100.64.0.0/10)",
        (127, _, _) => "loopback",
        (169, 254, _) => "link-local (169.254.0.0/16, cloud metadata)",
        (172, 16..=31, _) => "private (172.16.0.0/12)",
        (192, 0, 0) => "IETF protocol assignments (192.0.0.0/24)",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "documentation",
        (192, 88, 99) => "deprecated 6to4 relay (192.88.99.0/24)",
        (192, 168, _) => "private (192.168.0.0/16)",
        (198, 18..=19, _) => "benchmarking (198.18.0.0/15)",
        (224..=239, _, _) => "multicast",
        (240..=255, _, _) => "reserved or broadcast",
        _ => return None,
    })
}

fn non_public_v6(ip: Ipv6Addr) -> Option<&'static str> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return non_public_v4(v4).map(|_| "an IPv4-mapped non-public address");
    }
    let s = ip.segments();
    // Forms that carry an IPv4 address inside: judge the address they carry.
    let embedded = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    if s[0..6] == [0, 0, 0, 0, 0, 0] && !ip.is_unspecified() && !ip.is_loopback() {
        // Deprecated IPv4-compatible ::a.b.c.d.
        return non_public_v4(embedded(s[6], s[7]))
            .map(|_| "an IPv4-compatible non-public address");
    }
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        return non_public_v4(embedded(s[6], s[7])).map(|_| "NAT64 of a non-public address");
    }
    if s[0] == 0x2002 {
        return non_public_v4(embedded(s[1], s[2])).map(|_| "6to4 of a non-public address");
    }
    Some(match s[0] {
        _ if ip.is_unspecified() => "unspecified (::)",
        _ if ip.is_loopback() => "loopback (::1)",
        0x0100 if s[1..4] == [0, 0, 0] => "discard-only (100::/64)",
        0xfc00..=0xfdff => "unique-local (fc00::/7)",
        0xfe80..=0xfebf => "link-local (fe80::/10)",
        0xfec0..=0xfeff => "site-local (fec0::/10)",
        0xff00..=0xffff => "multicast",
        0x2001 if s[1] == 0x0db8 => "documentation (2001:db8::/32)",
        0x3fff if s[1] <= 0x0fff => "documentation (3fff::/20)",
        0x2001 if s[1] < 0x0200 => "IETF special-purpose (2001::/23)",
        _ => return None,
    })
}

impl Policy {
    /// Refuses an address this policy does not allow.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), String> {
        if self.allow_private || self.allowed_nets.iter().any(|n| n.contains(&ip)) {
            return Ok(());
        }
        match non_public(ip) {
            Some(why) => Err(format!(
                "{ip} is {why}; hookd delivers to public addresses only \
                 (see --allow-private-targets and --allow-target-net)"
            )),
            None => Ok(()),
        }
    }

    /// Every address of `host`, each checked: if any is refused the target is refused,
    /// and a failed lookup refuses too (fail closed).
    pub fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = host.trim_end_matches('.').to_ascii_lowercase();
        let addrs: Vec<SocketAddr> = if let Ok(ip) = host.parse::<IpAddr>() {
            vec![SocketAddr::new(ip, port)]
        } else if let Some(ips) = self.overrides.get(&name) {
            ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect()
        } else {
            if !self.allow_private && (name == "localhost" || name.ends_with(".localhost")) {
                return Err(format!(
                    "{host} is loopback; hookd delivers to public addresses only"
                ));
            }
            (host, port)
                .to_socket_addrs()
                .map_err(|e| format!("cannot resolve {host}: {e}"))?
                .collect()
        };
        if addrs.is_empty() {
            return Err(format!("{host} has no addresses"));
        }
        for a in &addrs {
            self.check_ip(a.ip())?;
        }
        Ok(addrs)
    }

    /// The create-time check of a target URL (SPEC §4): an absolute http(s) URL with a
    /// host, no user name or password, at most 2048 bytes, resolving to allowed
    /// addresses. The `url` crate normalises hidden forms first: `http://0x7f000001/`,
    /// `http://2130706433/` and `http://0177.0.0.1/` all become 127.0.0.1.
    pub fn check_url(&self, raw: &str) -> Result<url::Url, String> {
        if raw.len() > MAX_URL {
            return Err(format!("must be at most {MAX_URL} bytes"));
        }
        let url = url::Url::parse(raw).map_err(|e| format!("is not a valid URL ({e})"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err("must use http or https".into());
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("must not carry a user name or password".into());
        }
        let port = url.port_or_known_default().unwrap_or(80);
        let host = match url.host() {
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            Some(url::Host::Domain(d)) if !d.is_empty() => d.to_string(),
            _ => return Err("must have a host".into()),
        };
        self.resolve(&host, port)?;
        Ok(url)
    }

    /// Is `host` one of the trusted receiver platforms or a subdomain of one?
    pub fn host_matches(trusted: &[String], host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        trusted.iter().any(|t| {
            let t = t.trim_end_matches('.').to_ascii_lowercase();
            host == t || host.ends_with(&format!(".{t}"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strict() -> Policy {
        Policy::default()
    }

    #[test]
    fn every_blocked_range_is_refused() {
        for ip in [
            "0.0.0.0",
            "10.1.2.3",
            "100.64.0.1",
            "100.100.100.200",
            "127.0.0.1",
            "127.9.9.9",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.192",
            "192.0.2.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "168.63.129.16",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::a00:1",
            "2002:7f00:1::",
            "fc00::1",
            "fd00:ec2::254",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "2001:db8::1",
            "3fff::1",
            "100::1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(strict().check_ip(ip).is_err(), "{ip} should be refused");
        }
    }

    #[test]
    fn public_addresses_pass() {
        for ip in [
            "1.1.1.1",
            "8.8.8.8",
            "93.184.216.34",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700:4700::1111",
            "::ffff:1.1.1.1",
            "2002:101:101::",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(strict().check_ip(ip).is_ok(), "{ip} should pass");
        }
    }

    #[test]
    fn hidden_url_forms_are_refused() {
        for url in [
            "http://127.0.0.1/",
            "http://2130706433/",
            "http://0x7f000001/",
            "http://0177.0.0.1/",
            "http://0x7f.1/",
            "http://127.1/",
            "http://localhost/",
            "http://LOCALHOST./",
            "http://app.localhost/",
            "http://[::1]/",
            "http://[::ffff:7f00:1]/",
            "http://[0:0:0:0:0:ffff:127.0.0.1]/",
            "http://169.254.169.254/latest/meta-data/",
            "http://0.0.0.0:8080/",
        ] {
            assert!(strict().check_url(url).is_err(), "{url} should be refused");
        }
    }

    #[test]
    fn url_shape_rules() {
        let open = Policy {
            allow_private: true,
            ..Policy::default()
        };
        assert!(open.check_url("http://127.0.0.1:9/x").is_ok());
        assert!(open.check_url("ftp://127.0.0.1/").is_err());
        assert!(open.check_url("http://user:pw@127.0.0.1/").is_err());
        assert!(open.check_url("http://user@127.0.0.1/").is_err());
        assert!(open.check_url("/relative").is_err());
        assert!(open
            .check_url(&format!("http://a.b/{}", "x".repeat(2100)))
            .is_err());
    }

    #[test]
    fn allowed_nets_open_one_network_only() {
        let p = Policy {
            allowed_nets: vec!["10.1.0.0/16".parse().unwrap()],
            ..Policy::default()
        };
        assert!(p.check_ip("10.1.2.3".parse().unwrap()).is_ok());
        assert!(p.check_ip("10.2.0.1".parse().unwrap()).is_err());
        assert!(p.check_ip("127.0.0.1".parse().unwrap()).is_err());
    }

    #[test]
    fn overrides_are_checked_like_dns() {
        let mut p = Policy::default();
        p.overrides
            .insert("rebind.test".into(), vec!["127.0.0.1".parse().unwrap()]);
        assert!(p.resolve("rebind.test", 80).is_err());
        assert!(p.resolve("REBIND.test.", 80).is_err());
        p.overrides
            .insert("ok.test".into(), vec!["1.1.1.1".parse().unwrap()]);
        assert_eq!(
            p.resolve("ok.test", 443).unwrap(),
            vec!["1.1.1.1:443".parse().unwrap()]
        );
    }

    #[test]
    fn trusted_hosts_match_host_or_subdomain_not_substring() {
        let t = vec!["hooks.zapier.com".to_string()];
        assert!(Policy::host_matches(&t, "hooks.zapier.com"));
        assert!(Policy::host_matches(&t, "eu.hooks.zapier.com."));
        assert!(!Policy::host_matches(&t, "evilhooks.zapier.com"));
        assert!(!Policy::host_matches(&t, "hooks.zapier.com.evil.com"));
    }
}
