use proc_macro2::Span;
use syn::spanned::Spanned;
use syn::{Attribute, Expr, ExprLit, Lit, Meta};

/// A doc comment joined into one text, with the span of its first line.
pub struct Doc {
    pub text: String,
    pub span: Span,
}

/// Reads `///` lines (`#[doc = "..."]`) as rustdoc would: one leading space stripped per
/// line, lines joined with `\n`, surrounding blank lines trimmed.
pub fn read(attrs: &[Attribute]) -> Option<Doc> {
    let mut lines = Vec::new();
    let mut span = None;
    for attr in attrs {
        if let Meta::NameValue(nv) = &attr.meta {
            if nv.path.is_ident("doc") {
                if let Expr::Lit(ExprLit {
                    lit: Lit::Str(s), ..
                }) = &nv.value
                {
                    span.get_or_insert_with(|| attr.span());
                    let v = s.value();
                    for line in v.split('\n') {
                        lines.push(line.strip_prefix(' ').unwrap_or(line).trim_end().to_owned());
                    }
                }
            }
        }
    }
    let text = lines.join("\n").trim().to_owned();
    match span {
        Some(span) if !text.is_empty() => Some(Doc { text, span }),
        _ => None,
    }
}
