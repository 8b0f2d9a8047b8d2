//! The generic request path: read-modify-write under concurrency, max_transfer splitting,
//! flush de-duplication, FUA emulation, detect-zeroes, the write threshold, bounds.

use crate::support;

use std::cell::RefCell;
use std::rc::Rc;

use engine::backend::BackendOptions;
use engine::env::Env;
use engine::io::{IoBuf, ReqFlags};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use serde_json::json;
use support::{Op, add_mem, mem, run};

async fn settle(env: &Rc<dyn Env>) {
    env.sleep_until(env.now_ns() + 1_000_000).await;
}

#[test]
fn unaligned_overlapping_writes_are_serialised_by_read_modify_write() {
    for seed in 0..24u64 {
        run(seed, |engine| async move {
            let env = engine.env().clone();
            // The simulated disk completes requests after seeded random latencies, so the read
            // and the write of each read-modify-write really interleave with other requests.
            let create = engine::env::OpenOptions {
                write: true,
                create: true,
                ..Default::default()
            };
            let file = env.fs().open("disk", create).unwrap();
            file.set_len(8192).await.unwrap();
            drop(file);
            engine
                .blockdev_add(
                    json!({"driver": "file", "node-name": "f", "filename": "disk",
                    "cache": {"direct": true}}),
                )
                .await
                .unwrap();
            assert_eq!(engine.node("f").unwrap().limits().request_align, 512);
            let bb = engine
                .device_add("d", "f", BackendOptions::tool(false))
                .unwrap();
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let completed: Rc<RefCell<Vec<(u64, u64, u8)>>> = Rc::default();
            for i in 0..12u8 {
                let offset = rng.next_u64() % 3000;
                let len = 1 + rng.next_u64() % 1500;
                let (bb, completed) = (bb.clone(), completed.clone());
                env.spawn(
                    "w",
                    Box::pin(async move {
                        let (_, r) = bb
                            .write(offset, IoBuf::filled(len as usize, i + 1), ReqFlags::NONE)
                            .await;
                        r.unwrap();
                        completed.borrow_mut().push((offset, len, i + 1));
                    }),
                );
            }
            while completed.borrow().len() < 12 {
                settle(&env).await;
            }
            // Serialised writes are equivalent to applying them one by one in completion order;
            // an unserialised RMW would write back stale bytes around another write.
            let mut model = vec![0u8; 8192];
            for (off, len, pat) in completed.borrow().iter() {
                model[*off as usize..(*off + *len) as usize].fill(*pat);
            }
            assert_eq!(completed.borrow().len(), 12);
            let (buf, r) = bb.read(0, IoBuf::new(8192)).await;
            r.unwrap();
            assert!(
                buf.as_slice() == &model[..],
                "seed {seed}: data differs from every serial order"
            );
        });
    }
}

#[test]
fn requests_are_split_at_max_transfer_and_aligned() {
    run(1, |engine| async move {
        add_mem(
            &engine,
            "m",
            json!({"align": 512, "max-transfer": 4096, "size": 65536}),
        )
        .await;
        let bb = engine
            .device_add("d", "m", BackendOptions::tool(false))
            .unwrap();
        let m = mem("m");
        let data: Vec<u8> = (0..20000u32).map(|i| (i % 251) as u8).collect();
        let (_, r) = bb
            .write(700, IoBuf::from_slice(&data), ReqFlags::NONE)
            .await;
        r.unwrap();
        let writes: Vec<(u64, u64)> = m
            .take_log()
            .into_iter()
            .filter_map(|op| {
                if let Op::Write(o, l, _) = op {
                    Some((o, l))
                } else {
                    None
                }
            })
            .collect();
        assert_eq!(writes.len(), 5, "{writes:?}");
        let mut pos = 512;
        for (o, l) in &writes {
            assert_eq!(*o, pos, "contiguous pieces");
            assert!(*l <= 4096);
            pos += l;
        }
        assert_eq!(pos, 20992, "padded to alignment: [512, 20992)");
        let (buf, r) = bb.read(700, IoBuf::new(20000)).await;
        r.unwrap();
        assert_eq!(buf.as_slice(), &data[..]);
        assert!(
            m.take_log()
                .iter()
                .all(|op| matches!(op, Op::Read(_, l) if *l <= 4096))
        );
    });
}

#[test]
fn a_flush_with_nothing_new_written_is_free() {
    run(2, |engine| async move {
        add_mem(&engine, "m", json!({})).await;
        engine
            .blockdev_add(json!({"driver": "raw", "node-name": "r", "file": "m"}))
            .await
            .unwrap();
        let bb = engine
            .device_add("d", "r", BackendOptions::tool(false))
            .unwrap();
        let m = mem("m");
        let flushes =
            |m: &support::MemState| m.take_log().iter().filter(|o| **o == Op::Flush).count();
        bb.flush().await.unwrap();
        assert_eq!(flushes(&m), 0, "nothing written yet");
        let (_, r) = bb.write(0, IoBuf::filled(512, 1), ReqFlags::NONE).await;
        r.unwrap();
        bb.flush().await.unwrap();
        assert_eq!(flushes(&m), 1);
        bb.flush().await.unwrap();
        bb.flush().await.unwrap();
        assert_eq!(flushes(&m), 0, "de-duplicated");
        let (_, r) = bb.write(0, IoBuf::filled(512, 2), ReqFlags::NONE).await;
        r.unwrap();
        bb.flush().await.unwrap();
        assert_eq!(flushes(&m), 1);
        assert_eq!(engine.node("r").unwrap().with_stats(|s| s.flush.ops), 5);
    });
}

#[test]
fn fua_is_passed_down_or_emulated_with_a_flush() {
    run(3, |engine| async move {
        add_mem(&engine, "yes", json!({"fua": true})).await;
        add_mem(&engine, "no", json!({"fua": false})).await;
        let a = engine
            .device_add("a", "yes", BackendOptions::tool(false))
            .unwrap();
        let b = engine
            .device_add("b", "no", BackendOptions::tool(false))
            .unwrap();
        let (_, r) = a.write(0, IoBuf::filled(512, 1), ReqFlags::FUA).await;
        r.unwrap();
        assert_eq!(
            mem("yes").take_log(),
            vec![Op::Write(0, 512, ReqFlags::FUA)]
        );
        let (_, r) = b.write(0, IoBuf::filled(512, 1), ReqFlags::FUA).await;
        r.unwrap();
        assert_eq!(
            mem("no").take_log(),
            vec![Op::Write(0, 512, ReqFlags::NONE), Op::Flush]
        );
        // Writethrough turns every write into FUA.
        b.set_write_cache(false);
        let (_, r) = b.write(512, IoBuf::filled(512, 1), ReqFlags::NONE).await;
        r.unwrap();
        assert_eq!(
            mem("no").take_log(),
            vec![Op::Write(512, 512, ReqFlags::NONE), Op::Flush]
        );
    });
}

#[test]
fn detect_zeroes_turns_zero_writes_into_write_zeroes() {
    run(4, |engine| async move {
        add_mem(&engine, "off", json!({})).await;
        add_mem(&engine, "on", json!({"detect-zeroes": "on"})).await;
        add_mem(
            &engine,
            "unmap",
            json!({"detect-zeroes": "unmap", "discard": "unmap"}),
        )
        .await;
        for (name, want) in [
            ("off", Op::Write(0, 4096, ReqFlags::NONE)),
            ("on", Op::Zeroes(0, 4096, ReqFlags::NONE)),
            ("unmap", Op::Zeroes(0, 4096, ReqFlags::MAY_UNMAP)),
        ] {
            let bb = engine
                .device_add(&format!("d{name}"), name, BackendOptions::tool(false))
                .unwrap();
            let (_, r) = bb.write(0, IoBuf::new(4096), ReqFlags::NONE).await;
            r.unwrap();
            assert_eq!(mem(name).take_log(), vec![want], "{name}");
            // Non-zero data is written as data.
            let (_, r) = bb.write(0, IoBuf::filled(4096, 3), ReqFlags::NONE).await;
            r.unwrap();
            assert_eq!(
                mem(name).take_log(),
                vec![Op::Write(0, 4096, ReqFlags::NONE)],
                "{name}"
            );
        }
    });
}

#[test]
fn write_zeroes_falls_back_to_buffers_and_handles_unaligned_edges() {
    run(5, |engine| async move {
        add_mem(
            &engine,
            "m",
            json!({"align": 512, "zeroes": false, "size": 16384}),
        )
        .await;
        let bb = engine
            .device_add("d", "m", BackendOptions::tool(false))
            .unwrap();
        let (_, r) = bb
            .write(0, IoBuf::filled(16384, 0xff), ReqFlags::NONE)
            .await;
        r.unwrap();
        bb.write_zeroes(100, 5000, ReqFlags::NONE).await.unwrap();
        let data = mem("m").data.borrow().clone();
        assert!(data[..100].iter().all(|&b| b == 0xff));
        assert!(data[100..5100].iter().all(|&b| b == 0));
        assert!(data[5100..].iter().all(|&b| b == 0xff));
        let err = bb
            .write_zeroes(0, 4096, ReqFlags::NO_FALLBACK)
            .await
            .unwrap_err();
        assert_eq!(err.errno(), Some(engine::Errno::ENOTSUP));
    });
}

#[test]
fn write_threshold_fires_once_past_the_mark() {
    run(6, |engine| async move {
        add_mem(&engine, "m", json!({})).await;
        let bb = engine
            .device_add("d", "m", BackendOptions::tool(false))
            .unwrap();
        engine.set_write_threshold("m", 8192).unwrap();
        let (_, r) = bb.write(0, IoBuf::filled(8192, 1), ReqFlags::NONE).await;
        r.unwrap();
        assert!(
            engine.take_events().is_empty(),
            "ending exactly at the threshold does not fire"
        );
        let (_, r) = bb.write(8000, IoBuf::filled(1000, 1), ReqFlags::NONE).await;
        r.unwrap();
        let events = engine.take_events();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].name, "BLOCK_WRITE_THRESHOLD");
        assert_eq!(
            events[0].data,
            json!({"node-name": "m", "amount-exceeded": 808, "write-threshold": 8192})
        );
        let (_, r) = bb.write(9000, IoBuf::filled(1000, 1), ReqFlags::NONE).await;
        r.unwrap();
        assert!(engine.take_events().is_empty(), "one-shot");
    });
}

#[test]
fn guest_requests_past_the_end_fail_with_eio_and_node_reads_past_eof_are_zero() {
    run(7, |engine| async move {
        add_mem(&engine, "m", json!({"size": 4096})).await;
        let bb = engine
            .device_add("d", "m", BackendOptions::tool(false))
            .unwrap();
        let (_, r) = bb.read(4000, IoBuf::new(200)).await;
        assert_eq!(r.unwrap_err().errno(), Some(engine::Errno::EIO));
        let (_, r) = bb.write(4096, IoBuf::new(1), ReqFlags::NONE).await;
        assert_eq!(r.unwrap_err().errno(), Some(engine::Errno::EIO));
        let (buf, r) = bb
            .root()
            .unwrap()
            .read(4000, IoBuf::filled(200, 9), ReqFlags::NONE)
            .await;
        r.unwrap();
        assert!(
            buf.as_slice()[96..].iter().all(|&b| b == 0),
            "past EOF reads as zeroes"
        );
    });
}

#[test]
fn dropped_request_futures_leave_no_request_counted_in_flight() {
    run(8, |engine| async move {
        let env = engine.env().clone();
        let node = add_mem(&engine, "m", json!({})).await;
        let bb = engine
            .device_add("d", "m", BackendOptions::tool(false))
            .unwrap();
        mem("m").gate_closed.set(true);
        {
            let bb2 = bb.clone();
            let fut =
                Box::pin(async move { bb2.write(0, IoBuf::filled(512, 1), ReqFlags::NONE).await });
            let mut fut = fut;
            // Poll once through a select-like race against a short sleep, then drop it.
            let sleep = env.sleep_until(env.now_ns() + 1000);
            futures_lite_race(&mut fut, sleep).await;
        }
        assert_eq!(node.in_flight(), 0);
        assert_eq!(node.tracked_len(), 0);
        mem("m").open_gate();
        let _section = node.drained_begin().await;
    });
}

/// Poll `a` until `b` completes, then give up on `a`.
async fn futures_lite_race<A: std::future::Future + Unpin>(
    a: &mut A,
    b: engine::env::LocalBoxFuture<'static, ()>,
) {
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    struct Race<'a, A> {
        a: &'a mut A,
        b: engine::env::LocalBoxFuture<'static, ()>,
    }
    impl<A: Future + Unpin> Future for Race<'_, A> {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            if Pin::new(&mut *self.a).poll(cx).is_ready() {
                return Poll::Ready(());
            }
            self.b.as_mut().poll(cx)
        }
    }
    Race { a, b }.await
}

#[test]
fn before_write_hooks_run_after_overlap_waits_and_can_fail_the_write() {
    use engine::graph::BeforeWrite;
    struct Hook {
        seen: RefCell<Vec<(u64, u64)>>,
        refuse_from: u64,
    }
    impl BeforeWrite for Hook {
        fn before_write(
            &self,
            offset: u64,
            len: u64,
        ) -> engine::env::LocalBoxFuture<'_, engine::Result<()>> {
            self.seen.borrow_mut().push((offset, len));
            let refuse = offset + len > self.refuse_from;
            Box::pin(async move {
                if refuse {
                    Err(engine::Error::io(engine::Errno::EPERM))
                } else {
                    Ok(())
                }
            })
        }
    }
    run(9, |engine| async move {
        let node = add_mem(&engine, "m", json!({"align": 512})).await;
        let bb = engine
            .device_add("d", "m", BackendOptions::tool(false))
            .unwrap();
        let hook = Rc::new(Hook {
            seen: RefCell::default(),
            refuse_from: 8192,
        });
        node.add_before_write(hook.clone());
        let (_, r) = bb.write(100, IoBuf::filled(1000, 1), ReqFlags::NONE).await;
        r.unwrap();
        bb.write_zeroes(4096, 4096, ReqFlags::NONE).await.unwrap();
        // The hook sees the aligned span the driver writes (after read-modify-write padding).
        assert_eq!(*hook.seen.borrow(), vec![(0, 1536), (4096, 4096)]);
        let (_, r) = bb.write(8000, IoBuf::filled(512, 2), ReqFlags::NONE).await;
        assert_eq!(r.unwrap_err().errno(), Some(engine::Errno::EPERM));
        assert!(
            mem("m").data.borrow()[8000..8512].iter().all(|&b| b == 0),
            "a refused write changes nothing"
        );
        let h: Rc<dyn BeforeWrite> = hook.clone();
        node.remove_before_write(&h);
        let (_, r) = bb.write(8000, IoBuf::filled(512, 2), ReqFlags::NONE).await;
        r.unwrap();
    });
}

#[test]
fn raw_windows_shift_offsets_and_refuse_to_leave_the_window() {
    run(10, |engine| async move {
        add_mem(&engine, "m", json!({"size": 65536})).await;
        engine
            .blockdev_add(json!({"driver": "raw", "node-name": "w", "file": "m", "offset": 4096, "size": 8192}))
            .await
            .unwrap();
        let bb = engine
            .device_add("d", "w", BackendOptions::tool(false))
            .unwrap();
        assert_eq!(bb.len().unwrap(), 8192);
        let (_, r) = bb.write(0, IoBuf::filled(8192, 0x77), ReqFlags::NONE).await;
        r.unwrap();
        let data = mem("m").data.borrow().clone();
        assert!(data[..4096].iter().all(|&b| b == 0) && data[12288..].iter().all(|&b| b == 0));
        assert!(data[4096..12288].iter().all(|&b| b == 0x77));
        // Through the node itself (no device bounds check), the window still holds.
        let root = bb.root().unwrap();
        let (_, r) = root
            .write(8000, IoBuf::filled(512, 1), ReqFlags::NONE)
            .await;
        assert_eq!(r.unwrap_err().errno(), Some(engine::Errno::ENOSPC));
        let err = engine
            .blockdev_add(json!({"driver": "raw", "node-name": "x", "file": "m", "offset": 65536, "size": 512}))
            .await
            .unwrap_err();
        assert!(
            err.message().contains("has to be smaller or equal"),
            "{err}"
        );
        let err = bb.truncate(4096).await.unwrap_err();
        assert!(
            err.message().contains("Cannot resize fixed-size raw disks"),
            "{err}"
        );
    });
}

#[test]
fn compressed_writes_fail_where_the_driver_cannot_compress() {
    run(11, |engine| async move {
        add_mem(&engine, "m", json!({})).await;
        engine
            .blockdev_add(json!({"driver": "raw", "node-name": "r", "file": "m"}))
            .await
            .unwrap();
        let bb = engine
            .device_add("d", "r", BackendOptions::tool(false))
            .unwrap();
        let (_, r) = bb
            .write(0, IoBuf::filled(65536, 1), ReqFlags::WRITE_COMPRESSED)
            .await;
        let err = r.unwrap_err();
        assert_eq!(err.errno(), Some(engine::Errno::ENOTSUP));
        assert!(
            err.message().contains("does not support compressed writes"),
            "{err}"
        );
        assert!(mem("m").take_log().is_empty(), "nothing reached the disk");
    });
}
