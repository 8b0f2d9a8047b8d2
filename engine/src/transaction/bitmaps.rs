//! The dirty bitmap verbs as transaction actions (`block-dirty-bitmap-add`, `-remove`, `-clear`,
//! `-enable`, `-disable`, `-merge`). Prepare does the verb with the same checks and messages as
//! the single command and keeps what abort needs: the added bitmap, the bits before a clear or
//! merge, the recording state before enable/disable. A removed bitmap stays in the node's list,
//! busy (later actions of the same transaction cannot use it), until commit drops it; abort
//! only lifts the busy state. As in QEMU, a persistent bitmap's stored copy is deleted in
//! prepare (the bitmap is stored again when its node closes if the transaction aborts).

use std::rc::Rc;

use crate::bitmap::{Bitmap, DirtyBitmap, Use};
use crate::engine::{BitmapAddArgs, BitmapRef, Engine};
use crate::env::LocalBoxFuture;
use crate::error::Result;
use crate::graph::Node;

use super::{Action, TxnCtx};

/// Which bitmap verb.
#[derive(Clone, Debug)]
pub enum BitmapVerb {
    /// `block-dirty-bitmap-add`.
    Add(BitmapAddArgs),
    /// `block-dirty-bitmap-remove` {node, name}.
    Remove(String, String),
    /// `block-dirty-bitmap-clear` {node, name}.
    Clear(String, String),
    /// `block-dirty-bitmap-enable` (`true`) / `-disable` {node, name}.
    SetEnabled(String, String, bool),
    /// `block-dirty-bitmap-merge` {node, target, bitmaps}.
    Merge(String, String, Vec<BitmapRef>),
}

/// What abort undoes.
enum Undo {
    Nothing,
    Added(Rc<Node>, String),
    Removed(Rc<Node>, Rc<Bitmap>),
    Bits(Rc<Bitmap>, DirtyBitmap),
    Enabled(Rc<Bitmap>, bool),
}

/// One bitmap action.
pub struct BitmapAction {
    verb: BitmapVerb,
    undo: Undo,
}

impl BitmapAction {
    /// The action for `verb`.
    pub fn new(verb: BitmapVerb) -> BitmapAction {
        BitmapAction {
            verb,
            undo: Undo::Nothing,
        }
    }

    async fn do_prepare(&mut self, engine: &Engine) -> Result<()> {
        self.undo = match &self.verb {
            BitmapVerb::Add(args) => {
                engine.bitmap_add(args)?;
                let node = engine.lookup(Some(&args.node), Some(&args.node))?;
                Undo::Added(node, args.name.clone())
            }
            BitmapVerb::Remove(node, name) => {
                let (n, b) = engine.bitmap(node, name)?;
                b.check(Use::Remove)?;
                if b.persistent()
                    && let Some(ops) = n.driver().format_ops()
                {
                    ops.remove_bitmap(name).await?;
                }
                b.set_busy(true);
                Undo::Removed(n, b)
            }
            BitmapVerb::Clear(node, name) => {
                let (_, b) = engine.bitmap(node, name)?;
                b.check(Use::Modify)?;
                let saved = b.bits().clone();
                b.clear();
                Undo::Bits(b, saved)
            }
            BitmapVerb::SetEnabled(node, name, enabled) => {
                let (_, b) = engine.bitmap(node, name)?;
                b.check(Use::Read)?;
                let was = b.enabled();
                b.set_enabled(*enabled);
                Undo::Enabled(b, was)
            }
            BitmapVerb::Merge(node, target, sources) => {
                let (_, b) = engine.bitmap(node, target)?;
                let saved = b.bits().clone();
                // The merge checks every source before it changes the target.
                engine.bitmap_merge(node, target, sources)?;
                Undo::Bits(b, saved)
            }
        };
        Ok(())
    }
}

impl Action for BitmapAction {
    fn kind(&self) -> &'static str {
        match &self.verb {
            BitmapVerb::Add(_) => "block-dirty-bitmap-add",
            BitmapVerb::Remove(..) => "block-dirty-bitmap-remove",
            BitmapVerb::Clear(..) => "block-dirty-bitmap-clear",
            BitmapVerb::SetEnabled(_, _, true) => "block-dirty-bitmap-enable",
            BitmapVerb::SetEnabled(_, _, false) => "block-dirty-bitmap-disable",
            BitmapVerb::Merge(..) => "block-dirty-bitmap-merge",
        }
    }

    fn prepare<'a>(&'a mut self, cx: &'a TxnCtx<'a>) -> LocalBoxFuture<'a, Result<()>> {
        Box::pin(self.do_prepare(cx.engine))
    }

    fn commit<'a>(&'a mut self, _cx: &'a TxnCtx<'a>) -> LocalBoxFuture<'a, ()> {
        Box::pin(async move {
            if let Undo::Removed(n, b) = &self.undo {
                b.set_busy(false);
                n.bitmaps().remove(&b.name());
            }
        })
    }

    fn abort<'a>(&'a mut self, _cx: &'a TxnCtx<'a>) -> LocalBoxFuture<'a, ()> {
        Box::pin(async move {
            match std::mem::replace(&mut self.undo, Undo::Nothing) {
                Undo::Nothing => {}
                Undo::Added(n, name) => drop(n.bitmaps().remove(&name)),
                Undo::Removed(_, b) => b.set_busy(false),
                Undo::Bits(b, saved) => b.restore_bits(saved),
                Undo::Enabled(b, was) => b.set_enabled(was),
            }
        })
    }
}
