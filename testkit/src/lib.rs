//! Test support for delegate: a scripted fake of the Anthropic Messages API (the only stand-in the
//! tests use for an LLM), throwaway PostgreSQL servers, loopback stand-ins for package registries and git servers, lookups of the other real components, and
//! caller repositories made with real git.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod anthropic;
pub mod kube;
pub mod postgres;
pub mod real;
pub mod registry;
pub mod repos;
