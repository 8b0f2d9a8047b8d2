//! BlockBackend: the device-facing handle on a root node (QEMU's BlockBackend).
//!
//! A backend attaches to its root node with the permissions its user needs (a guest device:
//! consistent read, write unless read-only, sharing only what a guest can tolerate), checks
//! guest requests against the device size, queues them while the node is drained, turns every
//! write into FUA in writethrough mode, and applies the `rerror`/`werror` policies: report,
//! ignore, stop (the machine stops; the request is retried on `cont`) and enospc, with
//! `BLOCK_IO_ERROR` events and the device's I/O status.
//!
//! Sits above `request` and `graph`; must not import `engine`, `qmp` or `job`.

mod machine;
mod policy;
mod throttle;

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use serde_json::{Value, json};

use crate::error::{Errno, Error, Result};
use crate::graph::{Child, GraphCtx, Node, ParentOps, attach_external, detach, set_external_perms};
use crate::io::{BlockStatus, BufResult, IoBuf, ReqFlags};
use crate::throttle::Direction;
use crate::types::{OnError, Perms};
use crate::util::Notify;

pub use machine::Machine;
pub use policy::IoStatus;
pub use throttle::QMP_BUCKETS;

/// How a backend is set up.
#[derive(Clone, Copy, Debug)]
pub struct BackendOptions {
    /// Read errors: report (default), ignore, stop.
    pub rerror: OnError,
    /// Write errors: enospc (default), report, ignore, stop.
    pub werror: OnError,
    /// Writeback (true, default) or writethrough (every write is FUA).
    pub write_cache: bool,
    /// Permissions taken on the root node.
    pub perm: Perms,
    /// Permissions shared with other users of the root node.
    pub shared: Perms,
    /// Copy-on-read (qemu-io `-C`): a read first copies what the root node does not allocate
    /// itself from its backing chain into it (whole clusters, by the format's copy-on-write).
    pub copy_on_read: bool,
}

impl BackendOptions {
    /// What a guest device takes: consistent read, write unless read-only, resize; it shares
    /// reads, unchanged writes, resizes and graph changes, and shares writes only with
    /// `share_rw`.
    pub fn guest_device(read_only: bool, share_rw: bool) -> BackendOptions {
        let mut perm = Perms::CONSISTENT_READ;
        if !read_only {
            perm |= Perms::WRITE;
        }
        let mut shared =
            Perms::CONSISTENT_READ | Perms::WRITE_UNCHANGED | Perms::GRAPH_MOD | Perms::RESIZE;
        if share_rw {
            shared |= Perms::WRITE;
        }
        BackendOptions {
            rerror: OnError::Report,
            werror: OnError::Enospc,
            write_cache: true,
            perm,
            shared,
            copy_on_read: false,
        }
    }

    /// What a tool like `blk io` takes: everything it may need, sharing only reads.
    pub fn tool(read_only: bool) -> BackendOptions {
        let perm = if read_only {
            Perms::CONSISTENT_READ
        } else {
            Perms::CONSISTENT_READ | Perms::WRITE | Perms::RESIZE
        };
        let shared = Perms::CONSISTENT_READ | Perms::WRITE_UNCHANGED | Perms::GRAPH_MOD;
        BackendOptions {
            rerror: OnError::Report,
            werror: OnError::Report,
            write_cache: true,
            perm,
            shared,
            copy_on_read: false,
        }
    }
}

/// A device-facing handle on a root node.
pub struct BlockBackend {
    name: String,
    ctx: Rc<GraphCtx>,
    machine: Rc<Machine>,
    root: RefCell<Option<Child>>,
    opts: Cell<BackendOptions>,
    quiesce: Cell<u32>,
    in_flight: Cell<u32>,
    resumed: Notify,
    iostatus: Cell<IoStatus>,
    /// The device's own I/O limits (`block_set_io_throttle`), if any.
    throttle: RefCell<Option<throttle::DeviceThrottle>>,
}

impl BlockBackend {
    /// Attach a new backend named `name` to `node`.
    pub fn new(
        name: &str,
        node: &Rc<Node>,
        machine: &Rc<Machine>,
        opts: BackendOptions,
    ) -> Result<Rc<BlockBackend>> {
        let bb = Rc::new(BlockBackend {
            name: name.to_string(),
            ctx: node.ctx().clone(),
            machine: machine.clone(),
            root: RefCell::new(None),
            opts: Cell::new(opts),
            quiesce: Cell::new(0),
            in_flight: Cell::new(0),
            resumed: Notify::new(),
            iostatus: Cell::new(IoStatus::Ok),
            throttle: RefCell::new(None),
        });
        let weak: std::rc::Weak<dyn ParentOps> = Rc::downgrade(&(bb.clone() as Rc<dyn ParentOps>));
        let child = attach_external(weak, node, "root", opts.perm, opts.shared)?;
        *bb.root.borrow_mut() = Some(child);
        machine.register(&bb);
        Ok(bb)
    }

    /// The backend's (device's) name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The root node now (it changes at a job's cutover).
    pub fn root_node(&self) -> Option<Rc<Node>> {
        self.root.borrow().as_ref().map(|c| c.node())
    }

    /// The edge to the root node.
    pub fn root(&self) -> Option<Child> {
        self.root.borrow().clone()
    }

    /// Current options.
    pub fn options(&self) -> BackendOptions {
        self.opts.get()
    }

    /// Change error policies.
    pub fn set_on_error(&self, rerror: OnError, werror: OnError) {
        let mut o = self.opts.get();
        o.rerror = rerror;
        o.werror = werror;
        self.opts.set(o);
    }

    /// Switch between writeback (true) and writethrough.
    pub fn set_write_cache(&self, enabled: bool) {
        let mut o = self.opts.get();
        o.write_cache = enabled;
        self.opts.set(o);
    }

    /// Change the permissions held on the root (two-phase; unchanged on error).
    pub fn set_perms(&self, perm: Perms, shared: Perms) -> Result<()> {
        let child = self.root_checked()?;
        set_external_perms(&child, perm, shared)?;
        let mut o = self.opts.get();
        o.perm = perm;
        o.shared = shared;
        self.opts.set(o);
        Ok(())
    }

    /// The device's I/O status.
    pub fn iostatus(&self) -> IoStatus {
        self.iostatus.get()
    }

    /// Guest requests in flight.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.get()
    }

    /// True while a drained section holds guest requests back.
    pub fn is_quiesced(&self) -> bool {
        self.quiesce.get() > 0
    }

    /// Detach from the root node (the node is released if nothing else uses it).
    pub async fn detach(&self) -> Result<()> {
        self.throttle_detach();
        let child = self.root.borrow_mut().take();
        match child {
            Some(c) => detach(c.edge()).await,
            None => Ok(()),
        }
    }

    fn root_checked(&self) -> Result<Child> {
        self.root.borrow().clone().ok_or_else(|| {
            Error::with_class(
                crate::error::ErrorClass::DeviceNotActive,
                format!("Device '{}' has no medium", self.name),
            )
        })
    }

    /// Device length in bytes.
    pub fn len(&self) -> Result<u64> {
        Ok(self.root_checked()?.len())
    }

    /// True when the device has length 0.
    pub fn is_empty(&self) -> bool {
        self.len().map(|l| l == 0).unwrap_or(true)
    }

    fn check_bounds(&self, offset: u64, len: u64) -> Result<Child> {
        let child = self.root_checked()?;
        let size = child.len();
        if offset > size || len > size - offset {
            return Err(Error::io_msg(
                Errno::EIO,
                format!(
                    "Request at {offset}+{len} is past the end of device '{}' ({size} bytes)",
                    self.name
                ),
            ));
        }
        Ok(child)
    }

    /// Wait while the machine is stopped or a drained section holds requests back, then count
    /// the request in.
    async fn admit(&self) -> InFlight<'_> {
        loop {
            if !self.machine.is_running() {
                self.machine.wait_running().await;
            } else if self.quiesce.get() > 0 {
                self.resumed.wait().await;
            } else {
                break;
            }
        }
        self.in_flight.set(self.in_flight.get() + 1);
        InFlight(self)
    }

    /// Write `buf` at `pos` of the image's VM state area (qemu-io `write -b`; savevm): the
    /// first format below the device (through filters) holds it; ENOTSUP where it has none.
    pub async fn save_vmstate(&self, pos: u64, buf: IoBuf) -> BufResult {
        self.vmstate_io(pos, buf, true).await
    }

    /// Read `buf.len()` bytes at `pos` of the image's VM state area (qemu-io `read -b`).
    pub async fn load_vmstate(&self, pos: u64, buf: IoBuf) -> BufResult {
        self.vmstate_io(pos, buf, false).await
    }

    async fn vmstate_io(&self, pos: u64, buf: IoBuf, save: bool) -> BufResult {
        let node = match self.root_checked() {
            Ok(child) => vmstate_node(child.node()),
            Err(e) => return (buf, Err(e)),
        };
        let _in_flight = self.admit().await;
        match node.driver().format_ops() {
            Some(ops) if save => ops.save_vmstate(pos, buf).await,
            Some(ops) => ops.load_vmstate(pos, buf).await,
            None => (buf, Err(Error::io(Errno::ENOTSUP))),
        }
    }

    /// Guest read.
    pub async fn read(&self, offset: u64, buf: IoBuf) -> BufResult {
        let child = match self.check_bounds(offset, buf.len() as u64) {
            Ok(c) => c,
            Err(e) => return (buf, Err(e)),
        };
        let mut buf = buf;
        loop {
            let guard = self.admit_io(Direction::Read, buf.len() as u64).await;
            if self.opts.get().copy_on_read
                && let Err(e) = child.populate(offset, buf.len() as u64).await
            {
                drop(guard);
                match self.on_result(Err(e), true).await {
                    policy::Outcome::Done(r) => return (buf, r),
                    policy::Outcome::Retry => continue,
                }
            }
            let (b, r) = child.read(offset, buf, ReqFlags::NONE).await;
            drop(guard);
            buf = b;
            match self.on_result(r, true).await {
                policy::Outcome::Done(r) => return (buf, r),
                policy::Outcome::Retry => continue,
            }
        }
    }

    fn write_flags(&self, flags: ReqFlags) -> ReqFlags {
        if self.opts.get().write_cache {
            flags
        } else {
            flags | ReqFlags::FUA
        }
    }

    /// Guest write.
    pub async fn write(&self, offset: u64, buf: IoBuf, flags: ReqFlags) -> BufResult {
        let child = match self.check_bounds(offset, buf.len() as u64) {
            Ok(c) => c,
            Err(e) => return (buf, Err(e)),
        };
        let flags = self.write_flags(flags);
        let mut buf = buf;
        loop {
            let guard = self.admit_io(Direction::Write, buf.len() as u64).await;
            let (b, r) = child.write(offset, buf, flags).await;
            drop(guard);
            buf = b;
            match self.on_result(r, false).await {
                policy::Outcome::Done(r) => return (buf, r),
                policy::Outcome::Retry => continue,
            }
        }
    }

    /// Guest write-zeroes.
    pub async fn write_zeroes(&self, offset: u64, len: u64, flags: ReqFlags) -> Result<()> {
        let child = self.check_bounds(offset, len)?;
        let flags = self.write_flags(flags);
        loop {
            let guard = self.admit_io(Direction::Write, len).await;
            let r = child.write_zeroes(offset, len, flags).await;
            drop(guard);
            match self.on_result(r, false).await {
                policy::Outcome::Done(r) => return r,
                policy::Outcome::Retry => continue,
            }
        }
    }

    /// Guest discard.
    pub async fn discard(&self, offset: u64, len: u64) -> Result<()> {
        let child = self.check_bounds(offset, len)?;
        loop {
            let guard = self.admit_io(Direction::Write, len).await;
            let r = child.discard(offset, len).await;
            drop(guard);
            match self.on_result(r, false).await {
                policy::Outcome::Done(r) => return r,
                policy::Outcome::Retry => continue,
            }
        }
    }

    /// Guest flush.
    pub async fn flush(&self) -> Result<()> {
        let child = self.root_checked()?;
        loop {
            let guard = self.admit().await;
            let r = child.flush().await;
            drop(guard);
            match self.on_result(r, false).await {
                policy::Outcome::Done(r) => return r,
                policy::Outcome::Retry => continue,
            }
        }
    }

    /// Allocation status of the device at `offset`.
    pub async fn block_status(&self, offset: u64, len: u64) -> Result<BlockStatus> {
        let child = self.root_checked()?;
        let _guard = self.admit().await;
        child.block_status(offset, len).await
    }

    /// Resize the device (needs RESIZE among the backend's permissions).
    pub async fn truncate(&self, len: u64) -> Result<()> {
        let child = self.root_checked()?;
        let _guard = self.admit().await;
        child
            .truncate(len, true, crate::driver::Prealloc::Off)
            .await
    }

    /// `query-block`-like description.
    pub fn describe(&self) -> Value {
        let node = self.root_node();
        let mut inserted = node.map(|n| n.describe());
        if let Some(i) = inserted.as_mut() {
            self.describe_throttle(i);
        }
        json!({
            "device": self.name,
            "qdev": self.name,
            "locked": false,
            "removable": false,
            "io-status": self.iostatus.get().as_str(),
            "inserted": inserted,
        })
    }
}

/// Counts a guest request in flight in the backend.
struct InFlight<'a>(&'a BlockBackend);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let n = self.0.in_flight.get() - 1;
        self.0.in_flight.set(n);
        if n == 0 {
            self.0.ctx.notify_progress();
        }
    }
}

impl ParentOps for BlockBackend {
    fn describe(&self) -> String {
        format!("device '{}'", self.name)
    }

    fn device_name(&self) -> Option<String> {
        (!self.name.is_empty()).then(|| self.name.clone())
    }

    fn drained_begin(&self) {
        self.quiesce.set(self.quiesce.get() + 1);
        self.throttle_drained(true);
    }

    fn drained_end(&self) {
        let n = self
            .quiesce
            .get()
            .checked_sub(1)
            .expect("backend drained_end without begin");
        self.quiesce.set(n);
        self.throttle_drained(false);
        if n == 0 && !crate::util::planted::on(crate::util::planted::Bug::DrainEndLosesQueued) {
            self.resumed.notify_all();
        }
    }

    fn drained_poll(&self) -> bool {
        self.in_flight.get() > 0
    }
}

/// The node whose format holds the VM state: `node`, or below filters the first non-filter.
fn vmstate_node(mut node: Rc<Node>) -> Rc<Node> {
    while node.driver().caps().kind == crate::driver::DriverKind::Filter {
        match node.primary_child() {
            Some(edge) => node = edge.child_node(),
            None => break,
        }
    }
    node
}
