//! `blk amend [--object OBJ] [--image-opts] [-p] [-q] [-f FMT] [-t CACHE] [--force] -o OPTS
//! FILE`: qemu-img amend. The `-o` list is checked as qemu-img checks it (option names and
//! value kinds of the format's amend options, with the hint for creation-only options), then
//! the format changes the image (`FormatOps::amend`, qcow2's `amend.rs`); the size goes
//! through the generic truncate so the live bitmaps follow it.

use engine::driver::{AmendOptions, Prealloc};
use engine::env::LocalBoxFuture;
use engine::{Error, Result};

use super::number::{parse_c_u64, size_option};
use super::open::{Image, Tool, parse_cache};
use super::opt_help::{amend_text, option_kind, wants_help};
use super::progress::Steps;
use super::{fail, split_or_fail};

const USAGE: &str = "\
Usage: blk amend [--object OBJ] [--image-opts] [-p] [-q] [-f fmt] [-t cache] [--force] -o options filename
Change the format-specific options of an image in place, as qemu-img amend does.

  -o OPTIONS     compat=0.10|1.1, refcount_bits=N, lazy_refcounts=on|off, data_file=NAME,
                 data_file_raw=off, size=SIZE (-o help lists them)
  -f FMT         image format (probed when omitted)
  -t CACHE       cache mode of the image (writeback by default)
  -p             show progress; -q quiet
  --force        accepted as qemu-img does (needed only by encryption changes)
  --image-opts, --object     as for every image command";

/// What the command line asks for.
struct Args {
    options: String,
    fmt: Option<String>,
    cache: String,
    progress: bool,
    operands: Vec<String>,
}

/// Entry point of `blk amend`.
pub fn run(args: &[String]) -> i32 {
    let long = [
        ("help", 'h', false),
        super::OBJECT,
        super::IMAGE_OPTS,
        ("force", 'F', false),
    ];
    let (opts, operands) = match split_or_fail("amend", args, "ho:f:t:pq", &long, USAGE) {
        Ok(v) => v,
        Err(code) => return code,
    };
    let mut a = Args {
        options: String::new(),
        fmt: None,
        cache: "writeback".into(),
        progress: false,
        operands,
    };
    let (mut have_options, mut quiet) = (false, false);
    for (c, v) in opts {
        match c {
            'o' => {
                if !valid_option_list(&v) {
                    return fail(format!("Invalid option list: {v}"));
                }
                if have_options {
                    a.options.push(',');
                }
                a.options.push_str(&v);
                have_options = true;
            }
            'f' => a.fmt = Some(v),
            't' => a.cache = v,
            'p' => a.progress = true,
            'q' => quiet = true,
            'F' => {}
            _ => unreachable!("option {c} is in the option table"),
        }
    }
    if !have_options {
        return crate::cli::prog::usage_error("amend", "Must specify options (-o)");
    }
    a.progress &= !quiet;
    let code = amend(&a);
    // qemu-img ends the progress line whatever happened once progress was set up.
    if a.progress {
        println!();
    }
    code
}

/// qemu-img's check of one `-o` argument: not empty, and no unescaped trailing comma.
pub(super) fn valid_option_list(o: &str) -> bool {
    let trailing = o.len() - o.trim_end_matches(',').len();
    !o.is_empty() && trailing.is_multiple_of(2)
}

/// The option help for `fmt`, or qemu-img's refusal.
fn print_help(fmt: &str) -> i32 {
    match amend_text(fmt) {
        Some(t) => {
            print!("{t}");
            0
        }
        None if super::open::check_format(fmt).is_err() => {
            fail(format!("Unknown file format '{fmt}'"))
        }
        None => fail(no_amend(fmt)),
    }
}

fn no_amend(fmt: &str) -> String {
    format!("Format driver '{fmt}' does not support option amendment")
}

fn amend(a: &Args) -> i32 {
    if let Some(fmt) = &a.fmt
        && wants_help(&a.options)
    {
        return print_help(fmt);
    }
    let [path] = a.operands.as_slice() else {
        return fail("Expecting one image file name");
    };
    let cache = match parse_cache(&a.cache) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let tool = Tool::new();
    tool.cache.set(cache);
    let result = tool.block_on(async {
        let img = tool.open(path, a.fmt.as_deref(), false, false).await?;
        if wants_help(&a.options) {
            return Ok(Some(print_help(&img.format)));
        }
        if amend_text(&img.format).is_none() {
            return Err(Error::generic(no_amend(&img.format)));
        }
        let opts = parse_options(&img.format, &a.options)?;
        run_amend(&img, &opts, a.progress).await?;
        Ok(None)
    });
    let fin = tool.finish();
    match (result, fin) {
        (Ok(Some(code)), _) => code,
        (Ok(None), Ok(())) => 0,
        (Err(e), _) | (Ok(None), Err(e)) => fail(e),
    }
}

/// The format's amend with qemu-img's progress: 0% before, 100% after.
async fn run_amend(img: &Image, opts: &AmendOptions, progress: bool) -> Result<()> {
    const SCALE: u64 = 1_000_000;
    let steps = std::cell::RefCell::new(Steps::new(progress, SCALE, 1.0));
    let report = |part: f64| steps.borrow_mut().reach((part * SCALE as f64) as u64);
    let root = img.root();
    let resize = |n: u64| -> LocalBoxFuture<'_, Result<()>> {
        let root = root.clone();
        Box::pin(async move { root.truncate(n, true, Prealloc::Off).await })
    };
    let ops = img
        .node
        .driver()
        .format_ops()
        .ok_or_else(|| Error::generic(no_amend(&img.format)))?;
    let r = ops.amend(opts, &resize, &report).await;
    steps.borrow_mut().complete();
    r
}

/// Parse the `-o` list against the amend options of `fmt` (the last of a repeated option
/// wins), with qemu-img's messages.
fn parse_options(fmt: &str, list: &str) -> Result<AmendOptions> {
    let items = items(list);
    if let Err(e) = check_kinds(fmt, &items, false) {
        // An option only creation takes gets a hint, when the list is valid for creation.
        return Err(if check_kinds(fmt, &items, true).is_ok() {
            e.hint("This option is only supported for image creation")
        } else {
            e
        });
    }
    let mut o = AmendOptions::default();
    for (k, v) in items {
        match k.as_str() {
            "backing_file" => o.backing_file = Some(v),
            "backing_fmt" => o.backing_fmt = Some(v),
            "compat" => o.compat = Some(v),
            "data_file" => o.data_file = Some(v),
            "data_file_raw" => o.data_file_raw = Some(engine::util::parse_on_off(&k, &v)?),
            "lazy_refcounts" => o.lazy_refcounts = Some(engine::util::parse_on_off(&k, &v)?),
            "refcount_bits" => o.refcount_bits = Some(number(&k, &v)?),
            "size" => o.size = Some(size_option(&k, &v)?),
            _ => o.encrypt = true,
        }
    }
    Ok(o)
}

/// `key=value` items of a list (`,,` escapes a comma; a bare `key` means `key=on`).
pub(super) fn items(list: &str) -> Vec<(String, String)> {
    engine::util::split_options(list)
        .into_iter()
        .filter(|i| !i.is_empty())
        .map(|i| match i.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (i.to_string(), "on".to_string()),
        })
        .collect()
}

/// Every item is an option of the list (amend's, or `create`'s) with a value of its kind.
fn check_kinds(fmt: &str, items: &[(String, String)], create: bool) -> Result<()> {
    check_kinds_with(items, &|k| option_kind(fmt, k, create))
}

/// Every item is an option `kind_of` knows, with a value of its kind (`<bool (on/off)>`,
/// `<num>`, `<size>`, `<str>`), as QEMU parses an option list: the first bad one is the error.
pub(super) fn check_kinds_with(
    items: &[(String, String)],
    kind_of: &dyn Fn(&str) -> Option<&'static str>,
) -> Result<()> {
    for (k, v) in items {
        let kind = kind_of(k).ok_or_else(|| Error::generic(format!("Invalid parameter '{k}'")))?;
        match kind {
            "<bool (on/off)>" => engine::util::parse_on_off(k, v).map(drop)?,
            "<num>" => number(k, v).map(drop)?,
            "<size>" => size_option(k, v).map(drop)?,
            _ => {}
        }
    }
    Ok(())
}

/// A number option, with QEMU's refusal.
pub(super) fn number(key: &str, v: &str) -> Result<u64> {
    parse_c_u64(v).map_err(|_| Error::param_invalid(key, "expects a number"))
}
