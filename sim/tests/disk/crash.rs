//! Power-loss outcomes: flushed and FUA data survive, unflushed sectors hold old or new data
//! (never anything else), writes tear for some seeds, and a seed fixes the outcome.

use sim::rng::{below, in_range};
use sim::{CrashReport, Stream};

use super::*;

const SIZE: usize = 64 * 1024;
const BASE: u8 = 0x11;
const FLUSHED: u8 = 0x22;
const FUA: u8 = 0xf0;

/// Durable base, a flushed region [0, 8K), unflushed sector-aligned writes in [8K, 56K) with
/// fill bytes 0x30.., a FUA write over [56K, 64K); then crash. Returns the post-crash bytes, the
/// unflushed writes (offset, len, fill), the report, and the trace hash.
type Outcome = (Vec<u8>, Vec<(u64, u64, u8)>, CrashReport, u64);

fn scenario(seed: u64) -> Outcome {
    let sim = new_sim(seed);
    let env = sim.env().as_env();
    sim.fs().create_file("c.img", &vec![BASE; SIZE]).unwrap();
    let mut rng = sim.env().stream_rng(Stream::Workload);
    let writes: Vec<(u64, u64, u8)> = (0..12)
        .map(|i| {
            let off = 8192 + below(&mut rng, 80) * 512;
            let len = in_range(&mut rng, 1, 16) * 512;
            (off, len.min(57344 - off), 0x30 + i as u8)
        })
        .collect();
    let w = writes.clone();
    sim.block_on(async move {
        let f = open(&env, "c.img");
        write(&*f, 0, &[FLUSHED; 8192]).await.unwrap();
        f.flush().await.unwrap();
        for &(off, len, fill) in &w {
            write(&*f, off, &vec![fill; len as usize]).await.unwrap();
        }
        write_fua(&*f, 57344, &[FUA; 8192]).await.unwrap();
    })
    .unwrap();
    let report = sim.crash();
    let bytes = sim.fs().file_bytes("c.img").unwrap();
    assert_eq!(sim.fs().durable_bytes("c.img").unwrap(), bytes);
    (bytes, writes, report, sim.trace_hash())
}

#[test]
fn crash_keeps_flushed_and_fua_data_and_only_legal_sectors() {
    for seed in 0..40 {
        let (bytes, writes, _, _) = scenario(seed);
        assert_eq!(bytes.len(), SIZE, "seed {seed}");
        assert!(
            bytes[..8192].iter().all(|&b| b == FLUSHED),
            "seed {seed}: flushed data lost"
        );
        assert!(
            bytes[57344..].iter().all(|&b| b == FUA),
            "seed {seed}: FUA data lost"
        );
        for sector in (8192..57344).step_by(512) {
            let s = &bytes[sector..sector + 512];
            assert!(
                s.iter().all(|&b| b == s[0]),
                "seed {seed}: sector {sector} is not atomic"
            );
            let legal = s[0] == BASE
                || writes
                    .iter()
                    .any(|&(o, l, fill)| fill == s[0] && (o..o + l).contains(&(sector as u64)));
            assert!(legal, "seed {seed}: sector {sector} holds {:#x}", s[0]);
        }
    }
}

#[test]
fn some_seed_tears_a_write() {
    let mut torn_seen = false;
    for seed in 0..40 {
        let (bytes, writes, report, _) = scenario(seed);
        if report.torn == 0 {
            continue;
        }
        // A multi-sector write whose range shows both its own value and something else, while no
        // later write overlaps it, is torn as observed from the bytes.
        for (i, &(o, l, fill)) in writes.iter().enumerate() {
            let later_overlap = writes[i + 1..]
                .iter()
                .any(|&(o2, l2, _)| o2 < o + l && o < o2 + l2);
            if l <= 512 || later_overlap {
                continue;
            }
            let r = &bytes[o as usize..(o + l) as usize];
            if r.contains(&fill) && r.iter().any(|&b| b != fill) {
                torn_seen = true;
            }
        }
    }
    assert!(torn_seen, "no torn write observed over 40 seeds");
}

#[test]
fn same_seed_same_post_crash_bytes() {
    let mut differs = false;
    let first = scenario(1234);
    for seed in [1234, 1234] {
        let again = scenario(seed);
        assert_eq!(first.0, again.0);
        assert_eq!(first.2, again.2);
        assert_eq!(first.3, again.3);
    }
    for seed in 0..10 {
        differs |= scenario(seed).0 != first.0;
    }
    assert!(differs, "crash outcomes never vary with the seed");
}

#[test]
fn unflushed_size_changes_are_kept_or_lost() {
    let mut lens = std::collections::BTreeSet::new();
    for seed in 0..30 {
        let sim = new_sim(seed);
        let env = sim.env().as_env();
        sim.fs().create_file("s.img", &[7; 8192]).unwrap();
        sim.block_on(async move {
            let f = open(&env, "s.img");
            f.set_len(1000).await.unwrap();
        })
        .unwrap();
        sim.crash();
        let bytes = sim.fs().file_bytes("s.img").unwrap();
        match bytes.len() {
            8192 => assert!(bytes.iter().all(|&b| b == 7)),
            1000 => assert!(bytes.iter().all(|&b| b == 7)),
            n => panic!("seed {seed}: impossible length {n}"),
        }
        lens.insert(bytes.len());
    }
    assert_eq!(lens.len(), 2, "both outcomes should occur over 30 seeds");
}

#[test]
fn crash_abandons_in_flight_io_and_kills_tasks() {
    let sim = new_sim(21);
    let env = sim.env().as_env();
    let e = env.clone();
    let handle = open(&env, "i.img");
    let h = handle.clone();
    env.spawn(
        "writer",
        Box::pin(async move {
            write(&*h, 0, &[9; 4096]).await.unwrap();
            panic!("the write must never complete");
        }),
    );
    // Let the writer submit (it then waits >= 10us of virtual time), then pull the plug.
    sim.block_on(async move { e.sleep_until(1).await }).unwrap();
    assert_eq!(sim.env().task_count(), 1);
    sim.crash();
    assert_eq!(sim.env().task_count(), 0);
    sim.run_until_idle().unwrap();
    assert!(sim.fs().file_bytes("i.img").unwrap().is_empty());
    // Old handles are stale; reopening works.
    assert_eq!(errno(handle.len()), Errno::EIO);
    let env2 = sim.env().as_env();
    sim.block_on(async move {
        assert_eq!(errno(read(&*handle, 0, 1).await), Errno::EIO);
        let f = open(&env2, "i.img");
        write(&*f, 0, &[1; 10]).await.unwrap();
        assert_eq!(read(&*f, 0, 10).await.unwrap(), vec![1; 10]);
    })
    .unwrap();
}

/// Three rounds of "write 4 KiB with fill k, flush" by a spawned task; the main future waits.
/// Returns the disk counts at the end (or at the crash) and whether a scheduled crash struck.
fn flush_rounds(seed: u64, at: Option<sim::CrashAt>) -> (Vec<u8>, sim::DiskCounts, bool) {
    let sim = new_sim(seed);
    let env = sim.env().as_env();
    sim.fs().create_file("r.img", &[0; 12288]).unwrap();
    if let Some(at) = at {
        sim.fs().schedule_crash(at);
    }
    let f = open(&env, "r.img");
    env.spawn(
        "rounds",
        Box::pin(async move {
            for k in 0..3u64 {
                if write(&*f, k * 4096, &[k as u8 + 1; 4096]).await.is_err() {
                    return;
                }
                if f.flush().await.is_err() {
                    return;
                }
            }
        }),
    );
    sim.run_until_idle().unwrap();
    let struck = sim.fs().take_struck().is_some();
    (
        sim.fs().durable_bytes("r.img").unwrap(),
        sim.fs().disk_counts(),
        struck,
    )
}

/// A crash scheduled at the Nth flush strikes exactly there: before it, what it covers may be
/// lost (and nothing later ever happens); after it, what it covered is durable; every task dies.
#[test]
fn scheduled_crash_strikes_at_the_nth_flush() {
    let (bytes, counts, struck) = flush_rounds(5, None);
    assert!(!struck);
    assert_eq!(counts, sim::DiskCounts { flushes: 3, ops: 6 });
    assert!(
        bytes
            .chunks(4096)
            .enumerate()
            .all(|(k, c)| c.iter().all(|&b| b == k as u8 + 1))
    );
    let mut lost_somewhere = false;
    for seed in 0..20 {
        for nth in 1..=3u64 {
            let (after, counts, struck) =
                flush_rounds(seed, Some(sim::CrashAt::Flush { nth, after: true }));
            assert!(struck, "seed {seed} flush {nth}");
            assert_eq!(counts.flushes, nth, "nothing happens after the crash");
            for k in 0..3u64 {
                let chunk = &after[(k * 4096) as usize..((k + 1) * 4096) as usize];
                let want = if k < nth { k as u8 + 1 } else { 0 };
                assert!(
                    chunk.iter().all(|&b| b == want),
                    "seed {seed} flush {nth} after"
                );
            }
            let (before, _, struck) =
                flush_rounds(seed, Some(sim::CrashAt::Flush { nth, after: false }));
            assert!(struck);
            // Rounds before `nth` are durable; round nth-1 (0-based) may hold old or new per sector.
            for k in 0..3u64 {
                let chunk = &before[(k * 4096) as usize..((k + 1) * 4096) as usize];
                let new = k as u8 + 1;
                if k + 1 < nth {
                    assert!(chunk.iter().all(|&b| b == new), "seed {seed} flush {nth}");
                } else if k + 1 == nth {
                    assert!(chunk.iter().all(|&b| b == new || b == 0));
                    lost_somewhere |= chunk.contains(&0);
                } else {
                    assert!(chunk.iter().all(|&b| b == 0));
                }
            }
        }
    }
    assert!(lost_somewhere, "a crash before a flush never lost its data");
}

/// A crash scheduled at the Nth operation replaces it: that write never lands.
#[test]
fn scheduled_crash_strikes_at_the_nth_operation() {
    for nth in 1..=6u64 {
        let (bytes, counts, struck) = flush_rounds(9, Some(sim::CrashAt::Op { nth }));
        assert!(struck);
        assert_eq!(counts.ops, nth);
        // Op 2k+1 is the write of round k, op 2k+2 its flush.
        let complete_rounds = (nth - 1) / 2;
        for k in 0..complete_rounds {
            let chunk = &bytes[(k * 4096) as usize..((k + 1) * 4096) as usize];
            assert!(chunk.iter().all(|&b| b == k as u8 + 1), "op {nth}");
        }
        if nth % 2 == 1 {
            let k = complete_rounds;
            let chunk = &bytes[(k * 4096) as usize..((k + 1) * 4096) as usize];
            assert!(
                chunk.iter().all(|&b| b == 0),
                "op {nth}: the crashed write landed"
            );
        }
    }
}

/// Issue 10 bug 11: a file never flushed (a mirror target in the ready phase) kept every write
/// of the run in the cache, and a long run grew to tens of GB. The cache is finite, as a
/// drive's: past its capacity the oldest writes become durable.
#[test]
fn the_write_cache_is_bounded_and_destages_the_oldest_writes() {
    const MIB: usize = 1 << 20;
    let sim = new_sim(3);
    let env = sim.env().as_env();
    sim.fs()
        .create_file("big.img", &vec![BASE; 16 * MIB])
        .unwrap();
    sim.block_on(async move {
        let f = open(&env, "big.img");
        for i in 0..160u64 {
            let fill = (i % 200) as u8 + 1;
            write(&*f, (i % 16) * MIB as u64, &vec![fill; MIB])
                .await
                .unwrap();
        }
    })
    .unwrap();
    let cached = sim.fs().unflushed_bytes("big.img").unwrap();
    assert!(
        cached <= sim::VOLATILE_CACHE_BYTES,
        "{cached} bytes unflushed"
    );
    // The first writes were destaged: durable without any flush; the latest are still cached.
    let durable = sim.fs().durable_bytes("big.img").unwrap();
    assert_ne!(durable[0], BASE, "nothing was written back");
    assert_eq!(sim.fs().file_bytes("big.img").unwrap()[15 * MIB], 160);
}

#[test]
fn a_flush_shares_the_read_view_yet_later_writes_never_reach_the_durable_bytes() {
    let sim = new_sim(7);
    let env = sim.env().as_env();
    sim.fs().create_file("s.img", &[BASE; 3 * 4096]).unwrap();
    let fs = sim.fs().clone();
    sim.block_on(async move {
        let f = open(&env, "s.img");
        write(&*f, 1000, &[FLUSHED; 5000]).await.unwrap();
        // Everything cached lands: the durable bytes take the read view's pages.
        f.flush().await.unwrap();
        // Into a shared page (copied on write), over a whole shared page, and growing the file.
        write(&*f, 1500, &[0x33; 100]).await.unwrap();
        write(&*f, 8192, &[0x44; 4096]).await.unwrap();
        write(&*f, 12288, &[0x55; 512]).await.unwrap();
    })
    .unwrap();
    let mut durable = vec![BASE; 3 * 4096];
    durable[1000..6000].fill(FLUSHED);
    assert_eq!(fs.durable_bytes("s.img").unwrap(), durable);
    let mut now = durable.clone();
    now[1500..1600].fill(0x33);
    now[8192..].fill(0x44);
    now.extend([0x55; 512]);
    assert_eq!(fs.file_bytes("s.img").unwrap(), now);
    sim.crash();
    let after = fs.file_bytes("s.img").unwrap();
    assert_eq!(after[..1000], durable[..1000]);
    assert!(
        after[1000..1500].iter().all(|&b| b == FLUSHED),
        "flushed data lost"
    );
}
