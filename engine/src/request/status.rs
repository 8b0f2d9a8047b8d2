//! Block status of one layer, and through a backing chain.

use std::rc::Rc;

use crate::error::{Error, Result};
use crate::graph::Node;
use crate::io::{BlockStatus, Mapping};

/// Which layer of a chain provides a range.
#[derive(Clone, Debug)]
pub struct ChainStatus {
    /// Bytes covered.
    pub len: u64,
    /// How the providing layer provides them (`Unallocated` when no layer down to the base
    /// does: the range reads as zeroes, or from the base).
    pub mapping: Mapping,
    /// The node that provides the range (`None` when unallocated down to the base).
    pub node: Option<Rc<Node>>,
    /// Number of backing links followed to reach it.
    pub depth: u32,
}

pub(super) async fn block_status(node: &Rc<Node>, offset: u64, len: u64) -> Result<BlockStatus> {
    let size = node.len();
    if offset >= size {
        return Err(Error::invalid(format!(
            "Block status at offset {offset} is past the end of node '{}' ({size} bytes)",
            node.name()
        )));
    }
    let len = len.min(size - offset);
    if len == 0 {
        return Err(Error::invalid("Block status of an empty range"));
    }
    let _in_flight = node.enter();
    let status = node.driver().block_status(offset, len).await?;
    assert!(
        status.len > 0,
        "driver '{}' returned an empty block status at {offset}",
        node.driver_name()
    );
    Ok(BlockStatus {
        len: status.len.min(len),
        mapping: status.mapping,
    })
}

/// Walk the backing chain from `top` until a layer provides the range or `base` is reached.
pub(super) async fn chain_status(
    top: &Rc<Node>,
    offset: u64,
    len: u64,
    base: Option<&Node>,
) -> Result<ChainStatus> {
    let mut node = top.clone();
    let mut len = len.min(top.len().saturating_sub(offset));
    let mut depth = 0;
    loop {
        if base.is_some_and(|b| std::ptr::eq(b, Rc::as_ptr(&node))) {
            return Ok(ChainStatus {
                len,
                mapping: Mapping::Unallocated,
                node: None,
                depth,
            });
        }
        if offset >= node.len() {
            // Past the end of a shorter backing layer: reads as zeroes.
            return Ok(ChainStatus {
                len,
                mapping: Mapping::Zero { host: None },
                node: Some(node),
                depth,
            });
        }
        let status = block_status(&node, offset, len).await?;
        len = status.len;
        if status.mapping.is_allocated() {
            return Ok(ChainStatus {
                len,
                mapping: status.mapping,
                node: Some(node),
                depth,
            });
        }
        match node.backing() {
            Some(edge) => {
                node = edge.child_node();
                depth += 1;
            }
            None => {
                // (`UnallocatedAt` keeps its reserved offset: QEMU's map prints it.)
                return Ok(ChainStatus {
                    len,
                    mapping: status.mapping,
                    node: None,
                    depth,
                });
            }
        }
    }
}

/// [`chain_status`] for callers that look for zeroes (qemu-img's map, convert and compare; QEMU's
/// `want_zero`): a data run of a format whose data may sit over holes of its storage
/// (`FormatOps::data_may_be_file_holes`) is checked against that storage, and where the storage
/// reads as zeroes it is [`Mapping::DataZero`]. Jobs ask plain [`chain_status`]: allocation is
/// all they need, and the extra look would only cost I/O.
pub(super) async fn chain_status_want_zero(
    top: &Rc<Node>,
    offset: u64,
    len: u64,
    base: Option<&Node>,
) -> Result<ChainStatus> {
    let st = chain_status(top, offset, len, base).await?;
    let (Some(node), Mapping::Data { host: Some(host) }) = (&st.node, st.mapping) else {
        return Ok(st);
    };
    let Some(ops) = node.driver().format_ops() else {
        return Ok(st);
    };
    if !ops.data_may_be_file_holes().await? {
        return Ok(st);
    }
    let Some(storage) = node.child("data-file").or_else(|| node.child("file")) else {
        return Ok(st);
    };
    let storage = storage.child_node();
    let below = if host >= storage.len() {
        // Past the storage's end: zeroes, whatever the length.
        BlockStatus {
            len: st.len,
            mapping: Mapping::Zero { host: None },
        }
    } else {
        block_status(&storage, host, st.len).await?
    };
    Ok(ChainStatus {
        len: below.len.clamp(1, st.len),
        mapping: if below.mapping.is_zero() {
            Mapping::DataZero { host: Some(host) }
        } else {
            st.mapping
        },
        ..st
    })
}
