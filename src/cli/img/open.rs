//! What every image tool shares: a real-file engine session, format probing, opening an image
//! behind a BlockBackend, and error texts in qemu-img's words.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use engine::Engine;
use engine::backend::{BackendOptions, BlockBackend};
use engine::env::real::RealEnv;
use engine::filename::image_options;
use engine::graph::{Child, Node};
use engine::qemu_io::{CacheMode, OpenSpec};
use engine::types::Perms;
use engine::{Error, Result};

/// Formats the image tools read and write.
pub(crate) const FORMATS: [&str; 3] = ["raw", "qcow2", "luks"];

/// One engine on the real-file env, for the lifetime of a command.
pub(crate) struct Tool {
    pub env: Rc<RealEnv>,
    pub engine: Rc<Engine>,
    next: Cell<u32>,
    /// `--image-opts`: `open` reads names as option strings (convert clears it before opening
    /// its target).
    pub image_opts: Cell<bool>,
    /// The cache mode `open` gives images (`-t`/`-T`; qemu-img's default is writeback).
    pub cache: Cell<CacheMode>,
    /// The first `--object` that could not be created: every `open` fails with it.
    object_error: RefCell<Option<Error>>,
    /// Files (device, inode) under the images opened without `-U`: what QEMU would hold
    /// file locks on, so a create over one of them is refused (see `check_unlocked`).
    held: RefCell<Vec<(u64, u64)>>,
    /// The file nodes' `aio` option (`-i`/`-n`; the env's default when `None`).
    pub aio: RefCell<Option<String>>,
    /// `open` leaves backing files closed (info walks the chain itself, as qemu-img does).
    pub no_backing: Cell<bool>,
}

/// An open image: its BlockBackend and top node.
pub(crate) struct Image {
    pub bb: Rc<BlockBackend>,
    pub node: Rc<Node>,
    pub format: String,
    pub path: String,
}

impl Image {
    /// The BlockBackend's root edge, for block status through the chain.
    pub fn root(&self) -> Child {
        self.bb.root().expect("an open image has a root")
    }

    /// Virtual size in bytes.
    pub fn len(&self) -> u64 {
        self.node.len()
    }
}

/// `-t CACHE`: QEMU's cache mode names (none or off, writeback, writethrough, directsync,
/// unsafe), or qemu-img's refusal.
pub(crate) fn parse_cache(mode: &str) -> Result<CacheMode> {
    CacheMode::parse(mode)
}

/// `-T SRC_CACHE`: the same names, with qemu-img's refusal for the source cache.
pub(crate) fn parse_src_cache(mode: &str) -> Result<CacheMode> {
    CacheMode::parse(mode)
        .map_err(|_| Error::generic(format!("Invalid source cache option: {mode}")))
}

/// qemu-img's message for a `-f`/`-O` value blk does not know.
pub(crate) fn check_format(fmt: &str) -> Result<()> {
    if FORMATS.contains(&fmt) {
        Ok(())
    } else {
        Err(Error::generic(format!("Unknown file format '{fmt}'")))
    }
}

impl Tool {
    pub fn new() -> Tool {
        let env = RealEnv::new();
        let engine = Rc::new(Engine::new(env.clone()));
        // The engine's diagnostics go to stderr unprefixed, as qemu-img prints them.
        engine
            .graph()
            .set_reporter(Some(Rc::new(|line: &str| eprintln!("{line}"))));
        let args = super::open_args::pending();
        let tool = Tool {
            env,
            engine,
            next: Cell::new(0),
            image_opts: Cell::new(args.image_opts),
            cache: Cell::new(CacheMode::Writeback),
            object_error: RefCell::new(None),
            held: RefCell::new(Vec::new()),
            no_backing: Cell::new(false),
            aio: RefCell::new(None),
        };
        // Validated already by `split_or_fail`; kept as the first `open`'s error should the
        // second creation fail (a secret file changed in between).
        if let Err(e) = tool.block_on(super::open_args::add_objects(&tool.engine, &args.objects)) {
            *tool.object_error.borrow_mut() = Some(e);
        }
        tool
    }

    pub fn block_on<F: Future>(&self, fut: F) -> F::Output {
        self.env.block_on(fut)
    }

    /// The probed format of the file at `path` (engine::probe, through the env), with
    /// qemu-img's open error when it cannot be read.
    pub async fn probe_format(&self, path: &str) -> Result<String> {
        engine::probe::probe_format(&**self.engine.env(), path, "")
            .await
            .map_err(|e| e.could_not_open(path))
    }

    /// Open `path` as `fmt` (probed when `None`) behind a BlockBackend. `force_share` (-U)
    /// shares every permission, as qemu-img's `-U` does for read-only opens.
    pub async fn open(
        &self,
        path: &str,
        fmt: Option<&str>,
        read_only: bool,
        force_share: bool,
    ) -> Result<Image> {
        if let Some(e) = self.object_error.borrow().clone() {
            return Err(e);
        }
        let image_opts = self.image_opts.get();
        if image_opts && fmt.is_some() {
            return Err(Error::generic(super::open_args::FORMAT_CONFLICT));
        }
        if let Some(f) = fmt {
            check_format(f).map_err(|_| {
                Error::generic(format!("Unknown driver '{f}'")).could_not_open(path)
            })?;
        }
        if !read_only && !image_opts {
            self.check_unlocked(path)
                .map_err(|e| e.could_not_open(path))?;
        }
        let named = image_options(path, fmt, image_opts).map_err(|e| e.could_not_open(path))?;
        let n = self.next.get();
        self.next.set(n + 1);
        let spec = OpenSpec {
            filename: Some(path.to_string()),
            format: named
                .get("driver")
                .and_then(|d| d.as_str())
                .map(str::to_string),
            image_opts,
            read_only,
            force_share: force_share && read_only,
            cache: self.cache.get(),
            node_name: format!("img{n}"),
            no_backing: self.no_backing.get(),
            aio: self.aio.borrow().clone(),
            ..OpenSpec::default()
        };
        // Without a format the engine probes the file (engine::probe), as qemu-img does.
        let spec = spec
            .probed(&self.engine)
            .await
            .map_err(|e| e.could_not_open(path))?;
        if spec.probed_raw && !read_only {
            eprintln!("{}", engine::probe::raw_warning(path));
        }
        let format = spec.format.clone().unwrap_or_else(|| "raw".to_string());
        let node = spec
            .add_to(&self.engine)
            .await
            .map_err(|e| e.could_not_open(path))?;
        if format == "qcow2"
            && !image_opts
            && let Some(w) = super::bitmap::stale_bitmaps_warning(path)
        {
            eprint!("{w}");
        }
        let mut bo = BackendOptions::tool(read_only);
        if force_share {
            bo.shared = Perms::ALL;
        }
        let bb = self
            .engine
            .device_add(&format!("dev{n}"), node.name(), bo)
            .map_err(|e| e.could_not_open(path))?;
        if !force_share {
            self.held
                .borrow_mut()
                .extend(files_under(&node).iter().filter_map(|f| file_id(f)));
        }
        Ok(Image {
            bb,
            node,
            format,
            path: path.to_string(),
        })
    }

    /// Refuse to create (truncate) or write `path` while an image of this command, opened
    /// without `-U`, uses that file: QEMU's file locks refuse it with this message, and without
    /// the check the command would destroy its own input (`dd if=a of=a`, `convert a a`).
    pub fn check_unlocked(&self, path: &str) -> Result<()> {
        match file_id(path) {
            Some(id) if self.held.borrow().contains(&id) => Err(Error::generic(format!(
                "Failed to get \"write\" lock\nIs another process using the image [{path}]?"
            ))),
            _ => Ok(()),
        }
    }

    /// Flush and close everything; the first flush error, if any.
    pub fn finish(self) -> Result<()> {
        let r = self.block_on(self.engine.shutdown());
        self.env.shutdown();
        r
    }
}

/// The host files under `node` (its `file` nodes, through every child and backing file).
fn files_under(node: &Rc<Node>) -> Vec<String> {
    let (mut files, mut todo) = (Vec::new(), vec![node.clone()]);
    while let Some(n) = todo.pop() {
        if n.driver_name() == "file" {
            files.push(n.driver().filename());
        }
        todo.extend(n.children().iter().map(|e| e.child_node()));
    }
    files
}

/// A file's identity (device, inode), following symbolic links.
fn file_id(path: &str) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// The host allocation of a file in bytes (`st_blocks * 512`, qemu's `actual-size`).
pub(crate) fn allocated_bytes(path: &str) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| m.blocks() * 512)
}

/// The length of a host file.
pub(crate) fn file_length(path: &str) -> Option<u64> {
    std::fs::metadata(path).ok().map(|m| m.len())
}

impl Tool {
    /// Close an image opened with `open` (device, then node).
    pub async fn close(&self, img: Image) {
        let _ = self.engine.device_del(img.bb.name()).await;
        let _ = self.engine.blockdev_del(img.node.name()).await;
    }
}
