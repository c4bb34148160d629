//! The OpenAPI document (`openapi.json`, served at `GET /v1/openapi.json`) is kept true
//! here: the router and the document list the same operations, every documented route
//! answers a plausible request, and real answers (and the requests that produced them)
//! validate against the document's schemas.
//!
//! The validator below covers the subset of JSON Schema 2020-12 the document uses; a
//! keyword or format it does not know fails the test, so the document cannot grow a
//! rule that nothing checks.

mod common;

use std::collections::BTreeSet;

use common::*;
use serde_json::{json, Value};

const HTTP_METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// The routes that answer without a key (and must be documented with `security: []`).
const PUBLIC: &[&str] = &[
    "/",
    "/ui/",
    "/ui/app.js",
    "/healthz",
    "/metrics",
    "/v1/openapi.json",
];

fn repo_document() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json"))
        .expect("read openapi.json")
}

fn document() -> Value {
    serde_json::from_str(&repo_document()).expect("openapi.json is valid JSON")
}

/// Every (METHOD, template) the document describes under `paths`.
fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let paths = doc["paths"].as_object().expect("paths is an object");
    let mut out = BTreeSet::new();
    for (template, item) in paths {
        for m in HTTP_METHODS {
            if item.get(*m).is_some() {
                out.insert((m.to_uppercase(), template.clone()));
            }
        }
    }
    out
}

fn routed() -> BTreeSet<(String, String)> {
    hookd::api::ROUTES
        .iter()
        .map(|(m, t)| (m.to_string(), t.to_string()))
        .collect()
}

// ---------------------------------------------------------------------------
// The validator
// ---------------------------------------------------------------------------

/// A JSON Schema validator over the document's `$ref` space.
struct Validator<'a> {
    doc: &'a Value,
}

/// Keywords that only annotate.
const ANNOTATIONS: &[&str] = &["description", "title", "default", "examples", "$comment"];

impl<'a> Validator<'a> {
    fn new(doc: &'a Value) -> Validator<'a> {
        Validator { doc }
    }

    /// Follows a local `$ref` (`#/components/...`).
    fn resolve(&self, reference: &str) -> &'a Value {
        let pointer = reference
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("only local $refs are supported: {reference}"));
        self.doc
            .pointer(pointer)
            .unwrap_or_else(|| panic!("$ref {reference} does not resolve"))
    }

    /// `v` against `schema`: the list of what is wrong (empty when valid).
    fn errors(&self, schema: &Value, v: &Value) -> Vec<String> {
        let mut errs = Vec::new();
        self.check(schema, v, "$", &mut errs);
        errs
    }

    #[track_caller]
    fn assert_valid(&self, schema: &Value, v: &Value, what: &str) {
        let errs = self.errors(schema, v);
        assert!(
            errs.is_empty(),
            "{what} does not match the document's schema {}:\n  {}\nvalue: {}",
            schema,
            errs.join("\n  "),
            serde_json::to_string_pretty(v).unwrap()
        );
    }

    fn check(&self, schema: &Value, v: &Value, at: &str, errs: &mut Vec<String>) {
        let s = match schema {
            Value::Bool(true) => return,
            Value::Bool(false) => return errs.push(format!("{at}: nothing is allowed here")),
            Value::Object(s) => s,
            other => panic!("a schema must be an object or a boolean, not {other}"),
        };
        for (kw, arg) in s {
            match kw.as_str() {
                k if ANNOTATIONS.contains(&k) => {}
                "$ref" => {
                    let target = self.resolve(arg.as_str().expect("$ref is a string"));
                    self.check(target, v, at, errs);
                }
                "type" => {
                    let types: Vec<&str> = match arg {
                        Value::String(t) => vec![t.as_str()],
                        Value::Array(ts) => ts.iter().map(|t| t.as_str().unwrap()).collect(),
                        _ => panic!("bad `type` {arg}"),
                    };
                    if !types.iter().any(|t| has_type(v, t)) {
                        errs.push(format!("{at}: {v} is not of type {arg}"));
                    }
                }
                "enum" => {
                    if !arg.as_array().unwrap().contains(v) {
                        errs.push(format!("{at}: {v} is not one of {arg}"));
                    }
                }
                "const" => {
                    if arg != v {
                        errs.push(format!("{at}: {v} is not {arg}"));
                    }
                }
                "properties" => {
                    if let Value::Object(o) = v {
                        for (name, sub) in arg.as_object().unwrap() {
                            if let Some(item) = o.get(name) {
                                self.check(sub, item, &format!("{at}.{name}"), errs);
                            }
                        }
                    }
                }
                "required" => {
                    if let Value::Object(o) = v {
                        for name in arg.as_array().unwrap() {
                            let name = name.as_str().unwrap();
                            if !o.contains_key(name) {
                                errs.push(format!("{at}: required property `{name}` is missing"));
                            }
                        }
                    }
                }
                "additionalProperties" => {
                    if let Value::Object(o) = v {
                        let known = s.get("properties").and_then(Value::as_object);
                        for (name, item) in o {
                            if known.is_some_and(|k| k.contains_key(name)) {
                                continue;
                            }
                            match arg {
                                Value::Bool(false) => errs
                                    .push(format!("{at}: property `{name}` is not in the schema")),
                                sub => self.check(sub, item, &format!("{at}.{name}"), errs),
                            }
                        }
                    }
                }
                "items" => {
                    if let Value::Array(items) = v {
                        for (i, item) in items.iter().enumerate() {
                            self.check(arg, item, &format!("{at}[{i}]"), errs);
                        }
                    }
                }
                "minItems" | "maxItems" => {
                    if let Value::Array(items) = v {
                        bound(kw, arg, items.len() as f64, at, errs);
                    }
                }
                "minLength" | "maxLength" => {
                    if let Value::String(text) = v {
                        bound(kw, arg, text.chars().count() as f64, at, errs);
                    }
                }
                "minimum" | "maximum" => {
                    if let Some(n) = v.as_f64() {
                        bound(kw, arg, n, at, errs);
                    }
                }
                "pattern" => {
                    if let Value::String(text) = v {
                        let p = arg.as_str().unwrap();
                        if !regex_matches(p, text) {
                            errs.push(format!("{at}: {text:?} does not match /{p}/"));
                        }
                    }
                }
                "format" => {
                    if let Value::String(text) = v {
                        let ok = match arg.as_str().unwrap() {
                            "date-time" => time::OffsetDateTime::parse(
                                text,
                                &time::format_description::well_known::Rfc3339,
                            )
                            .is_ok(),
                            "uri" => url::Url::parse(text).is_ok(),
                            other => panic!("format `{other}` is not supported by the test"),
                        };
                        if !ok {
                            errs.push(format!("{at}: {text:?} is not a {arg}"));
                        }
                    }
                }
                "oneOf" | "anyOf" | "allOf" => {
                    let subs = arg.as_array().unwrap();
                    let mut failures = Vec::new();
                    let passed = subs
                        .iter()
                        .filter(|sub| {
                            let e = self.errors(sub, v);
                            let ok = e.is_empty();
                            failures.extend(e);
                            ok
                        })
                        .count();
                    let ok = match kw.as_str() {
                        "oneOf" => passed == 1,
                        "anyOf" => passed >= 1,
                        _ => passed == subs.len(),
                    };
                    if !ok {
                        errs.push(format!(
                            "{at}: {kw} matched {passed} of {} ({})",
                            subs.len(),
                            failures.join("; ")
                        ));
                    }
                }
                "not" => {
                    if self.errors(arg, v).is_empty() {
                        errs.push(format!("{at}: must not match {arg}"));
                    }
                }
                other => panic!("schema keyword `{other}` is not supported by the test"),
            }
        }
    }

    /// Walks every schema of the document (components and inline ones) and fails on a
    /// keyword the validator does not implement or a `$ref` that does not resolve.
    fn audit(&self) {
        let mut schemas = Vec::new();
        collect_schemas(self.doc, false, &mut schemas);
        assert!(!schemas.is_empty(), "the document holds no schemas");
        for schema in schemas {
            self.audit_schema(schema);
        }
        let mut refs = Vec::new();
        collect_refs(self.doc, &mut refs);
        for r in refs {
            self.resolve(&r);
        }
    }

    fn audit_schema(&self, schema: &Value) {
        let Value::Object(s) = schema else { return };
        for (kw, arg) in s {
            match kw.as_str() {
                k if ANNOTATIONS.contains(&k) => {}
                "$ref" | "type" | "enum" | "const" | "required" | "minItems" | "maxItems"
                | "minLength" | "maxLength" | "minimum" | "maximum" => {}
                "pattern" => {
                    compile(arg.as_str().unwrap());
                }
                "format" => assert!(
                    matches!(arg.as_str(), Some("date-time" | "uri")),
                    "format {arg} is not supported by the test"
                ),
                "properties" => arg
                    .as_object()
                    .unwrap()
                    .values()
                    .for_each(|p| self.audit_schema(p)),
                "additionalProperties" | "items" | "not" => self.audit_schema(arg),
                "oneOf" | "anyOf" | "allOf" => arg
                    .as_array()
                    .unwrap()
                    .iter()
                    .for_each(|p| self.audit_schema(p)),
                other => panic!("schema keyword `{other}` is not supported by the test"),
            }
        }
    }
}

fn collect_schemas<'v>(v: &'v Value, under_schema_key: bool, out: &mut Vec<&'v Value>) {
    match v {
        Value::Object(o) => {
            if under_schema_key {
                out.push(v);
                return;
            }
            for (k, child) in o {
                if k == "schema" {
                    collect_schemas(child, true, out);
                } else if k == "schemas" {
                    for s in child.as_object().into_iter().flat_map(|m| m.values()) {
                        out.push(s);
                    }
                } else {
                    collect_schemas(child, false, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|c| collect_schemas(c, false, out)),
        _ => {}
    }
}

fn collect_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            for (k, child) in o {
                match (k.as_str(), child) {
                    ("$ref", Value::String(r)) => out.push(r.clone()),
                    _ => collect_refs(child, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|c| collect_refs(c, out)),
        _ => {}
    }
}

fn has_type(v: &Value, t: &str) -> bool {
    match t {
        "null" => v.is_null(),
        "boolean" => v.is_boolean(),
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "number" => v.is_number(),
        "integer" => v.is_i64() || v.is_u64() || v.as_f64().is_some_and(|f| f.fract() == 0.0),
        other => panic!("unknown JSON Schema type {other}"),
    }
}

fn bound(kw: &str, arg: &Value, n: f64, at: &str, errs: &mut Vec<String>) {
    let limit = arg
        .as_f64()
        .unwrap_or_else(|| panic!("{kw} takes a number"));
    let ok = if kw.starts_with("min") {
        n >= limit
    } else {
        n <= limit
    };
    if !ok {
        errs.push(format!("{at}: {n} breaks {kw} {limit}"));
    }
}

// ---------------------------------------------------------------------------
// A regular-expression subset for `pattern`: anchors, literals, `.`, classes with
// ranges, and the quantifiers `* + ? {m} {m,} {m,n}` on single atoms. No groups or
// alternation: the document does not need them, and `compile` refuses them.
// ---------------------------------------------------------------------------

#[derive(Debug)]
enum Atom {
    Literal(char),
    Any,
    Class {
        ranges: Vec<(char, char)>,
        negated: bool,
    },
}

impl Atom {
    fn matches(&self, c: char) -> bool {
        match self {
            Atom::Literal(l) => *l == c,
            Atom::Any => c != '\n',
            Atom::Class { ranges, negated } => {
                ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&c)) != *negated
            }
        }
    }
}

struct Regex {
    start: bool,
    end: bool,
    pieces: Vec<(Atom, usize, usize)>,
}

fn compile(p: &str) -> Regex {
    let mut chars: Vec<char> = p.chars().collect();
    let start = chars.first() == Some(&'^');
    if start {
        chars.remove(0);
    }
    let end = chars.last() == Some(&'$') && !(chars.len() >= 2 && chars[chars.len() - 2] == '\\');
    if end {
        chars.pop();
    }
    let mut pieces = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let atom = match chars[i] {
            '\\' => {
                i += 1;
                Atom::Literal(*chars.get(i).expect("dangling escape"))
            }
            '.' => Atom::Any,
            '[' => {
                i += 1;
                let negated = chars.get(i) == Some(&'^');
                if negated {
                    i += 1;
                }
                let mut ranges = Vec::new();
                let mut first = true;
                while chars.get(i) != Some(&']') || first {
                    first = false;
                    let mut c = *chars
                        .get(i)
                        .unwrap_or_else(|| panic!("unclosed class in {p}"));
                    if c == '\\' {
                        i += 1;
                        c = chars[i];
                    }
                    if chars.get(i + 1) == Some(&'-') && chars.get(i + 2).is_some_and(|n| *n != ']')
                    {
                        ranges.push((c, chars[i + 2]));
                        i += 3;
                    } else {
                        ranges.push((c, c));
                        i += 1;
                    }
                }
                Atom::Class { ranges, negated }
            }
            c @ ('(' | ')' | '|' | '*' | '+' | '?' | '{' | '}' | '^' | '$') => {
                panic!("pattern {p}: `{c}` here is not supported by the test's matcher")
            }
            c => Atom::Literal(c),
        };
        i += 1;
        let (min, max) = match chars.get(i) {
            Some('*') => (0, usize::MAX),
            Some('+') => (1, usize::MAX),
            Some('?') => (0, 1),
            Some('{') => {
                let close = chars[i..]
                    .iter()
                    .position(|c| *c == '}')
                    .unwrap_or_else(|| panic!("unclosed {{ in {p}"))
                    + i;
                let inner: String = chars[i + 1..close].iter().collect();
                let num = |s: &str| s.trim().parse::<usize>().expect("quantifier bound");
                let bounds = match inner.split_once(',') {
                    None => (num(&inner), num(&inner)),
                    Some((lo, "")) => (num(lo), usize::MAX),
                    Some((lo, hi)) => (num(lo), num(hi)),
                };
                i = close;
                bounds
            }
            _ => (1, 1),
        };
        if (min, max) != (1, 1) {
            i += 1;
        }
        pieces.push((atom, min, max));
    }
    Regex { start, end, pieces }
}

fn regex_matches(p: &str, text: &str) -> bool {
    let re = compile(p);
    let chars: Vec<char> = text.chars().collect();
    let starts: Vec<usize> = if re.start {
        vec![0]
    } else {
        (0..=chars.len()).collect()
    };
    starts
        .into_iter()
        .any(|s| match_here(&re.pieces, &chars[s..], re.end))
}

fn match_here(pieces: &[(Atom, usize, usize)], text: &[char], end: bool) -> bool {
    let Some(((atom, min, max), rest)) = pieces.split_first() else {
        return !end || text.is_empty();
    };
    let mut n = 0;
    while n < *max && n < text.len() && atom.matches(text[n]) {
        n += 1;
    }
    // Greedy, then back off.
    (*min..=n).rev().any(|k| match_here(rest, &text[k..], end))
}

#[test]
fn the_pattern_matcher_knows_its_subset() {
    assert!(regex_matches("^hook_", "hook_abc"));
    assert!(!regex_matches("^hook_", "xhook_abc"));
    assert!(regex_matches("^[A-Za-z0-9_.-]{1,100}$", "acme.eu-1"));
    assert!(!regex_matches("^[A-Za-z0-9_.-]{1,100}$", "acme eu"));
    assert!(!regex_matches("^[A-Za-z0-9_.-]{1,100}$", ""));
    assert!(!regex_matches("^[A-Za-z0-9_.-]{1,3}$", "abcd"));
    assert!(regex_matches(
        "^whsec_[A-Za-z0-9+/]+={0,2}$",
        "whsec_ab+/c=="
    ));
    assert!(!regex_matches(
        "^whsec_[A-Za-z0-9+/]+={0,2}$",
        "whsec_abc==="
    ));
    assert!(regex_matches("^[0-9]+$", "123"));
    assert!(regex_matches("b", "abc"), "unanchored patterns search");
    assert!(regex_matches("^a.c$", "abc"));
    assert!(regex_matches("^[^x]*$", "abc"));
    assert!(!regex_matches("^[^x]*$", "axc"));
}

#[test]
fn the_validator_refuses_what_the_schemas_forbid() {
    let doc = document();
    let v = Validator::new(&doc);
    let schema = |name: &str| json!({ "$ref": format!("#/components/schemas/{name}") });
    let good_error = json!({"error": {"code": "not_found", "message": "hook not found"}});
    assert!(v.errors(&schema("Error"), &good_error).is_empty());
    for bad in [
        json!({"error": {"code": "nope", "message": "x"}}),
        json!({"error": {"code": "not_found"}}),
        json!({"error": {"code": "not_found", "message": "x", "extra": 1}}),
        json!({"error": "not_found"}),
        json!([]),
    ] {
        assert!(
            !v.errors(&schema("Error"), &bad).is_empty(),
            "Error accepted {bad}"
        );
    }
    let page = json!({"data": [], "next": null});
    assert!(v.errors(&schema("HookList"), &page).is_empty());
    assert!(!v
        .errors(&schema("HookList"), &json!({"data": [], "next": 3}))
        .is_empty());
    assert!(!v
        .errors(&schema("HookList"), &json!({"data": [{}], "next": null}))
        .is_empty());
    // oneOf: a single event or an array, nothing else.
    assert!(v
        .errors(&schema("EventPublish"), &json!({"type": "a.b"}))
        .is_empty());
    assert!(v
        .errors(&schema("EventPublish"), &json!([{"type": "a.b"}]))
        .is_empty());
    assert!(!v.errors(&schema("EventPublish"), &json!([])).is_empty());
    assert!(!v.errors(&schema("EventPublish"), &json!("a.b")).is_empty());
    let t = "2026-01-02T03:04:05Z";
    let key = json!({"id": "key_1", "role": "admin", "tenant": null, "created_at": t});
    assert!(v.errors(&schema("Key"), &key).is_empty());
    let mut bad_time = key.clone();
    bad_time["created_at"] = json!("yesterday");
    assert!(!v.errors(&schema("Key"), &bad_time).is_empty());
}

// ---------------------------------------------------------------------------
// Answers against the document
// ---------------------------------------------------------------------------

/// Checks one real answer of `METHOD template` against the document: the status is
/// documented for that operation, the content type is one it lists (or there is no
/// body when it lists none), documented headers are present, and a JSON body matches
/// the schema. Returns the parsed JSON body (`Null` when empty).
#[track_caller]
fn check_answer(doc: &Value, method: &str, template: &str, r: &Resp) -> Value {
    let v = Validator::new(doc);
    let op = &doc["paths"][template][method.to_lowercase()];
    assert!(op.is_object(), "{method} {template} is not documented");
    let status = r.status.to_string();
    let mut resp = op["responses"].get(&status).unwrap_or_else(|| {
        panic!(
            "{method} {template} answered {status}, which the document does not list \
             (it lists {:?}): {r}",
            op["responses"]
                .as_object()
                .map(|o| o.keys().collect::<Vec<_>>())
        )
    });
    if let Some(reference) = resp.get("$ref") {
        resp = v.resolve(reference.as_str().unwrap());
    }
    if let Some(headers) = resp.get("headers").and_then(Value::as_object) {
        for name in headers.keys() {
            assert!(
                r.header(name).is_some(),
                "{method} {template} -> {status} lacks the documented header {name}: {r}"
            );
        }
    }
    let Some(content) = resp.get("content").and_then(Value::as_object) else {
        assert!(
            r.raw.is_empty(),
            "{method} {template} -> {status} is documented without a body but has one: {r}"
        );
        return Value::Null;
    };
    let ct = r.header("content-type").unwrap_or_else(|| {
        panic!("{method} {template} -> {status} has a body but no Content-Type: {r}")
    });
    let media = ct.split(';').next().unwrap().trim().to_ascii_lowercase();
    let entry = content.get(&media).unwrap_or_else(|| {
        panic!(
            "{method} {template} -> {status} is {media}, not one of the documented {:?}",
            content.keys().collect::<Vec<_>>()
        )
    });
    let schema = &entry["schema"];
    if media == "application/json" {
        let body: Value = serde_json::from_slice(&r.raw)
            .unwrap_or_else(|e| panic!("{method} {template}: body is not JSON ({e}): {r}"));
        v.assert_valid(schema, &body, &format!("{method} {template} -> {status}"));
        body
    } else {
        let text = Value::String(String::from_utf8(r.raw.clone()).expect("text body is UTF-8"));
        v.assert_valid(schema, &text, &format!("{method} {template} -> {status}"));
        text
    }
}

/// Validates a request body against the operation's documented request schema.
#[track_caller]
fn check_request(doc: &Value, method: &str, template: &str, body: &Value) {
    let op = &doc["paths"][template][method.to_lowercase()];
    let schema = &op["requestBody"]["content"]["application/json"]["schema"];
    assert!(
        schema.is_object(),
        "{method} {template} takes a body the document does not describe: {body}"
    );
    Validator::new(doc).assert_valid(
        schema,
        body,
        &format!("the request body sent to {method} {template}"),
    );
}

fn component(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

/// An answer that is not about a route: 404 for an unknown path, 405 for a method.
#[track_caller]
fn check_error(doc: &Value, r: &Resp, status: u16, code: &str) {
    r.expect_error(status, code);
    let body: Value = serde_json::from_slice(&r.raw).unwrap();
    Validator::new(doc).assert_valid(&component("Error"), &body, &r.to_string());
}

// ---------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------

#[test]
fn the_router_and_the_document_list_the_same_operations() {
    let doc = document();
    assert_eq!(doc["openapi"].as_str().map(|s| &s[..4]), Some("3.1."));
    let routed = routed();
    let documented = documented(&doc);
    let undocumented: Vec<_> = routed.difference(&documented).collect();
    let unrouted: Vec<_> = documented.difference(&routed).collect();
    assert!(
        undocumented.is_empty() && unrouted.is_empty(),
        "the router and openapi.json disagree\n  routed but not documented: {undocumented:?}\n  \
         documented but not routed: {unrouted:?}"
    );

    let schemes = &doc["components"]["securitySchemes"];
    let bearer = schemes
        .as_object()
        .and_then(|s| s.values().find(|s| s["scheme"] == "bearer"))
        .unwrap_or_else(|| panic!("no bearer security scheme: {schemes}"));
    assert_eq!(bearer["type"], "http");
    assert!(
        doc["security"].as_array().is_some_and(|s| !s.is_empty()),
        "the document does not require the bearer scheme by default"
    );

    for (method, template) in &documented {
        let op = &doc["paths"][template][method.to_lowercase()];
        let public = op["security"].as_array().is_some_and(Vec::is_empty);
        assert_eq!(
            public,
            PUBLIC.contains(&template.as_str()),
            "{method} {template}: documented public = {public}"
        );
        let responses = op["responses"].as_object().expect("responses");
        assert!(
            responses.keys().any(|s| s.starts_with('2')),
            "{method} {template} documents no success answer"
        );
        if !public {
            assert!(
                responses.contains_key("401"),
                "{method} {template} does not document 401"
            );
        }
        // Every `{param}` of the template is declared as a path parameter.
        let mut params: Vec<Value> = Vec::new();
        for list in [&doc["paths"][template]["parameters"], &op["parameters"]] {
            for p in list.as_array().into_iter().flatten() {
                params.push(match p.get("$ref") {
                    Some(r) => Validator::new(&doc).resolve(r.as_str().unwrap()).clone(),
                    None => p.clone(),
                });
            }
        }
        for name in template
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
        {
            assert!(
                params
                    .iter()
                    .any(|p| p["in"] == "path" && p["name"] == name && p["required"] == true),
                "{method} {template}: path parameter `{name}` is not declared"
            );
        }
    }

    for name in [
        "Hook",
        "HookCreate",
        "HookPatch",
        "Key",
        "Event",
        "EventPublish",
        "PublishResult",
        "Delivery",
        "Attempt",
        "Error",
    ] {
        assert!(
            doc["components"]["schemas"][name].is_object(),
            "components/schemas/{name} is missing"
        );
    }
    Validator::new(&doc).audit();
}

/// The ids and bodies that make a plausible request of each operation.
struct Fixture {
    sink: Sink,
    hook: String,
    doomed_hook: String,
    pending_hook: String,
    pending_code: String,
    key: String,
    event: String,
    delivery: String,
}

impl Fixture {
    fn new(hookd: &Hookd) -> Fixture {
        let sink = Sink::start();
        let hook = hookd.hook(&sink.url("/routes"), "route.*").id;
        let doomed_hook = hookd.hook(&sink.url("/doomed"), "doomed.x").id;
        let pending = Sink::start();
        pending.set_handshake(Handshake::Ignore);
        let created = hookd
            .post(
                &hookd.admin,
                "/v1/hooks",
                &json!({"target_url": pending.url("/p"), "event": "pend.x"}),
            )
            .expect(201);
        assert_eq!(created["status"], "pending", "{created}");
        let pending_code = pending.handshake_codes().pop().expect("a handshake code");
        let key = hookd.key("publisher", None).id;
        let event = hookd.publish("route.test", "r1", json!({"n": 1}));
        let delivered = hookd.wait_delivery(&hook, &event, "delivered");
        Fixture {
            sink,
            hook,
            doomed_hook,
            pending_hook: created["id"].as_str().unwrap().to_string(),
            pending_code,
            key,
            event,
            delivery: delivered["id"].as_str().unwrap().to_string(),
        }
    }

    /// The path and body of a plausible request of `METHOD template`.
    fn request(&self, method: &str, template: &str) -> (String, Option<Value>) {
        let id = match (method, template) {
            ("DELETE", "/v1/keys/{id}") => self.key.as_str(),
            ("DELETE", "/v1/hooks/{id}") => self.doomed_hook.as_str(),
            ("POST", "/v1/hooks/{id}/verify") => self.pending_hook.as_str(),
            (_, t) if t.starts_with("/v1/hooks/") => self.hook.as_str(),
            (_, t) if t.starts_with("/v1/deliveries/") => self.delivery.as_str(),
            (_, t) if t.starts_with("/v1/events/") => self.event.as_str(),
            _ => "",
        };
        let path = template.replace("{id}", id);
        let body = match (method, template) {
            ("POST", "/v1/keys") => Some(json!({"role": "subscriber", "tenant": "acme"})),
            ("POST", "/v1/hooks") => Some(json!({
                "target_url": self.sink.url("/new"), "events": ["route.*", "x.y"],
                "payload": "full", "batch_max": 5
            })),
            ("PATCH", "/v1/hooks/{id}") => Some(json!({"payload": "full", "batch_max": 1})),
            ("POST", "/v1/hooks/{id}/verify") => Some(json!({"code": self.pending_code})),
            ("POST", "/v1/hooks/{id}/replay") => Some(json!({"since": rfc3339_now(-3_600_000)})),
            ("POST", "/v1/events") => Some(json!({
                "type": "route.other", "resource_id": "9", "data": {"a": [1, 2]}
            })),
            ("POST", "/v1/hooks/{id}/activate" | "/v1/hooks/{id}/rotate-secret")
            | ("POST", "/v1/deliveries/{id}/retry") => None,
            ("POST" | "PATCH" | "PUT", t) => {
                panic!("the test has no plausible body for {method} {t}; add one")
            }
            _ => None,
        };
        (path, body)
    }
}

#[test]
fn every_documented_route_answers_as_documented() {
    let doc = document();
    let hookd = Hookd::start();
    let fx = Fixture::new(&hookd);
    for (method, template) in documented(&doc) {
        let (path, body) = fx.request(&method, &template);
        let public = PUBLIC.contains(&template.as_str());
        if !public {
            // The document says a key is needed: without one, 401.
            let r = hookd.request(&method, &path, None, &[], body.as_ref());
            check_answer(&doc, &method, &template, &r);
            r.expect_error(401, "unauthorized");
        }
        if let Some(b) = &body {
            check_request(&doc, &method, &template, b);
        }
        let token = (!public).then_some(hookd.admin.as_str());
        let r = hookd.request(&method, &path, token, &[], body.as_ref());
        assert_ne!(r.status, 405, "{method} {template} is refused: {r}");
        if r.status == 404 {
            let msg = r.body["error"]["message"].as_str().unwrap_or("");
            assert!(
                !msg.starts_with("route"),
                "{method} {template} is not routed: {r}"
            );
        }
        assert!(
            (200..300).contains(&r.status),
            "a plausible {method} {template} did not succeed: {r}"
        );
        check_answer(&doc, &method, &template, &r);
    }
}

#[test]
fn the_served_document_is_the_repository_file() {
    let hookd = Hookd::start();
    let r = hookd.request("GET", "/v1/openapi.json", None, &[], None);
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(
        r.header("content-type")
            .map(|c| c.split(';').next().unwrap().trim()),
        Some("application/json")
    );
    assert!(
        String::from_utf8_lossy(&r.raw) == repo_document(),
        "GET /v1/openapi.json differs from openapi.json in the repository \
         (rebuild the binary?)"
    );
}

/// The documented template a concrete path (query string and all) belongs to.
fn template_of(doc: &Value, path: &str) -> String {
    let path = path.split('?').next().unwrap();
    let segments: Vec<&str> = path.split('/').collect();
    let mut found: Vec<&String> = doc["paths"]
        .as_object()
        .unwrap()
        .keys()
        .filter(|t| {
            let ts: Vec<&str> = t.split('/').collect();
            ts.len() == segments.len()
                && ts
                    .iter()
                    .zip(&segments)
                    .all(|(t, s)| t == s || (t.starts_with('{') && !s.is_empty()))
        })
        .collect();
    // A literal segment wins over a parameter.
    found.sort_by_key(|t| t.matches('{').count());
    found
        .first()
        .unwrap_or_else(|| panic!("no documented path matches {path}"))
        .to_string()
}

/// Sends a request, checks that it answers `status`, and checks the answer (and a
/// request body the server took) against the document; returns the JSON body.
#[track_caller]
fn call(
    hookd: &Hookd,
    doc: &Value,
    (method, path): (&str, &str),
    token: Option<&str>,
    body: Option<Value>,
    status: u16,
) -> Value {
    let template = template_of(doc, path);
    let r = hookd.request(method, path, token, &[], body.as_ref());
    assert_eq!(r.status, status, "unexpected status: {r}");
    if let (Some(b), true) = (&body, (200..300).contains(&status)) {
        check_request(doc, method, &template, b);
    }
    check_answer(doc, method, &template, &r)
}

#[test]
fn real_answers_validate_against_the_schemas() {
    let doc = document();
    let hookd = Hookd::start();
    let a = Some(hookd.admin.as_str());
    let call = |req: (&str, &str), token: Option<&str>, body: Option<Value>, status: u16| {
        call(&hookd, &doc, req, token, body, status)
    };
    let sink = Sink::start();
    let batch_sink = Sink::start();
    let ignoring = Sink::start();
    ignoring.set_handshake(Handshake::Ignore);

    // Keys.
    let sub = json!({"role": "subscriber", "tenant": "acme"});
    let sub = call(("POST", "/v1/keys"), a, Some(sub), 201);
    let s = Some(sub["token"].as_str().unwrap());
    call(
        ("POST", "/v1/keys"),
        a,
        Some(json!({"role": "publisher"})),
        201,
    );
    let keys = call(("GET", "/v1/keys?limit=1"), a, None, 200);
    assert!(keys["next"].is_string(), "one of several keys: {keys}");

    // Hooks: active, batched with full payloads, and pending (the receiver ignores the
    // handshake), created by a subscriber.
    let one = json!({"target_url": sink.url("/one"), "event": "item.create"});
    let one = call(("POST", "/v1/hooks"), a, Some(one), 201);
    let one_id = one["id"].as_str().unwrap().to_string();
    let batch = json!({
        "target_url": batch_sink.url("/batch"), "events": ["item.*"], "payload": "full",
        "batch_max": 10, "tenant": "default"
    });
    call(("POST", "/v1/hooks"), a, Some(batch), 201);
    let pending = json!({"target_url": ignoring.url("/p"), "event": "item.create"});
    let pending = call(("POST", "/v1/hooks"), s, Some(pending), 201);
    assert_eq!(pending["status"], "pending", "{pending}");
    assert!(pending["verification"]["error"].is_string(), "{pending}");
    let hook_path = format!("/v1/hooks/{one_id}");
    call(("GET", &hook_path), a, None, 200);
    let list = call(("GET", "/v1/hooks"), a, None, 200);
    assert_eq!(list["data"].as_array().unwrap().len(), 3, "{list}");
    call(("GET", "/v1/hooks?tenant=acme"), s, None, 200);

    // Events, single and array, with an idempotent repeat and a conflicting one. The
    // first delivery fails once, then is taken: a log entry with two attempts.
    sink.script([500]);
    let single = json!({"type": "item.create", "resource_id": "1", "data": {"x": 1}});
    let published = call(("POST", "/v1/events"), a, Some(single), 202);
    assert!(published.is_object(), "{published}");
    let evt = published["id"].as_str().unwrap().to_string();
    let array = json!([
        {"type": "item.update", "tenant": "default", "resource_id": null},
        {"type": "item.update", "data": [1, "two"], "idempotency_key": "k-1"}
    ]);
    check_request(&doc, "POST", "/v1/events", &array);
    let idem = [("Idempotency-Key", "batch-1")];
    let publish = |body: &Value| {
        let r = hookd.request("POST", "/v1/events", a, &idem, Some(body));
        let v = check_answer(&doc, "POST", "/v1/events", &r);
        (r, v)
    };
    let (r, results) = publish(&array);
    assert_eq!(r.status, 202, "{r}");
    assert_eq!(results.as_array().map(Vec::len), Some(2), "{results}");
    assert_eq!(publish(&array).1, results, "an idempotent repeat");
    let (conflict, _) = publish(&json!({"type": "item.other"}));
    conflict.expect_error(409, "idempotency_conflict");

    let delivered = hookd.wait_delivery(&one_id, &evt, "delivered");
    assert_eq!(delivered["attempts"].as_array().map(Vec::len), Some(2));
    let log = call(("GET", &format!("{hook_path}/deliveries")), a, None, 200);
    let attempts = &log["data"][0]["attempts"];
    assert_eq!(attempts[0]["status_code"], 500, "{log}");
    assert_eq!(attempts[1]["status_code"], 200, "{log}");

    // What the receivers got matches the documented webhooks.
    let v = Validator::new(&doc);
    batch_sink.wait_until("the batch hook's three events", |reqs| {
        delivered_events(reqs).len() >= 3
    });
    for req in sink.requests().iter().chain(&batch_sink.requests()) {
        v.assert_valid(&component("DeliveryBody"), &req.json(), &req.summary());
    }
    assert!(
        batch_sink.requests().iter().all(|r| r.json().is_array()),
        "the batch hook got a body that is not an array"
    );
    for h in ignoring.handshakes() {
        let body: Value = serde_json::from_slice(&h.body).unwrap();
        v.assert_valid(&component("VerifyRequest"), &body, &h.summary());
    }

    // A target that refuses connections: attempts carry `error`, and it ends dead.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let refused = json!({
        "target_url": format!("http://127.0.0.1:{port}/gone"), "event": "refused.x",
        "verify": false
    });
    let refused = call(("POST", "/v1/hooks"), a, Some(refused), 201);
    let refused_id = refused["id"].as_str().unwrap().to_string();
    let refused_evt = hookd.publish("refused.x", "r", json!(null));
    hookd.wait_delivery(&refused_id, &refused_evt, "dead");
    let dead_log = format!("/v1/hooks/{refused_id}/deliveries?status=dead");
    let log = call(("GET", &dead_log), a, None, 200);
    assert!(log["data"][0]["attempts"][0]["error"].is_string(), "{log}");

    // Reading events.
    let e = call(("GET", &format!("/v1/events/{evt}")), a, None, 200);
    assert_eq!(e["data"], json!({"x": 1}));
    let events = call(("GET", "/v1/events?type=item.update&limit=1"), a, None, 200);
    assert!(events["next"].is_string(), "{events}");
    call(("GET", "/v1/events"), s, None, 200);

    // Errors, each validated against its operation's documented answer.
    let err = |req: (&str, &str), token: Option<&str>, body: Option<Value>, want: (u16, &str)| {
        let r = hookd.request(req.0, req.1, token, &[], body.as_ref());
        check_answer(&doc, req.0, &template_of(&doc, req.1), &r);
        r.expect_error(want.0, want.1);
    };
    let bad = (400, "invalid_field");
    let unknown_field = json!({"target_url": sink.url("/x"), "event": "a", "colour": "red"});
    err(("POST", "/v1/hooks"), a, Some(unknown_field), bad);
    err(("POST", "/v1/keys"), a, Some(json!({"role": "root"})), bad);
    err(("GET", "/v1/hooks?limit=0"), a, None, bad);
    err(
        ("GET", &format!("{hook_path}/deliveries?status=lost")),
        a,
        None,
        bad,
    );
    let since = Some(json!({"since": "last week"}));
    err(("POST", &format!("{hook_path}/replay")), a, since, bad);
    let unauthorized = (401, "unauthorized");
    err(
        ("GET", "/v1/hooks"),
        Some("not-a-token"),
        None,
        unauthorized,
    );
    err(("GET", "/v1/events"), None, None, unauthorized);
    let forbidden = (403, "forbidden");
    err(
        ("POST", "/v1/events"),
        s,
        Some(json!({"type": "a"})),
        forbidden,
    );
    err(("GET", "/v1/keys"), s, None, forbidden);
    let not_found = (404, "not_found");
    err(("GET", "/v1/hooks/hook_nope"), a, None, not_found);
    err(("GET", &hook_path), s, None, not_found);
    err(("GET", "/v1/events/evt_nope"), a, None, not_found);
    err(("DELETE", "/v1/keys/key_nope"), a, None, not_found);
    err(
        ("POST", "/v1/deliveries/dlv_nope/retry"),
        a,
        None,
        not_found,
    );
    let code = Some(json!({"code": "x"}));
    err(
        ("POST", &format!("{hook_path}/verify")),
        a,
        code,
        (409, "nothing_to_verify"),
    );

    // Errors the raw protocol brings about.
    let admin = hookd.admin.as_str();
    let raw = hookd.raw(&Raw::post("/v1/events").auth(admin).json("{\"type\": "));
    check_answer(&doc, "POST", "/v1/events", &raw);
    raw.expect_error(400, "invalid_json");
    let plain = Raw::post("/v1/events")
        .auth(admin)
        .body("text/plain", "type=a");
    let raw = hookd.raw(&plain);
    check_answer(&doc, "POST", "/v1/events", &raw);
    raw.expect_error(415, "unsupported_media_type");
    let big = vec![b' '; 1024 * 1024 + 10];
    let raw = hookd.raw(&Raw::post("/v1/events").auth(admin).json(big));
    check_answer(&doc, "POST", "/v1/events", &raw);
    raw.expect_error(413, "payload_too_large");

    // Not about any one operation: an unknown path and a method a path does not serve.
    check_error(&doc, &hookd.get(admin, "/v2/nothing"), 404, "not_found");
    check_error(
        &doc,
        &hookd.delete(admin, "/v1/events"),
        405,
        "method_not_allowed",
    );
}

#[test]
fn request_bodies_the_server_refuses_are_refused_by_the_document() {
    let doc = document();
    let hookd = Hookd::start();
    let sink = Sink::start();
    let hook = hookd.hook(&sink.url("/h"), "a.b").id;
    let v = Validator::new(&doc);
    let hook_path = format!("/v1/hooks/{hook}");
    let cases: Vec<(&str, &str, String, Value)> = vec![
        (
            "POST",
            "/v1/keys",
            "/v1/keys".into(),
            json!({"role": "root"}),
        ),
        (
            "POST",
            "/v1/keys",
            "/v1/keys".into(),
            json!({"tenant": "acme"}),
        ),
        (
            "POST",
            "/v1/hooks",
            "/v1/hooks".into(),
            json!({"event": "a.b"}),
        ),
        (
            "POST",
            "/v1/hooks",
            "/v1/hooks".into(),
            json!({"target_url": sink.url("/x"), "event": "a", "events": ["b"]}),
        ),
        (
            "POST",
            "/v1/hooks",
            "/v1/hooks".into(),
            json!({"target_url": sink.url("/x"), "event": "a", "batch_max": 0}),
        ),
        (
            "POST",
            "/v1/hooks",
            "/v1/hooks".into(),
            json!({"target_url": sink.url("/x"), "event": "a", "payload": "fat"}),
        ),
        (
            "POST",
            "/v1/hooks",
            "/v1/hooks".into(),
            json!({"target_url": sink.url("/x"), "events": []}),
        ),
        (
            "PATCH",
            "/v1/hooks/{id}",
            hook_path.clone(),
            json!({"tenant": "other"}),
        ),
        (
            "PATCH",
            "/v1/hooks/{id}",
            hook_path.clone(),
            json!({"batch_max": 1001}),
        ),
        (
            "POST",
            "/v1/hooks/{id}/replay",
            format!("{hook_path}/replay"),
            json!({}),
        ),
        (
            "POST",
            "/v1/hooks/{id}/verify",
            format!("{hook_path}/verify"),
            json!({"code": 7}),
        ),
        (
            "POST",
            "/v1/events",
            "/v1/events".into(),
            json!({"resource_id": "1"}),
        ),
        (
            "POST",
            "/v1/events",
            "/v1/events".into(),
            json!({"type": "a", "resource_id": 1}),
        ),
        (
            "POST",
            "/v1/events",
            "/v1/events".into(),
            json!({"type": "a", "tenant": "a b"}),
        ),
        ("POST", "/v1/events", "/v1/events".into(), json!([])),
        ("POST", "/v1/events", "/v1/events".into(), json!("a.b")),
    ];
    for (method, template, path, body) in cases {
        let r = hookd.request(method, &path, Some(&hookd.admin), &[], Some(&body));
        check_answer(&doc, method, template, &r);
        assert_eq!(r.status, 400, "{method} {path} with {body}: {r}");
        let schema = &doc["paths"][template][method.to_lowercase()]["requestBody"]["content"]
            ["application/json"]["schema"];
        assert!(
            !v.errors(schema, &body).is_empty(),
            "the server refuses {body} on {method} {template} but the document accepts it"
        );
    }
}

#[test]
fn rate_limited_answers_are_documented_with_retry_after() {
    let doc = document();
    let hookd = Hookd::options().arg("--rate-limit").arg("2").start();
    let r = wait_until("a 429 from a rate limit of 2/s", WAIT, || {
        let r = hookd.get(&hookd.admin, "/v1/hooks");
        (r.status == 429).then_some(r)
    });
    check_answer(&doc, "GET", "/v1/hooks", &r);
    r.expect_error(429, "rate_limited");
}
