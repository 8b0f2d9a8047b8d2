//! The `file` driver over a host that moves less than asked or answers EAGAIN/EINTR (virtual
//! disk faults `short-read`, `short-write`, `eagain`, `eintr`): the guest sees neither a short
//! count nor a transient error, and its data is exact. And fsync-gate: after a failed flush of a
//! page-cached file, no later flush may report success (the kernel may have dropped the data).

use std::rc::Rc;

use engine::backend::{BackendOptions, BlockBackend};
use engine::env::OpenOptions;
use engine::io::{IoBuf, ReqFlags};
use engine::{Engine, Errno};
use serde_json::json;
use sim::{FaultKind, FaultSpec, OpKind, Sim, SimConfig, Trigger};

/// A 1 MiB raw image on the virtual disk, opened as `file` + `raw` with a tool device.
async fn device(engine: &Engine, direct: bool) -> Rc<BlockBackend> {
    let opts = OpenOptions {
        write: true,
        create: true,
        ..Default::default()
    };
    let f = engine.env().fs().open("disk.img", opts).unwrap();
    f.set_len(1 << 20).await.unwrap();
    drop(f);
    engine
        .blockdev_add(json!({"driver": "raw", "node-name": "r",
            "file": {"driver": "file", "filename": "disk.img", "cache": {"direct": direct}}}))
        .await
        .unwrap();
    engine
        .device_add("d", "r", BackendOptions::tool(false))
        .unwrap()
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

/// Guest writes and reads back `len` bytes at `offset` under the faults already injected.
async fn round_trip(bb: &BlockBackend, offset: u64, data: &[u8]) {
    let (_, r) = bb
        .write(offset, IoBuf::from_slice(data), ReqFlags::NONE)
        .await;
    r.expect("the guest never sees a short or interrupted write");
    let (buf, r) = bb.read(offset, IoBuf::new(data.len())).await;
    r.expect("the guest never sees a short or interrupted read");
    assert_eq!(buf.as_slice(), data);
}

fn fired(sim: &Sim) -> Vec<(String, u64)> {
    sim.fs()
        .faults()
        .into_iter()
        .map(|(_, s)| (s.spec.kind.name().to_string(), s.fired))
        .collect()
}

fn run_with(kinds: &[(FaultKind, Trigger)], direct: bool) -> Vec<(String, u64)> {
    let sim = Sim::new(7, SimConfig::default());
    for (k, t) in kinds {
        sim.fs()
            .inject(FaultSpec::new(k.clone()).path("disk.img").trigger(*t))
            .unwrap();
    }
    let engine = Rc::new(Engine::new(sim.env().as_env()));
    sim.block_on(async move {
        let bb = device(&engine, direct).await;
        round_trip(&bb, 4096, &pattern(64 << 10, 1)).await;
        round_trip(&bb, 512 * 301, &pattern(12 << 10, 2)).await;
        // Past the end: the tail of the last sector is zeroes, whatever the transfers were.
        round_trip(&bb, (1 << 20) - 8192, &pattern(8192, 3)).await;
    })
    .unwrap();
    fired(&sim)
}

#[test]
fn short_reads_and_writes_are_completed_by_the_driver() {
    // Sticky: every partial transfer is cut short until one unit is left.
    let f = run_with(
        &[
            (FaultKind::ShortRead, Trigger::Sticky),
            (FaultKind::ShortWrite, Trigger::Sticky),
        ],
        false,
    );
    assert!(f.iter().all(|(_, n)| *n >= 3), "every kind fired: {f:?}");
}

#[test]
fn short_direct_transfers_stay_aligned_and_complete() {
    let f = run_with(
        &[
            (FaultKind::ShortRead, Trigger::Probability(0.5)),
            (FaultKind::ShortWrite, Trigger::Probability(0.5)),
        ],
        true,
    );
    assert!(f.iter().all(|(_, n)| *n >= 1), "every kind fired: {f:?}");
}

#[test]
fn eagain_and_eintr_are_retried_and_never_reach_the_guest() {
    let f = run_with(
        &[
            (FaultKind::Eagain, Trigger::Times(5)),
            (FaultKind::Eintr, Trigger::Probability(0.3)),
            (FaultKind::ShortWrite, Trigger::Probability(0.3)),
        ],
        false,
    );
    assert_eq!(f[0], ("eagain".to_string(), 5));
    assert!(f[1].1 >= 1, "{f:?}");
}

#[test]
fn after_a_failed_flush_every_later_flush_fails_until_reopen() {
    let sim = Sim::new(8, SimConfig::default());
    let engine = Rc::new(Engine::new(sim.env().as_env()));
    let fs = sim.fs().clone();
    sim.block_on(async move {
        let bb = device(&engine, false).await;
        let (_, r) = bb.write(0, IoBuf::filled(4096, 7), ReqFlags::NONE).await;
        r.unwrap();
        fs.inject(
            FaultSpec::new(FaultKind::FlushLost)
                .ops(&[OpKind::Flush])
                .once(),
        )
        .unwrap();
        assert_eq!(bb.flush().await.unwrap_err().errno(), Some(Errno::EIO));
        // The write is gone from the disk's point of view; a flush that succeeded now would
        // tell the guest it is durable.
        let again = bb.flush().await;
        assert_eq!(again.unwrap_err().errno(), Some(Errno::EIO));
        let (_, r) = bb.write(8192, IoBuf::filled(512, 8), ReqFlags::NONE).await;
        r.unwrap();
        assert!(
            bb.flush().await.is_err(),
            "new writes cannot be flushed either"
        );
        assert_ne!(fs.durable_bytes("disk.img").unwrap().first(), Some(&7));

        // Opened again, the file flushes normally.
        engine.device_del("d").await.unwrap();
        engine.blockdev_del("r").await.unwrap();
        let bb = device(&engine, false).await;
        let (_, r) = bb.write(0, IoBuf::filled(512, 9), ReqFlags::NONE).await;
        r.unwrap();
        bb.flush().await.unwrap();
        assert_eq!(fs.durable_bytes("disk.img").unwrap()[0], 9);
    })
    .unwrap();
}
