//! `--object` and `--image-opts`, which every image subcommand takes the same way.
//!
//! `split_or_fail` recognises both for every subcommand (`--image-opts` not for `create`, as in
//! qemu-img) and leaves them here, for the command's `Tool` to apply: `Tool::new` creates the
//! objects in the engine's registry and makes `Tool::open` read its image names as option
//! strings. Keeping them out of each subcommand's option loop keeps that loop about the
//! subcommand's own flags.

use std::cell::RefCell;

use engine::Engine;
use engine::Result;
use engine::env::real::RealEnv;

use super::LongOpt;

/// Long options handled here, with the characters `split` reports them as.
pub(crate) const OBJECT: LongOpt = ("object", '\u{10}', true);
pub(crate) const IMAGE_OPTS: LongOpt = ("image-opts", '\u{11}', false);

/// What the command line asked for.
#[derive(Clone, Debug, Default)]
pub(crate) struct OpenArgs {
    /// `--object` arguments, in order.
    pub objects: Vec<String>,
    /// `--image-opts`: image names are `key=value,...` option strings.
    pub image_opts: bool,
}

thread_local! {
    static PENDING: RefCell<OpenArgs> = RefCell::new(OpenArgs::default());
}

/// Take `--object`/`--image-opts` out of `opts` and keep them for the command's `Tool`.
/// `--object help` and `--object TYPE,help` print their lists; then the command is over
/// (`Err(0)`). Objects are validated now, as qemu-img creates them while reading its options:
/// a bad one ends the command (`Err(1)`) before anything else is looked at.
pub(crate) fn take(opts: &mut Vec<(char, String)>) -> Result<(), i32> {
    let mut args = OpenArgs::default();
    for (c, v) in std::mem::take(opts) {
        match c {
            '\u{10}' => {
                if let Some(text) = help_text(&v) {
                    print!("{text}");
                    return Err(0);
                }
                args.objects.push(v);
            }
            '\u{11}' => args.image_opts = true,
            _ => opts.push((c, v)),
        }
    }
    if let Err(e) = create_objects(&args.objects) {
        crate::cli::prog::error(e);
        return Err(1);
    }
    PENDING.with(|p| *p.borrow_mut() = args);
    Ok(())
}

/// Create `objects` (`--object` arguments) in a scratch engine: the first error, if any.
fn create_objects(objects: &[String]) -> Result<()> {
    if objects.is_empty() {
        return Ok(());
    }
    let env = RealEnv::new();
    let engine = Engine::new(env.clone());
    let r = env.block_on(add_objects(&engine, objects));
    env.shutdown();
    r
}

/// Add every `--object` argument to `engine`'s registry, in order; the first error.
pub(crate) async fn add_objects(engine: &Engine, objects: &[String]) -> Result<()> {
    for text in objects {
        let args = engine::object::parse_object_arg(text)?;
        engine.object_add(args).await?;
    }
    Ok(())
}

/// What `split_or_fail` left for this command (taken once).
pub(crate) fn pending() -> OpenArgs {
    PENDING.with(|p| std::mem::take(&mut *p.borrow_mut()))
}

/// The list `--object help` / `--object secret,help` prints (types blk can create).
pub(crate) fn help_text(arg: &str) -> Option<String> {
    if arg == "help" || arg == "?" {
        let mut s = "List of user creatable objects:\n".to_string();
        for t in engine::object::OBJECT_TYPES {
            s += &format!("  {t}\n");
        }
        return Some(s);
    }
    let (ty, rest) = arg.split_once(',')?;
    if ty == "secret" && (rest == "help" || rest == "?") {
        return Some(
            "secret options:\n  data=<string>\n  file=<string>\n  format=<QCryptoSecretFormat>\n  \
             iv=<string>\n  keyid=<string>\n"
                .to_string(),
        );
    }
    None
}

/// qemu-img's refusal of `-f` together with `--image-opts`.
pub(crate) const FORMAT_CONFLICT: &str = "--image-opts and --format are mutually exclusive";
