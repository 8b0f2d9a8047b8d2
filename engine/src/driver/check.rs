//! The result of a consistency check (`qemu-img check`), common to every format that has one
//! ([`FormatOps::check`](super::FormatOps::check)): QEMU's `ImageCheck` numbers, diagnostics and
//! the JSON shape `--output=json` prints.

use serde_json::{Map, Value, json};

use crate::error::Errno;

/// What a check may repair (`qemu-img check -r`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Repair {
    /// Only leaked clusters (refcounts higher than the references).
    Leaks,
    /// Leaks and corruptions (refcounts too low, COPIED flags, refcount structure rebuild).
    All,
}

/// The result of a check: QEMU's `ImageCheck`, plus the diagnostic lines.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Image file name.
    pub filename: String,
    /// Format name ("qcow2").
    pub format: String,
    /// Internal errors (I/O errors, unreadable refcounts) during the check.
    pub check_errors: u64,
    /// Corruptions left on the image.
    pub corruptions: u64,
    /// Leaked clusters left on the image.
    pub leaks: u64,
    /// Corruptions repaired.
    pub corruptions_fixed: u64,
    /// Leaks repaired.
    pub leaks_fixed: u64,
    /// Offset of the end of the last used cluster.
    pub image_end_offset: u64,
    /// Guest clusters of the virtual disk.
    pub total_clusters: u64,
    /// Guest clusters allocated in the image (active L1 table).
    pub allocated_clusters: u64,
    /// Allocated clusters not contiguous with their predecessor in the same L2 table.
    pub fragmented_clusters: u64,
    /// Compressed clusters.
    pub compressed_clusters: u64,
    /// Diagnostics, one per line, as `qemu-img check` prints them on stderr.
    pub messages: Vec<String>,
    /// The check stopped before its end with this error (a leaks-only repair of an image
    /// whose refcount structure needs a rebuild): qemu-img prints the diagnostics, then
    /// "Check failed: <reason>", and no report.
    pub failed: Option<Errno>,
}

impl CheckReport {
    /// Record a diagnostic line.
    pub fn error(&mut self, line: String) {
        self.messages.push(line);
    }

    /// The report as `qemu-img check --output=json` prints it (zero counters other than
    /// `check-errors` are left out, as QEMU does).
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        let opt = |m: &mut Map<String, Value>, k: &str, v: u64| {
            if v != 0 {
                m.insert(k.into(), json!(v));
            }
        };
        // The order qemu-img prints (its dictionary's order), for identical text.
        opt(&mut m, "image-end-offset", self.image_end_offset);
        opt(&mut m, "compressed-clusters", self.compressed_clusters);
        opt(&mut m, "total-clusters", self.total_clusters);
        opt(&mut m, "corruptions", self.corruptions);
        opt(&mut m, "corruptions-fixed", self.corruptions_fixed);
        m.insert("check-errors".into(), json!(self.check_errors));
        opt(&mut m, "leaks", self.leaks);
        opt(&mut m, "leaks-fixed", self.leaks_fixed);
        opt(&mut m, "allocated-clusters", self.allocated_clusters);
        m.insert("filename".into(), json!(self.filename));
        m.insert("format".into(), json!(self.format));
        opt(&mut m, "fragmented-clusters", self.fragmented_clusters);
        Value::Object(m)
    }
}
