//! What a caller may add to a fresh sandbox besides files: `env`, `secrets`, `setup` and
//! `image`. Everything is checked here before any sandbox row exists, so bad input leaves
//! nothing behind.

use std::collections::BTreeMap;

use super::{Error, Orchestrator, Result};
use crate::settings::Secret;
use crate::store::Workspace;

/// At most this many `env` entries.
pub const MAX_ENV_ENTRIES: usize = 64;
/// At most this many bytes of `env` names and values together.
pub const MAX_ENV_BYTES: usize = 64 << 10;
/// The largest `setup` script.
pub const MAX_SETUP_BYTES: usize = 64 << 10;
/// At most this many `secrets` per sandbox.
pub const MAX_SECRETS: usize = 64;

/// Names delegate sets itself (exactly, any case): a caller's value would break the sandbox or
/// bypass the egress proxy.
const RESERVED: &[&str] = &[
    "HOME",
    "PATH",
    "USER",
    "LOGNAME",
    "SHELL",
    "PWD",
    "TMPDIR",
    "LANG",
    "TERM",
    "NO_COLOR",
    "TASK",
    "PUID",
    "PGID",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "FTP_PROXY",
    "LD_PRELOAD",
    "LD_LIBRARY_PATH",
];
/// Prefixes of names delegate (or opencode's configuration) owns.
const RESERVED_PREFIXES: &[&str] = &["DELEGATE_", "OPENCODE_", "ANTHROPIC_", "XDG_"];

/// The sandbox inputs of a run or sandbox request, as the caller gave them.
#[derive(Debug, Clone, Default)]
pub struct SandboxInputs {
    /// Environment variables (not secret).
    pub env: BTreeMap<String, String>,
    /// Names of workspace secrets to inject.
    pub secrets: Vec<String>,
    /// A shell script run in the work dir before the task (a warm sandbox: at creation).
    pub setup: Option<String>,
    /// A container image from the admin's list.
    pub image: Option<String>,
}

impl SandboxInputs {
    /// Whether the caller asked for anything (a warm sandbox's run may not).
    pub fn is_empty(&self) -> bool {
        self.env.is_empty()
            && self.secrets.is_empty()
            && self.setup.is_none()
            && self.image.is_none()
    }
}

/// Whether `name` is a variable name a caller may set (`what` names the field in errors).
pub fn check_env_name(what: &str, name: &str) -> Result<()> {
    let mut chars = name.chars();
    let valid = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 128;
    if !valid {
        return Err(Error::Invalid(format!(
            "{what}: `{}` is not a variable name (letters, digits and _, not starting with a \
             digit, at most 128)",
            name.escape_default()
        )));
    }
    let upper = name.to_ascii_uppercase();
    if RESERVED.contains(&upper.as_str()) || RESERVED_PREFIXES.iter().any(|p| upper.starts_with(p))
    {
        return Err(Error::Invalid(format!(
            "{what}: `{name}` is set by delegate itself (reserved: {}, and names starting with \
             {})",
            RESERVED.join(", "),
            RESERVED_PREFIXES.join(", ")
        )));
    }
    Ok(())
}

/// Checks what needs no store: names, sizes, the image list and the backend (`takes_images`:
/// whether it runs containers whose image a sandbox may choose).
pub fn validate(
    inputs: &SandboxInputs,
    images: &[String],
    backend: &str,
    takes_images: bool,
) -> Result<()> {
    if inputs.env.len() > MAX_ENV_ENTRIES {
        return Err(Error::Invalid(format!(
            "env: {} entries, at most {MAX_ENV_ENTRIES}",
            inputs.env.len()
        )));
    }
    let mut bytes = 0;
    for (name, value) in &inputs.env {
        check_env_name("env", name)?;
        if value.contains('\0') {
            return Err(Error::Invalid(format!(
                "env: the value of `{name}` contains a NUL byte"
            )));
        }
        bytes += name.len() + value.len();
    }
    if bytes > MAX_ENV_BYTES {
        return Err(Error::Invalid(format!(
            "env: {bytes} bytes of names and values, at most {MAX_ENV_BYTES} (64 KiB)"
        )));
    }
    if inputs.secrets.len() > MAX_SECRETS {
        return Err(Error::Invalid(format!(
            "secrets: {} names, at most {MAX_SECRETS}",
            inputs.secrets.len()
        )));
    }
    for name in &inputs.secrets {
        check_env_name("secrets", name)?;
        if inputs.env.contains_key(name) {
            return Err(Error::Invalid(format!(
                "secrets: `{name}` is also in env; give it once"
            )));
        }
    }
    if let Some(setup) = &inputs.setup {
        if setup.len() > MAX_SETUP_BYTES {
            return Err(Error::Invalid(format!(
                "setup: {} bytes, at most {MAX_SETUP_BYTES} (64 KiB); put a longer script in \
                 `files` and run it from setup",
                setup.len()
            )));
        }
        if setup.contains('\0') {
            return Err(Error::Invalid(
                "setup: the script contains a NUL byte".into(),
            ));
        }
    }
    if let Some(image) = &inputs.image {
        if !takes_images {
            return Err(Error::Invalid(format!(
                "image: the {backend} backend runs no containers, so it has no image to choose; \
                 omit `image` (a server with DELEGATE_BACKEND=docker offers images)"
            )));
        }
        if !images.iter().any(|i| i == image) {
            return Err(Error::Invalid(format!(
                "image: `{}` is not one of this server's sandbox images ({}); an admin adds \
                 images with DELEGATE_SANDBOX_IMAGES",
                image.escape_default(),
                images.join(", ")
            )));
        }
    }
    Ok(())
}

impl Orchestrator {
    /// Checks the inputs and resolves the secrets of workspace `ws`: the sandbox's extra
    /// environment (secrets last), and the secrets' names and values for redaction.
    pub(super) async fn resolve_inputs(
        &self,
        ws: &Workspace,
        inputs: &SandboxInputs,
    ) -> Result<ResolvedInputs> {
        let settings = &self.inner.settings;
        validate(
            inputs,
            &settings.sandbox_images(),
            self.inner.backend.name(),
            self.inner.backend.takes_images(),
        )?;
        let mut env: Vec<(String, Secret)> = inputs
            .env
            .iter()
            .map(|(k, v)| (k.clone(), Secret::new(v.clone())))
            .collect();
        let mut secrets = Vec::new();
        for name in &inputs.secrets {
            let value = self.secret_value(ws, name).await?;
            env.push((name.clone(), value.clone()));
            secrets.push((name.clone(), value));
        }
        Ok(ResolvedInputs { env, secrets })
    }
}

impl Orchestrator {
    /// The secrets a sandbox was created with, by the names its row keeps, for redaction. A
    /// secret deleted since is skipped.
    pub(super) async fn sandbox_secrets(
        &self,
        ws: &Workspace,
        meta: &serde_json::Value,
    ) -> Vec<(String, Secret)> {
        let mut out = Vec::new();
        let names = meta["secrets"].as_array().cloned().unwrap_or_default();
        for name in names.iter().filter_map(|n| n.as_str()) {
            if let Ok(value) = self.secret_value(ws, name).await {
                out.push((name.to_string(), value));
            }
        }
        out
    }
}

/// Inputs ready for the backend.
#[derive(Debug, Clone, Default)]
pub(super) struct ResolvedInputs {
    /// The sandbox's extra environment.
    pub(super) env: Vec<(String, Secret)>,
    /// The secrets in it, for redaction.
    pub(super) secrets: Vec<(String, Secret)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> SandboxInputs {
        SandboxInputs {
            env: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn env_names_are_identifiers_and_not_delegates_own() {
        assert!(validate(&env(&[("FOO_1", "x"), ("_bar", "")]), &[], "process", false).is_ok());
        for bad in ["1FOO", "FOO-BAR", "", "A B", "é"] {
            let err = validate(&env(&[(bad, "x")]), &[], "process", false).unwrap_err();
            assert!(err.to_string().contains("not a variable name"), "{err}");
        }
        for reserved in [
            "PATH",
            "home",
            "https_proxy",
            "DELEGATE_X",
            "OPENCODE_CONFIG",
            "ANTHROPIC_API_KEY",
        ] {
            let err = validate(&env(&[(reserved, "x")]), &[], "process", false).unwrap_err();
            assert!(err.to_string().contains("set by delegate itself"), "{err}");
        }
    }

    #[test]
    fn sizes_are_capped() {
        let many: Vec<(String, String)> = (0..65).map(|i| (format!("V{i}"), "x".into())).collect();
        let inputs = SandboxInputs {
            env: many.into_iter().collect(),
            ..Default::default()
        };
        assert!(
            validate(&inputs, &[], "process", false)
                .unwrap_err()
                .to_string()
                .contains("at most 64")
        );
        let big = "x".repeat(MAX_ENV_BYTES);
        assert!(
            validate(&env(&[("BIG", &big)]), &[], "process", false)
                .unwrap_err()
                .to_string()
                .contains("64 KiB")
        );
        let setup = SandboxInputs {
            setup: Some("x".repeat(MAX_SETUP_BYTES + 1)),
            ..Default::default()
        };
        assert!(
            validate(&setup, &[], "process", false)
                .unwrap_err()
                .to_string()
                .contains("setup:")
        );
    }

    #[test]
    fn images_only_on_docker_and_only_listed_ones() {
        let listed = vec!["delegate-sandbox:1".to_string(), "node:22".to_string()];
        let want = |i: &str| SandboxInputs {
            image: Some(i.into()),
            ..Default::default()
        };
        assert!(validate(&want("node:22"), &listed, "docker", true).is_ok());
        let err = validate(&want("node:22"), &listed, "process", false).unwrap_err();
        assert!(err.to_string().contains("runs no containers"), "{err}");
        let err = validate(&want("evil:latest"), &listed, "docker", true).unwrap_err();
        assert!(
            err.to_string()
                .contains("not one of this server's sandbox images"),
            "{err}"
        );
    }
}
