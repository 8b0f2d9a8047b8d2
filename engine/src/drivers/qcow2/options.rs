//! qcow2's runtime open options (QEMU's names, defaults and messages): metadata cache sizes
//! (`cache-size`, `l2-cache-size`, `refcount-cache-size`), `lazy-refcounts`, `pass-discard-*`,
//! `overlap-check` and `cache-clean-interval`. Parsed and validated here; `open` applies them
//! once the header (cluster size, virtual size, version) is known (`clean.rs` runs
//! `cache-clean-interval`). `pass-discard-snapshot` is validated only (blk has no snapshots).
//!
//! Must not import `job`, `qmp`, `engine`, `backend` or other drivers.

use serde_json::Value;

use crate::error::{Error, Result};
use crate::util::Options;

use super::overlap::{
    OL_ACTIVE_L1, OL_ACTIVE_L2, OL_BITMAP_DIRECTORY, OL_HEADER, OL_INACTIVE_L1, OL_INACTIVE_L2,
    OL_REFCOUNT_BLOCK, OL_REFCOUNT_TABLE, OL_SNAPSHOT_TABLE,
};

/// Default upper bound of the L2 cache (QEMU's 32 MiB).
const DEFAULT_L2_CACHE_MAX: u64 = 32 << 20;
/// Fewest L2 tables cached.
const MIN_L2_TABLES: u64 = 2;
/// Fewest (and by default exactly this many) refcount blocks cached.
const MIN_REFCOUNT_BLOCKS: u64 = 4;

/// The overlap-check templates and which structures each checks, as in QEMU: `constant`
/// needs no reads, `cached` what is in memory, `all` also reads the inactive L2 tables.
const TEMPLATES: [(&str, u32); 4] = [
    ("none", 0),
    ("constant", CONSTANT),
    ("cached", CONSTANT | OL_ACTIVE_L2 | OL_REFCOUNT_BLOCK),
    (
        "all",
        CONSTANT | OL_ACTIVE_L2 | OL_REFCOUNT_BLOCK | OL_INACTIVE_L2,
    ),
];

/// The structures the `constant` template checks.
const CONSTANT: u32 = OL_HEADER
    | OL_ACTIVE_L1
    | OL_REFCOUNT_TABLE
    | OL_SNAPSHOT_TABLE
    | OL_INACTIVE_L1
    | OL_BITMAP_DIRECTORY;

/// Per-structure `overlap-check.NAME` booleans.
const STRUCTURES: [(&str, u32); 9] = [
    ("main-header", OL_HEADER),
    ("active-l1", OL_ACTIVE_L1),
    ("active-l2", OL_ACTIVE_L2),
    ("refcount-table", OL_REFCOUNT_TABLE),
    ("refcount-block", OL_REFCOUNT_BLOCK),
    ("snapshot-table", OL_SNAPSHOT_TABLE),
    ("inactive-l1", OL_INACTIVE_L1),
    ("inactive-l2", OL_INACTIVE_L2),
    ("bitmap-directory", OL_BITMAP_DIRECTORY),
];

/// Every runtime option's key: what a reopen may change (anything else is refused).
pub(crate) const RUNTIME_KEYS: [&str; 9] = [
    "cache-size",
    "l2-cache-size",
    "refcount-cache-size",
    "lazy-refcounts",
    "pass-discard-request",
    "pass-discard-other",
    "pass-discard-snapshot",
    "overlap-check",
    "cache-clean-interval",
];

/// The options as given (sizes not yet resolved against the image).
#[derive(Clone, Debug)]
pub(crate) struct OpenOpts {
    cache_size: Option<u64>,
    l2_cache_size: Option<u64>,
    refcount_cache_size: Option<u64>,
    /// `lazy-refcounts`; the header's compatible bit when absent.
    pub lazy: Option<bool>,
    /// Discard clusters freed by guest discards in the file.
    pub pass_discard_request: bool,
    /// Discard clusters freed otherwise (overwritten by COW, metadata moves) in the file.
    pub pass_discard_other: bool,
    /// Metadata structures checked before writes (`overlap::OL_*` bits).
    pub overlap_mask: u32,
    /// `cache-clean-interval` in seconds when given (0: never). Without it blk does not clean
    /// (QEMU's 600 s default is not run: a timer task per image would reorder the simulator's
    /// seeded schedules, and keeping tables cached changes nothing a user sees).
    pub clean_interval: Option<u64>,
}

impl OpenOpts {
    /// Take the options from `opts`; `unmap` is the node's `discard=unmap` (the default of
    /// `pass-discard-request`).
    pub(crate) fn take(opts: &mut Options, unmap: bool) -> Result<OpenOpts> {
        let cache_size = opts.take_u64("cache-size")?;
        let l2_cache_size = opts.take_u64("l2-cache-size")?;
        let refcount_cache_size = opts.take_u64("refcount-cache-size")?;
        if cache_size.is_some() && l2_cache_size.is_some() && refcount_cache_size.is_some() {
            return Err(Error::generic(
                "cache-size, l2-cache-size and refcount-cache-size may not be set at the same time",
            ));
        }
        if let Some(c) = cache_size {
            if l2_cache_size.is_some_and(|l| l > c) {
                return Err(Error::generic("l2-cache-size may not exceed cache-size"));
            }
            if refcount_cache_size.is_some_and(|r| r > c) {
                return Err(Error::generic(
                    "refcount-cache-size may not exceed cache-size",
                ));
            }
        }
        let clean_interval = take_interval(opts)?;
        // blk has no internal snapshots, so nothing is ever freed by deleting one.
        opts.take_bool("pass-discard-snapshot")?;
        Ok(OpenOpts {
            cache_size,
            l2_cache_size,
            refcount_cache_size,
            lazy: opts.take_bool("lazy-refcounts")?,
            pass_discard_request: opts.take_bool("pass-discard-request")?.unwrap_or(unmap),
            pass_discard_other: opts.take_bool("pass-discard-other")?.unwrap_or(false),
            overlap_mask: overlap_mask(opts.take("overlap-check"))?,
            clean_interval,
        })
    }

    /// (L2 tables, refcount blocks) to cache for an image of `virtual_size` bytes in clusters
    /// of `cs` bytes, sized as QEMU sizes them: the L2 cache covers the whole disk up to
    /// 32 MiB, the refcount cache is four blocks, and a combined `cache-size` gives the L2
    /// cache all it can use and the rest to refcounts.
    pub(crate) fn cache_tables(&self, cs: u64, virtual_size: u64) -> (usize, usize) {
        let max_l2 = (virtual_size.div_ceil(cs) * 8).next_multiple_of(cs);
        let min_rc = MIN_REFCOUNT_BLOCKS * cs;
        let (l2, rc) = match (
            self.cache_size,
            self.l2_cache_size,
            self.refcount_cache_size,
        ) {
            (Some(c), Some(l), _) => (l, c - l),
            (Some(c), None, Some(r)) => (c - r, r),
            (Some(c), None, None) if c >= max_l2 + min_rc => (max_l2, c - max_l2),
            (Some(c), None, None) => (c - c.min(min_rc), c.min(min_rc)),
            (None, l, r) => (
                l.unwrap_or(DEFAULT_L2_CACHE_MAX.min(max_l2)),
                r.unwrap_or(min_rc),
            ),
        };
        let l2_tables = (l2 / cs).clamp(MIN_L2_TABLES, 1 << 20);
        let rc_blocks = (rc / cs).clamp(MIN_REFCOUNT_BLOCKS, 1 << 20);
        (l2_tables as usize, rc_blocks as usize)
    }

    /// QEMU's refusal of lazy refcounts on a v2 image.
    pub(crate) fn check_version(&self, version: u32) -> Result<()> {
        if self.lazy == Some(true) && version < 3 {
            return Err(Error::generic(
                "Lazy refcounts require a qcow2 image with at least qemu 1.1 compatibility level",
            ));
        }
        Ok(())
    }
}

/// `cache-clean-interval` in seconds (QEMU refuses what does not fit 32 bits, -1 included).
fn take_interval(opts: &mut Options) -> Result<Option<u64>> {
    let too_big = || Error::generic("Cache clean interval too big");
    let secs = match opts.take("cache-clean-interval") {
        None => return Ok(None),
        Some(Value::Number(n)) => n.as_u64().ok_or_else(too_big)?,
        Some(Value::String(s)) if s.starts_with('-') => return Err(too_big()),
        Some(Value::String(s)) => s.parse::<u64>().map_err(|_| {
            Error::param_invalid(
                "cache-clean-interval",
                format!("expects a number, got '{s}'"),
            )
        })?,
        Some(_) => {
            return Err(Error::generic(
                "Invalid parameter type for 'cache-clean-interval', expected: integer",
            ));
        }
    };
    if secs > u32::MAX as u64 {
        return Err(too_big());
    }
    Ok(Some(secs))
}

/// The overlap-check mask: a template name, or `{template, STRUCTURE: bool, ...}`.
fn overlap_mask(v: Option<Value>) -> Result<u32> {
    let template = |name: &str| {
        TEMPLATES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, m)| *m)
            .ok_or_else(|| {
                Error::generic(format!(
                    "Unsupported value '{name}' for qcow2 option 'overlap-check'. Allowed are \
                     any of the following: none, constant, cached, all"
                ))
            })
    };
    let dict = match v {
        None => return template("cached"),
        Some(Value::String(s)) => return template(&s),
        Some(v @ Value::Object(_)) => v,
        Some(_) => {
            return Err(Error::generic(
                "Invalid parameter type for 'overlap-check', expected: string",
            ));
        }
    };
    let mut d = Options::new(dict)?;
    let mut mask = template(d.take_str("template")?.as_deref().unwrap_or("cached"))?;
    for (name, bit) in STRUCTURES {
        match d.take_bool(name)? {
            Some(true) => mask |= bit,
            Some(false) => mask &= !bit,
            None => {}
        }
    }
    d.finish().map_err(|e| e.context("overlap-check"))?;
    Ok(mask)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn take(v: Value) -> Result<OpenOpts> {
        OpenOpts::take(&mut Options::new(v).unwrap(), true)
    }

    #[test]
    fn cache_sizes_as_qemu() {
        let cs = 65536;
        let o = take(json!({})).unwrap();
        // 1 GiB disk: 16 L2 tables cover it; 4 refcount blocks.
        assert_eq!(o.cache_tables(cs, 1 << 30), (2, 4));
        assert_eq!(o.cache_tables(cs, 1 << 40), (512, 4));
        let o = take(json!({"cache-size": "1M"})).unwrap();
        assert_eq!(o.cache_tables(cs, 1 << 40), (12, 4));
        let o = take(json!({"cache-size": "2M", "l2-cache-size": "1M"})).unwrap();
        assert_eq!(o.cache_tables(cs, 1 << 40), (16, 16));
        let msg = |v| take(v).unwrap_err().message().to_string();
        assert_eq!(
            msg(json!({"cache-size": 1, "l2-cache-size": 1, "refcount-cache-size": 1})),
            "cache-size, l2-cache-size and refcount-cache-size may not be set at the same time"
        );
        assert_eq!(
            msg(json!({"cache-size": "1M", "l2-cache-size": "2M"})),
            "l2-cache-size may not exceed cache-size"
        );
        assert_eq!(
            msg(json!({"cache-clean-interval": "-1"})),
            "Cache clean interval too big"
        );
    }

    #[test]
    fn overlap_templates() {
        assert_eq!(
            take(json!({"overlap-check": "none"})).unwrap().overlap_mask,
            0
        );
        let o = take(json!({"overlap-check": {"template": "constant", "active-l2": true}}));
        assert_eq!(o.unwrap().overlap_mask, CONSTANT | OL_ACTIVE_L2);
        let all = take(json!({"overlap-check": "all"})).unwrap().overlap_mask;
        assert_eq!(all, (1 << 9) - 1, "all nine structures");
        let cached = take(json!({"overlap-check": "cached"}))
            .unwrap()
            .overlap_mask;
        assert_eq!(
            cached,
            all & !OL_INACTIVE_L2,
            "cached reads no inactive L2 table"
        );
        let o = take(json!({"overlap-check.main-header": "off"})).unwrap();
        assert_eq!(o.overlap_mask & OL_HEADER, 0);
        assert!(take(json!({"overlap-check": "bogus"})).is_err());
    }
}
