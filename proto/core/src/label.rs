//! Labels that name swarmseed's objects in the cluster: the node label that
//! marks a node holding a verified copy of a Dataset, and the labels of the
//! agent DaemonSet's Pods, by which the operator finds its agents.
//!
//! A node label key's name part is at most 63 characters, but a namespace may be
//! 63 and a Dataset name 253 characters long, so the key cannot spell them
//! out. It carries a hash instead: `swarmseed.io/ds.<16 hex of
//! blake3("<namespace>/<name>")>`, value `ready`. The key is recorded in
//! `status.nodeLabel` so users copy it into a pod's nodeSelector.

/// The label value on a node that holds a verified copy.
pub const READY_VALUE: &str = "ready";

/// The prefix of every node label key the operator sets (`swarmseed.io/ds.`).
pub const KEY_PREFIX: &str = "swarmseed.io/ds.";

/// The label key for the Dataset `namespace/name`.
pub fn key(namespace: &str, name: &str) -> String {
    let hash = blake3::hash(format!("{namespace}/{name}").as_bytes());
    format!("{KEY_PREFIX}{}", hex::encode(&hash.as_bytes()[..8]))
}

/// Whether `key` is a node label key set by the operator (for cleaning up
/// labels of Datasets that no longer exist).
pub fn is_dataset_key(key: &str) -> bool {
    key.strip_prefix(KEY_PREFIX).is_some_and(|h| {
        h.len() == 16
            && h.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    })
}

/// The labels every agent Pod carries: the agent DaemonSet's selector. The
/// Helm chart spells them in its templates; a chart test holds the two
/// equal.
pub const AGENT_POD_LABELS: [(&str, &str); 2] = [
    ("app.kubernetes.io/name", "swarmseed"),
    ("app.kubernetes.io/component", "agent"),
];

/// [`AGENT_POD_LABELS`] as a label selector, for listing and watching the
/// agent Pods.
pub const AGENT_SELECTOR: &str =
    "app.kubernetes.io/name=swarmseed,app.kubernetes.io/component=agent";

#[cfg(test)]
mod tests {
    use super::*;

    /// The Kubernetes rules for a qualified label key with a DNS prefix.
    fn is_valid_label_key(key: &str) -> bool {
        let Some((prefix, name)) = key.split_once('/') else {
            return false;
        };
        let name_ok = !name.is_empty()
            && name.len() <= 63
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            && name.as_bytes()[0].is_ascii_alphanumeric()
            && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric();
        let prefix_ok = prefix.len() <= 253
            && prefix.split('.').all(|l| {
                !l.is_empty()
                    && l.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            });
        name_ok && prefix_ok
    }

    #[test]
    fn keys_are_valid_for_the_longest_names() {
        let ns = "n".repeat(63);
        let name = format!("{}.{}", "a".repeat(126), "b".repeat(126));
        assert_eq!(name.len(), 253);
        let k = key(&ns, &name);
        assert!(is_valid_label_key(&k), "{k}");
        assert_eq!(k.len(), "swarmseed.io/ds.".len() + 16);
        assert!(is_dataset_key(&k));
        assert!(is_valid_label_key(&key("a", "b")));
    }

    #[test]
    fn keys_are_stable_and_distinct() {
        // Stable across releases: users copy the key into their manifests.
        assert_eq!(key("ml", "llama"), key("ml", "llama"));
        let expected = hex::encode(&blake3::hash(b"ml/llama").as_bytes()[..8]);
        assert_eq!(key("ml", "llama"), format!("swarmseed.io/ds.{expected}"));
        assert_ne!(key("ml", "llama"), key("ml2", "llama"));
        // The separator keeps "a/bc" and "ab/c" apart.
        assert_ne!(key("a", "bc"), key("ab", "c"));
    }

    #[test]
    fn foreign_keys_are_not_taken_for_ours() {
        assert!(!is_dataset_key("swarmseed.io/ds.xyz"));
        assert!(!is_dataset_key("example.com/ds.0123456789abcdef"));
        assert!(!is_dataset_key("swarmseed.io/ds.0123456789ABCDEF"));
    }

    #[test]
    fn the_agent_selector_selects_the_agent_pod_labels() {
        let pairs: Vec<String> = AGENT_POD_LABELS
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        assert_eq!(AGENT_SELECTOR, pairs.join(","));
    }
}
