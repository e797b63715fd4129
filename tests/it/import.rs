//! Importing users with the password hashes of another system (issue 12, item 3):
//! `gatehouse user import` (the real binary) and `POST /auth/admin/users/import`, on sled and
//! PostgreSQL. Hashes are made here by the crates of each scheme (bcrypt, scrypt, pbkdf2,
//! argon2), plus lines Python's `bcrypt` and `argon2-cffi` wrote
//! (`tests/data/python_hashes.jsonl`, see `make_python_fixtures.py` beside it).

use std::path::Path;
use std::process::{Command, Output};

use argon2::password_hash::{PasswordHasher, SaltString};
use bytes::Bytes;
use gatehouse::store::{Store, UserRecord};
use http::Method;
use serde_json::json;

use crate::harness::{Gatehouse, ROUTES, Setup, T0, base_config};
use crate::pg::Schema;

/// Users of Python's libraries; each one's password is its `name`.
const PYTHON_LINES: &str = include_str!("../data/python_hashes.jsonl");

/// A user line with the hash of `password` made by each scheme's crate, at costs small
/// enough for a debug build. `(line, password, scheme label)`.
fn crate_lines() -> Vec<(serde_json::Value, String, &'static str)> {
    let salt = SaltString::encode_b64(b"import-test-salt").unwrap();
    let hash = |password: &str, scheme: &str| -> String {
        let p = password.as_bytes();
        let argon2_hash = |algorithm, m, t, lanes| {
            argon2::Argon2::new(
                algorithm,
                argon2::Version::V0x13,
                argon2::Params::new(m, t, lanes, None).unwrap(),
            )
            .hash_password(p, &salt)
            .unwrap()
            .to_string()
        };
        match scheme {
            "bcrypt" => bcrypt::hash(p, 4).unwrap(),
            "bcrypt-2y" => format!("$2y${}", &bcrypt::hash(p, 5).unwrap()[4..]),
            "scrypt" => scrypt::Scrypt
                .hash_password_customized(
                    p,
                    None,
                    None,
                    scrypt::Params::new(6, 8, 1, 32).unwrap(),
                    &salt,
                )
                .unwrap()
                .to_string(),
            "pbkdf2" => pbkdf2::Pbkdf2
                .hash_password_customized(
                    p,
                    Some(pbkdf2::Algorithm::Pbkdf2Sha256.ident()),
                    None,
                    pbkdf2::Params {
                        rounds: 2000,
                        output_length: 32,
                    },
                    &salt,
                )
                .unwrap()
                .to_string(),
            "argon2id" => argon2_hash(argon2::Algorithm::Argon2id, 512, 2, 2),
            "argon2i" => argon2_hash(argon2::Algorithm::Argon2i, 256, 3, 1),
            other => panic!("{other}"),
        }
    };
    [
        ("bcrypt", "bcrypt"),
        ("bcrypt-2y", "bcrypt"),
        ("scrypt", "scrypt"),
        ("pbkdf2", "pbkdf2-sha256"),
        ("argon2id", "argon2"),
        ("argon2i", "argon2"),
    ]
    .into_iter()
    .map(|(scheme, label)| {
        let password = format!("{scheme} old system passphrase");
        let line = json!({
            "email": format!("{scheme}@Example.com"),
            "username": format!("user-{scheme}"),
            "name": format!("Imported {scheme}"),
            "roles": ["creator"],
            "email_verified": scheme.starts_with("bcrypt"),
            "password_hash": hash(&password, scheme),
        });
        (line, password, label)
    })
    .collect()
}

/// Every test user: `(email, password, scheme label)`, and the JSON lines to import them.
fn all_users() -> (Vec<(String, String, &'static str)>, String) {
    let mut users = Vec::new();
    let mut text = String::new();
    for (line, password, label) in crate_lines() {
        users.push((line["email"].as_str().unwrap().to_string(), password, label));
        text.push_str(&format!("{line}\n"));
    }
    for raw in PYTHON_LINES.lines() {
        let line: serde_json::Value = serde_json::from_str(raw).unwrap();
        let hash = line["password_hash"].as_str().unwrap();
        let label = if hash.starts_with("$2") {
            "bcrypt"
        } else {
            "argon2"
        };
        users.push((
            line["email"].as_str().unwrap().to_string(),
            line["name"].as_str().unwrap().to_string(),
            label,
        ));
        text.push_str(raw);
        text.push('\n');
    }
    (users, text)
}

/// Several bad lines among good ones, and the problems expected: `(line, field)`.
fn bad_input(good: &str) -> (String, Vec<(usize, Option<&'static str>)>) {
    let bcrypt = bcrypt::hash("some passphrase", 4).unwrap();
    let good_lines: Vec<&str> = good.lines().collect();
    let lines = [
        good_lines[0].to_string(),                                             // 1
        json!({"email": "not-an-address", "password_hash": bcrypt}).to_string(), // 2
        String::new(),                                                         // 3 (blank)
        json!({"email": "md5@example.com", "password_hash": "$1$abc$def"}).to_string(), // 4
        json!({"email": "cost@example.com", "password_hash": format!("$2b$15${}", &bcrypt[7..])}).to_string(), // 5
        "{not json".to_string(),                                               // 6
        json!({"email": "BCRYPT@example.com", "password_hash": bcrypt}).to_string(), // 7: line 1's address
        json!({"email": "roles@example.com", "roles": ["nobody"], "username": "a b", "password_hash": bcrypt}).to_string(), // 8
        json!({"email": "extra@example.com", "password": "plain", "password_hash": bcrypt}).to_string(), // 9
        json!({"email": "short@example.com", "password_hash": &bcrypt[..40]}).to_string(), // 10
        good_lines[1].to_string(),                                             // 11
    ];
    let expected = vec![
        (2, Some("email")),
        (4, Some("password_hash")),
        (5, Some("password_hash")),
        (6, None),
        (7, Some("email")),
        (8, Some("username")),
        (8, Some("roles")),
        (9, None),
        (10, Some("password_hash")),
    ];
    (lines.join("\n"), expected)
}

/// Every user of a store, in id order.
async fn all_records(store: &dyn Store) -> Vec<UserRecord> {
    store.list_users(1000, None).await.unwrap().users
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// `POST /auth/admin/users/import` as an admin, with JSON lines.
async fn import(gh: &Gatehouse, body: &str) -> crate::harness::Reply {
    post_import(gh, &["admin"], "application/x-ndjson", body).await
}

async fn post_import(
    gh: &Gatehouse,
    roles: &[&str],
    content_type: &str,
    body: &str,
) -> crate::harness::Reply {
    let token = bearer(&gh.token("root", roles));
    gh.send(
        Method::POST,
        "/auth/admin/users/import",
        &[("authorization", &token), ("content-type", content_type)],
        Bytes::from(body.to_string()),
    )
    .await
}

/// Polls (never a timed wait) until the user's stored hash is the configured argon2id:
/// the upgrade runs after the login has answered.
async fn wait_upgraded(gh: &Gatehouse, email: &str) -> UserRecord {
    for _ in 0..2000 {
        let user = gh
            .app
            .store
            .find_user_by_email(email)
            .await
            .unwrap()
            .unwrap();
        if user
            .password_hash
            .starts_with("$argon2id$v=19$m=1024,t=1,p=1$")
        {
            return user;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    panic!("{email}: the hash was not upgraded to argon2id");
}

/// The whole HTTP story on one store: bad lines refused with their numbers and nothing
/// written, the import, its idempotence, logins with every old password and the upgrade,
/// idempotence after the upgrade, and the failure work covering every imported kind.
async fn admin_import_story(gh: &Gatehouse) {
    let (users, text) = all_users();
    let before = all_records(&*gh.app.store).await;

    // Refusals before anything is read.
    post_import(gh, &["reader"], "application/x-ndjson", &text)
        .await
        .expect_error(403, "FORBIDDEN");
    post_import(gh, &["admin"], "application/json", &text)
        .await
        .expect_error(400, "INVALID_REQUEST");
    let admin = bearer(&gh.token("root", &["admin"]));
    gh.send(
        Method::GET,
        "/auth/admin/users/import",
        &[("authorization", &admin)],
        Bytes::new(),
    )
    .await
    .expect_error(405, "METHOD_NOT_ALLOWED");
    import(gh, "\n\n")
        .await
        .expect_error(400, "INVALID_REQUEST");

    // Several bad lines: every one reported with its number, nothing imported.
    let (bad, expected) = bad_input(&text);
    let reply = import(gh, &bad).await;
    reply.expect_error(422, "VALIDATION_FAILED");
    let body = reply.json();
    let got: Vec<(usize, Option<String>)> = body["error"]["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["line"].as_u64().unwrap() as usize,
                p["field"].as_str().map(String::from),
            )
        })
        .collect();
    let expected: Vec<(usize, Option<String>)> = expected
        .into_iter()
        .map(|(l, f)| (l, f.map(String::from)))
        .collect();
    assert_eq!(got, expected, "{body}");
    assert_eq!(
        body["error"]["message"],
        "8 lines of the import are not acceptable; nothing was imported"
    );
    let text_of = |line: usize| -> String {
        body["error"]["lines"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["line"] == line)
            .map(|p| p["message"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
            .join(" | ")
    };
    assert!(text_of(5).contains("cost 15"), "{}", text_of(5));
    assert!(text_of(7).contains("line 1"), "{}", text_of(7));
    assert!(text_of(4).contains("scheme"), "{}", text_of(4));
    for hash_start in ["$2b$04$", "$2b$15$"] {
        assert!(
            !body.to_string().contains(hash_start),
            "no hash is echoed: {body}"
        );
    }
    assert_eq!(all_records(&*gh.app.store).await, before, "nothing written");

    // The import.
    let reply = import(gh, &text).await;
    reply.expect(200);
    assert_eq!(
        reply.json(),
        json!({"imported": users.len(), "unchanged": 0})
    );
    let imported = all_records(&*gh.app.store).await;
    assert_eq!(imported.len(), before.len() + users.len());
    let creator = gh
        .app
        .store
        .find_user_by_email("scrypt@example.com")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(creator.username.as_deref(), Some("user-scrypt"));
    assert_eq!(creator.roles, ["creator"]);
    assert!(!creator.email_verified);
    let defaulted = gh
        .app
        .store
        .find_user_by_email("py.argon2@example.com")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(defaulted.roles, ["reader"], "auth.default_roles");

    // A second run changes nothing.
    let reply = import(gh, &text).await;
    assert_eq!(
        reply.expect(200).json(),
        json!({"imported": 0, "unchanged": users.len()})
    );
    assert_eq!(
        all_records(&*gh.app.store).await,
        imported,
        "store unchanged"
    );

    // Every failed login now does the work of each imported kind too (crate lines: bcrypt
    // cost 4 and 5, scrypt, pbkdf2, two argon2; Python's: bcrypt 4 (twice), argon2id).
    let kinds = gh.app.hasher.failure_kinds();
    assert_eq!(kinds.len(), 8, "{kinds:?}");

    // A line differing from its existing account is reported, naming the fields only.
    let changed = text.replacen("Imported bcrypt", "Someone else", 1);
    let reply = import(gh, &changed).await;
    reply.expect_error(422, "VALIDATION_FAILED");
    let problem = &reply.json()["error"]["lines"][0];
    assert_eq!(problem["line"], 1);
    assert!(
        problem["message"]
            .as_str()
            .unwrap()
            .contains("differs in name"),
        "{problem}"
    );
    assert_eq!(
        all_records(&*gh.app.store).await,
        imported,
        "store unchanged"
    );

    // Old passwords log in; wrong ones do not; the hash becomes the configured argon2id.
    gh.advance(1);
    for (email, password, _) in &users {
        gh.login(email, "not the password at all")
            .await
            .expect_error(401, "INVALID_CREDENTIALS");
        let grant = gh.login(email, password).await.expect(200).json();
        assert!(
            grant["user"]["email"]
                .as_str()
                .unwrap()
                .eq_ignore_ascii_case(email),
            "{grant}"
        );
        let upgraded = wait_upgraded(gh, email).await;
        gh.login(email, password).await.expect(200);
        assert_eq!(
            gh.app
                .store
                .find_user_by_email(email)
                .await
                .unwrap()
                .unwrap()
                .password_hash,
            upgraded.password_hash,
            "upgraded once"
        );
    }
    gh.login("user-pbkdf2", "pbkdf2 old system passphrase")
        .await
        .expect(200);
    let metrics = gh.get("/metrics").await.expect(200).text();
    for (scheme, n) in [
        ("bcrypt", 4),
        ("scrypt", 1),
        ("pbkdf2-sha256", 1),
        ("argon2", 3),
    ] {
        let series = format!("gatehouse_password_upgrades_total{{scheme=\"{scheme}\"}} {n}");
        assert!(metrics.contains(&series), "{series} missing:\n{metrics}");
    }

    // After the upgrades the same file still changes nothing.
    let upgraded = all_records(&*gh.app.store).await;
    let reply = import(gh, &text).await;
    assert_eq!(
        reply.expect(200).json(),
        json!({"imported": 0, "unchanged": users.len()})
    );
    assert_eq!(all_records(&*gh.app.store).await, upgraded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_import_on_sled() {
    let gh = Gatehouse::start(ROUTES, &[]).await;
    admin_import_story(&gh).await;
    // A restart learns the kinds still stored from a scan of the users (none are left
    // after the upgrades but the configured argon2id).
    let gh = gh.restart().await;
    assert_eq!(gh.app.hasher.failure_kinds().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_import_on_postgres() {
    let Some(schema) = Schema::create().await else {
        return;
    };
    let url = schema.url("");
    let env = [
        ("GATEHOUSE_STORE_BACKEND", "postgres"),
        ("GATEHOUSE_STORE_URL", url.as_str()),
        ("GATEHOUSE_STORE_POOL_SIZE", "4"),
    ];
    let gh = Gatehouse::start(ROUTES, &env).await;
    admin_import_story(&gh).await;
}

/// After a restart, failed logins again do the work of every kind still stored: the
/// start-up scan finds them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_relearns_the_stored_kinds() {
    let gh = Gatehouse::start(ROUTES, &[]).await;
    let (users, text) = all_users();
    import(&gh, &text).await.expect(200);
    let kinds = gh.app.hasher.failure_kinds();
    let gh = gh.restart().await;
    for _ in 0..2000 {
        if gh.app.hasher.failure_kinds().len() == kinds.len() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let mut relearned = gh.app.hasher.failure_kinds();
    let mut kinds = kinds;
    relearned.sort();
    kinds.sort();
    assert_eq!(relearned, kinds);
    // An unknown name costs the work of every kind, as a wrong password on any user does.
    let (_, unknown) = gh.app.hasher.verify_traced("wrong".into(), None).await;
    for (email, _, _) in &users {
        let user = gh
            .app
            .store
            .find_user_by_email(email)
            .await
            .unwrap()
            .unwrap();
        let (_, work) = gh
            .app
            .hasher
            .verify_traced("wrong".into(), Some(user.password_hash))
            .await;
        let (mut a, mut b) = (work, unknown.clone());
        a.sort();
        b.sort();
        assert_eq!(a, b, "{email}");
    }
}

fn gatehouse_bin(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(args)
        .env_remove("GATEHOUSE_CONFIG")
        .output()
        .unwrap()
}

fn describe(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The store's users, read with the server stopped (sled: one process at a time).
async fn records_at(config: &Path) -> Vec<UserRecord> {
    let text = std::fs::read_to_string(config).unwrap();
    let config = gatehouse::config::Config::from_toml(&text, Vec::new()).unwrap();
    let store = gatehouse::store::open(&config).await.unwrap();
    all_records(&*store).await
}

/// `gatehouse user import`: the bad-line report and exit code, the import, a second run
/// that changes nothing, then logins on a server over the same store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_import_then_login() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = gatehouse::demo::echo_upstream().await.unwrap();
    let config = dir.path().join("gatehouse.toml");
    std::fs::write(
        &config,
        base_config(upstream, &dir.path().join("store"), ROUTES),
    )
    .unwrap();
    let config_arg = config.to_str().unwrap();
    let (users, text) = all_users();
    let input = dir.path().join("users.jsonl");

    let (bad, expected) = bad_input(&text);
    std::fs::write(&input, &bad).unwrap();
    let out = gatehouse_bin(&[
        "user",
        "import",
        "--config",
        config_arg,
        "--input",
        input.to_str().unwrap(),
    ]);
    let all = describe(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with(
            "error: 8 lines of the import are not acceptable; nothing was imported\n  line 2: email: "
        ),
        "{all}"
    );
    // One line per problem after the summary, in line order, each naming its field.
    let reported: Vec<&str> = stderr.lines().skip(1).collect();
    assert_eq!(reported.len(), expected.len(), "{all}");
    for (got, (line, field)) in reported.iter().zip(&expected) {
        let prefix = match field {
            Some(field) => format!("  line {line}: {field}: "),
            None => format!("  line {line}: "),
        };
        assert!(
            got.starts_with(&prefix),
            "{got:?} should start with {prefix:?}\n{all}"
        );
    }
    assert!(records_at(&config).await.is_empty(), "nothing imported");

    std::fs::write(&input, &text).unwrap();
    let args = [
        "user",
        "import",
        "--config",
        config_arg,
        "--input",
        input.to_str().unwrap(),
    ];
    let out = gatehouse_bin(&args);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("imported {} users, 0 unchanged", users.len())
    );
    let first = records_at(&config).await;
    assert_eq!(first.len(), users.len());
    let out = gatehouse_bin(&args);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("imported 0 users, {} unchanged", users.len())
    );
    assert_eq!(
        records_at(&config).await,
        first,
        "the second run changed nothing"
    );

    // A server over the same store: every old password logs in.
    let dir_path = dir.path().to_path_buf();
    let gh = Gatehouse::launch_in(Setup::new(upstream, ROUTES), dir, T0).await;
    assert_eq!(gh.dir.path(), dir_path);
    for (email, password, _) in &users {
        gh.login(email, password).await.expect(200);
        wait_upgraded(&gh, email).await;
    }
}
