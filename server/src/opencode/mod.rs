//! Everything about opencode: the environment of an offline, proxied opencode, a client for
//! `opencode serve`'s HTTP API (warm sandboxes), and the parser that normalizes its JSON events.

pub mod events;
pub mod serve;

use serde_json::json;

/// Environment for opencode in a sandbox: isolated home, nothing phoning home, and a config whose
/// only provider is delegate's proxy at `proxy_base_url` (ending in `/v1`) with the sandbox token.
pub fn environment(
    home: &str,
    proxy_base_url: &str,
    sandbox_token: &str,
    model: &str,
    small_model: &str,
) -> Vec<(String, String)> {
    let config = json!({
        "$schema": "https://opencode.ai/config.json",
        "autoupdate": false,
        "share": "disabled",
        "model": model,
        "small_model": small_model,
        "enabled_providers": ["anthropic"],
        "provider": { "anthropic": { "options": { "baseURL": proxy_base_url, "apiKey": sandbox_token } } },
        // The sandbox is the safety boundary: no tool waits for a human to approve it.
        "permission": { "edit": "allow", "bash": "allow", "webfetch": "allow", "external_directory": "allow", "question": "deny" },
    });
    let mut env: Vec<(String, String)> = [
        ("HOME", home.to_string()),
        ("XDG_DATA_HOME", format!("{home}/.local/share")),
        ("XDG_CONFIG_HOME", format!("{home}/.config")),
        ("XDG_CACHE_HOME", format!("{home}/.cache")),
        ("XDG_STATE_HOME", format!("{home}/.local/state")),
        ("TMPDIR", "/tmp".to_string()),
        ("PATH", "/usr/local/bin:/usr/bin:/bin".to_string()),
        ("LANG", "C.UTF-8".to_string()),
        ("TERM", "dumb".to_string()),
        ("NO_COLOR", "1".to_string()),
        ("OPENCODE_CONFIG_CONTENT", config.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    for flag in [
        "OPENCODE_DISABLE_AUTOUPDATE",
        "OPENCODE_DISABLE_MODELS_FETCH",
        "OPENCODE_DISABLE_SHARE",
        "OPENCODE_DISABLE_LSP_DOWNLOAD",
        "OPENCODE_DISABLE_DEFAULT_PLUGINS",
        "OPENCODE_DISABLE_CLAUDE_CODE",
        "OPENCODE_DISABLE_EXTERNAL_SKILLS",
    ] {
        env.push((flag.to_string(), "1".to_string()));
    }
    env
}

/// `provider/model` split for opencode's HTTP API.
pub fn split_model(model: &str) -> (&str, &str) {
    model.split_once('/').unwrap_or(("anthropic", model))
}
