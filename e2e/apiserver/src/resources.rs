//! The kinds this server knows: a fixed table of built-in kinds plus whatever
//! the stored CustomResourceDefinitions define.

use serde_json::{Value, json};

/// One `additionalPrinterColumns` entry (or a built-in default column).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct PrinterColumn {
    pub name: String,
    pub type_: String,
    pub format: String,
    pub description: String,
    pub priority: i64,
    pub json_path: String,
}

/// A resource at one group/version.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ResourceType {
    pub group: String,
    pub version: String,
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    pub status_subresource: bool,
    /// Printer columns after `Name`; empty means `Age` only.
    pub columns: Vec<PrinterColumn>,
    /// Paths (field names from the object root, `[]` not included) of lists
    /// that merge by key, with their keys (server-side apply, strategic merge).
    pub list_maps: Vec<(Vec<String>, Vec<String>)>,
    /// Field selectors accepted besides metadata.name / metadata.namespace.
    pub field_selectors: Vec<String>,
    pub builtin: bool,
}

impl ResourceType {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `widgets.example.com` / `pods`, as the real server names a resource in messages.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// Storage key: the same objects are visible at every version of a group/resource.
    pub fn storage_key(&self) -> (String, String) {
        (self.group.clone(), self.plural.clone())
    }

    /// Merge keys of the list at `path` (object field names, list indices dropped).
    pub fn list_map_keys(&self, path: &[String]) -> Option<&[String]> {
        self.list_maps
            .iter()
            .find(|(p, _)| p.as_slice() == path)
            .map(|(_, k)| k.as_slice())
            .or_else(|| builtin_list_keys(path.last().map(String::as_str)?))
    }
}

/// Lists of the built-in kinds that merge by key, by field name. Used for
/// strategic merge patch and server-side apply of built-in kinds and as a
/// fallback for well-known shapes (`conditions` keyed by `type`).
fn builtin_list_keys(field: &str) -> Option<&'static [String]> {
    use std::sync::OnceLock;
    static KEYS: OnceLock<Vec<(&'static str, Vec<String>)>> = OnceLock::new();
    let keys = KEYS.get_or_init(|| {
        let k = |s: &[&str]| s.iter().map(|x| (*x).to_string()).collect::<Vec<_>>();
        vec![
            ("containers", k(&["name"])),
            ("initContainers", k(&["name"])),
            ("ephemeralContainers", k(&["name"])),
            ("env", k(&["name"])),
            ("volumes", k(&["name"])),
            ("volumeMounts", k(&["mountPath"])),
            ("imagePullSecrets", k(&["name"])),
            ("conditions", k(&["type"])),
            ("ownerReferences", k(&["uid"])),
            ("addresses", k(&["type", "address"])),
            ("taints", k(&["key", "effect"])),
            ("containerStatuses", k(&["name"])),
        ]
    });
    keys.iter()
        .find(|(f, _)| *f == field)
        .map(|(_, k)| k.as_slice())
}

struct Builtin {
    group: &'static str,
    plural: &'static str,
    kind: &'static str,
    namespaced: bool,
    short: &'static [&'static str],
    status: bool,
    all: bool,
}

const BUILTINS: &[Builtin] = &[
    b("", "namespaces", "Namespace", false, &["ns"], true, false),
    b("", "nodes", "Node", false, &["no"], true, false),
    b("", "pods", "Pod", true, &["po"], true, true),
    b("", "secrets", "Secret", true, &[], false, false),
    b("", "configmaps", "ConfigMap", true, &["cm"], false, false),
    b("", "services", "Service", true, &["svc"], true, true),
    b(
        "",
        "serviceaccounts",
        "ServiceAccount",
        true,
        &["sa"],
        false,
        false,
    ),
    b("", "events", "Event", true, &["ev"], false, false),
    b(
        "events.k8s.io",
        "events",
        "Event",
        true,
        &["ev"],
        false,
        false,
    ),
    b(
        "coordination.k8s.io",
        "leases",
        "Lease",
        true,
        &[],
        false,
        false,
    ),
    b(
        "apiextensions.k8s.io",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        false,
        &["crd", "crds"],
        true,
        false,
    ),
    b(
        "apps",
        "deployments",
        "Deployment",
        true,
        &["deploy"],
        true,
        true,
    ),
    b("apps", "daemonsets", "DaemonSet", true, &["ds"], true, true),
    b(
        "rbac.authorization.k8s.io",
        "roles",
        "Role",
        true,
        &[],
        false,
        false,
    ),
    b(
        "rbac.authorization.k8s.io",
        "clusterroles",
        "ClusterRole",
        false,
        &[],
        false,
        false,
    ),
    b(
        "rbac.authorization.k8s.io",
        "rolebindings",
        "RoleBinding",
        true,
        &[],
        false,
        false,
    ),
    b(
        "rbac.authorization.k8s.io",
        "clusterrolebindings",
        "ClusterRoleBinding",
        false,
        &[],
        false,
        false,
    ),
    b(
        "networking.k8s.io",
        "networkpolicies",
        "NetworkPolicy",
        true,
        &["netpol"],
        false,
        false,
    ),
    b(
        "policy",
        "poddisruptionbudgets",
        "PodDisruptionBudget",
        true,
        &["pdb"],
        true,
        false,
    ),
];

const fn b(
    group: &'static str,
    plural: &'static str,
    kind: &'static str,
    namespaced: bool,
    short: &'static [&'static str],
    status: bool,
    all: bool,
) -> Builtin {
    Builtin {
        group,
        plural,
        kind,
        namespaced,
        short,
        status,
        all,
    }
}

fn col(name: &str, type_: &str, json_path: &str) -> PrinterColumn {
    PrinterColumn {
        name: name.to_string(),
        type_: type_.to_string(),
        format: String::new(),
        description: String::new(),
        priority: 0,
        json_path: json_path.to_string(),
    }
}

pub(crate) fn builtin_types() -> Vec<ResourceType> {
    BUILTINS
        .iter()
        .map(|bt| {
            let mut columns = Vec::new();
            let mut field_selectors = Vec::new();
            match bt.plural {
                "nodes" => {
                    // STATUS is computed (see table.rs); the path marks it.
                    columns.push(col("Status", "string", "<node-status>"));
                    columns.push(col("Age", "date", ".metadata.creationTimestamp"));
                    columns.push(col("Version", "string", ".status.nodeInfo.kubeletVersion"));
                    field_selectors.push("spec.unschedulable".to_string());
                }
                "pods" => {
                    columns.push(col("Ready", "string", "<pod-ready>"));
                    columns.push(col("Status", "string", "<pod-status>"));
                    columns.push(col("Age", "date", ".metadata.creationTimestamp"));
                    columns.push(col("IP", "string", ".status.podIP"));
                    columns.push(col("Node", "string", ".spec.nodeName"));
                    field_selectors.extend(
                        [
                            "spec.nodeName",
                            "spec.restartPolicy",
                            "spec.schedulerName",
                            "spec.serviceAccountName",
                            "status.phase",
                            "status.podIP",
                            "status.nominatedNodeName",
                        ]
                        .map(String::from),
                    );
                }
                "namespaces" => {
                    columns.push(col("Status", "string", ".status.phase"));
                    columns.push(col("Age", "date", ".metadata.creationTimestamp"));
                    field_selectors.push("status.phase".to_string());
                }
                "secrets" => field_selectors.push("type".to_string()),
                "events" => {
                    let (reason, message) = if bt.group.is_empty() {
                        (".reason", ".message")
                    } else {
                        (".reason", ".note")
                    };
                    columns.push(col("Age", "date", ".metadata.creationTimestamp"));
                    columns.push(col("Type", "string", ".type"));
                    columns.push(col("Reason", "string", reason));
                    columns.push(col("Message", "string", message));
                    field_selectors.extend(
                        [
                            "involvedObject.kind",
                            "involvedObject.namespace",
                            "involvedObject.name",
                            "involvedObject.uid",
                            "involvedObject.apiVersion",
                            "involvedObject.resourceVersion",
                            "involvedObject.fieldPath",
                            "reason",
                            "reportingComponent",
                            "source",
                            "type",
                            "regarding.kind",
                            "regarding.name",
                            "regarding.namespace",
                        ]
                        .map(String::from),
                    );
                }
                "leases" => {
                    columns.push(col("Holder", "string", ".spec.holderIdentity"));
                    columns.push(col("Age", "date", ".metadata.creationTimestamp"));
                }
                "customresourcedefinitions" => {
                    columns.push(col("Created At", "string", ".metadata.creationTimestamp"));
                }
                _ => {}
            }
            let singular = bt.kind.to_ascii_lowercase();
            ResourceType {
                group: bt.group.to_string(),
                version: "v1".to_string(),
                plural: bt.plural.to_string(),
                singular,
                kind: bt.kind.to_string(),
                namespaced: bt.namespaced,
                short_names: bt.short.iter().map(|s| (*s).to_string()).collect(),
                categories: if bt.all {
                    vec!["all".to_string()]
                } else {
                    Vec::new()
                },
                status_subresource: bt.status,
                columns,
                list_maps: Vec::new(),
                field_selectors,
                builtin: true,
            }
        })
        .collect()
}

fn str_list(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The resource types one stored CRD defines (one per served version).
pub(crate) fn crd_types(crd: &Value) -> Vec<ResourceType> {
    let spec = &crd["spec"];
    let group = spec["group"].as_str().unwrap_or_default();
    let names = &spec["names"];
    let plural = names["plural"].as_str().unwrap_or_default();
    let kind = names["kind"].as_str().unwrap_or_default();
    if group.is_empty() || plural.is_empty() || kind.is_empty() {
        return Vec::new();
    }
    let singular = names["singular"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| kind.to_ascii_lowercase());
    let namespaced = spec["scope"].as_str() != Some("Cluster");
    let mut out = Vec::new();
    for v in spec["versions"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        if v["served"].as_bool() == Some(false) {
            continue;
        }
        let Some(version) = v["name"].as_str() else {
            continue;
        };
        let columns = v["additionalPrinterColumns"]
            .as_array()
            .map(|cols| {
                cols.iter()
                    .filter_map(|c| {
                        Some(PrinterColumn {
                            name: c["name"].as_str()?.to_string(),
                            type_: c["type"].as_str().unwrap_or("string").to_string(),
                            format: c["format"].as_str().unwrap_or_default().to_string(),
                            description: c["description"].as_str().unwrap_or_default().to_string(),
                            priority: c["priority"].as_i64().unwrap_or(0),
                            json_path: c["jsonPath"].as_str()?.to_string(),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut list_maps = Vec::new();
        collect_list_maps(
            &v["schema"]["openAPIV3Schema"],
            &mut Vec::new(),
            &mut list_maps,
        );
        let field_selectors = v["selectableFields"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|f| f["jsonPath"].as_str())
                    .map(|p| p.trim_start_matches('.').to_string())
                    .collect()
            })
            .unwrap_or_default();
        out.push(ResourceType {
            group: group.to_string(),
            version: version.to_string(),
            plural: plural.to_string(),
            singular: singular.clone(),
            kind: kind.to_string(),
            namespaced,
            short_names: str_list(&names["shortNames"]),
            categories: str_list(&names["categories"]),
            status_subresource: v["subresources"].get("status").is_some(),
            columns,
            list_maps,
            field_selectors,
            builtin: false,
        });
    }
    out
}

/// Walks an OpenAPI v3 schema and records `x-kubernetes-list-type: map` lists.
fn collect_list_maps(
    schema: &Value,
    path: &mut Vec<String>,
    out: &mut Vec<(Vec<String>, Vec<String>)>,
) {
    if let Some(props) = schema["properties"].as_object() {
        for (name, sub) in props {
            path.push(name.clone());
            collect_list_maps(sub, path, out);
            path.pop();
        }
    }
    if schema["type"].as_str() == Some("array") {
        if schema["x-kubernetes-list-type"].as_str() == Some("map") {
            let keys = str_list(&schema["x-kubernetes-list-map-keys"]);
            if !keys.is_empty() {
                out.push((path.clone(), keys));
            }
        }
        collect_list_maps(&schema["items"], path, out);
    }
}

/// The status the apiextensions controller would write for an accepted CRD.
pub(crate) fn crd_status(crd: &Value, now: &str) -> Value {
    let names = crd["spec"]["names"].clone();
    let stored: Vec<Value> = crd["spec"]["versions"]
        .as_array()
        .map(|vs| {
            vs.iter()
                .filter(|v| v["storage"].as_bool() == Some(true))
                .filter_map(|v| v.get("name").cloned())
                .collect()
        })
        .unwrap_or_default();
    json!({
        "acceptedNames": names,
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
             "message": "no conflicts found", "lastTransitionTime": now},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
             "message": "the initial names have been accepted", "lastTransitionTime": now},
        ],
        "storedVersions": stored,
    })
}
