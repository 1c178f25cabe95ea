//! Causal attention of query rows over the KV cache (prefill and decode alike), split along
//! the sequence on the GPU (flash-decoding); kernel design in `gpu/src/kernels/attention.rs`.

/// Launch geometry shared with the device crate (`gpu/src/kernels/attention_plan.rs`).
#[path = "../../../gpu/src/kernels/attention_plan.rs"]
#[allow(dead_code)]
pub(crate) mod plan;

use self::plan::{
    attention_smem_bytes, head_dim_config, plan_chunks, ATTN_THREADS, COMBINE_THREADS, HEADS_PER_BLOCK, MAX_CHUNKS,
};
use super::indices::DeviceIndices;
use super::kv_cache::{check_rows, KvCache};
use crate::element::Element;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::linear::args;
use crate::matrix::DeviceMatrix;
use std::ffi::c_void;

/// Options of [`Gpu::attention_with`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AttentionOptions {
    /// Blocks each row's keys are split among (flash-decoding); `None` chooses from the
    /// rows, heads, SM count and the cache's `max_seq`. Each row cuts its own keys into at
    /// most this many pieces of whole 64-key tiles, so any value gives the same result up to
    /// rounding; 1 means no split (no workspace, no combine kernel). At most 1024.
    pub chunks: Option<usize>,
}

/// Largest grid x (`2³¹ − 1`) and grid y / z (65535) of a launch.
const MAX_GRID_X: usize = i32::MAX as usize;
const MAX_GRID_Y: usize = u16::MAX as usize;

impl Gpu {
    /// Causal attention over layer `layer` of the KV cache, into `out`.
    ///
    /// Row i of `q` (`n × n_heads·head_dim`, head h in columns `h·head_dim ..`) is a query of
    /// the sequence in slot `slots[i]` at position `positions[i]`; it attends to that slot's
    /// cached keys and values at positions `0 ..= positions[i]`, which must have been
    /// written first with [`Gpu::kv_write`] (including the row's own). Query head h uses kv
    /// head `h / (n_heads / kv_heads)` (grouped-query attention; `n_heads` must be a multiple
    /// of the cache's `kv_heads`). `out[i]` (same shape as `q`) gets
    /// `softmax(scale · q·Kᵀ) · V` per head, computed in f32 (online softmax) and rounded to
    /// `T`. One definition covers prefill (every prompt token of every sequence a row, each
    /// with its slot and position) and decode (one row per sequence).
    ///
    /// A row whose slot or position is out of the cache's range gets NaN in every output
    /// element and reads nothing; the other rows are unaffected. Queued on the handle's
    /// stream; deterministic (bit-identical from run to run).
    #[allow(clippy::too_many_arguments)]
    pub fn attention<T: Element>(
        &self,
        q: &DeviceMatrix<T>,
        cache: &KvCache<T>,
        layer: usize,
        slots: &DeviceIndices,
        positions: &DeviceIndices,
        n_heads: usize,
        scale: f32,
        out: &mut DeviceMatrix<T>,
    ) -> Result<()> {
        self.attention_with(q, cache, layer, slots, positions, n_heads, scale, out, AttentionOptions::default())
    }

    /// As [`Gpu::attention`], with options (a fixed split of the sequence).
    #[allow(clippy::too_many_arguments)]
    pub fn attention_with<T: Element>(
        &self,
        q: &DeviceMatrix<T>,
        cache: &KvCache<T>,
        layer: usize,
        slots: &DeviceIndices,
        positions: &DeviceIndices,
        n_heads: usize,
        scale: f32,
        out: &mut DeviceMatrix<T>,
        opts: AttentionOptions,
    ) -> Result<()> {
        self.check_owner("attention: Q", &q.buf)?;
        self.check_owner("attention: the cache", &cache.buf)?;
        self.check_owner("attention: the slots", &slots.buf)?;
        self.check_owner("attention: the positions", &positions.buf)?;
        self.check_owner("attention: the output", &out.buf)?;
        cache.check_layer("attention", layer)?;
        let layout = cache.layout();
        let (kv_heads, hd) = (layout.kv_heads, layout.head_dim);
        if n_heads == 0 || !n_heads.is_multiple_of(kv_heads) {
            return Err(Error::InvalidArgument(format!(
                "attention: n_heads = {n_heads} must be a positive multiple of the cache's {kv_heads} kv heads"
            )));
        }
        let n = q.rows();
        let width = n_heads.checked_mul(hd).filter(|&w| w == q.cols());
        let Some(width) = width else {
            return Err(Error::Shape(format!(
                "attention: Q must be n × {n_heads} heads · {hd} head_dim, got {}×{}",
                q.rows(),
                q.cols()
            )));
        };
        if out.rows() != n || out.cols() != width {
            return Err(Error::Shape(format!(
                "attention: the output must be {n}×{width} like Q, got {}×{}",
                out.rows(),
                out.cols()
            )));
        }
        check_rows("attention", n, slots, positions)?;
        if !scale.is_finite() {
            return Err(Error::InvalidArgument(format!("attention: scale = {scale} must be finite")));
        }
        // Grid y: kv heads × groups of at most 16 query heads; grid x: rows × chunks.
        let ratio = n_heads / kv_heads;
        let head_blocks = kv_heads * ratio.div_ceil(HEADS_PER_BLOCK);
        if head_blocks > MAX_GRID_Y || width.div_ceil(COMBINE_THREADS) > MAX_GRID_Y {
            return Err(Error::InvalidArgument(format!(
                "attention: {n_heads} heads of {hd} over {kv_heads} kv heads exceed the kernels' grid limits"
            )));
        }
        let hd16 = head_dim_config(hd)
            .ok_or_else(|| Error::InvalidArgument(format!("attention: head_dim {hd} is not supported")))?;
        self.bind()?;
        let name = format!("attention_{}_d{}", T::DTYPE.name(), 16 * hd16);
        let smem = attention_smem_bytes(hd16) as u32;
        let (func, resident) = self.kernel(&name, ATTN_THREADS as u32, smem)?;
        let chunks = match opts.chunks {
            Some(c) if c == 0 || c > MAX_CHUNKS => {
                return Err(Error::InvalidArgument(format!("attention: chunks = {c} must be between 1 and {MAX_CHUNKS}")));
            }
            Some(c) => c,
            None => plan_chunks(n.saturating_mul(head_blocks), layout.max_seq, resident),
        };
        let blocks = n.checked_mul(chunks).filter(|&b| b <= MAX_GRID_X).ok_or_else(|| {
            Error::Shape(format!(
                "attention: {n} rows × {chunks} chunks exceed the {MAX_GRID_X} blocks of a launch: split the rows"
            ))
        })?;
        // The split's workspace: per (row, head, chunk) an f32 accumulator of head_dim and
        // (max, sum). Shared with `linear` (same stream, so uses never overlap).
        let (acc_ws, ml_ws) = if chunks > 1 {
            let records = n * n_heads * chunks; // ≤ blocks · 16 · kv_heads-ish: far from overflow
            let acc = records.checked_mul(hd).ok_or_else(|| Error::Shape("attention: workspace size overflows".into()))?;
            self.grow(&self.workspace, acc + 2 * records, "workspace")?;
            let base = self.workspace.borrow().as_ref().map_or(0, |b| b.ptr());
            (base, base + (acc * 4) as u64)
        } else {
            (0, 0)
        };
        let (qp, ldq, op, ldo) = (q.device_ptr(), q.ld() as u32, out.device_ptr(), out.ld() as u32);
        let (kc, vc) = cache.layer_ptrs(layer);
        let (sp, pp) = (slots.device_ptr(), positions.device_ptr());
        let (nh, kvh, hdu) = (n_heads as u32, kv_heads as u32, hd as u32);
        let (cs, ms, ch) = (layout.slots as u32, layout.max_seq as u32, chunks as u32);
        // Scores are scaled into log2 units, so the kernels' exponentials are `ex2`.
        let scale_log2 = (scale as f64 * std::f64::consts::LOG2_E) as f32;
        let mut args = args![qp, ldq, kc, vc, op, ldo, acc_ws, ml_ws, sp, pp, nh, kvh, hdu, cs, ms, ch, scale_log2];
        self.launch(&func, (blocks as u32, head_blocks as u32, 1), ATTN_THREADS as u32, smem, &mut args)?;
        if chunks > 1 {
            let (combine, _) = self.kernel(&format!("attention_combine_{}", T::DTYPE.name()), COMBINE_THREADS as u32, 0)?;
            let mut args = args![acc_ws, ml_ws, op, ldo, sp, pp, nh, hdu, cs, ms, ch];
            let grid = (n as u32, width.div_ceil(COMBINE_THREADS) as u32, 1);
            self.launch(&combine, grid, COMBINE_THREADS as u32, 0, &mut args)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::plan::*;

    #[test]
    fn head_dims_map_to_compiled_widths() {
        let cases = [(8, 2), (32, 2), (40, 4), (64, 4), (72, 5), (80, 5), (88, 6), (96, 6), (104, 8), (128, 8)];
        for (hd, hd16) in cases {
            assert_eq!(head_dim_config(hd), Some(hd16), "head_dim {hd}");
        }
        for hd in [0, 4, 12, 100, 136, 256] {
            assert_eq!(head_dim_config(hd), None, "head_dim {hd}");
        }
    }

    #[test]
    fn shared_memory_fits_and_rows_avoid_bank_conflicts() {
        for hd16 in HEAD_DIM_CONFIGS {
            let rb = tile_row_bytes(hd16);
            // An odd number of 16-byte units: 8 consecutive rows hit 8 different bank groups.
            assert!(rb % 16 == 0 && (rb / 16) % 2 == 1 && rb >= 32 * hd16);
            let banks: std::collections::HashSet<usize> = (0..8).map(|r| (r * rb / 16) % 8).collect();
            assert_eq!(banks.len(), 8);
            // The combine's scratch (every warp's accumulator fragments) fits in the stages.
            let scratch = ATTN_WARPS * 2 * hd16 * 32 * 16;
            assert!(scratch <= stage_offset(hd16, ATTN_STAGES) - stage_offset(hd16, 0));
            // Two blocks per SM even on an A100 (164 KiB per SM), three on an H100/H200.
            assert!(attention_smem_bytes(hd16) <= 75 * 1024, "{hd16}: {}", attention_smem_bytes(hd16));
            assert!(attention_smem_bytes(hd16) % 16 == 0);
        }
        // The Q tile holds the heads of a block; the tiles' threads copy whole 16-byte chunks.
        assert_eq!(KEY_TILE * 2 * 8 % ATTN_THREADS, 0);
        assert_eq!(KEY_TILE, ATTN_WARPS * WARP_KEYS);
    }

    #[test]
    fn chunks_cover_each_row_exactly_once() {
        for len in (1..300).chain([511, 512, 513, 4095, 4096, 4097, 100_000]) {
            for chunks in [1, 2, 3, 5, 7, 16, 33, 50, 64, 1024] {
                let (l, active) = (chunk_len(len, chunks), active_chunks(len, chunks));
                assert!(l % KEY_TILE == 0 && l * chunks >= len, "len {len} chunks {chunks}");
                assert!(active >= 1 && active <= chunks, "len {len} chunks {chunks}: {active}");
                let mut next = 0;
                for c in 0..chunks {
                    let (s, e) = chunk_range(len, chunks, c);
                    assert_eq!(s < e, c < active, "len {len} chunks {chunks} c {c}");
                    if s < e {
                        assert_eq!(s, next, "chunks are consecutive");
                        assert!(s % KEY_TILE == 0 && (e - s <= l));
                        next = e;
                    }
                }
                assert_eq!(next, len, "len {len} chunks {chunks}");
            }
        }
        // Pieces of one row are equal but for the last: 4096 keys in 50 chunks of 128.
        assert_eq!((chunk_len(4096, 50), active_chunks(4096, 50)), (128, 32));
        assert_eq!(chunk_range(usize::MAX / 2, 3, 7), (usize::MAX / 2, usize::MAX / 2));
    }

    #[test]
    fn chunk_plan_fills_one_wave() {
        // Decode, batch 1, 8 kv heads of a GQA-4 model, 132 SMs × 3 blocks: 50 chunks.
        assert_eq!(plan_chunks(8, 4096, 396), 50);
        // Batch 64: the rows alone fill the GPU, no split.
        assert_eq!(plan_chunks(64 * 8, 4096, 396), 1);
        assert_eq!(plan_chunks(396, 4096, 396), 1);
        // Short caches have few tiles to split.
        assert_eq!(plan_chunks(8, 100, 396), 2);
        assert_eq!(plan_chunks(1, 1, 396), 1);
        // Never more than MAX_CHUNKS, never 0.
        assert_eq!(plan_chunks(1, 1 << 30, 100_000), MAX_CHUNKS);
        assert_eq!(plan_chunks(0, 4096, 396), 1);
        assert_eq!(plan_chunks(3, 0, 396), 1);
    }
}
