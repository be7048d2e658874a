//! A small mutational fuzzer for the stable toolchain (dev only).
//!
//! libFuzzer (`fuzz/`, cargo-fuzz) needs a nightly compiler for its
//! coverage instrumentation. This crate runs the same kind of target on
//! stable, inside `cargo test`: start from real seed inputs, mutate them
//! (bit flips, interesting values, length-field edits, truncations,
//! insertions, splices, dictionary tokens, netlink-aware edits), and keep
//! every input that shows a *feature* not seen before as a parent for
//! further mutation. Features are what the target returns: hashes of
//! what the code under test did (which error, how many packets, which
//! optional fields were present). They are a cheap stand-in for coverage:
//! inputs that reach new outcomes are kept, the rest thrown away.
//!
//! ```no_run
//! use portcullis_fuzzkit::{fuzz_bytes, signature, Mutator};
//!
//! let seeds = vec![b"hello".to_vec()];
//! fuzz_bytes("example", seeds, Mutator::default(), |data| {
//!     // Check properties with assert!; a panic is a failure.
//!     vec![signature(&data.len().min(8))]
//! });
//! ```
//!
//! # Environment
//! - `PORTCULLIS_FUZZ_SECS`: seconds per target (default 2; fractions
//!   allowed). `cargo test` stays fast; run longer by hand, e.g.
//!   `PORTCULLIS_FUZZ_SECS=600 cargo test --release -p portcullis-nflog fuzz_`.
//! - `PORTCULLIS_FUZZ_SEED`: the random seed (default: from the clock;
//!   always printed, so a run can be repeated).
//! - `PORTCULLIS_FUZZ_DIR`: where failing inputs are saved (default
//!   `$TMPDIR/portcullis-fuzz`), as `<target>-<hash>.bin`.
//! - `PORTCULLIS_FUZZ_REPLAY`: a saved file (or a directory of them): each
//!   target runs only the files named after it, once, without catching
//!   the panic, and does not fuzz.
//!
//! A failure prints the input in hex, saves it, and fails the test with
//! the replay command.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Most inputs kept as parents (seeds included); past this, a new input
/// replaces a random non-seed entry.
pub const MAX_CORPUS: usize = 4096;

/// A small, fast pseudo-random generator (xorshift64*): reproducible from
/// its seed, no dependency.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (0 is replaced by a fixed non-zero value).
    pub fn new(seed: u64) -> Self {
        Rng(if seed == 0 {
            0x9e37_79b9_7f4a_7c15
        } else {
            seed
        })
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    /// True one time in `n`.
    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    /// A random byte.
    pub fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }

    /// One element of a non-empty slice.
    ///
    /// # Panics
    /// If `items` is empty.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Hash of anything hashable: one feature of what a target observed.
pub fn signature<T: Hash + ?Sized>(what: &T) -> u64 {
    let mut h = DefaultHasher::new();
    what.hash(&mut h);
    h.finish()
}

/// `n` rounded to a power-of-two bucket (0, 1, 2-3, 4-7, 8-15, ...), so that a
/// length in a feature does not make every input look new.
pub fn bucket(n: usize) -> u32 {
    usize::BITS - n.leading_zeros()
}

/// An input the fuzzer can save and replay.
pub trait Input: Clone {
    /// The bytes saved for a failing input.
    fn to_bytes(&self) -> Vec<u8>;
    /// The input back from saved bytes.
    fn from_bytes(bytes: &[u8]) -> Option<Self>;
}

impl Input for Vec<u8> {
    fn to_bytes(&self) -> Vec<u8> {
        self.clone()
    }
    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        Some(bytes.to_vec())
    }
}

/// The settings of a run, from the environment (see the crate docs).
#[derive(Debug, Clone)]
pub struct Settings {
    /// How long each target fuzzes.
    pub budget: Duration,
    /// The random seed.
    pub seed: u64,
    /// Where failing inputs go.
    pub dir: PathBuf,
    /// Saved inputs to replay instead of fuzzing.
    pub replay: Option<PathBuf>,
}

impl Settings {
    /// Reads `PORTCULLIS_FUZZ_*`.
    ///
    /// # Panics
    /// If a variable is set but is not a number.
    #[allow(clippy::expect_used)] // a bad setting in a test run: say so
    pub fn from_env() -> Self {
        let secs = std::env::var("PORTCULLIS_FUZZ_SECS")
            .ok()
            .map(|s| {
                s.trim()
                    .parse::<f64>()
                    .expect("PORTCULLIS_FUZZ_SECS: seconds")
            })
            .unwrap_or(2.0);
        let seed = std::env::var("PORTCULLIS_FUZZ_SEED")
            .ok()
            .map(|s| parse_u64(&s).expect("PORTCULLIS_FUZZ_SEED: a number"))
            .unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            });
        let dir = std::env::var_os("PORTCULLIS_FUZZ_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| std::env::temp_dir().join("portcullis-fuzz"));
        let replay = std::env::var_os("PORTCULLIS_FUZZ_REPLAY").map(PathBuf::from);
        Settings {
            budget: Duration::from_secs_f64(secs.max(0.0)),
            seed,
            dir,
            replay,
        }
    }
}

fn parse_u64(s: &str) -> Option<u64> {
    let s = s.trim();
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

/// What a run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// Inputs run (seeds included).
    pub execs: u64,
    /// Inputs kept as parents at the end.
    pub corpus: usize,
    /// Distinct features seen.
    pub features: usize,
}

/// Fuzzes `target` over inputs of type `I` for the budget of
/// [`Settings::from_env`]: the seeds first, then mutants of kept inputs
/// (`mutate` applies one mutation; it is called 1 to 4 times per input
/// and is given the corpus for splicing).
///
/// `target` checks its properties with `assert!` and returns the
/// input's features; an input with a feature not seen before is kept. A panic is a failure: the input is
/// printed in hex and saved, and this function panics with the path and
/// the replay command. Prints executions, rate and corpus size.
pub fn fuzz<I, M, T>(name: &str, seeds: Vec<I>, mut mutate: M, target: T) -> Report
where
    I: Input,
    M: FnMut(&mut I, &mut Rng, &[I]),
    T: Fn(&I) -> Vec<u64>,
{
    let settings = Settings::from_env();
    if let Some(path) = &settings.replay {
        return replay(name, path, &target);
    }
    assert!(!seeds.is_empty(), "fuzz target {name}: no seeds");
    let mut rng = Rng::new(settings.seed);
    let mut seen = HashSet::new();
    let mut corpus: Vec<I> = Vec::new();
    let n_seeds = seeds.len();
    let start = Instant::now();
    let mut execs = 0u64;
    let mut run = |input: &I, seen: &mut HashSet<u64>| -> bool {
        execs += 1;
        match catch_unwind(AssertUnwindSafe(|| target(input))) {
            Ok(features) => features
                .into_iter()
                .fold(false, |new, f| seen.insert(f) | new),
            Err(panic) => fail(name, &settings, &input.to_bytes(), &*panic),
        }
    };
    for s in seeds {
        run(&s, &mut seen);
        corpus.push(s);
    }
    while start.elapsed() < settings.budget {
        let mut child = corpus[rng.below(corpus.len())].clone();
        for _ in 0..=rng.below(4) {
            mutate(&mut child, &mut rng, &corpus);
        }
        if run(&child, &mut seen) {
            if corpus.len() < MAX_CORPUS {
                corpus.push(child);
            } else {
                let at = n_seeds + rng.below(MAX_CORPUS - n_seeds);
                corpus[at] = child;
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let report = Report {
        execs,
        corpus: corpus.len(),
        features: seen.len(),
    };
    println!(
        "fuzz {name}: {} execs in {secs:.1} s ({:.0}/s), {} features, corpus {} ({n_seeds} seeds), seed {:#x}",
        report.execs,
        report.execs as f64 / secs.max(1e-9),
        report.features,
        report.corpus,
        settings.seed,
    );
    report
}

/// [`fuzz`] over plain byte strings with a [`Mutator`].
pub fn fuzz_bytes<T>(name: &str, seeds: Vec<Vec<u8>>, mutator: Mutator, target: T) -> Report
where
    T: Fn(&[u8]) -> Vec<u64>,
{
    fuzz(
        name,
        seeds,
        |buf, rng, corpus| mutator.mutate(buf, rng, corpus),
        |buf| target(buf),
    )
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic)".to_string()
    }
}

/// Hex dump, 32 bytes a line.
pub fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 3);
    for (i, chunk) in bytes.chunks(32).enumerate() {
        if i > 0 {
            out.push('\n');
        }
        for b in chunk {
            let _ = write!(out, "{b:02x}");
        }
    }
    out
}

fn fail(name: &str, settings: &Settings, bytes: &[u8], panic: &(dyn std::any::Any + Send)) -> ! {
    let msg = panic_message(panic);
    let path = settings
        .dir
        .join(format!("{name}-{:016x}.bin", signature(bytes)));
    let saved = std::fs::create_dir_all(&settings.dir)
        .and_then(|()| std::fs::write(&path, bytes))
        .map(|()| path.display().to_string())
        .unwrap_or_else(|e| format!("(not saved: {e})"));
    eprintln!(
        "fuzz {name}: FAILED ({msg}) on this {}-byte input (seed {:#x}):\n{}",
        bytes.len(),
        settings.seed,
        hex(bytes)
    );
    if let Ok(text) = std::str::from_utf8(bytes) {
        eprintln!("fuzz {name}: the same input as text:\n{text}");
    }
    panic!(
        "fuzz target {name} failed: {msg}\ninput saved to {saved}\n\
         replay: PORTCULLIS_FUZZ_REPLAY={saved} cargo test <package> {name}"
    );
}

/// Runs the saved inputs named after `name` under `path` once each,
/// letting a panic through.
fn replay<I: Input, T: Fn(&I) -> Vec<u64>>(name: &str, path: &Path, target: &T) -> Report {
    let prefix = format!("{name}-");
    let files: Vec<PathBuf> = if path.is_dir() {
        std::fs::read_dir(path)
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default()
    } else {
        vec![path.to_path_buf()]
    };
    let mut execs = 0;
    for f in files {
        let named = f
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(&prefix));
        if !named {
            continue;
        }
        let bytes = std::fs::read(&f).unwrap_or_default();
        let Some(input) = I::from_bytes(&bytes) else {
            println!(
                "fuzz {name}: {} is not an input of this target",
                f.display()
            );
            continue;
        };
        println!("fuzz {name}: replaying {}", f.display());
        target(&input);
        execs += 1;
    }
    println!("fuzz {name}: {execs} inputs replayed");
    Report {
        execs,
        corpus: 0,
        features: 0,
    }
}

const INTERESTING_8: [u8; 9] = [0, 1, 3, 4, 0x10, 0x3f, 0x7f, 0x80, 0xff];
const INTERESTING_16: [u16; 20] = [
    0, 1, 2, 3, 4, 7, 8, 12, 15, 16, 17, 20, 0x7f, 0x80, 0xff, 0x100, 0x4000, 0x7fff, 0x8000,
    0xffff,
];
const INTERESTING_32: [u32; 6] = [0, 1, 0x7fff_ffff, 0x8000_0000, 0xffff_fffe, 0xffff_ffff];

/// Byte-level mutations, optionally with a dictionary of tokens and
/// netlink-aware edits.
#[derive(Debug, Clone)]
pub struct Mutator {
    /// Inputs are cut to this length.
    pub max_len: usize,
    /// Tokens inserted or written over the input (magic values, whole
    /// records).
    pub dict: Vec<Vec<u8>>,
    /// Also edit netlink framing: message and attribute length and type
    /// fields ([`netlink_edit`]).
    pub netlink: bool,
}

impl Default for Mutator {
    fn default() -> Self {
        Mutator {
            max_len: 4096,
            dict: Vec::new(),
            netlink: false,
        }
    }
}

fn write_at(buf: &mut [u8], at: usize, bytes: &[u8]) {
    if let Some(dst) = buf.get_mut(at..at + bytes.len()) {
        dst.copy_from_slice(bytes);
    }
}

/// An offset for a `width`-byte field, aligned to `width` half the time.
fn field_at(buf: &[u8], width: usize, rng: &mut Rng) -> Option<usize> {
    let room = buf.len().checked_sub(width)? + 1;
    let at = rng.below(room);
    Some(if rng.one_in(2) { at - at % width } else { at })
}

impl Mutator {
    /// Applies one random mutation to `buf`; `corpus` gives material to
    /// splice in.
    pub fn mutate(&self, buf: &mut Vec<u8>, rng: &mut Rng, corpus: &[Vec<u8>]) {
        let choices = 12 + usize::from(!self.dict.is_empty()) * 2 + usize::from(self.netlink) * 4;
        if buf.is_empty() {
            buf.extend((0..1 + rng.below(32)).map(|_| rng.byte()));
            return;
        }
        let len = buf.len();
        match rng.below(choices) {
            0 => {
                let at = rng.below(len);
                buf[at] ^= 1 << rng.below(8);
            }
            1 => {
                let at = rng.below(len);
                buf[at] = if rng.one_in(2) {
                    *rng.pick(&INTERESTING_8)
                } else {
                    rng.byte()
                };
            }
            2 => {
                let at = rng.below(len);
                let d = 1 + rng.below(16) as u8;
                buf[at] = if rng.one_in(2) {
                    buf[at].wrapping_add(d)
                } else {
                    buf[at].wrapping_sub(d)
                };
            }
            3 => {
                if let Some(at) = field_at(buf, 2, rng) {
                    let v = *rng.pick(&INTERESTING_16);
                    let b = if rng.one_in(2) {
                        v.to_be_bytes()
                    } else {
                        v.to_ne_bytes()
                    };
                    write_at(buf, at, &b);
                }
            }
            4 => {
                if let Some(at) = field_at(buf, 4, rng) {
                    let v = if rng.one_in(2) {
                        *rng.pick(&INTERESTING_32)
                    } else {
                        u32::from(*rng.pick(&INTERESTING_16))
                    };
                    let b = if rng.one_in(2) {
                        v.to_be_bytes()
                    } else {
                        v.to_ne_bytes()
                    };
                    write_at(buf, at, &b);
                }
            }
            5 => length_edit(buf, rng),
            6 => buf.truncate(rng.below(len)),
            7 => {
                let at = rng.below(len);
                let n = 1 + rng.below((len - at).min(64));
                buf.drain(at..at + n);
            }
            8 => {
                let at = rng.below(len + 1);
                let n = 1 + rng.below(32);
                let chunk: Vec<u8> = match rng.below(3) {
                    0 => (0..n).map(|_| rng.byte()).collect(),
                    1 => vec![*rng.pick(&INTERESTING_8); n],
                    _ => {
                        let from = rng.below(len);
                        buf[from..(from + n).min(len)].to_vec()
                    }
                };
                buf.splice(at..at, chunk);
            }
            9 => {
                let from = rng.below(len);
                let to = rng.below(len);
                let n = 1 + rng.below((len - from).min(len - to).min(64));
                buf.copy_within(from..from + n, to);
            }
            10 => {
                // Splice: our head, another input's tail.
                let other = rng.pick(corpus);
                let cut = rng.below(len + 1);
                let from = rng.below(other.len() + 1);
                buf.truncate(cut);
                buf.extend_from_slice(&other[from..]);
            }
            11 => {
                // Append another input whole (one more message).
                let other = rng.pick(corpus).clone();
                buf.extend_from_slice(&other);
            }
            12 | 13 if !self.dict.is_empty() => {
                let token = rng.pick(&self.dict);
                let at = rng.below(len + 1);
                if rng.one_in(2) {
                    buf.splice(at..at, token.iter().copied());
                } else {
                    let end = (at + token.len()).min(len);
                    buf.splice(at..end, token.iter().copied());
                }
            }
            _ => netlink_edit(buf, rng),
        }
        buf.truncate(self.max_len);
    }
}

/// Rewrites a 2- or 4-byte field (either byte order) that may be a
/// length: to a value near its own, near the bytes left after it, or a
/// boundary.
fn length_edit(buf: &mut [u8], rng: &mut Rng) {
    let width = if rng.one_in(2) { 2 } else { 4 };
    let Some(at) = field_at(buf, width, rng) else {
        return;
    };
    let be = rng.one_in(2);
    let read = |b: &[u8]| -> u64 {
        match (width, be) {
            (2, true) => u64::from(u16::from_be_bytes([b[0], b[1]])),
            (2, false) => u64::from(u16::from_ne_bytes([b[0], b[1]])),
            (_, true) => u64::from(u32::from_be_bytes([b[0], b[1], b[2], b[3]])),
            _ => u64::from(u32::from_ne_bytes([b[0], b[1], b[2], b[3]])),
        }
    };
    let cur = read(&buf[at..at + width]);
    let v = pick_length(rng, cur, (buf.len() - at) as u64);
    if width == 2 {
        let v = v as u16;
        write_at(buf, at, &if be { v.to_be_bytes() } else { v.to_ne_bytes() });
    } else {
        let v = v as u32;
        write_at(buf, at, &if be { v.to_be_bytes() } else { v.to_ne_bytes() });
    }
}

fn pick_length(rng: &mut Rng, cur: u64, left: u64) -> u64 {
    let d = 1 + rng.below(8) as u64;
    match rng.below(10) {
        0 => cur.wrapping_add(d),
        1 => cur.wrapping_sub(d),
        2 => left,
        3 => left + d,
        4 => left.saturating_sub(d),
        5 => (left + 3) & !3,
        6 => 0,
        7 => rng.below(24) as u64,
        8 => cur.wrapping_add(4),
        _ => u64::from(*rng.pick(&INTERESTING_16)),
    }
}

/// The netlink length fields of a datagram: (offset, width) of each
/// message's `nlmsg_len` (u32) and of each attribute's `nla_len` (u16)
/// after the 4-byte `nfgenmsg`, as far as the framing reads.
pub fn netlink_fields(buf: &[u8]) -> Vec<(usize, usize)> {
    let mut fields = Vec::new();
    let mut pos = 0;
    while pos + 16 <= buf.len() && fields.len() < 256 {
        fields.push((pos, 4));
        let len = u32::from_ne_bytes([buf[pos], buf[pos + 1], buf[pos + 2], buf[pos + 3]]) as usize;
        let end = pos.saturating_add(len).min(buf.len());
        let mut a = pos + 20;
        while a + 4 <= end && fields.len() < 256 {
            fields.push((a, 2));
            let alen = usize::from(u16::from_ne_bytes([buf[a], buf[a + 1]]));
            if alen < 4 {
                break;
            }
            a += (alen + 3) & !3;
        }
        if len < 16 {
            break;
        }
        pos += (len + 3) & !3;
    }
    fields
}

/// A netlink-aware edit: a message or attribute length set near a
/// boundary, an attribute type changed (flag bits too), a message type
/// changed, or an attribute duplicated.
pub fn netlink_edit(buf: &mut Vec<u8>, rng: &mut Rng) {
    let fields = netlink_fields(buf);
    if fields.is_empty() {
        return length_edit(buf, rng);
    }
    let (at, width) = *rng.pick(&fields);
    let left = (buf.len() - at) as u64;
    match (rng.below(4), width) {
        (0 | 1, 4) => {
            let cur = u64::from(u32::from_ne_bytes([
                buf[at],
                buf[at + 1],
                buf[at + 2],
                buf[at + 3],
            ]));
            let v = pick_length(rng, cur, left) as u32;
            write_at(buf, at, &v.to_ne_bytes());
        }
        (0 | 1, _) => {
            let cur = u64::from(u16::from_ne_bytes([buf[at], buf[at + 1]]));
            let v = pick_length(rng, cur, left) as u16;
            write_at(buf, at, &v.to_ne_bytes());
        }
        (2, 4) => {
            // Message type: packet of either subsystem, control, random.
            let ty: u16 = *rng.pick(&[0x0300, 0x0301, 0x0400, 0x0401, 1, 2, 3, 4, 0xffff]);
            write_at(buf, at + 4, &ty.to_ne_bytes());
        }
        (2, _) => {
            let mut ty = rng.below(24) as u16;
            if rng.one_in(4) {
                ty |= *rng.pick(&[0x8000u16, 0x4000, 0xc000]);
            }
            write_at(buf, at + 2, &ty.to_ne_bytes());
        }
        (_, 4) => {
            // Duplicate the message in place.
            let len = u32::from_ne_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
            let end = at.saturating_add(len as usize).min(buf.len());
            let copy = buf[at..end].to_vec();
            buf.splice(at..at, copy);
        }
        _ => {
            // Duplicate the attribute in place (the message length is
            // left alone half the time).
            let alen = usize::from(u16::from_ne_bytes([buf[at], buf[at + 1]]));
            let end = at.saturating_add((alen + 3) & !3).min(buf.len());
            let copy = buf[at..end].to_vec();
            let n = copy.len();
            buf.splice(at..at, copy);
            if rng.one_in(2) {
                if let Some(&(msg, 4)) = fields.iter().rev().find(|&&(p, w)| w == 4 && p < at) {
                    let len =
                        u32::from_ne_bytes([buf[msg], buf[msg + 1], buf[msg + 2], buf[msg + 3]]);
                    write_at(buf, msg, &len.wrapping_add(n as u32).to_ne_bytes());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn buckets() {
        assert_eq!(
            [0, 1, 2, 3, 4, 5, 8, 9].map(bucket),
            [0, 1, 2, 2, 3, 3, 4, 4]
        );
    }

    #[test]
    fn mutations_stay_in_bounds_and_change_inputs() {
        let m = Mutator {
            max_len: 64,
            dict: vec![vec![0xc0, 0x0c]],
            netlink: true,
        };
        let mut rng = Rng::new(7);
        let corpus = vec![vec![0u8; 40], vec![1, 2, 3]];
        let mut changed = 0;
        for i in 0..20_000 {
            let mut buf = corpus[i % 2].clone();
            m.mutate(&mut buf, &mut rng, &corpus);
            assert!(buf.len() <= 64);
            changed += usize::from(buf != corpus[i % 2]);
        }
        assert!(changed > 10_000, "{changed}");
    }

    #[test]
    fn netlink_fields_follow_the_framing() {
        // One 28-byte message: header, nfgenmsg, one 8-byte attribute.
        let mut m = vec![0u8; 28];
        m[..4].copy_from_slice(&28u32.to_ne_bytes());
        m[20..22].copy_from_slice(&8u16.to_ne_bytes());
        let mut two = m.clone();
        two.extend_from_slice(&m);
        assert_eq!(
            netlink_fields(&two),
            vec![(0, 4), (20, 2), (28, 4), (48, 2)]
        );
    }

    #[test]
    fn failing_input_is_reported_and_saved() {
        let dir = std::env::temp_dir().join(format!("fuzzkit-test-{}", std::process::id()));
        let settings = Settings {
            budget: Duration::ZERO,
            seed: 1,
            dir: dir.clone(),
            replay: None,
        };
        let r = catch_unwind(|| fail("t", &settings, &[1, 2], &"boom"));
        let msg = panic_message(&*r.unwrap_err());
        assert!(
            msg.contains("boom") && msg.contains("PORTCULLIS_FUZZ_REPLAY="),
            "{msg}"
        );
        let saved: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(saved.len(), 1);
        let _ = std::fs::remove_dir_all(dir);
    }
}
