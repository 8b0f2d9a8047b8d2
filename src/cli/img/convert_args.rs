//! `blk convert`'s command line: qemu-img's options, and the checks qemu-img makes on them, in
//! its order, before any image is opened. Owns no I/O; `convert.rs` runs what this describes.

use engine::qemu_io::CacheMode;
use engine::{Error, Result};

use super::create::{CreateSpec, parse_o};
use super::number::{in_range, strtosz};
use super::open::{check_format, parse_cache, parse_src_cache};
use super::open_args::{IMAGE_OPTS, OBJECT};
use super::sparse::Sparse;
use super::{LongOpt, fail, split_or_fail};

pub(super) const USAGE: &str = "\
Usage: blk convert [--object objectdef] [--image-opts] [--target-image-opts]
                   [--target-is-zero] [--bitmaps [--skip-broken-bitmaps]] [-U] [-C] [-c]
                   [-p] [-q] [-n] [-f fmt] [-t cache] [-T src_cache] [-O output_fmt]
                   [-B backing_file [-F backing_fmt]] [-o options] [-l snapshot_param]
                   [-S sparse_size] [-r rate_limit] [-m num] [-W] [--salvage]
                   filename [filename2 [...]] output_filename
Copy the guest-visible contents of one or more images (one after the other) into a raw or
qcow2 image.";

/// qemu-img's default minimum hole size (`-S 4k`).
const SPARSE: u64 = 4096;
/// The largest `-S` qemu-img takes.
const SPARSE_MAX: u64 = 16 << 20;

/// How data is read and written: `-S`, `-t`, `-T`, `--salvage`, `-C`, `-r`.
pub(super) struct CopyOpts {
    pub sparse: Sparse,
    /// `-S` given (copy offloading refuses it even at the default).
    pub sparse_given: bool,
    cache: Option<String>,
    src_cache: Option<String>,
    pub salvage: bool,
    /// `-C`: copy offloading. blk copies through its buffers either way; the option is taken
    /// with qemu-img's refusals, and the data comes out the same.
    pub copy_range: bool,
    /// `-r`: bytes per second (0: unlimited).
    pub rate: u64,
}

impl Default for CopyOpts {
    fn default() -> CopyOpts {
        CopyOpts {
            sparse: Sparse::new(SPARSE),
            sparse_given: false,
            cache: None,
            src_cache: None,
            salvage: false,
            copy_range: false,
            rate: 0,
        }
    }
}

impl CopyOpts {
    /// Take option `c`; `-S` and `-r` are checked at once, as qemu-img does.
    fn take(&mut self, c: char, v: String) -> Result<()> {
        match c {
            'S' => {
                let what = "buffer size for sparse output";
                let n = in_range(what, &v, strtosz(&v), 0, i64::MAX as u64)?;
                if n % 512 != 0 || n > SPARSE_MAX {
                    return Err(Error::generic(format!(
                        "Invalid {what} specified. Valid sizes are multiples of 512 up to \
                         {SPARSE_MAX}. Select 0 to disable sparse detection (fully allocates output)."
                    )));
                }
                self.sparse = Sparse::new(n);
                self.sparse_given = true;
            }
            'r' => self.rate = in_range("rate limit", &v, strtosz(&v), 0, i64::MAX as u64)?,
            't' => self.cache = Some(v),
            'T' => self.src_cache = Some(v),
            'V' => self.salvage = true,
            'C' => self.copy_range = true,
            _ => unreachable!("option {c} is in the option string"),
        }
        Ok(())
    }

    pub fn src_cache(&self) -> Result<CacheMode> {
        self.src_cache
            .as_deref()
            .map_or(Ok(CacheMode::Writeback), parse_src_cache)
    }

    /// The target's cache mode: qemu-img checks it only once the target exists. Without `-t`
    /// it is `unsafe`, as in qemu-img (its help says so): the copy is not flushed to disk, and
    /// a flush at the end cost a convert most of its time.
    pub fn cache(&self) -> Result<CacheMode> {
        self.cache
            .as_deref()
            .map_or(Ok(CacheMode::Unsafe), parse_cache)
    }
}

/// A parsed `convert` command line.
pub(super) struct ConvertArgs {
    pub fmt: Option<String>,
    /// `-O`; `None` only with `--target-image-opts` (the option string names the driver).
    pub out_fmt: Option<String>,
    pub spec: CreateSpec,
    pub no_create: bool,
    pub progress: bool,
    pub out_of_order: bool,
    pub coroutines: usize,
    pub copy: CopyOpts,
    pub share: bool,
    /// `-l`: an internal snapshot to read instead of the current state.
    pub snapshot: Option<String>,
    pub target_image_opts: bool,
    pub target_is_zero: bool,
    pub bitmaps: bool,
    /// `-c`: every data cluster is written compressed.
    pub compressed: bool,
    /// `--skip-broken-bitmaps`: inconsistent bitmaps are skipped (with a warning).
    pub skip_broken_bitmaps: bool,
    pub sources: Vec<String>,
    pub target: String,
}

const TARGET_IMAGE_OPTS: char = '\u{e001}';
const TARGET_IS_ZERO: char = '\u{e002}';
const BITMAPS: char = '\u{e003}';
const SKIP_BROKEN_BITMAPS: char = '\u{e004}';

/// qemu-img 10's long options, in its order where they share a prefix (its ambiguity messages
/// list them so).
const LONG: [LongOpt; 24] = [
    ("help", 'h', false),
    ("quiet", 'q', false),
    ("backing", 'B', true),
    ("backing-format", 'F', true),
    ("bitmaps", BITMAPS, false),
    ("copy-range-offloading", 'C', false),
    ("force-share", 'U', false),
    IMAGE_OPTS,
    OBJECT,
    ("output-format", 'O', true),
    ("options", 'o', true),
    ("output-cache", 't', true),
    ("oob-writes", 'W', false),
    ("parallel", 'm', true),
    ("rate", 'r', true),
    ("source-image-opts", IMAGE_OPTS.1, false),
    ("source-format", 'f', true),
    ("source-cache", 'T', true),
    ("snapshot", 'l', true),
    ("sparse-size", 'S', true),
    ("salvage", 'V', false),
    ("skip-broken-bitmaps", SKIP_BROKEN_BITMAPS, false),
    ("target-image-opts", TARGET_IMAGE_OPTS, false),
    ("target-is-zero", TARGET_IS_ZERO, false),
];

/// Parse `convert`'s arguments; `Err` is the exit status (the message is printed).
pub(super) fn parse(args: &[String]) -> Result<ConvertArgs, i32> {
    let short = "hf:O:B:F:Cco:l:S:pt:T:qnm:WUr:";
    let (opts, mut operands) = split_or_fail("convert", args, short, &LONG, USAGE)?;
    if let Some(code) = super::opt_help::answer(&opts, 'O', operands.last().map(String::as_str)) {
        return Err(code);
    }
    let mut a = ConvertArgs {
        fmt: None,
        out_fmt: None,
        spec: CreateSpec {
            quiet: true,
            ..CreateSpec::default()
        },
        no_create: false,
        progress: false,
        out_of_order: false,
        coroutines: 8,
        copy: CopyOpts::default(),
        share: false,
        snapshot: None,
        target_image_opts: false,
        target_is_zero: false,
        bitmaps: false,
        compressed: false,
        skip_broken_bitmaps: false,
        sources: Vec::new(),
        target: String::new(),
    };
    let skip_broken = apply_opts(&mut a, opts)?;
    if a.out_fmt.is_none() && !a.target_image_opts {
        a.out_fmt = Some("raw".into());
    }
    if let Some(msg) = refusal(&a, skip_broken) {
        return Err(fail(msg));
    }
    a.skip_broken_bitmaps = skip_broken;
    let Some(target) = operands.pop().filter(|_| !operands.is_empty()) else {
        return Err(fail("Must specify image file name"));
    };
    a.copy.src_cache().map_err(fail)?;
    if let Some(f) = &a.out_fmt {
        check_format(f).map_err(fail)?;
    }
    if a.no_create && !a.spec.opts.is_empty() {
        return Err(fail("-o has no effect when skipping image creation"));
    }
    a.sources = operands;
    a.target = target;
    Ok(a)
}

/// Apply the options in order onto `a`; returns `--skip-broken-bitmaps`.
fn apply_opts(a: &mut ConvertArgs, opts: Vec<(char, String)>) -> Result<bool, i32> {
    let mut skip_broken = false;
    for (c, v) in opts {
        match c {
            'f' => a.fmt = Some(v),
            'O' => a.out_fmt = Some(v),
            'o' => parse_o(&v, &mut a.spec.opts).map_err(fail)?,
            'n' => a.no_create = true,
            'B' => a.spec.backing = Some(v),
            'F' => a.spec.backing_fmt = Some(v),
            'p' => a.progress = true,
            'W' => a.out_of_order = true,
            'm' => match v.parse::<usize>() {
                Ok(n) if (1..=16).contains(&n) => a.coroutines = n,
                _ => {
                    return Err(fail(
                        "Invalid number of coroutines. Allowed number of coroutines is between 1 and 16",
                    ));
                }
            },
            'c' => a.compressed = true,
            'l' => a.snapshot = Some(v),
            'q' => a.progress = false,
            'U' => a.share = true,
            TARGET_IMAGE_OPTS => a.target_image_opts = true,
            TARGET_IS_ZERO => a.target_is_zero = true,
            BITMAPS => a.bitmaps = true,
            SKIP_BROKEN_BITMAPS => skip_broken = true,
            _ => a.copy.take(c, v).map_err(fail)?,
        }
    }
    Ok(skip_broken)
}

/// The first combination of options qemu-img (or blk) refuses, in qemu-img's order.
fn refusal(a: &ConvertArgs, skip_broken: bool) -> Option<&'static str> {
    if skip_broken && !a.bitmaps {
        Some("Use of --skip-broken-bitmaps requires --bitmaps")
    } else if a.compressed && a.copy.copy_range {
        Some("Cannot enable copy offloading when -c is used")
    } else if a.copy.sparse_given && a.copy.copy_range {
        Some("Cannot enable copy offloading when -S is used")
    } else if a.copy.copy_range && a.copy.salvage {
        Some("Cannot use copy offloading in salvaging mode")
    } else if a.target_image_opts && !a.no_create {
        Some("--target-image-opts requires use of -n flag")
    } else if a.target_is_zero && !a.no_create {
        Some("--target-is-zero requires use of -n flag")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_cache_defaults_to_unsafe_as_in_qemu_img() {
        let mut c = CopyOpts::default();
        assert_eq!(c.cache().unwrap(), CacheMode::Unsafe);
        assert_eq!(c.src_cache().unwrap(), CacheMode::Writeback);
        c.take('t', "writeback".into()).unwrap();
        assert_eq!(c.cache().unwrap(), CacheMode::Writeback);
    }
}
