//! RFC 8785 JSON Canonicalization Scheme (JCS).
//!
//! - Object members sorted by their names compared as UTF-16 code unit sequences (not as UTF-8
//!   bytes: the two orders differ for characters above U+FFFF versus U+E000..U+FFFF).
//! - Numbers printed as ECMAScript's `Number.prototype.toString` prints an IEEE 754 double
//!   (`ryu-js`): integers that do not fit a double lose precision, exactly as in JCS.
//! - Strings escape only `"`, `\` and U+0000..U+001F (`\b \t \n \f \r` by name, the rest as
//!   lowercase `\u00xx`); everything else is written as UTF-8.
//! - No whitespace.

use std::fmt::Write as _;

use serde_json::{Map, Number, Value};

/// The RFC 8785 canonical form of a JSON value.
pub fn canonical_json(v: &Value) -> String {
    let mut out = String::new();
    write_value(&mut out, v);
    out
}

fn write_value(out: &mut String, v: &Value) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => write_number(out, n),
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => write_object(out, map),
    }
}

fn write_object(out: &mut String, map: &Map<String, Value>) {
    let mut members: Vec<(&String, &Value)> = map.iter().collect();
    members.sort_by(|(a, _), (b, _)| a.encode_utf16().cmp(b.encode_utf16()));
    out.push('{');
    for (i, (k, v)) in members.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_string(out, k);
        out.push(':');
        write_value(out, v);
    }
    out.push('}');
}

fn write_number(out: &mut String, n: &Number) {
    // Small integers print the same either way; going through f64 keeps JCS semantics for the rest.
    let f = match (n.as_i64(), n.as_f64()) {
        (Some(i), _) if i.unsigned_abs() < (1 << 53) => {
            let _ = write!(out, "{i}");
            return;
        }
        (_, Some(f)) => f,
        // serde_json numbers are always representable as f64 without arbitrary_precision.
        (_, None) => f64::NAN,
    };
    if f == 0.0 {
        // ECMAScript prints -0 as "0".
        out.push('0');
    } else if f.is_finite() {
        out.push_str(ryu_js::Buffer::new().format_finite(f));
    } else {
        // Cannot come out of serde_json; JCS has no representation for it.
        out.push_str("null");
    }
}

fn write_string(out: &mut String, s: &str) {
    out.push('"');
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let escape: Option<&str> = match b {
            b'"' => Some("\\\""),
            b'\\' => Some("\\\\"),
            0x08 => Some("\\b"),
            0x09 => Some("\\t"),
            0x0a => Some("\\n"),
            0x0c => Some("\\f"),
            0x0d => Some("\\r"),
            0x00..=0x1f => None,
            _ => continue,
        };
        out.push_str(&s[start..i]);
        match escape {
            Some(e) => out.push_str(e),
            None => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.push_str("\\u00");
                out.push(HEX[usize::from(b >> 4)] as char);
                out.push(HEX[usize::from(b & 0xf)] as char);
            }
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
