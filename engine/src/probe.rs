//! Format probing: which image format the first bytes of a file are, as QEMU guesses it when no
//! format is given. The one place that knows the formats' signatures; everything that opens an
//! image without a format (the image tools, qemu-io, a qcow2 backing file without backing_fmt,
//! drive-mirror's target) asks here, through the Env's host files so the simulator probes too.
//!
//! Also the guard QEMU puts on an image probed as raw: a write that would make block 0 look like
//! another format is refused, since the next probe would then trust guest-written metadata (the
//! classic way a guest escapes into the host's files through a backing reference).
//!
//! Imports only `env`, `io` and `error`.

use crate::env::{Env, OpenOptions};
use crate::error::Result;
use crate::io::IoBuf;

/// How many leading bytes a probe looks at (QEMU's probe buffer).
pub const PROBE_BYTES: usize = 512;

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The format whose signature `head` (the first bytes of a file) carries, or `None` when it
/// carries none (raw). Formats blk cannot open are named too, so that opening such a file
/// fails naming its format instead of exposing its metadata as raw data.
pub fn format_of(head: &[u8]) -> Option<&'static str> {
    let starts = |sig: &[u8]| head.starts_with(sig);
    if starts(b"QFI\xfb") {
        return match be32(head, 4) {
            Some(1) => Some("qcow"),
            Some(v) if v >= 2 => Some("qcow2"),
            _ => None,
        };
    }
    if starts(b"QED\0") {
        return Some("qed");
    }
    if starts(b"KDMV") || starts(b"COWD") || starts(b"# Disk DescriptorFile") {
        return Some("vmdk");
    }
    if starts(b"vhdxfile") {
        return Some("vhdx");
    }
    if starts(b"conectix") {
        return Some("vpc");
    }
    // QEMU's LUKS probe also wants version 1: other versions probe as raw.
    if starts(b"LUKS\xba\xbe\x00\x01") {
        return Some("luks");
    }
    if starts(b"WithoutFreeSpace") || starts(b"WithouFreSpacExt") {
        return Some("parallels");
    }
    if starts(b"Bochs Virtual HD Image") {
        return Some("bochs");
    }
    if le32(head, 0x40) == Some(0xbeda_107f) {
        return Some("vdi");
    }
    None
}

/// What QEMU prints when an image opened for writing had its format probed as raw.
pub fn raw_warning(name: &str) -> String {
    format!(
        "WARNING: Image format was not specified for '{name}' and probing guessed raw.\n\
         \x20        Automatically detecting the format is dangerous for raw images, write \
         operations on block 0 will be restricted.\n\
         \x20        Specify the 'raw' format explicitly to remove the restrictions."
    )
}

/// The probed format of the file at `path` (`"raw"` when no signature matches). An empty or
/// short file is raw. Errors are the host's open/read errors.
pub async fn probe_file(env: &dyn Env, path: &str) -> Result<&'static str> {
    let file = env.fs().open(path, OpenOptions::default())?;
    let (buf, r) = file.read_at(IoBuf::new(PROBE_BYTES), 0).await;
    r?;
    Ok(format_of(buf.as_slice()).unwrap_or("raw"))
}

/// [`probe_file`] for an image a user or an image header named: the format's name, or QEMU's
/// "Could not open WHAT'PATH': ..." when the file cannot be read (`what` is "" for an image,
/// "backing file " for a backing file).
pub async fn probe_format(env: &dyn Env, path: &str, what: &str) -> Result<String> {
    probe_file(env, path)
        .await
        .map(str::to_string)
        .map_err(|e| e.context(format!("Could not open {what}'{path}'")))
}

/// True when writing `data` at `offset` of an image probed as raw must be refused: the write
/// covers block 0 and the block would then carry another format's signature. (The raw driver
/// makes probed images 512-byte aligned, so a write reaching block 0 covers all of it.)
pub fn write_would_change_format(offset: u64, data: &[u8]) -> bool {
    offset == 0 && data.len() >= PROBE_BYTES && format_of(&data[..PROBE_BYTES]).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures() {
        let mut q = vec![0u8; 512];
        q[..4].copy_from_slice(b"QFI\xfb");
        assert_eq!(
            format_of(&q),
            None,
            "qcow2 magic with version 0 is not qcow2"
        );
        q[7] = 3;
        assert_eq!(format_of(&q), Some("qcow2"));
        q[7] = 1;
        assert_eq!(format_of(&q), Some("qcow"));
        assert_eq!(format_of(b"KDMV...."), Some("vmdk"));
        assert_eq!(format_of(&[0u8; 512]), None);
        assert_eq!(format_of(b""), None);
    }
}
