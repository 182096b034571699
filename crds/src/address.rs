//! Which upstream addresses are local: loopback, link-local (cloud metadata
//! endpoints live there) or unspecified. Upstreams there are refused unless a
//! tenant allows them, so a tenant cannot point its gateway at the node.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// What kind of host a URL names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostClass {
    /// A name to resolve, or a routable address.
    Remote,
    /// A local address, with the kind ("loopback", "link-local", ...).
    Local(&'static str),
}

/// Why a URL cannot name an upstream.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// It does not parse.
    #[error("{url:?} is not a valid URL: {source}")]
    Invalid {
        /// The URL.
        url: String,
        /// The parser's complaint.
        source: url::ParseError,
    },
    /// Another scheme than http(s).
    #[error("{0:?} must use http or https")]
    Scheme(String),
    /// A user name or password in the URL.
    #[error("{0:?} must not carry credentials: reference a Secret instead")]
    Credentials(String),
    /// No host.
    #[error("{0:?} has no host")]
    NoHost(String),
}

/// Classifies the host of an http(s) URL without resolving it.
pub fn classify_url(url: &str) -> Result<HostClass, UrlError> {
    let parsed = url::Url::parse(url).map_err(|source| UrlError::Invalid { url: url.into(), source })?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(UrlError::Scheme(url.into()));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(UrlError::Credentials(url.into()));
    }
    Ok(match parsed.host() {
        None => return Err(UrlError::NoHost(url.into())),
        Some(url::Host::Ipv4(ip)) => classify_ip(IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => classify_ip(IpAddr::V6(ip)),
        Some(url::Host::Domain(name)) => classify_name(name),
    })
}

/// Classifies a host name that has not been resolved yet.
pub fn classify_name(name: &str) -> HostClass {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    if name == "localhost" || name.ends_with(".localhost") {
        HostClass::Local("loopback")
    } else if name == "metadata.google.internal" || name == "metadata" {
        HostClass::Local("cloud metadata")
    } else {
        HostClass::Remote
    }
}

/// Classifies an address, e.g. one a host name resolved to.
pub fn classify_ip(ip: IpAddr) -> HostClass {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => classify_v4(v4),
            None => classify_v6(v6),
        },
    }
}

fn classify_v4(ip: Ipv4Addr) -> HostClass {
    if ip.is_loopback() {
        HostClass::Local("loopback")
    } else if ip.is_link_local() {
        HostClass::Local("link-local")
    } else if ip.is_unspecified() || ip.is_broadcast() {
        HostClass::Local("unspecified")
    } else {
        HostClass::Remote
    }
}

fn classify_v6(ip: Ipv6Addr) -> HostClass {
    if ip.is_loopback() {
        HostClass::Local("loopback")
    } else if ip.is_unicast_link_local() {
        HostClass::Local("link-local")
    } else if ip.is_unspecified() {
        HostClass::Local("unspecified")
    } else if ip == Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254) {
        // AWS's IPv6 instance metadata endpoint.
        HostClass::Local("cloud metadata")
    } else {
        HostClass::Remote
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_hosts_are_recognised() {
        for url in [
            "http://127.0.0.1:8080/v1",
            "http://localhost/v1",
            "http://api.localhost/v1",
            "http://169.254.169.254/latest/meta-data",
            "http://[::1]/",
            "http://[fe80::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://0.0.0.0/",
            "http://metadata.google.internal/computeMetadata/v1",
        ] {
            assert!(matches!(classify_url(url), Ok(HostClass::Local(_))), "{url} should be local");
        }
    }

    #[test]
    fn remote_hosts_pass() {
        for url in [
            "https://api.openai.com/v1",
            "http://10.0.0.5:8000/v1",
            "http://vllm.models.svc:8000/v1",
            "https://[2001:db8::1]/",
        ] {
            assert_eq!(classify_url(url), Ok(HostClass::Remote), "{url}");
        }
    }

    #[test]
    fn bad_urls_name_the_problem() {
        assert!(classify_url("ftp://example.com").unwrap_err().to_string().contains("http or https"));
        assert!(classify_url("https://user:pw@example.com").unwrap_err().to_string().contains("credentials"));
        assert!(classify_url("not a url").unwrap_err().to_string().contains("not a valid URL"));
    }
}
