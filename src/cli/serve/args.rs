//! The option values of `blk serve` / `qemu-storage-daemon` that are not plain engine
//! arguments: `--chardev socket,...` (a listening address), `--monitor` and `--blockdev` text,
//! each checked with qemu-storage-daemon's wording.

use engine::env::net::NetAddr;
use engine::util::{Options, parse_on_off};
use engine::{Error, Result};
use serde_json::Value;

/// A `--chardev socket,id=ID,...,server=on,wait=off`: the monitor's listening address.
pub(super) struct Chardev {
    pub(super) id: String,
    pub(super) addr: NetAddr,
}

/// Parse `--chardev`. Only listening sockets exist in blk: a client socket or `wait=on` (which
/// would block start-up until a client connects) is refused by name.
pub(super) fn chardev(text: &str) -> Result<Chardev> {
    let mut o = Options::from_keyval_implied(text, "backend")?;
    let backend = o.require_str("backend")?;
    if backend != "socket" {
        return Err(Error::generic(format!(
            "chardev backend '{backend}' is not supported by blk (only 'socket')"
        )));
    }
    let id = o.require_str("id")?;
    let flag = |o: &mut Options, key: &str| -> Result<Option<bool>> {
        match o.take_str(key)? {
            None => Ok(None),
            Some(v) => parse_on_off(key, &v).map(Some),
        }
    };
    let server = flag(&mut o, "server")?.unwrap_or(false);
    let wait = flag(&mut o, "wait")?.unwrap_or(true);
    let addr = match (o.take_str("path")?, o.take_str("host")?) {
        (Some(path), None) => NetAddr::Unix(path),
        (None, Some(host)) => {
            let port = o.require_str("port")?;
            let port = port
                .parse()
                .map_err(|_| Error::param_invalid("port", "expects a port number"))?;
            NetAddr::Inet { host, port }
        }
        (Some(_), Some(_)) => {
            return Err(Error::generic("'path' and 'host' are mutually exclusive"));
        }
        // QEMU reads a socket chardev without an address as an inherited fd.
        (None, None) => return Err(Error::generic("Unable to parse FD number ")),
    };
    if !server {
        return Err(Error::generic(
            "a client socket chardev is not supported by blk (use server=on)",
        ));
    }
    if wait {
        return Err(Error::generic(
            "wait=on is not supported by blk (use wait=off)",
        ));
    }
    // Accepted and without effect here: the monitor output is the same either way.
    for key in ["telnet", "nodelay", "logfile", "logappend", "mux"] {
        let _ = o.take(key);
    }
    o.finish()?;
    Ok(Chardev { id, addr })
}

/// Parse `--monitor [chardev=]NAME[,mode=control][,pretty=off]`: the chardev's id.
pub(super) fn monitor(text: &str) -> Result<String> {
    let mut o = Options::from_keyval_implied(text, "chardev")?;
    let chardev = o.require_str("chardev")?;
    if let Some(mode) = o.take_str("mode")?
        && mode != "control"
    {
        return Err(Error::generic(format!(
            "Parameter 'mode' does not accept value '{mode}'"
        )));
    }
    if let Some(pretty) = o.take_str("pretty")?
        && parse_on_off("pretty", &pretty)?
    {
        return Err(Error::generic("pretty=on is not supported by blk"));
    }
    let _ = o.take("id");
    o.finish()?;
    Ok(chardev)
}

/// `--blockdev`: a JSON object (QEMU's JSON dialect and words) or `key=value` with `driver`
/// implied.
pub(super) fn blockdev(text: &str) -> Result<Value> {
    if text.trim_start().starts_with('{') {
        let v = engine::qmp::monitor::json::parse(text.as_bytes()).map_err(Error::generic)?;
        if !v.is_object() {
            return Err(Error::generic("JSON value must be an object"));
        }
        return Ok(v);
    }
    Ok(Options::from_keyval_implied(text, "driver")?.into_value())
}
