//! The disk against a plain byte model, over random operation sequences.

use engine::env::Allocation;
use sim::Stream;
use sim::rng::{below, in_range};

use super::*;

/// Run `ops` random operations on one file, checking every read against the model. Returns the
/// final bytes and the trace hash.
fn run_model(seed: u64, ops: usize) -> (Vec<u8>, u64) {
    let sim = new_sim(seed);
    let env = sim.env().as_env();
    let mut rng = sim.env().stream_rng(Stream::Workload);
    let fs = sim.fs().clone();
    let out = sim
        .block_on(async move {
            let f = open(&env, "model.img");
            let mut model: Vec<u8> = Vec::new();
            const SPAN: u64 = 96 * 1024;
            for step in 0..ops {
                let off = below(&mut rng, SPAN);
                let len = in_range(&mut rng, 1, 12 * 1024);
                match below(&mut rng, 10) {
                    0..=2 => {
                        let fill = below(&mut rng, 256) as u8;
                        let data: Vec<u8> = (0..len)
                            .map(|i| fill.wrapping_add((i % 251) as u8))
                            .collect();
                        write(&*f, off, &data).await.unwrap();
                        let end = (off + len) as usize;
                        if model.len() < end {
                            model.resize(end, 0);
                        }
                        model[off as usize..end].copy_from_slice(&data);
                    }
                    3 | 4 => {
                        let got = read(&*f, off, len as usize).await.unwrap();
                        let want: Vec<u8> = (off..off + len)
                            .map(|i| *model.get(i as usize).unwrap_or(&0))
                            .collect();
                        assert_eq!(got, want, "seed {seed} step {step}: read {off}+{len}");
                    }
                    5 => {
                        f.flush().await.unwrap();
                        assert_eq!(fs.durable_bytes("model.img").unwrap(), model, "seed {seed}");
                        assert_eq!(fs.dirty_entries("model.img").unwrap(), 0);
                    }
                    6 => {
                        f.discard(off, len).await.unwrap();
                        let end = ((off + len) as usize).min(model.len());
                        if (off as usize) < end {
                            model[off as usize..end].fill(0);
                        }
                    }
                    7 => {
                        let unmap = below(&mut rng, 2) == 0;
                        f.write_zeroes(off, len, unmap).await.unwrap();
                        let end = (off + len) as usize;
                        if model.len() < end {
                            model.resize(end, 0);
                        }
                        model[off as usize..end].fill(0);
                    }
                    8 => {
                        let new_len = below(&mut rng, SPAN);
                        f.set_len(new_len).await.unwrap();
                        model.resize(new_len as usize, 0);
                    }
                    _ => {
                        let (kind, n) = f.allocation(off, len).await.unwrap();
                        if off < model.len() as u64 {
                            assert!(n >= 1 && n <= len, "seed {seed}: extent {n}");
                        }
                        if kind == Allocation::Hole {
                            let end = ((off + n) as usize).min(model.len());
                            if (off as usize) < end {
                                assert!(
                                    model[off as usize..end].iter().all(|&b| b == 0),
                                    "seed {seed} step {step}: hole at {off}+{n} holds data"
                                );
                            }
                        }
                    }
                }
                assert_eq!(
                    f.len().unwrap(),
                    model.len() as u64,
                    "seed {seed} step {step}: length"
                );
            }
            model
        })
        .unwrap();
    assert_eq!(sim.fs().file_bytes("model.img").unwrap(), out);
    (out, sim.trace_hash())
}

#[test]
fn random_operations_match_the_byte_model() {
    for seed in 0..12 {
        run_model(seed, 250);
    }
}

#[test]
fn same_seed_same_bytes_and_trace() {
    let a = run_model(77, 200);
    let b = run_model(77, 200);
    assert_eq!(a, b);
    let c = run_model(78, 200);
    assert_ne!(a.1, c.1);
}

#[test]
fn discarded_and_unmapped_pages_are_holes() {
    let sim = new_sim(3);
    let env = sim.env().as_env();
    sim.block_on(async move {
        let f = open(&env, "h.img");
        write(&*f, 0, &[1u8; 16384]).await.unwrap();
        assert_eq!(
            f.allocation(0, 16384).await.unwrap(),
            (Allocation::Data, 16384)
        );
        f.discard(4096, 8192).await.unwrap();
        assert_eq!(
            f.allocation(0, 16384).await.unwrap(),
            (Allocation::Data, 4096)
        );
        assert_eq!(
            f.allocation(4096, 12288).await.unwrap(),
            (Allocation::Hole, 8192)
        );
        assert_eq!(
            f.allocation(12288, 4096).await.unwrap(),
            (Allocation::Data, 4096)
        );
        f.write_zeroes(0, 4096, false).await.unwrap();
        assert_eq!(
            f.allocation(0, 4096).await.unwrap(),
            (Allocation::Data, 4096)
        );
        f.write_zeroes(0, 4096, true).await.unwrap();
        assert_eq!(
            f.allocation(0, 8192).await.unwrap(),
            (Allocation::Hole, 8192)
        );
        // Growing via write_zeroes with unmap leaves holes; preallocate makes data.
        f.write_zeroes(16384, 8192, true).await.unwrap();
        assert_eq!(f.len().unwrap(), 24576);
        assert_eq!(
            f.allocation(16384, 8192).await.unwrap(),
            (Allocation::Hole, 8192)
        );
        f.preallocate(16384, 4096).await.unwrap();
        assert_eq!(
            f.allocation(16384, 8192).await.unwrap(),
            (Allocation::Data, 4096)
        );
        // Beyond the end: a hole as long as asked.
        assert_eq!(
            f.allocation(1 << 20, 100).await.unwrap(),
            (Allocation::Hole, 100)
        );
    })
    .unwrap();
}
