//! Unit tests of the bitmap format: layout maps, packing, validation, files, CPU SpMM.

use super::file::{FORMAT_TAG, VERSION};
use super::*;
use crate::cpu::linear_ref_f64;
use crate::layout::{bitmap_block_bit, frag_a_coord, BITMAP_TILE_FRAGS};
use crate::sparse::file::{checksum, HEADER_BYTES};
use crate::sparse::test_util::{random_sparse, Rng};
use crate::sparse::SparseWeight;
use half::{bf16, f16};
use proptest::prelude::*;

#[test]
fn block_maps_are_inverse_and_match_the_a_fragment() {
    let mut seen = vec![false; TILE * TILE];
    for r in 0..TILE {
        for c in 0..TILE {
            let (b, bit) = bitmap_block_bit(r, c);
            assert!(b < BITMAP_TILE_BLOCKS && bit < 64);
            assert_eq!(bitmap_block_coord(b, bit), (r, c));
            assert!(!std::mem::replace(&mut seen[b * 64 + bit], true));
        }
    }
    // Lane l's A-register j (halves 2j, 2j+1) of fragment f is bits 2l, 2l+1 of block 4f+j.
    for f in 0..BITMAP_TILE_FRAGS {
        let (r0, c0) = ((f / 4) * 16, (f % 4) * 16);
        for lane in 0..32 {
            for j in 0..4 {
                for h in 0..2 {
                    let (r, c) = frag_a_coord(lane, 2 * j + h);
                    assert_eq!(bitmap_block_bit(r0 + r, c0 + c), (4 * f + j, 2 * lane + h), "f {f} lane {lane} reg {j}");
                }
            }
        }
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

fn check_round_trip<T: Element>(rows: usize, cols: usize, dense: &[T]) -> Result<(), TestCaseError> {
    let w = BitmapWeight::from_dense(rows, cols, dense).unwrap();
    prop_assert_eq!(w.to_dense(), dense.to_vec());
    let nonzeros = dense.iter().filter(|v| v.to_bits() & 0x7fff != 0).count();
    prop_assert_eq!(w.nnz(), nonzeros);
    // Size: every tile is its header and values, padded to 16 bytes.
    let tiles = rows.div_ceil(64) * cols.div_ceil(64);
    prop_assert!(w.stored_bytes() >= 4 * (tiles + 1) + 544 * tiles + 2 * nonzeros);
    prop_assert!(w.stored_bytes() <= 4 * (tiles + 1) + 560 * tiles + 2 * nonzeros);
    let again = BitmapWeight::<T>::from_parts(rows, cols, w.tile_offsets().to_vec(), w.data().to_vec()).unwrap();
    prop_assert_eq!(&again, &w);
    let mut file = Vec::new();
    w.save(&mut file).unwrap();
    prop_assert_eq!(BitmapWeight::<T>::load(&file[..]).unwrap(), w);
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
    assert_eq!(w.tile_offsets(), [0, 546, 580, 614, 648]);
    assert_eq!(w.stored_bytes(), 4 * 5 + 16 * 648);
    assert_eq!(w.max_panel_bytes(), 16 * 580);
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
    assert!(m.contains("tile 0 holds 4 values, so it is 35 quads long, but tile_offsets give 34"), "{m}");
    let mut bad = o.clone();
    bad[1] = 33;
    assert!(parts_err(bad, data.clone()).contains("tile 0 (tile_offsets[0..=1]) is 33 quads"));
    // One quad more in tile 0 (its values are then mis-sized).
    let mut longer = data.clone();
    let at = 4 * o[1] as usize;
    longer.splice(at..at, [0; 4]);
    let shifted: Vec<u32> = o.iter().enumerate().map(|(i, &v)| if i >= 1 { v + 1 } else { v }).collect();
    assert!(parts_err(shifted, longer).contains("quads long"));
    // Tile 2 (rows 0..64, columns 64..80: 16 valid columns) with a bit at column 16.
    let t1 = 4 * o[2] as usize;
    let mut bad = data.clone();
    let (blk, bit) = bitmap_block_bit(0, 16);
    bad[t1 + 2 * blk + bit / 32] |= 1 << (bit % 32);
    assert!(parts_err(o.clone(), bad).contains("outside the 70×80"));
    // Tile 1 (rows 64..70) with a bit at row 6.
    let t2 = 4 * o[1] as usize;
    let mut bad = data.clone();
    let (blk, bit) = bitmap_block_bit(6, 0);
    bad[t2 + 2 * blk + bit / 32] |= 1 << (bit % 32);
    assert!(parts_err(o.clone(), bad).contains("outside the 70×80"));
    // A fragment offset off by one.
    let mut bad = data.clone();
    bad[MASK_WORDS + 1] += 1;
    assert!(parts_err(o.clone(), bad).contains("fragment offset"));
    // A mask bit more inside the matrix: the tile then holds more values than its length.
    let mut bad = data.clone();
    bad[0] |= 1 << 5;
    assert!(parts_err(o.clone(), bad).contains("fragment offset 1 is"));
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
fn automatic_format_follows_the_stored_bytes() {
    use crate::sparse::{FormatChoice, SparseFormat};
    let mut rng = Rng::new(9);
    for (sparsity, expect) in [(0.5, SparseFormat::Bitmap), (0.8, SparseFormat::Bitmap), (0.99, SparseFormat::TiledCsl)] {
        let dense: Vec<f16> = random_sparse(&mut rng, 512, 512, sparsity);
        let sw = SparseWeight::from_dense(512, 512, &dense).unwrap();
        let bw = BitmapWeight::from_dense(512, 512, &dense).unwrap();
        // The predictor is within 8 bytes per tile of the packed size.
        assert!(predicted_bytes(&sw).abs_diff(bw.stored_bytes()) <= 8 * 64, "{sparsity}");
        assert_eq!(FormatChoice::Auto.resolve(&sw), expect, "{sparsity}");
        assert_eq!(FormatChoice::Is(SparseFormat::TiledCsl).resolve(&sw), SparseFormat::TiledCsl);
    }
}
