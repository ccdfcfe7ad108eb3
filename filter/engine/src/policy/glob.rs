//! Globs for names, URIs, methods, claims: `*` any run of characters (`/` included), `?` one
//! character, `[abc]`, `[a-z]`, `[!a-z]` (or `[^a-z]`) one character of a class, `\` takes the
//! next character literally. A glob matches the whole text.
//!
//! Compiled once; the common shapes (`*`, `exact`, `prefix*`, `*suffix`) match without
//! walking tokens.

/// A compiled glob.
#[derive(Debug, Clone)]
pub(crate) struct Glob {
    source: String,
    shape: Shape,
}

#[derive(Debug, Clone)]
enum Shape {
    Any,
    Exact(String),
    Prefix(String),
    Suffix(String),
    General(Vec<Token>),
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Literal(String),
    One,
    Star,
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

impl Glob {
    pub(crate) fn new(source: &str) -> Result<Glob, String> {
        if source.is_empty() {
            return Err("empty pattern".to_owned());
        }
        let tokens = tokenize(source)?;
        let shape = match tokens.as_slice() {
            [Token::Star] => Shape::Any,
            [Token::Literal(l)] => Shape::Exact(l.clone()),
            [Token::Literal(l), Token::Star] => Shape::Prefix(l.clone()),
            [Token::Star, Token::Literal(l)] => Shape::Suffix(l.clone()),
            _ => Shape::General(tokens),
        };
        Ok(Glob {
            source: source.to_owned(),
            shape,
        })
    }

    pub(crate) fn matches(&self, text: &str) -> bool {
        match &self.shape {
            Shape::Any => true,
            Shape::Exact(l) => text == l,
            Shape::Prefix(p) => text.starts_with(p.as_str()),
            Shape::Suffix(s) => text.ends_with(s.as_str()),
            Shape::General(tokens) => match_tokens(tokens, text),
        }
    }

    pub(crate) fn is_any(&self) -> bool {
        matches!(self.shape, Shape::Any)
    }

    /// The text this glob matches when it matches exactly one.
    pub(crate) fn literal(&self) -> Option<&str> {
        match &self.shape {
            Shape::Exact(l) => Some(l),
            _ => None,
        }
    }

    /// Whether every text `other` matches, `self` matches too. Sound but not complete: `false`
    /// may also mean "could not tell", never the reverse.
    pub(crate) fn covers(&self, other: &Glob) -> bool {
        if self.is_any() || self.source == other.source {
            return true;
        }
        if let Some(lit) = other.literal() {
            return self.matches(lit);
        }
        let other_prefix = match &other.shape {
            Shape::Prefix(p) => Some(p.as_str()),
            Shape::General(tokens) => match tokens.first() {
                Some(Token::Literal(l)) => Some(l.as_str()),
                _ => None,
            },
            _ => None,
        };
        let other_suffix = match &other.shape {
            Shape::Suffix(s) => Some(s.as_str()),
            Shape::General(tokens) => match tokens.last() {
                Some(Token::Literal(l)) => Some(l.as_str()),
                _ => None,
            },
            _ => None,
        };
        match &self.shape {
            Shape::Prefix(p) => other_prefix.is_some_and(|o| o.starts_with(p.as_str())),
            Shape::Suffix(s) => other_suffix.is_some_and(|o| o.ends_with(s.as_str())),
            _ => false,
        }
    }
}

/// Whether some glob of `general` covers each glob of `specific`.
pub(crate) fn covers_all(general: &[Glob], specific: &[Glob]) -> bool {
    specific.iter().all(|s| general.iter().any(|g| g.covers(s)))
}

pub(crate) fn any_matches(globs: &[Glob], text: &str) -> bool {
    globs.iter().any(|g| g.matches(text))
}

fn tokenize(source: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let mut literal = String::new();
    let mut chars = source.chars().peekable();
    let flush = |literal: &mut String, tokens: &mut Vec<Token>| {
        if !literal.is_empty() {
            tokens.push(Token::Literal(std::mem::take(literal)));
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(next) => literal.push(next),
                None => return Err("pattern ends with a lone `\\`".to_owned()),
            },
            '*' => {
                flush(&mut literal, &mut tokens);
                // `**` is the same as `*`.
                if tokens.last() != Some(&Token::Star) {
                    tokens.push(Token::Star);
                }
            }
            '?' => {
                flush(&mut literal, &mut tokens);
                tokens.push(Token::One);
            }
            '[' => {
                flush(&mut literal, &mut tokens);
                let negated = matches!(chars.peek(), Some('!' | '^'));
                if negated {
                    chars.next();
                }
                let mut ranges = Vec::new();
                let mut closed = false;
                while let Some(c) = chars.next() {
                    let c = match c {
                        ']' => {
                            closed = true;
                            break;
                        }
                        '\\' => chars.next().ok_or("pattern ends with a lone `\\`")?,
                        c => c,
                    };
                    if chars.peek() == Some(&'-') {
                        let mut ahead = chars.clone();
                        ahead.next();
                        match ahead.peek() {
                            Some(']') | None => ranges.push((c, c)),
                            Some(_) => {
                                chars.next();
                                let hi = match chars.next() {
                                    Some('\\') => {
                                        chars.next().ok_or("pattern ends with a lone `\\`")?
                                    }
                                    Some(hi) => hi,
                                    None => return Err("unclosed `[`".to_owned()),
                                };
                                if hi < c {
                                    return Err(format!("backwards range `{c}-{hi}`"));
                                }
                                ranges.push((c, hi));
                            }
                        }
                    } else {
                        ranges.push((c, c));
                    }
                }
                if !closed {
                    return Err("unclosed `[`".to_owned());
                }
                if ranges.is_empty() {
                    return Err("empty character class `[]`".to_owned());
                }
                tokens.push(Token::Class { negated, ranges });
            }
            c => literal.push(c),
        }
    }
    flush(&mut literal, &mut tokens);
    Ok(tokens)
}

/// Wildcard matching with backtracking to the last `*` only: every other token consumes a
/// fixed amount of text, which makes that enough and keeps the worst case at O(text × tokens).
fn match_tokens(tokens: &[Token], text: &str) -> bool {
    let mut ti = 0;
    let mut si = 0;
    // (token after the last star, text position that star resumes from)
    let mut star: Option<(usize, usize)> = None;
    loop {
        let rest = text.get(si..).unwrap_or("");
        let advanced = match tokens.get(ti) {
            Some(Token::Star) => {
                star = Some((ti + 1, si));
                ti += 1;
                continue;
            }
            Some(Token::Literal(l)) => rest.starts_with(l.as_str()).then_some(l.len()),
            Some(Token::One) => rest.chars().next().map(char::len_utf8),
            Some(Token::Class { negated, ranges }) => rest.chars().next().and_then(|c| {
                let inside = ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi);
                (inside != *negated).then_some(c.len_utf8())
            }),
            None if rest.is_empty() => return true,
            None => None,
        };
        if let Some(n) = advanced {
            ti += 1;
            si += n;
            continue;
        }
        let Some((after_star, from)) = star else {
            return false;
        };
        let Some(c) = text.get(from..).and_then(|r| r.chars().next()) else {
            return false;
        };
        let from = from + c.len_utf8();
        star = Some((after_star, from));
        ti = after_star;
        si = from;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_table() {
        let cases: &[(&str, &str, bool)] = &[
            ("*", "", true),
            ("*", "anything/at all", true),
            ("get_customer", "get_customer", true),
            ("get_customer", "get_customers", false),
            ("get_*", "get_customer", true),
            ("get_*", "get_", true),
            ("get_*", "list_get_x", false),
            ("*_report", "big_report", true),
            ("*_report", "report", false),
            ("list_*_v?", "list_transactions_v2", true),
            ("list_*_v?", "list_transactions_v22", false),
            ("a*b*c", "aXXbYYc", true),
            ("a*b*c", "aXXbYY", false),
            ("a*b*c", "abcbc", true),
            ("*a*a*a*b", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaac", false),
            ("[abc]x", "bx", true),
            ("[abc]x", "dx", false),
            ("[a-c]*", "cat", true),
            ("[!a-c]*", "cat", false),
            ("[^a-c]*", "dog", true),
            ("[-a]", "-", true),
            ("[a-]", "-", true),
            ("\\*", "*", true),
            ("\\*", "x", false),
            ("file:///public/*", "file:///public/a/b.txt", true),
            ("file:///public/*", "file:///private/a", false),
            ("caf?", "café", true),
            ("*é", "café", true),
            ("?", "", false),
            ("**", "x", true),
        ];
        for (glob, text, want) in cases {
            let g = Glob::new(glob).unwrap();
            assert_eq!(g.matches(text), *want, "{glob} vs {text}");
        }
    }

    #[test]
    fn bad_globs_are_refused() {
        for (glob, why) in [
            ("", "empty pattern"),
            ("delete_[", "unclosed `[`"),
            ("x\\", "lone"),
            ("[]", "empty character class"),
            ("[z-a]", "backwards range"),
            ("[a-", "unclosed"),
        ] {
            let err = Glob::new(glob).unwrap_err();
            assert!(err.contains(why), "{glob}: {err}");
        }
    }

    #[test]
    fn covers_is_sound() {
        let c = |a: &str, b: &str| Glob::new(a).unwrap().covers(&Glob::new(b).unwrap());
        assert!(c("*", "x*"));
        assert!(c("delete_*", "delete_merchant"));
        assert!(c("delete_*", "delete_m*"));
        assert!(c("delete_*", "delete_m?x"));
        assert!(c("*_report", "big_report"));
        assert!(c("*_report", "*big_report"));
        assert!(c("x?z", "x?z"));
        assert!(!c("delete_merchant", "delete_*"));
        assert!(!c("delete_*", "*"));
        assert!(!c("a*", "b*"));
        assert!(!c("x?z", "x*z"));
    }
}
