//! The settings loader on an arbitrary settings file and environment: the input's first part
//! (up to a NUL) is the TOML file, each later part a `NAME=value` variable. Loading never panics,
//! and a refusal has words.
#![no_main]

use std::sync::OnceLock;

use delegate_server::settings::{EnvSource, Settings};
use libfuzzer_sys::fuzz_target;

struct Env(Vec<(String, String)>);

impl EnvSource for Env {
    fn var(&self, name: &str) -> Option<String> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .filter(|v| !v.is_empty())
    }
}

fn dir() -> &'static tempfile::TempDir {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("a temp dir"))
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.split('\0');
    let file = dir().path().join("delegate.toml");
    std::fs::write(&file, parts.next().unwrap_or_default()).unwrap();
    let mut env: Vec<(String, String)> = parts
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    // Never the caller's own data dir or database.
    let data_dir = dir().path().join("data").display().to_string();
    env.retain(|(k, _)| k != "DELEGATE_DATA_DIR" && k != "DELEGATE_CONFIG");
    env.push(("DELEGATE_DATA_DIR".into(), data_dir));
    if let Err(e) = Settings::load(Some(&file), &Env(env)) {
        assert!(!e.to_string().is_empty());
    }
});
