//! Reactor tests (tasks, timers, wakes) on both backends.

use std::cell::{Cell, RefCell};
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};

use super::{Backend, RealEnv};
use crate::env::Env;

const MS: u64 = 1_000_000;

/// One environment per backend. io_uring may be refused by the host (seccomp): then the first
/// one runs on the pool too, and says so.
pub(super) fn envs() -> Vec<Rc<RealEnv>> {
    let uring = RealEnv::with_backend(Backend::Uring);
    if uring.backend() != Backend::Uring {
        eprintln!("note: io_uring unavailable on this host; testing the worker pool twice");
    }
    vec![uring, RealEnv::with_backend(Backend::ThreadPool)]
}

/// Sleep for `ns` on `env`'s clock.
pub(super) async fn sleep(env: &RealEnv, ns: u64) {
    env.sleep_until(env.now_ns() + ns).await;
}

#[test]
fn timers_fire_in_deadline_order() {
    for env in envs() {
        let order = Rc::new(RefCell::new(Vec::new()));
        // Deadlines lie well after the tasks' first poll, so every sleeper really arms a timer
        // (a deadline already past on a loaded machine would complete in spawn order instead).
        let start = env.now_ns() + 300 * MS;
        for delay in [30u64, 10, 20, 10] {
            let (env2, order) = (env.clone(), order.clone());
            env.spawn(
                "sleeper",
                Box::pin(async move {
                    env2.sleep_until(start + delay * MS).await;
                    order.borrow_mut().push(delay);
                }),
            );
        }
        // Wait for the sleepers themselves, not for a fixed time: on a loaded machine the
        // thread may wake long after every deadline, and then all timers fire together.
        let done = order.clone();
        let env2 = env.clone();
        env.block_on(async move {
            while done.borrow().len() < 4 {
                assert!(env2.now_ns() < start + 60_000 * MS, "sleepers never woke");
                sleep(&env2, MS).await;
            }
        });
        assert_eq!(*order.borrow(), [10, 10, 20, 30], "{:?}", env.backend());
        assert!(env.now_ns() >= start + 30 * MS);
        assert_eq!(env.live_tasks(), 0);
        assert_eq!(env.armed_timers(), 0);
    }
}

#[test]
fn sleep_until_the_past_is_immediate() {
    for env in envs() {
        let mut cx = Context::from_waker(Waker::noop());
        for deadline in [0, env.now_ns()] {
            let mut f = env.sleep_until(deadline);
            assert!(f.as_mut().poll(&mut cx).is_ready());
        }
        assert_eq!(env.armed_timers(), 0);
        // A cancelled sleep frees its timer.
        let mut f = env.sleep_until(env.now_ns() + 10_000 * MS);
        assert!(f.as_mut().poll(&mut cx).is_pending());
        assert_eq!(env.armed_timers(), 1);
        drop(f);
        assert_eq!(env.armed_timers(), 0);
        // The loop does not wait for a cancelled timer.
        let t = env.now_ns();
        env.block_on(async {});
        assert!(env.now_ns() - t < 1_000 * MS);
        assert!(env.wall_clock_ns() > 1_600_000_000 * 1_000_000_000);
    }
}

#[test]
fn a_thousand_tasks_complete() {
    for env in envs() {
        let count = Rc::new(Cell::new(0usize));
        for i in 0..1000u64 {
            let (env2, count) = (env.clone(), count.clone());
            env.spawn(
                &format!("task{i}"),
                Box::pin(async move {
                    if i % 3 == 0 {
                        sleep(&env2, (i % 7) * MS / 2).await;
                    }
                    // Tasks spawn tasks, too.
                    let c = count.clone();
                    env2.spawn("child", Box::pin(async move { c.set(c.get() + 1) }));
                }),
            );
        }
        assert_eq!(env.live_tasks(), 1000);
        env.block_on(async {
            while count.get() < 1000 {
                sleep(&env, MS).await;
            }
        });
        assert_eq!(env.live_tasks(), 0, "{:?}", env.live_task_names());
    }
}

/// A future that another thread completes after `delay_ms`.
fn woken_from_thread(delay_ms: u64) -> impl Future<Output = ()> {
    let flag = Arc::new(AtomicBool::new(false));
    let mut started = false;
    poll_fn(move |cx| {
        if flag.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        if !started {
            started = true;
            let (flag, waker) = (flag.clone(), cx.waker().clone());
            std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(delay_ms));
                flag.store(true, Ordering::Release);
                waker.wake();
            });
        }
        Poll::Pending
    })
}

#[test]
fn cross_thread_wake_wakes_a_sleeping_loop() {
    for env in envs() {
        // A far timer keeps the loop from blocking forever if the wake were lost; the elapsed
        // time shows it was the wake, not the timer, that ended the wait.
        let env2 = env.clone();
        env.spawn(
            "guard",
            Box::pin(async move { sleep(&env2, 5_000 * MS).await }),
        );
        let t = env.now_ns();
        env.block_on(woken_from_thread(20));
        let main_wait = env.now_ns() - t;
        // The same for a spawned task.
        let done = Rc::new(Cell::new(false));
        let d = done.clone();
        env.spawn(
            "woken",
            Box::pin(async move {
                woken_from_thread(20).await;
                d.set(true)
            }),
        );
        let t = env.now_ns();
        env.block_on(poll_fn(|cx| {
            if done.get() {
                return Poll::Ready(());
            }
            // Re-polled only when woken: ask to be polled again after the task ran.
            cx.waker().wake_by_ref();
            Poll::Pending
        }));
        let task_wait = env.now_ns() - t;
        assert!((20 * MS..2_000 * MS).contains(&main_wait), "{main_wait}");
        assert!((20 * MS..2_000 * MS).contains(&task_wait), "{task_wait}");
    }
}

/// Counts drops: shows that a pending task's future is dropped with the environment.
struct DropFlag(Rc<Cell<bool>>);
impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.set(true);
    }
}

#[test]
fn dropping_the_env_drops_pending_tasks() {
    for env in envs() {
        let dropped = Rc::new(Cell::new(false));
        let flag = DropFlag(dropped.clone());
        let env2 = env.clone();
        env.spawn(
            "forever",
            Box::pin(async move {
                let _flag = flag;
                sleep(&env2, 1_000_000 * MS).await;
            }),
        );
        env.block_on(sleep(&env, MS));
        assert_eq!(env.live_task_names(), ["forever"]);
        // The task holds an Rc of the env: a cycle only shutdown breaks.
        env.shutdown();
        assert_eq!(env.live_tasks(), 0);
        assert!(dropped.get());
        drop(env);
    }
}

#[test]
#[should_panic(expected = "re-entrantly")]
fn nested_block_on_panics() {
    let env = RealEnv::with_backend(Backend::ThreadPool);
    let env2 = env.clone();
    env.block_on(async move { env2.block_on(async {}) });
}

/// Poll `fut` once inside the loop (so its I/O is submitted), then drop it.
pub(super) fn poll_once_and_drop<F: Future + ?Sized>(env: &RealEnv, fut: Pin<Box<F>>) {
    let mut fut = Some(fut);
    env.block_on(poll_fn(|cx| {
        let pending = fut.as_mut().unwrap().as_mut().poll(cx).is_pending();
        assert!(pending, "completed on first poll");
        fut = None;
        Poll::Ready(())
    }));
}

#[test]
fn backend_selection() {
    assert_eq!(
        Backend::from_env_value(Some("threads")),
        Backend::ThreadPool
    );
    assert_eq!(Backend::from_env_value(Some("uring")), Backend::Uring);
    assert_eq!(Backend::from_env_value(None), Backend::Uring);
    assert_eq!(
        RealEnv::with_backend(Backend::ThreadPool).backend(),
        Backend::ThreadPool
    );
    assert_eq!(RealEnv::new().kind(), "real");
}
