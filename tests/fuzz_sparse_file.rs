//! Fuzzing of the sparse weight file parser (`SparseWeight::load` / `load_file`) with
//! proptest, as part of the normal test suite (issue 17: no input may cause undefined
//! behaviour, a panic or an allocation the input cannot justify).
//!
//! Inputs: random bytes; valid files with random bit flips, byte writes, truncations,
//! extensions and splices; valid files whose header fields are set to extreme values with the
//! header checksum recomputed (so the parser gets past it); the same through `load_file`
//! (which checks the file length against the header). Every case asserts that loading
//! returns `Ok` or `Err` without panicking, that an accepted file is canonical (saving the
//! result gives back the same bytes), and — through a per-thread counting global allocator —
//! that the peak memory allocated while loading stays within `3 × input length + 320 KiB`
//! (the constant: the validator's per-tile tables, 192 KiB, and the first read pieces).
//!
//! CI runs a bounded number of cases (a few seconds in release). To fuzz longer, set
//! `PROPTEST_CASES`, e.g.
//!
//! ```sh
//! PROPTEST_CASES=200000 cargo test --release --test fuzz_sparse_file
//! ```
//!
//! (`SPARSE_TC_FUZZ_SEED=<u64>` fixes the deterministic cases' seed; proptest prints a
//! failing input's seed and shrinks it.)

use half::{bf16, f16};
use proptest::prelude::*;
use sparse_tc::sparse::file::{checksum, HEADER_BYTES, MAGIC};
use sparse_tc::{Element, Error, SparseWeight};
use std::io::Read;

#[path = "common/counting_alloc.rs"]
mod counting_alloc;

use counting_alloc::{cases, peak_alloc};

#[global_allocator]
static ALLOC: counting_alloc::Counting = counting_alloc::Counting;

/// What loading `len` bytes may allocate at most: the data itself with room for its vectors'
/// growth, plus a constant that no header field can change.
fn budget(len: usize) -> usize {
    3 * len + 320 * 1024
}

// ---- Inputs. ----


/// A small random weight (density `keep`), optionally bank-reordered, saved.
fn saved<T: Element>(rows: usize, cols: usize, keep: f64, seed: u64, reorder: bool) -> Vec<u8> {
    let mut s = seed | 1;
    let dense: Vec<T> = (0..rows * cols)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let u = (s >> 11) as f64 / (1u64 << 53) as f64;
            T::from_f32(if u < keep { (u * 8.0 - 1.0) as f32 + 0.125 } else { 0.0 })
        })
        .collect();
    let mut w = SparseWeight::from_dense(rows, cols, &dense).unwrap();
    if reorder {
        w.reorder_for_banks();
    }
    let mut b = Vec::new();
    w.save(&mut b).unwrap();
    b
}

/// Strategy: a valid file (f16 or bf16, 1..600 × 1..200, any density), with its dtype.
fn valid_file() -> impl Strategy<Value = (bool, Vec<u8>)> {
    (any::<bool>(), 1usize..600, 1usize..200, 0.0f64..=1.0, any::<u64>(), any::<bool>()).prop_map(
        |(bf, rows, cols, keep, seed, reorder)| {
            let keep = keep * keep; // mostly sparse, like real weights
            (bf, if bf { saved::<bf16>(rows, cols, keep, seed, reorder) } else { saved::<f16>(rows, cols, keep, seed, reorder) })
        },
    )
}

/// One damage to a file.
#[derive(Clone, Debug)]
enum Mutation {
    /// XOR a byte (at a position taken modulo the length) with a non-zero mask.
    Flip(usize, u8),
    /// Overwrite a byte.
    Set(usize, u8),
    /// Keep only the first `at % (len + 1)` bytes.
    Truncate(usize),
    /// Append bytes.
    Extend(Vec<u8>),
    /// Replace a range with other bytes.
    Splice(usize, usize, Vec<u8>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<usize>(), 1u8..=255).prop_map(|(a, m)| Mutation::Flip(a, m)),
        2 => (any::<usize>(), any::<u8>()).prop_map(|(a, v)| Mutation::Set(a, v)),
        2 => any::<usize>().prop_map(Mutation::Truncate),
        1 => proptest::collection::vec(any::<u8>(), 1..64).prop_map(Mutation::Extend),
        1 => (any::<usize>(), 0usize..32, proptest::collection::vec(any::<u8>(), 0..32))
            .prop_map(|(a, n, v)| Mutation::Splice(a, n, v)),
    ]
}

fn apply(b: &mut Vec<u8>, m: &Mutation) {
    let len = b.len();
    match m {
        Mutation::Flip(at, mask) if len > 0 => b[at % len] ^= mask,
        Mutation::Set(at, v) if len > 0 => b[at % len] = *v,
        Mutation::Truncate(at) => b.truncate(at % (len + 1)),
        Mutation::Extend(v) => b.extend_from_slice(v),
        Mutation::Splice(at, n, v) => {
            let start = at % (len + 1);
            let end = (start + n).min(len);
            b.splice(start..end, v.iter().copied());
        }
        _ => {}
    }
}

/// Header fields by byte offset and width.
const FIELDS: [(usize, usize); 8] = [
    (8, 4),  // version
    (12, 1), // dtype
    (13, 1), // flags
    (14, 2), // reserved
    (16, 8), // rows
    (24, 8), // cols
    (32, 8), // n_offsets
    (40, 8), // n_words
];

/// Values that stress a header field: the extremes of each width, powers of two around the
/// 32-bit boundary, values whose products with 4, 256 or 64 wrap, and anything.
fn extreme() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1),
        Just(2),
        Just(3),
        Just(4),
        Just(255),
        Just(256),
        Just(u64::from(u16::MAX)),
        Just(u64::from(u32::MAX) - 3),
        Just(u64::from(u32::MAX)),
        Just(1 << 32),
        Just((1 << 32) + 1024),
        Just((1 << 31) - 1),
        Just(1 << 31),
        Just(u64::MAX / 4),
        Just(u64::MAX / 4 + 1),
        Just(1 << 62),
        Just((1 << 62) - 8192),
        Just(1 << 63),
        Just(u64::MAX - 1),
        Just(u64::MAX),
        any::<u64>(),
        0u64..70_000,
    ]
}

/// Writes `value` (truncated to the field's width) into header field `field` and recomputes
/// the header checksum, so the parser looks past it. With `consistent`, n_offsets is then set
/// to what rows and cols imply (so n_words and the sections are checked too).
fn set_field(b: &mut [u8], field: usize, value: u64, consistent: bool) {
    if b.len() < HEADER_BYTES {
        return;
    }
    let (at, width) = FIELDS[field % FIELDS.len()];
    b[at..at + width].copy_from_slice(&value.to_le_bytes()[..width]);
    if consistent {
        let u64_at = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
        let tiles = u64_at(16).div_ceil(256).checked_mul(u64_at(24).div_ceil(64)).and_then(|t| t.checked_add(1));
        if let Some(n) = tiles {
            b[32..40].copy_from_slice(&n.to_le_bytes());
        }
    }
    let sum = checksum(u32::from_le_bytes([b[8], b[9], b[10], b[11]]), &b[..48]);
    b[48..56].copy_from_slice(&sum.to_le_bytes());
}

/// Loads `bytes` as f16 and bf16 (one of them is the file's dtype); checks the allocation
/// budget, and that an accepted file is canonical: a version-4 file saves back to the same
/// bytes (older versions, converted while loading, to a file that loads as the same weight).
fn check_load(bytes: &[u8]) -> Result<(), TestCaseError> {
    fn one<T: Element>(bytes: &[u8]) -> Result<bool, TestCaseError> {
        let (r, peak) = peak_alloc(|| SparseWeight::<T>::load(bytes));
        prop_assert!(peak <= budget(bytes.len()), "load of {} bytes allocated {peak} bytes at once", bytes.len());
        match r {
            Ok(w) => {
                let mut again = Vec::new();
                w.save(&mut again).unwrap();
                if bytes[8..12] == 4u32.to_le_bytes() {
                    prop_assert!(again == bytes, "an accepted file is not canonical");
                } else {
                    prop_assert!(SparseWeight::<T>::load(&again[..]).unwrap() == w);
                }
                Ok(true)
            }
            Err(Error::Format(m)) | Err(Error::Shape(m)) | Err(Error::UnsupportedDtype(m)) => {
                prop_assert!(!m.is_empty());
                Ok(false)
            }
            Err(e) => Err(TestCaseError::fail(format!("unexpected error kind: {e:?}"))),
        }
    }
    let a = one::<f16>(bytes)?;
    let b = one::<bf16>(bytes)?;
    prop_assert!(!(a && b), "one file accepted as both f16 and bf16");
    Ok(())
}

/// `load_file` on `bytes` written to a temporary file: Ok or Err, within the budget, and
/// the same verdict as `load` from memory.
fn check_load_file(bytes: &[u8], bf: bool) -> Result<(), TestCaseError> {
    thread_local! {
        static PATH: std::path::PathBuf = std::env::temp_dir()
            .join(format!("sparse_tc_fuzz_{}_{:?}.stcw", std::process::id(), std::thread::current().id()));
    }
    let path = PATH.with(Clone::clone);
    std::fs::write(&path, bytes).unwrap();
    fn both<T: Element>(path: &std::path::Path, bytes: &[u8]) -> Result<(), TestCaseError> {
        let (from_file, peak) = peak_alloc(|| SparseWeight::<T>::load_file(path));
        prop_assert!(peak <= budget(bytes.len()), "load_file of {} bytes allocated {peak}", bytes.len());
        let from_memory = SparseWeight::<T>::load(bytes);
        match (&from_file, &from_memory) {
            (Ok(a), Ok(b)) => prop_assert!(a == b),
            (Err(_), Err(_)) => {}
            _ => return Err(TestCaseError::fail(format!("file: {from_file:?}, memory: {from_memory:?}"))),
        }
        Ok(())
    }
    let r = if bf { both::<bf16>(&path, bytes) } else { both::<f16>(&path, bytes) };
    std::fs::remove_file(&path).ok();
    r
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(4000), ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        check_load(&bytes)?;
        // Behind the magic, and behind a plausible version.
        let mut b = MAGIC.to_vec();
        b.extend_from_slice(&bytes);
        check_load(&b)?;
        if b.len() >= 12 {
            b[8..12].copy_from_slice(&4u32.to_le_bytes());
            check_load(&b)?;
        }
    }

    #[test]
    fn mutated_valid_files_are_rejected_or_canonical(
        (bf, file) in valid_file(),
        mutations in proptest::collection::vec(mutation(), 1..5),
    ) {
        check_load(&file)?;
        let mut b = file.clone();
        for m in &mutations {
            apply(&mut b, m);
        }
        check_load(&b)?;
        if b != file {
            // Damage behind intact checksums is detected (single-byte changes always are;
            // this also holds for these multi-byte ones with overwhelming probability).
            prop_assert!(SparseWeight::<f16>::load(&b[..]).is_err() && SparseWeight::<bf16>::load(&b[..]).is_err());
        }
        check_load_file(&b, bf)?;
    }

    #[test]
    fn extreme_header_fields_fail_cleanly(
        (bf, file) in valid_file(),
        edits in proptest::collection::vec((0usize..8, extreme()), 1..4),
        consistent in any::<bool>(),
        truncate in prop_oneof![Just(None), any::<usize>().prop_map(Some)],
    ) {
        let mut b = file;
        for (field, value) in edits {
            set_field(&mut b, field, value, consistent);
        }
        if let Some(t) = truncate {
            b.truncate(HEADER_BYTES + t % (b.len() - HEADER_BYTES + 1));
        }
        check_load(&b)?;
        check_load_file(&b, bf)?;
    }
}

/// A reader that fails with an I/O error after `ok` bytes.
struct FailAfter<'a> {
    data: &'a [u8],
    ok: usize,
}

impl Read for FailAfter<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.ok == 0 {
            return Err(std::io::Error::other("device unplugged"));
        }
        let n = buf.len().min(self.ok).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        self.ok -= n;
        Ok(n)
    }
}

#[test]
fn failing_readers_give_io_errors() {
    let file = saved::<f16>(300, 90, 0.2, 3, false);
    for ok in [0, 1, 55, 56, 57, 100, file.len() - 1] {
        let r = SparseWeight::<f16>::load(FailAfter { data: &file, ok });
        assert!(matches!(r, Err(Error::Io(_))), "fail after {ok}: {r:?}");
    }
}

#[test]
fn huge_headers_over_short_inputs_allocate_almost_nothing() {
    // Headers claiming up to 2³² − 4 words, with consistent offsets counts and checksums,
    // over every body length up to a few hundred bytes and the whole 32 KiB body: each fails
    // (truncated) having allocated at most twice the bytes it read and a few KiB, whatever
    // the claim.
    let seed = std::env::var("SPARSE_TC_FUZZ_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(17u64);
    let file = saved::<f16>(300, 90, 0.3, seed, false);
    for (rows, cols, words) in [
        (1u64 << 20, 1u64 << 20, u64::from(u32::MAX) - 3),
        (1 << 31, 1 << 31, u64::from(u32::MAX) - 3),
        (u64::from(u32::MAX), 64, 1 << 20),
        (256, 1 << 40, 0),
    ] {
        let mut b = file.clone();
        set_field(&mut b, 4, rows, false);
        set_field(&mut b, 5, cols, true);
        set_field(&mut b, 7, words, false);
        for len in (HEADER_BYTES..HEADER_BYTES + 400).chain([b.len()]) {
            let body = &b[..len];
            let (r, peak) = peak_alloc(|| SparseWeight::<f16>::load(body));
            let msg = match r {
                Err(Error::Format(m)) => m,
                other => panic!("{rows}×{cols}, {words} words, {len} bytes: {other:?}"),
            };
            assert!(peak <= 2 * len + 16 * 1024, "{rows}×{cols}, {words} words, {len} bytes: {peak} bytes allocated ({msg})");
        }
        // From a file, the length check refuses it before reading the sections at all.
        let path = std::env::temp_dir().join(format!("sparse_tc_fuzz_huge_{}.stcw", std::process::id()));
        std::fs::write(&path, &b).unwrap();
        let (r, peak) = peak_alloc(|| SparseWeight::<f16>::load_file(&path));
        std::fs::remove_file(&path).ok();
        let Err(Error::Format(msg)) = r else { panic!("{r:?}") };
        assert!(msg.contains("the header describes") || msg.contains("header says"), "{msg}");
        assert!(peak <= 16 * 1024, "{peak}");
    }
}
