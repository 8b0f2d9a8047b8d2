//! Drained sections: in-flight requests finish before drain returns, new guest requests wait
//! until the section ends, sections nest, subtree drains cover children.

use crate::support;

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use engine::backend::BackendOptions;
use engine::env::Env;
use engine::io::{IoBuf, ReqFlags};
use serde_json::json;
use support::{Op, add_mem, mem, run};

/// Let every runnable task run: virtual time only moves when nothing else can.
async fn settle(env: &Rc<dyn Env>) {
    env.sleep_until(env.now_ns() + 1_000_000).await;
}

#[test]
fn drain_waits_for_requests_in_flight_and_holds_new_ones_back() {
    for seed in 0..8 {
        run(seed, |engine| async move {
            let env = engine.env().clone();
            let node = add_mem(&engine, "m", json!({})).await;
            let bb = engine
                .device_add("d", "m", BackendOptions::guest_device(false, false))
                .unwrap();
            let m = mem("m");
            m.gate_closed.set(true);
            let done = Rc::new(Cell::new(0));
            for i in 0..4u64 {
                let (bb, done) = (bb.clone(), done.clone());
                env.spawn(
                    "writer",
                    Box::pin(async move {
                        let (_, r) = bb
                            .write(i * 4096, IoBuf::filled(4096, i as u8 + 1), ReqFlags::NONE)
                            .await;
                        r.unwrap();
                        done.set(done.get() + 1);
                    }),
                );
            }
            settle(&env).await;
            assert_eq!(m.held.get(), 4, "all four writes are in the driver");

            let drained = Rc::new(RefCell::new(None));
            {
                let (node, drained) = (node.clone(), drained.clone());
                env.spawn(
                    "drainer",
                    Box::pin(async move {
                        let section = node.drained_begin().await;
                        *drained.borrow_mut() = Some(section);
                    }),
                );
            }
            settle(&env).await;
            assert!(
                drained.borrow().is_none(),
                "drain must wait for in-flight requests"
            );
            assert!(bb.is_quiesced(), "the device was told to stop");
            m.open_gate();
            settle(&env).await;
            assert!(drained.borrow().is_some(), "drain completes once idle");
            assert_eq!(done.get(), 4);
            assert_eq!(node.in_flight(), 0);

            // A guest write issued inside the section must not reach the node.
            m.take_log();
            let late = Rc::new(Cell::new(false));
            {
                let (bb, late) = (bb.clone(), late.clone());
                env.spawn(
                    "late writer",
                    Box::pin(async move {
                        let (_, r) = bb.write(0, IoBuf::filled(512, 9), ReqFlags::NONE).await;
                        r.unwrap();
                        late.set(true);
                    }),
                );
            }
            settle(&env).await;
            assert!(m.take_log().is_empty(), "no request reaches a drained node");
            assert!(!late.get());
            drained.borrow_mut().take().unwrap().end();
            settle(&env).await;
            assert!(late.get(), "queued request runs after the section ends");
            assert_eq!(m.take_log(), vec![Op::Write(0, 512, ReqFlags::NONE)]);
        });
    }
}

#[test]
fn drained_sections_nest_and_subtree_drain_covers_children() {
    run(11, |engine| async move {
        let env = engine.env().clone();
        add_mem(&engine, "m", json!({})).await;
        let raw = engine
            .blockdev_add(json!({"driver": "raw", "node-name": "r", "file": "m"}))
            .await
            .unwrap();
        let bb = engine
            .device_add("d", "r", BackendOptions::guest_device(false, false))
            .unwrap();
        let m = engine.node("m").unwrap();

        let outer = raw.subtree_drained_begin().await;
        assert_eq!(
            (raw.quiesce_counter(), m.quiesce_counter()),
            (2, 1),
            "m quiesces r again"
        );
        let inner = m.drained_begin().await;
        assert!(bb.is_quiesced());
        drop(outer);
        assert!(
            m.is_quiesced() && raw.is_quiesced() && bb.is_quiesced(),
            "inner section still holds"
        );

        let wrote = Rc::new(Cell::new(false));
        {
            let (bb, wrote) = (bb.clone(), wrote.clone());
            env.spawn(
                "w",
                Box::pin(async move {
                    let (_, r) = bb.write(0, IoBuf::filled(512, 1), ReqFlags::NONE).await;
                    r.unwrap();
                    wrote.set(true);
                }),
            );
        }
        settle(&env).await;
        assert!(!wrote.get());
        inner.end();
        assert_eq!((raw.quiesce_counter(), m.quiesce_counter()), (0, 0));
        settle(&env).await;
        assert!(wrote.get());

        // drain_all quiesces everything and balances.
        let all = engine.graph().drain_all().await;
        assert!(raw.is_quiesced() && m.is_quiesced() && bb.is_quiesced());
        drop(all);
        assert!(!raw.is_quiesced() && !m.is_quiesced() && !bb.is_quiesced());
    });
}
