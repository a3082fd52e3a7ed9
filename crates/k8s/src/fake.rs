//! A Kubernetes API server stand-in for tests: a `tower` service behind a real `kube::Client`.
//!
//! It keeps objects as JSON with one resourceVersion counter, and answers the requests our
//! code makes with the shapes the real API server uses: lists with `metadata.resourceVersion`,
//! watch streams of newline-separated `ADDED`/`MODIFIED`/`DELETED`/`BOOKMARK`/`ERROR` events,
//! `Status` bodies with reasons (`NotFound`, `AlreadyExists`, `Conflict`), resourceVersion
//! preconditions on replace and merge patch. Tests can end every watch (a dropped connection),
//! compact the history (a watch from an older version gets `410 Gone`), make chosen requests
//! fail, and read every request received, with its body and the client that sent it.
//!
//! Only built with the `test-api-server` feature.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use futures::StreamExt;
use http::{Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// One request as received.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// The name given to [`ApiServer::client`].
    pub client: String,
    pub method: String,
    pub path: String,
    pub query: String,
    pub content_type: Option<String>,
    pub body: Option<Value>,
}

impl Recorded {
    pub fn is_watch(&self) -> bool {
        self.query.split('&').any(|p| p == "watch=true")
    }
}

/// A request that will fail.
#[derive(Debug, Clone)]
pub struct Fault {
    pub method: Method,
    /// Substring of the path.
    pub path: String,
    /// Only requests of this client (all when `None`).
    pub client: Option<String>,
    pub code: u16,
    /// How many requests fail (then the fault is gone).
    pub times: usize,
}

struct Watcher {
    resource: String,
    namespace: Option<String>,
    tx: mpsc::UnboundedSender<Bytes>,
}

#[derive(Default)]
struct State {
    rv: u64,
    /// (resource, namespace, name) → object.
    objects: BTreeMap<(String, String, String), Value>,
    /// (rv, resource, namespace, type, object) for watch replay.
    history: Vec<(u64, String, String, &'static str, Value)>,
    /// A watch from a version older than this gets 410 Gone.
    oldest: u64,
    watchers: Vec<Watcher>,
    requests: Vec<Recorded>,
    faults: Vec<Fault>,
}

/// The kinds served: (apiVersion, kind, resource = `group/plural`, namespaced).
const KINDS: &[(&str, &str, &str, bool)] = &[
    ("v1", "Node", "/nodes", false),
    ("v1", "Namespace", "/namespaces", false),
    ("v1", "Pod", "/pods", true),
    ("v1", "Event", "/events", true),
    ("k8s.ovn.org/v1", "EgressIP", "k8s.ovn.org/egressips", false),
    (
        "networking.k8s.io/v1",
        "ServiceCIDR",
        "networking.k8s.io/servicecidrs",
        false,
    ),
    (
        "coordination.k8s.io/v1",
        "Lease",
        "coordination.k8s.io/leases",
        true,
    ),
    ("events.k8s.io/v1", "Event", "events.k8s.io/events", true),
];

fn kind_of_resource(resource: &str) -> Option<(&'static str, &'static str)> {
    KINDS.iter().find(|k| k.2 == resource).map(|k| (k.0, k.1))
}

fn resource_of(api_version: &str, kind: &str) -> Option<&'static str> {
    KINDS
        .iter()
        .find(|k| k.0 == api_version && k.1 == kind)
        .map(|k| k.2)
}

fn status(code: u16, reason: &str, message: String) -> Response<Body> {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code
    });
    respond(code, &body)
}

fn respond(code: u16, body: &Value) -> Response<Body> {
    Response::builder()
        .status(StatusCode::from_u16(code).expect("status code"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())).boxed_unsync())
        .expect("response")
}

fn reason_of(code: u16) -> &'static str {
    match code {
        404 => "NotFound",
        409 => "Conflict",
        410 => "Expired",
        422 => "Invalid",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        _ => "Unknown",
    }
}

/// RFC 7386 JSON merge patch.
pub fn merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            let t = target.as_object_mut().expect("object");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// Path → (resource, namespace, name).
fn route(path: &str) -> Option<(String, Option<String>, Option<String>)> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match segs.as_slice() {
        ["api", "v1", rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => return None,
    };
    let (ns, plural, name) = match rest {
        ["namespaces", ns, plural, tail @ ..] => (Some(ns.to_string()), *plural, tail.first()),
        [plural, tail @ ..] => (None, *plural, tail.first()),
        [] => return None,
    };
    Some((format!("{group}/{plural}"), ns, name.map(|s| s.to_string())))
}

fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

fn watch_line(type_: &str, object: &Value) -> Bytes {
    let mut line = json!({ "type": type_, "object": object }).to_string();
    line.push('\n');
    Bytes::from(line)
}

/// The API server stand-in. Cloning shares the state.
#[derive(Clone, Default)]
pub struct ApiServer {
    state: Arc<Mutex<State>>,
}

impl ApiServer {
    pub fn new() -> ApiServer {
        ApiServer::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A `kube::Client` whose requests are recorded under `name`.
    pub fn client(&self, name: &str) -> kube::Client {
        let server = self.clone();
        let name = name.to_string();
        let service = tower::service_fn(move |req: Request<kube::client::Body>| {
            let server = server.clone();
            let name = name.clone();
            async move { Ok::<_, Infallible>(server.handle(&name, req).await) }
        });
        kube::Client::new(service, "default")
    }

    /// Creates or replaces an object as a user would (`apiVersion`, `kind` and
    /// `metadata.name` required). Returns its new resourceVersion.
    pub fn put(&self, mut object: Value) -> u64 {
        let api_version = object["apiVersion"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let kind = object["kind"].as_str().unwrap_or_default().to_string();
        let resource = resource_of(&api_version, &kind)
            .unwrap_or_else(|| panic!("the test API server does not serve {api_version} {kind}"));
        let ns = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let name = object["metadata"]["name"]
            .as_str()
            .expect("metadata.name")
            .to_string();
        let mut state = self.lock();
        let key = (resource.to_string(), ns, name);
        if let Some(old) = state.objects.get(&key) {
            object["metadata"]["uid"] = old["metadata"]["uid"].clone();
            object["metadata"]["creationTimestamp"] = old["metadata"]["creationTimestamp"].clone();
            state.store(key, object, "MODIFIED")
        } else {
            state.store(key, object, "ADDED")
        }
    }

    /// Deletes an object as a user would.
    pub fn delete(&self, api_version: &str, kind: &str, namespace: &str, name: &str) {
        let resource = resource_of(api_version, kind).expect("served kind");
        let mut state = self.lock();
        state.remove(&(resource.into(), namespace.into(), name.into()));
    }

    /// The stored object.
    pub fn get(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let resource = resource_of(api_version, kind).expect("served kind");
        self.lock()
            .objects
            .get(&(resource.into(), namespace.into(), name.into()))
            .cloned()
    }

    /// Every stored object of a kind.
    pub fn list(&self, api_version: &str, kind: &str) -> Vec<Value> {
        let resource = resource_of(api_version, kind).expect("served kind");
        self.lock()
            .objects
            .iter()
            .filter(|(k, _)| k.0 == resource)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.lock().requests.clone()
    }

    /// Ends every open watch stream, as a dropped connection does.
    pub fn drop_watches(&self) {
        self.lock().watchers.clear();
    }

    /// Forgets the history: open watches receive `410 Gone` (`Expired`) and end, and a watch
    /// from any version seen so far gets the same, so watchers must list again.
    pub fn compact(&self) {
        let mut state = self.lock();
        state.oldest = state.rv + 1;
        state.history.clear();
        let gone = watch_line(
            "ERROR",
            &json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": "too old resource version", "reason": "Expired", "code": 410
            }),
        );
        for w in state.watchers.drain(..) {
            let _ = w.tx.send(gone.clone());
        }
    }

    /// Makes matching requests fail.
    pub fn fail(&self, fault: Fault) {
        self.lock().faults.push(fault);
    }

    /// Number of open watch streams.
    pub fn open_watches(&self) -> usize {
        let mut state = self.lock();
        state.watchers.retain(|w| !w.tx.is_closed());
        state.watchers.len()
    }

    /// Serves the same API over plain HTTP/1.1 on `listener` (for a process under test, e.g.
    /// with a kubeconfig whose server is `http://ADDR`), recording its requests as `client`.
    /// Runs until the task is dropped.
    pub async fn serve_http(&self, listener: tokio::net::TcpListener, client: &str) {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let server = self.clone();
            let client = client.to_string();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let server = server.clone();
                        let client = client.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let bytes = body
                                .collect()
                                .await
                                .map(|c| c.to_bytes())
                                .unwrap_or_default();
                            Ok::<_, Infallible>(server.answer(&client, parts, bytes))
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    }

    async fn handle(&self, client: &str, req: Request<kube::client::Body>) -> Response<Body> {
        let (parts, body) = req.into_parts();
        let bytes = body
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        self.answer(client, parts, bytes)
    }

    fn answer(&self, client: &str, parts: http::request::Parts, bytes: Bytes) -> Response<Body> {
        let body: Option<Value> = if bytes.is_empty() {
            None
        } else {
            serde_json::from_slice(&bytes).ok()
        };
        let path = parts.uri.path().to_string();
        let query = parts.uri.query().unwrap_or_default().to_string();
        let content_type = parts
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut state = self.lock();
        state.requests.push(Recorded {
            client: client.into(),
            method: parts.method.to_string(),
            path: path.clone(),
            query: query.clone(),
            content_type: content_type.clone(),
            body: body.clone(),
        });
        if let Some(i) = state.faults.iter().position(|f| {
            f.method == parts.method
                && path.contains(&f.path)
                && f.client.as_deref().is_none_or(|c| c == client)
                && f.times > 0
        }) {
            let f = &mut state.faults[i];
            f.times -= 1;
            let code = f.code;
            if f.times == 0 {
                state.faults.remove(i);
            }
            return status(code, reason_of(code), format!("injected failure {code}"));
        }
        let Some((resource, ns, name)) = route(&path) else {
            return status(404, "NotFound", format!("no route for {path}"));
        };
        let Some((api_version, kind)) = kind_of_resource(&resource) else {
            return status(404, "NotFound", format!("the server could not find {path}"));
        };
        let ns_key = ns.clone().unwrap_or_default();
        match (parts.method, name) {
            (Method::GET, None) if query_param(&query, "watch") == Some("true") => {
                state.watch(&resource, ns, &query)
            }
            (Method::GET, None) => {
                let items: Vec<Value> = state
                    .objects
                    .iter()
                    .filter(|(k, _)| k.0 == resource && (ns.is_none() || k.1 == ns_key))
                    .map(|(_, v)| v.clone())
                    .collect();
                respond(
                    200,
                    &json!({
                        "apiVersion": api_version, "kind": format!("{kind}List"),
                        "metadata": { "resourceVersion": state.rv.to_string() },
                        "items": items
                    }),
                )
            }
            (Method::GET, Some(name)) => {
                match state.objects.get(&(resource.clone(), ns_key, name.clone())) {
                    Some(obj) => respond(200, obj),
                    None => status(404, "NotFound", format!("{kind} {name:?} not found")),
                }
            }
            (Method::POST, None) => {
                let Some(mut obj) = body else {
                    return status(400, "BadRequest", "no body".into());
                };
                let Some(name) = obj["metadata"]["name"].as_str().map(str::to_string) else {
                    return status(422, "Invalid", "metadata.name: Required value".into());
                };
                let key = (resource, ns_key.clone(), name.clone());
                if state.objects.contains_key(&key) {
                    return status(
                        409,
                        "AlreadyExists",
                        format!("{kind} {name:?} already exists"),
                    );
                }
                obj["apiVersion"] = json!(api_version);
                obj["kind"] = json!(kind);
                if ns.is_some() {
                    obj["metadata"]["namespace"] = json!(ns_key);
                }
                state.store(key.clone(), obj, "ADDED");
                respond(201, &state.objects[&key])
            }
            (Method::PUT, Some(name)) => {
                let Some(mut obj) = body else {
                    return status(400, "BadRequest", "no body".into());
                };
                let key = (resource, ns_key, name.clone());
                let Some(old) = state.objects.get(&key) else {
                    return status(404, "NotFound", format!("{kind} {name:?} not found"));
                };
                if let Some(rv) = obj["metadata"]["resourceVersion"].as_str()
                    && rv
                        != old["metadata"]["resourceVersion"]
                            .as_str()
                            .unwrap_or_default()
                {
                    return status(
                        409,
                        "Conflict",
                        format!(
                            "Operation cannot be fulfilled on {kind} {name:?}: the object has been modified; please apply your changes to the latest version and try again"
                        ),
                    );
                }
                obj["metadata"]["uid"] = old["metadata"]["uid"].clone();
                obj["metadata"]["creationTimestamp"] = old["metadata"]["creationTimestamp"].clone();
                state.store(key.clone(), obj, "MODIFIED");
                respond(200, &state.objects[&key])
            }
            (Method::PATCH, Some(name)) => {
                if content_type.as_deref() != Some("application/merge-patch+json") {
                    return status(
                        415,
                        "UnsupportedMediaType",
                        format!(
                            "the test API server only plays merge patches, not {content_type:?}"
                        ),
                    );
                }
                let Some(patch) = body else {
                    return status(400, "BadRequest", "no body".into());
                };
                let key = (resource, ns_key, name.clone());
                let Some(old) = state.objects.get(&key).cloned() else {
                    return status(404, "NotFound", format!("{kind} {name:?} not found"));
                };
                if let Some(rv) = patch["metadata"]["resourceVersion"].as_str()
                    && rv
                        != old["metadata"]["resourceVersion"]
                            .as_str()
                            .unwrap_or_default()
                {
                    return status(
                        409,
                        "Conflict",
                        format!(
                            "Operation cannot be fulfilled on {kind} {name:?}: the object has been modified; please apply your changes to the latest version and try again"
                        ),
                    );
                }
                let mut obj = old;
                merge(&mut obj, &patch);
                state.store(key.clone(), obj, "MODIFIED");
                respond(200, &state.objects[&key])
            }
            (Method::DELETE, Some(name)) => {
                let key = (resource, ns_key, name.clone());
                match state.remove(&key) {
                    Some(obj) => respond(200, &obj),
                    None => status(404, "NotFound", format!("{kind} {name:?} not found")),
                }
            }
            (method, _) => status(405, "MethodNotAllowed", format!("{method} {path}")),
        }
    }
}

impl State {
    fn store(&mut self, key: (String, String, String), mut obj: Value, type_: &'static str) -> u64 {
        self.rv += 1;
        let rv = self.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        if obj["metadata"]["uid"].is_null() {
            obj["metadata"]["uid"] = json!(format!("uid-{}-{rv}", key.2));
        }
        if obj["metadata"]["creationTimestamp"].is_null() {
            obj["metadata"]["creationTimestamp"] = json!(
                jiff::Timestamp::now()
                    .round(jiff::Unit::Second)
                    .expect("round")
                    .to_string()
            );
        }
        self.objects.insert(key.clone(), obj.clone());
        self.notify(&key.0, &key.1, type_, obj, rv);
        rv
    }

    fn remove(&mut self, key: &(String, String, String)) -> Option<Value> {
        let mut obj = self.objects.remove(key)?;
        self.rv += 1;
        let rv = self.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.notify(&key.0, &key.1, "DELETED", obj.clone(), rv);
        Some(obj)
    }

    fn notify(&mut self, resource: &str, ns: &str, type_: &'static str, obj: Value, rv: u64) {
        let line = watch_line(type_, &obj);
        self.watchers.retain(|w| {
            if w.resource != resource || w.namespace.as_deref().is_some_and(|n| n != ns) {
                return !w.tx.is_closed();
            }
            w.tx.send(line.clone()).is_ok()
        });
        self.history
            .push((rv, resource.to_string(), ns.to_string(), type_, obj));
    }

    fn watch(&mut self, resource: &str, ns: Option<String>, query: &str) -> Response<Body> {
        let (tx, rx) = mpsc::unbounded_channel();
        let from: u64 = query_param(query, "resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(self.rv);
        if from + 1 < self.oldest {
            let _ = tx.send(watch_line(
                "ERROR",
                &json!({
                    "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": format!("too old resource version: {from} ({})", self.oldest - 1),
                    "reason": "Expired", "code": 410
                }),
            ));
        } else {
            for (rv, r, n, type_, obj) in &self.history {
                if *rv > from && r == resource && ns.as_deref().is_none_or(|x| x == n) {
                    let _ = tx.send(watch_line(type_, obj));
                }
            }
            if query_param(query, "allowWatchBookmarks") == Some("true")
                && let Some((api_version, kind)) = kind_of_resource(resource)
            {
                let _ = tx.send(watch_line(
                    "BOOKMARK",
                    &json!({
                        "apiVersion": api_version, "kind": kind,
                        "metadata": { "resourceVersion": self.rv.to_string() }
                    }),
                ));
            }
            self.watchers.push(Watcher {
                resource: resource.to_string(),
                namespace: ns,
                tx,
            });
            let stream =
                UnboundedReceiverStream::new(rx).map(|b| Ok::<_, Infallible>(Frame::data(b)));
            return Response::builder()
                .status(200)
                .header("content-type", "application/json")
                .body(StreamBody::new(stream).boxed_unsync())
                .expect("response");
        }
        drop(tx);
        let stream = UnboundedReceiverStream::new(rx).map(|b| Ok::<_, Infallible>(Frame::data(b)));
        Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .body(StreamBody::new(stream).boxed_unsync())
            .expect("response")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(route("/api/v1/nodes"), Some(("/nodes".into(), None, None)));
        assert_eq!(
            route("/api/v1/namespaces/kube-system"),
            Some(("/namespaces".into(), None, Some("kube-system".into())))
        );
        assert_eq!(
            route("/api/v1/namespaces/a/pods/p"),
            Some(("/pods".into(), Some("a".into()), Some("p".into())))
        );
        assert_eq!(
            route("/apis/coordination.k8s.io/v1/namespaces/x/leases/l"),
            Some((
                "coordination.k8s.io/leases".into(),
                Some("x".into()),
                Some("l".into())
            ))
        );
    }
}
