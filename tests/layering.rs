//! The dependency rule, checked on the source (unit tier): arrows point down only.
//!
//! `commands → runtime → {irc, agents} → pool → vm → {vmm, storage, net, state} → {config, root}`,
//! with the leaf utilities (reporting, downloads, archives, file helpers, the image builder) at
//! the bottom, and `plan`/`provision` beside the chain: they may use it, nothing in it may use
//! them. A module may use its own level and any level below; an upward or sideways-into-provision
//! import fails this test with the file and the line.

use std::path::{Path, PathBuf};

/// The chain, top to bottom; modules on one line are one level.
const LEVELS: &[&[&str]] = &[
    &["main", "cli", "commands"],
    &["runtime"],
    &["irc", "agents"],
    &["pool"],
    &["vm"],
    &["vmm", "storage", "net", "state"],
    &[
        "config", "values", "root", "report", "template", "fetch", "archive", "fsops", "image",
        "lib",
    ],
];

/// Beside the chain: they may import anything below `commands` except `runtime`.
const SIDE: &[&str] = &["plan", "provision"];

fn level(module: &str) -> Option<usize> {
    LEVELS.iter().position(|l| l.contains(&module))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read src") {
        let p = e.expect("dir entry").path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level modules a line names through `crate::`, including `use crate::{a, b::c}`.
fn crate_refs(line: &str) -> Vec<String> {
    let mut refs = Vec::new();
    let mut rest = line;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    refs.push(name);
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                refs.push(name);
            }
        }
    }
    refs
}

/// Where `used` may not be imported from `module`: the reason, or None when it is allowed.
fn violation(module: &str, used: &str) -> Option<String> {
    if module == used {
        return None;
    }
    let is_side = |m: &str| SIDE.contains(&m);
    match (is_side(module), is_side(used)) {
        (true, true) => None,
        (false, true) if level(module) == Some(0) => None,
        (false, true) => Some(format!(
            "`{module}` is in the runtime chain and must not import `{used}` (beside the chain)"
        )),
        (true, false) => match level(used) {
            Some(l) if l <= 1 => Some(format!("`{module}` must not import `{used}`")),
            _ => None,
        },
        (false, false) => match (level(module), level(used)) {
            (Some(a), Some(b)) if b < a => Some(format!(
                "`{module}` imports `{used}`, which sits above it in the chain: arrows point down only"
            )),
            (None, _) => Some(format!("module `{module}` has no place in tests/layering.rs")),
            (_, None) => Some(format!("module `{used}` has no place in tests/layering.rs")),
            _ => None,
        },
    }
}

#[test]
fn imports_point_down_the_chain() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut bad = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(&src).expect("under src");
        let first = rel.components().next().expect("a component");
        let module = Path::new(first.as_os_str())
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("utf-8 name")
            .to_string();
        let text = std::fs::read_to_string(f).expect("read source");
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for used in crate_refs(code) {
                if let Some(why) = violation(&module, &used) {
                    bad.push(format!("src/{}:{}: {why}", rel.display(), n + 1));
                }
            }
        }
    }
    assert!(
        bad.is_empty(),
        "imports against the dependency rule:\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_scanner_reads_grouped_and_plain_imports() {
    assert_eq!(crate_refs("use crate::{vm::Host, net};"), ["vm", "net"]);
    assert_eq!(crate_refs("let x = crate::state::Db::open(p);"), ["state"]);
    assert!(violation("vm", "runtime").is_some());
    assert!(violation("storage", "provision").is_some());
    assert!(violation("runtime", "vm").is_none());
    assert!(violation("provision", "runtime").is_some());
    assert!(violation("provision", "net").is_none());
}
