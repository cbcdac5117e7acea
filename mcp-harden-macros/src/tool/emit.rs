//! Code generation for `#[tool]`.

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;

use super::attr::{Rate, Scopes};
use super::{Model, Param};
use crate::args;

fn krate(m: &Model) -> TokenStream {
    match &m.attr.krate {
        Some(p) => quote!(#p),
        None => quote!(::mcp_harden),
    }
}

/// The marker type that names the tool in `.tool::<name>()`.
fn marker(m: &Model) -> TokenStream {
    let vis = &m.func.vis;
    let ident = &m.func.sig.ident;
    let doc = format!("Registers the `#[tool]` [`{ident}()`] with a server: `.tool::<{ident}>()`.");
    quote! {
        #[doc = #doc]
        #[allow(non_camel_case_types)]
        #vis struct #ident {}
    }
}

/// On error: the user's function and a marker whose `Tool` impl never runs, so one mistake
/// does not cascade into errors at every use.
pub fn fallback(m: &Model) -> TokenStream {
    let func = &m.func;
    let marker = marker(m);
    let ident = &func.sig.ident;
    let krate = krate(m);
    quote! {
        #func
        #marker
        const _: () = {
            use #krate::__private as __mh;
            #[automatically_derived]
            impl<__S> __mh::Tool<__S> for #ident {
                type Args = ();
                const SPEC: __mh::ToolSpec = __mh::ToolSpec::__new(
                    "", ::core::option::Option::None, "", __mh::Scopes::Required(&[]), __mh::Rate::Unlimited,
                    ::core::option::Option::None, __mh::Annotations { read_only: None, destructive: None, idempotent: None, open_world: None },
                );
                fn output_schema() -> ::core::option::Option<::std::sync::Arc<__mh::rmcp::model::JsonObject>> {
                    ::core::option::Option::None
                }
                fn invoke(_: __mh::Ctx<__S>, _: ()) -> __mh::BoxFuture<'static, ::core::result::Result<__mh::serde_json::Value, __mh::Failure>> {
                    ::std::boxed::Box::pin(async { ::core::result::Result::Err(__mh::Failure::Output(::std::string::String::new())) })
                }
            }
        };
    }
}

pub fn tool(m: &Model) -> TokenStream {
    let func = &m.func;
    let marker = marker(m);
    let ident = &func.sig.ident;
    let krate = krate(m);
    let krate_str = |leaf: &str| format!("{}::__private::{leaf}", quote!(#krate)).replace(' ', "");
    let serde_crate = krate_str("serde");
    let schemars_crate = krate_str("schemars");
    let args_ident = format_ident!(
        "__mcp_harden_args_{}",
        ident.to_string().trim_start_matches("r#")
    );

    let fields: Vec<&args::Field> = m
        .params
        .iter()
        .filter_map(|p| match p {
            Param::Arg(f) => Some(&**f),
            Param::Ctx { .. } => None,
        })
        .collect();
    let mut impls = args::FieldImpls::default();
    let mut struct_fields = Vec::new();
    for (index, f) in fields.iter().enumerate() {
        let attrs = impls.add(f, "arg", index);
        let (fi, ty) = (&f.ident, &f.ty);
        struct_fields.push(quote!(#attrs pub #fi: #ty));
    }

    let state = m.params.iter().find_map(|p| match p {
        Param::Ctx { state } => Some(state.clone()),
        Param::Arg(_) => None,
    });
    let (impl_generics, state_ty) = match &state {
        Some(s) => (quote!(), quote!(#s)),
        None => (
            quote!(<__S: ::core::marker::Send + ::core::marker::Sync + 'static>),
            quote!(__S),
        ),
    };
    let call_args = m.params.iter().map(|p| match p {
        Param::Ctx { .. } => quote!(__ctx),
        Param::Arg(f) => {
            let fi = &f.ident;
            quote!(__args.#fi)
        }
    });
    let unused_ctx = if state.is_none() {
        quote!(let _ = __ctx;)
    } else {
        quote!()
    };

    let ok_ty = &m.ok_ty;
    let output_call = quote_spanned!(ok_ty.span()=> __mh::output(&__v));
    let shape = if m.returns_result {
        let retryable = if m.attr.retryable_on.is_empty() {
            quote!(false)
        } else {
            let pats = m
                .attr
                .retryable_on
                .iter()
                .map(|p| quote_spanned!(p.span()=> #p { .. }));
            quote!(::core::matches!(__e, #(#pats)|*))
        };
        quote! {
            match __r {
                ::core::result::Result::Ok(__v) => #output_call,
                ::core::result::Result::Err(__e) => {
                    #[allow(unused_imports)]
                    use __mh::{ViaPublicError as _, ViaNoPublicError as _, ViaDisplay as _, ViaDebug as _, ViaTypeName as _};
                    let __retryable: bool = #retryable;
                    let __public = (&&__mh::Probe(&__e)).__mh_public();
                    let __detail = (&&__mh::Probe(&__e)).__mh_detail();
                    ::core::result::Result::Err(__mh::failure(&__e, __retryable, __public, __detail))
                }
            }
        }
    } else {
        quote!({ let __v = __r; #output_call })
    };

    let name = &m.name;
    let description = &m.description;
    let title = match &m.attr.title {
        Some(t) => quote!(::core::option::Option::Some(#t)),
        None => quote!(::core::option::Option::None),
    };
    let scopes = match &m.attr.scopes {
        Some(Scopes::Public) => quote!(__mh::Scopes::Public),
        Some(Scopes::Required(s)) => quote!(__mh::Scopes::Required(&[#(#s),*])),
        None => quote!(__mh::Scopes::Required(&[])),
    };
    let rate = match &m.attr.rate {
        Some((Rate::Limited { count, per }, _)) => {
            let period = match *per {
                "sec" => quote!(Second),
                "min" => quote!(Minute),
                _ => quote!(Hour),
            };
            let burst = match m.attr.burst {
                Some((b, _)) => quote!(::core::option::Option::Some(#b)),
                None => quote!(::core::option::Option::None),
            };
            quote!(__mh::Rate::Limited { count: #count, period: __mh::Period::#period, burst: #burst })
        }
        _ => quote!(__mh::Rate::Unlimited),
    };
    let timeout = match m.attr.timeout_ms {
        Some(ms) => quote!(::core::option::Option::Some(__mh::Duration::from_millis(#ms))),
        None => quote!(::core::option::Option::None),
    };
    let concurrency = match m.attr.max_concurrency {
        Some(max) => {
            let wait = match m.attr.queue_timeout {
                Some((ms, _)) => quote!(::core::option::Option::Some(#ms)),
                None => quote!(::core::option::Option::None),
            };
            quote!(.__with_concurrency(#max, #wait))
        }
        None => quote!(),
    };
    let flag = |f: &Option<proc_macro2::Span>| match f {
        Some(_) => quote!(::core::option::Option::Some(true)),
        None => quote!(::core::option::Option::None),
    };
    let (ro, de, id, ow) = (
        flag(&m.attr.read_only),
        flag(&m.attr.destructive),
        flag(&m.attr.idempotent),
        flag(&m.attr.open_world),
    );

    let (items, checks, redactions, audit_fn) = (
        impls.items(),
        impls.validate_body(),
        impls.redact_body(),
        impls.audit_fn(),
    );
    quote! {
        #func
        #marker
        #[allow(non_camel_case_types, dead_code, clippy::all)]
        const _: () = {
            use #krate::__private as __mh;

            #[derive(__mh::serde::Deserialize, __mh::schemars::JsonSchema)]
            #[serde(crate = #serde_crate, deny_unknown_fields)]
            #[schemars(crate = #schemars_crate)]
            #[allow(non_camel_case_types, dead_code)]
            pub struct #args_ident {
                #(#struct_fields,)*
            }

            #items

            #[automatically_derived]
            impl __mh::ToolArgs for #args_ident {
                #[allow(unused_variables)]
                fn validate_into(&self, __path: &__mh::FieldPath<'_>, __out: &mut ::std::vec::Vec<__mh::Violation>) {
                    #checks
                }
                #[allow(unused_variables)]
                fn redact_json(__value: &mut __mh::serde_json::Value) {
                    #redactions
                }
                #audit_fn
            }

            #[automatically_derived]
            impl #impl_generics __mh::Tool<#state_ty> for #ident {
                type Args = #args_ident;
                const SPEC: __mh::ToolSpec = __mh::ToolSpec::__new(
                    #name,
                    #title,
                    #description,
                    #scopes,
                    #rate,
                    #timeout,
                    __mh::Annotations { read_only: #ro, destructive: #de, idempotent: #id, open_world: #ow },
                )#concurrency;
                fn output_schema() -> ::core::option::Option<::std::sync::Arc<__mh::rmcp::model::JsonObject>> {
                    #[allow(unused_imports)]
                    use __mh::{ViaJsonSchema as _, ViaNoJsonSchema as _};
                    (&__mh::SchemaProbe::<#ok_ty>::new()).__mh_output_schema()
                }
                fn invoke(__ctx: __mh::Ctx<#state_ty>, __args: Self::Args) -> __mh::BoxFuture<'static, ::core::result::Result<__mh::serde_json::Value, __mh::Failure>> {
                    #unused_ctx
                    ::std::boxed::Box::pin(async move {
                        let __r = #ident(#(#call_args),*).await;
                        #shape
                    })
                }
            }
        };
    }
}
