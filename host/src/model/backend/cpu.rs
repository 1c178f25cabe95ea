//! [`Backend`] on the CPU: f32 matrices, the operations of [`crate::ops::reference`], and the
//! multi-threaded CPU linear of [`crate::cpu`]. Values are rounded to `T` wherever the GPU path
//! stores them in `T` (every operation's output), so the two paths round at the same points
//! and differ only in summation order and in the accuracy of exp/rsqrt.

use super::{check_shape, Backend, LinearFormat};
use crate::element::Element;
use crate::error::{Error, Result};
use crate::model::config::RopeStyle;
use crate::ops::reference::{attention as ra, elementwise, embed as re, norm, rope as rr, sample as rs};
use crate::ops::{KvLayout, SamplingParams};
use std::marker::PhantomData;
use std::sync::{Arc, Barrier, Mutex};

/// The CPU backend, rounding stored values to `T`.
pub struct CpuBackend<T: Element> {
    /// This rank's place in a tensor-parallel group (none: one rank).
    group: Option<(usize, Arc<CpuGroup>)>,
    _elem: PhantomData<T>,
}

impl<T: Element> Default for CpuBackend<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// Ranks of a tensor-parallel model on the CPU, one thread each: the all-reduce of
/// [`Backend::all_reduce`] in host memory, summed in rank order so every rank gets the same,
/// deterministic result (the test oracle of the multi-GPU path).
pub struct CpuGroup {
    world: usize,
    barrier: Barrier,
    parts: Mutex<Vec<Vec<f32>>>,
}

impl CpuGroup {
    /// A group of `world` ranks.
    pub fn new(world: usize) -> Arc<Self> {
        Arc::new(CpuGroup { world, barrier: Barrier::new(world), parts: Mutex::new(vec![vec![]; world]) })
    }
}

impl<T: Element> CpuBackend<T> {
    pub fn new() -> Self {
        CpuBackend { group: None, _elem: PhantomData }
    }

    /// The backend of rank `rank` of `group` (every rank must run the same operations).
    pub fn rank_of(group: &Arc<CpuGroup>, rank: usize) -> Result<Self> {
        if rank >= group.world {
            return Err(Error::InvalidArgument(format!("rank {rank} of a group of {}", group.world)));
        }
        Ok(CpuBackend { group: Some((rank, Arc::clone(group))), _elem: PhantomData })
    }

    fn round(v: &mut [f32]) {
        for x in v {
            *x = T::from_f32(*x).to_f32();
        }
    }
}

/// A row-major f32 matrix whose values are representable in the backend's `T`.
#[derive(Clone)]
pub struct CpuMat {
    rows: usize,
    cols: usize,
    data: Vec<f32>,
}

/// A linear weight: its values in `T` (the CPU linear's input type), and whether the GPU
/// would store it sparse (the product is the same either way).
pub struct CpuWeight<T> {
    rows: usize,
    cols: usize,
    data: Vec<T>,
    format: LinearFormat,
    nonzeros: usize,
}

/// The key/value cache: per layer, K and V in the layout of [`KvLayout`].
pub struct CpuCache {
    layout: KvLayout,
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
}

impl<T: Element> CpuBackend<T> {
    fn mat(rows: usize, cols: usize, mut data: Vec<f32>) -> CpuMat {
        Self::round(&mut data);
        CpuMat { rows, cols, data }
    }
}

fn same(what: &str, a: &CpuMat, b: &CpuMat) -> Result<()> {
    check_shape(what, (b.rows, b.cols), (a.rows, a.cols))
}

fn layer_of(c: &CpuCache, layer: usize) -> Result<(&[f32], &[f32])> {
    match (c.k.get(layer), c.v.get(layer)) {
        (Some(k), Some(v)) => Ok((k, v)),
        _ => Err(Error::InvalidArgument(format!("layer {layer} of a cache of {} layers", c.k.len()))),
    }
}

impl<T: Element> Backend for CpuBackend<T> {
    type Mat = CpuMat;
    type Weight = CpuWeight<T>;
    type Ids = Vec<u32>;
    type Cache = CpuCache;

    fn describe(&self) -> String {
        format!("CPU ({} threads, {} storage)", std::thread::available_parallelism().map_or(1, |n| n.get()), T::DTYPE.name())
    }

    fn matrix(&self, rows: usize, cols: usize, data: &[f32]) -> Result<CpuMat> {
        if rows.checked_mul(cols) != Some(data.len()) {
            return Err(Error::Shape(format!("matrix {rows}×{cols} from {} values", data.len())));
        }
        Ok(Self::mat(rows, cols, data.to_vec()))
    }

    fn zeros(&self, rows: usize, cols: usize) -> Result<CpuMat> {
        let len = rows.checked_mul(cols).ok_or_else(|| Error::Shape(format!("zeros {rows}×{cols} overflows")))?;
        Ok(CpuMat { rows, cols, data: vec![0.0; len] })
    }

    fn shape(&self, m: &CpuMat) -> (usize, usize) {
        (m.rows, m.cols)
    }

    fn weight(&self, rows: usize, cols: usize, data: &[f32], format: LinearFormat) -> Result<CpuWeight<T>> {
        if rows.checked_mul(cols) != Some(data.len()) {
            return Err(Error::Shape(format!("weight {rows}×{cols} from {} values", data.len())));
        }
        let data: Vec<T> = data.iter().map(|&v| T::from_f32(v)).collect();
        let nonzeros = data.iter().filter(|v| v.to_f32() != 0.0).count();
        Ok(CpuWeight { rows, cols, data, format, nonzeros })
    }

    fn duplicate_weight(&self, w: &CpuWeight<T>) -> Result<CpuWeight<T>> {
        Ok(CpuWeight { data: w.data.clone(), ..*w })
    }

    fn duplicate(&self, m: &CpuMat) -> Result<CpuMat> {
        Ok(m.clone())
    }

    fn weight_bytes(&self, w: &CpuWeight<T>) -> usize {
        // What the GPU stores (bitmap: a bit per element and the values; tile headers aside).
        match w.format {
            LinearFormat::Dense => w.data.len() * 2,
            LinearFormat::Sparse => w.nonzeros * 4,
            LinearFormat::Bitmap => w.nonzeros * 2 + w.data.len() / 8,
        }
    }

    fn is_sparse(&self, w: &CpuWeight<T>) -> bool {
        w.format.is_sparse()
    }

    fn ids(&self, capacity: usize) -> Result<Vec<u32>> {
        Ok(Vec::with_capacity(capacity))
    }

    fn write_ids(&self, ids: &mut Vec<u32>, values: &[u32]) -> Result<()> {
        ids.clear();
        ids.extend_from_slice(values);
        Ok(())
    }

    fn read_ids(&self, ids: &Vec<u32>) -> Result<Vec<u32>> {
        Ok(ids.clone())
    }

    fn read(&self, m: &CpuMat) -> Result<Vec<f32>> {
        Ok(m.data.clone())
    }

    fn kv_cache(&self, layers: usize, slots: usize, kv_heads: usize, max_seq: usize, head_dim: usize) -> Result<CpuCache> {
        let layout = KvLayout { slots, kv_heads, max_seq, head_dim };
        let len = layout.elems().ok_or_else(|| Error::InvalidArgument(format!("KV cache {layout:?} overflows")))?;
        Ok(CpuCache { layout, k: vec![vec![0.0; len]; layers], v: vec![vec![0.0; len]; layers] })
    }

    fn cache_bytes(&self, c: &CpuCache) -> usize {
        c.k.iter().chain(&c.v).map(|l| l.len() * 4).sum()
    }

    fn synchronize(&self) -> Result<()> {
        Ok(())
    }

    /// Never made: the CPU does not record.
    type Recording = std::convert::Infallible;

    fn record(&self, _f: &mut dyn FnMut() -> Result<()>) -> Result<Option<Self::Recording>> {
        Ok(None)
    }

    unsafe fn replay(&self, r: &Self::Recording) -> Result<()> {
        match *r {}
    }

    fn linear(&self, x: &CpuMat, w: &CpuWeight<T>, out: &mut CpuMat) -> Result<()> {
        if x.cols != w.cols {
            return Err(Error::Shape(format!("linear: X is {}×{}, W is {}×{}", x.rows, x.cols, w.rows, w.cols)));
        }
        check_shape("linear: output", (out.rows, out.cols), (x.rows, w.rows))?;
        let xs: Vec<T> = x.data.iter().map(|&v| T::from_f32(v)).collect();
        let y = crate::cpu::linear_dense(&xs, x.rows, &w.data, w.rows, w.cols);
        out.data = y.into_iter().map(T::to_f32).collect();
        Ok(())
    }

    fn linear_mat(&self, x: &CpuMat, m: &CpuMat, out: &mut CpuMat) -> Result<()> {
        let w = CpuWeight { rows: m.rows, cols: m.cols, data: m.data.iter().map(|&v| T::from_f32(v)).collect(), format: LinearFormat::Dense, nonzeros: 0 };
        self.linear(x, &w, out)
    }

    fn embed(&self, table: &CpuMat, ids: &Vec<u32>, offset: u32, accumulate: bool, out: &mut CpuMat) -> Result<()> {
        check_shape("embed: output", (out.rows, out.cols), (ids.len(), table.cols))?;
        re::embed(&table.data, table.cols, ids, offset, accumulate, &mut out.data);
        Self::round(&mut out.data);
        Ok(())
    }

    fn rms_norm(&self, x: &CpuMat, weight: &CpuMat, eps: f32, out: &mut CpuMat) -> Result<()> {
        same("rms_norm: output", x, out)?;
        check_shape("rms_norm: weight", (weight.rows, weight.cols), (1, x.cols))?;
        norm::rms_norm(&x.data, &weight.data, eps, &mut out.data);
        Self::round(&mut out.data);
        Ok(())
    }

    fn add_rms_norm(&self, residual: &mut CpuMat, delta: &CpuMat, weight: &CpuMat, eps: f32, out: &mut CpuMat) -> Result<()> {
        self.add_assign(residual, delta)?;
        self.rms_norm(residual, weight, eps, out)
    }

    fn layer_norm(&self, x: &CpuMat, weight: &CpuMat, bias: &CpuMat, eps: f32, out: &mut CpuMat) -> Result<()> {
        same("layer_norm: output", x, out)?;
        check_shape("layer_norm: weight", (weight.rows, weight.cols), (1, x.cols))?;
        check_shape("layer_norm: bias", (bias.rows, bias.cols), (1, x.cols))?;
        norm::layer_norm(&x.data, &weight.data, &bias.data, eps, &mut out.data);
        Self::round(&mut out.data);
        Ok(())
    }

    fn add_layer_norm(&self, residual: &mut CpuMat, delta: &CpuMat, weight: &CpuMat, bias: &CpuMat, eps: f32, out: &mut CpuMat) -> Result<()> {
        self.add_assign(residual, delta)?;
        self.layer_norm(residual, weight, bias, eps, out)
    }

    fn ranks(&self) -> usize {
        self.group.as_ref().map_or(1, |(_, g)| g.world)
    }

    fn all_reduce(&self, m: &mut CpuMat) -> Result<()> {
        let Some((rank, g)) = &self.group else { return Ok(()) };
        let poisoned = |_| Error::InvalidArgument("all_reduce: another rank panicked".into());
        g.parts.lock().map_err(poisoned)?[*rank] = m.data.clone();
        g.barrier.wait();
        let sum = g.parts.lock().map_err(poisoned).and_then(|parts| {
            if parts.iter().any(|p| p.len() != m.data.len()) {
                return Err(Error::Shape(format!("all_reduce: ranks passed {:?} values", parts.iter().map(Vec::len).collect::<Vec<_>>())));
            }
            let mut sum = vec![0.0f32; m.data.len()];
            for p in parts.iter() {
                for (s, v) in sum.iter_mut().zip(p) {
                    *s += v;
                }
            }
            Ok(sum)
        });
        // Every rank has read the parts before any writes the next call's (and an error on
        // one rank still lets the others pass).
        g.barrier.wait();
        m.data = sum?;
        Self::round(&mut m.data);
        Ok(())
    }

    fn add_assign(&self, acc: &mut CpuMat, x: &CpuMat) -> Result<()> {
        same("add_assign", acc, x)?;
        elementwise::add_assign(&mut acc.data, &x.data);
        Self::round(&mut acc.data);
        Ok(())
    }

    fn add_bias(&self, x: &mut CpuMat, bias: &CpuMat) -> Result<()> {
        check_shape("add_bias: bias", (bias.rows, bias.cols), (1, x.cols))?;
        elementwise::add_bias(&mut x.data, &bias.data);
        Self::round(&mut x.data);
        Ok(())
    }

    fn silu_mul(&self, gate: &CpuMat, up: &CpuMat, out: &mut CpuMat) -> Result<()> {
        same("silu_mul: up", gate, up)?;
        same("silu_mul: output", gate, out)?;
        elementwise::silu_mul(&gate.data, &up.data, &mut out.data);
        Self::round(&mut out.data);
        Ok(())
    }

    fn relu(&self, x: &mut CpuMat) -> Result<()> {
        elementwise::relu(&mut x.data);
        Ok(())
    }

    fn rope(&self, x: &mut CpuMat, positions: &Vec<u32>, head_dim: usize, theta: f32, style: RopeStyle) -> Result<()> {
        if positions.len() != x.rows || head_dim == 0 || !x.cols.is_multiple_of(head_dim) {
            return Err(Error::Shape(format!("rope: {}×{} with {} positions, head_dim {head_dim}", x.rows, x.cols, positions.len())));
        }
        rr::rope(&mut x.data, x.cols, positions, head_dim, theta, style);
        Self::round(&mut x.data);
        Ok(())
    }

    fn kv_write(&self, cache: &mut CpuCache, layer: usize, k: &CpuMat, v: &CpuMat, slots: &Vec<u32>, positions: &Vec<u32>) -> Result<()> {
        let l = cache.layout;
        check_shape("kv_write: k", (k.rows, k.cols), (slots.len(), l.kv_heads * l.head_dim))?;
        same("kv_write: v", k, v)?;
        if positions.len() != slots.len() || layer >= cache.k.len() {
            return Err(Error::Shape(format!("kv_write: {} slots, {} positions, layer {layer}", slots.len(), positions.len())));
        }
        ra::kv_write_reference(&mut cache.k[layer], &mut cache.v[layer], l, &k.data, &v.data, slots, positions)
    }

    fn attention(
        &self,
        q: &CpuMat,
        cache: &CpuCache,
        layer: usize,
        slots: &Vec<u32>,
        positions: &Vec<u32>,
        heads: usize,
        scale: f32,
        out: &mut CpuMat,
    ) -> Result<()> {
        same("attention: output", q, out)?;
        let (k, v) = layer_of(cache, layer)?;
        let l = cache.layout;
        if heads == 0 || q.cols != heads * l.head_dim || !heads.is_multiple_of(l.kv_heads) || slots.len() != q.rows || positions.len() != q.rows {
            return Err(Error::Shape(format!("attention: q {}×{} for {heads} heads of {}", q.rows, q.cols, l.head_dim)));
        }
        out.data = ra::attention_reference(&q.data, k, v, l, slots, positions, heads, scale)?;
        Self::round(&mut out.data);
        Ok(())
    }

    fn gather_rows(&self, x: &CpuMat, rows: &Vec<u32>, out: &mut CpuMat) -> Result<()> {
        check_shape("gather_rows: output", (out.rows, out.cols), (rows.len(), x.cols))?;
        for (i, &row) in rows.iter().enumerate() {
            let row = row as usize;
            if row >= x.rows {
                return Err(Error::InvalidArgument(format!("gather_rows: row {row} of {}", x.rows)));
            }
            out.data[i * x.cols..(i + 1) * x.cols].copy_from_slice(&x.data[row * x.cols..(row + 1) * x.cols]);
        }
        Ok(())
    }

    fn next_tokens(&self, logits: &CpuMat, params: &SamplingParams, step: u64, out: &mut Vec<u32>) -> Result<()> {
        out.clear();
        out.resize(logits.rows, 0);
        if params.temperature == 0.0 {
            rs::argmax(&logits.data, logits.cols, out);
            Ok(())
        } else {
            rs::sample(&logits.data, logits.cols, params, step, out)
        }
    }
}
