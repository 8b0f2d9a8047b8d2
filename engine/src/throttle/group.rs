//! A throttle group: one [`ThrottleState`] shared by its members (throttle filter nodes and
//! throttled devices). A request that may not start waits in its member's queue; one timer per
//! direction releases the queued requests, one at a time, taking the members in turn
//! (round-robin), so members share the budget fairly. Queued requests of a member being
//! drained are released at once, and a drained member's requests pass unthrottled.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;

use super::bucket::{Direction, ThrottleState};
use super::config::ThrottleConfig;
use crate::env::Env;
use crate::util::{OneshotSender, oneshot};

/// One queued request: its size and what releases it.
type Waiter = (u64, OneshotSender<()>);

struct Inner {
    state: ThrottleState,
    /// Queued requests per direction and member id, each queue in arrival order.
    queues: [BTreeMap<u64, VecDeque<Waiter>>; 2],
    /// The member served last per direction (the next turn goes to the one after it).
    last_served: [u64; 2],
    /// A release timer runs for the direction.
    timer: [bool; 2],
    /// Drained sections per member: its requests bypass the limits while in one.
    disabled: BTreeMap<u64, u32>,
}

/// A throttle group (QEMU's `throttle-group` object).
pub struct ThrottleGroup {
    env: Rc<dyn Env>,
    inner: RefCell<Inner>,
    next_member: Cell<u64>,
    /// Members that joined and have not left (a group in use cannot be deleted).
    members: Cell<u32>,
}

impl ThrottleGroup {
    /// A group with `config` (already validated).
    pub fn new(env: Rc<dyn Env>, config: ThrottleConfig) -> Rc<ThrottleGroup> {
        let now = env.now_ns();
        Rc::new(ThrottleGroup {
            env,
            inner: RefCell::new(Inner {
                state: ThrottleState::new(config, now),
                queues: Default::default(),
                last_served: [0; 2],
                timer: [false; 2],
                disabled: BTreeMap::new(),
            }),
            next_member: Cell::new(1),
            members: Cell::new(0),
        })
    }

    /// The configuration.
    pub fn config(&self) -> ThrottleConfig {
        *self.inner.borrow().state.config()
    }

    /// Replace the configuration (buckets start empty; queued requests are re-timed).
    pub fn set_config(self: &Rc<Self>, config: ThrottleConfig) {
        self.inner.borrow_mut().state.set_config(config);
        for dir in [Direction::Read, Direction::Write] {
            self.arm(dir);
        }
    }

    /// A new member id.
    pub fn join(&self) -> u64 {
        self.members.set(self.members.get() + 1);
        let id = self.next_member.get();
        self.next_member.set(id + 1);
        id
    }

    /// Wait until a request of `bytes` in `dir` from `member` may start, and account it.
    pub async fn intercept(self: &Rc<Self>, member: u64, dir: Direction, bytes: u64) {
        let rx = {
            let mut inner = self.inner.borrow_mut();
            if inner.disabled.get(&member).is_some_and(|&n| n > 0) {
                return;
            }
            let now = self.env.now_ns();
            inner.state.leak(now);
            let queued = inner.queues[dir as usize].values().any(|q| !q.is_empty());
            if !queued && inner.state.wait_ns(dir) == 0 {
                inner.state.account(dir, bytes);
                return;
            }
            let (tx, rx) = oneshot();
            inner.queues[dir as usize]
                .entry(member)
                .or_default()
                .push_back((bytes, tx));
            rx
        };
        self.arm(dir);
        rx.await;
    }

    /// A drained section of `member` begins: release its queued requests now and let its
    /// requests pass until [`ThrottleGroup::drain_end`].
    pub fn drain_begin(&self, member: u64) {
        let mut inner = self.inner.borrow_mut();
        *inner.disabled.entry(member).or_insert(0) += 1;
        for dir in [Direction::Read, Direction::Write] {
            let waiters = inner.queues[dir as usize].remove(&member);
            for (bytes, tx) in waiters.into_iter().flatten() {
                inner.state.account(dir, bytes);
                tx.send(());
            }
        }
    }

    /// The drained section of `member` ends.
    pub fn drain_end(&self, member: u64) {
        let mut inner = self.inner.borrow_mut();
        if let Some(n) = inner.disabled.get_mut(&member) {
            *n = n.saturating_sub(1);
        }
    }

    /// The member leaves: its queued requests are released (it is drained before that).
    pub fn leave(&self, member: u64) {
        self.drain_begin(member);
        self.inner.borrow_mut().disabled.remove(&member);
        self.members.set(self.members.get().saturating_sub(1));
    }

    /// True while a member uses the group.
    pub fn in_use(&self) -> bool {
        self.members.get() > 0
    }

    /// Start the release timer of `dir` unless it runs or nothing is queued.
    fn arm(self: &Rc<Self>, dir: Direction) {
        {
            let mut inner = self.inner.borrow_mut();
            let d = dir as usize;
            if inner.timer[d] || inner.queues[d].values().all(VecDeque::is_empty) {
                return;
            }
            inner.timer[d] = true;
        }
        let group = Rc::clone(self);
        self.env.spawn(
            "throttle-timer",
            Box::pin(async move { group.release_loop(dir).await }),
        );
    }

    /// Release the queued requests of `dir` one by one as the buckets allow, members in turn.
    async fn release_loop(self: Rc<Self>, dir: Direction) {
        let d = dir as usize;
        loop {
            let wait = {
                let mut inner = self.inner.borrow_mut();
                inner.state.leak(self.env.now_ns());
                inner.state.wait_ns(dir)
            };
            if wait > 0 {
                self.env.sleep_until(self.env.now_ns() + wait).await;
                continue;
            }
            let mut inner = self.inner.borrow_mut();
            let last = inner.last_served[d];
            let queues = &mut inner.queues[d];
            queues.retain(|_, q| !q.is_empty());
            let next = queues
                .range(last + 1..)
                .map(|(&m, _)| m)
                .next()
                .or_else(|| queues.keys().next().copied());
            let Some(member) = next else {
                inner.timer[d] = false;
                return;
            };
            let (bytes, tx) = queues
                .get_mut(&member)
                .and_then(VecDeque::pop_front)
                .expect("a member with a non-empty queue");
            inner.last_served[d] = member;
            inner.state.account(dir, bytes);
            tx.send(());
        }
    }
}
