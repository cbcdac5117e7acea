//! `#[arg(...)]`: the raw rules of one field, each with its span.

use proc_macro2::Span;
use syn::spanned::Spanned;
use syn::{Attribute, Expr, ExprLit, ExprRange, ExprUnary, Lit, LitInt, LitStr, RangeLimits, UnOp};

use crate::ctxt::{unknown_key_message, Ctxt};

pub const ARG_KEYS: &[&str] = &[
    "max_len",
    "min_len",
    "max_items",
    "min_items",
    "range",
    "pattern",
    "default",
    "secret",
    "unbounded",
    "desc",
    "rename",
];

#[derive(Default)]
pub struct ArgAttr {
    pub max_len: Option<(usize, Span)>,
    pub min_len: Option<(usize, Span)>,
    pub max_items: Option<(usize, Span)>,
    pub min_items: Option<(usize, Span)>,
    pub range: Option<Range>,
    pub pattern: Option<LitStr>,
    pub default: Option<Expr>,
    pub secret: Option<Span>,
    pub unbounded: Option<Span>,
    pub desc: Option<LitStr>,
    pub rename: Option<LitStr>,
    /// A mistake was reported while reading the rules: skip the "unbounded" checks, which
    /// would only repeat it.
    pub had_error: bool,
}

pub struct Range {
    pub min: Option<Expr>,
    pub max: Option<Expr>,
    /// The span of the `range` key.
    pub key: Span,
}

impl ArgAttr {
    /// Parses every `#[arg(...)]` among `attrs`, recording each mistake in `cx`.
    pub fn parse(cx: &mut Ctxt, attrs: &[Attribute]) -> ArgAttr {
        let mut out = ArgAttr::default();
        let errors_before = cx.count();
        for attr in attrs.iter().filter(|a| a.path().is_ident("arg")) {
            let res = attr.parse_nested_meta(|meta| {
                let key = meta
                    .path
                    .get_ident()
                    .map(ToString::to_string)
                    .unwrap_or_default();
                let key_span = meta.path.span();
                macro_rules! dup {
                    ($slot:expr) => {
                        if $slot.is_some() {
                            cx.error_at(key_span, format!("duplicate `#[arg]` key `{key}`"));
                        }
                    };
                }
                match key.as_str() {
                    "max_len" | "min_len" | "max_items" | "min_items" => {
                        let lit: LitInt = meta.value()?.parse()?;
                        let n = match lit.base10_parse::<usize>() {
                            Ok(n) => n,
                            Err(_) => {
                                cx.error_spanned(
                                    &lit,
                                    format!("`{key}` must be a non-negative integer"),
                                );
                                0
                            }
                        };
                        let slot = match key.as_str() {
                            "max_len" => &mut out.max_len,
                            "min_len" => &mut out.min_len,
                            "max_items" => &mut out.max_items,
                            _ => &mut out.min_items,
                        };
                        dup!(slot);
                        if key.starts_with("max") && n == 0 {
                            cx.error_spanned(
                                &lit,
                                format!("`{key} = 0` admits nothing; use a positive limit"),
                            );
                        }
                        *slot = Some((n, key_span));
                    }
                    "range" => {
                        let e: Expr = meta.value()?.parse()?;
                        dup!(out.range);
                        out.range = parse_range(cx, &e, key_span);
                    }
                    "pattern" => {
                        let lit: LitStr = meta.value()?.parse()?;
                        dup!(out.pattern);
                        if let Err(e) = regex_syntax::Parser::new().parse(&lit.value()) {
                            cx.error_spanned(&lit, format!("invalid `pattern`: {e}"));
                        }
                        out.pattern = Some(lit);
                    }
                    "default" => {
                        let e: Expr = meta.value()?.parse()?;
                        dup!(out.default);
                        out.default = Some(e);
                    }
                    "desc" | "rename" => {
                        let lit: LitStr = meta.value()?.parse()?;
                        let slot = if key == "desc" {
                            &mut out.desc
                        } else {
                            &mut out.rename
                        };
                        dup!(slot);
                        *slot = Some(lit);
                    }
                    "secret" | "unbounded" => {
                        if meta.input.peek(syn::Token![=]) {
                            let _: Expr = meta.value()?.parse()?;
                            cx.error_at(
                                key_span,
                                format!("`{key}` is a flag: write `{key}` alone"),
                            );
                        }
                        let slot = if key == "secret" {
                            &mut out.secret
                        } else {
                            &mut out.unbounded
                        };
                        dup!(slot);
                        *slot = Some(key_span);
                    }
                    _ => {
                        crate::ctxt::skip_value(&meta)?;
                        cx.error_at(key_span, unknown_key_message("`#[arg]`", &key, ARG_KEYS));
                    }
                }
                Ok(())
            });
            if let Err(e) = res {
                cx.push(e);
            }
        }
        out.had_error = cx.count() > errors_before;
        out
    }

    /// The span of a rule's key, for "does not apply here" errors.
    pub fn first_rule_span(&self) -> Option<Span> {
        self.max_len
            .map(|x| x.1)
            .or(self.min_len.map(|x| x.1))
            .or(self.max_items.map(|x| x.1))
            .or(self.min_items.map(|x| x.1))
            .or(self.range.as_ref().map(|r| r.key))
            .or(self.pattern.as_ref().map(Spanned::span))
            .or(self.default.as_ref().map(Spanned::span))
            .or(self.secret)
            .or(self.unbounded)
            .or(self.desc.as_ref().map(Spanned::span))
    }
}

fn parse_range(cx: &mut Ctxt, e: &Expr, key: Span) -> Option<Range> {
    let Expr::Range(ExprRange {
        start, end, limits, ..
    }) = e
    else {
        cx.error_spanned(
            e,
            "`range` takes an inclusive range such as `1..=100`, `0..`, or `..=10`",
        );
        return None;
    };
    if end.is_some() && matches!(limits, RangeLimits::HalfOpen(_)) {
        cx.error_spanned(e, "`range` must be inclusive: write `a..=b`");
        return None;
    }
    for bound in [start, end].into_iter().flatten() {
        if !is_number_literal(bound) {
            cx.error_spanned(bound, "range bounds must be number literals");
            return None;
        }
    }
    if let (Some(a), Some(b)) = (
        start.as_deref().and_then(literal_value),
        end.as_deref().and_then(literal_value),
    ) {
        if a > b {
            cx.error_spanned(e, "the range is empty: its start is above its end");
        }
    }
    Some(Range {
        min: start.as_deref().cloned(),
        max: end.as_deref().cloned(),
        key,
    })
}

fn is_number_literal(e: &Expr) -> bool {
    match e {
        Expr::Lit(ExprLit {
            lit: Lit::Int(_) | Lit::Float(_),
            ..
        }) => true,
        Expr::Unary(ExprUnary {
            op: UnOp::Neg(_),
            expr,
            ..
        }) => is_number_literal(expr),
        Expr::Group(g) => is_number_literal(&g.expr),
        _ => false,
    }
}

pub fn literal_value(e: &Expr) -> Option<f64> {
    match e {
        Expr::Lit(ExprLit {
            lit: Lit::Int(i), ..
        }) => i.base10_digits().parse().ok(),
        Expr::Lit(ExprLit {
            lit: Lit::Float(f), ..
        }) => f.base10_digits().parse().ok(),
        Expr::Unary(ExprUnary {
            op: UnOp::Neg(_),
            expr,
            ..
        }) => literal_value(expr).map(|v| -v),
        Expr::Group(g) => literal_value(&g.expr),
        _ => None,
    }
}

/// `true` for a float literal (or its negation).
pub fn is_float_literal(e: &Expr) -> bool {
    match e {
        Expr::Lit(ExprLit {
            lit: Lit::Float(_), ..
        }) => true,
        Expr::Unary(ExprUnary { expr, .. }) => is_float_literal(expr),
        Expr::Group(g) => is_float_literal(&g.expr),
        _ => false,
    }
}
