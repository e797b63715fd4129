//! The store contract (the docs on `SyncStore` and `Store`), checked against every backend:
//! sled in a temp dir, and PostgreSQL in a fresh schema of the `test` database at
//! 127.0.0.1:5432 (trust auth, user postgres), dropped when the test ends, panics included.
//!
//! Each check below is one `async fn(&Backend)`; [`contract!`] turns it into a test per
//! backend (`store_contract::sled::NAME`, `store_contract::postgres::NAME`). Checks that only
//! make sense for a shared database (migration lock, cross-replica revocation feed, TLS
//! modes, outages) are PostgreSQL tests of their own at the end.
//!
//! PostgreSQL is required: when it cannot be reached the PostgreSQL tests fail with a
//! message saying so (CI provides it). A developer without PostgreSQL runs the sled half
//! with `SKIP_POSTGRES_TESTS=1`; every skipped test then says so on stderr, past
//! the test harness's output capture. `POSTGRES_TEST_URL` points the tests at
//! another server (default `postgres://postgres@127.0.0.1:5432/test`).

use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gatehouse::config::Config;
use gatehouse::store::{
    self, FailureState, LockoutPolicy, MfaChallenge, MfaRecord, OneTimeKind, OneTimeRecord,
    PurgeStats, Revocation, RotateOutcome, SessionRecord, Store, StoreError, StoreStats, UniqueKey,
    UserRecord, UserUpdate, new_id,
};
use gatehouse::token::token_hash;
use tokio::sync::Barrier;

use crate::harness::SECRET;
use crate::pg::{SKIP_VAR, Schema, config, say_skipped};

/// The session cap the tests open sessions under (the service's).
const MAX_SESSIONS: usize = 64;
/// How long a revoked session is kept after its last use, in the purge checks.
const GRACE: u64 = 100;
/// How many times each race is run.
const RACE_ROUNDS: usize = 40;

// ---------------------------------------------------------------------------------------
// Backends
// ---------------------------------------------------------------------------------------

/// A store under test and what keeps its data alive until the test ends.
struct Backend {
    store: Arc<dyn Store>,
    /// PostgreSQL: the schema, for opening more stores ("replicas") on the same data.
    schema: Option<Arc<Schema>>,
    _dir: Option<tempfile::TempDir>,
}

impl Backend {
    async fn sled() -> Backend {
        let dir = tempfile::tempdir().unwrap();
        let section = format!("path = {:?}", dir.path().display().to_string());
        let store = store::open(&config(&section)).await.unwrap();
        Backend {
            store,
            schema: None,
            _dir: Some(dir),
        }
    }

    /// `None` (after saying so) when PostgreSQL is skipped on purpose.
    async fn postgres() -> Option<Backend> {
        let schema = Arc::new(Schema::create().await?);
        let store = schema.open().await;
        Some(Backend {
            store,
            schema: Some(schema),
            _dir: None,
        })
    }

    fn name(&self) -> &'static str {
        if self.schema.is_some() {
            "postgres"
        } else {
            "sled"
        }
    }

    /// Whether other processes share this store's data (and so its revocation feed).
    fn shared(&self) -> bool {
        self.store.revocation_signal().is_some()
    }
}

/// One test per check and backend.
macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod sled {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(&super::Backend::sled().await).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(backend) = super::Backend::postgres().await {
                        super::$name(&backend).await;
                    }
                }
            )*
        }
    };
}

contract!(
    uniqueness_is_case_folded,
    lookups_fold_and_dispatch_on_at_sign,
    conflicting_create_writes_nothing,
    update_applies_conditions_and_reindexes,
    set_password_voids_reset_links,
    delete_cascades,
    pagination_follows_id_order,
    sessions_are_capped_and_logins_checked,
    expired_sessions_are_dropped_on_create,
    rotation_and_reuse_revokes_the_family,
    rotation_refuses_invalid_tokens,
    revoking_sessions,
    revocations_load_merge_purge_and_feed,
    login_failures_count_and_lock,
    one_time_tokens_are_single_use,
    purge_removes_what_expired,
    purge_removes_revoked_families_after_the_grace,
    purge_keeps_what_still_matters,
    stats_and_health_on_an_empty_store,
    racing_take_one_time_has_one_winner,
    racing_rotation_has_one_winner,
    concurrent_sign_ups_with_one_address_yield_one_account,
    concurrent_failures_each_count_once,
    second_factor_lifecycle,
    mfa_challenges_are_single_use_and_purged,
    racing_second_factor_uses_have_one_winner,
);

// ---------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------

fn user(email: &str, username: Option<&str>) -> UserRecord {
    UserRecord {
        id: new_id(),
        email: email.into(),
        username: username.map(Into::into),
        name: None,
        password_hash: "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaA".into(),
        roles: vec!["reader".into()],
        email_verified: false,
        locked: false,
        created_at: 100,
        updated_at: 100,
        password_changed_at: 100,
    }
}

fn session(user_id: &str, now: u64, ttl: u64) -> SessionRecord {
    SessionRecord {
        id: new_id(),
        user_id: user_id.into(),
        created_at: now,
        last_used_at: now,
        expires_at: now + ttl,
        revoked: false,
        otp: false,
    }
}

fn one_time(user_id: &str, expires_at: u64) -> OneTimeRecord {
    OneTimeRecord {
        user_id: user_id.into(),
        email: "a@example.com".into(),
        expires_at,
    }
}

/// A user with one session whose first refresh token is `token`.
async fn user_with_session(
    store: &dyn Store,
    email: &str,
    token: &str,
) -> (UserRecord, SessionRecord) {
    let u = user(email, None);
    store.create_user(&u).await.unwrap();
    let s = session(&u.id, 100, 1000);
    store
        .create_session(&s, &token_hash(token), None, MAX_SESSIONS)
        .await
        .unwrap();
    (u, s)
}

fn rotated(outcome: &RotateOutcome) -> bool {
    matches!(outcome, RotateOutcome::Rotated { .. })
}

// ---------------------------------------------------------------------------------------
// Users
// ---------------------------------------------------------------------------------------

async fn uniqueness_is_case_folded(b: &Backend) {
    let store = &*b.store;
    // (existing users, new user, expected); each case in its own namespace of names.
    type Case<'a> = (
        &'a [(&'a str, Option<&'a str>)],
        (&'a str, Option<&'a str>),
        Result<(), StoreError>,
    );
    let conflict = |key| Err(StoreError::Conflict(key));
    let cases: Vec<Case> = vec![
        (&[], ("a@example.com", Some("alice")), Ok(())),
        (
            &[("a@example.com", None)],
            ("A@Example.COM", None),
            conflict(UniqueKey::Email),
        ),
        (
            &[("a@example.com", None)],
            ("  a@example.com ", None),
            conflict(UniqueKey::Email),
        ),
        (
            &[("a@example.com", Some("alice"))],
            ("b@example.com", Some("ALICE")),
            conflict(UniqueKey::Username),
        ),
        (
            &[("a@example.com", Some("alice"))],
            ("b@example.com", Some(" Alice ")),
            conflict(UniqueKey::Username),
        ),
        (
            &[("a@example.com", Some("alice"))],
            ("b@example.com", Some("bob")),
            Ok(()),
        ),
        (&[("a@example.com", None)], ("b@example.com", None), Ok(())),
        // Both taken: the email is reported.
        (
            &[("a@example.com", Some("alice"))],
            ("A@example.com", Some("Alice")),
            conflict(UniqueKey::Email),
        ),
    ];
    for (i, (existing, new, expect)) in cases.into_iter().enumerate() {
        // Case i's names carry a prefix of their own, so cases share one store.
        let name = |s: &str| {
            let s = s.to_string();
            let trimmed = s.trim_start();
            let lead = &s[..s.len() - trimmed.len()];
            format!("{lead}c{i}-{trimmed}")
        };
        for (email, username) in existing {
            store
                .create_user(&user(&name(email), username.map(name).as_deref()))
                .await
                .unwrap();
        }
        let got = store
            .create_user(&user(&name(new.0), new.1.map(name).as_deref()))
            .await;
        assert_eq!(
            got,
            expect,
            "{}: case {i}: existing {existing:?}, new {new:?}",
            b.name()
        );
    }
}

async fn lookups_fold_and_dispatch_on_at_sign(b: &Backend) {
    let store = &*b.store;
    let alice = user("Alice@Example.com", Some("Alice"));
    store.create_user(&alice).await.unwrap();
    for login in ["alice@example.com", " ALICE@EXAMPLE.COM", "alice", "ALICE "] {
        let found = store.find_user_by_login(login).await.unwrap();
        assert_eq!(
            found.as_ref(),
            Some(&alice),
            "{}: login {login:?}",
            b.name()
        );
    }
    assert_eq!(store.find_user_by_login("bob").await.unwrap(), None);
    assert_eq!(store.find_user_by_email("alice").await.unwrap(), None);
    assert_eq!(
        store.get_user(&alice.id).await.unwrap(),
        Some(alice.clone())
    );
    assert_eq!(store.get_user("nope").await.unwrap(), None);
    // The record keeps the spelling the user chose.
    assert_eq!(
        store
            .find_user_by_email("alice@example.com")
            .await
            .unwrap()
            .unwrap()
            .email,
        "Alice@Example.com"
    );
    // Every field survives the round trip, Unicode and optional ones included.
    let mut full = user("Ünïcode@Example.com", Some("Zoë"));
    full.name = Some("Zoë Ünïcode".into());
    full.roles = vec!["admin".into(), "reader".into()];
    full.email_verified = true;
    full.locked = true;
    full.created_at = 1_800_000_000;
    full.updated_at = 1_800_000_001;
    full.password_changed_at = 1_800_000_002;
    store.create_user(&full).await.unwrap();
    assert_eq!(
        store.find_user_by_login("zoË").await.unwrap(),
        Some(full.clone())
    );
    assert_eq!(
        store
            .find_user_by_email("ünïcode@example.com")
            .await
            .unwrap(),
        Some(full)
    );
}

async fn conflicting_create_writes_nothing(b: &Backend) {
    let store = &*b.store;
    store
        .create_user(&user("a@example.com", Some("alice")))
        .await
        .unwrap();
    // New email, taken username: the email must not stay reserved.
    let loser = user("b@example.com", Some("alice"));
    assert_eq!(
        store.create_user(&loser).await,
        Err(StoreError::Conflict(UniqueKey::Username))
    );
    assert_eq!(
        store.find_user_by_email("b@example.com").await.unwrap(),
        None
    );
    assert_eq!(store.get_user(&loser.id).await.unwrap(), None);
    assert_eq!(store.stats().await.unwrap().users, 1);
    store
        .create_user(&user("b@example.com", Some("bob")))
        .await
        .unwrap();
    // Same id twice.
    let again = user("c@example.com", None);
    store.create_user(&again).await.unwrap();
    let mut twin = user("d@example.com", None);
    twin.id.clone_from(&again.id);
    assert_eq!(
        store.create_user(&twin).await,
        Err(StoreError::Conflict(UniqueKey::Id))
    );
    assert_eq!(
        store.find_user_by_email("d@example.com").await.unwrap(),
        None
    );
}

async fn update_applies_conditions_and_reindexes(b: &Backend) {
    let store = &*b.store;
    let alice = user("a@example.com", Some("alice"));
    let bob = user("b@example.com", Some("bob"));
    store.create_user(&alice).await.unwrap();
    store.create_user(&bob).await.unwrap();

    let updated = store
        .update_user(
            &alice.id,
            &UserUpdate {
                email: Some("New@Example.com".into()),
                roles: Some(vec!["reader".into(), "admin".into()]),
                name: Some(Some("Alice".into())),
                email_verified: Some(true),
                updated_at: 200,
                ..UserUpdate::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(updated.id, alice.id);
    assert_eq!(
        (
            updated.email.as_str(),
            updated.roles.len(),
            updated.name.as_deref(),
            updated.email_verified,
            updated.updated_at,
            updated.password_changed_at
        ),
        ("New@Example.com", 2, Some("Alice"), true, 200, 100),
        "{}",
        b.name()
    );
    assert_eq!(
        store.get_user(&alice.id).await.unwrap(),
        Some(updated.clone())
    );
    // Re-indexed: the new address finds her, the old one nobody, and it is free again.
    assert_eq!(
        store.find_user_by_email("a@example.com").await.unwrap(),
        None
    );
    assert_eq!(
        store.find_user_by_email("new@example.com").await.unwrap(),
        Some(updated.clone())
    );
    assert_eq!(
        store.find_user_by_login("alice").await.unwrap(),
        Some(updated.clone())
    );
    store
        .create_user(&user("a@example.com", None))
        .await
        .unwrap();

    // Taking bob's address fails and changes nothing.
    let taken = store
        .update_user(
            &alice.id,
            &UserUpdate {
                email: Some(" B@example.com".into()),
                name: Some(Some("changed".into())),
                updated_at: 300,
                ..UserUpdate::default()
            },
        )
        .await;
    assert_eq!(taken, Err(StoreError::Conflict(UniqueKey::Email)));
    assert_eq!(
        store.get_user(&alice.id).await.unwrap(),
        Some(updated.clone())
    );

    // Conditions: a stale password hash or a changed address is NotFound, and nothing changes.
    let stale = store
        .update_user(
            &alice.id,
            &UserUpdate {
                locked: Some(true),
                if_password_hash: Some("not-the-hash".into()),
                updated_at: 300,
                ..UserUpdate::default()
            },
        )
        .await;
    assert_eq!(stale, Err(StoreError::NotFound));
    let moved = store
        .update_user(
            &alice.id,
            &UserUpdate {
                email_verified: Some(false),
                if_email: Some("a@example.com".into()),
                updated_at: 300,
                ..UserUpdate::default()
            },
        )
        .await;
    assert_eq!(moved, Err(StoreError::NotFound));
    assert_eq!(
        store.get_user(&alice.id).await.unwrap(),
        Some(updated.clone())
    );

    // Conditions that hold (the address compared folded); a new hash moves
    // password_changed_at; a case-only address change keeps the index; the name clears.
    let changed = store
        .update_user(
            &alice.id,
            &UserUpdate {
                email: Some("NEW@example.com".into()),
                password_hash: Some("$argon2id$new".into()),
                locked: Some(true),
                name: Some(None),
                if_password_hash: Some(alice.password_hash.clone()),
                if_email: Some(" new@EXAMPLE.com".into()),
                updated_at: 400,
                ..UserUpdate::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (
            changed.email.as_str(),
            changed.password_hash.as_str(),
            changed.locked,
            changed.name.as_deref(),
            changed.password_changed_at,
            changed.updated_at
        ),
        ("NEW@example.com", "$argon2id$new", true, None, 400, 400)
    );
    assert_eq!(
        store.find_user_by_email("new@example.com").await.unwrap(),
        Some(changed)
    );
    assert_eq!(
        store.update_user("nope", &UserUpdate::default()).await,
        Err(StoreError::NotFound)
    );
}

async fn set_password_voids_reset_links(b: &Backend) {
    let store = &*b.store;
    let alice = user("a@example.com", None);
    store.create_user(&alice).await.unwrap();
    let (reset, verify) = (token_hash("reset"), token_hash("verify"));
    store
        .put_one_time(
            OneTimeKind::PasswordReset,
            &reset,
            &one_time(&alice.id, 500),
        )
        .await
        .unwrap();
    store
        .put_one_time(
            OneTimeKind::EmailVerification,
            &verify,
            &one_time(&alice.id, 500),
        )
        .await
        .unwrap();
    let changed = store
        .set_password(&alice.id, "$argon2id$new", 200)
        .await
        .unwrap();
    assert_eq!(
        (
            changed.password_hash.as_str(),
            changed.password_changed_at,
            changed.updated_at
        ),
        ("$argon2id$new", 200, 200)
    );
    assert_eq!(store.get_user(&alice.id).await.unwrap(), Some(changed));
    assert_eq!(
        store
            .peek_one_time(OneTimeKind::PasswordReset, &reset, 0)
            .await
            .unwrap(),
        None,
        "{}: a link mailed before the change must not undo it",
        b.name()
    );
    assert!(
        store
            .peek_one_time(OneTimeKind::EmailVerification, &verify, 0)
            .await
            .unwrap()
            .is_some(),
        "verification links are not password links"
    );
    assert_eq!(
        store.set_password("nope", "$argon2id$x", 200).await,
        Err(StoreError::NotFound)
    );
}

async fn delete_cascades(b: &Backend) {
    let store = &*b.store;
    let alice = user("a@example.com", Some("alice"));
    let bob = user("b@example.com", None);
    store.create_user(&alice).await.unwrap();
    store.create_user(&bob).await.unwrap();
    let live = session(&alice.id, 100, 1000);
    let dead = session(&alice.id, 100, 1000);
    let bobs = session(&bob.id, 100, 1000);
    for (s, t) in [(&live, "live"), (&dead, "dead"), (&bobs, "bob")] {
        store
            .create_session(s, &token_hash(t), None, MAX_SESSIONS)
            .await
            .unwrap();
    }
    store.revoke_session(&dead.id).await.unwrap();
    store
        .put_one_time(
            OneTimeKind::PasswordReset,
            &token_hash("reset"),
            &one_time(&alice.id, 500),
        )
        .await
        .unwrap();
    store
        .put_one_time(
            OneTimeKind::EmailVerification,
            &token_hash("verify"),
            &one_time(&alice.id, 500),
        )
        .await
        .unwrap();

    let returned = store.delete_user(&alice.id).await.unwrap();
    assert_eq!(
        returned,
        vec![live.clone()],
        "only live sessions are returned"
    );
    assert_eq!(store.get_user(&alice.id).await.unwrap(), None);
    assert_eq!(store.get_session(&live.id).await.unwrap(), None);
    assert_eq!(store.get_session(&dead.id).await.unwrap(), None);
    for (kind, token) in [
        (OneTimeKind::PasswordReset, "reset"),
        (OneTimeKind::EmailVerification, "verify"),
    ] {
        assert_eq!(
            store
                .peek_one_time(kind, &token_hash(token), 0)
                .await
                .unwrap(),
            None
        );
    }
    assert_eq!(
        store
            .rotate_refresh(&token_hash("live"), &token_hash("next"), 200, 0)
            .await
            .unwrap(),
        RotateOutcome::Invalid
    );
    // Email and username are free; bob is untouched.
    store
        .create_user(&user("A@example.com", Some("alice")))
        .await
        .unwrap();
    assert_eq!(store.get_session(&bobs.id).await.unwrap(), Some(bobs));
    assert_eq!(
        store.delete_user(&alice.id).await,
        Err(StoreError::NotFound)
    );
    // Sessions cannot be opened for a deleted user.
    assert_eq!(
        store
            .create_session(
                &session(&alice.id, 100, 10),
                &token_hash("x"),
                None,
                MAX_SESSIONS
            )
            .await,
        Err(StoreError::NotFound)
    );
    let stats = store.stats().await.unwrap();
    assert_eq!(
        (stats.users, stats.sessions, stats.password_reset_tokens),
        (2, 1, 0)
    );
}

async fn pagination_follows_id_order(b: &Backend) {
    let store = &*b.store;
    let mut ids = Vec::new();
    for i in 0..5 {
        let u = user(&format!("u{i}@example.com"), None);
        ids.push(u.id.clone());
        store.create_user(&u).await.unwrap();
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = Vec::new();
    loop {
        let page = store.list_users(2, cursor.as_deref()).await.unwrap();
        pages.push(page.users.len());
        seen.extend(page.users.into_iter().map(|u| u.id));
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(pages, vec![2, 2, 1], "{}", b.name());
    assert_eq!(seen, ids);
    assert_eq!(store.stats().await.unwrap().users, 5);
    // An exact fit ends without an empty extra page.
    let page = store.list_users(5, None).await.unwrap();
    assert_eq!((page.users.len(), page.next_cursor), (5, None));
    let page = store.list_users(10, Some(&ids[4])).await.unwrap();
    assert!(page.users.is_empty());
    let page = store.list_users(0, None).await.unwrap();
    assert_eq!((page.users.len(), page.next_cursor), (0, None));
}

// ---------------------------------------------------------------------------------------
// Sessions and refresh tokens
// ---------------------------------------------------------------------------------------

async fn sessions_are_capped_and_logins_checked(b: &Backend) {
    let store = &*b.store;
    let alice = user("a@example.com", None);
    store.create_user(&alice).await.unwrap();
    let cap = 4;
    let sessions: Vec<_> = (0..cap + 3)
        .map(|i| session(&alice.id, 100 + i as u64, 1000))
        .collect();
    let mut capped = Vec::new();
    for (i, s) in sessions.iter().enumerate() {
        capped.extend(
            store
                .create_session(s, &token_hash(&i.to_string()), None, cap)
                .await
                .unwrap(),
        );
    }
    // The oldest went, in order, each returned once and marked revoked.
    assert_eq!(
        capped.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
        sessions[..3]
            .iter()
            .map(|s| s.id.as_str())
            .collect::<Vec<_>>(),
        "{}",
        b.name()
    );
    assert!(capped.iter().all(|s| s.revoked));
    for (i, s) in sessions.iter().enumerate() {
        let revoked = store.get_session(&s.id).await.unwrap().unwrap().revoked;
        assert_eq!(revoked, i < 3, "session {i}");
    }
    // A stale verified hash, or a locked user, gets no session at all.
    let late = session(&alice.id, 200, 1000);
    assert_eq!(
        store
            .create_session(&late, &token_hash("late"), Some("not-the-hash"), cap)
            .await,
        Err(StoreError::NotFound)
    );
    assert_eq!(store.get_session(&late.id).await.unwrap(), None);
    store
        .update_user(
            &alice.id,
            &UserUpdate {
                locked: Some(true),
                updated_at: 200,
                ..UserUpdate::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        store
            .create_session(&late, &token_hash("late"), Some(&alice.password_hash), cap)
            .await,
        Err(StoreError::NotFound)
    );
    store
        .update_user(
            &alice.id,
            &UserUpdate {
                locked: Some(false),
                updated_at: 200,
                ..UserUpdate::default()
            },
        )
        .await
        .unwrap();
    store
        .create_session(&late, &token_hash("late"), Some(&alice.password_hash), cap)
        .await
        .unwrap();
    // The same sid or refresh hash twice is a Conflict(Id) that writes nothing.
    assert_eq!(
        store
            .create_session(&late, &token_hash("other"), None, MAX_SESSIONS)
            .await,
        Err(StoreError::Conflict(UniqueKey::Id))
    );
    let twin = session(&alice.id, 200, 1000);
    assert_eq!(
        store
            .create_session(&twin, &token_hash("late"), None, MAX_SESSIONS)
            .await,
        Err(StoreError::Conflict(UniqueKey::Id))
    );
    assert_eq!(store.get_session(&twin.id).await.unwrap(), None);
}

async fn expired_sessions_are_dropped_on_create(b: &Backend) {
    let store = &*b.store;
    let alice = user("a@example.com", None);
    store.create_user(&alice).await.unwrap();
    let old = session(&alice.id, 100, 10);
    store
        .create_session(&old, &token_hash("old"), None, MAX_SESSIONS)
        .await
        .unwrap();
    store
        .create_session(
            &session(&alice.id, 200, 10),
            &token_hash("new"),
            None,
            MAX_SESSIONS,
        )
        .await
        .unwrap();
    assert_eq!(
        store.get_session(&old.id).await.unwrap(),
        None,
        "{}",
        b.name()
    );
}

async fn rotation_and_reuse_revokes_the_family(b: &Backend) {
    let store = &*b.store;
    let (alice, s) = user_with_session(store, "a@example.com", "a").await;
    let [a, bb, c, d] = ["a", "b", "c", "d"].map(token_hash);

    let RotateOutcome::Rotated { session, user } =
        store.rotate_refresh(&a, &bb, 150, 0).await.unwrap()
    else {
        panic!("{}: a → b should rotate", b.name());
    };
    assert_eq!((session.last_used_at, session.revoked), (150, false));
    assert_eq!(session.id, s.id);
    assert_eq!(user, alice);
    assert_eq!(store.get_session(&s.id).await.unwrap(), Some(session));
    assert!(rotated(
        &store.rotate_refresh(&bb, &c, 160, 0).await.unwrap()
    ));

    // Replaying `a` revokes the family...
    let RotateOutcome::Reused { session } = store.rotate_refresh(&a, &d, 170, 0).await.unwrap()
    else {
        panic!("{}: replayed a should be reuse", b.name());
    };
    assert!(session.revoked);
    assert!(store.get_session(&s.id).await.unwrap().unwrap().revoked);
    // ...including the successor `c`, and the replay wrote no new token.
    assert_eq!(
        store.rotate_refresh(&c, &d, 180, 0).await.unwrap(),
        RotateOutcome::Invalid
    );
    assert_eq!(
        store
            .rotate_refresh(&d, &token_hash("e"), 180, 0)
            .await
            .unwrap(),
        RotateOutcome::Invalid
    );
    // A second replay still reports reuse.
    assert!(matches!(
        store.rotate_refresh(&bb, &d, 190, 0).await.unwrap(),
        RotateOutcome::Reused { .. }
    ));
    // A new token that already exists is a Conflict(Id), and the old one stays current.
    let (_, _) = user_with_session(store, "x@example.com", "x").await;
    let (_, _) = user_with_session(store, "y@example.com", "y").await;
    assert_eq!(
        store
            .rotate_refresh(&token_hash("x"), &token_hash("y"), 200, 0)
            .await,
        Err(StoreError::Conflict(UniqueKey::Id))
    );
    assert!(rotated(
        &store
            .rotate_refresh(&token_hash("x"), &token_hash("x2"), 200, 0)
            .await
            .unwrap()
    ));
}

#[derive(Clone, Copy, Debug)]
enum Before {
    Nothing,
    RevokeSession,
    RevokeAll,
    LockUser,
    DeleteUser,
    RotateOnce,
}

async fn rotation_refuses_invalid_tokens(b: &Backend) {
    let store = &*b.store;
    // (case, idle timeout, rotate at, what happens first, rotates); each session is created
    // at 100 and expires at 1100.
    let cases = [
        ("fresh", 0, 200, Before::Nothing, true),
        ("last second", 0, 1099, Before::Nothing, true),
        ("absolute expiry", 0, 1100, Before::Nothing, false),
        ("idle within", 50, 149, Before::Nothing, true),
        ("idle over", 50, 150, Before::Nothing, false),
        ("revoked", 0, 200, Before::RevokeSession, false),
        ("user revoked all", 0, 200, Before::RevokeAll, false),
        ("user locked", 0, 200, Before::LockUser, false),
        ("user deleted", 0, 200, Before::DeleteUser, false),
        ("already rotated", 0, 200, Before::RotateOnce, false),
    ];
    for (i, (name, idle, now, before, rotates)) in cases.into_iter().enumerate() {
        let token = format!("case{i}");
        let (u, s) = user_with_session(store, &format!("c{i}@example.com"), &token).await;
        match before {
            Before::Nothing => {}
            Before::RevokeSession => drop(store.revoke_session(&s.id).await.unwrap()),
            Before::RevokeAll => drop(store.revoke_user_sessions(&u.id, None).await.unwrap()),
            Before::LockUser => drop(
                store
                    .update_user(
                        &u.id,
                        &UserUpdate {
                            locked: Some(true),
                            updated_at: 150,
                            ..UserUpdate::default()
                        },
                    )
                    .await
                    .unwrap(),
            ),
            Before::DeleteUser => drop(store.delete_user(&u.id).await.unwrap()),
            Before::RotateOnce => drop(
                store
                    .rotate_refresh(
                        &token_hash(&token),
                        &token_hash(&format!("{token}+")),
                        150,
                        0,
                    )
                    .await
                    .unwrap(),
            ),
        }
        let outcome = store
            .rotate_refresh(
                &token_hash(&token),
                &token_hash(&format!("{token}-next")),
                now,
                idle,
            )
            .await
            .unwrap();
        assert_eq!(
            rotated(&outcome),
            rotates,
            "{}: {name} ({before:?}): {outcome:?}",
            b.name()
        );
    }
    assert_eq!(
        store
            .rotate_refresh(&token_hash("unknown"), &token_hash("y"), 200, 0)
            .await
            .unwrap(),
        RotateOutcome::Invalid
    );
}

async fn revoking_sessions(b: &Backend) {
    let store = &*b.store;
    let alice = user("a@example.com", None);
    store.create_user(&alice).await.unwrap();
    let sessions: Vec<_> = (0..4).map(|i| session(&alice.id, 100 + i, 1000)).collect();
    for (i, s) in sessions.iter().enumerate() {
        store
            .create_session(s, &token_hash(&i.to_string()), None, MAX_SESSIONS)
            .await
            .unwrap();
    }
    let one = store
        .revoke_session(&sessions[0].id)
        .await
        .unwrap()
        .unwrap();
    assert!(one.revoked);
    assert_eq!(one.id, sessions[0].id);
    assert_eq!(
        store.revoke_session(&sessions[0].id).await.unwrap(),
        None,
        "already revoked"
    );
    assert_eq!(store.revoke_session("unknown").await.unwrap(), None);

    let rest = store
        .revoke_user_sessions(&alice.id, Some(&sessions[3].id))
        .await
        .unwrap();
    assert_eq!(
        rest.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
        vec![sessions[1].id.as_str(), sessions[2].id.as_str()],
        "{}: those this call revoked, oldest first",
        b.name()
    );
    assert!(rest.iter().all(|s| s.revoked));
    assert!(
        !store
            .get_session(&sessions[3].id)
            .await
            .unwrap()
            .unwrap()
            .revoked
    );
    assert_eq!(
        store
            .revoke_user_sessions(&alice.id, None)
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(
        store
            .revoke_user_sessions("nobody", None)
            .await
            .unwrap()
            .is_empty()
    );
}

// ---------------------------------------------------------------------------------------
// Revocations
// ---------------------------------------------------------------------------------------

async fn revocations_load_merge_purge_and_feed(b: &Backend) {
    let store = &*b.store;
    let start = store.revocation_cursor().await.unwrap();
    assert_eq!(start, 0, "{}: an empty store's feed starts at 0", b.name());
    let session = Revocation::Session {
        sid: "s1".into(),
        until: 300,
    };
    let user_all = Revocation::User {
        user_id: "u1".into(),
        issued_before: 100,
        except_sid: None,
        until: 200,
    };
    let user_but_one = Revocation::User {
        user_id: "u1".into(),
        issued_before: 100,
        except_sid: Some("s2".into()),
        until: 250,
    };
    for r in [&session, &user_all, &user_but_one] {
        store.put_revocation(r).await.unwrap();
    }
    // Re-recording with an earlier `until` keeps the later one.
    store
        .put_revocation(&Revocation::Session {
            sid: "s1".into(),
            until: 150,
        })
        .await
        .unwrap();
    let mut loaded = store.load_revocations(0).await.unwrap();
    loaded.sort_by_key(Revocation::until);
    assert_eq!(
        loaded,
        vec![user_all.clone(), user_but_one.clone(), session.clone()],
        "{}",
        b.name()
    );
    assert_eq!(
        store.load_revocations(200).await.unwrap().len(),
        2,
        "until is exclusive"
    );

    // The feed. A store that only this process writes has nobody to hear from: its feed
    // stays empty. A shared one lists every write in order, with growing numbers.
    let cursor = store.revocation_cursor().await.unwrap();
    let feed = store.revocations_since(start).await.unwrap();
    if b.shared() {
        assert_eq!(
            feed.iter().map(|(_, r)| r.clone()).collect::<Vec<_>>(),
            vec![session.clone(), user_all.clone(), user_but_one.clone()]
        );
        assert!(feed.windows(2).all(|w| w[0].0 < w[1].0), "{feed:?}");
        assert_eq!(cursor, feed.last().unwrap().0);
        // A later `until` is news (a new number); an earlier one is not.
        let longer = Revocation::Session {
            sid: "s1".into(),
            until: 400,
        };
        store.put_revocation(&longer).await.unwrap();
        let news = store.revocations_since(cursor).await.unwrap();
        assert_eq!(news.len(), 1, "{news:?}");
        assert!(news[0].0 > cursor);
        assert_eq!(news[0].1, longer);
        let after = store.revocation_cursor().await.unwrap();
        assert_eq!(after, news[0].0);
        assert!(store.revocations_since(after).await.unwrap().is_empty());
    } else {
        assert_eq!((cursor, feed), (0, Vec::new()));
        store
            .put_revocation(&Revocation::Session {
                sid: "s1".into(),
                until: 400,
            })
            .await
            .unwrap();
    }

    let purged = store.purge_expired(250, GRACE).await.unwrap();
    assert_eq!(purged.revocations, 2);
    assert_eq!(
        store.load_revocations(0).await.unwrap(),
        vec![Revocation::Session {
            sid: "s1".into(),
            until: 400
        }]
    );
}

// ---------------------------------------------------------------------------------------
// Login failures
// ---------------------------------------------------------------------------------------

async fn login_failures_count_and_lock(b: &Backend) {
    let store = &*b.store;
    let policy = LockoutPolicy {
        max_failures: 3,
        window_secs: 100,
        lock_secs: 50,
    };
    // The rules of `store::apply_failure`, replayed through the store: failures at the
    // given times, the state after each. Each sequence on a login name of its own.
    type Sequence<'a> = (&'a [u64], &'a [(u32, Option<u64>)]);
    let sequences: &[Sequence] = &[
        (&[10, 20], &[(1, None), (2, None)]),
        (&[10, 20, 30], &[(1, None), (2, None), (3, Some(80))]),
        // Failures while locked neither count nor extend the lock.
        (
            &[10, 20, 30, 79],
            &[(1, None), (2, None), (3, Some(80)), (3, Some(80))],
        ),
        // After the lock runs out, counting starts afresh.
        (
            &[10, 20, 30, 80],
            &[(1, None), (2, None), (3, Some(80)), (1, None)],
        ),
        // The window runs from the first failure: at t=110 it is over.
        (&[10, 20, 110], &[(1, None), (2, None), (1, None)]),
        (&[10, 20, 109], &[(1, None), (2, None), (3, Some(159))]),
    ];
    for (i, (times, expect)) in sequences.iter().enumerate() {
        let login = format!("seq{i}@example.com");
        for (j, &now) in times.iter().enumerate() {
            let state = store
                .record_login_failure(&login, now, &policy)
                .await
                .unwrap();
            assert_eq!(
                (state.count, state.locked_until),
                expect[j],
                "{}: failure #{j} at t={now} of {times:?}",
                b.name()
            );
        }
    }
    // Names are folded; clearing forgets; clearing a name that never failed is fine.
    assert_eq!(
        store
            .record_login_failure("Nobody@Example.com", 10, &policy)
            .await
            .unwrap()
            .count,
        1
    );
    assert_eq!(
        store
            .record_login_failure(" nobody@example.com", 11, &policy)
            .await
            .unwrap()
            .count,
        2
    );
    assert_eq!(
        store
            .record_login_failure("NOBODY@example.com", 12, &policy)
            .await
            .unwrap(),
        FailureState {
            count: 3,
            locked_until: Some(62)
        }
    );
    store
        .clear_login_failures("Nobody@example.com")
        .await
        .unwrap();
    assert_eq!(
        store
            .record_login_failure("nobody@example.com", 13, &policy)
            .await
            .unwrap(),
        FailureState {
            count: 1,
            locked_until: None
        }
    );
    store.clear_login_failures("never-failed").await.unwrap();
    // A threshold of 1 locks on the first failure; 0 counts as 1.
    for max_failures in [0, 1] {
        let strict = LockoutPolicy {
            max_failures,
            ..policy
        };
        let state = store
            .record_login_failure(&format!("strict{max_failures}"), 10, &strict)
            .await
            .unwrap();
        assert_eq!(
            state,
            FailureState {
                count: 1,
                locked_until: Some(60)
            },
            "max_failures = {max_failures}"
        );
    }
}

async fn concurrent_failures_each_count_once(b: &Backend) {
    const TASKS: usize = 8;
    let policy = LockoutPolicy {
        max_failures: 100,
        window_secs: 1000,
        lock_secs: 50,
    };
    let barrier = Arc::new(Barrier::new(TASKS));
    let handles: Vec<_> = (0..TASKS)
        .map(|_| {
            let (store, barrier) = (b.store.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                store
                    .record_login_failure("target@example.com", 10, &policy)
                    .await
                    .unwrap()
                    .count
            })
        })
        .collect();
    let mut counts = Vec::new();
    for h in handles {
        counts.push(h.await.unwrap());
    }
    counts.sort_unstable();
    let expect: Vec<u32> = (1..=u32::try_from(TASKS).unwrap()).collect();
    assert_eq!(
        counts,
        expect,
        "{}: each failure counts exactly once",
        b.name()
    );
}

// ---------------------------------------------------------------------------------------
// One-time tokens
// ---------------------------------------------------------------------------------------

async fn one_time_tokens_are_single_use(b: &Backend) {
    let store = &*b.store;
    let kind = OneTimeKind::PasswordReset;
    let (first, second) = (token_hash("first"), token_hash("second"));
    store
        .put_one_time(kind, &first, &one_time("u1", 500))
        .await
        .unwrap();
    assert_eq!(
        store.peek_one_time(kind, &first, 499).await.unwrap(),
        Some(one_time("u1", 500))
    );
    assert_eq!(
        store.peek_one_time(kind, &first, 500).await.unwrap(),
        None,
        "expired"
    );
    assert_eq!(
        store
            .peek_one_time(OneTimeKind::EmailVerification, &first, 0)
            .await
            .unwrap(),
        None,
        "kinds are separate"
    );

    // A newer token voids the older one for the same user and kind only.
    store
        .put_one_time(
            OneTimeKind::EmailVerification,
            &token_hash("v"),
            &one_time("u1", 500),
        )
        .await
        .unwrap();
    store
        .put_one_time(kind, &token_hash("other user"), &one_time("u2", 500))
        .await
        .unwrap();
    store
        .put_one_time(kind, &second, &one_time("u1", 500))
        .await
        .unwrap();
    assert_eq!(
        store.take_one_time(kind, &first, 100).await.unwrap(),
        None,
        "{}",
        b.name()
    );
    assert!(
        store
            .peek_one_time(OneTimeKind::EmailVerification, &token_hash("v"), 0)
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        store
            .peek_one_time(kind, &token_hash("other user"), 0)
            .await
            .unwrap()
            .is_some()
    );
    // Taken once, then gone.
    assert_eq!(
        store.take_one_time(kind, &second, 100).await.unwrap(),
        Some(one_time("u1", 500))
    );
    assert_eq!(store.take_one_time(kind, &second, 100).await.unwrap(), None);
    assert_eq!(store.peek_one_time(kind, &second, 0).await.unwrap(), None);

    // The same hash cannot be stored twice, for another user or the same one.
    let dup = token_hash("dup");
    store
        .put_one_time(kind, &dup, &one_time("u3", 500))
        .await
        .unwrap();
    assert_eq!(
        store.put_one_time(kind, &dup, &one_time("u6", 500)).await,
        Err(StoreError::Conflict(UniqueKey::Id))
    );
    assert_eq!(
        store.put_one_time(kind, &dup, &one_time("u3", 900)).await,
        Err(StoreError::Conflict(UniqueKey::Id))
    );
    assert_eq!(
        store.peek_one_time(kind, &dup, 0).await.unwrap(),
        Some(one_time("u3", 500))
    );
    // Taking an expired token consumes it but yields nothing.
    let late = token_hash("late");
    store
        .put_one_time(kind, &late, &one_time("u4", 500))
        .await
        .unwrap();
    assert_eq!(store.take_one_time(kind, &late, 500).await.unwrap(), None);
    assert_eq!(store.peek_one_time(kind, &late, 0).await.unwrap(), None);
}

async fn racing_take_one_time_has_one_winner(b: &Backend) {
    let kind = OneTimeKind::PasswordReset;
    for round in 0..RACE_ROUNDS {
        let hash = token_hash(&format!("race{round}"));
        b.store
            .put_one_time(kind, &hash, &one_time(&format!("u{round}"), 500))
            .await
            .unwrap();
        let barrier = Arc::new(Barrier::new(2));
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let (store, barrier) = (b.store.clone(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    store.take_one_time(kind, &hash, 100).await.unwrap()
                })
            })
            .collect();
        let mut wins = 0;
        for h in handles {
            wins += usize::from(h.await.unwrap().is_some());
        }
        assert_eq!(wins, 1, "{}: round {round}", b.name());
    }
}

async fn racing_rotation_has_one_winner(b: &Backend) {
    const TASKS: usize = 4;
    for round in 0..RACE_ROUNDS {
        let old = format!("old{round}");
        let (_, s) = user_with_session(&*b.store, &format!("r{round}@example.com"), &old).await;
        let barrier = Arc::new(Barrier::new(TASKS));
        let handles: Vec<_> = (0..TASKS)
            .map(|i| {
                let (store, barrier) = (b.store.clone(), barrier.clone());
                let (old, new) = (token_hash(&old), token_hash(&format!("{old}-new{i}")));
                tokio::spawn(async move {
                    barrier.wait().await;
                    store.rotate_refresh(&old, &new, 200, 0).await.unwrap()
                })
            })
            .collect();
        let mut outcomes = Vec::new();
        for h in handles {
            outcomes.push(h.await.unwrap());
        }
        let wins = outcomes.iter().filter(|o| rotated(o)).count();
        let reused = outcomes
            .iter()
            .filter(|o| matches!(o, RotateOutcome::Reused { .. }))
            .count();
        assert_eq!(
            (wins, reused),
            (1, TASKS - 1),
            "{}: round {round}: {outcomes:?}",
            b.name()
        );
        // The losers saw reuse, so the family is revoked, the winner's token included.
        assert!(b.store.get_session(&s.id).await.unwrap().unwrap().revoked);
    }
}

async fn concurrent_sign_ups_with_one_address_yield_one_account(b: &Backend) {
    const TASKS: usize = 6;
    for round in 0..RACE_ROUNDS / 4 {
        let barrier = Arc::new(Barrier::new(TASKS));
        let handles: Vec<_> = (0..TASKS)
            .map(|i| {
                let (store, barrier) = (b.store.clone(), barrier.clone());
                // The same address in several spellings; distinct usernames.
                let email = if i % 2 == 0 {
                    format!("Same{round}@Example.com")
                } else {
                    format!(" same{round}@example.COM")
                };
                let u = user(&email, Some(&format!("n{round}x{i}")));
                tokio::spawn(async move {
                    barrier.wait().await;
                    store.create_user(&u).await
                })
            })
            .collect();
        let mut results = Vec::new();
        for h in handles {
            results.push(h.await.unwrap());
        }
        let ok = results.iter().filter(|r| r.is_ok()).count();
        let email_taken = results
            .iter()
            .filter(|r| **r == Err(StoreError::Conflict(UniqueKey::Email)))
            .count();
        assert_eq!(
            (ok, email_taken),
            (1, TASKS - 1),
            "{}: round {round}: {results:?}",
            b.name()
        );
        // Same for usernames, with distinct addresses.
        let barrier = Arc::new(Barrier::new(TASKS));
        let handles: Vec<_> = (0..TASKS)
            .map(|i| {
                let (store, barrier) = (b.store.clone(), barrier.clone());
                let u = user(
                    &format!("u{round}-{i}@example.com"),
                    Some(&format!("Name{round}")),
                );
                tokio::spawn(async move {
                    barrier.wait().await;
                    store.create_user(&u).await
                })
            })
            .collect();
        let mut results = Vec::new();
        for h in handles {
            results.push(h.await.unwrap());
        }
        let ok = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(ok, 1, "{}: round {round}: {results:?}", b.name());
        assert!(
            results
                .iter()
                .all(|r| r.is_ok() || *r == Err(StoreError::Conflict(UniqueKey::Username)))
        );
    }
    assert_eq!(b.store.stats().await.unwrap().users, 2 * (RACE_ROUNDS / 4));
}

// ---------------------------------------------------------------------------------------
// Housekeeping
// ---------------------------------------------------------------------------------------

async fn purge_removes_what_expired(b: &Backend) {
    let store = &*b.store;
    let alice = user("a@example.com", None);
    store.create_user(&alice).await.unwrap();
    let short = session(&alice.id, 100, 100); // expires at 200
    let long = session(&alice.id, 100, 1000);
    store
        .create_session(&short, &token_hash("short"), None, MAX_SESSIONS)
        .await
        .unwrap();
    store
        .create_session(&long, &token_hash("long"), None, MAX_SESSIONS)
        .await
        .unwrap();
    store
        .rotate_refresh(&token_hash("long"), &token_hash("long2"), 150, 0)
        .await
        .unwrap();
    store
        .put_one_time(
            OneTimeKind::PasswordReset,
            &token_hash("r"),
            &one_time(&alice.id, 180),
        )
        .await
        .unwrap();
    store
        .put_one_time(
            OneTimeKind::EmailVerification,
            &token_hash("v"),
            &one_time(&alice.id, 900),
        )
        .await
        .unwrap();
    let policy = LockoutPolicy {
        max_failures: 5,
        window_secs: 60,
        lock_secs: 60,
    };
    store.record_login_failure("x", 100, &policy).await.unwrap();

    assert_eq!(
        store.stats().await.unwrap(),
        StoreStats {
            users: 1,
            sessions: 2,
            refresh_tokens: 3,
            password_reset_tokens: 1,
            email_verification_tokens: 1,
            revocations: 0,
            login_failures: 1,
        },
        "{}",
        b.name()
    );
    assert_eq!(
        store.purge_expired(199, GRACE).await.unwrap(),
        PurgeStats {
            one_time_tokens: 1,
            login_failures: 1,
            ..PurgeStats::default()
        }
    );
    assert_eq!(
        store.purge_expired(200, GRACE).await.unwrap(),
        PurgeStats {
            sessions: 1,
            refresh_tokens: 1,
            ..PurgeStats::default()
        }
    );
    assert_eq!(store.get_session(&short.id).await.unwrap(), None);
    assert!(store.get_session(&long.id).await.unwrap().is_some());
    // The rotated hash of the live session stays: it is how reuse is recognised.
    assert!(matches!(
        store
            .rotate_refresh(&token_hash("long"), &token_hash("z"), 210, 0)
            .await
            .unwrap(),
        RotateOutcome::Reused { .. }
    ));
    assert!(
        store
            .peek_one_time(OneTimeKind::EmailVerification, &token_hash("v"), 200)
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(
        store.purge_expired(200, GRACE).await.unwrap(),
        PurgeStats::default()
    );
    // Once the long session is over too, its rotated hashes go with it.
    let purged = store.purge_expired(1100, GRACE).await.unwrap();
    assert_eq!((purged.sessions, purged.refresh_tokens), (1, 2));
    assert_eq!(store.stats().await.unwrap().refresh_tokens, 0);
}

/// Rotates `old` into `new` at `now` and says how it went, in one word.
async fn rotate(store: &dyn Store, old: &str, new: &str, now: u64) -> &'static str {
    match store
        .rotate_refresh(&token_hash(old), &token_hash(new), now, 0)
        .await
        .unwrap()
    {
        RotateOutcome::Rotated { .. } => "rotated",
        RotateOutcome::Reused { .. } => "reused",
        RotateOutcome::Invalid => "invalid",
    }
}

/// Revoked families (by logout and by reuse) go, with every rotated hash, once their last use
/// is `GRACE` old; a live family keeps its rotated hashes; nothing purged ever rotates again.
async fn purge_removes_revoked_families_after_the_grace(b: &Backend) {
    let store = &*b.store;
    let alice = user("a@example.com", None);
    store.create_user(&alice).await.unwrap();
    let open = |token: &'static str| {
        let s = session(&alice.id, 100, 10_000);
        async move {
            store
                .create_session(&s, &token_hash(token), None, MAX_SESSIONS)
                .await
                .unwrap();
            s
        }
    };
    let reused = open("a1").await;
    let live = open("b1").await;
    let logged_out = open("c1").await;
    assert_eq!(rotate(store, "a1", "a2", 110).await, "rotated");
    assert_eq!(rotate(store, "a2", "a3", 120).await, "rotated");
    assert_eq!(rotate(store, "b1", "b2", 115).await, "rotated");
    assert!(
        store
            .revoke_session(&logged_out.id)
            .await
            .unwrap()
            .is_some()
    );
    // A replay revokes the family; its last use stays that of its last rotation (120).
    assert_eq!(rotate(store, "a1", "x", 130).await, "reused");
    assert_eq!(
        store.stats().await.unwrap().refresh_tokens,
        6,
        "{}",
        b.name()
    );

    // The logged-out family was last used at 100: gone at 100 + GRACE, the other not yet.
    assert_eq!(
        store.purge_expired(100 + GRACE - 1, GRACE).await.unwrap(),
        PurgeStats::default(),
        "{}",
        b.name()
    );
    assert_eq!(
        store.purge_expired(120 + GRACE - 1, GRACE).await.unwrap(),
        PurgeStats {
            sessions: 1,
            refresh_tokens: 1,
            ..PurgeStats::default()
        },
        "{}",
        b.name()
    );
    assert_eq!(store.get_session(&logged_out.id).await.unwrap(), None);
    assert!(store.get_session(&reused.id).await.unwrap().is_some());
    // Still stored, a replay is still recognised as one.
    assert_eq!(rotate(store, "a2", "x", 200).await, "reused");
    assert_eq!(
        store.purge_expired(120 + GRACE, GRACE).await.unwrap(),
        PurgeStats {
            sessions: 1,
            refresh_tokens: 3,
            ..PurgeStats::default()
        },
        "{}",
        b.name()
    );
    assert_eq!(store.get_session(&reused.id).await.unwrap(), None);
    assert_eq!(
        store.purge_expired(120 + GRACE, GRACE).await.unwrap(),
        PurgeStats::default(),
        "a second purge finds nothing"
    );

    // Every purged token is refused, as unknown.
    for token in ["a1", "a2", "a3", "c1"] {
        assert_eq!(rotate(store, token, "y", 300).await, "invalid", "{token}");
    }
    // The live family kept its rotated hash: it rotates on, and a replay still revokes it.
    assert_eq!(store.stats().await.unwrap().refresh_tokens, 2);
    assert_eq!(rotate(store, "b2", "b3", 300).await, "rotated");
    assert_eq!(rotate(store, "b1", "z", 310).await, "reused");
    assert!(store.get_session(&live.id).await.unwrap().unwrap().revoked);
    assert_eq!(rotate(store, "b3", "b4", 320).await, "invalid");

    // The user's list no longer names purged sessions: revoking all finds none left, and
    // logins go on past the cap's count of what was purged.
    assert!(
        store
            .revoke_user_sessions(&alice.id, None)
            .await
            .unwrap()
            .is_empty()
    );
    let fresh = session(&alice.id, 400, 10_000);
    assert!(
        store
            .create_session(&fresh, &token_hash("d1"), None, MAX_SESSIONS)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(rotate(store, "d1", "d2", 410).await, "rotated");
}

/// What still matters survives any purge: live sessions with every hash, a revoked session
/// used recently, unexpired one-time tokens and revocations; and a spent one-time token
/// stays spent (it was removed when taken, so purging cannot bring it back).
async fn purge_keeps_what_still_matters(b: &Backend) {
    let store = &*b.store;
    let (alice, live) = user_with_session(store, "a@example.com", "t1").await;
    assert_eq!(rotate(store, "t1", "t2", 150).await, "rotated");
    let recent = session(&alice.id, 150, 10_000);
    store
        .create_session(&recent, &token_hash("r1"), None, MAX_SESSIONS)
        .await
        .unwrap();
    store.revoke_session(&recent.id).await.unwrap();
    for (name, kind) in [
        ("reset", OneTimeKind::PasswordReset),
        ("verify", OneTimeKind::EmailVerification),
    ] {
        store
            .put_one_time(kind, &token_hash(name), &one_time(&alice.id, 1000))
            .await
            .unwrap();
    }
    let spent = store
        .take_one_time(OneTimeKind::PasswordReset, &token_hash("reset"), 200)
        .await
        .unwrap();
    assert!(spent.is_some());
    store
        .put_revocation(&Revocation::Session {
            sid: recent.id.clone(),
            until: 400,
        })
        .await
        .unwrap();

    let before = store.stats().await.unwrap();
    assert_eq!(
        store.purge_expired(150 + GRACE - 1, GRACE).await.unwrap(),
        PurgeStats::default(),
        "{}",
        b.name()
    );
    assert_eq!(store.stats().await.unwrap(), before);
    assert!(store.get_session(&live.id).await.unwrap().is_some());
    assert_eq!(store.load_revocations(249).await.unwrap().len(), 1);
    assert!(
        store
            .take_one_time(OneTimeKind::PasswordReset, &token_hash("reset"), 249)
            .await
            .unwrap()
            .is_none(),
        "a spent reset token never comes back"
    );
    assert!(
        store
            .peek_one_time(OneTimeKind::EmailVerification, &token_hash("verify"), 249)
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(rotate(store, "t1", "x", 249).await, "reused");
}

async fn stats_and_health_on_an_empty_store(b: &Backend) {
    b.store.health().await.unwrap();
    assert_eq!(
        b.store.stats().await.unwrap(),
        StoreStats::default(),
        "{}",
        b.name()
    );
    assert_eq!(
        b.store.purge_expired(u64::MAX, GRACE).await.unwrap(),
        PurgeStats::default()
    );
    assert!(b.store.load_revocations(0).await.unwrap().is_empty());
}

// ---------------------------------------------------------------------------------------
// PostgreSQL only: what a shared database adds
// ---------------------------------------------------------------------------------------

/// Waits for a signal, or fails after `within`.
async fn signalled(signal: &tokio::sync::Notify, within: Duration) -> bool {
    tokio::time::timeout(within, signal.notified())
        .await
        .is_ok()
}

/// Consumes a stored permit, if any, so the next wait sees only new signals.
async fn drain(signal: &tokio::sync::Notify) {
    let _ = tokio::time::timeout(Duration::from_millis(50), signal.notified()).await;
}

/// The listener's sessions of a schema's stores, from pg_stat_activity.
async fn listeners(admin: &tokio_postgres::Client, schema: &Schema) -> Vec<i32> {
    admin
        .query(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1",
            &[&format!("{}/listen", schema.name)],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

/// Polls `check` until it holds, or fails after `within`.
async fn eventually<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < within, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_three_replicas_starting_at_once_on_an_empty_schema_all_come_up() {
    let Some(schema) = Schema::create().await else {
        return;
    };
    for _ in 0..3 {
        // Each round on an empty schema again.
        let admin = schema.admin().await;
        admin
            .batch_execute(&format!(
                "DROP SCHEMA {0} CASCADE; CREATE SCHEMA {0}",
                schema.name
            ))
            .await
            .unwrap();
        let config = Arc::new(schema.config(""));
        let opens: Vec<_> = (0..3)
            .map(|_| {
                let config = config.clone();
                tokio::spawn(async move { store::open(&config).await })
            })
            .collect();
        let mut stores = Vec::new();
        for open in opens {
            stores.push(open.await.unwrap().expect("every replica comes up"));
        }
        let applied: Vec<i32> = admin
            .query(
                "SELECT version FROM schema_migrations ORDER BY version",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect();
        let every: Vec<i32> = store::postgres::MIGRATIONS
            .iter()
            .map(|m| m.version)
            .collect();
        assert_eq!(applied, every, "each migration applied exactly once");
        // They share one database: what one writes, the others read.
        let u = user("shared@example.com", None);
        stores[0].create_user(&u).await.unwrap();
        for s in &stores[1..] {
            assert_eq!(s.get_user(&u.id).await.unwrap(), Some(u.clone()));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_revocation_reaches_the_other_replica_also_after_its_reconnect() {
    let Some(schema) = Schema::create().await else {
        return;
    };
    let admin = schema.admin().await;
    let a = schema.open().await;
    let b = schema.open().await;
    let signal = b.revocation_signal().expect("a shared store has a signal");
    // The first LISTEN fires too, so that a replica catches up at start.
    assert!(
        signalled(&signal, Duration::from_secs(5)).await,
        "no signal after the first LISTEN"
    );
    eventually("both listeners are up", Duration::from_secs(5), || async {
        listeners(&admin, &schema).await.len() == 2
    })
    .await;
    drain(&signal).await;

    let cursor = b.revocation_cursor().await.unwrap();
    let revocation = Revocation::Session {
        sid: "s-from-a".into(),
        until: u64::from(u32::MAX),
    };
    let started = Instant::now();
    a.put_revocation(&revocation).await.unwrap();
    assert!(
        signalled(&signal, Duration::from_secs(1)).await,
        "replica b was not told within 1s"
    );
    let heard = started.elapsed();
    let news = b.revocations_since(cursor).await.unwrap();
    assert_eq!(
        news.iter().map(|(_, r)| r.clone()).collect::<Vec<_>>(),
        vec![revocation]
    );
    let _ = writeln!(
        std::io::stderr(),
        "revocation heard by the other replica in {heard:?}"
    );

    // Cut every listener's connection: each reconnects by itself and signals again, so
    // whatever was recorded while it was away is caught up.
    drain(&signal).await;
    let before = listeners(&admin, &schema).await;
    for pid in &before {
        admin
            .execute("SELECT pg_terminate_backend($1)", &[pid])
            .await
            .unwrap();
    }
    let missed = Revocation::User {
        user_id: "u".into(),
        issued_before: 5,
        except_sid: None,
        until: u64::from(u32::MAX),
    };
    a.put_revocation(&missed).await.unwrap();
    assert!(
        signalled(&signal, Duration::from_secs(10)).await,
        "no signal after the listener's reconnect"
    );
    // The signal may come from the reconnect or from the notification, in either order:
    // catch up after each until the revocation shows.
    loop {
        let caught_up = b.revocations_since(news[0].0).await.unwrap();
        if !caught_up.is_empty() {
            assert_eq!(
                caught_up.iter().map(|(_, r)| r.clone()).collect::<Vec<_>>(),
                vec![missed]
            );
            break;
        }
        assert!(
            signalled(&signal, Duration::from_secs(10)).await,
            "the revocation recorded while the listener was away never showed"
        );
    }
    eventually(
        "the listeners are back",
        Duration::from_secs(10),
        || async {
            let now = listeners(&admin, &schema).await;
            now.len() == 2 && now.iter().all(|pid| !before.contains(pid))
        },
    )
    .await;

    // The listener ends with its store.
    drop(a);
    drop(b);
    eventually(
        "the listeners are gone",
        Duration::from_secs(10),
        || async { listeners(&admin, &schema).await.is_empty() },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outages_are_unavailable_and_pass() {
    // Nothing listens on port 1: opening fails as Unavailable, quickly.
    let config = config(
        "backend = \"postgres\"\nurl = \"postgres://postgres@127.0.0.1:1/test?sslmode=disable\"\n\
         connect_timeout = \"2s\"",
    );
    if std::env::var(SKIP_VAR).is_ok_and(|v| v == "1") {
        say_skipped();
        return;
    }
    match store::open(&config).await {
        Err(StoreError::Unavailable(detail)) => assert!(!detail.is_empty()),
        Err(other) => panic!("expected Unavailable, got {other:?}"),
        Ok(_) => panic!("nothing listens on port 1"),
    }

    // Connections cut under a running store: a call fails as Unavailable or succeeds on a
    // fresh connection, and the store recovers by itself.
    let Some(schema) = Schema::create().await else {
        return;
    };
    let admin = schema.admin().await;
    let store = schema.open().await;
    let u = user("a@example.com", None);
    store.create_user(&u).await.unwrap();
    for _ in 0..3 {
        admin
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE application_name = $1",
                &[&schema.name],
            )
            .await
            .unwrap();
        match store.get_user(&u.id).await {
            Ok(found) => assert_eq!(found, Some(u.clone())),
            Err(StoreError::Unavailable(_)) => {}
            Err(other) => panic!("a cut connection must be Unavailable, got {other:?}"),
        }
        let mut recovered = false;
        for _ in 0..50 {
            if store.get_user(&u.id).await == Ok(Some(u.clone())) {
                recovered = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(recovered, "the pool did not replace its cut connections");
    }

    // A schema from a newer gatehouse is refused, not misread.
    admin
        .execute(
            "INSERT INTO schema_migrations (version, name) VALUES (99, '0099_future')",
            &[],
        )
        .await
        .unwrap();
    match store::open(&schema.config("")).await {
        Err(e) => assert_eq!(
            e,
            StoreError::SchemaMismatch {
                found: 99,
                expected: store::postgres::latest_schema_version() as u32
            }
        ),
        Ok(_) => panic!("a newer schema must be refused"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sslmodes_against_the_real_server() {
    let Some(schema) = Schema::create().await else {
        return;
    };
    let admin = schema.admin().await;
    let ssl_on: String = admin.query_one("SHOW ssl", &[]).await.unwrap().get(0);
    let ssl_on = ssl_on == "on";
    let cert_file: String = admin
        .query_one("SHOW ssl_cert_file", &[])
        .await
        .unwrap()
        .get(0);

    /// Whether the store's pooled session (found by application name) runs over TLS.
    async fn encrypted(admin: &tokio_postgres::Client, app: &str) -> bool {
        admin
            .query_one(
                "SELECT bool_or(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
                 WHERE a.application_name = $1",
                &[&app],
            )
            .await
            .unwrap()
            .get::<_, Option<bool>>(0)
            .unwrap_or(false)
    }

    let open = |mode: String| {
        let config = schema.config(&format!("&sslmode={mode}"));
        async move { store::open(&config).await }
    };
    for (mode, encrypts) in [("disable", false), ("prefer", ssl_on), ("require", true)] {
        match open(mode.to_string()).await {
            Ok(store) => {
                store.health().await.unwrap();
                assert!(ssl_on || !encrypts, "{mode}: TLS without a TLS server?");
                assert_eq!(
                    encrypted(&admin, &schema.name).await,
                    encrypts,
                    "sslmode={mode}"
                );
                drop(store);
            }
            Err(e) => {
                assert!(!ssl_on && mode == "require", "sslmode={mode} failed: {e:?}");
                assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}");
            }
        }
        // Let the dropped store's sessions end before the next mode is looked at.
        eventually(
            "the previous store's sessions end",
            Duration::from_secs(10),
            || {
                let admin = &admin;
                let name = schema.name.clone();
                async move {
                    admin
                        .query(
                            "SELECT 1 FROM pg_stat_activity WHERE application_name LIKE $1 || '%'",
                            &[&name],
                        )
                        .await
                        .unwrap()
                        .is_empty()
                }
            },
        )
        .await;
    }
    if !ssl_on {
        let _ = writeln!(
            std::io::stderr(),
            "note: the test server has ssl = off; verify-ca/verify-full were not exercised \
             against it (the verifiers have their own unit tests)"
        );
        return;
    }
    // The server's certificate is not from a public CA: verify-* without sslrootcert fail.
    for mode in ["verify-ca", "verify-full"] {
        match open(mode.to_string()).await {
            Err(StoreError::Unavailable(detail)) => {
                assert!(
                    detail.to_lowercase().contains("tls") || detail.contains("certificate"),
                    "{mode}: {detail}"
                );
            }
            Err(other) => panic!("{mode}: expected Unavailable, got {other:?}"),
            Ok(_) => panic!("{mode}: an untrusted server certificate was accepted"),
        }
    }
    // With the server's own certificate as the root, the chain checks out (verify-ca);
    // whether the name does depends on how the server's certificate was made, so
    // verify-full is only required to fail cleanly or succeed, never to hang.
    if std::fs::read(&cert_file).is_ok() {
        let root = format!("&sslrootcert={}", cert_file.replace('/', "%2F"));
        let config = schema.config(&format!("&sslmode=verify-ca{root}"));
        match store::open(&config).await {
            Ok(store) => {
                store.health().await.unwrap();
                assert!(encrypted(&admin, &schema.name).await);
            }
            Err(e) => panic!("verify-ca with the server's certificate as root: {e:?}"),
        }
        let config = schema.config(&format!("&sslmode=verify-full{root}"));
        if let Err(e) = store::open(&config).await {
            assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// Config and the command line
// ---------------------------------------------------------------------------------------

#[test]
fn store_config_is_validated_with_clear_errors() {
    fn errors(store_section: &str, env: &[(&str, &str)]) -> Vec<String> {
        let text = format!(
            "[upstream]\nurl = \"http://127.0.0.1:9\"\n[tokens]\nsecret = \"{SECRET}\"\n\
             [store]\n{store_section}\n"
        );
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        match Config::from_toml(&text, env) {
            Ok(_) => Vec::new(),
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        }
    }
    // Defaults: sled.
    let defaults = config("");
    assert_eq!(
        defaults.store.backend,
        gatehouse::config::StoreBackend::Sled
    );
    assert_eq!(defaults.store.pool_size, 16);
    assert_eq!(defaults.store.statement_timeout, Duration::from_secs(5));

    assert_eq!(
        errors("backend = \"postgres\"", &[]),
        vec![
            "store.url: is required when backend = \"postgres\" (e.g. \
             \"postgres://gatehouse@db:5432/gatehouse?sslmode=verify-full\", or \
             GATEHOUSE_STORE_URL)"
        ]
    );
    assert_eq!(
        errors("backend = \"mysql\"", &[]),
        vec!["store.backend: \"mysql\" is not sled or postgres"]
    );
    let bad = errors(
        "backend = \"postgres\"\nurl = \"postgres://gh:hunter2@db/g?sslmode=verify\"",
        &[],
    );
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert!(
        bad[0].starts_with("store.url: sslmode \"verify\""),
        "{bad:?}"
    );
    assert!(!bad[0].contains("hunter2"), "the password leaked: {bad:?}");
    let bad = errors("url = \"db:5432\"", &[]);
    assert!(bad[0].contains("postgres://"), "{bad:?}");
    // From the environment, named as such.
    let bad = errors(
        "backend = \"postgres\"",
        &[("GATEHOUSE_STORE_URL", "postgres://gh:hunter2@db")],
    );
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert!(
        bad[0].starts_with("GATEHOUSE_STORE_URL (store.url):"),
        "{bad:?}"
    );
    assert!(!bad[0].contains("hunter2"), "{bad:?}");
    assert_eq!(
        errors(
            "backend = \"postgres\"",
            &[("GATEHOUSE_STORE_URL", "postgres://gh:hunter2@db/g")]
        ),
        Vec::<String>::new()
    );
    // The sled path matters only to sled.
    assert_eq!(
        errors("path = \"\"", &[]),
        vec!["store.path: is required with backend = \"sled\""]
    );
    assert!(
        errors(
            "backend = \"postgres\"\npath = \"\"\nurl = \"postgres://db/g\"",
            &[]
        )
        .is_empty()
    );
    assert_eq!(
        errors("pool_size = 0\nstatement_timeout = \"0\"", &[]),
        vec![
            "store.pool_size: must be at least 1",
            "store.statement_timeout: 0 is out of range: must be between 1ms and 10m"
        ]
    );
    // The URL never shows in Debug output.
    let with_password = config("backend = \"postgres\"\nurl = \"postgres://gh:hunter2@db/g\"");
    assert!(!format!("{:?}", with_password.store).contains("hunter2"));
}

#[test]
fn store_migrate_command_applies_then_finds_nothing_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let run = |section: &str| {
        let path = dir.path().join("config.toml");
        std::fs::write(
            &path,
            format!(
                "[upstream]\nurl = \"http://127.0.0.1:9\"\n[tokens]\nsecret = \"{SECRET}\"\n\
                 [store]\n{section}\n"
            ),
        )
        .unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_gatehouse"))
            .args(["store", "migrate", "--config"])
            .arg(&path)
            .env_remove("GATEHOUSE_STORE_URL")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let sled = format!("path = {:?}", dir.path().join("data").display().to_string());
    let (ok, stdout, stderr) = run(&sled);
    assert!(ok, "{stdout}{stderr}");
    assert_eq!(
        stdout,
        "sled store schema is up to date at version 1; nothing to do\n"
    );

    if std::env::var(SKIP_VAR).is_ok_and(|v| v == "1") {
        say_skipped();
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let schema = rt.block_on(Schema::create()).expect("not skipped");
    let section = format!("backend = \"postgres\"\nurl = {:?}", schema.url(""));
    let (ok, stdout, stderr) = run(&section);
    assert!(ok, "{stdout}{stderr}");
    let mut applied: String = store::postgres::MIGRATIONS
        .iter()
        .map(|m| format!("applied {}\n", m.name))
        .collect();
    let latest = store::postgres::latest_schema_version();
    applied.push_str(&format!("postgres store schema now at version {latest}\n"));
    assert_eq!(stdout, applied);
    let (ok, stdout, stderr) = run(&section);
    assert!(ok, "{stdout}{stderr}");
    assert_eq!(
        stdout,
        format!("postgres store schema is up to date at version {latest}; nothing to do\n")
    );
    // Unreachable: a clear error and a failing exit code.
    let (ok, _, stderr) = run(
        "backend = \"postgres\"\nurl = \"postgres://postgres@127.0.0.1:1/test?sslmode=disable\"",
    );
    assert!(!ok);
    assert!(stderr.contains("the store is unavailable"), "{stderr}");
    drop(schema);
}

// ---------------------------------------------------------------------------------------
// Second factors (TOTP)
// ---------------------------------------------------------------------------------------

fn pending_mfa(user_id: &str, secret: &[u8]) -> MfaRecord {
    MfaRecord {
        user_id: user_id.into(),
        secret: secret.to_vec(),
        enabled: false,
        last_step: 0,
        recovery_codes: Vec::new(),
        created_at: 100,
    }
}

async fn second_factor_lifecycle(b: &Backend) {
    let s = &*b.store;
    let u = user("mfa@example.com", None);
    s.create_user(&u).await.unwrap();
    assert_eq!(s.get_mfa(&u.id).await.unwrap(), None);
    assert_eq!(
        s.put_mfa_pending(&pending_mfa("nobody", b"x")).await,
        Err(StoreError::NotFound),
        "{}",
        b.name()
    );
    // Pending: replaced by a second setup; enabled only with the pending secret.
    assert!(
        s.put_mfa_pending(&pending_mfa(&u.id, b"one"))
            .await
            .unwrap()
    );
    assert!(
        s.put_mfa_pending(&pending_mfa(&u.id, b"two"))
            .await
            .unwrap()
    );
    assert!(
        !s.accept_mfa_step(&u.id, 5).await.unwrap(),
        "not enabled yet"
    );
    let codes = [token_hash("c1"), token_hash("c2")];
    assert!(!s.enable_mfa(&u.id, b"one", 7, &codes).await.unwrap());
    assert!(s.enable_mfa(&u.id, b"two", 7, &codes).await.unwrap());
    assert!(
        !s.enable_mfa(&u.id, b"two", 7, &codes).await.unwrap(),
        "once"
    );
    let record = s.get_mfa(&u.id).await.unwrap().unwrap();
    assert!(record.enabled && record.last_step == 7 && record.secret == b"two");
    assert_eq!(record.recovery_codes, codes.to_vec());
    // Enabled: setup refused, nothing written.
    assert!(
        !s.put_mfa_pending(&pending_mfa(&u.id, b"three"))
            .await
            .unwrap()
    );
    assert_eq!(s.get_mfa(&u.id).await.unwrap().unwrap().secret, b"two");
    // Steps only move forward.
    assert!(!s.accept_mfa_step(&u.id, 7).await.unwrap());
    assert!(!s.accept_mfa_step(&u.id, 6).await.unwrap());
    assert!(s.accept_mfa_step(&u.id, 9).await.unwrap());
    assert!(!s.accept_mfa_step(&u.id, 8).await.unwrap());
    // Recovery codes are taken once.
    assert!(s.take_recovery_code(&u.id, &codes[0]).await.unwrap());
    assert!(!s.take_recovery_code(&u.id, &codes[0]).await.unwrap());
    assert!(
        !s.take_recovery_code(&u.id, &token_hash("c3"))
            .await
            .unwrap()
    );
    assert_eq!(
        s.get_mfa(&u.id).await.unwrap().unwrap().recovery_codes,
        vec![codes[1]]
    );
    // Removed, then gone with its user.
    assert!(s.delete_mfa(&u.id).await.unwrap());
    assert!(!s.delete_mfa(&u.id).await.unwrap());
    assert!(
        s.put_mfa_pending(&pending_mfa(&u.id, b"four"))
            .await
            .unwrap()
    );
    s.delete_user(&u.id).await.unwrap();
    assert_eq!(s.get_mfa(&u.id).await.unwrap(), None, "{}", b.name());
}

async fn mfa_challenges_are_single_use_and_purged(b: &Backend) {
    let s = &*b.store;
    let u = user("challenge@example.com", None);
    s.create_user(&u).await.unwrap();
    let challenge = |expires_at| MfaChallenge {
        user_id: u.id.clone(),
        login: "challenge@example.com".into(),
        password_fingerprint: token_hash(&u.password_hash),
        expires_at,
    };
    let (live, dead) = (token_hash("live"), token_hash("dead"));
    s.put_mfa_challenge(&live, &challenge(500)).await.unwrap();
    s.put_mfa_challenge(&dead, &challenge(150)).await.unwrap();
    assert_eq!(
        s.put_mfa_challenge(&live, &challenge(500)).await,
        Err(StoreError::Conflict(UniqueKey::Id))
    );
    let purged = s.purge_expired(200, GRACE).await.unwrap();
    assert_eq!(purged.mfa_challenges, 1, "{}: {purged:?}", b.name());
    assert_eq!(s.take_mfa_challenge(&dead, 100).await.unwrap(), None);
    assert_eq!(
        s.take_mfa_challenge(&live, 200).await.unwrap(),
        Some(challenge(500))
    );
    assert_eq!(
        s.take_mfa_challenge(&live, 200).await.unwrap(),
        None,
        "once"
    );
    // Expired: taken and refused.
    s.put_mfa_challenge(&live, &challenge(300)).await.unwrap();
    assert_eq!(s.take_mfa_challenge(&live, 300).await.unwrap(), None);
    assert_eq!(
        s.take_mfa_challenge(&live, 100).await.unwrap(),
        None,
        "removed"
    );
}

/// Time steps, recovery codes and challenges are single use under races (on PostgreSQL,
/// between the pool's connections as between replicas).
async fn racing_second_factor_uses_have_one_winner(b: &Backend) {
    const TASKS: usize = 4;
    let u = user("racer@example.com", None);
    b.store.create_user(&u).await.unwrap();
    let codes: Vec<_> = (0..RACE_ROUNDS)
        .map(|i| token_hash(&format!("code{i}")))
        .collect();
    b.store
        .put_mfa_pending(&pending_mfa(&u.id, b"s"))
        .await
        .unwrap();
    assert!(b.store.enable_mfa(&u.id, b"s", 1, &codes).await.unwrap());
    for (round, &code) in codes.iter().enumerate() {
        let step = 10 + round as u64;
        let hash = token_hash(&format!("challenge{round}"));
        b.store
            .put_mfa_challenge(
                &hash,
                &MfaChallenge {
                    user_id: u.id.clone(),
                    login: "racer@example.com".into(),
                    password_fingerprint: [0; 32],
                    expires_at: 500,
                },
            )
            .await
            .unwrap();
        let barrier = Arc::new(Barrier::new(TASKS));
        let handles: Vec<_> = (0..TASKS)
            .map(|_| {
                let (store, barrier, id) = (b.store.clone(), barrier.clone(), u.id.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    (
                        store.accept_mfa_step(&id, step).await.unwrap(),
                        store.take_recovery_code(&id, &code).await.unwrap(),
                        store
                            .take_mfa_challenge(&hash, 100)
                            .await
                            .unwrap()
                            .is_some(),
                    )
                })
            })
            .collect();
        let mut wins = (0, 0, 0);
        for h in handles {
            let (a, r, c) = h.await.unwrap();
            wins = (
                wins.0 + usize::from(a),
                wins.1 + usize::from(r),
                wins.2 + usize::from(c),
            );
        }
        assert_eq!(wins, (1, 1, 1), "{}: round {round}", b.name());
    }
}
