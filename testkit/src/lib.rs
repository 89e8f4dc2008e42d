//! Test support for delegate: a scripted fake of the Anthropic Messages API (the only stand-in the
//! tests use for an LLM) and harness helpers that start real components (PostgreSQL).

pub mod anthropic;
pub mod postgres;
