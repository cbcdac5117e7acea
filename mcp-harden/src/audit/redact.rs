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
    n == b"pwd" || n == b"auth" || (0..n.len()).any(|i| starts_with_needle(&n[i..]))
}

/// The substrings that make a (normalised) name credential-like, by first byte: at each
/// position of a name only the few needles starting with its byte are compared (this runs
/// for every field name of every call's arguments).
fn starts_with_needle(rest: &[u8]) -> bool {
    let needles: &[&[u8]] = match rest.first() {
        Some(b'p') => &[b"password", b"passwd", b"passphrase", b"privatekey"],
        Some(b's') => &[b"secret", b"sessionid", b"signature"],
        Some(b't') => &[b"token"],
        Some(b'a') => &[b"apikey", b"authorization", b"accesskey"],
        Some(b'c') => &[b"credential", b"cookie"],
        Some(b'b') => &[b"bearer"],
        _ => return false,
    };
    needles.iter().any(|k| rest.starts_with(k))
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
        for n in [
            "author", "name", "table", "limit", "column", "", "_", "pass", "tok",
        ] {
            assert!(!is_credential_name(n), "{n}");
        }
        for n in [
            "x_password",
            "mySecretValue",
            "bearer",
            "COOKIE",
            "a_t_o_k_e_n",
        ] {
            assert!(is_credential_name(n), "{n}");
        }
        // Every needle, anywhere in a name; and never a needle cut short.
        for k in [
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
        ] {
            for name in [
                k.to_owned(),
                format!("x_{k}"),
                format!("{k}9"),
                format!("my-{k}-v2"),
            ] {
                assert!(is_credential_name(&name), "{name}");
            }
            assert!(!is_credential_name(&k[..k.len() - 1]), "{k}");
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
