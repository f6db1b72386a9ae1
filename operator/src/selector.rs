//! Which nodes a Dataset selects: `nodeSelector`, `matchExpressions`, and
//! taints that the Dataset's tolerations must tolerate. Pure.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, Taint, Toleration};

use swarmseed_crd::{DatasetSpec, SelectorOperator};

/// Whether `node` is selected by `spec`.
pub fn selects(spec: &DatasetSpec, node: &Node) -> bool {
    let empty = BTreeMap::new();
    let labels = node.metadata.labels.as_ref().unwrap_or(&empty);
    let selector_ok = spec
        .node_selector
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let expressions_ok = spec.match_expressions.iter().flatten().all(|e| {
        let value = labels.get(&e.key);
        match e.operator {
            SelectorOperator::In => value.is_some_and(|v| e.values.contains(v)),
            SelectorOperator::NotIn => value.is_none_or(|v| !e.values.contains(v)),
            SelectorOperator::Exists => value.is_some(),
            SelectorOperator::DoesNotExist => value.is_none(),
        }
    });
    let tolerations = spec.tolerations.as_deref().unwrap_or_default();
    let taints_ok = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .into_iter()
        .flatten()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .all(|t| tolerations.iter().any(|tol| tolerates(tol, t)));
    selector_ok && expressions_ok && taints_ok
}

/// The selector in words, for messages: `gpu=true, zone In (a, b)`, or
/// `every node` when nothing restricts it.
pub fn describe(spec: &DatasetSpec) -> String {
    let mut parts: Vec<String> = spec
        .node_selector
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for e in spec.match_expressions.iter().flatten() {
        let op = match e.operator {
            SelectorOperator::In => "In",
            SelectorOperator::NotIn => "NotIn",
            SelectorOperator::Exists => "Exists",
            SelectorOperator::DoesNotExist => "DoesNotExist",
        };
        if e.values.is_empty() {
            parts.push(format!("{} {op}", e.key));
        } else {
            parts.push(format!("{} {op} ({})", e.key, e.values.join(", ")));
        }
    }
    if parts.is_empty() {
        "every node".to_owned()
    } else {
        parts.join(", ")
    }
}

/// The Kubernetes toleration matching rules (numeric `Lt`/`Gt`, behind a
/// feature gate upstream, never match).
fn tolerates(tol: &Toleration, taint: &Taint) -> bool {
    let effect_ok = tol
        .effect
        .as_deref()
        .is_none_or(|e| e.is_empty() || e == taint.effect);
    let key = tol.key.as_deref().unwrap_or_default();
    let key_ok = key.is_empty() || key == taint.key;
    let value_ok = match tol.operator.as_deref().unwrap_or("Equal") {
        "Exists" => true,
        "Equal" | "" => {
            !key.is_empty()
                && tol.value.as_deref().unwrap_or_default()
                    == taint.value.as_deref().unwrap_or_default()
        }
        _ => false,
    };
    effect_ok && key_ok && value_ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::NodeSpec;
    use swarmseed_crd::NodeSelectorRequirement;

    fn node(labels: &[(&str, &str)], taints: Vec<Taint>) -> Node {
        let mut n = Node::default();
        n.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        n.spec = Some(NodeSpec {
            taints: Some(taints),
            ..Default::default()
        });
        n
    }

    fn taint(key: &str, value: &str, effect: &str) -> Taint {
        Taint {
            key: key.into(),
            value: Some(value.into()),
            effect: effect.into(),
            ..Default::default()
        }
    }

    fn spec(v: serde_json::Value) -> DatasetSpec {
        let mut base = serde_json::json!({ "source": { "uri": "s3://b/p" } });
        base.as_object_mut()
            .unwrap()
            .extend(v.as_object().unwrap().clone());
        serde_json::from_value(base).unwrap()
    }

    #[test]
    fn node_selector_and_expressions_must_all_hold() {
        let s = spec(serde_json::json!({
            "nodeSelector": { "gpu": "true" },
            "matchExpressions": [
                { "key": "zone", "operator": "In", "values": ["a", "b"] },
                { "key": "retired", "operator": "DoesNotExist" },
                { "key": "pool", "operator": "NotIn", "values": ["spot"] },
            ]
        }));
        assert!(selects(
            &s,
            &node(&[("gpu", "true"), ("zone", "a")], vec![])
        ));
        assert!(selects(
            &s,
            &node(
                &[("gpu", "true"), ("zone", "b"), ("pool", "ondemand")],
                vec![]
            )
        ));
        assert!(!selects(
            &s,
            &node(&[("gpu", "false"), ("zone", "a")], vec![])
        ));
        assert!(!selects(
            &s,
            &node(&[("gpu", "true"), ("zone", "c")], vec![])
        ));
        assert!(!selects(
            &s,
            &node(&[("gpu", "true"), ("zone", "a"), ("retired", "")], vec![])
        ));
        assert!(!selects(
            &s,
            &node(&[("gpu", "true"), ("zone", "a"), ("pool", "spot")], vec![])
        ));
        let exists = DatasetSpec {
            match_expressions: Some(vec![NodeSelectorRequirement {
                key: "gpu".into(),
                operator: SelectorOperator::Exists,
                values: vec![],
            }]),
            ..spec(serde_json::json!({}))
        };
        assert!(selects(&exists, &node(&[("gpu", "x")], vec![])));
        assert!(!selects(&exists, &node(&[], vec![])));
    }

    #[test]
    fn no_selector_selects_every_untainted_node() {
        let s = spec(serde_json::json!({}));
        assert!(selects(&s, &node(&[], vec![])));
        assert!(selects(&s, &Node::default()));
        assert!(selects(
            &s,
            &node(&[], vec![taint("soft", "", "PreferNoSchedule")])
        ));
        assert!(!selects(
            &s,
            &node(&[], vec![taint("nvidia.com/gpu", "present", "NoSchedule")])
        ));
    }

    #[test]
    fn tolerations_admit_tainted_nodes() {
        let gpu = node(&[], vec![taint("nvidia.com/gpu", "present", "NoSchedule")]);
        let equal = spec(serde_json::json!({ "tolerations": [
            { "key": "nvidia.com/gpu", "operator": "Equal", "value": "present", "effect": "NoSchedule" }
        ]}));
        assert!(selects(&equal, &gpu));
        let wrong_value = spec(serde_json::json!({ "tolerations": [
            { "key": "nvidia.com/gpu", "value": "absent" }
        ]}));
        assert!(!selects(&wrong_value, &gpu));
        let exists = spec(
            serde_json::json!({ "tolerations": [{ "key": "nvidia.com/gpu", "operator": "Exists" }]}),
        );
        assert!(selects(&exists, &gpu));
        let all = spec(serde_json::json!({ "tolerations": [{ "operator": "Exists" }]}));
        assert!(selects(
            &all,
            &node(
                &[],
                vec![taint("a", "b", "NoExecute"), taint("c", "d", "NoSchedule")]
            )
        ));
        let other_effect = spec(serde_json::json!({ "tolerations": [
            { "key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoExecute" }
        ]}));
        assert!(!selects(&other_effect, &gpu));
    }
}
