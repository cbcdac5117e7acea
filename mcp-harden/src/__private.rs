//! Support for generated code. Not public API: it changes without notice.

use std::borrow::Cow;
use std::sync::Arc;

pub use ::futures::future::BoxFuture;
pub use ::rmcp;
pub use ::schemars;
pub use ::serde;
pub use ::serde_json;

pub use crate::args::rules;
pub use crate::args::{FieldPath, ToolArgs, Violation};
pub use crate::audit::{
    is_credential_name_const, pair_role, redact_credentials, redact_entries, redact_entry,
    redact_items, PairSeen,
};
pub use crate::ctx::Ctx;
pub use crate::definition::Tool;
pub use crate::errors::{Failure, PublicError, ToolFailure};
pub use crate::spec::{Annotations, Period, Rate, Scopes, ToolSpec};
pub use ::core::time::Duration;

use rmcp::model::JsonObject;

/// Asserts at compile time that a nested argument type derives `ToolArgs`; generated with
/// the span of the user's type so the error points there.
pub const fn assert_tool_args<T: ToolArgs + ?Sized>() {}

/// The input schema of an argument struct: JSON Schema 2020-12, `type: object` at the root,
/// without the generated struct's title.
pub fn input_schema<T: schemars::JsonSchema>() -> Arc<JsonObject> {
    let mut obj = schema_object::<T>();
    obj.remove("title");
    obj.remove("description");
    Arc::new(obj)
}

fn schema_object<T: schemars::JsonSchema>() -> JsonObject {
    let schema = schemars::generate::SchemaSettings::draft2020_12()
        .into_generator()
        .into_root_schema_for::<T>();
    match schema.to_value() {
        serde_json::Value::Object(mut o) => {
            drop_numeric_formats(&mut o);
            o
        }
        // A schema is an object or a boolean; `true` accepts anything.
        _ => JsonObject::new(),
    }
}

/// Removes schemars' `format: "uint32"`-style annotations: they are not JSON Schema formats
/// (strict validators such as Ajv warn about each), and `minimum`/`maximum` already say it.
fn drop_numeric_formats(obj: &mut JsonObject) {
    const NUMERIC: [&str; 14] = [
        "int", "uint", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
        "int128", "uint128", "float", "double",
    ];
    if obj
        .get("format")
        .and_then(serde_json::Value::as_str)
        .is_some_and(|f| NUMERIC.contains(&f))
    {
        obj.remove("format");
    }
    for (k, v) in obj.iter_mut() {
        if matches!(k.as_str(), "default" | "const" | "enum" | "examples") {
            continue;
        }
        match v {
            serde_json::Value::Object(o) => drop_numeric_formats(o),
            serde_json::Value::Array(a) => a.iter_mut().for_each(|v| {
                if let serde_json::Value::Object(o) = v {
                    drop_numeric_formats(o);
                }
            }),
            _ => {}
        }
    }
}

/// Removes `title` and `description` texts from a schema, leaving values (`default`,
/// `const`, `enum`, `examples`) untouched.
fn strip_annotations(obj: &mut JsonObject) {
    obj.retain(|k, v| !((k == "title" || k == "description") && v.is_string()));
    for (k, v) in obj.iter_mut() {
        if matches!(k.as_str(), "default" | "const" | "enum" | "examples") {
            continue;
        }
        strip_value(v);
    }
}

fn strip_value(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(o) => strip_annotations(o),
        serde_json::Value::Array(a) => a.iter_mut().for_each(strip_value),
        _ => {}
    }
}

/// Serializes a tool's successful result.
pub fn output<T: serde::Serialize + ?Sized>(value: &T) -> Result<serde_json::Value, Failure> {
    serde_json::to_value(value).map_err(|e| Failure::Output(e.to_string()))
}

/// Converts a tool's error, keeping its text server-side unless it opts in to exposure.
pub fn failure<E>(
    e: &E,
    retryable: bool,
    public_message: Option<String>,
    detail: String,
) -> Failure {
    let _ = e;
    Failure::Tool(ToolFailure {
        retryable,
        public_message,
        detail,
    })
}

// Autoref specialisation: generated code writes `(&Probe(&e)).__mh_public()` and gets the
// `PublicError` text when the type implements it, `None` otherwise; likewise `Display`
// text for the audit detail, and an output schema when the result type implements
// `JsonSchema`.

/// Wraps a reference for the probes below.
pub struct Probe<'a, T: ?Sized>(pub &'a T);
impl<T: ?Sized> Clone for Probe<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T: ?Sized> Copy for Probe<'_, T> {}

// Method lookup on `&&Probe` tries `Self = &&Probe` first, then `&Probe`, then `Probe`;
// an impl whose bound does not hold is skipped.

#[doc(hidden)]
pub trait ViaPublicError {
    fn __mh_public(self) -> Option<String>;
}
impl<E: PublicError + ?Sized> ViaPublicError for &&Probe<'_, E> {
    fn __mh_public(self) -> Option<String> {
        self.0.public_message().map(Cow::into_owned)
    }
}
#[doc(hidden)]
pub trait ViaNoPublicError {
    fn __mh_public(self) -> Option<String>;
}
impl<E: ?Sized> ViaNoPublicError for &Probe<'_, E> {
    fn __mh_public(self) -> Option<String> {
        None
    }
}

#[doc(hidden)]
pub trait ViaDisplay {
    fn __mh_detail(self) -> String;
}
impl<E: std::fmt::Display + ?Sized> ViaDisplay for &&Probe<'_, E> {
    fn __mh_detail(self) -> String {
        self.0.to_string()
    }
}
#[doc(hidden)]
pub trait ViaDebug {
    fn __mh_detail(self) -> String;
}
impl<E: std::fmt::Debug + ?Sized> ViaDebug for &Probe<'_, E> {
    fn __mh_detail(self) -> String {
        format!("{:?}", self.0)
    }
}
#[doc(hidden)]
pub trait ViaTypeName {
    fn __mh_detail(self) -> String;
}
impl<E: ?Sized> ViaTypeName for Probe<'_, E> {
    fn __mh_detail(self) -> String {
        format!("an error of type {}", std::any::type_name::<E>())
    }
}

/// Marker for the output schema probe: `(&SchemaProbe::<T>::new()).__mh_output_schema()`.
pub struct SchemaProbe<T: ?Sized>(core::marker::PhantomData<fn() -> Box<T>>);
impl<T: ?Sized> SchemaProbe<T> {
    pub const fn new() -> Self {
        Self(core::marker::PhantomData)
    }
}
impl<T: ?Sized> Default for SchemaProbe<T> {
    fn default() -> Self {
        Self::new()
    }
}
impl<T: ?Sized> Clone for SchemaProbe<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T: ?Sized> Copy for SchemaProbe<T> {}
#[doc(hidden)]
pub trait ViaJsonSchema {
    fn __mh_output_schema(self) -> Option<Arc<JsonObject>>;
}
impl<T: schemars::JsonSchema> ViaJsonSchema for &SchemaProbe<T> {
    fn __mh_output_schema(self) -> Option<Arc<JsonObject>> {
        let mut obj = schema_object::<T>();
        // The result type's doc comments never went through the description lint: keep
        // them out of what the model reads.
        strip_annotations(&mut obj);
        // Only object schemas are valid output schemas for every protocol version.
        (obj.get("type") == Some(&serde_json::Value::String("object".into())))
            .then(|| Arc::new(obj))
    }
}
#[doc(hidden)]
pub trait ViaNoJsonSchema {
    fn __mh_output_schema(self) -> Option<Arc<JsonObject>>;
}
impl<T: ?Sized> ViaNoJsonSchema for SchemaProbe<T> {
    fn __mh_output_schema(self) -> Option<Arc<JsonObject>> {
        None
    }
}

/// Redacts the named fields of an object (the `secret` arguments) and recurses into
/// nested argument types through `nested`.
pub fn redact_field(value: &mut serde_json::Value, name: &str) {
    if let Some(v) = value.as_object_mut().and_then(|o| o.get_mut(name)) {
        *v = serde_json::Value::String(crate::audit::REDACTED.to_owned());
    }
}

/// Applies `f` to the value of field `name`, if present.
pub fn with_field(value: &mut serde_json::Value, name: &str, f: fn(&mut serde_json::Value)) {
    if let Some(v) = value.as_object_mut().and_then(|o| o.get_mut(name)) {
        f(v);
    }
}

/// Applies `f` to each element of an array, or each value of an object (maps).
pub fn each(value: &mut serde_json::Value, f: fn(&mut serde_json::Value)) {
    match value {
        serde_json::Value::Array(a) => a.iter_mut().for_each(f),
        serde_json::Value::Object(o) => o.values_mut().for_each(f),
        _ => {}
    }
}

/// The audit walk of a sequence or map of argument values: `f` on each element of an array,
/// or on each value of an object whose key is not credential-like, with the name/value pair
/// rule of `redact_credentials` (the whole walk on anything else). Equals `each` with the
/// nested redaction, then `redact_credentials`.
pub fn audit_each(value: &mut serde_json::Value, f: fn(&mut serde_json::Value)) {
    match value {
        serde_json::Value::Array(a) => redact_items(a, f),
        serde_json::Value::Object(o) => redact_entries(o, f),
        other => redact_credentials(other),
    }
}

/// Replaces a whole value (an untagged argument enum with a secret variant).
pub fn redact_value(value: &mut serde_json::Value) {
    *value = serde_json::Value::String(crate::audit::REDACTED.to_owned());
}

/// Probe for nested argument values: validates through `ToolArgs` when the type implements
/// it; a type that does not is either refused by `assert_tool_args` at compile time or
/// accepted on purpose with `#[arg(unbounded)]`.
pub struct Nested<'a, T: ?Sized>(pub &'a T);
impl<T: ?Sized> Clone for Nested<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T: ?Sized> Copy for Nested<'_, T> {}

/// Probe for nested argument types (redaction works on JSON, without a value).
pub struct NestedType<T: ?Sized>(core::marker::PhantomData<fn() -> Box<T>>);
impl<T: ?Sized> NestedType<T> {
    pub const fn new() -> Self {
        Self(core::marker::PhantomData)
    }
}
impl<T: ?Sized> Default for NestedType<T> {
    fn default() -> Self {
        Self::new()
    }
}
impl<T: ?Sized> Clone for NestedType<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T: ?Sized> Copy for NestedType<T> {}

#[doc(hidden)]
pub trait ViaToolArgs {
    fn __mh_validate(self, path: &FieldPath<'_>, out: &mut Vec<Violation>);
    fn __mh_redact(self, value: &mut serde_json::Value);
    fn __mh_audit(self, value: &mut serde_json::Value);
}
impl<T: ToolArgs + ?Sized> ViaToolArgs for &Nested<'_, T> {
    fn __mh_validate(self, path: &FieldPath<'_>, out: &mut Vec<Violation>) {
        self.0.validate_into(path, out);
    }
    fn __mh_redact(self, value: &mut serde_json::Value) {
        T::redact_json(value);
    }
    fn __mh_audit(self, value: &mut serde_json::Value) {
        T::audit_json(value);
    }
}
impl<T: ToolArgs + ?Sized> ViaToolArgs for &NestedType<T> {
    fn __mh_validate(self, _: &FieldPath<'_>, _: &mut Vec<Violation>) {}
    fn __mh_redact(self, value: &mut serde_json::Value) {
        T::redact_json(value);
    }
    fn __mh_audit(self, value: &mut serde_json::Value) {
        T::audit_json(value);
    }
}
#[doc(hidden)]
pub trait ViaNoToolArgs {
    fn __mh_validate(self, path: &FieldPath<'_>, out: &mut Vec<Violation>);
    fn __mh_redact(self, value: &mut serde_json::Value);
    fn __mh_audit(self, value: &mut serde_json::Value);
}
impl<T: ?Sized> ViaNoToolArgs for Nested<'_, T> {
    fn __mh_validate(self, _: &FieldPath<'_>, _: &mut Vec<Violation>) {}
    fn __mh_redact(self, _: &mut serde_json::Value) {}
    fn __mh_audit(self, value: &mut serde_json::Value) {
        redact_credentials(value);
    }
}
impl<T: ?Sized> ViaNoToolArgs for NestedType<T> {
    fn __mh_validate(self, _: &FieldPath<'_>, _: &mut Vec<Violation>) {}
    fn __mh_redact(self, _: &mut serde_json::Value) {}
    fn __mh_audit(self, value: &mut serde_json::Value) {
        redact_credentials(value);
    }
}
