//! `#[tool]`: parse the attribute and the function, check both, emit the tool.

mod attr;
mod emit;

use proc_macro2::{Span, TokenStream};
use quote::quote;
use syn::{FnArg, ItemFn, Pat, ReturnType, Type};

use crate::args::Field;
use crate::ctxt::Ctxt;
use crate::{doc, lint};

pub use attr::check_tool_name;
use attr::ToolAttr;

/// A checked `#[tool]`: what `emit` needs.
pub struct Model {
    pub func: ItemFn,
    pub attr: ToolAttr,
    pub name: String,
    pub description: String,
    pub params: Vec<Param>,
    pub ok_ty: Type,
    pub returns_result: bool,
}

pub enum Param {
    Ctx { state: Box<Type> },
    Arg(Box<Field>),
}

pub fn expand(attr: TokenStream, item: TokenStream) -> TokenStream {
    let mut cx = Ctxt::default();
    let func: ItemFn = match syn::parse2(item.clone()) {
        Ok(f) => f,
        Err(_) => {
            let e = syn::Error::new(
                Span::call_site(),
                "#[tool] applies to a free `async fn` (not a method, closure or other item)",
            );
            return quote!(#item)
                .into_iter()
                .chain(e.to_compile_error())
                .collect();
        }
    };
    let attr = ToolAttr::parse(&mut cx, attr);
    let model = check(&mut cx, attr, func);
    if cx.has_errors() {
        let errors = cx.to_compile_errors();
        let fallback = emit::fallback(&model);
        return quote!(#fallback #errors);
    }
    emit::tool(&model)
}

fn check(cx: &mut Ctxt, attr: ToolAttr, mut func: ItemFn) -> Model {
    let sig = &func.sig;
    if sig.asyncness.is_none() {
        cx.error_at(
            sig.fn_token.span,
            "a tool must be an `async fn`: add `async` before `fn`",
        );
    }
    if let Some(c) = &sig.constness {
        cx.error_spanned(c, "a tool cannot be a `const fn`");
    }
    if let Some(u) = &sig.unsafety {
        cx.error_spanned(u, "a tool cannot be `unsafe`");
    }
    if let Some(abi) = &sig.abi {
        cx.error_spanned(abi, "a tool cannot declare an ABI");
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        cx.error_spanned(
            &sig.generics,
            "a tool cannot be generic: its argument types fix its JSON Schema; use concrete types",
        );
    }
    if let Some(v) = &sig.variadic {
        cx.error_spanned(v, "a tool cannot be variadic");
    }
    let fn_name = sig.ident.to_string();
    let name = attr.name.as_ref().map_or_else(
        || fn_name.trim_start_matches("r#").to_owned(),
        |l| l.value(),
    );
    if attr.name.is_none() {
        check_tool_name(cx, &name, sig.ident.span());
    }

    let present = |k: &str| attr.present.iter().any(|p| p == k);
    if attr.scopes.is_none() && !present("scopes") {
        cx.error_at(
            Span::call_site(),
            "missing `scopes`: add `scopes = \"db:read\"`, `scopes = []` for any authenticated caller, or `scopes = public` for anyone",
        );
    }
    if attr.rate.is_none() && !present("rate") {
        cx.error_at(Span::call_site(), "missing `rate`: add e.g. `rate = \"60/min\"`, or `rate = \"unlimited\"` if that is on purpose");
    }
    if let (Some((_, span)), Some((attr::Rate::Unlimited, _)) | None, false) = (
        &attr.burst,
        &attr.rate,
        attr.rate.is_none() && present("rate"),
    ) {
        cx.error_at(*span, "`burst` needs a limited `rate` such as `\"60/min\"`");
    }
    if let (Some((burst, span)), Some((attr::Rate::Limited { count, per }, _))) =
        (&attr.burst, &attr.rate)
    {
        // The burst window (burst × period / count) is at most ten years, as `build()` needs.
        let period: u128 = match *per {
            "sec" => 1,
            "min" => 60,
            _ => 3600,
        };
        if period * u128::from(*burst) > 10 * 365 * 24 * 3600 * u128::from(*count) {
            cx.error_at(
                *span,
                format!("a burst of {burst} at {count}/{per} refills over more than ten years: lower the burst"),
            );
        }
    }
    if let (Some((_, span)), None, false) = (
        &attr.queue_timeout,
        attr.max_concurrency,
        present("max_concurrency"),
    ) {
        cx.error_at(
            *span,
            "`queue_timeout` needs `max_concurrency = N`: it is how long a call waits for one of the N slots",
        );
    }
    if let (Some(_), Some(d)) = (attr.read_only, attr.destructive) {
        cx.error_at(d, "a tool cannot be both `read_only` and `destructive`");
    }

    let description = match doc::read(&func.attrs) {
        Some(d) => {
            doc::lint(cx, &d, "description");
            d.text
        }
        None => {
            cx.error_at(
                sig.ident.span(),
                format!("`{fn_name}` has no doc comment: add `/// What the tool does.` above it; it becomes the tool's description"),
            );
            String::new()
        }
    };
    if let Some(t) = &attr.title {
        for p in lint::check(&t.value(), "title") {
            cx.error_spanned(t, p);
        }
    }

    let mut params = Vec::new();
    let mut ctx_seen = false;
    for input in func.sig.inputs.iter_mut() {
        let pt = match input {
            FnArg::Receiver(r) => {
                cx.error_spanned(&*r, "a tool is a free function: remove `self` and pass shared state through `Ctx<S>`");
                continue;
            }
            FnArg::Typed(pt) => pt,
        };
        let (arg_attrs, other): (Vec<_>, Vec<_>) =
            pt.attrs.drain(..).partition(|a| a.path().is_ident("arg"));
        pt.attrs = other;
        if let Type::Reference(r) = &*pt.ty {
            if ctx_state(&r.elem).is_some() {
                cx.error_spanned(
                    &pt.ty,
                    "take the context by value: `ctx: Ctx<S>` (it is cheap to clone)",
                );
                continue;
            }
        }
        if let Some(state) = ctx_state(&pt.ty) {
            if ctx_seen {
                cx.error_spanned(&pt.ty, "a tool takes at most one `Ctx<S>` parameter");
            }
            ctx_seen = true;
            if let Some(a) = arg_attrs.first() {
                cx.error_spanned(a, "`#[arg]` does not apply to the `Ctx` parameter");
            }
            params.push(Param::Ctx {
                state: Box::new(state),
            });
            continue;
        }
        let ident = match &*pt.pat {
            Pat::Ident(pi) if pi.by_ref.is_none() && pi.subpat.is_none() => pi.ident.clone(),
            other => {
                cx.error_spanned(
                    other,
                    "tool arguments need a plain name (it becomes the JSON field name)",
                );
                continue;
            }
        };
        if ident.to_string().starts_with("__") {
            cx.error_spanned(&ident, "argument names starting with `__` are reserved");
        }
        let field = Field::new(cx, ident, (*pt.ty).clone(), &arg_attrs);
        if let Some(r) = &field.attr.rename {
            cx.error_spanned(
                r,
                "`rename` is not available on tool parameters: rename the parameter itself",
            );
        }
        params.push(Param::Arg(Box::new(field)));
    }

    // The receiver was reported; dropping it keeps rustc from repeating the complaint.
    func.sig.inputs = std::mem::take(&mut func.sig.inputs)
        .into_iter()
        .filter(|a| matches!(a, FnArg::Typed(_)))
        .collect();
    let (ok_ty, returns_result) = output_type(&func.sig.output);
    if !returns_result {
        if let Some(p) = attr.retryable_on.first() {
            cx.error_spanned(p, "`retryable_on` needs the tool to return `Result<T, E>`");
        }
    }
    Model {
        func,
        attr,
        name,
        description,
        params,
        ok_ty,
        returns_result,
    }
}

/// `Ctx<S>` (any path ending in `Ctx` with one type argument) gives `S`.
fn ctx_state(ty: &Type) -> Option<Type> {
    let Type::Path(p) = ty else { return None };
    let last = p.path.segments.last()?;
    if last.ident != "Ctx" {
        return None;
    }
    match &last.arguments {
        syn::PathArguments::AngleBracketed(a) => a.args.iter().find_map(|g| match g {
            syn::GenericArgument::Type(t) => Some(t.clone()),
            _ => None,
        }),
        _ => None,
    }
}

/// The success type, and whether the function returns a `Result`.
fn output_type(ret: &ReturnType) -> (Type, bool) {
    match ret {
        ReturnType::Default => (syn::parse_quote!(()), false),
        ReturnType::Type(_, ty) => {
            if let Type::Path(p) = &**ty {
                if let Some(last) = p.path.segments.last() {
                    if last.ident == "Result" {
                        if let syn::PathArguments::AngleBracketed(a) = &last.arguments {
                            if let Some(syn::GenericArgument::Type(t)) = a.args.first() {
                                return (t.clone(), true);
                            }
                        }
                    }
                }
            }
            ((**ty).clone(), false)
        }
    }
}

#[cfg(test)]
mod tests {
    use quote::quote;

    fn expand(attr: proc_macro2::TokenStream, item: proc_macro2::TokenStream) -> String {
        super::expand(attr, item).to_string()
    }

    #[test]
    fn a_valid_tool_expands_to_the_function_a_marker_and_a_tool_impl() {
        let out = expand(
            quote!(
                scopes = "db:read",
                rate = "5/min",
                burst = 2,
                timeout = "1s",
                read_only
            ),
            quote! {
                /// Look something up.
                async fn lookup(ctx: Ctx<App>, #[arg(max_len = 8)] key: String) -> Result<String, E> { todo!() }
            },
        );
        assert!(!out.contains("compile_error"), "{out}");
        for needle in [
            "async fn lookup (ctx : Ctx < App > , key : String)",
            "struct lookup { }",
            "deny_unknown_fields",
            "__mh :: rules :: max_len (& self . key , 8usize",
            "impl __mh :: Tool < App > for lookup",
            "__mh :: Rate :: Limited { count : 5u32 , period : __mh :: Period :: Minute , burst : :: core :: option :: Option :: Some (2u32) }",
            "__mh :: Duration :: from_millis (1000u64)",
            "\"Look something up.\"",
        ] {
            assert!(out.contains(needle), "missing `{needle}` in {out}");
        }
        assert!(
            !out.contains("# [arg"),
            "#[arg] is stripped from the emitted function"
        );
    }

    #[test]
    fn every_mistake_is_reported_and_the_function_still_emitted() {
        let out = expand(
            quote!(scope = "db:read", rate = "5/fortnight", timeout = "soon"),
            quote! {
                fn lookup(key: String, n: u64) -> String { todo!() }
            },
        );
        let errors = out.matches("compile_error").count();
        // unknown key, bad rate unit, bad timeout, missing scopes, not async, no doc, key and n unbounded
        assert_eq!(errors, 8, "{out}");
        assert!(out.contains("did you mean `scopes`?"));
        assert!(
            out.contains("fn lookup (key : String , n : u64)"),
            "the function survives: {out}"
        );
        assert!(
            out.contains("struct lookup { }"),
            "so does the marker: {out}"
        );
    }
}
