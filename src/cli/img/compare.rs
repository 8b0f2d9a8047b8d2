//! `blk compare [-f fmt] [-F fmt] [-T src_cache] [-p] [-s] [-q] [-U] FILE1 FILE2`: qemu-img
//! compare.
//!
//! Exit status 0 when the guest-visible contents are identical, 1 when they differ ("Content
//! mismatch at offset N!", N the first differing 512-byte sector), 2 on errors. Images of different
//! sizes compare their common part, then warn and check that the longer one's tail reads as zeroes,
//! unless `-s` makes any size difference a mismatch; `-s` also stops at the first range whose block
//! status differs ("Strict mode: Offset N block status mismatch!"). Ranges both images report as
//! zero through their backing chains are skipped without reading. Messages go out as they arise,
//! between the `-p` progress lines, in qemu-img's order.

use engine::Result;
use engine::io::{IoBuf, Mapping};
use engine::request::ChainStatus;
use engine::util::join;

use super::open::{Image, Tool, parse_src_cache};
use super::progress::Steps;
use super::split_or_fail_as;

const USAGE: &str = "\
Usage: blk compare [-f fmt] [-F fmt] [-T src_cache] [-p] [-s] [-q] [-U] filename1 filename2
Check whether two images have the same guest-visible content, as qemu-img compare does.

  -f FMT, -F FMT     formats of the first and second image (-f alone names both)
  -T SRC_CACHE       cache mode of both images (none, writeback, writethrough, directsync, unsafe)
  -p                 show progress
  -s                 strict: images of different sizes, or differently allocated, differ
  -q                 quiet: print nothing, only the exit status tells
  -U, --force-share  open the images in shared mode
  --image-opts       the file names are option strings
  --object OBJDEF    create a user object (a secret)";

/// Largest read while comparing (qemu-img's I/O buffer; the progress steps follow it).
const CHUNK: u64 = 2 << 20;

/// Index of the first byte where `a` and `b` differ, or None. Whole blocks are compared as
/// slices (memcmp) and only the differing one byte by byte.
fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    const BLOCK: usize = 4096;
    let blk = a
        .chunks(BLOCK)
        .zip(b.chunks(BLOCK))
        .position(|(x, y)| x != y)?;
    let (x, y) = (&a[blk * BLOCK..], &b[blk * BLOCK..]);
    x.iter()
        .zip(y)
        .position(|(p, q)| p != q)
        .map(|i| blk * BLOCK + i)
}

fn reads_zero(st: &ChainStatus) -> bool {
    st.node.is_none() || st.mapping.is_zero()
}

async fn read(img: &Image, offset: u64, len: u64) -> Result<IoBuf> {
    let (buf, r) = img.bb.read(offset, IoBuf::new(len as usize)).await;
    r.map_err(|e| {
        e.context(format!(
            "Error while reading offset {offset} of {}",
            img.path
        ))
    })?;
    Ok(buf)
}

async fn status(img: &Image, pos: u64, len: u64) -> Result<ChainStatus> {
    img.root()
        .chain_status_want_zero(pos, len, None)
        .await
        .map_err(|e| {
            e.context(format!(
                "error while reading image metadata of {}",
                img.path
            ))
        })
}

/// What `-s` compares of two ranges' block status, as qemu-img does: data, zero, a known host
/// offset, allocation somewhere in the chain, and whether the range reaches the image's end.
fn strict_flags(st: &ChainStatus, pos: u64, size: u64) -> (bool, bool, bool, bool, bool) {
    let data = matches!(st.mapping, Mapping::Data { .. } | Mapping::DataZero { .. });
    let eof = pos + st.len >= size;
    (
        data,
        st.mapping.is_zero() || !data,
        st.mapping.host().is_some(),
        st.node.is_some(),
        eof,
    )
}

/// Where the two images first differ in `[0, end)`: a differing sector, or with `strict` the
/// first range whose block status differs.
enum Diff {
    Content(u64),
    Status(u64),
}

/// The first difference in `[0, end)`, or None.
async fn compare_common(
    a: &Image,
    b: &Image,
    (end, strict): (u64, bool),
    steps: &mut Steps,
) -> Result<Option<Diff>> {
    let mut pos = 0;
    while pos < end {
        let sa = status(a, pos, end - pos).await?;
        let sb = status(b, pos, end - pos).await?;
        if strict && strict_flags(&sa, pos, a.len()) != strict_flags(&sb, pos, b.len()) {
            return Ok(Some(Diff::Status(pos)));
        }
        let mut n = sa.len.min(sb.len).min(end - pos).max(1);
        if !(reads_zero(&sa) && reads_zero(&sb)) {
            n = n.min(CHUNK);
            // Both reads in flight at once; the bytes are compared by the slice (memcmp), and
            // only a mismatch is searched for its first sector.
            let (ba, bb) = join(read(a, pos, n), read(b, pos, n)).await;
            let (ba, bb) = (ba?, bb?);
            if let Some(i) = first_difference(ba.as_slice(), bb.as_slice()) {
                return Ok(Some(Diff::Content((pos + i as u64) / 512 * 512)));
            }
        }
        pos += n;
        steps.advance(n);
    }
    Ok(None)
}

/// The first non-zero sector of `[start, end)` of `img`, or None.
async fn check_zero(img: &Image, start: u64, end: u64, steps: &mut Steps) -> Result<Option<u64>> {
    let mut pos = start;
    while pos < end {
        let st = status(img, pos, end - pos).await?;
        let mut n = st.len.min(end - pos).max(1);
        if !reads_zero(&st) {
            n = n.min(CHUNK);
            let buf = read(img, pos, n).await?;
            // The word-wise zero test first: a data buffer is searched only when it fails.
            if !buf.is_zero()
                && let Some(i) = buf.as_slice().iter().position(|&x| x != 0)
            {
                return Ok(Some((pos + i as u64) / 512 * 512));
            }
        }
        pos += n;
        steps.advance(n);
    }
    Ok(None)
}

/// The command line of `blk compare`.
struct Args {
    f1: Option<String>,
    f2: Option<String>,
    cache: Option<String>,
    strict: bool,
    quiet: bool,
    progress: bool,
    share: bool,
}

/// Compare two open images: the exit status, with every message printed on the way.
async fn compare(a: &Image, b: &Image, args: &Args) -> Result<i32> {
    let say = |m: &str| {
        if !args.quiet {
            println!("{m}");
        }
    };
    let (la, lb) = (a.len(), b.len());
    let mut steps = Steps::new(args.progress, la.max(lb), 2.0);
    if la != lb && args.strict {
        say("Strict mode: Image size mismatch!");
        return Ok(1);
    }
    let mut diff = compare_common(a, b, (la.min(lb), args.strict), &mut steps).await?;
    if diff.is_none() && la != lb {
        say("Warning: Image size mismatch!");
        let longer = if la > lb { a } else { b };
        diff = check_zero(longer, la.min(lb), la.max(lb), &mut steps)
            .await?
            .map(Diff::Content);
    }
    Ok(match diff {
        Some(Diff::Content(off)) => {
            say(&format!("Content mismatch at offset {off}!"));
            1
        }
        Some(Diff::Status(off)) => {
            say(&format!("Strict mode: Offset {off} block status mismatch!"));
            1
        }
        None => {
            say("Images are identical.");
            0
        }
    })
}

fn parse(args: &[String]) -> Result<(Args, String, String), i32> {
    // qemu-img 10's long options (--left-format/--right-format are aliases it takes too).
    let long = [
        ("help", 'h', false),
        ("quiet", 'q', false),
        ("progress", 'p', false),
        ("a-format", 'f', true),
        ("left-format", 'f', true),
        ("b-format", 'F', true),
        ("right-format", 'F', true),
        ("strict", 's', false),
        ("cache", 'T', true),
        ("force-share", 'U', false),
    ];
    let (opts, operands) = split_or_fail_as("compare", args, "f:F:T:psqhU", &long, USAGE, 2)?;
    let mut a = Args {
        f1: None,
        f2: None,
        cache: None,
        strict: false,
        quiet: false,
        progress: false,
        share: false,
    };
    for (c, v) in opts {
        match c {
            'f' => a.f1 = Some(v),
            'F' => a.f2 = Some(v),
            'T' => a.cache = Some(v),
            'p' => a.progress = true,
            's' => a.strict = true,
            'q' => a.quiet = true,
            'U' => a.share = true,
            _ => unreachable!("option {c} is in the option string"),
        }
    }
    let [p1, p2] = operands.as_slice() else {
        return Err(crate::cli::prog::usage_error(
            "compare",
            "Expecting two image file names",
        ));
    };
    // -q silences the progress line too; -f alone names both formats, as in qemu-img.
    a.progress &= !a.quiet;
    a.f2 = a.f2.or(a.f1.clone());
    Ok((a, p1.clone(), p2.clone()))
}

/// Entry point of `blk compare`.
pub fn run(args: &[String]) -> i32 {
    let (a, p1, p2) = match parse(args) {
        Ok(v) => v,
        Err(code) => return code,
    };
    let tool = Tool::new();
    let result: Result<i32> = tool.block_on(async {
        if let Some(c) = &a.cache {
            tool.cache.set(parse_src_cache(c)?);
        }
        let img1 = tool.open(&p1, a.f1.as_deref(), true, a.share).await?;
        let img2 = tool.open(&p2, a.f2.as_deref(), true, a.share).await?;
        compare(&img1, &img2, &a).await
    });
    let _ = tool.finish();
    // qemu-img ends the progress line whatever happened once the options were accepted.
    if a.progress {
        println!();
    }
    match result {
        Ok(code) => code,
        Err(e) => {
            crate::cli::prog::error(e);
            2
        }
    }
}
