//! Tool-level wire rules.

/// A valid MCP tool name: 1 to 128 characters of `[A-Za-z0-9_.-]` (e.g. `run-rerun`).
pub fn is_valid_tool_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_allowed_characters_and_length_are_valid() {
        for n in [
            "a",
            "run-rerun",
            "git.status_v2",
            "A-Z.0_9",
            &"x".repeat(128),
        ] {
            assert!(is_valid_tool_name(n), "{n}");
        }
    }

    #[test]
    fn empty_long_and_other_characters_are_invalid() {
        for n in [
            "",
            &"x".repeat(129),
            "has space",
            "slash/name",
            "é",
            "tab\t",
            "a:b",
            "a\0",
        ] {
            assert!(!is_valid_tool_name(n), "{n:?}");
        }
    }
}
