//! Shared harness of blk's fuzz targets: a simulator with the image under test on its virtual
//! disk (`harness`), the qcow2 exercise every image target runs (`exercise`: open read-only
//! and read-write, walk block status, read, check, repair), a byte model for qcow2 I/O
//! sequences (`model`), and the structure-aware image builder with its field corruptions
//! (`build`).
//!
//! Invariants asserted here (a violation is a panic, which libFuzzer reports): the simulator
//! never deadlocks; a malformed image fails with an error value; block status always makes
//! progress; a repaired image checks clean; reads match the model; a valid image built by
//! `build` opens and checks clean before it is corrupted.

pub mod build;
pub mod exercise;
pub mod harness;
pub mod model;
pub mod nbd;
