//! Egress policies: named allow-lists of host patterns, plus the addresses an admin allows even
//! though they are private or loopback. `none` (deny everything, the default) and `open` (any
//! host at a public address) are built in; every other policy comes from the settings. No host
//! list ships in the code.
//!
//! A host pattern is `example.com` (that host), `*.example.org` (its subdomains, not itself),
//! optionally with a port: `example.com:8443`, or `example.com:*` for any port. Without a port
//! it allows 80 and 443. IPv6 literals go in brackets: `[2001:db8::1]:443`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use crate::settings::EgressPolicySettings;
use crate::settings::IpRange;

/// The built-in policy that allows nothing; sandboxes get it unless something else is chosen.
pub const NONE: &str = "none";
/// The built-in policy that allows any host, at public addresses only.
pub const OPEN: &str = "open";

/// The longest host pattern accepted (a DNS name is at most 253 characters).
const MAX_PATTERN: usize = 300;

/// Which ports a pattern allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ports {
    /// 80 and 443: what a pattern without a port means.
    Web,
    /// Exactly this one.
    One(u16),
    /// Any port (`:*`).
    Any,
}

impl Ports {
    fn allows(self, port: u16) -> bool {
        match self {
            Ports::Web => port == 80 || port == 443,
            Ports::One(p) => p == port,
            Ports::Any => true,
        }
    }
}

/// One `host[:port]` pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    /// Lower case, without a trailing dot; for a wildcard, the suffix after `*.`.
    host: String,
    wildcard: bool,
    ports: Ports,
}

impl HostPattern {
    /// Parses one pattern; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<HostPattern, String> {
        let bad = |why: &str| format!("host pattern {text:?}: {why}");
        if text.is_empty() || text.len() > MAX_PATTERN {
            return Err(bad("must be 1 to 300 characters"));
        }
        let (host, port) = split_host_port(text).map_err(|why| bad(&why))?;
        let ports = match port {
            None => Ports::Web,
            Some("*") => Ports::Any,
            Some(p) => match p.parse::<u16>() {
                Ok(p) if p > 0 => Ports::One(p),
                _ => return Err(bad("the port must be 1 to 65535 or *")),
            },
        };
        let (wildcard, host) = match host.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, host),
        };
        if host == "*" || (!wildcard && host.contains('*')) || host.contains('*') {
            return Err(bad(
                "`*` is allowed only as a leading `*.` (subdomains); for any host use the \
                 built-in `open` policy",
            ));
        }
        let host =
            normalize_host(host).ok_or_else(|| bad("not a valid host name or IP address"))?;
        if wildcard && host.parse::<IpAddr>().is_ok() {
            return Err(bad("`*.` needs a domain name, not an IP address"));
        }
        Ok(HostPattern {
            host,
            wildcard,
            ports,
        })
    }

    /// Whether this pattern allows `host` (already normalized) on `port`.
    fn allows(&self, host: &str, port: u16) -> bool {
        if !self.ports.allows(port) {
            return false;
        }
        if self.wildcard {
            host.len() > self.host.len()
                && host.ends_with(&self.host)
                && host.as_bytes()[host.len() - self.host.len() - 1] == b'.'
        } else {
            host == self.host
        }
    }
}

/// `host`, `host:port`, `[v6]`, `[v6]:port`; a bare IPv6 address (several colons) has no port.
pub(super) fn split_host_port(text: &str) -> Result<(&str, Option<&str>), String> {
    if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| "an unclosed `[`".to_string())?;
        return match after {
            "" => Ok((host, None)),
            _ => match after.strip_prefix(':') {
                Some(port) => Ok((host, Some(port))),
                None => Err("unexpected text after `]`".into()),
            },
        };
    }
    match text.matches(':').count() {
        0 => Ok((text, None)),
        1 => {
            let (h, p) = text.split_once(':').unwrap_or((text, ""));
            Ok((h, Some(p)))
        }
        _ => Ok((text, None)),
    }
}

/// Lower case, no trailing dot, only characters a host name or IP literal has; `None` when the
/// text is not one. IP literals come out in their canonical form.
pub(super) fn normalize_host(host: &str) -> Option<String> {
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Some(ip.to_string());
    }
    let ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    ok.then_some(host)
}

/// One named policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Its name (`none`, `open`, or a settings key).
    pub name: String,
    /// Any host (`open`); the patterns are then unused.
    any_host: bool,
    hosts: Vec<HostPattern>,
    /// Addresses allowed although they are not public.
    allow_addresses: Vec<IpRange>,
}

impl Policy {
    /// The built-in `none`: nothing is allowed.
    pub fn none() -> Policy {
        Policy {
            name: NONE.into(),
            any_host: false,
            hosts: Vec::new(),
            allow_addresses: Vec::new(),
        }
    }

    /// The built-in `open`: any host at a public address.
    pub fn open() -> Policy {
        Policy {
            name: OPEN.into(),
            any_host: true,
            ..Policy::none()
        }
    }

    /// A policy from its settings; the error names the policy and the bad entry.
    pub fn parse(name: &str, settings: &EgressPolicySettings) -> Result<Policy, String> {
        check_name(name)?;
        if name == NONE || name == OPEN {
            return Err(format!(
                "egress policy `{name}` is built in and cannot be redefined; pick another name"
            ));
        }
        let hosts = settings
            .hosts
            .iter()
            .map(|h| HostPattern::parse(h.trim()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("egress policy `{name}`: {e}"))?;
        let allow_addresses = settings
            .allow_addresses
            .iter()
            .map(|a| IpRange::parse(a.trim()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("egress policy `{name}`: allow_addresses: {e}"))?;
        Ok(Policy {
            name: name.to_string(),
            any_host: false,
            hosts,
            allow_addresses,
        })
    }

    /// Whether nothing at all is allowed (no socket is needed for the sandbox).
    pub fn denies_all(&self) -> bool {
        !self.any_host && self.hosts.is_empty()
    }

    /// Whether the host part of a request (`host` as the sandbox wrote it) may be reached on
    /// `port`, before any name is resolved.
    pub fn allows_host(&self, host: &str, port: u16) -> bool {
        if self.any_host {
            return true;
        }
        match normalize_host(host) {
            Some(h) => self.hosts.iter().any(|p| p.allows(&h, port)),
            None => false,
        }
    }

    /// Whether an admin listed `ip` (or a network holding it) for this policy.
    pub fn allows_address(&self, ip: IpAddr) -> bool {
        self.allow_addresses.iter().any(|n| n.contains(ip))
    }
}

/// A policy name: 1 to 40 of `a-z 0-9 - _`, starting with a letter or digit.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 40
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(format!(
            "egress policy name {name:?}: 1 to 40 of a-z, 0-9, - and _, starting with a letter or digit"
        ))
    }
}

/// Every policy this server knows: the built-ins and the configured ones.
#[derive(Debug, Clone)]
pub struct Policies {
    by_name: BTreeMap<String, std::sync::Arc<Policy>>,
    default: String,
}

impl Policies {
    /// The built-ins plus `configured`; `default` must name one of them.
    pub fn new(
        configured: &BTreeMap<String, EgressPolicySettings>,
        default: &str,
    ) -> Result<Policies, String> {
        let mut by_name = BTreeMap::new();
        by_name.insert(NONE.to_string(), std::sync::Arc::new(Policy::none()));
        by_name.insert(OPEN.to_string(), std::sync::Arc::new(Policy::open()));
        for (name, settings) in configured {
            by_name.insert(
                name.clone(),
                std::sync::Arc::new(Policy::parse(name, settings)?),
            );
        }
        if !by_name.contains_key(default) {
            return Err(format!(
                "DELEGATE_EGRESS_DEFAULT: {default:?} is not a policy (known: {})",
                by_name.keys().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
        Ok(Policies {
            by_name,
            default: default.to_string(),
        })
    }

    /// The policy called `name`.
    pub fn get(&self, name: &str) -> Option<std::sync::Arc<Policy>> {
        self.by_name.get(name).cloned()
    }

    /// The server's default policy (`DELEGATE_EGRESS_DEFAULT`).
    pub fn default_name(&self) -> &str {
        &self.default
    }

    /// Every policy name, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}`", self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn policy(hosts: &[&str], addresses: &[&str]) -> Policy {
        Policy::parse(
            "team",
            &EgressPolicySettings {
                hosts: hosts.iter().map(ToString::to_string).collect(),
                allow_addresses: addresses.iter().map(ToString::to_string).collect(),
            },
        )
        .unwrap()
    }

    #[rstest]
    #[case("example.com", "example.com", 443, true)]
    #[case("example.com", "example.com", 80, true)]
    #[case("example.com", "EXAMPLE.com.", 443, true)]
    #[case("example.com", "example.com", 8443, false)]
    #[case("example.com", "www.example.com", 443, false)]
    #[case("example.com", "badexample.com", 443, false)]
    #[case("*.example.org", "pkg.example.org", 443, true)]
    #[case("*.example.org", "a.b.example.org", 80, true)]
    #[case("*.example.org", "example.org", 443, false)]
    #[case("*.example.org", "evilexample.org", 443, false)]
    #[case("*.example.org", "example.org.evil.net", 443, false)]
    #[case("example.com:443", "example.com", 443, true)]
    #[case("example.com:443", "example.com", 80, false)]
    #[case("example.com:*", "example.com", 9000, true)]
    #[case("127.0.0.1:8080", "127.0.0.1", 8080, true)]
    #[case("127.0.0.1:8080", "127.0.0.1", 8081, false)]
    #[case("[::1]:8080", "::1", 8080, true)]
    #[case("[::1]:8080", "0:0::1", 8080, true)]
    fn host_patterns(
        #[case] pattern: &str,
        #[case] host: &str,
        #[case] port: u16,
        #[case] allowed: bool,
    ) {
        assert_eq!(
            policy(&[pattern], &[]).allows_host(host, port),
            allowed,
            "{pattern} vs {host}:{port}"
        );
    }

    #[rstest]
    #[case("*", "built-in `open`")]
    #[case("ex*ample.com", "leading `*.`")]
    #[case("*.*.example.com", "leading `*.`")]
    #[case("example.com:0", "port must be")]
    #[case("example.com:99999", "port must be")]
    #[case("exa mple.com", "not a valid host")]
    #[case("-bad.example", "not a valid host")]
    #[case("", "1 to 300")]
    #[case("[::1", "unclosed")]
    #[case("*.10.0.0.1", "domain name")]
    fn bad_patterns_say_why(#[case] pattern: &str, #[case] why: &str) {
        let err = HostPattern::parse(pattern).unwrap_err();
        assert!(err.contains(why), "{pattern}: {err}");
    }

    #[test]
    fn built_ins() {
        let none = Policy::none();
        assert!(none.denies_all());
        assert!(!none.allows_host("example.com", 443));
        let open = Policy::open();
        assert!(!open.denies_all());
        assert!(open.allows_host("anything.example", 1234));
        assert!(!open.allows_address("127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn allow_addresses_are_networks() {
        let p = policy(&["localhost:*"], &["127.0.0.1", "10.8.0.0/16"]);
        assert!(p.allows_address("127.0.0.1".parse().unwrap()));
        assert!(p.allows_address("10.8.3.4".parse().unwrap()));
        assert!(!p.allows_address("10.9.0.1".parse().unwrap()));
        assert!(!p.allows_address("169.254.169.254".parse().unwrap()));
    }

    #[test]
    fn the_registry_checks_names_and_the_default() {
        let mut configured = BTreeMap::new();
        configured.insert(
            "npm".to_string(),
            EgressPolicySettings {
                hosts: vec!["npm.internal.example".into()],
                allow_addresses: vec![],
            },
        );
        let all = Policies::new(&configured, "npm").unwrap();
        assert_eq!(all.names().collect::<Vec<_>>(), ["none", "npm", "open"]);
        assert_eq!(all.default_name(), "npm");
        let err = Policies::new(&configured, "pypi").unwrap_err();
        assert!(err.contains("not a policy"), "{err}");
        configured.insert("open".into(), EgressPolicySettings::default());
        let err = Policies::new(&configured, "none").unwrap_err();
        assert!(err.contains("built in"), "{err}");
        let mut bad = BTreeMap::new();
        bad.insert("Bad Name".to_string(), EgressPolicySettings::default());
        assert!(Policies::new(&bad, "none").unwrap_err().contains("a-z"));
        let mut bad = BTreeMap::new();
        bad.insert(
            "x".to_string(),
            EgressPolicySettings {
                hosts: vec![],
                allow_addresses: vec!["10.0.0.1/8".into()],
            },
        );
        let err = Policies::new(&bad, "none").unwrap_err();
        assert!(err.contains("`x`: allow_addresses"), "{err}");
    }
}
