//! The command an agent gets: "hold revision R of dataset D with this
//! plan". Pure: built from the listing's layout, the spec, the plan and the
//! credentials; the same inputs give the same bytes, so re-sending is a
//! no-op on the agent.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use swarmseed_proto::ChunkLayout;
use swarmseed_proto::pb;

use crate::plan::Plan;
use swarmseed_crd::{Source, ValidSpec};

const PEER_TOKEN_CONTEXT: &str = "swarmseed.io 2026 peer token v1";

/// The origin settings agents use, with the credentials from the Secret.
/// `hf_revision` is the Hugging Face commit the listing was taken at
/// (empty for other origins), so every agent reads that same commit.
pub fn origin(
    source: &Source,
    credentials: BTreeMap<String, String>,
    hf_revision: &str,
) -> pb::Origin {
    let endpoint = source.endpoint.clone().unwrap_or_default();
    pb::Origin {
        uri: source.uri.clone(),
        // A plain-http endpoint is a deliberate choice of the user (an
        // in-cluster store); the URI itself says so for http:// sources.
        allow_http: endpoint.starts_with("http://"),
        endpoint,
        region: source.region.clone().unwrap_or_default(),
        credentials: credentials.into_iter().collect(),
        revision: hf_revision.to_owned(),
    }
}

/// The Secret's entries as credentials. Values that are not UTF-8 are
/// named in the error (never their content).
pub fn credentials(
    data: &BTreeMap<String, ByteString>,
) -> Result<BTreeMap<String, String>, String> {
    data.iter()
        .map(|(k, v)| {
            String::from_utf8(v.0.clone())
                .map(|v| (k.clone(), v.trim_end_matches(['\n', '\r']).to_owned()))
                .map_err(|_| k.clone())
        })
        .collect()
}

/// The peer-protocol credential of one revision of one dataset: derived
/// from a key only the operator and agents know, so it is the same after
/// an operator restart (the re-sent assignment stays a no-op).
pub fn peer_token(secret: &[u8], namespace: &str, name: &str, revision: &str) -> Vec<u8> {
    let key = blake3::derive_key(PEER_TOKEN_CONTEXT, secret);
    let mut h = blake3::Hasher::new_keyed(&key);
    for part in [namespace, name, revision] {
        h.update(&(part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    h.finalize().as_bytes().to_vec()
}

pub struct AssignmentInput<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    /// The Dataset's metadata.uid.
    pub uid: &'a str,
    pub layout: &'a ChunkLayout,
    pub origin: &'a pb::Origin,
    pub spec: &'a ValidSpec,
    pub plan: &'a Plan,
    pub peer_token: &'a [u8],
}

/// The assignment of `node`.
pub fn assignment(input: &AssignmentInput<'_>, node: &str) -> pb::Assignment {
    pb::Assignment {
        dataset: Some(pb::DatasetRef {
            namespace: input.namespace.to_owned(),
            name: input.name.to_owned(),
            uid: input.uid.to_owned(),
        }),
        revision: input.layout.revision().to_hex(),
        chunk_size: input.layout.chunk_size(),
        files: input.layout.files().to_vec(),
        pinned_digest: input
            .spec
            .pinned_digest
            .map(|d| d.0.to_vec())
            .unwrap_or_default(),
        origin: Some(input.origin.clone()),
        fetchers: input.plan.fetchers_pb(),
        peers: input.plan.peers_of(node).to_vec(),
        peer_token: input.peer_token.to_vec(),
        limits: Some(pb::Limits {
            origin_bytes_per_second: input.spec.origin_bandwidth,
            peer_upload_bytes_per_second: input.spec.peer_bandwidth,
            origin_concurrency: 0,
        }),
        plan_generation: input.plan.generation,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{AgentInfo, DEFAULT_MAX_PEERS, PlanInput, plan};
    use swarmseed_proto::ContentDigest;

    fn source(endpoint: Option<&str>) -> Source {
        Source {
            uri: "s3://models/llama".into(),
            endpoint: endpoint.map(Into::into),
            region: Some("eu-west-1".into()),
            secret_ref: None,
            include: None,
            exclude: None,
        }
    }

    #[test]
    fn origin_carries_settings_and_credentials() {
        let creds = credentials(&BTreeMap::from([
            (
                "AWS_ACCESS_KEY_ID".to_owned(),
                ByteString(b"AKIA\n".to_vec()),
            ),
            (
                "AWS_SECRET_ACCESS_KEY".to_owned(),
                ByteString(b"secret".to_vec()),
            ),
        ]))
        .unwrap();
        let o = origin(&source(Some("http://minio.store:9000")), creds, "");
        assert!(o.allow_http);
        assert_eq!(o.region, "eu-west-1");
        assert_eq!(o.credentials["AWS_ACCESS_KEY_ID"], "AKIA");
        assert!(!origin(&source(Some("https://s3.example")), BTreeMap::new(), "").allow_http);
        assert!(!origin(&source(None), BTreeMap::new(), "").allow_http);
        let bad = credentials(&BTreeMap::from([("K".to_owned(), ByteString(vec![0xff]))]));
        assert_eq!(bad, Err("K".to_owned()));
    }

    #[test]
    fn peer_tokens_are_stable_and_per_revision() {
        let t = peer_token(b"key", "ml", "llama", "r1");
        assert_eq!(t.len(), 32);
        assert_eq!(t, peer_token(b"key", "ml", "llama", "r1"));
        assert_ne!(t, peer_token(b"key", "ml", "llama", "r2"));
        assert_ne!(t, peer_token(b"other", "ml", "llama", "r1"));
        assert_ne!(
            peer_token(b"k", "a", "bc", "r"),
            peer_token(b"k", "ab", "c", "r")
        );
    }

    #[test]
    fn assignments_differ_only_in_peers() {
        let files = vec![pb::FileEntry {
            path: "w.bin".into(),
            size: 8 << 20,
            ..Default::default()
        }];
        let layout = ChunkLayout::new(files, 1 << 20).unwrap();
        let agents: Vec<AgentInfo> = (0..3)
            .map(|i| AgentInfo {
                node_name: format!("n{i}"),
                pod_ip: format!("10.0.0.{i}"),
                control_port: 7400,
                peer_address: format!("10.0.0.{i}:7401"),
                public_key: vec![i; 32],
                ready: true,
            })
            .collect();
        let p = plan(&PlanInput {
            layout: &layout,
            agents: &agents,
            no_fetch: &Default::default(),
            previous: None,
            max_fetchers: 2,
            max_peers: DEFAULT_MAX_PEERS,
        })
        .unwrap();
        let spec = ValidSpec {
            pinned_digest: Some(ContentDigest([1; 32])),
            chunk_size: None,
            max_fetchers: 2,
            origin_bandwidth: 100,
            peer_bandwidth: 200,
        };
        let o = origin(&source(None), BTreeMap::new(), "");
        let token = peer_token(b"k", "ml", "llama", &layout.revision().to_hex());
        let input = AssignmentInput {
            namespace: "ml",
            name: "llama",
            uid: "6c1f0e5e-0000-4000-8000-000000000001",
            layout: &layout,
            origin: &o,
            spec: &spec,
            plan: &p,
            peer_token: &token,
        };
        let a0 = assignment(&input, "n0");
        let a1 = assignment(&input, "n1");
        assert_eq!(
            a0.dataset.as_ref().unwrap().uid,
            input.uid,
            "the agent checks it"
        );
        assert_eq!(a0.revision, layout.revision().to_hex());
        assert_eq!(a0.pinned_digest, vec![1; 32]);
        assert_eq!(a0.fetchers.len(), 2);
        assert_eq!(
            a0.limits.as_ref().unwrap().peer_upload_bytes_per_second,
            200
        );
        assert_eq!(a0.plan_generation, 1);
        assert!(a0.peers.iter().all(|x| x.node_name != "n0"));
        assert_eq!(a0.peers.len(), 2);
        assert_eq!(
            pb::Assignment {
                peers: vec![],
                ..a0.clone()
            },
            pb::Assignment {
                peers: vec![],
                ..a1
            }
        );
        assert_eq!(a0, assignment(&input, "n0"), "same inputs, same command");
    }
}
