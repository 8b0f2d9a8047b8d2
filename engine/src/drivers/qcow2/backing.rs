//! Rewriting the backing file name and format in the header (after stream, commit, rebase).
//!
//! The header, its extensions and the backing name all live in cluster 0. The change is planned
//! as a short list of writes, each followed by a flush, so that a crash between any two leaves a
//! header that still names a valid chain (the old one or the new one):
//!
//! 1. the new name is written where neither the old extension area nor the old name lies, so
//!    the old header stays intact;
//! 2. the fixed fields that point at it (offset and length) are written together with the
//!    extension area (backing format) in one write. When that write stays inside the first
//!    512-byte sector (the usual case: the backing-format extension comes first and keeps its
//!    size), it cannot be torn. When the extension area has to grow or shrink past the first
//!    sector, the write spans sectors, as QEMU's header rewrite always does; that case is not
//!    tear-proof, and the module says so rather than pretend.
//!
//! Bytes of an old name left behind are unused space in cluster 0, which no reader looks at.
//!
//! Must not import `job`, `qmp`, `engine`, `backend` or other drivers.

use crate::error::{Error, Result};
use crate::io::{IoBuf, ReqFlags};

use super::Qcow2;
use super::header::{EXT_BACKING_FMT, Header};

/// Largest backing file name the header may hold (QEMU refuses longer ones on open).
const MAX_NAME: usize = 1023;

fn be32(b: &[u8], off: usize) -> u32 {
    u32::from_be_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}

/// One planned header write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct HeaderWrite {
    /// Byte offset in the image file.
    pub offset: u64,
    /// Bytes to write.
    pub data: Vec<u8>,
}

/// One header extension as found: magic and payload.
pub(crate) type RawExt = (u32, Vec<u8>);

/// The extensions after the fixed header, raw, in file order, and the offset just past the end
/// marker.
fn raw_extensions(raw: &[u8], h: &Header) -> Result<(Vec<RawExt>, usize)> {
    let mut off = h.header_length as usize;
    let end = if h.backing_offset != 0 {
        (h.backing_offset as usize).min(raw.len())
    } else {
        raw.len()
    };
    let mut exts = Vec::new();
    loop {
        if off + 8 > end {
            return Err(Error::generic(
                "qcow2: header extension area is truncated; cannot rewrite the backing file",
            ));
        }
        let magic = be32(raw, off);
        let len = be32(raw, off + 4) as usize;
        off += 8;
        if magic == 0 {
            return Ok((exts, off));
        }
        if len > end - off {
            return Err(Error::generic(format!(
                "qcow2: header extension {magic:#x} is too large ({len} bytes)"
            )));
        }
        exts.push((magic, raw[off..off + len].to_vec()));
        off += len.next_multiple_of(8);
    }
}

fn overlaps(a: (usize, usize), b: (usize, usize)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

/// Plan the writes that change the backing reference of the image whose cluster 0 is `raw`
/// (parsed as `h`) to `name` with format `fmt` (`None`: no backing file at all).
pub(crate) fn plan_backing_change(
    raw: &[u8],
    h: &Header,
    name: Option<&str>,
    fmt: Option<&str>,
) -> Result<Vec<HeaderWrite>> {
    plan_header_rewrite(raw, h, name, fmt, h.autoclear, &|_| {})
}

/// Plan the writes that change the backing reference (as [`plan_backing_change`]), the
/// autoclear bits (v3) and the other extensions (`edit` changes them) of the image whose
/// cluster 0 is `raw`, all in the one header write.
pub(crate) fn plan_header_rewrite(
    raw: &[u8],
    h: &Header,
    name: Option<&str>,
    fmt: Option<&str>,
    autoclear: u64,
    edit: &dyn Fn(&mut Vec<RawExt>),
) -> Result<Vec<HeaderWrite>> {
    let cs = h.cluster_size() as usize;
    let fmt = if name.is_some() { fmt } else { None };
    if let Some(n) = name {
        check_name(n)?;
    }
    let hl = h.header_length as usize;
    let (mut exts, old_ext_end) = raw_extensions(raw, h)?;
    edit(&mut exts);
    let area = extension_area(&exts, fmt);
    let new_ext_end = hl + area.len();
    if new_ext_end > cs {
        return Err(Error::generic(
            "qcow2: the header extensions do not fit in the first cluster",
        ));
    }
    let old_name = if h.backing_offset != 0 {
        let s = h.backing_offset as usize;
        (s, s + h.backing_size as usize)
    } else {
        (0, 0)
    };
    let mut writes = Vec::new();
    let mut name_at = 0usize;
    if let Some(n) = name {
        name_at = place_name(n, cs, new_ext_end, (hl, old_ext_end), old_name)?;
        writes.push(HeaderWrite {
            offset: name_at as u64,
            data: n.as_bytes().to_vec(),
        });
    }
    // The header image after the change, from byte 8 (backing offset and size) to the end of
    // the extension area; only the span that differs from what is on disk is written.
    let mut new = raw[..new_ext_end.max(old_ext_end).min(raw.len())].to_vec();
    new.resize(new_ext_end.max(20), 0);
    let (off, size) = match name {
        Some(n) => (name_at as u64, n.len() as u32),
        None => (0, 0),
    };
    new[8..16].copy_from_slice(&off.to_be_bytes());
    new[16..20].copy_from_slice(&size.to_be_bytes());
    if h.version == 3 {
        new[88..96].copy_from_slice(&autoclear.to_be_bytes());
    }
    new[hl..new_ext_end].copy_from_slice(&area);
    add_header_write(&mut writes, raw, &new, new_ext_end, old_name);
    Ok(writes)
}

/// A new backing file name must be non-empty and fit the header's limit.
fn check_name(n: &str) -> Result<()> {
    if n.is_empty() {
        return Err(Error::generic("qcow2: the backing file name is empty"));
    }
    if n.len() > MAX_NAME {
        return Err(Error::generic(format!(
            "qcow2: backing file name too long ({} bytes; at most {MAX_NAME})",
            n.len()
        )));
    }
    Ok(())
}

/// The new extension area: the backing format first (as QEMU writes it), then every other
/// extension of `exts` unchanged and in order, then the end marker.
fn extension_area(exts: &[RawExt], fmt: Option<&str>) -> Vec<u8> {
    let mut area = Vec::new();
    let push = |area: &mut Vec<u8>, magic: u32, data: &[u8]| {
        area.extend_from_slice(&magic.to_be_bytes());
        area.extend_from_slice(&(data.len() as u32).to_be_bytes());
        area.extend_from_slice(data);
        area.resize(area.len().next_multiple_of(8), 0);
    };
    if let Some(f) = fmt {
        push(&mut area, EXT_BACKING_FMT, f.as_bytes());
    }
    for (magic, data) in exts {
        if *magic != EXT_BACKING_FMT {
            push(&mut area, *magic, data);
        }
    }
    area.extend_from_slice(&[0u8; 8]);
    area
}

/// Where the new name `n` goes in cluster 0 (`cs` bytes): after the new extensions (ending
/// at `new_ext_end`), preferably clear of the old extension area `old_ext` and the old name
/// `old_name`, so that a torn update leaves the old header readable.
fn place_name(
    n: &str,
    cs: usize,
    new_ext_end: usize,
    old_ext: (usize, usize),
    old_name: (usize, usize),
) -> Result<usize> {
    let len = n.len();
    let fits = |at: usize| {
        at >= new_ext_end
            && at + len <= cs
            && !overlaps((at, at + len), old_ext)
            && !overlaps((at, at + len), old_name)
    };
    let candidates = [new_ext_end, old_ext.1.max(old_name.1).max(new_ext_end)];
    match candidates.into_iter().find(|&c| fits(c)) {
        Some(at) => Ok(at),
        // No room that leaves the old header intact: write it right after the extensions
        // (it then overlaps the old name, which the same header write stops pointing at).
        None if new_ext_end + len <= cs => Ok(new_ext_end),
        None => Err(Error::generic(format!(
            "qcow2: backing file name '{n}' does not fit in the image header \
             (cluster 0 is {cs} bytes, the header and extensions take {new_ext_end})"
        ))),
    }
}

/// Add the write of the span where the header image `new` differs from `raw` on disk (from
/// byte 8 on) to `writes`; when the name had to go over the old one (`place_name`'s
/// fallback), the two become one write from the fields to the end of the name.
fn add_header_write(
    writes: &mut Vec<HeaderWrite>,
    raw: &[u8],
    new: &[u8],
    new_ext_end: usize,
    old_name: (usize, usize),
) {
    let differs = |i: usize| raw.get(i) != new.get(i);
    let first = (8..new.len()).find(|&i| differs(i));
    let last = (8..new.len()).rev().find(|&i| differs(i));
    let (Some(a), Some(b)) = (first, last) else {
        return;
    };
    let single = writes.len() == 1 && writes[0].offset as usize == new_ext_end && {
        let w = &writes[0];
        overlaps(
            (w.offset as usize, w.offset as usize + w.data.len()),
            old_name,
        )
    };
    if single {
        let n = writes.pop().expect("name write");
        let mut data = new[a..].to_vec();
        data.resize(new_ext_end - a, 0);
        data.extend_from_slice(&n.data);
        writes.push(HeaderWrite {
            offset: a as u64,
            data,
        });
    } else {
        writes.push(HeaderWrite {
            offset: a as u64,
            data: new[a..=b].to_vec(),
        });
    }
}

/// True when the write cannot be torn by a power loss (it stays inside one sector).
#[cfg(test)]
fn is_atomic(w: &HeaderWrite) -> bool {
    // The sector the simulator (and real disks) write atomically.
    const ATOMIC: u64 = 512;
    w.offset / ATOMIC == (w.offset + w.data.len() as u64 - 1) / ATOMIC
}

impl Qcow2 {
    /// `BlockDriver::change_backing_file`: make everything written so far durable, then apply
    /// the planned header writes, each flushed before the next.
    pub(super) async fn do_change_backing_file(
        &self,
        name: Option<&str>,
        fmt: Option<&str>,
    ) -> Result<()> {
        self.check_writable().await?;
        let held = &self.meta.lock().await;
        self.flush_metadata(held).await?;
        self.file.flush().await?;
        let (raw, h) = self.read_header_raw().await?;
        for w in plan_backing_change(&raw, &h, name, fmt)? {
            self.file
                .write(w.offset, IoBuf::from_slice(&w.data), ReqFlags::NONE)
                .await
                .1?;
            self.file.flush().await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(backing: Option<(&str, &str)>) -> (Vec<u8>, Header) {
        let h = Header {
            version: 3,
            backing_offset: 0,
            backing_size: 0,
            cluster_bits: 16,
            size: 1 << 20,
            l1_size: 1,
            l1_offset: 3 << 16,
            reftable_offset: 1 << 16,
            reftable_clusters: 1,
            nb_snapshots: 0,
            snapshots_offset: 0,
            crypt_method: 0,
            crypto_area: None,
            incompat: 0,
            compat: 0,
            autoclear: 0,
            refcount_order: 4,
            header_length: 112,
            compression_type: 0,
            backing_file: backing.map(|b| b.0.to_string()),
            backing_fmt: backing.map(|b| b.1.to_string()),
            data_file: None,
            feature_names: Vec::new(),
            unknown_exts: Vec::new(),
        };
        let mut raw = h.serialize();
        raw.resize(65536, 0);
        let h = Header::parse(&raw, 1 << 20).expect("parse");
        (raw, h)
    }

    fn apply(raw: &mut [u8], writes: &[HeaderWrite]) {
        for w in writes {
            raw[w.offset as usize..w.offset as usize + w.data.len()].copy_from_slice(&w.data);
        }
    }

    #[test]
    fn rename_keeps_old_header_valid_until_the_last_write() {
        let (mut raw, h) = image(Some(("mid.qcow2", "qcow2")));
        let writes = plan_backing_change(&raw, &h, Some("base.qcow2"), Some("qcow2")).unwrap();
        assert_eq!(writes.len(), 2);
        // After the first write alone the old name is still there.
        let mut partial = raw.clone();
        apply(&mut partial, &writes[..1]);
        let p = Header::parse(&partial, 1 << 20).unwrap();
        assert_eq!(p.backing_file.as_deref(), Some("mid.qcow2"));
        assert!(is_atomic(&writes[1]), "{:?}", writes[1]);
        apply(&mut raw, &writes);
        let n = Header::parse(&raw, 1 << 20).unwrap();
        assert_eq!(n.backing_file.as_deref(), Some("base.qcow2"));
        assert_eq!(n.backing_fmt.as_deref(), Some("qcow2"));
        assert_eq!(n.feature_names, h.feature_names);
    }

    #[test]
    fn remove_and_add_backing() {
        let (mut raw, h) = image(Some(("mid.qcow2", "qcow2")));
        let writes = plan_backing_change(&raw, &h, None, None).unwrap();
        apply(&mut raw, &writes);
        let n = Header::parse(&raw, 1 << 20).unwrap();
        assert_eq!(n.backing_file, None);
        assert_eq!(n.backing_fmt, None);
        let writes = plan_backing_change(&raw, &n, Some("/abs/other.img"), Some("raw")).unwrap();
        apply(&mut raw, &writes);
        let m = Header::parse(&raw, 1 << 20).unwrap();
        assert_eq!(m.backing_file.as_deref(), Some("/abs/other.img"));
        assert_eq!(m.backing_fmt.as_deref(), Some("raw"));
    }

    #[test]
    fn refuses_names_that_do_not_fit() {
        let (raw, h) = image(None);
        let long = "x".repeat(1024);
        let e = plan_backing_change(&raw, &h, Some(&long), None).unwrap_err();
        assert!(e.message().contains("too long"), "{e}");
        // A 512-byte cluster has no room for a feature table plus a long name.
        let mut small = raw.clone();
        small[20..24].copy_from_slice(&9u32.to_be_bytes());
        let mut hs = h.clone();
        hs.cluster_bits = 9;
        let e = plan_backing_change(&small[..512], &hs, Some(&"y".repeat(600)), None);
        assert!(e.is_err());
    }

    #[test]
    fn repeated_changes_stay_inside_cluster_zero() {
        let (mut raw, mut h) = image(Some(("a.qcow2", "qcow2")));
        for i in 0..50 {
            let name = format!("image-{i}-{}.qcow2", "n".repeat(i % 7));
            let writes = plan_backing_change(&raw, &h, Some(&name), Some("qcow2")).unwrap();
            apply(&mut raw, &writes);
            h = Header::parse(&raw, 1 << 20).unwrap();
            assert_eq!(h.backing_file.as_deref(), Some(name.as_str()));
        }
    }
}
