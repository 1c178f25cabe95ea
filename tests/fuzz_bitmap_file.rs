//! Fuzzing of the bitmap weight file parser (`BitmapWeight::load` / `load_file`) with
//! proptest, like `tests/fuzz_sparse_file.rs` for Tiled-CSL files: no input may cause a
//! panic or an allocation the input cannot justify.
//!
//! Inputs: random bytes (behind the magic and the bitmap versions and format tags too); valid
//! files, today's (format tag 3) and of the earlier layouts (format tag 2: lane-major tiles of
//! one value segment; format tag 1: block-major tiles; both written here by hand: the library
//! only reads them), with bit flips, byte writes, truncations,
//! extensions and splices; valid files whose header fields are set to extreme values with
//! the header checksum recomputed (so the parser looks past it), from memory and through
//! `load_file` (which checks the length against the header). Every case asserts `Ok` or a
//! `Format` / `Shape` / `UnsupportedDtype` error, that a valid file is accepted (an earlier
//! one as the weight today's packer makes of the same matrix), that an accepted file is
//! canonical (it saves back to the same bytes; an earlier one saves as today's file of the
//! same weight), that a file is never accepted as both f16 and bf16, and —
//! through a per-thread counting global allocator — that the peak allocated while loading
//! stays within `3 × input length + 320 KiB`.
//!
//! CI runs a bounded number of cases (a few seconds in release); `PROPTEST_CASES=200000
//! cargo test --release --test fuzz_bitmap_file` fuzzes longer.

use half::{bf16, f16};
use proptest::prelude::*;
use sparse_tc::layout::{bitmap_mask_coord, bitmap_panel_height, BITMAP_PANEL_TILES};
use sparse_tc::sparse::file::{checksum, HEADER_BYTES, MAGIC};
use sparse_tc::{BitmapWeight, Element, Error, SparseWeight};

#[path = "common/counting_alloc.rs"]
mod counting_alloc;

use counting_alloc::{cases, peak_alloc};

#[global_allocator]
static ALLOC: counting_alloc::Counting = counting_alloc::Counting;

fn budget(len: usize) -> usize {
    3 * len + 320 * 1024
}


// ---- Inputs. ----

/// A small random matrix of density `keep`, some of its 8×8 blocks full.
fn dense<T: Element>(rows: usize, cols: usize, keep: f64, seed: u64) -> Vec<T> {
    let mut s = seed | 1;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 11) as f64 / (1u64 << 53) as f64
    };
    let full_block = (next() * 5.0) as usize; // a block index class kept whole
    (0..rows * cols)
        .map(|i| {
            let u = next();
            let block = (i / cols / 8) * cols.div_ceil(8) + (i % cols) / 8;
            let v = (u * 8.0 - 1.0) as f32 + 0.125;
            T::from_f32(if u < keep || block % 5 == full_block { v } else { 0.0 })
        })
        .collect()
}

/// `dense` (`rows × cols`) packed and saved.
fn saved<T: Element>(rows: usize, cols: usize, dense: &[T]) -> Vec<u8> {
    let mut b = Vec::new();
    BitmapWeight::from_dense(rows, cols, dense).unwrap().save(&mut b).unwrap();
    b
}

/// `dense` (`rows × cols`) in a version-6 file of an earlier layout: 64×64 tiles (panels of
/// 4 along M, as today) of 64 masks, each a `u64`. Format tag 1: 8×8 blocks (bit `8·r + c`)
/// ordered by fragment and A register; a tile is the masks, 16 fragment offsets (`u16`), the
/// values in block and bit order, zero padding to 16 bytes. Format tag 2: today's masks (a
/// byte per lane, `bitmap_mask_coord`) and values in mask order, and after the fragment
/// offsets 8 word prefix bytes per fragment (byte `w`: its values in lanes `0 .. 4w`).
fn saved_earlier<T: Element>(tag: u16, rows: usize, cols: usize, dense: &[T]) -> Vec<u8> {
    let coord = |block: usize, bit: usize| {
        if tag == 2 {
            return bitmap_mask_coord(block, bit);
        }
        let (frag, j) = (block / 4, block % 4);
        (16 * (frag / 4) + 8 * (j % 2) + bit / 8, 16 * (frag % 4) + 8 * (j / 2) + bit % 8)
    };
    let header_words = if tag == 2 { 168 } else { 136 };
    let (tiles_m, tiles_k) = (rows.div_ceil(64), cols.div_ceil(64));
    let (mut offsets, mut data) = (vec![0u32], Vec::<u32>::new());
    for p in 0..tiles_m.div_ceil(BITMAP_PANEL_TILES) {
        for tk in 0..tiles_k {
            for tr in BITMAP_PANEL_TILES * p..BITMAP_PANEL_TILES * p + bitmap_panel_height(p, tiles_m) {
                let start = data.len();
                data.resize(start + header_words, 0);
                let mut values = Vec::new();
                for block in 0..64 {
                    if block % 4 == 0 {
                        data[start + 128 + block / 8] |= (values.len() as u32) << (16 * (block / 4 % 2));
                    }
                    for bit in 0..64 {
                        let (r, c) = coord(block, bit);
                        let (r, c) = (64 * tr + r, 64 * tk + c);
                        if r < rows && c < cols && dense[r * cols + c].to_bits() & 0x7fff != 0 {
                            data[start + 2 * block + bit / 32] |= 1 << (bit % 32);
                            values.push(u32::from(dense[r * cols + c].to_bits()));
                        }
                    }
                    if tag == 2 && block % 4 == 3 {
                        // The fragment's 8 mask words are complete: its word prefixes.
                        let f = block / 4;
                        let mut prefixes = [0u8; 8];
                        for w in 1..8 {
                            prefixes[w] = prefixes[w - 1] + data[start + 8 * f + w - 1].count_ones() as u8;
                        }
                        data[start + 136 + 2 * f] = u32::from_le_bytes(prefixes[..4].try_into().unwrap());
                        data[start + 137 + 2 * f] = u32::from_le_bytes(prefixes[4..].try_into().unwrap());
                    }
                }
                data.extend(values.chunks(2).map(|v| v[0] | v.get(1).map_or(0, |h| h << 16)));
                data.resize(start + 4 * (4 * header_words + 2 * values.len()).div_ceil(16), 0);
                offsets.push((data.len() / 4) as u32);
            }
        }
    }
    // The container: the header (version 6, dtype, flags 0, format tag, rows, cols, the
    // counts), then the two sections, each followed by its checksum.
    let mut b = MAGIC.to_vec();
    b.extend_from_slice(&6u32.to_le_bytes());
    b.push(u8::from(T::DTYPE == sparse_tc::Dtype::Bf16));
    b.push(0);
    b.extend_from_slice(&tag.to_le_bytes());
    for v in [rows, cols, offsets.len(), data.len()] {
        b.extend_from_slice(&(v as u64).to_le_bytes());
    }
    b.extend_from_slice(&checksum(6, &b).to_le_bytes());
    for section in [&offsets, &data] {
        let start = b.len();
        b.extend(section.iter().flat_map(|w| w.to_le_bytes()));
        let sum = checksum(6, &b[start..]);
        b.extend_from_slice(&sum.to_le_bytes());
    }
    b
}

/// A valid file: (bf16?, its bytes, today's file of the same matrix). An eighth each are of
/// format tags 1 and 2 (earlier layouts); the others are today's file itself.
fn valid_file() -> impl Strategy<Value = (bool, Vec<u8>, Vec<u8>)> {
    fn files<T: Element>(tag: u16, rows: usize, cols: usize, keep: f64, seed: u64) -> (Vec<u8>, Vec<u8>) {
        let d = dense::<T>(rows, cols, keep * keep, seed);
        let today = saved(rows, cols, &d);
        (if tag < 3 { saved_earlier(tag, rows, cols, &d) } else { today.clone() }, today)
    }
    let tag = prop_oneof![1 => Just(1u16), 1 => Just(2u16), 6 => Just(3u16)];
    let args = (any::<bool>(), tag, 1usize..300, 1usize..200, 0.0f64..=1.0, any::<u64>());
    args.prop_map(|(bf, tag, rows, cols, keep, seed)| {
        let (file, today) = if bf {
            files::<bf16>(tag, rows, cols, keep, seed)
        } else {
            files::<f16>(tag, rows, cols, keep, seed)
        };
        (bf, file, today)
    })
}

/// `bytes` loaded as bf16 or f16 and saved again.
fn resaved(bf: bool, bytes: &[u8]) -> Result<Vec<u8>, Error> {
    fn one<T: Element>(bytes: &[u8]) -> Result<Vec<u8>, Error> {
        let mut b = Vec::new();
        BitmapWeight::<T>::load(bytes)?.save(&mut b)?;
        Ok(b)
    }
    if bf { one::<bf16>(bytes) } else { one::<f16>(bytes) }
}

#[derive(Clone, Debug)]
enum Mutation {
    Flip(usize, u8),
    Set(usize, u8),
    Truncate(usize),
    Extend(Vec<u8>),
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

/// Header fields by byte offset and width: version, dtype, flags, format tag, rows, cols,
/// n_offsets, n_words.
const FIELDS: [(usize, usize); 8] = [(8, 4), (12, 1), (13, 1), (14, 2), (16, 8), (24, 8), (32, 8), (40, 8)];

fn extreme() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1),
        Just(4),
        Just(5),
        Just(136),
        Just(168),
        Just(2184),
        Just(2216),
        Just(u64::from(u16::MAX)),
        Just(u64::from(u32::MAX) - 3),
        Just(u64::from(u32::MAX)),
        Just(4 * u64::from(u32::MAX)),
        Just(1 << 32),
        Just((1 << 31) - 1),
        Just(u64::MAX / 4),
        Just(u64::MAX / 4 + 1),
        Just(1 << 62),
        Just(1 << 63),
        Just(u64::MAX),
        any::<u64>(),
        0u64..70_000,
    ]
}

/// Writes `value` into header field `field` and recomputes the header checksum; with
/// `consistent`, n_offsets follows rows and cols.
fn set_field(b: &mut [u8], field: usize, value: u64, consistent: bool) {
    if b.len() < HEADER_BYTES {
        return;
    }
    let (at, width) = FIELDS[field % FIELDS.len()];
    b[at..at + width].copy_from_slice(&value.to_le_bytes()[..width]);
    if consistent {
        let u64_at = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
        let tiles = u64_at(16).div_ceil(64).checked_mul(u64_at(24).div_ceil(64)).and_then(|t| t.checked_add(1));
        if let Some(n) = tiles {
            b[32..40].copy_from_slice(&n.to_le_bytes());
        }
    }
    let sum = checksum(u32::from_le_bytes([b[8], b[9], b[10], b[11]]), &b[..48]);
    b[48..56].copy_from_slice(&sum.to_le_bytes());
}

/// Loads `bytes` as f16 and bf16: within the budget, canonical when accepted, never both.
fn check_load(bytes: &[u8]) -> Result<(), TestCaseError> {
    fn one<T: Element>(bytes: &[u8]) -> Result<bool, TestCaseError> {
        let (r, peak) = peak_alloc(|| BitmapWeight::<T>::load(bytes));
        prop_assert!(peak <= budget(bytes.len()), "load of {} bytes allocated {peak} bytes at once", bytes.len());
        match r {
            Ok(w) => {
                let mut again = Vec::new();
                w.save(&mut again).unwrap();
                if bytes[14..16] != 3u16.to_le_bytes() {
                    // Earlier tiles, repacked: saved as today's file of the same weight.
                    prop_assert!(again[14..16] == 3u16.to_le_bytes() && again != bytes);
                    prop_assert!(BitmapWeight::<T>::load(&again[..]).unwrap() == w);
                } else {
                    prop_assert!(again == bytes, "an accepted file is not canonical");
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
    // Never a Tiled-CSL weight: the format tag keeps the two apart.
    prop_assert!(SparseWeight::<f16>::load(bytes).is_err() || !a);
    Ok(())
}

/// `load_file` agrees with `load` and stays within the budget.
fn check_load_file(bytes: &[u8], bf: bool) -> Result<(), TestCaseError> {
    thread_local! {
        static PATH: std::path::PathBuf = std::env::temp_dir()
            .join(format!("sparse_tc_fuzz_bitmap_{}_{:?}.stcw", std::process::id(), std::thread::current().id()));
    }
    let path = PATH.with(Clone::clone);
    std::fs::write(&path, bytes).unwrap();
    fn both<T: Element>(path: &std::path::Path, bytes: &[u8]) -> Result<(), TestCaseError> {
        let (from_file, peak) = peak_alloc(|| BitmapWeight::<T>::load_file(path));
        prop_assert!(peak <= budget(bytes.len()), "load_file of {} bytes allocated {peak}", bytes.len());
        match (&from_file, &BitmapWeight::<T>::load(bytes)) {
            (Ok(a), Ok(b)) => prop_assert!(a == b),
            (Err(_), Err(_)) => {}
            (a, b) => return Err(TestCaseError::fail(format!("file: {a:?}, memory: {b:?}"))),
        }
        Ok(())
    }
    let r = if bf { both::<bf16>(&path, bytes) } else { both::<f16>(&path, bytes) };
    std::fs::remove_file(&path).ok();
    r
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(1500), ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        check_load(&bytes)?;
        let mut b = MAGIC.to_vec();
        b.extend_from_slice(&bytes);
        check_load(&b)?;
        if b.len() >= 16 {
            for (version, tag) in [(5u32, 1u16), (6, 1), (6, 2), (6, 3)] {
                b[8..12].copy_from_slice(&version.to_le_bytes());
                b[14..16].copy_from_slice(&tag.to_le_bytes());
                check_load(&b)?;
            }
        }
    }

    #[test]
    fn mutated_valid_files_are_rejected_or_canonical(
        (bf, file, today) in valid_file(),
        mutations in proptest::collection::vec(mutation(), 1..5),
    ) {
        // Accepted, as the weight today's packer makes of the same matrix.
        prop_assert!(resaved(bf, &file).ok() == Some(today));
        check_load(&file)?;
        check_load_file(&file, bf)?;
        let mut b = file.clone();
        for m in &mutations {
            apply(&mut b, m);
        }
        check_load(&b)?;
        if b != file {
            prop_assert!(BitmapWeight::<f16>::load(&b[..]).is_err() && BitmapWeight::<bf16>::load(&b[..]).is_err());
        }
        check_load_file(&b, bf)?;
    }

    #[test]
    fn extreme_header_fields_fail_cleanly(
        (bf, file, _) in valid_file(),
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

#[test]
fn huge_headers_over_short_inputs_allocate_almost_nothing() {
    let d = dense::<f16>(300, 90, 0.3, 17);
    let headers = [
        (1u64 << 20, 1u64 << 20, 4 * u64::from(u32::MAX)),
        (1 << 31, 1 << 31, 4 * u64::from(u32::MAX)),
        (u64::from(u32::MAX), 64, 1 << 30),
        (64, 1 << 40, 1 << 40),
    ];
    let files = [saved(300, 90, &d), saved_earlier(1, 300, 90, &d), saved_earlier(2, 300, 90, &d)];
    for (file, (rows, cols, words)) in files.iter().flat_map(|f| headers.map(|h| (f, h))) {
        let mut b = file.clone();
        set_field(&mut b, 4, rows, false);
        set_field(&mut b, 5, cols, true);
        set_field(&mut b, 7, words, false);
        for len in (HEADER_BYTES..HEADER_BYTES + 300).chain([b.len()]) {
            let body = &b[..len];
            let (r, peak) = peak_alloc(|| BitmapWeight::<f16>::load(body));
            assert!(matches!(r, Err(Error::Format(_))), "{rows}×{cols}, {words} words, {len} bytes: {r:?}");
            assert!(peak <= 2 * len + 16 * 1024, "{rows}×{cols}, {words} words, {len} bytes: {peak} bytes allocated");
        }
        let path = std::env::temp_dir().join(format!("sparse_tc_fuzz_bitmap_huge_{}.stcw", std::process::id()));
        std::fs::write(&path, &b).unwrap();
        let (r, peak) = peak_alloc(|| BitmapWeight::<f16>::load_file(&path));
        std::fs::remove_file(&path).ok();
        assert!(matches!(r, Err(Error::Format(_))), "{r:?}");
        assert!(peak <= 16 * 1024, "{peak}");
    }
}
