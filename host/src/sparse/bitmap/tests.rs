//! Unit tests of the bitmap format: layout maps, packing, validation, files, CPU SpMM.

use super::file::{FORMAT_TAG, FORMAT_TAG_BLOCK_MAJOR, FORMAT_TAG_ONE_SEGMENT, VERSION};
use super::legacy::{block_major_parts, legacy_coord, LANE_MAJOR_ONE_SEGMENT};
use super::pack::encode_tile;
use super::*;
use crate::cpu::linear_ref_f64;
use crate::layout::{bitmap_mask_bit, frag_a_coord, BITMAP_TILE_FRAGS};
use crate::sparse::file::{checksum, write_container, HEADER_BYTES};
use crate::sparse::test_util::{random_sparse, Rng};
use crate::sparse::SparseWeight;
use half::{bf16, f16};
use proptest::prelude::*;

#[test]
fn mask_maps_are_inverse_and_lane_major() {
    let mut seen = vec![false; TILE * TILE];
    for r in 0..TILE {
        for c in 0..TILE {
            let (m, bit) = bitmap_mask_bit(r, c);
            assert!(m < BITMAP_TILE_MASKS && bit < 64);
            assert_eq!(bitmap_mask_coord(m, bit), (r, c));
            assert!(!std::mem::replace(&mut seen[m * 64 + bit], true));
        }
    }
    // Byte l of fragment f's 32 mask bytes is lane l's, bit i its A half i: mask 4f + l/8,
    // bit 8·(l % 8) + i.
    for f in 0..BITMAP_TILE_FRAGS {
        let (r0, c0) = ((f / 4) * 16, (f % 4) * 16);
        for lane in 0..32 {
            for i in 0..8 {
                let (r, c) = frag_a_coord(lane, i);
                let (m, bit) = bitmap_mask_bit(r0 + r, c0 + c);
                assert_eq!((m / 4, 8 * (m % 4) + bit / 8, bit % 8), (f, lane, i), "f {f} lane {lane} half {i}");
            }
        }
    }
}

#[test]
fn legacy_block_map_is_the_old_a_register_order() {
    // Block-major tiles: lane l's A register j (halves 2j, 2j+1) of fragment f was bits 2l,
    // 2l+1 of block 4f+j; the map is a bijection of the tile.
    let mut seen = vec![false; TILE * TILE];
    for block in 0..BITMAP_TILE_MASKS {
        for bit in 0..64 {
            let (r, c) = legacy_coord(block, bit);
            assert!(!std::mem::replace(&mut seen[r * TILE + c], true));
        }
    }
    for f in 0..BITMAP_TILE_FRAGS {
        let (r0, c0) = ((f / 4) * 16, (f % 4) * 16);
        for lane in 0..32 {
            for i in 0..8 {
                let (r, c) = frag_a_coord(lane, i);
                assert_eq!(legacy_coord(4 * f + i / 2, 2 * lane + i % 2), (r0 + r, c0 + c));
            }
        }
    }
}

/// Checks the kernel's decode against `dense` for every fragment of `w`'s tiles stored in
/// `layout` (`words(t)`: tile `t`'s words): lane `l`'s values of segment `s` start at the
/// fragment offset + prefix byte `segments·(l/4) + s` + popc of the lower lanes' bits of the
/// segment in its mask word `l/4`, and follow in A-half order; segment after segment, lane
/// after lane, the values are in storage order.
fn check_lane_decode<'w>(layout: &TileLayout, w: &BitmapWeight<f16>, words: impl Fn(usize) -> &'w [u32], dense: &[f16]) {
    let (rows, cols, n) = (w.rows(), w.cols(), layout.segments);
    let bits = segment_bits(n);
    for (t, (tr, tk)) in storage_order(w.tiles_m(), w.tiles_k()).enumerate() {
        let words = words(t);
        for f in 0..BITMAP_TILE_FRAGS {
            let prefixes = stored_prefixes(words, f, n);
            let base = usize::from(half(&words[MASK_WORDS..], f));
            let mut expect_next = base;
            for (s, &segment) in bits.iter().enumerate() {
                for lane in 0..32 {
                    let word = words[8 * f + lane / 4];
                    let lower = (u64::from(word) & segment) as u32 & ((1u32 << (8 * (lane % 4))) - 1);
                    let mut at = base + usize::from(prefixes[n * (lane / 4) + s]) + lower.count_ones() as usize;
                    assert_eq!(at, expect_next, "tile {t} fragment {f} segment {s} lane {lane}");
                    for i in 0..8 {
                        let (r, c) = frag_a_coord(lane, i);
                        let (r, c) = (tr * TILE + (f / 4) * 16 + r, tk * TILE + (f % 4) * 16 + c);
                        let stored = (word >> (8 * (lane % 4) + i)) & 1 == 1;
                        let d = if r < rows && c < cols { dense[r * cols + c] } else { f16::ZERO };
                        assert_eq!(stored, d.to_bits() & 0x7fff != 0);
                        if stored && (segment >> i) & 1 == 1 {
                            assert_eq!(half(&words[layout.header_bytes / 4..], at), d.to_bits());
                            at += 1;
                        }
                    }
                    expect_next = at;
                }
            }
            assert_eq!(prefixes[0], 0);
        }
    }
}

#[test]
fn a_lanes_values_are_contiguous_per_segment_and_found_with_its_word_prefixes() {
    let mut rng = Rng::new(5);
    let (rows, cols) = (128, 100);
    for density in [0.0, 0.3, 0.9, 1.0] {
        let dense: Vec<f16> = blocky(&mut rng, rows, cols, density);
        let w = BitmapWeight::from_dense(rows, cols, &dense).unwrap();
        check_lane_decode(&LANE_MAJOR, &w, |t| w.tile_words(t), &dense);
        // The format-tag-2 tiles (one segment) of the same matrix, as their loader reads them.
        let (o, d) = one_segment_parts(rows, cols, &dense);
        check_lane_decode(&LANE_MAJOR_ONE_SEGMENT, &w, |t| &d[4 * o[t] as usize..4 * o[t + 1] as usize], &dense);
    }
}

#[test]
fn tile_order_is_panel_major_and_a_bijection() {
    for (tiles_m, tiles_k) in [(1, 1), (4, 3), (5, 2), (7, 3), (9, 1), (2, 5)] {
        let mut seen = vec![false; tiles_m * tiles_k];
        let mut expect = 0;
        for p in 0..tiles_m.div_ceil(4) {
            let h = crate::layout::bitmap_panel_height(p, tiles_m);
            for tk in 0..tiles_k {
                for tr in 4 * p..4 * p + h {
                    let t = crate::layout::bitmap_tile_index(tr, tk, tiles_m, tiles_k);
                    assert_eq!(t, expect);
                    assert!(!std::mem::replace(&mut seen[t], true));
                    expect += 1;
                }
            }
        }
        assert!(seen.iter().all(|&s| s));
    }
}

/// A matrix whose 8×8 blocks are, at random, empty, full, one entry, or random at `density`.
fn blocky<T: Element>(rng: &mut Rng, rows: usize, cols: usize, density: f64) -> Vec<T> {
    let (bm, bk) = (rows.div_ceil(8), cols.div_ceil(8));
    let kinds: Vec<u64> = (0..bm * bk).map(|_| rng.next_u64() % 4).collect();
    let mut d = vec![T::from_bits(0); rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            let keep = match kinds[(r / 8) * bk + c / 8] {
                0 => false,
                1 => true,
                2 => r % 8 == 3 && c % 8 == 5,
                _ => rng.unit() < density,
            };
            if keep {
                d[r * cols + c] = rng.nonzero();
            }
        }
    }
    d
}

/// A format-tag-1 file (block-major tiles) of container `version` around the parts.
fn block_major_file<T: Element>(version: u32, rows: usize, cols: usize, offsets: &[u32], data: &[u32]) -> Vec<u8> {
    let mut b = Vec::new();
    write_container(&mut b, version, FORMAT_TAG_BLOCK_MAJOR, T::DTYPE, 0, rows as u64, cols as u64, offsets, data).unwrap();
    b
}

/// The parts (`tile_offsets`, data) of a format-tag-2 file (lane-major tiles of one
/// segment) holding the row-major `rows × cols` `dense`.
fn one_segment_parts<T: Element>(rows: usize, cols: usize, dense: &[T]) -> (Vec<u32>, Vec<u32>) {
    let (tiles_m, tiles_k, _) = tile_grid(rows, cols).unwrap();
    let (mut offsets, mut data) = (vec![0u32], Vec::new());
    for (tr, tk) in storage_order(tiles_m, tiles_k) {
        encode_tile(&LANE_MAJOR_ONE_SEGMENT, dense, rows, cols, tr, tk, &mut data);
        offsets.push((data.len() / QUAD_WORDS) as u32);
    }
    (offsets, data)
}

/// A format-tag-2 file (version 6) around the parts.
fn one_segment_file<T: Element>(rows: usize, cols: usize, offsets: &[u32], data: &[u32]) -> Vec<u8> {
    let mut b = Vec::new();
    write_container(&mut b, VERSION, FORMAT_TAG_ONE_SEGMENT, T::DTYPE, 0, rows as u64, cols as u64, offsets, data).unwrap();
    b
}

fn check_round_trip<T: Element>(rows: usize, cols: usize, dense: &[T]) -> Result<(), TestCaseError> {
    let w = BitmapWeight::from_dense(rows, cols, dense).unwrap();
    prop_assert_eq!(w.to_dense(), dense.to_vec());
    let nonzeros = dense.iter().filter(|v| v.to_bits() & 0x7fff != 0).count();
    prop_assert_eq!(w.nnz(), nonzeros);
    // Size: every tile is its header and values, padded to 16 bytes.
    let tiles = rows.div_ceil(64) * cols.div_ceil(64);
    prop_assert!(w.stored_bytes() >= 4 * (tiles + 1) + 800 * tiles + 2 * nonzeros);
    prop_assert!(w.stored_bytes() <= 4 * (tiles + 1) + 816 * tiles + 2 * nonzeros);
    let again = BitmapWeight::<T>::from_parts(rows, cols, w.tile_offsets().to_vec(), w.data().to_vec()).unwrap();
    prop_assert_eq!(&again, &w);
    let mut file = Vec::new();
    w.save(&mut file).unwrap();
    prop_assert_eq!(&BitmapWeight::<T>::load(&file[..]).unwrap(), &w);
    // The same matrix in the earlier files (format tags 1 and 2) loads as the same weight.
    let (o, d) = block_major_parts(rows, cols, dense);
    prop_assert_eq!(&BitmapWeight::<T>::load(&block_major_file::<T>(VERSION, rows, cols, &o, &d)[..]).unwrap(), &w);
    let (o, d) = one_segment_parts(rows, cols, dense);
    prop_assert_eq!(BitmapWeight::<T>::load(&one_segment_file::<T>(rows, cols, &o, &d)[..]).unwrap(), w);
    Ok(())
}

/// Error bound of an f32-accumulated, once-rounded result against the exact sum (as in
/// `crate::cpu`'s tests): `(1 + u_T)·γ_k·Σ|x·w| + u_T·|s| + η_T`.
fn bound<T: Element>(k: usize, abs_sum: f64, exact: f64) -> f64 {
    let u = 2f64.powi(-24);
    let gamma = k as f64 * u / (1.0 - k as f64 * u);
    let ut = T::DTYPE.unit_roundoff();
    let eta = if T::DTYPE == crate::Dtype::F16 { 2f64.powi(-25) } else { 2f64.powi(-134) };
    (1.0 + ut) * gamma * abs_sum + ut * exact.abs() + eta
}

fn check_spmm<T: Element>(x: &[T], n: usize, dense: &[T], m: usize, k: usize) -> Result<(), TestCaseError> {
    let w = BitmapWeight::from_dense(m, k, dense).unwrap();
    let got = linear_bitmap(x, n, &w).unwrap();
    let exact = linear_ref_f64(x, n, dense, m, k);
    for i in 0..n {
        for j in 0..m {
            let (g, e) = (got[i * m + j].to_f32() as f64, exact[i * m + j]);
            if e.is_nan() {
                prop_assert!(g.is_nan(), "Y[{i}][{j}] = {g}, expected NaN");
            } else if e.is_infinite() {
                prop_assert_eq!(g, e, "Y[{}][{}]", i, j);
            } else {
                let abs: f64 = (0..k).map(|p| (x[i * k + p].to_f32() as f64 * dense[j * k + p].to_f32() as f64).abs()).sum();
                prop_assert!((g - e).abs() <= bound::<T>(k, abs, e), "Y[{i}][{j}] = {g}, exact {e}");
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn pack_round_trips(
        rows in 1usize..300, cols in 1usize..200,
        density in prop_oneof![Just(0.0), Just(1.0), 0.0f64..=1.0], seed: u64, bf: bool, blocks: bool,
    ) {
        let mut rng = Rng::new(seed);
        if bf {
            let d: Vec<bf16> = if blocks { blocky(&mut rng, rows, cols, density) } else { random_sparse(&mut rng, rows, cols, 1.0 - density) };
            check_round_trip(rows, cols, &d)?;
        } else {
            let d: Vec<f16> = if blocks { blocky(&mut rng, rows, cols, density) } else { random_sparse(&mut rng, rows, cols, 1.0 - density) };
            check_round_trip(rows, cols, &d)?;
        }
    }

    #[test]
    fn cpu_spmm_matches_the_dense_product(
        m in 1usize..150, k in 1usize..200, n in 1usize..12,
        density in prop_oneof![Just(0.0), Just(1.0), 0.0f64..=1.0], seed: u64, bf: bool, nonfinite: bool,
    ) {
        let mut rng = Rng::new(seed);
        macro_rules! run {
            ($t:ty) => {{
                let mut w: Vec<$t> = blocky(&mut rng, m, k, density);
                let mut x: Vec<$t> = random_sparse(&mut rng, n, k, 0.0);
                if nonfinite {
                    // NaN and ±Inf in X meet stored weights and pruned zeros; Inf in W too.
                    x[rng.below(n * k)] = <$t>::NAN;
                    x[rng.below(n * k)] = <$t>::INFINITY;
                    w[rng.below(m * k)] = <$t>::NEG_INFINITY;
                }
                check_spmm(&x, n, &w, m, k)?;
            }};
        }
        if bf { run!(bf16) } else { run!(f16) }
    }

    #[test]
    fn from_parts_never_panics_on_mutated_parts(
        rows in 1usize..200, cols in 1usize..140, density in 0.0f64..=1.0, seed: u64,
        mutations in proptest::collection::vec((any::<usize>(), any::<u32>(), 0u8..4), 1..4),
    ) {
        let mut rng = Rng::new(seed);
        let dense: Vec<f16> = blocky(&mut rng, rows, cols, density);
        let w = BitmapWeight::from_dense(rows, cols, &dense).unwrap();
        let (mut offsets, mut data) = (w.tile_offsets().to_vec(), w.data().to_vec());
        for (at, value, kind) in mutations {
            match kind {
                0 => { let i = at % data.len(); data[i] = value; }
                1 => { let i = at % data.len(); data[i] ^= 1 << (value % 32); }
                2 => { let i = at % offsets.len(); offsets[i] = offsets[i].wrapping_add(value % 3).wrapping_sub(1); }
                _ => { data.push(value); }
            }
        }
        match BitmapWeight::<f16>::from_parts(rows, cols, offsets, data) {
            Ok(v) => {
                // Accepted: a consistent weight (its own re-encoding is identical).
                let d = v.to_dense();
                let bits = |d: &[f16]| d.iter().map(|v| if v.to_bits() & 0x7fff == 0 { 0 } else { v.to_bits() }).collect::<Vec<_>>();
                prop_assert!(bits(&BitmapWeight::from_dense(rows, cols, &d).unwrap().to_dense()) == bits(&d));
            }
            Err(Error::InvalidArgument(m)) => prop_assert!(m.contains("bitmap weight")),
            Err(e) => return Err(TestCaseError::fail(format!("unexpected error {e:?}"))),
        }
    }
}

#[test]
fn tiled_csl_and_pruning_agree_with_dense_packing() {
    let mut rng = Rng::new(3);
    let (m, k) = (300, 150);
    let dense: Vec<f16> = random_sparse(&mut rng, m, k, 0.3);
    let sw = SparseWeight::from_dense(m, k, &dense).unwrap();
    assert_eq!(BitmapWeight::from_tiled_csl(&sw).unwrap(), BitmapWeight::from_dense(m, k, &dense).unwrap());
    for s in [0.0, 0.5, 0.9, 1.0] {
        let b = BitmapWeight::prune_magnitude(m, k, &dense, s).unwrap();
        assert_eq!(b.to_dense(), SparseWeight::prune_magnitude(m, k, &dense, s).unwrap().to_dense());
    }
    assert!(matches!(BitmapWeight::prune_magnitude(m, k, &dense, 1.5), Err(Error::InvalidArgument(_))));
    assert!(matches!(BitmapWeight::<f16>::from_dense(0, 5, &[]), Err(Error::Shape(_))));
    assert!(matches!(BitmapWeight::<f16>::from_dense(2, 5, &[f16::ONE; 9]), Err(Error::Shape(_))));
}

#[test]
fn bytes_and_density() {
    // 128×128, one full tile, three empty ones.
    let mut d = vec![f16::ZERO; 128 * 128];
    for r in 0..64 {
        for c in 0..64 {
            d[r * 128 + c] = f16::ONE;
        }
    }
    let w = BitmapWeight::from_dense(128, 128, &d).unwrap();
    assert_eq!(w.nnz(), 4096);
    assert_eq!(w.density(), 0.25);
    assert_eq!((tile_quads(0), tile_quads(4096)), (50, 562));
    assert_eq!(w.tile_offsets(), [0, 562, 612, 662, 712]);
    assert_eq!(w.stored_bytes(), 4 * 5 + 16 * 712);
    assert_eq!(w.max_panel_bytes(), 16 * 612);
}

/// A 70×80 weight (2×2 tiles, three of them partial) with a few entries, and its parts.
fn sample() -> (BitmapWeight<f16>, Vec<u32>, Vec<u32>) {
    let mut d = vec![f16::ZERO; 70 * 80];
    for &(r, c) in &[(0, 0), (0, 1), (9, 3), (63, 63), (64, 0), (69, 79), (5, 70)] {
        d[r * 80 + c] = f16::from_f32((r + c) as f32 + 1.0);
    }
    let w = BitmapWeight::from_dense(70, 80, &d).unwrap();
    let (o, data) = (w.tile_offsets().to_vec(), w.data().to_vec());
    (w, o, data)
}

fn parts_err(o: Vec<u32>, data: Vec<u32>) -> String {
    match BitmapWeight::<f16>::from_parts(70, 80, o, data) {
        Err(Error::InvalidArgument(m)) => m,
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

#[test]
fn from_parts_rejects_each_corruption() {
    let (_, o, data) = sample();
    assert!(BitmapWeight::<f16>::from_parts(70, 80, o.clone(), data.clone()).is_ok());
    assert!(matches!(BitmapWeight::<f16>::from_parts(0, 80, o.clone(), data.clone()), Err(Error::Shape(_))));
    // Offsets: count, first, last, decreasing, tile length.
    assert!(parts_err(o[..4].to_vec(), data.clone()).contains("tile_offsets has 4 entries"));
    let mut bad = o.clone();
    bad[0] = 1;
    assert!(parts_err(bad, data.clone()).contains("tile_offsets[0]"));
    let mut bad = o.clone();
    bad[4] += 1;
    assert!(parts_err(bad, data.clone()).contains("tile_offsets[4]"));
    let mut bad = o.clone();
    bad[2] = bad[1] - 1;
    assert!(parts_err(bad, data.clone()).contains("decrease"));
    let mut bad = o.clone();
    bad[1] -= 1;
    let m = parts_err(bad, data.clone());
    assert!(m.contains("tile 0 holds 4 values, so it is 51 quads long, but tile_offsets give 50"), "{m}");
    let mut bad = o.clone();
    bad[1] = 49;
    assert!(parts_err(bad, data.clone()).contains("tile 0 (tile_offsets[0..=1]) is 49 quads, a tile is 50..=562"));
    // One quad more in tile 0 (its values are then mis-sized).
    let mut longer = data.clone();
    let at = 4 * o[1] as usize;
    longer.splice(at..at, [0; 4]);
    let shifted: Vec<u32> = o.iter().enumerate().map(|(i, &v)| if i >= 1 { v + 1 } else { v }).collect();
    assert!(parts_err(shifted, longer).contains("quads long"));
    // Tile 2 (rows 0..64, columns 64..80: 16 valid columns) with a bit at column 16.
    let t1 = 4 * o[2] as usize;
    let mut bad = data.clone();
    let (m, bit) = bitmap_mask_bit(0, 16);
    bad[t1 + 2 * m + bit / 32] |= 1 << (bit % 32);
    let msg = parts_err(o.clone(), bad);
    assert!(msg.contains(&format!("tile 2: mask {m} (")) && msg.contains("outside the 70×80"), "{msg}");
    // Tile 1 (rows 64..70) with a bit at row 6.
    let t2 = 4 * o[1] as usize;
    let mut bad = data.clone();
    let (m, bit) = bitmap_mask_bit(6, 0);
    bad[t2 + 2 * m + bit / 32] |= 1 << (bit % 32);
    assert!(parts_err(o.clone(), bad).contains("outside the 70×80"));
    // A fragment offset off by one.
    let mut bad = data.clone();
    bad[MASK_WORDS + 1] += 1;
    assert!(parts_err(o.clone(), bad).contains("fragment offset"));
    // A mask bit more inside the matrix (lane 0, A half 5, segment 1; fragment 0 holds
    // three values of segment 0): segment 1's word prefixes after lane 0 are then short.
    let mut bad = data.clone();
    bad[0] |= 1 << 5;
    let msg = parts_err(o.clone(), bad);
    assert!(msg.contains("tile 0: fragment 0's word prefix 3 is 3, expected 4: the values before lane 4 (segment 1)"), "{msg}");
    // A word prefix byte off by one: byte 0 (always 0), byte 5 of fragment 3, byte 15.
    for (f, b) in [(0, 0), (3, 5), (15, 15)] {
        let mut bad = data.clone();
        bad[PREFIX_WORDS_AT + 4 * f + b / 4] ^= 1 << (8 * (b % 4));
        let msg = parts_err(o.clone(), bad);
        assert!(msg.contains(&format!("tile 0: fragment {f}'s word prefix {b} is")), "{msg}");
    }
    // The same in another tile (tile 3: rows 64..70, columns 64..80).
    let mut bad = data.clone();
    bad[4 * o[3] as usize + PREFIX_WORDS_AT + 1] += 1 << 16;
    let msg = parts_err(o.clone(), bad);
    assert!(msg.contains("tile 3: fragment 0's word prefix 6 is"), "{msg}");
    // Padding after the values.
    let mut bad = data.clone();
    let end = 4 * o[1] as usize - 1;
    bad[end] = 7;
    assert!(parts_err(o.clone(), bad).contains("padding"));
}

#[test]
fn file_layout_and_format_tags() {
    let (w, _, _) = sample();
    let mut b = Vec::new();
    w.save(&mut b).unwrap();
    assert_eq!(&b[..8], b"STCSPW\0\0");
    assert_eq!(u32::from_le_bytes(b[8..12].try_into().unwrap()), VERSION);
    assert_eq!(u16::from_le_bytes(b[14..16].try_into().unwrap()), FORMAT_TAG);
    assert_eq!(u64::from_le_bytes(b[48..56].try_into().unwrap()), checksum(u32::from_le_bytes([b[8], b[9], b[10], b[11]]), &b[..48]));
    assert_eq!(b.len(), HEADER_BYTES + 4 * w.tile_offsets().len() + 8 + 4 * w.data().len() + 8);
    // Each format's loader names the other's files.
    let Err(Error::Format(m)) = SparseWeight::<f16>::load(&b[..]) else { panic!() };
    assert!(m.contains("bitmap") && m.contains("BitmapWeight::load"), "{m}");
    let sw = SparseWeight::from_dense(70, 80, &w.to_dense()).unwrap();
    let mut old = Vec::new();
    sw.save(&mut old).unwrap();
    let Err(Error::Format(m)) = BitmapWeight::<f16>::load(&old[..]) else { panic!() };
    assert!(m.contains("Tiled-CSL") && m.contains("SparseWeight::load"), "{m}");
    assert_eq!(SparseWeight::<f16>::load(&old[..]).unwrap(), sw);
    // Wrong dtype.
    assert!(matches!(BitmapWeight::<bf16>::load(&b[..]), Err(Error::UnsupportedDtype(_))));
}

#[test]
fn every_single_byte_corruption_and_truncation_is_rejected() {
    let (w, _, _) = sample();
    let mut b = Vec::new();
    w.save(&mut b).unwrap();
    let mut c = b.clone();
    for i in 0..b.len() {
        for mask in [0x01u8, 0x10, 0x80, 0xff] {
            c[i] = b[i] ^ mask;
            assert!(BitmapWeight::<f16>::load(&c[..]).is_err(), "byte {i} ^ {mask:#x} accepted");
        }
        c[i] = b[i];
    }
    for len in 0..b.len() {
        let Err(Error::Format(m)) = BitmapWeight::<f16>::load(&b[..len]) else { panic!("length {len}") };
        assert!(m.contains("truncated") || len >= HEADER_BYTES, "{len}: {m}");
    }
    assert_eq!(BitmapWeight::<f16>::load(&b[..]).unwrap(), w);
}

#[test]
fn automatic_format_follows_the_density() {
    use crate::sparse::{fastest_for_density, FormatChoice, SparseFormat, BITMAP_MIN_DENSITY, SPARSE_MAX_DENSITY};
    let mut rng = Rng::new(9);
    for (sparsity, expect) in [(0.5, SparseFormat::Bitmap), (0.7, SparseFormat::Bitmap), (0.8, SparseFormat::TiledCsl), (0.99, SparseFormat::TiledCsl)] {
        let dense: Vec<f16> = random_sparse(&mut rng, 512, 512, sparsity);
        let sw = SparseWeight::from_dense(512, 512, &dense).unwrap();
        let bw = BitmapWeight::from_dense(512, 512, &dense).unwrap();
        // The byte predictor is within 8 bytes per tile of the packed size.
        assert!(predicted_bytes(&sw).abs_diff(bw.stored_bytes()) <= 8 * 64, "{sparsity}");
        assert_eq!(FormatChoice::Auto.resolve(&sw), expect, "{sparsity}");
        assert_eq!(FormatChoice::Is(SparseFormat::TiledCsl).resolve(&sw), SparseFormat::TiledCsl);
        assert_eq!(FormatChoice::Is(SparseFormat::Bitmap).resolve(&sw), SparseFormat::Bitmap);
    }
    // The thresholds, at and around them.
    assert_eq!(fastest_for_density(1.0), None);
    assert_eq!(fastest_for_density(SPARSE_MAX_DENSITY + 1e-9), None);
    assert_eq!(fastest_for_density(SPARSE_MAX_DENSITY), Some(SparseFormat::Bitmap));
    assert_eq!(fastest_for_density(BITMAP_MIN_DENSITY), Some(SparseFormat::Bitmap));
    assert_eq!(fastest_for_density(BITMAP_MIN_DENSITY - 1e-9), Some(SparseFormat::TiledCsl));
    assert_eq!(fastest_for_density(0.0), Some(SparseFormat::TiledCsl));
}

#[test]
fn block_major_files_load_as_the_same_matrix() {
    let mut rng = Rng::new(21);
    for (rows, cols, density) in [(70, 80, 0.2), (300, 130, 0.5), (64, 64, 1.0), (1, 1, 1.0), (260, 65, 0.0)] {
        let dense: Vec<bf16> = blocky(&mut rng, rows, cols, density);
        let w = BitmapWeight::from_dense(rows, cols, &dense).unwrap();
        let (o, d) = block_major_parts(rows, cols, &dense);
        for version in [5, 6] {
            let file = block_major_file::<bf16>(version, rows, cols, &o, &d);
            let back = BitmapWeight::<bf16>::load(&file[..]).unwrap();
            assert_eq!(back, w, "{rows}×{cols}, version {version}");
            assert_eq!(back.to_dense(), dense);
            // Saved again: today's format tag and version, and the bytes of a fresh save.
            let mut again = Vec::new();
            back.save(&mut again).unwrap();
            assert_eq!(u16::from_le_bytes([again[14], again[15]]), FORMAT_TAG);
            let mut fresh = Vec::new();
            w.save(&mut fresh).unwrap();
            assert_eq!(again, fresh);
            assert!(matches!(BitmapWeight::<f16>::load(&file[..]), Err(Error::UnsupportedDtype(_))));
        }
    }
    // A value stored as ±0 in an old file is not stored after repacking: the same matrix.
    let (w, _, _) = sample();
    let dense = w.to_dense();
    let (o, mut d) = block_major_parts(70, 80, &dense);
    assert_eq!(legacy_coord(0, 0), (0, 0));
    // Tile 0's value 0 (word 136, after the 544-byte header) is entry (0, 0); store −0.
    d[136] = (d[136] & 0xffff_0000) | 0x8000;
    let back = BitmapWeight::<f16>::load(&block_major_file::<f16>(6, 70, 80, &o, &d)[..]).unwrap();
    let mut zeroed = dense.clone();
    zeroed[0] = f16::ZERO;
    assert_eq!(back, BitmapWeight::from_dense(70, 80, &zeroed).unwrap());
    assert_eq!(back.nnz(), w.nnz() - 1);
}

#[test]
fn corrupt_block_major_files_are_refused() {
    let (w, _, _) = sample();
    let (o, d) = block_major_parts(70, 80, &w.to_dense());
    let err = |o: &[u32], d: &[u32]| match BitmapWeight::<f16>::load(&block_major_file::<f16>(6, 70, 80, o, d)[..]) {
        Err(Error::Format(m)) => {
            assert!(m.contains("block-major") && m.contains("70×80"), "{m}");
            m
        }
        other => panic!("expected Error::Format, got {other:?}"),
    };
    assert!(BitmapWeight::<f16>::load(&block_major_file::<f16>(6, 70, 80, &o, &d)[..]).is_ok());
    // Tile lengths of the old header (34 quads for no values, 35 for tile 0's 4 values).
    assert_eq!(&o[..2], [0, 35]);
    let mut bad = o.clone();
    bad[1] -= 1;
    assert!(err(&bad, &d).contains("tile 0 holds 4 values, so it is 35 quads long, but tile_offsets give 34"));
    let mut bad = o.clone();
    bad[0] = 1;
    assert!(err(&bad, &d).contains("tile_offsets[0] = 1"));
    // A fragment offset off by one (fragment 2 of tile 0).
    let mut bad = d.clone();
    bad[128 + 1] += 1;
    assert!(err(&o, &bad).contains("tile 0: fragment offset 2 is 4, its blocks before hold 3 values"));
    // A bit outside the matrix: tile 1 (rows 64..70) at row 6 (block 0, bit 48).
    let mut bad = d.clone();
    bad[4 * o[1] as usize + 1] |= 1 << 16;
    assert!(err(&o, &bad).contains("tile 1: block 0 (0x0001000000000001) has bits outside the 70×80 matrix"));
    // A bit more inside it: fragment 1's offset no longer matches.
    let mut bad = d.clone();
    bad[0] |= 1 << 2;
    assert!(err(&o, &bad).contains("fragment offset 1 is"));
    // Padding after the values.
    let mut bad = d.clone();
    bad[4 * o[1] as usize - 1] = 1;
    assert!(err(&o, &bad).contains("padding"));
    // A tile shorter than the old header.
    let mut bad = o.clone();
    bad[1] = 33;
    assert!(err(&bad, &d).contains("tile 0 (tile_offsets[0..=1]) is 33 quads, a tile is 34..=546"));
}

#[test]
fn format_tags_and_versions_are_not_mixed_up() {
    // Relabelled with valid checksums: today's tiles as tag 1, block-major ones as today's,
    // today's tag in a version-5 file, an unknown tag; the header's word bounds follow the tag.
    let (w, o, data) = sample();
    let (lo, ld) = block_major_parts(70, 80, &w.to_dense());
    let file = |version: u32, tag: u16, o: &[u32], d: &[u32]| {
        let mut b = Vec::new();
        write_container(&mut b, version, tag, crate::Dtype::F16, 0, 70, 80, o, d).unwrap();
        match BitmapWeight::<f16>::load(&b[..]) {
            Err(Error::Format(m)) => m,
            other => panic!("expected Error::Format, got {other:?}"),
        }
    };
    let m = file(6, FORMAT_TAG_BLOCK_MAJOR, &o, &data);
    assert!(m.contains("block-major") && m.contains("quads"), "{m}");
    let m = file(6, FORMAT_TAG, &lo, &ld);
    assert!(m.contains("header says") && m.contains("data words"), "{m}");
    let m = file(5, FORMAT_TAG, &o, &data);
    assert!(m.contains("format tag 3") && m.contains("version 6"), "{m}");
    let m = file(5, FORMAT_TAG_ONE_SEGMENT, &o, &data);
    assert!(m.contains("format tag 2") && m.contains("version 6"), "{m}");
    // Today's tiles as tag 2: their prefixes are not the one-segment ones.
    let m = file(6, FORMAT_TAG_ONE_SEGMENT, &o, &data);
    assert!(m.contains("one segment (format tag 2)"), "{m}");
    let m = file(6, 4, &o, &data);
    assert!(m.contains("format tag 4 is not a bitmap format's"), "{m}");
    // The smallest weight: one empty tile, 34 quads in tag 1, 42 in tag 2, 50 in tag 3.
    let one = BitmapWeight::<f16>::from_dense(1, 1, &[f16::ZERO]).unwrap();
    assert_eq!(one.tile_offsets(), [0, 50]);
    assert_eq!(one_segment_parts(1, 1, &[f16::ZERO]).0, [0, 42]);
    let (lo, ld) = block_major_parts(1, 1, &[f16::ZERO]);
    assert_eq!(lo, [0, 34]);
    let mut b = Vec::new();
    write_container(&mut b, 6, FORMAT_TAG_BLOCK_MAJOR, crate::Dtype::F16, 0, 1, 1, &lo, &ld).unwrap();
    assert_eq!(BitmapWeight::<f16>::load(&b[..]).unwrap(), one);
    let mut b = Vec::new();
    write_container(&mut b, 6, FORMAT_TAG, crate::Dtype::F16, 0, 1, 1, &lo, &ld).unwrap();
    let Err(Error::Format(m)) = BitmapWeight::<f16>::load(&b[..]) else { panic!() };
    assert!(m.contains("header says 136 data words") && m.contains("200..=2248"), "{m}");
    // The Tiled-CSL loader names every bitmap tag.
    for tag in [FORMAT_TAG, FORMAT_TAG_ONE_SEGMENT, FORMAT_TAG_BLOCK_MAJOR] {
        let mut b = Vec::new();
        write_container(&mut b, 6, tag, crate::Dtype::F16, 0, 1, 1, &lo, &ld).unwrap();
        let Err(Error::Format(m)) = SparseWeight::<f16>::load(&b[..]) else { panic!() };
        assert!(m.contains(&format!("format tag {tag}")) && m.contains("BitmapWeight::load"), "{m}");
    }
}

#[test]
fn one_segment_files_load_as_the_same_matrix() {
    // The format-tag-2 writer of these tests against the bytes session 21's library saved
    // for the same matrix (then today's format): length and XXH3-64 of the whole file.
    let mut rng = Rng::new(2207);
    let dense: Vec<f16> = blocky(&mut rng, 300, 130, 0.5);
    let (o, d) = one_segment_parts(300, 130, &dense);
    let file = one_segment_file::<f16>(300, 130, &o, &d);
    assert_eq!((file.len(), xxhash_rust::xxh3::xxh3_64(&file)), (40600, 0xdb60_6a4a_e9ed_918e));
    let back = BitmapWeight::<f16>::load(&file[..]).unwrap();
    assert_eq!(back, BitmapWeight::from_dense(300, 130, &dense).unwrap());
    let mut again = Vec::new();
    back.save(&mut again).unwrap();
    assert_eq!(u16::from_le_bytes([again[14], again[15]]), FORMAT_TAG);
    for (rows, cols, density) in [(70, 80, 0.2), (64, 64, 1.0), (1, 1, 1.0), (260, 65, 0.0)] {
        let dense: Vec<bf16> = blocky(&mut rng, rows, cols, density);
        let (o, d) = one_segment_parts(rows, cols, &dense);
        let back = BitmapWeight::<bf16>::load(&one_segment_file::<bf16>(rows, cols, &o, &d)[..]).unwrap();
        assert_eq!(back, BitmapWeight::from_dense(rows, cols, &dense).unwrap(), "{rows}×{cols}");
    }
}

#[test]
fn corrupt_one_segment_files_are_refused() {
    let (w, _, _) = sample();
    let (o, d) = one_segment_parts(70, 80, &w.to_dense());
    let err = |o: &[u32], d: &[u32]| match BitmapWeight::<f16>::load(&one_segment_file::<f16>(70, 80, o, d)[..]) {
        Err(Error::Format(m)) => {
            assert!(m.contains("one segment (format tag 2)") && m.contains("70×80"), "{m}");
            m
        }
        other => panic!("expected Error::Format, got {other:?}"),
    };
    assert_eq!(BitmapWeight::<f16>::load(&one_segment_file::<f16>(70, 80, &o, &d)[..]).unwrap(), w);
    // Tile 0 holds 4 values: 43 quads of the 672-byte header.
    assert_eq!(&o[..2], [0, 43]);
    let mut bad = o.clone();
    bad[1] -= 1;
    assert!(err(&bad, &d).contains("tile 0 holds 4 values, so it is 43 quads long, but tile_offsets give 42"));
    // A word prefix byte off by one (fragment 0, byte 1: lanes 0..4 hold 2 values).
    let mut bad = d.clone();
    bad[PREFIX_WORDS_AT] ^= 1 << 8;
    assert!(err(&o, &bad).contains("tile 0: fragment 0's word prefix 1 is 3, expected 2: the values before lane 4"));
    // A bit outside the matrix, a fragment offset, the padding.
    let mut bad = d.clone();
    let (m, bit) = bitmap_mask_bit(6, 0);
    bad[4 * o[1] as usize + 2 * m + bit / 32] |= 1 << (bit % 32);
    assert!(err(&o, &bad).contains("outside the 70×80"));
    let mut bad = d.clone();
    bad[MASK_WORDS + 1] += 1;
    assert!(err(&o, &bad).contains("fragment offset"));
    let mut bad = d.clone();
    bad[4 * o[1] as usize - 1] = 1;
    assert!(err(&o, &bad).contains("padding"));
}
