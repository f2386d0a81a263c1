//! Dependencies point one way: no module imports one above it.
//!
//! Every source file's module is given a layer (the longest module path
//! in [`LAYERS`] that contains it); every `crate::` and `super::` path in
//! its code (comments and test modules left out) must name a module of its
//! own layer or a lower one. A file in no listed module fails, so a new
//! module is placed on purpose. The layers are those the crate doc
//! (`src/lib.rs`) lists.

use std::path::{Path, PathBuf};

/// Module paths and their layers, lowest first.
const LAYERS: &[(&str, u8)] = &[
    // 1: protocols and leaves, sans-IO.
    ("http", 1),
    ("payload", 1),
    ("metrics", 1),
    ("lifecycle", 1),
    ("rng", 1),
    ("tls", 1),
    ("redis", 1),
    ("redis::resp", 1),
    ("redis::slot", 1),
    ("redis::command", 1),
    ("redis::topology", 1),
    ("redis::cluster", 1),
    ("writeback::queue", 1),
    ("writeback::table", 1),
    // 2: the io_uring layer.
    ("ring", 2),
    // 3: I/O on it: Redis sockets, the blocking client, the database core.
    ("redis::links", 3),
    ("redis::driver", 3),
    ("writeback", 3),
    // 4: the per-core runtime.
    ("runtime", 4),
    // 5: the public API for applications.
    ("app", 5),
    // 6: millrace's own routes, on that API.
    ("routes", 6),
    // 7: the process, host tooling, the load generator.
    ("server", 7),
    ("host", 7),
    ("load", 7),
];

fn layer_of(module: &[String]) -> Option<(u8, String)> {
    let path = module.join("::");
    LAYERS
        .iter()
        .filter(|(prefix, _)| path == *prefix || path.starts_with(&format!("{prefix}::")))
        .max_by_key(|(prefix, _)| prefix.len())
        .map(|&(prefix, layer)| (layer, prefix.to_string()))
}

/// `src/a/b.rs` and `src/a/b/mod.rs` are module `a::b`.
fn module_of(file: &Path, src: &Path) -> Vec<String> {
    let relative = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = relative
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

fn rust_files(dir: &Path, into: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, into);
        } else if path.extension().is_some_and(|e| e == "rs") {
            into.push(path);
        }
    }
}

/// The code of a file: no comments, no test module.
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => text,
    };
    text.lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The module paths `code` names from `module`: each `crate::a::b` (and
/// each item of a `crate::a::{b, c}` group), and `super::` resolved.
fn imports(code: &str, module: &[String]) -> Vec<Vec<String>> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut found = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        if at > 0 && code[..at].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            for item in group.split(',') {
                let name = ident(item.trim());
                if !name.is_empty() {
                    found.push(vec![name]);
                }
            }
            continue;
        }
        let first = ident(rest);
        let second = rest[first.len()..]
            .strip_prefix("::")
            .map(ident)
            .filter(|s| !s.is_empty());
        found.push([Some(first), second].into_iter().flatten().collect());
    }
    for (at, _) in code.match_indices("super::") {
        if at > 0
            && code[..at].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        {
            continue;
        }
        let mut base: Vec<String> = module.to_vec();
        let mut rest = &code[at..];
        while let Some(after) = rest.strip_prefix("super::") {
            base.pop();
            rest = after;
        }
        let name = ident(rest);
        if !name.is_empty() && name.chars().next().is_some_and(|c| c.is_ascii_lowercase()) {
            base.push(name);
        }
        found.push(base);
    }
    found
}

#[test]
fn no_module_imports_one_above_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut unplaced = Vec::new();
    let mut upward = Vec::new();
    for file in &files {
        let module = module_of(file, &src);
        // The crate root and the binary sit above every layer.
        if matches!(module.as_slice(), [m] if m == "lib" || m == "main") {
            continue;
        }
        let Some((layer, home)) = layer_of(&module) else {
            unplaced.push(module.join("::"));
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        for target in imports(&code(&text), &module) {
            let Some((target_layer, target_home)) = layer_of(&target) else {
                continue;
            };
            if target_layer > layer {
                upward.push(format!(
                    "{} ({home}, layer {layer}) uses {} ({target_home}, layer {target_layer})",
                    file.strip_prefix(&src).unwrap().display(),
                    target.join("::"),
                ));
            }
        }
    }
    assert!(
        unplaced.is_empty(),
        "modules in no layer (add them to LAYERS): {unplaced:?}"
    );
    upward.sort();
    upward.dedup();
    assert!(upward.is_empty(), "upward imports:\n{}", upward.join("\n"));
}

#[test]
fn the_checker_finds_what_it_must() {
    let module: Vec<String> = vec!["writeback".into(), "queue".into()];
    let found = imports(
        &code(
            "use crate::runtime::Io;\nuse super::db::Database;\nuse crate::{app, http::Status};\n\
             // use crate::server;\nlet x = my_crate::server;\n#[cfg(test)]\nmod tests { use crate::load; }",
        ),
        &module,
    );
    let names: Vec<String> = found.iter().map(|p| p.join("::")).collect();
    assert_eq!(names, ["runtime::Io", "app", "http", "writeback::db"]);
    assert_eq!(layer_of(&module).unwrap().0, 1);
    assert_eq!(layer_of(&["writeback".into(), "db".into()]).unwrap().0, 3);
    assert_eq!(layer_of(&["nowhere".into()]), None);
}
