//! The bitmap format's launch plan (`gpu/src/kernels/bitmap.rs`): kernel names and the
//! panel slots of its double-buffered pipeline.

use crate::checked::Sizes;
use crate::error::{Error, Result};
use crate::layout::{
    bitmap_smem_bytes, spmm_default_mt, BITMAP_DECODE_SLACK, BITMAP_MAX_TILE_BYTES, BITMAP_PANEL_TILES, SPARSE_TILE_M, TILE_K,
};
use crate::linear::{DeviceLimits, LinearOptions, Occupancy};
use crate::sparse::formats::LaunchPlan;

/// The bitmap plan; its stage parameter is the panel slot (bytes), its stage hint the
/// weight's largest panel (bytes).
pub(crate) struct BitmapPlan;

/// The one instance.
pub(crate) static BITMAP: BitmapPlan = BitmapPlan;

/// Slots are whole multiples of this many bytes (cache lines).
const SLOT_ALIGN: usize = 128;

/// Tiles of 256×64 per SM up to which an 8-token launch uses warps of 2 m-tiles (blocks of
/// 8 warps) instead of 4, for a weight stored in at least [`MT2_DENSE_STORED_PERCENT`] of
/// its dense bytes. With few tiles per SM the blocks are few and short, and each warp's
/// decode is a chain of dependent instructions, so twice the warps hide twice the latency.
/// On an H100 (`benches/results/NOTES.md` items 72, 74; with the one-wave schedule of
/// [`BITMAP_STREAM_MIN_TILES`]) the 2-m-tile kernel's best plan beat the 4-m-tile one's at
/// 50% on every layer of 8 to 42 tiles per SM (4096×4096 to 22016×4096: +6–14%), and was 8%
/// slower on 27648×9216 (118 per SM); at 16 tokens slower on every shape tried.
const MT2_MAX_TILES_PER_SM: usize = 48;

/// The same bound for a sparser weight. At 60% and 70% the 4-m-tile warps' best plan was as
/// fast or faster from 33 tiles per SM (5120×13824 +0% / +3%, 15360×5120 +4% / +5%,
/// 22016×4096 +6% / +6%), tied at 23 (12288×4096) and lost at 21 and below (4096×11008
/// −9% / −6%, 4096×4096 −7% / −6%) (H100, NOTES item 75).
const MT2_MAX_TILES_PER_SM_SPARSE: usize = 24;

/// Stored bytes, in percent of the dense f16/bf16 bytes, from which a weight counts as
/// dense for [`MT2_MAX_TILES_PER_SM`]. The format stores 2 bytes per nonzero and ~0.2 per
/// element (masks, tile offsets): 60% of the dense bytes at 50% sparsity, 50% at 60%.
const MT2_DENSE_STORED_PERCENT: usize = 55;

/// Fewest tiles per block for one full wave of stream-K blocks. The uniform split's cost
/// model (`linear::sparse_splits`) leaves the bitmap kernel's slots a third empty on layers
/// of 20–45 tiles per SM; one wave of blocks of at least 4 tiles each measured 3–7% faster
/// there than the split at 50% and 1–5% at 70% (H100, NOTES item 74), while blocks of ~2
/// tiles (4096×4096, 16 tokens) were 15% slower, and of 3 tiles (5120×5120, 16 tokens) 4%
/// slower (item 75).
const BITMAP_STREAM_MIN_TILES: usize = 4;

impl LaunchPlan for BitmapPlan {
    fn kernel(&self, dt: &str, n_tile: usize, mt: usize) -> String {
        format!("bitmap_linear_{dt}_n{n_tile}_m{mt}")
    }

    fn stream_min_tiles(&self) -> usize {
        BITMAP_STREAM_MIN_TILES
    }

    fn warp_m_tiles(&self, nt: usize, tiles: usize, stored_bytes: usize, sms: usize) -> usize {
        // Counts for a heuristic: saturating, never a size.
        let dense_bytes = tiles.saturating_mul(SPARSE_TILE_M * TILE_K * 2);
        let dense = stored_bytes.saturating_mul(100) >= dense_bytes.saturating_mul(MT2_DENSE_STORED_PERCENT);
        let max_per_sm = if dense { MT2_MAX_TILES_PER_SM } else { MT2_MAX_TILES_PER_SM_SPARSE };
        if nt == 1 && tiles <= max_per_sm.saturating_mul(sms) { 2 } else { spmm_default_mt(nt) }
    }

    fn stage(
        &self,
        max_panel_bytes: usize,
        dev: &DeviceLimits,
        _name: &str,
        _threads: u32,
        nt: usize,
        opts: &LinearOptions,
        _occupancy: &mut Occupancy<'_>,
    ) -> Result<(usize, usize)> {
        if let Some(r) = opts.ring_words {
            return Err(Error::InvalidArgument(format!(
                "ring_words = {r}: the word ring is the Tiled-CSL kernel's; this weight is in the bitmap format"
            )));
        }
        // A validated panel is at most 4 tiles of `BITMAP_MAX_TILE_BYTES` (8992); the slot
        // holds it whole, and the decode's slack after it.
        debug_assert!(max_panel_bytes <= BITMAP_PANEL_TILES * BITMAP_MAX_TILE_BYTES);
        let slot = (max_panel_bytes + BITMAP_DECODE_SLACK).next_multiple_of(SLOT_ALIGN);
        let smem = Sizes::ARG.add("bitmap kernel shared memory", bitmap_smem_bytes(nt, 0), 2 * slot)?;
        if smem > dev.smem.per_block {
            return Err(Error::UnsupportedDevice(format!(
                "the bitmap kernel needs {smem} bytes of shared memory with {} tokens, the device allows {}",
                8 * nt,
                dev.smem.per_block
            )));
        }
        debug_assert_eq!(smem, bitmap_smem_bytes(nt, slot));
        Ok((slot, smem))
    }
}
