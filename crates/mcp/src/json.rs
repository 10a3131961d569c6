//! Strict JSON: the value the gateway judges is the value the upstream will read.
//!
//! The gateway forwards the client's original bytes, so any place where two JSON readers can
//! disagree about those bytes is a place where policy can be bypassed. [`parse_strict`] closes
//! the ones that matter:
//!
//! | ambiguity                                   | serde_json `Value`      | here                 |
//! |---------------------------------------------|-------------------------|----------------------|
//! | duplicate object key (`{"a":1,"a":2}`)      | last one wins silently  | rejected, with path  |
//! | nesting deeper than the reader's stack      | error at 128            | error at `max_depth` |
//! | lone surrogate escape (`"\ud800"`)          | error                   | error                |
//! | invalid UTF-8, trailing bytes after a value | error                   | error                |
//! | integer literal too big for i64/u64 that    | rounded to f64 silently | rejected             |
//! | binary64 cannot hold exactly                |                         |                      |
//!
//! Keys are compared after unescaping, so `{"a":1,"\u0061":2}` is a duplicate too: that is what
//! every reader downstream will see.
//!
//! Fractional and exponent literals are parsed as correctly rounded binary64 (the crate enables
//! serde_json's `float_roundtrip`), which is what JavaScript, Python and Go readers compute too.
//! Integer literals are different: Python reads `18446744073709551617` exactly while we would
//! round it, so such literals are rejected unless binary64 holds them exactly (as it does for
//! `JSON.stringify(1e20)` = `100000000000000000000`).
//!
//! Recursion: the value is built by a [`DeserializeSeed`] that counts depth and fails as soon as
//! `max_depth` is passed. serde_json's own recursion guard (128 levels) stays in place behind it,
//! so even a `max_depth` above 127 cannot overflow the stack: it only changes which error you get.

use serde::de::{DeserializeSeed, Deserializer, Error as _, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};
use std::fmt;

/// Size and depth limits for [`parse_strict`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JsonLimits {
    /// Largest accepted input, in bytes.
    pub max_bytes: usize,
    /// Deepest accepted nesting of arrays and objects; a scalar has depth 0, `[]` depth 1.
    pub max_depth: usize,
}

impl Default for JsonLimits {
    fn default() -> Self {
        Self {
            max_bytes: 4 * 1024 * 1024,
            max_depth: 64,
        }
    }
}

/// Why input was refused by [`parse_strict`]. Offsets are byte offsets into the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    /// The input is larger than [`JsonLimits::max_bytes`].
    #[error("json body of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Input length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The input is not UTF-8.
    #[error("invalid utf-8 at byte {offset}")]
    InvalidUtf8 {
        /// First invalid byte.
        offset: usize,
    },
    /// Not JSON: syntax errors, lone surrogates, trailing garbage, out-of-range numbers.
    #[error("invalid json at byte {offset}: {message}")]
    Syntax {
        /// Approximate position (serde_json reports the byte where it stopped).
        offset: usize,
        /// serde_json's description, without its position suffix.
        message: String,
    },
    /// Nesting deeper than [`JsonLimits::max_depth`].
    #[error("json nested deeper than {max_depth} levels at byte {offset}")]
    TooDeep {
        /// The limit.
        max_depth: usize,
        /// Where the container that went too deep starts (approximately).
        offset: usize,
    },
    /// An object has the same key twice.
    #[error("duplicate object key at {pointer} (byte {offset})")]
    DuplicateKey {
        /// JSON pointer (RFC 6901) of the repeated member, e.g. `/params/arguments/path`.
        pointer: String,
        /// Position just after the repeated key.
        offset: usize,
    },
    /// An integer literal that neither i64, u64 nor binary64 holds exactly.
    #[error("integer literal at byte {offset} is not exactly representable")]
    InexactInteger {
        /// Where the literal starts.
        offset: usize,
    },
}

impl JsonError {
    /// True when the input was refused for its size alone (HTTP 413 material).
    pub fn is_too_large(&self) -> bool {
        matches!(self, JsonError::TooLarge { .. })
    }
}

/// Parses one JSON value strictly (see the module docs for what "strictly" covers).
pub fn parse_strict(bytes: &[u8], limits: &JsonLimits) -> Result<Value, JsonError> {
    if bytes.len() > limits.max_bytes {
        return Err(JsonError::TooLarge {
            len: bytes.len(),
            max: limits.max_bytes,
        });
    }
    if let Err(e) = std::str::from_utf8(bytes) {
        return Err(JsonError::InvalidUtf8 {
            offset: e.valid_up_to(),
        });
    }
    let mut ctx = Ctx {
        max_depth: limits.max_depth,
        failure: None,
    };
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed = ValueSeed {
        ctx: &mut ctx,
        depth: 0,
    }
    .deserialize(&mut de)
    .and_then(|v| de.end().map(|()| v));
    let value = match parsed {
        Ok(v) => v,
        Err(e) => return Err(translate(bytes, &e, ctx.failure.take(), limits.max_depth)),
    };
    check_integer_literals(bytes)?;
    Ok(value)
}

/// What the visitor saw before it made serde_json fail, so the error can say more than a string.
enum Failure {
    TooDeep,
    /// `path` is collected innermost first while the error unwinds.
    Duplicate {
        key: String,
        path: Vec<Segment>,
    },
}

enum Segment {
    Key(String),
    Index(usize),
}

struct Ctx {
    max_depth: usize,
    failure: Option<Failure>,
}

struct ValueSeed<'c> {
    ctx: &'c mut Ctx,
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl ValueSeed<'_> {
    fn enter<E: serde::de::Error>(&mut self) -> Result<usize, E> {
        let depth = self.depth + 1;
        if depth > self.ctx.max_depth {
            self.ctx.failure = Some(Failure::TooDeep);
            return Err(E::custom("nesting too deep"));
        }
        Ok(depth)
    }

    fn note_segment(&mut self, segment: impl FnOnce() -> Segment) {
        if let Some(Failure::Duplicate { path, .. }) = &mut self.ctx.failure {
            path.push(segment());
        }
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any json value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Value, E> {
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("non-finite number"))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<Value, A::Error> {
        let depth = self.enter()?;
        let mut out = Vec::new();
        loop {
            let seed = ValueSeed {
                ctx: &mut *self.ctx,
                depth,
            };
            match seq.next_element_seed(seed) {
                Ok(Some(v)) => out.push(v),
                Ok(None) => break,
                Err(e) => {
                    let index = out.len();
                    self.note_segment(|| Segment::Index(index));
                    return Err(e);
                }
            }
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<Value, A::Error> {
        let depth = self.enter()?;
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                self.ctx.failure = Some(Failure::Duplicate {
                    key,
                    path: Vec::new(),
                });
                return Err(A::Error::custom("duplicate key"));
            }
            let seed = ValueSeed {
                ctx: &mut *self.ctx,
                depth,
            };
            match map.next_value_seed(seed) {
                Ok(v) => {
                    out.insert(key, v);
                }
                Err(e) => {
                    self.note_segment(|| Segment::Key(key));
                    return Err(e);
                }
            }
        }
        Ok(Value::Object(out))
    }
}

fn translate(
    bytes: &[u8],
    e: &serde_json::Error,
    failure: Option<Failure>,
    max_depth: usize,
) -> JsonError {
    let offset = byte_offset(bytes, e.line(), e.column());
    match failure {
        Some(Failure::TooDeep) => JsonError::TooDeep { max_depth, offset },
        Some(Failure::Duplicate { key, mut path }) => {
            path.reverse();
            let mut pointer = String::new();
            for seg in &path {
                pointer.push('/');
                match seg {
                    Segment::Key(k) => push_pointer_token(&mut pointer, k),
                    Segment::Index(i) => pointer.push_str(&i.to_string()),
                }
            }
            pointer.push('/');
            push_pointer_token(&mut pointer, &key);
            JsonError::DuplicateKey { pointer, offset }
        }
        None => {
            let full = e.to_string();
            // serde_json appends " at line L column C"; the offset replaces it.
            let message = match full.rfind(" at line ") {
                Some(i) => full[..i].to_owned(),
                None => full,
            };
            JsonError::Syntax { offset, message }
        }
    }
}

fn push_pointer_token(out: &mut String, token: &str) {
    for c in token.chars() {
        match c {
            '~' => out.push_str("~0"),
            '/' => out.push_str("~1"),
            c => out.push(c),
        }
    }
}

/// serde_json positions are (1-based line, bytes into that line); turn them into a byte offset.
fn byte_offset(bytes: &[u8], line: usize, column: usize) -> usize {
    let mut line_start = 0;
    let mut current = 1;
    if line > 1 {
        for (i, b) in bytes.iter().enumerate() {
            if *b == b'\n' {
                current += 1;
                if current == line {
                    line_start = i + 1;
                    break;
                }
            }
        }
    }
    (line_start + column.saturating_sub(1)).min(bytes.len())
}

/// Scans the (already validated) JSON text for integer literals that were rounded.
fn check_integer_literals(bytes: &[u8]) -> Result<(), JsonError> {
    let mut i = 0;
    let mut in_string = false;
    while i < bytes.len() {
        let b = bytes[i];
        if in_string {
            match b {
                b'\\' => i += 2,
                b'"' => {
                    in_string = false;
                    i += 1;
                }
                _ => i += 1,
            }
            continue;
        }
        match b {
            b'"' => {
                in_string = true;
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < bytes.len()
                    && matches!(bytes[i], b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
                {
                    i += 1;
                }
                if !integer_literal_is_exact(&bytes[start..i]) {
                    return Err(JsonError::InexactInteger { offset: start });
                }
            }
            _ => i += 1,
        }
    }
    Ok(())
}

fn integer_literal_is_exact(literal: &[u8]) -> bool {
    let digits = literal.strip_prefix(b"-").unwrap_or(literal);
    // i64 and u64 hold every literal of up to 18 digits; fractions and exponents are floats.
    if digits.len() <= 18 || digits.iter().any(|b| !b.is_ascii_digit()) {
        return true;
    }
    let Ok(text) = std::str::from_utf8(literal) else {
        return false;
    };
    if text.parse::<i64>().is_ok() || text.parse::<u64>().is_ok() {
        return true;
    }
    match text.parse::<f64>() {
        // `{:.0}` prints the exact decimal expansion of an integral binary64.
        Ok(v) if v.is_finite() => format!("{:.0}", v.abs()).as_bytes() == digits,
        _ => false,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
