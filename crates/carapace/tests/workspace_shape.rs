//! The workspace's shape, checked mechanically (ARCHITECTURE.md, "Crates"):
//! - within a crate, no two sibling modules use each other, directly or around a longer loop;
//! - a source file over 600 lines says at its top why it is one file;
//! - no line is wider than rustfmt's `max_width` (which does not wrap comments or strings).
//!
//! A reference from module `a::x::…` to an item of `a::y::…` is an edge `x -> y` among the
//! children of `a`. References are the `crate::`, `super::` and `self::` paths of the code
//! (comments and string literals are left out, so intra-doc links do not count), including `use`
//! trees with braces; a module that uses its own ancestor or descendant adds no edge. Inline
//! `mod name { … }` blocks (test modules) are modules of their own, so their `super::` paths
//! resolve correctly.
//!
//! Over 600 lines on purpose: one job (the workspace's shape); the checks, the small Rust
//! scanner the module graph needs and the scanner's own tests stay together.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// A module path inside one crate: `[]` is the crate root.
type ModPath = Vec<String>;

/// Every crate of the workspace with the directory holding its root file.
fn crate_source_dirs() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut dirs = vec![root.join("agent/src"), root.join("tests/src")];
    let mut crates: Vec<PathBuf> = fs::read_dir(root.join("crates"))
        .expect("read crates/")
        .map(|e| e.expect("crates/ entry").path().join("src"))
        .filter(|p| p.is_dir())
        .collect();
    crates.sort();
    dirs.extend(crates);
    dirs
}

/// The crate roots under `src`: `lib.rs`, `main.rs` and every `bin/*.rs` are separate crates.
fn crate_roots(src: &Path) -> Vec<PathBuf> {
    let mut roots = Vec::new();
    for name in ["lib.rs", "main.rs"] {
        if src.join(name).is_file() {
            roots.push(src.join(name));
        }
    }
    if let Ok(entries) = fs::read_dir(src.join("bin")) {
        for e in entries.flatten() {
            if e.path().extension().is_some_and(|x| x == "rs") {
                roots.push(e.path());
            }
        }
    }
    roots
}

/// Blanks out comments, string and char literals, keeping line structure and braces of the code.
fn code_only(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    if b[i] == b'\n' {
                        out.push('\n');
                    }
                    i += 1;
                }
            }
            out.push(' ');
        } else if c == b'r'
            && (b.get(i + 1) == Some(&b'"') || b.get(i + 1) == Some(&b'#'))
            && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_'))
        {
            // raw string r"…", r#"…"#
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&b'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&b'"') {
                out.push(c as char);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= b.len() {
                    break;
                }
                if b[j] == b'"'
                    && b[j + 1..].iter().take(hashes).filter(|&&h| h == b'#').count() == hashes
                {
                    j += 1 + hashes;
                    break;
                }
                if b[j] == b'\n' {
                    out.push('\n');
                }
                j += 1;
            }
            out.push_str("\"\"");
            i = j;
        } else if c == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                if i < b.len() && b[i] == b'\n' {
                    out.push('\n');
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == b'\'' {
            // a char literal ('x', '\n', '\u{1F600}'); a lifetime has no closing quote nearby
            let end = if b.get(i + 1) == Some(&b'\\') {
                b[i + 2..].iter().take(10).position(|&x| x == b'\'').map(|p| i + 2 + p)
            } else if b.get(i + 2) == Some(&b'\'') {
                Some(i + 2)
            } else {
                None
            };
            match end {
                Some(e) => {
                    out.push_str("' '");
                    i = e + 1;
                }
                None => {
                    out.push('\'');
                    i += 1;
                }
            }
        } else {
            // keep multi-byte characters whole
            let ch = src[i..].chars().next().expect("char at boundary");
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Expands one `use` tree (`a::{b, c::{d, e}}`) into its paths, as segment lists.
fn expand_use(tree: &str) -> Vec<Vec<String>> {
    fn split_top(s: &str) -> Vec<&str> {
        let (mut depth, mut start, mut parts) = (0, 0, Vec::new());
        for (i, c) in s.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    parts.push(&s[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        parts.push(&s[start..]);
        parts
    }
    // one space at most between words, none around the tree's punctuation
    let words: Vec<&str> = tree.split_whitespace().collect();
    let mut tree = words.join(" ");
    for p in ["::", "{", "}", ","] {
        tree = tree.replace(&format!(" {p}"), p).replace(&format!("{p} "), p);
    }
    let mut out = Vec::new();
    for part in split_top(&tree) {
        if part.is_empty() {
            continue;
        }
        match part.find('{') {
            Some(open) => {
                let prefix: Vec<String> = part[..open]
                    .split("::")
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect();
                let inner = &part[open + 1..part.rfind('}').unwrap_or(part.len())];
                for tail in expand_use(inner) {
                    let mut p = prefix.clone();
                    p.extend(tail);
                    out.push(p);
                }
            }
            None => {
                let p = part.split(" as ").next().unwrap_or(part);
                out.push(p.split("::").filter(|s| !s.is_empty()).map(str::to_string).collect());
            }
        }
    }
    out
}

/// The `crate::`/`super::`/`self::` paths in a piece of code, outside `use` statements.
fn inline_paths(code: &str) -> Vec<Vec<String>> {
    let chars: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if !is_ident(chars[i]) || (i > 0 && (is_ident(chars[i - 1]) || chars[i - 1] == ':')) {
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && is_ident(chars[i]) {
            i += 1;
        }
        let first: String = chars[start..i].iter().collect();
        if !matches!(first.as_str(), "crate" | "super" | "self") {
            continue;
        }
        let mut segs = vec![first];
        while i + 2 < chars.len()
            && chars[i] == ':'
            && chars[i + 1] == ':'
            && is_ident(chars[i + 2])
        {
            i += 2;
            let s = i;
            while i < chars.len() && is_ident(chars[i]) {
                i += 1;
            }
            segs.push(chars[s..i].iter().collect());
        }
        if segs.len() > 1 {
            out.push(segs);
        }
    }
    out
}

/// Resolves a `crate::`/`super::`/`self::` path used in module `from` to an absolute module path
/// (the item's last segment included; only the module prefix matters for edges).
fn resolve(from: &ModPath, path: &[String]) -> Option<ModPath> {
    let mut base: ModPath;
    let mut rest = path;
    match path.first()?.as_str() {
        "crate" => {
            base = Vec::new();
            rest = &path[1..];
        }
        "self" => {
            base = from.clone();
            rest = &path[1..];
        }
        "super" => {
            base = from.clone();
            while rest.first().map(String::as_str) == Some("super") {
                base.pop()?;
                rest = &rest[1..];
            }
        }
        _ => return None,
    }
    base.extend(rest.iter().cloned());
    Some(base)
}

/// A crate's modules: each module path with its code (file modules and inline `mod x {}` blocks).
struct CrateModules {
    /// module path -> code of that module alone (inline child modules cut out)
    code: BTreeMap<ModPath, String>,
}

impl CrateModules {
    fn load(root_file: &Path) -> Self {
        let mut me = CrateModules { code: BTreeMap::new() };
        let dir = root_file.parent().expect("root has a dir").to_path_buf();
        me.load_file(root_file, Vec::new(), &dir);
        me
    }

    /// `dir` is where the children of module `path` live as files.
    fn load_file(&mut self, file: &Path, path: ModPath, dir: &Path) {
        let src =
            fs::read_to_string(file).unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
        let code = code_only(&src);
        self.load_code(&code, path, dir);
    }

    fn load_code(&mut self, code: &str, path: ModPath, dir: &Path) {
        let mut own = String::new();
        let chars: Vec<char> = code.chars().collect();
        let mut i = 0;
        while i < chars.len() {
            // `mod name;` or `mod name {`
            let at_word = i == 0 || !is_ident(chars[i - 1]);
            if at_word
                && chars[i..].starts_with(&['m', 'o', 'd'])
                && chars.get(i + 3).is_some_and(|c| c.is_whitespace())
            {
                let mut j = i + 3;
                while j < chars.len() && chars[j].is_whitespace() {
                    j += 1;
                }
                let s = j;
                while j < chars.len() && is_ident(chars[j]) {
                    j += 1;
                }
                let name: String = chars[s..j].iter().collect();
                while j < chars.len() && chars[j].is_whitespace() {
                    j += 1;
                }
                if !name.is_empty() && chars.get(j) == Some(&';') {
                    let mut child = path.clone();
                    child.push(name.clone());
                    let (file, child_dir) = if dir.join(format!("{name}.rs")).is_file() {
                        (dir.join(format!("{name}.rs")), dir.join(&name))
                    } else {
                        (dir.join(&name).join("mod.rs"), dir.join(&name))
                    };
                    // a `#[path]` module or a generated one is not followed
                    if file.is_file() {
                        self.load_file(&file, child, &child_dir);
                    }
                    i = j + 1;
                    continue;
                }
                if !name.is_empty() && chars.get(j) == Some(&'{') {
                    let mut depth = 0;
                    let mut k = j;
                    while k < chars.len() {
                        match chars[k] {
                            '{' => depth += 1,
                            '}' => {
                                depth -= 1;
                                if depth == 0 {
                                    break;
                                }
                            }
                            _ => {}
                        }
                        k += 1;
                    }
                    let inner: String = chars[j + 1..k.min(chars.len())].iter().collect();
                    let mut child = path.clone();
                    child.push(name.clone());
                    self.load_code(&inner, child, &dir.join(&name));
                    i = k + 1;
                    continue;
                }
            }
            own.push(chars[i]);
            i += 1;
        }
        self.code.insert(path, own);
    }

    /// Every path the module's code refers to, resolved.
    fn references(&self, module: &ModPath) -> Vec<ModPath> {
        let code = &self.code[module];
        let mut paths = Vec::new();
        let mut rest = code.as_str();
        let mut outside_use = String::new();
        while let Some(pos) = find_use(rest) {
            outside_use.push_str(&rest[..pos]);
            let after = &rest[pos + 3..];
            let end = after.find(';').unwrap_or(after.len());
            paths.extend(expand_use(&after[..end]));
            rest = &after[(end + 1).min(after.len())..];
        }
        outside_use.push_str(rest);
        paths.extend(inline_paths(&outside_use));
        paths.iter().filter_map(|p| resolve(module, p)).collect()
    }
}

/// The byte offset of the next `use` keyword (a whole word followed by whitespace).
fn find_use(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut from = 0;
    while let Some(p) = s[from..].find("use") {
        let at = from + p;
        let before_ok = at == 0 || !(b[at - 1].is_ascii_alphanumeric() || b[at - 1] == b'_');
        let after_ok = b.get(at + 3).is_some_and(|c| c.is_ascii_whitespace());
        if before_ok && after_ok {
            return Some(at);
        }
        from = at + 3;
    }
    None
}

/// The sibling edges of one crate: (parent, from-child, to-child).
fn sibling_edges(modules: &CrateModules) -> BTreeSet<(ModPath, String, String)> {
    let known: BTreeSet<&ModPath> = modules.code.keys().collect();
    let mut edges = BTreeSet::new();
    for module in modules.code.keys() {
        for target in modules.references(module) {
            // the longest prefix of the target that is a module
            let mut t = target.clone();
            while !t.is_empty() && !known.contains(&t) {
                t.pop();
            }
            let common = module.iter().zip(&t).take_while(|(a, b)| a == b).count();
            if common < module.len() && common < t.len() {
                edges.insert((
                    module[..common].to_vec(),
                    module[common].clone(),
                    t[common].clone(),
                ));
            }
        }
    }
    edges
}

/// The cycles among siblings, each as its members, found as strongly connected components.
fn cycles(edges: &BTreeSet<(ModPath, String, String)>) -> Vec<(ModPath, Vec<String>)> {
    let mut by_parent: BTreeMap<&ModPath, BTreeMap<&str, BTreeSet<&str>>> = BTreeMap::new();
    for (parent, a, b) in edges {
        by_parent.entry(parent).or_default().entry(a).or_default().insert(b);
    }
    let mut found = Vec::new();
    for (parent, graph) in by_parent {
        let nodes: BTreeSet<&str> = graph
            .iter()
            .flat_map(|(a, bs)| std::iter::once(*a).chain(bs.iter().copied()))
            .collect();
        let reach = |from: &str| {
            let mut seen = BTreeSet::new();
            let mut stack = vec![from];
            while let Some(n) = stack.pop() {
                for &m in graph.get(n).into_iter().flatten() {
                    if seen.insert(m) {
                        stack.push(m);
                    }
                }
            }
            seen
        };
        let reaches: BTreeMap<&str, BTreeSet<&str>> =
            nodes.iter().map(|&n| (n, reach(n))).collect();
        let mut done = BTreeSet::new();
        for &n in &nodes {
            if done.contains(n) || !reaches[n].contains(n) {
                continue;
            }
            let scc: Vec<String> = nodes
                .iter()
                .filter(|&&m| reaches[n].contains(m) && reaches[m].contains(n))
                .map(|m| m.to_string())
                .collect();
            done.extend(scc.iter().map(|s| nodes.get(s.as_str()).copied().expect("node")));
            found.push((parent.clone(), scc));
        }
    }
    found
}

#[test]
fn no_two_modules_of_a_crate_use_each_other() {
    let mut report = Vec::new();
    let mut crates_seen = 0;
    for src in crate_source_dirs() {
        for root in crate_roots(&src) {
            crates_seen += 1;
            let modules = CrateModules::load(&root);
            let edges = sibling_edges(&modules);
            eprintln!(
                "{}: {} modules, {} sibling uses",
                root.display(),
                modules.code.len(),
                edges.len()
            );
            if std::env::var_os("MODULE_GRAPH_DUMP").is_some() {
                for (p, a, b) in &edges {
                    eprintln!("  {}: {a} -> {b}", p.join("::"));
                }
            }
            for (parent, members) in cycles(&edges) {
                let at =
                    if parent.is_empty() { "crate root".to_string() } else { parent.join("::") };
                let uses: Vec<String> = edges
                    .iter()
                    .filter(|(p, a, b)| *p == parent && members.contains(a) && members.contains(b))
                    .map(|(_, a, b)| format!("{a} -> {b}"))
                    .collect();
                report.push(format!("{} ({at}): {}", root.display(), uses.join(", ")));
            }
        }
    }
    assert!(
        crates_seen >= 10,
        "found only {crates_seen} crates: is the workspace layout still the same?"
    );
    assert!(report.is_empty(), "module import cycles:\n{}", report.join("\n"));
}

/// Every `.rs` file under the workspace root (hidden directories and `target/` left out).
fn rust_files() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut out = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display())) {
            let p = e.expect("dir entry").path();
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.starts_with('.') || name == "target" {
                continue;
            }
            if p.is_dir() {
                stack.push(p);
            } else if name.ends_with(".rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The longest a file may be without saying why at its top, and how far down "the top" goes.
const LONG_FILE_LINES: usize = 600;
const TOP_LINES: usize = 40;
/// rustfmt.toml's `max_width`.
const MAX_WIDTH: usize = 100;

#[test]
fn long_files_say_why_and_no_line_is_too_wide() {
    let mut report = Vec::new();
    let files = rust_files();
    assert!(files.len() > 100, "found only {} .rs files", files.len());
    for f in files {
        let text = fs::read_to_string(&f).unwrap_or_else(|e| panic!("read {}: {e}", f.display()));
        let lines: Vec<&str> = text.lines().collect();
        let why = lines.iter().take(TOP_LINES).any(|l| l.contains("600 lines on purpose"));
        if lines.len() > LONG_FILE_LINES && !why {
            report.push(format!(
                "{}: {} lines and no reason at its top (\"Over 600 lines on purpose: …\")",
                f.display(),
                lines.len()
            ));
        }
        for (i, l) in lines.iter().enumerate() {
            if l.chars().count() > MAX_WIDTH {
                report.push(format!("{}:{}: wider than {MAX_WIDTH} columns", f.display(), i + 1));
            }
        }
    }
    assert!(report.is_empty(), "{}", report.join("\n"));
}

#[cfg(test)]
mod checker {
    use super::*;

    #[test]
    fn use_trees_expand() {
        let got = expand_use("crate::{a::B, c::{d, e::F as G}, self}");
        let want: Vec<Vec<String>> = vec![
            vec!["crate".into(), "a".into(), "B".into()],
            vec!["crate".into(), "c".into(), "d".into()],
            vec!["crate".into(), "c".into(), "e".into(), "F".into()],
            vec!["crate".into(), "self".into()],
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn comments_and_strings_do_not_count() {
        let code = code_only(concat!(
            "/// see [`crate::x::Y`]\nlet s = \"crate::z::W\"; /* crate::q */ let c = '{';\n",
            "crate::real::f();"
        ));
        assert_eq!(inline_paths(&code), vec![vec!["crate".to_string(), "real".into(), "f".into()]]);
        assert!(!code.contains('{'), "char literal brace kept: {code}");
    }

    #[test]
    fn a_loop_between_siblings_is_found_and_a_parent_use_is_not() {
        let mut m = CrateModules { code: BTreeMap::new() };
        let p = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<ModPath>();
        m.code.insert(p(&[]), "mod a; mod b; mod c;".into());
        m.code.insert(p(&["a"]), "use crate::b::X;".into());
        m.code.insert(p(&["b"]), "fn f() { super::c::g() }".into());
        m.code.insert(p(&["c"]), "use crate::{a::Y, Z};".into());
        let found = cycles(&sibling_edges(&m));
        assert_eq!(found, vec![(p(&[]), vec!["a".to_string(), "b".into(), "c".into()])]);
        m.code.insert(p(&["b"]), "fn f() { crate::Z::g() }".into());
        let edges = sibling_edges(&m);
        assert!(edges.contains(&(p(&[]), "c".into(), "a".into())), "{edges:?}");
        assert!(
            !edges.iter().any(|(_, a, _)| a == "b"),
            "a use of the parent is no edge: {edges:?}"
        );
        assert!(cycles(&edges).is_empty());
    }

    #[test]
    fn super_in_an_inline_module_resolves_to_its_file_module() {
        assert_eq!(
            resolve(&vec!["a".into(), "tests".into()], &["super".into(), "helper".into()]),
            Some(vec!["a".into(), "helper".into()])
        );
    }
}
