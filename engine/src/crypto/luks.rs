//! The LUKS1 header: parsing and checking it (QEMU's order and messages), unlocking a key slot
//! with a passphrase, building a new header with one active slot, and the `info` view.
//!
//! On-disk layout (all integers big-endian): magic `LUKS\xba\xbe`, version 1, cipher name, mode
//! and hash (32-byte NUL-padded strings), payload offset (sectors), key bytes, master-key
//! digest (20 bytes), its salt (32) and iteration count, UUID (40), then 8 key slots of 48
//! bytes (state, iterations, salt, key-material offset in sectors, stripes). A slot's key
//! material is the master key split over 4000 stripes, encrypted with the passphrase's
//! PBKDF2 key, IVs numbered from 0 at the material's start.

use serde_json::{Map, Value, json};

use super::cipher::{CipherAlg, CipherMode, CipherSpec, IvGen, SECTOR, SectorCipher};
use super::hash::HashAlg;
use crate::error::{Error, Result};

/// The bytes the header itself occupies.
pub const HEADER_LEN: usize = 592;
/// Key slots in a LUKS1 header.
pub const SLOTS: usize = 8;
/// Stripes of the anti-forensic split (the only value QEMU accepts).
pub const STRIPES: u32 = 4000;
/// Bytes of each salt.
const SALT_LEN: usize = 32;
/// Bytes of the master-key digest.
const DIGEST_LEN: usize = 20;
const MAGIC: &[u8; 6] = b"LUKS\xba\xbe";
const SLOT_ACTIVE: u32 = 0x00AC_71F3;
const SLOT_DISABLED: u32 = 0x0000_DEAD;
/// Key material and the payload are aligned to this many bytes in new headers.
const ALIGN: u64 = 4096;
/// The fewest PBKDF2 rounds QEMU writes for a slot key and for the master-key digest.
pub const MIN_ITERS: u32 = 1000;

/// One key slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeySlot {
    /// Holds a copy of the master key.
    pub active: bool,
    /// PBKDF2 rounds of the passphrase.
    pub iterations: u32,
    /// PBKDF2 salt.
    pub salt: [u8; SALT_LEN],
    /// Where the key material starts, in 512-byte sectors.
    pub key_offset: u32,
    /// Anti-forensic stripes.
    pub stripes: u32,
}

/// A parsed and checked LUKS1 header.
#[derive(Clone, Debug)]
pub struct LuksHeader {
    /// `cipher-name` as stored.
    pub cipher_name: String,
    /// `cipher-mode` as stored.
    pub cipher_mode: String,
    /// `hash-spec` as stored.
    pub hash_spec: String,
    /// Where the encrypted payload starts, in sectors.
    pub payload_offset: u32,
    /// Bytes of the master key.
    pub key_bytes: u32,
    /// PBKDF2 of the master key.
    pub mk_digest: [u8; DIGEST_LEN],
    /// Its salt.
    pub mk_salt: [u8; SALT_LEN],
    /// Its rounds.
    pub mk_iters: u32,
    /// The volume's UUID (text).
    pub uuid: String,
    /// The key slots.
    pub slots: Vec<KeySlot>,
    /// The cipher the header names (checked at parse).
    pub spec: CipherSpec,
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn text(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

fn put_text(out: &mut [u8], s: &str) {
    let n = s.len().min(out.len() - 1);
    out[..n].copy_from_slice(&s.as_bytes()[..n]);
}

impl LuksHeader {
    /// Parse and check the header at the start of `b` (bytes past its end read as zeroes, as
    /// a short file does). The first problem found is the error, as QEMU reports it.
    pub fn parse(b: &[u8]) -> Result<LuksHeader> {
        let mut buf = [0u8; HEADER_LEN];
        let n = b.len().min(HEADER_LEN);
        buf[..n].copy_from_slice(&b[..n]);
        let b = &buf;
        if &b[..6] != MAGIC {
            return Err(Error::generic("Volume is not in LUKS format"));
        }
        let version = u16::from_be_bytes([b[6], b[7]]);
        if version != 1 {
            return Err(Error::generic(format!(
                "LUKS version {version} is not supported"
            )));
        }
        let slots = (0..SLOTS)
            .map(|i| {
                let s = &b[208 + 48 * i..208 + 48 * (i + 1)];
                let state = be32(s, 0);
                KeySlot {
                    // Neither state is checked below, as a corruption.
                    active: state == SLOT_ACTIVE,
                    iterations: be32(s, 4),
                    salt: s[8..40].try_into().expect("32 bytes"),
                    key_offset: be32(s, 40),
                    stripes: be32(s, 44),
                }
            })
            .collect();
        let mut h = LuksHeader {
            cipher_name: text(&b[8..40]),
            cipher_mode: text(&b[40..72]),
            hash_spec: text(&b[72..104]),
            payload_offset: be32(b, 104),
            key_bytes: be32(b, 108),
            mk_digest: b[112..132].try_into().expect("20 bytes"),
            mk_salt: b[132..164].try_into().expect("32 bytes"),
            mk_iters: be32(b, 164),
            uuid: text(&b[168..208]),
            slots,
            spec: CipherSpec {
                alg: CipherAlg::Aes256,
                mode: CipherMode::Xts,
                ivgen: IvGen::Plain64,
            },
        };
        let states: Vec<u32> = (0..SLOTS).map(|i| be32(b, 208 + 48 * i)).collect();
        h.check_layout(&states)?;
        h.spec = CipherSpec::from_luks(&h.cipher_name, &h.cipher_mode, h.key_bytes)?;
        Ok(h)
    }

    /// Sectors of one slot's key material.
    fn material_sectors(&self) -> u64 {
        (self.key_bytes as u64 * STRIPES as u64).div_ceil(SECTOR as u64)
    }

    /// The header's own consistency (slots inside the header area, apart from each other and
    /// the payload), in QEMU's order.
    fn check_layout(&self, states: &[u32]) -> Result<()> {
        let header_sectors = (HEADER_LEN as u64).div_ceil(SECTOR as u64);
        let payload = self.payload_offset as u64;
        if payload < header_sectors {
            return Err(Error::generic(
                "LUKS payload is overlapping with the header",
            ));
        }
        if self.mk_iters == 0 {
            return Err(Error::generic("LUKS key iteration count is zero"));
        }
        let len = self.material_sectors();
        for (i, s) in self.slots.iter().enumerate() {
            if states[i] != SLOT_ACTIVE && states[i] != SLOT_DISABLED {
                return Err(Error::generic(format!(
                    "Keyslot {i} state (active/disable) is corrupted"
                )));
            }
            if s.active && s.iterations == 0 {
                return Err(Error::generic(format!(
                    "Keyslot {i} iteration count is zero"
                )));
            }
            if (s.key_offset as u64) < header_sectors {
                return Err(Error::generic(format!(
                    "Keyslot {i} is overlapping with the LUKS header"
                )));
            }
            if s.key_offset as u64 + len > payload {
                return Err(Error::generic(format!(
                    "Keyslot {i} is overlapping with the encrypted payload"
                )));
            }
            if s.stripes != STRIPES {
                return Err(Error::generic(format!(
                    "Keyslot {i} is corrupted (stripes {} != {STRIPES})",
                    s.stripes
                )));
            }
        }
        for i in 0..SLOTS {
            for j in i + 1..SLOTS {
                let (a, b) = (
                    self.slots[i].key_offset as u64,
                    self.slots[j].key_offset as u64,
                );
                if a < b + len && b < a + len {
                    return Err(Error::generic(format!(
                        "Keyslots {i} and {j} are overlapping in the header"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Where slot `i`'s key material lies, in bytes from the start of the header.
    pub fn material_range(&self, i: usize) -> (u64, usize) {
        let len = self.material_sectors() as usize * SECTOR;
        (self.slots[i].key_offset as u64 * SECTOR as u64, len)
    }

    /// Where the payload starts, in bytes from the start of the header.
    pub fn payload_bytes(&self) -> u64 {
        self.payload_offset as u64 * SECTOR as u64
    }

    /// The master key, if `pass` opens slot `i` whose key material is `material` (read from
    /// [`LuksHeader::material_range`]).
    pub fn try_slot(&self, i: usize, material: &[u8], pass: &[u8]) -> Option<Vec<u8>> {
        let slot = &self.slots[i];
        let hash = HashAlg::parse(&self.hash_spec)?;
        let key_len = self.key_bytes as usize;
        if !slot.active || material.len() < key_len * STRIPES as usize {
            return None;
        }
        let mut slot_key = vec![0u8; key_len];
        hash.pbkdf2(pass, &slot.salt, slot.iterations, &mut slot_key);
        let mut m = material.to_vec();
        SectorCipher::new(&self.spec, &slot_key)
            .ok()?
            .decrypt(0, &mut m);
        let mk = hash.af_merge(&m, key_len, STRIPES);
        let mut digest = [0u8; DIGEST_LEN];
        hash.pbkdf2(&mk, &self.mk_salt, self.mk_iters, &mut digest);
        (digest == self.mk_digest).then_some(mk)
    }

    /// The header's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = vec![0u8; HEADER_LEN];
        b[..6].copy_from_slice(MAGIC);
        b[6..8].copy_from_slice(&1u16.to_be_bytes());
        put_text(&mut b[8..40], &self.cipher_name);
        put_text(&mut b[40..72], &self.cipher_mode);
        put_text(&mut b[72..104], &self.hash_spec);
        b[104..108].copy_from_slice(&self.payload_offset.to_be_bytes());
        b[108..112].copy_from_slice(&self.key_bytes.to_be_bytes());
        b[112..132].copy_from_slice(&self.mk_digest);
        b[132..164].copy_from_slice(&self.mk_salt);
        b[164..168].copy_from_slice(&self.mk_iters.to_be_bytes());
        put_text(&mut b[168..208], &self.uuid);
        for (i, s) in self.slots.iter().enumerate() {
            let o = 208 + 48 * i;
            let state = if s.active { SLOT_ACTIVE } else { SLOT_DISABLED };
            b[o..o + 4].copy_from_slice(&state.to_be_bytes());
            b[o + 4..o + 8].copy_from_slice(&s.iterations.to_be_bytes());
            b[o + 8..o + 40].copy_from_slice(&s.salt);
            b[o + 40..o + 44].copy_from_slice(&s.key_offset.to_be_bytes());
            b[o + 44..o + 48].copy_from_slice(&s.stripes.to_be_bytes());
        }
        b
    }

    /// QEMU's `QCryptoBlockInfoLUKS` in its key order; `format` (qcow2's `encrypt` block)
    /// goes where QEMU prints it.
    pub fn info(&self, format: Option<&str>) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("ivgen-alg".into(), json!(self.spec.ivgen.name()));
        m.insert("detached-header".into(), json!(false));
        m.insert("hash-alg".into(), json!(self.hash_spec));
        m.insert("cipher-alg".into(), json!(self.spec.alg.name()));
        m.insert("uuid".into(), json!(self.uuid));
        if let IvGen::Essiv(h) = self.spec.ivgen {
            m.insert("ivgen-hash-alg".into(), json!(h.name()));
        }
        if let Some(f) = format {
            m.insert("format".into(), json!(f));
        }
        m.insert("cipher-mode".into(), json!(self.spec.mode.name()));
        let slots: Vec<Value> = self
            .slots
            .iter()
            .map(|s| {
                let off = s.key_offset as u64 * SECTOR as u64;
                if s.active {
                    json!({"active": true, "iters": s.iterations, "key-offset": off,
                           "stripes": s.stripes})
                } else {
                    json!({"active": false, "key-offset": off})
                }
            })
            .collect();
        m.insert("slots".into(), Value::Array(slots));
        m.insert("payload-offset".into(), json!(self.payload_bytes()));
        m.insert("master-key-iters".into(), json!(self.mk_iters));
        m
    }
}

/// What a new LUKS volume uses.
#[derive(Clone, Debug)]
pub struct NewLuks {
    /// The cipher.
    pub spec: CipherSpec,
    /// The hash for PBKDF2 and the anti-forensic split.
    pub hash: HashAlg,
    /// PBKDF2 rounds for slot 0's passphrase.
    pub slot_iters: u32,
    /// PBKDF2 rounds for the master-key digest.
    pub mk_iters: u32,
}

/// A new volume's header area: the header followed by slot 0's key material, up to the
/// payload (later slots stay unwritten), and the master key to encrypt the payload with.
#[derive(Clone)]
pub struct Built {
    /// Bytes from offset 0 to the end of slot 0's material.
    pub area: Vec<u8>,
    /// The header (for its payload offset).
    pub header: LuksHeader,
    /// The master key.
    pub master_key: Vec<u8>,
}

impl std::fmt::Debug for Built {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the master key.
        f.debug_struct("Built")
            .field("area_len", &self.area.len())
            .field("header", &self.header)
            .finish_non_exhaustive()
    }
}

/// Build a new header with `pass` in slot 0. `random` supplies every random byte (master key,
/// salts, UUID, anti-forensic stripes), so the result is a function of its inputs.
pub fn build(n: &NewLuks, pass: &[u8], random: &mut dyn FnMut(&mut [u8])) -> Built {
    let key_len = n.spec.key_len();
    let mut mk = vec![0u8; key_len];
    random(&mut mk);
    let mut mk_salt = [0u8; SALT_LEN];
    random(&mut mk_salt);
    let mut mk_digest = [0u8; DIGEST_LEN];
    n.hash.pbkdf2(&mk, &mk_salt, n.mk_iters, &mut mk_digest);
    let mut uuid_bytes = [0u8; 16];
    random(&mut uuid_bytes);
    let material_len = (key_len as u64 * STRIPES as u64).next_multiple_of(ALIGN);
    let first = ALIGN / SECTOR as u64;
    let slots: Vec<KeySlot> = (0..SLOTS as u64)
        .map(|i| KeySlot {
            active: false,
            iterations: 0,
            salt: [0; SALT_LEN],
            key_offset: (first + i * material_len / SECTOR as u64) as u32,
            stripes: STRIPES,
        })
        .collect();
    let payload = first + SLOTS as u64 * material_len / SECTOR as u64;
    let mut header = LuksHeader {
        cipher_name: "aes".into(),
        cipher_mode: n.spec.luks_mode(),
        hash_spec: n.hash.name().into(),
        payload_offset: payload as u32,
        key_bytes: key_len as u32,
        mk_digest,
        mk_salt,
        mk_iters: n.mk_iters,
        uuid: uuid_text(uuid_bytes),
        slots,
        spec: n.spec,
    };
    let slot = &mut header.slots[0];
    slot.active = true;
    slot.iterations = n.slot_iters;
    random(&mut slot.salt);
    let mut slot_key = vec![0u8; key_len];
    n.hash
        .pbkdf2(pass, &slot.salt, slot.iterations, &mut slot_key);
    let mut stripes = vec![0u8; key_len * (STRIPES as usize - 1)];
    random(&mut stripes);
    let mut material = n.hash.af_split(&mk, STRIPES, &stripes);
    material.resize(material.len().next_multiple_of(SECTOR), 0);
    SectorCipher::new(&n.spec, &slot_key)
        .expect("key length from the spec")
        .encrypt(0, &mut material);
    let start = header.slots[0].key_offset as usize * SECTOR;
    let mut area = header.to_bytes();
    area.resize(start, 0);
    area.extend_from_slice(&material);
    Built {
        area,
        header,
        master_key: mk,
    }
}

/// A random (version 4) UUID's text.
fn uuid_text(mut b: [u8; 16]) -> String {
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// QEMU's refusal when no slot opens with the passphrase.
pub fn bad_password() -> Error {
    Error::generic("Invalid password, cannot unlock any keyslot")
}

/// The master key of the volume whose header is `h`, trying each active slot with `pass`;
/// `read(offset, len)` reads bytes of the header area (a short file reads as zeroes).
pub async fn unlock<F, Fut>(h: &LuksHeader, pass: &[u8], mut read: F) -> Result<Vec<u8>>
where
    F: FnMut(u64, usize) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<u8>>>,
{
    for i in 0..SLOTS {
        if !h.slots[i].active {
            continue;
        }
        let (off, len) = h.material_range(i);
        let material = read(off, len).await?;
        if let Some(mk) = h.try_slot(i, &material, pass) {
            return Ok(mk);
        }
    }
    Err(bad_password())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter() -> impl FnMut(&mut [u8]) {
        let mut n = 0u8;
        move |b: &mut [u8]| {
            for x in b {
                n = n.wrapping_add(37);
                *x = n;
            }
        }
    }

    #[test]
    fn built_header_parses_and_unlocks_only_with_its_passphrase() {
        let spec = CipherSpec::from_luks("aes", "cbc-essiv:sha256", 32).unwrap();
        let n = NewLuks {
            spec,
            hash: HashAlg::Sha256,
            slot_iters: 10,
            mk_iters: 10,
        };
        let built = build(&n, b"pw", &mut counter());
        let h = LuksHeader::parse(&built.area).unwrap();
        let (off, len) = h.material_range(0);
        let m = &built.area[off as usize..off as usize + len];
        assert_eq!(h.try_slot(0, m, b"pw"), Some(built.master_key.clone()));
        assert_eq!(h.try_slot(0, m, b"pW"), None);
        // 32-byte keys: 128000 bytes of material per slot, 4 KiB aligned = 256 sectors.
        assert_eq!(h.payload_offset, 8 + 8 * 256);
    }
}
