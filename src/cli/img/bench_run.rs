//! The request loop of `blk bench`: qemu-img bench's schedule of reads or writes, flushes and
//! queue depth, on a BlockBackend of the real-file env, with each request's latency recorded.
//!
//! The schedule is qemu-img's, since its figures are what blk's are compared with: up to
//! `depth` requests in flight; each new one starts at the previous one's offset plus `step`,
//! wrapping modulo the image length (to 0 on an empty image). With a flush interval, when the
//! number of requests not yet submitted is a multiple of it, a flush is sent: with draining
//! (the default) once every request in flight has completed, and no new request starts before
//! the flush ends; with `--no-drain` at once, alongside the requests. The clock stops when the
//! last request completes (a flush still in flight then is waited for, untimed), as in qemu-img.
//!
//! Timing comes from the env's clock (`Env::now_ns`, real time on `RealEnv`): this module runs
//! only in production mode; the engine itself stays deterministic.

use std::cell::RefCell;
use std::rc::Rc;

use engine::Result;
use engine::backend::BlockBackend;
use engine::env::Env;
use engine::env::real::RealEnv;
use engine::io::{IoBuf, ReqFlags};
use engine::util::Notify;
use hdrhistogram::Histogram;

/// What to send (qemu-img bench's parameters, validated).
#[derive(Clone, Debug)]
pub(crate) struct Plan {
    pub count: u64,
    pub depth: u64,
    pub offset: u64,
    pub bufsize: u64,
    /// The offset increment (qemu-img's `-S 0` means the buffer size; resolved already).
    pub step: u64,
    pub write: bool,
    pub pattern: u8,
    /// Requests between flushes; 0 for none.
    pub flush_interval: u64,
    pub drain: bool,
}

/// What a run measured.
pub(crate) struct Outcome {
    pub elapsed_ns: u64,
    /// Each request's latency from submission to completion, in nanoseconds.
    pub latency: Histogram<u64>,
    pub flushes: u64,
}

/// Why a run stopped early: qemu-img's message for it.
pub(crate) struct Failure(pub String);

struct State {
    /// Requests not yet completed.
    n: u64,
    in_flight: u64,
    /// Flushes (drained or not) not yet completed.
    flushes_pending: u64,
    flushes: u64,
    offset: u64,
    /// Idle request buffers (at most `depth` are ever made, each filled with the pattern).
    bufs: Vec<IoBuf>,
    failure: Option<Failure>,
    end_ns: Option<u64>,
    latency: Histogram<u64>,
}

struct Run {
    env: Rc<RealEnv>,
    bb: Rc<BlockBackend>,
    plan: Plan,
    size: u64,
    st: RefCell<State>,
    changed: Notify,
}

/// Send `plan`'s requests to `bb` (the image is `size` bytes long) and wait for them.
pub(crate) async fn run(
    env: Rc<RealEnv>,
    bb: Rc<BlockBackend>,
    size: u64,
    plan: Plan,
) -> Result<Outcome, Failure> {
    let latency = Histogram::new_with_bounds(1, 1 << 42, 3)
        .map_err(|e| Failure(format!("latency histogram: {e}")))?;
    let run = Rc::new(Run {
        st: RefCell::new(State {
            n: plan.count,
            in_flight: 0,
            flushes_pending: 0,
            flushes: 0,
            offset: plan.offset,
            bufs: Vec::new(),
            failure: None,
            end_ns: None,
            latency,
        }),
        env,
        bb,
        plan,
        size,
        changed: Notify::new(),
    });
    let start = run.env.now_ns();
    submit(&run);
    // Until the last request completes (or one fails), then until no flush is in flight.
    loop {
        {
            let st = run.st.borrow();
            let finished = st.n == 0 && st.flushes_pending == 0;
            if st.failure.is_some() || finished {
                break;
            }
        }
        run.changed.wait().await;
    }
    let mut st = run.st.borrow_mut();
    if let Some(f) = st.failure.take() {
        return Err(f);
    }
    Ok(Outcome {
        elapsed_ns: st.end_ns.unwrap_or(start) - start,
        latency: std::mem::replace(&mut st.latency, Histogram::new(1).expect("histogram")),
        flushes: st.flushes,
    })
}

/// Start requests while some remain unsubmitted and the queue has room.
fn submit(run: &Rc<Run>) {
    loop {
        let (offset, buf) = {
            let mut st = run.st.borrow_mut();
            if st.failure.is_some() || st.n <= st.in_flight || st.in_flight >= run.plan.depth {
                return;
            }
            let offset = st.offset;
            st.in_flight += 1;
            st.offset = match run.size {
                0 => 0,
                size => (offset + run.plan.step) % size,
            };
            let buf = st
                .bufs
                .pop()
                .unwrap_or_else(|| IoBuf::filled(run.plan.bufsize as usize, run.plan.pattern));
            (offset, buf)
        };
        let r = run.clone();
        run.env.clone().spawn(
            "bench request",
            Box::pin(async move {
                let t0 = r.env.now_ns();
                let (buf, res) = if r.plan.write {
                    r.bb.write(offset, buf, ReqFlags::NONE).await
                } else {
                    r.bb.read(offset, buf).await
                };
                let latency = r.env.now_ns() - t0;
                completed(&r, buf, res, latency);
            }),
        );
    }
}

/// A request ended: account it, flush when the interval says so, and refill the queue.
fn completed(run: &Rc<Run>, buf: IoBuf, res: Result<()>, latency_ns: u64) {
    let flush = {
        let mut st = run.st.borrow_mut();
        if let Err(e) = res {
            fail(&mut st, format!("Failed request: {}", e.strerror()));
            run.changed.notify_all();
            return;
        }
        st.latency.saturating_record(latency_ns.max(1));
        st.bufs.push(buf);
        let unsubmitted = st.n - st.in_flight;
        st.n -= 1;
        st.in_flight -= 1;
        if st.n == 0 {
            st.end_ns = Some(run.env.now_ns());
            run.changed.notify_all();
        }
        let interval = run.plan.flush_interval;
        if interval != 0 && unsubmitted.is_multiple_of(interval) {
            let start = st.in_flight == 0 || !run.plan.drain;
            if start {
                st.flushes_pending += 1;
                st.flushes += 1;
            }
            Some(start)
        } else {
            None
        }
    };
    match flush {
        None => submit(run),
        Some(true) => {
            start_flush(run);
            if !run.plan.drain {
                submit(run);
            }
        }
        // Draining: the request in flight that completes last starts the flush.
        Some(false) => {}
    }
}

/// Send a flush; a draining one restarts the requests when it ends.
fn start_flush(run: &Rc<Run>) {
    let r = run.clone();
    run.env.clone().spawn(
        "bench flush",
        Box::pin(async move {
            let res = r.bb.flush().await;
            {
                let mut st = r.st.borrow_mut();
                st.flushes_pending -= 1;
                if let Err(e) = res {
                    fail(&mut st, format!("Failed flush request: {}", e.strerror()));
                }
            }
            r.changed.notify_all();
            if r.plan.drain {
                submit(&r);
            }
        }),
    );
}

/// Keep the first failure: the run ends with it.
fn fail(st: &mut State, msg: String) {
    if st.failure.is_none() {
        st.failure = Some(Failure(msg));
    }
}
