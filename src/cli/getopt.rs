//! Command-line splitting in glibc's getopt_long style, shared by every `blk` subcommand: short
//! option clusters (`-qf raw`), attached arguments (`-fraw`), long options with `=` or a separate
//! argument and abbreviated to any unambiguous prefix (`--out=json`), `--` ending options, and
//! getopt's error messages.

use engine::{Error, Result};

/// A long option: name, the character it stands for, and whether it takes an argument. A name
/// written with a leading `=` is taken only in full, never abbreviated: blk's own extensions
/// are marked so, so that the QEMU tools' abbreviations keep their meaning.
pub(crate) type LongOpt = (&'static str, char, bool);

/// Options with their arguments, in order, and the operands.
pub(crate) type Split = (Vec<(char, String)>, Vec<String>);

/// Split a command line glibc-style: `short` is a getopt string ("f:o:q"), `long` the long
/// options. Errors are getopt's messages.
pub(crate) fn split(args: &[String], short: &str, long: &[LongOpt]) -> Result<Split> {
    split_mode(args, short, long, false)
}

/// [`split`] in POSIX mode (a getopt string starting with `+`): options end at the first
/// operand, which comes back with everything after it (a program's options before its
/// subcommand).
pub(crate) fn split_leading(args: &[String], short: &str, long: &[LongOpt]) -> Result<Split> {
    split_mode(args, short, long, true)
}

fn split_mode(args: &[String], short: &str, long: &[LongOpt], posix: bool) -> Result<Split> {
    let (mut opts, mut operands) = (Vec::new(), Vec::new());
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        i += 1;
        if a == "--" {
            operands.extend(args[i..].iter().cloned());
            break;
        }
        if let Some(name) = a.strip_prefix("--") {
            let (name, inline) = match name.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (name, None),
            };
            let (full, c, takes) = find_long(long, name)?;
            let v = if takes {
                let v = inline.or_else(|| args.get(i).cloned().inspect(|_| i += 1));
                v.ok_or_else(|| Error::generic(format!("option '--{full}' requires an argument")))?
            } else if inline.is_some() {
                return Err(Error::generic(format!(
                    "option '--{full}' doesn't allow an argument"
                )));
            } else {
                String::new()
            };
            opts.push((c, v));
            continue;
        }
        if !a.starts_with('-') || a.len() == 1 {
            operands.push(a.clone());
            if posix {
                operands.extend(args[i..].iter().cloned());
                break;
            }
            continue;
        }
        for (pos, c) in a[1..].char_indices() {
            let Some(at) = short.find(c).filter(|_| c != ':') else {
                return Err(Error::generic(format!("invalid option -- '{c}'")));
            };
            if !short[at + 1..].starts_with(':') {
                opts.push((c, String::new()));
                continue;
            }
            let rest = &a[1 + pos + c.len_utf8()..];
            let v = if !rest.is_empty() {
                rest.to_string()
            } else if i < args.len() {
                i += 1;
                args[i - 1].clone()
            } else {
                return Err(Error::generic(format!(
                    "option requires an argument -- '{c}'"
                )));
            };
            opts.push((c, v));
            break;
        }
    }
    Ok((opts, operands))
}

/// The long option `name` stands for: an exact match, else the only option it abbreviates
/// (several that all mean the same count as one, as glibc has it).
fn find_long<'a>(long: &'a [LongOpt], name: &str) -> Result<(&'a str, char, bool)> {
    let exact = long
        .iter()
        .find(|(n, _, _)| n.strip_prefix('=').unwrap_or(n) == name);
    if let Some(&(full, c, takes)) = exact {
        return Ok((full.strip_prefix('=').unwrap_or(full), c, takes));
    }
    let matches: Vec<&LongOpt> = long
        .iter()
        .filter(|(n, _, _)| !n.starts_with('=') && n.starts_with(name))
        .collect();
    match matches.as_slice() {
        [] => Err(Error::generic(format!("unrecognized option '--{name}'"))),
        [(full, c, takes), rest @ ..] if rest.iter().all(|(_, c2, t2)| c2 == c && t2 == takes) => {
            Ok((full, *c, *takes))
        }
        many => {
            let names: Vec<String> = many.iter().map(|(n, _, _)| format!("'--{n}'")).collect();
            Err(Error::generic(format!(
                "option '--{name}' is ambiguous; possibilities: {}",
                names.join(" ")
            )))
        }
    }
}
