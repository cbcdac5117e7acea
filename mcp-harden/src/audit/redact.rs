use serde_json::Value;

/// What a redacted value is replaced with.
pub const REDACTED: &str = "[REDACTED]";

/// Longest string kept whole in an audit record; longer ones are cut.
const MAX_AUDIT_STRING: usize = 256;

/// The substrings that make a (normalised) name credential-like. [`starts_with_needle`]
/// dispatches on their first two bytes; [`NEXT`] is derived from them.
const NEEDLES: [&[u8]; 14] = [
    b"password",
    b"passwd",
    b"passphrase",
    b"privatekey",
    b"secret",
    b"sessionid",
    b"signature",
    b"token",
    b"apikey",
    b"authorization",
    b"accesskey",
    b"credential",
    b"cookie",
    b"bearer",
];

/// Names that are credential-like only as the whole (normalised) name.
const EXACT: [&[u8]; 2] = [b"pwd", b"auth"];

/// Whether a field name looks like it holds a credential (`password`, `api_key`,
/// `Authorization`, `client_secret`, `accessToken`, ...). Compared without case and
/// separators.
pub fn is_credential_name(name: &str) -> bool {
    let raw = name.as_bytes();
    // Most names are already lower-case alphanumerics: then they are their own normal form.
    if raw
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        return matches_normalised(raw);
    }
    // Otherwise: the lowercased alphanumerics, on the stack (long names: on the heap).
    let mut stack = [0u8; 64];
    let mut heap = Vec::new();
    let mut len = 0;
    for b in raw.iter().copied().filter(u8::is_ascii_alphanumeric) {
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
    matches_normalised(if heap.is_empty() {
        &stack[..len]
    } else {
        &heap
    })
}

/// The shortest needle ("token"): a shorter name can only be one of the exact names.
const SHORTEST_NEEDLE: usize = 5;

fn matches_normalised(n: &[u8]) -> bool {
    if n.len() < SHORTEST_NEEDLE {
        return EXACT.contains(&n);
    }
    // Most positions are ruled out by their first two bytes in a table lookup.
    (0..=n.len() - SHORTEST_NEEDLE).any(|i| match n.get(i..) {
        Some(rest @ [first, second, ..]) => {
            let bit = second.wrapping_sub(b'a');
            bit < 26 && NEXT[usize::from(*first)] & (1 << bit) != 0 && starts_with_needle(rest)
        }
        _ => false,
    })
}

/// For each byte, the (lower-case) bytes that may follow it at the start of a needle, as
/// bits `b - b'a'`.
const NEXT: [u32; 256] = {
    let mut next = [0u32; 256];
    let mut i = 0;
    while i < NEEDLES.len() {
        next[NEEDLES[i][0] as usize] |= 1 << (NEEDLES[i][1] - b'a');
        i += 1;
    }
    next
};

/// Whether a (normalised) name continues with one of [`NEEDLES`]: at each position of a name
/// only the needles starting with its two bytes are compared,
/// byte by byte (this runs for every field name of every call's arguments; most positions
/// fail on the first match).
fn starts_with_needle(rest: &[u8]) -> bool {
    let needles: &[&[u8]] = match rest {
        [b'p', b'a', ..] => &[b"password", b"passwd", b"passphrase"],
        [b'p', b'r', ..] => &[b"privatekey"],
        [b's', b'e', ..] => &[b"secret", b"sessionid"],
        [b's', b'i', ..] => &[b"signature"],
        [b't', b'o', ..] => &[b"token"],
        [b'a', b'p', ..] => &[b"apikey"],
        [b'a', b'u', ..] => &[b"authorization"],
        [b'a', b'c', ..] => &[b"accesskey"],
        [b'c', b'r', ..] => &[b"credential"],
        [b'c', b'o', ..] => &[b"cookie"],
        [b'b', b'e', ..] => &[b"bearer"],
        _ => return false,
    };
    needles
        .iter()
        .any(|k| k.len() <= rest.len() && k.iter().zip(rest).all(|(a, b)| a == b))
}

/// [`is_credential_name`] as a `const fn`, for names known at compile time (the audit walk
/// that `#[derive(ToolArgs)]` and `#[tool]` generate decides declared fields with it). Slow:
/// every needle at every position.
#[doc(hidden)]
pub const fn is_credential_name_const(name: &str) -> bool {
    let b = name.as_bytes();
    // Whether the alphanumerics of `b` from index `at`, lower-cased, start with `needle`,
    // and (`whole`) consist of it alone.
    const fn matches_at(b: &[u8], mut at: usize, needle: &[u8], whole: bool) -> bool {
        let mut k = 0;
        while k < needle.len() {
            while at < b.len() && !b[at].is_ascii_alphanumeric() {
                at += 1;
            }
            if at == b.len() || b[at].to_ascii_lowercase() != needle[k] {
                return false;
            }
            at += 1;
            k += 1;
        }
        if whole {
            while at < b.len() {
                if b[at].is_ascii_alphanumeric() {
                    return false;
                }
                at += 1;
            }
        }
        true
    }
    let mut e = 0;
    while e < EXACT.len() {
        if matches_at(b, 0, EXACT[e], true) {
            return true;
        }
        e += 1;
    }
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_alphanumeric() {
            let mut n = 0;
            while n < NEEDLES.len() {
                if matches_at(b, i, NEEDLES[n], false) {
                    return true;
                }
                n += 1;
            }
        }
        i += 1;
    }
    false
}

/// One entry of an object in an audit walk: its value redacted under a credential-like
/// name, else walked by `walk`.
#[doc(hidden)]
pub fn redact_entry(key: &str, child: &mut Value, walk: fn(&mut Value)) {
    if is_credential_name(key) {
        *child = Value::String(REDACTED.to_owned());
    } else {
        walk(child);
    }
}

/// Replaces every value under a credential-like name, at any depth, and cuts very long
/// strings.
pub fn redact_credentials(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, child) in map.iter_mut() {
                redact_entry(k, child, redact_credentials);
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
            assert!(is_credential_name_const(n), "{n}");
        }
        for n in [
            "author", "name", "table", "limit", "column", "", "_", "pass", "tok",
        ] {
            assert!(!is_credential_name(n), "{n}");
            assert!(!is_credential_name_const(n), "{n}");
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
        for k in NEEDLES.map(|k| std::str::from_utf8(k).expect("ASCII")) {
            for name in [
                k.to_owned(),
                format!("x_{k}"),
                format!("{k}9"),
                format!("my-{k}-v2"),
            ] {
                assert!(is_credential_name(&name), "{name}");
            }
            assert!(!is_credential_name(&k[..k.len() - 1]), "{k}");
            assert!(is_credential_name(&k.to_ascii_uppercase()), "{k}");
            assert!(SHORTEST_NEEDLE <= k.len(), "{k}");
        }
        assert!(is_credential_name(&format!("{}Token", "x".repeat(80))));
        assert!(!is_credential_name(&"x".repeat(80)));
        let mut v = serde_json::json!({"user": "a", "nested": [{"password": "hunter2"}], "long": "x".repeat(300)});
        redact_credentials(&mut v);
        assert_eq!(v["nested"][0]["password"], REDACTED);
        assert_eq!(v["user"], "a");
        assert!(v["long"]
            .as_str()
            .is_some_and(|s| s.starts_with(&"x".repeat(256)) && s.ends_with("[44 more bytes]")));
    }

    /// The dispatching matcher agrees with the obvious one (normalise, then look for every
    /// needle) on names built from needle pieces, separators and case changes.
    #[test]
    fn matcher_agrees_with_the_obvious_one() {
        let obvious = |name: &str| {
            let n: String = name
                .chars()
                .filter(char::is_ascii_alphanumeric)
                .map(|c| c.to_ascii_lowercase())
                .collect();
            EXACT.contains(&n.as_bytes())
                || NEEDLES
                    .iter()
                    .any(|k| n.as_bytes().windows(k.len()).any(|w| w == *k))
        };
        let pieces = [
            "pa", "ss", "wo", "rd", "Pass", "to", "ken", "_", "-", "x", "Au", "th", "se", "cret",
            "co", "okie", "pwd", "api", "Key", "be", "arer", "é", "9", "acc", "ess", "sig",
        ];
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut positives = 0;
        for _ in 0..200_000 {
            let mut name = String::new();
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let mut r = seed;
            for _ in 0..(r % 6) + 1 {
                r /= 6;
                name.push_str(pieces[(r % pieces.len() as u64) as usize]);
                r /= pieces.len() as u64;
            }
            let expected = obvious(&name);
            assert_eq!(is_credential_name(&name), expected, "{name}");
            assert_eq!(is_credential_name_const(&name), expected, "const: {name}");
            positives += usize::from(expected);
        }
        assert!((1_000..199_000).contains(&positives), "{positives}");
    }
}
