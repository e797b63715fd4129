//! Criterion benchmark of the login cost that argon2id dominates: one password verification
//! with the configured (default: OWASP) parameters, on the blocking pool behind the
//! semaphore, as `POST /auth/login` does it, beside a wrong password and an unknown user
//! (the dummy hash), which must cost the same.

use std::hint::black_box;

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

criterion_group!(benches, bench_login);
criterion_main!(benches);
