//! `private_key_jwt` (RFC 7523 §2.2, OIDC Core §9): the broker proves who it is with a
//! short-lived JWT signed by its own key, so no shared secret ever crosses the wire.

use std::{fmt, time::SystemTime};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use ring::{
    rand::{SecureRandom, SystemRandom},
    signature::{self, EcdsaKeyPair, KeyPair, RsaKeyPair},
};
use tokio_rustls::rustls::pki_types::{PrivateKeyDer, pem::PemObject};

/// How long an assertion is valid: long enough for one request's retries inside the
/// upstream timeout, short enough that a captured one is soon worthless.
const ASSERTION_LIFETIME_SECS: u64 = 60;

/// RFC 7523 §2.2: the `client_assertion_type` of a JWT client assertion.
pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// The key an org signs its client assertions with (`orgs.NAME.client_key_env` or
/// `client_key_file`): an EC P-256 key (ES256) or an RSA key of 2048 bits or more
/// (RS256), in PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`; an RSA key may also be PKCS#1).
/// Its `Debug` names the algorithm and `kid`, never the key.
pub struct ClientKey {
    signer: Signer,
    kid: Option<String>,
    rng: SystemRandom,
}

enum Signer {
    Es256(EcdsaKeyPair),
    Rs256(RsaKeyPair),
}

impl fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientKey")
            .field("alg", &self.alg())
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// Why a PEM is no usable client key; the text says what to do.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct KeyError(String);

impl ClientKey {
    /// Reads `pem`; `kid` goes into every assertion's header (the server's JWKS names the
    /// key by it).
    pub fn from_pem(pem: &[u8], kid: Option<String>) -> Result<Self, KeyError> {
        let der = PrivateKeyDer::from_pem_slice(pem).map_err(|e| {
            KeyError(format!(
                "holds no PEM private key ({e}); write a PKCS#8 key (-----BEGIN PRIVATE KEY-----)"
            ))
        })?;
        let rng = SystemRandom::new();
        let signer = match &der {
            PrivateKeyDer::Pkcs8(der) => {
                match EcdsaKeyPair::from_pkcs8(
                    &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                    der.secret_pkcs8_der(),
                    &rng,
                ) {
                    Ok(key) => Signer::Es256(key),
                    Err(_) => Signer::Rs256(
                        RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()).map_err(|e| {
                            KeyError(format!(
                                "is neither an EC P-256 key nor an RSA key of 2048 bits or more ({e})"
                            ))
                        })?,
                    ),
                }
            }
            PrivateKeyDer::Pkcs1(der) => Signer::Rs256(
                RsaKeyPair::from_der(der.secret_pkcs1_der())
                    .map_err(|e| KeyError(format!("is no usable RSA key ({e})")))?,
            ),
            PrivateKeyDer::Sec1(_) => {
                return Err(KeyError(
                    "holds a SEC1 EC key (-----BEGIN EC PRIVATE KEY-----); convert it to PKCS#8 with `openssl pkcs8 -topk8 -nocrypt -in key.pem`".into(),
                ));
            }
            _ => return Err(KeyError("holds a key of an unknown kind".into())),
        };
        Ok(Self { signer, kid, rng })
    }

    /// The JWS algorithm of the key's assertions (`ES256` or `RS256`).
    pub fn alg(&self) -> &'static str {
        match self.signer {
            Signer::Es256(_) => "ES256",
            Signer::Rs256(_) => "RS256",
        }
    }

    /// The public half as a JWK (what to register at the server), with `kid` and `alg`.
    pub fn public_jwk(&self) -> serde_json::Value {
        let mut jwk = match &self.signer {
            Signer::Es256(key) => {
                // An uncompressed point: 0x04, then x and y of 32 bytes each.
                let point = key.public_key().as_ref();
                serde_json::json!({
                    "kty": "EC",
                    "crv": "P-256",
                    "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
                    "y": URL_SAFE_NO_PAD.encode(&point[33..]),
                })
            }
            Signer::Rs256(key) => {
                let public = signature::RsaPublicKeyComponents::<Vec<u8>>::from(key.public());
                serde_json::json!({
                    "kty": "RSA",
                    "n": URL_SAFE_NO_PAD.encode(public.n),
                    "e": URL_SAFE_NO_PAD.encode(public.e),
                })
            }
        };
        jwk["alg"] = self.alg().into();
        jwk["use"] = "sig".into();
        if let Some(kid) = &self.kid {
            jwk["kid"] = kid.clone().into();
        }
        jwk
    }

    /// A fresh assertion for `client_id` at `audience` (the token endpoint's URL, or what
    /// `client_assertion_audience` names): `iss` and `sub` the client, a random `jti`,
    /// valid for 60 s from `now`.
    pub fn assertion(
        &self,
        client_id: &str,
        audience: &str,
        now: SystemTime,
    ) -> Result<String, KeyError> {
        let iat = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut jti = [0u8; 16];
        self.rng
            .fill(&mut jti)
            .map_err(|_| KeyError("no random bytes for the assertion's jti".into()))?;
        let mut header = serde_json::json!({ "alg": self.alg(), "typ": "JWT" });
        if let Some(kid) = &self.kid {
            header["kid"] = kid.clone().into();
        }
        let claims = serde_json::json!({
            "iss": client_id,
            "sub": client_id,
            "aud": audience,
            "jti": URL_SAFE_NO_PAD.encode(jti),
            "iat": iat,
            "exp": iat + ASSERTION_LIFETIME_SECS,
        });
        let mut jwt = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = match &self.signer {
            Signer::Es256(key) => key
                .sign(&self.rng, jwt.as_bytes())
                .map(|s| s.as_ref().to_vec()),
            Signer::Rs256(key) => {
                let mut s = vec![0; key.public().modulus_len()];
                key.sign(
                    &signature::RSA_PKCS1_SHA256,
                    &self.rng,
                    jwt.as_bytes(),
                    &mut s,
                )
                .map(|()| s)
            }
        }
        .map_err(|_| KeyError("the key could not sign the assertion".into()))?;
        jwt.push('.');
        jwt.push_str(&URL_SAFE_NO_PAD.encode(signature));
        Ok(jwt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p256_pem() -> String {
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .expect("a P-256 key")
            .serialize_pem()
    }

    fn decode(part: &str) -> serde_json::Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).expect("base64url")).expect("JSON")
    }

    #[test]
    fn an_es256_assertion_verifies_with_the_public_key_and_names_the_client() {
        let key = ClientKey::from_pem(p256_pem().as_bytes(), Some("k1".into())).expect("key");
        let now = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
        let jwt = key
            .assertion("acme-client", "https://idp.example.com/token", now)
            .expect("signed");
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header = decode(parts[0]);
        assert_eq!(header["alg"], "ES256");
        assert_eq!(header["kid"], "k1");
        let claims = decode(parts[1]);
        assert_eq!(claims["iss"], "acme-client");
        assert_eq!(claims["sub"], "acme-client");
        assert_eq!(claims["aud"], "https://idp.example.com/token");
        assert_eq!(claims["iat"], 1_800_000_000u64);
        assert_eq!(claims["exp"], 1_800_000_060u64);
        let Signer::Es256(pair) = &key.signer else {
            panic!("an EC key signs ES256");
        };
        let public = signature::UnparsedPublicKey::new(
            &signature::ECDSA_P256_SHA256_FIXED,
            pair.public_key().as_ref(),
        );
        let signed = format!("{}.{}", parts[0], parts[1]);
        let sig = URL_SAFE_NO_PAD.decode(parts[2]).expect("base64url");
        public.verify(signed.as_bytes(), &sig).expect("verifies");
        // Each assertion is fresh: servers refuse a replayed jti.
        let again = key
            .assertion("acme-client", "https://idp.example.com/token", now)
            .expect("signed");
        assert_ne!(
            decode(again.split('.').nth(1).expect("claims"))["jti"],
            claims["jti"]
        );
    }

    #[test]
    fn the_public_jwk_carries_the_point_and_the_kid() {
        let key = ClientKey::from_pem(p256_pem().as_bytes(), Some("k1".into())).expect("key");
        let jwk = key.public_jwk();
        assert_eq!(jwk["kty"], "EC");
        assert_eq!(jwk["kid"], "k1");
        assert_eq!(
            URL_SAFE_NO_PAD
                .decode(jwk["x"].as_str().expect("x"))
                .expect("b64")
                .len(),
            32
        );
        assert!(!format!("{key:?}").contains("BEGIN"));
    }

    #[test]
    fn keys_that_cannot_sign_say_what_to_do() {
        let e = ClientKey::from_pem(b"not a key", None).expect_err("refused");
        assert!(e.to_string().contains("PKCS#8"), "{e}");
        let cert = rcgen::generate_simple_self_signed(vec!["x".into()]).expect("cert");
        let e = ClientKey::from_pem(cert.cert.pem().as_bytes(), None).expect_err("refused");
        assert!(e.to_string().contains("no PEM private key"), "{e}");
    }

    #[test]
    fn an_rsa_key_signs_rs256_and_its_jwk_holds_the_modulus() {
        // A throwaway 2048-bit key made for this test (`openssl genpkey -algorithm RSA`).
        let pem = include_bytes!("testdata/rsa2048-test-key.pem");
        let key = ClientKey::from_pem(pem, None).expect("key");
        assert_eq!(key.alg(), "RS256");
        let jwt = key
            .assertion(
                "acme-client",
                "https://idp.example.com/token",
                SystemTime::now(),
            )
            .expect("signed");
        let (signed, sig) = jwt.rsplit_once('.').expect("three parts");
        let Signer::Rs256(pair) = &key.signer else {
            panic!("an RSA key signs RS256");
        };
        signature::UnparsedPublicKey::new(
            &signature::RSA_PKCS1_2048_8192_SHA256,
            pair.public().as_ref(),
        )
        .verify(
            signed.as_bytes(),
            &URL_SAFE_NO_PAD.decode(sig).expect("b64"),
        )
        .expect("verifies");
        let jwk = key.public_jwk();
        let n = URL_SAFE_NO_PAD
            .decode(jwk["n"].as_str().expect("n"))
            .expect("b64");
        assert_eq!(n.len(), 256);
        assert_eq!(jwk["e"], "AQAB");
    }
}
