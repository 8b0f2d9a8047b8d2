//! Deterministic simulator for the blk engine.
