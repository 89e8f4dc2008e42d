//! What every benchmark binary needs: command-line numbers, percentiles, settings from pairs.

#![allow(dead_code)] // each bench uses a different part

use delegate_server::settings::EnvSource;

/// `--name N` from the command line, else `default`.
pub fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub fn median(v: &mut [f64]) -> f64 {
    percentile(v, 0.5)
}

pub fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// Settings' environment from explicit pairs, so a bench never reads the real one.
pub struct Env(pub Vec<(String, String)>);

impl EnvSource for Env {
    fn var(&self, name: &str) -> Option<String> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }
}

pub mod relays;
