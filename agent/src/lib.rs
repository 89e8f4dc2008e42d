//! delegate's local agent: the tunnel protocol shared with the server ([`protocol`]: frame codec,
//! header types, limits), the stream multiplexer both ends run ([`mux`]), and the client behind
//! `delegate agent connect` ([`client`], [`credentials`]): it registers with a one-time code, keeps
//! a WebSocket to the server, and connects each stream the server opens to the local
//! `opencode serve`, except the server's repository requests, which it answers itself
//! ([`repos`]: a run's work dir seeded from a bundle, its change exported as one).
//!
//! Without the default `client` feature only [`protocol`] is built (for the fuzzer).

#![warn(missing_docs)]
#![forbid(unsafe_code)]

#[cfg(feature = "client")]
pub mod client;
#[cfg(feature = "client")]
pub mod credentials;
#[cfg(feature = "client")]
pub mod mux;
pub mod protocol;
#[cfg(feature = "client")]
pub mod repos;
#[cfg(feature = "client")]
pub mod wire;
