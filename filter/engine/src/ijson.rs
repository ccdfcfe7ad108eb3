//! Numbers as I-JSON (RFC 7493) carries them: integers within ±(2^53 − 1), the range every
//! reader that holds numbers as IEEE 754 doubles reads exactly. The control plane refuses a record
//! holding any other integer rather than chain a rounded one, so the gateway refuses requests that
//! carry one ([`crate::jsonrpc::strict`]) and writes none into its records ([`exact_numbers`]).

use serde_json::{Number, Value};

/// 2^53 − 1.
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// 2^53: every double of this magnitude or more is an integer outside the range.
const TWO_POW_53: f64 = 9_007_199_254_740_992.0;

pub fn u64_is_exact(v: u64) -> bool {
    v <= MAX_SAFE_INTEGER
}

pub fn i64_is_exact(v: i64) -> bool {
    v.unsigned_abs() <= MAX_SAFE_INTEGER
}

/// False for NaN and the infinities too, which JSON cannot hold.
pub fn f64_is_exact(v: f64) -> bool {
    v.abs() < TWO_POW_53
}

pub fn is_exact(number: &Number) -> bool {
    if let Some(u) = number.as_u64() {
        u64_is_exact(u)
    } else if let Some(i) = number.as_i64() {
        i64_is_exact(i)
    } else {
        number.as_f64().is_some_and(f64_is_exact)
    }
}

/// Replaces, in place, every number outside the range by its decimal text (serde_json holds
/// integers up to 2^64 exactly, so the text is the number as it was read). For what the gateway
/// records but did not receive as a request body, such as the claims of a verified token: the
/// call goes on, and its record is one the control plane chains.
pub fn exact_numbers(value: &mut Value) {
    match value {
        Value::Number(n) if !is_exact(n) => *value = Value::String(n.to_string()),
        Value::Array(items) => items.iter_mut().for_each(exact_numbers),
        Value::Object(map) => map.values_mut().for_each(exact_numbers),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_range_is_2_pow_53_minus_1_either_way() {
        assert!(u64_is_exact(9_007_199_254_740_991));
        assert!(!u64_is_exact(9_007_199_254_740_992));
        assert!(i64_is_exact(-9_007_199_254_740_991));
        assert!(!i64_is_exact(-9_007_199_254_740_992));
        assert!(!i64_is_exact(i64::MIN));
        assert!(f64_is_exact(0.5));
        assert!(f64_is_exact(9_007_199_254_740_991.0));
        assert!(!f64_is_exact(9_007_199_254_740_992.0));
        assert!(!f64_is_exact(-1e300));
        assert!(!f64_is_exact(f64::NAN));
    }

    #[test]
    fn numbers_outside_become_their_digits() {
        let mut value: Value = serde_json::from_str(
            r#"{"client_id":12345678901234567890,"n":[7,-9223372036854775808,1e300,0.25],"o":{"x":9007199254740991}}"#,
        )
        .unwrap();
        exact_numbers(&mut value);
        assert_eq!(
            value,
            json!({"client_id":"12345678901234567890","n":[7,"-9223372036854775808","1e+300",0.25],"o":{"x":9007199254740991u64}})
        );
    }
}
