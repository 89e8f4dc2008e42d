//! delegate's server library: the orchestrator core (sandboxes, runs, the event log), storage,
//! sandbox backends and the Anthropic proxy. The `delegate` binary in `main.rs` wires them up.

pub mod events;
// pub mod store;  (re-enabled by the store work once it compiles)
