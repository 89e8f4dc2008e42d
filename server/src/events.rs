//! Normalizes opencode output into delegate events.
