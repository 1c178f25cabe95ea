//! The key/value cache of the attention layers: preallocated once, written in place.

use super::attention::plan::{head_dim_config, KV_WRITE_THREADS, MAX_HEAD_DIM};
use super::indices::DeviceIndices;
use crate::element::Element;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::linear::args;
use crate::matrix::DeviceMatrix;
use crate::memory::DeviceAlloc;
use std::ffi::c_void;
use std::marker::PhantomData;

/// The shape of one layer's K (or V) cache: `[slots][kv_heads][max_seq][head_dim]`,
/// row-major, so the keys of one (slot, kv head) are `max_seq` consecutive rows of
/// `head_dim` values. A *slot* holds one sequence of the batch. Shared by the GPU cache
/// ([`KvCache`]) and the CPU reference (`ops::reference::attention`), which keeps one f32
/// K and one f32 V array of [`KvLayout::elems`] values per layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KvLayout {
    /// Sequences the cache holds at once.
    pub slots: usize,
    /// Key/value heads (`n_heads / kv_heads` query heads share each: GQA).
    pub kv_heads: usize,
    /// Positions per sequence (the longest sequence the cache holds).
    pub max_seq: usize,
    /// Values per head.
    pub head_dim: usize,
}

impl KvLayout {
    /// Values of one layer's K (or V): `slots · kv_heads · max_seq · head_dim`, or `None` if
    /// that overflows `usize`.
    pub fn elems(&self) -> Option<usize> {
        self.slots.checked_mul(self.kv_heads)?.checked_mul(self.max_seq)?.checked_mul(self.head_dim)
    }

    /// Values of one token's K (or V) row over all kv heads: `kv_heads · head_dim` (the
    /// columns of the matrices `kv_write` takes).
    pub fn row_width(&self) -> usize {
        self.kv_heads * self.head_dim
    }

    /// Whether (`slot`, `pos`) is inside the cache.
    pub fn contains(&self, slot: usize, pos: usize) -> bool {
        slot < self.slots && pos < self.max_seq
    }

    /// Index of the first value of (`slot`, `kv_head`, `pos`) in a layer's K (or V) array
    /// (the head's `head_dim` values follow). The arguments must be in range.
    pub fn offset(&self, slot: usize, kv_head: usize, pos: usize) -> usize {
        debug_assert!(self.contains(slot, pos) && kv_head < self.kv_heads);
        ((slot * self.kv_heads + kv_head) * self.max_seq + pos) * self.head_dim
    }
}

/// A preallocated KV cache in device memory: for each of `layers` layers a K and a V array
/// of the [`KvLayout`] `[slots][kv_heads][max_seq][head_dim]` of `T`, stored as
/// `[layers][K, V][slots][kv_heads][max_seq][head_dim]` in one allocation (zeroed when made).
/// [`Gpu::kv_write`] writes tokens' K and V rows in place; [`Gpu::attention`] reads them.
///
/// `head_dim` is a multiple of 8 up to 128 (what the attention kernels support). Owned like a
/// [`DeviceMatrix`]: usable only with the [`Gpu`] that made it.
pub struct KvCache<T: Element> {
    layers: usize,
    layout: KvLayout,
    /// Values of one layer's K (= of its V).
    layer_elems: usize,
    pub(crate) buf: DeviceAlloc<u16>,
    _elem: PhantomData<T>,
}

impl<T: Element> KvCache<T> {
    /// Bytes a cache of these sizes takes (`2 · layers · slots · kv_heads · max_seq ·
    /// head_dim · 2`), or `None` if that overflows `usize`: for planning memory before
    /// allocating (e.g. how many slots fit).
    pub fn bytes_for(layers: usize, slots: usize, kv_heads: usize, max_seq: usize, head_dim: usize) -> Option<usize> {
        KvLayout { slots, kv_heads, max_seq, head_dim }.elems()?.checked_mul(layers)?.checked_mul(2 * 2)
    }

    /// Layers.
    pub fn layers(&self) -> usize {
        self.layers
    }
    /// The per-layer layout of K and V.
    pub fn layout(&self) -> KvLayout {
        self.layout
    }
    /// Sequence slots.
    pub fn slots(&self) -> usize {
        self.layout.slots
    }
    /// Key/value heads.
    pub fn kv_heads(&self) -> usize {
        self.layout.kv_heads
    }
    /// Positions per slot.
    pub fn max_seq(&self) -> usize {
        self.layout.max_seq
    }
    /// Values per head.
    pub fn head_dim(&self) -> usize {
        self.layout.head_dim
    }
    /// Bytes of the whole cache (all layers, K and V).
    pub fn bytes(&self) -> usize {
        self.layers * 2 * self.layer_elems * 2
    }
    /// Raw device address of the cache (layer 0's K first).
    pub fn device_ptr(&self) -> u64 {
        self.buf.ptr()
    }

    /// Device addresses of layer `layer`'s K and V arrays (`layer < layers`, checked by the
    /// callers).
    pub(crate) fn layer_ptrs(&self, layer: usize) -> (u64, u64) {
        let k = self.buf.ptr() + (2 * layer * self.layer_elems * 2) as u64;
        (k, k + (self.layer_elems * 2) as u64)
    }

    /// `Ok` when `layer` exists, else an error naming `what`.
    pub(crate) fn check_layer(&self, what: &str, layer: usize) -> Result<()> {
        if layer < self.layers {
            return Ok(());
        }
        Err(Error::InvalidArgument(format!("{what}: layer {layer} of a cache of {} layers", self.layers)))
    }
}

/// Checks `slots` and `positions` against `n` rows, naming `what`.
pub(crate) fn check_rows(what: &str, n: usize, slots: &DeviceIndices, positions: &DeviceIndices) -> Result<()> {
    if slots.len() != n || positions.len() != n {
        return Err(Error::Shape(format!(
            "{what}: {n} rows need {n} slots and {n} positions, got {} and {}",
            slots.len(),
            positions.len()
        )));
    }
    Ok(())
}

impl Gpu {
    /// A zeroed KV cache of `layers` layers, each with K and V of the layout
    /// `[slots][kv_heads][max_seq][head_dim]` of `T` ([`KvCache`]).
    ///
    /// Every size must be at least 1; `head_dim` a multiple of 8 up to 128; `slots` and
    /// `max_seq` below 2³² (indices are u32) and `kv_heads` at most 65535 (a grid
    /// dimension). A total size that overflows is refused with the sizes named, before
    /// anything is allocated ([`KvCache::bytes_for`] gives it for planning).
    pub fn kv_cache<T: Element>(
        &self,
        layers: usize,
        slots: usize,
        kv_heads: usize,
        max_seq: usize,
        head_dim: usize,
    ) -> Result<KvCache<T>> {
        let sizes = format!("{layers} layers × {slots} slots × {kv_heads} kv heads × {max_seq} positions × {head_dim}");
        if [layers, slots, kv_heads, max_seq, head_dim].contains(&0) {
            return Err(Error::Shape(format!("kv_cache: {sizes}: every size must be at least 1")));
        }
        if head_dim_config(head_dim).is_none() {
            return Err(Error::InvalidArgument(format!(
                "kv_cache: head_dim {head_dim} is not supported: it must be a multiple of 8 up to {MAX_HEAD_DIM}"
            )));
        }
        if slots > u32::MAX as usize || max_seq > u32::MAX as usize || kv_heads > u16::MAX as usize {
            return Err(Error::Shape(format!(
                "kv_cache: {sizes}: slots and max_seq must be below 2^32 and kv_heads at most 65535"
            )));
        }
        let Some(bytes) = KvCache::<T>::bytes_for(layers, slots, kv_heads, max_seq, head_dim) else {
            return Err(Error::Shape(format!("kv_cache: {sizes} values of 2 bytes, for K and V, overflow the address space")));
        };
        let layout = KvLayout { slots, kv_heads, max_seq, head_dim };
        let layer_elems = bytes / (4 * layers);
        let _queue = self.bind()?;
        let buf = DeviceAlloc::zeroed(&self.owner, bytes / 2, "allocate the KV cache")?;
        Ok(KvCache { layers, layout, layer_elems, buf, _elem: PhantomData })
    }

    /// Writes the K and V rows of `n` tokens into layer `layer` of the cache: row i of `k`
    /// and `v` (`n × kv_heads·head_dim`, kv head h in columns `h·head_dim ..`) goes to slot
    /// `slots[i]`, position `positions[i]`. A row whose slot or position is out of range is
    /// skipped (the cache is never written out of bounds); two rows for the same place leave
    /// one of them. Queued on the handle's stream.
    pub fn kv_write<T: Element>(
        &self,
        cache: &mut KvCache<T>,
        layer: usize,
        k: &DeviceMatrix<T>,
        v: &DeviceMatrix<T>,
        slots: &DeviceIndices,
        positions: &DeviceIndices,
    ) -> Result<()> {
        self.check_owner("kv_write: the cache", &cache.buf)?;
        self.check_owner("kv_write: K", &k.buf)?;
        self.check_owner("kv_write: V", &v.buf)?;
        self.check_owner("kv_write: the slots", &slots.buf)?;
        self.check_owner("kv_write: the positions", &positions.buf)?;
        cache.check_layer("kv_write", layer)?;
        let (n, width) = (k.rows(), cache.layout.row_width());
        if k.cols() != width || v.rows() != n || v.cols() != width {
            return Err(Error::Shape(format!(
                "kv_write: K and V must both be n × {width} (kv_heads {} × head_dim {}), got {}×{} and {}×{}",
                cache.kv_heads(),
                cache.head_dim(),
                k.rows(),
                k.cols(),
                v.rows(),
                v.cols()
            )));
        }
        check_rows("kv_write", n, slots, positions)?;
        let _queue = self.bind()?;
        let (func, _) = self.kernel("attention_kv_write", KV_WRITE_THREADS as u32, 0)?;
        // One thread per 16-byte chunk of a row's K and V.
        let per_row = (2 * width / 8).div_ceil(KV_WRITE_THREADS);
        let (kc, vc) = cache.layer_ptrs(layer);
        let (kp, ldk, vp, ldv) = (k.device_ptr(), k.ld() as u32, v.device_ptr(), v.ld() as u32);
        let (sp, pp) = (slots.device_ptr(), positions.device_ptr());
        let l = cache.layout;
        let (kvh, hd, cs, ms) = (l.kv_heads as u32, l.head_dim as u32, l.slots as u32, l.max_seq as u32);
        let mut args = args![kp, ldk, vp, ldv, kc, vc, sp, pp, kvh, hd, cs, ms];
        // n ≤ 2³¹ - 1 (a matrix dimension); per_row ≤ 65535·128·2/8/128 < 65535.
        self.launch(&func, crate::checked::grid(crate::checked::Sizes::ARG, [n, per_row, 1], |_| "kv_write: rows".into())?, KV_WRITE_THREADS as u32, 0, &mut args)
    }

    /// Waits for queued work, then copies layer `layer`'s K and V back, each in the
    /// [`KvLayout`] order `[slots][kv_heads][max_seq][head_dim]` (for tests and debugging).
    pub fn download_kv<T: Element>(&self, cache: &KvCache<T>, layer: usize) -> Result<(Vec<T>, Vec<T>)> {
        self.check_owner("download_kv: the cache", &cache.buf)?;
        cache.check_layer("download_kv", layer)?;
        let _queue = self.bind()?;
        self.synchronize()?;
        let (kp, vp) = cache.layer_ptrs(layer);
        let read = |ptr: u64| -> Result<Vec<T>> {
            let mut host = vec![0u16; cache.layer_elems];
            // SAFETY: copies `layer_elems` u16 from inside a live allocation of this handle
            // (the layer's K or V array) into a host buffer of that length; synchronous.
            let rc = unsafe { cust::sys::cuMemcpyDtoH_v2(host.as_mut_ptr().cast::<c_void>(), ptr, host.len() * 2) };
            Error::check_raw("download the KV cache", rc)?;
            Ok(host.into_iter().map(T::from_bits).collect())
        };
        Ok((read(kp)?, read(vp)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::f16;

    #[test]
    fn layout_offsets_are_row_major() {
        let l = KvLayout { slots: 3, kv_heads: 2, max_seq: 5, head_dim: 8 };
        assert_eq!(l.elems(), Some(3 * 2 * 5 * 8));
        assert_eq!(l.row_width(), 16);
        assert_eq!(l.offset(0, 0, 0), 0);
        assert_eq!(l.offset(0, 0, 1), 8);
        assert_eq!(l.offset(0, 1, 0), 5 * 8);
        assert_eq!(l.offset(2, 1, 4), l.elems().unwrap() - 8);
        assert!(l.contains(2, 4) && !l.contains(3, 0) && !l.contains(0, 5));
    }

    #[test]
    fn sizes_are_checked() {
        // LLaMA-2-7B: 32 layers, 32 kv heads of 128, 4096 positions, 8 slots: 16 GiB.
        assert_eq!(KvCache::<f16>::bytes_for(32, 8, 32, 4096, 128), Some(16 << 30));
        assert_eq!(KvCache::<f16>::bytes_for(1, 1, 1, 1, 8), Some(32));
        assert_eq!(KvCache::<f16>::bytes_for(usize::MAX, 1, 1, 1, 8), None);
        assert_eq!(KvCache::<f16>::bytes_for(1, 1 << 32, 1 << 16, 1 << 16, 128), None);
        assert_eq!(KvLayout { slots: usize::MAX, kv_heads: 2, max_seq: 1, head_dim: 8 }.elems(), None);
    }
}
