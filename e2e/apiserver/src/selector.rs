//! Label and field selectors (`labelSelector=`, `fieldSelector=`).

use serde_json::Value;

use crate::resources::ResourceType;
use crate::status::ApiError;

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
    Gt(String, i64),
    Lt(String, i64),
}

/// A parsed label selector; all requirements must hold.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct LabelSelector(pub Vec<Requirement>);

/// Splits on commas outside parentheses.
fn split_terms(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn valid_key(key: &str) -> bool {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-.".contains(c))
    });
    name_ok && prefix_ok
}

fn valid_value(v: &str) -> bool {
    v.is_empty()
        || (v.len() <= 63
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            && v.starts_with(|c: char| c.is_ascii_alphanumeric())
            && v.ends_with(|c: char| c.is_ascii_alphanumeric()))
}

fn bad(sel: &str, why: &str) -> ApiError {
    ApiError::bad_request(format!(
        "unable to parse requirement: {why} (selector {sel:?})"
    ))
}

impl LabelSelector {
    pub fn parse(sel: &str) -> Result<Self, ApiError> {
        let mut reqs = Vec::new();
        if sel.trim().is_empty() {
            return Ok(Self(reqs));
        }
        for term in split_terms(sel) {
            let term = term.trim();
            if term.is_empty() {
                return Err(bad(sel, "empty requirement"));
            }
            let req = if let Some(key) = term.strip_prefix('!') {
                Requirement::NotExists(key.trim().to_string())
            } else if let Some(open) = term.find('(') {
                let close = term
                    .rfind(')')
                    .filter(|c| *c == term.len() - 1 && *c > open)
                    .ok_or_else(|| bad(sel, "unbalanced parentheses"))?;
                let head: Vec<&str> = term[..open].split_whitespace().collect();
                let values: Vec<String> = term[open + 1..close]
                    .split(',')
                    .map(|v| v.trim().to_string())
                    .collect();
                if values.iter().any(|v| !valid_value(v)) {
                    return Err(bad(sel, "invalid label value"));
                }
                match head.as_slice() {
                    [k, "in"] => Requirement::In((*k).to_string(), values),
                    [k, "notin"] => Requirement::NotIn((*k).to_string(), values),
                    _ => return Err(bad(sel, "expected `key in (...)` or `key notin (...)`")),
                }
            } else if let Some((k, v)) = term.split_once("!=") {
                Requirement::NotEquals(k.trim().to_string(), v.trim().to_string())
            } else if let Some((k, v)) = term.split_once("==") {
                Requirement::Equals(k.trim().to_string(), v.trim().to_string())
            } else if let Some((k, v)) = term.split_once('=') {
                Requirement::Equals(k.trim().to_string(), v.trim().to_string())
            } else if let Some((k, v)) = term.split_once('>') {
                let n = v
                    .trim()
                    .parse()
                    .map_err(|_| bad(sel, "`>` needs an integer"))?;
                Requirement::Gt(k.trim().to_string(), n)
            } else if let Some((k, v)) = term.split_once('<') {
                let n = v
                    .trim()
                    .parse()
                    .map_err(|_| bad(sel, "`<` needs an integer"))?;
                Requirement::Lt(k.trim().to_string(), n)
            } else {
                Requirement::Exists(term.to_string())
            };
            let (key, value) = match &req {
                Requirement::Equals(k, v) | Requirement::NotEquals(k, v) => (k, Some(v)),
                Requirement::In(k, _)
                | Requirement::NotIn(k, _)
                | Requirement::Exists(k)
                | Requirement::NotExists(k)
                | Requirement::Gt(k, _)
                | Requirement::Lt(k, _) => (k, None),
            };
            if !valid_key(key) {
                return Err(bad(sel, &format!("invalid label key {key:?}")));
            }
            if value.is_some_and(|v| !valid_value(v)) {
                return Err(bad(sel, "invalid label value"));
            }
            reqs.push(req);
        }
        Ok(Self(reqs))
    }

    pub fn matches(&self, obj: &Value) -> bool {
        let labels = &obj["metadata"]["labels"];
        let get = |k: &str| labels.get(k).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => get(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => get(k) != Some(v.as_str()),
            Requirement::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Requirement::NotIn(k, vs) => get(k).is_none_or(|x| vs.iter().all(|v| v != x)),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::NotExists(k) => get(k).is_none(),
            Requirement::Gt(k, n) => get(k)
                .and_then(|x| x.parse::<i64>().ok())
                .is_some_and(|x| x > *n),
            Requirement::Lt(k, n) => get(k)
                .and_then(|x| x.parse::<i64>().ok())
                .is_some_and(|x| x < *n),
        })
    }
}

/// A parsed field selector: `(path, wanted, equal?)` terms.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct FieldSelector(pub Vec<(String, String, bool)>);

impl FieldSelector {
    /// Only the fields the real server indexes for this kind are accepted.
    pub fn parse(sel: &str, rt: &ResourceType) -> Result<Self, ApiError> {
        let mut terms = Vec::new();
        if sel.trim().is_empty() {
            return Ok(Self(terms));
        }
        for term in sel.split(',') {
            let (field, value, eq) = if let Some((f, v)) = term.split_once("!=") {
                (f, v, false)
            } else if let Some((f, v)) = term.split_once("==") {
                (f, v, true)
            } else if let Some((f, v)) = term.split_once('=') {
                (f, v, true)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid field selector: invalid selector: '{sel}'; can't understand '{term}'"
                )));
            };
            let field = field.trim();
            let known = field == "metadata.name"
                || field == "metadata.namespace"
                || rt.field_selectors.iter().any(|f| f == field);
            if !known {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {field}"
                )));
            }
            terms.push((field.to_string(), value.trim().to_string(), eq));
        }
        Ok(Self(terms))
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|(field, wanted, eq)| {
            let mut v = obj;
            for part in field.split('.') {
                v = &v[part];
            }
            let actual = match v {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                Value::Bool(b) => b.to_string(),
                other => other.to_string(),
            };
            (actual == *wanted) == *eq
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(labels: Value) -> Value {
        json!({"metadata": {"name": "a", "namespace": "ns1", "labels": labels}, "spec": {"nodeName": "n1"}})
    }

    #[test]
    fn parses_every_operator() {
        let s =
            LabelSelector::parse("a=1, b==2,c!=3,d in (x, y),e notin (z),f,!g").expect("parses");
        assert_eq!(
            s.0,
            vec![
                Requirement::Equals("a".into(), "1".into()),
                Requirement::Equals("b".into(), "2".into()),
                Requirement::NotEquals("c".into(), "3".into()),
                Requirement::In("d".into(), vec!["x".into(), "y".into()]),
                Requirement::NotIn("e".into(), vec!["z".into()]),
                Requirement::Exists("f".into()),
                Requirement::NotExists("g".into()),
            ]
        );
    }

    #[test]
    fn matches_like_the_real_server() {
        let o = obj(json!({"app": "web", "tier": "front", "example.com/x": "1"}));
        let m = |s: &str| LabelSelector::parse(s).expect("parses").matches(&o);
        assert!(m("app=web"));
        assert!(m("app==web,tier"));
        assert!(!m("app!=web"));
        assert!(m("missing!=x"), "!= matches objects without the label");
        assert!(m("app in (db, web)"));
        assert!(!m("app notin (db,web)"));
        assert!(m("missing notin (db)"));
        assert!(m("!missing"));
        assert!(!m("!app"));
        assert!(m("example.com/x=1"));
        assert!(m(""));
    }

    #[test]
    fn rejects_malformed_selectors() {
        for s in ["a in (x", "a=b=c!", "=x", "a foo (x)", "a=,"] {
            let err = LabelSelector::parse(s).expect_err(s);
            assert_eq!(err.code, 400, "{s}");
        }
    }

    #[test]
    fn field_selectors_only_on_indexed_fields() {
        let pods = crate::resources::builtin_types()
            .into_iter()
            .find(|r| r.plural == "pods")
            .expect("pods");
        let f = FieldSelector::parse("spec.nodeName=n1,metadata.namespace!=other", &pods)
            .expect("parses");
        assert!(f.matches(&obj(json!({}))));
        assert!(
            !FieldSelector::parse("spec.nodeName=n2", &pods)
                .expect("parses")
                .matches(&obj(json!({})))
        );
        let err = FieldSelector::parse("spec.foo=bar", &pods).expect_err("unknown field");
        assert_eq!(
            (err.code, err.message.as_str()),
            (400, "field label not supported: spec.foo")
        );
    }
}
