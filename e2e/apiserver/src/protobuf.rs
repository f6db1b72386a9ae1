//! Just enough of the Kubernetes protobuf encoding to accept the bodies
//! typed clients send (`kubectl create secret|configmap|namespace|serviceaccount`,
//! the DeleteOptions of Helm's release storage).

use serde_json::{Map, Value, json};

/// The `k8s\0` magic before a `runtime.Unknown` envelope.
pub(crate) const MAGIC: &[u8] = b"k8s\0";

enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

fn varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos)?;
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// Splits a message into (field number, value); None on malformed input.
fn fields(buf: &[u8]) -> Option<Vec<(u64, Field<'_>)>> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let tag = varint(buf, &mut pos)?;
        let value = match tag & 7 {
            0 => Field::Varint(varint(buf, &mut pos)?),
            2 => {
                let len = usize::try_from(varint(buf, &mut pos)?).ok()?;
                let end = pos.checked_add(len).filter(|e| *e <= buf.len())?;
                let v = &buf[pos..end];
                pos = end;
                Field::Bytes(v)
            }
            1 => {
                pos = pos.checked_add(8).filter(|p| *p <= buf.len())?;
                Field::Varint(0)
            }
            5 => {
                pos = pos.checked_add(4).filter(|p| *p <= buf.len())?;
                Field::Varint(0)
            }
            _ => return None,
        };
        out.push((tag >> 3, value));
    }
    Some(out)
}

fn text(b: &[u8]) -> Option<Value> {
    String::from_utf8(b.to_vec()).ok().map(Value::String)
}

pub(crate) fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(A[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A `map<string, string|bytes>` entry into `into`.
fn map_entry(b: &[u8], into: &mut Map<String, Value>, bytes: bool) -> Option<()> {
    let (mut k, mut v) = (String::new(), Value::String(String::new()));
    for (n, f) in fields(b)? {
        match (n, f) {
            (1, Field::Bytes(x)) => k = String::from_utf8(x.to_vec()).ok()?,
            (2, Field::Bytes(x)) if bytes => v = json!(base64(x)),
            (2, Field::Bytes(x)) => v = text(x)?,
            _ => {}
        }
    }
    into.insert(k, v);
    Some(())
}

fn object_meta(b: &[u8]) -> Option<Value> {
    let mut m = Map::new();
    let (mut labels, mut annotations, mut finalizers) = (Map::new(), Map::new(), Vec::new());
    for (n, f) in fields(b)? {
        match (n, f) {
            (1, Field::Bytes(x)) => drop(m.insert("name".into(), text(x)?)),
            (2, Field::Bytes(x)) => drop(m.insert("generateName".into(), text(x)?)),
            (3, Field::Bytes(x)) => drop(m.insert("namespace".into(), text(x)?)),
            (6, Field::Bytes(x)) => drop(m.insert("resourceVersion".into(), text(x)?)),
            (11, Field::Bytes(x)) => map_entry(x, &mut labels, false)?,
            (12, Field::Bytes(x)) => map_entry(x, &mut annotations, false)?,
            (14, Field::Bytes(x)) => finalizers.push(text(x)?),
            _ => {}
        }
    }
    // Proto2 writes empty strings; JSON clients omit them.
    m.retain(|_, v| v.as_str() != Some(""));
    if !labels.is_empty() {
        m.insert("labels".into(), Value::Object(labels));
    }
    if !annotations.is_empty() {
        m.insert("annotations".into(), Value::Object(annotations));
    }
    if !finalizers.is_empty() {
        m.insert("finalizers".into(), Value::Array(finalizers));
    }
    Some(Value::Object(m))
}

/// Decodes a protobuf body of one of the supported kinds into JSON; None
/// when the kind is not supported or the bytes are malformed.
pub(crate) fn decode(body: &[u8]) -> Option<Value> {
    let envelope = body.strip_prefix(MAGIC)?;
    let (mut api_version, mut kind, mut raw) = (Value::Null, String::new(), &[][..]);
    for (n, f) in fields(envelope)? {
        match (n, f) {
            (1, Field::Bytes(tm)) => {
                for (tn, tf) in fields(tm)? {
                    match (tn, tf) {
                        (1, Field::Bytes(x)) => api_version = text(x)?,
                        (2, Field::Bytes(x)) => kind = String::from_utf8(x.to_vec()).ok()?,
                        _ => {}
                    }
                }
            }
            (2, Field::Bytes(x)) => raw = x,
            _ => {}
        }
    }
    let mut obj = Map::new();
    obj.insert("apiVersion".into(), api_version);
    obj.insert("kind".into(), json!(kind));
    if kind == "DeleteOptions" {
        return delete_options(raw, obj);
    }
    let (mut data, mut extra) = (Map::new(), Map::new());
    for (n, f) in fields(raw)? {
        match (kind.as_str(), n, f) {
            (_, 1, Field::Bytes(x)) => drop(obj.insert("metadata".into(), object_meta(x)?)),
            ("ConfigMap", 2, Field::Bytes(x)) => map_entry(x, &mut data, false)?,
            ("ConfigMap", 3, Field::Bytes(x)) => map_entry(x, &mut extra, true)?,
            ("Secret", 2, Field::Bytes(x)) => map_entry(x, &mut data, true)?,
            ("Secret", 3, Field::Bytes(x)) => drop(obj.insert("type".into(), text(x)?)),
            ("Secret", 4, Field::Bytes(x)) => map_entry(x, &mut extra, false)?,
            ("ConfigMap", 4, Field::Varint(v)) | ("Secret", 5, Field::Varint(v)) => {
                drop(obj.insert("immutable".into(), json!(v != 0)));
            }
            ("Namespace" | "ServiceAccount", _, _) => {}
            (_, _, _) => {}
        }
    }
    if !matches!(
        kind.as_str(),
        "ConfigMap" | "Secret" | "Namespace" | "ServiceAccount"
    ) {
        return None;
    }
    if !data.is_empty() {
        obj.insert("data".into(), Value::Object(data));
    }
    if !extra.is_empty() {
        let key = if kind == "Secret" {
            "stringData"
        } else {
            "binaryData"
        };
        obj.insert(key.into(), Value::Object(extra));
    }
    Some(Value::Object(obj))
}

/// `DeleteOptions`, as typed clients (Helm's release storage) send them
/// with a DELETE.
fn delete_options(raw: &[u8], mut obj: Map<String, Value>) -> Option<Value> {
    let mut dry_run = Vec::new();
    for (n, f) in fields(raw)? {
        match (n, f) {
            (1, Field::Varint(v)) => {
                // int64 as a varint: two's complement for negative values.
                let secs = i64::from_ne_bytes(v.to_ne_bytes());
                drop(obj.insert("gracePeriodSeconds".into(), json!(secs)));
            }
            (2, Field::Bytes(x)) => {
                let mut pre = Map::new();
                for (pn, pf) in fields(x)? {
                    match (pn, pf) {
                        (1, Field::Bytes(y)) => drop(pre.insert("uid".into(), text(y)?)),
                        (2, Field::Bytes(y)) => {
                            drop(pre.insert("resourceVersion".into(), text(y)?));
                        }
                        _ => {}
                    }
                }
                obj.insert("preconditions".into(), Value::Object(pre));
            }
            (3, Field::Varint(v)) => drop(obj.insert("orphanDependents".into(), json!(v != 0))),
            (4, Field::Bytes(x)) => drop(obj.insert("propagationPolicy".into(), text(x)?)),
            (5, Field::Bytes(x)) => dry_run.push(text(x)?),
            _ => {}
        }
    }
    if !dry_run.is_empty() {
        obj.insert("dryRun".into(), Value::Array(dry_run));
    }
    Some(Value::Object(obj))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(n: u64, b: &[u8]) -> Vec<u8> {
        let mut out = vec![
            u8::try_from(n << 3 | 2).expect("small tag"),
            u8::try_from(b.len()).expect("short"),
        ];
        out.extend_from_slice(b);
        out
    }

    #[test]
    fn decodes_a_secret_envelope() {
        let meta = [
            field(1, b"creds"),
            field(11, &[field(1, b"a"), field(2, b"b")].concat()),
        ]
        .concat();
        let entry = [field(1, b"key"), field(2, b"hi!")].concat();
        let secret = [field(1, &meta), field(2, &entry), field(3, b"Opaque")].concat();
        let tm = [field(1, b"v1"), field(2, b"Secret")].concat();
        let body = [MAGIC.to_vec(), field(1, &tm), field(2, &secret)].concat();
        assert_eq!(
            decode(&body),
            Some(
                json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {"name": "creds", "labels": {"a": "b"}}, "data": {"key": "aGkh"}})
            )
        );
        assert_eq!(base64(b"ab"), "YWI=");
    }

    #[test]
    fn decodes_delete_options() {
        let pre = [field(1, b"u-1"), field(2, b"42")].concat();
        let opts = [
            vec![1 << 3, 30],
            field(2, &pre),
            field(4, b"Background"),
            field(5, b"All"),
        ]
        .concat();
        let tm = [field(1, b"v1"), field(2, b"DeleteOptions")].concat();
        let body = [MAGIC.to_vec(), field(1, &tm), field(2, &opts)].concat();
        assert_eq!(
            decode(&body),
            Some(
                json!({"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 30,
                "preconditions": {"uid": "u-1", "resourceVersion": "42"},
                "propagationPolicy": "Background", "dryRun": ["All"]})
            )
        );
    }
}
