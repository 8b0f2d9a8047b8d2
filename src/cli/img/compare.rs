//! `blk compare [-f fmt] [-F fmt] [-s] [-q] [-U] FILE1 FILE2`: qemu-img compare.
//!
//! Exit status 0 when the guest-visible contents are identical, 1 when they differ ("Content
//! mismatch at offset N!", N the first differing 512-byte sector), 2 on errors. Images of
//! different sizes compare their common part, and the longer one's tail must read as zeroes,
//! unless `-s` makes any size difference a mismatch. Ranges both images report as zero through
//! their backing chains are skipped without reading.

use engine::io::{IoBuf, Mapping};
use engine::request::ChainStatus;

use super::open::{Image, Tool};
use super::split_or_fail;

const USAGE: &str = "\
Usage: blk compare [-f fmt] [-F fmt] [-s] [-q] [-U] filename1 filename2
Check whether two images have the same guest-visible content, as qemu-img compare does.";

/// Largest read while comparing.
const CHUNK: u64 = 1 << 20;

fn reads_zero(st: &ChainStatus) -> bool {
    st.node.is_none() || matches!(st.mapping, Mapping::Zero { .. })
}

async fn read(img: &Image, offset: u64, len: u64) -> Result<IoBuf, String> {
    let (buf, r) = img.bb.read(offset, IoBuf::new(len as usize)).await;
    r.map_err(|e| format!("Error while reading offset {offset} of {}: {e}", img.path))?;
    Ok(buf)
}

async fn status(img: &Image, pos: u64, len: u64) -> Result<ChainStatus, String> {
    img.root()
        .chain_status(pos, len, None)
        .await
        .map_err(|e| format!("error while reading image metadata of {}: {e}", img.path))
}

/// The first differing sector of `[0, end)`, or None.
async fn compare_common(a: &Image, b: &Image, end: u64) -> Result<Option<u64>, String> {
    let mut pos = 0;
    while pos < end {
        let sa = status(a, pos, end - pos).await?;
        let sb = status(b, pos, end - pos).await?;
        let n = sa.len.min(sb.len).min(end - pos).max(1);
        if reads_zero(&sa) && reads_zero(&sb) {
            pos += n;
            continue;
        }
        let n = n.min(CHUNK);
        let (ba, bb) = (read(a, pos, n).await?, read(b, pos, n).await?);
        if let Some(i) = ba
            .as_slice()
            .iter()
            .zip(bb.as_slice())
            .position(|(x, y)| x != y)
        {
            return Ok(Some((pos + i as u64) / 512 * 512));
        }
        pos += n;
    }
    Ok(None)
}

/// The first non-zero sector of `[start, end)` of `img`, or None.
async fn check_zero(img: &Image, start: u64, end: u64) -> Result<Option<u64>, String> {
    let mut pos = start;
    while pos < end {
        let st = status(img, pos, end - pos).await?;
        let n = st.len.min(end - pos).max(1);
        if reads_zero(&st) {
            pos += n;
            continue;
        }
        let n = n.min(CHUNK);
        let buf = read(img, pos, n).await?;
        if let Some(i) = buf.as_slice().iter().position(|&x| x != 0) {
            return Ok(Some((pos + i as u64) / 512 * 512));
        }
        pos += n;
    }
    Ok(None)
}

/// Entry point of `blk compare`.
pub fn run(args: &[String]) -> i32 {
    let long = [("help", 'h', false), ("force-share", 'U', false)];
    let (opts, operands) = match split_or_fail("compare", args, "f:F:sqhU", &long, USAGE) {
        Ok(v) => v,
        Err(0) => return 0,
        Err(_) => return 2,
    };
    let (mut f1, mut f2, mut strict, mut quiet, mut share) = (None, None, false, false, false);
    for (c, v) in opts {
        match c {
            'f' => f1 = Some(v),
            'F' => f2 = Some(v),
            's' => strict = true,
            'q' => quiet = true,
            'U' => share = true,
            _ => unreachable!("option {c} is in the option string"),
        }
    }
    let [p1, p2] = operands.as_slice() else {
        return crate::cli::prog::usage_error("compare", "Expecting two image file names");
    };
    // -f alone names both formats, as in qemu-img.
    let f2 = f2.or(f1.clone());
    let tool = Tool::new();
    let result: Result<(i32, Vec<String>), String> = tool.block_on(async {
        let a = tool.open(p1, f1.as_deref(), true, share).await?;
        let b = tool.open(p2, f2.as_deref(), true, share).await?;
        let (la, lb) = (a.len(), b.len());
        let mut msgs = Vec::new();
        if la != lb {
            if strict {
                return Ok((1, vec!["Strict mode: Image size mismatch!".to_string()]));
            }
            msgs.push("Warning: Image size mismatch!".to_string());
        }
        let common = la.min(lb);
        let mut diff = compare_common(&a, &b, common).await?;
        if diff.is_none() && la != lb {
            let longer = if la > lb { &a } else { &b };
            diff = check_zero(longer, common, la.max(lb)).await?;
        }
        Ok(match diff {
            Some(off) => {
                msgs.push(format!("Content mismatch at offset {off}!"));
                (1, msgs)
            }
            None => {
                msgs.push("Images are identical.".to_string());
                (0, msgs)
            }
        })
    });
    let _ = tool.finish();
    match result {
        Ok((code, msgs)) => {
            if !quiet {
                for m in msgs {
                    println!("{m}");
                }
            }
            code
        }
        Err(e) => {
            crate::cli::prog::error(e);
            2
        }
    }
}
