//! qcow2 compressed clusters: raw deflate (RFC 1951, no zlib header) decompression of one
//! cluster with a bounded output. Must not import `job`, `qmp`, `engine`, `backend` or other
//! drivers.

use miniz_oxide::inflate::{TINFLStatus, decompress_to_vec_with_limit};

use crate::error::{Errno, Error, Result};

/// Inflate `data` into exactly `cluster_size` bytes (a short stream is zero-padded, a longer
/// one is cut, as QEMU does); a broken stream is an I/O error.
pub fn inflate_cluster(data: &[u8], cluster_size: usize) -> Result<Vec<u8>> {
    let mut out = match decompress_to_vec_with_limit(data, cluster_size) {
        Ok(v) => v,
        Err(e) if e.status == TINFLStatus::HasMoreOutput => e.output,
        Err(e) => {
            return Err(Error::io_msg(
                Errno::EIO,
                format!("qcow2: cannot decompress cluster: {:?}", e.status),
            ));
        }
    };
    out.resize(cluster_size, 0);
    Ok(out)
}
