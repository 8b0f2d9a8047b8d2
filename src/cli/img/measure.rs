//! `blk measure [--output=human|json] [-O FMT] [-o OPTS] [--size N | [-f FMT] [-l SNAP] FILE]`:
//! qemu-img measure. How large an image of format FMT (raw by default) would be: for a new
//! image of N bytes, or for converting FILE (its data found through block status of the whole
//! chain, counted in whole clusters of the new image). qcow2's arithmetic is the engine's
//! (`drivers::qcow2::measure`); the option checks are QEMU's, in its order.

use engine::drivers::qcow2::measure::Geometry;
use engine::{Error, Result};
use serde_json::json;

use super::amend::number;
use super::number::{in_range, size_option, strtosz};
use super::open::{Image, Tool};
use super::opt_help::create_option_kind;
use super::{Output, fail, split_or_fail, to_json_pretty};

const USAGE: &str = "\
Usage: blk measure [--output=human|json] [-O fmt] [-o options] [--size N | [--object objectdef] [--image-opts] [-f fmt] [-l snapshot_param] filename]
Print how much space an image of format FMT needs, as qemu-img measure does.

  --size N      measure a new image of N bytes
  FILENAME      measure the conversion of FILENAME (-f: its format, -l: one of its snapshots)
  -O FMT        the new image's format (raw by default); -o its creation options
  --output      human (default) or json; -U opens FILENAME with shared locks";

/// The command line.
struct Args {
    fmt: Option<String>,
    out_fmt: String,
    options: Vec<(String, String)>,
    snapshot: Option<String>,
    force_share: bool,
    output: Output,
    size: Option<u64>,
    file: Option<String>,
}

/// What measure prints.
struct Measured {
    required: u64,
    fully_allocated: u64,
    bitmaps: Option<u64>,
}

/// Entry point of `blk measure`.
pub fn run(args: &[String]) -> i32 {
    let mut a = match parse_args(args) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let tool = Tool::new();
    if let Err(code) = check_operands(&mut a, tool.image_opts.get()) {
        return code;
    }
    let result = tool.block_on(measure(&tool, &a));
    let _ = tool.finish();
    match result {
        Ok(m) => {
            print(&m, a.output);
            0
        }
        Err(e) => fail(e),
    }
}

fn parse_args(args: &[String]) -> Result<Args, i32> {
    let long = [
        ("help", 'h', false),
        super::IMAGE_OPTS,
        super::OBJECT,
        ("output", 'T', true),
        ("size", 'S', true),
        ("force-share", 'U', false),
    ];
    let (opts, operands) = split_or_fail("measure", args, "hf:O:o:l:U", &long, USAGE)?;
    let mut a = Args {
        fmt: None,
        out_fmt: "raw".into(),
        options: Vec::new(),
        snapshot: None,
        force_share: false,
        output: Output::Human,
        size: None,
        file: None,
    };
    for (c, v) in opts {
        match c {
            'f' => a.fmt = Some(v),
            'O' => a.out_fmt = v,
            'o' => {
                if !super::amend::valid_option_list(&v) {
                    return Err(fail(format!("Invalid option list: {v}")));
                }
                a.options.extend(super::amend::items(&v));
            }
            'l' => a.snapshot = Some(v),
            'U' => a.force_share = true,
            'T' => {
                a.output = match v.as_str() {
                    "human" => Output::Human,
                    "json" => Output::Json,
                    o => {
                        return Err(crate::cli::prog::usage_error(
                            "measure",
                            format!("--output expects 'human' or 'json' not '{o}'"),
                        ));
                    }
                }
            }
            'S' => {
                let n = in_range("image size", &v, strtosz(&v), 0, i64::MAX as u64);
                a.size = Some(n.map_err(fail)?);
            }
            _ => unreachable!("option {c} is in the option table"),
        }
    }
    if operands.len() > 1 {
        return Err(fail("At most one filename argument is allowed."));
    }
    a.file = operands.into_iter().next();
    Ok(a)
}

/// qemu-img's checks of the file name against `--size`, `-f` and `-l`, in its order.
fn check_operands(a: &mut Args, image_opts: bool) -> Result<(), i32> {
    if a.file.is_none() && (image_opts || a.fmt.is_some() || a.snapshot.is_some()) {
        return Err(fail(
            "--image-opts, -f, and -l require a filename argument.",
        ));
    }
    match (&a.file, a.size) {
        (Some(_), Some(_)) => Err(fail("--size N cannot be used together with a filename.")),
        (None, None) => Err(fail("Either --size N or one filename must be specified.")),
        _ => Ok(()),
    }
}

async fn measure(tool: &Tool, a: &Args) -> Result<Measured> {
    let img = match &a.file {
        Some(path) => Some(
            tool.open(path, a.fmt.as_deref(), true, a.force_share)
                .await?,
        ),
        None => None,
    };
    if let (Some(img), Some(snap)) = (&img, &a.snapshot) {
        snapshot_refusal(img, snap)?;
    }
    let size = match &img {
        Some(i) => i.len(),
        None => a.size.unwrap_or(0),
    };
    match a.out_fmt.as_str() {
        "raw" | "qcow2" => {}
        f if super::open::check_format(f).is_err() => {
            return Err(Error::generic(format!("Unknown file format '{f}'")));
        }
        f => {
            return Err(Error::generic(format!(
                "Block driver '{f}' does not support size measurement"
            )));
        }
    }
    check_kinds(&a.out_fmt, &a.options)?;
    if a.out_fmt == "raw" {
        // A raw image holds every byte: the input's length, or the size in whole sectors.
        let n = if img.is_some() {
            size
        } else {
            size.div_ceil(512) * 512
        };
        return Ok(Measured {
            required: n,
            fully_allocated: n,
            bitmaps: None,
        });
    }
    measure_qcow2(&a.options, img.as_ref(), size).await
}

/// Every `-o` item is a creation option of `fmt` (or of the file protocol) with a value of
/// its kind; else QEMU's two lines.
fn check_kinds(fmt: &str, items: &[(String, String)]) -> Result<()> {
    let check = || super::amend::check_kinds_with(items, &|k| create_option_kind(fmt, k));
    check().map_err(|e| {
        Error::generic(format!(
            "{e}\n{}: Invalid options for file format '{fmt}'",
            crate::cli::prog::name()
        ))
    })
}

/// The last value of option `key`, if given.
fn opt<'a>(items: &'a [(String, String)], key: &str) -> Option<&'a str> {
    items
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// The new image's geometry and preallocation from the options, with QEMU's refusals in its
/// order (the values have the right kind already).
fn qcow2_geometry(items: &[(String, String)]) -> Result<(Geometry, u32, bool)> {
    let on = |k: &str| opt(items, k).is_some_and(|v| engine::util::parse_on_off(k, v) == Ok(true));
    let extended_l2 = on("extended_l2");
    let cluster_size = opt(items, "cluster_size").map_or(Ok(65536), |v| size_option("", v))?;
    if !cluster_size.is_power_of_two() || !(512..=(2 << 20)).contains(&cluster_size) {
        return Err(Error::generic(
            "Cluster size must be a power of two between 512 and 2048k",
        ));
    }
    if extended_l2 && cluster_size < 16384 {
        return Err(Error::generic(
            "Extended L2 entries are only supported with cluster sizes of at least 16384 bytes",
        ));
    }
    let version = match opt(items, "compat") {
        None | Some("1.1" | "v3") => 3,
        Some("0.10" | "v2") => 2,
        Some(v) => {
            return Err(Error::generic(format!(
                "Invalid compatibility level: '{v}'"
            )));
        }
    };
    let bits = opt(items, "refcount_bits").map_or(Ok(16), |v| number("", v))?;
    if bits == 0 || bits > 64 || !bits.is_power_of_two() {
        return Err(Error::generic(
            "Refcount width must be a power of two and may not exceed 64 bits",
        ));
    }
    if version < 3 && bits != 16 {
        return Err(Error::generic(
            "Different refcount widths than 16 bits require compatibility level 1.1 or above \
             (use compat=1.1 or greater)",
        ));
    }
    let full = match opt(items, "preallocation") {
        None | Some("off" | "metadata") => false,
        Some("falloc" | "full") => true,
        Some(v) => return Err(Error::generic(format!("invalid parameter value: {v}"))),
    };
    let g = Geometry {
        cluster_size,
        refcount_order: bits.trailing_zeros(),
        extended_l2,
    };
    Ok((g, version, full))
}

async fn measure_qcow2(
    items: &[(String, String)],
    img: Option<&Image>,
    size: u64,
) -> Result<Measured> {
    let (g, version, full) = qcow2_geometry(items)?;
    if let Some(f) = opt(items, "encrypt.format") {
        return Err(Error::generic(
            if f == "luks" && opt(items, "encrypt.key-secret").is_none() {
                "Parameter 'encrypt.key-secret' is required for cipher".to_string()
            } else {
                format!("blk cannot measure images with encrypt.format={f}")
            },
        ));
    }
    if g.too_large(size) {
        return Err(Error::generic(
            "The image size is too large (try using a larger cluster size)",
        ));
    }
    let cs = g.cluster_size;
    let virtual_size = size.div_ceil(cs) * cs;
    let mut required = match img {
        Some(_) if opt(items, "backing_file").is_some() => virtual_size,
        Some(i) => data_clusters_bytes(i, cs).await?,
        None => 0,
    };
    if full {
        required = virtual_size;
    }
    let fully_allocated = g.fully_allocated(virtual_size);
    let bitmaps = match img {
        Some(i) if version >= 3 && stores_bitmaps(i) => {
            Some(g.bitmaps_size(i.len(), &persistent_bitmaps(i)))
        }
        _ => None,
    };
    Ok(Measured {
        required: fully_allocated - virtual_size + required,
        fully_allocated,
        bitmaps,
    })
}

/// Bytes of the input's data (through its whole chain; what reads as zeroes left out), in
/// whole clusters of `cs` bytes, as QEMU counts them: a run of data counts from the start of
/// its first cluster to the end of its last.
async fn data_clusters_bytes(img: &Image, cs: u64) -> Result<u64> {
    let (root, len) = (img.root(), img.len());
    let (mut pos, mut total) = (0, 0);
    while pos < len {
        let st = root.chain_status_want_zero(pos, len - pos, None).await?;
        let mut n = st.len.min(len - pos).max(1);
        if st.node.is_some() && !st.mapping.is_zero() {
            n = (pos + n).next_multiple_of(cs) - pos;
            total += pos % cs + n;
        }
        pos += n;
    }
    Ok(total)
}

/// The input can hold persistent bitmaps (a qcow2 v3 image).
fn stores_bitmaps(img: &Image) -> bool {
    img.format == "qcow2" && img.node.driver().specific_info()["compat"] == "1.1"
}

/// (name length, granularity) of each persistent bitmap of the input.
fn persistent_bitmaps(img: &Image) -> Vec<(usize, u64)> {
    img.node
        .bitmaps()
        .all()
        .iter()
        .filter(|b| b.persistent())
        .map(|b| (b.name().len(), b.granularity()))
        .collect()
}

/// `-l`: blk reads no internal snapshot yet; QEMU's refusal when there is none to read.
fn snapshot_refusal(img: &Image, _name: &str) -> Result<()> {
    let count = img
        .node
        .driver()
        .format_ops()
        .map_or(0, |o| o.snapshot_count());
    Err(Error::generic(if count == 0 {
        "Failed to load snapshot: Can't find snapshot"
    } else {
        "Failed to load snapshot: blk cannot read internal snapshots yet"
    }))
}

fn print(m: &Measured, output: Output) {
    match output {
        Output::Human => {
            println!("required size: {}", m.required);
            println!("fully allocated size: {}", m.fully_allocated);
            if let Some(b) = m.bitmaps {
                println!("bitmaps size: {b}");
            }
        }
        Output::Json => {
            let mut v = serde_json::Map::new();
            if let Some(b) = m.bitmaps {
                v.insert("bitmaps".into(), json!(b));
            }
            v.insert("required".into(), json!(m.required));
            v.insert("fully-allocated".into(), json!(m.fully_allocated));
            println!("{}", to_json_pretty(&serde_json::Value::Object(v)));
        }
    }
}
