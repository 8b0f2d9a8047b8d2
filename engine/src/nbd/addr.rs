//! Socket addresses in QEMU's option syntax (`type=unix,path=..` / `type=inet,host=..,port=..`),
//! shared by the server's QMP commands and the client driver's `server` option.

use crate::env::net::NetAddr;
use crate::error::{Error, Result};
use crate::util::Options;

/// Take a flat socket address (`type` and its members) out of `data`; leftovers stay for the
/// caller's `finish`.
pub fn socket_address_flat(data: &mut Options) -> Result<NetAddr> {
    let ty = data.require_str("type")?;
    socket_address_members(&ty, data)
}

/// The members of a socket address of type `ty`.
pub fn socket_address_members(ty: &str, data: &mut Options) -> Result<NetAddr> {
    match ty {
        "unix" => Ok(NetAddr::Unix(data.require_str("path")?)),
        "inet" => {
            let host = data.require_str("host")?;
            let port = data.require_str("port")?;
            // QEMU resolves the service name when it binds; only numbers are known here.
            let port = port.parse::<u16>().map_err(|_| {
                Error::generic(format!(
                    "address resolution failed for {host}:{port}: Servname not supported for ai_socktype"
                ))
            })?;
            // Address-family and keep-alive hints change nothing here.
            for k in ["numeric", "to", "ipv4", "ipv6", "keep-alive"] {
                let _ = data.take(k);
            }
            Ok(NetAddr::Inet { host, port })
        }
        // QEMU names the member without its path here.
        other => Err(Error::generic(format!(
            "Parameter 'type' does not accept value '{other}'"
        ))),
    }
}
