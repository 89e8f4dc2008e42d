//! Scripted fake Anthropic upstream.
