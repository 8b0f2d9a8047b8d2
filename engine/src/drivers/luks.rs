//! `luks`: a LUKS1 volume (`qemu-img create -f luks`). The header and key slots fill the start
//! of the `file` child; the guest's bytes follow at the payload offset, encrypted sector by
//! sector (IVs numbered from the payload's start). The passphrase is the secret named by
//! `key-secret`; the header format and the ciphers live in `crate::crypto`.
//!
//! `x-no-io` (what `qemu-img info` opens with, QEMU's BDRV_O_NO_IO) opens the header alone,
//! without a key: the node then has a size and info but refuses I/O.

use std::rc::Rc;

use serde_json::json;

use crate::crypto::luks::{self, HEADER_LEN, LuksHeader};
use crate::crypto::{SECTOR, SectorCipher};
use crate::driver::{BlockDriver, DriverCaps, DriverKind, Prealloc};
use crate::env::LocalBoxFuture;
use crate::error::{Errno, Error, Result};
use crate::graph::{Child, OpenCtx};
use crate::io::{BlockStatus, BufResult, IoBuf, Limits, Mapping, ReqFlags};
use crate::types::ChildRole;
use crate::util::Options;

const CAPS: DriverCaps = DriverCaps {
    name: "luks",
    kind: DriverKind::Format,
    supports_backing: false,
    write_flags: ReqFlags::FUA,
    zero_flags: ReqFlags::NONE,
    reopen: true,
};

struct Luks {
    file: Child,
    header: LuksHeader,
    /// `None` when opened with `x-no-io`.
    cipher: Option<Rc<SectorCipher>>,
}

/// Read `len` bytes at `offset` of `file` (past its end: zeroes).
pub(crate) async fn read_bytes(file: &Child, offset: u64, len: usize) -> Result<Vec<u8>> {
    let (buf, r) = file.read(offset, IoBuf::new(len), ReqFlags::NONE).await;
    r.map(|()| buf.as_slice().to_vec())
}

/// The passphrase in the secret `key_secret` names; `param` is the option's name as the user
/// spelled it, for QEMU's message when it is missing.
pub(crate) fn passphrase(ctx: &OpenCtx, key_secret: Option<&str>, param: &str) -> Result<Vec<u8>> {
    match key_secret {
        Some(id) => ctx.graph().objects.secret(id),
        None => Err(Error::generic(format!(
            "Parameter '{param}' is required for cipher"
        ))),
    }
}

pub(super) fn open(
    ctx: OpenCtx,
    mut opts: Options,
) -> LocalBoxFuture<'static, Result<Box<dyn BlockDriver>>> {
    Box::pin(async move {
        let key_secret = opts.take_str("key-secret")?;
        let no_io = opts.take_bool("x-no-io")?.unwrap_or(false);
        let file_spec = opts
            .take("file")
            .ok_or_else(|| Error::param_missing("file"))?;
        opts.finish()?;
        let role = ChildRole::DATA | ChildRole::METADATA | ChildRole::PRIMARY;
        let file = ctx.open_child("file", role, file_spec).await?;
        let header = LuksHeader::parse(&read_bytes(&file, 0, HEADER_LEN).await?)?;
        let cipher = if no_io {
            None
        } else {
            let pass = passphrase(&ctx, key_secret.as_deref(), "key-secret")?;
            let mk = luks::unlock(&header, &pass, |o, l| read_bytes(&file, o, l)).await?;
            Some(Rc::new(SectorCipher::new(&header.spec, &mk)?))
        };
        if file.len() < header.payload_bytes() {
            return Err(Error::generic(
                "Could not refresh total sector count: Input/output error",
            ));
        }
        Ok(Box::new(Luks {
            file,
            header,
            cipher,
        }) as Box<dyn BlockDriver>)
    })
}

impl Luks {
    fn cipher(&self) -> Result<&SectorCipher> {
        self.cipher
            .as_deref()
            .ok_or_else(|| Error::io_msg(Errno::EIO, "The LUKS volume was opened without a key"))
    }
}

impl BlockDriver for Luks {
    fn caps(&self) -> &DriverCaps {
        &CAPS
    }

    fn reopen_prepare(&self, _read_only: bool) -> LocalBoxFuture<'_, Result<()>> {
        Box::pin(async { Ok(()) })
    }

    fn limits(&self) -> Limits {
        Limits {
            request_align: SECTOR as u32,
            ..self.file.node().limits()
        }
    }

    fn len(&self) -> u64 {
        let bytes = self.file.len().saturating_sub(self.header.payload_bytes());
        bytes / SECTOR as u64 * SECTOR as u64
    }

    fn read(&self, offset: u64, buf: IoBuf, flags: ReqFlags) -> LocalBoxFuture<'_, BufResult> {
        Box::pin(async move {
            let cipher = match self.cipher() {
                Ok(c) => c,
                Err(e) => return (buf, Err(e)),
            };
            let at = self.header.payload_bytes() + offset;
            let (mut buf, r) = self.file.read(at, buf, flags).await;
            if r.is_ok() {
                cipher.decrypt(offset / SECTOR as u64, buf.as_mut_slice());
            }
            (buf, r)
        })
    }

    fn write(&self, offset: u64, buf: IoBuf, flags: ReqFlags) -> LocalBoxFuture<'_, BufResult> {
        Box::pin(async move {
            let cipher = match self.cipher() {
                Ok(c) => c,
                Err(e) => return (buf, Err(e)),
            };
            // Encrypt a copy: the caller's buffer must come back as it was given.
            let mut enc = IoBuf::with_align(buf.len(), buf.align());
            enc.as_mut_slice().copy_from_slice(buf.as_slice());
            cipher.encrypt(offset / SECTOR as u64, enc.as_mut_slice());
            let at = self.header.payload_bytes() + offset;
            let (_, r) = self.file.write(at, enc, flags).await;
            (buf, r)
        })
    }

    fn write_zeroes(
        &self,
        _offset: u64,
        _len: u64,
        _flags: ReqFlags,
    ) -> LocalBoxFuture<'_, Result<()>> {
        // Zeroes must be encrypted like any data: the generic path writes zero buffers.
        Box::pin(async { Err(Error::io(Errno::ENOTSUP)) })
    }

    fn discard(&self, _offset: u64, _len: u64) -> LocalBoxFuture<'_, Result<()>> {
        Box::pin(async { Err(Error::io(Errno::ENOTSUP)) })
    }

    fn flush(&self) -> LocalBoxFuture<'_, Result<()>> {
        Box::pin(async { Ok(()) })
    }

    fn block_status(&self, _offset: u64, len: u64) -> LocalBoxFuture<'_, Result<BlockStatus>> {
        // Every byte is ciphertext, data with no mapping a reader could use (as QEMU says).
        Box::pin(async move {
            Ok(BlockStatus {
                len,
                mapping: Mapping::Data { host: None },
            })
        })
    }

    fn truncate(
        &self,
        len: u64,
        exact: bool,
        prealloc: Prealloc,
    ) -> LocalBoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let total = self.header.payload_bytes() + len;
            self.file.truncate(total, exact, prealloc).await
        })
    }

    fn filename(&self) -> String {
        self.file.filename()
    }

    fn specific_info(&self) -> serde_json::Value {
        json!({"type": "luks", "data": self.header.info(None)})
    }
}

/// Write a new LUKS volume of `size` guest bytes into `file` (`qemu-img create -f luks`):
/// the header and slot 0's key material, then the file sized to the payload's end.
pub async fn create(file: &Child, built: &luks::Built, size: u64) -> Result<()> {
    let (_, r) = file
        .write(0, IoBuf::from_slice(&built.area), ReqFlags::NONE)
        .await;
    r?;
    let end = built.header.payload_bytes() + size.next_multiple_of(SECTOR as u64);
    file.truncate(end, true, Prealloc::Off).await
}
