//! Scenario files: parse them, run them on the simulator against an unchanged engine, record a
//! transcript, check the guest's data against a reference model.
//!
//! A scenario is one behaviour: a purpose line, then steps (QMP in QEMU's JSON, guest I/O in
//! qemu-io syntax, simulator directives). The syntax is documented in [`parse`] and
//! `scenarios/README.md`. Each run is a pure function of the file and the seed: the same pair
//! gives a byte-identical transcript and trace hash.

mod chain;
mod checks;
mod crash_point;
mod faults;
mod image;
mod io;
mod lex;
pub mod model;
pub mod parse;
mod pivot;
mod restart;
mod run;
pub mod transcript;
mod workload;

pub use parse::{ParseError, Scenario, parse};
pub use run::{Failure, RunOptions, RunOutcome, run};
