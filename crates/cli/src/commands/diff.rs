//! The line diff behind `tollgate policy diff`: both documents are pretty-printed with sorted
//! keys (so key order and whitespace never show up as changes), then compared line by line with
//! a longest-common-subsequence table and printed as unified-diff hunks.
//!
//! The common prefix and suffix are cut off before the table is built, so its size is that of the
//! changed middle, which for two versions of one policy is small.

use serde_json::Value;

/// One line of a diff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line<'a> {
    /// In both documents.
    Same(&'a str),
    /// Only in the old document.
    Removed(&'a str),
    /// Only in the new document.
    Added(&'a str),
}

/// A JSON document pretty-printed with every object's keys sorted; text that is not JSON is
/// returned as it is.
pub fn normalize(document: &str) -> String {
    match serde_json::from_str::<Value>(document) {
        Ok(value) => {
            serde_json::to_string_pretty(&sort_keys(value)).unwrap_or_else(|_| document.to_owned())
        }
        Err(_) => document.to_owned(),
    }
}

fn sort_keys(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k, sort_keys(v)))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sort_keys).collect()),
        other => other,
    }
}

/// The lines of `old` and `new` as a shortest edit: every line of both, in order, marked as
/// kept, removed or added (removals before additions within a change).
pub fn diff_lines<'a>(old: &[&'a str], new: &[&'a str]) -> Vec<Line<'a>> {
    let prefix = old.iter().zip(new).take_while(|(a, b)| a == b).count();
    let suffix = old[prefix..]
        .iter()
        .rev()
        .zip(new[prefix..].iter().rev())
        .take_while(|(a, b)| a == b)
        .count();
    let a = &old[prefix..old.len() - suffix];
    let b = &new[prefix..new.len() - suffix];

    // lcs[i][j]: the length of the longest common subsequence of a[i..] and b[j..].
    let width = b.len() + 1;
    let mut lcs = vec![0usize; (a.len() + 1) * width];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i * width + j] = if a[i] == b[j] {
                lcs[(i + 1) * width + j + 1] + 1
            } else {
                lcs[(i + 1) * width + j].max(lcs[i * width + j + 1])
            };
        }
    }

    let mut lines: Vec<Line<'a>> = old[..prefix].iter().map(|l| Line::Same(l)).collect();
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        if a[i] == b[j] {
            lines.push(Line::Same(a[i]));
            i += 1;
            j += 1;
        } else if lcs[(i + 1) * width + j] >= lcs[i * width + j + 1] {
            lines.push(Line::Removed(a[i]));
            i += 1;
        } else {
            lines.push(Line::Added(b[j]));
            j += 1;
        }
    }
    lines.extend(a[i..].iter().map(|l| Line::Removed(l)));
    lines.extend(b[j..].iter().map(|l| Line::Added(l)));
    lines.extend(old[old.len() - suffix..].iter().map(|l| Line::Same(l)));
    lines
}

/// A unified diff of `old` and `new` with `context` unchanged lines around each change, under
/// `--- old_name` / `+++ new_name`; empty when the texts are equal.
pub fn unified(old: &str, new: &str, old_name: &str, new_name: &str, context: usize) -> String {
    let old_lines: Vec<&str> = old.lines().collect();
    let new_lines: Vec<&str> = new.lines().collect();
    let lines = diff_lines(&old_lines, &new_lines);
    let changed: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| !matches!(l, Line::Same(_)))
        .map(|(i, _)| i)
        .collect();
    if changed.is_empty() {
        return String::new();
    }

    // Group changes whose context overlaps into hunks of [start, end) over `lines`.
    let mut hunks: Vec<(usize, usize)> = Vec::new();
    for &index in &changed {
        let start = index.saturating_sub(context);
        let end = (index + 1 + context).min(lines.len());
        match hunks.last_mut() {
            Some(last) if start <= last.1 => last.1 = end,
            _ => hunks.push((start, end)),
        }
    }

    let mut out = format!("--- {old_name}\n+++ {new_name}\n");
    // Line numbers (1-based) in old and new at the start of `lines[k]`.
    let mut old_at = vec![1usize; lines.len() + 1];
    let mut new_at = vec![1usize; lines.len() + 1];
    for (k, line) in lines.iter().enumerate() {
        old_at[k + 1] = old_at[k] + usize::from(!matches!(line, Line::Added(_)));
        new_at[k + 1] = new_at[k] + usize::from(!matches!(line, Line::Removed(_)));
    }
    for (start, end) in hunks {
        let old_count = old_at[end] - old_at[start];
        let new_count = new_at[end] - new_at[start];
        // Unified format numbers an empty range by the line before it.
        let old_start = if old_count == 0 {
            old_at[start] - 1
        } else {
            old_at[start]
        };
        let new_start = if new_count == 0 {
            new_at[start] - 1
        } else {
            new_at[start]
        };
        out.push_str(&format!(
            "@@ -{old_start},{old_count} +{new_start},{new_count} @@\n"
        ));
        for line in &lines[start..end] {
            let (mark, text) = match line {
                Line::Same(text) => (' ', text),
                Line::Removed(text) => ('-', text),
                Line::Added(text) => ('+', text),
            };
            out.push(mark);
            out.push_str(text);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn equal_texts_have_no_diff() {
        assert_eq!(unified("a\nb\n", "a\nb\n", "x", "y", 3), "");
    }

    #[test]
    fn the_diff_keeps_the_longest_common_subsequence() {
        let old = ["a", "b", "c", "d", "e"];
        let new = ["a", "c", "x", "d", "e", "f"];
        let lines = diff_lines(&old, &new);
        assert_eq!(
            lines,
            vec![
                Line::Same("a"),
                Line::Removed("b"),
                Line::Same("c"),
                Line::Added("x"),
                Line::Same("d"),
                Line::Same("e"),
                Line::Added("f"),
            ]
        );
        let kept = lines.iter().filter(|l| matches!(l, Line::Same(_))).count();
        assert_eq!(kept, 4);
    }

    #[test]
    fn one_side_empty_is_all_removed_or_all_added() {
        assert_eq!(
            diff_lines(&["a", "b"], &[]),
            vec![Line::Removed("a"), Line::Removed("b")]
        );
        assert_eq!(diff_lines(&[], &["a"]), vec![Line::Added("a")]);
    }

    #[test]
    fn hunks_carry_context_and_line_ranges() {
        let old: String = (1..=10).map(|i| format!("{i}\n")).collect();
        let new = old.replace("5\n", "five\n");
        let diff = unified(&old, &new, "v1", "v2", 2);
        assert_eq!(
            diff,
            "--- v1\n+++ v2\n@@ -3,5 +3,5 @@\n 3\n 4\n-5\n+five\n 6\n 7\n"
        );
    }

    #[test]
    fn distant_changes_make_separate_hunks_and_close_ones_merge() {
        let old: String = (1..=20).map(|i| format!("{i}\n")).collect();
        let edit = |changes: &[(u32, &str)]| -> String {
            (1..=20u32)
                .map(|i| match changes.iter().find(|(n, _)| *n == i) {
                    Some((_, text)) => format!("{text}\n"),
                    None => format!("{i}\n"),
                })
                .collect()
        };
        let far = edit(&[(2, "two"), (18, "eighteen")]);
        let diff = unified(&old, &far, "a", "b", 1);
        assert_eq!(diff.matches("@@ -").count(), 2, "{diff}");
        let near = edit(&[(5, "five"), (7, "seven")]);
        let diff = unified(&old, &near, "a", "b", 1);
        assert_eq!(diff.matches("@@ -").count(), 1, "{diff}");
        assert!(diff.contains("@@ -4,5 +4,5 @@"), "{diff}");
    }

    #[test]
    fn a_pure_insertion_numbers_the_empty_old_range_by_the_line_before() {
        let diff = unified("a\nb\n", "a\nx\nb\n", "o", "n", 0);
        assert_eq!(diff, "--- o\n+++ n\n@@ -1,0 +2,1 @@\n+x\n");
    }

    #[test]
    fn key_order_and_whitespace_are_not_differences() {
        let a = normalize(r#"{"b":1,"a":{"d":[1,2],"c":true}}"#);
        let b = normalize("{\n  \"a\": {\"c\": true, \"d\": [1, 2]},\n  \"b\": 1\n}");
        assert_eq!(a, b);
        assert!(a.find("\"a\"").unwrap() < a.find("\"b\"").unwrap());
        assert_eq!(normalize("not json"), "not json");
    }
}
