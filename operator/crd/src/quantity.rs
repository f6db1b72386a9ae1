//! Byte quantities written as an integer or a Kubernetes-style quantity
//! string (`4Mi`, `500M`, `1048576`). Only whole numbers of bytes: a
//! fraction (`1.5Gi`) or milli-units would be a surprise for a byte count.

use std::borrow::Cow;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A byte count as the API server stores it in an `x-kubernetes-int-or-string`
/// field: any JSON integer (the API server accepts 64 bits, so
/// `3000000000` is valid) or a string. Reading one never fails: whatever
/// the API server accepted deserialises, and [`parse_bytes`] says what is
/// wrong with it. (`IntOrString` holds 32 bits: one Dataset with a larger
/// value made the operator's whole list of Datasets fail to decode.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ByteQuantity {
    Int(i64),
    /// A string, or a number that is not a 64-bit integer, as written.
    String(String),
}

impl Serialize for ByteQuantity {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Int(i) => s.serialize_i64(*i),
            Self::String(v) => s.serialize_str(v),
        }
    }
}

impl<'de> Deserialize<'de> for ByteQuantity {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ByteQuantity;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an integer or a string")
            }
            fn visit_i64<E>(self, v: i64) -> Result<ByteQuantity, E> {
                Ok(ByteQuantity::Int(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<ByteQuantity, E> {
                Ok(i64::try_from(v)
                    .map_or_else(|_| ByteQuantity::String(v.to_string()), ByteQuantity::Int))
            }
            fn visit_f64<E>(self, v: f64) -> Result<ByteQuantity, E> {
                Ok(ByteQuantity::String(v.to_string()))
            }
            fn visit_str<E>(self, v: &str) -> Result<ByteQuantity, E> {
                Ok(ByteQuantity::String(v.to_owned()))
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl JsonSchema for ByteQuantity {
    fn schema_name() -> Cow<'static, str> {
        "ByteQuantity".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "x-kubernetes-int-or-string": true })
    }
}

impl From<i64> for ByteQuantity {
    fn from(v: i64) -> Self {
        Self::Int(v)
    }
}

impl From<&str> for ByteQuantity {
    fn from(v: &str) -> Self {
        Self::String(v.to_owned())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error("{0} is negative")]
    Negative(i64),
    #[error(
        "{0:?} is not a byte quantity (digits, optionally followed by Ki, Mi, Gi, Ti, k, M, G or T)"
    )]
    Malformed(String),
    #[error("{0:?} is too large")]
    Overflow(String),
}

const SUFFIXES: [(&str, u64); 8] = [
    ("Ki", 1 << 10),
    ("Mi", 1 << 20),
    ("Gi", 1 << 30),
    ("Ti", 1 << 40),
    ("k", 1_000),
    ("M", 1_000_000),
    ("G", 1_000_000_000),
    ("T", 1_000_000_000_000),
];

/// The number of bytes `q` stands for.
pub fn parse_bytes(q: &ByteQuantity) -> Result<u64, QuantityError> {
    match q {
        ByteQuantity::Int(i) => u64::try_from(*i).map_err(|_| QuantityError::Negative(*i)),
        ByteQuantity::String(s) => parse_str(s),
    }
}

fn parse_str(s: &str) -> Result<u64, QuantityError> {
    let malformed = || QuantityError::Malformed(s.to_owned());
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, suffix) = s.split_at(digits_end);
    if digits.is_empty() {
        return Err(malformed());
    }
    let multiplier = if suffix.is_empty() {
        1
    } else {
        SUFFIXES
            .iter()
            .find(|(name, _)| *name == suffix)
            .ok_or_else(malformed)?
            .1
    };
    let overflow = || QuantityError::Overflow(s.to_owned());
    let n: u64 = digits.parse().map_err(|_| overflow())?;
    n.checked_mul(multiplier).ok_or_else(overflow)
}

/// `bytes` for people, in binary units with up to one decimal and no
/// space (`1.5GiB`), so a `kubectl get` column stays one word.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut unit = 0;
    let mut value = bytes as f64;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes}B")
    } else if value >= 100.0 || (value - value.round()).abs() < 0.05 {
        format!("{value:.0}{}", UNITS[unit])
    } else {
        format!("{value:.1}{}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> Result<u64, QuantityError> {
        parse_bytes(&ByteQuantity::String(v.into()))
    }

    #[test]
    fn quantities_parse_to_bytes() {
        assert_eq!(s("4Mi"), Ok(4 << 20));
        assert_eq!(s("64Ki"), Ok(65536));
        assert_eq!(s("500M"), Ok(500_000_000));
        assert_eq!(s("1048576"), Ok(1 << 20));
        assert_eq!(parse_bytes(&ByteQuantity::Int(4096)), Ok(4096));
    }

    #[test]
    fn bad_quantities_are_refused_with_the_value() {
        assert_eq!(
            parse_bytes(&ByteQuantity::Int(-1)),
            Err(QuantityError::Negative(-1))
        );
        for bad in ["", "Mi", "1.5Gi", "4mi", "4 Mi", "-4Mi", "4Mib"] {
            assert_eq!(s(bad), Err(QuantityError::Malformed(bad.into())), "{bad}");
        }
        assert_eq!(
            s("99999999999999Ti"),
            Err(QuantityError::Overflow("99999999999999Ti".into()))
        );
    }

    /// Whatever the API server stores in an int-or-string field reads back:
    /// 64-bit integers (3000000000 did not fit the 32 bits of
    /// `IntOrString`), integers beyond 64 bits and fractions, each then
    /// refused by `parse_bytes` with the value, never by the decoder.
    #[test]
    fn every_stored_value_deserialises_and_large_ones_parse() {
        let q = |v: serde_json::Value| serde_json::from_value::<ByteQuantity>(v).unwrap();
        assert_eq!(
            parse_bytes(&q(serde_json::json!(3_000_000_000u64))),
            Ok(3_000_000_000)
        );
        assert_eq!(
            parse_bytes(&q(serde_json::json!(i64::MAX))),
            Ok(i64::MAX as u64)
        );
        assert_eq!(parse_bytes(&q(serde_json::json!(u64::MAX))), Ok(u64::MAX));
        assert_eq!(
            parse_bytes(&q(serde_json::json!(-3_000_000_000i64))),
            Err(QuantityError::Negative(-3_000_000_000))
        );
        assert_eq!(
            parse_bytes(&q(serde_json::json!(1.5))),
            Err(QuantityError::Malformed("1.5".into()))
        );
        let big: ByteQuantity = serde_json::from_str("123456789012345678901234567890").unwrap();
        assert!(matches!(parse_bytes(&big), Err(QuantityError::Overflow(_))));
        assert_eq!(
            serde_json::to_value(ByteQuantity::Int(3_000_000_000)).unwrap(),
            serde_json::json!(3_000_000_000u64)
        );
        assert_eq!(
            serde_json::to_value(ByteQuantity::from("4Mi")).unwrap(),
            serde_json::json!("4Mi")
        );
    }

    #[test]
    fn sizes_print_for_people() {
        assert_eq!(human_bytes(0), "0B");
        assert_eq!(human_bytes(1023), "1023B");
        assert_eq!(human_bytes(1536), "1.5KiB");
        assert_eq!(human_bytes(4 << 30), "4GiB");
        assert_eq!(human_bytes(140 << 30), "140GiB");
        assert_eq!(human_bytes((13 << 30) + (600 << 20)), "13.6GiB");
    }
}
