//! Password hashing (argon2id) and the password policy.
//!
//! Decisions, and why:
//!
//! - **argon2id with the argon2 crate's defaults** (19 MiB, 2 iterations, 1 lane: the OWASP
//!   recommendation), stored as PHC strings (`$argon2id$v=19$m=…,t=…,p=…$salt$hash`) so the
//!   parameters travel with each hash. [`VerifyOutcome::Match`] says `needs_rehash` when a
//!   stored hash was made with other parameters, so raising the cost upgrades users as they
//!   log in.
//! - **Bounded CPU and memory.** Hashing runs on tokio's blocking pool behind a semaphore of
//!   `max_concurrent` permits (default: one per core). Each hash holds `memory_kib` of memory,
//!   so the semaphore also caps memory at `max_concurrent × memory_kib`. The permit moves into
//!   the blocking task, so a client that disconnects mid-login cannot free a slot before the
//!   work it started is done.
//! - **argon2's working memory is ours, reused while logins overlap and given back when
//!   they stop** ([`Blocks`]). The crate's own `hash_password`/`verify_password` allocate
//!   `memory_kib` afresh on every call; with glibc's allocator those 19 MiB blocks, freed and
//!   allocated again from other blocking-pool threads, were never given back: the soak
//!   (`benches/soak.sh`) saw RSS climb by about 190 MB/s under steady logins, past 11 GB in
//!   70 s. Now each computation borrows a buffer from a pool of at most `max_concurrent` (the
//!   semaphore's permits), zeroed when returned, so memory is capped at `max_concurrent ×
//!   memory_kib` whatever the allocator; and 2 s after the last computation the pool is
//!   emptied, so an idle sidecar does not sit on `max_concurrent × 19 MiB` it is not using
//!   (the binary also pins glibc's mmap threshold, so freed buffers leave the process: see
//!   `src/main.rs`). Logins in a row reuse the buffers without new page faults.
//! - **No user enumeration through timing, whatever the stored hashes' schemes.** Imported
//!   users keep their bcrypt, scrypt, pbkdf2 or argon2 hashes until their first login
//!   ([`crate::imported_hash`]), and a bcrypt cost 12 verification takes ten times an argon2id
//!   one: a wrong password would tell an imported account from an unknown name. So every
//!   *failed* verification does the same work: one computation of each [`Kind`] of hash known
//!   to be stored (the configured argon2id first; the others learned from imports, from a
//!   scan of the store at start and from any login that meets a new kind). A wrong password
//!   on a user computes that user's hash for real and a dummy of every other kind; an unknown
//!   user computes a dummy of every kind. Only a *successful* login costs its own kind
//!   alone, and success is no secret to whoever typed the right password. The cost is that
//!   each failed login pays for every kind present (about 25 ms + 250 ms with imported bcrypt
//!   cost 12 users), until the imported hashes are upgraded and the server restarts; at most
//!   [`MAX_FAILURE_KINDS`] kinds are kept, which the import enforces.
//! - **Long passwords are refused before any hashing** (`max_length` bytes), so a megabyte
//!   "password" costs nothing. A password over the limit never matches.
//! - **Policy per NIST SP 800-63B**: a minimum length in characters, a maximum in bytes, a
//!   list of common passwords (`common_passwords.txt`, embedded, case-insensitive), no
//!   password equal to the account's email, its local part or username, and no single
//!   repeated character. No composition rules (they make passwords worse, not stronger).
//!   Unicode normalisation is not applied: passwords are compared byte for byte, as typed.
//! - **Secrets stay out of logs**: nothing here that holds a password derives `Debug`, and the
//!   password bytes are overwritten once hashed (best effort: copies made by callers, e.g. the
//!   JSON body, are theirs to handle).

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use argon2::password_hash::{Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};

use crate::imported_hash::{self, Kind, Scheme};
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

/// The shortest password accepted, in characters: NIST SP 800-63B's minimum for passwords
/// chosen by users.
pub const DEFAULT_MIN_LENGTH: usize = 8;

/// The longest password accepted, in bytes. NIST asks to allow at least 64 characters; 256
/// bytes leaves room for pass phrases in any script while bounding the work per request.
pub const DEFAULT_MAX_LENGTH: usize = 256;

/// Salt length in bytes: the PHC recommendation of 16.
const SALT_LEN: usize = 16;

/// The most kinds of stored hash (scheme and parameters) whose work every failed login does:
/// each one adds its cost to every failed login. The configured argon2id counts as one.
pub const MAX_FAILURE_KINDS: usize = 8;

/// Common passwords, one per line, lowercase; `#` lines are comments.
const COMMON_PASSWORDS: &str = include_str!("common_passwords.txt");

/// Hashing cost and policy settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PasswordSettings {
    /// Minimum length in characters (Unicode scalar values).
    pub min_length: usize,
    /// Maximum length in bytes.
    pub max_length: usize,
    /// argon2id memory cost in KiB.
    pub memory_kib: u32,
    /// argon2id time cost (passes over memory).
    pub iterations: u32,
    /// argon2id lanes.
    pub parallelism: u32,
    /// Hashes computed at once; more wait for a slot.
    pub max_concurrent: usize,
}

impl Default for PasswordSettings {
    fn default() -> Self {
        PasswordSettings {
            min_length: DEFAULT_MIN_LENGTH,
            max_length: DEFAULT_MAX_LENGTH,
            memory_kib: Params::DEFAULT_M_COST,
            iterations: Params::DEFAULT_T_COST,
            parallelism: Params::DEFAULT_P_COST,
            max_concurrent: std::thread::available_parallelism().map_or(1, usize::from),
        }
    }
}

/// The answer of [`Hasher::verify`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VerifyOutcome {
    /// The password is right. When `needs_rehash`, hash it again with [`Hasher::hash`] and
    /// store the new hash: it was made with other parameters or another algorithm.
    Match { needs_rehash: bool },
    /// Wrong password, unknown user, over-long password or unreadable stored hash.
    Mismatch,
}

/// Why [`Hasher::hash`] failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PasswordError {
    /// Longer than `max_length` bytes; refused without hashing.
    TooLong { max: usize },
    /// The hashing itself failed (randomness unavailable, worker panicked): a server fault.
    Internal(String),
}

impl fmt::Display for PasswordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PasswordError::TooLong { max } => write!(f, "password longer than {max} bytes"),
            PasswordError::Internal(detail) => write!(f, "password hashing failed: {detail}"),
        }
    }
}

impl std::error::Error for PasswordError {}

/// Why the policy refused a password. `Display` gives the reason for the `WEAK_PASSWORD` error:
/// a whole sentence, shown as it is by the CLI, the JSON `message` and the reset page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WeakPassword {
    TooShort {
        min: usize,
    },
    TooLong {
        max: usize,
    },
    /// On the list of common passwords.
    Common,
    /// Equal to the account's email, its local part, or username.
    MatchesIdentity,
    /// One character repeated.
    Repetitive,
}

impl fmt::Display for WeakPassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WeakPassword::TooShort { min } => {
                write!(f, "The password must be at least {min} characters long.")
            }
            WeakPassword::TooLong { max } => {
                write!(f, "The password must be at most {max} bytes long.")
            }
            WeakPassword::Common => f.write_str(
                "The password is one of the most common passwords; choose one that is harder to guess.",
            ),
            WeakPassword::MatchesIdentity => {
                f.write_str("The password must not be your email address or username.")
            }
            WeakPassword::Repetitive => {
                f.write_str("The password must not be one character repeated.")
            }
        }
    }
}

impl std::error::Error for WeakPassword {}

/// The dummy hash of each kind of stored hash that every failed verification computes.
type FailureWork = Arc<std::sync::RwLock<Vec<(Kind, Arc<str>)>>>;

/// Hashes and verifies passwords, and applies the policy. Share it behind an `Arc`.
pub struct Hasher {
    params: Params,
    blocks: Arc<Blocks>,
    min_length: usize,
    max_length: usize,
    permits: Arc<Semaphore>,
    /// The work of a failed verification: a dummy hash (of a random password) for each kind
    /// of stored hash known, the configured argon2id's first. See the module docs.
    failure_work: FailureWork,
    common: HashSet<&'static str>,
}

impl Hasher {
    /// Validates the settings, loads the common-password list and computes the dummy hash
    /// (one argon2id run: call it at start-up, not on a request path).
    pub fn new(settings: &PasswordSettings) -> Result<Self, String> {
        if settings.min_length == 0 {
            return Err("password min_length must be at least 1".into());
        }
        if settings.max_length < settings.min_length {
            return Err(format!(
                "password max_length ({}) must not be below min_length ({})",
                settings.max_length, settings.min_length
            ));
        }
        if settings.max_concurrent == 0 || settings.max_concurrent > Semaphore::MAX_PERMITS {
            return Err(format!(
                "password max_concurrent must be between 1 and {}",
                Semaphore::MAX_PERMITS
            ));
        }
        let params = Params::new(
            settings.memory_kib,
            settings.iterations,
            settings.parallelism,
            None,
        )
        .map_err(|e| format!("invalid argon2id parameters: {e}"))?;

        let mut dummy_password = [0u8; 32];
        getrandom::fill(&mut dummy_password)
            .map_err(|e| format!("no randomness for the dummy hash: {e}"))?;
        let blocks = Arc::new(Blocks::new(settings.max_concurrent));
        let dummy_hash = hash_with(&params, &blocks, &dummy_password).map_err(|e| e.to_string())?;
        let own_kind =
            imported_hash::own_kind(&dummy_hash).ok_or("the dummy argon2id hash does not parse")?;

        let common = COMMON_PASSWORDS
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .collect();

        Ok(Hasher {
            params,
            blocks,
            min_length: settings.min_length,
            max_length: settings.max_length,
            permits: Arc::new(Semaphore::new(settings.max_concurrent)),
            failure_work: Arc::new(std::sync::RwLock::new(vec![(own_kind, dummy_hash.into())])),
            common,
        })
    }

    /// Hashes a password into a PHC string. Refuses over-long passwords without hashing; does
    /// not apply the rest of the policy (call [`Hasher::check_policy`] first).
    pub async fn hash(&self, password: String) -> Result<String, PasswordError> {
        if password.len() > self.max_length {
            return Err(PasswordError::TooLong {
                max: self.max_length,
            });
        }
        let params = self.params.clone();
        let blocks = Arc::clone(&self.blocks);
        self.run_limited(move || {
            let mut password = password.into_bytes();
            let hashed = hash_with(&params, &blocks, &password);
            wipe(&mut password);
            hashed
        })
        .await
        .and_then(|hashed| hashed)
    }

    /// Checks a password against a stored hash of any accepted scheme (argon2id, or one
    /// imported: [`crate::imported_hash`]), or, when `stored` is `None` (unknown user),
    /// does the work of a failed verification and answers [`VerifyOutcome::Mismatch`]. Every
    /// failure costs the same (see the module docs). A hash of another scheme or parameters
    /// matches with `needs_rehash`.
    pub async fn verify(&self, password: String, stored: Option<String>) -> VerifyOutcome {
        self.verify_traced(password, stored).await.0
    }

    /// [`Hasher::verify`], also returning the kinds of hash it computed, in order (for the
    /// tests that hold every failure to the same work, and for benches).
    pub async fn verify_traced(
        &self,
        password: String,
        stored: Option<String>,
    ) -> (VerifyOutcome, Vec<Kind>) {
        if password.len() > self.max_length {
            return (VerifyOutcome::Mismatch, Vec::new());
        }
        let params = self.params.clone();
        let blocks = Arc::clone(&self.blocks);
        // A snapshot: a kind learned meanwhile applies from the next verification on.
        let work = self.failure_work();
        let outcome = self
            .run_limited(move || {
                let mut password = password.into_bytes();
                let outcome = verify_with(&params, &blocks, &password, stored.as_deref(), &work);
                wipe(&mut password);
                outcome
            })
            .await;
        match outcome {
            Ok((outcome, trace, unknown_kind)) => {
                if let Some(sample) = unknown_kind {
                    // A kind no failure paid for yet (stored by another replica's import, or
                    // met before the start-up scan reached it): from now on every failure does.
                    let learner = self.learner();
                    tokio::spawn(async move { learner.learn(vec![sample]).await });
                }
                (outcome, trace)
            }
            Err(e) => {
                tracing::error!(error = %e, "password verification did not run");
                (VerifyOutcome::Mismatch, Vec::new())
            }
        }
    }

    /// The kinds of hash every failed verification computes, the configured argon2id first.
    pub fn failure_kinds(&self) -> Vec<Kind> {
        self.failure_work().iter().map(|(k, _)| k.clone()).collect()
    }

    fn failure_work(&self) -> Vec<(Kind, Arc<str>)> {
        self.failure_work
            .read()
            .map_or_else(|e| e.into_inner().clone(), |work| work.clone())
    }

    /// Adds the kinds of these stored hashes to the work of every failed verification (a
    /// dummy of each new kind is computed once, on the blocking pool behind the semaphore).
    /// Hashes that are not a valid accepted kind are skipped; past [`MAX_FAILURE_KINDS`] a
    /// new kind is logged and left out.
    pub async fn learn(&self, samples: Vec<String>) {
        self.learner().learn(samples).await;
    }

    fn learner(&self) -> Learner {
        Learner {
            params: self.params.clone(),
            blocks: Arc::clone(&self.blocks),
            permits: Arc::clone(&self.permits),
            work: Arc::clone(&self.failure_work),
        }
    }

    /// Applies the password policy. `context` holds the account's identifiers (email,
    /// username); a password equal to one of them, ignoring case, is refused. The byte-length
    /// limit is checked first, before anything costs time.
    pub fn check_policy(&self, password: &str, context: &[&str]) -> Result<(), WeakPassword> {
        if password.len() > self.max_length {
            return Err(WeakPassword::TooLong {
                max: self.max_length,
            });
        }
        if password.chars().count() < self.min_length {
            return Err(WeakPassword::TooShort {
                min: self.min_length,
            });
        }
        let mut chars = password.chars();
        let first = chars.next();
        if chars.all(|c| Some(c) == first) {
            return Err(WeakPassword::Repetitive);
        }
        let lowered = password.to_lowercase();
        if self.common.contains(lowered.as_str()) {
            return Err(WeakPassword::Common);
        }
        let matches = |identifier: &str| {
            let identifier = identifier.trim();
            !identifier.is_empty() && identifier.to_lowercase() == lowered
        };
        for identifier in context {
            let local_part = identifier.split_once('@').map(|(local, _)| local);
            if matches(identifier) || local_part.is_some_and(matches) {
                return Err(WeakPassword::MatchesIdentity);
            }
        }
        Ok(())
    }

    /// Runs blocking work on tokio's blocking pool once a permit is free, holding the permit
    /// until the work is done even if the caller goes away.
    async fn run_limited<T, F>(&self, work: F) -> Result<T, PasswordError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        run_limited(&self.permits, work).await
    }
}

/// Runs blocking work on tokio's blocking pool once one of `permits` is free, holding it
/// until the work is done even if the caller goes away.
async fn run_limited<T, F>(permits: &Arc<Semaphore>, work: F) -> Result<T, PasswordError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let permit = Arc::clone(permits)
        .acquire_owned()
        .await
        .map_err(|_| PasswordError::Internal("hashing semaphore closed".into()))?;
    tokio::task::spawn_blocking(move || {
        let result = work();
        drop(permit);
        result
    })
    .await
    .map_err(|e| PasswordError::Internal(format!("hashing task failed: {e}")))
}

/// What learning a new kind of stored hash needs, apart from the [`Hasher`] (so a login can
/// hand it to a task of its own).
struct Learner {
    params: Params,
    blocks: Arc<Blocks>,
    permits: Arc<Semaphore>,
    work: FailureWork,
}

impl Learner {
    async fn learn(self, samples: Vec<String>) {
        for sample in samples {
            let Some(kind) = stored_kind(&self.params, &sample) else {
                continue;
            };
            let known = |work: &Vec<(Kind, Arc<str>)>| work.iter().any(|(k, _)| *k == kind);
            {
                let work = self.work.read().unwrap_or_else(|e| e.into_inner());
                if known(&work) {
                    continue;
                }
                if work.len() >= MAX_FAILURE_KINDS {
                    tracing::warn!(
                        kind = %kind,
                        max = MAX_FAILURE_KINDS,
                        "a stored password hash is of a kind failed logins do not pay for: \
                         too many kinds are stored"
                    );
                    continue;
                }
            }
            let blocks = Arc::clone(&self.blocks);
            let made = run_limited(&self.permits, move || dummy_like(&blocks, &sample)).await;
            match made {
                Ok(Ok(dummy)) => {
                    let mut work = self.work.write().unwrap_or_else(|e| e.into_inner());
                    if !known(&work) && work.len() < MAX_FAILURE_KINDS {
                        tracing::info!(kind = %kind, "failed logins now also do the work of this kind of stored password hash");
                        work.push((kind, dummy.into()));
                    }
                }
                Ok(Err(e)) | Err(PasswordError::Internal(e)) => {
                    tracing::error!(kind = %kind, error = %e, "no dummy hash for a stored kind");
                }
                Err(e) => {
                    tracing::error!(kind = %kind, error = %e, "no dummy hash for a stored kind")
                }
            }
        }
    }
}

/// A hash of a random password with the scheme and parameters of `like`.
fn dummy_like(blocks: &Blocks, like: &str) -> Result<String, String> {
    if imported_hash::scheme_of(like) != Some(Scheme::Argon2) {
        return imported_hash::dummy_like(like);
    }
    let parsed = PasswordHash::new(like).map_err(|e| e.to_string())?;
    let algorithm = Algorithm::try_from(parsed.algorithm).map_err(|e| e.to_string())?;
    let version = parsed
        .version
        .map(Version::try_from)
        .transpose()
        .map_err(|e| e.to_string())?
        .unwrap_or_default();
    let recorded = Params::try_from(&parsed).map_err(|e| e.to_string())?;
    let len = parsed.hash.map_or(Params::DEFAULT_OUTPUT_LEN, |h| h.len());
    let mut password = [0u8; 32];
    getrandom::fill(&mut password).map_err(|e| e.to_string())?;
    argon2_phc(algorithm, version, &recorded, len, blocks, &password).map_err(|e| e.to_string())
}

/// The kind of a stored hash, or `None` when it is not one gatehouse can verify: an argon2
/// hash with the configured parameters is always one (the operator chose them); any other
/// must be within the import caps.
fn stored_kind(params: &Params, stored: &str) -> Option<Kind> {
    if let Ok(parsed) = PasswordHash::new(stored)
        && parsed.algorithm == Algorithm::Argon2id.ident()
        && !needs_rehash(params, &parsed)
    {
        return imported_hash::own_kind(stored);
    }
    imported_hash::kind(stored).ok()
}

/// argon2's working memory: buffers of [`Block`]s lent to one computation at a time and
/// kept for the next. At most `keep` are kept (the hashing permits), so the pool never holds
/// more than the semaphore lets run at once; [`RELEASE_AFTER`] without a computation, the
/// pool is emptied and the memory leaves the process.
pub struct Blocks {
    pool: Arc<Pool>,
}

struct Pool {
    free: std::sync::Mutex<Vec<Vec<Block>>>,
    keep: usize,
    /// Computations running now.
    in_flight: std::sync::atomic::AtomicUsize,
    /// Bumped by every computation, so a release scheduled before a later one does nothing.
    epoch: std::sync::atomic::AtomicU64,
}

/// How long buffers outlive the last computation. Logins in a row, even one at a time,
/// reuse them: a fresh 19 MiB buffer costs its page faults and zeroing on every hash
/// (measured: logins/s fell from 51 to 31 on one core when buffers were dropped at once).
/// An idle sidecar gives the memory back after this long.
const RELEASE_AFTER: std::time::Duration = std::time::Duration::from_secs(2);

impl Blocks {
    fn new(keep: usize) -> Blocks {
        Blocks {
            pool: Arc::new(Pool {
                free: std::sync::Mutex::new(Vec::with_capacity(keep)),
                keep,
                in_flight: std::sync::atomic::AtomicUsize::new(0),
                epoch: std::sync::atomic::AtomicU64::new(0),
            }),
        }
    }

    /// Runs argon2 into `out` with a pooled buffer of the size `params` need.
    fn compute(
        &self,
        algorithm: Algorithm,
        version: Version,
        params: Params,
        password: &[u8],
        salt: &[u8],
        out: &mut [u8],
    ) -> Result<(), argon2::Error> {
        use std::sync::atomic::Ordering;
        let pool = &self.pool;
        let need = params.block_count();
        pool.in_flight.fetch_add(1, Ordering::SeqCst);
        pool.epoch.fetch_add(1, Ordering::SeqCst);
        // A poisoned lock only means another hash panicked; the buffers are still buffers.
        let lent = {
            let mut free = pool.free.lock().unwrap_or_else(|e| e.into_inner());
            let found = free.iter().position(|b| b.len() == need);
            found.map(|i| free.swap_remove(i))
        };
        let mut buffer = lent.unwrap_or_else(|| vec![Block::default(); need]);
        let result = Argon2::new(algorithm, version, params).hash_password_into_with_memory(
            password,
            salt,
            out,
            &mut buffer[..],
        );
        // The state derives from the password: it does not outlive the computation.
        buffer.fill(Block::default());
        std::hint::black_box(&buffer);
        let last = {
            let mut free = pool.free.lock().unwrap_or_else(|e| e.into_inner());
            if free.len() < pool.keep {
                free.push(buffer);
            }
            pool.in_flight.fetch_sub(1, Ordering::SeqCst) == 1
        };
        if last {
            self.release_later(pool.epoch.load(Ordering::SeqCst));
        }
        result
    }

    /// Empties the pool [`RELEASE_AFTER`] from now unless a computation starts meanwhile. On
    /// the runtime when there is one (hashing runs on its blocking threads); without one (a
    /// CLI command), at once.
    fn release_later(&self, epoch: u64) {
        let pool = Arc::downgrade(&self.pool);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    tokio::time::sleep(RELEASE_AFTER).await;
                    if let Some(pool) = pool.upgrade() {
                        pool.release_if_idle(epoch);
                    }
                });
            }
            Err(_) => self.pool.release_if_idle(epoch),
        }
    }

    /// Buffers held for reuse now (for tests).
    pub fn pooled(&self) -> usize {
        self.pool.free.lock().map_or(0, |free| free.len())
    }
}

impl Pool {
    fn release_if_idle(&self, epoch: u64) {
        use std::sync::atomic::Ordering;
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        if self.in_flight.load(Ordering::SeqCst) == 0 && self.epoch.load(Ordering::SeqCst) == epoch
        {
            free.clear();
        }
    }
}

fn hash_with(params: &Params, blocks: &Blocks, password: &[u8]) -> Result<String, PasswordError> {
    argon2_phc(
        Algorithm::Argon2id,
        Version::V0x13,
        params,
        Params::DEFAULT_OUTPUT_LEN,
        blocks,
        password,
    )
}

/// An argon2 PHC string of `password` with a fresh salt.
fn argon2_phc(
    algorithm: Algorithm,
    version: Version,
    params: &Params,
    output_len: usize,
    blocks: &Blocks,
    password: &[u8],
) -> Result<String, PasswordError> {
    let internal =
        |what: &str, e: &dyn fmt::Display| PasswordError::Internal(format!("{what}: {e}"));
    let mut salt = [0u8; SALT_LEN];
    getrandom::fill(&mut salt).map_err(|e| internal("no randomness for a salt", &e))?;
    let salt_string = SaltString::encode_b64(&salt).map_err(|e| internal("salt encoding", &e))?;
    let mut out = vec![0u8; output_len];
    let params = Params::new(
        params.m_cost(),
        params.t_cost(),
        params.p_cost(),
        Some(output_len),
    )
    .map_err(|e| internal("argon2", &e))?;
    blocks
        .compute(
            algorithm,
            version,
            params.clone(),
            password,
            &salt,
            &mut out,
        )
        .map_err(|e| internal("argon2", &e))?;
    let phc = PasswordHash {
        algorithm: algorithm.ident(),
        version: Some(version.into()),
        params: ParamsString::try_from(&params).map_err(|e| internal("argon2", &e))?,
        salt: Some(salt_string.as_salt()),
        hash: Some(Output::new(&out).map_err(|e| internal("argon2", &e))?),
    };
    Ok(phc.to_string())
}

/// Verifies `password` against `stored` (see [`Hasher::verify_traced`]). Returns the
/// outcome, the kinds computed, and the stored hash when its kind is not in `work` (to be
/// learned).
fn verify_with(
    params: &Params,
    blocks: &Blocks,
    password: &[u8],
    stored: Option<&str>,
    work: &[(Kind, Arc<str>)],
) -> (VerifyOutcome, Vec<Kind>, Option<String>) {
    let mut trace = Vec::with_capacity(work.len());
    // The stored hash's kind, when it is one gatehouse can verify; an unreadable or
    // out-of-bounds hash is treated as an unknown user (the hash itself is never logged:
    // it is offline-crackable material).
    let real = stored.and_then(|stored| match stored_kind(params, stored) {
        Some(kind) => Some((kind, stored)),
        None => {
            tracing::error!("a stored password hash is unreadable or over the cost caps");
            None
        }
    });
    if let Some((kind, stored)) = &real {
        let matched = compute(blocks, password, stored);
        trace.push(kind.clone());
        if matched {
            let needs_rehash = kind.scheme() != Scheme::Argon2
                || PasswordHash::new(stored).map_or(true, |parsed| needs_rehash(params, &parsed));
            return (VerifyOutcome::Match { needs_rehash }, trace, None);
        }
    }
    // A failure: the dummy of every other kind known, so that it costs what every other
    // failure costs (an unknown user's included).
    let own = real.as_ref().map(|(kind, _)| kind);
    for (kind, dummy) in work {
        if Some(kind) != own {
            let _ = compute(blocks, password, dummy);
            trace.push(kind.clone());
        }
    }
    let unknown = real
        .filter(|(kind, _)| !work.iter().any(|(k, _)| k == kind))
        .map(|(_, stored)| stored.to_string());
    (VerifyOutcome::Mismatch, trace, unknown)
}

/// Whether `password` matches `hash`, of whatever accepted scheme.
fn compute(blocks: &Blocks, password: &[u8], hash: &str) -> bool {
    match imported_hash::scheme_of(hash) {
        Some(Scheme::Argon2) => {
            PasswordHash::new(hash).is_ok_and(|parsed| matches(blocks, password, &parsed))
        }
        Some(_) => imported_hash::verify(password, hash),
        None => false,
    }
}

/// Whether `password` hashes to `stored` under the algorithm, version and parameters recorded
/// in it (as argon2's `verify_password` decides), compared in constant time.
fn matches(blocks: &Blocks, password: &[u8], stored: &PasswordHash<'_>) -> bool {
    let Ok(algorithm) = Algorithm::try_from(stored.algorithm) else {
        return false;
    };
    let version = match stored.version.map(Version::try_from).transpose() {
        Ok(version) => version.unwrap_or_default(),
        Err(_) => return false,
    };
    let (Some(expected), Some(salt)) = (stored.hash, stored.salt) else {
        return false;
    };
    let Ok(recorded) = Params::try_from(stored) else {
        return false;
    };
    let Ok(params) = Params::new(
        recorded.m_cost(),
        recorded.t_cost(),
        recorded.p_cost(),
        Some(expected.len()),
    ) else {
        return false;
    };
    let mut salt_buffer = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buffer) else {
        return false;
    };
    let mut out = vec![0u8; expected.len()];
    let computed = blocks.compute(algorithm, version, params, password, salt, &mut out);
    computed.is_ok() && bool::from(expected.as_bytes().ct_eq(&out))
}

/// Whether a stored hash differs from what [`Hasher::hash`] would produce today.
fn needs_rehash(params: &Params, stored: &PasswordHash<'_>) -> bool {
    if stored.algorithm != Algorithm::Argon2id.ident()
        || stored.version != Some(Version::V0x13.into())
    {
        return true;
    }
    let Ok(stored_params) = Params::try_from(stored) else {
        return true;
    };
    stored_params.m_cost() != params.m_cost()
        || stored_params.t_cost() != params.t_cost()
        || stored_params.p_cost() != params.p_cost()
        || stored.hash.map(|h| h.len()) != Some(Params::DEFAULT_OUTPUT_LEN)
}

/// Overwrites a password buffer. `black_box` keeps the compiler from dropping the writes as
/// dead stores to memory about to be freed.
fn wipe(buffer: &mut [u8]) {
    buffer.fill(0);
    std::hint::black_box(buffer);
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// The smallest parameters argon2 accepts, so tests run fast.
    fn settings() -> PasswordSettings {
        PasswordSettings {
            min_length: 8,
            max_length: 64,
            memory_kib: 8,
            iterations: 1,
            parallelism: 1,
            max_concurrent: 2,
        }
    }

    fn hasher() -> Hasher {
        Hasher::new(&settings()).unwrap()
    }

    /// Regression (issue 15's soak): argon2's working memory was allocated per call and, with
    /// glibc, never given back (RSS +190 MB/s under logins). It now comes from a pool that
    /// never holds more buffers than there are permits, however many computations ran.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn working_memory_is_pooled_and_bounded() {
        let hasher = Arc::new(hasher());
        let hash = hasher.hash("correct horse".into()).await.unwrap();
        let tasks: Vec<_> = (0..24)
            .map(|i| {
                let (hasher, hash) = (Arc::clone(&hasher), hash.clone());
                tokio::spawn(async move {
                    if i % 3 == 0 {
                        hasher.hash("another horse".into()).await.map(|_| true)
                    } else {
                        let stored = (i % 3 == 1).then_some(hash);
                        Ok(hasher.verify("correct horse".into(), stored).await
                            != VerifyOutcome::Mismatch)
                    }
                })
            })
            .collect();
        for (i, task) in tasks.into_iter().enumerate() {
            assert_eq!(task.await.unwrap().unwrap(), i % 3 != 2, "task {i}");
        }
        // Bounded by the permits while they last.
        assert!(hasher.blocks.pooled() <= settings().max_concurrent);
    }

    /// A finished computation leaves its buffer for the next, never more than the permits;
    /// the pool empties RELEASE_AFTER after the last one, unless another starts meanwhile.
    #[tokio::test(start_paused = true)]
    async fn buffers_are_reused_then_released_when_idle() {
        let params = Params::new(8, 1, 1, None).unwrap();
        let blocks = Blocks::new(2);
        for _ in 0..3 {
            hash_with(&params, &blocks, b"correct horse").unwrap();
        }
        assert_eq!(blocks.pooled(), 1, "the buffer is reused, not multiplied");
        tokio::time::sleep(RELEASE_AFTER / 2).await;
        // A computation meanwhile postpones the release.
        hash_with(&params, &blocks, b"correct horse").unwrap();
        tokio::time::sleep(RELEASE_AFTER / 2 + std::time::Duration::from_millis(1)).await;
        assert_eq!(blocks.pooled(), 1, "released although used a moment ago");
        tokio::time::sleep(RELEASE_AFTER).await;
        assert_eq!(blocks.pooled(), 0, "still held after an idle spell");
    }

    /// Hashes made here and by the argon2 crate's own `hash_password` verify either way: the
    /// pooled path changes where the memory comes from, not the PHC strings.
    #[test]
    fn hashes_are_the_argon2_crates() {
        use argon2::password_hash::{PasswordHasher, PasswordVerifier};
        let params = Params::new(8, 1, 1, None).unwrap();
        let blocks = Blocks::new(1);
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
        let ours = hash_with(&params, &blocks, b"correct horse").unwrap();
        argon
            .verify_password(b"correct horse", &PasswordHash::new(&ours).unwrap())
            .unwrap();
        let salt = SaltString::encode_b64(&[7u8; SALT_LEN]).unwrap();
        let theirs = argon
            .hash_password(b"correct horse", &salt)
            .unwrap()
            .to_string();
        let theirs = PasswordHash::new(&theirs).unwrap();
        assert!(matches(&blocks, b"correct horse", &theirs));
        assert!(!matches(&blocks, b"correct horsf", &theirs));
        assert_eq!(ours.len(), theirs.to_string().len());
        // No runtime here: the pool is emptied as soon as nothing runs.
        assert_eq!(blocks.pooled(), 0);
    }

    #[tokio::test]
    async fn hash_and_verify_round_trip() {
        let hasher = hasher();
        let hash = hasher.hash("correct horse".into()).await.unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=8,t=1,p=1$"), "{hash}");
        assert_ne!(
            hash,
            hasher.hash("correct horse".into()).await.unwrap(),
            "salted"
        );
        assert_eq!(
            hasher
                .verify("correct horse".into(), Some(hash.clone()))
                .await,
            VerifyOutcome::Match {
                needs_rehash: false
            }
        );
        assert_eq!(
            hasher.verify("Correct horse".into(), Some(hash)).await,
            VerifyOutcome::Mismatch
        );
    }

    #[tokio::test]
    async fn unknown_user_and_bad_input_never_match() {
        let hasher = hasher();
        assert_eq!(
            hasher.verify("anything at all".into(), None).await,
            VerifyOutcome::Mismatch
        );
        assert_eq!(
            hasher.verify(String::new(), None).await,
            VerifyOutcome::Mismatch
        );
        assert_eq!(
            hasher
                .verify("pw".into(), Some("not a phc string".into()))
                .await,
            VerifyOutcome::Mismatch
        );
        let long = "x".repeat(65);
        assert_eq!(
            hasher.hash(long.clone()).await,
            Err(PasswordError::TooLong { max: 64 })
        );
        let hash = hasher.hash("x".repeat(64)).await.unwrap();
        assert_eq!(
            hasher.verify(long, Some(hash)).await,
            VerifyOutcome::Mismatch
        );
    }

    #[tokio::test]
    async fn rehash_when_parameters_change() {
        // (settings the hash was made with, expected needs_rehash under `settings()`)
        async fn check(made_with: PasswordSettings, expect: bool) {
            let old = Hasher::new(&made_with).unwrap();
            let hash = old.hash("correct horse".into()).await.unwrap();
            let outcome = hasher()
                .verify("correct horse".into(), Some(hash.clone()))
                .await;
            assert_eq!(
                outcome,
                VerifyOutcome::Match {
                    needs_rehash: expect
                },
                "{hash}"
            );
        }
        check(settings(), false).await;
        check(
            PasswordSettings {
                memory_kib: 16,
                ..settings()
            },
            true,
        )
        .await;
        check(
            PasswordSettings {
                iterations: 2,
                ..settings()
            },
            true,
        )
        .await;
        check(
            PasswordSettings {
                parallelism: 1,
                memory_kib: 8,
                max_length: 100,
                ..settings()
            },
            false,
        )
        .await;

        // Another argon2 variant with the same parameters still verifies, and asks for a rehash.
        use argon2::password_hash::PasswordHasher;
        let params = Params::new(8, 1, 1, None).unwrap();
        let salt = SaltString::encode_b64(&[7; 16]).unwrap();
        let argon2i = Argon2::new(Algorithm::Argon2i, Version::V0x13, params);
        let hash = argon2i
            .hash_password(b"correct horse", &salt)
            .unwrap()
            .to_string();
        assert_eq!(
            hasher().verify("correct horse".into(), Some(hash)).await,
            VerifyOutcome::Match { needs_rehash: true }
        );
    }

    /// Every failed verification does the same work, whatever the stored hash's scheme: an
    /// unknown user, and a wrong password on an argon2id, bcrypt, scrypt, pbkdf2 or imported
    /// argon2i user, each compute one hash of every kind stored (counted, not timed).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_failure_does_the_same_work() {
        use argon2::password_hash::PasswordHasher;
        let hasher = hasher();
        let own = hasher.hash("correct horse".into()).await.unwrap();
        let bcrypt = bcrypt::hash("correct horse", 4).unwrap();
        let salt = SaltString::encode_b64(&[9u8; 16]).unwrap();
        let scrypt = scrypt::Scrypt
            .hash_password_customized(
                b"correct horse",
                None,
                None,
                scrypt::Params::new(4, 8, 1, 32).unwrap(),
                &salt,
            )
            .unwrap()
            .to_string();
        let pbkdf2 = pbkdf2::Pbkdf2
            .hash_password_customized(
                b"correct horse",
                Some(pbkdf2::Algorithm::Pbkdf2Sha256.ident()),
                None,
                pbkdf2::Params {
                    rounds: 1000,
                    output_length: 32,
                },
                &salt,
            )
            .unwrap()
            .to_string();
        let argon2i = Argon2::new(
            Algorithm::Argon2i,
            Version::V0x13,
            Params::new(16, 2, 1, None).unwrap(),
        )
        .hash_password(b"correct horse", &salt)
        .unwrap()
        .to_string();
        let stored = [&own, &bcrypt, &scrypt, &pbkdf2, &argon2i];

        // Before the kinds are learned a failure pays for argon2id alone.
        let (outcome, work) = hasher.verify_traced("wrong horse".into(), None).await;
        assert_eq!((outcome, work.len()), (VerifyOutcome::Mismatch, 1));
        hasher
            .learn(stored.iter().map(|s| s.to_string()).collect())
            .await;
        assert_eq!(hasher.failure_kinds().len(), 5);
        hasher.learn(vec![bcrypt.clone()]).await;
        assert_eq!(hasher.failure_kinds().len(), 5, "a kind is learned once");

        let sorted = |mut kinds: Vec<Kind>| {
            kinds.sort();
            kinds
        };
        let expected = sorted(hasher.failure_kinds());
        let (_, unknown) = hasher.verify_traced("wrong horse".into(), None).await;
        assert_eq!(sorted(unknown), expected, "unknown user");
        for hash in stored {
            let (outcome, work) = hasher
                .verify_traced("wrong horse".into(), Some(hash.clone()))
                .await;
            assert_eq!(outcome, VerifyOutcome::Mismatch, "{hash}");
            assert_eq!(sorted(work), expected, "wrong password on {hash}");
            // The right password costs its own kind only; a foreign scheme wants a rehash.
            let (outcome, work) = hasher
                .verify_traced("correct horse".into(), Some(hash.clone()))
                .await;
            assert_eq!(
                outcome,
                VerifyOutcome::Match {
                    needs_rehash: hash != &own
                },
                "{hash}"
            );
            assert_eq!(work.len(), 1, "{hash}");
        }
        // An unreadable stored hash fails like an unknown user.
        let (_, work) = hasher
            .verify_traced("wrong horse".into(), Some("$2b$99$nonsense".into()))
            .await;
        assert_eq!(sorted(work), expected);
    }

    /// A stored kind no failure pays for yet is learned when a login meets it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_login_teaches_a_new_kind() {
        let hasher = hasher();
        let bcrypt = bcrypt::hash("correct horse", 4).unwrap();
        let (_, work) = hasher
            .verify_traced("wrong horse".into(), Some(bcrypt.clone()))
            .await;
        assert_eq!(work.len(), 2, "its own kind, then argon2id's dummy");
        // Polled (the learning runs in a task of its own), never timed.
        for _ in 0..10_000 {
            if hasher.failure_kinds().len() == 2 {
                break;
            }
            tokio::task::yield_now().await;
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        assert_eq!(hasher.failure_kinds().len(), 2);
        let (_, unknown) = hasher.verify_traced("wrong horse".into(), None).await;
        assert_eq!(unknown.len(), 2);
    }

    #[test]
    fn policy() {
        fn check(password: &str, expect: Result<(), WeakPassword>) {
            let got = hasher().check_policy(password, &["Alice.Smith@Example.com", "alice_s", ""]);
            assert_eq!(got, expect, "password {password:?}");
        }
        check("correct horse battery", Ok(()));
        check("zq8#Lm2!", Ok(()));
        check("seven77", Err(WeakPassword::TooShort { min: 8 }));
        check("", Err(WeakPassword::TooShort { min: 8 }));
        // Length counts characters, not bytes: 8 two-byte characters pass.
        check("éàüößçñø", Ok(()));
        check("éàüößçñ", Err(WeakPassword::TooShort { min: 8 }));
        check(&"a".repeat(65), Err(WeakPassword::TooLong { max: 64 }));
        check(&"é".repeat(33), Err(WeakPassword::TooLong { max: 64 }));
        check("password", Err(WeakPassword::Common));
        check("PassWord1", Err(WeakPassword::Common));
        check("iloveyou", Err(WeakPassword::Common));
        check("qwerty123", Err(WeakPassword::Common));
        check("aaaaaaaaaa", Err(WeakPassword::Repetitive));
        check(
            "alice.smith@example.com",
            Err(WeakPassword::MatchesIdentity),
        );
        check("ALICE.SMITH", Err(WeakPassword::MatchesIdentity));
        check("Alice_S1", Ok(()));
        check("alice_s_", Ok(()));
        assert!(hasher().check_policy("alice_s8", &["alice_s8"]).is_err());
        assert_eq!(
            WeakPassword::TooShort { min: 8 }.to_string(),
            "The password must be at least 8 characters long."
        );
        // Every reason is a whole sentence, for the CLI and the JSON `message` alike.
        for weak in [
            WeakPassword::TooShort { min: 8 },
            WeakPassword::TooLong { max: 64 },
            WeakPassword::Common,
            WeakPassword::MatchesIdentity,
            WeakPassword::Repetitive,
        ] {
            let text = weak.to_string();
            assert!(
                text.starts_with("The password ") && text.ends_with('.'),
                "{text}"
            );
        }
    }

    #[test]
    fn settings_are_validated() {
        fn check(settings: PasswordSettings, ok: bool) {
            assert_eq!(Hasher::new(&settings).is_ok(), ok, "{settings:?}");
        }
        check(settings(), true);
        check(
            PasswordSettings {
                min_length: 0,
                ..settings()
            },
            false,
        );
        check(
            PasswordSettings {
                max_length: 7,
                ..settings()
            },
            false,
        );
        check(
            PasswordSettings {
                max_concurrent: 0,
                ..settings()
            },
            false,
        );
        check(
            PasswordSettings {
                memory_kib: 1,
                ..settings()
            },
            false,
        );
        check(
            PasswordSettings {
                iterations: 0,
                ..settings()
            },
            false,
        );
        let defaults = PasswordSettings::default();
        assert_eq!(
            (
                defaults.memory_kib,
                defaults.iterations,
                defaults.parallelism
            ),
            (19 * 1024, 2, 1)
        );
        assert!(defaults.max_concurrent >= 1);
    }

    #[test]
    fn common_list_is_loaded() {
        let hasher = hasher();
        assert!(hasher.common.len() > 3000, "{}", hasher.common.len());
        assert!(
            hasher.common.iter().all(|p| *p == p.to_lowercase()),
            "entries are lowercase"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn semaphore_caps_concurrency() {
        let hasher = Arc::new(
            Hasher::new(&PasswordSettings {
                max_concurrent: 1,
                ..settings()
            })
            .unwrap(),
        );
        let in_flight = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..4)
            .map(|i| {
                let (hasher, in_flight, peak) = (
                    Arc::clone(&hasher),
                    Arc::clone(&in_flight),
                    Arc::clone(&peak),
                );
                tokio::spawn(async move {
                    let permits = Arc::clone(&hasher.permits);
                    let params = hasher.params.clone();
                    let blocks = Arc::clone(&hasher.blocks);
                    hasher
                        .run_limited(move || {
                            let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                            peak.fetch_max(now, Ordering::SeqCst);
                            // The one permit is held by this work while it runs.
                            assert_eq!(permits.available_permits(), 0);
                            let hashed =
                                hash_with(&params, &blocks, format!("password {i}").as_bytes());
                            in_flight.fetch_sub(1, Ordering::SeqCst);
                            hashed
                        })
                        .await
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap().unwrap().unwrap();
        }
        assert_eq!(peak.load(Ordering::SeqCst), 1);
        assert_eq!(
            hasher.permits.available_permits(),
            1,
            "every permit came back"
        );

        // A held permit makes hashing wait: take it, start a hash, and see it is not done.
        let held = Arc::clone(&hasher.permits).acquire_owned().await.unwrap();
        let waiting = tokio::spawn({
            let hasher = Arc::clone(&hasher);
            async move { hasher.hash("correct horse".into()).await }
        });
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!waiting.is_finished(), "hash ran without a permit");
        drop(held);
        assert!(waiting.await.unwrap().is_ok());
    }
}
