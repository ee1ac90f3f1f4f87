//! The docs against the code, without root: every table in README.md and docs/ that restates
//! code is the code's own (generated, compared whole) or checked entry by entry, and every link
//! between the docs lands. When one of these fails, the docs drifted: fix the docs (or the
//! generator), as the message says.
//!
//! Checked elsewhere: the metrics table (`cargo test -p lb-userspace --lib
//! docs_list_every_metric`), the status page's routes (`docs_list_every_route`), and the config,
//! lbctl and curl examples, run against a real lbd (`docs_examples`).
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use lb_common::{Counter, CounterKind};

/// README.md's limit, to keep it a front door: the rest belongs in docs/.
const README_MAX_LINES: usize = 200;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ is in the workspace").to_owned()
}

/// A file of the workspace, by its path from the root.
fn read(path: &str) -> String {
    let full = root().join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("cannot read {}: {e}", full.display()))
}

/// The text under the heading `heading` (e.g. "### Per packet"), up to the next heading of the
/// same or a higher level (lines in code blocks are not headings).
fn section<'a>(text: &'a str, file: &str, heading: &str) -> &'a str {
    let level = heading.chars().take_while(|&c| c == '#').count();
    let start =
        text.find(&format!("\n{heading}\n")).unwrap_or_else(|| panic!("{file} has no heading {heading:?}"))
            + 1;
    let mut offset = start + heading.len() + 1;
    let mut in_code = false;
    for line in text[offset..].split_inclusive('\n') {
        in_code ^= line.starts_with("```");
        let hashes = line.chars().take_while(|&c| c == '#').count();
        if !in_code && hashes > 0 && hashes <= level && line[hashes..].starts_with(' ') {
            break;
        }
        offset += line.len();
    }
    &text[start..offset]
}

/// The rows of the first Markdown table in `text`, as cells (header and separator left out).
fn table_rows(text: &str) -> Vec<Vec<String>> {
    let rows: Vec<Vec<String>> = text
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2)
        .map(|l| l.trim().trim_matches('|').split(" | ").map(|c| c.trim().to_owned()).collect())
        .collect();
    assert!(!rows.is_empty(), "no table in:\n{text}");
    rows
}

/// What `text` holds between backticks.
fn code_spans(text: &str) -> Vec<&str> {
    text.split('`').skip(1).step_by(2).collect()
}

#[test]
fn readme_is_a_front_door() {
    let lines = read("README.md").lines().count();
    assert!(
        lines <= README_MAX_LINES,
        "README.md has {lines} lines, more than {README_MAX_LINES}: it is the front door (what, a diagram, \
         the commands, a minimal config, links); move the detail into docs/"
    );
}

#[test]
fn limits_table_is_made_from_the_code() {
    let table = lb_userspace::limits_table::markdown_table();
    assert!(
        read("docs/data-plane.md").contains(&table),
        "docs/data-plane.md, \"Limits\", should hold this table (lb_userspace::limits_table::markdown_table()):\n{table}"
    );
    // The table names every key of [limits], so a new limit cannot go undocumented.
    let defaults = serde_json::to_value(lb_userspace::config::Limits::default()).expect("Limits serialize");
    let keys = defaults.as_object().expect("Limits is a table");
    for key in keys.keys() {
        assert!(
            table.contains(&format!("`limits.{key}`")),
            "limits.{key} is missing from lb_userspace::limits_table: add a row for it"
        );
    }
}

#[test]
fn api_table_is_made_from_the_routes() {
    let table = lb_userspace::api::markdown_table();
    assert!(
        read("docs/operations.md").contains(&table),
        "docs/operations.md, \"Control API\", should hold this table (lb_userspace::api::markdown_table()):\n{table}"
    );
    let mut seen = BTreeSet::new();
    for r in lb_userspace::api::ROUTES {
        assert!(
            seen.insert((r.method.as_str(), r.path)),
            "{} {} is in ROUTES twice",
            r.method.as_str(),
            r.path
        );
        assert!(!r.does.is_empty(), "{} {} says nothing about what it does", r.method.as_str(), r.path);
    }
}

/// The workspace's member crates, from the root Cargo.toml.
fn workspace_members() -> Vec<String> {
    let manifest = read("Cargo.toml");
    let line = manifest
        .lines()
        .find(|l| l.starts_with("members"))
        .expect("Cargo.toml lists its members on one `members = [...]` line");
    line.split('"').skip(1).step_by(2).map(str::to_owned).collect()
}

#[test]
fn layout_table_names_every_crate_and_module() {
    let doc = read("docs/layout.md");
    let named: BTreeSet<String> = table_rows(&doc)
        .iter()
        .flat_map(|row| code_spans(&row[0]).into_iter().map(str::to_owned).collect::<Vec<_>>())
        .collect();
    for path in &named {
        assert!(
            root().join(path).exists() && path.ends_with('/') == root().join(path).is_dir(),
            "docs/layout.md names `{path}`, which is not in the workspace (directories end with /): \
             fix or remove its row"
        );
    }
    let mut expected = Vec::new();
    for member in workspace_members() {
        expected.push(format!("{member}/"));
        let src = root().join(&member).join("src");
        let entries =
            std::fs::read_dir(&src).unwrap_or_else(|e| panic!("cannot list {}: {e}", src.display()));
        for entry in entries {
            let entry = entry.expect("a directory entry");
            let name = entry.file_name().to_string_lossy().into_owned();
            let dir = if entry.path().is_dir() { "/" } else { "" };
            expected.push(format!("{member}/src/{name}{dir}"));
        }
    }
    let missing: Vec<&String> = expected.iter().filter(|p| !named.contains(*p)).collect();
    assert!(
        missing.is_empty(),
        "docs/layout.md's table does not name {missing:?}: add a row for each (what it holds, in a few words)"
    );
}

#[test]
fn per_packet_tables_name_every_verdict() {
    let doc = read("docs/data-plane.md");
    let mut used = BTreeSet::new();
    for heading in ["### Per packet", "### Decap (backend hosts)"] {
        for row in table_rows(section(&doc, "docs/data-plane.md", heading)) {
            let counter = row.last().expect("a counter column");
            used.extend(code_spans(counter).into_iter().map(str::to_owned));
        }
    }
    let names: BTreeSet<&str> = Counter::ALL.iter().map(|c| c.name()).collect();
    for name in &used {
        assert!(
            names.contains(name.as_str()),
            "docs/data-plane.md's per-packet tables name the counter `{name}`, which lb_common::Counter does not have"
        );
    }
    for c in Counter::ALL.iter().filter(|c| c.kind() != CounterKind::Event) {
        assert!(
            used.contains(c.name()),
            "the verdict counter `{}` ({:?}) is in neither \"Per packet\" nor \"Decap\" of docs/data-plane.md: \
             add a row saying which packets get it",
            c.name(),
            c.kind()
        );
    }
}

/// Markdown files whose links are checked: README.md and every file in docs/.
fn markdown_files() -> Vec<String> {
    let mut files = vec!["README.md".to_owned()];
    for entry in std::fs::read_dir(root().join("docs")).expect("docs/") {
        let name = entry.expect("a directory entry").file_name().to_string_lossy().into_owned();
        if name.ends_with(".md") {
            files.push(format!("docs/{name}"));
        }
    }
    files.sort();
    files
}

/// The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as '-'.
fn anchor(heading: &str) -> String {
    heading
        .trim_start_matches('#')
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The lines of `text` outside code blocks.
fn prose(text: &str) -> Vec<&str> {
    let mut in_code = false;
    text.lines()
        .filter(|line| {
            let fence = line.starts_with("```");
            in_code ^= fence;
            !in_code && !fence
        })
        .collect()
}

/// The targets of the Markdown links `[text](target)` in `text`, outside code blocks.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in prose(text) {
        for (i, _) in line.match_indices("](") {
            let rest = &line[i + 2..];
            if let Some(end) = rest.find(')') {
                out.push(rest[..end].to_owned());
            }
        }
    }
    out
}

#[test]
fn links_between_the_docs_land() {
    for file in markdown_files() {
        let text = read(&file);
        let dir = Path::new(&file).parent().expect("a directory").to_owned();
        for target in links(&text) {
            if target.starts_with("http://") || target.starts_with("https://") {
                continue;
            }
            let (path, fragment) = target.split_once('#').unwrap_or((&target, ""));
            let linked = if path.is_empty() { PathBuf::from(&file) } else { dir.join(path) };
            let full = root().join(&linked);
            assert!(full.exists(), "{file} links to {target}, but {} does not exist", linked.display());
            if !fragment.is_empty() {
                let linked_text = std::fs::read_to_string(&full).expect("a linked Markdown file");
                let anchors: Vec<String> =
                    prose(&linked_text).into_iter().filter(|l| l.starts_with('#')).map(anchor).collect();
                assert!(
                    anchors.iter().any(|a| a == fragment),
                    "{file} links to {target}, but {} has no heading with the anchor #{fragment} (it has {anchors:?})",
                    linked.display()
                );
            }
        }
    }
}

#[test]
fn readme_links_every_doc() {
    let readme = read("README.md");
    let linked: BTreeSet<String> = links(&readme).into_iter().collect();
    for file in markdown_files().into_iter().filter(|f| f.starts_with("docs/")) {
        assert!(linked.contains(&file), "README.md's \"Where to read on\" does not link {file}");
    }
}
