//! `#[tool(...)]`: parse the attribute's keys into a checked model, collecting every mistake.

use proc_macro2::{Span, TokenStream};
use syn::parse::Parser;
use syn::spanned::Spanned;
use syn::{Expr, ExprArray, ExprLit, Lit, LitInt, LitStr, Path};

use crate::ctxt::{unknown_key_message, Ctxt};

const KEYS: &[&str] = &[
    "scopes",
    "rate",
    "burst",
    "retryable_on",
    "timeout",
    "max_concurrency",
    "queue_timeout",
    "name",
    "title",
    "read_only",
    "destructive",
    "idempotent",
    "open_world",
    "crate",
];

pub enum Scopes {
    Public,
    Required(Vec<String>),
}

pub enum Rate {
    Unlimited,
    Limited { count: u32, per: &'static str },
}

pub struct ToolAttr {
    pub scopes: Option<Scopes>,
    pub rate: Option<(Rate, Span)>,
    pub burst: Option<(u32, Span)>,
    pub retryable_on: Vec<Path>,
    pub timeout_ms: Option<u64>,
    pub max_concurrency: Option<u32>,
    pub queue_timeout: Option<(u64, Span)>,
    pub name: Option<LitStr>,
    pub title: Option<LitStr>,
    pub read_only: Option<Span>,
    pub destructive: Option<Span>,
    pub idempotent: Option<Span>,
    pub open_world: Option<Span>,
    pub krate: Option<Path>,
    /// Every key written, valid or not: a malformed key is not also reported missing.
    pub present: Vec<String>,
}

impl ToolAttr {
    pub fn parse(cx: &mut Ctxt, tokens: TokenStream) -> ToolAttr {
        let mut a = ToolAttr {
            scopes: None,
            rate: None,
            burst: None,
            retryable_on: Vec::new(),
            timeout_ms: None,
            max_concurrency: None,
            queue_timeout: None,
            name: None,
            title: None,
            read_only: None,
            destructive: None,
            idempotent: None,
            open_world: None,
            krate: None,
            present: Vec::new(),
        };
        let mut seen: Vec<String> = Vec::new();
        let parser = syn::meta::parser(|meta| {
            let key = meta
                .path
                .get_ident()
                .map(ToString::to_string)
                .unwrap_or_else(|| {
                    meta.path
                        .segments
                        .iter()
                        .map(|s| s.ident.to_string())
                        .collect::<Vec<_>>()
                        .join("::")
                });
            let key_span = meta.path.span();
            let key = if key == "r#crate" {
                "crate".to_owned()
            } else {
                key
            };
            if seen.contains(&key) && KEYS.contains(&key.as_str()) {
                cx.error_at(key_span, format!("duplicate key `{key}`"));
            }
            seen.push(key.clone());
            let flag = |cx: &mut Ctxt, meta: &syn::meta::ParseNestedMeta| -> syn::Result<Span> {
                if meta.input.peek(syn::Token![=]) {
                    let _: Expr = meta.value()?.parse()?;
                    cx.error_at(key_span, format!("`{key}` is a flag: write `{key}` alone"));
                }
                Ok(key_span)
            };
            match key.as_str() {
                "scopes" => {
                    let e: Expr = meta.value()?.parse()?;
                    a.scopes = parse_scopes(cx, &e);
                }
                "rate" => {
                    if let Some(lit) = str_value(cx, &meta, &key, "\"60/min\"")? {
                        a.rate = parse_rate(cx, &lit).map(|r| (r, lit.span()));
                    }
                }
                "burst" => {
                    let Some(lit) = int_value(cx, &meta, &key, "10")? else {
                        return Ok(());
                    };
                    match lit.base10_parse::<u32>() {
                        Ok(n) if n > 0 => a.burst = Some((n, lit.span())),
                        _ => cx.error_spanned(&lit, "`burst` must be a positive integer"),
                    }
                }
                "retryable_on" => {
                    let e: Expr = meta.value()?.parse()?;
                    a.retryable_on = parse_variants(cx, &e);
                }
                "timeout" => {
                    if let Some(lit) = str_value(cx, &meta, &key, "\"5s\"")? {
                        a.timeout_ms = parse_duration_ms(cx, &lit, "timeout");
                    }
                }
                "max_concurrency" => {
                    let Some(lit) = int_value(cx, &meta, &key, "4")? else {
                        return Ok(());
                    };
                    match lit.base10_parse::<u32>() {
                        Ok(n) if n > 0 => a.max_concurrency = Some(n),
                        _ => cx.error_spanned(
                            &lit,
                            "`max_concurrency` must be a positive integer: the most calls running at once",
                        ),
                    }
                }
                "queue_timeout" => {
                    if let Some(lit) = str_value(cx, &meta, &key, "\"2s\"")? {
                        a.queue_timeout =
                            parse_duration_ms(cx, &lit, "queue_timeout").map(|ms| (ms, lit.span()));
                    }
                }
                "name" => {
                    if let Some(lit) = str_value(cx, &meta, &key, "\"query_database\"")? {
                        check_tool_name(cx, &lit.value(), lit.span());
                        a.name = Some(lit);
                    }
                }
                "title" => a.title = str_value(cx, &meta, &key, "\"Query the database\"")?,
                "read_only" => a.read_only = Some(flag(cx, &meta)?),
                "destructive" => a.destructive = Some(flag(cx, &meta)?),
                "idempotent" => a.idempotent = Some(flag(cx, &meta)?),
                "open_world" => a.open_world = Some(flag(cx, &meta)?),
                "crate" => {
                    let Some(lit) = str_value(cx, &meta, &key, "\"::mcp_harden\"")? else {
                        return Ok(());
                    };
                    match lit.parse::<Path>() {
                        Ok(p) => a.krate = Some(p),
                        Err(_) => cx.error_spanned(
                            &lit,
                            "`crate` must be a path such as \"::my_crate::mcp_harden\"",
                        ),
                    }
                }
                _ => {
                    crate::ctxt::skip_value(&meta)?;
                    cx.error_at(key_span, unknown_key_message("`#[tool]`", &key, KEYS));
                }
            }
            Ok(())
        });
        if let Err(e) = parser.parse2(tokens) {
            cx.push(e);
        }
        a.present = seen;
        a
    }
}

/// The string literal of `key = "..."`.
fn str_value(
    cx: &mut Ctxt,
    meta: &syn::meta::ParseNestedMeta,
    key: &str,
    example: &str,
) -> syn::Result<Option<LitStr>> {
    let hint = format!("a string: write e.g. `{key} = {example}`");
    literal(cx, meta, key, &hint, |lit| match lit {
        Lit::Str(s) => Some(s),
        _ => None,
    })
}

/// The integer literal of `key = N`.
fn int_value(
    cx: &mut Ctxt,
    meta: &syn::meta::ParseNestedMeta,
    key: &str,
    example: &str,
) -> syn::Result<Option<LitInt>> {
    let hint = format!("an integer: write e.g. `{key} = {example}`, without quotes");
    literal(cx, meta, key, &hint, |lit| match lit {
        Lit::Int(n) => Some(n),
        _ => None,
    })
}

/// The literal of `key = ...` that `pick` accepts. Another value is reported ("`key` takes
/// {hint}") without ending the parse, so the keys after it are still read (and not also
/// reported missing). Values forwarded by `macro_rules!` (`$x:literal`, `$x:expr`) arrive in
/// invisible groups, looked through.
fn literal<T>(
    cx: &mut Ctxt,
    meta: &syn::meta::ParseNestedMeta,
    key: &str,
    hint: &str,
    pick: fn(Lit) -> Option<T>,
) -> syn::Result<Option<T>> {
    let mut e: Expr = meta.value()?.parse()?;
    while let Expr::Group(g) = e {
        e = *g.expr;
    }
    let picked = match &e {
        Expr::Lit(ExprLit { lit, .. }) => pick(lit.clone()),
        _ => None,
    };
    if picked.is_none() {
        cx.error_spanned(&e, format!("`{key}` takes {hint}"));
    }
    Ok(picked)
}

fn parse_scopes(cx: &mut Ctxt, e: &Expr) -> Option<Scopes> {
    let scopes = match e {
        Expr::Path(p) if p.path.is_ident("public") => return Some(Scopes::Public),
        Expr::Lit(ExprLit {
            lit: Lit::Str(s), ..
        }) => {
            let v = s.value();
            if v.trim().is_empty() {
                cx.error_spanned(s, "`scopes` is empty: write `scopes = []` for any authenticated caller, or `scopes = public` for anyone");
                return None;
            }
            v.split_whitespace()
                .map(|t| (t.to_owned(), s.span()))
                .collect::<Vec<_>>()
        }
        Expr::Array(ExprArray { elems, .. }) => {
            let mut out = Vec::new();
            for el in elems {
                match el {
                    Expr::Lit(ExprLit {
                        lit: Lit::Str(s), ..
                    }) => {
                        let v = s.value();
                        if v.split_whitespace().count() != 1 {
                            cx.error_spanned(s, "each scope in the list is one token without spaces: split it into several strings");
                        } else {
                            out.push((v, s.span()));
                        }
                    }
                    other => cx.error_spanned(
                        other,
                        "scopes are string literals, e.g. `[\"db:read\", \"db:write\"]`",
                    ),
                }
            }
            out
        }
        other => {
            cx.error_spanned(other, "`scopes` takes a string (`\"db:read db:write\"`), a list (`[\"db:read\"]`), `[]` for any authenticated caller, or `public`");
            return None;
        }
    };
    let mut names = Vec::new();
    for (s, span) in scopes {
        // RFC 6749 scope-token: %x21 / %x23-5B / %x5D-7E.
        if let Some(c) = s
            .chars()
            .find(|c| !matches!(*c as u32, 0x21 | 0x23..=0x5B | 0x5D..=0x7E))
        {
            cx.error_at(
                span,
                format!(
                    "the scope `{s}` contains {c:?}, which is not allowed in an OAuth scope token"
                ),
            );
        } else if names.contains(&s) {
            cx.error_at(span, format!("the scope `{s}` is listed twice"));
        } else {
            names.push(s);
        }
    }
    Some(Scopes::Required(names))
}

fn parse_rate(cx: &mut Ctxt, lit: &LitStr) -> Option<Rate> {
    let v = lit.value();
    let v = v.trim();
    if v == "unlimited" {
        return Some(Rate::Unlimited);
    }
    let fix =
        "write `rate = \"N/sec\"`, `\"N/min\"` or `\"N/hour\"` with N > 0, or `\"unlimited\"`";
    let Some((n, unit)) = v.split_once('/') else {
        cx.error_spanned(lit, format!("malformed rate `{v}`: {fix}"));
        return None;
    };
    let per = match unit.trim() {
        "s" | "sec" | "second" => "sec",
        "m" | "min" | "minute" => "min",
        "h" | "hour" => "hour",
        other => {
            cx.error_spanned(lit, format!("unknown rate unit `{other}`: {fix}"));
            return None;
        }
    };
    match n.trim().replace('_', "").parse::<u32>() {
        Ok(count) if count > 0 => {
            // At most one call per microsecond.
            let max = match per {
                "sec" => 1_000_000,
                "min" => 60_000_000,
                _ => 3_600_000_000,
            };
            if count > max {
                cx.error_spanned(lit, format!("a rate above {max}/{per} cannot be enforced: lower it, or write `rate = \"unlimited\"`"));
                return None;
            }
            Some(Rate::Limited { count, per })
        }
        Ok(_) => {
            cx.error_spanned(lit, format!("a rate of 0 admits no call: {fix}"));
            None
        }
        _ => {
            cx.error_spanned(lit, format!("malformed rate count `{}`: {fix}", n.trim()));
            None
        }
    }
}

fn parse_variants(cx: &mut Ctxt, e: &Expr) -> Vec<Path> {
    let elems: Vec<&Expr> = match e {
        Expr::Array(a) => a.elems.iter().collect(),
        other => vec![other],
    };
    let mut out = Vec::new();
    for el in elems {
        match el {
            Expr::Path(p) if p.path.segments.len() >= 2 => out.push(p.path.clone()),
            other => cx.error_spanned(other, "`retryable_on` lists error variants as paths, e.g. `[DbError::Busy, DbError::Timeout]`"),
        }
    }
    out
}

fn parse_duration_ms(cx: &mut Ctxt, lit: &LitStr, key: &str) -> Option<u64> {
    let v = lit.value();
    let v = v.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (n, unit) = v.split_at(split);
    let fix = format!("write e.g. `{key} = \"500ms\"`, `\"5s\"`, `\"2m\"` or `\"1h\"`");
    let Ok(n) = n.parse::<u64>() else {
        cx.error_spanned(lit, format!("malformed {key} `{v}`: {fix}"));
        return None;
    };
    let ms = match unit.trim() {
        "ms" => Some(n),
        "s" => n.checked_mul(1000),
        "m" | "min" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => {
            cx.error_spanned(lit, format!("malformed {key} `{v}`: {fix}"));
            return None;
        }
    };
    match ms {
        Some(ms) if ms > 0 && ms <= 3_600_000 => Some(ms),
        _ => {
            cx.error_spanned(
                lit,
                format!("`{key}` must be more than 0 and at most one hour"),
            );
            None
        }
    }
}

pub fn check_tool_name(cx: &mut Ctxt, name: &str, span: Span) {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !ok {
        cx.error_at(
            span,
            format!("invalid tool name `{name}`: use 1 to 128 of A-Z, a-z, 0-9, `_`, `-`, `.`"),
        );
    }
}
