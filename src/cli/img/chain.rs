//! What `blk commit` and `blk rebase` share: finding an image's backing chain (file names and
//! formats, as the headers record them), reopening it with chosen nodes writable (backing files
//! open read-only by default, and the jobs write into them), `-t` cache modes, and running an
//! internal job to its end with qemu-img's progress line.

use std::cell::RefCell;
use std::rc::Rc;

use engine::Result;
use engine::graph::Node;
use engine::job::Job;
use serde_json::{Value, json};

use super::open::Tool;
use super::progress::{Progress, Steps};

/// One image of a chain: its file name (as opened) and format.
#[derive(Clone, Debug)]
pub(crate) struct Layer {
    pub path: String,
    pub format: String,
}

/// `-t`: (cache.direct, cache.no-flush) of QEMU's cache mode names, or qemu-img's error.
pub(crate) fn cache_mode(mode: &str) -> Result<(bool, bool)> {
    super::open::parse_cache(mode).map(|c| (c.direct(), c.no_flush()))
}

/// The chain of `path` (opened as `fmt`, probed when `None`), top first.
pub(crate) async fn discover(tool: &Tool, path: &str, fmt: Option<&str>) -> Result<Vec<Layer>> {
    let img = tool.open(path, fmt, true, true).await?;
    let mut layers = vec![Layer {
        path: path.to_string(),
        format: img.format.clone(),
    }];
    let mut n = img.node.backing().map(|e| e.child_node());
    while let Some(node) = n {
        layers.push(Layer {
            path: node.driver().filename(),
            format: node.driver_name().to_string(),
        });
        n = node.backing().map(|e| e.child_node());
    }
    tool.close(img).await;
    Ok(layers)
}

/// Open `layers` as one chain of named nodes `chain0` (top) .. `chainN`, explicitly, with
/// `writable[i]` saying which may be written. Returns the nodes, top first.
pub(crate) async fn open_chain(
    tool: &Tool,
    layers: &[Layer],
    writable: &[bool],
    cache: (bool, bool),
    unmap: bool,
) -> Result<Vec<Rc<Node>>> {
    let mut spec = Value::Null;
    for (i, l) in layers.iter().enumerate().rev() {
        let mut s = json!({
            "driver": l.format, "node-name": format!("chain{i}"),
            "read-only": !writable[i],
            "discard": if unmap { "unmap" } else { "ignore" },
            "cache": {"direct": cache.0, "no-flush": cache.1},
            "file": {"driver": "file", "filename": l.path,
                     "cache": {"direct": cache.0, "no-flush": cache.1}},
        });
        if l.format == "qcow2" {
            s["backing"] = spec;
        }
        spec = s;
    }
    tool.engine
        .blockdev_add(spec)
        .await
        .map_err(|e| e.could_not_open(&layers[0].path))?;
    Ok((0..layers.len())
        .map(|i| tool.engine.node(&format!("chain{i}")).expect("opened"))
        .collect())
}

/// The index of `name` in the chain below the top, matched as written or relative to the
/// directory of the image above it (qemu-img's backing chain lookup).
pub(crate) fn find_in_chain(layers: &[Layer], name: &str) -> Option<usize> {
    (1..layers.len())
        .find(|&i| engine::filename::names_backing(&layers[i].path, &layers[i - 1].path, name))
}

/// Wait for an internal job to finish, updating the progress line; the job's error if any.
pub(crate) async fn finish_job(tool: &Tool, job: &Rc<Job>, progress: bool) -> Result<()> {
    // In hundredths of a percent: the job sets its total only once it runs.
    let mut p = Progress::new(progress, 10_000);
    wait_job(tool, job, |cur, total| {
        if total > 0 {
            p.update((cur as u128 * 10_000 / total as u128) as u64);
        }
    })
    .await?;
    p.finish();
    Ok(())
}

/// qemu-img rebase's copy loop, in steps of this many bytes: its progress line moves per step.
const REBASE_STEP: u64 = 2 << 20;

/// [`finish_job`] for the rebase job of an image of `size` bytes, with qemu-img rebase's
/// progress lines: one step of `100 / (size / step)` percent (integer division, as qemu-img
/// computes it) per 2 MiB of the image done, the line capped at 100%, and 100% once more at
/// the end (the caller ends the line).
pub(crate) async fn finish_rebase_job(
    tool: &Tool,
    job: &Rc<Job>,
    steps: &RefCell<Steps>,
    size: u64,
) -> Result<()> {
    let step_pct = 100.0 / (size / size.clamp(1, REBASE_STEP)).max(1) as f32;
    let all_steps = size.div_ceil(REBASE_STEP);
    let mut shown = 0;
    wait_job(tool, job, |cur, total| {
        let done = if total > 0 && cur >= total {
            all_steps
        } else {
            cur / REBASE_STEP
        };
        while shown < done {
            steps.borrow_mut().add_percent(step_pct);
            shown += 1;
        }
    })
    .await?;
    steps.borrow_mut().complete();
    Ok(())
}

/// Run the loop that waits for `job`, telling `tick` its progress (done, total) now and then.
async fn wait_job(tool: &Tool, job: &Rc<Job>, mut tick: impl FnMut(u64, u64)) -> Result<()> {
    let env = tool.engine.env().clone();
    loop {
        let done = matches!(job.status().as_str(), "concluded" | "null");
        let (cur, total) = job.progress();
        tick(cur, total);
        if done {
            break;
        }
        let next = env.now_ns() + 20_000_000;
        let _ = engine::util::race(job.wait_concluded(), env.sleep_until(next)).await;
    }
    match job.error() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
