//! The task side of the reactor: a slab of local tasks and `Send + Sync` wakers that push task
//! keys onto the shared ready queue (`shared`).

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Wake, Waker};

use super::shared::Shared;
use crate::env::LocalBoxFuture;

/// The key of the `block_on` future: it is not in the task slab.
pub(super) const MAIN_KEY: u64 = u64::MAX;

/// The waker of one task (or of the `block_on` future).
pub(super) struct TaskWaker {
    /// `index | generation << 32`, or [`MAIN_KEY`].
    key: u64,
    /// Set while the key sits in the ready queue, so repeated wakes push it once.
    queued: AtomicBool,
    /// Where wakes are delivered.
    shared: Arc<Shared>,
}

impl TaskWaker {
    /// A waker for `key`, delivering to `shared`.
    pub(super) fn new(key: u64, shared: Arc<Shared>) -> Arc<TaskWaker> {
        Arc::new(TaskWaker {
            key,
            queued: AtomicBool::new(false),
            shared,
        })
    }
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.key == MAIN_KEY {
            self.shared.deliver(|inbox| inbox.main = true);
        } else if !self.queued.swap(true, Ordering::AcqRel) {
            self.shared.deliver(|inbox| inbox.ready.push(self.key));
        }
    }
}

/// One slot of the task slab.
struct TaskSlot {
    /// Bumped on every reuse: a stale key from an old waker finds a different generation.
    generation: u32,
    /// The future; `None` while it is being polled (or when the slot is free).
    fut: Option<LocalBoxFuture<'static, ()>>,
    /// Kept across reuse of the slot when nobody else holds it (saves an allocation per spawn).
    waker: Option<Arc<TaskWaker>>,
    /// True from spawn until the future completes.
    live: bool,
    /// Task name, for diagnostics.
    name: Box<str>,
}

/// The local tasks: a slab with a free list (no maps; keys are indices).
#[derive(Default)]
pub(super) struct Tasks {
    /// Slots by index.
    slots: Vec<TaskSlot>,
    /// Indices of free slots.
    free: Vec<u32>,
    /// Number of unfinished tasks.
    live: usize,
}

impl Tasks {
    /// Store a new task and return its key (the caller queues it as ready).
    pub(super) fn insert(
        &mut self,
        name: &str,
        fut: LocalBoxFuture<'static, ()>,
        shared: &Arc<Shared>,
    ) -> u64 {
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(TaskSlot {
                    generation: 0,
                    fut: None,
                    waker: None,
                    live: false,
                    name: Box::from(""),
                });
                (self.slots.len() - 1) as u32
            }
        };
        let slot = &mut self.slots[index as usize];
        slot.generation = slot.generation.wrapping_add(1);
        let key = u64::from(index) | u64::from(slot.generation) << 32;
        // Reuse the old waker allocation when no stale clone of it survives.
        match slot.waker.as_mut().and_then(Arc::get_mut) {
            Some(w) => {
                w.key = key;
                *w.queued.get_mut() = true;
            }
            None => {
                let w = TaskWaker::new(key, shared.clone());
                w.queued.store(true, Ordering::Relaxed);
                slot.waker = Some(w);
            }
        }
        slot.fut = Some(fut);
        slot.live = true;
        if slot.name.as_ref() != name {
            slot.name = Box::from(name);
        }
        self.live += 1;
        key
    }

    /// Take the future and waker of a ready key out for polling; `None` for a stale key.
    fn take(&mut self, key: u64) -> Option<(LocalBoxFuture<'static, ()>, Waker)> {
        let slot = self.slots.get_mut((key & 0xffff_ffff) as usize)?;
        if u64::from(slot.generation) != key >> 32 || !slot.live {
            return None;
        }
        let fut = slot.fut.take()?;
        let w = slot.waker.as_ref().expect("live task has a waker");
        w.queued.store(false, Ordering::Release);
        Some((fut, Waker::from(w.clone())))
    }

    /// Put a pending future back, or retire the slot of a finished one.
    fn put_back(&mut self, key: u64, fut: Option<LocalBoxFuture<'static, ()>>) {
        let index = (key & 0xffff_ffff) as usize;
        let slot = &mut self.slots[index];
        match fut {
            Some(f) => slot.fut = Some(f),
            None => {
                slot.live = false;
                self.free.push(index as u32);
                self.live -= 1;
            }
        }
    }

    /// Number of tasks not yet finished.
    pub(super) fn live(&self) -> usize {
        self.live
    }

    /// Names of the unfinished tasks (diagnostics).
    pub(super) fn names(&self) -> Vec<String> {
        self.slots
            .iter()
            .filter(|s| s.live)
            .map(|s| s.name.to_string())
            .collect()
    }

    /// Remove every future (shutdown); the caller drops them outside the borrow.
    pub(super) fn drain(&mut self) -> Vec<LocalBoxFuture<'static, ()>> {
        let futs = self.slots.iter_mut().filter_map(|s| s.fut.take()).collect();
        for (i, s) in self.slots.iter_mut().enumerate() {
            if std::mem::take(&mut s.live) {
                self.free.push(i as u32);
            }
        }
        self.live = 0;
        futs
    }
}

/// Poll the task named by `key` once. No borrow of `tasks` is held while it runs, so it may
/// spawn more tasks.
pub(super) fn poll_task(tasks: &RefCell<Tasks>, key: u64) {
    let Some((mut fut, waker)) = tasks.borrow_mut().take(key) else {
        return;
    };
    let done = fut
        .as_mut()
        .poll(&mut Context::from_waker(&waker))
        .is_ready();
    tasks
        .borrow_mut()
        .put_back(key, if done { None } else { Some(fut) });
    // A finished future is dropped here, after the borrow: its drop may touch the reactor.
}
