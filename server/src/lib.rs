//! delegate's server library: the orchestrator core (sandboxes, runs, the event log), storage,
//! sandbox backends and the Anthropic proxy. The `delegate` binary in `main.rs` wires them up.

// Every public item says what it is for; `cargo doc` and the OpenAPI descriptions rely on it.
#![warn(missing_docs)]

pub mod api;
pub mod app;
pub mod auth;
pub mod bootstrap;
pub mod credentials;
pub mod delegation;
pub mod egress;
pub mod envelope;
pub mod error;
pub mod gateway;
pub mod ids;
pub mod names;
pub mod net;
pub mod opencode;
pub mod orchestrator;
pub mod proxy;
pub mod relay;
pub mod roles;
pub mod sandbox;
pub mod serve;
pub mod settings;
pub mod state;
pub mod store;
pub mod tunnel;
pub mod watch;
pub mod web;
