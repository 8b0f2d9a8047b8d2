//! One NBD export: the BlockBackend it serves through (so permissions, drain and dirty bitmaps
//! apply as for a guest), its name and flags, the metadata contexts it offers, and the extents
//! each context reports for `NBD_CMD_BLOCK_STATUS`.

use std::cell::Cell;
use std::rc::Rc;

use serde_json::{Value, json};

use super::proto::*;
use crate::backend::{BackendOptions, BlockBackend, Machine};
use crate::bitmap::Bitmap;
use crate::error::{Error, Result};
use crate::graph::Node;
use crate::io::Mapping;
use crate::types::{OnError, Perms};
use crate::util::{Notify, TrackedRanges};

/// Most extents one context reports in one reply.
const MAX_EXTENTS: usize = 1024;

/// What `block-export-add type=nbd` asks for.
#[derive(Clone, Debug, Default)]
pub struct ExportArgs {
    /// The export id (QMP `id`).
    pub id: String,
    /// The node exported.
    pub node_name: String,
    /// The name clients ask for (defaults to the node name).
    pub name: Option<String>,
    /// A description `NBD_OPT_LIST` and `NBD_INFO_DESCRIPTION` show.
    pub description: Option<String>,
    /// Clients may write.
    pub writable: bool,
    /// Dirty bitmaps offered as `qemu:dirty-bitmap:NAME`.
    pub bitmaps: Vec<String>,
    /// Offer `qemu:allocation-depth`.
    pub allocation_depth: bool,
}

/// A metadata context an export offers.
#[derive(Clone)]
pub enum Context {
    /// `base:allocation`: holes and zeroes.
    Allocation,
    /// `qemu:allocation-depth`: which layer of the backing chain provides each extent.
    Depth,
    /// `qemu:dirty-bitmap:NAME`: the bitmap's dirty extents.
    Bitmap(String, Rc<Bitmap>),
}

impl Context {
    /// The context's name on the wire.
    pub fn name(&self) -> String {
        match self {
            Context::Allocation => CTX_BASE_ALLOCATION.to_string(),
            Context::Depth => CTX_ALLOCATION_DEPTH.to_string(),
            Context::Bitmap(name, _) => format!("{CTX_DIRTY_BITMAP}{name}"),
        }
    }
}

/// An export.
pub struct Export {
    /// The export id.
    pub id: String,
    /// The name clients ask for.
    pub name: String,
    /// Description, if any.
    pub description: Option<String>,
    /// The exported node's name.
    pub node_name: String,
    /// Clients may write.
    pub writable: bool,
    bb: Rc<BlockBackend>,
    contexts: Vec<Context>,
    /// Connections in transmission on this export.
    conns: Cell<u32>,
    /// Being deleted: no new client may use it.
    shutting_down: Cell<bool>,
    changed: Notify,
    /// Changes in flight from every connection: overlapping ones run one after the other, so a
    /// request a client sends again after a reconnect never lands before (and under) the copy
    /// its dead connection still runs.
    pub(super) changes: TrackedRanges,
}

impl Export {
    /// Attach a backend to `node` for a new export.
    pub fn new(args: &ExportArgs, node: &Rc<Node>, machine: &Rc<Machine>) -> Result<Rc<Export>> {
        if args.writable && node.is_read_only() {
            return Err(Error::generic("Cannot export read-only node as writable"));
        }
        let mut contexts = vec![Context::Allocation];
        if args.allocation_depth {
            contexts.push(Context::Depth);
        }
        for name in &args.bitmaps {
            let b = find_bitmap(node, name)
                .ok_or_else(|| Error::generic(format!("Bitmap '{name}' is not found")))?;
            contexts.push(Context::Bitmap(name.clone(), b));
        }
        let mut perm = Perms::CONSISTENT_READ;
        if args.writable {
            perm |= Perms::WRITE;
        }
        let opts = BackendOptions {
            rerror: OnError::Report,
            werror: OnError::Report,
            write_cache: true,
            perm,
            shared: Perms::ALL,
            copy_on_read: false,
        };
        let bb = BlockBackend::new("", node, machine, opts)?;
        Ok(Rc::new(Export {
            id: args.id.clone(),
            name: args.name.clone().unwrap_or_else(|| args.node_name.clone()),
            description: args.description.clone(),
            node_name: args.node_name.clone(),
            writable: args.writable,
            bb,
            contexts,
            conns: Cell::new(0),
            shutting_down: Cell::new(false),
            changed: Notify::new(),
            changes: TrackedRanges::new(),
        }))
    }

    /// The backend requests go through.
    pub fn backend(&self) -> &Rc<BlockBackend> {
        &self.bb
    }

    /// The export's size in bytes.
    pub fn size(&self) -> u64 {
        self.bb.len().unwrap_or(0)
    }

    /// Transmission flags.
    pub fn tflags(&self) -> u16 {
        // Every connection goes through the one backend, so a flush on any of them covers the
        // writes of all: multi-connection consistency holds, as QEMU advertises it.
        let mut f = TFLAG_HAS_FLAGS
            | TFLAG_SEND_FLUSH
            | TFLAG_SEND_DF
            | TFLAG_CAN_MULTI_CONN
            | TFLAG_SEND_CACHE;
        if self.writable {
            f |= TFLAG_SEND_FUA | TFLAG_SEND_TRIM | TFLAG_SEND_WRITE_ZEROES | TFLAG_SEND_FAST_ZERO;
        } else {
            f |= TFLAG_READ_ONLY;
        }
        f
    }

    /// The metadata contexts offered, indexed by their context id.
    pub fn contexts(&self) -> &[Context] {
        &self.contexts
    }

    /// A client entered transmission on this export.
    pub(super) fn client_enter(&self) {
        self.conns.set(self.conns.get() + 1);
    }

    /// A client left.
    pub(super) fn client_leave(&self) {
        self.conns.set(self.conns.get() - 1);
        self.changed.notify_all();
    }

    /// Connections in transmission.
    pub fn connections(&self) -> u32 {
        self.conns.get()
    }

    /// True once deletion started.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.get()
    }

    pub(super) fn set_shutting_down(&self) {
        self.shutting_down.set(true);
    }

    /// Wait until no client uses the export, then detach its backend.
    pub(super) async fn finish(&self) {
        while self.conns.get() > 0 {
            self.changed.wait().await;
        }
        let _ = self.bb.flush().await;
        let _ = self.bb.detach().await;
    }

    /// `query-block-exports` entry.
    pub fn describe(&self) -> Value {
        json!({
            "node-name": self.node_name,
            "shutting-down": self.shutting_down.get(),
            "type": "nbd",
            "id": self.id,
        })
    }

    /// The extents of context `ctx` over `[offset, offset + len)`: (length, flags) pairs, at
    /// most one with `one`.
    pub async fn extents(
        &self,
        ctx: &Context,
        offset: u64,
        len: u64,
        one: bool,
    ) -> Result<Vec<(u32, u32)>> {
        let end = offset + len;
        let mut out: Vec<(u32, u32)> = Vec::new();
        let mut pos = offset;
        let max = if one { 1 } else { MAX_EXTENTS };
        while pos < end {
            let want = (end - pos).min(u64::from(u32::MAX) & !0xfff).max(1);
            let (n, flags) = self.extent(ctx, pos, want).await?;
            let n = n.min(end - pos);
            let full = out.len() == max;
            match out.last_mut() {
                Some(last) if last.1 == flags && u64::from(last.0) + n <= u64::from(u32::MAX) => {
                    last.0 += n as u32;
                }
                _ if full => break,
                _ => out.push((n as u32, flags)),
            }
            pos += n;
        }
        Ok(out)
    }

    /// One extent at `pos`: its length (at most `len`, at least 1) and flags.
    async fn extent(&self, ctx: &Context, pos: u64, len: u64) -> Result<(u64, u32)> {
        let root = self
            .bb
            .root()
            .ok_or_else(|| Error::generic("export has no node"))?;
        match ctx {
            Context::Allocation => {
                let st = root.chain_status_want_zero(pos, len, None).await?;
                let flags = match st.mapping {
                    Mapping::Data { .. } => 0,
                    Mapping::DataZero { .. } => STATE_ZERO,
                    Mapping::Zero { .. } | Mapping::Unallocated | Mapping::UnallocatedAt { .. } => {
                        STATE_HOLE | STATE_ZERO
                    }
                };
                Ok((st.len.max(1), flags))
            }
            Context::Depth => {
                let st = root.chain_status(pos, len, None).await?;
                let depth = match st.node {
                    Some(_) if st.mapping.is_allocated() => st.depth + 1,
                    _ => 0,
                };
                Ok((st.len.max(1), depth))
            }
            Context::Bitmap(_, b) => {
                let bits = b.bits();
                let g = bits.granularity();
                let first = pos / g;
                let dirty = bits.get(first);
                let next = if dirty {
                    bits.next_clean(first)
                } else {
                    bits.next_dirty(first).unwrap_or(bits.granules())
                };
                let run_end = (next * g).max(pos + 1);
                Ok(((run_end - pos).min(len), u32::from(dirty) * STATE_DIRTY))
            }
        }
    }
}

/// Bitmap `name` on `node` or down its backing chain.
fn find_bitmap(node: &Rc<Node>, name: &str) -> Option<Rc<Bitmap>> {
    let mut n = node.clone();
    loop {
        if let Some(b) = n.bitmaps().find(name) {
            return Some(b);
        }
        n = n.backing()?.child_node();
    }
}
