//! Same seed and arguments give byte-identical output; another seed does not.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::Run;

fn snapshot(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                files.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    files
}

fn small(seed: u64) -> Run {
    Run::new(|c| {
        c.seed = seed;
        c.population = 30_000;
        c.weeks = 6;
        c.run_in_weeks = 10;
        c.providers = 2;
        c.fhir_share = 0.3;
        c.bad_record_rate = 0.01;
    })
}

#[test]
fn same_seed_same_bytes_other_seed_other_bytes() {
    let a = snapshot(small(7).out());
    let b = snapshot(small(7).out());
    assert!(
        a.len() > 10,
        "expected a full output tree, got {:?}",
        a.keys().collect::<Vec<_>>()
    );
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (name, bytes) in &a {
        assert!(
            bytes == &b[name],
            "{name} differs between two runs with the same seed"
        );
    }
    let c = snapshot(small(8).out());
    let differing = a
        .iter()
        .filter(|(name, bytes)| c.get(*name) != Some(*bytes))
        .count();
    assert!(
        differing > 5,
        "another seed should change the data, only {differing} files differ"
    );
}

#[test]
fn rerunning_into_the_same_directory_replaces_the_output() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = pathflow_simulate::SimConfig::new(dir.path().to_path_buf());
    cfg.population = 5_000;
    cfg.weeks = 2;
    cfg.run_in_weeks = 2;
    pathflow_simulate::run(&cfg, &|_| {}).unwrap();
    let first = snapshot(dir.path());
    pathflow_simulate::run(&cfg, &|_| {}).unwrap();
    assert_eq!(first, snapshot(dir.path()));

    let other = tempfile::tempdir().unwrap();
    std::fs::write(other.path().join("notes.txt"), "keep me").unwrap();
    cfg.out = other.path().to_path_buf();
    let err = pathflow_simulate::run(&cfg, &|_| {})
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("not empty") && err.contains("choose an empty"),
        "{err}"
    );
    assert!(other.path().join("notes.txt").exists());
}
