//! One test (at least) per fault class.

use sim::{FaultKind, FaultSpec, Latency, OpKind, Trigger};

use super::*;

#[test]
fn eio_on_write_read_and_flush() {
    let sim = new_sim(1);
    let env = sim.env().as_env();
    let fs = sim.fs().clone();
    sim.block_on(async move {
        let f = open(&env, "a.img");
        let id = fs
            .inject(
                FaultSpec::new(FaultKind::Eio)
                    .path("a.img")
                    .ops(&[OpKind::Write])
                    .once(),
            )
            .unwrap();
        assert_eq!(errno(write(&*f, 0, &[7; 512]).await), Errno::EIO);
        assert_eq!(f.len().unwrap(), 0, "a failed write has no effect");
        write(&*f, 0, &[7; 512]).await.unwrap();
        assert_eq!(fs.faults()[0].1.fired, 1);
        fs.remove_fault(id).unwrap();

        // Reads fail only when they overlap the target range.
        fs.inject(
            FaultSpec::new(FaultKind::Eio)
                .ops(&[OpKind::Read])
                .range(256, 1),
        )
        .unwrap();
        assert_eq!(errno(read(&*f, 0, 512).await), Errno::EIO);
        assert_eq!(read(&*f, 257, 100).await.unwrap(), vec![7; 100]);
        fs.clear_faults();

        // A failed flush leaves the data dirty; the next flush persists it.
        fs.inject(FaultSpec::new(FaultKind::Eio).ops(&[OpKind::Flush]).once())
            .unwrap();
        assert_eq!(errno(f.flush().await), Errno::EIO);
        assert_eq!(fs.dirty_entries("a.img").unwrap(), 1);
        assert!(fs.durable_bytes("a.img").unwrap().is_empty());
        f.flush().await.unwrap();
        assert_eq!(fs.durable_bytes("a.img").unwrap(), vec![7; 512]);
    })
    .unwrap();
}

#[test]
fn eio_on_discard_and_write_zeroes() {
    let sim = new_sim(2);
    let env = sim.env().as_env();
    let fs = sim.fs().clone();
    sim.block_on(async move {
        let f = open(&env, "z.img");
        write(&*f, 0, &[9; 4096]).await.unwrap();
        fs.inject(FaultSpec::new(FaultKind::Eio).ops(&[OpKind::Discard, OpKind::WriteZeroes]))
            .unwrap();
        assert_eq!(errno(f.discard(0, 4096).await), Errno::EIO);
        assert_eq!(errno(f.write_zeroes(0, 4096, false).await), Errno::EIO);
        assert_eq!(read(&*f, 0, 4096).await.unwrap(), vec![9; 4096]);
    })
    .unwrap();
}

#[test]
fn enospc_when_quota_would_be_exceeded() {
    let sim = new_sim(3);
    let env = sim.env().as_env();
    let fs = sim.fs().clone();
    sim.block_on(async move {
        let f = open(&env, "q.img");
        fs.inject(FaultSpec::new(FaultKind::NoSpace { quota_bytes: 16384 }))
            .unwrap();
        write(&*f, 0, &[1; 16384]).await.unwrap();
        assert_eq!(errno(write(&*f, 16384, &[1; 1]).await), Errno::ENOSPC);
        assert_eq!(
            errno(f.write_zeroes(16384, 4096, false).await),
            Errno::ENOSPC
        );
        assert_eq!(errno(f.preallocate(16384, 4096).await), Errno::ENOSPC);
        // Overwrites need no new space; unmapping zeroes allocate nothing.
        write(&*f, 100, &[2; 4000]).await.unwrap();
        f.write_zeroes(20480, 4096, true).await.unwrap();
        // Freeing space makes room again.
        f.discard(0, 4096).await.unwrap();
        write(&*f, 16384, &[3; 4096]).await.unwrap();
        assert_eq!(fs.allocated_bytes(), 16384);
        assert_eq!(fs.faults()[0].1.fired, 3);
    })
    .unwrap();
}

#[test]
fn latent_sector_errors_stick_until_rewritten() {
    let sim = new_sim(4);
    let env = sim.env().as_env();
    let fs = sim.fs().clone();
    sim.block_on(async move {
        let f = open(&env, "l.img");
        write(&*f, 0, &[5; 8192]).await.unwrap();
        // An injected latent error: one seeded sector within the range goes bad on first read.
        fs.inject(
            FaultSpec::new(FaultKind::LatentSector)
                .range(2048, 1024)
                .once(),
        )
        .unwrap();
        assert_eq!(errno(read(&*f, 0, 8192).await), Errno::EIO);
        // It stays bad (the fault itself is spent).
        assert_eq!(errno(read(&*f, 2048, 1024).await), Errno::EIO);
        assert_eq!(read(&*f, 4096, 4096).await.unwrap(), vec![5; 4096]);
        // Rewriting the whole range heals it.
        write(&*f, 2048, &[6; 1024]).await.unwrap();
        assert_eq!(read(&*f, 2048, 1024).await.unwrap(), vec![6; 1024]);

        // Marked directly; a partial rewrite does not heal, a full one does.
        fs.mark_bad_sectors("l.img", 512, 1).unwrap();
        assert_eq!(errno(read(&*f, 600, 10).await), Errno::EIO);
        write(&*f, 512, &[7; 100]).await.unwrap();
        assert_eq!(errno(read(&*f, 512, 512).await), Errno::EIO);
        write(&*f, 512, &[7; 512]).await.unwrap();
        assert_eq!(read(&*f, 512, 512).await.unwrap(), vec![7; 512]);
    })
    .unwrap();
}

#[test]
fn lost_write_reports_success_but_never_lands() {
    let sim = new_sim(5);
    let env = sim.env().as_env();
    let fs = sim.fs().clone();
    fs.create_file("lw.img", &[1; 4096]).unwrap();
    sim.block_on(async move {
        let f = open(&env, "lw.img");
        fs.inject(FaultSpec::new(FaultKind::LostWrite).once())
            .unwrap();
        write(&*f, 0, &[2; 4096]).await.unwrap();
        assert_eq!(read(&*f, 0, 4096).await.unwrap(), vec![1; 4096]);
        f.flush().await.unwrap();
        assert_eq!(fs.durable_bytes("lw.img").unwrap(), vec![1; 4096]);
        write(&*f, 0, &[3; 4096]).await.unwrap();
        assert_eq!(read(&*f, 0, 4096).await.unwrap(), vec![3; 4096]);
    })
    .unwrap();
}

#[test]
fn misdirected_write_lands_elsewhere() {
    for seed in 0..8 {
        let sim = new_sim(seed);
        let env = sim.env().as_env();
        let fs = sim.fs().clone();
        fs.create_file("m.img", &[0; 65536]).unwrap();
        sim.block_on(async move {
            let f = open(&env, "m.img");
            fs.inject(FaultSpec::new(FaultKind::MisdirectedWrite).once())
                .unwrap();
            write(&*f, 8192, &[0xaa; 1024]).await.unwrap();
            assert_eq!(
                read(&*f, 8192, 1024).await.unwrap(),
                vec![0; 1024],
                "intended target"
            );
            let all = fs.file_bytes("m.img").unwrap();
            assert_eq!(all.len(), 65536);
            let start = all
                .iter()
                .position(|&b| b == 0xaa)
                .expect("data landed somewhere");
            assert_eq!(start % 512, 0, "misdirected writes are sector aligned");
            assert_ne!(start, 8192);
            assert_eq!(all.iter().filter(|&&b| b == 0xaa).count(), 1024);
        })
        .unwrap();
    }
}

#[test]
fn bit_rot_flips_one_bit_of_returned_data() {
    let sim = new_sim(6);
    let env = sim.env().as_env();
    let fs = sim.fs().clone();
    sim.block_on(async move {
        let f = open(&env, "b.img");
        write(&*f, 0, &[0x5a; 4096]).await.unwrap();
        fs.inject(FaultSpec::new(FaultKind::BitRot).once()).unwrap();
        let got = read(&*f, 0, 4096).await.unwrap();
        let flipped: u32 = got.iter().map(|&b| (b ^ 0x5a).count_ones()).sum();
        assert_eq!(flipped, 1);
        assert_eq!(
            read(&*f, 0, 4096).await.unwrap(),
            vec![0x5a; 4096],
            "stored data intact"
        );
    })
    .unwrap();
}

#[test]
fn failed_flush_can_drop_dirty_data() {
    let sim = new_sim(7);
    let env = sim.env().as_env();
    let fs = sim.fs().clone();
    fs.create_file("f.img", &[1; 4096]).unwrap();
    sim.block_on(async move {
        let f = open(&env, "f.img");
        write(&*f, 0, &[2; 2048]).await.unwrap();
        write_fua(&*f, 2048, &[3; 2048]).await.unwrap();
        fs.inject(FaultSpec::new(FaultKind::FlushDropsDirty).once())
            .unwrap();
        assert_eq!(errno(f.flush().await), Errno::EIO);
        assert_eq!(fs.dirty_entries("f.img").unwrap(), 0);
        // The cached write is gone; the FUA one was already durable.
        let mut want = vec![1u8; 2048];
        want.extend_from_slice(&[3; 2048]);
        assert_eq!(read(&*f, 0, 4096).await.unwrap(), want);
        assert_eq!(fs.durable_bytes("f.img").unwrap(), want);
    })
    .unwrap();
}

#[test]
fn discard_that_does_not_zero() {
    let sim = new_sim(8);
    let env = sim.env().as_env();
    let fs = sim.fs().clone();
    sim.block_on(async move {
        let f = open(&env, "d.img");
        write(&*f, 0, &[4; 8192]).await.unwrap();
        fs.inject(FaultSpec::new(FaultKind::DiscardNoZero).range(0, 4096))
            .unwrap();
        f.discard(0, 4096).await.unwrap();
        assert_eq!(
            read(&*f, 0, 4096).await.unwrap(),
            vec![4; 4096],
            "old data still readable"
        );
        f.discard(4096, 4096).await.unwrap();
        assert_eq!(
            read(&*f, 4096, 4096).await.unwrap(),
            vec![0; 4096],
            "a normal discard zeroes"
        );
    })
    .unwrap();
}

#[test]
fn slow_io_takes_virtual_time() {
    let sim = new_sim(9);
    let env = sim.env().as_env();
    let fs = sim.fs().clone();
    sim.block_on(async move {
        let f = open(&env, "s.img");
        write(&*f, 0, &[1; 512]).await.unwrap();
        fs.inject(
            FaultSpec::new(FaultKind::Slow {
                extra: Latency::Fixed(2_000_000_000),
            })
            .ops(&[OpKind::Read])
            .once(),
        )
        .unwrap();
        let t0 = env.now_ns();
        read(&*f, 0, 512).await.unwrap();
        let slow = env.now_ns() - t0;
        assert!((2_000_000_000..2_001_000_000).contains(&slow), "{slow}");
        let t1 = env.now_ns();
        read(&*f, 0, 512).await.unwrap();
        assert!(env.now_ns() - t1 <= 100_000, "default latency is 10-100us");
    })
    .unwrap();
}

#[test]
fn probability_times_and_skip_triggers() {
    let outcomes = |seed| {
        let sim = new_sim(seed);
        let env = sim.env().as_env();
        let fs = sim.fs().clone();
        sim.block_on(async move {
            let f = open(&env, "p.img");
            write(&*f, 0, &[1; 512]).await.unwrap();
            fs.inject(
                FaultSpec::new(FaultKind::Eio)
                    .ops(&[OpKind::Read])
                    .trigger(Trigger::Probability(0.5)),
            )
            .unwrap();
            let mut v = Vec::new();
            for _ in 0..64 {
                v.push(read(&*f, 0, 512).await.is_ok());
            }
            v
        })
        .unwrap()
    };
    let a = outcomes(10);
    assert_eq!(a, outcomes(10));
    let fails = a.iter().filter(|ok| !**ok).count();
    assert!((10..54).contains(&fails), "{fails} failures of 64");

    let sim = new_sim(11);
    let env = sim.env().as_env();
    let fs = sim.fs().clone();
    sim.block_on(async move {
        let f = open(&env, "t.img");
        fs.inject(
            FaultSpec::new(FaultKind::Eio)
                .ops(&[OpKind::Write])
                .skip(2)
                .trigger(Trigger::Times(2)),
        )
        .unwrap();
        let mut v = Vec::new();
        for i in 0..6 {
            v.push(write(&*f, i * 512, &[1; 512]).await.is_ok());
        }
        assert_eq!(v, [true, true, false, false, true, true]);
        let (_, state) = &fs.faults()[0];
        assert_eq!((state.matched, state.fired), (4, 2));
    })
    .unwrap();
}

#[test]
fn faults_target_paths_and_validate() {
    let sim = new_sim(12);
    let env = sim.env().as_env();
    let fs = sim.fs().clone();
    assert!(
        fs.inject(FaultSpec::new(FaultKind::BitRot).ops(&[OpKind::Write]))
            .is_err()
    );
    assert!(
        fs.inject(FaultSpec::new(FaultKind::Eio).trigger(Trigger::Probability(2.0)))
            .is_err()
    );
    sim.block_on(async move {
        let a = open(&env, "a.img");
        let b = open(&env, "b.img");
        fs.inject(FaultSpec::new(FaultKind::Eio).path("a.img"))
            .unwrap();
        assert!(write(&*a, 0, &[1]).await.is_err());
        write(&*b, 0, &[1]).await.unwrap();
    })
    .unwrap();
}
