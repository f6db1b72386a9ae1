//! `as=Table` responses for `kubectl get`, from printer columns.

use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

use crate::resources::{PrinterColumn, ResourceType};

/// Evaluates the JSONPath subset printer columns use: `.a.b`, `[n]`, `[*]`
/// and `[?(@.k=="v")]` filters.
pub(crate) fn json_path<'a>(obj: &'a Value, path: &str) -> Vec<&'a Value> {
    let mut cur = vec![obj];
    let mut rest = path.trim().trim_start_matches('{').trim_end_matches('}');
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            let field = &r[..end];
            if !field.is_empty() {
                cur = cur.into_iter().filter_map(|v| v.get(field)).collect();
            }
            rest = &r[end..];
        } else if let Some(r) = rest.strip_prefix('[') {
            let Some(end) = r.find(']') else {
                return Vec::new();
            };
            let inner = &r[..end];
            rest = &r[end + 1..];
            cur = if inner == "*" {
                cur.into_iter()
                    .filter_map(Value::as_array)
                    .flatten()
                    .collect()
            } else if let Some(filter) =
                inner.strip_prefix("?(@.").and_then(|f| f.strip_suffix(')'))
            {
                let Some((field, want)) = filter.split_once("==") else {
                    return Vec::new();
                };
                let want = want.trim().trim_matches(|c| c == '"' || c == '\'');
                let field = field.trim();
                cur.into_iter()
                    .filter_map(Value::as_array)
                    .flatten()
                    .filter(|item| match &item[field] {
                        Value::String(s) => s == want,
                        other => serde_json::from_str::<Value>(want).ok().as_ref() == Some(other),
                    })
                    .collect()
            } else if let Ok(i) = inner.parse::<usize>() {
                cur.into_iter().filter_map(|v| v.get(i)).collect()
            } else {
                return Vec::new();
            };
        } else {
            return Vec::new();
        }
    }
    cur
}

/// Kubernetes' `duration.HumanDuration` (what AGE shows).
pub(crate) fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s < 120 {
        return format!("{s}s");
    }
    let m = s / 60;
    if m < 10 {
        return if s.is_multiple_of(60) {
            format!("{m}m")
        } else {
            format!("{m}m{}s", s % 60)
        };
    }
    if m < 180 {
        return format!("{m}m");
    }
    let h = m / 60;
    if h < 8 {
        return if m.is_multiple_of(60) {
            format!("{h}h")
        } else {
            format!("{h}h{}m", m % 60)
        };
    }
    if h < 48 {
        return format!("{h}h");
    }
    if h < 24 * 8 {
        return if h.is_multiple_of(24) {
            format!("{}d", h / 24)
        } else {
            format!("{}d{}h", h / 24, h % 24)
        };
    }
    let days = h / 24;
    if days < 365 * 2 {
        return format!("{days}d");
    }
    if days < 365 * 8 {
        return format!("{}y{}d", days / 365, days % 365);
    }
    format!("{}y", days / 365)
}

fn age(ts: &str) -> Value {
    match humantime::parse_rfc3339_weak(ts) {
        Ok(t) => json!(human_duration(
            SystemTime::now().duration_since(t).unwrap_or_default()
        )),
        Err(_) => Value::Null,
    }
}

fn cell(obj: &Value, c: &PrinterColumn) -> Value {
    match c.json_path.as_str() {
        "<node-status>" => {
            let ready = json_path(obj, ".status.conditions[?(@.type==\"Ready\")].status");
            let mut s = match ready.first().and_then(|v| v.as_str()) {
                Some("True") => "Ready".to_string(),
                Some(_) => "NotReady".to_string(),
                None => "Unknown".to_string(),
            };
            if obj["spec"]["unschedulable"].as_bool() == Some(true) {
                s.push_str(",SchedulingDisabled");
            }
            json!(s)
        }
        "<pod-ready>" => {
            let total = obj["spec"]["containers"].as_array().map_or(0, Vec::len);
            let ready = obj["status"]["containerStatuses"]
                .as_array()
                .map_or(0, |a| {
                    a.iter()
                        .filter(|c| c["ready"].as_bool() == Some(true))
                        .count()
                });
            json!(format!("{ready}/{total}"))
        }
        "<pod-status>" => {
            if obj["metadata"].get("deletionTimestamp").is_some() {
                json!("Terminating")
            } else {
                json!(obj["status"]["phase"].as_str().unwrap_or("Pending"))
            }
        }
        path => {
            let values = json_path(obj, path);
            if values.is_empty() {
                return Value::Null;
            }
            match c.type_.as_str() {
                "date" => values[0].as_str().map(age).unwrap_or(Value::Null),
                "integer" | "number" | "boolean" if values.len() == 1 => values[0].clone(),
                _ => {
                    let parts: Vec<String> = values
                        .iter()
                        .map(|v| match v {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        })
                        .collect();
                    json!(parts.join(","))
                }
            }
        }
    }
}

fn columns(rt: &ResourceType) -> Vec<PrinterColumn> {
    if rt.columns.is_empty() {
        vec![PrinterColumn {
            name: "Age".to_string(),
            type_: "date".to_string(),
            format: String::new(),
            description: "CreationTimestamp is a timestamp representing the server time when this object was created."
                .to_string(),
            priority: 0,
            json_path: ".metadata.creationTimestamp".to_string(),
        }]
    } else {
        rt.columns.clone()
    }
}

/// What `includeObject` asks to embed in each row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum IncludeObject {
    None,
    Metadata,
    Object,
}

impl IncludeObject {
    pub fn parse(v: Option<&str>) -> Self {
        match v {
            Some("None") => IncludeObject::None,
            Some("Object") => IncludeObject::Object,
            _ => IncludeObject::Metadata,
        }
    }
}

fn row(rt: &ResourceType, obj: &Value, include: IncludeObject) -> Value {
    let mut cells = vec![obj["metadata"]["name"].clone()];
    cells.extend(columns(rt).iter().map(|c| cell(obj, c)));
    let object = match include {
        IncludeObject::None => Value::Null,
        IncludeObject::Object => obj.clone(),
        IncludeObject::Metadata => json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": obj["metadata"],
        }),
    };
    json!({"cells": cells, "object": object})
}

pub(crate) fn table(
    rt: &ResourceType,
    objs: &[Value],
    include: IncludeObject,
    meta: Value,
) -> Value {
    let mut defs = vec![json!({
        "name": "Name", "type": "string", "format": "name", "priority": 0,
        "description": "Name must be unique within a namespace."
    })];
    defs.extend(columns(rt).iter().map(|c| {
        json!({"name": c.name, "type": c.type_, "format": c.format, "description": c.description, "priority": c.priority})
    }));
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": meta,
        "columnDefinitions": defs,
        "rows": objs.iter().map(|o| row(rt, o, include)).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_path_subset() {
        let o = json!({"spec": {"size": 3}, "status": {"conditions": [
            {"type": "Progressing", "status": "False"}, {"type": "Ready", "status": "True"}]}});
        assert_eq!(json_path(&o, ".spec.size"), vec![&json!(3)]);
        assert_eq!(
            json_path(&o, ".status.conditions[?(@.type==\"Ready\")].status"),
            vec![&json!("True")]
        );
        assert_eq!(
            json_path(&o, ".status.conditions[0].type"),
            vec![&json!("Progressing")]
        );
        assert_eq!(json_path(&o, ".status.conditions[*].type").len(), 2);
        assert!(json_path(&o, ".status.missing").is_empty());
    }

    #[test]
    fn ages_like_kubectl() {
        let cases = [
            (5, "5s"),
            (150, "2m30s"),
            (600, "10m"),
            (3 * 3600 + 60, "3h1m"),
            (30 * 3600, "30h"),
            (3 * 86400, "3d"),
        ];
        for (secs, want) in cases {
            assert_eq!(human_duration(Duration::from_secs(secs)), want);
        }
    }
}
