//! Patch semantics: JSON merge patch (RFC 7386), JSON patch (RFC 6902),
//! strategic merge patch (the subset kubectl uses) and server-side apply
//! with per-manager field ownership recorded in `metadata.managedFields`.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

use crate::resources::ResourceType;

/// RFC 7386: objects merge recursively, `null` deletes, anything else replaces.
pub(crate) fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(t) = target {
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

fn pointer_parts(ptr: &str) -> Result<Vec<String>, String> {
    if ptr.is_empty() {
        return Ok(Vec::new());
    }
    let rest = ptr
        .strip_prefix('/')
        .ok_or_else(|| format!("invalid JSON pointer {ptr:?}"))?;
    Ok(rest.split('/').map(unescape).collect())
}

/// Inserts (`replace == false`) or replaces the value at `ptr`.
fn pointer_put(doc: &mut Value, ptr: &str, value: Value, replace: bool) -> Result<(), String> {
    let mut parts = pointer_parts(ptr)?;
    let Some(last) = parts.pop() else {
        *doc = value;
        return Ok(());
    };
    let parent = parts
        .iter()
        .try_fold(doc, |cur, p| match cur {
            Value::Object(m) => m.get_mut(p),
            Value::Array(a) => p.parse::<usize>().ok().and_then(|i| a.get_mut(i)),
            _ => None,
        })
        .ok_or_else(|| format!("doc is missing path: {ptr:?}"))?;
    match parent {
        Value::Object(m) => {
            if replace && !m.contains_key(&last) {
                return Err(format!("doc is missing key: {ptr:?}"));
            }
            m.insert(last, value);
        }
        Value::Array(a) => {
            let idx = if last == "-" && !replace {
                a.len()
            } else {
                last.parse::<usize>()
                    .map_err(|_| format!("invalid array index {last:?}"))?
            };
            if replace {
                let slot = a
                    .get_mut(idx)
                    .ok_or_else(|| format!("index out of range: {ptr:?}"))?;
                *slot = value;
            } else if idx <= a.len() {
                a.insert(idx, value);
            } else {
                return Err(format!("index out of range: {ptr:?}"));
            }
        }
        _ => return Err(format!("doc is missing path: {ptr:?}")),
    }
    Ok(())
}

fn pointer_remove(doc: &mut Value, ptr: &str) -> Result<Value, String> {
    let mut parts = pointer_parts(ptr)?;
    let last = parts.pop().ok_or("cannot remove the document root")?;
    let mut cur = doc;
    for p in &parts {
        cur = match cur {
            Value::Object(m) => m.get_mut(p),
            Value::Array(a) => p.parse::<usize>().ok().and_then(|i| a.get_mut(i)),
            _ => None,
        }
        .ok_or_else(|| format!("doc is missing path: {ptr:?}"))?;
    }
    match cur {
        Value::Object(m) => m
            .remove(&last)
            .ok_or_else(|| format!("doc is missing key: {ptr:?}")),
        Value::Array(a) => {
            let i = last
                .parse::<usize>()
                .map_err(|_| format!("invalid array index {last:?}"))?;
            if i < a.len() {
                Ok(a.remove(i))
            } else {
                Err(format!("index out of range: {ptr:?}"))
            }
        }
        _ => Err(format!("doc is missing path: {ptr:?}")),
    }
}

/// RFC 6902. The error text is what the caller reports in a 422.
pub(crate) fn json_patch(doc: &mut Value, ops: &Value) -> Result<(), String> {
    let ops = ops
        .as_array()
        .ok_or("a JSON patch must be an array of operations")?;
    for op in ops {
        let path = op["path"].as_str().ok_or("operation is missing \"path\"")?;
        let value = || {
            op.get("value")
                .cloned()
                .ok_or_else(|| format!("operation on {path:?} is missing \"value\""))
        };
        match op["op"].as_str().unwrap_or_default() {
            "add" => pointer_put(doc, path, value()?, false)?,
            "replace" => pointer_put(doc, path, value()?, true)?,
            "remove" => {
                pointer_remove(doc, path)?;
            }
            "move" => {
                let from = op["from"].as_str().ok_or("move is missing \"from\"")?;
                let v = pointer_remove(doc, from)?;
                pointer_put(doc, path, v, false)?;
            }
            "copy" => {
                let from = op["from"].as_str().ok_or("copy is missing \"from\"")?;
                let v = doc
                    .pointer(from)
                    .cloned()
                    .ok_or_else(|| format!("doc is missing path: {from:?}"))?;
                pointer_put(doc, path, v, false)?;
            }
            "test" => {
                let want = value()?;
                // As the real server's json-patch library does, a missing
                // member tests equal to null (kube-runtime's finalizer()
                // relies on it when adding the first finalizer).
                let got = doc.pointer(path).unwrap_or(&Value::Null);
                if *got != want {
                    return Err(format!("testing value {path} failed"));
                }
            }
            other => return Err(format!("Unexpected kind: {other}")),
        }
    }
    Ok(())
}

/// Primitive lists that strategic merge patch unions instead of replacing.
const MERGED_PRIMITIVE_LISTS: &[&str] = &["finalizers"];

fn key_matches(a: &Value, b: &Value, keys: &[String]) -> bool {
    keys.iter()
        .all(|k| a.get(k).is_some() && a.get(k) == b.get(k))
}

/// Strips `$patch` / `$retainKeys` / `$setElementOrder` directives.
fn without_directives(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), without_directives(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(without_directives).collect()),
        other => other.clone(),
    }
}

/// Strategic merge patch as kubectl label/annotate/apply/patch produce it:
/// maps merge, lists with a known merge key merge by key, `$patch`,
/// `$retainKeys`, `$deleteFromPrimitiveList/` and `$setElementOrder/`
/// directives are honoured; other lists are replaced.
pub(crate) fn strategic_merge_patch(
    target: &mut Value,
    patch: &Value,
    rt: &ResourceType,
    path: &mut Vec<String>,
) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    match p.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            *target = without_directives(patch);
            return;
        }
        Some("delete") => {
            *target = Value::Object(Map::new());
            return;
        }
        _ => {}
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(t) = target else { return };
    if let Some(retain) = p.get("$retainKeys").and_then(Value::as_array) {
        let keep: BTreeSet<&str> = retain.iter().filter_map(Value::as_str).collect();
        t.retain(|k, _| keep.contains(k.as_str()));
    }
    for (k, v) in p {
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Some(drop)) = (t.get_mut(field), v.as_array()) {
                list.retain(|x| !drop.contains(x));
            }
            continue;
        }
        if k.starts_with('$') {
            continue;
        }
        if v.is_null() {
            t.remove(k);
            continue;
        }
        path.push(k.clone());
        let cur = t.entry(k.clone()).or_insert(Value::Null);
        match (cur, v) {
            (cur @ Value::Object(_), Value::Object(_)) => strategic_merge_patch(cur, v, rt, path),
            (Value::Array(cur), Value::Array(items)) => {
                if let Some(keys) = rt.list_map_keys(path) {
                    let keys = keys.to_vec();
                    for item in items {
                        let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
                        match cur.iter().position(|c| key_matches(c, item, &keys)) {
                            Some(i) if delete => {
                                cur.remove(i);
                            }
                            Some(i) => strategic_merge_patch(&mut cur[i], item, rt, path),
                            None if delete => {}
                            None => cur.push(without_directives(item)),
                        }
                    }
                } else if MERGED_PRIMITIVE_LISTS.contains(&k.as_str()) {
                    for item in items {
                        if !cur.contains(item) {
                            cur.push(item.clone());
                        }
                    }
                } else {
                    *cur = items.iter().map(without_directives).collect();
                }
            }
            (cur, v) => *cur = without_directives(v),
        }
        path.pop();
    }
}

// ---- field ownership (managedFields, FieldsV1) ----

/// One step of a field path: `f:name`, `k:{"type":"Ready"}` or `v:"x"`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum PathElem {
    Field(String),
    Key(String),
    Value(String),
}

pub(crate) type FieldPath = Vec<PathElem>;
pub(crate) type FieldSet = BTreeSet<FieldPath>;

/// Canonical `{"k1":v1,"k2":v2}` with sorted keys, as FieldsV1 spells it.
fn key_string(item: &Value, keys: &[String]) -> String {
    let sorted: BTreeMap<&str, &Value> = keys
        .iter()
        .filter_map(|k| Some((k.as_str(), item.get(k)?)))
        .collect();
    let parts: Vec<String> = sorted
        .iter()
        .map(|(k, v)| format!("{}:{}", json!(k), v))
        .collect();
    format!("{{{}}}", parts.join(","))
}

/// Fields the server owns itself and never records for a manager.
fn is_system_field(path: &[String]) -> bool {
    match path {
        [f] => f == "apiVersion" || f == "kind",
        [m, f] if m == "metadata" => matches!(
            f.as_str(),
            "name"
                | "namespace"
                | "uid"
                | "resourceVersion"
                | "generation"
                | "creationTimestamp"
                | "deletionTimestamp"
                | "deletionGracePeriodSeconds"
                | "managedFields"
                | "selfLink"
                | "generateName"
        ),
        _ => false,
    }
}

/// The fields `v` sets: leaves, plus every element of a keyed list.
pub(crate) fn fields_of(v: &Value, rt: &ResourceType) -> FieldSet {
    let mut out = FieldSet::new();
    walk_fields(v, rt, &mut Vec::new(), &mut Vec::new(), &mut out);
    out
}

fn walk_fields(
    v: &Value,
    rt: &ResourceType,
    names: &mut Vec<String>,
    path: &mut FieldPath,
    out: &mut FieldSet,
) {
    let Value::Object(m) = v else { return };
    for (k, child) in m {
        names.push(k.clone());
        if !is_system_field(names) {
            path.push(PathElem::Field(k.clone()));
            match child {
                Value::Object(cm) if !cm.is_empty() => walk_fields(child, rt, names, path, out),
                Value::Array(items)
                    if rt.list_map_keys(names).is_some() && items.iter().all(Value::is_object) =>
                {
                    let keys = rt
                        .list_map_keys(names)
                        .map(<[String]>::to_vec)
                        .unwrap_or_default();
                    for item in items {
                        path.push(PathElem::Key(key_string(item, &keys)));
                        out.insert(path.clone());
                        walk_fields(item, rt, names, path, out);
                        path.pop();
                    }
                }
                _ => {
                    out.insert(path.clone());
                }
            }
            path.pop();
        }
        names.pop();
    }
}

fn elem_matches(item: &Value, key: &str) -> bool {
    let Ok(Value::Object(want)) = serde_json::from_str::<Value>(key) else {
        return false;
    };
    want.iter().all(|(k, v)| item.get(k) == Some(v))
}

pub(crate) fn get_path<'a>(v: &'a Value, path: &[PathElem]) -> Option<&'a Value> {
    path.iter().try_fold(v, |cur, e| match e {
        PathElem::Field(f) => cur.get(f),
        PathElem::Key(k) => cur.as_array()?.iter().find(|i| elem_matches(i, k)),
        PathElem::Value(s) => {
            let want: Value = serde_json::from_str(s).ok()?;
            cur.as_array()?.iter().find(|i| **i == want)
        }
    })
}

fn get_path_mut<'a>(v: &'a mut Value, path: &[PathElem]) -> Option<&'a mut Value> {
    path.iter().try_fold(v, |cur, e| match e {
        PathElem::Field(f) => cur.get_mut(f),
        PathElem::Key(k) => cur.as_array_mut()?.iter_mut().find(|i| elem_matches(i, k)),
        PathElem::Value(s) => {
            let want: Value = serde_json::from_str(s).ok()?;
            cur.as_array_mut()?.iter_mut().find(|i| **i == want)
        }
    })
}

fn remove_path(v: &mut Value, path: &[PathElem]) {
    let Some((last, parent)) = path.split_last() else {
        return;
    };
    let Some(parent) = get_path_mut(v, parent) else {
        return;
    };
    match (last, parent) {
        (PathElem::Field(f), Value::Object(m)) => {
            m.remove(f);
        }
        (PathElem::Key(k), Value::Array(a)) => a.retain(|i| !elem_matches(i, k)),
        (PathElem::Value(s), Value::Array(a)) => {
            if let Ok(want) = serde_json::from_str::<Value>(s) {
                a.retain(|i| *i != want);
            }
        }
        _ => {}
    }
}

fn elem_string(e: &PathElem) -> String {
    match e {
        PathElem::Field(f) => format!("f:{f}"),
        PathElem::Key(k) => format!("k:{k}"),
        PathElem::Value(v) => format!("v:{v}"),
    }
}

/// FieldSet → FieldsV1 JSON (`{"f:spec":{"f:replicas":{}}}`).
pub(crate) fn encode_fields(set: &FieldSet) -> Value {
    let mut root = Map::new();
    for path in set {
        let mut node = &mut root;
        for e in path {
            let entry = node.entry(elem_string(e)).or_insert_with(|| json!({}));
            let Value::Object(next) = entry else { break };
            node = next;
        }
    }
    // A member that also has members below it is marked with ".".
    for path in set {
        let mut node = Some(&mut root);
        for e in path {
            node = node
                .and_then(|n| n.get_mut(&elem_string(e)))
                .and_then(Value::as_object_mut);
        }
        if let Some(n) = node.filter(|n| !n.is_empty() && !n.contains_key(".")) {
            n.insert(".".to_string(), json!({}));
        }
    }
    Value::Object(root)
}

/// FieldsV1 JSON → FieldSet.
pub(crate) fn decode_fields(v: &Value) -> FieldSet {
    fn walk(v: &Value, path: &mut FieldPath, out: &mut FieldSet) {
        let Value::Object(m) = v else { return };
        for (k, child) in m {
            if k == "." {
                out.insert(path.clone());
                continue;
            }
            let elem = if let Some(f) = k.strip_prefix("f:") {
                PathElem::Field(f.to_string())
            } else if let Some(key) = k.strip_prefix("k:") {
                PathElem::Key(key.to_string())
            } else if let Some(val) = k.strip_prefix("v:") {
                PathElem::Value(val.to_string())
            } else {
                continue;
            };
            path.push(elem);
            if child.as_object().is_some_and(Map::is_empty) {
                out.insert(path.clone());
            } else {
                walk(child, path, out);
            }
            path.pop();
        }
    }
    let mut out = FieldSet::new();
    walk(v, &mut Vec::new(), &mut out);
    out
}

/// One `managedFields` entry.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Manager {
    pub manager: String,
    pub operation: String,
    pub subresource: String,
    pub api_version: String,
    pub time: String,
    pub fields: FieldSet,
}

impl Manager {
    fn same_slot(&self, manager: &str, operation: &str, subresource: &str) -> bool {
        self.manager == manager && self.operation == operation && self.subresource == subresource
    }
}

pub(crate) fn read_managers(obj: &Value) -> Vec<Manager> {
    obj["metadata"]["managedFields"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|m| Manager {
                    manager: m["manager"].as_str().unwrap_or_default().to_string(),
                    operation: m["operation"].as_str().unwrap_or_default().to_string(),
                    subresource: m["subresource"].as_str().unwrap_or_default().to_string(),
                    api_version: m["apiVersion"].as_str().unwrap_or_default().to_string(),
                    time: m["time"].as_str().unwrap_or_default().to_string(),
                    fields: decode_fields(&m["fieldsV1"]),
                })
                .collect()
        })
        .unwrap_or_default()
}

pub(crate) fn write_managers(obj: &mut Value, managers: &[Manager]) {
    let entries: Vec<Value> = managers
        .iter()
        .filter(|m| !m.fields.is_empty())
        .map(|m| {
            let mut e = json!({
                "manager": m.manager,
                "operation": m.operation,
                "apiVersion": m.api_version,
                "time": m.time,
                "fieldsType": "FieldsV1",
                "fieldsV1": encode_fields(&m.fields),
            });
            if !m.subresource.is_empty() {
                e["subresource"] = json!(m.subresource);
            }
            e
        })
        .collect();
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        if entries.is_empty() {
            meta.remove("managedFields");
        } else {
            meta.insert("managedFields".to_string(), Value::Array(entries));
        }
    }
}

fn is_prefix(prefix: &[PathElem], path: &[PathElem]) -> bool {
    path.len() >= prefix.len() && path[..prefix.len()] == *prefix
}

/// Which part of an object a write may touch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scope {
    /// The main resource; `.status` is ignored when a status subresource exists.
    Main,
    /// The `/status` subresource: only `.status` is taken.
    Status,
}

impl Scope {
    pub fn subresource(self) -> &'static str {
        match self {
            Scope::Main => "",
            Scope::Status => "status",
        }
    }
}

/// Drops what a write to `scope` may not change (the real strategies do the same).
pub(crate) fn restrict_to_scope(obj: &mut Value, scope: Scope, rt: &ResourceType) {
    let Value::Object(m) = obj else { return };
    match scope {
        Scope::Main if rt.status_subresource => {
            m.remove("status");
        }
        Scope::Main => {}
        Scope::Status => {
            m.retain(|k, _| matches!(k.as_str(), "apiVersion" | "kind" | "metadata" | "status"));
            if let Some(Value::Object(meta)) = m.get_mut("metadata") {
                meta.retain(|k, _| matches!(k.as_str(), "name" | "namespace" | "resourceVersion"));
            }
        }
    }
}

fn merge_applied(live: &mut Value, applied: &Value, rt: &ResourceType, names: &mut Vec<String>) {
    let (Value::Object(l), Value::Object(a)) = (&mut *live, applied) else {
        *live = applied.clone();
        return;
    };
    for (k, av) in a {
        if av.is_null() {
            l.remove(k);
            continue;
        }
        names.push(k.clone());
        match l.get_mut(k) {
            Some(lv @ Value::Object(_)) if av.is_object() => merge_applied(lv, av, rt, names),
            Some(Value::Array(litems)) if av.is_array() && rt.list_map_keys(names).is_some() => {
                let keys = rt
                    .list_map_keys(names)
                    .map(<[String]>::to_vec)
                    .unwrap_or_default();
                for ai in av.as_array().map(Vec::as_slice).unwrap_or_default() {
                    match litems.iter_mut().find(|li| key_matches(li, ai, &keys)) {
                        Some(li) => merge_applied(li, ai, rt, names),
                        None => litems.push(ai.clone()),
                    }
                }
            }
            Some(lv) => *lv = av.clone(),
            None => {
                l.insert(k.clone(), av.clone());
            }
        }
        names.pop();
    }
}

/// A server-side apply that touched fields another manager owns.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ApplyConflicts(pub Vec<(String, String)>);

impl ApplyConflicts {
    pub fn message(&self) -> String {
        let n = self.0.len();
        let list: Vec<String> = self
            .0
            .iter()
            .map(|(m, f)| format!("conflict with \"{m}\": {f}"))
            .collect();
        format!(
            "Apply failed with {n} conflict{}: {}",
            if n == 1 { "" } else { "s" },
            list.join("\n")
        )
    }
}

pub(crate) fn path_string(path: &[PathElem]) -> String {
    path.iter()
        .map(|e| match e {
            PathElem::Field(f) => format!(".{f}"),
            PathElem::Key(k) => format!("[{k}]"),
            PathElem::Value(v) => format!("[={v}]"),
        })
        .collect()
}

/// Removes `path` unless another manager still owns it or something below
/// it, then drops parent maps the removal left empty and nobody owns.
fn remove_unowned(obj: &mut Value, path: &[PathElem], others: &FieldSet) {
    if others.iter().any(|o| is_prefix(path, o)) {
        return;
    }
    remove_path(obj, path);
    let mut parent = path.to_vec();
    while parent.pop().is_some() && !parent.is_empty() {
        let empty = get_path(obj, &parent)
            .and_then(Value::as_object)
            .is_some_and(Map::is_empty);
        if !empty || others.contains(&parent) {
            break;
        }
        remove_path(obj, &parent);
    }
}

/// Server-side apply of `applied` by `manager` onto `live` (None: create).
/// Returns the new object with updated managedFields.
pub(crate) fn server_side_apply(
    live: Option<&Value>,
    applied: &Value,
    manager: &str,
    force: bool,
    scope: Scope,
    rt: &ResourceType,
    now: &str,
) -> Result<Value, ApplyConflicts> {
    let mut applied = applied.clone();
    restrict_to_scope(&mut applied, scope, rt);
    let new_set = fields_of(&applied, rt);
    let base = live.cloned().unwrap_or_else(|| json!({}));
    let mut managers = read_managers(&base);
    let sub = scope.subresource();

    let mut conflicts = Vec::new();
    for m in managers
        .iter_mut()
        .filter(|m| !m.same_slot(manager, "Apply", sub))
    {
        let contested: Vec<FieldPath> = m
            .fields
            .intersection(&new_set)
            .filter(|p| !matches!(p.last(), Some(PathElem::Key(_))))
            .filter(|p| get_path(&base, p) != get_path(&applied, p))
            .cloned()
            .collect();
        if force {
            for p in &contested {
                m.fields.remove(p);
            }
        } else {
            conflicts.extend(
                contested
                    .iter()
                    .map(|p| (m.manager.clone(), path_string(p))),
            );
        }
    }
    if !conflicts.is_empty() {
        return Err(ApplyConflicts(conflicts));
    }

    let mut merged = base.clone();
    merge_applied(&mut merged, &applied, rt, &mut Vec::new());

    let old_set = managers
        .iter()
        .find(|m| m.same_slot(manager, "Apply", sub))
        .map(|m| m.fields.clone())
        .unwrap_or_default();
    let others: FieldSet = managers
        .iter()
        .filter(|m| !m.same_slot(manager, "Apply", sub))
        .flat_map(|m| m.fields.iter().cloned())
        .collect();
    let mut removed: Vec<&FieldPath> = old_set.difference(&new_set).collect();
    // Ancestors first: a keyed list element is found by its key fields.
    removed.sort_by_key(|p| p.len());
    for p in removed {
        remove_unowned(&mut merged, p, &others);
    }

    managers.retain(|m| !m.same_slot(manager, "Apply", sub));
    managers.push(Manager {
        manager: manager.to_string(),
        operation: "Apply".to_string(),
        subresource: sub.to_string(),
        api_version: rt.api_version(),
        time: now.to_string(),
        fields: new_set,
    });
    if !merged["metadata"].is_object() {
        merged["metadata"] = json!({});
    }
    write_managers(&mut merged, &managers);
    Ok(merged)
}

/// Records a non-apply write (create, update, patch) by `manager`: the
/// fields it changed become its own and leave every other manager.
pub(crate) fn record_update(
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    scope: Scope,
    rt: &ResourceType,
    now: &str,
) {
    let empty = json!({});
    let old_v = old.unwrap_or(&empty);
    let mut managers = read_managers(old_v);
    let old_fields = fields_of(old_v, rt);
    let new_fields = fields_of(new, rt);
    let changed: FieldSet = new_fields
        .iter()
        .filter(|p| get_path(old_v, p) != get_path(new, p) || !old_fields.contains(*p))
        .cloned()
        .collect();
    let gone: Vec<&FieldPath> = old_fields
        .iter()
        .filter(|p| get_path(new, p).is_none())
        .collect();
    if changed.is_empty() && gone.is_empty() {
        write_managers(new, &managers);
        return;
    }
    let sub = scope.subresource();
    for m in &mut managers {
        m.fields
            .retain(|p| !changed.contains(p) && !gone.iter().any(|g| is_prefix(g, p)));
    }
    match managers
        .iter_mut()
        .find(|m| m.same_slot(manager, "Update", sub))
    {
        Some(m) => {
            m.fields.extend(changed);
            m.time = now.to_string();
            m.api_version = rt.api_version();
        }
        None => managers.push(Manager {
            manager: manager.to_string(),
            operation: "Update".to_string(),
            subresource: sub.to_string(),
            api_version: rt.api_version(),
            time: now.to_string(),
            fields: changed,
        }),
    }
    write_managers(new, &managers);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn widget_type() -> ResourceType {
        let crd = json!({"spec": {"group": "example.com", "scope": "Namespaced",
            "names": {"plural": "widgets", "kind": "Widget"},
            "versions": [{"name": "v1", "served": true, "storage": true, "subresources": {"status": {}},
              "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                "spec": {"type": "object", "properties": {"ports": {"type": "array",
                   "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["port"],
                   "items": {"type": "object"}}}}}}}}]}});
        crate::resources::crd_types(&crd).remove(0)
    }

    fn pods() -> ResourceType {
        crate::resources::builtin_types()
            .into_iter()
            .find(|r| r.plural == "pods")
            .expect("pods")
    }

    #[test]
    fn merge_patch_merges_maps_and_deletes_nulls() {
        let mut doc = json!({"a": {"b": 1, "c": 2}, "l": [1, 2], "x": 1});
        merge_patch(
            &mut doc,
            &json!({"a": {"b": null, "d": 4}, "l": [3], "x": null}),
        );
        assert_eq!(doc, json!({"a": {"c": 2, "d": 4}, "l": [3]}));
    }

    #[test]
    fn json_patch_ops_and_failed_test() {
        let mut doc = json!({"metadata": {"labels": {"a/b": "1"}}, "list": [1, 2]});
        json_patch(
            &mut doc,
            &json!([
                {"op": "add", "path": "/list/-", "value": 3},
                {"op": "replace", "path": "/metadata/labels/a~1b", "value": "2"},
                {"op": "copy", "from": "/list/0", "path": "/first"},
                {"op": "move", "from": "/first", "path": "/moved"},
                {"op": "remove", "path": "/list/1"},
                {"op": "test", "path": "/moved", "value": 1},
            ]),
        )
        .expect("applies");
        assert_eq!(
            doc,
            json!({"metadata": {"labels": {"a/b": "2"}}, "list": [1, 3], "moved": 1})
        );
        let err = json_patch(
            &mut doc,
            &json!([{"op": "test", "path": "/moved", "value": 2}]),
        )
        .expect_err("test op fails");
        assert_eq!(err, "testing value /moved failed");
        assert!(
            json_patch(
                &mut doc,
                &json!([{"op": "replace", "path": "/nope", "value": 1}])
            )
            .is_err()
        );
    }

    #[test]
    fn strategic_merge_by_key_and_directives() {
        let mut pod = json!({"metadata": {"labels": {"a": "1"}, "finalizers": ["x"]},
            "spec": {"containers": [{"name": "c1", "image": "old"}, {"name": "c2", "image": "keep"}],
                     "tolerations": [{"key": "t1"}]}});
        strategic_merge_patch(
            &mut pod,
            &json!({"metadata": {"labels": {"b": "2", "a": null}, "finalizers": ["y"]},
                "spec": {"$setElementOrder/containers": [{"name": "c1"}],
                         "containers": [{"name": "c1", "image": "new"}, {"name": "c2", "$patch": "delete"}],
                         "tolerations": [{"key": "t2"}]}}),
            &pods(),
            &mut Vec::new(),
        );
        assert_eq!(
            pod,
            json!({"metadata": {"labels": {"b": "2"}, "finalizers": ["x", "y"]},
                "spec": {"containers": [{"name": "c1", "image": "new"}], "tolerations": [{"key": "t2"}]}})
        );
    }

    #[test]
    fn fields_v1_round_trips() {
        let rt = widget_type();
        let obj = json!({"apiVersion": "example.com/v1", "kind": "Widget",
            "metadata": {"name": "w", "labels": {"a": "1"}},
            "spec": {"size": 1, "ports": [{"port": 80, "name": "http"}]}});
        let set = fields_of(&obj, &rt);
        let encoded = encode_fields(&set);
        assert_eq!(
            encoded,
            json!({"f:metadata": {"f:labels": {"f:a": {}}},
                   "f:spec": {"f:size": {}, "f:ports": {"k:{\"port\":80}": {".": {}, "f:port": {}, "f:name": {}}}}})
        );
        assert_eq!(decode_fields(&encoded), set);
    }

    #[test]
    fn apply_merges_removes_own_fields_and_detects_conflicts() {
        let rt = widget_type();
        let first = json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"},
            "spec": {"size": 1, "color": "red", "ports": [{"port": 80}, {"port": 81}]}, "status": {"x": 1}});
        let created = server_side_apply(None, &first, "alice", false, Scope::Main, &rt, "t0")
            .expect("creates");
        assert_eq!(created["spec"], first["spec"]);
        assert!(
            created.get("status").is_none(),
            "status is ignored on the main resource"
        );

        // Another manager sets a field of its own; an update takes over `size`.
        let mut live = created.clone();
        live["spec"]["owner"] = json!("bob");
        live["spec"]["size"] = json!(5);
        record_update(Some(&created), &mut live, "bob", Scope::Main, &rt, "t1");

        // alice drops `color` and port 81: gone. `size` is no longer hers,
        // so omitting it keeps bob's value.
        let second = json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"},
            "spec": {"ports": [{"port": 80, "name": "http"}]}});
        let out = server_side_apply(Some(&live), &second, "alice", false, Scope::Main, &rt, "t2")
            .expect("applies");
        assert_eq!(
            out["spec"],
            json!({"size": 5, "owner": "bob", "ports": [{"port": 80, "name": "http"}]})
        );

        // alice now wants size 2 while bob owns it: conflict unless forced.
        let third = json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"},
            "spec": {"size": 2, "ports": [{"port": 80, "name": "http"}]}});
        let err = server_side_apply(Some(&out), &third, "alice", false, Scope::Main, &rt, "t3")
            .expect_err("conflicts");
        assert_eq!(
            err.message(),
            "Apply failed with 1 conflict: conflict with \"bob\": .spec.size"
        );
        let forced = server_side_apply(Some(&out), &third, "alice", true, Scope::Main, &rt, "t3")
            .expect("forced");
        assert_eq!(forced["spec"]["size"], json!(2));
        let bob = read_managers(&forced)
            .into_iter()
            .find(|m| m.manager == "bob")
            .expect("bob");
        assert!(!bob.fields.iter().any(|p| path_string(p) == ".spec.size"));
    }

    #[test]
    fn status_apply_touches_only_status() {
        let rt = widget_type();
        let live = json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {"size": 1}});
        let applied = json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w", "labels": {"x": "y"}},
            "spec": {"size": 9}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}});
        let out = server_side_apply(Some(&live), &applied, "op", true, Scope::Status, &rt, "t")
            .expect("applies");
        assert_eq!(out["spec"], json!({"size": 1}));
        assert!(out["metadata"].get("labels").is_none());
        assert_eq!(out["status"]["conditions"][0]["status"], json!("True"));
        assert_eq!(
            out["metadata"]["managedFields"][0]["subresource"],
            json!("status")
        );
    }
}
