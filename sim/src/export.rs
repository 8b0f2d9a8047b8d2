//! Export a virtual file to a real host file.
//!
//! **This is the only place in `sim` that touches the real world** (`std::fs`): it exists so that
//! external tools such as `qemu-img check` can judge a post-crash image. Nothing in a simulated
//! run depends on it, and it never reads host files back.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use engine::Result;

use crate::vdisk::{PageStore, SimFs};

/// Which bytes of a virtual file to export.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum View {
    /// What a read sees now (durable bytes plus the write cache).
    #[default]
    Current,
    /// What survives if every unflushed (non-FUA) write is lost.
    Durable,
}

impl SimFs {
    /// Export every virtual file, as `view` has it, into the host directory `dir` (created if
    /// need be), each under its own name.
    pub fn export_all(&self, view: View, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir)
            .map_err(|e| engine::Error::generic(format!("{}: {e}", dir.display())))?;
        for f in self.files() {
            self.export_to(&f, view, &dir.join(&f))?;
        }
        Ok(())
    }

    /// Write the `view` of virtual file `path` to the host file `host` (created or truncated).
    /// Holes stay holes: only allocated pages are written, then the length is set.
    pub fn export_to(&self, path: &str, view: View, host: &Path) -> Result<()> {
        let file = self
            .inner
            .files
            .borrow()
            .get(path)
            .cloned()
            .ok_or_else(|| {
                engine::Error::io_msg(engine::Errno::ENOENT, format!("no virtual file '{path}'"))
            })?;
        let (store, len): (PageStore, u64) = {
            let f = file.borrow();
            match view {
                View::Current => (f.current.clone(), f.len),
                View::Durable => f.durable_view(),
            }
        };
        write_host(&store, len, host).map_err(|e| {
            engine::Error::generic(format!("export of '{path}' to {}: {e}", host.display()))
        })
    }
}

fn write_host(store: &PageStore, len: u64, host: &Path) -> std::io::Result<()> {
    let mut out = File::create(host)?;
    for (idx, page) in store.pages() {
        let start = idx * page.len() as u64;
        if start >= len {
            break;
        }
        let n = (len - start).min(page.len() as u64) as usize;
        out.seek(SeekFrom::Start(start))?;
        out.write_all(&page[..n])?;
    }
    out.set_len(len)?;
    out.sync_all()
}
