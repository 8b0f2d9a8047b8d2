//! `blk dd [-f fmt|--image-opts] [-O output_fmt] [-U] [bs=N] [count=N] [skip=N] if=IN of=OUT`:
//! qemu-img dd. Copies the guest-visible bytes of IN, from block `skip`, into a new image OUT
//! of format `-O` (raw by default), created with default options.
//!
//! The sizes follow qemu-img exactly, quirks included, since scripts depend on the result:
//! `count` limits the input's length counted from its start (not from `skip`), so the output
//! holds `min(count * bs, size) - skip * bs` bytes, rounded up to whole 512-byte sectors by
//! the format drivers. A `skip` beyond the input warns ("cannot skip to specified offset") and
//! leaves an empty image, with exit status 0, like dd(1). Every byte is written, zeroes too: like
//! qemu-img, dd does not make the output sparse (a qcow2 output is fully allocated).

use engine::io::{IoBuf, ReqFlags};
use engine::{Error, Result};

use super::create::{CreateSpec, create_image};
use super::number::{in_range, parse_c_u64, strtosz};
use super::open::{Image, Tool, check_format};
use super::{fail, split_or_fail};

const USAGE: &str = "\
Usage: blk dd [-f FMT|--image-opts] [-O OUTPUT_FMT] [-U] [bs=BLOCK_SIZE] [count=BLOCKS]
              [skip=BLOCKS] if=INPUT of=OUTPUT
Copy the guest-visible contents of INPUT, or a run of its blocks, into a new image OUTPUT.

  -h, --help                 display this help and exit
  -f, --format FMT           format of INPUT (probed when omitted)
  --image-opts               INPUT is an option string (key=value,...), not a file name
  --object OBJECTDEF         create a user object (a secret) before opening INPUT
  -O, --output-format FMT    format of OUTPUT: raw (default) or qcow2
  -U, --force-share          open INPUT in shared mode, alongside another user
  bs=BLOCK_SIZE[kKMGTPE]     size of one block (default 512)
  count=BLOCKS               copy only the first BLOCKS blocks of INPUT (default all)
  skip=BLOCKS                start copying at block BLOCKS of INPUT
  if=INPUT                   the image to read
  of=OUTPUT                  the image to create (replaced when it exists)";

/// Bytes moved per request: whole blocks, at least one, about this many.
const CHUNK: u64 = 1 << 20;

/// The operands (`name=value`), as given.
struct Operands {
    bs: u64,
    count: Option<u64>,
    skip: Option<u64>,
    input: Option<String>,
    output: Option<String>,
}

/// Parse the operands in order; the first bad one is the error.
fn parse_operands(operands: &[String]) -> Result<Operands> {
    let mut o = Operands {
        bs: 512,
        count: None,
        skip: None,
        input: None,
        output: None,
    };
    let max = i64::MAX as u64;
    for arg in operands {
        let (name, value) = arg.split_once('=').unwrap_or((arg, ""));
        match (name, arg.contains('=')) {
            ("bs", true) => o.bs = in_range("bs", value, strtosz(value), 1, i32::MAX as u64)?,
            ("count", true) => {
                o.count = Some(in_range("count", value, parse_c_u64(value), 0, max)?)
            }
            ("skip", true) => o.skip = Some(in_range("skip", value, parse_c_u64(value), 0, max)?),
            ("if", true) => o.input = Some(value.to_string()),
            ("of", true) => o.output = Some(value.to_string()),
            _ => return Err(Error::generic(format!("unrecognized operand {name}"))),
        }
    }
    Ok(o)
}

/// Where copying starts and ends in the input, and the output's size: qemu-img's arithmetic.
/// `None` as the start means `skip` lies beyond the input.
fn extent(o: &Operands, input_len: u64) -> (Option<u64>, u64) {
    let max = i64::MAX as u64;
    let mut end = input_len;
    if let Some(count) = o.count
        && count <= max / o.bs
        && count * o.bs < end
    {
        end = count * o.bs;
    }
    match o.skip {
        Some(skip) if skip > max / o.bs || end < skip * o.bs => (None, end),
        skip => (Some(skip.unwrap_or(0) * o.bs), end),
    }
}

/// Copy `[from, end)` of `src` to `dst` from offset 0, in whole blocks of `bs`.
async fn copy(src: &Image, dst: &Image, from: u64, end: u64, bs: u64) -> Result<()> {
    let chunk = (CHUNK / bs).max(1) * bs;
    let (mut pos, mut out) = (from, 0);
    while pos < end {
        let n = chunk.min(end - pos);
        let (buf, r) = src.bb.read(pos, IoBuf::new(n as usize)).await;
        r.map_err(|e| e.context("error while reading from input image file"))?;
        let (_, r) = dst.bb.write(out, buf, ReqFlags::NONE).await;
        r.map_err(|e| e.context("error while writing to output image file"))?;
        pos += n;
        out += n;
    }
    Ok(())
}

/// Entry point of `blk dd`.
pub fn run(args: &[String]) -> i32 {
    // qemu-img 10's long options, in its order where they share a prefix.
    let long = [
        ("help", 'h', false),
        ("format", 'f', true),
        ("force-share", 'U', false),
        super::OBJECT,
        ("output-format", 'O', true),
    ];
    let (opts, operands) = match split_or_fail("dd", args, "hf:O:U", &long, USAGE) {
        Ok(v) => v,
        Err(code) => return code,
    };
    let (mut fmt, mut out_fmt, mut share) = (None, "raw".to_string(), false);
    for (c, v) in opts {
        match c {
            'f' => fmt = Some(v),
            'O' => out_fmt = v,
            'U' => share = true,
            _ => unreachable!("option {c} is in the option table"),
        }
    }
    let o = match parse_operands(&operands) {
        Ok(o) => o,
        Err(e) => return fail(e),
    };
    let (Some(input), Some(output)) = (&o.input, &o.output) else {
        return fail("Must specify both input and output files");
    };
    let tool = Tool::new();
    let result = tool.block_on(async {
        let src = tool.open(input, fmt.as_deref(), true, share).await?;
        check_format(&out_fmt).map_err(|_| Error::generic("Unknown file format"))?;
        let (start, end) = extent(&o, src.len());
        let spec = CreateSpec {
            fmt: out_fmt.clone(),
            // The drivers keep whole sectors, as QEMU's do.
            size: Some((end - start.unwrap_or(end)).div_ceil(512) * 512),
            quiet: true,
            ..CreateSpec::default()
        };
        create_image(&tool, output, &spec)
            .await
            .map_err(|e| e.context(format!("{output}: error while creating output image")))?;
        // --image-opts describes the input only; the output is a file name.
        tool.image_opts.set(false);
        let dst = tool.open(output, Some(&out_fmt), false, false).await?;
        let Some(start) = start else {
            crate::cli::prog::error(format_args!("{input}: cannot skip to specified offset"));
            return Ok(());
        };
        copy(&src, &dst, start, end, o.bs).await
    });
    let fin = tool.finish();
    match result.and(fin) {
        Ok(()) => 0,
        Err(e) => fail(e),
    }
}
