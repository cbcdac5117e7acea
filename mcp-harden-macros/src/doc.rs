use proc_macro2::Span;
use syn::spanned::Spanned;
use syn::{Attribute, Expr, ExprLit, Lit, Meta};

use crate::ctxt::Ctxt;

/// A doc comment joined into one text, with the span and text of each `///` line.
pub struct Doc {
    pub text: String,
    pub span: Span,
    lines: Vec<(String, Span)>,
}

/// Reads `///` lines (`#[doc = "..."]`) as rustdoc would: one leading space stripped per
/// line, lines joined with `\n`, surrounding blank lines trimmed.
pub fn read(attrs: &[Attribute]) -> Option<Doc> {
    let mut lines = Vec::new();
    for attr in attrs {
        if let Meta::NameValue(nv) = &attr.meta {
            if nv.path.is_ident("doc") {
                if let Expr::Lit(ExprLit {
                    lit: Lit::Str(s), ..
                }) = &nv.value
                {
                    let v = s.value();
                    let text: Vec<&str> = v
                        .split('\n')
                        .map(|l| l.strip_prefix(' ').unwrap_or(l).trim_end())
                        .collect();
                    lines.push((text.join("\n"), attr.span()));
                }
            }
        }
    }
    let text = join(&lines);
    let span = lines.first().map(|l| l.1)?;
    (!text.is_empty()).then_some(Doc { text, span, lines })
}

fn join(lines: &[(String, Span)]) -> String {
    lines
        .iter()
        .map(|l| l.0.as_str())
        .collect::<Vec<_>>()
        .join("\n")
        .trim()
        .to_owned()
}

/// Lints the doc comment, pointing each problem at the first line by which it shows.
pub fn lint(cx: &mut Ctxt, doc: &Doc, what: &str) {
    let problems = crate::lint::check(&doc.text, what);
    if problems.is_empty() {
        return;
    }
    let span = (1..=doc.lines.len())
        .find(|&k| !crate::lint::check(&join(&doc.lines[..k]), what).is_empty())
        .map_or(doc.span, |k| doc.lines[k - 1].1);
    for p in problems {
        cx.error_at(span, p);
    }
}
