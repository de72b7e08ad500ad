//! The layering rules of p2p-core (issue 11), checked on the source text so that a
//! careless `use` fails CI instead of quietly bringing a cycle back:
//!
//! - `wire` depends on nothing in `error` (`error` aggregates the phases' errors and may
//!   import `wire`, not the other way round);
//! - `chunk` (the chunk model: `ChunkSet`, `Layout`, `ResumeInfo`) depends on neither
//!   `fs` nor `transfer`;
//! - nothing under `fs` depends on `transfer` (`transfer` drives `fs`).
//!
//! A path counts when it names the module from the crate root: `crate::m`,
//! `super::…::m`, or `m` inside a `crate::{…}` / `super::{…}` group. Comments count too:
//! an intra-doc link is a dependency of the docs, and a rule that admits "just a comment"
//! is soon broken by one.

use std::fs;
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file at `path` (a file, or a folder walked recursively), sorted. A path
/// that does not exist is an error: a rule about a module that is gone would pass
/// vacuously.
fn rust_files(path: &Path) -> Vec<PathBuf> {
    assert!(
        path.exists(),
        "{} does not exist; update tests/layering.rs if the module moved",
        path.display()
    );
    if path.is_file() {
        return vec![path.to_path_buf()];
    }
    let mut out = Vec::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Whether `text` ends with a path that resolves from the crate root, minus its final
/// `::`: `crate`, `super`, `super::super`, `crate::super`…
fn ends_with_root(text: &str) -> bool {
    let mut t = text.trim_end();
    while let Some(rest) = t.strip_suffix("::super") {
        t = rest.trim_end();
    }
    ["crate", "super"].iter().any(|kw| {
        t.strip_suffix(kw)
            .is_some_and(|before| !before.chars().next_back().is_some_and(is_ident))
    })
}

/// 1-based line of byte offset `at`.
fn line_of(text: &str, at: usize) -> usize {
    text[..at].matches('\n').count() + 1
}

/// Lines of `text` that name module `module` from the crate root, with why.
fn mentions(text: &str, module: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();

    // `crate::module`, `super::super::module`, …
    let needle = format!("::{module}");
    for (at, _) in text.match_indices(&needle) {
        let after = text[at + needle.len()..].chars().next();
        if after.is_some_and(is_ident) {
            continue; // `crate::transfers`, not `crate::transfer`
        }
        if ends_with_root(&text[..at]) {
            found.push((line_of(text, at), format!("crate::{module}")));
        }
    }

    // `crate::{fs, transfer::ChunkSet}`: a top-level item of a group from the root.
    for (at, _) in text.match_indices("::{") {
        if !ends_with_root(&text[..at]) {
            continue;
        }
        let body = &text[at + 3..];
        let mut depth = 0usize;
        let mut item_start = 0;
        let mut items = Vec::new();
        for (i, c) in body.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => {
                    items.push(&body[item_start..i]);
                    break;
                }
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    items.push(&body[item_start..i]);
                    item_start = i + 1;
                }
                _ => {}
            }
        }
        for item in items {
            let first = item
                .trim_start()
                .split(|c: char| !is_ident(c))
                .next()
                .unwrap_or("");
            if first == module {
                found.push((
                    line_of(text, at),
                    format!("`{module}` in a crate::{{…}} group"),
                ));
            }
        }
    }

    found.sort();
    found.dedup();
    found
}

/// Fails, naming every offending file and line, if a file under any of `paths` names
/// module `forbidden`.
fn assert_no_dependency(paths: &[&str], forbidden: &str, rule: &str) {
    let src = src();
    let mut violations = Vec::new();
    for path in paths {
        for file in rust_files(&src.join(path)) {
            let text = fs::read_to_string(&file).unwrap();
            let shown = file.strip_prefix(src.parent().unwrap()).unwrap_or(&file);
            for (line, what) in mentions(&text, forbidden) {
                let source = text.lines().nth(line - 1).unwrap_or("").trim();
                violations.push(format!(
                    "  {}:{line}: {what}\n      {source}",
                    shown.display()
                ));
            }
        }
    }
    assert!(
        violations.is_empty(),
        "layering rule broken: {rule}\n{}\n\
         (see the module table in p2p-core/src/lib.rs and docs/architecture.md)",
        violations.join("\n")
    );
}

#[test]
fn wire_does_not_depend_on_error() {
    assert_no_dependency(
        &["wire.rs"],
        "error",
        "`wire` must not import `crate::error` (WireError lives in wire; error re-exports it)",
    );
}

#[test]
fn chunk_depends_on_neither_fs_nor_transfer() {
    assert_no_dependency(
        &["chunk"],
        "fs",
        "`chunk` must not import `crate::fs` (fs builds on the chunk model)",
    );
    assert_no_dependency(
        &["chunk"],
        "transfer",
        "`chunk` must not import `crate::transfer` (transfer re-exports the chunk model)",
    );
}

#[test]
fn fs_does_not_depend_on_transfer() {
    assert_no_dependency(
        &["fs"],
        "transfer",
        "nothing under `fs` may import `crate::transfer` (use `crate::chunk`)",
    );
}

#[test]
fn the_checker_sees_what_it_should() {
    let hits = |text: &str, m: &str| mentions(text, m).len();
    assert_eq!(hits("use crate::transfer::ChunkSet;", "transfer"), 1);
    assert_eq!(
        hits("let l = crate::transfer::Layout::new();", "transfer"),
        1
    );
    assert_eq!(hits("use super::super::transfer::X;", "transfer"), 1);
    assert_eq!(hits("use crate::{fs, transfer::{A, B}};", "transfer"), 1);
    assert_eq!(
        hits("use crate::{\n    chunk::A,\n    transfer,\n};", "transfer"),
        1
    );
    assert_eq!(hits("use crate::{fs::{transfer_x}, wire};", "transfer"), 0);
    assert_eq!(hits("use crate::transfers::X;", "transfer"), 0);
    assert_eq!(hits("use std::fs::File;", "fs"), 0);
    assert_eq!(hits("use cap_std::fs::Dir;", "fs"), 0);
    assert_eq!(hits("use std::{fs, io};", "fs"), 0);
    assert_eq!(hits("use crate::{fs, io};", "fs"), 1);
    assert_eq!(hits("use crate::error_code::X;", "error"), 0);
    assert_eq!(hits("use crate::error::WireError;", "error"), 1);
    assert_eq!(
        hits("fn f() -> super::error::Result<()> { todo!() }", "error"),
        1
    );
    assert_eq!(hits("// see `transfer::disk`", "transfer"), 0);
}
