//! Option parsing with glibc `getopt` semantics, which qemu-io's commands inherit: options and
//! operands may be mixed (`read 0 512 -q` is quiet), `--` ends the options, flags group
//! (`-qv`), an option's argument may be attached (`-P0xcd`) or the next word, and a word
//! starting with `-` is an option even when it looks like a negative number (`read 0 -5`
//! fails with "invalid option -- '5'").

/// One parsed option, in command-line order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Opt {
    /// A flag or an option with its argument.
    Ok(char, Option<String>),
    /// An option letter the command does not take.
    Invalid(char),
    /// An option that needs an argument came last.
    MissingArg(char),
}

/// Options (stopping after the first bad one) and the operands, in order.
pub(super) struct Parsed {
    pub opts: Vec<Opt>,
    pub operands: Vec<String>,
}

/// Parse `args` (without the command name) against `spec` (getopt's optstring: letters, a
/// `:` after each letter that takes an argument).
pub(super) fn getopt(args: &[String], spec: &str) -> Parsed {
    let takes_arg = |c: char| -> Option<bool> {
        let i = spec.find(c)?;
        Some(spec[i + c.len_utf8()..].starts_with(':'))
    };
    let mut opts = Vec::new();
    let mut operands = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        i += 1;
        if a == "--" {
            operands.extend(args[i..].iter().cloned());
            break;
        }
        if !a.starts_with('-') || a.len() == 1 {
            operands.push(a.clone());
            continue;
        }
        let body = &a[1..];
        for (pos, c) in body.char_indices() {
            if c == ':' {
                opts.push(Opt::Invalid(c));
                return Parsed { opts, operands };
            }
            match takes_arg(c) {
                None => {
                    opts.push(Opt::Invalid(c));
                    return Parsed { opts, operands };
                }
                Some(false) => opts.push(Opt::Ok(c, None)),
                Some(true) => {
                    let attached = &body[pos + c.len_utf8()..];
                    if !attached.is_empty() {
                        opts.push(Opt::Ok(c, Some(attached.to_string())));
                    } else if i < args.len() {
                        opts.push(Opt::Ok(c, Some(args[i].clone())));
                        i += 1;
                    } else {
                        opts.push(Opt::MissingArg(c));
                        return Parsed { opts, operands };
                    }
                    break;
                }
            }
        }
    }
    Parsed { opts, operands }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Vec<String> {
        s.split(' ').map(String::from).collect()
    }

    #[test]
    fn permutes_groups_and_attaches() {
        let p = getopt(&v("0 -qv 512 -P0xcd -l 4"), "bCl:P:qv");
        assert_eq!(p.operands, v("0 512"));
        assert_eq!(
            p.opts,
            vec![
                Opt::Ok('q', None),
                Opt::Ok('v', None),
                Opt::Ok('P', Some("0xcd".into())),
                Opt::Ok('l', Some("4".into())),
            ]
        );
        let p = getopt(&v("-q -- -1 2"), "q");
        assert_eq!(p.operands, v("-1 2"));
        let p = getopt(&v("0 -5"), "q");
        assert_eq!(p.opts, vec![Opt::Invalid('5')]);
        let p = getopt(&v("0 512 -P"), "P:");
        assert_eq!(p.opts, vec![Opt::MissingArg('P')]);
        let p = getopt(&v("- 1"), "q");
        assert_eq!(p.operands, v("- 1"));
    }
}
