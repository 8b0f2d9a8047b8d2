//! Executor and clock: seeded interleavings, FIFO order, deadlock and livelock reports, timers.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use engine::env::Env;
use engine::util::{Notify, yield_now};
use sim::{LivelockReason, SchedulerMode, Sim, SimConfig, SimError};

fn config(mode: SchedulerMode) -> SimConfig {
    SimConfig {
        scheduler: mode,
        ..SimConfig::default()
    }
}

/// Spawn `tasks` tasks that each log `steps` turns, yielding between them; return the order.
fn interleaving(seed: u64, mode: SchedulerMode, tasks: usize, steps: usize) -> (Vec<String>, u64) {
    let sim = Sim::new(seed, config(mode));
    let env = sim.env();
    let log = Rc::new(RefCell::new(Vec::new()));
    let done = Rc::new(Cell::new(0));
    let all_done = Rc::new(Notify::new());
    for t in 0..tasks {
        let (log, done, all_done) = (log.clone(), done.clone(), all_done.clone());
        env.spawn(
            &format!("t{t}"),
            Box::pin(async move {
                for s in 0..steps {
                    log.borrow_mut().push(format!("t{t}.{s}"));
                    yield_now().await;
                }
                done.set(done.get() + 1);
                all_done.notify_all();
            }),
        );
    }
    let (d, n) = (done.clone(), all_done.clone());
    sim.block_on(async move {
        while d.get() < tasks {
            n.wait().await;
        }
    })
    .unwrap();
    let order = log.borrow().clone();
    (order, sim.trace_hash())
}

#[test]
fn random_scheduling_is_reproducible_per_seed_and_varies_across_seeds() {
    let mut distinct = std::collections::BTreeSet::new();
    for seed in 0..20 {
        let (a, ha) = interleaving(seed, SchedulerMode::Random, 4, 4);
        let (b, hb) = interleaving(seed, SchedulerMode::Random, 4, 4);
        assert_eq!(a, b, "seed {seed} replayed differently");
        assert_eq!(ha, hb, "seed {seed}: trace hash differs between reruns");
        distinct.insert(a);
    }
    assert!(
        distinct.len() >= 10,
        "only {} distinct interleavings over 20 seeds",
        distinct.len()
    );
}

#[test]
fn fifo_mode_is_fifo() {
    for seed in [1, 2, 3] {
        let (order, _) = interleaving(seed, SchedulerMode::Fifo, 3, 3);
        let expected: Vec<String> = (0..3)
            .flat_map(|s| (0..3).map(move |t| format!("t{t}.{s}")))
            .collect();
        assert_eq!(order, expected);
    }
}

#[test]
fn deadlock_is_reported_with_task_names_and_labels() {
    let sim = Sim::new(0xdead, SimConfig::default());
    let env = sim.env();
    let never = Rc::new(Notify::new());
    let n = never.clone();
    let e = env.clone();
    env.spawn(
        "stuck-worker",
        Box::pin(async move {
            e.waiting_on("lock A", n.wait()).await;
        }),
    );
    let n = never.clone();
    let e = env.clone();
    let err = sim
        .block_on(async move {
            e.sleep(1000).await;
            e.set_waiting_on("worker to finish");
            n.wait().await;
        })
        .unwrap_err();
    match &err {
        SimError::Deadlock {
            seed,
            now_ns,
            parked,
        } => {
            assert_eq!(*seed, 0xdead);
            assert_eq!(*now_ns, 1000);
            let names: Vec<&str> = parked.iter().map(|p| p.name.as_str()).collect();
            assert_eq!(names, ["main", "stuck-worker"]);
            assert_eq!(parked[0].waiting_on.as_deref(), Some("worker to finish"));
            assert_eq!(parked[1].waiting_on.as_deref(), Some("lock A"));
        }
        other => panic!("expected a deadlock, got {other:?}"),
    }
    let text = err.to_string();
    assert!(text.contains("0x000000000000dead"), "{text}");
    assert!(
        text.contains("stuck-worker (#1) waiting on lock A"),
        "{text}"
    );
}

#[test]
fn livelock_time_limit_fires() {
    let cfg = SimConfig {
        max_virtual_ns: 10_000_000_000,
        ..SimConfig::default()
    };
    let sim = Sim::new(5, cfg);
    let env = sim.env();
    let e = env.clone();
    env.spawn(
        "ticker",
        Box::pin(async move {
            loop {
                e.sleep(1_000_000_000).await;
            }
        }),
    );
    let never = Notify::new();
    let err = sim.block_on(never.wait()).unwrap_err();
    match err {
        SimError::Livelock {
            reason: LivelockReason::TimeLimit,
            now_ns,
            ..
        } => {
            assert_eq!(now_ns, 10_000_000_000);
        }
        other => panic!("expected a time-limit livelock, got {other:?}"),
    }
}

#[test]
fn livelock_step_budget_fires() {
    let cfg = SimConfig {
        max_steps: 1000,
        ..SimConfig::default()
    };
    let sim = Sim::new(6, cfg);
    let env = sim.env();
    env.spawn(
        "spinner",
        Box::pin(async {
            loop {
                yield_now().await;
            }
        }),
    );
    let never = Notify::new();
    let err = sim.block_on(never.wait()).unwrap_err();
    match &err {
        SimError::Livelock {
            reason: LivelockReason::StepLimit,
            steps,
            now_ns,
            tasks,
            ..
        } => {
            assert_eq!(steps, &1000);
            assert_eq!(
                now_ns, &0,
                "time must stand still while something is runnable"
            );
            assert!(tasks.iter().any(|t| t.name == "spinner"));
        }
        other => panic!("expected a step-limit livelock, got {other:?}"),
    }
    assert!(err.to_string().contains("step budget"));
}

#[test]
fn timers_fire_in_deadline_then_insertion_order() {
    let sim = Sim::new(9, config(SchedulerMode::Random));
    let env = sim.env();
    let log = Rc::new(RefCell::new(Vec::new()));
    for (name, at) in [("c", 30u64), ("a", 10), ("b1", 20), ("b2", 20), ("b3", 20)] {
        let (e, log) = (env.clone(), log.clone());
        env.spawn(
            name,
            Box::pin(async move {
                e.sleep_until(at).await;
                log.borrow_mut().push((name, e.now_ns()));
            }),
        );
    }
    sim.run_until_idle().unwrap();
    let got = log.borrow().clone();
    assert_eq!(got[0], ("a", 10));
    let mut mid: Vec<_> = got[1..4].to_vec();
    mid.sort();
    assert_eq!(mid, [("b1", 20), ("b2", 20), ("b3", 20)]);
    assert_eq!(got[4], ("c", 30));
    assert_eq!(sim.now_ns(), 30);
    assert_eq!(sim.pending_timers(), 0);

    // In FIFO mode equal deadlines wake in the order the timers were registered.
    let sim = Sim::new(9, config(SchedulerMode::Fifo));
    let env = sim.env();
    let log = Rc::new(RefCell::new(Vec::new()));
    for name in ["x", "y", "z"] {
        let (e, log) = (env.clone(), log.clone());
        env.spawn(
            name,
            Box::pin(async move {
                e.sleep(500).await;
                log.borrow_mut().push(name);
            }),
        );
    }
    sim.run_until_idle().unwrap();
    assert_eq!(*log.borrow(), ["x", "y", "z"]);
}

#[test]
fn clock_stands_still_while_runnable_and_jumps_when_idle() {
    let sim = Sim::new(3, SimConfig::default());
    let env = sim.env().as_env();
    let (start, after_yields, after_sleep, wall) = sim
        .block_on(async move {
            let start = env.now_ns();
            for _ in 0..1000 {
                yield_now().await;
            }
            let after_yields = env.now_ns();
            env.sleep_until(3600 * 1_000_000_000).await;
            (start, after_yields, env.now_ns(), env.wall_clock_ns())
        })
        .unwrap();
    assert_eq!((start, after_yields), (0, 0));
    assert_eq!(after_sleep, 3600 * 1_000_000_000);
    assert_eq!(wall, sim::env::VIRTUAL_EPOCH_NS + after_sleep);
    // A sleep already due completes without moving the clock.
    sim.block_on(sim.env().sleep_until(5)).unwrap();
    assert_eq!(sim.now_ns(), 3600 * 1_000_000_000);
    sim.advance(7).unwrap();
    assert_eq!(sim.now_ns(), 3600 * 1_000_000_000 + 7);
}

#[test]
fn dropped_sleep_does_not_hold_time() {
    let sim = Sim::new(4, SimConfig::default());
    let env = sim.env();
    let e = env.clone();
    sim.block_on(async move {
        let long = e.sleep(1_000_000);
        drop(long);
        e.sleep(10).await;
    })
    .unwrap();
    assert_eq!(sim.now_ns(), 10);
    assert_eq!(sim.pending_timers(), 0);
    sim.run_until_idle().unwrap();
    assert_eq!(sim.now_ns(), 10);
}

#[test]
fn env_works_as_rc_dyn_env_and_spawned_tasks_run() {
    let sim = Sim::new(11, SimConfig::default());
    let env: Rc<dyn Env> = sim.env().as_env();
    assert_eq!(env.kind(), "sim");
    let hits = Rc::new(Cell::new(0));
    for i in 0..5 {
        let h = hits.clone();
        let e = env.clone();
        env.spawn(
            &format!("w{i}"),
            Box::pin(async move {
                e.sleep_until(100 * i).await;
                h.set(h.get() + 1);
            }),
        );
    }
    sim.run_until_idle().unwrap();
    assert_eq!(hits.get(), 5);
    assert_eq!(sim.env().task_count(), 0);
}

#[test]
fn trace_hash_differs_across_seeds() {
    let (_, h1) = interleaving(1, SchedulerMode::Random, 4, 4);
    let (_, h2) = interleaving(2, SchedulerMode::Random, 4, 4);
    assert_ne!(h1, h2);
}

#[test]
#[should_panic(expected = "inside a simulated task")]
fn nested_block_on_panics() {
    let sim = Rc::new(Sim::new(1, SimConfig::default()));
    let inner = sim.clone();
    let _ = sim.block_on(async move {
        let _ = inner.block_on(async {});
    });
}
