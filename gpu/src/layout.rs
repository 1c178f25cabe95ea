//! Tile shapes and lane→element maps shared by the device kernels and the host.
//!
//! This file is plain `core` Rust with no PTX, so the host crate includes it too
//! (`#[path]`), packs sparse tiles with exactly these constants and tests the maps
//! against the PTX ISA fragment figures without a GPU.

/// Rows of W (output features) one thread block owns: 4 warps × 16 rows.
pub const TILE_M: usize = 64;
/// Columns of W (input features) per pipeline step: 4 × k16 MMA steps.
pub const TILE_K: usize = 64;
/// Threads per 64-row tile: 4 warps × 16 rows. A block of `rt` row tiles has `rt · 128`
/// threads.
pub const THREADS: usize = 128;
/// Warps per 64-row tile.
pub const WARPS: usize = THREADS / 32;
/// Rows of one Tiled-CSL tile of a sparse weight: 4 row tiles of 64, so one SpMM block
/// (16 warps) rebuilds a 256×64 slice of W per pipeline step, and the per-step costs
/// (barriers, the X tile, tile offsets) are spread over 4× the nonzeros. Flash-LLM uses 256
/// rows for the same reason.
pub const SPARSE_TILE_M: usize = 4 * TILE_M;
/// Elements of one sparse tile (positions are `0..SPARSE_TILE_ELEMS`, 14 bits).
pub const SPARSE_TILE_ELEMS: usize = SPARSE_TILE_M * TILE_K;
/// Shared-memory pipeline depth (stages in flight) of both kernels.
pub const STAGES: usize = 4;
/// Words of the SpMM kernel's fallback word ring up to 16 tokens (32 KiB; a tile of ≤ 50%
/// density is one chunk). The ring is a launch parameter the host sizes per weight and
/// token count (`host/src/linear.rs`, `Gpu::spmm_ring`), smaller or larger than this; a
/// tile larger than the ring streams in ring-sized chunks, so any density from 0 to 100%
/// works. Every ring is a multiple of 128 words (one warp's 16-byte loads), so chunks start
/// on the 128-word blocks the bank reordering works in.
pub const CHUNK_WORDS: usize = 8192;

/// The SpMM kernel's fallback word ring for `nt` token tiles of 8, used when no ring lets
/// two blocks share an SM (a device with less shared memory or fewer registers than the
/// kernels are tuned for): 8192 words up to 16 tokens, 6144 (a tile of ≤ 37.5% density)
/// above.
pub const fn spmm_ring_words(nt: usize) -> usize {
    if nt >= 4 { 6144 } else { CHUNK_WORDS }
}
/// Bytes of one dense 64×64 16-bit tile in shared memory (rows of 128 B).
pub const TILE_BYTES: usize = TILE_M * TILE_K * 2;
/// Bytes of one row of a shared tile (64 halves).
pub const ROW_BYTES: usize = TILE_K * 2;

/// Dynamic shared memory of the dense kernel with `rt` row tiles of 64 and `nt` token tiles
/// of 8: `STAGES × (W tile + X tile)`.
pub const fn dense_smem_bytes(rt: usize, nt: usize) -> usize {
    STAGES * (rt * TILE_BYTES + nt * 8 * ROW_BYTES)
}

/// Threads of a GEMM/SpMM block of `rt` row tiles of 64 whose warps own `mt` m16 tiles each:
/// `64·rt / (16·mt)` warps.
pub const fn block_threads(rt: usize, mt: usize) -> usize {
    rt * TILE_M / (16 * mt) * 32
}

/// Threads per block of the sparse kernels' split-K reduction kernel.
pub const REDUCE_THREADS: usize = 128;

/// Dense-kernel block shapes compiled into the PTX, as (row tiles of 64 per block, m16
/// tiles per warp): a block has `64·rt` rows and `4·rt/mt` warps. Taller blocks read each X
/// tile once for more rows of W (X traffic from L2 is `N / (64·rt)` of the W bytes); warps
/// with more rows reuse each B fragment for `mt` MMAs (less shared-memory traffic).
pub const DENSE_CONFIGS: [(usize, usize); 4] = [(1, 1), (2, 1), (2, 2), (4, 2)];

/// The dense block shape used by default for a weight of `m` rows on `sms` SMs (tuned on an
/// H100 with `benches/linear.rs --tune dense`): 64-row blocks of 4 warps, or 256-row blocks
/// of 8 warps when there are at least as many of those as SMs — one such block keeps four
/// times the bytes in flight, so a round of whole 256-row tiles already saturates HBM and
/// only the last partial round needs splitting (`host/src/linear.rs: plan_schedule`).
pub const fn dense_default_config(m: usize, sms: usize) -> (usize, usize) {
    if m >= 4 * TILE_M * sms { (4, 2) } else { (1, 1) }
}

/// SpMM warp heights compiled into the PTX (m16 tiles per warp; `16/mt` warps per block),
/// for token tiles up to `spmm_max_nt(mt)`. (One m-tile per warp, 512 threads, was never
/// the fastest and leaves only 128 registers per thread: not compiled.)
pub const SPMM_CONFIGS: [usize; 2] = [2, 4];

/// Largest token-tile count compiled for SpMM warp height `mt` (accumulators must fit in
/// registers: `mt · nt · 4` floats per thread).
pub const fn spmm_max_nt(mt: usize) -> usize {
    if mt >= 4 { 4 } else { 8 }
}

/// The SpMM warp height used by default for `nt` token tiles of 8 (tuned on an H100 with
/// `benches/linear.rs --tune sparse`: 4 warps per block up to 32 tokens, 8 above).
pub const fn spmm_default_mt(nt: usize) -> usize {
    if nt <= 4 { 4 } else { 2 }
}

/// Row tiles of 64 per SpMM block: one Tiled-CSL tile (`SPARSE_TILE_M` rows).
pub const SPMM_ROW_TILES: usize = SPARSE_TILE_M / TILE_M;

/// X tiles the SpMM kernel keeps in flight for `nt` token tiles of 8 (its X ring; tiles
/// are prefetched at most `slots - 1` ahead): `STAGES`, but 2 at 32 tokens, where the 16 KiB
/// of four 32-token X tiles would keep four blocks from sharing an SM.
pub const fn spmm_x_slots(nt: usize) -> usize {
    if nt == 4 { 2 } else { STAGES }
}

/// Dynamic shared memory of the SpMM kernel with `nt` token tiles of 8 and a word ring of
/// `ring_words`: one dense `SPARSE_TILE_M`×64 W tile, the ring and `spmm_x_slots(nt)` X
/// tiles.
pub const fn spmm_smem_bytes(nt: usize, ring_words: usize) -> usize {
    SPMM_ROW_TILES * TILE_BYTES + ring_words * 4 + spmm_x_slots(nt) * nt * 8 * ROW_BYTES
}

/// Launch bounds of kernels whose register use would otherwise keep them below the
/// occupancy they are tuned for: (entry name, threads per block, resident blocks per SM).
/// `host/build.rs` writes them into the PTX as `.maxntid` / `.minnctapersm` (what CUDA
/// C++'s `__launch_bounds__` emits; rustc has no attribute for it), so `ptxas` keeps two
/// SpMM kernels within 128 registers: the 32-token 4-warp one (four blocks per SM instead of
/// three) and the 64-token 8-warp one (two blocks instead of one, at 164 registers; measured
/// 1.3–1.7× faster on large layers, `benches/results/NOTES.md` item 29). Both compile
/// without spills (`.ci/check-ptx`).
pub const LAUNCH_BOUNDS: [(&str, usize, usize); 4] = [
    ("spmm_linear_f16_n32_m4", 128, 4),
    ("spmm_linear_bf16_n32_m4", 128, 4),
    ("spmm_linear_f16_n64_m2", 256, 2),
    ("spmm_linear_bf16_n64_m2", 256, 2),
];

/// Byte offset of the 16-byte chunk `chunk` (0..8) of row `row` in a swizzled shared tile.
///
/// Rows are 128 B = all 32 banks. Storing chunk `c` of row `r` at chunk `c ^ (r % 8)` makes
/// the 8 row addresses of every `ldmatrix` 8×8 matrix fall in 8 different 16-byte bank groups,
/// so `ldmatrix` and the 16-byte `cp.async` writes are conflict-free.
pub const fn swizzled_chunk_offset(row: usize, chunk: usize) -> usize {
    row * ROW_BYTES + ((chunk ^ (row % 8)) * 16)
}

/// Element index (in halves) of tile entry (`row`, `col`) in the swizzled shared tile
/// (any number of 128-byte rows): the dense kernel's W and X tiles and the SpMM's X tiles.
/// (Sparse words stored these positions up to file version 2; now [`frag_pos`].)
pub const fn swizzled_pos(row: usize, col: usize) -> usize {
    swizzled_chunk_offset(row, col / 8) / 2 + col % 8
}

/// Inverse of [`swizzled_pos`]: (row, col) inside the tile.
pub const fn unswizzle_pos(pos: usize) -> (usize, usize) {
    let row = pos / TILE_K;
    let chunk = ((pos % TILE_K) / 8) ^ (row % 8);
    (row, chunk * 8 + pos % 8)
}

/// Element index (in halves) of tile entry (`row`, `col`) in the *fragment-native* sparse
/// tile. The tile is a sequence of 16×16 blocks (`(row / 16)·4 + col / 16` for 64 columns),
/// 512 bytes each. A block is two 256-byte halves, rows 0–7 then rows 8–15, and in each half
/// lane `l`'s 8 bytes are the four elements it holds of those 8 rows: row `l / 4`, columns
/// `2(l % 4)`, `+1`, `+8`, `+9`. That is exactly lane `l`'s `mma.m16n8k16` **B** fragment
/// of the 8 rows taken as 8 columns of `Wᵀ` (b0..b3, [`frag_b_coord`]), and two of its four
/// A-fragment registers of the 16 rows ([`frag_a_coord`]: a0a1 and a4a5 from the first
/// half, a2a3 and a6a7 from the second). So a warp takes a B fragment with one 8-byte
/// access per lane (256 contiguous bytes, 2 wavefronts) and an A fragment with two, either
/// of which may also clear what it reads (`shared::take_shared_v2_b32`).
pub const fn frag_pos(row: usize, col: usize) -> usize {
    let block = (row / 16) * (TILE_K / 16) + col / 16;
    let (r, c) = (row % 16, col % 16);
    let lane = (r % 8) * 4 + (c % 8) / 2;
    (block * 2 + r / 8) * 128 + lane * 4 + (c / 8) * 2 + c % 2
}

/// Inverse of [`frag_pos`]: (row, col) inside the tile. Element `pos` is B-fragment half
/// `pos % 4` of lane `(pos / 4) % 32` ([`frag_b_coord`]: k = column, n = row) in the 8-row
/// half `(pos / 128) % 2` of 16×16 block `pos / 256`.
pub const fn frag_pos_inverse(pos: usize) -> (usize, usize) {
    let block = pos / 256;
    let (k, n) = frag_b_coord((pos / 4) % 32, pos % 4);
    let r = ((pos / 128) % 2) * 8 + n;
    ((block / (TILE_K / 16)) * 16 + r, (block % (TILE_K / 16)) * 16 + k)
}

// ---- Fragment layouts of mma.m16n8k16 (PTX ISA 9.7.14.5.8, "Matrix Fragments for
// mma.m16n8k16 with floating point type"). groupID = lane / 4, threadID_in_group = lane % 4.

/// A (16×16, row-major): register half `i` (0..8, a0..a7 as the ISA numbers them, two per
/// 32-bit register) of `lane` holds `A[row][col]`.
pub const fn frag_a_coord(lane: usize, i: usize) -> (usize, usize) {
    let group = lane / 4;
    let tig = lane % 4;
    let row = if i < 2 || (i >= 4 && i < 6) { group } else { group + 8 };
    let col = tig * 2 + (i & 1) + if i >= 4 { 8 } else { 0 };
    (row, col)
}

/// B (16×8, K×N "col"): register half `i` (0..4, b0..b3) of `lane` holds `B[k][n]`.
pub const fn frag_b_coord(lane: usize, i: usize) -> (usize, usize) {
    let k = (lane % 4) * 2 + (i & 1) + if i >= 2 { 8 } else { 0 };
    (k, lane / 4)
}

/// C/D (16×8, f32): element `i` (0..4, c0..c3) of `lane` holds `C[row][col]`.
pub const fn frag_c_coord(lane: usize, i: usize) -> (usize, usize) {
    let row = lane / 4 + if i >= 2 { 8 } else { 0 };
    (row, (lane % 4) * 2 + (i & 1))
}

/// `ldmatrix` (PTX ISA 9.7.9.27): within one 8×8 matrix, `lane` receives row `lane / 4`,
/// elements `2 * (lane % 4)` and `+1` (in its one 32-bit register).
pub const fn ldmatrix_coord(lane: usize, half: usize) -> (usize, usize) {
    (lane / 4, (lane % 4) * 2 + half)
}

/// Row and 16-byte chunk of the W tile whose address `lane` supplies to `ldmatrix.x4` when a
/// warp loads the A fragment of its 16 rows (`warp_row0`) at k-step `kk` (0..4): lanes 0–15
/// point at rows 0–15 of the low k-half, lanes 16–31 at rows 0–15 of the high k-half, so the
/// four matrices come back in a0a1 / a2a3 / a4a5 / a6a7 order.
pub const fn ldmatrix_a_src(lane: usize, warp_row0: usize, kk: usize) -> (usize, usize) {
    (warp_row0 + lane % 16, kk * 2 + lane / 16)
}

/// Row (token) and 16-byte chunk of the X tile whose address `lane` supplies to
/// `ldmatrix.x4` to load the B fragments of n-tiles `nt` and `nt + 1` at k-step `kk`:
/// lanes 0–7 / 8–15 give rows of n-tile `nt` (low / high k-half), lanes 16–31 the same for
/// `nt + 1`. (`ldmatrix.x2` uses lanes 0–15 only.)
pub const fn ldmatrix_b_src(lane: usize, nt: usize, kk: usize) -> (usize, usize) {
    ((nt + lane / 16) * 8 + lane % 8, kk * 2 + (lane / 8) % 2)
}

// ---- The bitmap sparse format (host `sparse::bitmap`, kernel `kernels::bitmap`). ----
//
// Lane-major: each 16×16 `mma` A fragment of a tile is 32 mask bytes, byte `l` holding lane
// `l`'s eight entries (bit `i` = A half `i`, `frag_a_coord`). Its values are stored in two
// *segments*, A registers 0–1 (bits 0–3 of every lane's byte) then registers 2–3 (bits 4–7),
// each lane after lane, so a lane's values of a segment are contiguous and it decodes them
// with one running index, and one warp-wide load of a value touches one segment (at most 128
// bytes, one shared-memory wavefront, at any density; `gpu/src/kernels/bitmap.rs`).

/// Entries of one bitmap mask: a `u64` covering the 8 lanes `8q .. 8q + 8` of one fragment
/// (bit `8·(lane % 8) + i` for A half `i` of the lane).
pub const BITMAP_MASK_ENTRIES: usize = 64;
/// Rows and columns of one bitmap tile (64×64 = 16 `mma` A fragments of 16×16 = 64 masks).
pub const BITMAP_TILE: usize = 64;
/// Masks of one bitmap tile.
pub const BITMAP_TILE_MASKS: usize = BITMAP_TILE * BITMAP_TILE / BITMAP_MASK_ENTRIES;
/// 16×16 fragments of one bitmap tile.
pub const BITMAP_TILE_FRAGS: usize = BITMAP_TILE_MASKS / 4;
/// Bytes of a bitmap tile's masks (one `u64` per mask, four per fragment, in fragment
/// order): 32 bytes per fragment, byte `l` lane `l`'s.
pub const BITMAP_MASK_BYTES: usize = 8 * BITMAP_TILE_MASKS;
/// Bytes of a bitmap tile's fragment offsets: one `u16` per fragment, the index of its first
/// value among the tile's values (the sum of the popcounts of the fragments before it).
pub const BITMAP_FRAG_OFFSET_BYTES: usize = 2 * BITMAP_TILE_FRAGS;
/// Value segments of a bitmap fragment: A registers 0–1 (bits 0–3 of each lane's mask
/// byte), then A registers 2–3 (bits 4–7).
pub const BITMAP_SEGMENTS: usize = 2;
/// Mask bits of segment `s` in a 32-bit mask word (four lanes' bytes).
pub const BITMAP_SEGMENT_BITS: [u32; BITMAP_SEGMENTS] = [0x0F0F_0F0F, 0xF0F0_F0F0];
/// Bytes of a bitmap tile's word prefixes: per fragment 16 bytes, byte `2w + s` the index of
/// the first value of segment `s` of lane `4w` relative to the fragment's first value (the
/// values of the segments before `s`, plus those of segment `s` in lanes `0 .. 4w`; at most
/// 128 + 7·4·4 = 240, so a byte). A lane finds the start of each of its two segments with
/// one 16-bit load and one `popc` each.
pub const BITMAP_WORD_PREFIX_BYTES: usize = 8 * BITMAP_SEGMENTS * BITMAP_TILE_FRAGS;
/// Byte offset of the word prefixes in a bitmap tile.
pub const BITMAP_WORD_PREFIX_AT: usize = BITMAP_MASK_BYTES + BITMAP_FRAG_OFFSET_BYTES;
/// Bytes before a bitmap tile's values: masks, fragment offsets, word prefixes (800, a
/// multiple of 16).
pub const BITMAP_TILE_HEADER_BYTES: usize = BITMAP_WORD_PREFIX_AT + BITMAP_WORD_PREFIX_BYTES;
/// Unit of a bitmap tile's length and offsets: 16 bytes (one `cp.async`).
pub const BITMAP_QUAD_BYTES: usize = 16;
/// Largest bitmap tile: header and 4096 values (8992 bytes, a multiple of 16).
pub const BITMAP_MAX_TILE_BYTES: usize = BITMAP_TILE_HEADER_BYTES + 2 * BITMAP_TILE * BITMAP_TILE;
/// Bitmap tiles stacked in one *panel*: the `SPARSE_TILE_M`×64 slice of W one kernel step
/// multiplies (stored contiguously, so a step is one contiguous copy).
pub const BITMAP_PANEL_TILES: usize = SPARSE_TILE_M / BITMAP_TILE;
/// Pipeline stages (double buffering) of the bitmap kernel.
pub const BITMAP_STAGES: usize = 2;
/// Bytes of a bitmap panel slot kept free after the largest panel: the branch-free decode
/// loads the two values at a lane's running index whatever its bits, up to 4 bytes past a
/// tile's values (`gpu/src/kernels/bitmap.rs`), and those bytes must not be the other
/// stage's copy in flight. One 16-byte quad.
pub const BITMAP_DECODE_SLACK: usize = 16;

const _: () = assert!(BITMAP_TILE_HEADER_BYTES.is_multiple_of(BITMAP_QUAD_BYTES));
const _: () = assert!(BITMAP_MAX_TILE_BYTES.is_multiple_of(BITMAP_QUAD_BYTES));

/// Mask index (0..64) inside a bitmap tile of tile-local entry (`row`, `col`), and its bit
/// in the mask. Masks are stored fragment by fragment, fragment `f = 4·(row/16) + col/16`
/// (its 16×16 slab of rows and its k16 step); entry (r, c) of the fragment is A half `i` of
/// lane `l` ([`frag_a_coord`]), which is bit `8·(l % 8) + i` of mask `4f + l / 8`. So byte
/// `l` of a fragment's 32 mask bytes is lane `l`'s, bit `i` its A half `i` (register `i / 2`,
/// half `i % 2`).
pub const fn bitmap_mask_bit(row: usize, col: usize) -> (usize, usize) {
    let frag = (row / 16) * (BITMAP_TILE / 16) + col / 16;
    let (r, c) = (row % 16, col % 16);
    let lane = 4 * (r % 8) + (c % 8) / 2;
    let i = 2 * (r / 8 + 2 * (c / 8)) + c % 2;
    (4 * frag + lane / 8, 8 * (lane % 8) + i)
}

/// Inverse of [`bitmap_mask_bit`]: the tile-local (row, col) of `bit` in mask `mask`.
pub const fn bitmap_mask_coord(mask: usize, bit: usize) -> (usize, usize) {
    let frag = mask / 4;
    let (r, c) = frag_a_coord(8 * (mask % 4) + bit / 8, bit % 8);
    ((frag / (BITMAP_TILE / 16)) * 16 + r, (frag % (BITMAP_TILE / 16)) * 16 + c)
}

/// Tiles in bitmap panel row `panel_row` of a weight with `tiles_m` tile rows: 4, or fewer
/// in the last panel row.
pub const fn bitmap_panel_height(panel_row: usize, tiles_m: usize) -> usize {
    let rest = tiles_m - panel_row * BITMAP_PANEL_TILES;
    if rest < BITMAP_PANEL_TILES { rest } else { BITMAP_PANEL_TILES }
}

/// Index of tile (`tile_row`, `tile_col`) in a bitmap weight's tile sequence: panels (4 tile
/// rows × 1 tile column) in row-major order, the tiles of a panel top to bottom. So panel
/// `(p, kt)` starts at tile `4·p·tiles_k + kt·h` (`h` its height) and consecutive panels of a
/// stream-K range are consecutive bytes.
pub const fn bitmap_tile_index(tile_row: usize, tile_col: usize, tiles_m: usize, tiles_k: usize) -> usize {
    let p = tile_row / BITMAP_PANEL_TILES;
    let h = bitmap_panel_height(p, tiles_m);
    BITMAP_PANEL_TILES * p * tiles_k + tile_col * h + tile_row % BITMAP_PANEL_TILES
}

/// Dynamic shared memory of the bitmap kernel with `nt` token tiles of 8 and stage slots of
/// `slot_bytes` (the weight's largest panel, a multiple of 128): `BITMAP_STAGES` × (panel
/// slot + X tile).
pub const fn bitmap_smem_bytes(nt: usize, slot_bytes: usize) -> usize {
    BITMAP_STAGES * (slot_bytes + nt * 8 * ROW_BYTES)
}
