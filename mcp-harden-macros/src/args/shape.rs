//! What a field's type is, as far as bounding it goes, read from its syntax.

use syn::{GenericArgument, PathArguments, Type};

#[derive(Clone)]
pub enum Shape {
    Str,
    Int {
        signed: bool,
    },
    Float,
    Bool,
    /// `serde_json::Value` and friends: cannot be bounded by rules.
    Json,
    Option(Box<Shape>),
    Seq(Box<Shape>),
    /// A map with string keys.
    Map(Box<Shape>),
    /// Any other type: must implement `ToolArgs` itself.
    Nested(Box<Type>),
    /// A type that can never be a tool argument (a reference, `impl Trait`, ...).
    Unsupported(&'static str),
}

impl Shape {
    pub fn of(ty: &Type) -> Shape {
        match ty {
            Type::Paren(p) => Shape::of(&p.elem),
            Type::Group(g) => Shape::of(&g.elem),
            Type::Reference(_) => Shape::Unsupported(
                "a reference; tool arguments are owned values: use `String` or `Vec<T>`",
            ),
            Type::ImplTrait(_) | Type::TraitObject(_) => {
                Shape::Unsupported("a trait type; use a concrete type")
            }
            Type::Tuple(t) if t.elems.is_empty() => Shape::Nested(Box::new(ty.clone())),
            Type::Path(p) if p.qself.is_none() => {
                let Some(last) = p.path.segments.last() else {
                    return Shape::Nested(Box::new(ty.clone()));
                };
                let name = last.ident.to_string();
                let generic = |i: usize| -> Option<&Type> {
                    match &last.arguments {
                        PathArguments::AngleBracketed(a) => a
                            .args
                            .iter()
                            .filter_map(|g| match g {
                                GenericArgument::Type(t) => Some(t),
                                _ => None,
                            })
                            .nth(i),
                        _ => None,
                    }
                };
                match name.as_str() {
                    "String" => Shape::Str,
                    "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => Shape::Int { signed: false },
                    "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => Shape::Int { signed: true },
                    "f32" | "f64" => Shape::Float,
                    "bool" => Shape::Bool,
                    // Only `serde_json::Value` written as a path: a bare `Value` may be the
                    // user's own type, which then must derive `ToolArgs` like any other.
                    "Value" | "Map" if path_mentions(&p.path, "serde_json") => Shape::Json,
                    "Option" if generic(0).is_some() => match generic(0) {
                        Some(t) => Shape::Option(Box::new(Shape::of(t))),
                        None => Shape::Nested(Box::new(ty.clone())),
                    },
                    "Vec" | "VecDeque" | "HashSet" | "BTreeSet" | "IndexSet" => generic(0).map_or(
                        Shape::Unsupported("a collection without its item type"),
                        |t| Shape::Seq(Box::new(Shape::of(t))),
                    ),
                    "HashMap" | "BTreeMap" | "IndexMap" => {
                        match (generic(0).map(Shape::of), generic(1)) {
                            (Some(Shape::Str), Some(v)) => Shape::Map(Box::new(Shape::of(v))),
                            _ => Shape::Unsupported(
                                "a map whose keys are not `String`; JSON object keys are strings",
                            ),
                        }
                    }
                    "Box" | "Arc" | "Rc" => match generic(0) {
                        Some(Type::Path(inner)) if inner.path.is_ident("str") => {
                            Shape::Unsupported("a shared or boxed `str`; use `String`")
                        }
                        _ => Shape::Nested(Box::new(ty.clone())),
                    },
                    _ => Shape::Nested(Box::new(ty.clone())),
                }
            }
            _ => Shape::Nested(Box::new(ty.clone())),
        }
    }

    /// The shape with `Option` layers removed.
    pub fn strip_option(&self) -> &Shape {
        match self {
            Shape::Option(s) => s.strip_option(),
            s => s,
        }
    }

    pub fn describe(&self) -> &'static str {
        match self.strip_option() {
            Shape::Str => "a string",
            Shape::Int { .. } => "an integer",
            Shape::Float => "a number",
            Shape::Bool => "a boolean",
            Shape::Json => "a JSON value",
            Shape::Seq(_) => "a collection",
            Shape::Map(_) => "a map",
            Shape::Nested(_) => "a nested argument type",
            Shape::Unsupported(_) | Shape::Option(_) => "an unsupported type",
        }
    }
}

fn path_mentions(p: &syn::Path, seg: &str) -> bool {
    p.segments.iter().any(|s| s.ident == seg)
}
