//! Owns the `Dataset` custom resource (`datasets.swarmseed.io`): its types, schema and checks.
//! Never talks to an API server, an agent or an origin: plain data, shared by every crate.
//!
//! The CRD's OpenAPI schema is generated from these types: doc comments
//! become field descriptions, and `x-kubernetes-validations` (CEL) carry the
//! rules the API server can check on its own, so a bad spec is refused at
//! `kubectl apply` time instead of turning into a failed condition later.
//! [`DatasetSpec::validate`] re-checks the same rules in Rust (the CEL rules
//! are not enforced by every API server, e.g. the test stand-in).

pub mod condition;
pub mod quantity;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Toleration;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use swarmseed_proto::ContentDigest;
use swarmseed_proto::layout::{MAX_CHUNK_SIZE, MIN_CHUNK_SIZE};

use crate::quantity::{ByteQuantity, QuantityError, parse_bytes};

/// The directory, on every selected node, that holds the published dataset
/// (`<HOST_ROOT>/<namespace>/<name>`), for a pod's `hostPath` volume.
pub const HOST_ROOT: &str = "/var/lib/swarmseed/datasets";

/// Origin fetchers per revision when `spec.origin.maxFetchers` is unset.
pub const DEFAULT_MAX_FETCHERS: u32 = 4;

/// Entries kept in `status.failedNodes`.
pub const MAX_FAILED_NODES: usize = 10;

/// Entries kept in `status.nodeProgress`: the first nodes by name. Beyond
/// it the list is cut short (the object must stay well under the API
/// server's size limit) and `status.nodes` stays the authoritative count.
pub const MAX_NODE_PROGRESS: usize = 256;

/// URI schemes a source may use.
pub const SOURCE_SCHEMES: [&str; 6] = ["s3", "gs", "az", "http", "https", "hf"];

/// A dataset (files from a bucket, an HTTP server or the Hugging Face Hub)
/// copied onto the local disk of every selected node, moving the bytes
/// between the nodes so that each byte leaves the origin about once. Pods
/// mount `status.path` as a hostPath volume and select nodes carrying the
/// label `status.nodeLabel`.
// The printer columns repeat `type_ = "string"`, which clippy takes for a
// duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "swarmseed.io",
    version = "v1alpha1",
    kind = "Dataset",
    plural = "datasets",
    namespaced,
    status = "DatasetStatus",
    shortname = "dset",
    category = "swarmseed",
    derive = "PartialEq",
    doc = "A dataset copied onto the local disks of the selected nodes.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.readyText",
        description = "Nodes holding a verified copy / nodes selected"
    ),
    printcolumn(
        name = "Size",
        type_ = "string",
        json_path = ".status.sizeText",
        description = "Total size of the dataset"
    ),
    printcolumn(
        name = "Origin",
        type_ = "string",
        json_path = ".status.originRatio",
        description = "Bytes read from the origin / dataset size (1.00x: each byte left the origin once)"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct DatasetSpec {
    /// Where the files come from.
    pub source: Source,

    /// The expected content digest, `blake3:<64 lowercase hex digits>`, as
    /// reported in `status.contentDigest` of an earlier copy. When the
    /// source's content differs, nothing is published and the Dataset
    /// reports `DigestMismatch`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^blake3:[0-9a-f]{64}$"))]
    pub digest: Option<String>,

    /// Nodes must carry all of these labels to be selected. With neither
    /// `nodeSelector` nor `matchExpressions`, every node running an agent
    /// is selected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,

    /// Further node label requirements, all of which must hold (like a
    /// node affinity's `matchExpressions`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub match_expressions: Option<Vec<NodeSelectorRequirement>>,

    /// Which tainted nodes may be selected: a node with a `NoSchedule` or
    /// `NoExecute` taint is selected only when one of these tolerates it
    /// (the same matching as a pod's tolerations).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,

    /// The chunk size: the unit fetched, verified and exchanged between
    /// nodes. A power of two from 64Ki to 256Mi, in bytes or as a quantity
    /// (`4Mi`). Default: 1Mi from 1Gi to 16Gi of data; smaller below (about
    /// 1024 chunks, at least 256Ki), larger above (at most 16384 chunks, up
    /// to 64Mi).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxLength" = 16))]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "type(self) == int ? self in [65536, 131072, 262144, 524288, 1048576, 2097152, 4194304, 8388608, 16777216, 33554432, 67108864, 134217728, 268435456] : self in ['64Ki', '128Ki', '256Ki', '512Ki', '1Mi', '2Mi', '4Mi', '8Mi', '16Mi', '32Mi', '64Mi', '128Mi', '256Mi']",
        "message": "chunkSize must be a power of two from 64Ki to 256Mi (bytes, or a quantity like 4Mi)"
    }]))]
    pub chunk_size: Option<ByteQuantity>,

    /// How the origin is read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<OriginSpec>,

    /// Upload cap per node for serving peers, in bytes per second or as a
    /// quantity (`500Mi`). Unlimited when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxLength" = 32))]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "type(self) == int ? self >= 0 : self.matches('^[0-9]+(Ki|Mi|Gi|Ti|k|M|G|T)?$')",
        "message": "peerBandwidth must be bytes per second or a quantity like 500Mi"
    }]))]
    pub peer_bandwidth: Option<ByteQuantity>,
}

/// The source of the files.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Source {
    /// `s3://bucket/prefix`, `gs://bucket/prefix`, `az://container/prefix`,
    /// `http(s)://host/dir/` (a JSON autoindex), `http(s)://host/file`, or
    /// `hf://org/repo[@revision]` (also `hf://datasets/org/repo`). Every
    /// object below a prefix is part of the dataset, with paths relative to
    /// it.
    #[schemars(length(min = 1, max = 4096))]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "self.matches('^(s3|gs|az|http|https|hf)://.+')",
        "message": "uri must start with s3://, gs://, az://, http://, https:// or hf://"
    }]))]
    pub uri: String,

    /// Endpoint of an S3-compatible store (MinIO, Ceph…), a GCS or Azure
    /// endpoint, or a Hugging Face mirror. Empty: the provider's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,

    /// S3 region (default `us-east-1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,

    /// A Secret in the Dataset's namespace with the credentials. Keys: S3:
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, optional
    /// `AWS_SESSION_TOKEN`; GCS: `GOOGLE_SERVICE_ACCOUNT_KEY`; Azure:
    /// `AZURE_STORAGE_ACCOUNT_NAME` and `AZURE_STORAGE_ACCOUNT_KEY` or
    /// `AZURE_STORAGE_SAS_TOKEN`; HTTP(S): `HTTP_BEARER_TOKEN`; Hugging Face:
    /// `HF_TOKEN`. Without it, requests are anonymous.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretRef>,

    /// Globs over the relative paths to keep (`**/*.safetensors`); `*` stays
    /// within a path segment, `**` crosses segments. Empty: everything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include: Option<Vec<String>>,

    /// Globs over the relative paths to leave out; exclude wins over
    /// include.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclude: Option<Vec<String>>,
}

/// A Secret in the Dataset's namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct SecretRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// A node label requirement.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "self.operator in ['In', 'NotIn'] ? (has(self.values) && size(self.values) > 0) : (!has(self.values) || size(self.values) == 0)",
    "message": "In and NotIn need values; Exists and DoesNotExist take none"
}]))]
pub struct NodeSelectorRequirement {
    /// The label key.
    #[schemars(length(min = 1, max = 317))]
    pub key: String,
    /// How the node's label relates to `values`.
    pub operator: SelectorOperator,
    /// For `In` and `NotIn`: at least one value. For `Exists` and
    /// `DoesNotExist`: empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub values: Vec<String>,
}

/// The relation of a node label to a requirement's values.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum SelectorOperator {
    /// The label is set to one of the values.
    In,
    /// The label is unset or set to none of the values.
    NotIn,
    /// The label is set.
    Exists,
    /// The label is unset.
    DoesNotExist,
}

/// How the origin is read.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OriginSpec {
    /// At most this many nodes read from the origin, each a disjoint share
    /// of the chunks, so that each byte leaves the origin about once.
    #[serde(default = "default_max_fetchers")]
    #[schemars(range(min = 1, max = 1024))]
    pub max_fetchers: u32,

    /// Download cap per fetching node from the origin, in bytes per second
    /// or as a quantity (`200Mi`). Unlimited when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxLength" = 32))]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "type(self) == int ? self >= 0 : self.matches('^[0-9]+(Ki|Mi|Gi|Ti|k|M|G|T)?$')",
        "message": "bandwidth must be bytes per second or a quantity like 200Mi"
    }]))]
    pub bandwidth: Option<ByteQuantity>,
}

impl Default for OriginSpec {
    fn default() -> Self {
        Self {
            max_fetchers: DEFAULT_MAX_FETCHERS,
            bandwidth: None,
        }
    }
}

fn default_max_fetchers() -> u32 {
    DEFAULT_MAX_FETCHERS
}

/// What the operator observed.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatasetStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Content digest of the revision being held (`blake3:…`), once the
    /// first node verified every chunk. Pin it in `spec.digest` to refuse
    /// any other content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_digest: Option<String>,

    /// Identity of the listing being held (hex): changes when the source
    /// changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,

    /// Size of the dataset in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_bytes: Option<u64>,

    /// Number of files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<u64>,

    /// Chunk size in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_size: Option<u64>,

    /// Node counts.
    #[serde(default)]
    pub nodes: NodeCounts,

    /// Bytes all nodes read from the origin for this revision.
    #[serde(default)]
    pub bytes_from_origin: u64,

    /// Bytes all nodes received from peers for this revision.
    #[serde(default)]
    pub bytes_from_peers: u64,

    /// The directory to mount with a hostPath volume on the selected nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,

    /// The label key (value `ready`) set on every node holding a verified
    /// copy: put it into a pod's nodeSelector or node affinity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_label: Option<String>,

    /// `ready/desired` nodes, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_text: Option<String>,

    /// Human-readable size, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_text: Option<String>,

    /// `bytesFromOrigin / totalBytes`, e.g. `1.01x`, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin_ratio: Option<String>,

    /// Some nodes that failed (at most 10), with the reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    pub failed_nodes: Vec<FailedNode>,

    /// Progress of each selected node, sorted by node name, so that people
    /// without access to the agents can follow a copy (`kubectl swarmseed
    /// status`). At most 256 entries: with more selected nodes the list
    /// holds the first 256 by name, and `nodes` stays the authoritative
    /// count.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub node_progress: Vec<NodeProgress>,

    /// `Ready` (every selected node holds a verified copy), `Progressing`
    /// (bytes are moving), `Degraded` (some node failed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// Counts of selected nodes.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeCounts {
    /// Nodes selected (running an agent and matching the selector).
    #[serde(default)]
    pub desired: u32,
    /// Nodes holding a verified copy of the current revision.
    #[serde(default)]
    pub ready: u32,
    /// Nodes still receiving the current revision.
    #[serde(default)]
    pub seeding: u32,
    /// Nodes that stopped on an error.
    #[serde(default)]
    pub failed: u32,
}

/// Where one selected node stands with the current revision.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeProgress {
    /// Node name.
    pub node: String,
    /// Where the node is with the current revision.
    pub state: NodeProgressState,
    /// Bytes of the current revision the node holds verified.
    #[serde(default)]
    pub bytes_verified: u64,
    /// Size of the current revision (what `bytesVerified` grows to).
    #[serde(default)]
    pub bytes_total: u64,
    /// Bytes of the current revision the node read from the origin.
    #[serde(default)]
    pub bytes_from_origin: u64,
    /// Bytes of the current revision the node received from peers.
    #[serde(default)]
    pub bytes_from_peers: u64,
}

/// Where a node is with the current revision.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum NodeProgressState {
    /// Nothing of the current revision yet (not assigned, not started, or
    /// the source is not listed yet).
    Pending,
    /// Chunks are moving.
    Transferring,
    /// Every chunk verified; flushing and publishing.
    Publishing,
    /// Holds a verified copy of the current revision.
    Ready,
    /// Stopped on an error (see `failedNodes`).
    Failed,
    /// Its agent could not be asked; the bytes are the last ones known.
    Unreachable,
}

impl NodeProgressState {
    /// The name used in the API (`Ready`, `Failed`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Transferring => "Transferring",
            Self::Publishing => "Publishing",
            Self::Ready => "Ready",
            Self::Failed => "Failed",
            Self::Unreachable => "Unreachable",
        }
    }
}

/// A node that failed, and why.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailedNode {
    /// Node name.
    pub node: String,
    /// Machine-readable reason (`DigestMismatch`, `InsufficientStorage`,
    /// `SourceDenied`, `UnsafePath`, `AgentUnreachable`, …).
    pub reason: String,
    /// What a person can act on.
    pub message: String,
}

/// A spec that breaks a rule (the same rules as the CRD's CEL validations,
/// checked again because not every API server enforces them).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("source uri {0:?} must start with s3://, gs://, az://, http://, https:// or hf://")]
    Scheme(String),
    #[error(transparent)]
    Digest(#[from] swarmseed_proto::digest::ParseDigestError),
    #[error("chunkSize {0} is not a power of two from 64Ki to 256Mi")]
    ChunkSize(u64),
    #[error("spec.origin.maxFetchers must be at least 1")]
    MaxFetchers,
    #[error("matchExpressions: {0}")]
    Selector(String),
    #[error("{field}: {source}")]
    Quantity {
        field: &'static str,
        source: QuantityError,
    },
}

impl SpecError {
    /// A short stable label (metrics, logs).
    pub fn label(&self) -> &'static str {
        match self {
            Self::Scheme(_) => "scheme",
            Self::Digest(_) => "digest",
            Self::ChunkSize(_) => "chunk_size",
            Self::MaxFetchers => "max_fetchers",
            Self::Selector(_) => "selector",
            Self::Quantity { .. } => "quantity",
        }
    }
}

/// A spec with its quantities resolved to numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidSpec {
    pub pinned_digest: Option<ContentDigest>,
    /// None: the default for the dataset's size.
    pub chunk_size: Option<u64>,
    pub max_fetchers: u32,
    /// Bytes per second; 0 is unlimited.
    pub origin_bandwidth: u64,
    pub peer_bandwidth: u64,
}

impl DatasetSpec {
    /// Checks the rules the schema states and resolves quantities.
    pub fn validate(&self) -> Result<ValidSpec, SpecError> {
        let scheme = self
            .source
            .uri
            .split_once("://")
            .map(|(s, rest)| (s, rest.is_empty()));
        match scheme {
            Some((s, false)) if SOURCE_SCHEMES.contains(&s) => {}
            _ => return Err(SpecError::Scheme(self.source.uri.clone())),
        }
        let pinned_digest = self.digest.as_deref().map(str::parse).transpose()?;
        let chunk_size = quantity("chunkSize", self.chunk_size.as_ref())?;
        if let Some(c) = chunk_size
            && (!c.is_power_of_two() || !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&c))
        {
            return Err(SpecError::ChunkSize(c));
        }
        for e in self.match_expressions.iter().flatten() {
            let needs_values = matches!(e.operator, SelectorOperator::In | SelectorOperator::NotIn);
            if needs_values == e.values.is_empty() {
                return Err(SpecError::Selector(format!(
                    "{:?} on {:?} {}",
                    e.operator,
                    e.key,
                    if needs_values {
                        "needs values"
                    } else {
                        "takes no values"
                    }
                )));
            }
        }
        let origin = self.origin.clone().unwrap_or_default();
        if origin.max_fetchers == 0 {
            return Err(SpecError::MaxFetchers);
        }
        Ok(ValidSpec {
            pinned_digest,
            chunk_size,
            max_fetchers: origin.max_fetchers,
            origin_bandwidth: quantity("origin.bandwidth", origin.bandwidth.as_ref())?.unwrap_or(0),
            peer_bandwidth: quantity("peerBandwidth", self.peer_bandwidth.as_ref())?.unwrap_or(0),
        })
    }
}

fn quantity(field: &'static str, q: Option<&ByteQuantity>) -> Result<Option<u64>, SpecError> {
    q.map(|q| parse_bytes(q).map_err(|source| SpecError::Quantity { field, source }))
        .transpose()
}

impl Dataset {
    /// The hostPath directory holding this dataset on every selected node.
    pub fn host_path(namespace: &str, name: &str) -> String {
        format!("{HOST_ROOT}/{namespace}/{name}")
    }
}

/// The CRD as YAML, as checked in under `crds/`.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    use kube::CustomResourceExt;
    let yaml = serde_yaml::to_string(&Dataset::crd())?;
    Ok(format!(
        "# Generated by `swarmseed-operator crd`; do not edit.\n{yaml}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(uri: &str) -> DatasetSpec {
        serde_json::from_value(serde_json::json!({ "source": { "uri": uri } })).unwrap()
    }

    #[test]
    fn a_minimal_spec_gets_the_documented_defaults() {
        let v = spec("s3://bucket/models/llama").validate().unwrap();
        assert_eq!(
            v,
            ValidSpec {
                pinned_digest: None,
                chunk_size: None,
                max_fetchers: 4,
                origin_bandwidth: 0,
                peer_bandwidth: 0
            }
        );
        let with_origin: DatasetSpec = serde_json::from_value(serde_json::json!({
            "source": { "uri": "hf://org/repo@main" }, "origin": { "bandwidth": "100Mi" }
        }))
        .unwrap();
        let v = with_origin.validate().unwrap();
        assert_eq!((v.max_fetchers, v.origin_bandwidth), (4, 100 << 20));
    }

    #[test]
    fn quantities_resolve_to_bytes() {
        let s: DatasetSpec = serde_json::from_value(serde_json::json!({
            "source": { "uri": "https://example.org/data/" },
            "chunkSize": "4Mi",
            "peerBandwidth": 1000,
            "digest": format!("blake3:{}", "ab".repeat(32)),
        }))
        .unwrap();
        let v = s.validate().unwrap();
        assert_eq!(v.chunk_size, Some(4 << 20));
        assert_eq!(v.peer_bandwidth, 1000);
        assert_eq!(v.pinned_digest, Some(ContentDigest([0xab; 32])));
    }

    #[test]
    fn invalid_specs_say_what_is_wrong() {
        let err = spec("ftp://host/x").validate().unwrap_err();
        assert_eq!(err.label(), "scheme");
        assert!(err.to_string().contains("\"ftp://host/x\""), "{err}");
        assert_eq!(spec("s3://").validate().unwrap_err().label(), "scheme");

        let mut s = spec("s3://b/p");
        s.chunk_size = Some(ByteQuantity::from("3Mi"));
        assert_eq!(s.validate().unwrap_err(), SpecError::ChunkSize(3 << 20));
        s.chunk_size = Some(ByteQuantity::Int(32 * 1024));
        assert_eq!(s.validate().unwrap_err(), SpecError::ChunkSize(32 * 1024));

        let mut s = spec("s3://b/p");
        s.digest = Some("blake3:XYZ".into());
        assert_eq!(s.validate().unwrap_err().label(), "digest");

        let mut s = spec("s3://b/p");
        s.origin = Some(OriginSpec {
            max_fetchers: 0,
            bandwidth: None,
        });
        assert_eq!(s.validate().unwrap_err(), SpecError::MaxFetchers);

        let mut s = spec("s3://b/p");
        s.match_expressions = Some(vec![NodeSelectorRequirement {
            key: "gpu".into(),
            operator: SelectorOperator::In,
            values: vec![],
        }]);
        assert_eq!(
            s.validate().unwrap_err().to_string(),
            "matchExpressions: In on \"gpu\" needs values"
        );
    }

    #[test]
    fn host_path_is_per_namespace_and_name() {
        assert_eq!(
            Dataset::host_path("ml", "llama"),
            "/var/lib/swarmseed/datasets/ml/llama"
        );
    }
}
