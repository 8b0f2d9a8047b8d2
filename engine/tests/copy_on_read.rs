//! The `copy-on-read` filter: reads through it copy what the overlay below does not allocate
//! from its backing chain into the overlay (the same `populate` as the device option), the
//! data read is unchanged, and writes pass through.

use crate::support;

use engine::Engine;
use engine::backend::BackendOptions;
use engine::io::{IoBuf, Mapping, ReqFlags};
use engine::types::Perms;
use serde_json::json;
use support::chain::{SIZE, build};
use support::run;

/// True if `node` itself allocates every byte of `[off, off+len)`.
async fn allocated(engine: &Engine, node: &str, off: u64, len: u64) -> bool {
    let opts = BackendOptions {
        shared: Perms::ALL,
        ..BackendOptions::tool(true)
    };
    let bb = engine.device_add("probe", node, opts).unwrap();
    let mut at = off;
    let mut all = true;
    while at < off + len {
        let st = bb.block_status(at, off + len - at).await.unwrap();
        all &= !matches!(st.mapping, Mapping::Unallocated);
        at += st.len;
    }
    engine.device_del("probe").await.unwrap();
    all
}

#[test]
fn reads_through_the_filter_populate_the_overlay() {
    run(11, |engine| async move {
        let view = build(&engine).await;
        // mid's data (1 MiB..3 MiB) is below top, which only has its own 512 KiB.
        assert!(!allocated(&engine, "top", 1 << 20, 1 << 20).await);
        engine
            .blockdev_add(json!({"driver": "copy-on-read", "node-name": "cor", "file": "top"}))
            .await
            .unwrap();
        engine.device_del("drive0").await.unwrap();
        let bb = engine
            .device_add("d", "cor", BackendOptions::guest_device(false, false))
            .unwrap();
        let (buf, r) = bb.read(1 << 20, IoBuf::new(1 << 20)).await;
        r.unwrap();
        assert_eq!(buf.as_slice(), &view[1 << 20..2 << 20]);
        assert!(allocated(&engine, "top", 1 << 20, 1 << 20).await);
        // Only what was read: the rest of mid's data stays below.
        assert!(!allocated(&engine, "top", 2 << 20, 256 << 10).await);

        // Writes pass through; the whole device reads as before plus the write.
        let (_, r) = bb
            .write(3 << 20, IoBuf::filled(4096, 0x44), ReqFlags::NONE)
            .await;
        r.unwrap();
        let (buf, r) = bb.read(0, IoBuf::new(SIZE as usize)).await;
        r.unwrap();
        let mut want = view.clone();
        want[3 << 20..(3 << 20) + 4096].fill(0x44);
        assert_eq!(buf.as_slice(), &want[..]);
        assert_eq!(
            engine
                .blockdev_add(json!({"driver": "copy-on-read", "node-name": "c2"}))
                .await
                .unwrap_err()
                .message(),
            "Parameter 'file' is missing"
        );
    });
}
