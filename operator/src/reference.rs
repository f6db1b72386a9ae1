//! The Dataset reference, `docs/dataset-reference.md`, rendered from the
//! CRD's OpenAPI schema: one table per object (field path, type, required,
//! default, description), the descriptions being the doc comments schemars
//! put into the schema. Pure: the same CRD gives the same bytes, and
//! `operator/tests/reference_drift.rs` fails when the checked-in file
//! differs.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use kube::CustomResourceExt;
use serde_json::Value;

/// Where the reference is checked in, relative to the repository root.
pub const REFERENCE_PATH: &str = "docs/dataset-reference.md";

/// Environment variable that makes the drift test write the file instead
/// of comparing it.
pub const REGENERATE_ENV: &str = "SWARMSEED_REGENERATE";

/// The Markdown reference of the `Dataset` CRD, as checked in under
/// [`REFERENCE_PATH`].
pub fn dataset_reference() -> Result<String, serde_json::Error> {
    let crd = serde_json::to_value(swarmseed_crd::Dataset::crd())?;
    Ok(render(&crd))
}

/// Renders a CustomResourceDefinition (as JSON) as Markdown.
pub fn render(crd: &Value) -> String {
    let spec = &crd["spec"];
    let names = &spec["names"];
    let kind = names["kind"].as_str().unwrap_or("Resource");
    let group = spec["group"].as_str().unwrap_or_default();
    let mut out = String::new();
    let _ = writeln!(out, "# {kind} reference");
    out.push('\n');
    let _ = writeln!(
        out,
        "<!-- Generated from the CRD schema by operator/src/reference.rs; do not edit.\n     \
         Regenerate: {REGENERATE_ENV}=1 cargo test --release -p operator --test reference_drift -->"
    );
    out.push('\n');

    let versions: Vec<&Value> = spec["versions"]
        .as_array()
        .map(|v| v.iter().collect())
        .unwrap_or_default();
    let version_names: Vec<String> = versions
        .iter()
        .filter_map(|v| v["name"].as_str())
        .map(|v| format!("`{group}/{v}`"))
        .collect();
    let scope = spec["scope"].as_str().unwrap_or_default().to_lowercase();
    let mut facts = vec![format!("plural `{}`", str_or(&names["plural"], ""))];
    if let Some(short) = names["shortNames"].as_array() {
        let short: Vec<String> = short
            .iter()
            .filter_map(Value::as_str)
            .map(|s| format!("`{s}`"))
            .collect();
        if !short.is_empty() {
            facts.push(format!("short name {}", short.join(", ")));
        }
    }
    if let Some(categories) = names["categories"].as_array() {
        let c: Vec<String> = categories
            .iter()
            .filter_map(Value::as_str)
            .map(|s| format!("`{s}`"))
            .collect();
        if !c.is_empty() {
            facts.push(format!("category {}", c.join(", ")));
        }
    }
    let _ = writeln!(
        out,
        "{}, kind `{kind}`, {scope}; {}.",
        version_names.join(", "),
        facts.join(", ")
    );
    out.push('\n');
    out.push_str(
        "Every table below is rendered from the CRD's `openAPIV3Schema`\n\
         ([crds/datasets.swarmseed.io.yaml](../crds/datasets.swarmseed.io.yaml)),\n\
         which is generated from the Rust types in `operator/crd/src/lib.rs`: the\n\
         descriptions are their doc comments. Rules marked *CEL* are checked by\n\
         the API server at `kubectl apply` time; the operator checks them again\n\
         and reports `InvalidSource` when one is broken. What the condition\n\
         reasons mean and what to do about them:\n\
         [operations.md](operations.md#troubleshooting-by-condition-reason).\n",
    );

    let mut anchors = Anchors::default();
    let several = versions.len() > 1;
    for version in versions {
        let name = str_or(&version["name"], "");
        // The version in headings only when there are several.
        let suffix = if several {
            format!(" ({name})")
        } else {
            String::new()
        };
        if let Some(columns) = version["additionalPrinterColumns"].as_array() {
            out.push('\n');
            let _ = writeln!(out, "## `kubectl get` columns{suffix}");
            out.push('\n');
            out.push_str("| column | JSON path | type | description |\n");
            out.push_str("| --- | --- | --- | --- |\n");
            for c in columns {
                let _ = writeln!(
                    out,
                    "| {} | `{}` | {} | {} |",
                    cell(str_or(&c["name"], "")),
                    cell(str_or(&c["jsonPath"], "")),
                    cell(str_or(&c["type"], "")),
                    cell(str_or(&c["description"], "")),
                );
            }
        }
        let Some(root) = version.pointer("/schema/openAPIV3Schema") else {
            continue;
        };
        let mut tables = Vec::new();
        collect(root, kind, "", &mut tables);
        // Anchors first, so that a row can link to a table further down.
        let links: BTreeMap<String, String> = tables
            .iter()
            .map(|t| (t.path.clone(), anchors.add(&t.heading)))
            .collect();

        out.push('\n');
        let _ = writeln!(out, "## Objects{suffix}");
        out.push('\n');
        for t in &tables {
            let depth = t.path.matches('.').count() + usize::from(!t.path.is_empty());
            let _ = writeln!(
                out,
                "{}- [{}](#{})",
                "  ".repeat(depth),
                t.heading,
                links[&t.path]
            );
        }
        for t in &tables {
            render_table(&mut out, t, &links);
        }
    }
    out
}

/// One object of the schema, rendered as one table.
struct Table<'a> {
    /// Field path without the kind (`spec.source`); empty for the root.
    path: String,
    /// Heading text (the path, or the kind for the root).
    heading: String,
    schema: &'a Value,
}

/// Every object with properties, depth first (an object's table comes
/// before the tables of its fields).
fn collect<'a>(schema: &'a Value, kind: &str, path: &str, out: &mut Vec<Table<'a>>) {
    let Some(props) = schema["properties"].as_object() else {
        return;
    };
    out.push(Table {
        path: path.to_owned(),
        heading: if path.is_empty() {
            kind.to_owned()
        } else {
            path.to_owned()
        },
        schema,
    });
    for (name, field) in props {
        let child = join(path, name);
        if let Some((object, child)) = nested_object(field, &child) {
            collect(object, kind, &child, out);
        }
    }
}

/// The object a field holds (itself, or its array items), with the path of
/// that object's table.
fn nested_object<'a>(field: &'a Value, path: &str) -> Option<(&'a Value, String)> {
    if field["properties"].is_object() {
        return Some((field, path.to_owned()));
    }
    let items = &field["items"];
    if field["type"] == "array" && items["properties"].is_object() {
        return Some((items, format!("{path}[]")));
    }
    None
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_owned()
    } else {
        format!("{path}.{name}")
    }
}

fn render_table(out: &mut String, t: &Table<'_>, links: &BTreeMap<String, String>) {
    out.push('\n');
    let _ = writeln!(out, "### {}", t.heading);
    out.push('\n');
    if let Some(d) = t.schema["description"].as_str() {
        let _ = writeln!(out, "{}", paragraph(d));
        out.push('\n');
    }
    let notes = constraints(t.schema);
    if !notes.is_empty() {
        let _ = writeln!(out, "{}", notes.join(" "));
        out.push('\n');
    }
    if t.path.is_empty() {
        out.push_str(
            "Besides these, every object has the standard `apiVersion`, `kind` and\n\
             `metadata`.\n\n",
        );
    }
    let required: Vec<&str> = t.schema["required"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    out.push_str("| field | type | required | default | description |\n");
    out.push_str("| --- | --- | --- | --- | --- |\n");
    let Some(props) = t.schema["properties"].as_object() else {
        return;
    };
    for (name, field) in props {
        let path = join(&t.path, name);
        let link = nested_object(field, &path).and_then(|(_, p)| links.get(&p));
        let ty = match link {
            Some(anchor) => format!("[{}](#{anchor})", type_name(field)),
            None => type_name(field),
        };
        let default = match field.get("default") {
            Some(d) => format!("`{}`", cell(&d.to_string())),
            None => String::new(),
        };
        let mut description = field["description"]
            .as_str()
            .map(paragraph)
            .unwrap_or_default();
        for note in constraints(field) {
            if !description.is_empty() {
                description.push_str("<br>");
            }
            description.push_str(&note);
        }
        let _ = writeln!(
            out,
            "| `{}` | {} | {} | {} | {} |",
            cell(&path),
            ty,
            if required.contains(&name.as_str()) {
                "yes"
            } else {
                "no"
            },
            default,
            description,
        );
    }
}

/// A field's type in words: `string`, `integer (int64)`, `integer or
/// string`, `array of object`, `map of string`.
fn type_name(s: &Value) -> String {
    if s["x-kubernetes-int-or-string"] == true {
        return "integer or string".into();
    }
    let ty = s["type"].as_str().unwrap_or("any");
    match ty {
        "array" => format!("array of {}", type_name(&s["items"])),
        "object" if !s["properties"].is_object() && s["additionalProperties"].is_object() => {
            format!("map of {}", type_name(&s["additionalProperties"]))
        }
        _ => match s["format"].as_str() {
            Some(f) => format!("{ty} ({f})"),
            None => ty.to_owned(),
        },
    }
}

/// What the schema constrains beyond the type, one sentence each.
fn constraints(s: &Value) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(values) = s["enum"].as_array() {
        let v: Vec<String> = values
            .iter()
            .map(|v| match v.as_str() {
                Some(s) => format!("`{}`", cell(s)),
                None => format!("`{}`", cell(&v.to_string())),
            })
            .collect();
        out.push(format!("One of {}.", v.join(", ")));
    }
    if let Some(p) = s["pattern"].as_str() {
        out.push(format!("Pattern `{}`.", cell(p)));
    }
    match (number(&s["minLength"]), number(&s["maxLength"])) {
        (Some(min), Some(max)) => out.push(format!("Length {min} to {max}.")),
        (Some(min), None) => out.push(format!("At least {min} characters.")),
        (None, Some(max)) => out.push(format!("At most {max} characters.")),
        (None, None) => {}
    }
    let unsigned = s["format"].as_str().is_some_and(|f| f.starts_with("uint"));
    let min = number(&s["minimum"]).filter(|m| !(unsigned && m == "0"));
    match (min, number(&s["maximum"])) {
        (Some(min), Some(max)) => out.push(format!("From {min} to {max}.")),
        (Some(min), None) => out.push(format!("At least {min}.")),
        (None, Some(max)) => out.push(format!("At most {max}.")),
        (None, None) => {}
    }
    match (number(&s["minItems"]), number(&s["maxItems"])) {
        (Some(min), Some(max)) => out.push(format!("{min} to {max} items.")),
        (Some(min), None) => out.push(format!("At least {min} items.")),
        (None, Some(max)) => out.push(format!("At most {max} items.")),
        (None, None) => {}
    }
    if s["x-kubernetes-list-type"] == "map" {
        let keys: Vec<String> = s["x-kubernetes-list-map-keys"]
            .as_array()
            .map(|k| {
                k.iter()
                    .filter_map(Value::as_str)
                    .map(|k| format!("`{}`", cell(k)))
                    .collect()
            })
            .unwrap_or_default();
        out.push(format!("A map-list keyed by {}.", keys.join(", ")));
    }
    if let Some(rules) = s["x-kubernetes-validations"].as_array() {
        for r in rules {
            if let Some(m) = r["message"].as_str() {
                out.push(format!("*CEL*: {}.", cell(m.trim_end_matches('.'))));
            }
        }
    }
    out
}

/// A JSON number as written by a person (`1024`, not `1024.0`).
fn number(v: &Value) -> Option<String> {
    if let Some(i) = v.as_i64() {
        return Some(i.to_string());
    }
    let f = v.as_f64()?;
    if f.fract() == 0.0 && f.abs() < 1e15 {
        Some(format!("{}", f as i64))
    } else {
        Some(f.to_string())
    }
}

fn str_or<'a>(v: &'a Value, default: &'a str) -> &'a str {
    v.as_str().unwrap_or(default)
}

/// A description as one table cell: lines joined, paragraphs separated by
/// `<br><br>`, Markdown table syntax and stray HTML escaped.
fn paragraph(text: &str) -> String {
    let paragraphs: Vec<String> = text
        .split("\n\n")
        .map(|p| cell(&p.split_whitespace().collect::<Vec<_>>().join(" ")))
        .filter(|p| !p.is_empty())
        .collect();
    paragraphs.join("<br><br>")
}

/// Escapes text for a table cell: `|` everywhere (also inside code spans,
/// as GitHub requires), `<` and `>` outside code spans (else they would be
/// taken for HTML tags).
fn cell(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_code = false;
    for c in text.chars() {
        match c {
            '`' => {
                in_code = !in_code;
                out.push(c);
            }
            '|' => out.push_str("\\|"),
            '<' if !in_code => out.push_str("&lt;"),
            '>' if !in_code => out.push_str("&gt;"),
            '\n' => out.push(' '),
            _ => out.push(c),
        }
    }
    out
}

/// GitHub's heading anchors: lower case, punctuation other than `-` and
/// `_` dropped, spaces to `-`, a `-N` suffix on repeats.
#[derive(Default)]
struct Anchors {
    seen: BTreeMap<String, usize>,
}

impl Anchors {
    fn add(&mut self, heading: &str) -> String {
        let base: String = heading
            .to_lowercase()
            .chars()
            .filter_map(|c| match c {
                ' ' => Some('-'),
                c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                _ => None,
            })
            .collect();
        let n = self.seen.entry(base.clone()).or_default();
        let anchor = if *n == 0 {
            base.clone()
        } else {
            format!("{base}-{n}")
        };
        *n += 1;
        anchor
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_field_of_the_dataset_schema_has_a_row() {
        let md = dataset_reference().unwrap();
        for row in [
            "| `spec.source.uri` | string | yes |",
            "| `spec.origin.maxFetchers` | integer (uint32) | no | `4` |",
            "| `spec.chunkSize` | integer or string | no |",
            "| `spec.matchExpressions[].operator` | string | yes |",
            "| `status.nodeProgress[].state` | string | yes |",
            "| `status.conditions[].type` | string | yes |",
        ] {
            assert!(md.contains(row), "{row:?} missing in\n{md}");
        }
        for heading in [
            "### Dataset\n",
            "### spec\n",
            "### spec.source.secretRef\n",
            "### spec.tolerations[]\n",
            "### status.failedNodes[]\n",
            "### status.nodes\n",
        ] {
            assert!(md.contains(heading), "{heading:?} missing");
        }
        // Rows link to the table of the object they hold.
        assert!(md.contains("| `spec.source` | [object](#specsource) | yes |"));
        assert!(
            md.contains("| `spec.matchExpressions` | [array of object](#specmatchexpressions) |")
        );
        assert!(md.contains("- [spec.source.secretRef](#specsourcesecretref)"));
    }

    #[test]
    fn constraints_are_spelled_out() {
        let s = json!({
            "type": "integer", "format": "uint32", "minimum": 1.0, "maximum": 1024.0
        });
        assert_eq!(constraints(&s), ["From 1 to 1024."]);
        let s = json!({ "type": "integer", "format": "uint64", "minimum": 0.0 });
        assert!(constraints(&s).is_empty(), "unsigned needs no minimum 0");
        let s = json!({
            "type": "string", "minLength": 1, "maxLength": 4096,
            "x-kubernetes-validations": [{ "rule": "a || b", "message": "uri must start with s3://" }]
        });
        assert_eq!(
            constraints(&s),
            ["Length 1 to 4096.", "*CEL*: uri must start with s3://."]
        );
    }

    #[test]
    fn cells_escape_pipes_and_stray_html() {
        assert_eq!(cell("a | b"), "a \\| b");
        assert_eq!(cell("`x || y`"), "`x \\|\\| y`");
        assert_eq!(
            cell("the triple <key,value> and `<64 hex>`"),
            "the triple &lt;key,value&gt; and `<64 hex>`"
        );
        assert_eq!(paragraph("one\ntwo\n\nthree"), "one two<br><br>three");
    }

    #[test]
    fn anchors_follow_github() {
        let mut a = Anchors::default();
        assert_eq!(a.add("spec.matchExpressions[]"), "specmatchexpressions");
        assert_eq!(a.add("Dataset"), "dataset");
        assert_eq!(a.add("Dataset"), "dataset-1");
        assert_eq!(
            a.add("`kubectl get` columns (v1alpha1)"),
            "kubectl-get-columns-v1alpha1"
        );
    }

    #[test]
    fn types_read_like_words() {
        assert_eq!(
            type_name(&json!({ "type": "object", "additionalProperties": { "type": "string" } })),
            "map of string"
        );
        assert_eq!(
            type_name(&json!({ "type": "array", "items": { "type": "string" } })),
            "array of string"
        );
        assert_eq!(
            type_name(&json!({ "type": "integer", "format": "int64" })),
            "integer (int64)"
        );
    }
}
