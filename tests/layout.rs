//! Host checks of the device layout maps (`gpu/src/layout.rs`) against the PTX ISA's
//! fragment figures, and of the shared-tile swizzle. No GPU needed.

use sparse_tc::layout::*;
use std::collections::HashSet;

/// Every (row, col) of a 16×16 A tile is held by exactly one (lane, half).
#[test]
fn frag_a_covers_tile_once() {
    let cells: HashSet<_> = (0..32).flat_map(|l| (0..8).map(move |i| frag_a_coord(l, i))).collect();
    assert_eq!(cells.len(), 256);
    assert!(cells.iter().all(|&(r, c)| r < 16 && c < 16));
}

/// Spot values from the ISA figure "MMA .m16n8k16 fragment layout for matrix A (.f16)".
#[test]
fn frag_a_matches_isa_figure() {
    assert_eq!(frag_a_coord(0, 0), (0, 0));
    assert_eq!(frag_a_coord(0, 1), (0, 1));
    assert_eq!(frag_a_coord(1, 0), (0, 2));
    assert_eq!(frag_a_coord(4, 0), (1, 0));
    assert_eq!(frag_a_coord(0, 2), (8, 0)); // a2: groupID + 8
    assert_eq!(frag_a_coord(0, 4), (0, 8)); // a4: col + 8
    assert_eq!(frag_a_coord(31, 7), (15, 15));
}

#[test]
fn frag_b_and_c_cover_tiles_once() {
    let b: HashSet<_> = (0..32).flat_map(|l| (0..4).map(move |i| frag_b_coord(l, i))).collect();
    assert_eq!(b.len(), 128);
    assert!(b.iter().all(|&(k, n)| k < 16 && n < 8));
    let c: HashSet<_> = (0..32).flat_map(|l| (0..4).map(move |i| frag_c_coord(l, i))).collect();
    assert_eq!(c.len(), 128);
    assert!(c.iter().all(|&(r, n)| r < 16 && n < 8));
    assert_eq!(frag_b_coord(5, 0), (2, 1));
    assert_eq!(frag_b_coord(5, 2), (10, 1));
    assert_eq!(frag_c_coord(5, 1), (1, 3));
    assert_eq!(frag_c_coord(5, 3), (9, 3));
}

/// Simulates `ldmatrix.x4` on a swizzled W tile the way `warp_mma_tile` issues it and checks
/// each lane receives exactly the A-fragment elements `mma` expects.
#[test]
fn ldmatrix_a_from_swizzled_tile_gives_mma_fragment() {
    // Tile element (r, c) holds the value r*64 + c, stored at its swizzled position.
    let mut smem = vec![u16::MAX; TILE_M * TILE_K];
    for r in 0..TILE_M {
        for c in 0..TILE_K {
            smem[swizzled_pos(r, c)] = (r * 64 + c) as u16;
        }
    }
    for warp in 0..WARPS {
        for kk in 0..TILE_K / 16 {
            for lane in 0..32 {
                for mat in 0..4 {
                    // Matrix `mat` takes its 8 row addresses from lanes 8·mat .. 8·mat+8.
                    let src_lane = 8 * mat + lane / 4;
                    let (row, chunk) = ldmatrix_a_src(src_lane, warp * 16, kk);
                    let byte = swizzled_chunk_offset(row, chunk);
                    for half in 0..2 {
                        let (_, e) = ldmatrix_coord(lane, half);
                        let got = smem[byte / 2 + e];
                        let (fr, fc) = frag_a_coord(lane, 2 * mat + half);
                        let want = (warp * 16 + fr) * 64 + kk * 16 + fc;
                        assert_eq!(got as usize, want, "warp {warp} kk {kk} lane {lane} a{}", 2 * mat + half);
                    }
                }
            }
        }
    }
}

/// The SpMM's rebuilt 256×64 tile, element (r, c) holding the value r·64 + c at its
/// fragment-native position.
fn frag_native_tile() -> Vec<u16> {
    let mut smem = vec![u16::MAX; SPARSE_TILE_M * TILE_K];
    for r in 0..SPARSE_TILE_M {
        for c in 0..TILE_K {
            smem[frag_pos(r, c)] = (r * 64 + c) as u16;
        }
    }
    smem
}

/// Byte offset of the 16×16 block that `warp_mma_frag_tile(_w_as_b)` has lane `l` of warp
/// `w` read for m-tile `mt` (of `MT` per warp) at k-step `kk`, plus the lane's 8 bytes of
/// the first 8-row half (the second is 256 bytes on): `(w·MT·4 + mt·4 + kk)·512 + l·8`.
/// Restated here rather than shared with the kernel, as an independent check.
fn block_lane_byte(mt_per_warp: usize, warp: usize, mt: usize, kk: usize, lane: usize) -> usize {
    ((warp * mt_per_warp + mt) * (TILE_K / 16) + kk) * 512 + lane * 8
}

/// `warp_mma_frag_tile` (W as the A operand) builds lane `l`'s A fragment from the two
/// 8-byte halves at `block_lane_byte` and 256 bytes on, as `[top₀, bottom₀, top₁, bottom₁]`;
/// check that is exactly the A fragment of m-tile `mt`, k-step `kk` of the warp's rows, for
/// the 4-warp (MT = 4) and 8-warp (MT = 2) blocks.
#[test]
fn frag_native_tile_gives_a_fragments() {
    let smem = frag_native_tile();
    for mt_per_warp in [2, 4] {
        for warp in 0..SPARSE_TILE_M / (16 * mt_per_warp) {
            for mt in 0..mt_per_warp {
                for kk in 0..TILE_K / 16 {
                    for lane in 0..32 {
                        let top = block_lane_byte(mt_per_warp, warp, mt, kk, lane) / 2;
                        let bottom = top + 128;
                        // registers a0a1, a2a3, a4a5, a6a7
                        let regs = [top, bottom, top + 2, bottom + 2];
                        for half in 0..8 {
                            let got = smem[regs[half / 2] + half % 2] as usize;
                            let (fr, fc) = frag_a_coord(lane, half);
                            let want = ((warp * mt_per_warp + mt) * 16 + fr) * 64 + kk * 16 + fc;
                            assert_eq!(got, want, "MT {mt_per_warp} warp {warp} mt {mt} kk {kk} lane {lane} a{half}");
                        }
                    }
                }
            }
        }
    }
}

/// `warp_mma_frag_tile_w_as_b` (W as the B operand) loads lane `l`'s B fragment of the rows
/// `8·h ..` of m-tile `mt` as the 8 bytes at `block_lane_byte + 256·h`; check they are
/// exactly the B fragment (k = column, n = row) of those 8 rows of `Wᵀ`.
#[test]
fn frag_native_tile_gives_b_fragments() {
    let smem = frag_native_tile();
    for mt_per_warp in [2, 4] {
        for warp in 0..SPARSE_TILE_M / (16 * mt_per_warp) {
            for mt in 0..mt_per_warp {
                for kk in 0..TILE_K / 16 {
                    for h in 0..2 {
                        for lane in 0..32 {
                            let at = (block_lane_byte(mt_per_warp, warp, mt, kk, lane) + 256 * h) / 2;
                            for half in 0..4 {
                                let got = smem[at + half] as usize;
                                let (k, n) = frag_b_coord(lane, half);
                                let want = ((warp * mt_per_warp + mt) * 16 + 8 * h + n) * 64 + kk * 16 + k;
                                assert_eq!(got, want, "MT {mt_per_warp} warp {warp} mt {mt} kk {kk} h {h} lane {lane} b{half}");
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Same for the B fragments of two n-tiles loaded by one `ldmatrix.x4` from the X tile.
#[test]
fn ldmatrix_b_from_swizzled_tile_gives_mma_fragment() {
    let rows = 64;
    let mut smem = vec![u16::MAX; rows * TILE_K];
    for n in 0..rows {
        for c in 0..TILE_K {
            smem[swizzled_pos(n, c)] = (n * 64 + c) as u16;
        }
    }
    for nt in (0..8).step_by(2) {
        for kk in 0..4 {
            for lane in 0..32 {
                for mat in 0..4 {
                    let (row, chunk) = ldmatrix_b_src(8 * mat + lane / 4, nt, kk);
                    let byte = swizzled_chunk_offset(row, chunk);
                    for half in 0..2 {
                        let (_, e) = ldmatrix_coord(lane, half);
                        let got = smem[byte / 2 + e] as usize;
                        // registers 0,1 → n-tile nt (b0b1, b2b3); 2,3 → n-tile nt+1
                        let tile = nt + mat / 2;
                        let (k, n) = frag_b_coord(lane, 2 * (mat % 2) + half);
                        assert_eq!(got, (tile * 8 + n) * 64 + kk * 16 + k, "nt {nt} kk {kk} lane {lane}");
                    }
                }
            }
        }
    }
}

#[test]
fn swizzle_is_a_bijection_and_conflict_free() {
    let mut seen = vec![false; TILE_M * TILE_K];
    for r in 0..TILE_M {
        for c in 0..TILE_K {
            let p = swizzled_pos(r, c);
            assert!(!seen[p]);
            seen[p] = true;
            assert_eq!(unswizzle_pos(p), (r, c));
        }
    }
    // The 8 rows of any ldmatrix 8×8 matrix (same chunk, 8 consecutive rows) land in 8
    // distinct 16-byte bank groups.
    for r0 in (0..TILE_M).step_by(8) {
        for chunk in 0..8 {
            let groups: HashSet<_> = (r0..r0 + 8).map(|r| (swizzled_chunk_offset(r, chunk) / 16) % 8).collect();
            assert_eq!(groups.len(), 8);
        }
    }
}

#[test]
fn shared_memory_fits_the_device_limit() {
    // The per-block opt-in maximum is 163 KiB on sm_80 (A100) and 227 KiB on sm_90.
    for nt in [1, 2, 4, 8] {
        for (rt, _) in DENSE_CONFIGS {
            assert!(dense_smem_bytes(rt, nt) <= 163 * 1024);
        }
        assert!(spmm_smem_bytes(nt, spmm_ring_words(nt)) <= 163 * 1024);
    }
    // Up to 32 tokens the default SpMM ring leaves room for three blocks on an H100 SM
    // (228 KiB, of which 1 KiB per block is reserved).
    for nt in [1, 2, 4] {
        assert!(3 * (spmm_smem_bytes(nt, spmm_ring_words(nt)) + 1024) <= 228 * 1024);
    }
}
