//! Workspace hygiene as tests: rules the project holds itself to, checked on every run.

use std::fs;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() && path.file_name().is_some_and(|n| n != "target") {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn member_manifests() -> Vec<PathBuf> {
    let mut manifests: Vec<PathBuf> = fs::read_dir(root().join("crates"))
        .unwrap()
        .flatten()
        .map(|e| e.path().join("Cargo.toml"))
        .filter(|p| p.exists())
        .collect();
    manifests.push(root().join("xtask/Cargo.toml"));
    manifests.push(root().join("tests/Cargo.toml"));
    manifests
}

#[test]
fn every_member_opts_into_workspace_lints_and_declares_dependencies_once() {
    for manifest in member_manifests() {
        let text = fs::read_to_string(&manifest).unwrap();
        assert!(
            text.contains("[lints]\nworkspace = true"),
            "{} lacks `[lints] workspace = true`",
            manifest.display()
        );
        let mut section = String::new();
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with('[') {
                section = line.to_owned();
                continue;
            }
            if section.ends_with("dependencies]") && !line.is_empty() && !line.starts_with('#') {
                assert!(
                    line.contains(".workspace = true") || line.contains("workspace = true"),
                    "{}: `{line}` must come from [workspace.dependencies]",
                    manifest.display()
                );
            }
        }
    }
}

#[test]
fn folder_name_is_crate_name() {
    for manifest in member_manifests() {
        let dir = manifest.parent().unwrap().file_name().unwrap().to_string_lossy().into_owned();
        let text = fs::read_to_string(&manifest).unwrap();
        let name = text.lines().find_map(|l| l.strip_prefix("name = ")).unwrap().trim_matches('"').to_owned();
        let expected = if dir == "tests" { "byova-tests".to_owned() } else { dir };
        assert_eq!(name, expected, "{}", manifest.display());
    }
}

#[test]
fn library_crates_forbid_unsafe_and_document_everything() {
    for entry in fs::read_dir(root().join("crates")).unwrap().flatten() {
        let lib = entry.path().join("src/lib.rs");
        if let Ok(text) = fs::read_to_string(&lib) {
            assert!(text.contains("#![forbid(unsafe_code)]"), "{} must forbid unsafe code", lib.display());
            assert!(text.contains("#![warn(missing_docs)]"), "{} must warn on missing docs", lib.display());
            assert!(text.starts_with("//!"), "{} must open with a crate doc comment", lib.display());
        }
    }
}

#[test]
fn no_stubs_ignored_tests_or_debug_macros() {
    let banned = [
        concat!("todo", "!("),
        concat!("unimplemented", "!("),
        concat!("#[", "ignore"),
        concat!("dbg", "!("),
    ];
    let mut files = Vec::new();
    for dir in ["crates", "xtask", "tests"] {
        rust_files(&root().join(dir), &mut files);
    }
    assert!(files.len() > 10, "the walk found too few files: {files:?}");
    for file in files {
        let text = fs::read_to_string(&file).unwrap();
        for b in banned {
            assert!(!text.contains(b), "{} contains `{b}`", file.display());
        }
    }
}

/// byova-core does no I/O: no printing either (a forgotten debugging line in the engine
/// would write to every user's stderr). It reports through `tracing`; its test files (which
/// print their figures) are exempt.
#[test]
fn byova_core_prints_nothing() {
    let mut files = Vec::new();
    rust_files(&root().join("crates/byova-core/src"), &mut files);
    assert!(files.len() > 10, "the walk found too few files: {files:?}");
    for file in files.into_iter().filter(|f| !f.to_string_lossy().ends_with("_tests.rs")) {
        let text = fs::read_to_string(&file).unwrap();
        for banned in [
            concat!("eprint", "ln!("),
            concat!("print", "ln!("),
            concat!("eprint", "!("),
            concat!("print", "!("),
        ] {
            let code_lines = text.lines().filter(|l| !l.trim_start().starts_with("//"));
            assert!(
                !code_lines.clone().any(|l| l.contains(banned)),
                "{} contains `{banned}`: byova-core reports through tracing",
                file.display()
            );
        }
    }
}

#[test]
fn ci_runs_exactly_the_readme_test_command() {
    let ci = fs::read_to_string(root().join(".ci/run")).unwrap();
    let command =
        ci.lines().rfind(|l| !l.trim().is_empty() && !l.starts_with('#')).unwrap().trim().to_owned();
    let readme = fs::read_to_string(root().join("README.md")).unwrap();
    let setup = readme.split("## Set up").nth(1).unwrap().split("```").nth(1).unwrap();
    assert!(setup.lines().any(|l| l.trim() == command), "README's set-up block does not show `{command}`");
}

/// The files under `dir`'s `src/`, relative to it.
fn sources_of(dir: &Path) -> Vec<String> {
    let src = dir.join("src");
    let mut files = Vec::new();
    if src.is_dir() {
        rust_files(&src, &mut files);
    }
    files.iter().map(|f| f.strip_prefix(&src).unwrap().to_string_lossy().replace('\\', "/")).collect()
}

#[test]
fn every_source_file_is_in_the_code_map() {
    let architecture = fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap();
    let map = architecture.split("## Code map").nth(1).unwrap().split("```").nth(1).unwrap();
    // Each section starts with an unindented line naming the crate's folder.
    let mut sections: Vec<(String, Vec<String>)> = Vec::new();
    for line in map.lines() {
        if !line.starts_with(' ') && !line.trim().is_empty() {
            let folder = line.split_whitespace().next().unwrap().trim_end_matches('/').to_owned();
            sections.push((folder, Vec::new()));
        } else if let (Some(section), Some(first)) = (sections.last_mut(), line.split_whitespace().next()) {
            section.1.push(first.to_owned());
        }
    }
    let mut folders: Vec<PathBuf> =
        fs::read_dir(root().join("crates")).unwrap().flatten().map(|e| e.path()).collect();
    folders.push(root().join("xtask"));
    folders.push(root().join("tests"));
    let mut missing = Vec::new();
    for folder in folders {
        let name = folder.strip_prefix(root()).unwrap().to_string_lossy().replace('\\', "/");
        let listed = sections.iter().find(|(f, _)| *f == name).map(|(_, files)| files.clone());
        for file in sources_of(&folder) {
            let entry_point = file == "lib.rs" || file == "main.rs";
            match &listed {
                None => missing.push(format!("{name}/ (the crate itself)")),
                Some(files) if !entry_point && !files.contains(&file) => {
                    missing.push(format!("{name}/src/{file}"))
                }
                _ => {}
            }
        }
    }
    missing.dedup();
    assert!(missing.is_empty(), "ARCHITECTURE.md's code map does not list: {missing:#?}");
}

/// Every file ARCHITECTURE.md names is in this repository: the code map's entries exist,
/// and a path in backticks in the prose resolves from the root or as the tail of a file here
/// (`engine/flight.rs`). A reader of the published crates has nothing else.
#[test]
fn architecture_names_only_files_in_the_repository() {
    let architecture = fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap();
    let mut everything = Vec::new();
    all_files(&root(), &mut everything);
    let everything: Vec<String> = everything
        .iter()
        .map(|f| f.strip_prefix(root()).unwrap().to_string_lossy().replace('\\', "/"))
        .collect();
    let mut missing = Vec::new();

    let map = architecture.split("## Code map").nth(1).unwrap().split("```").nth(1).unwrap();
    let mut folder = String::new();
    for line in map.lines().skip(1) {
        if !line.starts_with(' ') && !line.trim().is_empty() {
            folder = line.split_whitespace().next().unwrap().trim_end_matches('/').to_owned();
        } else if line.starts_with("  ") && !line.starts_with("   ") {
            let entry = line.split_whitespace().next().unwrap();
            let candidates = [format!("{folder}/src/{entry}"), format!("{folder}/{entry}")];
            let found = candidates.iter().any(|c| match c.split_once("*") {
                // A glob: its folder exists and holds a file with that ending.
                Some((prefix, suffix)) => {
                    everything.iter().any(|f| f.starts_with(prefix) && f.ends_with(suffix))
                }
                None => everything.iter().any(|f| f == c || f.starts_with(&format!("{c}/"))),
            });
            if !found {
                missing.push(format!("code map: {folder}: {entry}"));
            }
        }
    }

    for (i, quoted) in architecture.split('`').enumerate() {
        let pathlike = i % 2 == 1
            && !quoted.contains([' ', ':', '$', '<'])
            && !quoted.starts_with('/')
            && (quoted.contains('/') || [".rs", ".md", ".toml", ".sh"].iter().any(|e| quoted.ends_with(e)));
        if !pathlike {
            continue;
        }
        let path = quoted.trim_end_matches('/');
        // Against the repository's files (`all_files`: no build output, no `.git`), not the
        // disk: `target/` exists on a developer's machine and not on a clean checkout.
        let here = everything.iter().any(|f| {
            f == path
                || f.starts_with(&format!("{path}/"))
                || f.ends_with(&format!("/{path}"))
                || f.contains(&format!("/{path}/"))
        });
        if quoted.starts_with("..") || quoted.starts_with("shared/") || !here {
            missing.push(format!("prose: `{quoted}`"));
        }
    }
    assert!(missing.is_empty(), "ARCHITECTURE.md names files that are not in the repository: {missing:#?}");
}

/// Every file under `dir` but build output and version control.
fn all_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        let skip = path.file_name().is_some_and(|n| n == "target" || n == ".git");
        if path.is_dir() && !skip {
            all_files(&path, out);
        } else if !skip {
            out.push(path);
        }
    }
}

#[test]
fn public_docs_name_the_python_sdk_not_the_seed() {
    let jargon = ["the seed", "seed's", "(seed:", "seed method", "seed-only"];
    let mut texts = vec![(root().join("README.md"), fs::read_to_string(root().join("README.md")).unwrap())];
    let mut files = Vec::new();
    rust_files(&root().join("crates"), &mut files);
    for file in files {
        let docs: String = fs::read_to_string(&file)
            .unwrap()
            .lines()
            .filter(|l| l.trim_start().starts_with("///") || l.trim_start().starts_with("//!"))
            .map(|l| format!("{l}\n"))
            .collect();
        texts.push((file, docs));
    }
    for (file, text) in texts {
        let lower = text.to_lowercase();
        for word in jargon {
            assert!(
                !lower.contains(word),
                "{} says `{word}`: call the original the Python SDK `webex_byova`",
                file.display()
            );
        }
    }
}
