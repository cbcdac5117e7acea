//! The audit walk that `#[derive(ToolArgs)]` and `#[tool]` generate (`ToolArgs::audit_json`:
//! declared field names decided at compile time) gives exactly what the whole walk gives
//! (`redact_json`, then `redact_credentials` over every name), for any JSON value: valid
//! arguments, values of the wrong shape, undeclared and credential-like keys at any depth.

use std::collections::BTreeMap;

use mcp_harden::audit::redact_credentials;
use mcp_harden::prelude::*;
use mcp_harden::Tool;
use proptest::prelude::*;
use serde_json::Value;

/// A nested argument type with a secret field and a declared credential-like name.
#[derive(ToolArgs)]
pub struct Login {
    #[arg(max_len = 32)]
    user: String,
    #[arg(max_len = 64, secret)]
    pin: String,
    #[arg(max_len = 64)]
    api_key: Option<String>,
}

/// A unit enum (its default audit walk).
#[derive(ToolArgs)]
pub enum Mode {
    Fast,
    Safe,
}

/// A struct holding nested types in every wrapper the macro knows.
#[derive(ToolArgs)]
pub struct Outer {
    #[arg(max_len = 16)]
    name: String,
    #[arg(max_items = 4)]
    logins: Vec<Login>,
    backup: Option<Login>,
    #[arg(max_items = 4, max_len = 16)]
    by_host: BTreeMap<String, Login>,
    mode: Mode,
    #[arg(unbounded)]
    deep: Vec<Vec<Login>>,
    #[arg(unbounded)]
    extra: Value,
}

struct App;

/// A tool whose generated arguments struct nests all of the above.
#[tool(scopes = ["x"], rate = "1/sec")]
async fn sign_in(
    _ctx: Ctx<App>,
    outer: Outer,
    #[arg(max_len = 64, secret)] otp: String,
    #[arg(max_len = 64)] session_id: String,
    #[arg(range = 0..=9)] level: u8,
) -> Result<(), ToolError> {
    let _ = (outer, otp, session_id, level);
    Ok(())
}

/// Keys: declared names (at every level), credential-like names, and others.
fn key() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "name",
        "logins",
        "backup",
        "by_host",
        "mode",
        "deep",
        "extra",
        "user",
        "pin",
        "api_key",
        "outer",
        "otp",
        "session_id",
        "level",
        "password",
        "Token",
        "x",
        "apiKey",
        "",
        "host1",
    ])
    .prop_map(str::to_owned)
}

fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i32>().prop_map(Value::from),
        "[a-z]{0,8}".prop_map(Value::String),
        // Long strings are cut by the walk.
        (250usize..300).prop_map(|n| Value::String("é".repeat(n / 2))),
    ];
    leaf.prop_recursive(5, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(key(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// The whole walk, as the pipeline did it before `audit_json`.
fn whole<T: ToolArgs>(v: &Value) -> Value {
    let mut v = v.clone();
    T::redact_json(&mut v);
    redact_credentials(&mut v);
    v
}

fn typed<T: ToolArgs>(v: &Value) -> Value {
    let mut v = v.clone();
    T::audit_json(&mut v);
    v
}

type SignInArgs = <sign_in as Tool<App>>::Args;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn generated_walk_equals_the_whole_walk(v in json()) {
        prop_assert_eq!(typed::<Outer>(&v), whole::<Outer>(&v));
        prop_assert_eq!(typed::<Login>(&v), whole::<Login>(&v));
        prop_assert_eq!(typed::<SignInArgs>(&v), whole::<SignInArgs>(&v));
        // Nested under the tool's `outer` argument, where the typed walks start.
        let wrapped = serde_json::json!({"outer": v, "otp": "123456"});
        prop_assert_eq!(typed::<SignInArgs>(&wrapped), whole::<SignInArgs>(&wrapped));
    }
}

/// The walks agree on valid arguments too, and they redact what they must.
#[test]
fn valid_arguments_are_redacted() {
    let login = serde_json::json!({"user": "ann", "pin": "1234", "api_key": "k-1"});
    let v = serde_json::json!({
        "outer": {
            "name": "n", "logins": [login], "backup": login, "by_host": {"h": login, "password": "p"},
            "mode": "fast", "deep": [[login]], "extra": {"nested": {"secret": "s"}},
        },
        "otp": "999999", "session_id": "sid", "level": 3,
    });
    let got = typed::<SignInArgs>(&v);
    assert_eq!(got, whole::<SignInArgs>(&v));
    let text = got.to_string();
    for secret in ["1234", "k-1", "999999", "sid", "\"p\"", "\"s\""] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
    assert_eq!(got["outer"]["logins"][0]["user"], "ann");
    assert_eq!(got["level"], 3);
}
