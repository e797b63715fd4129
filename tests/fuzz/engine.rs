//! The fuzzing loop shared by every target: a seeded generator, byte-level and
//! structure-aware mutation, outcome feedback, corpus replay, and minimisation of findings.
//!
//! One run of a target:
//!
//! 1. every file of `tests/fuzz/corpus/<target>/` is checked (the seeds and every past
//!    finding, so a fixed bug stays fixed even with a zero time budget);
//! 2. until the time budget is spent, iteration `i` draws its randomness from
//!    `seed ⊕ hash(target) ⊕ i`, and either generates a fresh input ([`Target::generate`])
//!    or mutates one from the pool ([`Target::mutate`] and byte-level mutations);
//! 3. an input whose outcome ([`Target::check`]'s feature value) has not been seen before
//!    joins the pool, so inputs that got somewhere new (a token past the signature check, a
//!    config with a rare error) become parents for later mutations;
//! 4. a panic or a violated property is a finding: the input is shrunk while it still fails
//!    the same way, written to `target/fuzz-findings/<target>/`, printed with the seed, and
//!    the test fails.
//!
//! Iteration `i` of a seed produces the same input on any machine (the pool only depends on
//! earlier iterations), so a time budget changes how far a run gets, never what it tries.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::io::Write as _;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::{Duration, Instant};

/// Per-target time in seconds when `GATEHOUSE_FUZZ_SECONDS` is not set: enough for a few
/// thousand executions per target, short enough that `cargo test` stays quick.
const DEFAULT_SECONDS: f64 = 1.0;

/// The seed when `GATEHOUSE_FUZZ_SEED` is not set. Fixed, so CI runs are reproducible; set
/// another one locally to explore further.
const DEFAULT_SEED: u64 = 0x6761_7465_686f_7573;

/// Most inputs kept as mutation parents besides the corpus: the pool is for variety, and a
/// bounded one keeps memory flat on long runs.
const MAX_POOL: usize = 4096;

/// Inputs longer than this are cut after mutation: every parser here has a size cap far
/// below it, and long inputs only slow the loop down.
const MAX_INPUT: usize = 16 * 1024;

/// A deterministic PRNG (SplitMix64): tiny, fast, and good enough to drive mutations.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// True with probability `1/n`.
    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    /// One of `items` (not empty), by value.
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    /// One of `items` (not empty), by reference.
    pub fn pick_ref<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    pub fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }
}

/// What a check concluded about one input.
pub enum Outcome {
    /// Every property held; the value names the path the input took (an error variant, a
    /// reason label, how far it got) and feeds the pool.
    Pass(u64),
    /// A property was violated; the message says which and with what values.
    Fail(String),
}

/// A fuzz target: a parser, the properties it must keep, and how to make inputs for it.
/// Inputs are bytes so that the loop, the corpus files and minimisation are the same for
/// every target; most targets read them as text in a small format of their own.
pub trait Target {
    /// The directory name under `tests/fuzz/corpus/`.
    const NAME: &'static str;

    /// A fresh input built from scratch (structure-aware: valid-looking more often than not).
    fn generate(&mut self, rng: &mut Rng) -> Vec<u8>;

    /// A structure-aware change to an input. The loop also applies byte-level mutations, so
    /// the default does nothing more.
    fn mutate(&mut self, _input: &mut Vec<u8>, _rng: &mut Rng) {}

    /// Tokens worth inserting at random places (delimiters, keywords, escapes).
    fn dictionary(&self) -> &[&[u8]] {
        &[]
    }

    /// Runs the code under test on one input and checks its properties. A panic in here is
    /// a finding too.
    fn check(&mut self, input: &[u8]) -> Outcome;
}

/// The settings of a run, from the environment.
pub struct Budget {
    pub seconds: f64,
    pub seed: u64,
}

impl Budget {
    /// `GATEHOUSE_FUZZ_SECONDS` (per target, fractional allowed) and `GATEHOUSE_FUZZ_SEED`
    /// (decimal or `0x` hex). A malformed value is a hard error: a CI run that silently fell
    /// back to one second would look like coverage it is not.
    pub fn from_env() -> Budget {
        let seconds = match std::env::var("GATEHOUSE_FUZZ_SECONDS") {
            Ok(v) => v
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s >= 0.0)
                .unwrap_or_else(|| {
                    panic!("GATEHOUSE_FUZZ_SECONDS={v:?} is not a number of seconds")
                }),
            Err(_) => DEFAULT_SECONDS,
        };
        let seed = match std::env::var("GATEHOUSE_FUZZ_SEED") {
            Ok(v) => {
                let v = v.trim();
                let parsed = match v.strip_prefix("0x") {
                    Some(hex) => u64::from_str_radix(hex, 16),
                    None => v.parse(),
                };
                parsed.unwrap_or_else(|_| panic!("GATEHOUSE_FUZZ_SEED={v:?} is not a u64"))
            }
            Err(_) => DEFAULT_SEED,
        };
        Budget { seconds, seed }
    }

    /// This budget scaled by `factor` (the in-process server target gets a fraction).
    pub fn scaled(&self, factor: f64) -> Budget {
        Budget {
            seconds: self.seconds * factor,
            seed: self.seed,
        }
    }
}

/// Runs `target` for `budget` and fails the test on the first finding.
pub fn run<T: Target>(target: &mut T, budget: &Budget) {
    quiet_panics();
    if let Some(files) = replay_files(T::NAME) {
        return replay(target, &files);
    }
    let corpus = load_corpus(T::NAME);
    let mut pool: Vec<Vec<u8>> = corpus.clone();
    let mut seen: HashSet<u64> = HashSet::new();
    let started = Instant::now();

    // 1. The corpus, every run.
    for input in &corpus {
        match run_one(target, input) {
            Outcome::Pass(feature) => {
                seen.insert(feature);
            }
            Outcome::Fail(message) => report(target, input, &message, budget.seed, None),
        }
    }

    // 2. Generated and mutated inputs until the budget is spent.
    let deadline = started + Duration::from_secs_f64(budget.seconds);
    let base = budget.seed ^ fnv1a(T::NAME.as_bytes());
    let mut executions: u64 = 0;
    let mut generated: u64 = 0;
    while Instant::now() < deadline {
        let mut rng = Rng::new(base ^ executions.wrapping_mul(0xA24B_AED4_963E_E407));
        let input = if pool.is_empty() || rng.one_in(4) {
            generated += 1;
            target.generate(&mut rng)
        } else {
            let mut input = pool[rng.below(pool.len())].clone();
            for _ in 0..1 + rng.below(4) {
                if rng.one_in(2) {
                    target.mutate(&mut input, &mut rng);
                } else {
                    mutate_bytes(&mut input, &pool, target.dictionary(), &mut rng);
                }
            }
            input.truncate(MAX_INPUT);
            input
        };
        match run_one(target, &input) {
            Outcome::Pass(feature) => {
                if seen.insert(feature) && pool.len() < corpus.len() + MAX_POOL {
                    pool.push(input);
                }
            }
            Outcome::Fail(message) => {
                report(target, &input, &message, budget.seed, Some(executions))
            }
        }
        executions += 1;
    }
    let elapsed = started.elapsed().as_secs_f64();
    // Written to stderr directly so it shows without --nocapture: CI logs the rate.
    let _ = writeln!(
        std::io::stderr(),
        "fuzz {:<12} {:>9} executions ({} generated) + {} corpus files in {:.1} s ({:.0}/s), {} distinct outcomes, seed {:#x}",
        T::NAME,
        executions,
        generated,
        corpus.len(),
        elapsed,
        executions as f64 / elapsed.max(1e-9),
        seen.len(),
        budget.seed,
    );
}

/// `GATEHOUSE_FUZZ_REPLAY=<target>:<file or directory>`: the files to check instead of
/// fuzzing, for reproducing a finding. Other targets run as usual.
fn replay_files(name: &str) -> Option<Vec<PathBuf>> {
    let value = std::env::var("GATEHOUSE_FUZZ_REPLAY").ok()?;
    let (target, path) = value.split_once(':')?;
    if target != name {
        return None;
    }
    let path = PathBuf::from(path);
    let mut files: Vec<PathBuf> = if path.is_dir() {
        std::fs::read_dir(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect()
    } else {
        vec![path]
    };
    files.sort();
    Some(files)
}

/// Checks each file and prints its outcome; fails if any input fails.
fn replay<T: Target>(target: &mut T, files: &[PathBuf]) {
    let mut failed = 0;
    for file in files {
        let input = std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let line = match run_one(target, &input) {
            Outcome::Pass(feature) => format!("pass (outcome {feature:016x})"),
            Outcome::Fail(message) => {
                failed += 1;
                format!("FAIL {message}")
            }
        };
        let _ = writeln!(
            std::io::stderr(),
            "replay {} {}: {line}",
            T::NAME,
            file.display()
        );
    }
    assert_eq!(
        failed,
        0,
        "{failed} of {} replayed inputs failed",
        files.len()
    );
}

/// Checks one input, turning a panic into a failure.
fn run_one<T: Target>(target: &mut T, input: &[u8]) -> Outcome {
    QUIET.with(|q| q.set(true));
    let result = panic::catch_unwind(AssertUnwindSafe(|| target.check(input)));
    QUIET.with(|q| q.set(false));
    match result {
        Ok(outcome) => outcome,
        Err(payload) => {
            let message = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or("(non-string payload)");
            let location = LAST_PANIC.with(|l| l.take()).unwrap_or_default();
            Outcome::Fail(format!("panic: {message} {location}"))
        }
    }
}

/// The byte-level mutations: flips, interesting bytes, dictionary tokens, deletions,
/// duplications, and splices with another pool entry.
fn mutate_bytes(input: &mut Vec<u8>, pool: &[Vec<u8>], dictionary: &[&[u8]], rng: &mut Rng) {
    const INTERESTING: &[u8] = b"\0\x01\x1f\x7f\x80\xff/\\.%;?#*=&+ \t\r\n\"'{}[],:";
    let at = |rng: &mut Rng, input: &Vec<u8>| rng.below(input.len() + 1);
    match rng.below(8) {
        0 if !input.is_empty() => {
            let i = rng.below(input.len());
            input[i] ^= 1 << rng.below(8);
        }
        1 if !input.is_empty() => {
            let i = rng.below(input.len());
            input[i] = rng.pick(INTERESTING);
        }
        2 | 3 if !dictionary.is_empty() => {
            let i = at(rng, input);
            let token = rng.pick(dictionary);
            input.splice(i..i, token.iter().copied());
        }
        4 if !input.is_empty() => {
            let i = rng.below(input.len());
            let n = 1 + rng.below((input.len() - i).min(16));
            input.drain(i..i + n);
        }
        5 if !input.is_empty() => {
            let i = rng.below(input.len());
            let n = 1 + rng.below((input.len() - i).min(16));
            let copy: Vec<u8> = input[i..i + n].to_vec();
            let j = at(rng, input);
            input.splice(j..j, copy);
        }
        6 if !pool.is_empty() => {
            let other = &pool[rng.below(pool.len())];
            let i = at(rng, input);
            let j = rng.below(other.len() + 1);
            input.truncate(i);
            input.extend_from_slice(&other[j..]);
        }
        _ => {
            let i = at(rng, input);
            input.insert(i, rng.byte());
        }
    }
}

/// Shrinks a failing input while it keeps failing with the same kind of message (the text
/// before the first `:`), then records and reports it and fails the test.
fn report<T: Target>(
    target: &mut T,
    input: &[u8],
    message: &str,
    seed: u64,
    iteration: Option<u64>,
) -> ! {
    let kind = |m: &str| m.split(':').next().unwrap_or_default().to_owned();
    let want = kind(message);
    let mut best = input.to_vec();
    let mut best_message = message.to_owned();
    // Delta debugging on bytes: remove chunks of halving size while the failure persists.
    let mut chunk = best.len() / 2;
    let mut tries = 0;
    while chunk > 0 && tries < 20_000 {
        let mut i = 0;
        let mut shrunk = false;
        while i + chunk <= best.len() && tries < 20_000 {
            tries += 1;
            let mut candidate = best.clone();
            candidate.drain(i..i + chunk);
            match run_one(target, &candidate) {
                Outcome::Fail(m) if kind(&m) == want => {
                    best = candidate;
                    best_message = m;
                    shrunk = true;
                }
                _ => i += chunk,
            }
        }
        if !shrunk {
            chunk /= 2;
        }
    }
    let dir = findings_dir().join(T::NAME);
    let file = dir.join(format!("{:016x}", fnv1a(&best)));
    let saved = std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(&file, &best))
        .map_or_else(
            |e| format!("(could not save: {e})"),
            |()| file.display().to_string(),
        );
    let mut text = String::new();
    let _ = writeln!(text, "fuzz target `{}` found a problem", T::NAME);
    let _ = writeln!(text, "  {best_message}");
    match iteration {
        Some(i) => {
            let _ = writeln!(text, "  seed {seed:#x}, iteration {i}");
        }
        None => {
            let _ = writeln!(text, "  in the corpus (tests/fuzz/corpus/{})", T::NAME);
        }
    }
    let _ = writeln!(
        text,
        "  shrunk input ({} bytes): {}",
        best.len(),
        escape(&best)
    );
    let _ = writeln!(
        text,
        "  original ({} bytes): {}",
        input.len(),
        escape(input)
    );
    let _ = writeln!(text, "  saved to {saved}");
    let _ = writeln!(
        text,
        "  write a regression unit test for it, fix, then copy the file into tests/fuzz/corpus/{}/",
        T::NAME
    );
    let _ = std::io::stderr().write_all(text.as_bytes());
    panic!("{text}");
}

/// Bytes as a Rust byte-string literal body, for pasting into a regression test.
pub fn escape(bytes: &[u8]) -> String {
    format!("b\"{}\"", bytes.escape_ascii())
}

fn corpus_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz/corpus")
        .join(name)
}

fn findings_dir() -> PathBuf {
    // Integration tests get CARGO_TARGET_TMPDIR, a scratch directory under target/.
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-findings")
}

/// The corpus files of a target, sorted by name so runs are reproducible.
fn load_corpus(name: &str) -> Vec<Vec<u8>> {
    let dir = corpus_dir(name);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|p| std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .collect()
}

/// FNV-1a: a stable hash for target names, feature values and finding file names.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A feature value from a few parts (outcome labels, lengths).
pub fn feature(parts: &[&str]) -> u64 {
    parts
        .iter()
        .fold(0, |h, p| fnv1a(p.as_bytes()) ^ h.rotate_left(7))
}

thread_local! {
    /// Set while a check runs: its panics are findings, reported by the loop, not noise.
    static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// Where the last quiet panic happened.
    static LAST_PANIC: std::cell::Cell<Option<String>> = const { std::cell::Cell::new(None) };
}

/// Installs (once) a panic hook that stays silent for panics inside a check, which the loop
/// catches, shrinks and reports, and defers to the previous hook otherwise.
fn quiet_panics() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if QUIET.with(|q| q.get()) {
                let location = info
                    .location()
                    .map(|l| format!("at {}:{}", l.file(), l.line()))
                    .unwrap_or_default();
                LAST_PANIC.with(|l| l.set(Some(location)));
            } else {
                previous(info);
            }
        }));
    });
}
