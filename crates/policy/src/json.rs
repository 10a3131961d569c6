//! JSON helpers: a strict parser that reports duplicate keys, and strict JSON equality / ordering.
//!
//! `serde_json::Value` silently keeps the last of two equal keys; a policy where a rule is written
//! twice must not load with one of them quietly dropped. [`parse_strict`] builds the same `Value`
//! through its own visitor, which remembers the JSON pointer it is at and records every repeated key.

use std::cmp::Ordering;
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use crate::PolicyError;

/// Parses one JSON document. Syntax errors abort (reported at the root pointer, with line and
/// column); duplicate keys do not: each is recorded in `errors` at its pointer and the last value
/// is kept, so that validation can go on and report everything else too.
pub(crate) fn parse_strict(bytes: &[u8], errors: &mut Vec<PolicyError>) -> Option<Value> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let mut ctx = Ctx {
        pointer: String::new(),
        errors,
    };
    let parsed = ValueSeed { ctx: &mut ctx }
        .deserialize(&mut de)
        .and_then(|v| de.end().map(|()| v));
    match parsed {
        Ok(v) => Some(v),
        Err(e) => {
            errors_push_syntax(ctx.errors, &e);
            None
        }
    }
}

fn errors_push_syntax(errors: &mut Vec<PolicyError>, e: &serde_json::Error) {
    errors.push(PolicyError::new("", format!("invalid json: {e}")));
}

struct Ctx<'e> {
    pointer: String,
    errors: &'e mut Vec<PolicyError>,
}

struct ValueSeed<'c, 'e> {
    ctx: &'c mut Ctx<'e>,
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_, '_> {
    type Value = Value;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_, '_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a json value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("number is not finite"))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        let base = self.ctx.pointer.len();
        loop {
            self.ctx.pointer.truncate(base);
            self.ctx.pointer.push('/');
            self.ctx.pointer.push_str(&items.len().to_string());
            match seq.next_element_seed(ValueSeed {
                ctx: &mut *self.ctx,
            })? {
                Some(v) => items.push(v),
                None => break,
            }
        }
        self.ctx.pointer.truncate(base);
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        let base = self.ctx.pointer.len();
        while let Some(key) = map.next_key::<String>()? {
            self.ctx.pointer.truncate(base);
            self.ctx.pointer.push('/');
            self.ctx
                .pointer
                .push_str(&crate::escape_pointer_token(&key));
            if out.contains_key(&key) {
                self.ctx
                    .errors
                    .push(PolicyError::new(self.ctx.pointer.clone(), "duplicate key"));
            }
            let v = map.next_value_seed(ValueSeed {
                ctx: &mut *self.ctx,
            })?;
            out.insert(key, v);
        }
        self.ctx.pointer.truncate(base);
        Ok(Value::Object(out))
    }
}

/// Strict JSON equality: no coercion between types (`"500"` is not `500`, `true` is not `"true"`),
/// numbers compare by value (`1` equals `1.0`), arrays element-wise, objects as key sets.
pub(crate) fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Null, Value::Null) => true,
        (Value::Bool(x), Value::Bool(y)) => x == y,
        (Value::Number(x), Value::Number(y)) => cmp_numbers(x, y) == Ordering::Equal,
        (Value::String(x), Value::String(y)) => x == y,
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| json_eq(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => false,
    }
}

/// Exact numeric order of two JSON numbers, whatever their representation (u64, i64 or f64).
/// serde_json numbers are finite, so the order is total.
pub(crate) fn cmp_numbers(a: &Number, b: &Number) -> Ordering {
    match (as_int(a), as_int(b)) {
        (Some(x), Some(y)) => x.cmp(&y),
        (Some(x), None) => cmp_int_float(x, b.as_f64().unwrap_or(0.0)),
        (None, Some(y)) => cmp_int_float(y, a.as_f64().unwrap_or(0.0)).reverse(),
        (None, None) => {
            let (x, y) = (a.as_f64().unwrap_or(0.0), b.as_f64().unwrap_or(0.0));
            x.partial_cmp(&y).unwrap_or(Ordering::Equal)
        }
    }
}

fn as_int(n: &Number) -> Option<i128> {
    n.as_i64()
        .map(i128::from)
        .or_else(|| n.as_u64().map(i128::from))
}

/// Compares an integer with a finite double without rounding either.
fn cmp_int_float(i: i128, f: f64) -> Ordering {
    // 2^100 is far beyond any integer serde_json can hold and is exact as a double.
    const BIG: f64 = 1_267_650_600_228_229_401_496_703_205_376.0;
    if f >= BIG {
        return Ordering::Less;
    }
    if f <= -BIG {
        return Ordering::Greater;
    }
    let floor = f.floor();
    // |floor| < 2^100, so the conversion is exact.
    let fi = floor as i128;
    match i.cmp(&fi) {
        Ordering::Equal if f > floor => Ordering::Less,
        other => other,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
