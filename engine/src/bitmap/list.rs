//! [`NodeBitmaps`]: the named dirty bitmaps of one node, newest first (the order QEMU lists
//! them in `dirty-bitmaps`). The node owns one (`Node::bitmaps()`); the request path marks it
//! on every write, write-zeroes and discard that reaches the node, the QMP verbs find, add and
//! remove bitmaps through it, and a format that loads persistent bitmaps inserts them here.

use std::cell::RefCell;
use std::rc::Rc;

use serde_json::Value;

use crate::error::{Error, Result};

use super::named::{Bitmap, MAX_NAME_LEN};

/// The named bitmaps of one node.
#[derive(Debug, Default)]
pub struct NodeBitmaps {
    list: RefCell<Vec<Rc<Bitmap>>>,
}

impl NodeBitmaps {
    /// True when the node has no bitmap (the request path's fast exit).
    pub fn is_empty(&self) -> bool {
        self.list.borrow().is_empty()
    }

    /// Every bitmap, newest first.
    pub fn all(&self) -> Vec<Rc<Bitmap>> {
        self.list.borrow().clone()
    }

    /// The bitmap called `name`.
    pub fn find(&self, name: &str) -> Option<Rc<Bitmap>> {
        self.list
            .borrow()
            .iter()
            .find(|b| b.name() == name)
            .cloned()
    }

    /// Create a clean bitmap over `len` bytes, refusing a taken or over-long name with QEMU's
    /// messages (the caller checked the granularity).
    pub fn create(
        &self,
        name: &str,
        len: u64,
        granularity: u64,
        disabled: bool,
    ) -> Result<Rc<Bitmap>> {
        self.check_new_name(name)?;
        let b = Rc::new(Bitmap::new(name, len, granularity, disabled));
        self.list.borrow_mut().insert(0, b.clone());
        Ok(b)
    }

    /// Add a bitmap built elsewhere (a persistent one loaded from the image:
    /// [`Bitmap::from_loaded`]), refusing a taken name.
    pub fn insert(&self, bitmap: Rc<Bitmap>) -> Result<()> {
        self.check_new_name(&bitmap.name())?;
        self.list.borrow_mut().insert(0, bitmap);
        Ok(())
    }

    fn check_new_name(&self, name: &str) -> Result<()> {
        if self.find(name).is_some() {
            return Err(Error::generic(format!("Bitmap already exists: {name}")));
        }
        if name.len() > MAX_NAME_LEN {
            return Err(Error::generic(format!("Bitmap name too long: {name}")));
        }
        Ok(())
    }

    /// Take the bitmap called `name` out of the list (the caller checked it may go).
    pub fn remove(&self, name: &str) -> Option<Rc<Bitmap>> {
        let mut list = self.list.borrow_mut();
        let at = list.iter().position(|b| b.name() == name)?;
        Some(list.remove(at))
    }

    /// A write, write-zeroes or discard changed `[offset, offset + bytes)` of the node, which
    /// is now `node_len` bytes long: every recording bitmap marks it.
    pub fn mark(&self, offset: u64, bytes: u64, node_len: u64) {
        for b in self.list.borrow().iter() {
            b.mark(offset, bytes, node_len);
        }
    }

    /// The node's length changed: every bitmap follows it.
    pub fn resize(&self, len: u64) {
        for b in self.list.borrow().iter() {
            if b.len() != len {
                b.resize(len);
            }
        }
    }

    /// The QMP `dirty-bitmaps` list.
    pub fn info(&self) -> Value {
        Value::Array(self.list.borrow().iter().map(|b| b.info()).collect())
    }
}
