//! Builds a large store quickly, for `benches/startup.sh`, and purges it.
//!
//! Writing a million users through `/auth/register` would cost a million argon2id hashes;
//! this writes records straight through the store's import path (`Store::import`, the one
//! `gatehouse store copy` uses: one transaction into PostgreSQL, one flush on sled), with
//! cheap argon2id parameters in the password hashes (every user's password is
//! [`PASSWORD`], so a login still works against the filled store).
//!
//! ```text
//! store_fill fill  CONFIG USERS LIVE DEAD ROTATIONS NOW   # add USERS users to the store CONFIG names
//! store_fill purge CONFIG NOW GRACE                       # Store::purge_expired, prints what went
//! ```
//!
//! Each user gets LIVE live sessions (current token and one rotated hash each) and DEAD
//! revoked families of ROTATIONS rotated hashes plus a current one, last used a day before
//! NOW: the records a refresh churn leaves behind, dead once purging runs. Users are
//! `userN@fill.example` with ids derived from N, so a second fill with other numbers adds
//! to the same store only if the ranges do not overlap (the first argument after `fill` may
//! be `START:USERS` for that).
//!
//! Run through cargo: `cargo bench --bench store_fill -- fill gatehouse.toml 1000000 1 0 0 $(date +%s)`.

use std::sync::Arc;
use std::time::Instant;

use gatehouse::config::Config;
use gatehouse::store::copy::{Chunk, Counts, ImportMode, Record, RefreshRecord};
use gatehouse::store::{SessionRecord, Store, UserRecord};
use gatehouse::token::token_hash;

/// The password of every filled user.
pub const PASSWORD: &str = "correct horse battery staple";
/// Records per chunk sent to the import.
const BATCH: usize = 4096;
/// Session lifetime of filled sessions (the default `tokens.refresh_ttl`).
const SESSION_TTL: u64 = 30 * 24 * 3600;

fn usage() -> ! {
    eprintln!(
        "usage: store_fill fill CONFIG [START:]USERS LIVE DEAD ROTATIONS NOW\n       \
         store_fill purge CONFIG NOW GRACE"
    );
    std::process::exit(2)
}

fn num(arg: Option<&String>) -> u64 {
    arg.and_then(|a| a.parse().ok()).unwrap_or_else(|| usage())
}

/// A UUID-shaped id (version 7 layout) derived from a number and a kind, so passes agree.
fn id(kind: u16, n: u64, sub: u64) -> String {
    format!(
        "0190{kind:04x}-{:04x}-7{:03x}-8000-{:012x}",
        (sub >> 12) & 0xffff,
        sub & 0xfff,
        n
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench` passes `--bench`; anything starting with `--` is not ours.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let Some(config_path) = args.get(1) else {
        usage()
    };
    let config = Config::load(std::path::Path::new(config_path)).unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(2)
    });
    let store = gatehouse::store::open(&config).await.unwrap_or_else(|e| {
        eprintln!("store: {e}");
        std::process::exit(1)
    });
    match args.first().map(String::as_str) {
        Some("fill") => {
            let (start, users) = match args.get(2).map(|a| a.split_once(':')) {
                Some(Some((s, n))) => (
                    s.parse().unwrap_or_else(|_| usage()),
                    n.parse().unwrap_or_else(|_| usage()),
                ),
                _ => (0, num(args.get(2))),
            };
            let shape = Shape {
                start,
                users,
                live: num(args.get(3)),
                dead: num(args.get(4)),
                rotations: num(args.get(5)),
                now: num(args.get(6)),
            };
            fill(store, shape).await;
        }
        Some("purge") => {
            let (now, grace) = (num(args.get(2)), num(args.get(3)));
            let started = Instant::now();
            let purged = store.purge_expired(now, grace).await.unwrap_or_else(|e| {
                eprintln!("purge: {e}");
                std::process::exit(1)
            });
            println!(
                "purged sessions={} refresh_tokens={} one_time_tokens={} revocations={} \
                 login_failures={} in {:.2}s",
                purged.sessions,
                purged.refresh_tokens,
                purged.one_time_tokens,
                purged.revocations,
                purged.login_failures,
                started.elapsed().as_secs_f64()
            );
        }
        _ => usage(),
    }
}

#[derive(Clone, Copy)]
struct Shape {
    start: u64,
    users: u64,
    live: u64,
    dead: u64,
    rotations: u64,
    now: u64,
}

async fn fill(store: Arc<dyn Store>, shape: Shape) {
    let started = Instant::now();
    // Cheap argon2id (m=8 KiB, t=1): the store does not care, and logins against the
    // filled store still verify.
    let hash = {
        use argon2::password_hash::{PasswordHasher, SaltString};
        let params = argon2::Params::new(8, 1, 1, None).unwrap_or_else(|e| panic!("{e}"));
        let argon =
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let salt = SaltString::encode_b64(b"store-fill-salt!").unwrap_or_else(|e| panic!("{e}"));
        argon
            .hash_password(PASSWORD.as_bytes(), &salt)
            .unwrap_or_else(|e| panic!("{e}"))
            .to_string()
    };
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let writer = tokio::spawn(async move { store.import(ImportMode::Write, rx).await });
    let mut counts = Counts::default();
    let mut chunk = Vec::with_capacity(BATCH);
    let send = async |record: Record, chunk: &mut Vec<Record>, counts: &mut Counts| {
        counts.add(record.kind(), 1);
        chunk.push(record);
        if chunk.len() >= BATCH {
            let full = std::mem::replace(chunk, Vec::with_capacity(BATCH));
            if tx.send(Chunk::Records(full)).await.is_err() {
                return Err(());
            }
        }
        Ok(())
    };
    let users = shape.start..shape.start + shape.users;
    let families = shape.live + shape.dead;
    let day_ago = shape.now.saturating_sub(24 * 3600);
    // Users, then sessions, then refresh hashes: the order of copy::Kind::ALL, which
    // PostgreSQL's foreign keys need.
    'out: {
        for n in users.clone() {
            let user = UserRecord {
                id: id(1, n, 0),
                email: format!("user{n}@fill.example"),
                username: None,
                name: None,
                password_hash: hash.clone(),
                roles: vec!["reader".into()],
                email_verified: true,
                locked: false,
                created_at: day_ago,
                updated_at: day_ago,
                password_changed_at: day_ago,
            };
            if send(Record::User(user), &mut chunk, &mut counts)
                .await
                .is_err()
            {
                break 'out;
            }
        }
        for n in users.clone() {
            for f in 0..families {
                let live = f < shape.live;
                let session = SessionRecord {
                    id: id(2, n, f),
                    user_id: id(1, n, 0),
                    created_at: day_ago,
                    last_used_at: if live { shape.now } else { day_ago },
                    expires_at: day_ago + SESSION_TTL,
                    revoked: !live,
                    otp: false,
                };
                if send(Record::Session(session), &mut chunk, &mut counts)
                    .await
                    .is_err()
                {
                    break 'out;
                }
            }
        }
        for n in users {
            for f in 0..families {
                let rotated = if f < shape.live { 1 } else { shape.rotations };
                for r in 0..=rotated {
                    let token = RefreshRecord {
                        hash: token_hash(&format!("fill-{n}-{f}-{r}")),
                        session_id: id(2, n, f),
                        rotated: r < rotated,
                        expires_at: day_ago + SESSION_TTL,
                    };
                    if send(Record::Refresh(token), &mut chunk, &mut counts)
                        .await
                        .is_err()
                    {
                        break 'out;
                    }
                }
            }
        }
        if !chunk.is_empty() {
            let _ = tx.send(Chunk::Records(std::mem::take(&mut chunk))).await;
        }
        let _ = tx.send(Chunk::End(counts)).await;
    }
    drop(tx);
    match writer.await {
        Ok(Ok(imported)) => println!(
            "filled {} records ({} users) in {:.1}s",
            imported.copied.total(),
            shape.users,
            started.elapsed().as_secs_f64()
        ),
        Ok(Err(e)) => {
            eprintln!("import: {e}");
            std::process::exit(1)
        }
        Err(e) => {
            eprintln!("import task: {e}");
            std::process::exit(1)
        }
    }
}
