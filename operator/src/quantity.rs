//! Byte quantities written as an integer or a Kubernetes-style quantity
//! string (`4Mi`, `500M`, `1048576`). Only whole numbers of bytes: a
//! fraction (`1.5Gi`) or milli-units would be a surprise for a byte count.

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error("{0} is negative")]
    Negative(i32),
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
pub fn parse_bytes(q: &IntOrString) -> Result<u64, QuantityError> {
    match q {
        IntOrString::Int(i) => u64::try_from(*i).map_err(|_| QuantityError::Negative(*i)),
        IntOrString::String(s) => parse_str(s),
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
        parse_bytes(&IntOrString::String(v.into()))
    }

    #[test]
    fn quantities_parse_to_bytes() {
        assert_eq!(s("4Mi"), Ok(4 << 20));
        assert_eq!(s("64Ki"), Ok(65536));
        assert_eq!(s("500M"), Ok(500_000_000));
        assert_eq!(s("1048576"), Ok(1 << 20));
        assert_eq!(parse_bytes(&IntOrString::Int(4096)), Ok(4096));
    }

    #[test]
    fn bad_quantities_are_refused_with_the_value() {
        assert_eq!(
            parse_bytes(&IntOrString::Int(-1)),
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
