//! Workspace secrets: set by maintainers, sealed at rest with `DELEGATE_SECRET_KEY`
//! (XChaCha20-Poly1305, a random nonce per value, the workspace and name as associated data),
//! opened only to put them into a sandbox's environment.

use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

use super::{Error, Orchestrator, Result};
use crate::ids::now_ms;
use crate::settings::{Secret, SecretKey};
use crate::store::{Millis, Workspace};

/// The largest secret value.
pub const MAX_SECRET_BYTES: usize = 32 << 10;
/// At most this many secrets per workspace.
pub const MAX_WORKSPACE_SECRETS: usize = 200;
const NONCE_BYTES: usize = 24;

/// What the associated data binds a sealed value to: its workspace and name.
fn associated(workspace_id: &str, name: &str) -> Vec<u8> {
    format!("delegate secret v1\0{workspace_id}\0{name}").into_bytes()
}

/// Encrypts `value` for `workspace_id`/`name`: base64 of nonce and ciphertext.
pub fn seal(key: &SecretKey, workspace_id: &str, name: &str, value: &str) -> Result<String> {
    seal_bound(key, &associated(workspace_id, name), value)
}

/// Encrypts `value` bound to `aad` (what it is and where it belongs; a sealed value opens only
/// with the same): base64 of a random nonce and the ciphertext. [`seal`] for workspace secrets;
/// other stored credentials bind their own associated data.
pub(super) fn seal_bound(key: &SecretKey, aad: &[u8], value: &str) -> Result<String> {
    let cipher = XChaCha20Poly1305::new((&key.0).into());
    let nonce: [u8; NONCE_BYTES] = rand::random();
    let sealed = cipher
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: value.as_bytes(),
                aad,
            },
        )
        .map_err(|_| crate::error::internal("sealing a secret failed"))?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&sealed);
    Ok(base64::engine::general_purpose::STANDARD.encode(out))
}

/// Decrypts what [`seal`] made for the same workspace and name; anything else fails.
pub fn open(key: &SecretKey, workspace_id: &str, name: &str, sealed: &str) -> Option<Secret> {
    open_bound(key, &associated(workspace_id, name), sealed)
}

/// Decrypts what [`seal_bound`] made with the same `aad`; anything else fails.
pub(super) fn open_bound(key: &SecretKey, aad: &[u8], sealed: &str) -> Option<Secret> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(sealed)
        .ok()?;
    if bytes.len() < NONCE_BYTES {
        return None;
    }
    let (nonce, ciphertext) = bytes.split_at(NONCE_BYTES);
    let plain = XChaCha20Poly1305::new((&key.0).into())
        .decrypt(
            XNonce::from_slice(nonce),
            Payload {
                msg: ciphertext,
                aad,
            },
        )
        .ok()?;
    String::from_utf8(plain).ok().map(Secret::new)
}

/// A secret's name as listed (never its value).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct SecretName {
    /// The variable name the sandbox sees.
    pub name: String,
    /// When it was last set (ms since the epoch).
    pub updated_at: Millis,
}

impl Orchestrator {
    pub(super) fn secret_key(&self) -> Result<&SecretKey> {
        self.inner.settings.secret_key.as_ref().ok_or_else(|| {
            Error::Conflict(
                "secrets: this server has no DELEGATE_SECRET_KEY, so it cannot store or use \
                 secrets; its admin sets one (32 bytes: `openssl rand -base64 32`)"
                    .into(),
            )
        })
    }

    /// Sets workspace secret `name` to `value` (the caller is authorized already).
    pub async fn set_secret(
        &self,
        ws: &Workspace,
        name: &str,
        value: &str,
        by: Option<&str>,
    ) -> Result<()> {
        super::inputs::check_env_name("name", name)?;
        if value.is_empty() || value.len() > MAX_SECRET_BYTES || value.contains('\0') {
            return Err(Error::Invalid(format!(
                "value: 1 to {MAX_SECRET_BYTES} bytes, no NUL"
            )));
        }
        let key = self.secret_key()?;
        let names = self.inner.store.workspace_secret_names(&ws.id).await?;
        if names.len() >= MAX_WORKSPACE_SECRETS && !names.iter().any(|(n, _)| n == name) {
            return Err(Error::Limit(format!(
                "secrets: a workspace has at most {MAX_WORKSPACE_SECRETS}"
            )));
        }
        let sealed = seal(key, &ws.id, name, value)?;
        self.inner
            .store
            .put_workspace_secret(&ws.id, name, &sealed, by, now_ms())
            .await?;
        Ok(())
    }

    /// The names of a workspace's secrets.
    pub async fn list_secrets(&self, ws: &Workspace) -> Result<Vec<SecretName>> {
        Ok(self
            .inner
            .store
            .workspace_secret_names(&ws.id)
            .await?
            .into_iter()
            .map(|(name, updated_at)| SecretName { name, updated_at })
            .collect())
    }

    /// Removes a workspace secret; an unknown one is not found.
    pub async fn delete_secret(&self, ws: &Workspace, name: &str) -> Result<()> {
        if self
            .inner
            .store
            .delete_workspace_secret(&ws.id, name)
            .await?
        {
            Ok(())
        } else {
            Err(Error::NotFound(format!("secret {name}")))
        }
    }

    /// The value of workspace secret `name`; an unknown name is a clear error.
    pub(super) async fn secret_value(&self, ws: &Workspace, name: &str) -> Result<Secret> {
        let Some(sealed) = self.inner.store.workspace_secret(&ws.id, name).await? else {
            return Err(Error::Invalid(format!(
                "secrets: workspace `{}` has no secret `{name}` (its maintainers set secrets \
                 with PUT /api/workspaces/{{ws}}/secrets/{{name}})",
                ws.slug
            )));
        };
        let key = self.secret_key()?;
        open(key, &ws.id, name, &sealed).ok_or_else(|| {
            crate::error::internal(format!(
                "secret {name} of workspace {} does not open with DELEGATE_SECRET_KEY (was the \
                 key changed?)",
                ws.id
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_value_opens_only_for_its_workspace_name_and_key() {
        let key = SecretKey([7; 32]);
        let sealed = seal(&key, "wsp_a", "TOKEN", "hunter2").unwrap();
        assert!(!sealed.contains("hunter2"));
        assert_eq!(
            open(&key, "wsp_a", "TOKEN", &sealed).unwrap().expose(),
            "hunter2"
        );
        assert!(open(&key, "wsp_b", "TOKEN", &sealed).is_none());
        assert!(open(&key, "wsp_a", "OTHER", &sealed).is_none());
        assert!(open(&SecretKey([8; 32]), "wsp_a", "TOKEN", &sealed).is_none());
        // A fresh nonce each time: the same value never seals the same way twice.
        assert_ne!(sealed, seal(&key, "wsp_a", "TOKEN", "hunter2").unwrap());
        assert!(open(&key, "wsp_a", "TOKEN", "not base64!").is_none());
    }
}
