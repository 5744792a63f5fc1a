//! Criterion benchmarks for the paths every request leans on: the scope algebra, the policy
//! check, token signing and verification, sealing, and password hashing (recorded, not
//! optimised away: it is meant to be slow). Run with `cargo bench`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use josekit::jwk::KeyPair;
use josekit::jws::{JwsHeader, ES256, RS256};
use josekit::jwt::{self, JwtPayload};
use ward::crypto::seal::{Aad, MasterKey, Sealer};
use ward::smart::policy::{check, FhirRequest};
use ward::smart::scopes::{intersect, ScopeSet};

const REQUESTED: &str = "launch/patient openid fhirUser offline_access patient/*.rs user/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory user/Condition.cruds user/*.read";
const CEILING: &str =
    "user/*.rs user/Observation.cu user/MedicationAdministration.cu user/DocumentReference.c";

fn scopes(c: &mut Criterion) {
    c.bench_function("scopes/parse", |b| {
        b.iter(|| ScopeSet::parse(black_box(REQUESTED)))
    });
    let (requested, _) = ScopeSet::parse(REQUESTED);
    let (ceiling, _) = ScopeSet::parse(CEILING);
    c.bench_function("scopes/intersect", |b| {
        b.iter(|| intersect(black_box(&requested), black_box(&ceiling)))
    });
}

fn policy(c: &mut Criterion) {
    let (granted, _) =
        ScopeSet::parse("patient/Observation.rs patient/Condition.rs launch/patient");
    c.bench_function("policy/parse_and_check", |b| {
        b.iter(|| {
            let request = FhirRequest::parse(
                "GET",
                black_box("Observation?patient=123&category=laboratory&_count=50"),
                None,
            );
            request.map(|r| check(&granted, Some("123"), &r))
        })
    });
}

fn payload() -> JwtPayload {
    let mut p = JwtPayload::new();
    p.set_issuer("https://ward.example.org");
    p.set_subject("dr.who");
    p.set_audience(vec!["https://fhir.example.org/r4"]);
    let _ = p.set_claim(
        "scope",
        Some("launch/patient openid fhirUser patient/Observation.rs".into()),
    );
    let _ = p.set_claim("patient", Some("123".into()));
    p.set_jwt_id("3b1c2a9f-0d4e-4b7a-9c1f-2e6d5a4b3c2d");
    p
}

fn tokens(c: &mut Criterion) {
    let payload = payload();
    let mut header = JwsHeader::new();
    header.set_token_type("at+jwt");
    header.set_key_id("bench");

    let ec = ES256.generate_key_pair().expect("ec key");
    let ec_signer = ES256
        .signer_from_der(ec.to_der_private_key())
        .expect("signer");
    let ec_verifier = ES256
        .verifier_from_der(ec.to_der_public_key())
        .expect("verifier");
    let ec_token = jwt::encode_with_signer(&payload, &header, &ec_signer).expect("sign");
    c.bench_function("tokens/sign_es256", |b| {
        b.iter(|| jwt::encode_with_signer(black_box(&payload), &header, &ec_signer))
    });
    c.bench_function("tokens/verify_es256", |b| {
        b.iter(|| jwt::decode_with_verifier(black_box(&ec_token), &ec_verifier))
    });

    let rsa = RS256.generate_key_pair(2048).expect("rsa key");
    let rsa_signer = RS256
        .signer_from_der(rsa.to_der_private_key())
        .expect("signer");
    let rsa_verifier = RS256
        .verifier_from_der(rsa.to_der_public_key())
        .expect("verifier");
    let rsa_token = jwt::encode_with_signer(&payload, &header, &rsa_signer).expect("sign");
    c.bench_function("tokens/sign_rs256", |b| {
        b.iter(|| jwt::encode_with_signer(black_box(&payload), &header, &rsa_signer))
    });
    c.bench_function("tokens/verify_rs256", |b| {
        b.iter(|| jwt::decode_with_verifier(black_box(&rsa_token), &rsa_verifier))
    });
}

fn sealing(c: &mut Criterion) {
    let sealer = Sealer::new(&MasterKey::generate());
    let aad = Aad {
        table: "totp_credentials",
        column: "secret_sealed",
        row: "bench",
    };
    let sealed = sealer.seal(aad, b"12345678901234567890").expect("seal");
    c.bench_function("crypto/seal", |b| {
        b.iter(|| sealer.seal(aad, black_box(b"12345678901234567890")))
    });
    c.bench_function("crypto/open", |b| {
        b.iter(|| sealer.open(aad, black_box(&sealed)))
    });
}

fn passwords(c: &mut Criterion) {
    let mut group = c.benchmark_group("password");
    group.sample_size(10);
    group.bench_function("argon2id_hash", |b| {
        b.iter(|| ward::authn::password::hash_blocking(black_box("violet tractor sings at dawn")))
    });
    group.finish();
}

/// Client-assertion verification (SMART Backend Services): the per-request cost of
/// `private_key_jwt` at `/token`, for RS384 and ES384 keys, parsed once (as Ward caches them).
fn client_assertions(c: &mut Criterion) {
    use josekit::jws::{JwsSigner, ES384, RS384};
    use serde_json::json;
    use ward::oauth::assertion::{peek_header, verify, Expectations};
    let now = 1_900_000_000;
    let audiences = vec!["https://ward.example/token".to_owned()];
    let cases: Vec<(&str, Box<dyn JwsSigner>, serde_json::Value)> = vec![
        {
            let pair = RS384.generate_key_pair(2048).unwrap();
            let mut jwk = pair.to_jwk_public_key();
            jwk.set_key_id("k");
            (
                "RS384",
                Box::new(RS384.signer_from_jwk(&pair.to_jwk_private_key()).unwrap()),
                serde_json::to_value(&jwk).unwrap(),
            )
        },
        {
            let pair = ES384.generate_key_pair().unwrap();
            let mut jwk = pair.to_jwk_public_key();
            jwk.set_key_id("k");
            (
                "ES384",
                Box::new(ES384.signer_from_jwk(&pair.to_jwk_private_key()).unwrap()),
                serde_json::to_value(&jwk).unwrap(),
            )
        },
    ];
    for (alg, signer, jwk) in cases {
        let keys = ward::clients::jwks::validate(&json!({"keys": [jwk]})).unwrap();
        let mut header = JwsHeader::new();
        header.set_key_id("k");
        let mut payload = JwtPayload::new();
        payload.set_issuer("svc");
        payload.set_subject("svc");
        payload.set_audience(vec!["https://ward.example/token"]);
        payload.set_jwt_id("j");
        payload.set_claim("exp", Some(json!(now + 240))).unwrap();
        let token = jwt::encode_with_signer(&payload, &header, signer.as_ref()).unwrap();
        let expect = Expectations {
            client_id: "svc",
            audiences: &audiences,
            registered_jku: None,
            now,
        };
        c.bench_function(&format!("assertion/verify_{alg}"), |b| {
            b.iter(|| {
                let header = peek_header(black_box(&token)).unwrap();
                verify(&token, &header, &keys, &expect).unwrap()
            })
        });
    }
}

criterion_group!(
    benches,
    scopes,
    policy,
    tokens,
    client_assertions,
    sealing,
    passwords
);
criterion_main!(benches);
