//! The node graph: nodes, edges (children with roles), permissions, graph edits, drain.
//!
//! Owns: the registry of nodes by name, node and edge identities, the two-phase permission
//! protocol, the drained-section machinery and node creation from options. Must not import
//! `request`, `drivers`, `job`, `qmp` or `engine`; drivers are reached only through the
//! [`BlockDriver`](crate::driver::BlockDriver) trait and the open functions registered here.

// Floors, bottom up: `io_state` <- `types` (the structs that point at one another) <- `node`,
// `edge`, `ctx`, `drain`, `perm` <- `edit`, `reopen` <- `open`; `persist` (stored
// bitmaps at open, close and reopen) sits beside `types` for all three.
mod ctx;
mod drain;
mod edge;
mod edit;
mod io_state;
mod node;
mod open;
mod perm;
mod persist;
mod reopen;
mod types;

pub use ctx::normalize_path;
pub use drain::DrainedSection;
pub use edge::Child;
pub use edit::{
    ReplaceOptions, append, attach_child, attach_external, detach, drop_unused, freeze,
    insert_filter, remove_filter, replace_node, set_backing, set_external_perms, unfreeze, unref,
};
pub use io_state::{BeforeWrite, IoState, NodeStats, OpStats};
pub use open::{InternalOpen, close_unused, open_internal, open_internal_node, open_node};
pub use reopen::{
    GenericChanges, reopen_options, reopen_read_only, reopen_read_write, reopen_set_read_only,
};
pub use types::{
    DebugListener, Edge, GraphCtx, Node, NodeOptions, OpenCtx, OpenFn, ParentOps, ParentRef,
};
