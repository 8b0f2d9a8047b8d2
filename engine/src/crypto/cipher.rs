//! Sector ciphers: AES in XTS or CBC mode over 512-byte sectors, with the IV generators LUKS
//! and qcow2 name (`plain`, `plain64`, `essiv:HASH`). The block cipher and the modes are the
//! RustCrypto crates' (aes, xts-mode, cbc); this module only picks them and makes each
//! sector's IV from its number.

use aes::cipher::block_padding::NoPadding;
use aes::cipher::consts::U16;
use aes::cipher::{
    BlockCipher, BlockDecrypt, BlockDecryptMut, BlockEncrypt, BlockEncryptMut, BlockSizeUser,
    InnerIvInit, KeyInit,
};
use aes::{Aes128, Aes192, Aes256};
use xts_mode::Xts128;

use super::hash::HashAlg;
use crate::error::{Error, Result};

/// Bytes in one encryption sector (LUKS1 and qcow2 number their IVs in these).
pub const SECTOR: usize = 512;

/// The block cipher with its key size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CipherAlg {
    /// AES with a 16-byte key.
    Aes128,
    /// AES with a 24-byte key.
    Aes192,
    /// AES with a 32-byte key.
    Aes256,
}

impl CipherAlg {
    /// AES of a `key_len`-byte key, if there is one.
    fn aes(key_len: usize) -> Option<CipherAlg> {
        Some(match key_len {
            16 => CipherAlg::Aes128,
            24 => CipherAlg::Aes192,
            32 => CipherAlg::Aes256,
            _ => return None,
        })
    }

    /// The name `info` shows and create options take (`aes-256`).
    pub fn name(self) -> &'static str {
        match self {
            CipherAlg::Aes128 => "aes-128",
            CipherAlg::Aes192 => "aes-192",
            CipherAlg::Aes256 => "aes-256",
        }
    }

    /// The algorithm a create option names.
    pub fn parse(name: &str) -> Option<CipherAlg> {
        match name {
            "aes-128" => Some(CipherAlg::Aes128),
            "aes-192" => Some(CipherAlg::Aes192),
            "aes-256" => Some(CipherAlg::Aes256),
            _ => None,
        }
    }

    /// Bytes in one key.
    pub fn key_len(self) -> usize {
        match self {
            CipherAlg::Aes128 => 16,
            CipherAlg::Aes192 => 24,
            CipherAlg::Aes256 => 32,
        }
    }
}

/// The chaining mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CipherMode {
    /// XTS (two keys of the algorithm's size).
    Xts,
    /// CBC.
    Cbc,
}

impl CipherMode {
    /// The mode's name (`xts`, `cbc`).
    pub fn name(self) -> &'static str {
        match self {
            CipherMode::Xts => "xts",
            CipherMode::Cbc => "cbc",
        }
    }
}

/// How a sector's IV is made from its number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IvGen {
    /// The low 32 bits, little-endian.
    Plain,
    /// The 64-bit number, little-endian.
    Plain64,
    /// plain64 encrypted with AES keyed by the hash of the master key.
    Essiv(HashAlg),
}

impl IvGen {
    /// The generator's name (`plain64`, `essiv`).
    pub fn name(self) -> &'static str {
        match self {
            IvGen::Plain => "plain",
            IvGen::Plain64 => "plain64",
            IvGen::Essiv(_) => "essiv",
        }
    }
}

/// A full description of a sector cipher.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CipherSpec {
    /// The block cipher.
    pub alg: CipherAlg,
    /// The mode.
    pub mode: CipherMode,
    /// The IV generator.
    pub ivgen: IvGen,
}

impl CipherSpec {
    /// Bytes of key the cipher takes (twice the algorithm's for XTS).
    pub fn key_len(&self) -> usize {
        match self.mode {
            CipherMode::Xts => 2 * self.alg.key_len(),
            CipherMode::Cbc => self.alg.key_len(),
        }
    }

    /// The mode string a LUKS header stores (`xts-plain64`, `cbc-essiv:sha256`).
    pub fn luks_mode(&self) -> String {
        match self.ivgen {
            IvGen::Essiv(h) => format!("{}-essiv:{}", self.mode.name(), h.name()),
            iv => format!("{}-{}", self.mode.name(), iv.name()),
        }
    }

    /// The cipher a LUKS header names, checked in QEMU's order and with its messages.
    pub fn from_luks(name: &str, mode: &str, key_bytes: u32) -> Result<CipherSpec> {
        let Some((mode_name, ivgen)) = mode.split_once('-') else {
            return Err(Error::generic(format!(
                "Unexpected cipher mode string format '{mode}'"
            )));
        };
        let mode = match mode_name {
            "xts" => CipherMode::Xts,
            "cbc" => CipherMode::Cbc,
            other => {
                return Err(Error::generic(format!(
                    "Cipher mode '{other}' not supported"
                )));
            }
        };
        let (iv_name, iv_hash) = match ivgen.split_once(':') {
            Some((a, h)) => (a, Some(h)),
            None => (ivgen, None),
        };
        let ivgen = match iv_name {
            "plain" => IvGen::Plain,
            "plain64" => IvGen::Plain64,
            "essiv" => {
                let h = iv_hash.unwrap_or("");
                match HashAlg::parse(h) {
                    Some(h) => IvGen::Essiv(h),
                    None => {
                        return Err(Error::generic(format!(
                            "Hash algorithm '{h}' not supported"
                        )));
                    }
                }
            }
            other => {
                return Err(Error::generic(format!(
                    "IV generator '{other}' not supported"
                )));
            }
        };
        let alg_len = match mode {
            CipherMode::Xts => key_bytes / 2,
            CipherMode::Cbc => key_bytes,
        };
        let alg = match (name, CipherAlg::aes(alg_len as usize)) {
            ("aes", Some(a)) => a,
            _ => {
                return Err(Error::generic(format!(
                    "Algorithm '{name}' with key size {alg_len} bytes not supported"
                )));
            }
        };
        if mode == CipherMode::Xts && !key_bytes.is_multiple_of(2) {
            return Err(Error::generic(
                "XTS cipher key length should be a multiple of 2",
            ));
        }
        Ok(CipherSpec { alg, mode, ivgen })
    }
}

/// One chaining mode over one block cipher, given each sector's IV.
trait Mode {
    fn encrypt(&self, iv: [u8; 16], sector: &mut [u8]);
    fn decrypt(&self, iv: [u8; 16], sector: &mut [u8]);
}

/// What the modes need of a block cipher (AES of any key size).
trait Block:
    BlockCipher + BlockEncrypt + BlockDecrypt + BlockSizeUser<BlockSize = U16> + KeyInit + Clone
{
}
impl<C> Block for C where
    C: BlockCipher + BlockEncrypt + BlockDecrypt + BlockSizeUser<BlockSize = U16> + KeyInit + Clone
{
}

struct Xts<C: Block>(Xts128<C>);

impl<C: Block> Mode for Xts<C> {
    fn encrypt(&self, iv: [u8; 16], sector: &mut [u8]) {
        self.0.encrypt_sector(sector, iv);
    }
    fn decrypt(&self, iv: [u8; 16], sector: &mut [u8]) {
        self.0.decrypt_sector(sector, iv);
    }
}

struct Cbc<C: Block>(C);

impl<C: Block> Mode for Cbc<C> {
    fn encrypt(&self, iv: [u8; 16], sector: &mut [u8]) {
        let len = sector.len();
        let enc = cbc::Encryptor::<C>::inner_iv_init(self.0.clone(), &iv.into());
        // Sectors are whole blocks: nothing to pad, so this cannot fail.
        let _ = enc.encrypt_padded_mut::<NoPadding>(sector, len);
    }
    fn decrypt(&self, iv: [u8; 16], sector: &mut [u8]) {
        let dec = cbc::Decryptor::<C>::inner_iv_init(self.0.clone(), &iv.into());
        let _ = dec.decrypt_padded_mut::<NoPadding>(sector);
    }
}

fn new_mode<C: Block + 'static>(mode: CipherMode, key: &[u8]) -> Box<dyn Mode> {
    // Key lengths were checked against the spec by the caller.
    let block = |k: &[u8]| C::new_from_slice(k).expect("key length checked");
    match mode {
        CipherMode::Xts => {
            let (a, b) = key.split_at(key.len() / 2);
            Box::new(Xts(Xts128::new(block(a), block(b))))
        }
        CipherMode::Cbc => Box::new(Cbc(block(key))),
    }
}

fn aes_of(alg: CipherAlg, mode: CipherMode, key: &[u8]) -> Box<dyn Mode> {
    match alg {
        CipherAlg::Aes128 => new_mode::<Aes128>(mode, key),
        CipherAlg::Aes192 => new_mode::<Aes192>(mode, key),
        CipherAlg::Aes256 => new_mode::<Aes256>(mode, key),
    }
}

/// A keyed sector cipher.
pub struct SectorCipher {
    mode: Box<dyn Mode>,
    ivgen: IvGen,
    /// ESSIV's IV cipher (AES keyed by the hash of the key).
    essiv: Option<Box<dyn Mode>>,
}

impl SectorCipher {
    /// Key `spec` with `key` (of `spec.key_len()` bytes).
    pub fn new(spec: &CipherSpec, key: &[u8]) -> Result<SectorCipher> {
        if key.len() != spec.key_len() {
            return Err(Error::generic(format!(
                "Cipher key length {} does not match {}",
                key.len(),
                spec.key_len()
            )));
        }
        let essiv = match spec.ivgen {
            IvGen::Essiv(h) => {
                let salt = h.digest(&[key]);
                let Some(alg) = CipherAlg::aes(salt.len()) else {
                    return Err(Error::generic(format!(
                        "Algorithm 'aes' with key size {} bytes not supported",
                        salt.len()
                    )));
                };
                Some(aes_of(alg, CipherMode::Cbc, &salt))
            }
            _ => None,
        };
        Ok(SectorCipher {
            mode: aes_of(spec.alg, spec.mode, key),
            ivgen: spec.ivgen,
            essiv,
        })
    }

    fn iv(&self, sector: u64) -> [u8; 16] {
        let mut iv = [0u8; 16];
        match self.ivgen {
            IvGen::Plain => iv[..4].copy_from_slice(&(sector as u32).to_le_bytes()),
            IvGen::Plain64 | IvGen::Essiv(_) => iv[..8].copy_from_slice(&sector.to_le_bytes()),
        }
        if let Some(e) = &self.essiv {
            // One block of CBC under a zero IV is the block cipher itself.
            e.encrypt([0; 16], &mut iv);
        }
        iv
    }

    /// Encrypt `data` (whole sectors) in place; its first sector is number `first`.
    pub fn encrypt(&self, first: u64, data: &mut [u8]) {
        for (i, s) in data.chunks_mut(SECTOR).enumerate() {
            self.mode.encrypt(self.iv(first + i as u64), s);
        }
    }

    /// Decrypt `data` (whole sectors) in place; its first sector is number `first`.
    pub fn decrypt(&self, first: u64, data: &mut [u8]) {
        for (i, s) in data.chunks_mut(SECTOR).enumerate() {
            self.mode.decrypt(self.iv(first + i as u64), s);
        }
    }
}
