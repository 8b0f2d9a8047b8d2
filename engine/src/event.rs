//! Events: the QMP events the engine emits, and the debug events (blkdebug's names) raised at
//! fixed points of the request path and the drivers.
//!
//! QMP events go to an ordered queue with the env's timestamp; clients (the QMP front end, the
//! simulator's transcript) drain it. Debug events feed blkdebug rules, simulator breakpoints and
//! trace hashes; they cost one flag test when nobody listens.
//!
//! Importable from anywhere; imports only `error`, `types` and `util`.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;

use serde_json::Value;

use crate::util::Notify;

/// Every QMP event the engine emits, with the keys of its `data` object (QEMU's names). Front
/// ends that match events by field (the simulator's `wait event NAME key=value`) check keys
/// against this table, so a misspelt key is an error instead of a wait that never ends.
/// Keep it in step with the `emit` calls (a test in the simulator checks the emitted events).
pub const EVENT_FIELDS: &[(&str, &[&str])] = &[
    ("BLOCK_EXPORT_DELETED", &["id"]),
    (
        "BLOCK_IMAGE_CORRUPTED",
        &["device", "node-name", "msg", "offset", "size", "fatal"],
    ),
    (
        "BLOCK_IO_ERROR",
        &[
            "device",
            "node-name",
            "operation",
            "action",
            "nospace",
            "reason",
        ],
    ),
    (
        "BLOCK_JOB_CANCELLED",
        &["type", "device", "len", "offset", "speed"],
    ),
    (
        "BLOCK_JOB_COMPLETED",
        &["type", "device", "len", "offset", "speed", "error"],
    ),
    ("BLOCK_JOB_ERROR", &["device", "operation", "action"]),
    ("BLOCK_JOB_PENDING", &["type", "id"]),
    (
        "BLOCK_JOB_READY",
        &["type", "device", "len", "offset", "speed"],
    ),
    (
        "BLOCK_WRITE_THRESHOLD",
        &["node-name", "amount-exceeded", "write-threshold"],
    ),
    ("JOB_STATUS_CHANGE", &["id", "status"]),
    ("RESUME", &[]),
    ("STOP", &[]),
];

/// The data keys of event `name`, or `None` for an event the engine never emits.
pub fn event_fields(name: &str) -> Option<&'static [&'static str]> {
    EVENT_FIELDS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, f)| *f)
}

/// A QMP event: its name and `data` member, stamped with the env's clock when emitted.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// Monotonic env time in ns when emitted (virtual in the simulator).
    pub time_ns: u64,
    /// QMP event name, e.g. `BLOCK_IO_ERROR`.
    pub name: &'static str,
    /// The event's `data` object.
    pub data: Value,
}

impl Event {
    /// The QMP wire form: `{"event": .., "data": .., "timestamp": {"seconds", "microseconds"}}`.
    pub fn to_qmp(&self) -> Value {
        serde_json::json!({
            "event": self.name,
            "data": self.data,
            "timestamp": {
                "seconds": self.time_ns / 1_000_000_000,
                "microseconds": (self.time_ns % 1_000_000_000) / 1000,
            }
        })
    }
}

/// Most events queued for a reader before the oldest are dropped.
pub const MAX_QUEUED_EVENTS: usize = 100_000;

/// The ordered queue of emitted QMP events.
#[derive(Default)]
pub struct EventQueue {
    queue: RefCell<VecDeque<Event>>,
    arrived: Notify,
}

impl EventQueue {
    /// Append an event.
    pub fn push(&self, event: Event) {
        let mut q = self.queue.borrow_mut();
        q.push_back(event);
        // Nobody may be reading (a tool that never asks for events): the oldest go, as a
        // monitor without a client keeps only so much.
        if q.len() > MAX_QUEUED_EVENTS {
            q.pop_front();
        }
        drop(q);
        self.arrived.notify_all();
    }

    /// Take every queued event, oldest first.
    pub fn drain(&self) -> Vec<Event> {
        self.queue.borrow_mut().drain(..).collect()
    }

    /// Number of queued events.
    pub fn len(&self) -> usize {
        self.queue.borrow().len()
    }

    /// True when no event is queued.
    pub fn is_empty(&self) -> bool {
        self.queue.borrow().is_empty()
    }

    /// Wait until the next event is pushed.
    pub async fn wait(&self) {
        self.arrived.wait().await
    }
}

macro_rules! debug_events {
    ($($variant:ident => $name:literal,)*) => {
        /// The points blkdebug rules and simulator breakpoints can name (QEMU's `BlkdebugEvent`
        /// names, plus blk's own drain, job and cutover events).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[allow(missing_docs)]
        pub enum DebugEvent { $($variant,)* }

        impl DebugEvent {
            /// Every event, in declaration order.
            pub const ALL: &'static [DebugEvent] = &[$(DebugEvent::$variant,)*];

            /// The name used in rules and scenario files.
            pub fn name(self) -> &'static str {
                match self { $(DebugEvent::$variant => $name,)* }
            }

            /// Look an event up by name.
            pub fn from_name(name: &str) -> Option<DebugEvent> {
                match name { $($name => Some(DebugEvent::$variant),)* _ => None }
            }
        }
    };
}

debug_events! {
    L1Update => "l1_update",
    L1GrowAllocTable => "l1_grow_alloc_table",
    L1GrowWriteTable => "l1_grow_write_table",
    L1GrowActivateTable => "l1_grow_activate_table",
    L1ShrinkWriteTable => "l1_shrink_write_table",
    L1ShrinkFreeL2Clusters => "l1_shrink_free_l2_clusters",
    L2Load => "l2_load",
    L2Update => "l2_update",
    L2UpdateCompressed => "l2_update_compressed",
    L2AllocCowRead => "l2_alloc_cow_read",
    L2AllocWrite => "l2_alloc_write",
    ReadAio => "read_aio",
    ReadBackingAio => "read_backing_aio",
    ReadCompressed => "read_compressed",
    WriteAio => "write_aio",
    WriteCompressed => "write_compressed",
    VmstateLoad => "vmstate_load",
    VmstateSave => "vmstate_save",
    CowRead => "cow_read",
    CowWrite => "cow_write",
    ReftableLoad => "reftable_load",
    ReftableGrow => "reftable_grow",
    ReftableUpdate => "reftable_update",
    RefblockLoad => "refblock_load",
    RefblockUpdate => "refblock_update",
    RefblockUpdatePart => "refblock_update_part",
    RefblockAlloc => "refblock_alloc",
    RefblockAllocHookup => "refblock_alloc_hookup",
    RefblockAllocWrite => "refblock_alloc_write",
    RefblockAllocWriteBlocks => "refblock_alloc_write_blocks",
    RefblockAllocWriteTable => "refblock_alloc_write_table",
    RefblockAllocSwitchTable => "refblock_alloc_switch_table",
    ClusterAlloc => "cluster_alloc",
    ClusterAllocBytes => "cluster_alloc_bytes",
    ClusterFree => "cluster_free",
    ClusterAllocSpace => "cluster_alloc_space",
    FlushToOs => "flush_to_os",
    FlushToDisk => "flush_to_disk",
    PwritevRmwHead => "pwritev_rmw_head",
    PwritevRmwAfterHead => "pwritev_rmw_after_head",
    PwritevRmwTail => "pwritev_rmw_tail",
    PwritevRmwAfterTail => "pwritev_rmw_after_tail",
    Pwritev => "pwritev",
    PwritevZero => "pwritev_zero",
    PwritevDone => "pwritev_done",
    EmptyImagePrepare => "empty_image_prepare",
    CorWrite => "cor_write",
    None => "none",
    // blk's own points (not in QEMU's enum).
    Preadv => "preadv",
    DrainBegin => "drain_begin",
    DrainEnd => "drain_end",
    JobIteration => "job_iteration",
    // The mirror/active-commit cutover (named as QEMU names it, pivot).
    JobPivot => "job_pivot",
}

/// Counts how many listeners want debug events, so the request path can skip the slow path with
/// a single load when nobody listens.
#[derive(Default)]
pub struct DebugSwitch {
    listeners: Cell<u32>,
}

impl DebugSwitch {
    /// True when at least one listener is registered.
    #[inline]
    pub fn active(&self) -> bool {
        self.listeners.get() != 0
    }

    /// Register one more listener.
    pub fn add(&self) {
        self.listeners.set(self.listeners.get() + 1);
    }

    /// Unregister a listener.
    pub fn remove(&self) {
        self.listeners.set(
            self.listeners
                .get()
                .checked_sub(1)
                .expect("listener count underflow"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_qemu_event_name_round_trips() {
        assert!(DebugEvent::ALL.len() >= 48);
        for ev in DebugEvent::ALL {
            assert_eq!(DebugEvent::from_name(ev.name()), Some(*ev));
        }
    }

    /// Issue 10 bug 11: nobody reading must not mean unbounded growth.
    #[test]
    fn an_unread_event_queue_keeps_the_newest_events_only() {
        let q = EventQueue::default();
        for i in 0..MAX_QUEUED_EVENTS + 5 {
            q.push(Event {
                time_ns: i as u64,
                name: "JOB_STATUS_CHANGE",
                data: serde_json::Value::Null,
            });
        }
        let events = q.drain();
        assert_eq!(events.len(), MAX_QUEUED_EVENTS);
        assert_eq!(events[0].time_ns, 5);
    }
}
