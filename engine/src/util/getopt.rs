//! The one command-line splitter, with glibc `getopt`/`getopt_long` semantics, behind both the
//! image tools' command lines and qemu-io's commands: options and operands may be mixed
//! (`read 0 512 -q` is quiet), `--` ends the options, flags group (`-qv`), an option's argument
//! may be attached (`-P0xcd`) or the next word, a word starting with `-` is an option even when
//! it looks like a negative number (`read 0 -5` fails with "invalid option -- '5'"). With long
//! options (`getopt_long`), `--name=value` or `--name value`, abbreviated to any unambiguous
//! prefix; in POSIX mode (an optstring starting with `+`) options end at the first operand.
//!
//! Parsing stops at the first bad option; the caller decides how to report it ([`Opt::message`]
//! is glibc's text).

/// A long option: name, the character it stands for, and whether it takes an argument. A name
/// written with a leading `=` is taken only in full, never abbreviated: blk's own extensions
/// are marked so, so that the QEMU tools' abbreviations keep their meaning.
pub type LongOpt = (&'static str, char, bool);

/// Options with their arguments ("" for a flag), in order, and the operands.
pub type Split = (Vec<(char, String)>, Vec<String>);

/// One parsed option, in command-line order; a bad one is the last.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Opt {
    /// A flag or an option with its argument.
    Ok(char, Option<String>),
    /// An option letter the command does not take.
    Invalid(char),
    /// An option letter that needs an argument came last.
    MissingArg(char),
    /// A long option that matches none.
    UnknownLong(String),
    /// A long option abbreviation that matches several: the name given, the candidates.
    AmbiguousLong(String, Vec<&'static str>),
    /// A long option that needs an argument came last (its full name).
    LongMissingArg(&'static str),
    /// A long flag given `=value` (its full name).
    LongUnexpectedArg(&'static str),
}

impl Opt {
    /// glibc's message for a bad option; `None` for a good one.
    pub fn message(&self) -> Option<String> {
        Some(match self {
            Opt::Ok(..) => return None,
            Opt::Invalid(c) => format!("invalid option -- '{c}'"),
            Opt::MissingArg(c) => format!("option requires an argument -- '{c}'"),
            Opt::UnknownLong(name) => format!("unrecognized option '--{name}'"),
            Opt::AmbiguousLong(name, all) => {
                let names: Vec<String> = all.iter().map(|n| format!("'--{n}'")).collect();
                format!(
                    "option '--{name}' is ambiguous; possibilities: {}",
                    names.join(" ")
                )
            }
            Opt::LongMissingArg(full) => format!("option '--{full}' requires an argument"),
            Opt::LongUnexpectedArg(full) => format!("option '--{full}' doesn't allow an argument"),
        })
    }
}

/// Options (stopping after the first bad one) and the operands, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed {
    /// The options; a bad one ends the list.
    pub opts: Vec<Opt>,
    /// The operands.
    pub operands: Vec<String>,
}

impl Parsed {
    /// The bad option that stopped parsing, if any.
    pub fn bad(&self) -> Option<&Opt> {
        self.opts.last().filter(|o| !matches!(o, Opt::Ok(..)))
    }

    /// The options as (letter, argument or "" for a flag) and the operands, or glibc's message
    /// for the bad option that stopped parsing.
    pub fn into_pairs(self) -> Result<Split, String> {
        if let Some(msg) = self.bad().and_then(Opt::message) {
            return Err(msg);
        }
        let opts = self
            .opts
            .into_iter()
            .filter_map(|o| match o {
                Opt::Ok(c, v) => Some((c, v.unwrap_or_default())),
                _ => None,
            })
            .collect();
        Ok((opts, self.operands))
    }
}

/// Split `args` against `short` (getopt's optstring: letters, a `:` after each letter that
/// takes an argument, a leading `+` for POSIX mode). With `long` (`getopt_long`), `--name`
/// words are long options; without (plain `getopt`), `--name` is the option letters `-`, `n`...
pub fn getopt(args: &[String], short: &str, long: Option<&[LongOpt]>) -> Parsed {
    let (posix, short) = match short.strip_prefix('+') {
        Some(rest) => (true, rest),
        None => (false, short),
    };
    let mut p = Parsed {
        opts: Vec::new(),
        operands: Vec::new(),
    };
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        i += 1;
        if a == "--" {
            p.operands.extend(args[i..].iter().cloned());
            break;
        }
        if let (Some(long), Some(name)) = (long, a.strip_prefix("--")) {
            let opt = long_opt(long, name, args, &mut i);
            let bad = !matches!(opt, Opt::Ok(..));
            p.opts.push(opt);
            if bad {
                break;
            }
            continue;
        }
        if !a.starts_with('-') || a.len() == 1 {
            p.operands.push(a.clone());
            if posix {
                p.operands.extend(args[i..].iter().cloned());
                break;
            }
            continue;
        }
        if !short_cluster(&a[1..], short, args, &mut i, &mut p.opts) {
            break;
        }
    }
    p
}

/// The options of one `-xyz` word (`body` without its `-`); false after a bad one.
fn short_cluster(
    body: &str,
    short: &str,
    args: &[String],
    i: &mut usize,
    opts: &mut Vec<Opt>,
) -> bool {
    for (pos, c) in body.char_indices() {
        let Some(at) = short.find(c).filter(|_| c != ':') else {
            opts.push(Opt::Invalid(c));
            return false;
        };
        if !short[at + c.len_utf8()..].starts_with(':') {
            opts.push(Opt::Ok(c, None));
            continue;
        }
        let attached = &body[pos + c.len_utf8()..];
        if !attached.is_empty() {
            opts.push(Opt::Ok(c, Some(attached.to_string())));
        } else if *i < args.len() {
            opts.push(Opt::Ok(c, Some(args[*i].clone())));
            *i += 1;
        } else {
            opts.push(Opt::MissingArg(c));
            return false;
        }
        break;
    }
    true
}

/// The long option of `--name[=value]`, taking its argument from the next word if needed.
fn long_opt(long: &[LongOpt], word: &str, args: &[String], i: &mut usize) -> Opt {
    let (name, inline) = match word.split_once('=') {
        Some((n, v)) => (n, Some(v.to_string())),
        None => (word, None),
    };
    let (full, c, takes) = match find_long(long, name, word) {
        Ok(found) => found,
        Err(bad) => return bad,
    };
    if !takes {
        return match inline {
            Some(_) => Opt::LongUnexpectedArg(full),
            None => Opt::Ok(c, None),
        };
    }
    let value = inline.or_else(|| {
        let v = args.get(*i).cloned();
        *i += usize::from(v.is_some());
        v
    });
    match value {
        Some(v) => Opt::Ok(c, Some(v)),
        None => Opt::LongMissingArg(full),
    }
}

/// The long option `name` stands for: an exact match, else the only option it abbreviates
/// (several that all mean the same count as one, as glibc has it). An error shows `word`, the
/// option as given (`name=value` too, as glibc's messages do).
fn find_long(long: &[LongOpt], name: &str, word: &str) -> Result<(&'static str, char, bool), Opt> {
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
        [] => Err(Opt::UnknownLong(word.to_string())),
        [(full, c, takes), rest @ ..] if rest.iter().all(|(_, c2, t2)| c2 == c && t2 == takes) => {
            Ok((full, *c, *takes))
        }
        many => Err(Opt::AmbiguousLong(
            word.to_string(),
            many.iter().map(|(n, _, _)| *n).collect(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Vec<String> {
        s.split(' ').map(String::from).collect()
    }

    #[test]
    fn permutes_groups_and_attaches() {
        let p = getopt(&v("0 -qv 512 -P0xcd -l 4"), "bCl:P:qv", None);
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
        assert_eq!(p.bad(), None);
        let p = getopt(&v("-q -- -1 2"), "q", None);
        assert_eq!(p.operands, v("-1 2"));
        let p = getopt(&v("0 -5"), "q", None);
        assert_eq!(p.opts, vec![Opt::Invalid('5')]);
        assert_eq!(
            p.bad().and_then(Opt::message).as_deref(),
            Some("invalid option -- '5'")
        );
        let p = getopt(&v("0 512 -P"), "P:", None);
        assert_eq!(p.opts, vec![Opt::MissingArg('P')]);
        let p = getopt(&v("- 1"), "q", None);
        assert_eq!(p.operands, v("- 1"));
        // Plain getopt: "--x" is the option letters '-' and 'x'.
        let p = getopt(&v("--q"), "q", None);
        assert_eq!(p.opts, vec![Opt::Invalid('-')]);
    }

    const LONG: [LongOpt; 4] = [
        ("output", 'O', true),
        ("object", 'j', true),
        ("quiet", 'q', false),
        ("=timing", 't', true),
    ];

    #[test]
    fn long_options_abbreviate_unless_ambiguous() {
        let p = getopt(&v("--out=json a --quiet --timing real"), "q", Some(&LONG));
        assert_eq!(
            p.opts,
            vec![
                Opt::Ok('O', Some("json".into())),
                Opt::Ok('q', None),
                Opt::Ok('t', Some("real".into())),
            ]
        );
        assert_eq!(p.operands, v("a"));
        let msg = |s: &str| getopt(&v(s), "q", Some(&LONG)).bad().and_then(Opt::message);
        assert_eq!(
            msg("--o x").as_deref(),
            Some("option '--o' is ambiguous; possibilities: '--output' '--object'")
        );
        assert_eq!(
            msg("--tim x").as_deref(),
            Some("unrecognized option '--tim'")
        );
        // An unknown or ambiguous option is shown with its value, as glibc shows it.
        assert_eq!(
            msg("--bogus=1").as_deref(),
            Some("unrecognized option '--bogus=1'")
        );
        assert_eq!(
            msg("--o=x").as_deref(),
            Some("option '--o=x' is ambiguous; possibilities: '--output' '--object'")
        );
        assert_eq!(
            msg("--quiet=1").as_deref(),
            Some("option '--quiet' doesn't allow an argument")
        );
        assert_eq!(
            msg("--output").as_deref(),
            Some("option '--output' requires an argument")
        );
    }

    #[test]
    fn posix_mode_stops_at_the_first_operand() {
        let p = getopt(&v("-q cmd -x --y"), "+q", Some(&LONG));
        assert_eq!(p.opts, vec![Opt::Ok('q', None)]);
        assert_eq!(p.operands, v("cmd -x --y"));
    }
}
