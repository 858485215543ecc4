//! The sandbox's side of `private_key_jwt` (RFC 7523 §3): checks a client assertion as a
//! standard server does, so the broker's own assertions are tested over a socket. Pure:
//! the caller supplies the key, the audiences it answers to and the time.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use ring::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};
use serde_json::Value;

/// The DER prefix of every P-256 `SubjectPublicKeyInfo` (id-ecPublicKey, prime256v1, a
/// BIT STRING of 66 bytes): the uncompressed point follows.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// The uncompressed point of a PEM P-256 public key (`-----BEGIN PUBLIC KEY-----`, as
/// `openssl pkey -pubout` writes it): what [`verify`] checks signatures with.
pub fn p256_public_point(pem: &[u8]) -> Result<Vec<u8>, String> {
    use tokio_rustls::rustls::pki_types::{SubjectPublicKeyInfoDer, pem::PemObject};
    let spki = SubjectPublicKeyInfoDer::from_pem_slice(pem)
        .map_err(|e| format!("no PEM public key ({e})"))?;
    match spki.as_ref().strip_prefix(&P256_SPKI_PREFIX[..]) {
        Some(point) if point.len() == 65 && point[0] == 0x04 => Ok(point.to_vec()),
        _ => Err("not an EC P-256 public key".into()),
    }
}

/// What a valid assertion says.
#[derive(Debug, PartialEq, Eq)]
pub struct Claims {
    /// `iss` (and `sub`): the client.
    pub client_id: String,
    /// `jti`: a server refuses a second use.
    pub jti: String,
    /// `exp` (Unix seconds): after it the assertion is refused anyway.
    pub exp: u64,
}

/// The client an assertion names, without checking it (to find its key).
pub fn client_of(assertion: &str) -> Option<String> {
    let claims = part(assertion.split('.').nth(1)?)?;
    claims.get("sub")?.as_str().map(str::to_owned)
}

fn part(text: &str) -> Option<Value> {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(text).ok()?).ok()
}

/// Checks `assertion`: an ES256 JWT signed by `public_key` (an uncompressed P-256 point),
/// `iss` = `sub`, `aud` one of `audiences`, not expired at `now` (Unix seconds) and
/// valid for at most 5 minutes.
pub fn verify(
    assertion: &str,
    public_key: &[u8],
    audiences: &[String],
    now: u64,
) -> Result<Claims, String> {
    let parts = assertion
        .rsplit_once('.')
        .and_then(|(signed, signature)| Some((signed, signed.split_once('.')?, signature)));
    let Some((signed, (header, claims), signature)) = parts.filter(|p| !p.1.1.contains('.')) else {
        return Err("the client assertion is not a JWS of three parts".into());
    };
    let header = part(header).ok_or("the assertion's header is no JSON")?;
    if header.get("alg").and_then(Value::as_str) != Some("ES256") {
        return Err("the assertion must be signed with ES256".into());
    }
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| "the assertion's signature is not base64url")?;
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, public_key)
        .verify(signed.as_bytes(), &signature)
        .map_err(|_| "the assertion's signature does not verify with the client's key")?;
    let claims = part(claims).ok_or("the assertion's claims are no JSON")?;
    let text = |name: &str| claims.get(name).and_then(Value::as_str);
    let (Some(iss), Some(sub)) = (text("iss"), text("sub")) else {
        return Err("the assertion needs iss and sub".into());
    };
    if iss != sub {
        return Err("the assertion's iss and sub must both be the client id".into());
    }
    let aud_ok = match claims.get("aud") {
        Some(Value::String(aud)) => audiences.contains(aud),
        Some(Value::Array(auds)) => auds
            .iter()
            .any(|a| a.as_str().is_some_and(|a| audiences.iter().any(|x| x == a))),
        _ => false,
    };
    if !aud_ok {
        return Err(format!("the assertion's aud must be one of {audiences:?}"));
    }
    let exp = claims
        .get("exp")
        .and_then(Value::as_u64)
        .ok_or("the assertion needs exp")?;
    if exp <= now {
        return Err("the assertion has expired".into());
    }
    if exp > now + 300 {
        return Err("the assertion is valid for more than 5 minutes".into());
    }
    let jti = text("jti").ok_or("the assertion needs a jti")?;
    Ok(Claims {
        client_id: sub.to_owned(),
        jti: jti.to_owned(),
        exp,
    })
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::upstream::ClientKey;

    /// A key, its public point, and an assertion it signed for `aud` at `at`.
    fn signed(aud: &str, at: SystemTime) -> (Vec<u8>, String) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let signer = ClientKey::from_pem(key.serialize_pem().as_bytes(), None).unwrap();
        let jwt = signer.assertion("demo-client", aud, at).unwrap();
        (key.public_key_raw().to_vec(), jwt)
    }

    #[test]
    fn an_assertion_is_checked_for_signature_audience_and_expiry() {
        let token_url = "http://127.0.0.1:1/oauth/token".to_owned();
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let now = 1_800_000_010;
        let (point, jwt) = signed(&token_url, at);
        let claims = verify(&jwt, &point, std::slice::from_ref(&token_url), now).unwrap();
        assert_eq!(claims.client_id, "demo-client");
        assert_eq!(claims.exp, 1_800_000_060);
        assert!(verify(&jwt, &point, &["http://elsewhere".into()], now).is_err());
        assert!(
            verify(
                &jwt,
                &point,
                std::slice::from_ref(&token_url),
                1_800_000_060
            )
            .is_err()
        );
        let (other, _) = signed(&token_url, at);
        assert!(verify(&jwt, &other, std::slice::from_ref(&token_url), now).is_err());
        assert!(verify("a.b", &point, &[token_url], now).is_err());
    }

    #[test]
    fn a_p256_public_key_pem_gives_its_point() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let point = p256_public_point(key.public_key_pem().as_bytes()).unwrap();
        assert_eq!(point, key.public_key_raw());
        let rsa = include_str!("../upstream/testdata/rsa2048-test-key.pem");
        assert!(p256_public_point(rsa.as_bytes()).is_err());
    }
}
