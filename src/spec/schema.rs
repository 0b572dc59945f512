//! The JSON Schemas of the documents: made by schemars from the method and route types, in
//! JSON Schema draft 7 (what OpenRPC 1.3 and the tools around it read), with their shared
//! definitions under `#/components/schemas/`, and shaped so that generators and validators in
//! common use read them as written:
//! - `"type": [T, "null"]` becomes `anyOf` of the type and `null` (a generated TypeScript client
//!   does not compile the first on an object property);
//! - `format`s other than the standard ones are dropped (schemars' `uint64`, `uint`, `int64`,
//!   ...: a standard validator such as ajv rejects formats it does not know); the `minimum` next
//!   to them still says what they said;
//! - no `$schema` inside a document.

use schemars::generate::SchemaSettings;
use schemars::{Schema, SchemaGenerator};
use serde_json::{Map, Value};

/// The `format`s kept: those JSON Schema draft 7 defines.
const STANDARD_FORMATS: &[&str] = &[
    "date-time",
    "date",
    "time",
    "email",
    "hostname",
    "ipv4",
    "ipv6",
    "uri",
    "uri-reference",
    "uri-template",
    "json-pointer",
    "relative-json-pointer",
    "regex",
];

/// A generator whose references point into `#/components/schemas/`.
pub fn generator() -> SchemaGenerator {
    let mut settings = SchemaSettings::draft07();
    settings.definitions_path = "/components/schemas".into();
    settings.meta_schema = None;
    settings.into_generator()
}

/// `schema`, shaped as the module doc says.
pub fn shaped(schema: Schema) -> Value {
    let mut v = schema.to_value();
    shape(&mut v);
    v
}

/// The generator's definitions, shaped, sorted by name.
pub fn definitions(g: &mut SchemaGenerator) -> Map<String, Value> {
    let mut defs: Vec<(String, Value)> = g.take_definitions(true).into_iter().collect();
    defs.sort_by(|a, b| a.0.cmp(&b.0));
    defs.into_iter()
        .map(|(k, mut v)| {
            shape(&mut v);
            (k, v)
        })
        .collect()
}

/// Shapes `v` and everything in it.
pub fn shape(v: &mut Value) {
    match v {
        Value::Array(items) => items.iter_mut().for_each(shape),
        Value::Object(o) => {
            o.remove("$schema");
            if o.get("format").and_then(Value::as_str).is_some_and(|f| !STANDARD_FORMATS.contains(&f)) {
                o.remove("format");
            }
            nullable_to_any_of(o);
            o.values_mut().for_each(shape);
        }
        _ => {}
    }
}

/// `{"type": [T, "null"], ...}` as `{"anyOf": [{"type": T, ...}, {"type": "null"}]}`, keeping
/// the annotations (`description`, `title`, `default`) outside.
fn nullable_to_any_of(o: &mut Map<String, Value>) {
    let Some(Value::Array(types)) = o.get("type") else { return };
    if types.len() != 2 || !types.contains(&Value::from("null")) {
        return;
    }
    let other = types.iter().find(|t| *t != "null").cloned().unwrap_or(Value::Null);
    let mut inner = Map::new();
    for (k, val) in std::mem::take(o) {
        match k.as_str() {
            "description" | "title" | "default" | "examples" => {
                o.insert(k, val);
            }
            "type" => {
                inner.insert(k, other.clone());
            }
            _ => {
                inner.insert(k, val);
            }
        }
    }
    o.insert("anyOf".into(), Value::Array(vec![Value::Object(inner), serde_json::json!({"type": "null"})]));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nullable_types_become_any_of_and_unknown_formats_go() {
        let mut v = json!({
            "type": "object",
            "properties": {
                "limit": {"description": "at most", "type": ["integer", "null"], "format": "uint", "minimum": 0},
                "at": {"type": "string", "format": "date-time"}
            }
        });
        shape(&mut v);
        assert_eq!(
            v["properties"]["limit"],
            json!({"description": "at most", "anyOf": [{"type": "integer", "minimum": 0}, {"type": "null"}]})
        );
        assert_eq!(v["properties"]["at"]["format"], "date-time");
    }
}
