//! Kubernetes Events (`events.k8s.io/v1`) about Datasets.
//!
//! Like kube-runtime's `Recorder`, a repeat of the same Event within
//! [`SERIES_TTL`] patches the first one's series count instead of making a
//! new object. Unlike it, names and texts stay valid for every object the
//! API server accepts: the Recorder names an Event `<object name>.<nanos
//! hex>`, which for a Dataset name of 237 characters or more is longer than
//! the 253 an object name may have, so every Event about such a Dataset was
//! refused; and the API server refuses a note over 1 KiB.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};

/// A repeat within this time joins the first Event's series.
pub const SERIES_TTL: Duration = Duration::from_secs(6 * 60);
/// Longest name of an object (a DNS subdomain).
const MAX_NAME: usize = 253;
/// Longest `note` the API server takes.
pub const MAX_NOTE: usize = 1024;
/// Longest `reason`.
const MAX_REASON: usize = 128;
/// Events remembered for series; beyond it the oldest are forgotten.
const MAX_REMEMBERED: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            Self::Normal => "Normal",
            Self::Warning => "Warning",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    namespace: Option<String>,
    name: Option<String>,
    uid: Option<String>,
    type_: EventType,
    reason: String,
    note: String,
}

/// Publishes Events as one controller instance.
pub struct EventPublisher {
    client: Client,
    controller: String,
    instance: String,
    sent: Mutex<HashMap<Key, (Instant, Event)>>,
}

impl EventPublisher {
    pub fn new(client: Client, controller: &str, instance: Option<String>) -> Self {
        Self {
            client,
            controller: controller.to_owned(),
            instance: instance.unwrap_or_else(|| controller.to_owned()),
            sent: Mutex::new(HashMap::new()),
        }
    }

    /// Publishes an Event about `regarding` (in its namespace).
    pub async fn publish(
        &self,
        regarding: &ObjectReference,
        type_: EventType,
        reason: &str,
        note: &str,
    ) -> Result<(), kube::Error> {
        let key = Key {
            namespace: regarding.namespace.clone(),
            name: regarding.name.clone(),
            uid: regarding.uid.clone(),
            type_,
            reason: truncate(reason, MAX_REASON).to_owned(),
            note: truncate(note, MAX_NOTE).to_owned(),
        };
        let now = Instant::now();
        let previous = {
            let mut sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
            sent.retain(|_, (at, _)| now.duration_since(*at) < SERIES_TTL);
            if sent.len() >= MAX_REMEMBERED {
                sent.clear();
            }
            sent.get(&key).map(|(_, e)| e.clone())
        };
        let ns = regarding.namespace.as_deref().unwrap_or("default");
        let api: Api<Event> = Api::namespaced(self.client.clone(), ns);
        let stamp = Timestamp::now();
        let event = match previous {
            Some(mut e) => {
                let count = e.series.as_ref().map_or(2, |s| s.count + 1);
                e.series = Some(EventSeries {
                    count,
                    last_observed_time: MicroTime(stamp),
                });
                api.patch(&e.name_any(), &PatchParams::default(), &Patch::Merge(&e))
                    .await?;
                e
            }
            None => {
                let object = regarding.name.as_deref().unwrap_or(&self.controller);
                let e = Event {
                    metadata: ObjectMeta {
                        name: Some(event_name(object, stamp.as_nanosecond())),
                        namespace: Some(ns.to_owned()),
                        ..Default::default()
                    },
                    action: Some("Reconcile".into()),
                    reason: Some(key.reason.clone()),
                    note: Some(key.note.clone()),
                    type_: Some(type_.as_str().into()),
                    event_time: Some(MicroTime(stamp)),
                    regarding: Some(regarding.clone()),
                    reporting_controller: Some(self.controller.clone()),
                    reporting_instance: Some(self.instance.clone()),
                    ..Default::default()
                };
                api.create(&PostParams::default(), &e).await?;
                e
            }
        };
        self.sent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, (now, event));
        Ok(())
    }
}

/// `<object>.<nanos hex>`, with the object's name cut so that the whole is
/// a valid object name (a DNS subdomain of at most 253 characters: the cut
/// never leaves a `.` or `-` before the suffix's dot).
pub fn event_name(object: &str, nanos: i128) -> String {
    let suffix = format!(".{:x}", nanos.max(0));
    let room = MAX_NAME.saturating_sub(suffix.len());
    let head = truncate(object, room).trim_end_matches(['.', '-']);
    let head = if head.is_empty() { "event" } else { head };
    format!("{head}{suffix}")
}

/// The longest prefix of `s` of at most `max` bytes that ends on a
/// character boundary.
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid_subdomain(s: &str) -> bool {
        s.len() <= 253
            && s.split('.').all(|label| {
                !label.is_empty()
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            })
    }

    /// kube-runtime's Recorder named Events `<name>.<nanos hex>`: for a
    /// Dataset name of 253 characters that is 269, and the API server
    /// refused every Event about it.
    #[test]
    fn event_names_are_valid_for_every_valid_object_name() {
        let nanos = 1_800_000_000_123_456_789i128;
        assert_eq!(event_name("llama", nanos), format!("llama.{nanos:x}"));
        let long = "a".repeat(253);
        let cut_at_dot = format!("{}.{}", "b".repeat(235), "c".repeat(17));
        let cut_at_dash = format!("{}-{}", "d".repeat(235), "e".repeat(17));
        for name in [long.as_str(), &cut_at_dot, &cut_at_dash, "x"] {
            let e = event_name(name, nanos);
            assert!(valid_subdomain(&e), "{e} ({} characters)", e.len());
            assert!(e.ends_with(&format!(".{nanos:x}")), "{e}");
        }
    }

    #[test]
    fn long_texts_are_cut_on_a_character_boundary() {
        assert_eq!(truncate("abc", 5), "abc");
        assert_eq!(truncate("abc", 2), "ab");
        assert_eq!(truncate("aé", 2), "a");
        let note = "é".repeat(MAX_NOTE);
        assert!(truncate(&note, MAX_NOTE).len() <= MAX_NOTE);
    }
}
