//! `gatehouse store copy` (issue 9, point 6): every record, secrets in hash form, from one
//! store to another. A sled store filled through the real endpoints is copied into a fresh
//! PostgreSQL schema and from there into a fresh sled store; a gatehouse on each copy then
//! behaves as the original would have: the password still logs in, the pre-copy refresh
//! token refreshes, a rotated one is detected as reuse, the logged-out access token stays
//! revoked, the reset link works once, the lockout counter goes on counting. Also: a
//! non-empty target is refused without `--into-nonempty` and checked in full with it, a
//! store a server holds is refused, an interrupted sled copy is never served, and the real
//! binary prints the counts.
//!
//! `timing` (ignored; run it with `--ignored --nocapture`, in release) measures a copy of
//! 20,000 users with a session each (`GATEHOUSE_COPY_USERS` for another number).

use std::io::Write as _;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Instant;

use gatehouse::config::StoreConfig;
use gatehouse::store::copy::{self, CopyError, CopyOptions, CopyReport, ImportMode, Kind};
use gatehouse::store::sled::SledStore;
use gatehouse::store::{self, Store, StoreError, StoreStats, SyncStore, UserRecord, new_id};
use http::Method;
use serde_json::json;

use crate::harness::{Gatehouse, PASSWORD, ROUTES, SECRET, Setup};
use crate::pg::{Schema, config};

const NEW_PASSWORD: &str = "a brand new passphrase";
const DEBUG_TOKENS: (&str, &str) = ("GATEHOUSE_AUTH_EXPOSE_DEBUG_TOKENS", "true");

fn sled_store(path: &Path) -> StoreConfig {
    config(&format!("path = {:?}", path.display().to_string())).store
}

fn pg_store(schema: &Schema) -> StoreConfig {
    schema.config("").store
}

async fn copy_stores(
    from: &StoreConfig,
    to: &StoreConfig,
    into_nonempty: bool,
) -> Result<CopyReport, CopyError> {
    copy::copy(
        from,
        to,
        &CopyOptions {
            into_nonempty,
            // Small pages, so that every kind spans several chunks in the tests.
            batch: 2,
        },
    )
    .await
}

async fn stats_of(config: &StoreConfig) -> StoreStats {
    let text_config = config_with(config);
    let store = store::open(&text_config).await.unwrap();
    store.stats().await.unwrap()
}

/// A whole config around a store config (what `store::open` takes).
fn config_with(store: &StoreConfig) -> gatehouse::config::Config {
    let mut config = config("");
    config.store = store.clone();
    config
}

/// What the copied stores must still honour.
struct Before {
    /// Access token of the live session.
    live_access: String,
    /// The live session's current refresh token.
    current_refresh: String,
    /// The live session's first refresh token, rotated before the copy.
    rotated_refresh: String,
    /// Access and refresh token of the session that logged out before the copy.
    revoked_access: String,
    revoked_refresh: String,
    /// A pending password-reset token.
    reset_token: String,
    /// Virtual time when the source stopped.
    now: u64,
}

async fn reset(gh: &Gatehouse, token: &str, password: &str) -> crate::harness::Reply {
    gh.json(
        Method::POST,
        "/auth/reset-password",
        None,
        json!({"token": token, "new_password": password}),
    )
    .await
}

async fn api(gh: &Gatehouse, access: &str) -> crate::harness::Reply {
    gh.get_with(
        "/api/items",
        &[("authorization", &format!("Bearer {access}"))],
    )
    .await
}

/// Fills a store through the endpoints: a user, a refresh rotation, a logout (a
/// revocation), a forgot-password (a reset token), a failed login (a counter).
async fn populate(gh: &Gatehouse) -> Before {
    gh.register("ada@example.com").await;
    let (_, first_refresh) = gh.session("ada@example.com", PASSWORD).await;
    let rotated = gh.refresh(&first_refresh).await.expect(200).json();
    let live_access = rotated["access_token"].as_str().unwrap().to_string();
    let current_refresh = rotated["refresh_token"].as_str().unwrap().to_string();

    let (revoked_access, revoked_refresh) = gh.session("ada@example.com", PASSWORD).await;
    gh.json(
        Method::POST,
        "/auth/logout",
        Some(&revoked_access),
        json!({}),
    )
    .await
    .expect(200);
    api(gh, &revoked_access)
        .await
        .expect_error(401, "TOKEN_REVOKED");

    let forgot = gh
        .json(
            Method::POST,
            "/auth/forgot-password",
            None,
            json!({"email": "ada@example.com"}),
        )
        .await
        .expect(202)
        .json();
    let reset_token = forgot["debug_token"]
        .as_str()
        .expect("debug_token")
        .to_string();

    gh.login("ghost@example.com", "not the password")
        .await
        .expect_error(401, "INVALID_CREDENTIALS");
    Before {
        live_access,
        current_refresh,
        rotated_refresh: first_refresh,
        revoked_access,
        revoked_refresh,
        reset_token,
        now: gh.now.load(Ordering::SeqCst),
    }
}

/// A gatehouse on a copied store behaves as the original would have.
async fn check_copy(gh: &Gatehouse, before: &Before) {
    // The revocation came along; the live session's access token still works.
    api(gh, &before.revoked_access)
        .await
        .expect_error(401, "TOKEN_REVOKED");
    api(gh, &before.live_access).await.expect(200);
    gh.refresh(&before.revoked_refresh)
        .await
        .expect_error(401, "TOKEN_INVALID");

    // The counter came along: one failure before the copy, four after, and the fifth
    // attempt meets the lock (five failures lock by default).
    for _ in 0..4 {
        gh.login("ghost@example.com", "not the password").await;
    }
    gh.login("ghost@example.com", "not the password")
        .await
        .expect_error(423, "ACCOUNT_LOCKED");

    // The password hash came along.
    gh.login("ada@example.com", PASSWORD).await.expect(200);

    // The current refresh token refreshes; the rotated one is reuse, which ends the family.
    let next = gh.refresh(&before.current_refresh).await.expect(200).json();
    let next_refresh = next["refresh_token"].as_str().unwrap().to_string();
    gh.refresh(&before.rotated_refresh)
        .await
        .expect_error(401, "TOKEN_REVOKED");
    gh.refresh(&next_refresh)
        .await
        .expect_error(401, "TOKEN_INVALID");

    // The reset link works, once.
    reset(gh, &before.reset_token, NEW_PASSWORD)
        .await
        .expect(200);
    reset(gh, &before.reset_token, NEW_PASSWORD)
        .await
        .expect_error(400, "INVALID_RESET_TOKEN");
    gh.login("ada@example.com", NEW_PASSWORD).await.expect(200);
}

fn assert_counts(report: &CopyReport, stats: &StoreStats) {
    let c = |kind| report.copied.get(kind) as usize;
    assert_eq!(c(Kind::User), stats.users, "{report:?}");
    assert_eq!(c(Kind::Session), stats.sessions, "{report:?}");
    assert_eq!(
        c(Kind::RefreshCurrent) + c(Kind::RefreshRotated),
        stats.refresh_tokens,
        "{report:?}"
    );
    assert_eq!(
        c(Kind::PasswordReset),
        stats.password_reset_tokens,
        "{report:?}"
    );
    assert_eq!(
        c(Kind::EmailVerification),
        stats.email_verification_tokens,
        "{report:?}"
    );
    assert_eq!(c(Kind::Revocation), stats.revocations, "{report:?}");
    assert_eq!(c(Kind::LoginFailure), stats.login_failures, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sled_to_postgres_and_back_keeps_passwords_sessions_and_links() {
    let Some(schema) = Schema::create().await else {
        return;
    };
    let mut gh = Gatehouse::start(ROUTES, &[DEBUG_TOKENS]).await;
    let before = populate(&gh).await;
    let source = sled_store(&gh.dir.path().join("store"));
    let target = pg_store(&schema);

    // While the server holds the sled store: refused, clearly, and nothing is created.
    let held = copy_stores(&source, &target, false).await.unwrap_err();
    assert!(
        matches!(held, CopyError::Source(StoreError::Locked { .. })),
        "{held:?}"
    );
    assert!(
        held.to_string().contains("held by another process"),
        "{held}"
    );
    let reverse = copy_stores(&target, &source, true).await.unwrap_err();
    assert!(
        matches!(
            reverse,
            CopyError::Source(StoreError::SchemaMismatch { found: 0, .. })
        ),
        "a source without a schema is not migrated: {reverse:?}"
    );

    // Stopped (the directory kept): sled → PostgreSQL.
    let dir = std::mem::replace(&mut gh.dir, tempfile::tempdir().unwrap());
    let upstream = gh.upstream;
    gh.stop().await;
    let source = sled_store(&dir.path().join("store"));
    let source_stats = stats_of(&source).await;
    assert_eq!(
        (
            source_stats.users,
            source_stats.sessions,
            source_stats.refresh_tokens,
            source_stats.password_reset_tokens,
            source_stats.revocations,
            source_stats.login_failures
        ),
        (1, 2, 3, 1, 1, 1),
        "{source_stats:?}"
    );
    let report = copy_stores(&source, &target, false).await.unwrap();
    assert_counts(&report, &source_stats);
    assert_eq!(report.copied.get(Kind::RefreshRotated), 1, "{report:?}");
    assert_eq!(report.copied.get(Kind::RefreshCurrent), 2, "{report:?}");
    let every: Vec<&str> = store::postgres::MIGRATIONS.iter().map(|m| m.name).collect();
    assert_eq!(report.migrations, every);
    assert!(report.target_was_empty);
    assert_eq!(report.present.total(), 0);
    assert_eq!(stats_of(&target).await, source_stats);

    // A non-empty target: refused without the flag; with it, everything is already there.
    let refused = copy_stores(&source, &target, false).await.unwrap_err();
    assert!(matches!(refused, CopyError::NotEmpty(_)), "{refused:?}");
    assert!(refused.to_string().contains("--into-nonempty"), "{refused}");
    let again = copy_stores(&source, &target, true).await.unwrap();
    assert_eq!(again.copied.total(), 0, "{again:?}");
    assert_eq!(again.present, report.copied, "{again:?}");
    assert_eq!(stats_of(&target).await, source_stats);

    // PostgreSQL → a fresh sled store.
    let back_dir = tempfile::tempdir().unwrap();
    let back = sled_store(&back_dir.path().join("store"));
    let report_back = copy_stores(&target, &back, false).await.unwrap();
    assert_eq!(report_back.copied, report.copied, "{report_back:?}");
    assert_eq!(stats_of(&back).await, source_stats);

    // Each copy serves as the original would have.
    let on_postgres = Gatehouse::launch_in(
        Setup {
            env: &[
                DEBUG_TOKENS,
                ("GATEHOUSE_STORE_BACKEND", "postgres"),
                ("GATEHOUSE_STORE_URL", &schema.url("")),
            ],
            ..Setup::new(upstream, ROUTES)
        },
        tempfile::tempdir().unwrap(),
        before.now,
    )
    .await;
    check_copy(&on_postgres, &before).await;
    on_postgres.stop().await;

    let on_sled = Gatehouse::launch_in(
        Setup {
            env: &[DEBUG_TOKENS],
            ..Setup::new(upstream, ROUTES)
        },
        back_dir,
        before.now,
    )
    .await;
    check_copy(&on_sled, &before).await;
    on_sled.stop().await;
}

fn user(email: &str, username: Option<&str>) -> UserRecord {
    UserRecord {
        id: new_id(),
        email: email.into(),
        username: username.map(Into::into),
        name: Some("Ada".into()),
        password_hash: "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaA".into(),
        roles: vec!["reader".into(), "creator".into()],
        email_verified: true,
        locked: false,
        created_at: 100,
        updated_at: 100,
        password_changed_at: 100,
    }
}

/// A sled store with a few records written through the store API.
async fn small_sled_store(path: &Path) -> StoreStats {
    let store = store::open(&config_with(&sled_store(path))).await.unwrap();
    let ada = user("ada@example.com", Some("ada"));
    store.create_user(&ada).await.unwrap();
    store
        .create_user(&user("bob@example.com", None))
        .await
        .unwrap();
    let session = store::SessionRecord {
        id: new_id(),
        user_id: ada.id.clone(),
        created_at: 100,
        last_used_at: 100,
        expires_at: 10_000,
        revoked: false,
        otp: true,
    };
    store
        .create_session(&session, &[1; 32], None, 8)
        .await
        .unwrap();
    store
        .rotate_refresh(&[1; 32], &[2; 32], 110, 0)
        .await
        .unwrap();
    store
        .put_revocation(&store::Revocation::Session {
            sid: session.id.clone(),
            until: 5_000,
        })
        .await
        .unwrap();
    let policy = store::LockoutPolicy {
        max_failures: 5,
        window_secs: 900,
        lock_secs: 900,
    };
    store
        .record_login_failure("Bob@Example.com", 120, &policy)
        .await
        .unwrap();
    store
        .put_one_time(
            store::OneTimeKind::EmailVerification,
            &[3; 32],
            &store::OneTimeRecord {
                user_id: ada.id.clone(),
                email: ada.email.clone(),
                expires_at: 9_000,
            },
        )
        .await
        .unwrap();
    store.put_mfa_pending(&small_mfa(&ada.id)).await.unwrap();
    let codes = [[5; 32], [6; 32]];
    store
        .enable_mfa(&ada.id, b"sealed secret", 60_000_000, &codes)
        .await
        .unwrap();
    store
        .put_mfa_challenge(&[4; 32], &small_challenge(&ada))
        .await
        .unwrap();
    store.stats().await.unwrap()
}

fn small_mfa(user_id: &str) -> store::MfaRecord {
    store::MfaRecord {
        user_id: user_id.into(),
        secret: b"sealed secret".to_vec(),
        enabled: false,
        last_step: 0,
        recovery_codes: Vec::new(),
        created_at: 100,
    }
}

fn small_challenge(user: &UserRecord) -> store::MfaChallenge {
    store::MfaChallenge {
        user_id: user.id.clone(),
        login: user.email.clone(),
        password_fingerprint: gatehouse::token::token_hash(&user.password_hash),
        expires_at: 9_000,
    }
}

/// A second factor (sealed secret, last accepted step, unused recovery codes), its pending
/// challenge and a session's `otp` come through sled → PostgreSQL → sled unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_factors_and_their_challenges_are_copied() {
    let Some(schema) = Schema::create().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let source = sled_store(&dir.path().join("store"));
    small_sled_store(&dir.path().join("store")).await;
    let target = pg_store(&schema);
    let report = copy_stores(&source, &target, false).await.unwrap();
    assert_eq!(report.copied.get(Kind::Mfa), 1, "{report:?}");
    assert_eq!(report.copied.get(Kind::MfaChallenge), 1, "{report:?}");
    let back_dir = tempfile::tempdir().unwrap();
    let back = sled_store(&back_dir.path().join("store"));
    let report_back = copy_stores(&target, &back, false).await.unwrap();
    assert_eq!(report_back.copied, report.copied, "{report_back:?}");

    for config in [&target, &back] {
        let store = store::open(&config_with(config)).await.unwrap();
        let ada = store
            .find_user_by_email("ada@example.com")
            .await
            .unwrap()
            .unwrap();
        let mfa = store.get_mfa(&ada.id).await.unwrap().unwrap();
        assert!(mfa.enabled);
        assert_eq!(mfa.secret, b"sealed secret");
        assert_eq!(mfa.last_step, 60_000_000);
        assert_eq!(mfa.recovery_codes, vec![[5; 32], [6; 32]]);
        // Replay and reuse stay refused: the step and the codes came along.
        assert!(!store.accept_mfa_step(&ada.id, 60_000_000).await.unwrap());
        assert!(store.take_recovery_code(&ada.id, &[6; 32]).await.unwrap());
        assert_eq!(
            store.take_mfa_challenge(&[4; 32], 200).await.unwrap(),
            Some(small_challenge(&ada))
        );
        let page = store.list_users(10, None).await.unwrap();
        assert_eq!(page.users.len(), 2);
        drop(store);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflicting_record_stops_the_copy_before_anything_is_written() {
    let source_dir = tempfile::tempdir().unwrap();
    let source = sled_store(&source_dir.path().join("store"));
    small_sled_store(&source_dir.path().join("store")).await;

    let mut targets = Vec::new();
    let target_dir = tempfile::tempdir().unwrap();
    targets.push(sled_store(&target_dir.path().join("store")));
    let schema = Schema::create().await;
    if let Some(schema) = &schema {
        targets.push(pg_store(schema));
    }
    for target in &targets {
        // The target has its own user under Ada's address (another id): a conflict.
        let store = copy_target(target).await;
        store
            .create_user(&user("ADA@example.com", None))
            .await
            .unwrap();
        let before = store.stats().await.unwrap();
        drop(store);
        let error = copy_stores(&source, target, true).await.unwrap_err();
        assert!(
            matches!(&error, CopyError::Target(StoreError::CopyConflict(what))
                if what.contains("another user with the email of user")),
            "{error:?}"
        );
        let shown = error.to_string();
        assert!(shown.contains("nothing was copied"), "{shown}");
        assert!(!shown.contains("ada@"), "no email in messages: {shown}");
        assert_eq!(stats_of(target).await, before, "nothing was written");
    }
}

/// Opens a target store as a copy would (migrated, and a sled one even if incomplete).
async fn copy_target(config: &StoreConfig) -> std::sync::Arc<dyn Store> {
    store::open(&config_with(config)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_sled_copy_is_never_served_and_a_rerun_finishes_it() {
    let source_dir = tempfile::tempdir().unwrap();
    let source = sled_store(&source_dir.path().join("store"));
    let stats = small_sled_store(&source_dir.path().join("store")).await;

    // A copy killed after its first chunk: the mark is on disk with part of the records.
    let target_dir = tempfile::tempdir().unwrap();
    let target_path = target_dir.path().join("store");
    {
        let from = SledStore::open(source_dir.path().join("store")).unwrap();
        let to = SledStore::open_for_copy(&target_path).unwrap();
        to.import_begin(ImportMode::Write).unwrap();
        let mut first = None;
        from.export(3, &mut |records| {
            first.get_or_insert(records);
            Ok(())
        })
        .unwrap();
        let mut imported = copy::Imported::default();
        to.import_records(&first.unwrap(), ImportMode::Write, &mut imported)
            .unwrap();
        assert_eq!(imported.copied.total(), 3);
    }
    let target = sled_store(&target_path);
    match store::open(&config_with(&target)).await {
        Err(e @ StoreError::Incomplete { .. }) => {
            assert!(e.to_string().contains("--into-nonempty"), "{e}");
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("an incomplete store was opened for serving"),
    }
    let refused = copy_stores(&source, &target, false).await.unwrap_err();
    assert!(matches!(refused, CopyError::NotEmpty(_)), "{refused:?}");
    let finished = copy_stores(&source, &target, true).await.unwrap();
    assert_eq!(finished.present.total(), 3, "{finished:?}");
    assert_eq!(
        finished.copied.total() + 3,
        stats.users as u64
            + stats.sessions as u64
            + stats.refresh_tokens as u64
            + stats.email_verification_tokens as u64
            + stats.revocations as u64
            + stats.login_failures as u64
            // The second factor and its challenge, which `StoreStats` does not count.
            + 2
    );
    assert_eq!(stats_of(&target).await, stats);

    // sled → sled onto itself is refused before anything is opened.
    let same = copy_stores(&source, &source, true).await.unwrap_err();
    assert!(matches!(same, CopyError::SameStore), "{same:?}");
    // A source that does not exist is not created.
    let missing = sled_store(&target_dir.path().join("nothing-here"));
    let error = copy_stores(&missing, &target, true).await.unwrap_err();
    assert!(matches!(error, CopyError::NoSource(_)), "{error:?}");
    assert!(!target_dir.path().join("nothing-here").exists());
}

// ---------------------------------------------------------------------------------------
// The real binary
// ---------------------------------------------------------------------------------------

fn write_config(dir: &Path, name: &str, store_section: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "[upstream]\nurl = \"http://127.0.0.1:9\"\n[tokens]\nsecret = \"{SECRET}\"\n\
             [store]\n{store_section}\n"
        ),
    )
    .unwrap();
    path
}

fn run_copy(
    from: &Path,
    to: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (Option<i32>, String, String) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_gatehouse"));
    for (name, _) in std::env::vars() {
        if name.starts_with("GATEHOUSE_") {
            command.env_remove(name);
        }
    }
    let out = command
        .args(["store", "copy", "--from"])
        .arg(from)
        .arg("--to")
        .arg(to)
        .args(extra)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_binary_copies_prints_counts_and_refuses_what_it_should() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    rt.block_on(small_sled_store(&data));
    let from = write_config(
        dir.path(),
        "old.toml",
        &format!("path = {:?}", data.display().to_string()),
    );

    let Some(schema) = rt.block_on(Schema::create()) else {
        return;
    };
    let to = write_config(
        dir.path(),
        "new.toml",
        &format!("backend = \"postgres\"\nurl = {:?}", schema.url("")),
    );

    // A store variable would apply to both files: refused.
    let (code, _, stderr) = run_copy(&from, &to, &[], &[("GATEHOUSE_STORE_URL", "postgres://x")]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("GATEHOUSE_STORE_URL"), "{stderr}");

    // Held by another process (this one): refused, nothing copied.
    let held = rt
        .block_on(store::open(&config_with(&sled_store(&data))))
        .unwrap();
    let (code, stdout, stderr) = run_copy(&from, &to, &[], &[]);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(
        stderr.contains("is held by another process") && stderr.contains("Nothing was copied"),
        "{stderr}"
    );
    drop(held);

    let (code, stdout, stderr) = run_copy(&from, &to, &[], &[]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].starts_with("copied the sled store of "),
        "{stdout}"
    );
    let migrations = store::postgres::MIGRATIONS;
    for (i, m) in migrations.iter().enumerate() {
        assert_eq!(
            lines[1 + i],
            format!("applied migration {} to the target first", m.name)
        );
    }
    let first = 1 + migrations.len();
    let expected = [
        ("users", 2),
        ("sessions", 1),
        ("refresh tokens (current)", 1),
        ("refresh tokens (rotated)", 1),
        ("password-reset tokens", 0),
        ("email-verification tokens", 1),
        ("revocations", 1),
        ("login-failure counters", 1),
        ("second factors (TOTP)", 1),
        ("second-factor challenges", 1),
    ];
    for (i, (label, n)) in expected.iter().enumerate() {
        assert_eq!(
            lines[first + i],
            format!("  {label:<28}{n:>10}"),
            "{stdout}"
        );
    }
    let last = first + expected.len();
    assert!(
        lines[last].starts_with("10 records copied in ")
            && lines[last].ends_with("s, committed in one transaction"),
        "{stdout}"
    );
    assert_eq!(lines.len(), last + 1, "{stdout}");

    // Again: the target is not empty.
    let (code, stdout, stderr) = run_copy(&from, &to, &[], &[]);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(
        stderr.contains("the target store is not empty (2 users")
            && stderr.contains("--into-nonempty"),
        "{stderr}"
    );
    // With the flag: everything is already there.
    let (code, stdout, stderr) = run_copy(&from, &to, &["--into-nonempty"], &[]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!("  {:<28}{:>10}  (2 already there)", "users", 0)),
        "{stdout}"
    );
    assert!(stdout.contains("\n0 records copied in "), "{stdout}");

    // And back into a fresh sled store, which a server can then open.
    let back = dir.path().join("back");
    let back_config = write_config(
        dir.path(),
        "back.toml",
        &format!("path = {:?}", back.display().to_string()),
    );
    let (code, stdout, stderr) = run_copy(&to, &back_config, &[], &[]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("10 records copied in "), "{stdout}");
    assert!(stdout.contains(", flushed to disk"), "{stdout}");
    let stats = rt.block_on(stats_of(&sled_store(&back)));
    assert_eq!((stats.users, stats.refresh_tokens), (2, 2), "{stats:?}");
    drop(schema);
}

// ---------------------------------------------------------------------------------------
// Timing
// ---------------------------------------------------------------------------------------

/// Copies a PostgreSQL store of N users (a session each, with a current and a rotated
/// refresh token) into sled and back into a fresh schema, and prints the times.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a measurement: cargo test --release -- --ignored store_copy::timing --nocapture"]
async fn timing() {
    let users: u64 = std::env::var("GATEHOUSE_COPY_USERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let Some(first) = Schema::create().await else {
        return;
    };
    drop(first.open().await);
    let admin = first.admin().await;
    let started = Instant::now();
    admin
        .batch_execute(&format!(
            "INSERT INTO users (id, email, email_folded, username, username_folded, name, \
               password_hash, roles, email_verified, locked, created_at, updated_at, \
               password_changed_at) \
             SELECT 'u' || lpad(g::text, 9, '0'), 'user' || g || '@example.com', \
               'user' || g || '@example.com', 'user' || g, 'user' || g, NULL, \
               '$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$' || md5(g::text), \
               ARRAY['reader'], true, false, 1800000000, 1800000000, 1800000000 \
             FROM generate_series(1, {users}) g;
             INSERT INTO sessions (id, user_id, created_at, last_used_at, expires_at, revoked) \
             SELECT 's' || lpad(g::text, 9, '0'), 'u' || lpad(g::text, 9, '0'), 1800000000, \
               1800000000, 1802592000, false FROM generate_series(1, {users}) g;
             INSERT INTO refresh_tokens (hash, session_id, rotated, expires_at) \
             SELECT sha256(convert_to('c' || g, 'UTF8')), 's' || lpad(g::text, 9, '0'), false, \
               1802592000 FROM generate_series(1, {users}) g;
             INSERT INTO refresh_tokens (hash, session_id, rotated, expires_at) \
             SELECT sha256(convert_to('r' || g, 'UTF8')), 's' || lpad(g::text, 9, '0'), true, \
               1802592000 FROM generate_series(1, {users}) g;"
        ))
        .await
        .unwrap();
    let filled = started.elapsed();

    let dir = tempfile::tempdir().unwrap();
    let sled = sled_store(&dir.path().join("store"));
    let to_sled = copy::copy(&pg_store(&first), &sled, &CopyOptions::default())
        .await
        .unwrap();
    let second = Schema::create().await.unwrap();
    let to_pg = copy::copy(&sled, &pg_store(&second), &CopyOptions::default())
        .await
        .unwrap();
    assert_eq!(to_pg.copied, to_sled.copied);
    assert_eq!(to_pg.copied.get(Kind::User), users);
    let _ = writeln!(
        std::io::stderr(),
        "\nstore copy of {users} users, {} records: filled PostgreSQL in {filled:.2?}; \
         PostgreSQL -> sled {:.2?}; sled -> PostgreSQL {:.2?}",
        to_sled.copied.total(),
        to_sled.elapsed,
        to_pg.elapsed
    );
}
