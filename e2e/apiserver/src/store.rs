//! The in-memory object store: one global resourceVersion counter, a
//! BTreeMap of objects per group/resource, and a bounded event log that
//! serves watches and consistent (Exact / paginated) lists.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::SystemTime;

use serde_json::{Map, Value, json};

use crate::patch::{self, Scope};
use crate::resources::{self, ResourceType};
use crate::selector::{FieldSelector, LabelSelector};
use crate::status::ApiError;

pub(crate) type StorageKey = (String, String);
pub(crate) type ObjectKey = (String, String);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EventKind {
    Added,
    Modified,
    Deleted,
}

/// One committed change; `prev` is the object before it (rollback, selector transitions).
#[derive(Clone, Debug)]
pub(crate) struct Event {
    pub rv: u64,
    pub key: StorageKey,
    pub ns: String,
    pub name: String,
    pub kind: EventKind,
    pub obj: Arc<Value>,
    pub prev: Option<Arc<Value>>,
}

/// The kinds of patch a PATCH request can carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PatchType {
    Json,
    Merge,
    Strategic,
    Apply,
}

impl PatchType {
    pub fn from_content_type(ct: &str) -> Option<Self> {
        match ct.split(';').next().unwrap_or_default().trim() {
            "application/json-patch+json" => Some(PatchType::Json),
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/strategic-merge-patch+json" => Some(PatchType::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+cbor" => {
                Some(PatchType::Apply)
            }
            _ => None,
        }
    }
}

/// Who writes and how (query parameters of a mutating request).
#[derive(Clone, Debug, Default)]
pub(crate) struct WriteOptions {
    pub manager: String,
    pub force: bool,
    pub dry_run: bool,
}

/// List parameters.
#[derive(Clone, Debug, Default)]
pub(crate) struct ListOptions {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    pub resource_version: Option<String>,
    pub exact: bool,
    pub limit: usize,
    pub continue_token: Option<String>,
}

pub(crate) struct ListResult {
    pub items: Vec<Value>,
    pub resource_version: u64,
    pub continue_token: Option<String>,
    pub remaining: Option<usize>,
}

pub(crate) fn now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

fn new_uid() -> String {
    let b: [u8; 16] = rand::random();
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-4{}-a{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5)
        .map(|_| char::from(ALPHABET[rand::random::<usize>() % ALPHABET.len()]))
        .collect()
}

pub(crate) fn meta_str<'a>(obj: &'a Value, field: &str) -> &'a str {
    obj["metadata"][field].as_str().unwrap_or_default()
}

fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    match obj.get_mut("metadata") {
        Some(Value::Object(m)) => m,
        // Unreachable: the line above made it an object.
        _ => unreachable!("metadata is an object"),
    }
}

fn finalizers(obj: &Value) -> Vec<String> {
    obj["metadata"]["finalizers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|f| f.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Everything but metadata (and status when it is a subresource): a change
/// here bumps metadata.generation.
fn generation_view(obj: &Value, rt: &ResourceType) -> Value {
    let mut v = obj.clone();
    if let Value::Object(m) = &mut v {
        m.remove("metadata");
        m.remove("apiVersion");
        m.remove("kind");
        if rt.status_subresource {
            m.remove("status");
        }
    }
    v
}

fn valid_dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

fn hex_encode(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

fn hex_decode(s: &str) -> Option<String> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

pub(crate) struct Store {
    /// The last resourceVersion handed out.
    pub rv: u64,
    /// Watches and Exact lists need a version >= floor; older ones are 410 Gone.
    pub floor: u64,
    history: usize,
    builtins: Vec<ResourceType>,
    crds: Vec<ResourceType>,
    objects: BTreeMap<StorageKey, BTreeMap<ObjectKey, Value>>,
    events: VecDeque<Event>,
}

impl Store {
    pub fn new(history: usize) -> Self {
        let mut s = Self {
            rv: 0,
            floor: 0,
            history: history.max(1),
            builtins: resources::builtin_types(),
            crds: Vec::new(),
            objects: BTreeMap::new(),
            events: VecDeque::new(),
        };
        if let Some(ns_type) = s.find("", "v1", "namespaces") {
            for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
                let body =
                    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
                let opts = WriteOptions {
                    manager: "kube-apiserver".to_string(),
                    ..Default::default()
                };
                // Cannot fail: fixed valid names into an empty store.
                let _ = s.create(&ns_type, "", body, &opts);
            }
        }
        s
    }

    pub fn types(&self) -> impl Iterator<Item = &ResourceType> {
        self.builtins.iter().chain(self.crds.iter())
    }

    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<ResourceType> {
        self.types()
            .find(|r| r.group == group && r.version == version && r.plural == plural)
            .cloned()
    }

    fn refresh_crds(&mut self) {
        let key = (
            "apiextensions.k8s.io".to_string(),
            "customresourcedefinitions".to_string(),
        );
        let crds: Vec<&Value> = self
            .objects
            .get(&key)
            .map(|m| m.values().collect())
            .unwrap_or_default();
        self.crds = crds.into_iter().flat_map(resources::crd_types).collect();
    }

    /// The object as seen at `rt`'s version.
    pub fn view(rt: &ResourceType, obj: &Value) -> Value {
        let mut v = obj.clone();
        v["apiVersion"] = json!(rt.api_version());
        v["kind"] = json!(rt.kind);
        v
    }

    fn object_key(rt: &ResourceType, ns: &str, name: &str) -> ObjectKey {
        (
            if rt.namespaced {
                ns.to_string()
            } else {
                String::new()
            },
            name.to_string(),
        )
    }

    pub fn get(&self, rt: &ResourceType, ns: &str, name: &str) -> Result<Value, ApiError> {
        self.objects
            .get(&rt.storage_key())
            .and_then(|m| m.get(&Self::object_key(rt, ns, name)))
            .map(|o| Self::view(rt, o))
            .ok_or_else(|| ApiError::not_found(rt, name))
    }

    /// The objects of `key` as they were at `rv` (rv >= floor).
    fn snapshot_at(&self, key: &StorageKey, rv: u64) -> BTreeMap<ObjectKey, Value> {
        let mut snap = self.objects.get(key).cloned().unwrap_or_default();
        for e in self.events.iter().rev().take_while(|e| e.rv > rv) {
            if e.key != *key {
                continue;
            }
            let k = (e.ns.clone(), e.name.clone());
            match (&e.kind, &e.prev) {
                (EventKind::Added, _) => {
                    snap.remove(&k);
                }
                (_, Some(prev)) => {
                    snap.insert(k, (**prev).clone());
                }
                (_, None) => {}
            }
        }
        snap
    }

    pub fn list(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        opts: &ListOptions,
    ) -> Result<ListResult, ApiError> {
        let key = rt.storage_key();
        let (at, start_after) = match &opts.continue_token {
            Some(token) => {
                let decoded = hex_decode(token)
                    .ok_or_else(|| ApiError::bad_request("continue key is not valid"))?;
                let mut parts = decoded.splitn(3, '\n');
                let rv: u64 = parts.next().and_then(|r| r.parse().ok()).unwrap_or(0);
                let k = (
                    parts.next().unwrap_or_default().to_string(),
                    parts.next().unwrap_or_default().to_string(),
                );
                if rv < self.floor {
                    return Err(ApiError::expired(
                        "The provided continue parameter is too old to display a consistent list result. \
                         You can start a new list without the continue parameter.",
                    ));
                }
                (Some(rv), Some(k))
            }
            None => {
                let requested = opts
                    .resource_version
                    .as_deref()
                    .filter(|r| !r.is_empty() && *r != "0");
                match requested {
                    Some(r) => {
                        let rv: u64 = r.parse().map_err(|_| {
                            ApiError::bad_request(format!(
                                "resourceVersion: Invalid value: {r:?}: must be an integer"
                            ))
                        })?;
                        if opts.exact {
                            if rv < self.floor {
                                return Err(ApiError::expired(format!(
                                    "too old resource version: {rv} ({})",
                                    self.floor
                                )));
                            }
                            if rv > self.rv {
                                return Err(ApiError::new(504, "Timeout", format!("Too large resource version: {rv}, current: {}", self.rv))
                                    .with_details_raw(json!({"causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}], "retryAfterSeconds": 1})));
                            }
                            (Some(rv), None)
                        } else {
                            (None, None)
                        }
                    }
                    None if opts.exact => {
                        return Err(ApiError::bad_request(
                            "resourceVersionMatch: Forbidden: resourceVersionMatch \"Exact\" is forbidden for resourceVersion \"\" or \"0\"",
                        ));
                    }
                    None => (None, None),
                }
            }
        };
        let list_rv = at.unwrap_or(self.rv);
        let owned;
        let objects: &BTreeMap<ObjectKey, Value> = match at {
            Some(rv) if rv < self.rv => {
                owned = self.snapshot_at(&key, rv);
                &owned
            }
            _ => match self.objects.get(&key) {
                Some(m) => m,
                None => {
                    owned = BTreeMap::new();
                    &owned
                }
            },
        };
        let matching = objects
            .iter()
            .filter(|((ons, _), _)| ns.is_none_or(|n| n == ons))
            .filter(|(k, _)| start_after.as_ref().is_none_or(|s| *k > s))
            .filter(|(_, o)| opts.labels.matches(o) && opts.fields.matches(o));
        let mut items = Vec::new();
        let mut last = None;
        let mut remaining = 0usize;
        for (k, o) in matching {
            if opts.limit > 0 && items.len() >= opts.limit {
                remaining += 1;
                continue;
            }
            items.push(Self::view(rt, o));
            last = Some(k.clone());
        }
        let continue_token = match (remaining, last) {
            (r, Some((ns, name))) if r > 0 => Some(hex_encode(&format!("{list_rv}\n{ns}\n{name}"))),
            _ => None,
        };
        Ok(ListResult {
            items,
            resource_version: list_rv,
            remaining: (remaining > 0).then_some(remaining),
            continue_token,
        })
    }

    /// Events of `key` after `since`; Err when `since` is older than the window.
    pub fn events_since(&self, key: &StorageKey, since: u64) -> Result<Vec<Event>, ApiError> {
        if since < self.floor {
            return Err(ApiError::expired(format!(
                "too old resource version: {since} ({})",
                self.floor
            )));
        }
        // The log is ordered by resourceVersion.
        let start = self.events.partition_point(|e| e.rv <= since);
        Ok(self
            .events
            .range(start..)
            .filter(|e| e.key == *key)
            .cloned()
            .collect())
    }

    /// Current objects of `key` (initial events of a watch).
    pub fn current(&self, key: &StorageKey) -> Vec<Value> {
        self.objects
            .get(key)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Forgets the event log: every resourceVersion issued so far becomes too old to watch from.
    pub fn expire_history(&mut self) {
        self.rv += 1;
        self.floor = self.rv;
        self.events.clear();
    }

    fn record(&mut self, rt: &ResourceType, kind: EventKind, obj: &Value, prev: Option<Value>) {
        self.events.push_back(Event {
            rv: self.rv,
            key: rt.storage_key(),
            ns: if rt.namespaced {
                meta_str(obj, "namespace").to_string()
            } else {
                String::new()
            },
            name: meta_str(obj, "name").to_string(),
            kind,
            obj: Arc::new(obj.clone()),
            prev: prev.map(Arc::new),
        });
        while self.events.len() > self.history {
            if let Some(e) = self.events.pop_front() {
                self.floor = e.rv;
            }
        }
    }

    fn is_crd(rt: &ResourceType) -> bool {
        rt.builtin && rt.plural == "customresourcedefinitions"
    }

    fn validate(&self, rt: &ResourceType, obj: &Value) -> Result<(), ApiError> {
        let name = meta_str(obj, "name");
        let label_ok = rt.plural != "namespaces" || (name.len() <= 63 && !name.contains('.'));
        if !valid_dns_subdomain(name) || !label_ok {
            return Err(ApiError::invalid(
                rt,
                name,
                "metadata.name",
                &format!(
                    "Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case \
                     alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
                ),
            ));
        }
        if Self::is_crd(rt) {
            let spec = &obj["spec"];
            let want = format!(
                "{}.{}",
                spec["names"]["plural"].as_str().unwrap_or_default(),
                spec["group"].as_str().unwrap_or_default()
            );
            if name != want {
                return Err(ApiError::invalid(
                    rt,
                    name,
                    "metadata.name",
                    &format!("Invalid value: {name:?}: must be spec.names.plural+\".\"+spec.group"),
                ));
            }
            if resources::crd_types(obj).is_empty() {
                return Err(ApiError::invalid(
                    rt,
                    name,
                    "spec.versions",
                    "Required value: must have exactly one version marked as storage version",
                ));
            }
        }
        Ok(())
    }

    fn check_body_kind(rt: &ResourceType, body: &Value) -> Result<(), ApiError> {
        if !body.is_object() {
            return Err(ApiError::bad_request(
                "the request body must be a JSON object",
            ));
        }
        if let Some(kind) = body["kind"].as_str().filter(|k| !k.is_empty())
            && kind != rt.kind
        {
            return Err(ApiError::bad_request(format!(
                "the kind in the body ({kind}) does not match the kind of the resource ({})",
                rt.kind
            )));
        }
        Ok(())
    }

    pub fn create(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        mut body: Value,
        opts: &WriteOptions,
    ) -> Result<Value, ApiError> {
        Self::check_body_kind(rt, &body)?;
        let now = now();
        {
            let meta = meta_mut(&mut body);
            if meta
                .get("name")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
                && let Some(prefix) = meta.get("generateName").and_then(Value::as_str)
            {
                let name = format!("{prefix}{}", random_suffix());
                meta.insert("name".to_string(), json!(name));
            }
            if rt.namespaced {
                let body_ns = meta
                    .get("namespace")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                if !body_ns.is_empty() && body_ns != ns {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
                meta.insert("namespace".to_string(), json!(ns));
            } else {
                meta.remove("namespace");
            }
            for k in [
                "uid",
                "resourceVersion",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "selfLink",
            ] {
                meta.remove(k);
            }
            meta.insert("uid".to_string(), json!(new_uid()));
            meta.insert("creationTimestamp".to_string(), json!(now));
            meta.insert("generation".to_string(), json!(1));
        }
        let name = meta_str(&body, "name").to_string();
        if name.is_empty() {
            return Err(ApiError::invalid(
                rt,
                "",
                "metadata.name",
                "Required value: name or generateName is required",
            ));
        }
        self.validate(rt, &body)?;
        if rt.namespaced && self.get_namespace(ns).is_none() {
            return Err(ApiError::namespace_not_found(ns));
        }
        if self
            .objects
            .get(&rt.storage_key())
            .is_some_and(|m| m.contains_key(&Self::object_key(rt, ns, &name)))
        {
            return Err(ApiError::already_exists(rt, &name));
        }
        if !rt.builtin
            && rt.status_subresource
            && let Value::Object(m) = &mut body
        {
            m.remove("status");
        }
        match rt.plural.as_str() {
            "namespaces" if rt.builtin => body["status"] = json!({"phase": "Active"}),
            "pods" if rt.builtin && body.get("status").is_none() => {
                body["status"] = json!({"phase": "Pending"})
            }
            "secrets" if rt.builtin && body["type"].as_str().is_none_or(str::is_empty) => {
                body["type"] = json!("Opaque")
            }
            "customresourcedefinitions" if rt.builtin => {
                body["status"] = resources::crd_status(&body, &now)
            }
            _ => {}
        }
        body["apiVersion"] = json!(rt.api_version());
        body["kind"] = json!(rt.kind);
        let supplied_managed = body["metadata"]
            .get("managedFields")
            .is_some_and(|m| m.as_array().is_some_and(|a| !a.is_empty()));
        if !supplied_managed {
            patch::record_update(None, &mut body, &opts.manager, Scope::Main, rt, &now);
        }
        self.commit_create(rt, body, opts.dry_run)
    }

    fn commit_create(
        &mut self,
        rt: &ResourceType,
        mut body: Value,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        if dry_run {
            return Ok(body);
        }
        self.rv += 1;
        meta_mut(&mut body).insert("resourceVersion".to_string(), json!(self.rv.to_string()));
        let key = Self::object_key(rt, meta_str(&body, "namespace"), meta_str(&body, "name"));
        self.objects
            .entry(rt.storage_key())
            .or_default()
            .insert(key, body.clone());
        self.record(rt, EventKind::Added, &body, None);
        if Self::is_crd(rt) {
            self.refresh_crds();
        }
        Ok(Self::view(rt, &body))
    }

    fn get_namespace(&self, ns: &str) -> Option<&Value> {
        self.objects
            .get(&(String::new(), "namespaces".to_string()))
            .and_then(|m| m.get(&(String::new(), ns.to_string())))
    }

    fn stored(&self, rt: &ResourceType, ns: &str, name: &str) -> Result<Value, ApiError> {
        self.objects
            .get(&rt.storage_key())
            .and_then(|m| m.get(&Self::object_key(rt, ns, name)))
            .cloned()
            .ok_or_else(|| ApiError::not_found(rt, name))
    }

    /// PUT of the whole object (main resource or /status).
    pub fn update(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        body: Value,
        scope: Scope,
        opts: &WriteOptions,
    ) -> Result<Value, ApiError> {
        Self::check_body_kind(rt, &body)?;
        let body_name = meta_str(&body, "name");
        if body_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        if rt.namespaced {
            let body_ns = meta_str(&body, "namespace");
            if !body_ns.is_empty() && body_ns != ns {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
        }
        let old = self.stored(rt, ns, name)?;
        self.commit_update(rt, old, body, scope, opts, true)
    }

    #[allow(clippy::too_many_arguments)] // one argument per part of the request
    pub fn patch(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        kind: PatchType,
        patch_body: &Value,
        scope: Scope,
        opts: &WriteOptions,
    ) -> Result<Value, ApiError> {
        let existing = self.stored(rt, ns, name);
        if kind == PatchType::Apply {
            if opts.manager.is_empty() {
                return Err(ApiError::bad_request("PATCH /apply requires fieldManager"));
            }
            Self::check_body_kind(rt, patch_body)?;
            let applied_name = meta_str(patch_body, "name");
            if !applied_name.is_empty() && applied_name != name {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({applied_name}) does not match the name on the URL ({name})"
                )));
            }
            let now = now();
            let live = match existing {
                Ok(v) => Some(v),
                Err(e) if scope == Scope::Status => return Err(e),
                Err(_) => None,
            };
            let mut result = patch::server_side_apply(live.as_ref(), patch_body, &opts.manager, opts.force, scope, rt, &now)
                .map_err(|c| {
                    let causes: Vec<Value> = c
                        .0
                        .iter()
                        .map(|(m, f)| json!({"reason": "FieldManagerConflict", "message": format!("conflict with \"{m}\""), "field": f}))
                        .collect();
                    ApiError::new(409, "Conflict", c.message())
                        .with_details_raw(json!({"name": name, "group": rt.group, "kind": rt.plural, "causes": causes}))
                })?;
            return match live {
                Some(old) => {
                    // The resourceVersion in an applied config is a precondition.
                    let wanted = meta_str(patch_body, "resourceVersion");
                    meta_mut(&mut result).insert(
                        "resourceVersion".to_string(),
                        json!(if wanted.is_empty() {
                            meta_str(&old, "resourceVersion")
                        } else {
                            wanted
                        }),
                    );
                    self.commit_update(rt, old, result, scope, opts, false)
                }
                None => {
                    {
                        let meta = meta_mut(&mut result);
                        meta.insert("name".to_string(), json!(name));
                        if rt.namespaced {
                            meta.insert("namespace".to_string(), json!(ns));
                        }
                    }
                    self.create(rt, ns, result, opts)
                }
            };
        }
        let old = existing?;
        let mut new = old.clone();
        match kind {
            PatchType::Merge => patch::merge_patch(&mut new, patch_body),
            PatchType::Json => patch::json_patch(&mut new, patch_body)
                .map_err(|e| ApiError::new(422, "Invalid", e))?,
            PatchType::Strategic => {
                if !rt.builtin {
                    return Err(ApiError::unsupported_media_type(
                        "application/strategic-merge-patch+json",
                    ));
                }
                patch::strategic_merge_patch(&mut new, patch_body, rt, &mut Vec::new());
            }
            PatchType::Apply => {}
        }
        self.commit_update(rt, old, new, scope, opts, true)
    }

    /// The shared write path of PUT, PATCH and apply.
    fn commit_update(
        &mut self,
        rt: &ResourceType,
        old: Value,
        mut new: Value,
        scope: Scope,
        opts: &WriteOptions,
        track_update: bool,
    ) -> Result<Value, ApiError> {
        let name = meta_str(&old, "name").to_string();
        let old_rv = meta_str(&old, "resourceVersion").to_string();
        let new_rv = meta_str(&new, "resourceVersion");
        if !new_rv.is_empty() && new_rv != old_rv {
            return Err(ApiError::conflict(rt, &name));
        }
        if scope == Scope::Status && !rt.status_subresource {
            return Err(ApiError::not_found_path());
        }
        if !new.is_object() {
            return Err(ApiError::bad_request("the object must be a JSON object"));
        }
        // Apply the subresource rules: main writes keep the old status,
        // status writes keep everything but status.
        let supplied_managed = new["metadata"].get("managedFields").cloned();
        match scope {
            Scope::Main if rt.status_subresource => match old.get("status") {
                Some(s) => new["status"] = s.clone(),
                None => {
                    if let Value::Object(m) = &mut new {
                        m.remove("status");
                    }
                }
            },
            Scope::Main => {}
            Scope::Status => {
                let status = new.get("status").cloned();
                new = old.clone();
                match status {
                    Some(s) => new["status"] = s,
                    None => {
                        if let Value::Object(m) = &mut new {
                            m.remove("status");
                        }
                    }
                }
                if let Some(mf) = &supplied_managed {
                    meta_mut(&mut new).insert("managedFields".to_string(), mf.clone());
                }
            }
        }
        // Server-owned metadata cannot be changed by a client.
        {
            let old_meta = old["metadata"].as_object().cloned().unwrap_or_default();
            let meta = meta_mut(&mut new);
            for k in [
                "name",
                "namespace",
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
                "resourceVersion",
            ] {
                match old_meta.get(k) {
                    Some(v) => meta.insert(k.to_string(), v.clone()),
                    None => meta.remove(k),
                };
            }
            if !meta.contains_key("managedFields")
                && let Some(mf) = old_meta.get("managedFields")
            {
                meta.insert("managedFields".to_string(), mf.clone());
            }
        }
        new["apiVersion"] = json!(rt.api_version());
        new["kind"] = json!(rt.kind);
        self.validate(rt, &new)?;
        let deleting = old["metadata"].get("deletionTimestamp").is_some();
        let old_fin = finalizers(&old);
        let new_fin = finalizers(&new);
        if deleting && new_fin.iter().any(|f| !old_fin.contains(f)) {
            return Err(ApiError::invalid(
                rt,
                &name,
                "metadata.finalizers",
                "Forbidden: no new finalizers can be added if the object is being deleted",
            ));
        }
        if generation_view(&old, rt) != generation_view(&new, rt) {
            let g = old["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
            meta_mut(&mut new).insert("generation".to_string(), json!(g));
        }
        if Self::is_crd(rt)
            && new["status"]["conditions"]
                .as_array()
                .is_none_or(Vec::is_empty)
        {
            new["status"] = resources::crd_status(&new, &now());
        }
        let user_reset_managed = supplied_managed
            .as_ref()
            .is_some_and(|m| Some(m) != old["metadata"].get("managedFields"));
        if track_update && !user_reset_managed && !opts.manager.is_empty() {
            patch::record_update(Some(&old), &mut new, &opts.manager, scope, rt, &now());
        }
        if let Some(Value::Array(a)) = new["metadata"].get("managedFields")
            && a.is_empty()
        {
            meta_mut(&mut new).remove("managedFields");
        }
        let unchanged = {
            let strip = |v: &Value| {
                let mut v = v.clone();
                if let Some(m) = v["metadata"].as_object_mut() {
                    m.remove("managedFields");
                }
                v
            };
            strip(&old) == strip(&new)
        };
        if unchanged {
            // The real server skips writes that change nothing: no new resourceVersion, no event.
            return Ok(Self::view(rt, &old));
        }
        if opts.dry_run {
            return Ok(Self::view(rt, &new));
        }
        self.rv += 1;
        meta_mut(&mut new).insert("resourceVersion".to_string(), json!(self.rv.to_string()));
        let key = Self::object_key(rt, meta_str(&old, "namespace"), &name);
        let done = deleting && new_fin.is_empty();
        let objects = self.objects.entry(rt.storage_key()).or_default();
        if done {
            objects.remove(&key);
            self.record(rt, EventKind::Deleted, &new, Some(old));
        } else {
            objects.insert(key, new.clone());
            self.record(rt, EventKind::Modified, &new, Some(old));
        }
        if Self::is_crd(rt) {
            self.refresh_crds();
        }
        Ok(Self::view(rt, &new))
    }

    /// DELETE: objects with finalizers get a deletionTimestamp and stay
    /// until an update empties the finalizers.
    pub fn delete(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        preconditions: &Value,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let old = self.stored(rt, ns, name)?;
        if let Some(uid) = preconditions["uid"].as_str()
            && uid != meta_str(&old, "uid")
        {
            return Err(ApiError::new(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {} \"{name}\": Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    rt.qualified(),
                    meta_str(&old, "uid")
                ),
            ));
        }
        if let Some(rv) = preconditions["resourceVersion"].as_str()
            && rv != meta_str(&old, "resourceVersion")
        {
            return Err(ApiError::conflict(rt, name));
        }
        if dry_run {
            return Ok(Self::view(rt, &old));
        }
        let key = Self::object_key(rt, ns, name);
        let mut new = old.clone();
        self.rv += 1;
        meta_mut(&mut new).insert("resourceVersion".to_string(), json!(self.rv.to_string()));
        if !finalizers(&old).is_empty() {
            if old["metadata"].get("deletionTimestamp").is_some() {
                // Already terminating: nothing changes.
                self.rv -= 1;
                return Ok(Self::view(rt, &old));
            }
            let meta = meta_mut(&mut new);
            meta.insert("deletionTimestamp".to_string(), json!(now()));
            meta.insert("deletionGracePeriodSeconds".to_string(), json!(0));
            self.objects
                .entry(rt.storage_key())
                .or_default()
                .insert(key, new.clone());
            self.record(rt, EventKind::Modified, &new, Some(old));
            return Ok(Self::view(rt, &new));
        }
        if let Some(m) = self.objects.get_mut(&rt.storage_key()) {
            m.remove(&key);
        }
        self.record(rt, EventKind::Deleted, &new, Some(old));
        if Self::is_crd(rt) {
            // The real server deletes every custom resource of a deleted CRD.
            let group = new["spec"]["group"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let plural = new["spec"]["names"]["plural"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            self.objects.remove(&(group, plural));
            self.refresh_crds();
        }
        Ok(Self::view(rt, &new))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WIDGET_CRD: &str = r#"{"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {"group": "example.com", "scope": "Namespaced",
          "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wd"]},
          "versions": [{"name": "v1", "served": true, "storage": true, "subresources": {"status": {}},
            "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]}}"#;

    fn opts() -> WriteOptions {
        WriteOptions {
            manager: "test".to_string(),
            ..Default::default()
        }
    }

    fn setup() -> (Store, ResourceType) {
        let mut s = Store::new(100);
        let crd_type = s
            .find("apiextensions.k8s.io", "v1", "customresourcedefinitions")
            .expect("crd type");
        let crd: Value = serde_json::from_str(WIDGET_CRD).expect("json");
        s.create(&crd_type, "", crd, &opts()).expect("crd created");
        let rt = s
            .find("example.com", "v1", "widgets")
            .expect("widgets served");
        (s, rt)
    }

    fn widget(name: &str) -> Value {
        json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": name},
               "spec": {"size": 1}, "status": {"phase": "ignored"}})
    }

    #[test]
    fn generation_bumps_only_on_spec_changes() {
        let (mut s, rt) = setup();
        let w = s
            .create(&rt, "default", widget("w"), &opts())
            .expect("created");
        assert_eq!(w["metadata"]["generation"], json!(1));
        assert!(
            w.get("status").is_none(),
            "create drops status when it is a subresource"
        );
        let labelled = s
            .patch(
                &rt,
                "default",
                "w",
                PatchType::Merge,
                &json!({"metadata": {"labels": {"a": "b"}}}),
                Scope::Main,
                &opts(),
            )
            .expect("label");
        assert_eq!(labelled["metadata"]["generation"], json!(1));
        let status = s
            .patch(
                &rt,
                "default",
                "w",
                PatchType::Merge,
                &json!({"status": {"ready": true}, "spec": {"size": 7}}),
                Scope::Status,
                &opts(),
            )
            .expect("status");
        assert_eq!(
            (
                status["metadata"]["generation"].clone(),
                status["spec"]["size"].clone()
            ),
            (json!(1), json!(1))
        );
        assert_eq!(status["status"]["ready"], json!(true));
        let ignored = s
            .patch(
                &rt,
                "default",
                "w",
                PatchType::Merge,
                &json!({"status": {"ready": false}}),
                Scope::Main,
                &opts(),
            )
            .expect("main patch of status");
        assert_eq!(
            ignored["status"]["ready"],
            json!(true),
            "main writes ignore status"
        );
        assert_eq!(
            ignored["metadata"]["resourceVersion"], status["metadata"]["resourceVersion"],
            "no-op write keeps the version"
        );
        let spec = s
            .patch(
                &rt,
                "default",
                "w",
                PatchType::Merge,
                &json!({"spec": {"size": 2}}),
                Scope::Main,
                &opts(),
            )
            .expect("spec");
        assert_eq!(spec["metadata"]["generation"], json!(2));
    }

    #[test]
    fn stale_resource_version_is_a_conflict() {
        let (mut s, rt) = setup();
        let w = s
            .create(&rt, "default", widget("w"), &opts())
            .expect("created");
        let mut first = w.clone();
        first["spec"]["size"] = json!(2);
        s.update(&rt, "default", "w", first, Scope::Main, &opts())
            .expect("first update");
        let mut stale = w.clone();
        stale["spec"]["size"] = json!(3);
        let err = s
            .update(&rt, "default", "w", stale, Scope::Main, &opts())
            .expect_err("stale");
        assert_eq!((err.code, err.reason), (409, "Conflict"));
        assert_eq!(
            err.message,
            "Operation cannot be fulfilled on widgets.example.com \"w\": the object has been modified; \
             please apply your changes to the latest version and try again"
        );
        let dup = s
            .create(&rt, "default", widget("w"), &opts())
            .expect_err("duplicate");
        assert_eq!(
            (dup.code, dup.reason, dup.message.as_str()),
            (
                409,
                "AlreadyExists",
                "widgets.example.com \"w\" already exists"
            )
        );
        let missing = s.get(&rt, "default", "nope").expect_err("missing");
        assert_eq!(
            missing.to_status()["details"],
            json!({"name": "nope", "group": "example.com", "kind": "widgets"})
        );
    }

    #[test]
    fn finalizers_hold_deletion_until_removed() {
        let (mut s, rt) = setup();
        let mut w = widget("w");
        w["metadata"]["finalizers"] = json!(["example.com/cleanup"]);
        s.create(&rt, "default", w, &opts()).expect("created");
        let deleting = s
            .delete(&rt, "default", "w", &Value::Null, false)
            .expect("delete");
        assert!(deleting["metadata"]["deletionTimestamp"].is_string());
        assert!(
            s.get(&rt, "default", "w").is_ok(),
            "still there while finalized"
        );
        let err = s
            .patch(
                &rt,
                "default",
                "w",
                PatchType::Merge,
                &json!({"metadata": {"finalizers": ["a", "example.com/cleanup"]}}),
                Scope::Main,
                &opts(),
            )
            .expect_err("no new finalizers");
        assert_eq!(err.code, 422);
        let since = s.rv;
        s.patch(
            &rt,
            "default",
            "w",
            PatchType::Json,
            &json!([{"op": "remove", "path": "/metadata/finalizers"}]),
            Scope::Main,
            &opts(),
        )
        .expect("finalizer removed");
        assert_eq!(s.get(&rt, "default", "w").expect_err("gone").code, 404);
        let events = s.events_since(&rt.storage_key(), since).expect("events");
        assert_eq!(
            events.iter().map(|e| e.kind).collect::<Vec<_>>(),
            vec![EventKind::Deleted]
        );
    }

    #[test]
    fn exact_lists_and_expired_history() {
        let (mut s, rt) = setup();
        s.create(&rt, "default", widget("a"), &opts()).expect("a");
        let at = s.rv;
        s.create(&rt, "default", widget("b"), &opts()).expect("b");
        s.delete(&rt, "default", "a", &Value::Null, false)
            .expect("delete a");
        let exact = ListOptions {
            resource_version: Some(at.to_string()),
            exact: true,
            ..Default::default()
        };
        let names = |r: &ListResult| {
            r.items
                .iter()
                .map(|o| meta_str(o, "name").to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(&s.list(&rt, Some("default"), &exact).expect("exact")),
            vec!["a"]
        );
        assert_eq!(
            names(&s.list(&rt, None, &ListOptions::default()).expect("now")),
            vec!["b"]
        );
        let paged = s
            .list(
                &rt,
                None,
                &ListOptions {
                    limit: 1,
                    ..Default::default()
                },
            )
            .expect("page");
        assert_eq!(paged.items.len(), 1);
        s.expire_history();
        assert_eq!(s.list(&rt, None, &exact).err().map(|e| e.code), Some(410));
        assert_eq!(
            s.events_since(&rt.storage_key(), at).err().map(|e| e.code),
            Some(410)
        );
        assert!(
            s.events_since(&rt.storage_key(), s.rv).is_ok(),
            "the current version stays watchable"
        );
    }
}
