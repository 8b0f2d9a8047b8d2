//! `blk create -f luks`: the LUKS options qemu-img takes (`key-secret`, `cipher-alg`,
//! `cipher-mode`, `ivgen-alg`, `ivgen-hash-alg`, `hash-alg`, `iter-time`), checked in its
//! order, and its "Formatting" line; and qcow2's `encrypt.*` options (the same with the
//! `encrypt.` prefix, plus `encrypt.format`). The header is built here with the tool's env
//! (random bytes, iter-time); the engine's `luks` and `qcow2` creates write it.

use engine::crypto::LuksCreate;
use engine::crypto::luks::Built;
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
        encrypt: Some(luks.build(&*tool.env, &pass)?),
        ..CreateOptions::default()
    })
}

/// qemu-img's order of the `encrypt.*` options in a qcow2 "Formatting" line.
const QCOW2_ORDER: [&str; 8] = [
    "encrypt.format",
    "encrypt.key-secret",
    "encrypt.cipher-alg",
    "encrypt.cipher-mode",
    "encrypt.ivgen-alg",
    "encrypt.ivgen-hash-alg",
    "encrypt.hash-alg",
    "encrypt.iter-time",
];

/// The `encrypt.*` part of a qcow2 "Formatting" line (` key=value` each, QEMU's order).
pub(crate) fn encrypt_text(given: &[(String, String)]) -> String {
    let mut s = String::new();
    for key in QCOW2_ORDER {
        if let Some((_, v)) = given.iter().find(|(k, _)| k == key) {
            s += &format!(" {key}={v}");
        }
    }
    s
}

/// The LUKS header a new qcow2 image gets from its `encrypt.*` options (`None` without).
pub(crate) fn qcow2_encryption(tool: &Tool, given: &[(String, String)]) -> Result<Option<Built>> {
    let get = |key: &str| {
        given
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    let format = match get("encrypt.format") {
        None if given.is_empty() => return Ok(None),
        None => {
            return Err(Error::generic(
                "Parameter 'encrypt.format' is required to encrypt an image",
            ));
        }
        Some("luks") => "luks",
        Some("aes") => {
            return Err(Error::generic(
                "blk does not create qcow2 images with the legacy AES encryption (it reads \
                 and writes them); use encrypt.format=luks",
            ));
        }
        Some(other) => {
            return Err(Error::generic(format!(
                "Parameter 'encrypt.format' does not accept value '{other}'"
            )));
        }
    };
    debug_assert_eq!(format, "luks");
    let mut luks = LuksCreate::default();
    for (k, v) in given {
        let key = k.trim_start_matches("encrypt.");
        if !matches!(key, "format" | "key-secret") && !luks.set(key, v, k)? {
            return Err(Error::generic(format!("Invalid parameter '{k}'")));
        }
    }
    luks.check("encrypt.")?;
    let Some(id) = get("encrypt.key-secret") else {
        return Err(Error::generic(
            "Parameter 'encrypt.key-secret' is required for cipher",
        ));
    };
    let pass = tool.engine.graph().objects.secret(id)?;
    Ok(Some(luks.build(&*tool.env, &pass)?))
}
