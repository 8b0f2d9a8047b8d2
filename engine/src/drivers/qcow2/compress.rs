//! qcow2 compressed clusters: compression and decompression of one cluster, raw deflate
//! (RFC 1951, no zlib header; compression type 0) or zstd frames (RFC 8878; compression type
//! 1), with the output bounded at one cluster.
//!
//! The compressed bytes come from the image, so they are untrusted: a stream that is broken,
//! ends before the cluster is complete, or would produce more than a cluster is an I/O error
//! (QEMU's EIO), never a panic or an allocation beyond a few clusters. The bytes after the
//! stream (the rest of the last 512-byte sector) are ignored, as QEMU does.
//!
//! Must not import `job`, `qmp`, `engine`, `backend` or other drivers.

use miniz_oxide::deflate::compress_to_vec;
use miniz_oxide::inflate::{TINFLStatus, decompress_to_vec_with_limit};
use ruzstd::decoding::errors::{FrameDecoderError, ReadFrameHeaderError};
use ruzstd::decoding::{BlockDecodingStrategy, FrameDecoder};

use crate::error::{Errno, Error, Result};

/// Header field value: deflate.
pub const TYPE_DEFLATE: u8 = 0;
/// Header field value: zstd.
pub const TYPE_ZSTD: u8 = 1;

/// Decompress the cluster in `data` (compression type `ty`) into exactly `cluster_size` bytes.
pub fn decompress_cluster(ty: u8, data: &[u8], cluster_size: usize) -> Result<Vec<u8>> {
    match ty {
        TYPE_DEFLATE => inflate_cluster(data, cluster_size),
        TYPE_ZSTD => zstd_cluster(data, cluster_size),
        t => Err(Error::io_msg(
            Errno::ENOTSUP,
            format!("qcow2: unknown compression type {t}"),
        )),
    }
}

/// Compress one cluster's bytes with compression type `ty`; `None` when the result would not
/// be shorter than `limit` bytes (the cluster is then written uncompressed, as QEMU does).
/// deflate at zlib's default level 6; zstd at its fastest level, one frame per cluster.
pub fn compress_cluster(ty: u8, data: &[u8], limit: usize) -> Result<Option<Vec<u8>>> {
    let out = match ty {
        TYPE_DEFLATE => compress_to_vec(data, 6),
        TYPE_ZSTD => {
            ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest)
        }
        t => {
            return Err(Error::io_msg(
                Errno::ENOTSUP,
                format!("qcow2: unknown compression type {t}"),
            ));
        }
    };
    Ok((out.len() <= limit).then_some(out))
}

fn broken(what: &str, detail: impl std::fmt::Display) -> Error {
    Error::io_msg(
        Errno::EIO,
        format!("qcow2: cannot decompress cluster ({what}): {detail}"),
    )
}

/// Inflate `data` into exactly `cluster_size` bytes. Output beyond the cluster is cut (the
/// limit stops the decoder there); a stream that ends early is an error, as in QEMU: the
/// cluster's tail would otherwise be made up.
pub fn inflate_cluster(data: &[u8], cluster_size: usize) -> Result<Vec<u8>> {
    let out = match decompress_to_vec_with_limit(data, cluster_size) {
        Ok(v) => v,
        Err(e) if e.status == TINFLStatus::HasMoreOutput => e.output,
        Err(e) => return Err(broken("deflate", format!("{:?}", e.status))),
    };
    if out.len() != cluster_size {
        return Err(broken(
            "deflate",
            format!("stream ends after {} of {cluster_size} bytes", out.len()),
        ));
    }
    Ok(out)
}

/// Largest zstd window accepted for a cluster of `cs` bytes. QEMU's frames have a window of
/// at most the cluster size (1 KiB, the format's minimum, for 512-byte clusters); some slack
/// keeps other writers' frames readable while the decoder's buffer stays a few clusters.
fn max_zstd_window(cs: usize) -> u64 {
    (2 * cs as u64).max(256 << 10)
}

/// Decode zstd frames from `data` until exactly `cluster_size` bytes are out. QEMU may write
/// one frame per cluster; several frames (and skippable frames) are accepted as libzstd's
/// streaming decoder does. The decoder's own buffer holds at most the window plus one block
/// (128 KiB), and decoding stops as soon as the output passes the cluster.
pub fn zstd_cluster(data: &[u8], cluster_size: usize) -> Result<Vec<u8>> {
    let mut out: Vec<u8> = Vec::with_capacity(cluster_size);
    let mut src = data;
    let mut dec = FrameDecoder::new();
    dec.set_max_window_size(max_zstd_window(cluster_size));
    while out.len() < cluster_size {
        if src.is_empty() {
            return Err(broken(
                "zstd",
                format!("stream ends after {} of {cluster_size} bytes", out.len()),
            ));
        }
        match dec.reset(&mut src) {
            Ok(()) => {}
            Err(FrameDecoderError::ReadFrameHeaderError(ReadFrameHeaderError::SkipFrame {
                length,
                ..
            })) => {
                src = src
                    .get(length as usize..)
                    .ok_or_else(|| broken("zstd", "skippable frame runs past the data"))?;
                continue;
            }
            Err(e) => return Err(broken("zstd", e)),
        }
        let fcs = dec.content_size();
        if fcs > (cluster_size - out.len()) as u64 {
            return Err(broken(
                "zstd",
                format!("frame declares {fcs} bytes, more than a cluster ({cluster_size})"),
            ));
        }
        loop {
            let done = dec
                .decode_blocks(&mut src, BlockDecodingStrategy::UptoBlocks(1))
                .map_err(|e| broken("zstd", e))?;
            if out.len() + dec.can_collect() > cluster_size {
                return Err(broken(
                    "zstd",
                    format!("stream decompresses to more than a cluster ({cluster_size} bytes)"),
                ));
            }
            dec.collect_to_writer(&mut out)
                .map_err(|e| broken("zstd", e))?;
            if done {
                break;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha8Rng;
    use rand_core::{RngCore, SeedableRng};

    const MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

    /// Block header: `last`, type (0 raw, 1 RLE), size.
    fn block(last: bool, ty: u32, size: u32) -> [u8; 3] {
        let v = last as u32 | (ty << 1) | (size << 3);
        [v as u8, (v >> 8) as u8, (v >> 16) as u8]
    }

    /// A single-segment frame with a 4-byte content size and the given blocks.
    fn frame(content: u32, blocks: &[(bool, u32, u32, &[u8])]) -> Vec<u8> {
        let mut f = MAGIC.to_vec();
        f.push(0b1010_0000); // FCS 4 bytes, single segment
        f.extend_from_slice(&content.to_le_bytes());
        for &(last, ty, size, body) in blocks {
            f.extend_from_slice(&block(last, ty, size));
            f.extend_from_slice(body);
        }
        f
    }

    #[test]
    fn zstd_frames_fill_exactly_one_cluster() {
        let cs = 4096;
        // RLE block of 0xab, one frame.
        let f = frame(4096, &[(true, 1, 4096, &[0xab])]);
        let mut data = f.clone();
        data.extend_from_slice(&[0u8; 100]); // sector padding is ignored
        assert_eq!(zstd_cluster(&data, cs).unwrap(), vec![0xab; cs]);
        // Two frames (raw then RLE), with a skippable frame between them.
        let mut two = frame(3, &[(true, 0, 3, b"xyz")]);
        two.extend_from_slice(&[0x50, 0x2a, 0x4d, 0x18, 2, 0, 0, 0, 9, 9]);
        two.extend(frame(4093, &[(false, 1, 93, &[1]), (true, 1, 4000, &[2])]));
        let out = zstd_cluster(&two, cs).unwrap();
        assert_eq!(&out[..3], b"xyz");
        assert!(out[3..96].iter().all(|&b| b == 1));
        assert!(out[96..].iter().all(|&b| b == 2));
        // decompress_cluster dispatches on the type.
        assert_eq!(
            decompress_cluster(TYPE_ZSTD, &f, cs).unwrap(),
            vec![0xab; cs]
        );
        let e = decompress_cluster(7, &f, cs).unwrap_err();
        assert!(e.message().contains("unknown compression type 7"), "{e}");
    }

    fn zstd_err(data: &[u8], cs: usize) -> String {
        let e = zstd_cluster(data, cs).unwrap_err();
        assert_eq!(e.errno(), Some(Errno::EIO), "{e}");
        e.message().to_string()
    }

    #[test]
    fn malformed_zstd_streams_are_io_errors() {
        let cs = 4096;
        // Not zstd at all.
        let m = zstd_err(&[0x78, 0x9c, 1, 2, 3, 4, 5, 6, 7, 8], cs);
        assert!(m.contains("cannot decompress cluster (zstd)"), "{m}");
        // Empty, and a stream that ends before the cluster is complete.
        assert!(zstd_err(&[], cs).contains("stream ends after 0 of 4096"));
        let short = frame(100, &[(true, 1, 100, &[5])]);
        assert!(zstd_err(&short, cs).contains("stream ends after 100 of 4096"));
        // Truncated in the middle of a block.
        let cut = frame(4096, &[(true, 0, 4096, &[7u8; 10])]);
        zstd_err(&cut, cs);
        // A frame that declares more than a cluster.
        let big = frame(8192, &[(true, 1, 8192, &[1])]);
        assert!(zstd_err(&big, cs).contains("frame declares 8192 bytes"));
        // A frame without a content size whose blocks produce more than a cluster: stopped
        // after a bounded amount of work, not after all 1000 blocks.
        let mut f = MAGIC.to_vec();
        f.extend_from_slice(&[0b0000_0000, 0x38]); // window descriptor: 2^(10+7) = 128 KiB
        for i in 0..1000 {
            f.extend_from_slice(&block(i == 999, 1, 65536));
            f.push(3);
        }
        assert!(zstd_err(&f, cs).contains("more than a cluster"));
        // A window far beyond a cluster (2^40 bytes) is refused before anything is allocated.
        let mut w = MAGIC.to_vec();
        w.extend_from_slice(&[0, 30 << 3]);
        w.extend_from_slice(&block(true, 1, 16));
        w.push(0);
        zstd_err(&w, cs);
        // A skippable frame whose length runs past the data.
        let s = [0x50, 0x2a, 0x4d, 0x18, 0xff, 0, 0, 0, 1];
        assert!(zstd_err(&s, cs).contains("skippable frame"));
    }

    /// Random damage to valid streams never panics: each decode is data or an EIO error.
    #[test]
    fn damaged_streams_never_panic() {
        let cs = 2048;
        let mut good = frame(2048, &[(false, 0, 1000, &[0x42; 1000])]);
        good.extend_from_slice(&block(true, 1, 1048));
        good.push(9);
        assert_eq!(zstd_cluster(&good, cs).unwrap().len(), cs);
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        for round in 0..2000 {
            let mut d = good.clone();
            for _ in 0..1 + rng.next_u32() % 4 {
                let i = rng.next_u32() as usize % d.len();
                d[i] = rng.next_u32() as u8;
            }
            if round % 3 == 0 {
                d.truncate(rng.next_u32() as usize % d.len());
            }
            match zstd_cluster(&d, cs) {
                Ok(v) => assert_eq!(v.len(), cs, "seed 4 round {round}"),
                Err(e) => assert_eq!(e.errno(), Some(Errno::EIO), "seed 4 round {round}: {e}"),
            }
        }
    }

    #[test]
    fn deflate_must_fill_the_cluster() {
        use miniz_oxide::deflate::compress_to_vec;
        let cs = 4096;
        let full = compress_to_vec(&[0x5a; 4096], 6);
        assert_eq!(inflate_cluster(&full, cs).unwrap(), vec![0x5a; cs]);
        // More than a cluster is cut at the cluster, as QEMU does.
        let long = compress_to_vec(&[0x5a; 9000], 6);
        assert_eq!(inflate_cluster(&long, cs).unwrap(), vec![0x5a; cs]);
        let short = compress_to_vec(&[0x5a; 100], 6);
        let e = inflate_cluster(&short, cs).unwrap_err();
        assert!(e.message().contains("stream ends after 100 of 4096"), "{e}");
        let e = inflate_cluster(&[0xff, 0xff, 0xff], cs).unwrap_err();
        assert_eq!(e.errno(), Some(Errno::EIO));
    }
}
