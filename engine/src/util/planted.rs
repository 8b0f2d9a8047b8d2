//! Planted bugs: known defects that tests switch on to prove the simulator's swarm finds them.
//!
//! Off by default; a thread-local bit set, so a test (or `blk sim swarm --plant NAME`) enables
//! them for its own thread only and the cost when off is one thread-local load at each site.
//! Nothing here is compiled out: the switch is a runtime one, so the engine the simulator tests
//! is the engine that ships.

use std::cell::Cell;

/// One planted bug.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bug {
    /// qcow2 writes L2 tables back without first flushing the refcount blocks and data.
    Qcow2FlushOrder = 0,
    /// A qcow2 v3 discard over a backing file deallocates (the backing data shows through).
    DiscardOverBacking = 1,
    /// A drained BlockBackend does not wake the requests it queued when the drain ends.
    DrainEndLosesQueued = 2,
    /// Unaligned writes (read-modify-write) do not wait for overlapping requests.
    RmwUnserialised = 3,
    /// Mirror in background mode forgets to mark guest writes dirty.
    MirrorForgetsDirty = 4,
    /// Mirror's final check neither drains the guest nor keeps it drained until the cutover
    /// (the name keeps QEMU's word, pivot).
    MirrorPivotUndrained = 5,
    /// Write-zeroes do not mark the node's dirty bitmaps.
    BitmapMissesZeroes = 6,
    /// Throttle buckets leak at twice their average rate (a limited device runs at double).
    ThrottleLeaksFast = 7,
}

/// Every planted bug with its command-line name.
pub const ALL: &[(Bug, &str)] = &[
    (Bug::Qcow2FlushOrder, "qcow2-flush-order"),
    (Bug::DiscardOverBacking, "discard-over-backing"),
    (Bug::DrainEndLosesQueued, "drain-end-loses-queued"),
    (Bug::RmwUnserialised, "rmw-unserialised"),
    (Bug::MirrorForgetsDirty, "mirror-forgets-dirty"),
    (Bug::MirrorPivotUndrained, "mirror-pivot-undrained"),
    (Bug::BitmapMissesZeroes, "bitmap-misses-zeroes"),
    (Bug::ThrottleLeaksFast, "throttle-leaks-fast"),
];

/// The command-line names.
pub const NAMES: &[&str] = &[
    "qcow2-flush-order",
    "discard-over-backing",
    "drain-end-loses-queued",
    "rmw-unserialised",
    "mirror-forgets-dirty",
    "mirror-pivot-undrained",
    "bitmap-misses-zeroes",
    "throttle-leaks-fast",
];

thread_local! {
    static ENABLED: Cell<u32> = const { Cell::new(0) };
}

/// True when `bug` is switched on for this thread.
#[inline]
pub fn on(bug: Bug) -> bool {
    ENABLED.with(|e| e.get() & (1 << bug as u32) != 0)
}

/// Switch `bug` on for this thread.
pub fn enable(bug: Bug) {
    ENABLED.with(|e| e.set(e.get() | (1 << bug as u32)));
}

/// Switch a bug on by name; false when the name is unknown.
pub fn enable_named(name: &str) -> bool {
    match ALL.iter().find(|(_, n)| *n == name) {
        Some((b, _)) => {
            enable(*b);
            true
        }
        None => false,
    }
}

/// Switch every bug off for this thread.
pub fn disable_all() {
    ENABLED.with(|e| e.set(0));
}

/// True when any planted bug is on for this thread.
pub fn any_on() -> bool {
    ENABLED.with(|e| e.get() != 0)
}

/// Run `f` with every planted bug off, then switch back on the ones that were on: the control
/// run that tells a planted bug's failure from one the scenario has without it.
pub fn suspended<R>(f: impl FnOnce() -> R) -> R {
    let saved = ENABLED.with(|e| e.replace(0));
    let out = f();
    ENABLED.with(|e| e.set(saved));
    out
}
