//! Scenario files: parse them, run them on the simulator against an unchanged engine, record a
//! transcript, check the guest's data against a reference model.
//!
//! A scenario is one behaviour: a purpose line, then steps (QMP in QEMU's JSON, guest I/O in
//! qemu-io syntax, simulator directives). The syntax is documented in [`parse`] and
//! `scenarios/README.md`. Each run is a pure function of the file and the seed: the same pair
//! gives a byte-identical transcript and trace hash.

// Floors, bottom up: the vocabulary (`syntax`, `outcome`, `transcript`, `model`) <- what reads
// it (`lex`, `faults`, `device_args`, `image`, `workload`, `io`, `recorder`) <- `parse`, and
// `world` (the run's state) <- one file per family of steps (`graph_steps`, `guest_steps`,
// `drain_steps`, `fault_steps`, `checks`, `chain`, `pivot`, `restart`, `bitmap_steps`), `step` (one line per
// action), `crash_point` <- `run` (the loop).
mod amend;
mod bitmap_steps;
mod chain;
mod checks;
mod crash_point;
mod device_args;
mod drain_steps;
mod fault_steps;
mod faults;
mod graph_steps;
mod guest_steps;
mod image;
mod io;
mod isnap_steps;
mod lex;
pub mod model;
pub mod net_steps;
mod outcome;
pub mod parse;
mod pivot;
mod rate_check;
mod recorder;
mod restart;
mod run;
mod step;
mod syntax;
pub mod transcript;
mod workload;
mod world;

pub use outcome::{Failure, RunOptions, RunOutcome};
pub use parse::{ParseError, Scenario, parse};
pub use run::run;
