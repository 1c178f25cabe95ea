//! Sparse `Y[N×M] = X[N×K] · W[M×K]ᵀ` with W in the **bitmap** format: the `mma` A fragments
//! are decoded from the masks in registers, with no dense tile in shared memory.
//!
//! # Format (host `sparse::bitmap`)
//! W is cut into 64×64 tiles of 16 `mma` A fragments (16×16), stored **lane-major**: a
//! fragment's masks are 32 bytes, byte `l` lane `l`'s eight entries (bit `i` = A half `i`,
//! `layout::bitmap_mask_bit`), and its nonzero values follow in two segments, A registers
//! 0–1 (bits 0–3 of each byte) then 2–3 (bits 4–7), each lane after lane, so each lane's
//! values of a segment are contiguous. A tile is: the 16 fragments' masks (512 B), 16 `u16`
//! fragment offsets (index of the fragment's first value), 16 × 16 word prefix bytes (byte
//! `2w + s`: where segment `s` of lane `4w` starts, from the fragment's first value), the
//! `u16` values, zero padding to 16 bytes. Four tiles stacked along M are a *panel* (256×64,
//! the rows of one block), and panels are stored row-major, so the panels of a stream-K
//! range are one contiguous run of bytes; `tile_offsets` (u32, in 16-byte quads) locate
//! every tile.
//!
//! # Decode
//! Lane `l` reads its fragment's 32-bit mask word `l / 4` (its byte and its three
//! neighbours'), the fragment offset and the word's two prefix bytes: each segment's first
//! value is at offset + prefix + the popcount of the lower lanes' bits of that segment in the
//! word. Then per A register (two mask bits) it loads the two values at its running index,
//! places them with one `prmt` whose selector the two bits pick from a table, and steps the
//! index by their popcount: about 44 instructions per fragment where the block-major layout
//! of sessions 13–20 took about 100 (`benches/results/NOTES.md` items 68, 70). A warp's
//! load of one value spans one segment of the fragment (32 lanes × 2 registers × 2 values
//! at most, 128 bytes), so it is one shared-memory wavefront at any density; with one
//! segment per fragment it spanned up to 512 bytes (two wavefronts at 50% density, item 70).
//! Pruned entries are zeros in the fragment, so `Inf · 0 = NaN` as in dense math.
//!
//! # Pipeline (double buffering)
//! Per step a block multiplies one panel by its X tile (`8·NT` tokens × 64). The panel's
//! bytes (`tile_offsets[t] .. tile_offsets[t + h]`, `h` tiles) and the X tile stream into
//! one of two stages with `cp.async` (weight copies evict-first in L2, as the SpMM's). Step
//! i: wait for stage `i % 2`, barrier, issue panel `i + 1` into the other stage (its readers
//! all passed the barrier), decode and multiply panel i. One barrier per step; nothing is
//! written to shared memory but the copies.
//!
//! # Schedule and epilogue
//! The stream-K schedule of the SpMM (`tile::StreamRange` over the `R × K` panels, `R =
//! ceil(m / 256)`): a block's range meets at most two row tiles; a whole row tile goes to Y,
//! a cut one to the block's slots, summed by `reduce::streamk_reduce` (same slots, flags and
//! 256-row tiles as the Tiled-CSL SpMM), so the result is deterministic.
//!
//! # Thread mapping
//! `16 / MT` warps; warp w owns panel rows `16·MT·w ..` (inside tile `16·MT·w / 64` of the
//! panel), m-tiles of 16 rows as in the dense kernel; X's B fragments come from the swizzled
//! X tile with `ldmatrix` and are reused by the warp's MT m-tiles (`tile::warp_mma`). Warps
//! whose tile lies below the last panel row's height skip their MMAs (their rows are ≥ m).

use super::tile::{load_tile_async, warp_mma, Epilogue, StreamRange};
use crate::bits::prmt;
use crate::cache::l2_policy;
use crate::cp_async::{self, cp_async_16_hint};
use crate::flag;
use crate::griddep::begin_dependent;
use crate::layout::{
    bitmap_panel_height, block_threads, BITMAP_MASK_BYTES, BITMAP_PANEL_TILES, BITMAP_QUAD_BYTES, BITMAP_SEGMENTS,
    BITMAP_SEGMENT_BITS, BITMAP_STAGES, BITMAP_TILE, BITMAP_TILE_HEADER_BYTES, BITMAP_WORD_PREFIX_AT, ROW_BYTES,
    SPARSE_TILE_M, SPMM_ROW_TILES, TILE_K,
};
use crate::mma::{FragA, FragC, MmaElement};
use crate::shared::{dynamic_smem_base, ld_shared_b16, ld_shared_b32, SmemAddr};
use crate::sync::bar_sync;
use crate::thread::{block_idx_x, block_idx_y, lane_idx, thread_idx_x, warp_idx};

const _: () = assert!(BITMAP_STAGES == 2, "the loop below is written for double buffering");

/// Walks the panels of one block's range in order, tracking each panel's first tile and
/// height without a division per step.
struct PanelCursor {
    /// Index of the current panel in the row-major panel sequence.
    panel: usize,
    /// Its K tile and panel row.
    kt: u32,
    row: u32,
    /// Its first tile (in the weight's tile order) and its height in tiles (1..=4).
    tile: usize,
    h: u32,
    tiles_k: u32,
    tiles_m: u32,
}

impl PanelCursor {
    #[inline(always)]
    fn new(panel: usize, tiles_m: u32, tiles_k: u32) -> Self {
        let (row, kt) = ((panel / tiles_k as usize) as u32, (panel % tiles_k as usize) as u32);
        let h = bitmap_panel_height(row as usize, tiles_m as usize) as u32;
        let tile = BITMAP_PANEL_TILES * row as usize * tiles_k as usize + (kt * h) as usize;
        PanelCursor { panel, kt, row, tile, h, tiles_k, tiles_m }
    }

    /// Moves to the next panel (the panel row's last K tile is followed by the next row's
    /// first, whose first tile follows this panel's last: panels are contiguous).
    #[inline(always)]
    fn advance(&mut self) {
        self.panel += 1;
        self.tile += self.h as usize;
        self.kt += 1;
        if self.kt == self.tiles_k {
            self.kt = 0;
            self.row += 1;
            if (self.row as usize) * BITMAP_PANEL_TILES < self.tiles_m as usize {
                self.h = bitmap_panel_height(self.row as usize, self.tiles_m as usize) as u32;
            }
        }
    }
}

/// This lane's constants for decoding A fragments: its mask byte is byte `l % 4` of the
/// fragment's 32-bit mask word `l / 4`.
#[derive(Clone, Copy)]
struct LaneBits {
    /// The lane's mask word (and pair of word prefix bytes), `l / 4`.
    word: usize,
    /// Bit position of its byte in the word, `8·(l % 4)`.
    shift: u32,
    /// The bits of the lower lanes' bytes in the word, of segment 0 and of segment 1.
    below: [u32; BITMAP_SEGMENTS],
}

impl LaneBits {
    #[inline(always)]
    fn new(lane: u32) -> Self {
        let shift = 8 * (lane % 4);
        let lower = (1u32 << shift) - 1;
        LaneBits { word: lane as usize / 4, shift, below: BITMAP_SEGMENT_BITS.map(|s| s & lower) }
    }
}

/// `prmt` selectors that build an A register from a lane's two loaded values `lo` (its value
/// at the running index, zero-extended) and `hi` (the next one) for the register's two mask
/// bits `t` (bit 0: the low half is stored, bit 1: the high half): 16 bits per `t`, selector
/// `t` at bits `16t`. Nibble 2 is a zero byte of `lo`.
/// `t = 0`: `0x2222` (zero); `1`: `0x2210` (`lo` in the low half); `2`: `0x1022` (`lo` in the
/// high half); `3`: `0x5410` (`lo` low, `hi` high).
const HALF_SELECTORS: u64 = 0x5410_1022_2210_2222;

/// Decodes this lane's A fragment of fragment `frag` (0..16) of the bitmap tile at `tile`
/// (layout: `layout::bitmap_mask_bit`; values at `tile + BITMAP_TILE_HEADER_BYTES`).
///
/// The lane's eight bits are one byte of its 32-bit mask word. Its values of each segment
/// (registers 0–1, 2–3) are contiguous, starting at the fragment's offset plus the
/// segment's prefix byte of its word plus the popcount of the lower lanes' bits of that
/// segment in the word. Register `j` takes bits `2j`, `2j + 1` (`t`): the two values at the
/// running index are loaded whatever `t` says, a `prmt` with the selector for `t` places
/// them (zeros for clear bits), and the index moves on by `popc(t)`. Branch-free: branching
/// on the bits made lanes diverge and stall (`benches/results/NOTES.md` item 48), and
/// predicating the loads costs more instructions than it saves (item 70).
///
/// A clear bit's loads read the next stored values, at most 4 bytes past the tile's values:
/// inside the next tile of the panel, or in the slot's slack after the panel (never written
/// by the copies, see [`bitmap_linear`]); the selector drops them.
///
/// # Safety
/// The tile's bytes are in shared memory and visible (barrier); it is a tile the host
/// validated, so every running index stays inside the tile's values, and at least
/// [`BITMAP_DECODE_SLACK`](crate::layout::BITMAP_DECODE_SLACK) bytes of the slot follow the panel.
#[inline(always)]
// The liveness lint sees `unroll!`'s copies one by one: the running address's last update
// looks unread from the copies the macro guards out.
#[allow(unused_assignments)]
unsafe fn decode_frag(tile: SmemAddr, frag: usize, lane: LaneBits) -> FragA {
    let word = ld_shared_b32(tile.offset(32 * frag + 4 * lane.word));
    let first = ld_shared_b16(tile.offset(BITMAP_MASK_BYTES + 2 * frag)) as u32;
    let prefixes = ld_shared_b16(tile.offset(BITMAP_WORD_PREFIX_AT + 16 * frag + 2 * lane.word)) as u32;
    let values = tile.offset(BITMAP_TILE_HEADER_BYTES).0 + 2 * first;
    // Where each segment's values of this lane start.
    let starts = [
        values + 2 * ((prefixes & 0xff) + (word & lane.below[0]).count_ones()),
        values + 2 * ((prefixes >> 8) + (word & lane.below[1]).count_ones()),
    ];
    let bits = word >> lane.shift;
    let mut at = starts[0];
    let mut regs = [0u32; 4];
    unroll!(j in 0..4 => {
        if j == 2 {
            at = starts[1];
        }
        // 16·t: the selector's position in the table (and `popc` of it is `popc(t)`).
        let pos = ((bits << 4) >> (2 * j)) & 0x30;
        let selector = (HALF_SELECTORS >> pos) as u32;
        let (lo, hi) = (ld_shared_b16(SmemAddr(at)) as u32, ld_shared_b16(SmemAddr(at + 2)) as u32);
        regs[j] = prmt(lo, hi, selector);
        if j % 2 == 0 {
            at += 2 * pos.count_ones();
        }
    });
    FragA(regs)
}

/// Issues the copies of panel `c` into stage slot `w_slot` (its bytes) and `x_slot` (its X
/// tile), one `cp.async` group, and returns the byte offset of this warp's tile inside the
/// slot (`u32::MAX` when the panel has no tile for this warp).
///
/// # Safety
/// As [`bitmap_linear`]; `c` is a panel of the weight.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn issue_panel<const NT: usize, const THREADS: usize>(
    c: &PanelCursor, warp_tile: usize, tile_offsets: *const u32, data: *const u8, w_slot: SmemAddr, x_slot: SmemAddr,
    x: *const u16, ldx: usize, n: usize, n0: usize, k: usize, policy: u64,
) -> u32 {
    let start = *tile_offsets.add(c.tile);
    let quads = *tile_offsets.add(c.tile + c.h as usize) - start;
    let src = data.add(start as usize * BITMAP_QUAD_BYTES);
    let mut q = thread_idx_x();
    while q < quads {
        cp_async_16_hint(w_slot.offset(q as usize * BITMAP_QUAD_BYTES), src.add(q as usize * BITMAP_QUAD_BYTES), policy);
        q += THREADS as u32;
    }
    load_tile_async(x_slot, NT * 8, THREADS, x, ldx, n, n0, k, c.kt as usize * TILE_K);
    cp_async::commit_group();
    if warp_tile < c.h as usize {
        (*tile_offsets.add(c.tile + warp_tile) - start) * BITMAP_QUAD_BYTES as u32
    } else {
        u32::MAX
    }
}

/// # Safety
/// Launched with `layout::block_threads(SPMM_ROW_TILES, MT)` threads, grid
/// `(blocks, ceil(n/(8·NT)), 1)` with `R ≤ blocks ≤ R·K` (`R = ceil(m/256)` panel rows,
/// `K = ceil(k/64)`: the stream-K schedule of the SpMM), and
/// `layout::bitmap_smem_bytes(NT, slot_bytes)` bytes of dynamic shared memory,
/// `slot_bytes` a multiple of 128 of at least the weight's largest panel plus
/// [`BITMAP_DECODE_SLACK`](crate::layout::BITMAP_DECODE_SLACK) (what the branch-free decode may read past a panel's values).
/// `tile_offsets` / `data` form a bitmap weight of `m × k` validated by the host
/// (`sparse::bitmap::BitmapWeight::from_parts`: every rule of the format, so each value
/// index stays inside its tile and each panel inside a slot), `data` 16-byte aligned;
/// `x` is `n × ldx` (16-byte aligned, `ldx % 8 == 0`, `ldx ≥ k`, columns `k..ldx` zero); `y`
/// is `n × ldy` (`ldy ≥ m`); `partial` and `flags` as for `spmm::spmm_linear` (two slots of
/// `8·NT × 256` f32 per block and token tile when `blocks > R`; then `flags` holds
/// `ceil(n/(8·NT))·blocks` u32 set to `launch` once a block's slots are written);
/// `m, n, k ≥ 1`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub unsafe fn bitmap_linear<E: MmaElement, const MT: usize, const NT: usize, const THREADS: usize>(
    tile_offsets: *const u32, data: *const u8, x: *const u16, ldx: u32, y: *mut u16, ldy: u32, partial: *mut f32,
    m: u32, n: u32, k: u32, blocks: u32, slot_bytes: u32, evict_first: bool, flags: *mut u32, launch: u32,
) {
    const { assert!(THREADS == block_threads(SPMM_ROW_TILES, MT)) };
    const { assert!(16 * MT <= BITMAP_TILE && BITMAP_TILE.is_multiple_of(16 * MT)) };
    // After the kernel before it (this one may be a programmatic dependent, `griddep`); the
    // split-K reduction as for `spmm::spmm_linear`.
    begin_dependent();
    let (m, n, k, ldx) = (m as usize, n as usize, k as usize, ldx as usize);
    let (tiles_m, tiles_k) = (m.div_ceil(BITMAP_TILE), k.div_ceil(TILE_K));
    let range = StreamRange { tiles: m.div_ceil(SPARSE_TILE_M) * tiles_k, blocks: blocks as usize };
    let b = block_idx_x() as usize;
    let (first, end) = (range.start(b), range.start(b + 1));
    let n0 = block_idx_y() as usize * NT * 8;
    let slots = partial.wrapping_add(2 * (block_idx_y() as usize * range.blocks + b) * NT * 8 * SPARSE_TILE_M);
    let out = Epilogue { y, ldy: ldy as usize, m, n, rows: SPARSE_TILE_M, w_as_b: false };

    // Shared memory: panel slots [2] (slot_bytes each) | X tiles [2] (8·NT × 64).
    let smem = dynamic_smem_base();
    let x_bytes = NT * 8 * ROW_BYTES;
    let w_slot = |s: usize| smem.offset(s * slot_bytes as usize);
    let x_slot = |s: usize| smem.offset(BITMAP_STAGES * slot_bytes as usize + s * x_bytes);
    let policy = l2_policy(evict_first);

    // This warp's rows: tile `warp_tile` of a panel, its 16-row slabs from `slab0`.
    let warp_row = warp_idx() as usize * 16 * MT;
    let (warp_tile, slab0) = (warp_row / BITMAP_TILE, (warp_row % BITMAP_TILE) / 16);
    let lane = LaneBits::new(lane_idx());

    let mut c = PanelCursor::new(first, tiles_m as u32, tiles_k as u32);
    let mut p = PanelCursor::new(first, tiles_m as u32, tiles_k as u32);
    let issue = |p: &PanelCursor, s: usize| {
        issue_panel::<NT, THREADS>(p, warp_tile, tile_offsets, data, w_slot(s), x_slot(s), x, ldx, n, n0, k, policy)
    };
    let mut next_tile_at = issue(&p, 0);
    p.advance();
    let mut stage = 0usize;
    let mut acc = [[FragC::default(); NT]; MT]; // MT × NT × (16×8 f32)
    let mut segment = first;
    while c.panel < end {
        // Panel c (the only group in flight) has landed; every thread is past the previous
        // step's reads of the other stage.
        cp_async::wait_group::<0>();
        bar_sync();
        let tile_at = next_tile_at;
        if p.panel < end {
            next_tile_at = issue(&p, stage ^ 1);
            p.advance();
        }
        if tile_at != u32::MAX {
            let tile = w_slot(stage).offset(tile_at as usize);
            warp_mma::<E, MT, NT>(x_slot(stage), &mut acc, |mt, kk| decode_frag(tile, 4 * (slab0 + mt) + kk, lane));
        }
        stage ^= 1;
        let row_end = c.kt + 1 == c.tiles_k;
        c.advance();
        // A row tile ends inside the range: the block's first segment, to the first slot.
        if row_end && c.panel < end {
            out.store_slot::<MT, NT>(&acc, slots);
            acc = [[FragC::default(); NT]; MT];
            segment = c.panel;
        }
    }

    // The last segment: a whole row tile goes to Y, a part of one to a slot.
    let row_tile = segment / tiles_k;
    if segment % tiles_k == 0 && end - segment == tiles_k {
        out.store_y::<E, MT, NT>(&acc, row_tile * SPARSE_TILE_M, n0);
    } else {
        let last = usize::from(segment != first);
        out.store_slot::<MT, NT>(&acc, slots.wrapping_add(last * NT * 8 * SPARSE_TILE_M));
    }
    if !flags.is_null() {
        bar_sync();
        if thread_idx_x() == 0 {
            flag::release(flags.add(block_idx_y() as usize * range.blocks + b), launch);
        }
    }
}
