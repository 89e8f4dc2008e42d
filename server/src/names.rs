//! Validated user input that is stored and shown again: [`Name`] (sandbox, workspace, token and
//! agent names, users' display names) and [`Email`] (an account's identity). Each rule and its
//! message is written once here, so the places that take a name cannot drift apart.

use std::fmt;

/// The longest name, counted in characters (not bytes: "é" is one).
pub const MAX_NAME_CHARS: usize = 200;
/// The longest email address, in bytes (RFC 5321's path limit less its angle brackets).
pub const MAX_EMAIL_BYTES: usize = 254;

/// A name as a person typed it: trimmed, 1 to [`MAX_NAME_CHARS`] characters, no control
/// characters (they would break logs and terminals).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Name(String);

/// Why a [`Name`] was refused; its text is the API's message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("name: 1 to 200 characters, no control characters")]
pub struct BadName;

impl Name {
    /// Trims `s` and checks it against the rules on [`Name`].
    pub fn parse(s: &str) -> Result<Name, BadName> {
        let s = s.trim();
        if s.is_empty() || s.chars().count() > MAX_NAME_CHARS || s.chars().any(char::is_control) {
            return Err(BadName);
        }
        Ok(Name(s.to_string()))
    }

    /// The name, trimmed.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name, trimmed, by value.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An email address, normalised (trimmed, lower case) so one person is one account: a non-empty
/// local part and domain around an `@`, at most [`MAX_EMAIL_BYTES`], no whitespace or control
/// characters. Deliberately loose beyond that: the provider or the person vouches for the rest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Email(String);

/// Why an [`Email`] was refused; its text is the API's message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("email: not an email address")]
pub struct BadEmail;

impl Email {
    /// Normalises `s` (trimmed, lower case) and checks it against the rules on [`Email`].
    pub fn parse(s: &str) -> Result<Email, BadEmail> {
        let email = s.trim().to_lowercase();
        let ok = email.len() <= MAX_EMAIL_BYTES
            && !email.chars().any(|c| c.is_whitespace() || c.is_control())
            && email
                .split_once('@')
                .is_some_and(|(local, domain)| !local.is_empty() && !domain.is_empty());
        if ok { Ok(Email(email)) } else { Err(BadEmail) }
    }

    /// The normalised address.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The part before the `@` (a default display name and workspace slug).
    pub fn local_part(&self) -> &str {
        self.0.split('@').next().unwrap_or_default()
    }

    /// The normalised address, by value.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_trimmed_and_bounded_in_characters() {
        assert_eq!(Name::parse("  laptop cli ").unwrap().as_str(), "laptop cli");
        assert_eq!(Name::parse(""), Err(BadName));
        assert_eq!(Name::parse("   "), Err(BadName));
        // 200 two-byte characters (400 bytes) fit; one more does not.
        let at_max = "é".repeat(MAX_NAME_CHARS);
        assert_eq!(Name::parse(&at_max).unwrap().as_str(), at_max);
        assert_eq!(Name::parse(&format!("{at_max}é")), Err(BadName));
        assert!(Name::parse(&"a".repeat(MAX_NAME_CHARS)).is_ok());
        assert_eq!(Name::parse(&"a".repeat(MAX_NAME_CHARS + 1)), Err(BadName));
        // Surrounding whitespace does not count towards the limit.
        assert!(Name::parse(&format!(" {} ", "a".repeat(MAX_NAME_CHARS))).is_ok());
    }

    #[test]
    fn names_refuse_control_characters() {
        for bad in [
            "a\u{0}b",
            "line\nbreak",
            "tab\there",
            "esc\u{1b}[31m",
            "del\u{7f}",
        ] {
            assert_eq!(Name::parse(bad), Err(BadName), "{bad:?}");
        }
        assert_eq!(
            BadName.to_string(),
            "name: 1 to 200 characters, no control characters"
        );
    }

    #[test]
    fn emails_are_normalised_and_need_both_parts() {
        let e = Email::parse("  Ada@Example.COM ").unwrap();
        assert_eq!(e.as_str(), "ada@example.com");
        assert_eq!(e.local_part(), "ada");
        for bad in [
            "",
            "ada",
            "@example.com",
            "ada@",
            "a da@example.com",
            "ada@exa\u{0}mple.com",
            "ada@example.com\u{7f}",
        ] {
            assert_eq!(Email::parse(bad), Err(BadEmail), "{bad:?}");
        }
        assert_eq!(BadEmail.to_string(), "email: not an email address");
    }

    #[test]
    fn emails_are_bounded_in_bytes() {
        let domain = "@example.com";
        let at_max = format!("{}{domain}", "a".repeat(MAX_EMAIL_BYTES - domain.len()));
        assert!(Email::parse(&at_max).is_ok());
        assert_eq!(Email::parse(&format!("a{at_max}")), Err(BadEmail));
        // Non-ASCII counts in bytes: 127 two-byte characters are 254 bytes, too many with a domain.
        assert_eq!(
            Email::parse(&format!("{}{domain}", "é".repeat(127))),
            Err(BadEmail)
        );
    }
}
