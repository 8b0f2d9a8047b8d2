//! qcow2 encryption (`crypt_method` 1 and 2): opening the key and the hook that the data path
//! calls around every read and write of guest data clusters.
//!
//! LUKS (method 2): a LUKS1 header lives in clusters named by the full-disk-encryption header
//! extension; data sectors are numbered by their *host* offset / 512, as QEMU numbers them.
//! Legacy AES (method 1): AES-128-CBC keyed with the passphrase's first 16 bytes (zero
//! padded), plain64 IVs numbered by *guest* offset / 512. The ciphers are `crate::crypto`'s.
//! Opened with `x-no-io` (qemu-img info) there is no key: the header is shown, I/O refused.

use serde_json::{Value, json};

use super::Qcow2;
use super::header::{CRYPT_AES, CRYPT_LUKS, CRYPT_NONE, Header};
use crate::crypto::luks::{self, HEADER_LEN, LuksHeader};
use crate::crypto::{CipherAlg, CipherMode, CipherSpec, IvGen, SECTOR, SectorCipher};
use crate::error::{Errno, Error, Result};
use crate::graph::{Child, OpenCtx};
use crate::io::{IoBuf, ReqFlags};
use crate::util::Options;

/// The image's encryption, once open.
pub(super) struct Encryption {
    /// `None` with `x-no-io`.
    cipher: Option<SectorCipher>,
    /// IVs from host offsets (LUKS) rather than guest offsets (legacy AES).
    by_host: bool,
    /// The LUKS header's (offset, length) in the file: clusters the image owns.
    area: Option<(u64, u64)>,
    /// The `encrypt` block of `info`.
    info: Value,
}

/// The `encrypt.*` open options.
pub(super) struct EncryptOpts {
    key_secret: Option<String>,
    format: Option<String>,
}

impl EncryptOpts {
    /// Take `encrypt` (a dict: `key-secret`, `format`) from `opts`.
    pub(super) fn take(opts: &mut Options) -> Result<EncryptOpts> {
        let Some(mut d) = opts.take_dict("encrypt")? else {
            return Ok(EncryptOpts {
                key_secret: None,
                format: None,
            });
        };
        let key_secret = d.take_str("key-secret")?;
        let format = d.take_str("format")?;
        d.finish()?;
        Ok(EncryptOpts { key_secret, format })
    }
}

fn method_name(m: u32) -> &'static str {
    if m == CRYPT_AES { "aes" } else { "luks" }
}

async fn read_at(file: &Child, offset: u64, len: usize) -> Result<Vec<u8>> {
    let (buf, r) = file.read(offset, IoBuf::new(len), ReqFlags::NONE).await;
    r.map(|()| buf.as_slice().to_vec())
}

/// Open the encryption of the image whose header is `h`; `None` for a clear image.
pub(super) async fn open(
    ctx: &OpenCtx,
    file: &Child,
    h: &Header,
    o: EncryptOpts,
    no_io: bool,
) -> Result<Option<Encryption>> {
    if h.crypt_method == CRYPT_NONE {
        return Ok(None);
    }
    let name = method_name(h.crypt_method);
    if let Some(f) = o.format.as_deref()
        && f != name
    {
        return Err(Error::generic(format!(
            "Header reported '{name}' encryption format but options specify '{f}'"
        )));
    }
    let pass = match (&o.key_secret, no_io) {
        (_, true) => None,
        (Some(id), false) => Some(ctx.graph().objects.secret(id)?),
        (None, false) => {
            return Err(Error::generic(
                "Parameter 'encrypt.key-secret' is required for cipher",
            ));
        }
    };
    if h.crypt_method != CRYPT_LUKS {
        return Ok(Some(legacy_aes(pass.as_deref())));
    }
    let Some((base, len)) = h.crypto_area else {
        return Err(Error::generic(
            "Could not read encryption header: no full disk encryption header extension",
        ));
    };
    if len < HEADER_LEN as u64 || base.checked_add(len).is_none_or(|e| e > file.len()) {
        return Err(Error::generic(format!(
            "Invalid encryption header offset {base:#x} or length {len:#x}"
        )));
    }
    let header = LuksHeader::parse(&read_at(file, base, HEADER_LEN).await?)?;
    let cipher = match pass {
        None => None,
        Some(p) => {
            let read = |off: u64, n: usize| async move {
                if off + n as u64 > len {
                    return Err(luks::bad_password());
                }
                read_at(file, base + off, n).await
            };
            let mk = luks::unlock(&header, &p, read).await?;
            Some(SectorCipher::new(&header.spec, &mk)?)
        }
    };
    let info = Value::Object(header.info(Some("luks")));
    Ok(Some(Encryption {
        cipher,
        by_host: true,
        area: Some((base, len)),
        info,
    }))
}

/// Legacy AES: the passphrase (at most 16 bytes of it) is the AES-128 key.
fn legacy_aes(pass: Option<&[u8]>) -> Encryption {
    let spec = CipherSpec {
        alg: CipherAlg::Aes128,
        mode: CipherMode::Cbc,
        ivgen: IvGen::Plain64,
    };
    let cipher = pass.map(|p| {
        let mut key = [0u8; 16];
        let n = p.len().min(16);
        key[..n].copy_from_slice(&p[..n]);
        SectorCipher::new(&spec, &key).expect("16-byte key for AES-128")
    });
    Encryption {
        cipher,
        by_host: false,
        area: None,
        info: json!({"format": "aes"}),
    }
}

impl Encryption {
    /// The `encrypt` block of `info`.
    pub(super) fn info(&self) -> &Value {
        &self.info
    }

    fn cipher(&self) -> Result<&SectorCipher> {
        self.cipher
            .as_ref()
            .ok_or_else(|| Error::io_msg(Errno::EIO, "The image was opened without its key"))
    }

    fn sector(&self, host: u64, guest: u64) -> u64 {
        (if self.by_host { host } else { guest }) / SECTOR as u64
    }
}

impl Qcow2 {
    /// Turn `data`, read from data cluster bytes at host offset `host` for guest offset
    /// `guest`, into plaintext (nothing to do on a clear image).
    pub(super) fn decrypt_data(&self, host: u64, guest: u64, data: &mut [u8]) -> Result<()> {
        if let Some(e) = &self.crypto {
            e.cipher()?.decrypt(e.sector(host, guest), data);
        }
        Ok(())
    }

    /// What to write at host offset `host` for guest bytes `data` at `guest`: a copy,
    /// encrypted (the data itself on a clear image).
    pub(super) fn encrypt_data(&self, host: u64, guest: u64, data: IoBuf) -> Result<IoBuf> {
        let Some(e) = &self.crypto else {
            return Ok(data);
        };
        let mut out = IoBuf::with_align(data.len(), data.align());
        out.as_mut_slice().copy_from_slice(data.as_slice());
        e.cipher()?
            .encrypt(e.sector(host, guest), out.as_mut_slice());
        Ok(out)
    }

    /// The image is encrypted (the data path then writes whole sectors and never zeroes
    /// clusters in the file as a shortcut: zeroes on disk are not zeroes in the clear).
    pub(super) fn encrypted(&self) -> bool {
        self.crypto.is_some()
    }

    /// Where the LUKS header lies in the file (its clusters are referenced by the header).
    pub(super) fn crypto_area(&self) -> Option<(u64, u64)> {
        self.crypto.as_ref().and_then(|e| e.area)
    }
}
