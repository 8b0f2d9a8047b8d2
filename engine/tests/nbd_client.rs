//! The `nbd` client driver through network faults: requests wait while it reconnects within
//! `reconnect-delay` and are sent again; past the delay they fail with `EIO`; `open-timeout`
//! waits for a server that is not up yet.

use std::rc::Rc;

use engine::io::{IoBuf, ReqFlags};
use serde_json::json;

use crate::nbd_support::*;
use engine::env::Env;

use crate::support::mem;

/// A sim test with access to the simulator's network for faults.
fn run_net<F: std::future::Future<Output = ()> + 'static>(
    seed: u64,
    body: impl FnOnce(Rc<engine::Engine>, sim::SimNet, sim::SimEnv) -> F,
) {
    let sim = sim::Sim::new(seed, sim::SimConfig::default());
    let engine = Rc::new(engine::Engine::new(sim.env().as_env()));
    engine
        .graph()
        .register_driver("testmem", crate::support::open_testmem);
    let fut = body(engine, sim.net().clone(), sim.env());
    sim.block_on(fut).unwrap();
}

#[test]
fn requests_survive_a_reset_within_reconnect_delay() {
    run_net(21, |engine, net, _env| async move {
        serve_mem(&engine, 1 << 20, true).await;
        add_client(&engine, "c0", json!({"reconnect-delay": 5})).await;
        let dev = engine
            .device_add("d0", "c0", engine::backend::BackendOptions::tool(false))
            .unwrap();
        dev.write(0, IoBuf::filled(4096, 3), ReqFlags::NONE)
            .await
            .1
            .unwrap();
        assert_eq!(net.reset_now(&addr()), 1);
        // Cut the next write mid-message: it is sent again on a new connection.
        net.reset_after(&addr(), 100);
        dev.write(4096, IoBuf::filled(4096, 4), ReqFlags::NONE)
            .await
            .1
            .unwrap();
        dev.flush().await.unwrap();
        let data = mem("m0").data.borrow().clone();
        assert!(data[..4096].iter().all(|&b| b == 3));
        assert!(data[4096..8192].iter().all(|&b| b == 4));
    });
}

#[test]
fn requests_fail_with_eio_once_reconnect_delay_is_over() {
    run_net(22, |engine, net, env| async move {
        serve_mem(&engine, 1 << 20, true).await;
        add_client(&engine, "c0", json!({"reconnect-delay": 2})).await;
        let dev = engine
            .device_add("d0", "c0", engine::backend::BackendOptions::tool(false))
            .unwrap();
        net.refuse(&addr());
        net.drop_links(&addr());
        let t0 = env.now_ns();
        let (_, r) = dev.read(0, IoBuf::new(512)).await;
        assert_eq!(r.unwrap_err().errno(), Some(engine::Errno::EIO));
        let waited = env.now_ns() - t0;
        assert!(
            (2_000_000_000..3_000_000_000).contains(&waited),
            "waited {waited} ns"
        );
        // The server is reachable again: the next request reconnects.
        net.heal(&addr());
        let (_, r) = dev.read(0, IoBuf::new(512)).await;
        r.unwrap();
    });
}

#[test]
fn a_partition_holds_requests_until_it_heals() {
    run_net(23, |engine, net, env| async move {
        serve_mem(&engine, 1 << 20, true).await;
        add_client(&engine, "c0", json!({})).await;
        let dev = engine
            .device_add("d0", "c0", engine::backend::BackendOptions::tool(false))
            .unwrap();
        net.partition(&addr());
        let healer = {
            let (net, env2) = (net.clone(), env.clone());
            async move {
                env2.sleep(3_000_000_000).await;
                net.heal(&addr());
            }
        };
        Env::spawn(&env, "heal", Box::pin(healer));
        dev.write(0, IoBuf::filled(512, 8), ReqFlags::NONE)
            .await
            .1
            .unwrap();
        assert!(env.now_ns() >= 3_000_000_000);
        assert_eq!(mem("m0").data.borrow()[0], 8);
    });
}

#[test]
fn open_timeout_waits_for_the_server() {
    run_net(24, |engine, _net, env| async move {
        let later = {
            let (engine, env2) = (engine.clone(), env.clone());
            async move {
                env2.sleep(1_500_000_000).await;
                serve_mem(&engine, 1 << 20, true).await;
            }
        };
        Env::spawn(&env, "server", Box::pin(later));
        let r = add_client(&engine, "c0", json!({"open-timeout": 5})).await;
        assert_eq!(r, json!({"return": {}}));
        assert!(env.now_ns() >= 1_500_000_000);
    });
}

/// A write resent after a reconnect, while the dead connection's copy still runs in the server,
/// waits for that copy: the next write to the range can never be overwritten by it.
#[test]
fn a_resent_write_never_lands_under_its_dead_copy() {
    run_net(25, |engine, net, env| async move {
        serve_mem(&engine, 1 << 20, true).await;
        add_client(&engine, "c0", json!({"reconnect-delay": 5})).await;
        let opts = engine::backend::BackendOptions::tool(false);
        let dev = engine.device_add("d0", "c0", opts).unwrap();
        let m0 = mem("m0");
        m0.hold_next.set(true);
        let done = Rc::new(std::cell::Cell::new(false));
        {
            let (dev, done) = (dev.clone(), done.clone());
            env.spawn(
                "first",
                Box::pin(async move {
                    // Acked only once written; then a second write to the same range.
                    dev.write(0, IoBuf::filled(4096, 1), ReqFlags::NONE)
                        .await
                        .1
                        .unwrap();
                    dev.write(0, IoBuf::filled(4096, 2), ReqFlags::NONE)
                        .await
                        .1
                        .unwrap();
                    done.set(true);
                }),
            );
        }
        while m0.held.get() == 0 {
            env.sleep(1_000_000).await;
        }
        // The server runs the first write; its connection dies; the client sends it again.
        assert_eq!(net.reset_now(&addr()), 1);
        env.sleep(50_000_000).await;
        m0.release_held();
        while !done.get() {
            env.sleep(1_000_000).await;
        }
        dev.flush().await.unwrap();
        assert!(
            m0.data.borrow()[..4096].iter().all(|&b| b == 2),
            "the dead connection's copy landed over a later write"
        );
    });
}
