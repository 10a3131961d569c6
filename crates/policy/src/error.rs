//! Policy load errors: every problem found in a document, each with the JSON pointer of its field.

use std::fmt;

/// One problem in a policy document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{pointer}: {message}")]
pub struct PolicyError {
    /// RFC 6901 JSON pointer of the offending field (`""` is the whole document). For a missing
    /// field it is the pointer the field would have.
    pub pointer: String,
    /// What is wrong, lowercase, without a trailing period.
    pub message: String,
}

impl PolicyError {
    pub(crate) fn new(pointer: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            pointer: pointer.into(),
            message: message.into(),
        }
    }
}

/// Every error found in one policy document, in document order. Never empty when returned by
/// [`crate::Policy::from_json`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyErrors(pub Vec<PolicyError>);

impl PolicyErrors {
    /// The errors, in the order they were found.
    pub fn iter(&self) -> std::slice::Iter<'_, PolicyError> {
        self.0.iter()
    }

    /// Whether one of the errors is at exactly this pointer.
    pub fn has_pointer(&self, pointer: &str) -> bool {
        self.0.iter().any(|e| e.pointer == pointer)
    }
}

/// One error per line: `<pointer>: <message>`.
impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PolicyErrors {}

impl<'a> IntoIterator for &'a PolicyErrors {
    type Item = &'a PolicyError;
    type IntoIter = std::slice::Iter<'a, PolicyError>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_display_one_per_line_with_pointer_first() {
        let errs = PolicyErrors(vec![
            PolicyError::new("/version", "missing required field"),
            PolicyError::new("/tools/a~1b", "unknown field"),
        ]);
        assert_eq!(
            errs.to_string(),
            "/version: missing required field\n/tools/a~1b: unknown field"
        );
    }
}
