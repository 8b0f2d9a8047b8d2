//! The transcript of a run: one line per command, reply, event and check, stamped with virtual
//! time, and a fixed 64-bit hash over it (FNV-1a, never `DefaultHasher`).

use std::fmt::Write;

/// Fold `bytes` into an FNV-1a hash.
pub fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        hash ^= *b as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// FNV-1a's offset basis.
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// Lines of a run.
#[derive(Default, Debug, Clone)]
pub struct Transcript {
    text: String,
}

/// Virtual nanoseconds as `seconds.micros`.
pub fn stamp(ns: u64) -> String {
    format!(
        "{:>4}.{:06}",
        ns / 1_000_000_000,
        (ns % 1_000_000_000) / 1000
    )
}

impl Transcript {
    /// Add a line at virtual time `ns`.
    pub fn line(&mut self, ns: u64, text: &str) {
        let _ = writeln!(self.text, "[{}] {text}", stamp(ns));
    }

    /// Add an unstamped line (headers).
    pub fn raw(&mut self, text: &str) {
        self.text.push_str(text);
        self.text.push('\n');
    }

    /// The text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Hash of the text.
    pub fn hash(&self) -> u64 {
        fnv1a(FNV_OFFSET, self.text.as_bytes())
    }
}
