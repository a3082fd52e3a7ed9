//! What the controller writes: EgressIP `status.items`, the `k8s.ovn.org/egressip-mark`
//! annotation, and Events.
//!
//! The CRD has no status subresource, so, like OVN-K, we patch the object itself. OVN-K sends a
//! JSON patch that replaces `/status` with `{"items": [...]}` (and adds the mark annotation when
//! it is missing). We send the JSON merge patch with the same effect,
//! `{"metadata":{"resourceVersion":RV,"annotations":{MARK:"50000"}},"status":{"items":[...]}}`:
//! a merge patch replaces the `items` list whole and adds the annotation without knowing whether
//! the object has annotations yet, and the resourceVersion makes the API server refuse (409) a
//! write computed from an outdated object. On 409 we read the object again, recompute the patch
//! and try again.

use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::{Client, ResourceExt};
use kube_egress_api::{EGRESSIP_MARK_ANNOTATION, EgressIP, EgressIPStatusItem};
use kube_egress_engine::Event;
use serde_json::{Value, json};

/// `reportingController` of our Events (`source.component` in the core API).
pub const REPORTING_COMPONENT: &str = "kube-egress-controller";

/// Attempts of one write before it is left to the next pass.
const CONFLICT_RETRIES: usize = 5;

/// The merge patch that brings `current` to the desired status and mark, or `None` when it
/// already has them. Status items compare as a list: order is part of what OVN-K writes.
pub fn status_patch(
    current: &EgressIP,
    items: &[EgressIPStatusItem],
    mark: Option<u32>,
) -> Option<Value> {
    let current_items: &[EgressIPStatusItem] = current
        .status
        .as_ref()
        .map(|s| s.items.as_slice())
        .unwrap_or_default();
    let status_differs = current.status.is_none() && !items.is_empty() || current_items != items;
    let current_mark = current.annotations().get(EGRESSIP_MARK_ANNOTATION);
    let mark_differs = mark.is_some_and(|m| current_mark != Some(&m.to_string()));
    if !status_differs && !mark_differs {
        return None;
    }
    let mut metadata = json!({ "resourceVersion": current.resource_version() });
    if mark_differs && let Some(m) = mark {
        metadata["annotations"] = json!({ EGRESSIP_MARK_ANNOTATION: m.to_string() });
    }
    let mut patch = json!({ "metadata": metadata });
    if status_differs {
        patch["status"] = json!({ "items": items });
    }
    Some(patch)
}

/// Why a write did not happen.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("EgressIP {name}: {source}")]
    Api {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("EgressIP {name}: still conflicting after {CONFLICT_RETRIES} attempts")]
    Conflicts { name: String },
    #[error("not the leader any more; EgressIP {name} not written")]
    NotLeader { name: String },
}

/// Writes the desired status and mark of one EgressIP, starting from `current` (the object as
/// last seen). `may_write` is asked before every request (leadership fencing). Returns the
/// object as written (`None` when nothing had to be written or the object is gone).
pub async fn write_status(
    api: &Api<EgressIP>,
    current: &EgressIP,
    items: &[EgressIPStatusItem],
    mark: Option<u32>,
    may_write: impl Fn() -> bool,
) -> Result<Option<EgressIP>, WriteError> {
    let name = current.name_any();
    let mut current = current.clone();
    for attempt in 0..CONFLICT_RETRIES {
        let Some(patch) = status_patch(&current, items, mark) else {
            return Ok(None);
        };
        if !may_write() {
            return Err(WriteError::NotLeader { name });
        }
        match api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(written) => return Ok(Some(written)),
            Err(kube::Error::Api(s)) if s.is_conflict() => {
                if attempt > 0 {
                    tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
                }
                match api.get_opt(&name).await {
                    Ok(Some(fresh)) => current = fresh,
                    Ok(None) => return Ok(None),
                    Err(source) => return Err(WriteError::Api { name, source }),
                }
            }
            Err(kube::Error::Api(s)) if s.is_not_found() => return Ok(None),
            Err(source) => return Err(WriteError::Api { name, source }),
        }
    }
    Err(WriteError::Conflicts { name })
}

/// The object an engine Event is about.
pub fn event_reference(event: &Event, uid: Option<String>) -> ObjectReference {
    let api_version = match event.kind.as_str() {
        "EgressIP" => kube_egress_api::API_VERSION,
        _ => "v1",
    };
    ObjectReference {
        api_version: Some(api_version.into()),
        kind: Some(event.kind.clone()),
        name: Some(event.name.clone()),
        namespace: event.namespace.clone(),
        uid,
        ..ObjectReference::default()
    }
}

/// Publishes engine Events as `events.k8s.io/v1` Events (cluster-scoped objects' Events go to
/// the `default` namespace, as Kubernetes does).
pub struct EventWriter {
    recorder: Recorder,
}

impl EventWriter {
    pub fn new(client: Client, identity: &str) -> EventWriter {
        EventWriter {
            recorder: Recorder::new(
                client,
                Reporter {
                    controller: REPORTING_COMPONENT.into(),
                    instance: Some(identity.into()),
                },
            ),
        }
    }

    pub async fn publish(&self, event: &Event, uid: Option<String>) -> Result<(), kube::Error> {
        let type_ = if event.type_ == "Normal" {
            EventType::Normal
        } else {
            EventType::Warning
        };
        self.recorder
            .publish(
                &KubeEvent {
                    type_,
                    reason: event.reason.clone(),
                    note: Some(event.message.chars().take(1024).collect()),
                    action: "Assign".into(),
                    secondary: None,
                },
                &event_reference(event, uid),
            )
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube_egress_api::{EgressIPSpec, EgressIPStatus};

    fn item(node: &str, ip: &str) -> EgressIPStatusItem {
        EgressIPStatusItem {
            node: node.into(),
            egress_ip: ip.into(),
        }
    }

    fn object(items: Option<Vec<EgressIPStatusItem>>, mark: Option<&str>) -> EgressIP {
        let mut e = EgressIP::new("e", EgressIPSpec::default());
        e.metadata.resource_version = Some("7".into());
        if let Some(m) = mark {
            e.metadata.annotations =
                Some([(EGRESSIP_MARK_ANNOTATION.to_string(), m.into())].into());
        }
        e.status = items.map(|items| EgressIPStatus { items });
        e
    }

    #[test]
    fn patch_sets_status_and_missing_mark_guarded_by_resource_version() {
        let patch = status_patch(&object(None, None), &[item("n1", "10.0.0.10")], Some(50000));
        assert_eq!(
            patch,
            Some(json!({
                "metadata": {
                    "resourceVersion": "7",
                    "annotations": { "k8s.ovn.org/egressip-mark": "50000" }
                },
                "status": { "items": [ { "node": "n1", "egressIP": "10.0.0.10" } ] }
            }))
        );
    }

    #[test]
    fn nothing_to_write_when_status_and_mark_match() {
        let current = object(Some(vec![item("n1", "10.0.0.10")]), Some("50000"));
        assert_eq!(
            status_patch(&current, &[item("n1", "10.0.0.10")], Some(50000)),
            None
        );
        // An object without status and nothing assigned needs no write either.
        assert_eq!(
            status_patch(&object(None, Some("50001")), &[], Some(50001)),
            None
        );
    }

    #[test]
    fn emptying_the_status_writes_an_empty_list_and_keeps_the_mark() {
        let current = object(Some(vec![item("n1", "10.0.0.10")]), Some("50000"));
        assert_eq!(
            status_patch(&current, &[], Some(50000)),
            Some(json!({
                "metadata": { "resourceVersion": "7" },
                "status": { "items": [] }
            }))
        );
    }
}
