//! The OVSDB JSON-RPC 1.0 connection (RFC 7047 §4) over TCP or a unix socket.
//!
//! One reader task and one writer task per connection. The reader frames the byte stream itself
//! (ovsdb-server sends JSON objects back to back, without delimiters), answers the server's `echo`
//! probes (otherwise the server's inactivity probe drops us after 5 s), routes replies to their
//! requests and `update`/`update2` notifications to the monitor that asked for them.
//!
//! Ordering: messages are handled in the order they arrive, and a notification is queued before
//! any reply that follows it is delivered. ovsdb-server sends a monitor's update for a transaction
//! before the transaction's reply, so once `transact` returns, the caller's monitor channel
//! already holds the changes it made.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{Value as Json, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::AbortHandle;

use super::ops::{Operation, OperationFailure, interpret_results};
use super::schema::Schema;
use super::value::DecodeError;
use super::{OpResult, TableUpdates, parse_table_updates};

/// Errors of the client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid OVSDB endpoint {0:?}: expected tcp:HOST:PORT or unix:PATH")]
    Endpoint(String),
    #[error("connecting to {endpoint}: {source}")]
    Connect {
        endpoint: String,
        source: std::io::Error,
    },
    #[error("the connection to the OVSDB server was closed")]
    Disconnected,
    #[error("{method} failed: {error}")]
    Rpc { method: String, error: String },
    #[error("transaction failed at {0}")]
    Transaction(OperationFailure),
    #[error("unexpected reply: {0}")]
    Decode(#[from] DecodeError),
    /// The local replica of a monitored database no longer follows the server.
    #[error("monitor out of step: {0}")]
    OutOfStep(String),
}

/// A server notification for a monitor (`update`, `update2`).
#[derive(Debug, Clone)]
pub struct Notification {
    pub method: String,
    /// The `<table-updates>` / `<table-updates2>` object.
    pub updates: Json,
}

type Reply = Result<Json, Json>;

struct Shared {
    out: mpsc::UnboundedSender<Vec<u8>>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Reply>>>,
    monitors: Mutex<HashMap<String, mpsc::UnboundedSender<Notification>>>,
    closed: watch::Sender<bool>,
}

struct Inner {
    shared: Arc<Shared>,
    next_id: AtomicU64,
    endpoint: String,
    tasks: [AbortHandle; 2],
}

impl Drop for Inner {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// A connection to an OVSDB server. Cheap to clone; the connection closes when the last clone is
/// dropped. It does not reconnect by itself: see [`crate::sync::NbMonitor`] for that.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

type Reader = Box<dyn AsyncRead + Unpin + Send>;
type Writer = Box<dyn AsyncWrite + Unpin + Send>;

async fn open(endpoint: &str) -> Result<(Reader, Writer), Error> {
    let connect_error = |source| Error::Connect {
        endpoint: endpoint.to_string(),
        source,
    };
    if let Some(address) = endpoint.strip_prefix("tcp:") {
        let (host, port) = address
            .rsplit_once(':')
            .filter(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
            .ok_or_else(|| Error::Endpoint(endpoint.to_string()))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let stream = tokio::net::TcpStream::connect((host, port.parse::<u16>().unwrap_or(0)))
            .await
            .map_err(connect_error)?;
        stream.set_nodelay(true).map_err(connect_error)?;
        let (r, w) = stream.into_split();
        Ok((Box::new(r), Box::new(w)))
    } else if let Some(path) = endpoint.strip_prefix("unix:").filter(|p| !p.is_empty()) {
        let stream = tokio::net::UnixStream::connect(path)
            .await
            .map_err(connect_error)?;
        let (r, w) = stream.into_split();
        Ok((Box::new(r), Box::new(w)))
    } else {
        Err(Error::Endpoint(endpoint.to_string()))
    }
}

impl Client {
    /// Connects to `tcp:HOST:PORT` or `unix:PATH`. Must be called within a tokio runtime.
    pub async fn connect(endpoint: &str) -> Result<Client, Error> {
        let (reader, writer) = open(endpoint).await?;
        let (out, out_rx) = mpsc::unbounded_channel();
        let (closed, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            out,
            pending: Mutex::new(HashMap::new()),
            monitors: Mutex::new(HashMap::new()),
            closed,
        });
        let read_task = tokio::spawn(read_loop(reader, shared.clone()));
        let write_task = tokio::spawn(write_loop(writer, out_rx, shared.clone()));
        Ok(Client {
            inner: Arc::new(Inner {
                shared,
                next_id: AtomicU64::new(1),
                endpoint: endpoint.to_string(),
                tasks: [read_task.abort_handle(), write_task.abort_handle()],
            }),
        })
    }

    pub fn endpoint(&self) -> &str {
        &self.inner.endpoint
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        *self.inner.shared.closed.borrow()
    }

    /// Resolves when the connection ends.
    pub async fn closed(&self) {
        let mut rx = self.inner.shared.closed.subscribe();
        let _ = rx.wait_for(|closed| *closed).await;
    }

    /// Sends a request and waits for its reply; a JSON-RPC error becomes [`Error::Rpc`].
    pub async fn request(&self, method: &str, params: Json) -> Result<Json, Error> {
        let rx = self.send_request(method, &params)?;
        match rx.await {
            Ok(Ok(result)) => Ok(result),
            Ok(Err(error)) => Err(Error::Rpc {
                method: method.to_string(),
                error: match &error {
                    Json::String(s) => s.clone(),
                    other => other.to_string(),
                },
            }),
            Err(_) => Err(Error::Disconnected),
        }
    }

    fn send_request(&self, method: &str, params: &Json) -> Result<oneshot::Receiver<Reply>, Error> {
        let shared = &self.inner.shared;
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        shared.pending.lock().expect("pending").insert(id, tx);
        // The reader marks the connection closed before failing pending requests; a request
        // registered after that must notice by itself.
        if self.is_closed() {
            shared.pending.lock().expect("pending").remove(&id);
            return Err(Error::Disconnected);
        }
        let message = json!({"method": method, "params": params, "id": id});
        let bytes = serde_json::to_vec(&message).expect("JSON serialisation");
        shared.out.send(bytes).map_err(|_| Error::Disconnected)?;
        Ok(rx)
    }

    pub async fn list_dbs(&self) -> Result<Vec<String>, Error> {
        let result = self.request("list_dbs", json!([])).await?;
        Ok(result
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Json::as_str)
            .map(str::to_string)
            .collect())
    }

    pub async fn get_schema(&self, db: &str) -> Result<Schema, Error> {
        let result = self.request("get_schema", json!([db])).await?;
        Ok(Schema::from_json(&result))
    }

    /// Sends `echo` and waits for the server to answer.
    pub async fn echo(&self) -> Result<(), Error> {
        self.request("echo", json!(["kube-egress"])).await.map(drop)
    }

    /// Runs a transaction. On failure, [`Error::Transaction`] names the operation that failed, or
    /// the commit when every operation succeeded but the commit did not.
    pub async fn transact(&self, db: &str, ops: &[Operation]) -> Result<Vec<OpResult>, Error> {
        let mut params = Vec::with_capacity(ops.len() + 1);
        params.push(json!(db));
        params.extend(ops.iter().map(Operation::to_json));
        let result = self.request("transact", Json::Array(params)).await?;
        interpret_results(ops, &result)?.map_err(Error::Transaction)
    }

    /// Starts a `monitor_cond` (ovsdb-server's conditional monitor, answered with `update2`
    /// notifications). Returns the initial contents and the channel of later updates; the channel
    /// ends when the connection does.
    pub async fn monitor_cond(
        &self,
        db: &str,
        monitor_id: &str,
        requests: Json,
    ) -> Result<(TableUpdates, mpsc::UnboundedReceiver<Notification>), Error> {
        let (tx, rx) = mpsc::unbounded_channel();
        let key = json!(monitor_id).to_string();
        self.inner
            .shared
            .monitors
            .lock()
            .expect("monitors")
            .insert(key.clone(), tx);
        let result = self
            .request("monitor_cond", json!([db, monitor_id, requests]))
            .await;
        let initial = match result {
            Ok(initial) => initial,
            Err(e) => {
                self.inner
                    .shared
                    .monitors
                    .lock()
                    .expect("monitors")
                    .remove(&key);
                return Err(e);
            }
        };
        Ok((parse_table_updates(&initial)?, rx))
    }
}

/// Finds where complete top-level JSON values end in a byte stream, keeping its state between
/// reads so that a large message arriving in many pieces is scanned once.
#[derive(Default)]
struct Framer {
    scanned: usize,
    depth: usize,
    in_string: bool,
    escaped: bool,
    start: Option<usize>,
}

impl Framer {
    /// The next complete value in `buf` as a range, advancing the scan.
    fn next(&mut self, buf: &[u8]) -> Option<std::ops::Range<usize>> {
        while self.scanned < buf.len() {
            let i = self.scanned;
            let b = buf[i];
            self.scanned += 1;
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                } else if b == b'\\' {
                    self.escaped = true;
                } else if b == b'"' {
                    self.in_string = false;
                }
                continue;
            }
            match b {
                b'"' => self.in_string = true,
                b'{' | b'[' => {
                    if self.depth == 0 {
                        self.start = Some(i);
                    }
                    self.depth += 1;
                }
                b'}' | b']' => {
                    self.depth = self.depth.saturating_sub(1);
                    if self.depth == 0
                        && let Some(start) = self.start.take()
                    {
                        return Some(start..i + 1);
                    }
                }
                _ => {}
            }
        }
        None
    }

    /// Forgets the first `n` bytes of the buffer (already handled).
    fn consume(&mut self, n: usize) {
        self.scanned -= n;
        if let Some(start) = &mut self.start {
            *start -= n;
        }
    }
}

async fn read_loop(mut reader: Reader, shared: Arc<Shared>) {
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut framer = Framer::default();
    let mut chunk = vec![0u8; 256 * 1024];
    'read: loop {
        let n = match reader.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut handled = 0;
        while let Some(range) = framer.next(&buf) {
            handled = range.end;
            match serde_json::from_slice::<Json>(&buf[range]) {
                Ok(message) => handle_message(message, &shared),
                Err(_) => break 'read,
            }
        }
        if handled > 0 {
            buf.drain(..handled);
            framer.consume(handled);
        }
    }
    shared.closed.send_replace(true);
    shared.pending.lock().expect("pending").clear();
    shared.monitors.lock().expect("monitors").clear();
}

fn handle_message(mut message: Json, shared: &Shared) {
    if let Some(method) = message.get("method").and_then(Json::as_str) {
        match method {
            "echo" => {
                let reply =
                    json!({"id": message["id"], "result": message["params"], "error": null});
                let _ = shared
                    .out
                    .send(serde_json::to_vec(&reply).expect("JSON serialisation"));
            }
            "update" | "update2" => {
                let method = method.to_string();
                let Some(params) = message["params"].as_array_mut() else {
                    return;
                };
                let (Some(id), Some(updates)) = (
                    params.first().map(Json::to_string),
                    params.get_mut(1).map(Json::take),
                ) else {
                    return;
                };
                let monitors = shared.monitors.lock().expect("monitors");
                if let Some(tx) = monitors.get(&id) {
                    let _ = tx.send(Notification { method, updates });
                }
            }
            _ => {}
        }
        return;
    }
    let Some(id) = message.get("id").and_then(Json::as_u64) else {
        return;
    };
    let Some(tx) = shared.pending.lock().expect("pending").remove(&id) else {
        return;
    };
    let error = message.get("error").cloned().unwrap_or(Json::Null);
    let _ = tx.send(if error.is_null() {
        Ok(message.get("result").cloned().unwrap_or(Json::Null))
    } else {
        Err(error)
    });
}

async fn write_loop(
    mut writer: Writer,
    mut out: mpsc::UnboundedReceiver<Vec<u8>>,
    shared: Arc<Shared>,
) {
    let mut closed = shared.closed.subscribe();
    loop {
        tokio::select! {
            message = out.recv() => {
                let Some(message) = message else { break };
                if writer.write_all(&message).await.is_err() || writer.flush().await.is_err() {
                    break;
                }
            }
            _ = async { closed.wait_for(|c| *c).await.is_ok() } => break,
        }
    }
    let _ = writer.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framer_splits_back_to_back_messages_and_keeps_partial_ones() {
        let mut framer = Framer::default();
        let mut buf =
            br#"{"id":1,"result":"a}b"}{"method":"echo","params":["x\"}"]}{"id":"#.to_vec();
        let first = framer.next(&buf).unwrap();
        assert_eq!(&buf[first.clone()], br#"{"id":1,"result":"a}b"}"#);
        let second = framer.next(&buf).unwrap();
        assert_eq!(
            &buf[second.clone()],
            br#"{"method":"echo","params":["x\"}"]}"#
        );
        assert!(framer.next(&buf).is_none());
        buf.drain(..second.end);
        framer.consume(second.end);
        buf.extend_from_slice(br#"2,"result":[]}"#);
        let third = framer.next(&buf).unwrap();
        assert_eq!(&buf[third], br#"{"id":2,"result":[]}"#);
    }

    #[tokio::test]
    async fn bad_endpoints_are_refused() {
        for endpoint in [
            "127.0.0.1:6641",
            "tcp:127.0.0.1",
            "tcp::1",
            "unix:",
            "ssl:x:1",
        ] {
            assert!(
                matches!(Client::connect(endpoint).await, Err(Error::Endpoint(_))),
                "{endpoint}"
            );
        }
    }
}
