//! What every image target does with an image that may be malformed: open it read-only, walk
//! its block status, read what is allocated, check it; then open it read-write, write a little,
//! take, apply and delete an internal snapshot,
//! repair it, and require that a successful repair leaves an image that checks clean.
//!
//! Opening may fail (that is the expected answer to most malformed images); it must fail with
//! an error value, never a panic, a hang or a huge allocation.

use std::rc::Rc;

use engine::Engine;
use engine::backend::BlockBackend;
use engine::drivers::qcow2::{Repair, check_node};
use engine::io::{IoBuf, ReqFlags};

use crate::harness::{IMG, close, engine_of, open_qcow2, run, sim_with};

/// Most block-status steps walked per image.
const MAX_STATUS_STEPS: usize = 64;
/// Most guest bytes read per image.
const READ_BUDGET: u64 = 1 << 20;
/// Most bytes per read.
const MAX_READ: u64 = 64 << 10;
/// Largest image file checked after the writes (see `exercise_image_with`).
const MAX_CHECKED_FILE: u64 = 256 << 20;

/// Exercise `image` (the bytes of a qcow2 file) read-only and then read-write.
pub fn exercise_image(image: &[u8]) {
    exercise_image_with(image, &[]);
}

/// `exercise_image` with more files on the virtual disk (an external data file).
pub fn exercise_image_with(image: &[u8], files: &[(&str, &[u8])]) {
    let mut all = vec![(IMG, image)];
    all.extend_from_slice(files);
    let sim = sim_with(&all);
    let engine = engine_of(&sim);
    run(&sim, read_only_pass(&engine));
    let Some(bb) = run(&sim, write_pass(&engine)) else {
        return;
    };
    // A write through a corrupt mapping may have grown the (sparse) file far past its input
    // size; the check's work is proportional to the file's clusters by design, so such a
    // file is only closed, not checked.
    let checkable = sim.fs().file_len(IMG).expect("image length") <= MAX_CHECKED_FILE;
    run(&sim, check_pass(&engine, &bb, checkable));
}

async fn read_only_pass(engine: &Engine) {
    let Ok(bb) = open_qcow2(engine, "q", "d", IMG, true).await else {
        return;
    };
    walk(&bb).await;
    let node = engine.node("q").expect("node q is open");
    // Any answer is fine for a malformed image; only the way it is reached is checked.
    let _ = check_node(&node, None).await;
    // Repairs need a writable image: refused, never attempted.
    assert!(
        check_node(&node, Some(Repair::All)).await.is_err(),
        "repair of a read-only image was not refused"
    );
    close(engine, "q", "d").await.expect("close read-only node");
}

async fn write_pass(engine: &Engine) -> Option<Rc<BlockBackend>> {
    let bb = open_qcow2(engine, "w", "dw", IMG, false).await.ok()?;
    let len = bb.len().expect("length of an open device");
    if len > 0 {
        let n = len.min(4096);
        let _ = bb
            .write(0, IoBuf::filled(n as usize, 0xa5), ReqFlags::NONE)
            .await;
        let mid = (len / 2) & !511;
        let n = (len - mid).min(1024);
        let _ = bb.write_zeroes(mid, n, ReqFlags::MAY_UNMAP).await;
        let _ = bb.flush().await;
    }
    snapshot_pass(engine, &bb).await;
    Some(bb)
}

/// Internal snapshots on whatever the image holds: apply the first one it lists, create one,
/// write into the now shared clusters, apply and delete it. Errors are fine; panics are not.
async fn snapshot_pass(engine: &Engine, bb: &BlockBackend) {
    if let Some(first) = engine
        .snapshot_internal_list("dw")
        .ok()
        .and_then(|l| l.into_iter().next())
    {
        let _ = engine.snapshot_internal_goto("dw", &first.id).await;
    }
    let Ok(sn) = engine.snapshot_internal_create("dw", "fuzz").await else {
        return;
    };
    let len = bb.len().unwrap_or(0);
    if len > 0 {
        let n = len.min(2048);
        let _ = bb
            .write(0, IoBuf::filled(n as usize, 0x5a), ReqFlags::NONE)
            .await;
    }
    let _ = engine.snapshot_internal_goto("dw", &sn.id).await;
    let _ = engine
        .snapshot_internal_delete("dw", Some(&sn.id), None)
        .await;
}

async fn check_pass(engine: &Engine, bb: &BlockBackend, checkable: bool) {
    walk(bb).await;
    let node = engine.node("w").expect("node w is open");
    if checkable
        && let Ok(rep) = check_node(&node, Some(Repair::All)).await
        && rep.corruptions == 0
        && rep.check_errors == 0
    {
        // The repair said the image is consistent now: a fresh check must agree.
        let again = check_node(&node, None)
            .await
            .expect("check after a successful repair");
        assert!(
            again.corruptions == 0 && again.check_errors == 0,
            "image still corrupt after a successful repair: {:?}",
            again
        );
    }
    let _ = close(engine, "w", "dw").await;
}

/// Walk the device's block status from offset 0 (bounded), reading what is allocated.
pub async fn walk(bb: &BlockBackend) {
    let len = bb.len().expect("length of an open device");
    let mut off = 0;
    let mut budget = READ_BUDGET;
    for _ in 0..MAX_STATUS_STEPS {
        if off >= len {
            break;
        }
        let Ok(st) = bb.block_status(off, len - off).await else {
            break;
        };
        assert!(
            st.len > 0 && st.len <= len - off,
            "block status at {off} of {len} returned {} bytes",
            st.len
        );
        if st.mapping.is_allocated() && budget > 0 {
            let n = st.len.min(MAX_READ).min(budget);
            budget -= n;
            let _ = bb.read(off, IoBuf::new(n as usize)).await;
        }
        off += st.len;
    }
    if len > 0 {
        let n = len.min(4096);
        let _ = bb.read(len - n, IoBuf::new(n as usize)).await;
    }
}
