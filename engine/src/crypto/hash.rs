//! The hash functions LUKS names in its header (`hash-spec`), PBKDF2 over their HMAC, and the
//! anti-forensic splitter that spreads a master key over thousands of stripes.
//!
//! Everything here is a thin layer over the RustCrypto crates (sha1, sha2, hmac, pbkdf2); the
//! splitter's layout (stripes of the key length, diffusion in digest-sized blocks, each block
//! hashed after its big-endian index) is the one the LUKS1 on-disk format specifies.

use sha1::Sha1;
use sha2::digest::Digest;
use sha2::{Sha224, Sha256, Sha384, Sha512};

/// A hash LUKS can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HashAlg {
    /// `sha1`.
    Sha1,
    /// `sha224`.
    Sha224,
    /// `sha256`.
    Sha256,
    /// `sha384`.
    Sha384,
    /// `sha512`.
    Sha512,
}

impl HashAlg {
    /// The hash named `name` in a LUKS header or a create option.
    pub fn parse(name: &str) -> Option<HashAlg> {
        Some(match name {
            "sha1" => HashAlg::Sha1,
            "sha224" => HashAlg::Sha224,
            "sha256" => HashAlg::Sha256,
            "sha384" => HashAlg::Sha384,
            "sha512" => HashAlg::Sha512,
            _ => return None,
        })
    }

    /// The name as written into a header and shown by `info`.
    pub fn name(self) -> &'static str {
        match self {
            HashAlg::Sha1 => "sha1",
            HashAlg::Sha224 => "sha224",
            HashAlg::Sha256 => "sha256",
            HashAlg::Sha384 => "sha384",
            HashAlg::Sha512 => "sha512",
        }
    }

    /// Bytes in one digest.
    pub fn digest_len(self) -> usize {
        match self {
            HashAlg::Sha1 => 20,
            HashAlg::Sha224 => 28,
            HashAlg::Sha256 => 32,
            HashAlg::Sha384 => 48,
            HashAlg::Sha512 => 64,
        }
    }

    /// The digest of the concatenation of `parts`.
    pub fn digest(self, parts: &[&[u8]]) -> Vec<u8> {
        fn run<D: Digest>(parts: &[&[u8]]) -> Vec<u8> {
            let mut d = D::new();
            for p in parts {
                d.update(p);
            }
            d.finalize().to_vec()
        }
        match self {
            HashAlg::Sha1 => run::<Sha1>(parts),
            HashAlg::Sha224 => run::<Sha224>(parts),
            HashAlg::Sha256 => run::<Sha256>(parts),
            HashAlg::Sha384 => run::<Sha384>(parts),
            HashAlg::Sha512 => run::<Sha512>(parts),
        }
    }

    /// PBKDF2-HMAC of `pass` with `salt` over `iters` rounds, filling `out`.
    pub fn pbkdf2(self, pass: &[u8], salt: &[u8], iters: u32, out: &mut [u8]) {
        use pbkdf2::pbkdf2_hmac;
        match self {
            HashAlg::Sha1 => pbkdf2_hmac::<Sha1>(pass, salt, iters, out),
            HashAlg::Sha224 => pbkdf2_hmac::<Sha224>(pass, salt, iters, out),
            HashAlg::Sha256 => pbkdf2_hmac::<Sha256>(pass, salt, iters, out),
            HashAlg::Sha384 => pbkdf2_hmac::<Sha384>(pass, salt, iters, out),
            HashAlg::Sha512 => pbkdf2_hmac::<Sha512>(pass, salt, iters, out),
        }
    }

    /// Diffuse `buf` in place: each digest-sized block (the last may be shorter) becomes the
    /// hash of its big-endian block number followed by the block, cut to the block's length.
    fn diffuse(self, buf: &mut [u8]) {
        let n = self.digest_len();
        for (i, block) in buf.chunks_mut(n).enumerate() {
            let h = self.digest(&[&(i as u32).to_be_bytes(), block]);
            let len = block.len();
            block.copy_from_slice(&h[..len]);
        }
    }

    /// Split `key` over `stripes` stripes: every stripe but the last is `random` (which holds
    /// `(stripes - 1) * key.len()` bytes), the last is the key XOR the diffused chain of the
    /// others. Returns `stripes * key.len()` bytes.
    pub fn af_split(self, key: &[u8], stripes: u32, random: &[u8]) -> Vec<u8> {
        let len = key.len();
        let mut out = random.to_vec();
        out.truncate(len * (stripes as usize).saturating_sub(1));
        let mut acc = self.af_chain(&out, len);
        xor_into(&mut acc, key);
        out.extend_from_slice(&acc);
        out
    }

    /// Recover a key of `len` bytes from `material` (`stripes * len` bytes, see
    /// [`HashAlg::af_split`]).
    pub fn af_merge(self, material: &[u8], len: usize, stripes: u32) -> Vec<u8> {
        let body = len * (stripes as usize).saturating_sub(1);
        let mut acc = self.af_chain(&material[..body], len);
        xor_into(&mut acc, &material[body..body + len]);
        acc
    }

    /// XOR each stripe of `stripes` into an accumulator, diffusing after each.
    fn af_chain(self, stripes: &[u8], len: usize) -> Vec<u8> {
        let mut acc = vec![0u8; len];
        for s in stripes.chunks(len) {
            xor_into(&mut acc, s);
            self.diffuse(&mut acc);
        }
        acc
    }
}

fn xor_into(acc: &mut [u8], other: &[u8]) {
    for (a, b) in acc.iter_mut().zip(other) {
        *a ^= b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn af_split_merge_round_trip() {
        let key: Vec<u8> = (0..64u8).collect();
        let random: Vec<u8> = (0..64 * 9).map(|i| (i * 7 + 3) as u8).collect();
        for h in [HashAlg::Sha1, HashAlg::Sha256, HashAlg::Sha512] {
            let m = h.af_split(&key, 10, &random);
            assert_eq!(m.len(), 640);
            assert_eq!(h.af_merge(&m, 64, 10), key);
            let mut bad = m.clone();
            bad[5] ^= 1;
            assert_ne!(h.af_merge(&bad, 64, 10), key);
        }
    }

    #[test]
    fn pbkdf2_known_answer() {
        // RFC 6070's first vector (HMAC-SHA1, "password"/"salt", 1 round).
        let mut out = [0u8; 20];
        HashAlg::Sha1.pbkdf2(b"password", b"salt", 1, &mut out);
        assert_eq!(
            out,
            [
                0x0c, 0x60, 0xc8, 0x0f, 0x96, 0x1f, 0x0e, 0x71, 0xf3, 0xa9, 0xb5, 0x24, 0xaf, 0x60,
                0x12, 0x06, 0x2f, 0xe0, 0x37, 0xa6
            ]
        );
    }
}
