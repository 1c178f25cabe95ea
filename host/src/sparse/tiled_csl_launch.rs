//! The Tiled-CSL format's launch plan (`gpu/src/kernels/spmm.rs`): kernel names and the
//! shared-memory word ring, sized per weight and token count.

use super::formats::LaunchPlan;
use crate::checked::Sizes;
use crate::error::{Error, Result};
use crate::layout::{spmm_ring_words, spmm_smem_bytes};
use crate::linear::{DeviceLimits, LinearOptions, Occupancy};

/// The Tiled-CSL plan; its stage parameter is the word ring (words), its stage hint the
/// 99th-percentile tile length (words).
pub(crate) struct TiledCslPlan;

/// The one instance.
pub(crate) static TILED_CSL: TiledCslPlan = TiledCslPlan;

/// Fewest tiles per block for one full wave of stream-K blocks. A minimum of 3 (with waves
/// of fewer blocks per SM) gained on the 7B/13B-sized layers only at 50–70%, where the
/// bitmap format is used, and lost 2–15% at 80–90% (H100, `benches/results/NOTES.md` item
/// 75).
const TILED_CSL_STREAM_MIN_TILES: usize = 16;

impl LaunchPlan for TiledCslPlan {
    fn kernel(&self, dt: &str, n_tile: usize, mt: usize) -> String {
        format!("spmm_linear_{dt}_n{n_tile}_m{mt}")
    }

    fn stream_min_tiles(&self) -> usize {
        TILED_CSL_STREAM_MIN_TILES
    }

    fn stage(
        &self,
        typical_tile_words: usize,
        dev: &DeviceLimits,
        name: &str,
        threads: u32,
        nt: usize,
        opts: &LinearOptions,
        occupancy: &mut Occupancy<'_>,
    ) -> Result<(usize, usize)> {
        let n_tile = 8 * nt;
        let max_ring = max_ring_words(nt, dev.smem.per_block);
        let ring = match opts.ring_words {
            // Range first: nothing is computed from an unchecked ring.
            Some(r) if r < 1024 || r > max_ring || !r.is_multiple_of(128) => {
                return Err(Error::InvalidArgument(format!(
                    "ring_words = {r} is outside its allowed range: a multiple of 128 in 1024..={max_ring} \
                     (with {n_tile} tokens this device has {} bytes of shared memory per block)",
                    dev.smem.per_block
                )));
            }
            Some(r) => r,
            None => spmm_ring(dev, name, threads, nt, typical_tile_words, occupancy)?,
        };
        let smem = spmm_smem_checked(nt, ring)?;
        if smem > dev.smem.per_block {
            // Only the automatic fallback ring can get here (a device with little shared
            // memory): the options were checked above.
            return Err(Error::UnsupportedDevice(format!(
                "the sparse kernel needs {smem} bytes of shared memory with {n_tile} tokens, the device allows {}",
                dev.smem.per_block
            )));
        }
        Ok((ring, smem))
    }
}

/// Largest word ring of the sparse kernel for `nt` token tiles on a device with
/// `per_block` bytes of shared memory per block (a multiple of 128; below 1024 none fits).
pub(crate) fn max_ring_words(nt: usize, per_block: usize) -> usize {
    per_block.saturating_sub(spmm_smem_bytes(nt, 0)) / 4 / 128 * 128
}

/// [`spmm_smem_bytes`] with checked arithmetic (the layout's `const fn` wraps).
pub(crate) fn spmm_smem_checked(nt: usize, ring: usize) -> Result<usize> {
    let ring_bytes = Sizes::ARG.mul("ring_words × 4 bytes", ring, 4)?;
    Sizes::ARG.add("sparse kernel shared memory (tiles + ring_words × 4 bytes)", spmm_smem_bytes(nt, 0), ring_bytes)
}

/// The sparse kernel's word ring for `nt` token tiles and a weight whose tiles (99% of
/// them) hold at most `tile_words` words. Resident blocks matter most (measured on an
/// H100, `benches/results/NOTES.md` item 17): four blocks per SM when a ring that lets
/// four share an SM still holds such a tile whole (≤ 16 tokens from 70–80% sparsity on,
/// where registers allow four), else three, else two (64 tokens, where registers allow
/// two); the ring takes all the shared memory the blocks leave. Falls back to
/// `layout::spmm_ring_words` when none is possible.
fn spmm_ring(
    dev: &DeviceLimits,
    name: &str,
    threads: u32,
    nt: usize,
    tile_words: usize,
    occupancy: &mut Occupancy<'_>,
) -> Result<usize> {
    // A validated tile holds at most 16384 + 31 words.
    let target = tile_words.next_multiple_of(128).max(1024);
    for blocks in [4, 3, 2] {
        // The largest ring that lets `blocks` blocks share an SM's shared memory.
        let per_block = (dev.smem.per_sm / blocks).saturating_sub(dev.smem.reserved_per_block).min(dev.smem.per_block);
        let ring = max_ring_words(nt, per_block);
        if ring < 1024 || (blocks == 4 && ring < target) {
            continue;
        }
        // Registers may still allow fewer blocks. `ring ≤ per_block / 4`: no overflow.
        let smem = Sizes::ARG.to_u32("dynamic shared memory bytes", spmm_smem_checked(nt, ring)?)?;
        if occupancy(name, threads, smem)? >= blocks * dev.sm_count {
            return Ok(ring);
        }
    }
    Ok(spmm_ring_words(nt))
}

