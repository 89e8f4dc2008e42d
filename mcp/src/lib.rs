//! delegate's MCP surface. For now it holds the wire types every part shares; the rmcp tool
//! service builds on them.

#![forbid(unsafe_code)]

pub mod types;
