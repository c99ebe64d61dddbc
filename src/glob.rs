//! Atom path patterns: shell globs over `source/dataset/atom`, validation,
//! and their translation into index-friendly SQL conditions.
//!
//! The syntax and meaning are exactly those of SQLite's `GLOB` operator, so
//! the embedded store can hand the pattern to SQLite unchanged and any other
//! backend (PostgreSQL, an in-memory filter) can use [`Pattern::matches`] or
//! translate the parsed pattern itself:
//!
//! - `*` matches any sequence of characters, **including** `/` and the
//!   empty sequence;
//! - `?` matches exactly one character (a Unicode scalar value);
//! - `[...]` matches one character from a class: `[^...]` negates it, a `]`
//!   right after `[` or `[^` is a member, `a-z` is a range, a `-` first, last
//!   or right after a range is a member;
//! - every other character matches itself, case-sensitively. There is no
//!   escape character: match a literal `*` with `[*]`.
//!
//! A class that is never closed makes SQLite's `GLOB` silently match
//! nothing; here it is an error, so a user learns about the typo.
//!
//! For the query, [`Pattern::condition`] splits the pattern into its literal
//! prefix and turns that into a range `lower <= path < upper` that a B-tree
//! index on the path serves (byte order of UTF-8, i.e. code point order:
//! SQLite's `BINARY` collation, PostgreSQL's `COLLATE "C"`). The range is a
//! superset of the matches; the store still applies the full pattern.
//!
//! PostgreSQL has no `GLOB`: [`Pattern::to_postgres_regex`] translates the
//! parsed pattern into an equivalent anchored regular expression for its
//! `~` operator.

use std::fmt;

/// Longest pattern accepted, in bytes. Atom paths are paths; anything
/// longer is a mistake (SQLite itself refuses `GLOB` patterns over 50000
/// bytes).
pub const MAX_PATTERN_LEN: usize = 4096;

/// Why a pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// The pattern is empty.
    #[error("the pattern is empty: give a glob such as 'source/dataset/*' or '*'")]
    Empty,
    /// The pattern is longer than [`MAX_PATTERN_LEN`].
    #[error("the pattern is {len} bytes long; the limit is {max} bytes")]
    TooLong {
        /// Length of the pattern in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The pattern contains a NUL character, which SQL text cannot carry.
    #[error("the pattern contains a NUL character at byte {offset}")]
    Nul {
        /// Byte offset of the NUL.
        offset: usize,
    },
    /// A `[` class is not closed by `]`.
    #[error(
        "the character class opened by '[' at byte {offset} is not closed by ']' \
         (to match a literal '[' write '[[]')"
    )]
    UnclosedClass {
        /// Byte offset of the `[`.
        offset: usize,
    },
}

/// One member of a `[...]` class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClassItem {
    /// A single character.
    Char(char),
    /// An inclusive range of characters (empty when start > end).
    Range(char, char),
}

/// One element of a parsed pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// A character matching itself.
    Literal(char),
    /// `?`: any one character.
    AnyOne,
    /// `*`: any sequence.
    AnySeq,
    /// `[...]`: one character in (or, negated, not in) the class.
    Class {
        /// `[^...]`.
        negated: bool,
        /// Members of the class.
        items: Vec<ClassItem>,
    },
}

impl Token {
    /// Whether this single-character token matches `c` (`*` never gets here).
    fn matches_char(&self, c: char) -> bool {
        match self {
            Token::Literal(l) => *l == c,
            Token::AnyOne => true,
            Token::AnySeq => false,
            Token::Class { negated, items } => {
                let seen = items.iter().any(|item| match *item {
                    ClassItem::Char(m) => m == c,
                    ClassItem::Range(lo, hi) => lo <= c && c <= hi,
                });
                seen != *negated
            }
        }
    }
}

/// A validated atom path pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    /// The pattern as given (what SQLite's `GLOB` receives).
    text: String,
    /// Byte length of the literal prefix of `text`.
    prefix_len: usize,
    /// The parsed pattern.
    tokens: Vec<Token>,
}

/// How a store selects the atom paths matching a pattern, in a form an
/// index on the path column serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathCondition {
    /// The pattern has no metacharacters: `path = value`.
    Equals(String),
    /// `path >= lower AND path < upper AND path GLOB pattern`. An empty
    /// `lower` bounds nothing and may be left out; `upper` is `None` when no
    /// string bounds the prefix from above (empty prefix, or a prefix of
    /// only U+10FFFF characters).
    Glob {
        /// Literal prefix of the pattern: the inclusive lower bound.
        lower: String,
        /// Exclusive upper bound of paths starting with `lower`.
        upper: Option<String>,
        /// The full pattern, for the backend's glob operator or matcher.
        pattern: String,
    },
}

impl Pattern {
    /// Parse and validate a pattern.
    pub fn parse(text: &str) -> Result<Pattern, PatternError> {
        if text.is_empty() {
            return Err(PatternError::Empty);
        }
        if text.len() > MAX_PATTERN_LEN {
            return Err(PatternError::TooLong {
                len: text.len(),
                max: MAX_PATTERN_LEN,
            });
        }
        if let Some(offset) = text.find('\0') {
            return Err(PatternError::Nul { offset });
        }
        let prefix_len = text.find(['*', '?', '[']).unwrap_or(text.len());
        let mut tokens = Vec::new();
        let mut chars = text.char_indices().peekable();
        while let Some((offset, c)) = chars.next() {
            let token = match c {
                '*' => Token::AnySeq,
                '?' => Token::AnyOne,
                '[' => {
                    // Mirrors the `matchSet` branch of SQLite's
                    // patternCompare() (func.c).
                    let mut negated = false;
                    let mut items = Vec::new();
                    let mut next = chars.next().map(|(_, c)| c);
                    if next == Some('^') {
                        negated = true;
                        next = chars.next().map(|(_, c)| c);
                    }
                    if next == Some(']') {
                        // A leading ']' is a member; it does not start a range.
                        items.push(ClassItem::Char(']'));
                        next = chars.next().map(|(_, c)| c);
                    }
                    let mut prior: Option<char> = None;
                    loop {
                        match next {
                            None => return Err(PatternError::UnclosedClass { offset }),
                            Some(']') => break,
                            Some('-') => {
                                let after = chars.peek().map(|&(_, c)| c);
                                match (prior, after) {
                                    (Some(lo), Some(hi)) if hi != ']' => {
                                        chars.next();
                                        items.push(ClassItem::Range(lo, hi));
                                        prior = None;
                                    }
                                    _ => {
                                        items.push(ClassItem::Char('-'));
                                        prior = Some('-');
                                    }
                                }
                            }
                            Some(m) => {
                                items.push(ClassItem::Char(m));
                                prior = Some(m);
                            }
                        }
                        next = chars.next().map(|(_, c)| c);
                    }
                    Token::Class { negated, items }
                }
                c => Token::Literal(c),
            };
            tokens.push(token);
        }
        Ok(Pattern {
            text: text.to_owned(),
            prefix_len,
            tokens,
        })
    }

    /// The pattern text.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The characters before the first `*`, `?` or `[`: every matching path
    /// starts with them.
    pub fn literal_prefix(&self) -> &str {
        &self.text[..self.prefix_len]
    }

    /// Whether the pattern has no metacharacters (it matches only itself).
    pub fn is_literal(&self) -> bool {
        self.prefix_len == self.text.len()
    }

    /// Whether `path` matches the pattern, with SQLite `GLOB` semantics.
    pub fn matches(&self, path: &str) -> bool {
        let text: Vec<char> = path.chars().collect();
        let tokens = &self.tokens;
        let (mut pi, mut ti) = (0, 0);
        // Where to resume after the last `*`: (token after it, text position
        // it has absorbed up to). Every other token eats exactly one
        // character, so retrying from the last `*` alone is enough.
        let mut resume: Option<(usize, usize)> = None;
        while ti < text.len() {
            match tokens.get(pi) {
                Some(Token::AnySeq) => {
                    pi += 1;
                    resume = Some((pi, ti));
                    continue;
                }
                Some(tok) if tok.matches_char(text[ti]) => {
                    pi += 1;
                    ti += 1;
                    continue;
                }
                _ => {}
            }
            match resume {
                Some((rp, rt)) => {
                    pi = rp;
                    ti = rt + 1;
                    resume = Some((rp, rt + 1));
                }
                None => return false,
            }
        }
        tokens[pi..].iter().all(|t| *t == Token::AnySeq)
    }

    /// The condition a store should apply to the global atom path.
    pub fn condition(&self) -> PathCondition {
        if self.is_literal() {
            return PathCondition::Equals(self.text.clone());
        }
        let lower = self.literal_prefix().to_owned();
        PathCondition::Glob {
            upper: prefix_upper_bound(&lower),
            lower,
            pattern: self.text.clone(),
        }
    }
}

impl Pattern {
    /// The pattern as an anchored PostgreSQL regular expression (for the
    /// `~` operator) matching exactly the paths [`Pattern::matches`]
    /// accepts; `None` when no path can match (a class with only empty
    /// ranges such as `[c-a]`), so the store need not query at all.
    ///
    /// Every character other than an ASCII letter or digit is written as a
    /// `\uXXXX` / `\UXXXXXXXX` escape, inside and outside brackets, so no
    /// pattern character is ever a regex operator. `.` matches any
    /// character including newline (PostgreSQL's default, not
    /// newline-sensitive), and `$` only the end of the text.
    pub fn to_postgres_regex(&self) -> Option<String> {
        let mut re = String::with_capacity(self.text.len() * 2 + 2);
        re.push('^');
        for token in &self.tokens {
            match token {
                Token::Literal(c) => push_regex_char(&mut re, *c),
                Token::AnyOne => re.push('.'),
                Token::AnySeq => re.push_str(".*"),
                Token::Class { negated, items } => {
                    let items: Vec<&ClassItem> = items
                        .iter()
                        .filter(|item| match item {
                            ClassItem::Char(_) => true,
                            ClassItem::Range(lo, hi) => lo <= hi,
                        })
                        .collect();
                    if items.is_empty() {
                        if *negated {
                            // Not in an empty class: any character.
                            re.push('.');
                            continue;
                        }
                        return None;
                    }
                    re.push('[');
                    if *negated {
                        re.push('^');
                    }
                    for item in items {
                        match *item {
                            ClassItem::Char(c) => push_regex_char(&mut re, c),
                            ClassItem::Range(lo, hi) => {
                                push_regex_char(&mut re, lo);
                                re.push('-');
                                push_regex_char(&mut re, hi);
                            }
                        }
                    }
                    re.push(']');
                }
            }
        }
        re.push('$');
        Some(re)
    }
}

/// Append `c` to a PostgreSQL regular expression as a literal character.
fn push_regex_char(re: &mut String, c: char) {
    use std::fmt::Write;
    if c.is_ascii_alphanumeric() {
        re.push(c);
    } else if u32::from(c) <= 0xFFFF {
        let _ = write!(re, "\\u{:04X}", u32::from(c));
    } else {
        let _ = write!(re, "\\U{:08X}", u32::from(c));
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// The smallest string greater than every string that starts with
/// `prefix`, in code point (= UTF-8 byte) order; `None` if there is none
/// (empty prefix, or only U+10FFFF characters).
///
/// The last character is incremented (skipping the surrogate gap); a
/// trailing U+10FFFF cannot be, so it is dropped and the one before it is
/// incremented instead.
pub fn prefix_upper_bound(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let next = match last {
            '\u{D7FF}' => Some('\u{E000}'),
            c => char::from_u32(u32::from(c) + 1),
        };
        if let Some(next) = next {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

/// A pattern that matches exactly `text` and nothing else: each `*`, `?`
/// and `[` becomes a one-character class (`[*]`, `[?]`, `[[]`), since
/// patterns have no escape character.
pub fn literal(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '*' | '?' | '[' => {
                out.push('[');
                out.push(c);
                out.push(']');
            }
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_matches_only_itself() {
        for text in ["plain/a/b", "a*b/[x]/?", "[[]/]x", "é*"] {
            let p = Pattern::parse(&literal(text)).unwrap();
            assert!(p.matches(text), "{text}");
        }
        let p = Pattern::parse(&literal("a*b")).unwrap();
        assert!(!p.matches("axxb"));
        assert_eq!(literal("s/d/a?"), "s/d/a[?]");
    }

    fn p(s: &str) -> Pattern {
        Pattern::parse(s).unwrap()
    }

    #[test]
    fn literal_prefix_stops_at_first_metacharacter() {
        assert_eq!(p("src/ds/atom").literal_prefix(), "src/ds/atom");
        assert!(p("src/ds/atom").is_literal());
        assert_eq!(p("host1*/mysql/*").literal_prefix(), "host1");
        assert_eq!(p("a/b?c*").literal_prefix(), "a/b");
        assert_eq!(p("a/[bc]/*").literal_prefix(), "a/");
        assert_eq!(p("*x").literal_prefix(), "");
        assert_eq!(p("é/ü*").literal_prefix(), "é/ü");
        assert!(!p("a*").is_literal());
        // ']' and '^' and '-' outside a class are plain characters.
        assert!(p("a]^-b").is_literal());
    }

    #[test]
    fn condition_for_literal_prefix_and_bare_star() {
        assert_eq!(
            p("a/b/c").condition(),
            PathCondition::Equals("a/b/c".into())
        );
        assert_eq!(
            p("mysql/db/*").condition(),
            PathCondition::Glob {
                lower: "mysql/db/".into(),
                upper: Some("mysql/db0".into()),
                pattern: "mysql/db/*".into()
            }
        );
        assert_eq!(
            p("*").condition(),
            PathCondition::Glob {
                lower: String::new(),
                upper: None,
                pattern: "*".into()
            }
        );
    }

    #[test]
    fn upper_bound_increments_last_char() {
        assert_eq!(prefix_upper_bound("abc").as_deref(), Some("abd"));
        assert_eq!(prefix_upper_bound("a/").as_deref(), Some("a0"));
        assert_eq!(prefix_upper_bound("z").as_deref(), Some("{"));
        assert_eq!(prefix_upper_bound("\u{7f}").as_deref(), Some("\u{80}"));
        assert_eq!(prefix_upper_bound("ä").as_deref(), Some("å"));
        assert_eq!(
            prefix_upper_bound("x\u{FFFF}").as_deref(),
            Some("x\u{10000}")
        );
    }

    #[test]
    fn upper_bound_skips_surrogates_and_drops_max_char() {
        assert_eq!(
            prefix_upper_bound("a\u{D7FF}").as_deref(),
            Some("a\u{E000}")
        );
        assert_eq!(prefix_upper_bound("ab\u{10FFFF}").as_deref(), Some("ac"));
        assert_eq!(
            prefix_upper_bound("a\u{10FFFF}\u{10FFFF}").as_deref(),
            Some("b")
        );
        assert_eq!(prefix_upper_bound("\u{10FFFF}"), None);
        assert_eq!(prefix_upper_bound(""), None);
    }

    #[test]
    fn upper_bound_bounds_exactly_the_prefixed_strings() {
        // Every string with the prefix is in [prefix, upper); nearby strings
        // without it are not.
        for prefix in ["a", "ab", "a\u{10FFFF}", "\u{D7FF}", "x/y"] {
            let upper = prefix_upper_bound(prefix).unwrap();
            for suffix in ["", "\0", "z", "\u{10FFFF}\u{10FFFF}", "\u{D7FF}"] {
                let s = format!("{prefix}{suffix}");
                assert!(s.as_str() >= prefix && s < upper, "{s:?} in range");
                assert!(
                    s.as_bytes() >= prefix.as_bytes() && s.as_bytes() < upper.as_bytes(),
                    "byte order agrees for {s:?}"
                );
            }
            let mut shorter: Vec<char> = prefix.chars().collect();
            shorter.pop();
            let shorter: String = shorter.into_iter().collect();
            for outside in [shorter.clone(), upper.clone(), format!("{upper}a")] {
                assert!(
                    !(outside.as_str() >= prefix && outside < upper),
                    "{outside:?} outside range of {prefix:?}"
                );
            }
        }
    }

    #[test]
    fn rejects_bad_patterns() {
        assert_eq!(Pattern::parse(""), Err(PatternError::Empty));
        assert_eq!(
            Pattern::parse("a/[bc"),
            Err(PatternError::UnclosedClass { offset: 2 })
        );
        assert_eq!(
            Pattern::parse("[]"),
            Err(PatternError::UnclosedClass { offset: 0 })
        );
        assert_eq!(
            Pattern::parse("x[^]"),
            Err(PatternError::UnclosedClass { offset: 1 })
        );
        assert_eq!(Pattern::parse("a\0b"), Err(PatternError::Nul { offset: 1 }));
        let long = "a".repeat(MAX_PATTERN_LEN + 1);
        assert!(matches!(
            Pattern::parse(&long),
            Err(PatternError::TooLong { .. })
        ));
        assert!(Pattern::parse(&"a".repeat(MAX_PATTERN_LEN)).is_ok());
        let msg = Pattern::parse("[ab").unwrap_err().to_string();
        assert!(msg.contains("not closed"), "{msg}");
    }

    #[test]
    fn postgres_regex_escapes_everything_but_ascii_alphanumerics() {
        assert_eq!(
            p("my.sql/d*").to_postgres_regex().as_deref(),
            Some("^my\\u002Esql\\u002Fd.*$")
        );
        assert_eq!(
            p("a?[^]x-z]é\u{1F600}").to_postgres_regex().as_deref(),
            Some("^a.[^\\u005Dxx-z]\\u00E9\\U0001F600$")
        );
        // Empty ranges are dropped (the character before '-' stays a
        // member, as in SQLite).
        assert_eq!(p("a[c-a]").to_postgres_regex().as_deref(), Some("^a[c]$"));
        assert_eq!(p("a[c-ab]").to_postgres_regex().as_deref(), Some("^a[cb]$"));
        assert_eq!(p("a[^c-a]").to_postgres_regex().as_deref(), Some("^a[^c]$"));
    }

    #[test]
    fn matches_glob_semantics() {
        let cases: &[(&str, &str, bool)] = &[
            ("a/b/c", "a/b/c", true),
            ("a/b/c", "a/b/cd", false),
            ("a/b/c", "A/b/c", false),
            ("*", "", true),
            ("*", "a/b/c", true),
            ("a/*", "a/b/c", true),
            ("a*c", "a/b/c", true),
            ("a*c", "a/b/cd", false),
            ("?", "é", true),
            ("?", "", false),
            ("a?c", "a/c", true),
            ("a??", "ab", false),
            ("[abc]", "b", true),
            ("[abc]", "d", false),
            ("[^abc]", "d", true),
            ("[^abc]", "a", false),
            ("[a-c]x", "bx", true),
            ("[a-c]x", "dx", false),
            ("[]]", "]", true),
            ("[]a]", "a", true),
            ("[^]]", "]", false),
            ("[^]]", "x", true),
            ("[-a]", "-", true),
            ("[a-]", "-", true),
            ("[]-a]", "-", true),
            ("[]-a]", "^", false),
            ("[a-c-e]", "-", true),
            ("[a-c-e]", "d", false),
            ("[c-a]", "b", false),
            ("[*]", "*", true),
            ("[*]", "a", false),
            ("a\\*", "a\\bc", true),
            ("*[0-9]", "x/9", true),
            ("*a*b", "xxaxxbxxb", true),
            ("*a*b", "xxaxxbxxc", false),
        ];
        for &(pat, text, want) in cases {
            assert_eq!(p(pat).matches(text), want, "{pat:?} GLOB {text:?}");
        }
    }
}
