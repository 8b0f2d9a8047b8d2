//! A quick, ignored measurement (prints, never fails on timing): 4 KiB reads from a page-cached
//! file at queue depth 1 and 32 on each backend, against plain `pread` on the same thread.
//!
//! `cargo test --release -p engine --lib env::real::tests_bench -- --ignored --nocapture`

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Instant;

use super::tests::envs;
use super::tests_io::TmpPath;
use crate::env::{Env, OpenOptions};
use crate::io::IoBuf;

const FILE: u64 = 64 << 20;
const BS: usize = 4096;
const N: u64 = 100_000;

/// Offset of request `i`: scattered over the file, block aligned.
fn offset(i: u64) -> u64 {
    (i.wrapping_mul(2_654_435_761) % (FILE / BS as u64)) * BS as u64
}

#[test]
#[ignore = "measurement, run by hand"]
fn bench_4k_reads() {
    let path = TmpPath::new("bench", None);
    std::fs::write(&path.0, vec![0xa5u8; FILE as usize]).unwrap();
    let file = std::fs::File::open(&path.0).unwrap();
    let mut buf = IoBuf::new(BS);
    let t = Instant::now();
    for i in 0..N {
        // SAFETY: reads BS bytes into a buffer of BS bytes.
        let r = unsafe {
            libc::pread(
                file.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                BS,
                offset(i) as i64,
            )
        };
        assert_eq!(r, BS as isize);
    }
    println!(
        "plain pread, same thread:   {:>6} ns/req",
        t.elapsed().as_nanos() as u64 / N
    );
    // The floor: one io_uring read per io_uring_enter, no reactor.
    let flagged = || {
        io_uring::IoUring::builder()
            .setup_single_issuer()
            .setup_coop_taskrun()
            .setup_taskrun_flag()
            .build(64)
    };
    for (name, ring) in [("plain", io_uring::IoUring::new(64)), ("coop", flagged())] {
        use io_uring::{opcode, types};
        let Ok(mut ring) = ring else { continue };
        let t = Instant::now();
        for i in 0..N {
            let fd = types::Fd(file.as_raw_fd());
            let e = opcode::Read::new(fd, buf.as_mut_ptr(), BS as u32)
                .offset(offset(i))
                .build();
            // SAFETY: the buffer outlives the request, which completes before the next one.
            unsafe { ring.submission().push(&e).unwrap() };
            ring.submit_and_wait(1).unwrap();
            assert_eq!(ring.completion().next().unwrap().result(), BS as i32);
        }
        let ns = t.elapsed().as_nanos() as u64 / N;
        println!("raw io_uring ({name}) qd 1: {ns:>6} ns/req");
        // Batches of 32 per io_uring_enter, one buffer each.
        let mut bufs: Vec<IoBuf> = (0..32).map(|_| IoBuf::new(BS)).collect();
        let t = Instant::now();
        for batch in 0..N / 32 {
            for (j, b) in bufs.iter_mut().enumerate() {
                let fd = types::Fd(file.as_raw_fd());
                let off = offset(batch * 32 + j as u64);
                let e = opcode::Read::new(fd, b.as_mut_ptr(), BS as u32)
                    .offset(off)
                    .build();
                // SAFETY: the buffers outlive the batch, which completes before the next one.
                unsafe { ring.submission().push(&e).unwrap() };
            }
            ring.submit_and_wait(32).unwrap();
            assert_eq!(
                ring.completion()
                    .filter(|c| c.result() == BS as i32)
                    .count(),
                32
            );
        }
        let ns = t.elapsed().as_nanos() as u64 / (N / 32 * 32);
        println!("raw io_uring ({name}) batch 32: {ns:>6} ns/req");
    }
    // BLK_BENCH_QD=1 (or 32) and BLK_BENCH_BACKEND=uring (or pool) narrow the run, e.g. for
    // `perf record`.
    let only: Option<u64> = std::env::var("BLK_BENCH_QD")
        .ok()
        .and_then(|v| v.parse().ok());
    let backend = std::env::var("BLK_BENCH_BACKEND").unwrap_or_default();
    for env in envs() {
        if !format!("{:?}", env.backend())
            .to_lowercase()
            .contains(&backend)
        {
            continue;
        }
        let f = env.fs().open(&path.0, OpenOptions::default()).unwrap();
        for qd in [1u64, 32]
            .into_iter()
            .filter(|&q| only.is_none_or(|o| o == q))
        {
            let done = Rc::new(Cell::new(0u64));
            let main: Rc<RefCell<Option<Waker>>> = Rc::default();
            let t = Instant::now();
            for q in 0..qd {
                let (f, done, main) = (f.clone(), done.clone(), main.clone());
                env.spawn(
                    "reader",
                    Box::pin(async move {
                        let mut buf = IoBuf::new(BS);
                        let mut i = q;
                        while i < N {
                            let (b, r) = f.read_at(buf, offset(i)).await;
                            r.unwrap();
                            buf = b;
                            i += qd;
                        }
                        done.set(done.get() + 1);
                        if let Some(w) = main.borrow_mut().take() {
                            w.wake();
                        }
                    }),
                );
            }
            env.block_on(poll_fn(|cx| {
                if done.get() == qd {
                    return Poll::Ready(());
                }
                *main.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }));
            let ns = t.elapsed().as_nanos() as u64 / N;
            println!("{:?} qd {qd:>2}: {ns:>6} ns/req", env.backend());
        }
    }
}
