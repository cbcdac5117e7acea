//! Argument validation: the [`ToolArgs`] trait, field paths and violations.
//!
//! `#[derive(ToolArgs)]` and `#[tool]` generate the implementations; every rule declared
//! with `#[arg(...)]` is checked and every violation is reported with its field path.

use std::fmt;

use serde::Serialize;

/// A type whose values can be tool arguments: decoded from JSON, described by a JSON Schema,
/// and validated against the limits declared on its fields.
///
/// Derive it with `#[derive(ToolArgs)]`. Implement it by hand only for a type that is
/// bounded by construction (a newtype that checks its own invariants, say).
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a tool argument type",
    label = "add `#[derive(ToolArgs)]` to this type",
    note = "every nested argument type derives `ToolArgs`, so that its fields are bounded and validated; mark the argument `#[arg(unbounded)]` to opt out on purpose"
)]
pub trait ToolArgs {
    /// Checks every declared rule, pushing one [`Violation`] per broken rule.
    fn validate_into(&self, path: &FieldPath<'_>, out: &mut Vec<Violation>);

    /// Replaces the values of `secret` fields in a JSON value of this type, so that an audit
    /// record never holds them. The value may be invalid input; unknown shapes are left alone.
    fn redact_json(value: &mut serde_json::Value) {
        let _ = value;
    }

    /// Readies a JSON value of this type for an audit record: `secret` fields and values
    /// under credential-like names redacted, long strings cut. The default walks the whole
    /// value ([`redact_json`](Self::redact_json), then
    /// [`redact_credentials`](crate::audit::redact_credentials)); the impls that
    /// `#[derive(ToolArgs)]` and `#[tool]` generate for structs give the same result without
    /// checking the names of the fields they declare (decided at compile time). The value
    /// may be invalid input: anything undeclared or of another shape gets the whole walk.
    fn audit_json(value: &mut serde_json::Value) {
        Self::redact_json(value);
        crate::audit::redact_credentials(value);
    }
}

macro_rules! bounded_by_type {
    ($($t:ty),*) => {$(
        impl ToolArgs for $t {
            #[inline]
            fn validate_into(&self, _: &FieldPath<'_>, _: &mut Vec<Violation>) {}
        }
    )*};
}
bounded_by_type!(bool, char, ());

/// Where a value sits inside the arguments, e.g. `filters[0].column`. Built on the stack
/// while validating; turned into a string only when a rule is broken.
#[derive(Debug, Clone, Copy)]
pub enum FieldPath<'a> {
    /// The arguments object itself.
    Root,
    /// A named field of the parent.
    Field(&'a FieldPath<'a>, &'static str),
    /// An element of a sequence.
    Index(&'a FieldPath<'a>, usize),
    /// An entry of a map.
    Key(&'a FieldPath<'a>, &'a str),
}

impl FieldPath<'_> {
    /// A child field of this path.
    pub fn field(&self, name: &'static str) -> FieldPath<'_> {
        FieldPath::Field(self, name)
    }
    /// A sequence element of this path.
    pub fn index(&self, i: usize) -> FieldPath<'_> {
        FieldPath::Index(self, i)
    }
    /// A map entry of this path.
    pub fn key<'b>(&'b self, k: &'b str) -> FieldPath<'b> {
        FieldPath::Key(self, k)
    }
}

impl fmt::Display for FieldPath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FieldPath::Root => Ok(()),
            FieldPath::Field(parent, name) => {
                parent.fmt(f)?;
                if matches!(parent, FieldPath::Root) {
                    f.write_str(name)
                } else {
                    write!(f, ".{name}")
                }
            }
            FieldPath::Index(parent, i) => {
                parent.fmt(f)?;
                write!(f, "[{i}]")
            }
            FieldPath::Key(parent, k) => {
                parent.fmt(f)?;
                write!(f, "[{}]", serde_json::Value::String((*k).to_owned()))
            }
        }
    }
}

/// One broken rule: where, and what is wrong. Safe to show to a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// The field path, e.g. `filters[0].column`; empty for the arguments object itself.
    pub path: String,
    /// What is wrong, e.g. `must be at most 64 characters long`.
    pub message: String,
}

impl Violation {
    /// A violation at `path`.
    pub fn new(path: &FieldPath<'_>, message: impl Into<String>) -> Self {
        Self {
            path: path.to_string(),
            message: message.into(),
        }
    }
}

/// The rule checks called by generated code.
#[doc(hidden)]
pub mod rules {
    use std::sync::OnceLock;

    use super::{FieldPath, Violation};

    #[inline]
    pub fn max_len(v: &str, max: usize, path: &FieldPath<'_>, out: &mut Vec<Violation>) {
        // A string of at most `max` bytes has at most `max` characters: skip the count.
        if v.len() > max && v.chars().count() > max {
            out.push(Violation::new(
                path,
                format!("must be at most {max} {} long", chars(max)),
            ));
        }
    }

    #[inline]
    pub fn min_len(v: &str, min: usize, path: &FieldPath<'_>, out: &mut Vec<Violation>) {
        if v.len() < min || v.chars().count() < min {
            out.push(Violation::new(
                path,
                format!("must be at least {min} {} long", chars(min)),
            ));
        }
    }

    fn chars(n: usize) -> &'static str {
        if n == 1 {
            "character"
        } else {
            "characters"
        }
    }

    #[inline]
    pub fn max_items(n: usize, max: usize, path: &FieldPath<'_>, out: &mut Vec<Violation>) {
        if n > max {
            out.push(Violation::new(
                path,
                format!("must have at most {max} items (got {n})"),
            ));
        }
    }

    #[inline]
    pub fn min_items(n: usize, min: usize, path: &FieldPath<'_>, out: &mut Vec<Violation>) {
        if n < min {
            out.push(Violation::new(
                path,
                format!("must have at least {min} items (got {n})"),
            ));
        }
    }

    #[inline]
    pub fn range<T: PartialOrd + std::fmt::Display + Copy>(
        v: T,
        min: Option<T>,
        max: Option<T>,
        path: &FieldPath<'_>,
        out: &mut Vec<Violation>,
    ) {
        // NaN compares as `None`: it fails every bound.
        use std::cmp::Ordering::{Equal, Greater, Less};
        let low = min.is_some_and(|m| !matches!(v.partial_cmp(&m), Some(Greater | Equal)));
        let high = max.is_some_and(|m| !matches!(v.partial_cmp(&m), Some(Less | Equal)));
        if low || high {
            let msg = match (min, max) {
                (Some(a), Some(b)) => format!("must be between {a} and {b}"),
                (Some(a), None) => format!("must be at least {a}"),
                (None, Some(b)) => format!("must be at most {b}"),
                (None, None) => unreachable_bounds(),
            };
            out.push(Violation::new(path, msg));
        }
    }

    #[cold]
    fn unreachable_bounds() -> String {
        "is out of range".to_owned()
    }

    /// A regular expression compiled on first use. The macro checked its syntax at compile
    /// time; should it still fail to build, every value is refused (fail closed).
    ///
    /// Matched with a fully compiled DFA (`regex-automata`'s dense DFA: no cache to fetch,
    /// a table step per byte) when the pattern makes a small one, which the short anchored
    /// patterns of arguments do; otherwise, or when the DFA gives up on a value (a Unicode
    /// word boundary before non-ASCII text), with `regex`.
    pub struct Pattern {
        source: &'static str,
        compiled: OnceLock<Option<Compiled>>,
    }

    pub(super) struct Compiled {
        re: regex::Regex,
        pub(super) dfa: Option<regex_automata::dfa::dense::DFA<Vec<u32>>>,
    }

    /// The largest DFA kept for one pattern; a larger one is not built (`regex` serves).
    const DFA_BYTES: usize = 256 * 1024;

    impl Compiled {
        pub(super) fn new(source: &str) -> Option<Self> {
            use regex_automata::dfa::dense;
            let re = match regex::Regex::new(source) {
                Ok(re) => re,
                Err(e) => {
                    tracing::error!(target: "mcp_harden", pattern = source, error = %e, "argument pattern failed to compile; refusing all values");
                    return None;
                }
            };
            let dfa = dense::Builder::new()
                .configure(
                    dense::Config::new()
                        // `\b` gets a DFA that stops at the first non-ASCII byte, where
                        // `regex` takes over, instead of no DFA at all.
                        .unicode_word_boundary(true)
                        .dfa_size_limit(Some(DFA_BYTES))
                        .determinize_size_limit(Some(4 * DFA_BYTES)),
                )
                .build(source)
                .ok();
            Some(Self { re, dfa })
        }

        pub(super) fn is_match(&self, v: &str) -> bool {
            use regex_automata::dfa::Automaton as _;
            let Some(dfa) = &self.dfa else {
                return self.re.is_match(v);
            };
            match dfa.try_search_fwd(&regex_automata::Input::new(v).earliest(true)) {
                Ok(found) => found.is_some(),
                Err(_) => self.re.is_match(v),
            }
        }
    }

    impl Pattern {
        pub const fn new(source: &'static str) -> Self {
            Self {
                source,
                compiled: OnceLock::new(),
            }
        }

        pub fn check(&self, v: &str, path: &FieldPath<'_>, out: &mut Vec<Violation>) {
            let compiled = self.compiled.get_or_init(|| Compiled::new(self.source));
            if !compiled.as_ref().is_some_and(|c| c.is_match(v)) {
                out.push(Violation::new(
                    path,
                    format!("must match the pattern {}", self.source),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_render_like_json_access() {
        let root = FieldPath::Root;
        let f = root.field("filters");
        let i = f.index(3);
        let c = i.field("column");
        assert_eq!(c.to_string(), "filters[3].column");
        let k = f.key("a\"b");
        assert_eq!(k.to_string(), r#"filters["a\"b"]"#);
    }

    #[test]
    fn rules_report_each_violation() {
        let mut out = Vec::new();
        let p = FieldPath::Root;
        let p = p.field("x");
        rules::max_len("héllo", 4, &p, &mut out);
        rules::max_len("héll", 4, &p, &mut out); // 5 bytes, 4 chars: fine
        rules::min_len("", 1, &p, &mut out);
        rules::range(f64::NAN, Some(0.0), Some(1.0), &p, &mut out);
        rules::range(5u32, Some(1), Some(5), &p, &mut out);
        rules::max_items(11, 10, &p, &mut out);
        static PAT: rules::Pattern = rules::Pattern::new("^[a-z]+$");
        PAT.check("abc", &p, &mut out);
        PAT.check("ab1", &p, &mut out);
        let msgs: Vec<_> = out.iter().map(|v| v.message.as_str()).collect();
        assert_eq!(
            msgs,
            [
                "must be at most 4 characters long",
                "must be at least 1 character long",
                "must be between 0 and 1",
                "must have at most 10 items (got 11)",
                "must match the pattern ^[a-z]+$",
            ]
        );
        assert!(out.iter().all(|v| v.path == "x"));
    }

    /// The DFA and `regex` agree, including where no DFA is built (a Unicode class too big
    /// for the limit) and where the DFA gives up on a value (a Unicode word boundary).
    #[test]
    fn patterns_match_like_regex() {
        let values = [
            "",
            "abc",
            "ABC",
            "a_b-9",
            "x y",
            "héllo",
            "日本",
            "a\nb",
            "-",
            "abc$",
            "ab",
            "ünï",
            "word boundary",
            "ünï word",
            "wordé",
            "trailing ",
            "\u{0}",
        ];
        for (source, dfa) in [
            (r"^[A-Za-z_][A-Za-z0-9_]*$", true),
            (r"^[A-Za-z0-9 _-]+$", true),
            (r"b", true),
            (r"^\p{L}+$", true),
            (r"\bword\b", true),
            (r"^(\w{1,10}\s?){1,5}$", false),
            (r"(?i)^H", true),
        ] {
            let c = rules::Compiled::new(source).expect("compiles");
            assert_eq!(c.dfa.is_some(), dfa, "{source}: a DFA or not");
            if source.contains("\\b") {
                // The DFA quits on non-ASCII text here: the fallback below is what answers.
                use regex_automata::dfa::Automaton as _;
                let dfa = c.dfa.as_ref().expect("a DFA");
                assert!(dfa
                    .try_search_fwd(&regex_automata::Input::new("ünï word"))
                    .is_err());
            }
            let re = regex::Regex::new(source).expect("compiles");
            for v in values {
                assert_eq!(c.is_match(v), re.is_match(v), "{source} on {v:?}");
            }
        }
        assert!(rules::Compiled::new("(").is_none(), "fails closed");
    }
}
