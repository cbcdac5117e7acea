//! Code for one argument: validation statements, `#[schemars]`/`#[serde]` attributes,
//! redaction of secrets, and compile-time assertions on nested types.

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;

use super::{Field, Shape};

/// Statements validating `value` (an expression of type `&T`) at path
/// `parent.field(json_name)`, or at `parent` itself when `as_field` is false (the value of
/// an untagged enum variant). Generated code has `__mh` (the runtime's `__private`) and
/// `__out` in scope.
pub fn validation(
    f: &Field,
    value: TokenStream,
    parent: &TokenStream,
    as_field: bool,
) -> TokenStream {
    let name = &f.json_name;
    let body = check(f, &f.shape, &value, &format_ident!("__p0"), 0, true);
    if body.is_empty() {
        return TokenStream::new();
    }
    let path = if as_field {
        quote!(#parent.field(#name))
    } else {
        quote!(*#parent)
    };
    quote! {{
        let __p0 = #path;
        #body
    }}
}

fn check(
    f: &Field,
    shape: &Shape,
    v: &TokenStream,
    p: &proc_macro2::Ident,
    depth: usize,
    top: bool,
) -> TokenStream {
    let a = &f.attr;
    let next_v = format_ident!("__v{}", depth + 1);
    let next_p = format_ident!("__p{}", depth + 1);
    match shape {
        Shape::Option(inner) => {
            let body = check(f, inner, &quote!(#next_v), p, depth + 1, top);
            if body.is_empty() {
                return body;
            }
            quote! { if let ::core::option::Option::Some(#next_v) = #v { #body } }
        }
        Shape::Str => {
            let mut out = TokenStream::new();
            if let Some((n, _)) = a.max_len {
                out.extend(quote!(__mh::rules::max_len(#v, #n, &#p, __out);));
            }
            if let Some((n, _)) = a.min_len {
                out.extend(quote!(__mh::rules::min_len(#v, #n, &#p, __out);));
            }
            if let Some(pat) = &a.pattern {
                out.extend(quote! {{
                    static __PATTERN: __mh::rules::Pattern = __mh::rules::Pattern::new(#pat);
                    __PATTERN.check(#v, &#p, __out);
                }});
            }
            out
        }
        Shape::Int { .. } | Shape::Float => match &a.range {
            Some(r) => {
                let float = matches!(shape, Shape::Float);
                let min = opt(&r.min, float);
                let max = opt(&r.max, float);
                quote!(__mh::rules::range(*(#v), #min, #max, &#p, __out);)
            }
            None => TokenStream::new(),
        },
        Shape::Seq(inner) | Shape::Map(inner) => {
            let is_map = matches!(shape, Shape::Map(_));
            let mut out = TokenStream::new();
            // An oversized collection is reported once, not item by item: a flood of
            // items must not become a flood of violations.
            let mut within = quote!(true);
            if top {
                if let Some((n, _)) = a.max_items {
                    out.extend(quote!(__mh::rules::max_items((#v).len(), #n, &#p, __out);));
                    within = quote!((#v).len() <= #n);
                }
                if let Some((n, _)) = a.min_items {
                    out.extend(quote!(__mh::rules::min_items((#v).len(), #n, &#p, __out);));
                }
            }
            let body = check(f, inner, &quote!(#next_v), &next_p, depth + 1, false);
            if is_map {
                // Keys take the string rules too.
                let key = &format_ident!("__k");
                let key_check = check(f, &Shape::Str, &quote!(#key), &next_p, depth + 1, false);
                if !key_check.is_empty() || !body.is_empty() {
                    out.extend(quote! {
                        if #within {
                            for (#key, #next_v) in (#v).iter() {
                                let #next_p = #p.key(#key);
                                #key_check
                                #body
                            }
                        }
                    });
                }
            } else if !body.is_empty() {
                out.extend(quote! {
                    if #within {
                        for (__i, #next_v) in (#v).iter().enumerate() {
                            let #next_p = #p.index(__i);
                            #body
                        }
                    }
                });
            }
            out
        }
        Shape::Nested(_) => quote! {{
            #[allow(unused_imports)]
            use __mh::{ViaToolArgs as _, ViaNoToolArgs as _};
            (&__mh::Nested(#v)).__mh_validate(&#p, __out);
        }},
        Shape::Bool | Shape::Json | Shape::Unsupported(_) => TokenStream::new(),
    }
}

/// A bound as an `Option`; on a float field an integer bound such as `0` becomes a float.
fn opt(e: &Option<syn::Expr>, float: bool) -> TokenStream {
    match e {
        Some(e) if float => quote!(::core::option::Option::Some((#e) as _)),
        Some(e) => quote!(::core::option::Option::Some(#e)),
        None => quote!(::core::option::Option::None),
    }
}

/// The `#[schemars(...)]` attribute publishing the declared limits and description.
pub fn schema_attrs(f: &Field) -> TokenStream {
    let a = &f.attr;
    let mut items = Vec::new();
    let top = f.shape.strip_option();
    let scalar = |items: &mut Vec<TokenStream>| {
        if a.max_len.is_some() || a.min_len.is_some() {
            let mut parts = Vec::new();
            if let Some((n, _)) = a.min_len {
                parts.push(quote!(min = #n));
            }
            if let Some((n, _)) = a.max_len {
                parts.push(quote!(max = #n));
            }
            items.push(quote!(length(#(#parts),*)));
        }
        if let Some(p) = &a.pattern {
            items.push(quote!(pattern(#p)));
        }
        if let Some(r) = &a.range {
            let mut parts = Vec::new();
            if let Some(m) = &r.min {
                parts.push(quote!(min = #m));
            }
            if let Some(m) = &r.max {
                parts.push(quote!(max = #m));
            }
            items.push(quote!(range(#(#parts),*)));
        }
    };
    match top {
        Shape::Seq(_) => {
            let mut parts = Vec::new();
            if let Some((n, _)) = a.min_items {
                parts.push(quote!(min = #n));
            }
            if let Some((n, _)) = a.max_items {
                parts.push(quote!(max = #n));
            }
            if !parts.is_empty() {
                items.push(quote!(length(#(#parts),*)));
            }
            let mut inner = Vec::new();
            scalar(&mut inner);
            if !inner.is_empty() {
                items.push(quote!(inner(#(#inner),*)));
            }
        }
        Shape::Map(_) => {
            if let Some((n, _)) = a.max_items {
                items.push(quote!(extend("maxProperties" = #n)));
            }
            if let Some((n, _)) = a.min_items {
                items.push(quote!(extend("minProperties" = #n)));
            }
            let mut names = Vec::new();
            if let Some((n, _)) = a.max_len {
                names.push(quote!("maxLength": #n));
            }
            if let Some((n, _)) = a.min_len {
                names.push(quote!("minLength": #n));
            }
            if let Some(p) = &a.pattern {
                names.push(quote!("pattern": #p));
            }
            if !names.is_empty() {
                items.push(quote!(extend("propertyNames" = { #(#names),* })));
            }
        }
        _ => scalar(&mut items),
    }
    if let Some(d) = &a.desc {
        items.push(quote!(description = #d));
    }
    if items.is_empty() {
        TokenStream::new()
    } else {
        quote!(#[schemars(#(#items),*)])
    }
}

/// The `#[serde(...)]` attribute of the field (its default, its JSON name).
fn serde_attrs(f: &Field, default_fn: Option<&proc_macro2::Ident>) -> TokenStream {
    let mut items = Vec::new();
    if let Some(d) = default_fn {
        let s = d.to_string();
        items.push(quote!(default = #s));
    }
    if let Some(r) = &f.attr.rename {
        items.push(quote!(rename = #r));
    }
    if items.is_empty() {
        TokenStream::new()
    } else {
        quote!(#[serde(#(#items),*)])
    }
}

/// The per-field pieces of an argument struct's items and `ToolArgs` impl, the same for
/// `#[derive(ToolArgs)]` structs and `#[tool]` argument structs: collected field by field,
/// then spliced by each caller into its own items.
#[derive(Default)]
pub struct FieldImpls {
    defaults: Vec<TokenStream>,
    assertions: Vec<TokenStream>,
    checks: Vec<TokenStream>,
    redactions: Vec<TokenStream>,
    audit_arms: Vec<TokenStream>,
}

impl FieldImpls {
    /// Adds `f`, the `index`th field (default functions are named after `prefix` and
    /// `index`). Returns the field's schema and serde attributes, for the caller's struct.
    pub fn add(&mut self, f: &Field, prefix: &str, index: usize) -> TokenStream {
        let default = default_fn(f, prefix, index);
        let serde_attrs = serde_attrs(f, default.as_ref().map(|d| &d.0));
        if let Some((_, item)) = default {
            self.defaults.push(item);
        }
        let fi = &f.ident;
        self.checks
            .push(validation(f, quote!(&self.#fi), &quote!(__path), true));
        self.redactions.push(redaction(f));
        self.audit_arms.push(audit_arm(f));
        self.assertions.push(assertions(f));
        let schema_attrs = schema_attrs(f);
        quote!(#schema_attrs #serde_attrs)
    }

    /// The items beside the struct: default functions and compile-time assertions.
    pub fn items(&self) -> TokenStream {
        let (defaults, assertions) = (&self.defaults, &self.assertions);
        quote!(#(#defaults)* #(#assertions)*)
    }

    /// The body of `validate_into` (`self`, `__path`, `__out` in scope).
    pub fn validate_body(&self) -> TokenStream {
        let checks = &self.checks;
        quote!(#(#checks)*)
    }

    /// The body of `redact_json` (`__value` in scope).
    pub fn redact_body(&self) -> TokenStream {
        let redactions = &self.redactions;
        quote!(#(#redactions)*)
    }

    /// The whole `audit_json` method.
    pub fn audit_fn(&self) -> TokenStream {
        audit_fn(&self.audit_arms)
    }
}

/// A function returning the declared default, if any.
fn default_fn(f: &Field, prefix: &str, index: usize) -> Option<(proc_macro2::Ident, TokenStream)> {
    let d = f.attr.default.as_ref()?;
    let ty = &f.ty;
    let ident = format_ident!("__mcp_harden_default_{}_{}", prefix, index);
    let is_str_lit = matches!(
        d,
        syn::Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Str(_),
            ..
        })
    );
    let value = if is_str_lit && matches!(f.shape.strip_option(), Shape::Str) {
        quote!(::std::string::String::from(#d))
    } else {
        quote!(#d)
    };
    // `default = 5` on an `Option<u32>` means `Some(5)`.
    let is_option_expr = match d {
        syn::Expr::Path(p) => p.path.is_ident("None"),
        syn::Expr::Call(c) => matches!(&*c.func, syn::Expr::Path(p) if p.path.is_ident("Some")),
        _ => false,
    };
    let value = if matches!(f.shape, Shape::Option(_)) && !is_option_expr {
        quote!(::core::option::Option::Some(#value))
    } else {
        value
    };
    let item = quote_spanned! {d.span()=>
        #[allow(non_snake_case)]
        fn #ident() -> #ty { #value }
    };
    Some((ident, item))
}

/// Statements redacting this field inside `__value: &mut serde_json::Value`.
fn redaction(f: &Field) -> TokenStream {
    let name = &f.json_name;
    if f.attr.secret.is_some() {
        return quote!(__mh::redact_field(__value, #name););
    }
    match redactor(&f.shape) {
        Some(r) => quote!(__mh::with_field(__value, #name, #r);),
        None => TokenStream::new(),
    }
}

/// The arm of a declared field in a struct's generated audit walk (`ToolArgs::audit_json`):
/// a `secret` field or a credential-like name (decided at compile time) is redacted, any
/// other value gets the audit walk of its type.
///
/// Each arm also tells the object's `PairSeen` the field's part in a name/value pair, decided
/// at compile time (nothing for most names).
fn audit_arm(f: &Field) -> TokenStream {
    let name = &f.json_name;
    let see = quote! {
        const __ROLE: u8 = __mh::pair_role(#name);
        __pair.see(__ROLE, __c);
    };
    if f.attr.secret.is_some() {
        return quote!(#name => { #see __mh::redact_value(__c) });
    }
    let walk = auditor(&f.shape);
    quote! {
        #name => {
            #see
            const __CREDENTIAL: bool = __mh::is_credential_name_const(#name);
            if __CREDENTIAL {
                __mh::redact_value(__c)
            } else {
                (#walk)(__c)
            }
        }
    }
}

/// The whole generated `audit_json` of a struct: declared fields by name, anything else
/// (undeclared keys, a value that is not an object) by the whole walk. The name/value pair
/// rule of `redact_credentials` is applied after the one pass over the keys, from what
/// `PairSeen` saw of them (each name before its value was walked, as the whole walk does).
fn audit_fn(arms: &[TokenStream]) -> TokenStream {
    quote! {
        fn audit_json(__value: &mut __mh::serde_json::Value) {
            match __value {
                __mh::serde_json::Value::Object(__map) => {
                    let mut __pair = __mh::PairSeen::default();
                    for (__k, __c) in __map.iter_mut() {
                        #[allow(unreachable_patterns)]
                        match __k.as_str() {
                            #(#arms)*
                            _ => {
                                __pair.see(__mh::pair_role(__k), __c);
                                __mh::redact_entry(__k, __c, __mh::redact_credentials)
                            }
                        }
                    }
                    __pair.finish(__map);
                }
                __other => __mh::redact_credentials(__other),
            }
        }
    }
}

/// An expression of type `fn(&mut serde_json::Value)`: the audit walk of a value of this
/// shape. Only shapes holding nested argument types differ from the whole walk.
fn auditor(shape: &Shape) -> TokenStream {
    let mut nested = false;
    nested_types(shape, &mut |_| nested = true);
    if !nested {
        return quote!(__mh::redact_credentials);
    }
    match shape {
        Shape::Option(s) => auditor(s),
        Shape::Seq(s) | Shape::Map(s) => {
            let inner = auditor(s);
            quote!(|__v: &mut __mh::serde_json::Value| __mh::audit_each(__v, #inner))
        }
        Shape::Nested(ty) => quote! {
            |__v: &mut __mh::serde_json::Value| {
                #[allow(unused_imports)]
                use __mh::{ViaToolArgs as _, ViaNoToolArgs as _};
                (&__mh::NestedType::<#ty>::new()).__mh_audit(__v)
            }
        },
        _ => quote!(__mh::redact_credentials),
    }
}

/// An expression of type `fn(&mut serde_json::Value)` redacting a value of this field's type,
/// when the type holds nested argument types.
pub fn value_redactor(f: &Field) -> Option<TokenStream> {
    redactor(&f.shape)
}

fn redactor(shape: &Shape) -> Option<TokenStream> {
    match shape {
        Shape::Option(s) => redactor(s),
        Shape::Seq(s) | Shape::Map(s) => {
            redactor(s).map(|r| quote!(|__v: &mut __mh::serde_json::Value| __mh::each(__v, #r)))
        }
        Shape::Nested(ty) => Some(quote! {
            |__v: &mut __mh::serde_json::Value| {
                #[allow(unused_imports)]
                use __mh::{ViaToolArgs as _, ViaNoToolArgs as _};
                (&__mh::NestedType::<#ty>::new()).__mh_redact(__v)
            }
        }),
        _ => None,
    }
}

/// Compile-time checks that nested types implement `ToolArgs`, pointing at the type.
pub fn assertions(f: &Field) -> TokenStream {
    if f.attr.unbounded.is_some() {
        return TokenStream::new();
    }
    let mut out = TokenStream::new();
    nested_types(&f.shape, &mut |ty| {
        out.extend(quote_spanned! {ty.span()=>
            const _: () = __mh::assert_tool_args::<#ty>();
        });
    });
    out
}

fn nested_types(shape: &Shape, f: &mut dyn FnMut(&syn::Type)) {
    match shape {
        Shape::Option(s) | Shape::Seq(s) | Shape::Map(s) => nested_types(s, f),
        Shape::Nested(ty) => f(ty),
        _ => {}
    }
}
