//! The workspace's crate graph, read from the members' `Cargo.toml` (the normal dependencies
//! `cargo tree --workspace --depth 1 -e normal` lists, restricted to the workspace's crates and
//! burn), and the same graph as docs/design.md draws it, between `<!-- crate-graph -->` and
//! `<!-- /crate-graph -->`.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};

const BEGIN: &str = "<!-- crate-graph -->";
const END: &str = "<!-- /crate-graph -->";

/// Crate → the workspace crates (and `burn`) it depends on, sorted.
pub fn from_manifests(root: &Path) -> Result<BTreeMap<String, Vec<String>>> {
    let read = |p: &Path| -> Result<toml::Table> {
        let text =
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        text.parse().with_context(|| format!("parsing {}", p.display()))
    };
    let workspace = read(&root.join("Cargo.toml"))?;
    let members = workspace
        .get("workspace")
        .and_then(|w| w.get("members"))
        .and_then(|m| m.as_array())
        .context("Cargo.toml: [workspace] members")?;
    let mut manifests = Vec::new();
    for m in members {
        let dir = m.as_str().context("Cargo.toml: a workspace member that is not a string")?;
        let manifest = read(&root.join(dir).join("Cargo.toml"))?;
        let name = manifest
            .get("package")
            .and_then(|p| p.get("name"))
            .and_then(|n| n.as_str())
            .with_context(|| format!("{dir}/Cargo.toml: package.name"))?
            .to_string();
        manifests.push((name, manifest));
    }
    let names: Vec<String> = manifests.iter().map(|(n, _)| n.clone()).collect();
    let mut graph = BTreeMap::new();
    for (name, manifest) in manifests {
        let deps =
            manifest.get("dependencies").and_then(|d| d.as_table()).cloned().unwrap_or_default();
        let mut used: Vec<String> =
            deps.keys().filter(|k| names.contains(k) || k.as_str() == "burn").cloned().collect();
        used.sort();
        graph.insert(name, used);
    }
    Ok(graph)
}

/// One line per crate: `crate: dep, dep` (`crate: —` without any).
pub fn render(graph: &BTreeMap<String, Vec<String>>) -> String {
    graph
        .iter()
        .map(|(c, deps)| {
            format!("{c}: {}\n", if deps.is_empty() { "—".to_string() } else { deps.join(", ") })
        })
        .collect()
}

/// The lines between the markers of docs/design.md, without the code fence.
pub fn from_design(text: &str) -> Result<String> {
    let start =
        text.find(BEGIN).with_context(|| format!("docs/design.md has no `{BEGIN}` marker"))?
            + BEGIN.len();
    let end =
        text[start..].find(END).with_context(|| format!("docs/design.md has no `{END}` marker"))?
            + start;
    Ok(text[start..end]
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("```"))
        .map(|l| format!("{}\n", l.trim_end()))
        .collect())
}

pub fn run(root: &Path, check: bool) -> Result<bool> {
    let graph = render(&from_manifests(root)?);
    if !check {
        print!("{graph}");
        return Ok(true);
    }
    let design_path = root.join("docs/design.md");
    let design = from_design(
        &std::fs::read_to_string(&design_path)
            .with_context(|| format!("reading {}", design_path.display()))?,
    )?;
    if design != graph {
        bail!(
            "docs/design.md's crate graph differs from the manifests.\n--- docs/design.md\n{design}--- Cargo.toml files\n{graph}"
        );
    }
    println!("crate graph: docs/design.md matches the manifests");
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn design_md_draws_the_crate_graph_of_the_manifests() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        run(root, true).unwrap();
    }

    #[test]
    fn the_picture_is_read_between_the_markers() {
        let text = format!("intro\n{BEGIN}\n```text\na: b, c\nb: —\n```\n{END}\nafter");
        assert_eq!(from_design(&text).unwrap(), "a: b, c\nb: —\n");
        assert!(from_design("no markers").is_err());
    }
}
