//! `blk bitmap (--merge SOURCE | --add | --remove | --clear | --enable | --disable)...
//! [-f FMT | --image-opts] [-b SOURCE_FILE [-F SOURCE_FMT]] [-g GRANULARITY] [--object OBJDEF]
//! FILENAME BITMAP`: qemu-img bitmap, on the image's stored persistent bitmaps.
//!
//! The actions run in the order given; the first that fails stops the command with qemu-img's
//! "Operation ACTION on bitmap NAME failed: WHY", and what the earlier ones did stays (QEMU
//! stores its bitmaps when it closes the image, failure or not). The work goes through the
//! format verbs (`FormatOps::stored_bitmaps`, `load_bitmap`, `store_bitmaps`,
//! `remove_bitmap`): bitmaps are loaded when an action needs their bits, and only those an
//! action changed are stored again, which leaves the others exactly as QEMU's close would.

use std::rc::Rc;

use engine::bitmap::HBits;
use engine::driver::{BitmapToStore, FormatOps};
use engine::graph::Node;
use engine::{Error, Result};

use super::number::{in_range, strtosz};
use super::open::Tool;
use super::{fail, split_or_fail};

const USAGE: &str = "\
Usage: blk bitmap (--merge SOURCE | --add | --remove | --clear | --enable | --disable)...
                  [-f FMT | --image-opts] [-b SRC_FILENAME [-F SOURCE_FMT]] [-g SIZE]
                  [--object OBJDEF] FILENAME BITMAP
Change the persistent bitmaps of an image, as qemu-img bitmap does; the actions run in order.

  --add             create BITMAP, recording future writes
  -g, --granularity SIZE  granularity of the bitmap --add creates
  --remove          remove BITMAP
  --clear           clear every bit of BITMAP
  --enable, --disable  start or stop recording writes into BITMAP
  --merge SOURCE    merge bitmap SOURCE into BITMAP
  -b, --source-file SRC_FILENAME  take SOURCE from this image (for --merge)
  -F, --source-format SOURCE_FMT  format of SRC_FILENAME
  -f, --format FMT  image format (probed when omitted)";

/// One action, in command-line order.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Action {
    Add,
    Remove,
    Clear,
    Enable,
    Disable,
    Merge(String),
}

impl Action {
    /// The name qemu-img's failure message uses.
    fn verb(&self) -> &'static str {
        match self {
            Action::Add => "add",
            Action::Remove => "remove",
            Action::Clear => "clear",
            Action::Enable => "enable",
            Action::Disable => "disable",
            Action::Merge(_) => "merge",
        }
    }
}

/// The parsed command line.
struct Args {
    actions: Vec<Action>,
    fmt: Option<String>,
    granularity: u64,
    src_file: Option<String>,
    src_fmt: Option<String>,
    path: String,
    bitmap: String,
}

/// Entry point of `blk bitmap`.
pub fn run(args: &[String]) -> i32 {
    let a = match parse(args) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let tool = Tool::new();
    let result = tool.block_on(apply(&tool, &a));
    let fin = tool.finish();
    match result.and(fin) {
        Ok(()) => 0,
        Err(e) => fail(e),
    }
}

/// The options and operands, with qemu-img's refusals in its order.
fn parse(args: &[String]) -> std::result::Result<Args, i32> {
    let long = [
        ("help", 'h', false),
        ("object", 'O', true),
        ("image-opts", 'I', false),
        ("add", 'A', false),
        ("remove", 'R', false),
        ("clear", 'C', false),
        ("enable", 'E', false),
        ("disable", 'D', false),
        ("merge", 'M', true),
        ("granularity", 'g', true),
        ("source-file", 'b', true),
        ("source-format", 'F', true),
        ("format", 'f', true),
    ];
    let (opts, operands) = split_or_fail("bitmap", args, "b:f:F:g:h", &long, USAGE)?;
    let mut a = Args {
        actions: Vec::new(),
        fmt: None,
        granularity: 0,
        src_file: None,
        src_fmt: None,
        path: String::new(),
        bitmap: String::new(),
    };
    for (c, v) in opts {
        match c {
            'A' => a.actions.push(Action::Add),
            'R' => a.actions.push(Action::Remove),
            'C' => a.actions.push(Action::Clear),
            'E' => a.actions.push(Action::Enable),
            'D' => a.actions.push(Action::Disable),
            'M' => a.actions.push(Action::Merge(v)),
            'g' => {
                a.granularity =
                    in_range("granularity", &v, strtosz(&v), 0, i64::MAX as u64).map_err(fail)?
            }
            'b' => a.src_file = Some(v),
            'F' => a.src_fmt = Some(v),
            'f' => a.fmt = Some(v),
            _ => unreachable!("option {c} is in the option table"),
        }
    }
    let refuse = |msg: &str| Err(fail(msg));
    if a.actions.is_empty() {
        return refuse(
            "Need at least one of --add, --remove, --clear, --enable, --disable, or --merge",
        );
    }
    if a.granularity != 0 && !a.actions.contains(&Action::Add) {
        return refuse("granularity only supported with --add");
    }
    if a.src_fmt.is_some() && a.src_file.is_none() {
        return refuse("-F only supported with -b");
    }
    let merges = a.actions.iter().any(|x| matches!(x, Action::Merge(_)));
    if a.src_file.is_some() && !merges {
        return refuse("Merge bitmap source file only supported with --merge");
    }
    let [path, bitmap] = operands.as_slice() else {
        return refuse("Expecting filename and bitmap name");
    };
    a.path = path.clone();
    a.bitmap = bitmap.clone();
    Ok(a)
}

/// Open the image (and the merge source) and run the actions.
async fn apply(tool: &Tool, a: &Args) -> Result<()> {
    let img = tool.open(&a.path, a.fmt.as_deref(), false, false).await?;
    tool.image_opts.set(false);
    let src = match &a.src_file {
        Some(f) => Some(tool.open(f, a.src_fmt.as_deref(), true, false).await?),
        None => None,
    };
    let src_node = src.as_ref().map_or(&img.node, |s| &s.node);
    for act in &a.actions {
        run_action(&img.node, src_node, act, a).await.map_err(|e| {
            Error::generic(format!(
                "Operation {} on bitmap {} failed: {e}",
                act.verb(),
                a.bitmap
            ))
        })?;
    }
    Ok(())
}

/// What a stored bitmap looks like to an action.
struct Found {
    granularity: u64,
    enabled: bool,
}

/// The stored bitmap `name` of `node`, as QEMU finds a bitmap by name; an inconsistent one
/// (in use) is refused unless `any`.
async fn find(node: &Node, name: &str, any: bool) -> Result<Found> {
    let list = match ops(node) {
        Ok(o) => o.stored_bitmaps().await?,
        // A format without persistent bitmaps has none to find.
        Err(_) => Vec::new(),
    };
    let b = list
        .iter()
        .find(|b| b.name == name)
        .ok_or_else(|| Error::generic(format!("Dirty bitmap '{name}' not found")))?;
    if b.in_use && !any {
        return Err(Error::generic(format!(
            "Bitmap '{name}' is inconsistent and cannot be used\n\
             Try block-dirty-bitmap-remove to delete this bitmap from disk"
        )));
    }
    Ok(Found {
        granularity: b.granularity,
        enabled: b.auto,
    })
}

/// The format verbs of `node`, or QEMU's refusal for a format without persistent bitmaps.
fn ops(node: &Node) -> Result<&dyn FormatOps> {
    node.driver()
        .format_ops()
        .filter(|_| node.driver_name() == "qcow2")
        .ok_or_else(|| {
            Error::generic(format!(
                "Can't store persistent bitmaps to {}: Operation not supported",
                node.name()
            ))
        })
}

/// Store one bitmap of `node` with its new state.
async fn store(
    node: &Node,
    name: &str,
    granularity: u64,
    enabled: bool,
    bits: &HBits,
) -> Result<()> {
    let set = [BitmapToStore {
        name,
        granularity,
        enabled,
        bits,
    }];
    ops(node)?.store_bitmaps(&set).await
}

/// One action on bitmap `a.bitmap` of `node`; `src` holds the merge source.
async fn run_action(node: &Rc<Node>, src: &Rc<Node>, act: &Action, a: &Args) -> Result<()> {
    let name = a.bitmap.as_str();
    match act {
        Action::Add => add(node, name, a.granularity).await,
        Action::Remove => {
            find(node, name, true).await?;
            ops(node)?.remove_bitmap(name).await.map(|_| ())
        }
        Action::Clear => {
            let f = find(node, name, false).await?;
            let n = node.len().div_ceil(f.granularity);
            store(node, name, f.granularity, f.enabled, &HBits::new(n)).await
        }
        Action::Enable | Action::Disable => {
            let f = find(node, name, false).await?;
            let on = *act == Action::Enable;
            if f.enabled == on {
                return Ok(());
            }
            let bits = ops(node)?.load_bitmap(name).await?;
            store(node, name, f.granularity, on, &bits).await
        }
        Action::Merge(from) => merge(node, name, src, from).await,
    }
}

/// `--add`: QEMU's checks in its order (name, granularity, where it can be stored, then
/// whether it exists). `granularity` 0 takes the default: the cluster size, at least 4 KiB.
async fn add(node: &Rc<Node>, name: &str, granularity: u64) -> Result<()> {
    if name.is_empty() {
        return Err(Error::generic("Bitmap name cannot be empty"));
    }
    // QMP carries the granularity as 32 bits.
    let g = granularity as u32 as u64;
    if granularity != 0 && (g < 512 || !g.is_power_of_two()) {
        return Err(Error::generic(
            "Granularity must be power of 2 and at least 512",
        ));
    }
    let g = if granularity == 0 {
        node.driver().image_info().cluster_size.max(4096)
    } else {
        g
    };
    let o = ops(node)?;
    // QEMU checks where the bitmap can be stored (its constraints) before whether it exists,
    // and words the refusal as a bitmap that cannot be made persistent.
    let n = node.len().div_ceil(g);
    let exists = o.stored_bitmaps().await?.iter().any(|b| b.name == name);
    let trial = BitmapToStore {
        name,
        granularity: g,
        enabled: true,
        bits: &HBits::new(n),
    };
    if let Err(e) = o.check_bitmap_constraints(&trial) {
        let why = e.message();
        let prefix = format!("Bitmap '{name}' doesn't satisfy the constraints: ");
        return Err(Error::generic(format!(
            "Can't make bitmap '{name}' persistent in '{}': {}",
            node.name(),
            why.strip_prefix(&prefix).unwrap_or(&why)
        )));
    }
    if exists {
        return Err(Error::generic(format!("Bitmap already exists: {name}")));
    }
    store(node, name, g, true, &HBits::new(n)).await
}

/// `--merge FROM`: the bits of `from` (on `src`, this image unless `-b`) are added to
/// `name`; granularities may differ (each set bit of the source marks the bytes it covers).
async fn merge(node: &Rc<Node>, name: &str, src: &Rc<Node>, from: &str) -> Result<()> {
    let dst = find(node, name, false).await?;
    let sf = find(src, from, false).await?;
    if src.len() != node.len() {
        return Err(Error::generic(
            "Bitmaps are incompatible and can't be merged",
        ));
    }
    let mut bits = ops(node)?.load_bitmap(name).await?;
    let theirs = ops(src)?.load_bitmap(from).await?;
    if sf.granularity == dst.granularity {
        bits.union_with(&theirs);
    } else {
        let len = node.len();
        for (start, n) in theirs.runs() {
            let (b0, b1) = (
                start * sf.granularity,
                ((start + n) * sf.granularity).min(len),
            );
            bits.set_range(b0 / dst.granularity, b1.div_ceil(dst.granularity));
        }
    }
    store(node, name, dst.granularity, dst.enabled, &bits).await
}

/// QEMU's warning when it opens an image whose bitmaps extension lost its autoclear bit (a
/// program without bitmap support wrote the image): the bitmaps are ignored. Printed as QEMU
/// prints it, the second line without a newline.
pub(crate) fn stale_bitmaps_warning(path: &str) -> Option<String> {
    let h = super::info::read_qcow2_header(path).ok()?;
    let has_ext = h.unknown_exts.iter().any(|e| e.magic == 0x2385_2875);
    if !has_ext || h.autoclear & 1 != 0 {
        return None;
    }
    let what = if h.version < 3 {
        "This qcow2 v2 image contains bitmaps, but they may have been modified by a program \
         without persistent bitmap support; so now they must all be considered inconsistent"
    } else {
        "a program lacking bitmap support modified this file, so all bitmaps are now \
         considered inconsistent"
    };
    Some(format!(
        "{}: warning: {what}\nSome clusters may be leaked, run 'qemu-img check -r' on the \
         image file to fix.",
        crate::cli::prog::name()
    ))
}

/// `convert --bitmaps`: store every consistent bitmap of `src` on `dst` (same name,
/// granularity, enabled state and bits); an inconsistent one is skipped with QEMU's warning
/// (`convert` refused it earlier unless `--skip-broken-bitmaps`).
pub(crate) async fn copy_bitmaps(src: &Node, dst: &Node) -> Result<()> {
    let from = ops(src)?;
    let mut kept = Vec::new();
    for b in from.stored_bitmaps().await? {
        if b.in_use {
            eprintln!(
                "{}: warning: Skipping inconsistent bitmap '{}'",
                crate::cli::prog::name(),
                b.name
            );
            continue;
        }
        let bits = from.load_bitmap(&b.name).await?;
        kept.push((b, bits));
    }
    if kept.is_empty() {
        return Ok(());
    }
    let set: Vec<BitmapToStore<'_>> = kept
        .iter()
        .map(|(b, bits)| BitmapToStore {
            name: &b.name,
            granularity: b.granularity,
            enabled: b.auto,
            bits,
        })
        .collect();
    ops(dst)?.store_bitmaps(&set).await
}
