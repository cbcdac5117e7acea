use serde_json::Value;

/// What a redacted value is replaced with.
pub const REDACTED: &str = "[REDACTED]";

/// Longest string kept whole in an audit record; longer ones are cut.
const MAX_AUDIT_STRING: usize = 256;

/// Whether a field name looks like it holds a credential (`password`, `api_key`,
/// `Authorization`, `client_secret`, `accessToken`, ...). Compared without case and
/// separators.
pub fn is_credential_name(name: &str) -> bool {
    let n: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect();
    const NEEDLES: &[&str] = &[
        "password",
        "passwd",
        "passphrase",
        "secret",
        "token",
        "apikey",
        "authorization",
        "credential",
        "privatekey",
        "accesskey",
        "sessionid",
        "cookie",
        "bearer",
        "signature",
    ];
    n == "pwd" || n == "auth" || NEEDLES.iter().any(|k| n.contains(k))
}

/// Replaces every value under a credential-like name, at any depth, and cuts very long
/// strings.
pub fn redact_credentials(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, child) in map.iter_mut() {
                if is_credential_name(k) {
                    *child = Value::String(REDACTED.to_owned());
                } else {
                    redact_credentials(child);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact_credentials),
        Value::String(s) if s.len() > MAX_AUDIT_STRING => {
            let mut cut = MAX_AUDIT_STRING;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            let dropped = s.len() - cut;
            s.truncate(cut);
            s.push_str(&format!("…[{dropped} more bytes]"));
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_names_at_any_depth() {
        for n in [
            "password",
            "API_KEY",
            "apiKey",
            "client_secret",
            "Authorization",
            "accessToken",
            "auth",
            "x-api-key",
        ] {
            assert!(is_credential_name(n), "{n}");
        }
        for n in ["author", "name", "table", "limit", "column"] {
            assert!(!is_credential_name(n), "{n}");
        }
        let mut v = serde_json::json!({"user": "a", "nested": [{"password": "hunter2"}], "long": "x".repeat(300)});
        redact_credentials(&mut v);
        assert_eq!(v["nested"][0]["password"], REDACTED);
        assert_eq!(v["user"], "a");
        assert!(v["long"]
            .as_str()
            .is_some_and(|s| s.starts_with(&"x".repeat(256)) && s.ends_with("[44 more bytes]")));
    }
}
