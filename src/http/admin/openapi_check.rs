//! Keeps the OpenAPI document true to the routes: every route in [`super::api::ROUTES`] is
//! documented, nothing else is, and the document hangs together (unique operation ids, a
//! success response each, every `$ref` resolving, every path parameter declared).

use std::collections::{BTreeSet, HashMap};

use serde_json::{Map, Value};

use super::api::{OPENAPI, ROUTES};

/// The HTTP methods an OpenAPI path item may hold (the rest of its keys are not operations).
const METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

fn document() -> Value {
    serde_json::from_str(OPENAPI).expect("openapi.json is valid JSON")
}

fn paths(doc: &Value) -> &Map<String, Value> {
    doc["paths"].as_object().expect("`paths` is an object")
}

/// Every (method, path, operation) in the document.
fn operations(doc: &Value) -> Vec<(String, String, &Value)> {
    let mut out = Vec::new();
    for (path, item) in paths(doc) {
        let item = item.as_object().expect("a path item is an object");
        for (method, operation) in item {
            if METHODS.contains(&method.as_str()) {
                out.push((method.clone(), path.clone(), operation));
            }
        }
    }
    out
}

/// Follows a local `$ref` (`#/components/…`), or returns the value itself.
fn resolve<'a>(doc: &'a Value, value: &'a Value) -> &'a Value {
    match value.get("$ref").and_then(Value::as_str) {
        Some(reference) => {
            let pointer = reference
                .strip_prefix('#')
                .unwrap_or_else(|| panic!("`{reference}` is not a local reference"));
            let target = doc
                .pointer(pointer)
                .unwrap_or_else(|| panic!("`{reference}` does not resolve"));
            resolve(doc, target)
        }
        None => value,
    }
}

/// The `{name}`s of a path template.
fn template_parameters(path: &str) -> BTreeSet<String> {
    path.split('{')
        .skip(1)
        .map(|rest| {
            rest.split_once('}')
                .unwrap_or_else(|| panic!("`{path}` has an unclosed `{{`"))
                .0
                .to_owned()
        })
        .collect()
}

/// The names of the `in: path` parameters declared in `parameters` (a list, maybe absent).
fn declared_path_parameters(doc: &Value, parameters: Option<&Value>) -> BTreeSet<String> {
    let Some(list) = parameters else {
        return BTreeSet::new();
    };
    list.as_array()
        .expect("`parameters` is a list")
        .iter()
        .map(|p| resolve(doc, p))
        .filter(|p| p["in"] == "path")
        .map(|p| {
            assert_eq!(
                p["required"],
                Value::Bool(true),
                "path parameter {p} must be required"
            );
            p["name"]
                .as_str()
                .expect("a parameter has a name")
                .to_owned()
        })
        .collect()
}

fn collect_refs<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("$ref", Value::String(r)) => out.push(r),
                    _ => collect_refs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}

#[test]
fn it_is_openapi_3_1() {
    let doc = document();
    let version = doc["openapi"].as_str().expect("`openapi` is a string");
    assert!(
        version.starts_with("3.1."),
        "`openapi` is {version}, not 3.1.x"
    );
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
    assert_eq!(doc["servers"][0]["url"], "/admin/api/v1");
}

#[test]
fn every_route_is_documented() {
    let doc = document();
    let paths = paths(&doc);
    for (method, path) in ROUTES {
        assert!(
            paths
                .get(*path)
                .and_then(|item| item.get(*method))
                .is_some_and(Value::is_object),
            "route {} {path} is not in openapi.json",
            method.to_uppercase()
        );
    }
}

#[test]
fn every_documented_operation_is_a_route() {
    let doc = document();
    let routes: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    assert_eq!(routes.len(), ROUTES.len(), "ROUTES lists a route twice");
    for (method, path, _) in operations(&doc) {
        assert!(
            routes.contains(&(method.clone(), path.clone())),
            "openapi.json documents {} {path}, which is not a route",
            method.to_uppercase()
        );
    }
}

#[test]
fn operations_have_unique_ids_and_a_success_response() {
    let doc = document();
    let mut seen: HashMap<String, String> = HashMap::new();
    for (method, path, operation) in operations(&doc) {
        let at = format!("{} {path}", method.to_uppercase());
        let id = operation["operationId"]
            .as_str()
            .unwrap_or_else(|| panic!("{at} has no operationId"));
        if let Some(other) = seen.insert(id.to_owned(), at.clone()) {
            panic!("operationId `{id}` is used by both {other} and {at}");
        }
        let responses = operation["responses"]
            .as_object()
            .unwrap_or_else(|| panic!("{at} has no responses"));
        assert!(
            responses.keys().any(|status| status.starts_with('2')),
            "{at} has no 2xx response"
        );
    }
}

#[test]
fn every_ref_resolves() {
    let doc = document();
    let mut refs = Vec::new();
    collect_refs(&doc, &mut refs);
    assert!(!refs.is_empty());
    for reference in refs {
        let pointer = reference
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("`{reference}` is not a local reference"));
        assert!(
            doc.pointer(pointer).is_some(),
            "`{reference}` does not resolve"
        );
    }
}

#[test]
fn every_path_parameter_is_declared() {
    let doc = document();
    for (method, path, operation) in operations(&doc) {
        let at = format!("{} {path}", method.to_uppercase());
        let expected = template_parameters(&path);
        let mut declared = declared_path_parameters(&doc, paths(&doc)[&path].get("parameters"));
        declared.extend(declared_path_parameters(&doc, operation.get("parameters")));
        for name in &expected {
            assert!(
                declared.contains(name),
                "{at}: path parameter `{name}` is not declared"
            );
        }
        for name in &declared {
            assert!(
                expected.contains(name),
                "{at}: declares path parameter `{name}`, which is not in the path"
            );
        }
    }
}

#[test]
fn security_requirements_name_declared_schemes() {
    let doc = document();
    let schemes = doc["components"]["securitySchemes"]
        .as_object()
        .expect("securitySchemes is an object");
    for (method, path, operation) in operations(&doc) {
        let requirements = operation
            .get("security")
            .or_else(|| doc.get("security"))
            .and_then(Value::as_array)
            .unwrap_or_else(|| panic!("{} {path} has no security", method.to_uppercase()));
        for requirement in requirements {
            for name in requirement
                .as_object()
                .expect("a requirement is an object")
                .keys()
            {
                assert!(
                    schemes.contains_key(name),
                    "{} {path}: unknown security scheme `{name}`",
                    method.to_uppercase()
                );
            }
        }
    }
}
