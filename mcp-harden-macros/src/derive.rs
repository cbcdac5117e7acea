//! `#[derive(ToolArgs)]`: a private shadow type carries the serde and schemars derives (so
//! users depend on mcp-harden alone); the user's type gets `Deserialize`, `Serialize` and
//! `JsonSchema` by delegation, and `ToolArgs` from its fields' rules.

use proc_macro2::TokenStream;
use quote::{format_ident, quote};
use syn::spanned::Spanned;
use syn::{Attribute, Data, DeriveInput, Fields, LitStr};

use crate::args::{self, Field};
use crate::ctxt::{unknown_key_message, Ctxt};
use crate::doc;

const CONTAINER_KEYS: &[&str] = &["rename_all", "crate"];
const RENAME_RULES: &[&str] = &[
    "lowercase",
    "UPPERCASE",
    "PascalCase",
    "camelCase",
    "snake_case",
    "SCREAMING_SNAKE_CASE",
    "kebab-case",
    "SCREAMING-KEBAB-CASE",
];

struct Container {
    rename_all: Option<LitStr>,
    krate: Option<syn::Path>,
}

pub fn expand(input: TokenStream) -> TokenStream {
    let input: DeriveInput = match syn::parse2(input) {
        Ok(i) => i,
        Err(e) => return e.to_compile_error(),
    };
    let mut cx = Ctxt::default();
    let container = container_attrs(&mut cx, &input.attrs);
    if !input.generics.params.is_empty() {
        cx.error_spanned(
            &input.generics,
            "`ToolArgs` cannot be derived for generic types: use concrete field types",
        );
    }
    lint_docs(&mut cx, &input.attrs, "type description");
    let body = match &input.data {
        Data::Struct(s) => {
            match &s.fields {
                Fields::Named(named) => {
                    let fields: Vec<Field> = named
                        .named
                        .iter()
                        .filter_map(|f| {
                            lint_docs(&mut cx, &f.attrs, "field description");
                            let ident = f.ident.clone()?;
                            let field = Field::new(&mut cx, ident, f.ty.clone(), &f.attrs);
                            Some(field)
                        })
                        .collect();
                    if let Some(r) = &container.rename_all {
                        cx.error_spanned(r, "`rename_all` applies to enums; name struct fields as they appear in JSON");
                    }
                    Some(Body::Struct(
                        fields,
                        named.named.iter().map(|f| docs(&f.attrs)).collect(),
                    ))
                }
                _ => {
                    cx.error_at(input.ident.span(), "`ToolArgs` needs a struct with named fields (they become JSON object keys)");
                    None
                }
            }
        }
        Data::Enum(e) => {
            if e.variants.is_empty() {
                cx.error_at(
                    input.ident.span(),
                    "an argument enum needs at least one variant",
                );
            }
            let unit = e.variants.iter().all(|v| matches!(v.fields, Fields::Unit));
            let newtype = e
                .variants
                .iter()
                .all(|v| matches!(&v.fields, Fields::Unnamed(u) if u.unnamed.len() == 1));
            for v in &e.variants {
                lint_docs(&mut cx, &v.attrs, "variant description");
            }
            if unit {
                let variants = e
                    .variants
                    .iter()
                    .map(|v| {
                        let a = args::ArgAttr::parse(&mut cx, &v.attrs);
                        if let Some(span) = a.first_rule_span() {
                            cx.error_at(span, "variants of an allow-list enum take only `#[arg(rename = \"...\")]`");
                        }
                        (v.ident.clone(), a.rename, docs(&v.attrs))
                    })
                    .collect();
                Some(Body::Unit(variants))
            } else if newtype {
                let variants = e
                    .variants
                    .iter()
                    .filter_map(|v| {
                        let Fields::Unnamed(u) = &v.fields else {
                            return None;
                        };
                        let f = u.unnamed.first()?;
                        // Rules may sit on the variant or on its field: both describe its value.
                        let attrs: Vec<Attribute> =
                            v.attrs.iter().chain(&f.attrs).cloned().collect();
                        let field = Field::new(&mut cx, v.ident.clone(), f.ty.clone(), &attrs);
                        Some((field, docs(&v.attrs)))
                    })
                    .collect();
                Some(Body::OneOf(variants))
            } else {
                cx.error_at(
                    input.ident.span(),
                    "`ToolArgs` enums are either all unit variants (an allow-list of strings) or all single-field variants (one of several JSON types)",
                );
                None
            }
        }
        Data::Union(_) => {
            cx.error_at(
                input.ident.span(),
                "`ToolArgs` cannot be derived for unions",
            );
            None
        }
    };
    let krate = match &container.krate {
        Some(p) => quote!(#p),
        None => quote!(::mcp_harden),
    };
    match body {
        Some(body) if !cx.has_errors() => emit(&input, &container, &krate, body),
        _ => {
            let errors = cx.to_compile_errors();
            let dummy = dummy(&input, &krate);
            quote!(#errors #dummy)
        }
    }
}

enum Body {
    Struct(Vec<Field>, Vec<Vec<Attribute>>),
    Unit(Vec<(syn::Ident, Option<LitStr>, Vec<Attribute>)>),
    OneOf(Vec<(Field, Vec<Attribute>)>),
}

fn docs(attrs: &[Attribute]) -> Vec<Attribute> {
    attrs
        .iter()
        .filter(|a| a.path().is_ident("doc"))
        .cloned()
        .collect()
}

fn lint_docs(cx: &mut Ctxt, attrs: &[Attribute], what: &str) {
    if let Some(d) = doc::read(attrs) {
        doc::lint(cx, &d, what);
    }
}

fn container_attrs(cx: &mut Ctxt, attrs: &[Attribute]) -> Container {
    let mut c = Container {
        rename_all: None,
        krate: None,
    };
    for attr in attrs.iter().filter(|a| a.path().is_ident("arg")) {
        let res = attr.parse_nested_meta(|meta| {
            let key = meta
                .path
                .get_ident()
                .map(ToString::to_string)
                .unwrap_or_default();
            match key.as_str() {
                "rename_all" => {
                    let lit: LitStr = meta.value()?.parse()?;
                    if !RENAME_RULES.contains(&lit.value().as_str()) {
                        cx.error_spanned(
                            &lit,
                            format!(
                                "unknown `rename_all` rule; use one of: {}",
                                RENAME_RULES.join(", ")
                            ),
                        );
                    }
                    c.rename_all = Some(lit);
                }
                "crate" => {
                    let lit: LitStr = meta.value()?.parse()?;
                    match lit.parse() {
                        Ok(p) => c.krate = Some(p),
                        Err(_) => cx.error_spanned(&lit, "`crate` must be a path"),
                    }
                }
                _ => {
                    crate::ctxt::skip_value(&meta)?;
                    cx.error_at(
                        meta.path.span(),
                        unknown_key_message("container `#[arg]`", &key, CONTAINER_KEYS),
                    );
                }
            }
            Ok(())
        });
        if let Err(e) = res {
            cx.push(e);
        }
    }
    c
}

fn emit(input: &DeriveInput, c: &Container, krate: &TokenStream, body: Body) -> TokenStream {
    let ident = &input.ident;
    let name = ident.to_string();
    let krate_str = |leaf: &str| format!("{}::__private::{leaf}", quote!(#krate)).replace(' ', "");
    let serde_crate = krate_str("serde");
    let schemars_crate = krate_str("schemars");
    let type_docs = docs(&input.attrs);
    let rename_all = c.rename_all.as_ref().map(|r| quote!(, rename_all = #r));
    let shadow = format_ident!("__mcp_harden_shadow_{}", ident);

    let (shadow_def, from_shadow, to_json, validate, redact, extra, audit) = match body {
        Body::Struct(fields, field_docs) => {
            let mut impls = args::FieldImpls::default();
            let mut defs = Vec::new();
            let mut refs = Vec::new();
            let mut moves = Vec::new();
            let mut ref_inits = Vec::new();
            for (index, (f, fdocs)) in fields.iter().zip(field_docs).enumerate() {
                let attrs = impls.add(f, &name, index);
                let ref_serde = f
                    .attr
                    .rename
                    .as_ref()
                    .map(|r| quote!(#[serde(rename = #r)]));
                let (fi, ty) = (&f.ident, &f.ty);
                defs.push(quote!(#(#fdocs)* #attrs #fi: #ty));
                refs.push(quote!(#ref_serde #fi: &'__a #ty));
                moves.push(quote!(#fi: __s.#fi));
                ref_inits.push(quote!(#fi: &self.#fi));
            }
            let shadow_ref = format_ident!("__mcp_harden_shadow_ref_{}", ident);
            let items = impls.items();
            (
                quote! {
                    #[derive(__mh::serde::Deserialize, __mh::schemars::JsonSchema)]
                    #[serde(crate = #serde_crate, deny_unknown_fields, rename = #name)]
                    #[schemars(crate = #schemars_crate, rename = #name)]
                    #(#type_docs)*
                    struct #shadow { #(#defs,)* }
                    #[derive(__mh::serde::Serialize)]
                    #[serde(crate = #serde_crate)]
                    struct #shadow_ref<'__a> { #(#refs,)* }
                    #items
                },
                quote!(#ident { #(#moves,)* }),
                quote!(__mh::serde::Serialize::serialize(&#shadow_ref { #(#ref_inits,)* }, __serializer)),
                impls.validate_body(),
                impls.redact_body(),
                TokenStream::new(),
                impls.audit_fn(),
            )
        }
        Body::Unit(variants) => {
            // Variant docs are linted but not copied: without them schemars publishes the
            // allow-list as a plain `{"type": "string", "enum": [...]}`.
            let defs = variants.iter().map(|(v, rename, _)| {
                let r = rename.as_ref().map(|r| quote!(#[serde(rename = #r)]));
                quote!(#r #v)
            });
            let from = variants
                .iter()
                .map(|(v, _, _)| quote!(#shadow::#v => #ident::#v));
            let to = variants
                .iter()
                .map(|(v, _, _)| quote!(#ident::#v => #shadow::#v));
            (
                quote! {
                    #[derive(__mh::serde::Deserialize, __mh::serde::Serialize, __mh::schemars::JsonSchema)]
                    #[serde(crate = #serde_crate, rename = #name #rename_all)]
                    #[schemars(crate = #schemars_crate, rename = #name)]
                    #(#type_docs)*
                    enum #shadow { #(#defs,)* }
                },
                quote!(match __s { #(#from,)* }),
                quote!(__mh::serde::Serialize::serialize(&match self { #(#to,)* }, __serializer)),
                TokenStream::new(),
                TokenStream::new(),
                TokenStream::new(),
                TokenStream::new(),
            )
        }
        Body::OneOf(variants) => {
            let shadow_ref = format_ident!("__mcp_harden_shadow_ref_{}", ident);
            let mut defs = Vec::new();
            let mut refs = Vec::new();
            let mut from = Vec::new();
            let mut to = Vec::new();
            let mut checks = Vec::new();
            let mut asserts = Vec::new();
            let mut secret = false;
            let mut nested_redactions = Vec::new();
            for (f, d) in &variants {
                let (v, ty) = (&f.ident, &f.ty);
                let schema_attrs = args::schema_attrs(f);
                defs.push(quote!(#(#d)* #v(#schema_attrs #ty)));
                refs.push(quote!(#v(&'__a #ty)));
                from.push(quote!(#shadow::#v(__x) => #ident::#v(__x)));
                to.push(quote!(#ident::#v(__x) => #shadow_ref::#v(__x)));
                let check = args::validation(f, quote!(__x), &quote!(__path), false);
                checks.push(quote!(#ident::#v(__x) => { #check }));
                asserts.push(args::assertions(f));
                secret |= f.attr.secret.is_some();
                if let Some(r) = args::value_redactor(f) {
                    // Which variant a raw value is cannot be known: apply every one's
                    // redaction; each leaves values of another shape alone.
                    nested_redactions.push(quote!((#r)(__value);));
                }
            }
            let redact = if secret {
                quote!(__mh::redact_value(__value);)
            } else {
                quote!(#(#nested_redactions)*)
            };
            (
                quote! {
                    #[derive(__mh::serde::Deserialize, __mh::schemars::JsonSchema)]
                    #[serde(crate = #serde_crate, untagged, rename = #name)]
                    #[schemars(crate = #schemars_crate, rename = #name)]
                    #(#type_docs)*
                    enum #shadow { #(#defs,)* }
                    #[derive(__mh::serde::Serialize)]
                    #[serde(crate = #serde_crate, untagged)]
                    enum #shadow_ref<'__a> { #(#refs,)* }
                    #(#asserts)*
                },
                quote!(match __s { #(#from,)* }),
                quote!(__mh::serde::Serialize::serialize(&match self { #(#to,)* }, __serializer)),
                quote!(match self { #(#checks)* }),
                redact,
                TokenStream::new(),
                TokenStream::new(),
            )
        }
    };

    quote! {
        #[allow(non_camel_case_types, dead_code, clippy::all)]
        const _: () = {
            use #krate::__private as __mh;
            #shadow_def
            #extra

            #[automatically_derived]
            impl<'de> __mh::serde::Deserialize<'de> for #ident {
                fn deserialize<__D: __mh::serde::Deserializer<'de>>(__d: __D) -> ::core::result::Result<Self, __D::Error> {
                    let __s = <#shadow as __mh::serde::Deserialize<'de>>::deserialize(__d)?;
                    ::core::result::Result::Ok(#from_shadow)
                }
            }

            #[automatically_derived]
            impl __mh::serde::Serialize for #ident {
                fn serialize<__S: __mh::serde::Serializer>(&self, __serializer: __S) -> ::core::result::Result<__S::Ok, __S::Error> {
                    #to_json
                }
            }

            #[automatically_derived]
            impl __mh::schemars::JsonSchema for #ident {
                fn schema_name() -> ::std::borrow::Cow<'static, str> {
                    ::std::borrow::Cow::Borrowed(#name)
                }
                fn schema_id() -> ::std::borrow::Cow<'static, str> {
                    ::std::borrow::Cow::Borrowed(::core::concat!(::core::module_path!(), "::", #name))
                }
                fn json_schema(__g: &mut __mh::schemars::SchemaGenerator) -> __mh::schemars::Schema {
                    <#shadow as __mh::schemars::JsonSchema>::json_schema(__g)
                }
            }

            #[automatically_derived]
            impl __mh::ToolArgs for #ident {
                #[allow(unused_variables)]
                fn validate_into(&self, __path: &__mh::FieldPath<'_>, __out: &mut ::std::vec::Vec<__mh::Violation>) {
                    #validate
                }
                #[allow(unused_variables)]
                fn redact_json(__value: &mut __mh::serde_json::Value) {
                    #redact
                }
                #audit
            }
        };
    }
}

/// On error: the impls later code expects, so one mistake does not cascade.
fn dummy(input: &DeriveInput, krate: &TokenStream) -> TokenStream {
    let ident = &input.ident;
    let (ig, tg, wc) = input.generics.split_for_impl();
    let params = &input.generics.params;
    quote! {
        const _: () = {
            use #krate::__private as __mh;
            impl #ig __mh::ToolArgs for #ident #tg #wc {
                fn validate_into(&self, _: &__mh::FieldPath<'_>, _: &mut ::std::vec::Vec<__mh::Violation>) {}
            }
            impl<'de, #params> __mh::serde::Deserialize<'de> for #ident #tg #wc {
                fn deserialize<__D: __mh::serde::Deserializer<'de>>(_: __D) -> ::core::result::Result<Self, __D::Error> {
                    ::core::result::Result::Err(<__D::Error as __mh::serde::de::Error>::custom("invalid ToolArgs type"))
                }
            }
            impl #ig __mh::schemars::JsonSchema for #ident #tg #wc {
                fn schema_name() -> ::std::borrow::Cow<'static, str> {
                    ::std::borrow::Cow::Borrowed(::core::stringify!(#ident))
                }
                fn json_schema(_: &mut __mh::schemars::SchemaGenerator) -> __mh::schemars::Schema {
                    __mh::schemars::Schema::default()
                }
            }
        };
    }
}
