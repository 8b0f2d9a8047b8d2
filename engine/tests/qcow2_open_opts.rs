//! qcow2 runtime open options through `blockdev-add`: QEMU's validation messages, and the
//! options honoured (pass-discard-request discards freed clusters in the file, overlap-check
//! selects the checked structures, lazy-refcounts switches the mode); `--object` secrets in the
//! engine's object registry.

use crate::qcow2_support;

use std::rc::Rc;

use engine::backend::BackendOptions;
use engine::drivers::qcow2::{Compat, CreateOptions, cached_tables};
use engine::graph::Node;
use engine::io::{IoBuf, ReqFlags};
use qcow2_support::*;
use serde_json::{Value, json};
use sim::View;

fn be64(img: &[u8], off: u64) -> u64 {
    u64::from_be_bytes(img[off as usize..off as usize + 8].try_into().unwrap())
}

/// Create a qcow2 image "img" of `size` bytes (version `compat`) on the simulator and open it
/// as node "q" over node "f" with the `extra` top-level options.
async fn open_fresh(
    engine: &engine::Engine,
    size: u64,
    compat: Compat,
    extra: Value,
) -> engine::Result<Rc<Node>> {
    let opts = CreateOptions {
        size,
        compat,
        ..CreateOptions::default()
    };
    create_on(engine, "img", &opts).await;
    let mut spec = json!({"driver": "qcow2", "node-name": "q", "file": "f"});
    for (k, v) in extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    engine.blockdev_add(spec).await
}

/// `blockdev-add` of a fresh 8 MiB qcow2 image (version `compat`) with extra top options; the
/// error message, if it fails.
fn add_with(compat: Compat, extra: Value) -> Result<(), String> {
    let sim = sim_with(5, &[("img", Vec::new())]);
    let engine = engine_of(&sim);
    sim.block_on(async move {
        let r = open_fresh(&engine, 8 << 20, compat, extra).await.map(drop);
        engine.shutdown().await.unwrap();
        r.map_err(|e| e.message().to_string())
    })
    .unwrap()
}

#[test]
fn options_are_validated_with_qemu_messages() {
    let v3 = |extra| add_with(Compat::V3, extra);
    assert_eq!(
        v3(json!({"cache-size": "1M", "l2-cache-size": "1M", "refcount-cache-size": "1M"})),
        Err(
            "cache-size, l2-cache-size and refcount-cache-size may not be set at the same time"
                .into()
        )
    );
    assert_eq!(
        v3(json!({"cache-size": "1M", "refcount-cache-size": "2M"})),
        Err("refcount-cache-size may not exceed cache-size".into())
    );
    assert_eq!(
        v3(json!({"overlap-check": "bogus"})),
        Err(
            "Unsupported value 'bogus' for qcow2 option 'overlap-check'. Allowed are any of the \
             following: none, constant, cached, all"
                .into()
        )
    );
    assert_eq!(
        v3(json!({"cache-clean-interval": "-1"})),
        Err("Cache clean interval too big".into())
    );
    assert_eq!(
        v3(json!({"lazy-refcounts": "x"})),
        Err("Parameter 'lazy-refcounts' expects 'on' or 'off'".into())
    );
    assert_eq!(
        add_with(Compat::V2, json!({"lazy-refcounts": true})),
        Err(
            "Lazy refcounts require a qcow2 image with at least qemu 1.1 compatibility level"
                .into()
        )
    );
    let ok = json!({"cache-size": "2M", "l2-cache-size": "1M", "lazy-refcounts": "on",
        "pass-discard-request": "off", "pass-discard-snapshot": true, "pass-discard-other": "on",
        "overlap-check": {"template": "all", "inactive-l2": false}, "cache-clean-interval": 30});
    assert_eq!(v3(ok), Ok(()));
}

/// Host bytes allocated after writing 192 KiB and discarding the middle 64 KiB with
/// `pass-discard-request` set to `pass`.
fn allocated_after_discard(pass: bool) -> u64 {
    let sim = sim_with(9, &[("img", Vec::new())]);
    let engine = engine_of(&sim);
    let simr = &sim;
    sim.block_on(async move {
        create_on(
            &engine,
            "img",
            &CreateOptions {
                size: 1 << 20,
                ..CreateOptions::default()
            },
        )
        .await;
        // The file node must pass discards on too (its own default is to ignore them).
        engine.blockdev_del("f").await.unwrap();
        engine
            .blockdev_add(
                json!({"driver": "qcow2", "node-name": "q", "discard": "unmap",
                "pass-discard-request": pass,
                "file": {"driver": "file", "filename": "img", "discard": "unmap"}}),
            )
            .await
            .unwrap();
        let bb = engine
            .device_add("d", "q", BackendOptions::tool(false))
            .unwrap();
        bb.write(0, IoBuf::filled(192 << 10, 0x5a), ReqFlags::NONE)
            .await
            .1
            .unwrap();
        bb.flush().await.unwrap();
        bb.discard(64 << 10, 64 << 10).await.unwrap();
        bb.flush().await.unwrap();
        let (buf, r) = bb.read(0, IoBuf::new(192 << 10)).await;
        r.unwrap();
        let data = buf.as_slice();
        assert!(data[..64 << 10].iter().all(|&b| b == 0x5a));
        assert!(data[64 << 10..128 << 10].iter().all(|&b| b == 0));
        assert!(data[128 << 10..].iter().all(|&b| b == 0x5a));
        engine.shutdown().await.unwrap();
        simr.fs().allocated_bytes()
    })
    .unwrap()
}

#[test]
fn pass_discard_request_discards_freed_clusters_in_the_file() {
    let kept = allocated_after_discard(false);
    let passed = allocated_after_discard(true);
    assert_eq!(kept - passed, 64 << 10, "kept {kept}, passed {passed}");
}

/// Guest cluster 10 of a qemu-written image pointed at the image's first refcount block; a
/// write there with `overlap-check` = `mode`: Ok, or the error.
fn write_over_refblock(mode: &str) -> Result<(), String> {
    let dir = Scratch::new(&format!("open-opts-overlap-{mode}"));
    dir.run(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "o.qcow2", "4M"],
    );
    dir.run(
        "qemu-io",
        &["-f", "qcow2", "-c", "write -P 0x11 0 64k", "o.qcow2"],
    );
    let mut img = dir.read("o.qcow2");
    let l2 = be64(&img, be64(&img, 40)) & 0x00ff_ffff_ffff_fe00;
    let refblock = be64(&img, be64(&img, 48)) & 0x00ff_ffff_ffff_fe00;
    let o = (l2 + 80) as usize;
    img[o..o + 8].copy_from_slice(&((1u64 << 63) | refblock).to_be_bytes());
    let sim = sim_with(11, &[("o.qcow2", img)]);
    let engine = engine_of(&sim);
    let mode = mode.to_string();
    sim.block_on(async move {
        engine
            .blockdev_add(
                json!({"driver": "qcow2", "node-name": "q", "overlap-check": mode,
                "file": {"driver": "file", "filename": "o.qcow2"}}),
            )
            .await
            .unwrap();
        let bb = engine
            .device_add("d", "q", BackendOptions::tool(false))
            .unwrap();
        let (_, r) = bb
            .write(10 * 65536, IoBuf::filled(4096, 0xee), ReqFlags::NONE)
            .await;
        let _ = engine.shutdown().await;
        r.map_err(|e| e.message().to_string())
    })
    .unwrap()
}

#[test]
fn overlap_check_selects_the_checked_structures() {
    if !have_qemu() {
        return;
    }
    // Refcount blocks are in the "cached" set (the default), not in "constant".
    let e = write_over_refblock("cached").unwrap_err();
    assert!(e.contains("overlaps with refcount block"), "{e}");
    assert_eq!(write_over_refblock("constant"), Ok(()));
    assert_eq!(write_over_refblock("none"), Ok(()));
}

#[test]
fn lazy_refcounts_option_switches_the_mode() {
    // Without the header bit, lazy-refcounts=on still defers refcounts: the dirty bit is set
    // before the first write and cleared on a clean close.
    let dir = Scratch::new("open-opts-lazy");
    let sim = sim_with(3, &[("img", Vec::new())]);
    let engine = engine_of(&sim);
    let (simr, dirr) = (&sim, &dir);
    sim.block_on(async move {
        open_fresh(
            &engine,
            8 << 20,
            Compat::V3,
            json!({"lazy-refcounts": "on"}),
        )
        .await
        .unwrap();
        let bb = engine
            .device_add("d", "q", BackendOptions::tool(false))
            .unwrap();
        bb.write(0, IoBuf::filled(4096, 1), ReqFlags::NONE)
            .await
            .1
            .unwrap();
        export(simr, "img", View::Durable, dirr, "a");
        assert_eq!(dirr.read("a")[79] & 1, 1, "dirty bit set by the lazy mode");
        engine.shutdown().await.unwrap();
        export(simr, "img", View::Durable, dirr, "b");
        assert_eq!(dirr.read("b")[79] & 1, 0, "clean close clears it");
    })
    .unwrap();
}

#[test]
fn secrets_live_in_the_object_registry() {
    let sim = sim_with(1, &[("key.txt", b"c2VjcmV0".to_vec())]);
    let engine = engine_of(&sim);
    sim.block_on(async move {
        let add = |v: Value| engine.object_add(v);
        add(json!({"qom-type": "secret", "id": "s0", "data": "pw"}))
            .await
            .unwrap();
        add(json!({"qom-type": "secret", "id": "s1", "file": "key.txt", "format": "base64"}))
            .await
            .unwrap();
        assert_eq!(engine.objects().secret("s0").unwrap(), b"pw");
        assert_eq!(engine.objects().secret("s1").unwrap(), b"secret");
        let err = |v: Value| async { add(v).await.unwrap_err().message().to_string() };
        assert_eq!(
            err(json!({"qom-type": "secret", "id": "s0", "data": "x"})).await,
            "attempt to add duplicate property 's0' to object (type 'container')"
        );
        assert_eq!(
            err(json!({"qom-type": "secret", "id": "s2"})).await,
            "Either 'file' or 'data' must be provided"
        );
        assert_eq!(
            err(json!({"qom-type": "secret", "id": "s2", "data": "x", "format": "hex"})).await,
            "Parameter 'format' does not accept value 'hex'"
        );
        assert_eq!(
            err(json!({"qom-type": "bogus", "id": "x"})).await,
            "Parameter 'qom-type' does not accept value 'bogus'"
        );
        assert_eq!(
            engine.objects().secret("nope").unwrap_err().message(),
            "No secret with id 'nope'"
        );
        engine.objects().remove("s0").unwrap();
        assert!(engine.objects().secret("s0").is_err());
    })
    .unwrap();
}

/// Tables cached by node "q" after a read that loads an L2 table and a write that loads a
/// refcount block, then after `idle_s` idle seconds, with `cache-clean-interval` = `interval`.
fn cached_after_idle(interval: Option<u64>, idle_s: u64) -> ((usize, usize), (usize, usize)) {
    let sim = sim_with(4, &[("img", Vec::new())]);
    let engine = engine_of(&sim);
    sim.block_on(async move {
        let extra = match interval {
            Some(i) => json!({"cache-clean-interval": i}),
            None => json!({}),
        };
        let node = open_fresh(&engine, 8 << 20, Compat::V3, extra)
            .await
            .unwrap();
        let bb = engine
            .device_add("d", "q", BackendOptions::tool(false))
            .unwrap();
        bb.write(0, IoBuf::filled(4096, 7), ReqFlags::NONE)
            .await
            .1
            .unwrap();
        bb.flush().await.unwrap();
        let before = cached_tables(&node).unwrap();
        let env = engine.env().clone();
        env.sleep_until(env.now_ns() + idle_s * 1_000_000_000).await;
        let after = cached_tables(&node).unwrap();
        // Still readable after the tables were dropped (they are loaded again).
        let (buf, r) = bb.read(0, IoBuf::new(4096)).await;
        r.unwrap();
        assert!(buf.as_slice().iter().all(|&b| b == 7));
        engine.shutdown().await.unwrap();
        (before, after)
    })
    .unwrap()
}

#[test]
fn cache_clean_interval_drops_tables_unused_for_an_interval() {
    let (before, after) = cached_after_idle(Some(1), 3);
    assert!(before.0 >= 1 && before.1 >= 1, "{before:?}");
    assert_eq!(after, (0, 0));
    // One round at 2 s: the tables were used during the interval before it, so they stay.
    let (_, after) = cached_after_idle(Some(2), 3);
    assert_eq!(after, before);
    // Without the option nothing is dropped.
    let (_, after) = cached_after_idle(None, 3);
    assert_eq!(after, before);
}

/// L2 tables cached after writing one cluster in each of the 4 L2 ranges of a 2 GiB image.
fn l2_tables_cached(extra: Value) -> usize {
    let sim = sim_with(6, &[("img", Vec::new())]);
    let engine = engine_of(&sim);
    sim.block_on(async move {
        let node = open_fresh(&engine, 2 << 30, Compat::V3, extra)
            .await
            .unwrap();
        let bb = engine
            .device_add("d", "q", BackendOptions::tool(false))
            .unwrap();
        for i in 0..4u64 {
            bb.write(i << 29, IoBuf::filled(4096, 1), ReqFlags::NONE)
                .await
                .1
                .unwrap();
        }
        let n = cached_tables(&node).unwrap().0;
        engine.shutdown().await.unwrap();
        n
    })
    .unwrap()
}

#[test]
fn cache_size_options_size_the_l2_cache() {
    // By default the L2 cache covers the whole disk (4 tables for 2 GiB of 64 KiB clusters).
    assert_eq!(l2_tables_cached(json!({})), 4);
    assert_eq!(l2_tables_cached(json!({"l2-cache-size": "128k"})), 2);
    // A combined 448 KiB: four blocks (256 KiB) for refcounts first, 192 KiB (3) for L2.
    assert_eq!(l2_tables_cached(json!({"cache-size": "448k"})), 3);
    assert_eq!(
        l2_tables_cached(json!({"cache-size": "1M", "refcount-cache-size": "896k"})),
        2
    );
}

/// The options a reopen sets: lazy refcounts on (the dirty bit comes with the next write), off
/// again (the image is marked clean at once), a smaller L2 cache (tables beyond it dropped),
/// and refusals that change nothing.
#[test]
fn reopen_sets_the_runtime_options_anew() {
    let dir = Scratch::new("open-opts-reopen");
    let sim = sim_with(6, &[("img", Vec::new())]);
    let engine = engine_of(&sim);
    let (simr, dirr) = (&sim, &dir);
    sim.block_on(async move {
        let node = open_fresh(&engine, 4 << 30, Compat::V3, json!({}))
            .await
            .unwrap();
        let bb = engine
            .device_add("d", "q", BackendOptions::tool(false))
            .unwrap();
        let reopen = |text: &str| {
            let opts = engine::util::Options::from_keyval(text).unwrap();
            engine::graph::reopen_options(&node, opts, Default::default())
        };
        let dirty = |name: &str| {
            export(simr, "img", View::Durable, dirr, name);
            dirr.read(name)[79] & 1
        };
        reopen("lazy-refcounts=on").await.unwrap();
        // With 64 KiB clusters an L2 table maps 512 MiB: four writes, four tables cached.
        for i in 0..4u64 {
            bb.write(i << 29, IoBuf::filled(4096, 3), ReqFlags::NONE)
                .await
                .1
                .unwrap();
        }
        assert_eq!(dirty("lazy-on"), 1, "the lazy mode set the dirty bit");
        assert!(
            cached_tables(&node).unwrap().0 >= 4,
            "{:?}",
            cached_tables(&node)
        );
        reopen("lazy-refcounts=off,l2-cache-size=64k")
            .await
            .unwrap();
        assert_eq!(
            dirty("lazy-off"),
            0,
            "turning lazy refcounts off marks the image clean"
        );
        // 64 KiB is one table; QEMU's floor of two applies.
        assert!(
            cached_tables(&node).unwrap().0 <= 2,
            "{:?}",
            cached_tables(&node)
        );
        let refused = [
            ("foo=1", "Cannot change the option 'foo'"),
            (
                "cache-size=1M,l2-cache-size=2M",
                "l2-cache-size may not exceed cache-size",
            ),
            (
                "lazy-refcounts=maybe",
                "Parameter 'lazy-refcounts' expects 'on' or 'off'",
            ),
        ];
        for (text, msg) in refused {
            let e = reopen(text).await.unwrap_err();
            assert_eq!(e.message(), msg);
        }
        // Still the options of the last successful reopen: no dirty bit from this write.
        bb.write(0, IoBuf::filled(4096, 4), ReqFlags::NONE)
            .await
            .1
            .unwrap();
        assert_eq!(dirty("after"), 0);
        let (buf, r) = bb.read(3 << 29, IoBuf::new(4096)).await;
        r.unwrap();
        assert!(buf.as_slice().iter().all(|&b| b == 3));
        engine.shutdown().await.unwrap();
    })
    .unwrap();
}

/// QMP `blockdev-reopen` with qcow2 options: given ones are set (lazy refcounts: the next
/// write sets the dirty bit), a reopen giving none leaves them, one giving others resets them
/// to the defaults, and a refused reopen (unknown option, bad value, a generic option) changes
/// nothing, the access mode included.
#[test]
fn blockdev_reopen_sets_qcow2_options_all_or_none() {
    let dir = Scratch::new("open-opts-blockdev-reopen");
    let sim = sim_with(7, &[("img", Vec::new())]);
    let engine = engine_of(&sim);
    let (simr, dirr) = (&sim, &dir);
    sim.block_on(async move {
        let node = open_fresh(&engine, 8 << 20, Compat::V3, json!({}))
            .await
            .unwrap();
        let bb = engine
            .device_add("d", "q", BackendOptions::tool(false))
            .unwrap();
        let dirty = |name: &str| {
            export(simr, "img", View::Durable, dirr, name);
            dirr.read(name)[79] & 1
        };
        let base = json!({"node-name": "q", "driver": "qcow2", "file": "f"});
        let with = |extra: Value| {
            let mut o = base.clone();
            for (k, v) in extra.as_object().unwrap() {
                o[k] = v.clone();
            }
            vec![o]
        };
        engine
            .blockdev_reopen(&with(json!({"lazy-refcounts": true})))
            .await
            .unwrap();
        bb.write(0, IoBuf::filled(4096, 1), ReqFlags::NONE)
            .await
            .1
            .unwrap();
        assert_eq!(dirty("a"), 1, "lazy refcounts are on");
        let refused = [
            (json!({"foo": 1}), "Cannot change the option 'foo'"),
            (
                json!({"lazy-refcounts": "maybe"}),
                "Parameter 'lazy-refcounts' expects 'on' or 'off'",
            ),
            (
                json!({"discard": "ignore"}),
                "Cannot change the option 'discard'",
            ),
            (
                json!({"read-only": true, "l2-cache-size": 100, "cache-size": 10}),
                "l2-cache-size may not exceed cache-size",
            ),
        ];
        for (extra, msg) in refused {
            let e = engine.blockdev_reopen(&with(extra)).await.unwrap_err();
            assert_eq!(e.message(), msg);
            assert!(
                !node.is_read_only(),
                "a refused reopen changed the access mode"
            );
        }
        // No driver option given: they stay (lazy still on, the image still dirty).
        engine.blockdev_reopen(&with(json!({}))).await.unwrap();
        bb.write(4096, IoBuf::filled(4096, 2), ReqFlags::NONE)
            .await
            .1
            .unwrap();
        assert_eq!(dirty("b"), 1);
        // Others given: lazy refcounts go back to the header's (off), the image is marked clean.
        engine
            .blockdev_reopen(&with(json!({"l2-cache-size": 65536})))
            .await
            .unwrap();
        assert_eq!(dirty("c"), 0);
        engine.shutdown().await.unwrap();
    })
    .unwrap();
}

/// `blockdev-del` of a backing node is refused with QEMU's op-blocker message naming the
/// overlay (qemu-storage-daemon: "Node 'base' is busy: node is used as backing hd of 'top'"),
/// and the node stays; once the overlay is gone it can be deleted.
#[test]
fn deleting_a_backing_node_names_the_overlay() {
    let sim = sim_with(8, &[("img", Vec::new()), ("top", Vec::new())]);
    let engine = engine_of(&sim);
    sim.block_on(async move {
        open_fresh(&engine, 1 << 20, Compat::V3, json!({}))
            .await
            .unwrap();
        let opts = CreateOptions {
            size: 1 << 20,
            ..CreateOptions::default()
        };
        engine
            .blockdev_add(json!({"driver": "file", "node-name": "tf", "filename": "top"}))
            .await
            .unwrap();
        let dev = engine
            .device_add("c", "tf", BackendOptions::tool(false))
            .unwrap();
        engine::drivers::qcow2::create(&dev.root().unwrap(), &opts)
            .await
            .unwrap();
        engine.device_del("c").await.unwrap();
        engine
            .blockdev_add(json!({"driver": "qcow2", "node-name": "t", "file": "tf",
                                 "backing": "q"}))
            .await
            .unwrap();
        let e = engine.blockdev_del("q").await.unwrap_err();
        assert_eq!(
            e.message(),
            "Node 'q' is busy: node is used as backing hd of 't'"
        );
        assert!(engine.node("q").is_ok());
        engine.blockdev_del("t").await.unwrap();
        engine.blockdev_del("q").await.unwrap();
        engine.shutdown().await.unwrap();
    })
    .unwrap();
}
