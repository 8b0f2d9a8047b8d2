//! [`SimError`]: why a simulated run could not finish (deadlock, livelock). Every report names the
//! seed, so the failing run can be replayed.

use std::fmt;

/// A task that could not make progress, as listed in a deadlock report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParkedTask {
    /// Task id (0 is the future given to `block_on`).
    pub id: usize,
    /// The name given at spawn ("main" for the `block_on` future).
    pub name: String,
    /// What it said it was waiting on (`SimEnv::set_waiting_on`), if anything.
    pub waiting_on: Option<String>,
}

impl fmt::Display for ParkedTask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (#{})", self.name, self.id)?;
        if let Some(w) = &self.waiting_on {
            write!(f, " waiting on {w}")?;
        }
        Ok(())
    }
}

/// Which livelock limit fired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LivelockReason {
    /// The next timer lies beyond `SimConfig::max_virtual_ns`.
    TimeLimit,
    /// More than `SimConfig::max_steps` polls.
    StepLimit,
}

/// Why a simulated run stopped without its future completing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SimError {
    /// The main future is not done, nothing is runnable and no timer is pending.
    Deadlock {
        /// The master seed of the run.
        seed: u64,
        /// Virtual time of the deadlock.
        now_ns: u64,
        /// Every task that is still alive, the main future first.
        parked: Vec<ParkedTask>,
    },
    /// A run limit was exceeded.
    Livelock {
        /// The master seed of the run.
        seed: u64,
        /// Virtual time when the limit fired.
        now_ns: u64,
        /// Polls so far.
        steps: u64,
        /// Which limit.
        reason: LivelockReason,
        /// Every task that is still alive, the main future first.
        tasks: Vec<ParkedTask>,
    },
}

impl SimError {
    /// The seed of the failing run.
    pub fn seed(&self) -> u64 {
        match self {
            SimError::Deadlock { seed, .. } | SimError::Livelock { seed, .. } => *seed,
        }
    }
}

fn list(f: &mut fmt::Formatter<'_>, tasks: &[ParkedTask]) -> fmt::Result {
    for (i, t) in tasks.iter().enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        write!(f, "{t}")?;
    }
    Ok(())
}

impl fmt::Display for SimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SimError::Deadlock {
                seed,
                now_ns,
                parked,
            } => {
                write!(
                    f,
                    "deadlock (seed {seed:#018x}) at t={now_ns}ns: nothing runnable, no timer \
                     pending; parked: "
                )?;
                list(f, parked)
            }
            SimError::Livelock {
                seed,
                now_ns,
                steps,
                reason,
                tasks,
            } => {
                let why = match reason {
                    LivelockReason::TimeLimit => "virtual time limit exceeded",
                    LivelockReason::StepLimit => "step budget exceeded",
                };
                write!(
                    f,
                    "livelock (seed {seed:#018x}): {why} at t={now_ns}ns after {steps} steps; tasks: "
                )?;
                list(f, tasks)
            }
        }
    }
}

impl std::error::Error for SimError {}
