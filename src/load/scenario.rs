//! `--scenario FILE.toml`: several request templates, each picked in
//! proportion to its weight, with variables drawn per request from named
//! distributions. Each template is an operation of its own: its own
//! histograms, counts and errors in the report.
//!
//! ```toml
//! [variables]
//! user = { uniform = [1, 100000] }                     # integers, both ends included
//! item = { zipf = [1, 1000000], exponent = 0.99 }      # rank 1 the likeliest
//!
//! [[request]]
//! name = "read-user"            # the operation's name in the report
//! weight = 9
//! method = "GET"
//! path = "/v1/kv/user:{user}"
//! absent_ok = true               # a 404 is an answer, not an error
//!
//! [[request]]
//! name = "write-item"
//! weight = 1
//! method = "PUT"
//! path = "/v1/kv/item:{item}"
//! headers = ["Content-Type: application/json"]
//! body = '{"user": {user}, "item": {item}}'
//! ```
//!
//! `{name}` is a variable when `name` is declared under `[variables]`; any
//! other brace is sent as it is, so JSON bodies need no escaping.
//!
//! Templates are split into literal bytes and variables when the file is
//! read; a request is written by copying the literals and formatting the
//! drawn integers, with its `Content-Length` computed as it is written.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::workload::{Encoded, Zipf};
use crate::rng::Rng;

/// Templates a scenario may hold (operations are counted in a byte).
pub const MAX_TEMPLATES: usize = 64;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    variables: BTreeMap<String, VariableSpec>,
    request: Vec<TemplateSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VariableSpec {
    uniform: Option<[u64; 2]>,
    zipf: Option<[u64; 2]>,
    exponent: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TemplateSpec {
    name: Option<String>,
    #[serde(default = "one")]
    weight: u32,
    #[serde(default = "get")]
    method: String,
    path: String,
    #[serde(default)]
    headers: Vec<String>,
    body: Option<String>,
    #[serde(default)]
    absent_ok: bool,
}

fn one() -> u32 {
    1
}

fn get() -> String {
    "GET".into()
}

/// How a variable's integers are drawn.
#[derive(Clone, Debug)]
enum Distribution {
    /// Every integer from `low` to `high` equally likely.
    Uniform { low: u64, span: u64 },
    /// `low + rank - 1`, ranks Zipf-distributed.
    Zipf { low: u64, zipf: Zipf },
}

impl Distribution {
    fn draw(&self, rng: &mut Rng) -> u64 {
        match self {
            Distribution::Uniform { low, span } => low + rng.below(*span),
            Distribution::Zipf { low, zipf } => low + zipf.sample(rng) - 1,
        }
    }
}

/// A piece of a template: bytes as they are, or a variable's value.
#[derive(Clone, Debug, PartialEq)]
enum Part {
    Literal(Vec<u8>),
    Variable(usize),
}

#[derive(Clone, Debug)]
struct Template {
    /// Request line and fields up to (not including) the body's length.
    head: Vec<Part>,
    body: Vec<Part>,
    /// Whether the request has a body (and so a `Content-Length`).
    sends_body: bool,
    bodiless_answer: bool,
    absent_ok: bool,
}

/// A scenario, ready to write requests.
#[derive(Clone, Debug)]
pub struct Scenario {
    names: Vec<String>,
    templates: Vec<Template>,
    /// Cumulative weights, to pick a template by one draw.
    cumulative: Vec<u64>,
    variables: Vec<Distribution>,
    /// This request's drawn values, one per variable.
    values: Vec<Option<u64>>,
    body: Vec<u8>,
}

impl Scenario {
    /// Read `text` (TOML), requests going to `host` with paths under `base`.
    pub fn parse(text: &str, base: &str, host: &str) -> Result<Scenario, String> {
        let file: File = toml::from_str(text).map_err(|e| e.to_string())?;
        if file.request.is_empty() {
            return Err("no [[request]] templates".into());
        }
        if file.request.len() > MAX_TEMPLATES {
            return Err(format!(
                "{} templates; at most {MAX_TEMPLATES}",
                file.request.len()
            ));
        }
        let names_of_variables: Vec<String> = file.variables.keys().cloned().collect();
        let variables = file
            .variables
            .iter()
            .map(|(name, spec)| distribution(name, spec))
            .collect::<Result<Vec<_>, _>>()?;
        let mut names = Vec::new();
        let mut templates = Vec::new();
        let mut cumulative = Vec::new();
        let mut total = 0u64;
        for (i, spec) in file.request.iter().enumerate() {
            let name = spec
                .name
                .clone()
                .unwrap_or_else(|| format!("{} {}", spec.method, spec.path));
            if names.contains(&name) {
                return Err(format!(
                    "two templates are called {name:?}: each needs its own name"
                ));
            }
            let what = |why: String| format!("request {} ({name}): {why}", i + 1);
            if spec.weight == 0 {
                return Err(what("a weight of 0 would never be sent".into()));
            }
            if spec.method.is_empty() || !spec.method.bytes().all(|b| b.is_ascii_uppercase()) {
                return Err(what(format!(
                    "method {:?} is not an HTTP method",
                    spec.method
                )));
            }
            if !spec.path.starts_with('/') {
                return Err(what(format!("path {:?} must start with /", spec.path)));
            }
            let mut head = format!("{} {base}{}", spec.method, spec.path);
            head.push_str(&format!(" HTTP/1.1\r\nHost: {host}\r\n"));
            for header in &spec.headers {
                let valid = header.split_once(':').is_some_and(|(n, _)| {
                    !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                });
                if !valid || header.contains(['\r', '\n']) {
                    return Err(what(format!("header {header:?} is not Name: value")));
                }
                if header.to_ascii_lowercase().starts_with("content-length:") {
                    return Err(what("Content-Length is written for you".into()));
                }
                head.push_str(header);
                head.push_str("\r\n");
            }
            let sends_body =
                spec.body.is_some() || matches!(spec.method.as_str(), "POST" | "PUT" | "PATCH");
            let head = split(&head, &names_of_variables);
            let body = split(spec.body.as_deref().unwrap_or(""), &names_of_variables);
            total += u64::from(spec.weight);
            cumulative.push(total);
            names.push(name);
            templates.push(Template {
                head,
                body,
                sends_body,
                bodiless_answer: spec.method == "HEAD",
                absent_ok: spec.absent_ok,
            });
        }
        let count = variables.len();
        Ok(Scenario {
            names,
            templates,
            cumulative,
            variables,
            values: vec![None; count],
            body: Vec::new(),
        })
    }

    /// Each template's name, in order: the operations of the report.
    pub fn operations(&self) -> Vec<String> {
        self.names.clone()
    }

    /// Pick a template, draw its variables, append the request to `out`.
    pub fn encode(&mut self, rng: &mut Rng, out: &mut Vec<u8>) -> Encoded {
        let total = *self.cumulative.last().expect("at least one template");
        let pick = rng.below(total);
        let index = self.cumulative.partition_point(|&c| c <= pick);
        self.values.iter_mut().for_each(|v| *v = None);
        let template = &self.templates[index];
        // A variable used twice in one request has one value.
        let mut value = |variable: usize, rng: &mut Rng| -> u64 {
            *self.values[variable].get_or_insert_with(|| self.variables[variable].draw(rng))
        };
        let mut numbers = itoa::Buffer::new();
        for part in &template.head {
            match part {
                Part::Literal(bytes) => out.extend_from_slice(bytes),
                Part::Variable(v) => {
                    out.extend_from_slice(numbers.format(value(*v, rng)).as_bytes())
                }
            }
        }
        self.body.clear();
        for part in &template.body {
            match part {
                Part::Literal(bytes) => self.body.extend_from_slice(bytes),
                Part::Variable(v) => self
                    .body
                    .extend_from_slice(numbers.format(value(*v, rng)).as_bytes()),
            }
        }
        if template.sends_body {
            out.extend_from_slice(b"Content-Length: ");
            out.extend_from_slice(numbers.format(self.body.len()).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
        Encoded {
            operation: index as u8,
            bodiless: template.bodiless_answer,
            absent_ok: template.absent_ok,
            events: None,
        }
    }
}

fn distribution(name: &str, spec: &VariableSpec) -> Result<Distribution, String> {
    let what = |why: &str| format!("variable {name}: {why}");
    match (spec.uniform, spec.zipf, spec.exponent) {
        (Some([low, high]), None, None) if low <= high && high - low < u64::MAX => {
            Ok(Distribution::Uniform {
                low,
                span: high - low + 1,
            })
        }
        (None, Some([low, high]), exponent) if low <= high && high - low < u64::MAX => {
            let s = exponent.unwrap_or(0.99);
            if !(s.is_finite() && s > 0.0 && s <= 10.0) {
                return Err(what("exponent must be above 0 and at most 10"));
            }
            Ok(Distribution::Zipf {
                low,
                zipf: Zipf::new(high - low + 1, s),
            })
        }
        (Some(_), None, None) | (None, Some(_), _) => Err(what("[LOW, HIGH] needs LOW <= HIGH")),
        _ => Err(what(
            "expected { uniform = [LOW, HIGH] } or { zipf = [LOW, HIGH], exponent = S }",
        )),
    }
}

/// `text` as literals and `{variable}`s: `{name}` is a variable when
/// `name` is declared one; any other brace is sent as it is (JSON bodies).
fn split(text: &str, variables: &[String]) -> Vec<Part> {
    let mut parts = Vec::new();
    let mut literal = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find('{') {
        literal.extend_from_slice(&rest.as_bytes()[..at]);
        let after = &rest[at + 1..];
        let variable = after
            .find(['{', '}'])
            .filter(|&end| after.as_bytes()[end] == b'}')
            .and_then(|end| Some((variables.iter().position(|v| *v == after[..end])?, end)));
        match variable {
            Some((index, end)) => {
                if !literal.is_empty() {
                    parts.push(Part::Literal(std::mem::take(&mut literal)));
                }
                parts.push(Part::Variable(index));
                rest = &after[end + 1..];
            }
            None => {
                literal.push(b'{');
                rest = after;
            }
        }
    }
    literal.extend_from_slice(rest.as_bytes());
    if !literal.is_empty() {
        parts.push(Part::Literal(literal));
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
[variables]
user = { uniform = [1, 3] }
item = { zipf = [10, 19], exponent = 1.0 }

[[request]]
name = "read-user"
weight = 3
path = "/v1/kv/user:{user}"
absent_ok = true

[[request]]
name = "write-item"
method = "PUT"
path = "/v1/kv/item:{item}"
headers = ["Content-Type: application/json"]
body = '{"user": {user}, "item": {item}, "again": {item}}'
"#;

    #[test]
    fn requests_follow_their_templates_and_weights() {
        let mut scenario = Scenario::parse(FILE, "", "h:1").unwrap();
        assert_eq!(scenario.operations(), ["read-user", "write-item"]);
        let mut rng = Rng::new(5);
        let mut counts = [0u32; 2];
        for _ in 0..4000 {
            let mut out = Vec::new();
            let encoded = scenario.encode(&mut rng, &mut out);
            counts[usize::from(encoded.operation)] += 1;
            let text = String::from_utf8(out).unwrap();
            if encoded.operation == 0 {
                assert!(encoded.absent_ok);
                let user: u64 = text["GET /v1/kv/user:".len()..]
                    .split(' ')
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!((1..=3).contains(&user), "{text}");
                assert!(text.ends_with("HTTP/1.1\r\nHost: h:1\r\n\r\n"), "{text}");
            } else {
                let (head, body) = text.split_once("\r\n\r\n").unwrap();
                let item: u64 = head["PUT /v1/kv/item:".len()..]
                    .split(' ')
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!((10..=19).contains(&item), "{text}");
                assert!(head.contains("Content-Type: application/json"));
                assert!(
                    head.ends_with(&format!("Content-Length: {}", body.len())),
                    "{text}"
                );
                // One value per variable per request.
                assert!(
                    body.contains(&format!("\"item\": {item}, \"again\": {item}}}")),
                    "{body}"
                );
                let json: serde_json::Value = serde_json::from_str(body).unwrap();
                assert!(json["user"].as_u64().is_some());
            }
        }
        // Weights 3 : 1.
        let share = f64::from(counts[0]) / 4000.0;
        assert!((share - 0.75).abs() < 0.03, "{counts:?}");
    }

    #[test]
    fn bad_scenarios_say_what_is_wrong() {
        for (text, expected) in [
            ("", "request"),
            ("[[request]]\npath = \"x\"", "must start with /"),
            ("[[request]]\npath = \"/\"\nweight = 0", "weight of 0"),
            (
                "[[request]]\npath = \"/\"\nmethod = \"get it\"",
                "not an HTTP method",
            ),
            (
                "[[request]]\npath = \"/\"\nheaders = [\"bad\"]",
                "Name: value",
            ),
            (
                "[[request]]\npath = \"/\"\nheaders = [\"Content-Length: 3\"]",
                "written for you",
            ),
            (
                "[[request]]\npath = \"/\"\n[[request]]\npath = \"/\"",
                "its own name",
            ),
            (
                "[variables]\nx = { uniform = [5, 1] }\n[[request]]\npath = \"/\"",
                "LOW <= HIGH",
            ),
            (
                "[variables]\nx = { normal = 1 }\n[[request]]\npath = \"/\"",
                "unknown field",
            ),
            ("[[request]]\npath = \"/\"\ncolour = 1", "unknown field"),
        ] {
            let error = Scenario::parse(text, "", "h")
                .err()
                .unwrap_or_else(|| panic!("{text} parsed"));
            assert!(error.contains(expected), "{text}: {error}");
        }
    }

    #[test]
    fn templates_split_into_literals_and_variables() {
        let vars = ["a".to_string()];
        assert_eq!(
            split("x{a}y{{z}}{b}{\"a\": {a}}}", &vars),
            [
                Part::Literal(b"x".to_vec()),
                Part::Variable(0),
                Part::Literal(b"y{{z}}{b}{\"a\": ".to_vec()),
                Part::Variable(0),
                Part::Literal(b"}}".to_vec()),
            ]
        );
    }
}
