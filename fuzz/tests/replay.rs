//! Stable replay of the fuzz targets without libFuzzer: every committed seed and every
//! kept crash input (`regressions/<target>/`) goes through the target's `run`.

use std::fs;
use std::path::{Path, PathBuf};

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    v.sort();
    v
}

fn replay(kind: &str) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut n = 0;
    for (target, run) in xtmp_fuzz::TARGETS {
        for path in files(&root.join(kind).join(target)) {
            let data = fs::read(&path).expect("readable input");
            eprintln!("{target}: {}", path.display());
            run(&data);
            n += 1;
        }
    }
    n
}

#[test]
fn corpus_replays() {
    let n = replay("corpus");
    assert!(n >= xtmp_fuzz::TARGETS.len(), "no seed corpus found");
}

#[test]
fn regressions_replay() {
    replay("regressions");
}

#[test]
fn generated_seeds_replay() {
    for (target, run) in xtmp_fuzz::TARGETS {
        let seeds = xtmp_fuzz::seeds::seeds(target);
        assert!(!seeds.is_empty(), "{target} has no seeds");
        for (name, data) in seeds {
            eprintln!("{target}: generated seed {name}");
            run(&data);
        }
    }
}

#[test]
fn committed_seeds_are_current() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let mut total = 0;
    for (target, _) in xtmp_fuzz::TARGETS {
        let dir = root.join(target);
        let mut want: Vec<(String, Vec<u8>)> = xtmp_fuzz::seeds::seeds(target)
            .into_iter()
            .map(|(name, bytes)| (format!("seed-{name}"), bytes))
            .collect();
        want.sort();
        let have: Vec<(String, Vec<u8>)> = files(&dir)
            .into_iter()
            .filter_map(|p| {
                let name = p.file_name()?.to_string_lossy().into_owned();
                name.starts_with("seed-")
                    .then(|| (name, fs::read(&p).expect("readable seed")))
            })
            .collect();
        total += have.iter().map(|(_, b)| b.len()).sum::<usize>();
        assert!(
            have == want,
            "corpus/{target}/seed-* is stale: run `cargo run --example write_seeds` in fuzz/"
        );
    }
    assert!(total < 200 * 1024, "seed corpus grew to {total} bytes");
}

/// Rough per-run cost of each target over its seeds (`cargo test --release -- --ignored
/// --nocapture timing`).
#[test]
#[ignore]
fn timing() {
    for (target, run) in xtmp_fuzz::TARGETS {
        let seeds = xtmp_fuzz::seeds::seeds(target);
        let start = std::time::Instant::now();
        let rounds = 20;
        for _ in 0..rounds {
            for (_, data) in &seeds {
                run(data);
            }
        }
        let per = start.elapsed() / (rounds * seeds.len()) as u32;
        eprintln!("{target}: {per:?} per input over {} seeds", seeds.len());
    }
}
