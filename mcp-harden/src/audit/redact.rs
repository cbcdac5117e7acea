use serde_json::Value;

/// What a redacted value is replaced with.
pub const REDACTED: &str = "[REDACTED]";

/// Longest string kept whole in an audit record; longer ones are cut.
const MAX_AUDIT_STRING: usize = 256;

/// Whether a field name looks like it holds a credential (`password`, `api_key`,
/// `Authorization`, `client_secret`, `accessToken`, ...). Compared without case and
/// separators.
pub fn is_credential_name(name: &str) -> bool {
    // Lowercased alphanumerics of the name, on the stack (long names: on the heap).
    let mut stack = [0u8; 64];
    let mut heap = Vec::new();
    let mut len = 0;
    for b in name.bytes().filter(u8::is_ascii_alphanumeric) {
        let b = b.to_ascii_lowercase();
        if len < stack.len() {
            stack[len] = b;
        } else {
            if heap.is_empty() {
                heap.extend_from_slice(&stack);
            }
            heap.push(b);
        }
        len += 1;
    }
    let n: &[u8] = if heap.is_empty() {
        &stack[..len]
    } else {
        &heap
    };
    const NEEDLES: &[&[u8]] = &[
        b"password",
        b"passwd",
        b"passphrase",
        b"secret",
        b"token",
        b"apikey",
        b"authorization",
        b"credential",
        b"privatekey",
        b"accesskey",
        b"sessionid",
        b"cookie",
        b"bearer",
        b"signature",
    ];
    n == b"pwd"
        || n == b"auth"
        || NEEDLES
            .iter()
            .any(|k| n.len() >= k.len() && n.windows(k.len()).any(|w| w == *k))
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
