//! The routing table: every route declared in one place, as a method set,
//! a path pattern and a handler.
//!
//! A pattern is a path whose segments are literals, `{name}` (one
//! non-empty segment) or, last, `{*name}` (the non-empty rest of the path,
//! slashes included). Routes are tried in the order they were declared;
//! the first whose pattern and method match answers. A path that matches
//! some pattern under another method gets 405 with `Allow`; one that
//! matches none gets 404. Matching allocates nothing: parameters are
//! ranges of the request's path.

use std::borrow::Cow;

use crate::http::Method;

/// Most parameters one pattern may name.
pub const MAX_PARAMS: usize = 8;

/// A set of methods, one bit each.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Methods(u8);

impl Methods {
    const ORDER: [(Method, &'static str); 7] = [
        (Method::Get, "GET"),
        (Method::Head, "HEAD"),
        (Method::Post, "POST"),
        (Method::Put, "PUT"),
        (Method::Delete, "DELETE"),
        (Method::Patch, "PATCH"),
        (Method::Options, "OPTIONS"),
    ];

    fn bit(method: Method) -> u8 {
        1 << Self::ORDER
            .iter()
            .position(|(m, _)| *m == method)
            .expect("every method is in the order")
    }

    /// The set holding `methods`.
    pub fn of(methods: &[Method]) -> Methods {
        Methods(methods.iter().fold(0, |bits, &m| bits | Self::bit(m)))
    }

    /// Whether `method` is in the set.
    pub fn contains(self, method: Method) -> bool {
        self.0 & Self::bit(method) != 0
    }

    fn union(self, other: Methods) -> Methods {
        Methods(self.0 | other.0)
    }

    /// As an `Allow` field value: `GET, HEAD, PUT`.
    pub fn allow(self) -> String {
        Self::ORDER
            .iter()
            .filter(|(m, _)| self.contains(*m))
            .map(|(_, name)| *name)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Literal(Box<[u8]>),
    Param,
    Rest,
}

/// A compiled path pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern {
    text: Box<str>,
    /// The whole path, when the pattern has no parameters.
    literal: Option<Box<[u8]>>,
    segments: Vec<Segment>,
    names: Vec<Box<str>>,
}

/// Where a request's parameters are in its path.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Params {
    ranges: [(u16, u16); MAX_PARAMS],
    len: u8,
}

impl Params {
    fn push(&mut self, start: usize, end: usize) {
        self.ranges[usize::from(self.len)] = (start as u16, end as u16);
        self.len += 1;
    }

    /// Parameter `index`'s bytes in `path`, as sent (percent-encoding kept).
    pub fn get<'p>(&self, index: usize, path: &'p [u8]) -> Option<&'p [u8]> {
        let (start, end) = *self.ranges[..usize::from(self.len)].get(index)?;
        path.get(usize::from(start)..usize::from(end))
    }
}

impl Pattern {
    /// Compile `text`: it starts with `/`; each `{name}` fills a whole
    /// segment and names differ; `{*name}` only comes last.
    pub fn parse(text: &str) -> Result<Pattern, String> {
        let bad = |why: &str| Err(format!("route pattern {text:?}: {why}"));
        let Some(rest) = text.strip_prefix('/') else {
            return bad("it must start with /");
        };
        let mut segments = Vec::new();
        let mut names: Vec<Box<str>> = Vec::new();
        let parts: Vec<&str> = if rest.is_empty() {
            Vec::new()
        } else {
            rest.split('/').collect()
        };
        for (i, part) in parts.iter().enumerate() {
            let segment = match part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                Some(inner) => {
                    let (segment, name) = match inner.strip_prefix('*') {
                        Some(name) if i + 1 == parts.len() => (Segment::Rest, name),
                        Some(_) => return bad("{*name} must be the last segment"),
                        None => (Segment::Param, inner),
                    };
                    if name.is_empty()
                        || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                    {
                        return bad("a parameter is named with letters, digits and _");
                    }
                    if names.iter().any(|n| &**n == name) {
                        return bad("a parameter is named twice");
                    }
                    names.push(name.into());
                    segment
                }
                None if part.contains(['{', '}']) => {
                    return bad("a parameter fills a whole segment: {name}");
                }
                None if part.is_empty() && i + 1 < parts.len() => {
                    return bad("an empty segment (//)");
                }
                None => Segment::Literal(part.as_bytes().into()),
            };
            segments.push(segment);
        }
        if names.len() > MAX_PARAMS {
            return bad(&format!("more than {MAX_PARAMS} parameters"));
        }
        Ok(Pattern {
            text: text.into(),
            literal: names.is_empty().then(|| text.as_bytes().into()),
            segments,
            names,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The parameters' names, in order.
    pub fn names(&self) -> &[Box<str>] {
        &self.names
    }

    /// Whether `path` matches; its parameters into `params`.
    pub fn matches(&self, path: &[u8], params: &mut Params) -> bool {
        if let Some(literal) = &self.literal {
            return path == &**literal;
        }
        *params = Params::default();
        let Some(mut rest) = path.strip_prefix(b"/") else {
            return false;
        };
        let mut at = 1;
        for (i, segment) in self.segments.iter().enumerate() {
            if let Segment::Rest = segment {
                if rest.is_empty() {
                    return false;
                }
                params.push(at, path.len());
                return true;
            }
            let end = rest.iter().position(|&b| b == b'/').unwrap_or(rest.len());
            let part = &rest[..end];
            match segment {
                Segment::Literal(literal) if part == &**literal => {}
                Segment::Param if !part.is_empty() => params.push(at, at + end),
                _ => return false,
            }
            let last = i + 1 == self.segments.len();
            if last {
                return end == rest.len();
            }
            if end == rest.len() {
                return false;
            }
            rest = &rest[end + 1..];
            at += end + 1;
        }
        rest.is_empty()
    }
}

/// The index of a route in its table; also its metrics label's index.
pub type RouteId = u16;

/// What a lookup found.
#[derive(Debug, PartialEq, Eq)]
pub enum Matched<'t> {
    /// Route `RouteId` answers, with these parameters.
    Route(RouteId, Params),
    /// The path exists under other methods; the route that would answer a
    /// GET (for the metrics label) and the `Allow` value.
    WrongMethod(RouteId, &'t str),
    /// No pattern matches the path.
    NotFound,
}

/// One route: a name (its metrics label), methods and a pattern.
#[derive(Clone, Debug)]
pub struct RouteSpec {
    /// The metrics label.
    pub name: Cow<'static, str>,
    /// The methods it answers.
    pub methods: Methods,
    /// The path pattern.
    pub pattern: Pattern,
}

/// The compiled table.
#[derive(Debug)]
pub struct Table {
    routes: Vec<RouteSpec>,
    /// Per route: the `Allow` value of every route sharing its pattern.
    allow: Vec<Box<str>>,
}

impl Table {
    /// Compile `routes`; two routes with the same pattern must not share a
    /// method, and names must differ.
    pub fn new(routes: Vec<RouteSpec>) -> Result<Table, String> {
        if routes.len() >= usize::from(RouteId::MAX) {
            return Err("too many routes".into());
        }
        let mut allow = Vec::with_capacity(routes.len());
        for (i, route) in routes.iter().enumerate() {
            let mut union = Methods::default();
            for (j, other) in routes.iter().enumerate() {
                if other.pattern.as_str() != route.pattern.as_str() {
                    continue;
                }
                if j != i && other.methods.0 & route.methods.0 != 0 {
                    return Err(format!(
                        "routes {:?} and {:?} both answer {} {}",
                        route.name,
                        other.name,
                        Methods(other.methods.0 & route.methods.0).allow(),
                        route.pattern.as_str()
                    ));
                }
                union = union.union(other.methods);
            }
            if routes[..i].iter().any(|r| r.name == route.name) {
                return Err(format!("two routes are named {:?}", route.name));
            }
            allow.push(union.allow().into_boxed_str());
        }
        Ok(Table { routes, allow })
    }

    /// The routes, in order: a route's index is its [`RouteId`].
    pub fn routes(&self) -> &[RouteSpec] {
        &self.routes
    }

    /// The route for `method` on `path`.
    pub fn find(&self, method: Method, path: &[u8]) -> Matched<'_> {
        let mut params = Params::default();
        let mut wrong = None;
        for (i, route) in self.routes.iter().enumerate() {
            if !route.pattern.matches(path, &mut params) {
                continue;
            }
            if route.methods.contains(method) {
                return Matched::Route(i as RouteId, params);
            }
            wrong.get_or_insert(i);
        }
        match wrong {
            Some(i) => Matched::WrongMethod(i as RouteId, &self.allow[i]),
            None => Matched::NotFound,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(routes: &[(&'static str, &[Method], &str)]) -> Table {
        Table::new(
            routes
                .iter()
                .map(|&(name, methods, pattern)| RouteSpec {
                    name: name.into(),
                    methods: Methods::of(methods),
                    pattern: Pattern::parse(pattern).unwrap(),
                })
                .collect(),
        )
        .unwrap()
    }

    fn params(table: &Table, method: Method, path: &str) -> Option<(RouteId, Vec<String>)> {
        match table.find(method, path.as_bytes()) {
            Matched::Route(id, params) => {
                let names = table.routes()[usize::from(id)].pattern.names().len();
                Some((
                    id,
                    (0..names)
                        .map(|i| {
                            String::from_utf8(params.get(i, path.as_bytes()).unwrap().to_vec())
                                .unwrap()
                        })
                        .collect(),
                ))
            }
            _ => None,
        }
    }

    #[test]
    fn literals_parameters_and_the_rest_of_the_path() {
        let t = table(&[
            ("plain", &[Method::Get], "/plaintext"),
            ("root", &[Method::Get], "/"),
            ("user", &[Method::Get], "/users/{id}"),
            ("post", &[Method::Get], "/users/{id}/posts/{post}"),
            ("kv", &[Method::Get, Method::Put], "/v1/kv/{*key}"),
            ("code", &[Method::Get], "/{code}"),
        ]);
        assert_eq!(params(&t, Method::Get, "/plaintext"), Some((0, vec![])));
        assert_eq!(params(&t, Method::Get, "/"), Some((1, vec![])));
        assert_eq!(
            params(&t, Method::Get, "/users/7"),
            Some((2, vec!["7".into()]))
        );
        assert_eq!(
            params(&t, Method::Get, "/users/7/posts/x%2Fy"),
            Some((3, vec!["7".into(), "x%2Fy".into()]))
        );
        assert_eq!(
            params(&t, Method::Put, "/v1/kv/a/b"),
            Some((4, vec!["a/b".into()]))
        );
        assert_eq!(
            params(&t, Method::Get, "/abc"),
            Some((5, vec!["abc".into()]))
        );
        // No match: an empty parameter, a trailing slash, extra segments.
        for path in [
            "/users/",
            "/users//posts/1",
            "/users/7/",
            "/v1/kv/",
            "/a/b",
            "//",
        ] {
            assert_eq!(params(&t, Method::Get, path), None, "{path}");
        }
    }

    #[test]
    fn a_known_path_under_another_method_is_405_with_allow() {
        let t = table(&[
            ("get", &[Method::Get, Method::Head], "/v1/kv/{*key}"),
            ("put", &[Method::Put], "/v1/kv/{*key}"),
            ("events", &[Method::Post], "/v1/events"),
        ]);
        assert_eq!(
            t.find(Method::Post, b"/v1/kv/a"),
            Matched::WrongMethod(0, "GET, HEAD, PUT")
        );
        assert_eq!(
            t.find(Method::Get, b"/v1/events"),
            Matched::WrongMethod(2, "POST")
        );
        assert_eq!(t.find(Method::Get, b"/nothing"), Matched::NotFound);
    }

    #[test]
    fn bad_patterns_and_tables_are_refused_with_the_reason() {
        for (pattern, why) in [
            ("plaintext", "start with /"),
            ("/a/{*rest}/b", "last segment"),
            ("/a{b}", "whole segment"),
            ("/{a}/{a}", "named twice"),
            ("/{a-b}", "letters"),
            ("/a//b", "empty segment"),
        ] {
            let error = Pattern::parse(pattern).unwrap_err();
            assert!(error.contains(why), "{pattern}: {error}");
        }
        let spec = |name: &'static str, method| RouteSpec {
            name: name.into(),
            methods: Methods::of(&[method]),
            pattern: Pattern::parse("/x").unwrap(),
        };
        let error = Table::new(vec![spec("a", Method::Get), spec("b", Method::Get)]).unwrap_err();
        assert!(error.contains("both answer GET /x"), "{error}");
        let error = Table::new(vec![spec("a", Method::Get), spec("a", Method::Put)]).unwrap_err();
        assert!(error.contains("two routes are named"), "{error}");
    }
}
