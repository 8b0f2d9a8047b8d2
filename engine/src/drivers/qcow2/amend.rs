//! `qemu-img amend` for qcow2: the options are checked first, in the order of QEMU's amend
//! option table (the first refusal wins and nothing changes), then applied in QEMU's order: upgrade to
//! v3, refcount width (`refcount_rewrite`), the data-file name and raw bit, the backing file
//! (which amend cannot change), lazy refcounts, size (through the caller's resize), and the
//! downgrade to v2 last (`amend_downgrade`), so that what v2 cannot hold is gone before it.
//!
//! Header changes rewrite cluster 0 from the parsed header: the bytes past the first 512 are
//! written and flushed before the first sector, so a header that ends inside the first sector
//! (every header blk and QEMU write without a long backing name) is replaced in one untearable
//! write. Must not import `job`, `qmp`, `engine`, `backend` or other drivers.

use crate::driver::{AmendOptions, AmendProgress, AmendResize};
use crate::error::{Errno, Error, Result};
use crate::io::{IoBuf, ReqFlags};

use super::Qcow2;
use super::header::{self, Header};

/// What the checked options ask for.
pub(super) struct Plan {
    /// 2 or 3.
    pub(super) version: u32,
    /// log2 of the refcount width asked for.
    pub(super) refcount_order: u32,
    /// Lazy refcounts wanted.
    lazy: bool,
    /// Data-file-raw wanted.
    data_raw: bool,
}

/// Stages of the amend's progress: each operation (version change, refcount width) gets an
/// equal share of the bar, as qemu-img shows it.
pub(super) struct Progress<'a> {
    report: AmendProgress<'a>,
    total: u32,
    done: std::cell::Cell<u32>,
}

impl Progress<'_> {
    /// `part` (0.0..=1.0) of the current operation is done.
    pub(super) fn at(&self, part: f64) {
        let total = self.total.max(1) as f64;
        (self.report)((self.done.get() as f64 + part.clamp(0.0, 1.0)) / total);
    }

    /// The current operation is complete; the next one starts.
    fn next(&self) {
        self.at(1.0);
        self.done.set(self.done.get() + 1);
    }
}

fn invalid(msg: &str) -> Error {
    Error::io_msg(Errno::EINVAL, msg)
}

impl Qcow2 {
    /// `FormatOps::amend`.
    pub(super) async fn amend(
        &self,
        o: &AmendOptions,
        resize: AmendResize<'_>,
        report: AmendProgress<'_>,
    ) -> Result<()> {
        self.amend_writable().await?;
        let plan = self.plan_amend(o)?;
        let old = self.layout.version.get();
        let order_now = self.layout.refcount_order.get();
        let progress = Progress {
            report,
            total: u32::from(plan.version != old) + u32::from(plan.refcount_order != order_now),
            done: std::cell::Cell::new(0),
        };
        if plan.version > old {
            // QEMU's upgrade reports its start and half way (the header is rewritten).
            progress.at(0.0);
            self.upgrade().await?;
            progress.at(0.5);
            progress.next();
        }
        if plan.refcount_order != order_now {
            if plan.version < 3 && plan.refcount_order != 4 {
                return Err(invalid(
                    "Refcount widths other than 16 bits require compatibility level 1.1 or \
                     above (use compat=1.1 or greater)",
                ));
            }
            self.change_refcount_order(plan.refcount_order, &progress)
                .await?;
            progress.next();
        }
        self.amend_data_file(o.data_file.as_deref(), plan.data_raw)
            .await?;
        self.check_backing_unchanged(o).await?;
        self.amend_lazy(plan.lazy, plan.version).await?;
        if let Some(size) = o.size.filter(|&s| s != 0) {
            resize(size).await?;
        }
        if plan.version < old {
            self.downgrade(&progress).await?;
            progress.next();
        }
        Ok(())
    }

    /// Writable, not corrupt, pending fix-ups (refcount rebuild of a dirty image) done: as
    /// `check_writable`, without refusing images whose guest writes blk does not support.
    async fn amend_writable(&self) -> Result<()> {
        if self.read_only.get() {
            return Err(Error::io_msg(Errno::EROFS, "qcow2: image is read-only"));
        }
        if self.is_corrupt() {
            return Err(self.corrupt_error());
        }
        if self.fixups_pending.get() {
            let held = self.meta.lock().await;
            self.do_fixups(&held).await?;
        }
        Ok(())
    }

    /// Check every option against the image, in the order of QEMU's amend option table
    /// (the encryption options first, then size, compat, backing, data file, lazy refcounts,
    /// refcount width).
    fn plan_amend(&self, o: &AmendOptions) -> Result<Plan> {
        let mut plan = Plan {
            version: self.layout.version.get(),
            refcount_order: self.layout.refcount_order.get(),
            lazy: self.lazy.get(),
            data_raw: self.data_raw,
        };
        if o.encrypt {
            return Err(invalid(
                "Can't amend encryption options - encryption not present",
            ));
        }
        match o.compat.as_deref() {
            None => {}
            Some("0.10" | "v2") => plan.version = 2,
            Some("1.1" | "v3") => plan.version = 3,
            Some(other) => {
                return Err(invalid(&format!("Unknown compatibility level {other}")));
            }
        }
        if o.data_file.is_some() && !self.has_data_file() {
            return Err(invalid(
                "data-file can only be set for images that use an external data file",
            ));
        }
        if let Some(raw) = o.data_file_raw {
            if raw && !self.data_raw {
                return Err(invalid("data-file-raw cannot be set on existing images"));
            }
            plan.data_raw = raw;
        }
        plan.lazy = o.lazy_refcounts.unwrap_or(plan.lazy);
        if let Some(bits) = o.refcount_bits {
            if bits == 0 || bits > 64 || !bits.is_power_of_two() {
                return Err(invalid(
                    "Refcount width must be a power of two and may not exceed 64 bits",
                ));
            }
            plan.refcount_order = bits.trailing_zeros();
        }
        Ok(plan)
    }

    /// Cluster 0 as on disk (metadata written back first), parsed.
    pub(super) async fn read_header_raw(&self) -> Result<(Vec<u8>, Header)> {
        let cs = self.layout.cs();
        let file_len = self.file.len();
        let (buf, r) = self
            .file
            .read(0, IoBuf::new(cs.min(file_len) as usize), ReqFlags::NONE)
            .await;
        r?;
        let mut raw = buf.as_slice().to_vec();
        raw.resize(cs as usize, 0);
        let h = Header::parse(&raw, file_len)?;
        Ok((raw, h))
    }

    /// Rewrite the header with `edit` applied to it (nothing is written when it leaves the
    /// header as it is). Everything written before is durable first.
    pub(super) async fn rewrite_header(&self, edit: impl FnOnce(&mut Header)) -> Result<()> {
        {
            let held = &self.meta.lock().await;
            self.flush_metadata(held).await?;
        }
        self.file.flush().await?;
        let (raw, mut h) = self.read_header_raw().await?;
        let before = h.serialize();
        edit(&mut h);
        let new = h.serialize();
        if new == before && raw.starts_with(&new) {
            return Ok(());
        }
        if new.len() as u64 > self.layout.cs() {
            return Err(Error::io_msg(
                Errno::ENOSPC,
                "qcow2: the header does not fit in the first cluster",
            ));
        }
        let first = new.len().min(512);
        if new.len() > first {
            self.write_flushed(first as u64, &new[first..]).await?;
        }
        self.write_flushed(0, &new[..first]).await
    }

    /// Write `data` at `offset` of the image file and flush.
    pub(super) async fn write_flushed(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.file
            .write(offset, IoBuf::from_slice(data), ReqFlags::NONE)
            .await
            .1?;
        self.file.flush().await
    }

    /// v2 -> v3: the v3 header fields with nothing set in them.
    async fn upgrade(&self) -> Result<()> {
        self.rewrite_header(|h| {
            h.version = 3;
            h.header_length = 112;
            h.refcount_order = 4;
            (h.incompat, h.compat, h.autoclear) = (0, 0, 0);
            h.compression_type = 0;
        })
        .await?;
        self.layout.version.set(3);
        Ok(())
    }

    /// The data-file name (`Some("")`: removed from the header) and the raw bit.
    async fn amend_data_file(&self, name: Option<&str>, raw: bool) -> Result<()> {
        let v3 = self.layout.version.get() == 3;
        let autoclear = if raw {
            self.layout.autoclear.get() | header::AUTOCLEAR_DATA_FILE_RAW
        } else {
            self.layout.autoclear.get() & !header::AUTOCLEAR_DATA_FILE_RAW
        };
        self.rewrite_header(|h| {
            if v3 {
                h.autoclear = autoclear;
            }
            if let Some(n) = name {
                h.data_file = (!n.is_empty()).then(|| n.to_string());
            }
        })
        .await?;
        if v3 {
            self.layout.autoclear.set(autoclear);
        }
        Ok(())
    }

    /// amend cannot change the backing file: any `backing_file`/`backing_fmt` must name the
    /// current ones, both (an absent one counts as none).
    async fn check_backing_unchanged(&self, o: &AmendOptions) -> Result<()> {
        if o.backing_file.is_none() && o.backing_fmt.is_none() {
            return Ok(());
        }
        let (_, h) = self.read_header_raw().await?;
        if o.backing_file != h.backing_file || o.backing_fmt != h.backing_fmt {
            return Err(invalid(
                "Cannot amend the backing file\nYou can use 'qemu-img rebase' instead.",
            ));
        }
        Ok(())
    }

    /// Lazy refcounts on (v3 only) or off (refcounts written back, dirty bit cleared first).
    async fn amend_lazy(&self, on: bool, version: u32) -> Result<()> {
        if self.lazy.get() == on {
            return Ok(());
        }
        if on && version < 3 {
            return Err(invalid(
                "Lazy refcounts only supported with compatibility level 1.1 and above (use \
                 compat=1.1 or greater)",
            ));
        }
        if !on {
            self.write_back_and_mark_clean().await?;
        }
        self.rewrite_header(|h| {
            if on {
                h.compat |= header::COMPAT_LAZY_REFCOUNTS;
            } else {
                h.compat &= !header::COMPAT_LAZY_REFCOUNTS;
            }
        })
        .await?;
        self.lazy.set(on);
        Ok(())
    }
}
