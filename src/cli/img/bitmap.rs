//! `blk bitmap (--merge SOURCE | --add | --remove | --clear | --enable | --disable)...
//! [-f FMT | --image-opts] [-b SOURCE_FILE [-F SOURCE_FMT]] [-g GRANULARITY] [--object OBJDEF]
//! FILENAME BITMAP`: qemu-img bitmap, on the image's persistent bitmaps.
//!
//! The image's stored bitmaps are live bitmaps of its node once it is open; each action is the
//! engine's QMP verb on them (`block-dirty-bitmap-add` with persistent=true, `-remove`, which
//! also removes it from the image, `-clear`, `-enable`, `-disable`, `-merge`), as qemu-img
//! does, and the node stores them back when it closes. The actions run in the order given; the
//! first that fails stops the command with qemu-img's "Operation ACTION on bitmap NAME failed:
//! WHY", and what the earlier ones did stays (stored at close, failure or not).

use engine::engine::{BitmapAddArgs, BitmapRef};
use engine::graph::Node;
use engine::{Engine, Error, Result};

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
        run_action(&tool.engine, img.node.name(), src_node.name(), act, a)
            .await
            .map_err(|e| {
                Error::generic(format!(
                    "Operation {} on bitmap {} failed: {}",
                    act.verb(),
                    a.bitmap,
                    with_hint(e.message())
                ))
            })?;
    }
    Ok(())
}

/// The hint QEMU's tools print under a refusal of an inconsistent bitmap (QMP leaves it out).
fn with_hint(msg: String) -> String {
    if msg.ends_with("is inconsistent and cannot be used") {
        format!("{msg}\nTry block-dirty-bitmap-remove to delete this bitmap from disk")
    } else {
        msg
    }
}

/// One action on bitmap `a.bitmap` of node `node`, through the engine's bitmap verbs on the
/// node's live bitmaps, as qemu-img runs the QMP commands: what they leave is stored when the
/// image closes. `src` is the node holding the merge source.
async fn run_action(engine: &Engine, node: &str, src: &str, act: &Action, a: &Args) -> Result<()> {
    let name = a.bitmap.as_str();
    match act {
        Action::Add => {
            // QMP carries the granularity as 32 bits; 0 asks for the default.
            let g = a.granularity as u32 as u64;
            let args = BitmapAddArgs {
                node: node.to_string(),
                name: name.to_string(),
                granularity: (a.granularity != 0).then_some(g),
                persistent: true,
                disabled: false,
            };
            engine.bitmap_add(&args).map(drop)
        }
        Action::Remove => engine.bitmap_remove(node, name).await,
        Action::Clear => engine.bitmap_clear(node, name),
        Action::Enable => engine.bitmap_set_enabled(node, name, true),
        Action::Disable => engine.bitmap_set_enabled(node, name, false),
        Action::Merge(from) => {
            let source = BitmapRef::Node {
                node: src.to_string(),
                name: from.clone(),
            };
            engine.bitmap_merge(node, name, &[source])
        }
    }
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

/// `convert --bitmaps`: every consistent bitmap of node `src` becomes a persistent bitmap of
/// node `dst` with its name, granularity, recording state and bits (stored when `dst`
/// closes), as qemu-img adds and merges them; an inconsistent one is skipped with QEMU's
/// warning (`convert` refused it earlier unless `--skip-broken-bitmaps`).
pub(crate) async fn copy_bitmaps(engine: &Engine, src: &Node, dst: &Node) -> Result<()> {
    for b in src.bitmaps().all() {
        if !b.persistent() {
            continue;
        }
        if b.inconsistent() {
            eprintln!(
                "{}: warning: Skipping inconsistent bitmap '{}'",
                crate::cli::prog::name(),
                b.name()
            );
            continue;
        }
        let args = BitmapAddArgs {
            node: dst.name().to_string(),
            name: b.name(),
            granularity: Some(b.granularity()),
            persistent: true,
            disabled: !b.recording(),
        };
        engine.bitmap_add(&args)?;
        let source = BitmapRef::Node {
            node: src.name().to_string(),
            name: b.name(),
        };
        engine.bitmap_merge(dst.name(), &b.name(), &[source])?;
    }
    Ok(())
}
