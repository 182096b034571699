//! `tenantgate-operator probe URL`: one plain HTTP GET, for the chart's
//! `helm test` pod, which runs the operator's own image (it has no shell and
//! no HTTP client besides this binary).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// Why the probe got no status.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// Not an `http://HOST[:PORT]/PATH` URL.
    #[error("not an http:// URL with a host: {0}")]
    Url(String),
    /// Resolving, connecting, writing or reading failed.
    #[error("{action}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The answer was not HTTP.
    #[error("not an HTTP answer: {0:?}")]
    Answer(String),
    /// The answer was not 200.
    #[error("HTTP {0}, not 200")]
    Status(u16),
}

/// GETs `url` until it answers 200, once a second for up to `attempts` tries (a Service's
/// endpoints reach kube-proxy a moment after its pods are ready); the last error otherwise.
pub fn until_ok(url: &str, attempts: usize, timeout: Duration) -> Result<(), ProbeError> {
    use backon::{BlockingRetryable, ConstantBuilder};
    let once = || match get(url, timeout)? {
        200 => Ok(()),
        status => Err(ProbeError::Status(status)),
    };
    once.retry(ConstantBuilder::default().with_delay(Duration::from_secs(1)).with_max_times(attempts.saturating_sub(1)))
        .sleep(std::thread::sleep)
        .notify(|e, _| eprintln!("{url}: {e}; trying again in 1 s"))
        .call()
}

fn io(action: &'static str) -> impl FnOnce(std::io::Error) -> ProbeError {
    move |source| ProbeError::Io { action, source }
}

/// GETs `url` over HTTP/1.0 and returns the status code; `timeout` bounds
/// the connect and each read and write.
pub fn get(url: &str, timeout: Duration) -> Result<u16, ProbeError> {
    let parsed = url::Url::parse(url).map_err(|_| ProbeError::Url(url.to_owned()))?;
    let host = parsed.host_str().filter(|_| parsed.scheme() == "http").ok_or_else(|| ProbeError::Url(url.into()))?;
    let port = parsed.port_or_known_default().unwrap_or(80);
    let started = Instant::now();
    let addrs: Vec<_> = (host, port).to_socket_addrs().map_err(io("resolving"))?.collect();
    let mut last = None;
    let mut stream = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout.saturating_sub(started.elapsed()).max(Duration::from_millis(1)))
        {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let mut stream = stream.ok_or_else(|| {
        io("connecting")(last.unwrap_or_else(|| std::io::Error::other(format!("{host} has no address"))))
    })?;
    stream.set_read_timeout(Some(timeout)).map_err(io("setting a timeout"))?;
    stream.set_write_timeout(Some(timeout)).map_err(io("setting a timeout"))?;
    let path = &url[parsed.origin().ascii_serialization().len()..];
    let path = if path.is_empty() { "/" } else { path };
    let request = format!("GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: tenantgate-probe\r\n\r\n");
    stream.write_all(request.as_bytes()).map_err(io("writing"))?;
    let mut head = [0u8; 64];
    let mut read = 0;
    while read < head.len() {
        match stream.read(&mut head[read..]).map_err(io("reading"))? {
            0 => break,
            n => read += n,
        }
    }
    let text = String::from_utf8_lossy(&head[..read]).into_owned();
    let status = text
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or(ProbeError::Answer(text.lines().next().unwrap_or_default().to_owned()))?;
    Ok(status)
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    fn serve_once(answer: &'static str) -> String {
        serve(vec![answer])
    }

    /// Answers one connection after another with `answers`, in order.
    fn serve(answers: Vec<&'static str>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        std::thread::spawn(move || {
            for answer in answers {
                let Ok((mut conn, _)) = listener.accept() else { return };
                // The whole request head (closing with unread bytes would reset the connection).
                let mut request = Vec::new();
                let mut buf = [0u8; 256];
                while !request.ends_with(b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let first = String::from_utf8_lossy(&request).lines().next().unwrap_or_default().to_owned();
                // Answer only the request the probe must send.
                let reply = if first == "GET /readyz HTTP/1.0" { answer } else { "HTTP/1.0 400 Bad\r\n\r\n" };
                let _ = conn.write_all(reply.as_bytes());
            }
        });
        format!("http://{addr}/readyz")
    }

    #[test]
    fn the_probe_tries_again_until_a_200_or_its_last_attempt() {
        let unready_then_ok = serve(vec!["HTTP/1.1 503 Service Unavailable\r\n\r\n", "HTTP/1.1 200 OK\r\n\r\n"]);
        until_ok(&unready_then_ok, 3, Duration::from_secs(5)).expect("the second try answers 200");
        let never = serve(vec!["HTTP/1.1 503 Service Unavailable\r\n\r\n"; 2]);
        assert!(matches!(until_ok(&never, 2, Duration::from_secs(5)), Err(ProbeError::Status(503))));
    }

    #[test]
    fn the_probe_reads_the_status_of_a_get() {
        let ok = serve_once("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
        assert_eq!(get(&ok, Duration::from_secs(5)).expect("answer"), 200);
        let unready = serve_once("HTTP/1.1 503 Service Unavailable\r\n\r\n");
        assert_eq!(get(&unready, Duration::from_secs(5)).expect("answer"), 503);
        let garbage = serve_once("SSH-2.0-nope\r\n");
        assert!(matches!(get(&garbage, Duration::from_secs(5)), Err(ProbeError::Answer(_))));
        assert!(matches!(get("https://example.com/", Duration::from_secs(1)), Err(ProbeError::Url(_))));
        let closed = TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
        assert!(matches!(
            get(&format!("http://{closed}/"), Duration::from_secs(1)),
            Err(ProbeError::Io { action: "connecting", .. })
        ));
    }
}
