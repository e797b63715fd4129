//! Criterion benchmark of the login cost that argon2id dominates: one password verification
//! with the configured (default: OWASP) parameters, on the blocking pool behind the
//! semaphore, as `POST /auth/login` does it, beside a wrong password and an unknown user
//! (the dummy hash), which must cost the same.
//!
//! `login_imported_schemes`: a right password against each imported scheme (bcrypt cost 10
//! and 12, scrypt and pbkdf2-sha256 at their crates' recommendations, argon2id OWASP for
//! comparison), and a failure (unknown user) once all of them are stored: every failure
//! then computes one hash of each kind, so it costs their sum (see `src/password.rs`).

use std::hint::black_box;

use argon2::password_hash::{PasswordHasher, SaltString};
use criterion::{Criterion, criterion_group, criterion_main};
use gatehouse::password::{Hasher, PasswordSettings};

fn bench_login(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let hasher = Hasher::new(&PasswordSettings::default()).unwrap();
    let stored = runtime
        .block_on(hasher.hash("correct horse battery".to_string()))
        .unwrap();
    let mut group = c.benchmark_group("login_argon2id_owasp_defaults");
    group.sample_size(20);
    group.bench_function("right_password", |b| {
        b.iter(|| {
            runtime.block_on(hasher.verify(
                black_box("correct horse battery".to_string()),
                Some(stored.clone()),
            ))
        })
    });
    group.bench_function("wrong_password", |b| {
        b.iter(|| {
            runtime.block_on(hasher.verify(
                black_box("wrong horse battery".to_string()),
                Some(stored.clone()),
            ))
        })
    });
    group.bench_function("unknown_user_dummy_hash", |b| {
        b.iter(|| {
            runtime.block_on(hasher.verify(black_box("correct horse battery".to_string()), None))
        })
    });
    group.finish();
}

fn bench_imported(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let hasher = Hasher::new(&PasswordSettings::default()).unwrap();
    let password = "correct horse battery";
    let salt = SaltString::encode_b64(b"bench-salt-16byt").unwrap();
    let schemes: Vec<(&str, String)> = vec![
        ("bcrypt_cost_10", bcrypt::hash(password, 10).unwrap()),
        ("bcrypt_cost_12", bcrypt::hash(password, 12).unwrap()),
        (
            "scrypt_ln17_r8_p1",
            scrypt::Scrypt
                .hash_password(password.as_bytes(), &salt)
                .unwrap()
                .to_string(),
        ),
        (
            "pbkdf2_sha256_600k",
            pbkdf2::Pbkdf2
                .hash_password_customized(
                    password.as_bytes(),
                    Some(pbkdf2::Algorithm::Pbkdf2Sha256.ident()),
                    None,
                    pbkdf2::Params::default(),
                    &salt,
                )
                .unwrap()
                .to_string(),
        ),
        (
            "argon2id_owasp",
            runtime.block_on(hasher.hash(password.to_string())).unwrap(),
        ),
    ];
    let mut group = c.benchmark_group("login_imported_schemes");
    group.sample_size(10);
    group.warm_up_time(std::time::Duration::from_secs(1));
    group.measurement_time(std::time::Duration::from_secs(4));
    for (name, stored) in &schemes {
        group.bench_function(format!("right_password/{name}"), |b| {
            b.iter(|| {
                runtime
                    .block_on(hasher.verify(black_box(password.to_string()), Some(stored.clone())))
            })
        });
    }
    runtime.block_on(hasher.learn(schemes.iter().map(|(_, h)| h.clone()).collect()));
    assert_eq!(hasher.failure_kinds().len(), schemes.len());
    group.bench_function("failure_with_all_five_kinds_stored", |b| {
        b.iter(|| runtime.block_on(hasher.verify(black_box(password.to_string()), None)))
    });
    group.finish();
}

criterion_group!(benches, bench_login, bench_imported);
criterion_main!(benches);
