//! Command-line splitting in glibc's getopt_long style, shared by every `blk` subcommand: short
//! option clusters (`-qf raw`), attached arguments (`-fraw`), long options with `=` or a separate
//! argument, `--` ending options, and getopt's error messages.

/// A long option: name, the character it stands for, and whether it takes an argument.
pub(crate) type LongOpt = (&'static str, char, bool);

/// Options with their arguments, in order, and the operands.
pub(crate) type Split = (Vec<(char, String)>, Vec<String>);

/// Split a command line glibc-style: `short` is a getopt string ("f:o:q"), `long` the long
/// options. Errors are getopt's messages.
pub(crate) fn split(args: &[String], short: &str, long: &[LongOpt]) -> Result<Split, String> {
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
            let Some(&(_, c, takes)) = long.iter().find(|(n, _, _)| *n == name) else {
                return Err(format!("unrecognized option '--{name}'"));
            };
            let v = if takes {
                let v = inline.or_else(|| args.get(i).cloned().inspect(|_| i += 1));
                v.ok_or(format!("option '--{name}' requires an argument"))?
            } else if inline.is_some() {
                return Err(format!("option '--{name}' doesn't allow an argument"));
            } else {
                String::new()
            };
            opts.push((c, v));
            continue;
        }
        if !a.starts_with('-') || a.len() == 1 {
            operands.push(a.clone());
            continue;
        }
        for (pos, c) in a[1..].char_indices() {
            let Some(at) = short.find(c).filter(|_| c != ':') else {
                return Err(format!("invalid option -- '{c}'"));
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
                return Err(format!("option requires an argument -- '{c}'"));
            };
            opts.push((c, v));
            break;
        }
    }
    Ok((opts, operands))
}
