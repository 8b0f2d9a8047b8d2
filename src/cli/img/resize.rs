//! `blk resize [-f fmt] [--preallocation=MODE] [--shrink] [-q] FILE [+|-]SIZE`: qemu-img
//! resize, through the engine's truncate (the BlockBackend holds RESIZE). Shrinking needs
//! `--shrink`; preallocation (off, metadata for qcow2, falloc, full) only grows.

use engine::driver::Prealloc;
use engine::{Error, Result};

use super::number::size_option;
use super::open::Tool;
use super::{fail, split_or_fail};

const USAGE: &str = "\
Usage: blk resize [-f fmt] [--preallocation=PREALLOC] [--shrink] [-q] filename [+ | -]size
Change the virtual size of an image, as qemu-img resize does.

  -f, --format FMT           image format (probed when omitted)
  --preallocation=PREALLOC   off, metadata (qcow2), falloc or full: how the new part is allocated
  --shrink                   allow making the image smaller (its tail is lost)
  -q                         quiet
  --image-opts, --object     as for every image command";

/// Entry point of `blk resize`.
pub fn run(args: &[String]) -> i32 {
    let long = [
        ("help", 'h', false),
        ("quiet", 'q', false),
        ("format", 'f', true),
        ("shrink", 'S', false),
        ("preallocation", 'P', true),
    ];
    // A leading '-' in the size is not an option ("resize img -1G"), as in qemu-img.
    let (args, neg_size) = match args.last() {
        Some(last)
            if last.starts_with('-') && last[1..].starts_with(|c: char| c.is_ascii_digit()) =>
        {
            (&args[..args.len() - 1], Some(last.clone()))
        }
        _ => (args, None),
    };
    let (opts, mut operands) = match split_or_fail("resize", args, "f:hq", &long, USAGE) {
        Ok(v) => v,
        Err(code) => return code,
    };
    operands.extend(neg_size);
    let (mut fmt, mut shrink, mut quiet, mut prealloc) = (None, false, false, Prealloc::Off);
    for (c, v) in opts {
        match c {
            'f' => fmt = Some(v),
            'P' => match Prealloc::parse(&v) {
                Ok(p) => prealloc = p,
                Err(_) => return fail(format!("Invalid preallocation mode '{v}'")),
            },
            'S' => shrink = true,
            'q' => quiet = true,
            _ => unreachable!("option {c} is in the option table"),
        }
    }
    let [path, size] = operands.as_slice() else {
        return crate::cli::prog::usage_error("resize", "Expecting image file name and size");
    };
    let (sign, digits) = match size.as_bytes().first() {
        Some(b'+') => (1i8, &size[1..]),
        Some(b'-') => (-1, &size[1..]),
        _ => (0, size.as_str()),
    };
    let n = match size_option("size", digits) {
        Ok(n) => n,
        Err(e) => return fail(e),
    };
    let tool = Tool::new();
    let result = tool.block_on(async {
        let img = tool.open(path, fmt.as_deref(), false, false).await?;
        let new = new_size(img.len(), (sign, n), shrink, prealloc)?;
        if img.format == "qcow2" && !new.is_multiple_of(512) {
            return Err(Error::generic("The new size must be a multiple of 512"));
        }
        img.root().truncate(new, true, prealloc).await
    });
    let fin = tool.finish();
    match result.and(fin) {
        Ok(()) => {
            if !quiet {
                println!("Image resized.");
            }
            0
        }
        Err(e) => fail(e),
    }
}

/// The size asked for (`sign` -1, 0 or +1 for `-N`, `N`, `+N`) from the current one `cur`,
/// with qemu-img's refusals in its order: sizes that are not positive, preallocation when
/// not growing, shrinking without `--shrink`.
fn new_size(cur: u64, (sign, n): (i8, u64), shrink: bool, prealloc: Prealloc) -> Result<u64> {
    let new = match sign {
        1 => cur
            .checked_add(n)
            .ok_or_else(|| Error::generic("Image size too large"))?,
        -1 => match cur.checked_sub(n) {
            Some(v) if v > 0 => v,
            _ => return Err(Error::generic("New image size must be positive")),
        },
        _ => n,
    };
    if new == 0 {
        return Err(Error::generic("New image size must be positive"));
    }
    if new <= cur && prealloc != Prealloc::Off {
        return Err(Error::generic(
            "Preallocation can only be used for growing images",
        ));
    }
    if new < cur && !shrink {
        return Err(Error::generic(format!(
            "Use the --shrink option to perform a shrink operation.\n{}: warning: Shrinking \
             an image will delete all data beyond the shrunken image's end. Before performing \
             such an operation, make sure there is no important data there.",
            crate::cli::prog::name()
        )));
    }
    Ok(new)
}
