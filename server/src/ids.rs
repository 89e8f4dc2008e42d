//! Identifiers and secrets: prefixed, time-ordered ids for rows, and random tokens whose SHA-256 is
//! all the database ever sees.

use rand::RngCore;
use sha2::{Digest, Sha256};

/// A new id like `run_0192f3...`: a prefix saying what it names, then a UUIDv7 (time-ordered, so
/// ids sort by creation).
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::now_v7().simple())
}

/// A new random secret with a prefix (`dlg_` API tokens, `dsb_` sandbox proxy tokens).
pub fn new_secret(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{prefix}{}", hex::encode(bytes))
}

/// The hex SHA-256 of a secret: what the store keeps instead of the secret.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// Whether `s` looks like an id with `prefix` (cheap validation of ids from the outside).
pub fn is_id(prefix: &str, s: &str) -> bool {
    s.strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('_'))
        .is_some_and(|hex| hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Defines a typed id: checked once where it enters (`parse`), made fresh with `new`, and read as
/// the text the store keeps (`as_str`, `Display`).
macro_rules! typed_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal, $noun:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// The prefix of this kind of id.
            pub const PREFIX: &'static str = $prefix;

            /// A fresh id (time-ordered, see [`new_id`]).
            #[allow(clippy::new_without_default)]
            pub fn new() -> Self {
                $name(new_id($prefix))
            }

            /// The id if `s` has this kind's shape ([`is_id`]); `None` for anything else.
            pub fn parse(s: &str) -> Option<Self> {
                is_id($prefix, s).then(|| $name(s.to_string()))
            }

            /// The id as text, for the store and the wire.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The id as owned text, without a copy.
            pub fn into_string(self) -> String {
                self.0
            }
        }

        /// [`parse`](Self::parse) for input from outside: a malformed id names nothing, so it is
        /// not found, exactly as a well-formed unknown one ([`MalformedId`]).
        impl std::str::FromStr for $name {
            type Err = MalformedId;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s).ok_or_else(|| MalformedId {
                    noun: $noun,
                    text: s.to_string(),
                })
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        // Sound: the derived `Hash` and `Eq` are those of the inner `String`, hence of `str`. Maps
        // keyed by the id can be asked with a row's `&str`.
        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

/// Text that is not the id it should be. It names nothing, so every surface tells it as it tells
/// an unknown id: `sandbox "x" not found` (`crate::error::Error::NotFound` of [`Self::what`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MalformedId {
    noun: &'static str,
    text: String,
}

impl MalformedId {
    /// What was looked for, as a not-found error names it: `sandbox "x"`.
    pub fn what(&self) -> String {
        format!("{} {:?}", self.noun, self.text)
    }
}

impl std::fmt::Display for MalformedId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} not found", self.what())
    }
}

impl std::error::Error for MalformedId {}

typed_id!(
    /// A run's id (`run_` + 32 hex digits).
    RunId,
    "run",
    "run"
);
typed_id!(
    /// A sandbox's id (`sbx_` + 32 hex digits).
    SandboxId,
    "sbx",
    "sandbox"
);

/// Who made a run or a sandbox, as the `created_by` column keeps it: `user:<id>`,
/// `token:<id>`, `mcp@<user>[/<token>]:<client>` (`mcp:<client>` in older rows) or `cli`. [`Display`](std::fmt::Display) and
/// [`FromStr`](std::str::FromStr) are the stored text both ways, so rows written before this type
/// read back as they were.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Origin {
    /// A signed-in person (`user:<id>`).
    User(String),
    /// An API token (`token:<id>`).
    Token(String),
    /// An MCP client, by the name it gave (`mcp:<client>`): rows written before the caller was
    /// recorded too.
    Mcp(String),
    /// An MCP client (the name it gave, which proves nothing) and who it authenticated as: the
    /// user and the API token's id, never the token (`mcp@<user>[/<token>]:<client>`).
    McpAs {
        /// The name from `initialize`.
        client: String,
        /// The authenticated user's id.
        user: String,
        /// The API token's id, when one was used.
        token: Option<String>,
    },
    /// `delegate run` or an admin command (`cli`).
    Cli,
    /// Any other stored text, kept as it is (tests and older rows write free text).
    Other(String),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::User(id) => write!(f, "user:{id}"),
            Origin::Token(id) => write!(f, "token:{id}"),
            Origin::Mcp(client) => write!(f, "mcp:{client}"),
            Origin::McpAs {
                client,
                user,
                token: Some(token),
            } => write!(f, "mcp@{user}/{token}:{client}"),
            Origin::McpAs {
                client,
                user,
                token: None,
            } => write!(f, "mcp@{user}:{client}"),
            Origin::Cli => f.write_str("cli"),
            Origin::Other(text) => f.write_str(text),
        }
    }
}

impl std::str::FromStr for Origin {
    type Err = std::convert::Infallible;

    /// Never fails: unknown text is [`Origin::Other`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some((who, client)) = s.strip_prefix("mcp@").and_then(|r| r.split_once(':')) {
            let (user, token) = match who.split_once('/') {
                Some((user, token)) => (user, Some(token.to_string())),
                None => (who, None),
            };
            return Ok(Origin::McpAs {
                client: client.to_string(),
                user: user.to_string(),
                token,
            });
        }
        Ok(match s.split_once(':') {
            Some(("user", id)) => Origin::User(id.to_string()),
            Some(("token", id)) => Origin::Token(id.to_string()),
            Some(("mcp", client)) => Origin::Mcp(client.to_string()),
            _ if s == "cli" => Origin::Cli,
            _ => Origin::Other(s.to_string()),
        })
    }
}

impl From<&str> for Origin {
    fn from(s: &str) -> Self {
        match s.parse() {
            Ok(origin) => origin,
            Err(never) => match never {},
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_secrets_have_their_shape() {
        let id = new_id("run");
        assert!(is_id("run", &id), "{id}");
        assert!(!is_id("sbx", &id));
        assert!(!is_id("run", "run_../../etc"));
        let s = new_secret("dsb_");
        assert_eq!(s.len(), 4 + 64);
        assert_ne!(hash_secret(&s), s);
        assert_eq!(hash_secret(&s).len(), 64);
    }

    #[test]
    fn typed_ids_parse_only_their_shape() {
        let run = RunId::new();
        assert_eq!(RunId::parse(run.as_str()), Some(run.clone()));
        assert_eq!(SandboxId::parse(run.as_str()), None);
        assert_eq!(SandboxId::parse("sbx_../../etc"), None);
        let sandbox = SandboxId::new();
        assert_eq!(sandbox.to_string(), sandbox.as_str());
        assert_eq!(sandbox.as_str().parse::<SandboxId>().ok(), Some(sandbox));
        // Malformed input reads like an unknown id, with the noun the surfaces have always used.
        let bad = "../x".parse::<SandboxId>().unwrap_err();
        assert_eq!(bad.to_string(), r#"sandbox "../x" not found"#);
        assert_eq!(bad.what(), r#"sandbox "../x""#);
        let bad = "sbx_1".parse::<RunId>().unwrap_err();
        assert_eq!(bad.to_string(), r#"run "sbx_1" not found"#);
    }

    #[test]
    fn origins_read_back_as_stored() {
        for text in [
            "user:u1",
            "token:tok_1",
            "mcp:claude-code",
            "mcp@usr_1:claude-code",
            "mcp@usr_1/tok_2:claude:code",
            "cli",
            "test",
            "user:",
            "cli:x",
        ] {
            assert_eq!(Origin::from(text).to_string(), text);
        }
        assert_eq!(Origin::from("user:u1"), Origin::User("u1".into()));
        assert_eq!(Origin::from("mcp:a:b"), Origin::Mcp("a:b".into()));
        assert_eq!(
            Origin::from("mcp@usr_1/tok_2:cc"),
            Origin::McpAs {
                client: "cc".into(),
                user: "usr_1".into(),
                token: Some("tok_2".into())
            }
        );
        assert_eq!(Origin::from("cli"), Origin::Cli);
        assert_eq!(Origin::from("cli:x"), Origin::Other("cli:x".into()));
    }
}
