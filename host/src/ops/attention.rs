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

/// Options of [`Gpu::attention_with`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AttentionOptions {
    /// Blocks each row's keys are split among (flash-decoding); `None` chooses from the
    /// rows, heads, SM count and the longest position ([`Self::max_position`]). Each row
    /// cuts its own keys into at most this many pieces of whole 64-key tiles, so any value
    /// gives the same result up to rounding; 1 means no split (no workspace, no combine
    /// kernel). At most 1024.
    pub chunks: Option<usize>,
    /// The largest position among the rows, if the caller knows it (e.g. the longest
    /// sequence of the batch); `None` assumes the cache's `max_seq − 1`. Only the automatic
    /// choice of `chunks` uses it: a row at a larger position is still attended in full (its
    /// pieces are just longer), so a wrong hint costs speed, never correctness.
    pub max_position: Option<usize>,
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

    /// As [`Gpu::attention`], with options (a fixed split of the sequence, or a hint of the
    /// longest position for the automatic one).
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
        let _queue = self.bind()?;
        let name = format!("attention_{}_d{}", T::DTYPE.name(), 16 * hd16);
        let smem = attention_smem_bytes(hd16) as u32;
        let (func, resident) = self.kernel(&name, ATTN_THREADS as u32, smem)?;
        let chunks = match opts.chunks {
            Some(c) if c == 0 || c > MAX_CHUNKS => {
                return Err(Error::InvalidArgument(format!("attention: chunks = {c} must be between 1 and {MAX_CHUNKS}")));
            }
            Some(c) => c,
            None => {
                let keys = opts.max_position.map_or(layout.max_seq, |p| p.saturating_add(1).min(layout.max_seq));
                plan_chunks(n.saturating_mul(head_blocks), keys, resident)
            }
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
            // Under the queue lock (held since `bind`): the address stays valid until the
            // kernels below are queued.
            let base = self.workspace_ptr(acc + 2 * records)?;
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
        self.launch(&func, crate::checked::grid(crate::checked::Sizes::ARG, [blocks, head_blocks, 1], |_| "attention: query rows × kv heads × sequence chunks".into())?, ATTN_THREADS as u32, smem, &mut args)?;
        if chunks > 1 {
            let (combine, _) = self.kernel(&format!("attention_combine_{}", T::DTYPE.name()), COMBINE_THREADS as u32, 0)?;
            let mut args = args![acc_ws, ml_ws, op, ldo, sp, pp, nh, hdu, cs, ms, ch];
            let grid = (n as u32, width.div_ceil(COMBINE_THREADS) as u32, 1);
            self.launch(&combine, crate::checked::grid(crate::checked::Sizes::ARG, [grid.0 as usize, grid.1 as usize, grid.2 as usize], |_| "attention combine".into())?, COMBINE_THREADS as u32, 0, &mut args)?;
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

    /// A host model of one warp's step of the attention kernel, issuing `ldmatrix` and
    /// `mma` with exactly the kernel's addresses and register packing
    /// (`gpu/src/kernels/attention.rs`) on the padded shared tiles, against plain matrix
    /// products: the Q A fragments (`ldmatrix_a_src`), `S = Q·Kᵀ` from K rows as B
    /// fragments (`ldmatrix_b_src` at n-tile `2·warp`), the C fragments of S reused as the A
    /// fragment of P, and `P·V` with V through `ldmatrix.trans`.
    mod fragment_model {
        use super::super::plan::*;
        use crate::layout::{frag_a_coord, frag_b_coord, frag_c_coord, ldmatrix_a_src, ldmatrix_b_src};

        /// Shared memory as 16-bit cells addressed by byte offset (values: small integers).
        struct Smem(std::collections::HashMap<usize, f64>);

        impl Smem {
            fn at(&self, byte: usize) -> f64 {
                *self.0.get(&byte).unwrap_or_else(|| panic!("read of unwritten shared byte {byte}"))
            }
        }

        /// `ldmatrix.x4` (`trans` = `.trans`): `addr(lane)` is the row address lane supplies;
        /// returns per lane its 4 registers of 2 halves. Matrix m takes its row addresses
        /// from lanes 8m .. 8m + 8; a lane receives row lane/4, elements 2·(lane%4) and +1
        /// (with `.trans`: element lane/4 of rows 2·(lane%4) and +1).
        fn ldmatrix_x4(smem: &Smem, addr: impl Fn(usize) -> usize, trans: bool) -> Vec<[[f64; 2]; 4]> {
            (0..32)
                .map(|lane| {
                    let mut regs = [[0.0; 2]; 4];
                    for (m, reg) in regs.iter_mut().enumerate() {
                        for (half, v) in reg.iter_mut().enumerate() {
                            let (row, col) = if trans { (2 * (lane % 4) + half, lane / 4) } else { (lane / 4, 2 * (lane % 4) + half) };
                            *v = smem.at(addr(8 * m + row) + 2 * col);
                        }
                    }
                    regs
                })
                .collect()
        }

        /// `mma.m16n8k16`: A (per lane a0..a7 as 4 registers), B (b0..b3 as 2), C += A·B.
        fn mma(a: &[[[f64; 2]; 4]], b: &[[[f64; 2]; 2]], c: &mut [[f64; 4]]) {
            let (mut am, mut bm) = ([[f64::NAN; 16]; 16], [[f64::NAN; 8]; 16]);
            for lane in 0..32 {
                for i in 0..8 {
                    let (r, k) = frag_a_coord(lane, i);
                    am[r][k] = a[lane][i / 2][i % 2];
                }
                for i in 0..4 {
                    let (k, n) = frag_b_coord(lane, i);
                    bm[k][n] = b[lane][i / 2][i % 2];
                }
            }
            for lane in 0..32 {
                for i in 0..4 {
                    let (r, n) = frag_c_coord(lane, i);
                    c[lane][i] += (0..16).map(|k| am[r][k] * bm[k][n]).sum::<f64>();
                }
            }
        }

        #[test]
        fn warp_step_computes_q_kt_and_p_v() {
            for hd16 in HEAD_DIM_CONFIGS {
                let (rb, dim) = (tile_row_bytes(hd16), 16 * hd16);
                // Q (16 heads), K and V (a 64-key tile), element values from their indices.
                let qv = |r: usize, d: usize| ((r * 7 + d * 3) % 11) as f64 - 5.0;
                let kv = |j: usize, d: usize| ((j * 5 + d) % 13) as f64 - 6.0;
                let vv = |j: usize, d: usize| ((j + d * 11) % 9) as f64 - 4.0;
                let (q0, k0, v0) = (0, stage_offset(hd16, 1), stage_offset(hd16, 1) + KEY_TILE * rb);
                let mut cells = std::collections::HashMap::new();
                for d in 0..dim {
                    for r in 0..HEADS_PER_BLOCK {
                        cells.insert(q0 + r * rb + 2 * d, qv(r, d));
                    }
                    for j in 0..KEY_TILE {
                        cells.insert(k0 + j * rb + 2 * d, kv(j, d));
                        cells.insert(v0 + j * rb + 2 * d, vv(j, d));
                    }
                }
                let smem = Smem(cells);
                assert!(v0 + KEY_TILE * rb <= ml_offset(hd16));
                // Q fragments (kernel: ldmatrix_a_src(lane, 0, kk), offset r·rb + c·16).
                let qa: Vec<_> = (0..hd16)
                    .map(|kk| {
                        ldmatrix_x4(&smem, |l| { let (r, c) = ldmatrix_a_src(l, 0, kk); q0 + r * rb + c * 16 }, false)
                    })
                    .collect();
                for warp in 0..ATTN_WARPS {
                    // S: n-tiles 2·warp, 2·warp + 1.
                    let mut s = [vec![[0.0; 4]; 32], vec![[0.0; 4]; 32]];
                    for (kk, a) in qa.iter().enumerate() {
                        let b = ldmatrix_x4(&smem, |l| { let (r, c) = ldmatrix_b_src(l, 2 * warp, kk); k0 + r * rb + c * 16 }, false);
                        let (b01, b23): (Vec<_>, Vec<_>) = b.iter().map(|r| ([r[0], r[1]], [r[2], r[3]])).unzip();
                        mma(a, &b01, &mut s[0]);
                        mma(a, &b23, &mut s[1]);
                    }
                    let key0 = warp * WARP_KEYS;
                    for (nt, frag) in s.iter().enumerate() {
                        for lane in 0..32 {
                            for e in 0..4 {
                                let (r, col) = frag_c_coord(lane, e);
                                let want: f64 = (0..dim).map(|d| qv(r, d) * kv(key0 + nt * 8 + col, d)).sum();
                                assert_eq!(frag[lane][e], want, "hd16 {hd16} warp {warp} S[{r}][{}]", nt * 8 + col);
                            }
                        }
                    }
                    // P = S as the A fragment: [pack(c0, c1) of n-tile 0, pack(c2, c3) of 0,
                    // pack(c0, c1) of 1, pack(c2, c3) of 1].
                    let pa: Vec<[[f64; 2]; 4]> = (0..32)
                        .map(|l| [[s[0][l][0], s[0][l][1]], [s[0][l][2], s[0][l][3]], [s[1][l][0], s[1][l][1]], [s[1][l][2], s[1][l][3]]])
                        .collect();
                    for lane in 0..32 {
                        for i in 0..8 {
                            let (r, k) = frag_a_coord(lane, i);
                            let want: f64 = (0..dim).map(|d| qv(r, d) * kv(key0 + k, d)).sum();
                            assert_eq!(pa[lane][i / 2][i % 2], want, "P[{r}][{k}] is S[{r}][{k}]");
                        }
                    }
                    // O = P·V (kernel: row warp·16 + lane%16, chunk 2·dp + lane/16, .trans).
                    for dp in 0..hd16 {
                        let b = ldmatrix_x4(&smem, |l| v0 + (warp * WARP_KEYS + l % 16) * rb + (2 * dp + l / 16) * 16, true);
                        let (b01, b23): (Vec<_>, Vec<_>) = b.iter().map(|r| ([r[0], r[1]], [r[2], r[3]])).unzip();
                        let mut o = [vec![[0.0; 4]; 32], vec![[0.0; 4]; 32]];
                        mma(&pa, &b01, &mut o[0]);
                        mma(&pa, &b23, &mut o[1]);
                        for (h, frag) in o.iter().enumerate() {
                            for lane in 0..32 {
                                for e in 0..4 {
                                    let (r, col) = frag_c_coord(lane, e);
                                    let d = 16 * dp + 8 * h + col;
                                    let want: f64 = (0..16)
                                        .map(|k| (0..dim).map(|x| qv(r, x) * kv(key0 + k, x)).sum::<f64>() * vv(key0 + k, d))
                                        .sum();
                                    assert_eq!(frag[lane][e], want, "hd16 {hd16} warp {warp} O[{r}][{d}]");
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
