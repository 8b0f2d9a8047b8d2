//! Contract details: open flags, O_DIRECT, out-of-order completion, orphaned requests, export.

use std::cell::RefCell;
use std::future::poll_fn;
use std::pin::pin;
use std::task::Poll;

use engine::env::HostFs;
use sim::View;

use super::*;

#[test]
fn open_flags() {
    let sim = new_sim(1);
    let fs = sim.fs();
    let ro = OpenOptions::default();
    assert_eq!(errno(fs.open("x", ro)), Errno::ENOENT);
    fs.open("x", rw()).unwrap();
    assert!(fs.exists("x"));
    let excl = OpenOptions {
        create_new: true,
        ..rw()
    };
    assert_eq!(errno(fs.open("x", excl)), Errno::EEXIST);
    fs.create_file("y", &[1; 100]).unwrap();
    let trunc = OpenOptions {
        truncate: true,
        ..rw()
    };
    let f = fs.open("y", trunc).unwrap();
    assert_eq!(f.len().unwrap(), 0);
    assert_eq!(
        fs.dirty_entries("y").unwrap(),
        1,
        "truncation is volatile until flushed"
    );
    let r = fs.open("y", ro).unwrap();
    sim.block_on(async move {
        assert_eq!(errno(write(&*r, 0, &[1]).await), Errno::Other(9));
    })
    .unwrap();
    fs.remove("x").unwrap();
    assert!(!fs.exists("x"));
    assert_eq!(errno(fs.remove("x")), Errno::ENOENT);
    assert_eq!(fs.files(), ["y"]);
}

#[test]
fn direct_io_requires_alignment() {
    let sim = new_sim(2);
    let env = sim.env().as_env();
    sim.block_on(async move {
        let opts = OpenOptions {
            direct: true,
            ..rw()
        };
        let f = env.fs().open("d", opts).unwrap();
        assert_eq!(f.direct_align(), 512);
        let (_, r) = f.write_at(IoBuf::with_align(512, 512), 100, false).await;
        assert_eq!(errno(r), Errno::EINVAL);
        let (_, r) = f.write_at(IoBuf::with_align(100, 512), 0, false).await;
        assert_eq!(errno(r), Errno::EINVAL);
        let (_, r) = f.write_at(IoBuf::with_align(512, 8), 0, false).await;
        assert_eq!(errno(r), Errno::EINVAL);
        let (_, r) = f.write_at(IoBuf::filled(4096, 3), 4096, false).await;
        r.unwrap();
        let (_, r) = f.read_at(IoBuf::with_align(512, 512), 3).await;
        assert_eq!(errno(r), Errno::EINVAL);
        let (b, r) = f.read_at(IoBuf::new(512), 4096).await;
        r.unwrap();
        assert_eq!(b.as_slice(), &[3; 512][..]);
        assert_eq!(open(&env, "d").direct_align(), 1);
    })
    .unwrap();
}

#[test]
fn concurrent_requests_complete_out_of_order() {
    let mut reordered = false;
    for seed in 0..5 {
        let sim = new_sim(seed);
        let env = sim.env().as_env();
        let f = open(&env, "o.img");
        let done = Rc::new(RefCell::new(Vec::new()));
        for i in 0..8u64 {
            let (f, done) = (f.clone(), done.clone());
            env.spawn(
                &format!("io{i}"),
                Box::pin(async move {
                    write(&*f, i * 4096, &[i as u8 + 1; 4096]).await.unwrap();
                    done.borrow_mut().push(i);
                }),
            );
        }
        sim.run_until_idle().unwrap();
        let order = done.borrow().clone();
        assert_eq!(order.len(), 8);
        reordered |= order.windows(2).any(|w| w[0] > w[1]);
        let bytes = sim.fs().file_bytes("o.img").unwrap();
        for i in 0..8usize {
            assert!(
                bytes[i * 4096..(i + 1) * 4096]
                    .iter()
                    .all(|&b| b == i as u8 + 1)
            );
        }
    }
    assert!(reordered);
}

#[test]
fn dropped_write_future_still_completes() {
    let sim = new_sim(3);
    let env = sim.env().as_env();
    let f = open(&env, "orphan.img");
    sim.block_on(async move {
        let mut fut = pin!(write(&*f, 0, &[8; 512]));
        // Submit it (one poll), then drop it: like a real disk request, it still happens.
        poll_fn(|cx| {
            assert!(fut.as_mut().poll(cx).is_pending());
            Poll::Ready(())
        })
        .await;
    })
    .unwrap();
    assert!(sim.fs().file_bytes("orphan.img").unwrap().is_empty());
    sim.run_until_idle().unwrap();
    assert_eq!(sim.fs().file_bytes("orphan.img").unwrap(), vec![8; 512]);
}

#[test]
fn export_writes_current_and_durable_bytes() {
    let sim = new_sim(4);
    let env = sim.env().as_env();
    sim.block_on(async move {
        let f = open(&env, "e.img");
        write(&*f, 0, &[1; 5000]).await.unwrap();
        f.flush().await.unwrap();
        write(&*f, 100_000, &[2; 10]).await.unwrap();
    })
    .unwrap();
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let cur = dir.join("sim-export-current.img");
    let dur = dir.join("sim-export-durable.img");
    sim.fs().export_to("e.img", View::Current, &cur).unwrap();
    sim.fs().export_to("e.img", View::Durable, &dur).unwrap();
    let c = std::fs::read(&cur).unwrap();
    let d = std::fs::read(&dur).unwrap();
    assert_eq!(c, sim.fs().file_bytes("e.img").unwrap());
    assert_eq!(c.len(), 100_010);
    assert_eq!(&c[100_000..], &[2; 10]);
    assert_eq!(d, vec![1; 5000]);
    assert!(sim.fs().export_to("missing", View::Current, &cur).is_err());
}

/// Concurrent random I/O from several tasks, probabilistic faults, then a crash: everything that
/// can be observed must be identical across reruns of one seed.
fn mixed_run(seed: u64) -> (Vec<u8>, Vec<String>, sim::CrashReport, u64, u64) {
    use sim::rng::{below, in_range};
    use sim::{FaultKind, FaultSpec, Latency, Stream, Trigger};

    let sim = new_sim(seed);
    let env = sim.env().as_env();
    let fs = sim.fs().clone();
    for (kind, p) in [
        (FaultKind::Eio, 0.05),
        (FaultKind::BitRot, 0.05),
        (
            FaultKind::Slow {
                extra: Latency::Uniform {
                    min_ns: 0,
                    max_ns: 1_000_000,
                },
            },
            0.1,
        ),
        (FaultKind::LostWrite, 0.02),
    ] {
        fs.inject(FaultSpec::new(kind).trigger(Trigger::Probability(p)))
            .unwrap();
    }
    let log = Rc::new(RefCell::new(Vec::new()));
    let f = open(&env, "mix.img");
    for t in 0..6u64 {
        let (f, log) = (f.clone(), log.clone());
        let mut rng = sim.env().stream_rng(Stream::Workload);
        for _ in 0..t {
            below(&mut rng, 1000); // a distinct sequence per task
        }
        env.spawn(
            &format!("worker{t}"),
            Box::pin(async move {
                for i in 0..30 {
                    let off = below(&mut rng, 64) * 512;
                    let len = in_range(&mut rng, 1, 8) as usize * 512;
                    let res = match below(&mut rng, 4) {
                        0 | 1 => write(&*f, off, &vec![t as u8 * 16 + i as u8 % 16; len]).await,
                        2 => read(&*f, off, len).await.map(|_| ()),
                        _ => f.flush().await,
                    };
                    log.borrow_mut().push(format!("{t}.{i}:{}", res.is_ok()));
                }
            }),
        );
    }
    sim.run_until_idle().unwrap();
    let report = sim.crash();
    let bytes = sim.fs().file_bytes("mix.img").unwrap();
    let log = log.borrow().clone();
    (bytes, log, report, sim.trace_hash(), sim.now_ns())
}

#[test]
fn mixed_concurrent_faulty_run_replays_exactly() {
    let a = mixed_run(99);
    assert_eq!(a, mixed_run(99));
    assert!(a.1.iter().any(|l| l.ends_with("false")), "some fault fired");
    assert_ne!(a.3, mixed_run(100).3);
}
