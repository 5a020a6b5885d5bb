//! Bounded property runs of the fuzz targets (`connectors/src/fuzz.rs`) on
//! stable Rust: every input of the corpus kept in `fuzz/corpus/<target>/`,
//! then seeded random mutations of it (bit flips, byte edits, insertions of
//! tokens that matter to the target, splices of two inputs) for
//! `DBMUX_FUZZ_SECS` seconds per target (default 4). `scripts/fuzz` runs the
//! same targets longer, coverage-guided with `cargo fuzz` where a nightly
//! toolchain is installed.
//!
//! A failing input is printed in hex with the seed that produced it, and
//! saved to `target/fuzz-failures/<target>-<seed>`; `DBMUX_FUZZ_SEED=<seed>`
//! repeats a run. A crash found this way becomes a file in the corpus (so
//! every later run tries it first) and, where it says more, a unit test.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = corpus_dir(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    let inputs: Vec<Vec<u8>> = files.iter().map(|p| std::fs::read(p).unwrap()).collect();
    assert!(!inputs.is_empty(), "empty corpus in {}", dir.display());
    inputs
}

/// Bytes that change how a target reads its input.
const TOKENS: &[&[u8]] = &[
    b"'",
    b"\"",
    b"`",
    b"\\",
    b";",
    b"/*!",
    b"/*",
    b"*/",
    b"-- ",
    b"#",
    b"\n",
    b"\xBF\x5C",
    b"\x81\x30\x81\x30",
    b"\xFF",
    b"\x00",
    b"\xFB",
    b"\xFE",
    b"\xFF\xFF\xFF",
    b" OR 1",
    b" UNION ALL SELECT 1",
    b"(",
    b")",
    b"KILL ",
    b"SET NAMES gbk",
    b"SELECT ",
    b"INSERT INTO t VALUES (1)",
    b"@@",
    b"@x:=",
    b"CALL p()",
    b"SHOW WARNINGS",
];

fn mutate(rng: &mut StdRng, input: &[u8], other: &[u8], max_len: usize) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..rng.gen_range(1..=4) {
        match rng.gen_range(0..7) {
            0 if !v.is_empty() => {
                let i = rng.gen_range(0..v.len());
                v[i] ^= 1 << rng.gen_range(0..8);
            }
            1 if !v.is_empty() => {
                let i = rng.gen_range(0..v.len());
                v[i] = rng.gen();
            }
            2 => {
                let i = rng.gen_range(0..=v.len());
                let t = TOKENS[rng.gen_range(0..TOKENS.len())];
                v.splice(i..i, t.iter().copied());
            }
            3 if !v.is_empty() => {
                let a = rng.gen_range(0..v.len());
                let b = rng.gen_range(a..=v.len().min(a + 16));
                v.drain(a..b);
            }
            4 if !v.is_empty() => {
                let a = rng.gen_range(0..v.len());
                let b = rng.gen_range(a..=v.len().min(a + 32));
                let chunk = v[a..b].to_vec();
                let i = rng.gen_range(0..=v.len());
                v.splice(i..i, chunk);
            }
            5 if !other.is_empty() => {
                let cut = rng.gen_range(0..=v.len());
                let from = rng.gen_range(0..other.len());
                v.truncate(cut);
                v.extend_from_slice(&other[from..]);
            }
            _ => {
                let i = rng.gen_range(0..=v.len());
                let n = rng.gen_range(1..8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.gen()).collect();
                v.splice(i..i, bytes);
            }
        }
    }
    v.truncate(max_len);
    v
}

fn run(target: &str, f: fn(&[u8]), max_len: usize) {
    let secs: u64 = std::env::var("DBMUX_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    let seed: u64 = std::env::var("DBMUX_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("fuzz {target}: seed {seed}, {secs} s (DBMUX_FUZZ_SEED={seed} repeats this run)");
    let seeds = corpus(target);
    let check = |input: &[u8]| {
        if let Err(panic) = std::panic::catch_unwind(|| f(input)) {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/fuzz-failures");
            let _ = std::fs::create_dir_all(&dir);
            let file = dir.join(format!("{target}-{seed}"));
            let _ = std::fs::write(&file, input);
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!(
                "fuzz {target}: seed {seed}: input {} (saved to {}) failed: {what}",
                hex::encode(input),
                file.display()
            );
        }
    };
    for s in &seeds {
        check(s);
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut runs = 0u64;
    let mut pool = seeds.clone();
    while Instant::now() < deadline {
        let a = &pool[rng.gen_range(0..pool.len())];
        let b = &pool[rng.gen_range(0..pool.len())];
        let input = mutate(&mut rng, a, b, max_len);
        check(&input);
        runs += 1;
        // Keep some mutants as parents: deeper mutations over time.
        if rng.gen_ratio(1, 16) && pool.len() < 4096 {
            pool.push(input);
        }
    }
    eprintln!("fuzz {target}: {runs} inputs");
    assert!(runs > 0);
}

#[cfg(feature = "proxy")]
#[test]
fn fuzz_packet_codec() {
    run("packet_codec", connectors::fuzz::packet_codec, 1 << 16);
}

#[cfg(feature = "proxy")]
#[test]
fn fuzz_handshake() {
    run("handshake", connectors::fuzz::handshake, 4096);
}

#[cfg(feature = "proxy")]
#[test]
fn fuzz_router() {
    run("router", connectors::fuzz::router, 4096);
}

#[cfg(feature = "mysql")]
#[test]
fn fuzz_binlog_row() {
    run("binlog_row", connectors::fuzz::binlog_row, 4096);
}
