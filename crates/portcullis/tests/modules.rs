//! The binary's modules import one way (ripgrep's `flags/` as the model):
//! no module of `src/` reaches itself through `crate::` paths, directly or
//! around a loop. Read from the source text: every `crate::x` outside
//! comments and test modules is an edge to the top-level module `x`
//! (`src/path/inline.rs` counts as `path`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("reading src") {
        let p = entry.expect("reading src").path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// `src/path/inline.rs` -> `path`; `src/main.rs` (the crate root) -> None.
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (name != "main").then(|| name.to_owned())
}

/// The code outside `#[cfg(test)] mod ... { ... }` blocks and comments,
/// as one line (a `use` may span several).
fn code(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let l = lines[i].trim();
        let next = lines.get(i + 1).map_or("", |n| n.trim());
        if l == "#[cfg(test)]" && next.starts_with("mod ") && next.ends_with('{') {
            // Test modules are at the end of a file, by this crate's habit.
            break;
        }
        if !l.starts_with("//") {
            out.push(lines[i]);
        }
        i += 1;
    }
    out.join(" ")
}

/// The top-level modules a line names after `crate::`.
fn targets(line: &str) -> Vec<String> {
    let ident = |s: &str| -> String {
        s.trim()
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `crate::{a, b::c, d::{e, f}}`: the first segment of each item.
            let mut depth = 0;
            let mut item_start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    _ if item_start && !c.is_whitespace() => {
                        out.push(ident(&group[i..]));
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            out.push(ident(rest));
        }
    }
    out.retain(|m| !m.is_empty() && m != "self");
    out
}

fn graph() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut g = Graph::new();
    for f in files {
        let Some(module) = module_of(&src, &f) else {
            continue;
        };
        let text = std::fs::read_to_string(&f).expect("reading a module");
        let edges = g.entry(module.clone()).or_default();
        edges.extend(targets(&code(&text)).into_iter().filter(|t| *t != module));
    }
    g
}

/// A loop in `g`, if any, as the modules along it.
fn find_cycle(g: &Graph) -> Option<Vec<String>> {
    fn visit<'a>(
        g: &'a Graph,
        m: &'a str,
        stack: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<Vec<String>> {
        if let Some(at) = stack.iter().position(|s| *s == m) {
            let mut cycle: Vec<String> = stack[at..].iter().map(|s| s.to_string()).collect();
            cycle.push(m.to_owned());
            return Some(cycle);
        }
        if !done.insert(m) {
            return None;
        }
        stack.push(m);
        for next in g.get(m).into_iter().flatten() {
            if let Some(c) = visit(g, next, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        None
    }
    let mut done = BTreeSet::new();
    g.keys()
        .find_map(|m| visit(g, m, &mut Vec::new(), &mut done))
}

#[test]
fn the_binarys_modules_import_one_way() {
    let g = graph();
    if let Some(cycle) = find_cycle(&g) {
        panic!(
            "import cycle in crates/portcullis/src: {}\n{g:#?}",
            cycle.join(" -> ")
        );
    }
}

#[test]
fn the_graph_is_read_as_written() {
    let g = graph();
    let edges = |m: &str| g.get(m).cloned().unwrap_or_default();
    // Known edges: the reader sees both `use` forms and inline paths.
    assert!(edges("daemon").contains("plan"), "{g:#?}");
    assert!(edges("daemon").contains("packet_loop"), "{g:#?}");
    assert!(edges("path").contains("clock"), "{g:#?}");
    // The seams: packet paths and the kernel thread know nothing of the
    // daemon, and flags nothing of what runs them.
    for low in ["path", "kernel_thread", "cli", "plan", "clock", "control"] {
        assert!(!edges(low).contains("daemon"), "{low}: {g:#?}");
        assert!(!edges(low).contains("packet_loop"), "{low}: {g:#?}");
    }
    assert!(!edges("path").contains("kernel_thread"), "{g:#?}");

    assert_eq!(
        targets("use crate::{config, daemon::{a, b}, self};"),
        ["config", "daemon"]
    );
    assert_eq!(
        targets("let x = crate::lockout::f(crate::clock::now());"),
        ["lockout", "clock"]
    );
    let cyclic: Graph = [("a", "b"), ("b", "c"), ("c", "a")]
        .into_iter()
        .map(|(m, t)| (m.to_owned(), BTreeSet::from([t.to_owned()])))
        .collect();
    assert_eq!(find_cycle(&cyclic).unwrap(), ["a", "b", "c", "a"]);
}
