//! The virtual disk: a file system of `VFile`s by path, with a volatile write cache per file,
//! seeded latencies, fault injection and power-loss crashes.
//!
//! [`SimFs`] implements the engine's [`HostFs`]; the files it opens (`SimFile`, in `handle.rs`) implement
//! `HostFile`. Metadata (create, remove) is synchronous and always durable: the simulator does not
//! model directory fsync. Data operations take a virtual latency drawn from the disk stream, so
//! concurrent requests complete out of order, and take effect when they complete.
//!
//! Besides the seam, `SimFs` offers what scenario runners and checkers need: setting up files,
//! reading the current or durable bytes, injecting faults, crashing (now, or when a chosen flush or
//! write reaches the disk: `schedule.rs`), exporting to a host file.

mod crash;
mod file;
pub use file::VOLATILE_CACHE_BYTES;
mod handle;
mod ops;
mod pages;
mod schedule;

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::{Rc, Weak};

use engine::env::{HostFile, HostFs, OpenOptions};
use engine::{Errno, Error, Result};
use rand_chacha::ChaCha8Rng;

use crate::config::SECTOR;
pub use crash::CrashReport;
pub(crate) use file::VFile;
pub(crate) use pages::PageStore;
pub use schedule::{CrashAt, DiskCounts};

use crate::clock::Clock;
use crate::config::DiskConfig;
use crate::executor::Executor;
use crate::fault::{FaultId, FaultSpec, FaultState, FaultTable};
use crate::trace::{Trace, tag};

pub(crate) struct FsInner {
    pub(crate) config: DiskConfig,
    pub(crate) files: RefCell<BTreeMap<String, Rc<RefCell<VFile>>>>,
    next_file_id: Cell<u64>,
    /// Bumped by every crash; handles opened before it are stale.
    pub(crate) epoch: Cell<u64>,
    pub(crate) disk_rng: RefCell<ChaCha8Rng>,
    pub(crate) faults: RefCell<FaultTable>,
    pub(crate) clock: Rc<Clock>,
    pub(crate) exec: Weak<Executor>,
    pub(crate) trace: Rc<Trace>,
    /// The crash stream of the seed (outcomes of power losses).
    pub(crate) crash_rng: RefCell<ChaCha8Rng>,
    /// Disk events so far (`schedule.rs`).
    pub(crate) counts: Cell<DiskCounts>,
    /// A power loss waiting for its disk event.
    pub(crate) scheduled: Cell<Option<CrashAt>>,
    /// The report of a scheduled crash that struck, until taken.
    pub(crate) struck: Cell<Option<CrashReport>>,
}

impl FsInner {
    /// Allocated bytes of the current view of every file.
    pub(crate) fn allocated_bytes(&self) -> u64 {
        self.files
            .borrow()
            .values()
            .map(|f| f.borrow().current.allocated_bytes())
            .sum()
    }
}

/// The virtual file system. Cloning is cheap (an `Rc`).
#[derive(Clone)]
pub struct SimFs {
    pub(crate) inner: Rc<FsInner>,
}

/// The bare OS error, as the real file system gives it: callers name the file in their own
/// words (the file driver as QEMU does, "Could not open 'PATH': ...").
fn no_file(_path: &str) -> Error {
    Error::io(Errno::ENOENT)
}

impl SimFs {
    pub(crate) fn new(
        config: DiskConfig,
        disk_rng: ChaCha8Rng,
        fault_rng: ChaCha8Rng,
        crash_rng: ChaCha8Rng,
        clock: Rc<Clock>,
        exec: Weak<Executor>,
        trace: Rc<Trace>,
    ) -> SimFs {
        assert!(
            config.direct_align.is_power_of_two(),
            "direct_align must be a power of two"
        );
        SimFs {
            inner: Rc::new(FsInner {
                config,
                files: RefCell::new(BTreeMap::new()),
                next_file_id: Cell::new(1),
                epoch: Cell::new(0),
                disk_rng: RefCell::new(disk_rng),
                faults: RefCell::new(FaultTable::new(fault_rng)),
                clock,
                exec,
                trace,
                crash_rng: RefCell::new(crash_rng),
                counts: Cell::new(DiskCounts::default()),
                scheduled: Cell::new(None),
                struck: Cell::new(None),
            }),
        }
    }

    fn file(&self, path: &str) -> Result<Rc<RefCell<VFile>>> {
        self.inner
            .files
            .borrow()
            .get(path)
            .cloned()
            .ok_or_else(|| no_file(path))
    }

    fn new_file(&self, path: &str) -> Rc<RefCell<VFile>> {
        let id = self.inner.next_file_id.get();
        self.inner.next_file_id.set(id + 1);
        self.inner.trace.record(tag::OPEN, &[id, 1]);
        let file = Rc::new(RefCell::new(VFile::new(id)));
        self.inner
            .files
            .borrow_mut()
            .insert(path.to_string(), file.clone());
        file
    }

    /// The disk configuration.
    pub fn config(&self) -> &DiskConfig {
        &self.inner.config
    }

    /// Create (or replace) `path` with `data` as its durable contents.
    pub fn create_file(&self, path: &str, data: &[u8]) -> Result<()> {
        let file = self.new_file(path);
        let mut f = file.borrow_mut();
        f.durable.write(0, data);
        f.durable_len = data.len() as u64;
        f.rebuild_current();
        Ok(())
    }

    /// Paths of every file, sorted.
    pub fn files(&self) -> Vec<String> {
        self.inner.files.borrow().keys().cloned().collect()
    }

    /// The bytes a read sees now (durable bytes with the write cache applied).
    pub fn file_bytes(&self, path: &str) -> Result<Vec<u8>> {
        let file = self.file(path)?;
        let f = file.borrow();
        let mut out = vec![0; usize::try_from(f.len).expect("file fits in memory")];
        f.read(0, &mut out);
        Ok(out)
    }

    /// The bytes that survive a power loss that keeps no unflushed write (FUA writes survive).
    pub fn durable_bytes(&self, path: &str) -> Result<Vec<u8>> {
        let file = self.file(path)?;
        let (store, len) = file.borrow().durable_view();
        let mut out = vec![0; usize::try_from(len).expect("file fits in memory")];
        store.read(0, &mut out);
        Ok(out)
    }

    /// Bytes of `path` written and not yet durable (its share of the volatile write cache).
    pub fn unflushed_bytes(&self, path: &str) -> Result<u64> {
        Ok(self.file(path)?.borrow().cached_bytes())
    }

    /// The current length of `path`.
    pub fn file_len(&self, path: &str) -> Result<u64> {
        Ok(self.file(path)?.borrow().len)
    }

    /// Number of completed-but-unflushed operations of `path`.
    pub fn dirty_entries(&self, path: &str) -> Result<usize> {
        Ok(self.file(path)?.borrow().dirty())
    }

    /// Allocated bytes over every file (current view, whole 4 KiB pages).
    pub fn allocated_bytes(&self) -> u64 {
        self.inner.allocated_bytes()
    }

    /// Mark the sectors of `[offset, offset + len)` of `path` as latent errors: reads of them
    /// fail with EIO until they are fully rewritten.
    pub fn mark_bad_sectors(&self, path: &str, offset: u64, len: u64) -> Result<()> {
        let file = self.file(path)?;
        if len > 0 {
            let mut f = file.borrow_mut();
            f.bad.extend(offset / SECTOR..=(offset + len - 1) / SECTOR);
        }
        Ok(())
    }

    /// Inject a fault; its id lets it be removed and its counters read.
    pub fn inject(&self, spec: FaultSpec) -> Result<FaultId> {
        self.inner
            .faults
            .borrow_mut()
            .inject(spec)
            .map_err(Error::invalid)
    }

    /// Remove one fault, returning its final state.
    pub fn remove_fault(&self, id: FaultId) -> Option<FaultState> {
        self.inner.faults.borrow_mut().remove(id)
    }

    /// Remove every fault (latent sector marks stay: they are on the media).
    pub fn clear_faults(&self) {
        self.inner.faults.borrow_mut().clear();
    }

    /// Every injected fault with its counters, in injection order.
    pub fn faults(&self) -> Vec<(FaultId, FaultState)> {
        self.inner.faults.borrow().census()
    }
}

impl HostFs for SimFs {
    fn open(&self, path: &str, opts: OpenOptions) -> Result<Rc<dyn HostFile>> {
        let existing = self.inner.files.borrow().get(path).cloned();
        let file = match existing {
            Some(_) if opts.create_new => {
                return Err(Error::io_msg(
                    Errno::EEXIST,
                    format!("Could not create '{path}': File exists"),
                ));
            }
            Some(f) => {
                self.inner.trace.record(tag::OPEN, &[f.borrow().id, 0]);
                f
            }
            None if opts.create || opts.create_new => self.new_file(path),
            None => return Err(no_file(path)),
        };
        if opts.truncate {
            file.borrow_mut().push(file::CacheOp::SetLen(0), false);
        }
        Ok(Rc::new(handle::SimFile::new(
            self.inner.clone(),
            file,
            path,
            opts,
        )))
    }

    fn remove(&self, path: &str) -> Result<()> {
        match self.inner.files.borrow_mut().remove(path) {
            Some(_) => Ok(()),
            None => Err(no_file(path)),
        }
    }

    fn exists(&self, path: &str) -> bool {
        self.inner.files.borrow().contains_key(path)
    }
}
