//! QMP argument parsing of the NBD server and export commands (`nbd-server-start/-stop/-add/
//! -remove`, `block-export-add/-del`, `query-block-exports`), with QEMU 10's messages; the
//! server itself is `crate::nbd`.

use serde_json::{Value, json};

use crate::engine::Engine;
use crate::env::net::NetAddr;
use crate::error::{Error, Result};
use crate::nbd::ExportArgs;
use crate::nbd::addr::{socket_address_flat, socket_address_members};
use crate::util::Options;

/// Run one of the NBD commands (`name` is the QMP command).
pub(super) async fn run(engine: &Engine, name: &str, mut args: Options) -> Result<Value> {
    match name {
        "nbd-server-start" => start_server(engine, args, true)?,
        "nbd-server-stop" => {
            args.finish()?;
            engine.nbd().stop().await?;
        }
        "nbd-server-add" => {
            let device = args.require_str("device")?;
            let export = ExportArgs {
                id: args.take_str("name")?.unwrap_or_else(|| device.clone()),
                name: None,
                description: args.take_str("description")?,
                writable: args.take_bool("writable")?.unwrap_or(false),
                bitmaps: args.take_str("bitmap")?.into_iter().collect(),
                allocation_depth: false,
                node_name: device,
            };
            args.finish()?;
            let export = ExportArgs {
                name: Some(export.id.clone()),
                ..export
            };
            add(engine, &export, true)?;
        }
        "block-export-add" => {
            let export = export_args(&mut args)?;
            args.finish()?;
            add(engine, &export, false)?;
        }
        "nbd-server-remove" | "block-export-del" => {
            let key = if name == "nbd-server-remove" {
                "name"
            } else {
                "id"
            };
            let id = args.require_str(key)?;
            let hard = match args.take_str("mode")?.as_deref() {
                None | Some("safe") => false,
                Some("hard") => true,
                Some(other) => {
                    return Err(Error::generic(format!(
                        "Parameter 'mode' does not accept value '{other}'"
                    )));
                }
            };
            args.finish()?;
            engine.nbd().delete(&id, hard).await?;
        }
        _ => {
            args.finish()?;
            return Ok(engine.nbd().query());
        }
    }
    Ok(json!({}))
}

fn add(engine: &Engine, export: &ExportArgs, by_device: bool) -> Result<()> {
    let device = by_device.then_some(export.node_name.as_str());
    let node = engine.lookup(device, Some(&export.node_name))?;
    engine.nbd().add(export, &node, engine.machine())
}

/// `block-export-add`'s arguments for `type=nbd`.
fn export_args(args: &mut Options) -> Result<ExportArgs> {
    match args.require_str("type")?.as_str() {
        "nbd" => {}
        other => {
            return Err(Error::generic(format!(
                "Parameter 'type' does not accept value '{other}'"
            )));
        }
    }
    let id = args.require_str("id")?;
    let node_name = args.require_str("node-name")?;
    let writable = args.take_bool("writable")?.unwrap_or(false);
    // Accepted and without effect here: every export runs in the one thread.
    let _ = args.take_bool("writethrough")?;
    let _ = args.take_bool("fixed-iothread")?;
    let _ = args.take_str("iothread")?;
    let name = args.take_str("name")?;
    let description = args.take_str("description")?;
    let allocation_depth = args.take_bool("allocation-depth")?.unwrap_or(false);
    let bitmaps = match args.take("bitmaps") {
        None => Vec::new(),
        // The command line's `bitmaps.0=NAME,bitmaps.1=...`.
        Some(Value::Object(m)) => {
            let mut items: Vec<(u64, Value)> = Vec::with_capacity(m.len());
            for (k, v) in m {
                let i = k.parse::<u64>().map_err(|_| {
                    Error::generic(format!("Parameter 'bitmaps.{k}' is unexpected"))
                })?;
                items.push((i, v));
            }
            items.sort_by_key(|(i, _)| *i);
            items
                .into_iter()
                .map(|(_, v)| v.as_str().map(str::to_string).unwrap_or_default())
                .collect()
        }
        Some(Value::Array(list)) => list
            .into_iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s),
                _ => Err(Error::generic(format!(
                    "Invalid parameter type for 'bitmaps[{i}]', expected: string"
                ))),
            })
            .collect::<Result<_>>()?,
        Some(_) => {
            return Err(Error::generic(
                "Invalid parameter type for 'bitmaps', expected: array",
            ));
        }
    };
    Ok(ExportArgs {
        id,
        node_name,
        name,
        description,
        writable,
        bitmaps,
        allocation_depth,
    })
}

/// A socket address: QMP's legacy form (`{"type", "data": {..}}`) for `nbd-server-start`, or
/// the flat one (`{"type", "path"}`) of the command line's `--nbd-server addr.*`.
pub fn socket_address(mut addr: Options, legacy: bool) -> Result<NetAddr> {
    if !legacy {
        let out = socket_address_flat(&mut addr)?;
        addr.finish()?;
        return Ok(out);
    }
    let ty = addr.require_str("type")?;
    let mut data = addr
        .take_dict("data")?
        .ok_or_else(|| Error::param_missing(format!("{}data", addr.prefix())))?;
    addr.finish()?;
    let out = socket_address_members(&ty, &mut data)?;
    data.finish()?;
    Ok(out)
}

/// qemu-storage-daemon's `--nbd-server addr.type=unix,addr.path=...[,max-connections=N]
/// [,handshake-max-seconds=N]` (a flat socket address, unlike QMP's): start the server.
pub fn nbd_server_cmdline(engine: &Engine, text: &str) -> Result<()> {
    start_server(engine, Options::from_keyval(text)?, false)
}

/// `nbd-server-start`'s arguments (`qmp`: the address in QMP's nested form, else the command
/// line's flat one): start the server.
fn start_server(engine: &Engine, mut args: Options, qmp: bool) -> Result<()> {
    let addr = args
        .take_dict("addr")?
        .ok_or_else(|| Error::param_missing("addr"))?;
    let addr = socket_address(addr, qmp)?;
    let max = args.take_u64("max-connections")?.unwrap_or(0);
    let handshake = args.take_u64("handshake-max-seconds")?.unwrap_or(10);
    if args.take_str("tls-creds")?.is_some() || args.take_str("tls-authz")?.is_some() {
        return Err(Error::generic("TLS is not supported by this NBD server"));
    }
    args.finish()?;
    let max = max.min(u64::from(u32::MAX)) as u32;
    engine.nbd().start(&addr, max, handshake)
}

/// qemu-storage-daemon's `--export type=nbd,id=..,node-name=..[,name=..][,writable=on]
/// [,description=..][,bitmaps.0=..][,allocation-depth=on]`: add the export.
pub fn export_cmdline(engine: &Engine, text: &str) -> Result<()> {
    // `--export nbd,id=...`: the type may come first without its key.
    let mut args = Options::from_keyval_implied(text, "type")?;
    let export = export_args(&mut args)?;
    args.finish()?;
    add(engine, &export, false)
}
