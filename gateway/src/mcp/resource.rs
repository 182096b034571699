//! `/mcp` as an OAuth 2.0 protected resource (MCP authorization spec): its
//! Protected Resource Metadata (RFC 9728) at
//! `/.well-known/oauth-protected-resource` and at the path-suffixed form of the
//! resource, and the `WWW-Authenticate` challenge of `/mcp`'s 401s that points
//! a client knowing only the URL at that metadata.
//!
//! The resource identifier is the tenant's `spec.mcp.resource` (by default
//! `https://<exposure.host>/mcp`). Without one the gateway does not know its
//! external URL and builds it from the request: the scheme from the first
//! `X-Forwarded-Proto` value when it is `http` or `https` (else `http`), the
//! authority from the first `X-Forwarded-Host` value, else `Host`, taken only
//! when it is a host name or IP address with an optional port. Such answers
//! vary with those headers and say so (`Vary`), so a shared cache does not
//! serve one client's URL to another.

use std::net::Ipv6Addr;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tenantgate_crds::config::McpResourceConfig;

use crate::auth::AuthError;
use crate::error::AppError;
use crate::state::AppState;

/// The well-known path of Protected Resource Metadata (RFC 9728 3).
pub const METADATA_PATH: &str = "/.well-known/oauth-protected-resource";
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The metadata routes (no authentication: the metadata is public).
pub fn router() -> Router<AppState> {
    Router::new()
        .route(METADATA_PATH, get(root).options(preflight))
        .route("/.well-known/oauth-protected-resource/{*path}", get(suffixed).options(preflight))
}

/// Browser clients fetch the metadata cross-origin, with `MCP-Protocol-Version`: allow that.
async fn preflight() -> Response {
    (
        StatusCode::NO_CONTENT,
        [
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
            (header::ACCESS_CONTROL_ALLOW_METHODS, "GET"),
            (header::ACCESS_CONTROL_ALLOW_HEADERS, "mcp-protocol-version"),
        ],
    )
        .into_response()
}

async fn root(State(state): State<AppState>, headers: HeaderMap, uri: Uri) -> Response {
    metadata(&state, &headers, &uri, None)
}

async fn suffixed(State(state): State<AppState>, Path(path): Path<String>, headers: HeaderMap, uri: Uri) -> Response {
    metadata(&state, &headers, &uri, Some(&path))
}

/// The resource identifier as a request sees it.
struct Resource {
    id: String,
    /// Built from the request's headers, not configured.
    derived: bool,
}

fn resource(config: &McpResourceConfig, headers: &HeaderMap, uri: &Uri) -> Option<Resource> {
    match &config.resource {
        Some(id) => Some(Resource { id: id.clone(), derived: false }),
        None => request_origin(headers, uri).map(|origin| Resource { id: format!("{origin}/mcp"), derived: true }),
    }
}

fn metadata(state: &AppState, headers: &HeaderMap, uri: &Uri, suffix: Option<&str>) -> Response {
    let runtime = state.runtime();
    let config = &runtime.config;
    let Some(resource) = resource(&config.auth.mcp, headers, uri) else {
        return AppError::bad_request(
            None,
            "the request's Host is not a valid host[:port], so this gateway cannot name its MCP resource",
        )
        .into_response();
    };
    // The path-suffixed form answers for `/mcp` and for the configured resource's own path
    // (a proxy may publish the gateway under a prefix and pass the path on unchanged).
    if let Some(suffix) = suffix
        && suffix != "mcp"
        && url::Url::parse(&resource.id).ok().is_none_or(|u| u.path().trim_start_matches('/') != suffix)
    {
        return AppError::NotFound(format!("no protected resource at /{suffix}: the MCP resource is {}", resource.id))
            .into_response();
    }
    let mut body = serde_json::json!({
        "resource": resource.id,
        // Without JWT settings there is no authorization server to name: clients use API keys.
        "authorization_servers": config.auth.jwt.as_ref().map(|j| vec![j.issuer.as_str()]).unwrap_or_default(),
        "bearer_methods_supported": ["header"],
        "resource_name": config.tenant.display_name,
    });
    if !config.auth.mcp.scopes.is_empty() {
        body["scopes_supported"] = serde_json::json!(config.auth.mcp.scopes);
    }
    let mut response =
        ([(header::CONTENT_TYPE, "application/json"), (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*")], body.to_string())
            .into_response();
    if resource.derived {
        response
            .headers_mut()
            .insert(header::VARY, HeaderValue::from_static("host, x-forwarded-host, x-forwarded-proto"));
    }
    response
}

/// Where the metadata of `resource` is (RFC 9728 3.1): the well-known path
/// between its authority and its path.
pub fn metadata_url(resource: &str) -> Option<String> {
    let url = url::Url::parse(resource).ok()?;
    let path = if url.path() == "/" { "" } else { url.path() };
    Some(format!("{}{METADATA_PATH}{path}", url.origin().ascii_serialization()))
}

/// The `WWW-Authenticate` value of a 401 from `/mcp`: `Bearer
/// resource_metadata="<url>"`, the scopes to ask for when there are any, and
/// `error="invalid_token"` when a token was presented but refused. When no
/// metadata URL can be named (an unusable `Host`), the plain challenge.
pub fn challenge(config: &McpResourceConfig, headers: &HeaderMap, uri: &Uri, error: &AuthError) -> HeaderValue {
    let Some(url) = resource(config, headers, uri).and_then(|r| metadata_url(&r.id)) else {
        return error.www_authenticate();
    };
    let mut value = format!(r#"Bearer resource_metadata="{url}""#);
    if !config.scopes.is_empty() {
        value.push_str(&format!(r#", scope="{}""#, config.scopes.join(" ")));
    }
    if *error != AuthError::Missing {
        // Messages name what is wrong with the token, never the token itself.
        let description = error.to_string().replace(['"', '\\'], "'");
        value.push_str(&format!(r#", error="invalid_token", error_description="{description}""#));
    }
    HeaderValue::from_str(&value).unwrap_or_else(|_| error.www_authenticate())
}

/// `scheme://authority` of the gateway as the request names it (see the module docs).
pub fn request_origin(headers: &HeaderMap, uri: &Uri) -> Option<String> {
    let scheme = match first_value(headers, &X_FORWARDED_PROTO) {
        Some(p) if p.eq_ignore_ascii_case("https") => "https",
        _ => "http",
    };
    let authority = first_value(headers, &X_FORWARDED_HOST)
        .filter(|a| is_authority(a))
        .or_else(|| headers.get(header::HOST).and_then(|v| v.to_str().ok()).filter(|a| is_authority(a)))
        .or_else(|| uri.authority().map(|a| a.as_str()).filter(|a| is_authority(a)))?;
    Some(format!("{scheme}://{}", authority.to_ascii_lowercase()))
}

/// The first of a header's comma-separated values (proxies append theirs).
fn first_value<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    let value = headers.get(name)?.to_str().ok()?;
    value.split(',').next().map(str::trim).filter(|v| !v.is_empty())
}

/// `host[:port]`: a DNS name of letters, digits, `-` and `.`, or a bracketed
/// IPv6 address, then an optional port of up to five digits. No user info,
/// path, quotes or spaces can pass, so the URL built from it is well-formed.
fn is_authority(authority: &str) -> bool {
    let (host, port) = match authority.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((ip, after)) if ip.parse::<Ipv6Addr>().is_ok() => match after {
                "" => return true,
                _ => ("v6", after.strip_prefix(':')),
            },
            _ => return false,
        },
        None => match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    let host_ok = host == "v6"
        || (!host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            }));
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.parse::<u16>().is_ok());
    host_ok && port_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(*name, HeaderValue::from_static(value));
        }
        h
    }

    fn uri() -> Uri {
        Uri::from_static("/mcp")
    }

    #[test]
    fn the_metadata_url_sits_between_authority_and_path() {
        assert_eq!(
            metadata_url("https://gw.example/mcp").as_deref(),
            Some("https://gw.example/.well-known/oauth-protected-resource/mcp")
        );
        assert_eq!(
            metadata_url("http://gw.example:8080/t/acme/mcp").as_deref(),
            Some("http://gw.example:8080/.well-known/oauth-protected-resource/t/acme/mcp")
        );
        assert_eq!(
            metadata_url("https://gw.example").as_deref(),
            Some("https://gw.example/.well-known/oauth-protected-resource")
        );
        assert_eq!(metadata_url("not a url"), None);
    }

    #[test]
    fn the_origin_comes_from_forwarded_headers_only_when_they_are_sane() {
        let origin = |pairs: &[(&'static str, &'static str)]| request_origin(&headers(pairs), &uri());
        assert_eq!(origin(&[("host", "gw.local:8080")]).as_deref(), Some("http://gw.local:8080"));
        assert_eq!(
            origin(&[("host", "10.0.0.1:8080"), ("x-forwarded-proto", "HTTPS"), ("x-forwarded-host", "GW.example")])
                .as_deref(),
            Some("https://gw.example")
        );
        // Proxies append: the first value is the client-facing one.
        assert_eq!(
            origin(&[("host", "a"), ("x-forwarded-proto", "https, http"), ("x-forwarded-host", "b.example, c")])
                .as_deref(),
            Some("https://b.example")
        );
        // Other schemes, and hosts with user info, paths, quotes or spaces are not taken.
        assert_eq!(origin(&[("host", "gw"), ("x-forwarded-proto", "javascript")]).as_deref(), Some("http://gw"));
        for bad in ["evil@gw", "gw/x", "gw\"x", "gw x", "gw:99999", "gw:", "-gw", "[::1", "[zz]:1", ""] {
            let h = HeaderValue::from_str(bad).expect("header value");
            let mut map = headers(&[("host", "gw.local")]);
            map.insert(X_FORWARDED_HOST, h);
            assert_eq!(request_origin(&map, &uri()).as_deref(), Some("http://gw.local"), "{bad:?}");
        }
        assert_eq!(origin(&[("host", "[::1]:8080")]).as_deref(), Some("http://[::1]:8080"));
        assert_eq!(origin(&[("host", "bad host")]), None);
        assert_eq!(
            request_origin(&HeaderMap::new(), &Uri::from_static("http://h2.example:81/mcp")).as_deref(),
            Some("http://h2.example:81")
        );
    }

    #[test]
    fn the_challenge_names_the_metadata_scopes_and_the_token_problem() {
        let configured = McpResourceConfig {
            resource: Some("https://gw.example/mcp".into()),
            scopes: vec!["mcp:tools".into(), "openid".into()],
        };
        let h = headers(&[("host", "ignored.example")]);
        assert_eq!(
            challenge(&configured, &h, &uri(), &AuthError::Missing),
            r#"Bearer resource_metadata="https://gw.example/.well-known/oauth-protected-resource/mcp", scope="mcp:tools openid""#
        );
        let wrong = challenge(&configured, &h, &uri(), &AuthError::WrongResource("https://gw.example/mcp".into()));
        let wrong = wrong.to_str().expect("ASCII");
        assert!(wrong.ends_with(r#"error="invalid_token", error_description="invalid token: its audience (aud) does not include this MCP server's resource https://gw.example/mcp; ask the authorization server for a token for it (resource parameter, RFC 8707)""#), "{wrong}");
        let derived = challenge(&McpResourceConfig::default(), &h, &uri(), &AuthError::Expired);
        assert_eq!(
            derived,
            r#"Bearer resource_metadata="http://ignored.example/.well-known/oauth-protected-resource/mcp", error="invalid_token", error_description="invalid token: expired""#
        );
        // No usable Host: the plain challenge.
        let plain = challenge(&McpResourceConfig::default(), &headers(&[("host", "a b")]), &uri(), &AuthError::Missing);
        assert_eq!(plain, AuthError::Missing.www_authenticate());
    }
}
