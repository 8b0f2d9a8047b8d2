//! QEMU's image locks, for the `file` driver: which bytes of a host file stand for which
//! permission, taking them when the node's permissions change, and refusing a permission
//! another process (QEMU or blk) holds or does not share, with QEMU's messages.
//!
//! The layout is QEMU's file-posix one, so both see each other: for permission bit `i`
//! (consistent read, write, write unchanged, resize) a user holding the permission keeps a
//! shared lock on byte `100 + i`, and a user *not sharing* it keeps one on byte `200 + i`. A
//! new user may take permission `i` only if nobody locks `200 + i`, and may refuse to share it
//! only if nobody locks `100 + i`. Locks live on a handle of their own (`HostFs::open_lock`), so
//! a reopen of the data handle never drops them; environments without locks (the simulator)
//! give no handle, and `locking=off` asks for none.
//!
//! A permission change is two-phase, as the graph's plan is: `prepare` locks the union of the
//! old and the new bytes and checks the new permissions (undoing its own locks on failure),
//! `commit` drops the bytes only the old permissions needed, `abort` goes back to the old ones.

use std::cell::Cell;

use crate::env::{Env, HostLock, OpenOptions};
use crate::error::{Error, Result};
use crate::types::Perms;

/// Byte of the first "holds the permission" lock.
const PERM_BASE: u64 = 100;
/// Byte of the first "does not share the permission" lock.
const SHARED_BASE: u64 = 200;

/// The permissions that have lock bytes, in bit order (QEMU's `BLK_PERM_ALL`: the graph-change
/// permission has none), with the names QEMU's messages use.
const LOCKED: [(Perms, &str); 4] = [
    (Perms::CONSISTENT_READ, "consistent read"),
    (Perms::WRITE, "write"),
    (Perms::WRITE_UNCHANGED, "write unchanged"),
    (Perms::RESIZE, "resize"),
];

/// What image creation takes (QEMU's file creation), as (taken, shared): writing and
/// resizing, sharing all but resizing, so nobody else may use the file while it is emptied.
fn create_perms() -> (Perms, Perms) {
    (
        Perms::WRITE | Perms::RESIZE,
        Perms::CONSISTENT_READ | Perms::WRITE | Perms::WRITE_UNCHANGED,
    )
}

/// The permissions that have lock bytes, of `p`.
fn lockable(p: Perms) -> Perms {
    LOCKED.iter().fold(
        Perms::NONE,
        |acc, (bit, _)| {
            if p.contains(*bit) { acc | *bit } else { acc }
        },
    )
}

/// The lock bytes of one host file as one node holds them.
pub(super) struct ImageLocks {
    /// `None`: no locking (`locking=off`, or an environment without locks).
    handle: Option<Box<dyn HostLock>>,
    /// The file name the hint names.
    path: String,
    /// The committed permissions (taken, shared).
    current: Cell<(Perms, Perms)>,
    /// The permissions `prepare` accepted, until commit or abort.
    staged: Cell<Option<(Perms, Perms)>>,
    /// The bytes held now: permissions locked at `100 + i`, unshared ones at `200 + i`.
    held: Cell<(Perms, Perms)>,
}

impl ImageLocks {
    /// The locks of `path` for a node opened with `locking` (`auto`, `on`, `off`; `None` is
    /// `auto`). Nothing is locked until the node's permissions are set.
    pub(super) fn open(env: &dyn Env, path: &str, locking: Option<&str>) -> Result<ImageLocks> {
        let handle = match locking {
            Some("off") => None,
            _ => env.fs().open_lock(path)?,
        };
        Ok(ImageLocks {
            handle,
            path: path.to_string(),
            current: Cell::new((Perms::NONE, Perms::ALL)),
            staged: Cell::new(None),
            held: Cell::new((Perms::NONE, Perms::NONE)),
        })
    }

    /// Phase one: lock what `perm`/`shared` need on top of what is held, and check that no
    /// other user conflicts. On failure the bytes are as before and nothing is staged.
    pub(super) fn prepare(&self, perm: Perms, shared: Perms) -> Result<()> {
        let new = (lockable(perm), lockable(shared) | !lockable(Perms::ALL));
        let Some(handle) = &self.handle else {
            self.staged.set(Some(new));
            return Ok(());
        };
        let (cur_perm, cur_shared) = self.current.get();
        if new == (cur_perm, cur_shared) {
            self.staged.set(Some(new));
            return Ok(());
        }
        let taken = apply(
            &**handle,
            &self.held,
            cur_perm | new.0,
            !cur_shared | !new.1,
            false,
        )
        .and_then(|()| check(&**handle, new.0, new.1))
        .map_err(|e| {
            e.hint(format!(
                "Is another process using the image [{}]?",
                self.path
            ))
        });
        if let Err(e) = taken {
            // Back to exactly the bytes the committed permissions hold.
            let _ = apply(&**handle, &self.held, cur_perm, !cur_shared, true);
            return Err(e);
        }
        self.staged.set(Some(new));
        Ok(())
    }

    /// Phase two: keep only the bytes the new permissions need.
    pub(super) fn commit(&self) {
        let Some((perm, shared)) = self.staged.take() else {
            return;
        };
        self.current.set((perm, shared));
        if let Some(handle) = &self.handle {
            // Releasing a lock cannot conflict with anyone; a failure leaves a byte locked
            // longer than needed, which only makes others more careful.
            let _ = apply(&**handle, &self.held, perm, !shared, true);
        }
    }

    /// The change was refused elsewhere: hold what the committed permissions need again.
    pub(super) fn abort(&self) {
        if self.staged.take().is_none() {
            return;
        }
        if let Some(handle) = &self.handle {
            let (perm, shared) = self.current.get();
            let _ = apply(&**handle, &self.held, perm, !shared, true);
        }
    }
}

/// Lock the bytes of `perm` (at 100 + i) and of `unshared` (at 200 + i) not yet in `held`;
/// with `unlock`, also release the held ones outside them. `held` follows every byte moved.
fn apply(
    handle: &dyn HostLock,
    held: &Cell<(Perms, Perms)>,
    perm: Perms,
    unshared: Perms,
    unlock: bool,
) -> Result<()> {
    for (i, (bit, _)) in LOCKED.iter().enumerate() {
        let i = i as u64;
        for (base, want, is_perm) in [(PERM_BASE, perm, true), (SHARED_BASE, unshared, false)] {
            let (hp, hs) = held.get();
            let has = if is_perm { hp } else { hs }.contains(*bit);
            let wanted = want.contains(*bit);
            if wanted == has || (!wanted && !unlock) {
                continue;
            }
            let verb = if wanted { "lock" } else { "unlock" };
            handle
                .set_shared(base + i, wanted)
                .map_err(|e| e.context(format!("Failed to {verb} byte {}", base + i)))?;
            let flip = |p: Perms| if wanted { p | *bit } else { p & !*bit };
            held.set(if is_perm {
                (flip(hp), hs)
            } else {
                (hp, flip(hs))
            });
        }
    }
    Ok(())
}

/// Refuse `perm` if another user does not share one of them, and refusing to share what
/// `shared` leaves out if another user holds it: QEMU's order and messages.
fn check(handle: &dyn HostLock, perm: Perms, shared: Perms) -> Result<()> {
    for (i, (bit, name)) in LOCKED.iter().enumerate() {
        if perm.contains(*bit) && held_or_failed(handle, SHARED_BASE + i as u64) {
            return Err(Error::generic(format!("Failed to get \"{name}\" lock")));
        }
    }
    for (i, (bit, name)) in LOCKED.iter().enumerate() {
        if !shared.contains(*bit) && held_or_failed(handle, PERM_BASE + i as u64) {
            return Err(Error::generic(format!(
                "Failed to get shared \"{name}\" lock"
            )));
        }
    }
    Ok(())
}

/// A byte counts as taken when another handle locks it or the test itself fails (QEMU reports
/// both as the permission it could not get).
fn held_or_failed(handle: &dyn HostLock, offset: u64) -> bool {
    handle.held_elsewhere(offset).unwrap_or(true)
}

/// Create (or empty) the host file at `path` for a new image, as QEMU's file creation does:
/// an existing file is locked for creation and checked before it is cut to zero bytes, so an
/// image another process uses is refused, never destroyed. The locks go when this returns;
/// the new image's node takes its own.
pub fn create_host_file(env: &dyn Env, path: &str) -> Result<()> {
    let context = || format!("Could not create '{path}'");
    // A file that does not exist yet is nobody's image.
    let handle = match env.fs().exists(path) {
        true => env.fs().open_lock(path).map_err(|e| e.context(context()))?,
        false => None,
    };
    if let Some(handle) = &handle {
        let (perm, shared) = create_perms();
        let held = Cell::new((Perms::NONE, Perms::NONE));
        apply(&**handle, &held, perm, !shared, false)
            .and_then(|()| check(&**handle, perm, shared))
            .map_err(|e| e.hint(format!("Is another process using the image [{path}]?")))?;
    }
    let create = OpenOptions {
        write: true,
        create: true,
        truncate: true,
        ..Default::default()
    };
    env.fs()
        .open(path, create)
        .map_err(|e| e.context(context()))?;
    Ok(())
}
