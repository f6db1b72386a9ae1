//! A dataset's identity on the node, checked to be safe as directory names.

use std::path::{Path, PathBuf};

use swarmseed_proto::pb;

use super::StoreError;

/// A dataset's identity on the node: its Kubernetes namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DatasetKey {
    pub namespace: String,
    pub name: String,
}

impl DatasetKey {
    /// Validates both parts as Kubernetes names (a namespace is a DNS-1123
    /// label, a name a DNS-1123 subdomain), which also makes them safe as
    /// directory names.
    pub fn new(namespace: &str, name: &str) -> Result<Self, StoreError> {
        let label_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 63
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !s.starts_with('-')
                && !s.ends_with('-')
        };
        if !label_ok(namespace) {
            return Err(StoreError::InvalidName(format!(
                "namespace {namespace:?} is not a valid Kubernetes namespace"
            )));
        }
        if name.len() > 253 || !name.split('.').all(label_ok) {
            return Err(StoreError::InvalidName(format!(
                "name {name:?} is not a valid Kubernetes object name"
            )));
        }
        Ok(Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
    }

    pub fn from_ref(r: Option<&pb::DatasetRef>) -> Result<Self, StoreError> {
        let r = r.ok_or_else(|| StoreError::InvalidName("dataset is missing".into()))?;
        Self::new(&r.namespace, &r.name)
    }

    pub fn to_ref(&self) -> pb::DatasetRef {
        pb::DatasetRef {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            uid: String::new(),
        }
    }

    pub(super) fn rel(&self) -> PathBuf {
        Path::new(&self.namespace).join(&self.name)
    }
}

impl std::fmt::Display for DatasetKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_kubernetes_names_are_refused() {
        for (ns, name) in [
            ("", "a"),
            ("A", "a"),
            ("a", "../x"),
            ("a", "x/y"),
            ("a", ".."),
            ("a", ""),
        ] {
            assert!(DatasetKey::new(ns, name).is_err(), "{ns}/{name}");
        }
        assert!(DatasetKey::new("team-a", "llama.v2").is_ok());
    }
}
