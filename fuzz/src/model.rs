//! A byte model of a qcow2 device for random I/O sequences: what every byte must read as after
//! writes, zero writes, compressed writes and discards. A discarded byte may read as its old
//! value, as zero, or as the backing file's byte (qcow2 drops whole clusters only; v2 images
//! with a backing file fall through to it).

use arbitrary::Arbitrary;
use engine::backend::BlockBackend;
use engine::io::{IoBuf, ReqFlags};

/// One guest request.
#[derive(Arbitrary, Clone, Debug)]
pub enum Op {
    /// Write `len` bytes of `pattern` at `off` (both reduced into the device).
    Write {
        /// Offset (modulo the device length).
        off: u32,
        /// Length (clamped to the device end).
        len: u16,
        /// Byte written.
        pattern: u8,
        /// With FUA.
        fua: bool,
    },
    /// Write one whole cluster compressed (may be refused if the cluster is allocated).
    WriteCompressed {
        /// Guest cluster (modulo the cluster count).
        cluster: u16,
        /// Byte written.
        pattern: u8,
    },
    /// Write zeroes.
    Zero {
        /// Offset (modulo the device length).
        off: u32,
        /// Length (clamped).
        len: u32,
        /// Whether the clusters may be deallocated.
        unmap: bool,
    },
    /// Discard.
    Discard {
        /// Offset (modulo the device length).
        off: u32,
        /// Length (clamped).
        len: u32,
    },
    /// Flush.
    Flush,
    /// Read and compare with the model.
    Read {
        /// Offset (modulo the device length).
        off: u32,
        /// Length (clamped).
        len: u16,
    },
    /// Close the image and open it again (metadata must have reached the disk).
    Reopen,
}

/// What every byte of the device must read as.
pub struct Model {
    data: Vec<u8>,
    /// True where a discard left the byte old-or-zero-or-backing.
    loose: Vec<bool>,
    /// The backing file's bytes (zero beyond its end, or no backing file at all).
    backing: Option<Vec<u8>>,
    cluster_size: u64,
}

impl Model {
    /// A device of `len` bytes whose unwritten bytes come from `backing` (or read as zero).
    pub fn new(len: u64, cluster_size: u64, backing: Option<Vec<u8>>) -> Model {
        let data = match &backing {
            Some(b) => (0..len as usize)
                .map(|i| b.get(i).copied().unwrap_or(0))
                .collect(),
            None => vec![0; len as usize],
        };
        Model {
            loose: vec![false; len as usize],
            data,
            backing,
            cluster_size,
        }
    }

    /// Device length.
    pub fn len(&self) -> u64 {
        self.data.len() as u64
    }

    /// True for an empty device.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    fn range(&self, off: u64, len: u64) -> (usize, usize) {
        let total = self.len();
        if total == 0 {
            return (0, 0);
        }
        let s = off % total;
        let e = s + len.min(total - s);
        (s as usize, e as usize)
    }

    fn set(&mut self, s: usize, e: usize, byte: u8) {
        self.data[s..e].fill(byte);
        self.loose[s..e].fill(false);
    }

    /// Check `got`, read at `off`, against the model.
    pub fn verify(&self, off: usize, got: &[u8], what: &str) {
        for (i, &b) in got.iter().enumerate() {
            let at = off + i;
            let want = self.data[at];
            if b == want {
                continue;
            }
            let backing = self
                .backing
                .as_ref()
                .map(|bk| bk.get(at).copied().unwrap_or(0));
            if self.loose[at] && (b == 0 || Some(b) == backing) {
                continue;
            }
            panic!("{what}: byte {at:#x} reads {b:#04x}, model says {want:#04x}");
        }
    }

    /// Run `op` on `bb` and update the model. Returns true for `Reopen` (the caller reopens).
    /// A valid request on a valid image must succeed (a compressed write may be refused).
    pub async fn apply(&mut self, bb: &BlockBackend, op: &Op) -> bool {
        let cs = self.cluster_size;
        match *op {
            Op::Write {
                off,
                len,
                pattern,
                fua,
            } => {
                let (s, e) = self.range(off as u64, len as u64);
                if s == e {
                    return false;
                }
                let flags = if fua { ReqFlags::FUA } else { ReqFlags::NONE };
                let (_, r) = bb
                    .write(s as u64, IoBuf::filled(e - s, pattern), flags)
                    .await;
                r.unwrap_or_else(|err| panic!("write {s:#x}+{:#x}: {err}", e - s));
                self.set(s, e, pattern);
            }
            Op::WriteCompressed { cluster, pattern } => {
                let clusters = self.len() / cs;
                if clusters == 0 {
                    return false;
                }
                let s = (cluster as u64 % clusters) * cs;
                let (_, r) = bb
                    .write(
                        s,
                        IoBuf::filled(cs as usize, pattern),
                        ReqFlags::WRITE_COMPRESSED,
                    )
                    .await;
                if r.is_ok() {
                    self.set(s as usize, (s + cs) as usize, pattern);
                }
            }
            Op::Zero { off, len, unmap } => {
                let (s, e) = self.range(off as u64, len as u64);
                if s == e {
                    return false;
                }
                let flags = if unmap {
                    ReqFlags::MAY_UNMAP
                } else {
                    ReqFlags::NONE
                };
                bb.write_zeroes(s as u64, (e - s) as u64, flags)
                    .await
                    .unwrap_or_else(|err| panic!("write_zeroes {s:#x}+{:#x}: {err}", e - s));
                self.set(s, e, 0);
            }
            Op::Discard { off, len } => {
                let (s, e) = self.range(off as u64, len as u64);
                if s == e {
                    return false;
                }
                bb.discard(s as u64, (e - s) as u64)
                    .await
                    .unwrap_or_else(|err| panic!("discard {s:#x}+{:#x}: {err}", e - s));
                self.loose[s..e].fill(true);
            }
            Op::Flush => bb.flush().await.expect("flush"),
            Op::Read { off, len } => {
                let (s, e) = self.range(off as u64, len as u64);
                if s == e {
                    return false;
                }
                let (buf, r) = bb.read(s as u64, IoBuf::new(e - s)).await;
                r.unwrap_or_else(|err| panic!("read {s:#x}+{:#x}: {err}", e - s));
                self.verify(s, buf.as_slice(), "read");
            }
            Op::Reopen => return true,
        }
        false
    }

    /// Read the whole device and compare it with the model.
    pub async fn verify_all(&self, bb: &BlockBackend, what: &str) {
        let (buf, r) = bb.read(0, IoBuf::new(self.data.len())).await;
        r.unwrap_or_else(|err| panic!("{what}: read of the whole device: {err}"));
        self.verify(0, buf.as_slice(), what);
    }
}
