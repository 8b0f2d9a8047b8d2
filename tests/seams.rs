//! The architecture's rules, checked on the source tree (ARCHITECTURE.md §2):
//! only `engine/src/env/real*` touches time, threads, files or OS randomness; nothing in the
//! engine or the simulator iterates std hash maps; layers import only downward.

use std::fs;
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Code lines (not comments) of every `.rs` file under `dir`, with their location.
fn code_lines(dir: &str) -> Vec<(String, usize, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    let mut lines = Vec::new();
    for file in files {
        let rel = file
            .strip_prefix(env!("CARGO_MANIFEST_DIR"))
            .unwrap()
            .display()
            .to_string();
        let text = fs::read_to_string(&file).unwrap();
        for (i, line) in text.lines().enumerate() {
            let trimmed = line.trim_start();
            if trimmed.starts_with("//") {
                continue;
            }
            lines.push((rel.clone(), i + 1, line.to_string()));
        }
    }
    lines
}

fn violations(dir: &str, allowed: impl Fn(&str) -> bool, forbidden: &[&str]) -> Vec<String> {
    code_lines(dir)
        .into_iter()
        .filter(|(file, _, _)| !allowed(file))
        .filter(|(_, _, line)| {
            forbidden.iter().any(|f| line.contains(f))
                || (forbidden.contains(&"std::time") && grouped_real_world(line))
        })
        .map(|(file, n, line)| format!("{file}:{n}: {}", line.trim()))
        .collect()
}

const REAL_WORLD: &[&str] = &[
    "std::time",
    "std::thread",
    "std::fs",
    "Instant::now",
    "SystemTime",
    "thread_rng",
    "OsRng",
    "getrandom",
    "std::net",
    "std::process",
];

/// Also catch grouped imports such as `use std::{fs, time::Instant}`.
fn grouped_real_world(line: &str) -> bool {
    line.contains("std::{")
        && ["fs", "time", "thread", "net", "process"].iter().any(|m| {
            line.split(|c: char| !c.is_alphanumeric() && c != '_')
                .any(|w| w == *m)
        })
}

#[test]
fn only_env_real_touches_the_real_world() {
    let bad = violations(
        "engine/src",
        |f| f.starts_with("engine/src/env/real"),
        REAL_WORLD,
    );
    assert!(
        bad.is_empty(),
        "the engine reaches the real world outside env/real:\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_simulator_touches_no_real_world_but_its_exporter() {
    // Its unit tests may read the shipped scenario files.
    let bad = violations(
        "sim/src",
        |f| f == "sim/src/export.rs" || f.ends_with("_tests.rs"),
        REAL_WORLD,
    );
    assert!(
        bad.is_empty(),
        "the simulator reaches the real world:\n{}",
        bad.join("\n")
    );
}

#[test]
fn no_std_hash_maps_in_engine_or_sim() {
    let mut bad = violations("engine/src", |_| false, &["HashMap", "HashSet"]);
    bad.extend(violations("sim/src", |_| false, &["HashMap", "HashSet"]));
    assert!(
        bad.is_empty(),
        "std hash maps break deterministic iteration:\n{}",
        bad.join("\n")
    );
}

/// Engine layers from the top down; a layer may import only those after it in this list.
const LAYERS: &[(&str, &str)] = &[
    ("engine/src/qmp", "crate::qmp"),
    ("engine/src/engine.rs", "crate::engine"),
    ("engine/src/job", "crate::job"),
    ("engine/src/backend", "crate::backend"),
    ("engine/src/drivers", "crate::drivers"),
    ("engine/src/request", "crate::request"),
    ("engine/src/graph", "crate::graph"),
];

#[test]
fn layers_import_only_downward() {
    let mut bad = Vec::new();
    for (i, (dir, _)) in LAYERS.iter().enumerate() {
        let above: Vec<&str> = LAYERS[..i].iter().map(|(_, m)| *m).collect();
        bad.extend(violations(dir, |_| false, &above));
    }
    // The leaves import no engine layer at all.
    let all: Vec<&str> = LAYERS.iter().map(|(_, m)| *m).collect();
    for leaf in ["engine/src/util", "engine/src/io", "engine/src/env"] {
        bad.extend(violations(leaf, |_| false, &all));
    }
    // The NBD server sits below the Engine; its wire-format leaves (shared with the client
    // driver) import no layer at all.
    let nbd_above = ["crate::qmp", "crate::engine", "crate::job"];
    bad.extend(violations("engine/src/nbd", |_| false, &nbd_above));
    let nbd_leaf = |f: &str| {
        ["proto.rs", "wire.rs", "addr.rs", "options.rs"]
            .iter()
            .any(|l| f.ends_with(l))
    };
    let mut not_leaf: Vec<&str> = all.clone();
    not_leaf.extend([
        "crate::nbd::server",
        "crate::nbd::export",
        "crate::nbd::handshake",
    ]);
    bad.extend(violations("engine/src/nbd", |f| !nbd_leaf(f), &not_leaf));
    // Drivers never import one another.
    bad.extend(violations(
        "engine/src/drivers",
        |_| false,
        &["crate::drivers::"],
    ));
    assert!(
        bad.is_empty(),
        "upward or sideways imports:\n{}",
        bad.join("\n")
    );
}

/// engine/src/lib.rs's layer map (its ```text block) names every module the crate declares, so
/// a new module is placed in a layer when it is added.
#[test]
fn the_layer_map_names_every_engine_module() {
    let lib = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("engine/src/lib.rs"))
        .unwrap();
    let map: String = lib
        .split("```text")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("lib.rs has a ```text layer map")
        .to_string();
    let named = |m: &str| {
        map.split(|c: char| c.is_whitespace() || c == ',')
            .any(|w| w == format!("{m}/") || w == format!("{m}.rs"))
    };
    let missing: Vec<&str> = lib
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub mod "))
        .map(|m| m.trim_end_matches(';'))
        .filter(|m| !named(m))
        .collect();
    assert!(
        missing.is_empty(),
        "engine/src/lib.rs's layer map does not name: {missing:?}"
    );
}

#[test]
fn the_checker_itself_sees_violations() {
    // Guard against a rule that can never fire (a wrong directory, a wrong pattern).
    assert!(!code_lines("engine/src").is_empty());
    let found = violations("engine/src/env", |_| false, &["std::"]);
    assert!(!found.is_empty(), "env/real must be visible to the checker");
}

/// The workspace root and engine/ set `autotests = false` and group their integration tests
/// into `suite_*.rs` binaries: a test file that no suite includes would silently never run.
#[test]
fn every_test_file_is_in_a_suite() {
    for dir in ["tests", "engine/tests"] {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
        let mut included = String::new();
        let mut files = Vec::new();
        for entry in fs::read_dir(&dir).unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.ends_with(".rs") {
                continue;
            }
            if name.starts_with("suite_") {
                included.push_str(&fs::read_to_string(entry.path()).unwrap());
            } else {
                files.push(name);
            }
        }
        files.sort();
        let missing: Vec<_> = files
            .iter()
            .filter(|f| !included.contains(&format!("#[path = \"{f}\"]")))
            .collect();
        assert!(
            missing.is_empty(),
            "{}: test files no suite_*.rs includes (add them to one): {missing:?}",
            dir.display()
        );
    }
}
