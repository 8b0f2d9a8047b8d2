//! Replays every scenario in `scenarios/` (a new file is picked up without code changes):
//! twice at its own seed, comparing transcripts and trace hashes and snapshotting the transcript
//! as `golden/<stem>.snap`; then over a small seed range. A scenario that declares
//! `expect-failure CHECK` passes only when it fails exactly that check. Every failure prints the
//! seed and the command that reproduces it.

use std::path::{Path, PathBuf};

use sim::scenario::{self, RunOptions, RunOutcome, Scenario};

/// Seeds every scenario also runs with (besides its own).
const SEED_RANGE: std::ops::Range<u64> = 1..6;

fn scenario_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("scenarios directory")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "scn"))
        .collect();
    files.sort();
    files
}

fn load(path: &Path) -> Scenario {
    let text = std::fs::read_to_string(path).unwrap();
    scenario::parse(&path.display().to_string(), &text).unwrap_or_else(|e| panic!("{e}"))
}

fn check(path: &Path, sc: &Scenario, out: &RunOutcome) -> Result<(), String> {
    if out.passed(sc.expect_failure.as_deref()) {
        return Ok(());
    }
    let stem = path.file_name().unwrap().to_string_lossy();
    Err(format!(
        "{stem} seed {}: {:?} (declared: {:?})\n  reproduce: cargo run -- sim replay scenarios/{stem} --seed {} --trace\n{}",
        out.seed, out.failure, sc.expect_failure, out.seed, out.transcript
    ))
}

#[test]
fn every_scenario_replays_identically_and_matches_its_golden_transcript() {
    let files = scenario_files();
    assert!(files.len() >= 7, "the shipped scenarios are missing");
    let mut errors = Vec::new();
    for path in &files {
        let sc = load(path);
        let first = scenario::run(&sc, sc.seed, RunOptions::default());
        let second = scenario::run(&sc, sc.seed, RunOptions::default());
        if first.transcript != second.transcript || first.trace_hash != second.trace_hash {
            errors.push(format!(
                "{}: two runs of seed {} differ",
                path.display(),
                sc.seed
            ));
        }
        if let Err(e) = check(path, &sc, &first) {
            errors.push(e);
        }
        let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
        let mut settings = insta::Settings::clone_current();
        settings.set_snapshot_path("../../golden");
        settings.set_prepend_module_to_snapshot(false);
        settings.set_omit_expression(true);
        settings.set_input_file(path);
        settings.bind(|| insta::assert_snapshot!(stem, first.transcript));
    }
    assert!(errors.is_empty(), "{}", errors.join("\n\n"));
}

#[test]
fn every_scenario_passes_over_a_seed_range() {
    let mut errors = Vec::new();
    for path in scenario_files() {
        let sc = load(&path);
        for seed in SEED_RANGE {
            let out = scenario::run(&sc, seed, RunOptions::default());
            if let Err(e) = check(&path, &sc, &out) {
                errors.push(e);
            }
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n\n"));
}

#[test]
fn seeds_change_interleavings_but_reruns_do_not() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/raw-workload.scn");
    let sc = load(&path);
    let hashes: Vec<u64> = (0..4)
        .map(|s| scenario::run(&sc, s, RunOptions::default()).trace_hash)
        .collect();
    let again: Vec<u64> = (0..4)
        .map(|s| scenario::run(&sc, s, RunOptions::default()).trace_hash)
        .collect();
    assert_eq!(hashes, again);
    let mut distinct = hashes.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        4,
        "different seeds give different runs: {hashes:x?}"
    );
}

#[test]
fn a_failing_scenario_fails_and_an_unexpected_pass_is_a_failure() {
    let text = "# verify must catch data the model does not allow\nimage create d.img raw 1M\n\
        qmp {\"execute\": \"blockdev-add\", \"arguments\": {\"driver\": \"raw\", \"node-name\": \"n\", \"file\": {\"driver\": \"file\", \"filename\": \"d.img\"}}}\n\
        device add d0 node=n\nworkload start w device=d0 mix=write:1 bs=4k iodepth=2 count=20\nworkload stop w\nverify d0\n";
    let sc = scenario::parse("inline", text).unwrap();
    let out = scenario::run(&sc, 3, RunOptions::default());
    assert!(out.passed(None), "{:?}", out.failure);
    assert!(
        !out.passed(Some("verify")),
        "declared failure that did not happen is not a pass"
    );
    let broken = text.replace("qmp {", "qmp {{");
    let err = scenario::parse("inline", &broken).unwrap_err();
    assert_eq!(err.line, 3);
}
