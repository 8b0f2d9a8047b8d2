//! Disk encryption: LUKS1 volumes (the `luks` driver, qcow2's `encrypt.format=luks`) and
//! qcow2's legacy AES-CBC.
//!
//! ```text
//! hash.rs     the hashes LUKS names, PBKDF2, anti-forensic split/merge
//! cipher.rs   AES-XTS/CBC over 512-byte sectors with plain/plain64/essiv IVs
//! luks.rs     the LUKS1 header: parse + check, unlock a slot, build a new one, info
//! create.rs   a new volume's options (QEMU's checks), rounds from iter-time, random bytes
//! ```
//!
//! Pure computation on byte buffers: no I/O, no time and no randomness of its own (`create`
//! takes both from the env seam), so drivers and the fuzz targets reach every parser directly.

pub mod cipher;
pub mod create;
pub mod hash;
pub mod luks;

pub use cipher::{CipherAlg, CipherMode, CipherSpec, IvGen, SECTOR, SectorCipher};
pub use create::LuksCreate;
pub use hash::HashAlg;
pub use luks::{LuksHeader, NewLuks};
