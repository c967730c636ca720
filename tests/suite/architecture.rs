//! The module graph stays one way, as ARCHITECTURE.md states: a top-level
//! module may name (`crate::x`) only modules after it in `ORDER`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// From the edge down; the same list as ARCHITECTURE.md's codemap.
const ORDER: &[&str] = &[
    "app",
    "cli",
    "demo",
    "serve",
    "config",
    "inbox",
    "pipeline",
    "export",
    "report_html",
    "report",
    "status",
    "input",
    "lock",
    "sandbox",
    "store",
    "provider",
    "timeline",
    "money",
    "cells",
    "files",
    "exit",
    "alloc",
];

fn sources(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            sources(&entry.unwrap().path(), out);
        }
    } else if path.is_file() && path.extension().is_some_and(|e| e == "rs") {
        out.push(path.to_path_buf());
    }
}

/// The top-level modules named right after a `crate::`: one name, or each
/// item of a group (`crate::{a, b::c, d::{e}}` names a, b and d).
fn named_after(rest: &str) -> Vec<String> {
    let word = |s: &str| -> String {
        s.trim_start()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let Some(group) = rest.strip_prefix('{') else {
        return vec![word(rest)];
    };
    // The group's items at depth one, up to its closing brace.
    let (mut depth, mut items, mut start) = (0usize, Vec::new(), 0usize);
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                items.push(&group[start..i]);
                break;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&group[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items
        .into_iter()
        .map(word)
        .filter(|w| !w.is_empty() && w != "self")
        .collect()
}

#[test]
fn grouped_imports_are_read_name_by_name() {
    assert_eq!(named_after("store::Store;"), vec!["store"]);
    assert_eq!(
        named_after("{store::Store, pipeline::{self, Mode},\n    exit::Exit};"),
        vec!["store", "pipeline", "exit"]
    );
}

/// The top-level modules a module's files name with `crate::`.
fn uses(module: &str) -> BTreeSet<String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src.join(format!("{module}.rs")), &mut files);
    sources(&src.join(module), &mut files);
    assert!(!files.is_empty(), "no sources for module {module}");
    let mut used = BTreeSet::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for (i, _) in text.match_indices("crate::") {
            for name in named_after(&text[i + 7..]) {
                if name != module {
                    used.insert(name);
                }
            }
        }
    }
    used
}

#[test]
fn every_top_level_module_is_in_the_order_and_uses_only_modules_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut modules: Vec<String> = std::fs::read_dir(&src)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter_map(|p| {
            let name = p.file_stem()?.to_str()?.to_string();
            (name != "lib" && name != "main").then_some(name)
        })
        .collect();
    modules.sort();
    modules.dedup();
    for module in &modules {
        assert!(
            ORDER.contains(&module.as_str()),
            "module {module} is missing from the order (ARCHITECTURE.md and this test)"
        );
    }
    let mut against = Vec::new();
    for (rank, module) in ORDER.iter().enumerate() {
        for used in uses(module) {
            if let Some(used_rank) = ORDER.iter().position(|m| *m == used) {
                if used_rank <= rank {
                    against.push(format!("{module} uses {used}"));
                }
            }
        }
    }
    assert!(
        against.is_empty(),
        "imports against the one-way order: {against:?}"
    );
}
