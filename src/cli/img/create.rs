//! `blk create [-f fmt] [-o options] [-b backing -F backing_fmt] [-u] [-q] FILE [SIZE]`:
//! qemu-img create for raw and qcow2, through the engine's own drivers.
//!
//! Prints qemu-img's "Formatting 'FILE', fmt=..." line with its field order. Without SIZE the
//! size is the backing file's (`extended_l2=on` included: subcluster images are written
//! natively).

use std::rc::{Rc, Weak};

use engine::driver::Prealloc;
use engine::drivers::qcow2::{self, Compat, CreateOptions};
use engine::env::Env;
use engine::graph::{ParentOps, attach_external, detach, open_node};
use engine::io::{IoBuf, ReqFlags};
use engine::types::Perms;
use engine::util::{Options, strtosz};
use engine::{Error, Result};
use serde_json::json;

use super::number::{in_range, size_option};
use super::open::{Tool, check_format};
use super::{fail, split_or_fail};

const USAGE: &str = "\
Usage: blk create [-f fmt] [-o options] [-b backing_file -F backing_fmt] [-u] [-q] filename [size]
Create a raw or qcow2 image, as qemu-img create does.";

/// What to create.
#[derive(Clone, Debug, Default)]
pub(crate) struct CreateSpec {
    pub fmt: String,
    pub size: Option<u64>,
    /// `-o` options, in order.
    pub opts: Vec<(String, String)>,
    pub backing: Option<String>,
    pub backing_fmt: Option<String>,
    /// `-u`: do not open the backing file.
    pub unsafe_backing: bool,
    pub quiet: bool,
}

/// Parse `-o a=b,c=d` (qemu's `,,` escapes a comma) onto `out`.
pub(crate) fn parse_o(text: &str, out: &mut Vec<(String, String)>) -> Result<()> {
    for item in engine::util::split_options(text)
        .into_iter()
        .filter(|i| !i.is_empty())
    {
        match item.split_once('=') {
            Some((k, v)) => out.push((k.to_string(), v.to_string())),
            None => return Err(Error::generic(format!("Invalid parameter '{item}'"))),
        }
    }
    Ok(())
}

fn flag(key: &str, v: &str) -> Result<bool> {
    engine::util::parse_on_off(key, v)
}

/// The `-o` options once parsed: the driver's options plus the texts the "Formatting" line
/// echoes back as the user spelled them.
struct Parsed {
    o: CreateOptions,
    prealloc: Option<String>,
    size: Option<u64>,
    backing: Option<String>,
    backing_fmt: Option<String>,
    compat_text: Option<String>,
    lazy_text: String,
    compression_text: String,
    raw_text: Option<String>,
    extent_hint: Option<u64>,
    /// `encrypt.*` options, as given (`create_luks::qcow2_encryption` reads them).
    encrypt: Vec<(String, String)>,
    /// Values qemu-img rejects only after it printed the "Formatting" line.
    late_error: Option<Error>,
}

/// Create `path` as `spec` describes; errors without the "FILE: " prefix.
pub(crate) async fn create_image(tool: &Tool, path: &str, spec: &CreateSpec) -> Result<()> {
    check_format(&spec.fmt)?;
    if spec.fmt == "luks" {
        let o = super::create_luks::options(tool, path, spec)?;
        return write_image(tool, path, false, &o, Prealloc::Off).await;
    }
    let qcow2 = spec.fmt == "qcow2";
    let mut p = parse_opts(spec, qcow2)?;
    let prealloc_mode = resolve_prealloc(&mut p, qcow2)?;
    p.o.preallocation = prealloc_mode;
    resolve_backing(tool, path, spec, qcow2, &mut p).await?;
    let Some(size) = p.size else {
        return Err(Error::generic("Image creation needs a size parameter"));
    };
    if !spec.quiet {
        println!("{}", formatting_line(path, &spec.fmt, qcow2, &p, size));
    }
    if let Some(e) = p.late_error.take() {
        return Err(e);
    }
    let encrypt = std::mem::take(&mut p.encrypt);
    let mut o = final_options(p, qcow2, size)?;
    o.encrypt = super::create_luks::qcow2_encryption(tool, &encrypt)?;
    if let Some(d) = &o.data_file
        && o.compat == Compat::V3
    {
        // The data file is created as QEMU does: a raw file of the virtual size, at the name
        // given (relative to the working directory, which is where the image looks for it),
        // preallocated as asked (falloc, full; the image then maps every cluster to it).
        let data_prealloc = match prealloc_mode {
            Prealloc::Falloc | Prealloc::Full => prealloc_mode,
            _ => Prealloc::Off,
        };
        write_image(
            tool,
            d,
            false,
            &CreateOptions {
                size: o.size,
                ..CreateOptions::default()
            },
            data_prealloc,
        )
        .await?;
    }
    write_image(tool, path, qcow2, &o, prealloc_mode).await
}

/// Parse `spec`'s `-o` options in order; the first invalid one is the error.
fn parse_opts(spec: &CreateSpec, qcow2: bool) -> Result<Parsed> {
    let mut p = Parsed {
        o: CreateOptions::default(),
        prealloc: None,
        size: spec.size,
        backing: spec.backing.clone(),
        backing_fmt: spec.backing_fmt.clone(),
        compat_text: None,
        lazy_text: "off".to_string(),
        compression_text: "zlib".to_string(),
        raw_text: None,
        extent_hint: None,
        encrypt: Vec::new(),
        late_error: None,
    };
    for (k, v) in &spec.opts {
        apply_opt(&mut p, k, v, qcow2)?;
    }
    Ok(p)
}

/// Apply one `-o key=value` (the qcow2-only keys are invalid for raw).
fn apply_opt(p: &mut Parsed, k: &str, v: &String, qcow2: bool) -> Result<()> {
    match (k, qcow2) {
        ("size", _) => p.size = Some(size_option("size", v)?),
        ("preallocation", _) => p.prealloc = Some(v.clone()),
        // A hint for the host file's extent size (QEMU passes it to XFS, others ignore
        // it); blk accepts and checks it but does not pass it on.
        ("extent_size_hint", _) => p.extent_hint = Some(size_option("extent_size_hint", v)?),
        ("cluster_size", true) => p.o.cluster_size = size_option("cluster_size", v)?,
        ("compat", true) => {
            p.o.compat = match v.as_str() {
                "0.10" | "v2" => Compat::V2,
                "1.1" | "v3" => Compat::V3,
                _ => {
                    p.late_error = Some(Error::param_invalid(
                        "version",
                        format!("does not accept value '{v}'"),
                    ));
                    Compat::V3
                }
            };
            p.compat_text = Some(v.clone());
        }
        ("refcount_bits", true) => {
            p.o.refcount_bits = v.parse().map_err(|_| {
                Error::generic(format!(
                    "Parameter 'refcount_bits' expects a number, not '{v}'"
                ))
            })?
        }
        ("lazy_refcounts", true) => {
            p.o.lazy_refcounts = flag(k, v)?;
            p.lazy_text = v.clone();
        }
        ("backing_file", true) => p.backing = Some(v.clone()),
        ("backing_fmt", true) => p.backing_fmt = Some(v.clone()),
        ("extended_l2", true) => p.o.extended_l2 = flag(k, v)?,
        ("data_file", true) => p.o.data_file = Some(v.clone()),
        (k, true) if k.starts_with("encrypt.") => {
            p.encrypt.retain(|(g, _)| g != k);
            p.encrypt.push((k.to_string(), v.clone()));
        }
        ("data_file_raw", true) => {
            p.o.data_file_raw = flag(k, v)?;
            p.raw_text = Some(v.clone());
        }
        ("compression_type", true) => {
            p.o.compression_type = match v.as_str() {
                "zlib" => 0,
                "zstd" => 1,
                _ => {
                    return Err(Error::generic(format!(
                        "Parameter 'compression-type' does not accept value '{v}'"
                    )));
                }
            };
            p.compression_text = v.clone();
        }
        _ => return Err(Error::generic(format!("Invalid parameter '{k}'"))),
    }
    Ok(())
}

/// The preallocation mode; an unknown name is a late error (after any earlier one).
fn resolve_prealloc(p: &mut Parsed, qcow2: bool) -> Result<Prealloc> {
    let mode = match p.prealloc.as_deref() {
        None | Some("off") => Prealloc::Off,
        Some(name) => Prealloc::parse(name).unwrap_or_else(|_| {
            p.late_error.get_or_insert(if qcow2 {
                Error::param_invalid("preallocation", format!("does not accept value '{name}'"))
            } else {
                Error::generic(format!("invalid parameter value: {name}"))
            });
            Prealloc::Off
        }),
    };
    if mode == Prealloc::Metadata && !qcow2 {
        return Err(Error::generic(
            "Unsupported preallocation mode 'metadata' for raw images",
        ));
    }
    Ok(mode)
}

/// Check the backing file options and, unless `-u`, open the backing file (its size is the
/// default size).
async fn resolve_backing(
    tool: &Tool,
    path: &str,
    spec: &CreateSpec,
    qcow2: bool,
    p: &mut Parsed,
) -> Result<()> {
    if p.backing.is_some() && !qcow2 {
        return Err(Error::generic(format!(
            "Backing file not supported for file format '{}'",
            spec.fmt
        )));
    }
    if p.backing_fmt.is_some() && p.backing.is_none() {
        return Err(Error::generic(
            "Backing format cannot be used without backing file",
        ));
    }
    if let Some(b) = &p.backing {
        let Some(bfmt) = &p.backing_fmt else {
            return Err(Error::generic(
                "Backing file specified without backing format",
            ));
        };
        check_format(bfmt)?;
        if !spec.unsafe_backing {
            let bpath = engine::filename::backing_path(path, b);
            let img = tool
                .open(&bpath, Some(bfmt), true, true)
                .await
                .map_err(|e| e.hint("Could not open backing image."))?;
            p.size.get_or_insert(img.len());
            tool.close(img).await;
        }
    }
    Ok(())
}

/// qemu-img's "Formatting 'FILE', fmt=..." line, fields in its order.
fn formatting_line(path: &str, fmt: &str, qcow2: bool, p: &Parsed, size: u64) -> String {
    let mut line = format!("Formatting '{path}', fmt={fmt}");
    line += &super::create_luks::encrypt_text(&p.encrypt);
    if qcow2 {
        let ext = if p.o.extended_l2 { "on" } else { "off" };
        line += &format!(" cluster_size={} extended_l2={ext}", p.o.cluster_size);
        if let Some(v) = &p.prealloc {
            line += &format!(" preallocation={v}");
        }
        line += &format!(" compression_type={} size={size}", p.compression_text);
        let optional = [
            ("compat", &p.compat_text),
            ("backing_file", &p.backing),
            ("backing_fmt", &p.backing_fmt),
            ("data_file", &p.o.data_file),
            ("data_file_raw", &p.raw_text),
        ];
        for (key, value) in optional {
            if let Some(v) = value {
                line += &format!(" {key}={v}");
            }
        }
        line += &format!(
            " lazy_refcounts={} refcount_bits={}",
            p.lazy_text, p.o.refcount_bits
        );
    } else {
        line += &format!(" size={size}");
        if let Some(v) = &p.prealloc {
            line += &format!(" preallocation={v}");
        }
    }
    if let Some(h) = p.extent_hint {
        // QEMU prints the option as a signed 64-bit number.
        line += &format!(" extent_size_hint={}", h as i64);
    }
    line
}

/// The checks qemu-img makes after the "Formatting" line, and the driver options they leave.
fn final_options(p: Parsed, qcow2: bool, size: u64) -> Result<CreateOptions> {
    let mut o = p.o;
    if p.extent_hint.is_some_and(|h| h > u32::MAX as u64) {
        return Err(Error::generic("Extent size hint is too large"));
    }
    // Refuse a bad cluster size before the file is touched (the driver checks the rest before
    // it writes, but only after the file has been created and truncated). QEMU refuses
    // extended L2 entries on a v2 image even before that.
    if qcow2 && o.extended_l2 && o.compat == Compat::V2 {
        return Err(Error::generic(
            "Extended L2 entries are only supported with compatibility level 1.1 and above (use version=v3 or greater)",
        ));
    }
    if qcow2 && (!o.cluster_size.is_power_of_two() || !(512..=(2 << 20)).contains(&o.cluster_size))
    {
        return Err(Error::generic(
            "Cluster size must be a power of two between 512 and 2048k",
        ));
    }
    // qemu rounds raw sizes up to whole sectors; qcow2 requires them.
    o.size = if qcow2 {
        size
    } else {
        size.div_ceil(512) * 512
    };
    if o.data_file_raw && p.backing.is_some() {
        return Err(Error::generic(
            "Backing file and data-file-raw cannot be used at the same time",
        ));
    }
    o.backing_file = p.backing;
    o.backing_fmt = p.backing_fmt;
    if o.data_file_raw && o.data_file.is_none() {
        return Err(Error::generic("data-file-raw requires data-file"));
    }
    Ok(o)
}

/// The short-lived user that writes a new image.
struct Creator;

impl ParentOps for Creator {
    fn describe(&self) -> String {
        "blk create".into()
    }
}

async fn write_image(
    tool: &Tool,
    path: &str,
    qcow2: bool,
    o: &CreateOptions,
    prealloc: Prealloc,
) -> engine::Result<()> {
    tool.check_unlocked(path)?;
    let existed = tool.env.fs().exists(path);
    let r = write_new_image(tool, path, qcow2, o, prealloc).await;
    if r.is_err() && !existed {
        // As qemu-img: a refused create leaves no half-made image behind (a file that was
        // there before has been truncated already; that is qemu-img's behaviour too).
        let _ = tool.env.fs().remove(path);
    }
    r
}

async fn write_new_image(
    tool: &Tool,
    path: &str,
    qcow2: bool,
    o: &CreateOptions,
    prealloc: Prealloc,
) -> engine::Result<()> {
    engine::drivers::create_host_file(&*tool.env, path)?;
    let spec = Options::new(json!({"driver": "file", "filename": path}))?;
    let node = open_node(tool.engine.graph(), spec).await?;
    let creator: Rc<dyn ParentOps> = Rc::new(Creator);
    let weak: Weak<dyn ParentOps> = Rc::downgrade(&creator);
    let all = Perms::CONSISTENT_READ | Perms::WRITE | Perms::RESIZE;
    let child = attach_external(weak, &node, "create", all, Perms::ALL)?;
    let made = async {
        if qcow2 {
            return qcow2::create(&child, o).await;
        }
        if let Some(built) = &o.encrypt {
            return engine::drivers::luks::create(&child, built, o.size).await;
        }
        child.truncate(o.size, true, prealloc).await?;
        if prealloc == Prealloc::Off && o.size > 0 {
            // As QEMU's file driver does: allocate the first block, so that later probing of
            // the alignment works and the image is not entirely a hole.
            let n = o.size.min(4096) as usize;
            child.write(0, IoBuf::new(n), ReqFlags::NONE).await.1?;
        }
        Ok(())
    }
    .await;
    let flushed = child.flush().await;
    detach(child.edge()).await?;
    made.and(flushed)
}

/// Entry point of `blk create`.
pub fn run(args: &[String]) -> i32 {
    // qemu-img 10's long options, in its order where they share a prefix.
    let long = [
        ("help", 'h', false),
        ("quiet", 'q', false),
        ("format", 'f', true),
        ("backing", 'b', true),
        ("backing-format", 'F', true),
        ("backing-unsafe", 'u', false),
        super::OBJECT,
        ("options", 'o', true),
    ];
    let (opts, operands) = match split_or_fail("create", args, "F:b:f:o:quh", &long, USAGE) {
        Ok(v) => v,
        Err(code) => return code,
    };
    let mut spec = CreateSpec {
        fmt: "raw".into(),
        ..CreateSpec::default()
    };
    if let Some(code) = super::opt_help::answer(&opts, 'f', operands.first().map(String::as_str)) {
        return code;
    }
    for (c, v) in opts {
        match c {
            'f' => spec.fmt = v,
            'o' => {
                if let Err(e) = parse_o(&v, &mut spec.opts) {
                    return fail(e);
                }
            }
            'b' => spec.backing = Some(v),
            'F' => spec.backing_fmt = Some(v),
            'u' => spec.unsafe_backing = true,
            'q' => spec.quiet = true,
            _ => unreachable!("option {c} is in the option string"),
        }
    }
    let (path, size) = match operands.as_slice() {
        [p] => (p.clone(), None),
        [p, s] => match in_range("image size", s, strtosz(s), 0, i64::MAX as u64) {
            Ok(n) => (p.clone(), Some(n)),
            Err(e) => return fail(e),
        },
        _ => {
            return crate::cli::prog::usage_error("create", "Expecting image file name");
        }
    };
    spec.size = size;
    let tool = Tool::new();
    let r = tool.block_on(create_image(&tool, &path, &spec));
    let fin = tool.finish();
    match r.and(fin) {
        Ok(()) => 0,
        Err(e) => fail(format!("{path}: {e}")),
    }
}
