//! The rebase job (`blk rebase` in safe mode, as `qemu-img rebase`): give an image a new
//! backing file (or none) without changing what it reads.
//!
//! `run` walks the image in chunks; ranges the image allocates itself are skipped. Elsewhere the
//! image reads from its old backing chain: those bytes are compared, sector by sector, with
//! what the new backing file (zeroes when none) provides there, and every run of differing
//! sectors is written into the image. `prepare` then rewrites the image header (name and format
//! of the new backing file) and points the image's backing edge at the new backing node.
//!
//! Rate limited on written bytes; a pause point per chunk; errors as `on-error` says (reads
//! "read", writes "write"; ignore and stop retry the chunk).
//!
//! Never names a concrete driver type.

use std::cell::RefCell;
use std::rc::Rc;

use crate::env::LocalBoxFuture;
use crate::error::{Error, Result};
use crate::graph::{Child, Node, set_backing};
use crate::io::{IoBuf, ReqFlags};
use crate::types::{OnError, Perms};

use super::{ChunkResult, IgnoredChunk, Job, JobDriver, JobOptions, JobRegistry};

/// Bytes compared per iteration.
pub const REBASE_CHUNK: u64 = 512 << 10;
const SECTOR: usize = 512;

/// What a safe rebase does.
pub struct RebaseSpec {
    /// The image being rebased (its current chain is the "old" backing).
    pub image: Rc<Node>,
    /// The new backing node (`None`: no backing file).
    pub new_backing: Option<Rc<Node>>,
    /// The backing file name written into the header.
    pub name: Option<String>,
    /// The backing format written into the header.
    pub format: Option<String>,
    /// `on-error`.
    pub on_error: OnError,
}

/// The rebase job.
pub struct RebaseJob {
    spec: RebaseSpec,
    image: RefCell<Option<Child>>,
    new: RefCell<Option<Child>>,
}

/// Create and start a safe rebase.
pub async fn start(jobs: &Rc<JobRegistry>, opts: &JobOptions, spec: RebaseSpec) -> Result<Rc<Job>> {
    let image = spec.image.clone();
    let new_backing = spec.new_backing.clone();
    let drv = Rc::new(RebaseJob {
        spec,
        image: RefCell::new(None),
        new: RefCell::new(None),
    });
    let job = jobs.create(opts, drv.clone(), None)?;
    let setup = (|| {
        let c = job.add_node(
            &image,
            "image",
            Perms::CONSISTENT_READ | Perms::WRITE,
            Perms::ALL,
        )?;
        *drv.image.borrow_mut() = Some(c);
        if let Some(n) = &new_backing {
            let c = job.add_node(n, "new backing", Perms::CONSISTENT_READ, Perms::ALL)?;
            *drv.new.borrow_mut() = Some(c);
        }
        Ok::<(), Error>(())
    })();
    if let Err(e) = setup {
        job.abandon().await;
        return Err(e);
    }
    job.start();
    Ok(job)
}

impl RebaseJob {
    async fn work(self: Rc<Self>, job: Rc<Job>) -> Result<()> {
        let image = self.image.borrow().clone().expect("rebase attached");
        let new = self.new.borrow().clone();
        let len = image.len();
        job.set_progress_total(len);
        let policy = self.spec.on_error;
        job.copy_in_chunks(len, REBASE_CHUNK, policy, IgnoredChunk::Retry, |o, n| {
            self.chunk(&image, new.as_ref(), o, n)
        })
        .await
        .map(drop)
    }

    /// One chunk: (bytes covered, bytes written), or the error and whether it was a read.
    async fn chunk(
        &self,
        image: &Child,
        new: Option<&Child>,
        offset: u64,
        want: u64,
    ) -> ChunkResult {
        let st = image
            .chain_status(offset, want, None)
            .await
            .map_err(|e| (e, true))?;
        let n = st.len;
        if st
            .node
            .as_ref()
            .is_some_and(|x| Rc::ptr_eq(x, &self.spec.image))
        {
            return Ok((n, 0));
        }
        let (old, r) = image
            .read(offset, IoBuf::new(n as usize), ReqFlags::NONE)
            .await;
        r.map_err(|e| (e, true))?;
        let newbuf = match new {
            Some(c) => {
                let (b, r) = c.read(offset, IoBuf::new(n as usize), ReqFlags::NONE).await;
                r.map_err(|e| (e, true))?;
                b.as_slice().to_vec()
            }
            None => vec![0u8; n as usize],
        };
        let old = old.as_slice();
        let mut written = 0;
        let mut i = 0usize;
        while i < n as usize {
            let differs = |at: usize| {
                let end = (at + SECTOR).min(n as usize);
                old[at..end] != newbuf[at..end]
            };
            if !differs(i) {
                i += SECTOR;
                continue;
            }
            let start = i;
            while i < n as usize && differs(i) {
                i += SECTOR;
            }
            let end = i.min(n as usize);
            image
                .write(
                    offset + start as u64,
                    IoBuf::from_slice(&old[start..end]),
                    ReqFlags::NONE,
                )
                .await
                .1
                .map_err(|e| (e, false))?;
            written += (end - start) as u64;
        }
        Ok((n, written))
    }

    async fn finish(self: Rc<Self>) -> Result<()> {
        let image = &self.spec.image;
        crate::request::change_backing_file(
            image,
            self.spec.name.as_deref(),
            self.spec.format.as_deref(),
        )
        .await?;
        set_backing(image, self.spec.new_backing.as_ref()).await
    }
}

impl JobDriver for RebaseJob {
    fn job_type(&self) -> &'static str {
        "rebase"
    }

    fn run(self: Rc<Self>, job: Rc<Job>) -> LocalBoxFuture<'static, Result<()>> {
        Box::pin(self.work(job))
    }

    fn prepare(self: Rc<Self>, _job: Rc<Job>) -> LocalBoxFuture<'static, Result<()>> {
        Box::pin(self.finish())
    }
}
