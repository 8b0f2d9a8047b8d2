//! `-o help` / `-o ?` for create, convert and amend: the creation (amend) options of a format, listed in
//! qemu-img's layout (option names, value kinds and descriptions are QEMU's, so scripts that read
//! the list see the same names).

/// One creation option: name, value kind, description.
type Opt = (&'static str, &'static str, &'static str);

const SIZE: Opt = ("size", "<size>", "Virtual disk size");

const QCOW2: &[Opt] = &[
    ("backing_file", "<str>", "File name of a base image"),
    ("backing_fmt", "<str>", "Image format of the base image"),
    ("cluster_size", "<size>", "qcow2 cluster size"),
    (
        "compat",
        "<str>",
        "Compatibility level (v2 [0.10] or v3 [1.1])",
    ),
    (
        "compression_type",
        "<str>",
        "Compression method used for image cluster compression",
    ),
    ("data_file", "<str>", "File name of an external data file"),
    (
        "data_file_raw",
        "<bool (on/off)>",
        "The external data file must stay valid as a raw image",
    ),
    (
        "encrypt.cipher-alg",
        "<str>",
        "Name of encryption cipher algorithm",
    ),
    (
        "encrypt.cipher-mode",
        "<str>",
        "Name of encryption cipher mode",
    ),
    (
        "encrypt.format",
        "<str>",
        "Encrypt the image, format choices: 'aes', 'luks'",
    ),
    (
        "encrypt.hash-alg",
        "<str>",
        "Name of encryption hash algorithm",
    ),
    (
        "encrypt.iter-time",
        "<num>",
        "Time to spend in PBKDF in milliseconds",
    ),
    (
        "encrypt.ivgen-alg",
        "<str>",
        "Name of IV generator algorithm",
    ),
    (
        "encrypt.ivgen-hash-alg",
        "<str>",
        "Name of IV generator hash algorithm",
    ),
    (
        "encrypt.key-secret",
        "<str>",
        "ID of secret providing qcow AES key or LUKS passphrase",
    ),
    (
        "encryption",
        "<bool (on/off)>",
        "Encrypt the image with format 'aes'. (Deprecated in favor of encrypt.format=aes)",
    ),
    ("extended_l2", "<bool (on/off)>", "Extended L2 tables"),
    (
        "lazy_refcounts",
        "<bool (on/off)>",
        "Postpone refcount updates",
    ),
    (
        "preallocation",
        "<str>",
        "Preallocation mode (allowed values: off, metadata, falloc, full)",
    ),
    (
        "refcount_bits",
        "<num>",
        "Width of a reference count entry in bits",
    ),
    SIZE,
];

/// qcow2's amend options (`qemu-img amend -o help`), in QEMU's order.
const QCOW2_AMEND: &[Opt] = &[
    QCOW2[0],
    QCOW2[1],
    QCOW2[3],
    QCOW2[5],
    QCOW2[6],
    QCOW2[11],
    (
        "encrypt.keyslot",
        "<num>",
        "Select a single keyslot to modify explicitly",
    ),
    (
        "encrypt.new-secret",
        "<str>",
        "New secret to set in the matching keyslots. Empty string to erase",
    ),
    (
        "encrypt.old-secret",
        "<str>",
        "Select all keyslots that match this password",
    ),
    (
        "encrypt.state",
        "<str>",
        "Select new state of affected keyslots (active/inactive)",
    ),
    QCOW2[17],
    QCOW2[19],
    SIZE,
];

/// Value kind of `key` among `fmt`'s amend options (`create`: its creation options
/// instead), if it is one: `<str>`, `<num>`, `<size>` or `<bool (on/off)>`.
pub fn option_kind(fmt: &str, key: &str, create: bool) -> Option<&'static str> {
    let list: &[Opt] = match (fmt, create) {
        ("qcow2", false) => QCOW2_AMEND,
        ("qcow2", true) => QCOW2,
        _ => &[],
    };
    list.iter().find(|o| o.0 == key).map(|o| o.1)
}

/// Value kind of creation option `key` of `fmt` or of the file protocol below it.
pub fn create_option_kind(fmt: &str, key: &str) -> Option<&'static str> {
    let own: &[Opt] = match fmt {
        "qcow2" => QCOW2,
        _ => &[SIZE],
    };
    own.iter().chain(FILE).find(|o| o.0 == key).map(|o| o.1)
}

/// `qemu-img amend -o help` for format `fmt` (`None`: it cannot amend).
pub fn amend_text(fmt: &str) -> Option<String> {
    (fmt == "qcow2").then(|| {
        let mut s = format!("Amend options for '{fmt}':\n");
        QCOW2_AMEND.iter().for_each(|o| s.push_str(&line(o)));
        s
    })
}

fn line((n, t, d): &Opt) -> String {
    format!("  {:<22} - {d}\n", format!("{n}={t}"))
}

/// The `file` protocol's own creation options, merged in when a target filename is given.
const FILE: &[Opt] = &[
    (
        "extent_size_hint",
        "<size>",
        "Extent size hint for the image file, 0 to disable",
    ),
    (
        "nocow",
        "<bool (on/off)>",
        "Turn off copy-on-write (valid only on btrfs)",
    ),
    (
        "preallocation",
        "<str>",
        "Preallocation mode (allowed values: off, falloc, full)",
    ),
    SIZE,
];

const LUKS: &[Opt] = &[
    ("cipher-alg", "<str>", "Name of encryption cipher algorithm"),
    ("cipher-mode", "<str>", "Name of encryption cipher mode"),
    (
        "detached-header",
        "<bool (on/off)>",
        "Create a detached LUKS header",
    ),
    ("hash-alg", "<str>", "Name of encryption hash algorithm"),
    (
        "iter-time",
        "<num>",
        "Time to spend in PBKDF in milliseconds",
    ),
    ("ivgen-alg", "<str>", "Name of IV generator algorithm"),
    (
        "ivgen-hash-alg",
        "<str>",
        "Name of IV generator hash algorithm",
    ),
    (
        "key-secret",
        "<str>",
        "ID of the secret that provides the keyslot passphrase",
    ),
    SIZE,
];

/// Whether format `fmt` (with its file protocol) takes the creation option `key`.
pub fn accepts(fmt: &str, key: &str) -> bool {
    let own: &[Opt] = match fmt {
        "qcow2" => QCOW2,
        "luks" => LUKS,
        _ => &[SIZE],
    };
    own.iter().chain(FILE).any(|o| o.0 == key)
}

/// Whether an `-o` string asks for the option list (an item `help` or `?`).
pub fn wants_help(o: &str) -> bool {
    o.split(',').any(|i| i == "help" || i == "?")
}

/// The list for format `fmt`; with a target `file`, merged with the protocol's options as
/// qemu-img does (the format's entry wins for a shared name). `None`: unknown format.
pub fn text(fmt: &str, file: Option<&str>) -> Option<String> {
    let own: &[Opt] = match fmt {
        "qcow2" => QCOW2,
        "luks" => LUKS,
        "raw" => &[SIZE],
        _ => return None,
    };
    let Some(_) = file else {
        let mut s = format!("Supported {fmt} options:\n");
        own.iter().for_each(|o| s.push_str(&line(o)));
        s.push_str("\nThe protocol level may support further options.\n");
        s.push_str("Specify the target filename to include those options.\n");
        return Some(s);
    };
    let mut all: Vec<Opt> = own.to_vec();
    let extra = FILE.iter().filter(|f| !own.iter().any(|o| o.0 == f.0));
    all.extend(extra.copied());
    all.sort_by(|a, b| a.0.cmp(b.0));
    let mut s = String::from("Supported options:\n");
    all.iter().for_each(|o| s.push_str(&line(o)));
    Some(s)
}

/// `-o help` handling shared by create and convert: when an `-o` asks for the list, print it for
/// the format given with `fmt_flag` (raw by default) and return the exit status.
pub fn answer(opts: &[(char, String)], fmt_flag: char, file: Option<&str>) -> Option<i32> {
    if !opts.iter().any(|(c, v)| *c == 'o' && wants_help(v)) {
        return None;
    }
    let fmt = opts.iter().rev().find(|(c, _)| *c == fmt_flag);
    let fmt = fmt.map_or("raw", |(_, f)| f.as_str());
    Some(match text(fmt, file) {
        Some(t) => {
            print!("{t}");
            0
        }
        None => super::fail(format!("Unknown file format '{fmt}'")),
    })
}
