//! The fault classes of partial transfers, timing, lost flushes and crashes, one test (at least)
//! each, at the virtual disk's own seam (the engine's side is engine/tests/file_partial_io.rs).

use std::cell::RefCell;

use engine::io::IoBuf;
use sim::{FAULT_KINDS, FaultKind, FaultSpec, Latency, OpKind};

use super::*;

async fn read_part(f: &dyn HostFile, offset: u64, len: usize) -> Result<(usize, Vec<u8>)> {
    let (buf, r) = f.read_part(IoBuf::new(len), 0, offset).await;
    r.map(|n| (n, buf.as_slice().to_vec()))
}

async fn write_part(f: &dyn HostFile, offset: u64, data: &[u8]) -> Result<usize> {
    f.write_part(IoBuf::from_slice(data), 0, offset, false)
        .await
        .1
}

#[test]
fn the_table_has_sixteen_classes_or_more_and_every_one_parses() {
    assert!(FAULT_KINDS.len() >= 16, "{} classes", FAULT_KINDS.len());
    for c in FAULT_KINDS {
        let args = c.args.replace("SIZE", "1M").replace("DUR[..DUR]", "1ms");
        let line = format!("# t\nfault inject f {} {args}\n", c.name);
        let sc = sim::scenario::parse("t.scn", &line);
        assert!(sc.is_ok(), "{}: {:?}", c.name, sc.err());
    }
}

#[test]
fn short_read_moves_a_prefix_of_one_partial_read_only() {
    let sim = new_sim(21);
    let env = sim.env().as_env();
    let fs = sim.fs().clone();
    let data: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
    fs.create_file("r.img", &data).unwrap();
    sim.block_on(async move {
        let f = open(&env, "r.img");
        fs.inject(FaultSpec::new(FaultKind::ShortRead).trigger(sim::Trigger::Times(2)))
            .unwrap();
        // A whole read (read_at) is not a partial transfer: the fault does not touch it.
        assert_eq!(read(&*f, 0, 8192).await.unwrap(), data);
        let (n, got) = read_part(&*f, 0, 8192).await.unwrap();
        assert!((1..8192).contains(&n), "short: {n}");
        assert_eq!(got[..n], data[..n]);
        // The rest, asked for from where it stopped, is short again or complete.
        let (m, _) = read_part(&*f, n as u64, 8192 - n).await.unwrap();
        assert!(m >= 1 && m <= 8192 - n);
        assert_eq!(fs.faults()[0].1.fired, 2);
    })
    .unwrap();
}

#[test]
fn short_write_lands_only_the_reported_prefix() {
    let sim = new_sim(22);
    let env = sim.env().as_env();
    let fs = sim.fs().clone();
    fs.create_file("w.img", &[1; 4096]).unwrap();
    sim.block_on(async move {
        let f = open(&env, "w.img");
        fs.inject(FaultSpec::new(FaultKind::ShortWrite).once())
            .unwrap();
        let n = write_part(&*f, 0, &[9; 4096]).await.unwrap();
        assert!((1..4096).contains(&n), "short: {n}");
        let now = fs.file_bytes("w.img").unwrap();
        assert!(now[..n].iter().all(|&b| b == 9));
        assert!(now[n..].iter().all(|&b| b == 1), "nothing past the prefix");
    })
    .unwrap();
}

#[test]
fn eagain_and_eintr_fail_one_partial_transfer_and_change_nothing() {
    let sim = new_sim(23);
    let env = sim.env().as_env();
    let fs = sim.fs().clone();
    fs.create_file("t.img", &[5; 1024]).unwrap();
    sim.block_on(async move {
        let f = open(&env, "t.img");
        fs.inject(
            FaultSpec::new(FaultKind::Eagain)
                .ops(&[OpKind::Write])
                .once(),
        )
        .unwrap();
        fs.inject(FaultSpec::new(FaultKind::Eintr).ops(&[OpKind::Read]).once())
            .unwrap();
        assert_eq!(errno(write_part(&*f, 0, &[6; 1024]).await), Errno::EAGAIN);
        assert_eq!(fs.file_bytes("t.img").unwrap(), vec![5; 1024]);
        assert_eq!(errno(read_part(&*f, 0, 1024).await), Errno::Other(4));
        // Once only: the retry goes through.
        assert_eq!(write_part(&*f, 0, &[6; 1024]).await.unwrap(), 1024);
        assert_eq!(read_part(&*f, 0, 1024).await.unwrap().1, vec![6; 1024]);
    })
    .unwrap();
}

#[test]
fn enospc_mid_write_lands_a_prefix_and_the_continuation_fails() {
    let sim = new_sim(24);
    let env = sim.env().as_env();
    let fs = sim.fs().clone();
    fs.create_file("n.img", &[0; 8192]).unwrap();
    sim.block_on(async move {
        let f = open(&env, "n.img");
        fs.inject(FaultSpec::new(FaultKind::NoSpaceMidWrite).once())
            .unwrap();
        let n = write_part(&*f, 0, &[3; 8192]).await.unwrap();
        assert!((1..8192).contains(&n));
        let r = f
            .write_part(IoBuf::filled(8192, 3), n, n as u64, false)
            .await
            .1;
        assert_eq!(errno(r), Errno::ENOSPC);
        let now = fs.file_bytes("n.img").unwrap();
        assert!(now[..n].iter().all(|&b| b == 3) && now[n..].iter().all(|&b| b == 0));
    })
    .unwrap();
}

#[test]
fn a_hang_holds_every_operation_of_the_file_until_it_ends() {
    let sim = new_sim(25);
    let env = sim.env().as_env();
    let fs = sim.fs().clone();
    fs.create_file("h.img", &[1; 512]).unwrap();
    fs.create_file("other.img", &[1; 512]).unwrap();
    sim.block_on(async move {
        let f = open(&env, "h.img");
        let g = open(&env, "other.img");
        fs.inject(
            FaultSpec::new(FaultKind::Hang {
                delay: Latency::Fixed(500_000_000),
            })
            .path("h.img")
            .ops(&[OpKind::Read])
            .once(),
        )
        .unwrap();
        let t0 = env.now_ns();
        read(&*f, 0, 512).await.unwrap();
        assert!(env.now_ns() - t0 >= 500_000_000);
        // Another file is not hung; this one stays hung until the hang's end only.
        let t1 = env.now_ns();
        read(&*g, 0, 512).await.unwrap();
        write(&*f, 0, &[2; 512]).await.unwrap();
        assert!(env.now_ns() - t1 <= 200_000);
    })
    .unwrap();
}

#[test]
fn a_reordered_operation_completes_after_one_submitted_later() {
    let sim = new_sim(26);
    let env = sim.env().as_env();
    let fs = sim.fs().clone();
    let order = Rc::new(RefCell::new(Vec::new()));
    let o = order.clone();
    sim.block_on(async move {
        let f = open(&env, "o.img");
        fs.inject(
            FaultSpec::new(FaultKind::Reorder)
                .ops(&[OpKind::Write])
                .once(),
        )
        .unwrap();
        let (f1, o1) = (f.clone(), o.clone());
        env.spawn(
            "first",
            Box::pin(async move {
                write(&*f1, 0, &[1; 512]).await.unwrap();
                o1.borrow_mut().push(1);
            }),
        );
        env.sleep_until(env.now_ns() + 1).await;
        write(&*f, 0, &[2; 512]).await.unwrap();
        o.borrow_mut().push(2);
        env.sleep_until(env.now_ns() + 1_000_000).await;
        // The first write completed last, so its data is what the file holds.
        assert_eq!(read(&*f, 0, 512).await.unwrap(), vec![1; 512]);
    })
    .unwrap();
    assert_eq!(*order.borrow(), vec![2, 1]);
}

#[test]
fn a_lost_flush_keeps_reads_but_nothing_ever_makes_the_data_durable() {
    let sim = new_sim(27);
    let env = sim.env().as_env();
    let fs = sim.fs().clone();
    fs.create_file("g.img", &[1; 4096]).unwrap();
    let fs2 = fs.clone();
    sim.block_on(async move {
        let f = open(&env, "g.img");
        write(&*f, 0, &[2; 4096]).await.unwrap();
        fs.inject(FaultSpec::new(FaultKind::FlushLost).once())
            .unwrap();
        assert_eq!(errno(f.flush().await), Errno::EIO);
        // Marked clean: readable, not dirty, not durable; a later flush does not save it.
        assert_eq!(read(&*f, 0, 4096).await.unwrap(), vec![2; 4096]);
        assert_eq!(fs.dirty_entries("g.img").unwrap(), 0);
        f.flush().await.unwrap();
        assert_eq!(fs.durable_bytes("g.img").unwrap(), vec![1; 4096]);
    })
    .unwrap();
    sim.crash();
    assert_eq!(fs2.file_bytes("g.img").unwrap(), vec![1; 4096]);
}

#[test]
fn a_stale_read_evicts_what_a_lost_flush_left_and_shows_the_old_data() {
    let sim = new_sim(28);
    let env = sim.env().as_env();
    let fs = sim.fs().clone();
    fs.create_file("s.img", &[1; 4096]).unwrap();
    sim.block_on(async move {
        let f = open(&env, "s.img");
        // Without a lost flush there is nothing to evict: the read is exact.
        fs.inject(FaultSpec::new(FaultKind::StaleRead)).unwrap();
        write(&*f, 0, &[2; 1024]).await.unwrap();
        assert_eq!(read(&*f, 0, 1024).await.unwrap(), vec![2; 1024]);
        fs.inject(FaultSpec::new(FaultKind::FlushLost).once())
            .unwrap();
        assert_eq!(errno(f.flush().await), Errno::EIO);
        // A write after the lost flush stays (it is still dirty, in the cache).
        write(&*f, 2048, &[3; 1024]).await.unwrap();
        let got = read(&*f, 0, 4096).await.unwrap();
        assert_eq!(got[..1024], [1; 1024], "stale: the lost write is gone");
        assert_eq!(got[2048..3072], [3; 1024]);
    })
    .unwrap();
}

#[test]
fn truncate_on_crash_cuts_unflushed_growth_even_where_data_survived() {
    let mut config = SimConfig::default();
    config.disk.crash.clean = 1.0; // every unflushed write survives the power loss...
    let sim = Sim::new(29, config);
    let env = sim.env().as_env();
    let fs = sim.fs().clone();
    fs.create_file("c.img", &[1; 4096]).unwrap();
    let fs2 = fs.clone();
    sim.block_on(async move {
        let f = open(&env, "c.img");
        write(&*f, 4096, &[2; 4096]).await.unwrap();
        write_fua(&*f, 8192, &[3; 512]).await.unwrap();
        write(&*f, 16384, &[4; 4096]).await.unwrap();
        fs.inject(FaultSpec::new(FaultKind::TruncateOnCrash).path("c.img"))
            .unwrap();
    })
    .unwrap();
    sim.crash();
    // ...but the size goes back to what was durable: the FUA write's end.
    let after = fs2.file_bytes("c.img").unwrap();
    assert_eq!(after.len(), 8192 + 512);
    assert_eq!(
        after[4096..8192],
        [2; 4096],
        "kept data below the durable size"
    );
    assert_eq!(fs2.faults()[0].1.fired, 1);
}
