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

/// Most transcript text a run keeps (a run with a workload and a long wait could otherwise
/// grow without bound); the hash still covers every line.
pub const MAX_TRANSCRIPT_BYTES: usize = 32 << 20;

/// Lines of a run.
#[derive(Debug, Clone)]
pub struct Transcript {
    text: String,
    /// FNV-1a over every line, kept or not.
    hash: u64,
    /// Lines left out once the text reached `MAX_TRANSCRIPT_BYTES`.
    dropped: u64,
}

impl Default for Transcript {
    fn default() -> Transcript {
        Transcript {
            text: String::new(),
            hash: FNV_OFFSET,
            dropped: 0,
        }
    }
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
        self.raw(&format!("[{}] {text}", stamp(ns)));
    }

    /// Add an unstamped line (headers).
    pub fn raw(&mut self, text: &str) {
        self.hash = fnv1a(fnv1a(self.hash, text.as_bytes()), b"\n");
        if self.text.len() + text.len() >= MAX_TRANSCRIPT_BYTES {
            if self.dropped == 0 {
                let _ = writeln!(
                    self.text,
                    "... transcript full ({MAX_TRANSCRIPT_BYTES} bytes): later lines are \
                     hashed, not kept"
                );
            }
            self.dropped += 1;
            return;
        }
        self.text.push_str(text);
        self.text.push('\n');
    }

    /// The text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Hash of every line (the text's own hash unless lines were left out).
    pub fn hash(&self) -> u64 {
        self.hash
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 10 bug 11: the transcript stops growing at its cap; the hash covers every line.
    #[test]
    fn a_full_transcript_keeps_hashing() {
        let mut t = Transcript::default();
        let line = "x".repeat(1000);
        for i in 0..(MAX_TRANSCRIPT_BYTES / 1000 + 100) as u64 {
            t.line(i, &line);
        }
        assert!(t.text().len() <= MAX_TRANSCRIPT_BYTES + 200);
        assert!(t.text().ends_with("later lines are hashed, not kept\n"));
        let before = t.hash();
        t.line(0, "one more");
        assert_ne!(t.hash(), before);
        let mut small = Transcript::default();
        small.raw("a");
        small.line(5, "b");
        assert_eq!(small.hash(), fnv1a(FNV_OFFSET, small.text().as_bytes()));
    }
}
