//! A tiny HTTP server that records the source address of every request, and a client that
//! connects from inside a namespace. Both bind their sockets on a thread that has entered the
//! namespace; the sockets stay in that namespace afterwards.
//!
//! The server answers every `GET` with `200 OK` and the client's address as the body (one line),
//! so a client also learns which source address the server saw.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::netns::{in_netns, netns_path};

/// How long the server waits for a client to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the accept loop looks at its stop flag.
const POLL_INTERVAL_MS: libc::c_int = 50;
/// Default timeout of [`http_get`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// One request as the server saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The peer address of the connection: the source address the packets arrived with.
    pub source: SocketAddr,
    /// The request target (`/`, `/path?x`).
    pub path: String,
}

#[derive(Default)]
struct Shared {
    requests: Mutex<Vec<Request>>,
    stop: AtomicBool,
}

/// An HTTP server listening inside a network namespace, recording every request's source.
/// Dropping it (or [`HttpServer::stop`]) stops it.
pub struct HttpServer {
    netns: String,
    addr: SocketAddr,
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for HttpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpServer")
            .field("netns", &self.netns)
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl HttpServer {
    /// Starts a server in namespace `netns` listening on `bind` (for example `0.0.0.0:80`).
    /// Returns once the socket is listening.
    pub fn start(netns: &str, bind: SocketAddr) -> Result<HttpServer> {
        let file = std::fs::File::open(netns_path(netns))
            .map_err(|e| Error::io(format!("open network namespace {netns}"), e))?;
        let shared = Arc::new(Shared::default());
        let (ready_tx, ready_rx) = mpsc::channel::<Result<SocketAddr>>();
        let thread_shared = Arc::clone(&shared);
        let ns = netns.to_string();
        let thread = std::thread::Builder::new()
            .name(format!("http {netns}"))
            .spawn(move || {
                // SAFETY: `file` is an open nsfs descriptor; setns(CLONE_NEWNET) only moves this
                // thread, which never leaves the namespace again and ends with the server.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    let _ = ready_tx.send(Err(Error::io(
                        format!("setns into network namespace {ns}"),
                        std::io::Error::last_os_error(),
                    )));
                    return;
                }
                drop(file);
                let listener = match TcpListener::bind(bind) {
                    Ok(listener) => listener,
                    Err(e) => {
                        let _ = ready_tx.send(Err(Error::io(
                            format!("bind an HTTP server to {bind} in namespace {ns}"),
                            e,
                        )));
                        return;
                    }
                };
                let local = listener.local_addr().unwrap_or(bind);
                let _ = ready_tx.send(Ok(local));
                accept_loop(&listener, &thread_shared);
            })
            .map_err(|e| Error::io(format!("spawn the HTTP server thread for {netns}"), e))?;
        match ready_rx.recv() {
            Ok(Ok(addr)) => Ok(HttpServer {
                netns: netns.to_string(),
                addr,
                shared,
                thread: Mutex::new(Some(thread)),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(Error::Topology(format!(
                    "the HTTP server thread for {netns} ended before listening"
                )))
            }
        }
    }

    /// The namespace the server listens in.
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// The address it listens on (as bound: `0.0.0.0:80` listens on every address).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The source address of every request so far, oldest first.
    pub fn seen(&self) -> Vec<IpAddr> {
        self.requests().iter().map(|r| r.source.ip()).collect()
    }

    /// Every request so far, oldest first.
    pub fn requests(&self) -> Vec<Request> {
        lock(&self.shared.requests).clone()
    }

    /// Forgets the requests seen so far.
    pub fn clear(&self) {
        lock(&self.shared.requests).clear();
    }

    /// Stops accepting and waits for the server thread (idempotent; also done on drop).
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let thread = lock(&self.thread).take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    let mut handlers: Vec<JoinHandle<()>> = Vec::new();
    while !shared.stop.load(Ordering::SeqCst) {
        let mut pfd = libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let ready = unsafe { libc::poll(&mut pfd, 1, POLL_INTERVAL_MS) };
        if ready <= 0 {
            continue;
        }
        let Ok((stream, peer)) = listener.accept() else {
            continue;
        };
        let conn_shared = Arc::clone(shared);
        // One thread per connection, so a client that never sends its request delays nobody.
        if let Ok(handle) = std::thread::Builder::new()
            .name("http conn".into())
            .spawn(move || serve_one(stream, peer, &conn_shared))
        {
            handlers.push(handle);
        }
        handlers.retain(|h| !h.is_finished());
    }
    for handle in handlers {
        let _ = handle.join();
    }
}

fn serve_one(stream: TcpStream, peer: SocketAddr, shared: &Shared) {
    let _ = stream.set_read_timeout(Some(REQUEST_TIMEOUT));
    let _ = stream.set_write_timeout(Some(REQUEST_TIMEOUT));
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
        return;
    }
    // Skip the headers up to the empty line.
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) if line.trim_end().is_empty() => break,
            Ok(_) => {}
        }
    }
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or("");
    let path = parts.next().unwrap_or("/").to_string();
    let mut stream = stream;
    if method != "GET" {
        let _ = stream.write_all(
            b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
        return;
    }
    // Record before answering: once a client has its answer, `seen()` includes the request.
    lock(&shared.requests).push(Request { source: peer, path });
    let body = format!("{}\n", peer.ip());
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes());
    let _ = stream.shutdown(Shutdown::Write);
}

/// A response received by [`http_get`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    pub body: String,
}

impl HttpResponse {
    /// The source address the testbed's server saw (its body), if the body is one.
    pub fn seen_source(&self) -> Option<IpAddr> {
        self.body.trim().parse().ok()
    }
}

/// Splits `http://host[:port][/path]`, `host[:port][/path]` or `[v6]:port/path` into a socket
/// address and a path. Only IP literals are accepted: namespaces have no resolver.
pub fn parse_target(target: &str) -> Result<(SocketAddr, String)> {
    let bad = |why: &str| Error::Topology(format!("bad HTTP target `{target}`: {why}"));
    let rest = target.strip_prefix("http://").unwrap_or(target);
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (rest, "/".to_string()),
    };
    if let Ok(ip) = authority.parse::<IpAddr>() {
        return Ok((SocketAddr::new(ip, 80), path));
    }
    if let Ok(addr) = authority.parse::<SocketAddr>() {
        return Ok((addr, path));
    }
    if let Some(v6) = authority
        .strip_prefix('[')
        .and_then(|a| a.strip_suffix(']'))
        && let Ok(ip) = v6.parse::<IpAddr>()
    {
        return Ok((SocketAddr::new(ip, 80), path));
    }
    Err(bad(
        "expected an IP address, optionally with :port and /path",
    ))
}

/// `GET`s `target` (see [`parse_target`]) from inside namespace `netns`, with `timeout` for the
/// connection and again for each read and write. A refused or timed-out connection is an
/// [`Error::Io`] whose [`Error::io_kind`] tells which.
pub fn http_get(netns: &str, target: &str, timeout: Duration) -> Result<HttpResponse> {
    let (addr, path) = parse_target(target)?;
    let io_err = |what: &str, e: std::io::Error| {
        Error::io(
            format!("HTTP GET {target}: {what} from namespace {netns}"),
            e,
        )
    };
    let raw = in_netns(netns, || -> Result<Vec<u8>> {
        let mut stream =
            TcpStream::connect_timeout(&addr, timeout).map_err(|e| io_err("connect", e))?;
        stream
            .set_read_timeout(Some(timeout))
            .and_then(|_| stream.set_write_timeout(Some(timeout)))
            .map_err(|e| io_err("set timeouts", e))?;
        let host = match addr {
            SocketAddr::V4(_) => addr.to_string(),
            SocketAddr::V6(v6) => format!("[{}]:{}", v6.ip(), v6.port()),
        };
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: kube-egress-testbed\r\nConnection: close\r\n\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .map_err(|e| io_err("send", e))?;
        let mut raw = Vec::new();
        stream
            .read_to_end(&mut raw)
            .map_err(|e| io_err("receive", e))?;
        Ok(raw)
    })??;
    parse_response(netns, target, &raw)
}

fn parse_response(netns: &str, target: &str, raw: &[u8]) -> Result<HttpResponse> {
    let fail = |reason: String| Error::Http {
        netns: netns.to_string(),
        target: target.to_string(),
        reason,
    };
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| fail(format!("incomplete response ({} bytes)", raw.len())))?;
    let status_line = head.lines().next().unwrap_or("");
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|_| status_line.starts_with("HTTP/"))
        .ok_or_else(|| fail(format!("bad status line `{status_line}`")))?;
    Ok(HttpResponse {
        status,
        body: body.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        let (addr, path) = parse_target("203.0.113.10").unwrap();
        assert_eq!(addr, "203.0.113.10:80".parse().unwrap());
        assert_eq!(path, "/");
        let (addr, path) = parse_target("http://10.128.0.10:8080/x?y=1").unwrap();
        assert_eq!(addr, "10.128.0.10:8080".parse().unwrap());
        assert_eq!(path, "/x?y=1");
        let (addr, _) = parse_target("http://[2001:db8::1]/").unwrap();
        assert_eq!(addr, "[2001:db8::1]:80".parse().unwrap());
        let (addr, _) = parse_target("[2001:db8::1]:81").unwrap();
        assert_eq!(addr, "[2001:db8::1]:81".parse().unwrap());
        assert!(parse_target("example.com").is_err());
        assert!(parse_target("http://10.0.0.1:x/").is_err());
    }

    #[test]
    fn responses_parse() {
        let r = parse_response("ns", "t", b"HTTP/1.1 200 OK\r\nA: b\r\n\r\n10.0.0.1\n").unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.seen_source(), Some("10.0.0.1".parse().unwrap()));
        assert!(parse_response("ns", "t", b"HTTP/1.1 200 OK\r\n").is_err());
        assert!(parse_response("ns", "t", b"SSH-2.0\r\n\r\n").is_err());
    }
}
