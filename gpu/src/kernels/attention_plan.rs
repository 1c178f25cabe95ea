//! Geometry of the attention kernels, shared by the device kernels and the host (plain `core`
//! Rust with no PTX: the host crate includes this file too, plans launches with exactly these
//! functions and unit-tests them without a GPU).
//!
//! # Split along the sequence (flash-decoding)
//! The host launches `chunks` blocks per (query row, kv head, group of ≤ 16 query heads); it
//! picks `chunks` from the SM count and an upper bound of the sequence lengths
//! ([`plan_chunks`]). Each row then cuts its own keys `0 ..= pos` into at most `chunks`
//! pieces of [`chunk_len`] keys (a multiple of [`KEY_TILE`]), so a short row uses fewer
//! blocks and a long one spreads evenly over all of them, whatever the plan assumed; blocks
//! past the row's last piece ([`active_chunks`]) return at once. The kernels and the host
//! call the same functions, so the attention kernel and the combine kernel agree on which
//! pieces exist.

/// Threads of an attention block: 4 warps.
pub const ATTN_THREADS: usize = 128;
/// Warps of an attention block.
pub const ATTN_WARPS: usize = ATTN_THREADS / 32;
/// Keys per warp per pipeline step: one `mma` k16 step of `P·V`.
pub const WARP_KEYS: usize = 16;
/// Keys per pipeline step (the K and V tiles): 16 per warp.
pub const KEY_TILE: usize = ATTN_WARPS * WARP_KEYS;
/// Query heads one block serves (the `mma` M dimension): the heads of one GQA group, or 16
/// of them when the group is larger (then the group's K/V tiles are read once per 16 heads).
pub const HEADS_PER_BLOCK: usize = 16;
/// Depth of the K/V tile pipeline (`pipeline::Pipeline`): the next tile streams in while
/// the block computes on the current one.
pub const ATTN_STAGES: usize = 2;
/// Largest head dimension the kernels are compiled for.
pub const MAX_HEAD_DIM: usize = 128;
/// Head widths compiled into the PTX, in units of 16 (`mma` k steps): 32, 64, 80, 96, 128.
/// A head dimension in between uses the next wider kernel, its extra columns zero-filled in
/// shared memory.
pub const HEAD_DIM_CONFIGS: [usize; 5] = [2, 4, 5, 6, 8];
/// Threads of a combine block (one output element each).
pub const COMBINE_THREADS: usize = 128;
/// Threads of a `kv_write` block (one 16-byte copy each).
pub const KV_WRITE_THREADS: usize = 128;
/// Most chunks per row the host launches (bounds the f32 workspace and the combine loop).
pub const MAX_CHUNKS: usize = 1024;

/// The compiled head width (in units of 16) for head dimension `hd`, or `None` when the
/// kernels do not support it: `hd` must be a multiple of 8 (16-byte rows) between 8 and
/// [`MAX_HEAD_DIM`].
pub const fn head_dim_config(hd: usize) -> Option<usize> {
    if hd == 0 || !hd.is_multiple_of(8) || hd > MAX_HEAD_DIM {
        return None;
    }
    let mut i = 0;
    while i < HEAD_DIM_CONFIGS.len() {
        if 16 * HEAD_DIM_CONFIGS[i] >= hd {
            return Some(HEAD_DIM_CONFIGS[i]);
        }
        i += 1;
    }
    None
}

/// Bytes of one row (a key, or a query head) of a shared-memory Q, K or V tile of head width
/// `16·hd16`: the row's `32·hd16` bytes plus 16 of padding. A row is then an odd number of
/// 16-byte units, so the 8 rows that one `ldmatrix` 8×8 matrix reads (consecutive rows, same
/// column) fall into 8 different groups of 4 banks: conflict-free for every head width.
pub const fn tile_row_bytes(hd16: usize) -> usize {
    (2 * hd16 + 1) * 16
}

/// Byte offset of the K tile of pipeline stage `s` (the V tile follows it); the Q tile
/// (`HEADS_PER_BLOCK` rows) comes first.
pub const fn stage_offset(hd16: usize, s: usize) -> usize {
    (HEADS_PER_BLOCK + s * 2 * KEY_TILE) * tile_row_bytes(hd16)
}

/// Byte offset of the per-warp (max, sum) table of the in-block combine, after the stages:
/// 16 bytes per warp and quad (rows g and g + 8).
pub const fn ml_offset(hd16: usize) -> usize {
    stage_offset(hd16, ATTN_STAGES)
}

/// Dynamic shared memory of the attention kernel for head width `16·hd16`: the Q tile, the
/// K and V tiles of each stage, and the (max, sum) table. After the last step the stage
/// area holds the warps' scaled accumulators for the in-block combine
/// (`ATTN_WARPS · 2·hd16 · 32` lanes × 16 bytes, less than one stage).
pub const fn attention_smem_bytes(hd16: usize) -> usize {
    ml_offset(hd16) + ATTN_WARPS * 8 * 16
}

/// Keys of one chunk for a row of `len` keys split into at most `chunks` pieces: the even
/// share rounded up to whole key tiles.
pub const fn chunk_len(len: usize, chunks: usize) -> usize {
    let chunks = if chunks == 0 { 1 } else { chunks };
    let share = len.div_ceil(chunks);
    let tiles = if share == 0 { 1 } else { share.div_ceil(KEY_TILE) };
    tiles * KEY_TILE
}

/// Chunks a row of `len ≥ 1` keys actually uses (at most `chunks`).
pub const fn active_chunks(len: usize, chunks: usize) -> usize {
    len.div_ceil(chunk_len(len, chunks))
}

/// Keys `[start, end)` of chunk `c` of a row of `len` keys; empty (`start == end`) exactly when
/// `c ≥ active_chunks(len, chunks)`.
pub const fn chunk_range(len: usize, chunks: usize, c: usize) -> (usize, usize) {
    let l = chunk_len(len, chunks);
    let start = if c.saturating_mul(l) < len { c * l } else { len };
    let end = if start + l < len { start + l } else { len };
    (start, end)
}

/// Chunks per row for `units` blocks per chunk index (rows × kv heads × head groups), rows of
/// at most `max_len` keys and `resident` blocks that fit on the GPU at once (SMs ×
/// occupancy): enough chunks to fill one wave of resident blocks when the rows alone do
/// not, but no more than the longest row has key tiles, and at most [`MAX_CHUNKS`]. One wave
/// of blocks with equal shares of a row is what a bandwidth-bound kernel wants: every SM
/// streams, and none waits on a second, partial wave.
pub const fn plan_chunks(units: usize, max_len: usize, resident: usize) -> usize {
    if units == 0 || units >= resident {
        return 1;
    }
    let mut c = resident.div_ceil(units);
    let tiles = max_len.div_ceil(KEY_TILE);
    if c > tiles {
        c = tiles;
    }
    if c > MAX_CHUNKS {
        c = MAX_CHUNKS;
    }
    if c == 0 { 1 } else { c }
}
