//! `blk snapshot [-f FMT | --image-opts] [-l | -a|-c|-d SNAPSHOT] [-U] [-q] [--object OBJDEF]
//! FILENAME`: qemu-img snapshot, on the image's internal snapshots (listing is the default).
//!
//! The work is the format's (`FormatOps::snapshots`, `snapshot_create`, `snapshot_goto`,
//! `snapshot_delete`); this file parses qemu-img's command line, prints its table (shared with
//! `blk info`: `table_text`, `json_list`) and words its errors as qemu-img does: create and
//! apply report the errno, delete the format's message.

use engine::driver::{NewSnapshot, SnapshotInfo};
use engine::{Error, Result};
use serde_json::Value;

use super::human::size_to_str;
use super::open::Tool;
use super::{fail, split_or_fail};

const USAGE: &str = "\
Usage: blk snapshot [-f FMT | --image-opts] [-l | -a|-c|-d SNAPSHOT] [-U] [-q]
                    [--object OBJDEF] FILENAME
List or manipulate the internal snapshots of an image, as qemu-img snapshot does.

  -l, --list            list the snapshots of FILENAME (the default)
  -c, --create SNAPSHOT  create snapshot SNAPSHOT
  -a, --apply SNAPSHOT  revert the disk to SNAPSHOT (id or name)
  -d, --delete SNAPSHOT  delete snapshot SNAPSHOT (by name)
  -f, --format FMT      image format (probed when omitted)
  -U, --force-share     open the image shared (listing only)
  -q, --quiet           quiet operation";

/// What the command does.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Action {
    List,
    Create(String),
    Apply(String),
    Delete(String),
}

/// The parsed command line.
struct Args {
    action: Action,
    fmt: Option<String>,
    share: bool,
    path: String,
}

/// Entry point of `blk snapshot`.
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

/// The options and operand, with qemu-img's refusals.
fn parse(args: &[String]) -> std::result::Result<Args, i32> {
    let long = [
        ("help", 'h', false),
        ("object", 'O', true),
        ("image-opts", 'I', false),
        ("quiet", 'q', false),
        ("format", 'f', true),
        ("force-share", 'U', false),
        ("list", 'l', false),
        ("apply", 'a', true),
        ("create", 'c', true),
        ("delete", 'd', true),
    ];
    let (opts, operands) = split_or_fail("snapshot", args, "la:c:d:f:hqU", &long, USAGE)?;
    let mut action = None;
    let (mut fmt, mut share) = (None, false);
    for (c, v) in opts {
        let act = match c {
            'l' => Action::List,
            'a' => Action::Apply(v),
            'c' => Action::Create(v),
            'd' => Action::Delete(v),
            'f' => {
                fmt = Some(v);
                continue;
            }
            'U' => {
                share = true;
                continue;
            }
            // Nothing is printed on success anyway.
            'q' => continue,
            _ => unreachable!("option {c} is in the option table"),
        };
        if action.is_some() {
            return Err(usage_error("Cannot mix '-l', '-a', '-c', '-d'"));
        }
        action = Some(act);
    }
    let [path] = operands.as_slice() else {
        return Err(usage_error("Expecting one image file name"));
    };
    Ok(Args {
        action: action.unwrap_or(Action::List),
        fmt,
        share,
        path: path.clone(),
    })
}

/// qemu-img's usage error: the message and the `--help` hint, status 1.
fn usage_error(msg: &str) -> i32 {
    let name = crate::cli::prog::name();
    fail(format!("{msg}\nTry '{name} snapshot --help' for more info"))
}

/// Open the image and do the action.
async fn apply(tool: &Tool, a: &Args) -> Result<()> {
    let read_only = a.action == Action::List;
    let img = tool
        .open(&a.path, a.fmt.as_deref(), read_only, a.share)
        .await?;
    // Formats without internal snapshots answer as QEMU's generic layer does.
    let ops = img.node.driver().format_ops().filter(|o| o.can_snapshot());
    match &a.action {
        Action::List => {
            let list = ops.map(|o| o.snapshots()).unwrap_or_default();
            if !list.is_empty() {
                print!("Snapshot list:\n{}", table_text(&list));
            }
            Ok(())
        }
        Action::Create(name) => {
            let ns = tool.engine.env().wall_clock_ns();
            let spec = NewSnapshot {
                id: None,
                name: name.clone(),
                date_sec: (ns / 1_000_000_000) as u32,
                date_nsec: (ns % 1_000_000_000) as u32,
                vm_clock_nsec: 0,
                icount: Some(0),
            };
            let r = match ops {
                Some(o) => o.snapshot_create(spec).await.map(drop),
                None => Err(Error::io(engine::Errno::ENOTSUP)),
            };
            r.map_err(|e| {
                Error::generic(format!(
                    "Could not create snapshot '{name}': {}",
                    e.strerror()
                ))
            })
        }
        Action::Apply(key) => {
            let Some(o) = ops else {
                return Err(Error::generic(format!(
                    "Could not apply snapshot '{key}': Block driver does not support snapshots"
                )));
            };
            o.snapshot_goto(key).await.map_err(|e| {
                Error::generic(format!(
                    "Could not apply snapshot '{key}': Failed to load snapshot: {}",
                    e.strerror()
                ))
            })
        }
        Action::Delete(name) => {
            let r = match ops {
                Some(o) => o.snapshot_delete(None, Some(name)).await.map(drop),
                None => Err(Error::generic("snapshot not found")),
            };
            r.map_err(|e| Error::generic(format!("Could not delete snapshot '{name}': {e}")))
        }
    }
}

/// qemu-img's snapshot table: the header line and one line per snapshot.
pub(crate) fn table_text(list: &[SnapshotInfo]) -> String {
    let mut s = format!(
        "{:<7} {:<16} {:>8} {:>19} {:>15} {:>10}\n",
        "ID", "TAG", "VM_SIZE", "DATE", "VM_CLOCK", "ICOUNT"
    );
    for sn in list {
        let secs = sn.vm_clock_nsec / 1_000_000_000;
        let clock = format!(
            "{:04}:{:02}:{:02}.{:03}",
            secs / 3600,
            (secs / 60) % 60,
            secs % 60,
            (sn.vm_clock_nsec / 1_000_000) % 1000
        );
        let icount = sn.icount.map(|i| i.to_string()).unwrap_or_default();
        s += &format!(
            "{:<7} {:<16} {:>8} {:>19} {:>15} {:>10}\n",
            sn.id,
            sn.name,
            size_to_str(sn.vm_state_size),
            local_date(sn.date_sec),
            clock,
            icount
        );
    }
    s
}

/// The snapshots as `qemu-img info --output=json` lists them.
pub(crate) fn json_list(list: &[SnapshotInfo]) -> Value {
    Value::Array(list.iter().map(SnapshotInfo::to_qapi).collect())
}

/// The snapshots of an info object's `snapshots` list (`json_list`'s output) again.
pub(crate) fn from_json(list: &Value) -> Vec<SnapshotInfo> {
    let num = |v: &Value, k: &str| v[k].as_u64().unwrap_or(0);
    list.as_array()
        .into_iter()
        .flatten()
        .map(|v| SnapshotInfo {
            id: v["id"].as_str().unwrap_or("").to_string(),
            name: v["name"].as_str().unwrap_or("").to_string(),
            vm_state_size: num(v, "vm-state-size"),
            date_sec: num(v, "date-sec") as u32,
            date_nsec: num(v, "date-nsec") as u32,
            vm_clock_nsec: num(v, "vm-clock-sec") * 1_000_000_000 + num(v, "vm-clock-nsec"),
            icount: v["icount"].as_u64(),
            disk_size: None,
        })
        .collect()
}

// The C library's time zone set-up (the libc crate does not declare it).
unsafe extern "C" {
    fn tzset();
}

/// `secs` since the epoch as local time "YYYY-MM-DD HH:MM:SS" (the C library's idea of the
/// local zone, `TZ` included, as qemu-img prints it).
fn local_date(secs: u32) -> String {
    let t = secs as libc::time_t;
    // SAFETY: tzset only reads the environment; `tm` is plain data that localtime_r fills,
    // and both pointers are valid for the call.
    let (ok, tm) = unsafe {
        tzset();
        let mut tm: libc::tm = std::mem::zeroed();
        let ok = !libc::localtime_r(&t, &mut tm).is_null();
        (ok, tm)
    };
    if !ok {
        return String::new();
    }
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}
