//! Test support for delegate: a scripted fake of the Anthropic Messages API (the only stand-in the
//! tests use for an LLM), throwaway PostgreSQL servers, and lookups of the other real components.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod anthropic;
pub mod postgres;
pub mod real;
