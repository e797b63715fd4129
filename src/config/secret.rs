//! [`Secret`]: a config value that must never reach a log line or an error message.
//!
//! The type does the redacting, so the structs that hold a secret can derive `Debug` and a
//! `{config:?}` anywhere is safe. Reading the value takes an explicit [`Secret::expose`],
//! which is easy to find in review.

use std::fmt;

use subtle::ConstantTimeEq;

/// A secret string (the token key, an SMTP URL with credentials). `Debug` and `Display`
/// print `<redacted>`; equality runs in constant time for equal lengths.
#[derive(Clone, Default)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value itself, for the one place that needs it (a key, a transport).
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Length in bytes; safe to report, and the secret's strength depends on it.
    pub fn len(&self) -> usize {
        self.0.len()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Secret {
        Secret::new(value)
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Secret {
        Secret(value)
    }
}

// A comparison that returns early on the first differing byte tells a timing attacker how
// many leading bytes were right; `subtle` compares every byte. Only the length can leak.
impl PartialEq<[u8]> for Secret {
    fn eq(&self, other: &[u8]) -> bool {
        self.0.as_bytes().ct_eq(other).into()
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Secret) -> bool {
        *self == *other.0.as_bytes()
    }
}

impl Eq for Secret {}

impl PartialEq<str> for Secret {
    fn eq(&self, other: &str) -> bool {
        *self == *other.as_bytes()
    }
}

impl PartialEq<Vec<u8>> for Secret {
    fn eq(&self, other: &Vec<u8>) -> bool {
        *self == **other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_itself_and_compares_by_value() {
        let s = Secret::new("hunter2-hunter2");
        assert_eq!(format!("{s:?} {s}"), "Secret(<redacted>) <redacted>");
        assert_eq!(s, Secret::from("hunter2-hunter2"));
        assert_ne!(s, Secret::from("hunter2-hunter3"));
        assert_ne!(s, Secret::from("hunter2"));
        assert!(s == *"hunter2-hunter2");
        assert_eq!(s, b"hunter2-hunter2".to_vec());
        assert_eq!(s.expose(), "hunter2-hunter2");
    }
}
