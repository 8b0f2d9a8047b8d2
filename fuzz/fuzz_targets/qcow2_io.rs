//! Random qcow2 I/O sequences on the simulator, compared with a byte model: blk creates an
//! image (any version, cluster size, refcount width, optional backing file, lazy refcounts,
//! preallocated metadata, zstd, external data file),
//! runs writes, zero writes, compressed writes, discards, flushes, reads and reopens, and then
//! the image must check clean and read back as the model says, also after a reopen.
#![no_main]

use arbitrary::Arbitrary;
use blk_fuzz::harness::{
    BACKING_RAW, BACKING_RAW_LEN, DATA_FILE, IMG, backing_byte, close, engine_of, open_qcow2, run,
    sim_with,
};
use blk_fuzz::model::{Model, Op};
use engine::backend::BackendOptions;
use engine::driver::Prealloc;
use engine::drivers::qcow2::{Compat, CreateOptions, check_node, create};
use libfuzzer_sys::fuzz_target;
use serde_json::json;

#[derive(Arbitrary, Debug)]
struct Input {
    cluster_bits: u8,
    v3: bool,
    refcount_order: u8,
    size_sectors: u16,
    lazy: bool,
    backing: bool,
    /// Guest data in an external data file (v3), kept raw or not.
    data_file: Option<bool>,
    /// Preallocate the metadata.
    prealloc: bool,
    /// zstd compression type (v3).
    zstd: bool,
    ops: Vec<Op>,
}

fuzz_target!(|input: Input| {
    let cs = 1u64 << (9 + input.cluster_bits as u32 % 8);
    let size = 512 * (1 + input.size_sectors as u64 % 2048);
    let opts = CreateOptions {
        size,
        cluster_size: cs,
        compat: if input.v3 { Compat::V3 } else { Compat::V2 },
        refcount_bits: if input.v3 {
            1 << (input.refcount_order % 7)
        } else {
            16
        },
        backing_file: input.backing.then(|| BACKING_RAW.to_string()),
        backing_fmt: input.backing.then(|| "raw".to_string()),
        lazy_refcounts: input.v3 && input.lazy,
        preallocation: if input.prealloc {
            Prealloc::Metadata
        } else {
            Prealloc::Off
        },
        compression_type: u8::from(input.v3 && input.zstd),
        data_file: (input.v3 && input.data_file.is_some()).then(|| DATA_FILE.to_string()),
        data_file_raw: input.v3 && input.data_file == Some(true),
        extended_l2: false,
        encrypt: None,
    };
    let backing = input
        .backing
        .then(|| (0..BACKING_RAW_LEN).map(backing_byte).collect());
    let sim = sim_with(&[(IMG, &[]), (DATA_FILE, &[])]);
    let engine = engine_of(&sim);
    run(&sim, async {
        engine
            .blockdev_add(json!({"driver": "file", "node-name": "f", "filename": IMG}))
            .await
            .expect("add file node");
        let bb = engine
            .device_add("c", "f", BackendOptions::tool(false))
            .expect("device on the file node");
        let created = create(&bb.root().expect("root"), &opts).await;
        engine.device_del("c").await.expect("device_del");
        engine.blockdev_del("f").await.expect("blockdev_del");
        if created.is_err() {
            // A backing file name that does not fit a 512-byte cluster with the v3 header.
            return;
        }
        let mut model = Model::new(size, cs, backing);
        let mut bb = open_qcow2(&engine, "q", "d", IMG, false)
            .await
            .expect("a new image opens");
        for op in input.ops.iter().take(64) {
            if model.apply(&bb, op).await {
                close(&engine, "q", "d").await.expect("close");
                bb = open_qcow2(&engine, "q", "d", IMG, false)
                    .await
                    .expect("reopen");
                model.verify_all(&bb, "after reopen").await;
            }
        }
        bb.flush().await.expect("flush");
        close(&engine, "q", "d").await.expect("close");
        let bb = open_qcow2(&engine, "q", "d", IMG, false)
            .await
            .expect("reopen at the end");
        let rep = check_node(&engine.node("q").expect("node"), None)
            .await
            .expect("check");
        assert!(
            rep.corruptions == 0 && rep.check_errors == 0 && rep.leaks == 0,
            "image does not check clean after the sequence: {rep:?}"
        );
        model.verify_all(&bb, "at the end").await;
        close(&engine, "q", "d").await.expect("close");
    });
});
