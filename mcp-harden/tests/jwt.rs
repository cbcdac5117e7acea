//! `JwtAuthenticator` called directly: claim handling and configuration checks.

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use mcp_harden::auth::{
    AuthContext, AuthFailure, AuthMethod, Authenticator, JwtAuthenticator, JwtConfigError,
};
use mcp_harden::Principal;
use serde_json::{json, Value};

const SECRET: &[u8] = b"a unit-test HMAC secret, 32 bytes or more";
const RESOURCE: &str = "https://mcp.example.com/mcp";

/// A real RSA public key (the e2e fixture `rsa-1`), as a JWK without and with `alg`.
const RSA_N: &str = "pJWC600xA9WPDcsjZRJbjjmVYYWNYASl7D_tZjrRWREWg5vA5FUIQtAZx-LhvoDqSDS7tEBVUTQQvqd0fF2SZ1ppwIo7UDEWI81MhOClsswHWMrcMPXqn5bsDOsZ1n1_z0qdkL-lBCr0GJhCuqFtF2L2Ym0WjdQqTYcwxGxHRoLI__Dzlzf_9CVsLriA7_H8V5qAloJ7_ontPPLXTnxozGRnDBaHwubG8hE1evMk7SYWyZpEdfM0tYrDnT0dD8rzEKPFtCDZjfScdqE7Eu9rOnCmKqVIDEurwMtUsCe2iX84G2giMdzZ-DCS7hi38gL0SjXB9XNuMNh3QCvbTeHCnQ";

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

fn source() -> SocketAddr {
    ([127, 0, 0, 1], 40000).into()
}

fn hs() -> JwtAuthenticator {
    JwtAuthenticator::builder()
        .hs256(SECRET)
        .build()
        .expect("valid configuration")
}

/// Claims a default server accepts; `patch` overrides (a `null` removes the claim).
fn claims(patch: Value) -> Value {
    let mut c = json!({"sub": "alice", "aud": RESOURCE, "exp": now() + 600, "scope": "db:read"});
    for (k, v) in patch.as_object().expect("object") {
        if v.is_null() {
            c.as_object_mut().expect("object").remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c
}

fn token(claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(SECRET),
    )
    .expect("signs")
}

fn check(auth: &JwtAuthenticator, patch: Value) -> Result<Principal, AuthFailure> {
    check_for(auth, RESOURCE, patch)
}

fn check_for(
    auth: &JwtAuthenticator,
    resource: &str,
    patch: Value,
) -> Result<Principal, AuthFailure> {
    auth.authenticate(
        &token(&claims(patch)),
        &AuthContext::new(resource, source()),
    )
    .expect("a JWT is recognised")
}

fn scopes(p: &Principal) -> Vec<&str> {
    p.scopes().collect()
}

#[test]
fn a_valid_token_gives_its_principal() {
    let p = check(&hs(), json!({})).expect("accepted");
    assert_eq!(p.subject(), "alice");
    assert_eq!(scopes(&p), ["db:read"]);
    assert_eq!(p.method(), AuthMethod::Jwt);
    assert_eq!(p.tier(), None);
    assert_eq!(p.key_id(), None);
}

#[test]
fn leeway_tolerates_small_clock_skew_only() {
    let auth = hs();
    assert!(
        check(&auth, json!({"exp": now() - 10})).is_ok(),
        "default 30 s"
    );
    assert_eq!(
        check(&auth, json!({"exp": now() - 120})),
        Err(AuthFailure::Expired)
    );
    assert!(check(&auth, json!({"nbf": now() + 10})).is_ok());
    assert_eq!(
        check(&auth, json!({"nbf": now() + 120})),
        Err(AuthFailure::NotYetValid)
    );

    let strict = JwtAuthenticator::builder()
        .hs256(SECRET)
        .leeway(std::time::Duration::ZERO)
        .build()
        .expect("valid");
    assert_eq!(
        check(&strict, json!({"exp": now() - 10})),
        Err(AuthFailure::Expired)
    );
    assert_eq!(
        check(&auth, json!({"exp": null})),
        Err(AuthFailure::MissingClaim),
        "exp is required"
    );
}

#[test]
fn scope_claim_forms() {
    let auth = hs();
    let p = check(&auth, json!({"scope": "db:write db:read"})).expect("scope string");
    assert_eq!(scopes(&p), ["db:read", "db:write"]);
    let p = check(&auth, json!({"scope": null, "scp": ["a:x", "b:y"]})).expect("scp array");
    assert_eq!(scopes(&p), ["a:x", "b:y"]);
    let p = check(&auth, json!({"scope": null, "scp": "a:x b:y"})).expect("scp string");
    assert_eq!(scopes(&p), ["a:x", "b:y"]);
    let p = check(&auth, json!({"scope": null, "scopes": ["c:z"]})).expect("scopes array");
    assert_eq!(scopes(&p), ["c:z"]);
    let p = check(&auth, json!({"scope": null})).expect("no scope claim");
    assert!(scopes(&p).is_empty());

    for bad in [
        json!({"scope": 42}),
        json!({"scope": {"db": "read"}}),
        json!({"scope": null, "scp": ["ok", 1]}),
        json!({"scope": null, "scopes": true}),
    ] {
        assert_eq!(
            check(&auth, bad.clone()),
            Err(AuthFailure::MissingClaim),
            "{bad}"
        );
    }
}

#[test]
fn tier_claim() {
    let auth = JwtAuthenticator::builder()
        .hs256(SECRET)
        .tier_claim("tier")
        .build()
        .expect("valid");
    let p = check(&auth, json!({"tier": "enterprise"})).expect("accepted");
    assert_eq!(p.tier(), Some("enterprise"));
    assert_eq!(check(&auth, json!({})).expect("accepted").tier(), None);
    assert_eq!(
        check(&auth, json!({"tier": 3})),
        Err(AuthFailure::MissingClaim)
    );
    assert_eq!(
        check(&auth, json!({"tier": "x".repeat(65)})),
        Err(AuthFailure::MissingClaim)
    );
    // Without tier_claim the claim is ignored.
    assert_eq!(
        check(&hs(), json!({"tier": "enterprise"}))
            .expect("accepted")
            .tier(),
        None
    );
}

#[test]
fn subject_is_required() {
    let auth = hs();
    for bad in [
        json!({"sub": null}),
        json!({"sub": ""}),
        json!({"sub": 7}),
        json!({"sub": "s".repeat(257)}),
    ] {
        assert_eq!(
            check(&auth, bad.clone()),
            Err(AuthFailure::MissingClaim),
            "{bad}"
        );
    }
}

#[test]
fn audience_names_this_resource() {
    let auth = hs();
    assert!(check(&auth, json!({"aud": ["https://other.example", RESOURCE]})).is_ok());
    assert_eq!(
        check(&auth, json!({"aud": ["https://other.example"]})),
        Err(AuthFailure::WrongAudience)
    );
    assert_eq!(
        check(&auth, json!({"aud": "https://mcp.example.com/mcp/"})),
        Err(AuthFailure::WrongAudience),
        "compared exactly"
    );
    assert_eq!(
        check(&auth, json!({"aud": 1})),
        Err(AuthFailure::WrongAudience)
    );
    assert_eq!(
        check(&auth, json!({"aud": null})),
        Err(AuthFailure::MissingClaim)
    );
    // The resource comes from the request context.
    assert_eq!(
        check_for(&auth, "https://elsewhere.example/mcp", json!({})),
        Err(AuthFailure::WrongAudience)
    );
}

#[test]
fn a_configured_audience_replaces_the_resource() {
    let auth = JwtAuthenticator::builder()
        .hs256(SECRET)
        .audience("api://mcp")
        .audience("api://mcp-2")
        .build()
        .expect("valid");
    assert!(check(&auth, json!({"aud": "api://mcp"})).is_ok());
    assert!(check(&auth, json!({"aud": ["x", "api://mcp-2"]})).is_ok());
    assert_eq!(
        check(&auth, json!({})),
        Err(AuthFailure::WrongAudience),
        "the resource URL is no longer enough"
    );
}

#[test]
fn issuer_when_configured() {
    let auth = JwtAuthenticator::builder()
        .hs256(SECRET)
        .issuer("https://issuer.example")
        .build()
        .expect("valid");
    assert!(check(&auth, json!({"iss": "https://issuer.example"})).is_ok());
    assert_eq!(
        check(&auth, json!({"iss": "https://evil.example"})),
        Err(AuthFailure::WrongIssuer)
    );
    assert_eq!(check(&auth, json!({})), Err(AuthFailure::MissingClaim));
    assert!(
        check(&hs(), json!({"iss": "https://anyone.example"})).is_ok(),
        "not checked unless configured"
    );
}

#[test]
fn not_a_jwt_is_left_to_other_authenticators() {
    let cx = AuthContext::new(RESOURCE, source());
    assert_eq!(hs().authenticate("mhk_0123456789abcdef_secret", &cx), None);
    assert_eq!(hs().authenticate("a.b", &cx), None);
    assert_eq!(
        hs().authenticate("a.b.c", &cx),
        Some(Err(AuthFailure::MalformedToken))
    );
}

#[test]
fn weak_hmac_secrets_are_refused_at_build() {
    let r = JwtAuthenticator::builder().hs256(b"short secret").build();
    assert!(matches!(r, Err(JwtConfigError::WeakSecret(12))), "{r:?}");
    let r = JwtAuthenticator::builder().hs256([7u8; 31]).build();
    assert!(matches!(r, Err(JwtConfigError::WeakSecret(31))), "{r:?}");
    assert!(JwtAuthenticator::builder().hs256([7u8; 32]).build().is_ok());
    // A symmetric JWK is held to the same rule.
    let jwks = json!({"keys": [{"kty": "oct", "alg": "HS256", "k": "c2hvcnQ"}]});
    let r = JwtAuthenticator::builder()
        .jwks_json(&jwks.to_string())
        .build();
    assert!(matches!(r, Err(JwtConfigError::WeakSecret(5))), "{r:?}");
    assert!(matches!(
        JwtAuthenticator::builder().build(),
        Err(JwtConfigError::NoKeys)
    ));
}

#[test]
fn an_rsa_jwk_without_alg_is_refused_at_build() {
    let jwk = json!({"kty": "RSA", "kid": "rsa-1", "n": RSA_N, "e": "AQAB"});
    let r = JwtAuthenticator::builder()
        .jwks_json(&json!({ "keys": [jwk] }).to_string())
        .build();
    match r {
        Err(JwtConfigError::Jwks(m)) => assert!(m.contains("rsa-1") && m.contains("alg"), "{m}"),
        other => panic!("expected a JWKS error, got {other:?}"),
    }
    // The same key with its algorithm is fine.
    let mut jwk = jwk;
    jwk["alg"] = json!("RS256");
    assert!(JwtAuthenticator::builder()
        .jwks_json(&json!({ "keys": [jwk] }).to_string())
        .any_issuer()
        .build()
        .is_ok());
    // An algorithm that does not fit the key type is refused too.
    let r = JwtAuthenticator::builder()
        .jwks_json(
            &json!({"keys": [{"kty": "RSA", "alg": "ES256", "n": RSA_N, "e": "AQAB"}]}).to_string(),
        )
        .build();
    assert!(
        matches!(r, Err(JwtConfigError::AlgorithmForKey(Algorithm::ES256))),
        "{r:?}"
    );
}

#[test]
fn a_jwk_whose_curve_is_not_its_algorithms_is_refused_at_build() {
    let p256 = json!({"kty": "EC", "alg": "ES256", "kid": "ec-1", "crv": "P-256",
        "x": "h9ko1Ta3mOFSRXOGWzFjZuXR7RY7CDlwPrxlgJl7rKo",
        "y": "Ls_ADx5Gkd-8T4oBQ2C59rEb60mSu0ZEp2x20z85Kbg"});
    let ed = json!({"kty": "OKP", "alg": "EdDSA", "kid": "ed-1", "crv": "Ed25519",
        "x": "MvNrVssZOglk43GPdmC5_HLSYttUahN3eliwArBBCWA"});
    let build = |jwk: &serde_json::Value| {
        JwtAuthenticator::builder()
            .jwks_json(&json!({ "keys": [jwk] }).to_string())
            .any_issuer()
            .build()
    };
    assert!(build(&p256).is_ok());
    assert!(build(&ed).is_ok());
    // The same keys declared for another curve's algorithm, or another curve for theirs:
    // each would have built and then refused every token.
    let cases = [
        (&p256, "alg", "ES384", Algorithm::ES384),
        (&p256, "crv", "P-384", Algorithm::ES256),
        (&p256, "crv", "P-521", Algorithm::ES256),
        (&ed, "crv", "P-256", Algorithm::EdDSA),
        (&p256, "crv", "Ed25519", Algorithm::ES256),
    ];
    for (key, field, value, alg) in cases {
        let mut jwk = key.clone();
        jwk[field] = json!(value);
        let r = build(&jwk);
        assert!(
            matches!(r, Err(JwtConfigError::AlgorithmForKey(a)) if a == alg),
            "{field} = {value}: {r:?}"
        );
    }
}

#[test]
fn duplicate_kids_are_refused_at_build() {
    let r = JwtAuthenticator::builder()
        .hs256(SECRET)
        .with_kid("k1")
        .hs256([9u8; 32])
        .with_kid("k1")
        .build();
    assert!(
        matches!(&r, Err(JwtConfigError::DuplicateKid(k)) if k == "k1"),
        "{r:?}"
    );
    let jwk = json!({"kty": "RSA", "alg": "RS256", "kid": "rsa-1", "n": RSA_N, "e": "AQAB"});
    let r = JwtAuthenticator::builder()
        .jwks_json(&json!({ "keys": [jwk.clone(), jwk] }).to_string())
        .build();
    assert!(
        matches!(&r, Err(JwtConfigError::DuplicateKid(k)) if k == "rsa-1"),
        "{r:?}"
    );
    assert!(matches!(
        JwtAuthenticator::builder()
            .with_kid("k")
            .hs256(SECRET)
            .build(),
        Err(JwtConfigError::KidWithoutKey)
    ));
}

#[test]
fn with_kids_a_token_picks_its_key() {
    let auth = JwtAuthenticator::builder()
        .hs256(SECRET)
        .with_kid("one")
        .hs256([9u8; 32])
        .with_kid("two")
        .build()
        .expect("valid");
    let cx = AuthContext::new(RESOURCE, source());
    let sign = |kid: Option<&str>, key: &[u8]| {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&h, &claims(json!({})), &EncodingKey::from_secret(key)).expect("signs")
    };
    assert!(auth
        .authenticate(&sign(Some("one"), SECRET), &cx)
        .expect("JWT")
        .is_ok());
    assert!(auth
        .authenticate(&sign(Some("two"), &[9u8; 32]), &cx)
        .expect("JWT")
        .is_ok());
    assert_eq!(
        auth.authenticate(&sign(Some("two"), SECRET), &cx),
        Some(Err(AuthFailure::BadSignature)),
        "a kid selects exactly one key"
    );
    assert_eq!(
        auth.authenticate(&sign(Some("three"), SECRET), &cx),
        Some(Err(AuthFailure::UnknownKey))
    );
    // Without a kid, every key of the token's algorithm is tried.
    assert!(auth
        .authenticate(&sign(None, &[9u8; 32]), &cx)
        .expect("JWT")
        .is_ok());
}

#[test]
fn a_required_token_type_refuses_other_jwts() {
    let typed = |typ: Option<&str>| {
        let mut header = Header::new(Algorithm::HS256);
        header.typ = typ.map(str::to_owned);
        jsonwebtoken::encode(
            &header,
            &claims(json!({})),
            &EncodingKey::from_secret(SECRET),
        )
        .expect("signs")
    };
    let check = |auth: &JwtAuthenticator, typ: Option<&str>| {
        auth.authenticate(&typed(typ), &AuthContext::new(RESOURCE, source()))
            .expect("a JWT is recognised")
            .map(|p| p.subject().to_owned())
    };
    let access_only = JwtAuthenticator::builder()
        .hs256(SECRET)
        .token_type("at+jwt")
        .cache(0)
        .build()
        .expect("valid configuration");
    // RFC 9068 access tokens, however the media type is spelled (RFC 7515 4.1.9).
    for typ in [
        "at+jwt",
        "AT+JWT",
        "application/at+jwt",
        "Application/At+JWT",
    ] {
        assert_eq!(check(&access_only, Some(typ)), Ok("alice".into()), "{typ}");
    }
    // An ID token (typ JWT), a token without typ, another type: refused, even with a valid
    // signature and audience. `application/` is implied only where the type has no `/`.
    for typ in [
        Some("JWT"),
        None,
        Some("at+jwt2"),
        Some("application/jwt"),
        Some("application/application/at+jwt"),
    ] {
        assert_eq!(
            check(&access_only, typ),
            Err(AuthFailure::WrongTokenType),
            "{typ:?}"
        );
    }
    assert_eq!(AuthFailure::WrongTokenType.reason(), "wrong_token_type");
    assert_eq!(
        AuthFailure::WrongTokenType.client_message(),
        "the credential is not valid"
    );
    // Without the setting, typ is not checked.
    assert_eq!(check(&hs(), Some("JWT")), Ok("alice".into()));
    assert_eq!(check(&hs(), None), Ok("alice".into()));
    // A type that is not a media type is a configuration error.
    let example = JwtAuthenticator::builder()
        .hs256(SECRET)
        .token_type("example/at+jwt")
        .cache(0)
        .build()
        .expect("valid configuration");
    assert_eq!(check(&example, Some("Example/AT+JWT")), Ok("alice".into()));
    assert_eq!(
        check(&example, Some("application/example/at+jwt")),
        Err(AuthFailure::WrongTokenType)
    );
    // A forged token is refused for its signature, whatever its typ.
    let mut header = Header::new(Algorithm::HS256);
    header.typ = Some("JWT".into());
    let forged = jsonwebtoken::encode(
        &header,
        &claims(json!({})),
        &EncodingKey::from_secret(b"another secret, also 32 bytes long.."),
    )
    .expect("signs");
    assert_eq!(
        access_only
            .authenticate(&forged, &AuthContext::new(RESOURCE, source()))
            .expect("a JWT is recognised")
            .err(),
        Some(AuthFailure::BadSignature)
    );
    for bad in ["", "at jwt", "application/", "/at+jwt", "a/b/c"] {
        let r = JwtAuthenticator::builder()
            .hs256(SECRET)
            .token_type(bad)
            .build();
        assert!(
            matches!(r, Err(JwtConfigError::TokenType(_))),
            "{bad:?}: {r:?}"
        );
    }
}

#[test]
fn an_ec_pem_key_of_another_curve_is_refused_at_build() {
    let p256 = include_bytes!("../../tests/keys/ec_public.pem");
    assert!(JwtAuthenticator::builder()
        .es256_pem(p256)
        .any_issuer()
        .build()
        .is_ok());
    let r = JwtAuthenticator::builder()
        .pem(Algorithm::ES384, p256)
        .build();
    assert!(
        matches!(r, Err(JwtConfigError::AlgorithmForKey(Algorithm::ES384))),
        "{r:?}"
    );
}

#[test]
fn public_keys_need_an_issuer_or_an_explicit_any() {
    let rsa =
        json!({"keys": [{"kty": "RSA", "alg": "RS256", "n": RSA_N, "e": "AQAB"}]}).to_string();
    let r = JwtAuthenticator::builder().jwks_json(&rsa).build();
    assert!(matches!(r, Err(JwtConfigError::NoIssuer)), "{r:?}");
    let p256 = include_bytes!("../../tests/keys/ec_public.pem");
    let r = JwtAuthenticator::builder()
        .hs256(SECRET)
        .es256_pem(p256)
        .build();
    assert!(matches!(r, Err(JwtConfigError::NoIssuer)), "{r:?}");
    assert!(JwtAuthenticator::builder()
        .jwks_json(&rsa)
        .issuer("https://issuer.example")
        .build()
        .is_ok());
    assert!(JwtAuthenticator::builder()
        .jwks_json(&rsa)
        .any_issuer()
        .build()
        .is_ok());
    let r = JwtAuthenticator::builder()
        .jwks_json(&rsa)
        .any_issuer()
        .issuer("https://issuer.example")
        .build();
    assert!(
        matches!(r, Err(JwtConfigError::IssuerAndAnyIssuer)),
        "{r:?}"
    );
    // A shared secret is this server's own: no issuer needed.
    assert!(JwtAuthenticator::builder().hs256(SECRET).build().is_ok());
}
