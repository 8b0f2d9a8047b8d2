//! The options of a new LUKS volume (`qemu-img create -f luks -o ...`, qcow2's `encrypt.*`),
//! checked as QEMU checks them, and the step that turns them into a header: PBKDF2 rounds
//! from `iter-time` and random bytes, both through the env seam.

use super::cipher::{CipherAlg, CipherMode, CipherSpec, IvGen};
use super::hash::HashAlg;
use super::luks::{self, Built, MIN_ITERS, NewLuks};
use crate::env::Env;
use crate::error::{Error, Result};

/// `-o` options of a new LUKS volume, as given (QEMU's defaults otherwise).
#[derive(Clone, Debug)]
pub struct LuksCreate {
    /// `cipher-alg` (`aes-256`).
    pub cipher_alg: String,
    /// `cipher-mode` (`xts`).
    pub cipher_mode: String,
    /// `ivgen-alg` (`plain64`).
    pub ivgen_alg: String,
    /// `ivgen-hash-alg` (`sha256`; only used by essiv).
    pub ivgen_hash_alg: String,
    /// `hash-alg` (`sha256`).
    pub hash_alg: String,
    /// `iter-time` in milliseconds (2000).
    pub iter_time: u64,
}

impl Default for LuksCreate {
    fn default() -> LuksCreate {
        LuksCreate {
            cipher_alg: "aes-256".into(),
            cipher_mode: "xts".into(),
            ivgen_alg: "plain64".into(),
            ivgen_hash_alg: "sha256".into(),
            hash_alg: "sha256".into(),
            iter_time: 2000,
        }
    }
}

fn refuse(param: &str, v: &str) -> Error {
    Error::generic(format!("Parameter '{param}' does not accept value '{v}'"))
}

impl LuksCreate {
    /// Apply option `key` (without any `encrypt.` prefix; `param` is its name as QEMU's
    /// message spells it). `Ok(false)`: not a LUKS option. Only a non-number `iter-time` is
    /// refused here; names are checked by [`LuksCreate::check`], after qemu-img has printed
    /// its "Formatting" line.
    pub fn set(&mut self, key: &str, v: &str, param: &str) -> Result<bool> {
        match key {
            "cipher-alg" => self.cipher_alg = v.into(),
            "cipher-mode" => self.cipher_mode = v.into(),
            "ivgen-alg" => self.ivgen_alg = v.into(),
            "ivgen-hash-alg" => self.ivgen_hash_alg = v.into(),
            "hash-alg" => self.hash_alg = v.into(),
            "iter-time" => {
                self.iter_time = v
                    .parse()
                    .map_err(|_| Error::generic(format!("Parameter '{param}' expects a number")))?
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Refuse a name QEMU does not accept (or blk does not support), in QEMU's order; each
    /// option's name in the message is `prefix` + its key.
    pub fn check(&self, prefix: &str) -> Result<()> {
        let bad = |key: &str, v: &str| Err(refuse(&format!("{prefix}{key}"), v));
        if CipherAlg::parse(&self.cipher_alg).is_none() {
            return bad("cipher-alg", &self.cipher_alg);
        }
        if !matches!(self.cipher_mode.as_str(), "xts" | "cbc") {
            return bad("cipher-mode", &self.cipher_mode);
        }
        if !matches!(self.ivgen_alg.as_str(), "plain" | "plain64" | "essiv") {
            return bad("ivgen-alg", &self.ivgen_alg);
        }
        if HashAlg::parse(&self.ivgen_hash_alg).is_none() {
            return bad("ivgen-hash-alg", &self.ivgen_hash_alg);
        }
        if HashAlg::parse(&self.hash_alg).is_none() {
            return bad("hash-alg", &self.hash_alg);
        }
        Ok(())
    }

    /// The cipher and hash the options name.
    pub fn spec(&self) -> Result<(CipherSpec, HashAlg)> {
        self.check("")?;
        let parse_hash = |h: &str| HashAlg::parse(h).ok_or_else(|| refuse("hash-alg", h));
        let ivgen = match self.ivgen_alg.as_str() {
            "plain" => IvGen::Plain,
            "plain64" => IvGen::Plain64,
            _ => IvGen::Essiv(parse_hash(&self.ivgen_hash_alg)?),
        };
        let spec = CipherSpec {
            alg: CipherAlg::parse(&self.cipher_alg)
                .ok_or_else(|| refuse("cipher-alg", &self.cipher_alg))?,
            mode: match self.cipher_mode.as_str() {
                "cbc" => CipherMode::Cbc,
                _ => CipherMode::Xts,
            },
            ivgen,
        };
        if let IvGen::Essiv(h) = ivgen
            && !matches!(h.digest_len(), 16 | 24 | 32)
        {
            return Err(Error::generic(format!(
                "Algorithm 'aes' with key size {} bytes not supported",
                h.digest_len()
            )));
        }
        Ok((spec, parse_hash(&self.hash_alg)?))
    }

    /// A new volume keyed by `pass`: PBKDF2 rounds for `iter-time` as the env measures them
    /// (at least QEMU's minimum; the digest gets an eighth of the slot's), random bytes from
    /// the env.
    pub fn build(&self, env: &dyn Env, pass: &[u8]) -> Result<Built> {
        let (spec, hash) = self.spec()?;
        let key_len = spec.key_len();
        let mut work = |n: u32| {
            let mut out = vec![0u8; key_len];
            hash.pbkdf2(b"benchmark", &[0u8; 32], n.max(1), &mut out);
        };
        let rounds = env.rounds_in(self.iter_time, &mut work);
        let clamp = |r: u64| r.clamp(MIN_ITERS as u64, u32::MAX as u64) as u32;
        let n = NewLuks {
            spec,
            hash,
            slot_iters: clamp(rounds),
            mk_iters: clamp(rounds / 8),
        };
        Ok(luks::build(&n, pass, &mut |b| env.random_bytes(b)))
    }
}
