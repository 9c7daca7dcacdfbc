//! Typed extraction from a [`Value`] through serde, so request bodies in Python's JSON
//! dialect can be read into ordinary structs. Integral floats are accepted where an
//! integer is expected and integers where a float is (pydantic's lax mode does the same);
//! `NaN`/`Infinity` arrive as non-finite `f64`s for the caller to range-check.

use std::fmt;

use serde::de::value::{MapDeserializer, SeqDeserializer};
use serde::de::{self, Deserialize, IntoDeserializer, Visitor};

use super::{Number, Value};

/// A type or value mismatch, with the path of the offending member (e.g. `tasks[3].org`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() || self.path == "." {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}
impl std::error::Error for DeError {}
impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError { path: String::new(), message: msg.to_string() }
    }
}

/// Deserialize `T` from `value`, reporting the path of the first mismatch.
pub fn from_value<'de, T: Deserialize<'de>>(value: &'de Value) -> Result<T, DeError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        DeError { path, message: inner.message }
    })
}

impl<'de> IntoDeserializer<'de, DeError> for &'de Value {
    type Deserializer = Self;
    fn into_deserializer(self) -> Self {
        self
    }
}

fn integral_f64_to_i64(f: f64) -> Option<i64> {
    (f.is_finite() && f.fract() == 0.0 && (-9.223372036854776e18..9.223372036854776e18).contains(&f)).then_some(f as i64)
}

impl<'de> de::Deserializer<'de> for &'de Value {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self {
            Value::Null => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(*b),
            Value::Number(n @ Number::Int(t)) => {
                if let Ok(i) = t.parse::<i64>() {
                    visitor.visit_i64(i)
                } else if let Ok(u) = t.parse::<u64>() {
                    visitor.visit_u64(u)
                } else {
                    visitor.visit_f64(n.as_f64())
                }
            }
            Value::Number(n) => visitor.visit_f64(n.as_f64()),
            Value::String(s) => visitor.visit_borrowed_str(s),
            Value::Array(items) => {
                let mut seq = SeqDeserializer::new(items.iter());
                let v = visitor.visit_seq(&mut seq)?;
                seq.end()?;
                Ok(v)
            }
            Value::Object(o) => {
                let mut map = MapDeserializer::new(o.iter());
                let v = visitor.visit_map(&mut map)?;
                map.end()?;
                Ok(v)
            }
        }
    }

    fn deserialize_i64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self {
            Value::Number(Number::Int(t)) => match t.parse::<i64>() {
                Ok(i) => visitor.visit_i64(i),
                Err(_) => Err(de::Error::custom(format!("integer {t} is out of range"))),
            },
            Value::Number(n @ Number::Float(_)) => match integral_f64_to_i64(n.as_f64()) {
                Some(i) => visitor.visit_i64(i),
                None => Err(de::Error::custom(format!("expected an integer, got {}", n.source_text()))),
            },
            Value::Number(n) => Err(de::Error::custom(format!("expected an integer, got {}", n.source_text()))),
            _ => self.deserialize_any(visitor),
        }
    }
    fn deserialize_i8<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_i64(v)
    }
    fn deserialize_i16<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_i64(v)
    }
    fn deserialize_i32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_i64(v)
    }
    fn deserialize_u8<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_i64(v)
    }
    fn deserialize_u16<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_i64(v)
    }
    fn deserialize_u32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_i64(v)
    }
    fn deserialize_u64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        match self {
            Value::Number(Number::Int(t)) if t.parse::<u64>().is_ok() => v.visit_u64(t.parse().expect("checked")),
            _ => self.deserialize_i64(v),
        }
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self {
            Value::Number(n) => visitor.visit_f64(n.as_f64()),
            _ => self.deserialize_any(visitor),
        }
    }
    fn deserialize_f32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_f64(v)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _name: &'static str, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        match self {
            Value::String(s) => visitor.visit_enum(s.as_str().into_deserializer()),
            _ => Err(de::Error::custom("expected a string")),
        }
    }

    serde::forward_to_deserialize_any! {
        bool i128 u128 char str string bytes byte_buf unit unit_struct seq tuple
        tuple_struct map struct identifier ignored_any
    }
}
