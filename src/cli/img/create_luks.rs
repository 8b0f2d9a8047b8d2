//! `blk create -f luks`: the LUKS options qemu-img takes (`key-secret`, `cipher-alg`,
//! `cipher-mode`, `ivgen-alg`, `ivgen-hash-alg`, `hash-alg`, `iter-time`), checked in its
//! order, and its "Formatting" line. The volume itself is written by the engine's `luks`
//! driver (`engine::drivers::luks::create`).

use engine::crypto::LuksCreate;
use engine::drivers::qcow2::CreateOptions;
use engine::{Error, Result};

use super::create::CreateSpec;
use super::number::size_option;
use super::open::Tool;

/// The order qemu-img lists the options in its "Formatting" line.
const ORDER: [&str; 8] = [
    "key-secret",
    "cipher-alg",
    "cipher-mode",
    "ivgen-alg",
    "ivgen-hash-alg",
    "hash-alg",
    "iter-time",
    "detached-header",
];

/// Parse `spec`'s options, print the "Formatting" line (unless `-q`) and look the passphrase
/// up; the options for the write.
pub(crate) fn options(tool: &Tool, path: &str, spec: &CreateSpec) -> Result<CreateOptions> {
    if spec.backing.is_some() {
        return Err(Error::generic(
            "Backing file not supported for file format 'luks'",
        ));
    }
    let mut luks = LuksCreate::default();
    let mut size = spec.size;
    let mut given: Vec<(&str, &str)> = Vec::new();
    for (k, v) in &spec.opts {
        match k.as_str() {
            "size" => size = Some(size_option("size", v)?),
            "key-secret" | "detached-header" => {}
            key if luks.set(key, v, key)? => {}
            _ => return Err(Error::generic(format!("Invalid parameter '{k}'"))),
        }
        given.retain(|(g, _)| g != k);
        given.push((k.as_str(), v.as_str()));
    }
    let Some(size) = size else {
        return Err(Error::generic("Image creation needs a size parameter"));
    };
    if !spec.quiet {
        let mut line = format!("Formatting '{path}', fmt=luks size={size}");
        for key in ORDER {
            if let Some((_, v)) = given.iter().find(|(k, _)| *k == key) {
                line += &format!(" {key}={v}");
            }
        }
        println!("{line}");
    }
    luks.check("")?;
    if given.iter().any(|(k, _)| *k == "detached-header") {
        return Err(Error::generic("Parameter 'detached-header' is unexpected"));
    }
    let pass = match given.iter().find(|(k, _)| *k == "key-secret") {
        Some((_, id)) => tool.engine.graph().objects.secret(id)?,
        None => {
            return Err(Error::generic(
                "Parameter 'key-secret' is required for cipher",
            ));
        }
    };
    Ok(CreateOptions {
        size,
        encrypt: Some((luks, pass)),
        ..CreateOptions::default()
    })
}
