//! Argument tests: a precompiled JSON pointer and the tests on the value it finds.

use regex_lite::Regex;
use serde_json::Value;

use super::config::ArgCondition;

/// A JSON pointer (RFC 6901), split and unescaped once.
#[derive(Debug, Clone)]
pub(crate) struct Pointer {
    tokens: Vec<String>,
}

impl Pointer {
    pub(crate) fn parse(text: &str) -> Result<Pointer, String> {
        if text.is_empty() {
            return Ok(Pointer { tokens: Vec::new() });
        }
        let Some(rest) = text.strip_prefix('/') else {
            return Err(format!(
                "bad JSON pointer {text:?}: must be empty or start with `/`"
            ));
        };
        let tokens = rest
            .split('/')
            .map(|raw| {
                unescape(raw).ok_or_else(|| {
                    format!("bad JSON pointer {text:?}: `~` must be followed by 0 or 1")
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Pointer { tokens })
    }

    pub(crate) fn resolve<'v>(&self, root: &'v Value) -> Option<&'v Value> {
        self.tokens.iter().try_fold(root, |v, token| match v {
            Value::Object(map) => map.get(token.as_str()),
            Value::Array(items) => array_index(token).and_then(|i| items.get(i)),
            _ => None,
        })
    }
}

fn unescape(raw: &str) -> Option<String> {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '~' {
            match chars.next()? {
                '0' => out.push('~'),
                '1' => out.push('/'),
                _ => return None,
            }
        } else {
            out.push(c);
        }
    }
    Some(out)
}

/// RFC 6901 array index: decimal, no leading zero.
fn array_index(token: &str) -> Option<usize> {
    let digits = token.bytes().all(|b| b.is_ascii_digit());
    if !digits || token.is_empty() || (token.len() > 1 && token.starts_with('0')) {
        return None;
    }
    token.parse().ok()
}

/// Where a condition's pointer starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Root {
    /// `params.arguments`.
    Arguments,
    /// `params`.
    Params,
}

/// A compiled [`ArgCondition`].
#[derive(Debug, Clone)]
pub(crate) struct Condition {
    pub(crate) root: Root,
    /// As written, to compare rules for shadowing.
    pub(crate) config: ArgCondition,
    pointer: Pointer,
    regex: Option<Regex>,
    bounds: Vec<(Cmp, f64)>,
}

#[derive(Debug, Clone, Copy)]
enum Cmp {
    Gt,
    Gte,
    Lt,
    Lte,
}

impl Condition {
    pub(crate) fn compile(root: Root, config: &ArgCondition) -> Result<Condition, String> {
        let parsed = Pointer::parse(&config.pointer)?;
        let regex = match &config.regex {
            Some(re) => Some(Regex::new(re).map_err(|e| format!("bad regex {re:?}: {e}"))?),
            None => None,
        };
        let bounds: Vec<(Cmp, f64)> = [
            (Cmp::Gt, config.gt),
            (Cmp::Gte, config.gte),
            (Cmp::Lt, config.lt),
            (Cmp::Lte, config.lte),
        ]
        .into_iter()
        .filter_map(|(cmp, n)| n.map(|n| (cmp, n)))
        .collect();
        if bounds.iter().any(|(_, n)| !n.is_finite()) {
            return Err(format!(
                "condition on {:?}: bounds must be finite numbers",
                config.pointer
            ));
        }
        let tests =
            bounds.len() + usize::from(regex.is_some()) + usize::from(config.equals.is_some());
        let pointer = &config.pointer;
        match config.exists {
            Some(false) if tests > 0 => Err(format!(
                "condition on {pointer:?}: `exists: false` cannot be combined with other tests"
            )),
            None if tests == 0 => Err(format!(
                "condition on {pointer:?} tests nothing: give regex, equals, gt, gte, lt, lte or exists"
            )),
            _ => Ok(()),
        }?;
        Ok(Condition {
            root,
            config: config.clone(),
            pointer: parsed,
            regex,
            bounds,
        })
    }

    /// Whether the condition holds on the message's `params`.
    pub(crate) fn holds(&self, params: Option<&Value>) -> bool {
        let root = match self.root {
            Root::Params => params,
            Root::Arguments => params.and_then(|p| p.get("arguments")),
        };
        let value = root.and_then(|r| self.pointer.resolve(r));
        if let Some(want) = self.config.exists {
            if value.is_some() != want {
                return false;
            }
        }
        let Some(value) = value else {
            // Absent: only `exists: false` (checked above) can hold.
            return self.config.exists == Some(false);
        };
        if let Some(re) = &self.regex {
            let hit = match value {
                Value::String(s) => re.is_match(s),
                Value::Number(n) => re.is_match(&n.to_string()),
                Value::Bool(b) => re.is_match(if *b { "true" } else { "false" }),
                _ => false,
            };
            if !hit {
                return false;
            }
        }
        if let Some(want) = &self.config.equals {
            if !loose_eq(value, want) {
                return false;
            }
        }
        if !self.bounds.is_empty() {
            let Some(n) = as_number(value) else {
                return false;
            };
            return self.bounds.iter().all(|&(cmp, bound)| match cmp {
                Cmp::Gt => n > bound,
                Cmp::Gte => n >= bound,
                Cmp::Lt => n < bound,
                Cmp::Lte => n <= bound,
            });
        }
        true
    }
}

/// A number, or a string holding a finite number.
pub(crate) fn as_number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok().filter(|n| n.is_finite()),
        _ => None,
    }
}

/// JSON equality where numbers compare by value (`1 == 1.0`) and, when exactly one side is a
/// number, a numeric string compares as that number.
pub(crate) fn loose_eq(actual: &Value, want: &Value) -> bool {
    match (actual, want) {
        (Value::Number(_), Value::Number(_))
        | (Value::Number(_), Value::String(_))
        | (Value::String(_), Value::Number(_)) => {
            matches!((as_number(actual), as_number(want)), (Some(a), Some(b)) if a == b)
        }
        _ => actual == want,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pointers_resolve() {
        let doc = json!({"a": {"b/c": [10, {"~x": true}]}, "": 1});
        let cases: &[(&str, Option<Value>)] = &[
            ("", Some(doc.clone())),
            ("/", Some(json!(1))),
            ("/a/b~1c/0", Some(json!(10))),
            ("/a/b~1c/1/~0x", Some(json!(true))),
            ("/a/b~1c/01", None),
            ("/a/b~1c/-", None),
            ("/a/b~1c/9", None),
            ("/a/missing", None),
            ("/a/b~1c/0/deeper", None),
        ];
        for (p, want) in cases {
            let got = Pointer::parse(p).unwrap().resolve(&doc).cloned();
            assert_eq!(&got, want, "{p}");
        }
        assert!(Pointer::parse("amount").is_err());
        assert!(Pointer::parse("/a~2").is_err());
        assert!(Pointer::parse("/a~").is_err());
    }

    #[test]
    fn loose_equality() {
        assert!(loose_eq(&json!(1), &json!(1.0)));
        assert!(loose_eq(&json!("10000"), &json!(10000)));
        assert!(loose_eq(&json!(5), &json!("5")));
        assert!(!loose_eq(&json!("007"), &json!("7")));
        assert!(!loose_eq(&json!("x"), &json!(1)));
        assert!(loose_eq(&json!({"a": [1]}), &json!({"a": [1]})));
        assert!(!loose_eq(&json!(null), &json!(false)));
    }

    #[test]
    fn numbers_from_strings_must_be_finite() {
        assert_eq!(as_number(&json!(" 12.5 ")), Some(12.5));
        assert_eq!(as_number(&json!("inf")), None);
        assert_eq!(as_number(&json!("NaN")), None);
        assert_eq!(as_number(&json!("1e400")), None);
        assert_eq!(as_number(&json!("12k")), None);
        assert_eq!(as_number(&json!(true)), None);
    }
}
