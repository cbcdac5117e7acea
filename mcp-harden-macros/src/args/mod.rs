//! The rules of one argument (a `#[tool]` parameter or a `ToolArgs` field): parse, check
//! against the type's shape, emit validation, schema attributes and redaction.

mod attr;
mod emit;
mod shape;

use syn::spanned::Spanned;
use syn::{Ident, Type};

pub use attr::ArgAttr;
pub use emit::{assertions, schema_attrs, validation, value_redactor, FieldImpls};
pub use shape::Shape;

use crate::ctxt::Ctxt;

/// One checked argument.
pub struct Field {
    pub ident: Ident,
    pub json_name: String,
    pub ty: Type,
    pub shape: Shape,
    pub attr: ArgAttr,
}

impl Field {
    /// Reads and checks the rules of one argument; mistakes go to `cx`.
    pub fn new(cx: &mut Ctxt, ident: Ident, ty: Type, attrs: &[syn::Attribute]) -> Field {
        let attr = ArgAttr::parse(cx, attrs);
        let shape = Shape::of(&ty);
        let json_name = match &attr.rename {
            Some(r) => r.value(),
            None => ident.to_string().trim_start_matches("r#").to_owned(),
        };
        if let Some(d) = &attr.desc {
            for p in crate::lint::check(&d.value(), "argument description") {
                cx.error_spanned(d, p);
            }
        }
        if let Some(r) = &attr.rename {
            let v = r.value();
            let ok = !v.is_empty()
                && v.len() <= 64
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
            if !ok {
                cx.error_spanned(
                    r,
                    "`rename` takes a JSON key of 1 to 64 of A-Z, a-z, 0-9, `_`, `-`, `.`",
                );
            }
        }
        let f = Field {
            ident,
            json_name,
            ty,
            shape,
            attr,
        };
        f.check(cx);
        f
    }

    fn check(&self, cx: &mut Ctxt) {
        let a = &self.attr;
        let name = &self.json_name;
        let top = self.shape.strip_option();
        if let Shape::Unsupported(why) = top {
            cx.error_spanned(&self.ty, format!("argument `{name}` has {why}"));
            return;
        }
        let elem = match top {
            Shape::Seq(e) | Shape::Map(e) => Some(e.strip_option()),
            _ => None,
        };
        if let Some(Shape::Unsupported(why)) = elem {
            cx.error_spanned(&self.ty, format!("argument `{name}` holds {why}"));
            return;
        }
        let stringy = matches!(top, Shape::Str | Shape::Map(_)) || matches!(elem, Some(Shape::Str));
        let numeric = matches!(top, Shape::Int { .. } | Shape::Float)
            || matches!(elem, Some(Shape::Int { .. } | Shape::Float));
        let collection = matches!(top, Shape::Seq(_) | Shape::Map(_));
        let what = self.shape.describe();
        for (rule, span, applies, instead) in [
            (
                "max_len",
                a.max_len.map(|x| x.1),
                stringy,
                "`max_len` bounds strings",
            ),
            (
                "min_len",
                a.min_len.map(|x| x.1),
                stringy,
                "`min_len` bounds strings",
            ),
            (
                "pattern",
                a.pattern.as_ref().map(Spanned::span),
                stringy,
                "`pattern` applies to strings",
            ),
            (
                "range",
                a.range.as_ref().map(|r| r.key),
                numeric,
                "`range` bounds numbers",
            ),
            (
                "max_items",
                a.max_items.map(|x| x.1),
                collection,
                "`max_items` bounds collections",
            ),
            (
                "min_items",
                a.min_items.map(|x| x.1),
                collection,
                "`min_items` bounds collections",
            ),
        ] {
            if let (Some(span), false) = (span, applies) {
                let hint = match top {
                    Shape::Str => "; use `max_len`",
                    Shape::Int { .. } | Shape::Float => "; use `range = a..=b`",
                    Shape::Seq(_) | Shape::Map(_) => "; use `max_items`",
                    _ => "",
                };
                cx.error_at(span, format!("`{rule}` does not apply to argument `{name}`, which is {what}: {instead}{hint}"));
            }
        }
        if let Some(r) = &a.range {
            let int = matches!(top, Shape::Int { .. }) || matches!(elem, Some(Shape::Int { .. }));
            if int
                && [&r.min, &r.max]
                    .into_iter()
                    .flatten()
                    .any(attr::is_float_literal)
            {
                cx.error_at(
                    r.key,
                    format!("argument `{name}` is an integer: use integer bounds in `range`"),
                );
            }
        }
        if let (Some((min, _)), Some((max, span))) = (a.min_len, a.max_len) {
            if min > max {
                cx.error_at(span, "`max_len` is below `min_len`");
            }
        }
        if let (Some((min, _)), Some((max, span))) = (a.min_items, a.max_items) {
            if min > max {
                cx.error_at(span, "`max_items` is below `min_items`");
            }
        }
        self.check_default(cx);
        if a.unbounded.is_some() || a.had_error {
            return;
        }
        let unbounded = |cx: &mut Ctxt, fix: &str| {
            cx.error_spanned(
                &self.ty,
                format!("argument `{name}` is unbounded: {fix}, or `#[arg(unbounded)]` if that is on purpose"),
            );
        };
        let need_scalar = |cx: &mut Ctxt, s: &Shape, ctx: &str| {
            match s {
            Shape::Str if a.max_len.is_none() => unbounded(cx, &format!("add `#[arg(max_len = N)]`{ctx}")),
            Shape::Int { .. } | Shape::Float if a.range.as_ref().is_none_or(|r| r.max.is_none()) => {
                let eg = match s {
                    Shape::Float => "0.0..=1.0",
                    Shape::Int { signed: true } => "-100..=100",
                    _ => "1..=100",
                };
                unbounded(cx, &format!("add `#[arg(range = {eg})]`{ctx}"));
            }
            Shape::Int { signed: true } | Shape::Float if a.range.as_ref().is_some_and(|r| r.min.is_none()) => {
                cx.error_at(
                    a.range.as_ref().map_or_else(|| self.ty.span(), |r| r.key),
                    format!("argument `{name}` is signed: give `range` a lower bound too, e.g. `-100..=100`"),
                );
            }
            Shape::Json => cx.error_spanned(
                &self.ty,
                format!("argument `{name}` is a free-form JSON value, which no rule can bound: use a type that derives `ToolArgs`, or `#[arg(unbounded)]` if that is on purpose"),
            ),
            _ => {}
        }
        };
        match top {
            Shape::Seq(e) | Shape::Map(e) => {
                if a.max_items.is_none() {
                    unbounded(cx, "add `#[arg(max_items = N)]`");
                }
                if matches!(top, Shape::Map(_)) && a.max_len.is_none() {
                    unbounded(
                        cx,
                        "add `#[arg(max_len = N)]` (it bounds the keys and any string values)",
                    );
                }
                match e.strip_option() {
                    Shape::Seq(_) | Shape::Map(_) => cx.error_spanned(
                        &self.ty,
                        format!("argument `{name}` nests collections, whose inner sizes `#[arg]` cannot bound: wrap the inner one in a struct that derives `ToolArgs`, or add `#[arg(unbounded)]`"),
                    ),
                    Shape::Str if matches!(top, Shape::Map(_)) => {}
                    inner => need_scalar(cx, inner, " (it applies to each item)"),
                }
            }
            s => need_scalar(cx, s, ""),
        }
    }

    fn check_default(&self, cx: &mut Ctxt) {
        let (Some(d), Some(r)) = (&self.attr.default, &self.attr.range) else {
            return;
        };
        let Some(v) = attr::literal_value(d) else {
            return;
        };
        let below = r
            .min
            .as_ref()
            .and_then(attr::literal_value)
            .is_some_and(|m| v < m);
        let above = r
            .max
            .as_ref()
            .and_then(attr::literal_value)
            .is_some_and(|m| v > m);
        if below || above {
            cx.error_spanned(
                d,
                format!(
                    "the default of `{}` lies outside its `range`",
                    self.json_name
                ),
            );
        }
    }
}
