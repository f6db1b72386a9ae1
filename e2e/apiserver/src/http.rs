//! The HTTP surface: discovery, OpenAPI stubs, CRUD, PATCH, list and watch.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode, header};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

use crate::Options;
use crate::patch::Scope;
use crate::resources::ResourceType;
use crate::selector::{FieldSelector, LabelSelector};
use crate::status::ApiError;
use crate::store::{EventKind, ListOptions, PatchType, Store, WriteOptions};
use crate::table::{self, IncludeObject};

/// Largest request body accepted.
const MAX_BODY: usize = 64 << 20;

pub(crate) struct Shared {
    pub store: Mutex<Store>,
    /// Carries the latest resourceVersion; watches wake on every change.
    pub changed: watch::Sender<u64>,
    pub shutdown: watch::Sender<bool>,
    pub options: Options,
    /// Every resource request, when `options.audit` is on.
    pub audit: Mutex<Vec<AuditRecord>>,
}

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, Store> {
        // A panic while holding the lock leaves a consistent map; keep serving.
        self.store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn notify(&self, store: &Store) {
        self.changed.send_replace(store.rv);
    }

    pub fn audit_log(&self) -> MutexGuard<'_, Vec<AuditRecord>> {
        self.audit
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// One resource request with the attributes Kubernetes authorization
/// decides on (what an RBAC rule matches), as the real API server derives
/// them from the request (`RequestInfo`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AuditRecord {
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete` or
    /// `deletecollection`.
    pub verb: String,
    /// The API group; "" is the core group.
    pub group: String,
    pub version: String,
    /// The plural resource name (`datasets`).
    pub resource: String,
    /// "" for the resource itself, else its subresource (`status`).
    pub subresource: String,
    /// "" for cluster-scoped requests and those across all namespaces.
    pub namespace: String,
    /// The object's name; "" where the request names none (create, and
    /// list/watch/deletecollection without a `metadata.name=` field
    /// selector), which is why RBAC `resourceNames` cannot limit those.
    pub name: String,
    /// Who the request says it is: its `Impersonate-User` header (a
    /// kubeconfig's `as:`). The stand-in authenticates nobody.
    pub user: Option<String>,
    pub user_agent: Option<String>,
    /// The HTTP status of the answer (a watch: of its start).
    pub code: u16,
}

impl AuditRecord {
    /// `resource` or `resource/subresource`, as RBAC rules name it.
    pub fn rbac_resource(&self) -> String {
        if self.subresource.is_empty() {
            self.resource.clone()
        } else {
            format!("{}/{}", self.resource, self.subresource)
        }
    }
}

/// The authorization attributes of a request for `rest` (the path after
/// `/api/v1` or `/apis/<group>/<version>`), as the API server's
/// `RequestInfoFactory` derives them: `namespaces/<ns>/<resource>/<name>/
/// <subresource>` or `<resource>/<name>/<subresource>`; a GET without a
/// name is `list`, or `watch` with `?watch=true`.
fn request_attributes(
    method: &Method,
    group: &str,
    version: &str,
    rest: &[&str],
    q: &HashMap<String, String>,
    headers: &HeaderMap,
) -> AuditRecord {
    let mut parts = rest;
    let mut namespace = "";
    if let ["namespaces", ns, tail @ ..] = parts {
        namespace = ns;
        // `namespaces/<ns>/status|finalize` are the Namespace's own subresources.
        if !matches!(tail, [] | ["status" | "finalize", ..]) {
            parts = tail;
        }
    }
    let part = |i: usize| parts.get(i).copied().unwrap_or_default().to_string();
    let mut name = part(1);
    let verb = match method.as_str() {
        "GET" | "HEAD" if name.is_empty() && truthy(q, "watch") => "watch",
        "GET" | "HEAD" if name.is_empty() => "list",
        "GET" | "HEAD" => "get",
        "POST" => "create",
        "PUT" => "update",
        "PATCH" => "patch",
        "DELETE" if name.is_empty() => "deletecollection",
        "DELETE" => "delete",
        other => other,
    }
    .to_ascii_lowercase();
    // A field selector on the name makes a collection request one for that name.
    if name.is_empty()
        && matches!(verb.as_str(), "list" | "watch" | "deletecollection")
        && let Some(n) = q
            .get("fieldSelector")
            .and_then(|f| f.strip_prefix("metadata.name="))
            .filter(|n| !n.contains(','))
    {
        name = n.to_string();
    }
    let header = |h: &str| {
        headers
            .get(h)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    AuditRecord {
        verb,
        group: group.to_string(),
        version: version.to_string(),
        resource: part(0),
        subresource: part(2),
        namespace: namespace.to_string(),
        name,
        user: header("impersonate-user"),
        user_agent: header("user-agent"),
        code: 0,
    }
}

fn json_response(code: StatusCode, body: &Value) -> Response {
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap_or_default()
}

fn error_response(e: &ApiError) -> Response {
    json_response(
        StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &e.to_status(),
    )
}

fn ok(body: &Value) -> Response {
    json_response(StatusCode::OK, body)
}

pub(crate) async fn handle(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let query: HashMap<String, String> = parts
        .uri
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(e) => return error_response(&ApiError::bad_request(format!("reading the body: {e}"))),
    };
    let path = parts.uri.path().trim_end_matches('/').to_string();
    tracing::debug!(method = %parts.method, %path, query = ?parts.uri.query(), "request");
    match route(&shared, &parts.method, &path, &query, &parts.headers, &body) {
        Ok(r) => r,
        Err(e) => error_response(&e),
    }
}

fn route(
    shared: &Arc<Shared>,
    method: &Method,
    path: &str,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match segs.as_slice() {
        ["version"] => Ok(ok(&json!({
            "major": "1", "minor": "32", "gitVersion": "v1.32.0", "gitCommit": "", "gitTreeState": "clean",
            "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.23", "compiler": "gc", "platform": "linux/amd64"
        }))),
        ["healthz" | "livez" | "readyz", ..] => Ok(Response::new(Body::from("ok"))),
        ["openapi", "v2"] => Ok(openapi_v2()),
        ["openapi", ..] => Err(ApiError::not_found_path()),
        ["api"] => Ok(ok(&json!({"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}))),
        ["apis"] => Ok(ok(&group_list(&shared.lock()))),
        ["api", "v1"] => resource_list(&shared.lock(), "", "v1"),
        ["apis", group] => {
            let groups = group_list(&shared.lock());
            groups["groups"]
                .as_array()
                .and_then(|gs| gs.iter().find(|g| g["name"] == *group))
                .map(|g| {
                    let mut g = g.clone();
                    g["kind"] = json!("APIGroup");
                    g["apiVersion"] = json!("v1");
                    ok(&g)
                })
                .ok_or_else(ApiError::not_found_path)
        }
        ["apis", group, version] => resource_list(&shared.lock(), group, version),
        ["api", "v1", rest @ ..] => {
            resource_request(shared, "", "v1", rest, method, query, headers, body)
        }
        ["apis", group, version, rest @ ..] => {
            resource_request(shared, group, version, rest, method, query, headers, body)
        }
        _ => Err(ApiError::not_found_path()),
    }
}

/// kubectl needs an OpenAPI v2 document (protobuf) for client-side
/// validation; an empty document validates nothing and lets the server decide.
fn openapi_v2() -> Response {
    Response::builder()
        .header(
            header::CONTENT_TYPE,
            "application/com.github.proto-openapi.spec.v2.v1.0+protobuf",
        )
        .body(Body::empty())
        .unwrap_or_default()
}

fn group_list(store: &Store) -> Value {
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut order = Vec::new();
    for rt in store.types().filter(|r| !r.group.is_empty()) {
        let versions = groups.entry(rt.group.clone()).or_insert_with(|| {
            order.push(rt.group.clone());
            Vec::new()
        });
        if !versions.contains(&rt.version) {
            versions.push(rt.version.clone());
        }
    }
    let list: Vec<Value> = order
        .iter()
        .map(|g| {
            let versions: Vec<Value> = groups[g]
                .iter()
                .map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
                .collect();
            json!({"name": g, "versions": versions, "preferredVersion": versions[0]})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": list})
}

fn resource_list(store: &Store, group: &str, version: &str) -> Result<Response, ApiError> {
    let mut resources = Vec::new();
    for rt in store
        .types()
        .filter(|r| r.group == group && r.version == version)
    {
        resources.push(json!({
            "name": rt.plural, "singularName": rt.singular, "namespaced": rt.namespaced, "kind": rt.kind,
            "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
            "shortNames": rt.short_names, "categories": rt.categories,
        }));
        if rt.status_subresource {
            resources.push(json!({
                "name": format!("{}/status", rt.plural), "singularName": "", "namespaced": rt.namespaced,
                "kind": rt.kind, "verbs": ["get", "patch", "update"],
            }));
        }
    }
    if resources.is_empty() {
        return Err(ApiError::not_found_path());
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Ok(ok(
        &json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
    ))
}

fn parse_body(body: &Bytes, yaml: bool) -> Result<Value, ApiError> {
    // Typed clients (`kubectl create configmap|secret|deployment`) send
    // Kubernetes protobuf; only a few simple kinds are decoded.
    if body.starts_with(crate::protobuf::MAGIC) {
        if let Some(v) = crate::protobuf::decode(body) {
            return Ok(v);
        }
        return Err(ApiError::new(
            415,
            "UnsupportedMediaType",
            "the body of the request was in an unknown format - accepted media types include: \
             application/json, application/yaml (this stand-in decodes protobuf only for \
             ConfigMap, Secret, Namespace, ServiceAccount and DeleteOptions)",
        ));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(v) => Ok(v),
        Err(e) if !yaml => Err(ApiError::bad_request(format!(
            "the request body is not valid JSON: {e}"
        ))),
        Err(_) => serde_yaml::from_slice::<Value>(body)
            .map_err(|e| ApiError::bad_request(format!("the request body is not valid YAML: {e}"))),
    }
}

fn wants_table(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("as=Table"))
}

fn selectors(
    q: &HashMap<String, String>,
    rt: &ResourceType,
) -> Result<(LabelSelector, FieldSelector), ApiError> {
    let get = |k: &str| q.get(k).map(String::as_str).unwrap_or_default();
    Ok((
        LabelSelector::parse(get("labelSelector"))?,
        FieldSelector::parse(get("fieldSelector"), rt)?,
    ))
}

fn truthy(q: &HashMap<String, String>, k: &str) -> bool {
    q.get(k).is_some_and(|v| v == "true" || v == "1")
}

fn write_options(q: &HashMap<String, String>, headers: &HeaderMap) -> WriteOptions {
    let manager = q.get("fieldManager").cloned().unwrap_or_else(|| {
        headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .and_then(|ua| ua.split('/').next())
            .filter(|s| !s.is_empty())
            .unwrap_or("unknown")
            .to_string()
    });
    WriteOptions {
        manager,
        force: truthy(q, "force"),
        dry_run: q.contains_key("dryRun"),
    }
}

/// Serves a request for a resource, recording it when auditing is on.
#[allow(clippy::too_many_arguments)]
fn resource_request(
    shared: &Arc<Shared>,
    group: &str,
    version: &str,
    rest: &[&str],
    method: &Method,
    q: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let result = serve_resource(shared, group, version, rest, method, q, headers, body);
    if shared.options.audit {
        let mut record = request_attributes(method, group, version, rest, q, headers);
        record.code = match &result {
            Ok(r) => r.status().as_u16(),
            Err(e) => e.code,
        };
        shared.audit_log().push(record);
    }
    result
}

#[allow(clippy::too_many_arguments)]
fn serve_resource(
    shared: &Arc<Shared>,
    group: &str,
    version: &str,
    rest: &[&str],
    method: &Method,
    q: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let mut store = shared.lock();
    let namespaced_at = |name: &str| store.find(group, version, name).filter(|r| r.namespaced);
    let (ns, rt, name, sub) = match rest {
        ["namespaces", ns, plural, tail @ ..] if namespaced_at(plural).is_some() => (
            Some((*ns).to_string()),
            namespaced_at(plural),
            tail.first().copied(),
            tail.get(1).copied(),
        ),
        [plural, tail @ ..] => (
            None,
            store.find(group, version, plural),
            tail.first().copied(),
            tail.get(1).copied(),
        ),
        [] => return Err(ApiError::not_found_path()),
    };
    let rt = rt.ok_or_else(ApiError::not_found_path)?;
    if rt.namespaced && ns.is_none() && name.is_some() {
        return Err(ApiError::not_found_path());
    }
    let scope = match sub {
        None => Scope::Main,
        Some("status") if rt.status_subresource => Scope::Status,
        Some(_) => return Err(ApiError::not_found_path()),
    };
    let ns_str = ns.clone().unwrap_or_default();
    let table = wants_table(headers)
        .then(|| IncludeObject::parse(q.get("includeObject").map(String::as_str)));
    let opts = write_options(q, headers);
    let result = match (method.as_str(), name) {
        ("GET", None) if truthy(q, "watch") => {
            drop(store);
            return start_watch(shared, rt, ns, q, table);
        }
        ("GET", None) => {
            let (labels, fields) = selectors(q, &rt)?;
            let lo = ListOptions {
                labels,
                fields,
                resource_version: q.get("resourceVersion").cloned(),
                exact: q.get("resourceVersionMatch").map(String::as_str) == Some("Exact"),
                limit: q.get("limit").and_then(|l| l.parse().ok()).unwrap_or(0),
                continue_token: q.get("continue").cloned().filter(|c| !c.is_empty()),
            };
            let list = store.list(&rt, ns.as_deref(), &lo)?;
            let mut meta = json!({"resourceVersion": list.resource_version.to_string()});
            if let Some(c) = &list.continue_token {
                meta["continue"] = json!(c);
                meta["remainingItemCount"] = json!(list.remaining);
            }
            return Ok(ok(&match table {
                Some(include) => table::table(&rt, &list.items, include, meta),
                None => json!({"kind": format!("{}List", rt.kind), "apiVersion": rt.api_version(),
                               "metadata": meta, "items": list.items}),
            }));
        }
        ("GET", Some(n)) => {
            let obj = store.get(&rt, &ns_str, n)?;
            return Ok(ok(&match table {
                Some(include) => table::table(
                    &rt,
                    std::slice::from_ref(&obj),
                    include,
                    json!({"resourceVersion": obj["metadata"]["resourceVersion"]}),
                ),
                None => obj,
            }));
        }
        ("POST", None) => {
            let obj = store.create(&rt, &ns_str, parse_body(body, true)?, &opts)?;
            shared.notify(&store);
            return Ok(json_response(StatusCode::CREATED, &obj));
        }
        ("PUT", Some(n)) => store.update(&rt, &ns_str, n, parse_body(body, true)?, scope, &opts),
        ("PATCH", Some(n)) => {
            let ct = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            let kind = PatchType::from_content_type(ct)
                .ok_or_else(|| ApiError::unsupported_media_type(ct))?;
            let patch_body = parse_body(body, kind == PatchType::Apply)?;
            let existed = store.get(&rt, &ns_str, n).is_ok();
            let obj = store.patch(&rt, &ns_str, n, kind, &patch_body, scope, &opts)?;
            shared.notify(&store);
            let code = if existed {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            };
            return Ok(json_response(code, &obj));
        }
        ("DELETE", Some(n)) => {
            let options = if body.is_empty() {
                Value::Null
            } else {
                parse_body(body, true)?
            };
            let dry_run =
                opts.dry_run || options["dryRun"].as_array().is_some_and(|a| !a.is_empty());
            store.delete(&rt, &ns_str, n, &options["preconditions"], dry_run)
        }
        _ => Err(ApiError::method_not_allowed()),
    }?;
    shared.notify(&store);
    Ok(ok(&result))
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = json!({"type": kind, "object": object}).to_string();
    line.push('\n');
    Bytes::from(line)
}

struct WatchSpec {
    rt: ResourceType,
    ns: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
    table: Option<IncludeObject>,
    bookmarks: bool,
}

impl WatchSpec {
    fn matches(&self, obj: &Value) -> bool {
        let in_ns = self
            .ns
            .as_ref()
            .is_none_or(|n| obj["metadata"]["namespace"].as_str() == Some(n.as_str()));
        in_ns && self.labels.matches(obj) && self.fields.matches(obj)
    }

    fn render(&self, obj: &Value) -> Value {
        let obj = Store::view(&self.rt, obj);
        match self.table {
            Some(include) => table::table(
                &self.rt,
                std::slice::from_ref(&obj),
                include,
                json!({"resourceVersion": obj["metadata"]["resourceVersion"]}),
            ),
            None => obj,
        }
    }
}

fn start_watch(
    shared: &Arc<Shared>,
    rt: ResourceType,
    ns: Option<String>,
    q: &HashMap<String, String>,
    table: Option<IncludeObject>,
) -> Result<Response, ApiError> {
    let (labels, fields) = selectors(q, &rt)?;
    let spec = WatchSpec {
        labels,
        fields,
        rt,
        ns,
        table,
        bookmarks: truthy(q, "allowWatchBookmarks"),
    };
    let timeout = Duration::from_secs(
        q.get("timeoutSeconds")
            .and_then(|t| t.parse().ok())
            .unwrap_or(1800),
    );
    let rv = q.get("resourceVersion").cloned().unwrap_or_default();
    let initial = rv.is_empty() || rv == "0" || truthy(q, "sendInitialEvents");
    let from: u64 = if rv.is_empty() {
        0
    } else {
        rv.parse()
            .map_err(|_| ApiError::bad_request(format!("resourceVersion: Invalid value: {rv:?}")))?
    };
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    tokio::spawn(watch_loop(
        shared.clone(),
        spec,
        from,
        initial,
        truthy(q, "sendInitialEvents"),
        timeout,
        tx,
    ));
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::convert::Infallible>(b), rx))
    });
    Ok(Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-cache, private")
        .body(Body::from_stream(stream))
        .unwrap_or_default())
}

async fn watch_loop(
    shared: Arc<Shared>,
    spec: WatchSpec,
    from: u64,
    initial: bool,
    initial_bookmark: bool,
    timeout: Duration,
    tx: mpsc::Sender<Bytes>,
) {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut changed = shared.changed.subscribe();
    let mut shutdown = shared.shutdown.subscribe();
    let key = spec.rt.storage_key();
    let mut cursor = from;
    if initial {
        let (objs, rv) = {
            let store = shared.lock();
            (store.current(&key), store.rv)
        };
        for o in objs.iter().filter(|o| spec.matches(o)) {
            if tx.send(event_line("ADDED", &spec.render(o))).await.is_err() {
                return;
            }
        }
        cursor = rv;
        if initial_bookmark {
            let bm = json!({"kind": spec.rt.kind, "apiVersion": spec.rt.api_version(),
                "metadata": {"resourceVersion": cursor.to_string(), "annotations": {"k8s.io/initial-events-end": "true"}}});
            if tx.send(event_line("BOOKMARK", &bm)).await.is_err() {
                return;
            }
        }
    }
    loop {
        changed.borrow_and_update();
        let batch = {
            let store = shared.lock();
            store.events_since(&key, cursor).map(|e| (e, store.rv))
        };
        let (events, rv) = match batch {
            Ok(b) => b,
            Err(e) => {
                let _ = tx.send(event_line("ERROR", &e.to_status())).await;
                return;
            }
        };
        for e in events {
            let now = spec.matches(&e.obj);
            let before = e.prev.as_ref().is_some_and(|p| spec.matches(p));
            let kind = match (e.kind, before, now) {
                (EventKind::Added, _, true) => "ADDED",
                (EventKind::Modified, true, true) => "MODIFIED",
                (EventKind::Modified, false, true) => "ADDED",
                (EventKind::Modified, true, false) => "DELETED",
                (EventKind::Deleted, true, _) => "DELETED",
                _ => continue,
            };
            if tx
                .send(event_line(kind, &spec.render(&e.obj)))
                .await
                .is_err()
            {
                return;
            }
        }
        cursor = rv;
        tokio::select! {
            r = changed.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(shared.options.bookmark_interval), if spec.bookmarks && spec.table.is_none() => {
                let bm = json!({"kind": spec.rt.kind, "apiVersion": spec.rt.api_version(),
                    "metadata": {"resourceVersion": cursor.to_string()}});
                if tx.send(event_line("BOOKMARK", &bm)).await.is_err() {
                    return;
                }
            }
            _ = tokio::time::sleep_until(deadline) => return,
            _ = async { shutdown.wait_for(|s| *s).await.is_ok() } => return,
            _ = tx.closed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(method: &str, path: &str, query: &[(&str, &str)], user: Option<&str>) -> AuditRecord {
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let (group, version, rest) = match segs.as_slice() {
            ["api", v, rest @ ..] => ("", *v, rest),
            ["apis", g, v, rest @ ..] => (*g, *v, rest),
            _ => panic!("not a resource path: {path}"),
        };
        let q = query
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect();
        let mut headers = HeaderMap::new();
        if let Some(u) = user {
            headers.insert("impersonate-user", u.parse().expect("header value"));
        }
        let method = Method::from_bytes(method.as_bytes()).expect("method");
        request_attributes(&method, group, version, rest, &q, &headers)
    }

    /// (verb, group, resource, subresource, namespace, name)
    fn key(r: &AuditRecord) -> (&str, &str, &str, &str, &str, &str) {
        (
            &r.verb,
            &r.group,
            &r.resource,
            &r.subresource,
            &r.namespace,
            &r.name,
        )
    }

    #[test]
    fn derives_the_rbac_attributes_like_the_api_server() {
        let ds = "/apis/swarmseed.io/v1alpha1";
        for (method, path, query, want) in [
            (
                "GET",
                format!("{ds}/datasets"),
                vec![],
                ("list", "swarmseed.io", "datasets", "", "", ""),
            ),
            (
                "GET",
                format!("{ds}/datasets"),
                vec![("watch", "true")],
                ("watch", "swarmseed.io", "datasets", "", "", ""),
            ),
            (
                "GET",
                format!("{ds}/namespaces/ml/datasets/a"),
                vec![],
                ("get", "swarmseed.io", "datasets", "", "ml", "a"),
            ),
            (
                "PATCH",
                format!("{ds}/namespaces/ml/datasets/a/status"),
                vec![],
                ("patch", "swarmseed.io", "datasets", "status", "ml", "a"),
            ),
            (
                "PUT",
                "/apis/coordination.k8s.io/v1/namespaces/s/leases/l".into(),
                vec![],
                ("update", "coordination.k8s.io", "leases", "", "s", "l"),
            ),
            (
                "POST",
                "/apis/coordination.k8s.io/v1/namespaces/s/leases".into(),
                vec![],
                ("create", "coordination.k8s.io", "leases", "", "s", ""),
            ),
            (
                "DELETE",
                "/api/v1/namespaces/s/pods/p".into(),
                vec![],
                ("delete", "", "pods", "", "s", "p"),
            ),
            (
                "DELETE",
                "/api/v1/namespaces/s/pods".into(),
                vec![],
                ("deletecollection", "", "pods", "", "s", ""),
            ),
            (
                "GET",
                "/api/v1/nodes".into(),
                vec![("fieldSelector", "metadata.name=n1"), ("watch", "1")],
                ("watch", "", "nodes", "", "", "n1"),
            ),
            (
                "GET",
                "/api/v1/namespaces/ml".into(),
                vec![],
                ("get", "", "namespaces", "", "ml", "ml"),
            ),
            (
                "PUT",
                "/api/v1/namespaces/ml/finalize".into(),
                vec![],
                ("update", "", "namespaces", "finalize", "ml", "ml"),
            ),
        ] {
            let r = attrs(method, &path, &query, None);
            assert_eq!(key(&r), want, "{method} {path} {query:?}");
        }
    }

    #[test]
    fn names_the_impersonated_user_and_the_rbac_resource() {
        let r = attrs(
            "PATCH",
            "/apis/swarmseed.io/v1alpha1/namespaces/ml/datasets/a/status",
            &[],
            Some("system:serviceaccount:s:op"),
        );
        assert_eq!(r.user.as_deref(), Some("system:serviceaccount:s:op"));
        assert_eq!(r.rbac_resource(), "datasets/status");
        assert_eq!(attrs("GET", "/api/v1/nodes", &[], None).user, None);
    }
}
