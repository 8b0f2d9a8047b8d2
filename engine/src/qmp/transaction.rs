//! QMP argument parsing of `transaction` (the action list and `properties`, with QAPI's messages
//! naming `actions[i]...`), of the snapshot commands (`blockdev-snapshot-sync`,
//! `blockdev-snapshot`, one-action transactions as in QEMU) and of `change-backing-file`.
//! The actions themselves are `crate::transaction`'s.
//!
//! Adding an action: implement `transaction::Action` and give its type a row in [`ACTIONS`].

use serde_json::{Value, json};

use crate::engine::{BitmapAddArgs, Engine, NewImageMode};
use crate::error::{Error, Result};
use crate::transaction::{
    AbortAction, Action, BackupAction, BitmapAction, BitmapVerb, CompletionMode, ExternalSnapshot,
    InternalSnapshot, SnapshotSource,
};
use crate::util::Options;

use super::backup::{common, drive_backup_args, take_enum};
use super::bitmaps::{granularity, merge_sources};

/// Turns an action's `data` into the action.
type Parse = fn(&mut Options) -> Result<Box<dyn Action>>;

/// The action types `transaction` knows.
const ACTIONS: &[(&str, Parse)] = &[
    ("abort", |_| Ok(Box::new(AbortAction))),
    ("block-dirty-bitmap-add", bitmap_add),
    ("block-dirty-bitmap-remove", |d| {
        let (node, name) = node_and_name(d)?;
        Ok(bitmap(BitmapVerb::Remove(node, name)))
    }),
    ("block-dirty-bitmap-clear", |d| {
        let (node, name) = node_and_name(d)?;
        Ok(bitmap(BitmapVerb::Clear(node, name)))
    }),
    ("block-dirty-bitmap-enable", |d| {
        let (node, name) = node_and_name(d)?;
        Ok(bitmap(BitmapVerb::SetEnabled(node, name, true)))
    }),
    ("block-dirty-bitmap-disable", |d| {
        let (node, name) = node_and_name(d)?;
        Ok(bitmap(BitmapVerb::SetEnabled(node, name, false)))
    }),
    ("block-dirty-bitmap-merge", |d| {
        let node = d.require_str("node")?;
        let target = d.require_str("target")?;
        let sources = merge_sources(d.take("bitmaps"))?;
        Ok(bitmap(BitmapVerb::Merge(node, target, sources)))
    }),
    ("blockdev-backup", |d| {
        Ok(Box::new(BackupAction::blockdev(common(d)?)))
    }),
    ("drive-backup", |d| {
        Ok(Box::new(BackupAction::drive(drive_backup_args(d)?)))
    }),
    ("blockdev-snapshot", |d| Ok(Box::new(snapshot_node(d)?))),
    ("blockdev-snapshot-sync", |d| {
        Ok(Box::new(snapshot_sync(d)?))
    }),
    ("blockdev-snapshot-internal-sync", |d| {
        let device = d.require_str("device")?;
        let name = d.require_str("name")?;
        Ok(Box::new(InternalSnapshot::new(device, name)))
    }),
];

fn bitmap(verb: BitmapVerb) -> Box<dyn Action> {
    Box::new(BitmapAction::new(verb))
}

fn node_and_name(d: &mut Options) -> Result<(String, String)> {
    let node = d.require_str("node")?;
    let name = d.require_str("name")?;
    Ok((node, name))
}

fn bitmap_add(d: &mut Options) -> Result<Box<dyn Action>> {
    let args = BitmapAddArgs {
        node: d.require_str("node")?,
        name: d.require_str("name")?,
        granularity: granularity(d.take("granularity"))?,
        persistent: d.take_bool("persistent")?.unwrap_or(false),
        disabled: d.take_bool("disabled")?.unwrap_or(false),
    };
    Ok(bitmap(BitmapVerb::Add(args)))
}

fn snapshot_sync(d: &mut Options) -> Result<ExternalSnapshot> {
    let device = d.take_str("device")?;
    let node_name = d.take_str("node-name")?;
    let file = d.require_str("snapshot-file")?;
    let overlay_name = d.take_str("snapshot-node-name")?;
    let format = d.take_str("format")?;
    let mode = take_enum(d, "mode", super::mirror::NEW_IMAGE_MODES)?
        .unwrap_or(NewImageMode::AbsolutePaths);
    Ok(ExternalSnapshot::new(SnapshotSource::Sync {
        device,
        node_name,
        file,
        overlay_name,
        format,
        mode,
    }))
}

fn snapshot_node(d: &mut Options) -> Result<ExternalSnapshot> {
    let node = d.require_str("node")?;
    let overlay = d.require_str("overlay")?;
    Ok(ExternalSnapshot::new(SnapshotSource::Node {
        node,
        overlay,
    }))
}

/// `blockdev-snapshot-sync`.
pub(super) async fn blockdev_snapshot_sync(engine: &Engine, mut args: Options) -> Result<Value> {
    let action = snapshot_sync(&mut args)?;
    args.finish()?;
    crate::transaction::run_one(engine, Box::new(action)).await?;
    Ok(json!({}))
}

/// `blockdev-snapshot`.
pub(super) async fn blockdev_snapshot(engine: &Engine, mut args: Options) -> Result<Value> {
    let action = snapshot_node(&mut args)?;
    args.finish()?;
    crate::transaction::run_one(engine, Box::new(action)).await?;
    Ok(json!({}))
}

/// `change-backing-file`.
pub(super) async fn change_backing_file(engine: &Engine, mut args: Options) -> Result<Value> {
    let device = args.require_str("device")?;
    let image = args.require_str("image-node-name")?;
    let backing = args.require_str("backing-file")?;
    args.finish()?;
    engine
        .change_backing_file(&device, &image, &backing)
        .await?;
    Ok(json!({}))
}

/// One element of `actions`: `{"type", "data"}`.
fn parse_action(i: usize, item: Value) -> Result<Box<dyn Action>> {
    let key = format!("actions[{i}]");
    let mut outer = Options::new(json!({ key.clone(): item }))?;
    let mut item = outer.take_dict(&key)?.expect("the key was just inserted");
    let kind = item.require_str("type")?;
    let Some((_, parse)) = ACTIONS.iter().find(|(name, _)| *name == kind) else {
        return Err(Error::param_invalid(
            "type",
            format!("does not accept value '{kind}'"),
        ));
    };
    let mut data = item
        .take_dict("data")?
        .ok_or_else(|| Error::param_missing(format!("{key}.data")))?;
    let action = parse(&mut data)?;
    data.finish()?;
    item.finish()?;
    Ok(action)
}

fn completion_mode(props: Option<Value>) -> Result<CompletionMode> {
    let Some(v) = props else {
        return Ok(CompletionMode::Individual);
    };
    let mut props = Options::new(json!({ "properties": v }))?
        .take_dict("properties")?
        .expect("the key was just inserted");
    let mode = take_enum(
        &mut props,
        "completion-mode",
        &[
            ("individual", CompletionMode::Individual),
            ("grouped", CompletionMode::Grouped),
        ],
    )?;
    props.finish()?;
    Ok(mode.unwrap_or_default())
}

/// `transaction` {actions, properties?}.
pub(super) async fn transaction(engine: &Engine, mut args: Options) -> Result<Value> {
    let actions = args
        .take("actions")
        .ok_or_else(|| Error::param_missing("actions"))?;
    let Value::Array(list) = actions else {
        return Err(Error::generic(
            "Invalid parameter type for 'actions', expected: array",
        ));
    };
    let actions = list
        .into_iter()
        .enumerate()
        .map(|(i, item)| parse_action(i, item))
        .collect::<Result<Vec<_>>>()?;
    let mode = completion_mode(args.take("properties"))?;
    args.finish()?;
    crate::transaction::run(engine, actions, mode).await?;
    Ok(json!({}))
}
