//! Production environment (placeholder until the reactor lands).
