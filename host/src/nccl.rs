//! Collectives of a tensor-parallel model over NCCL (feature `nccl`): the all-reduce that
//! sums each row-parallel linear's partial outputs across the GPUs (`Backend::all_reduce`).
//!
//! `libnccl.so.2` is loaded at run time through cudarc's NCCL bindings (nothing from NCCL or
//! CUDA is needed to build): PyTorch's wheels ship it (`nvidia/nccl/lib` in `site-packages`;
//! put that directory on `LD_LIBRARY_PATH`). One thread per GPU: each opens its `Gpu`, then
//! all of them call [`NcclComm::join`] with the same [`NcclId`] at the same time (the call
//! returns once every rank has joined). Keep NVLink multicast off (`NCCL_NVLS_ENABLE=0`) on
//! the shared machines of this project.

use crate::element::Element;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::matrix::DeviceMatrix;
use cudarc::nccl::{result, sys};

/// The identity of one group of ranks, made once (by one thread) and given to every rank.
#[derive(Clone, Copy)]
pub struct NcclId(sys::ncclUniqueId);

impl NcclId {
    /// A new group identity (loads NCCL; an error names the library if it cannot).
    pub fn new() -> Result<Self> {
        // cudarc panics when the library is missing: turn that into an error that says so.
        let id = std::panic::catch_unwind(result::get_uniqueid)
            .map_err(|_| Error::Nccl("libnccl.so.2 not found (put its directory on LD_LIBRARY_PATH)".into()))?
            .map_err(|e| Error::Nccl(format!("ncclGetUniqueId failed: {e:?}")))?;
        Ok(NcclId(id))
    }
}

/// One rank's communicator, bound to the `Gpu` it was made with.
pub struct NcclComm {
    comm: sys::ncclComm_t,
    rank: usize,
    world: usize,
    /// The context of the `Gpu` (identity check in [`NcclComm::all_reduce_sum`]).
    context: cust::sys::CUcontext,
}

// SAFETY: an NCCL communicator may be used from any thread as long as calls on it are not
// concurrent; every use here goes through the `Gpu`'s queue lock (`Gpu::bind`).
unsafe impl Send for NcclComm {}
unsafe impl Sync for NcclComm {}

impl NcclComm {
    /// Joins rank `rank` of a group of `world` on `gpu`'s device. Blocks until every rank of
    /// the group has called it: call it from one thread per rank, concurrently.
    pub fn join(gpu: &Gpu, id: &NcclId, rank: usize, world: usize) -> Result<Self> {
        if world == 0 || rank >= world {
            return Err(Error::InvalidArgument(format!("NCCL: rank {rank} of a group of {world}")));
        }
        let n = i32::try_from(world).map_err(|_| Error::InvalidArgument(format!("NCCL: a group of {world} ranks")))?;
        let _queue = gpu.bind()?;
        let mut comm: sys::ncclComm_t = std::ptr::null_mut();
        // SAFETY: `comm` is a valid out slot; the GPU's context is current on this thread
        // (`bind`), which is the device NCCL binds the communicator to.
        unsafe { result::comm_init_rank(&mut comm, n, id.0, rank as i32) }
            .map_err(|e| Error::Nccl(format!("ncclCommInitRank (rank {rank} of {world}) failed: {e:?}")))?;
        Ok(NcclComm { comm, rank, world, context: gpu.raw_context() })
    }

    /// This rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Ranks in the group.
    pub fn world(&self) -> usize {
        self.world
    }

    /// `m = Σ over the ranks of m`, in place, queued on `gpu`'s stream (every rank must make
    /// the same calls in the same order). Rows with padding (`ld > cols`) are summed one by
    /// one, so columns outside the matrix (another view's, for a column block) are never
    /// touched.
    pub fn all_reduce_sum<T: Element>(&self, gpu: &Gpu, m: &mut DeviceMatrix<T>) -> Result<()> {
        if gpu.raw_context() != self.context {
            return Err(Error::InvalidArgument("NCCL all-reduce: the matrix's GPU is not the communicator's".into()));
        }
        gpu.check_owner("NCCL all-reduce: the matrix", &m.buf)?;
        let dtype = match T::DTYPE {
            crate::Dtype::F16 => sys::ncclDataType_t::ncclFloat16,
            crate::Dtype::Bf16 => sys::ncclDataType_t::ncclBfloat16,
        };
        let _queue = gpu.bind()?;
        let stream = gpu.stream().as_inner() as sys::cudaStream_t;
        let (rows, cols, ld) = (m.rows(), m.cols(), m.ld());
        let base = m.device_ptr();
        let reduce = |ptr: u64, count: usize| -> Result<()> {
            let p = ptr as *mut std::ffi::c_void;
            // SAFETY: `ptr .. ptr + 2·count` lies inside `m` (a whole matrix without padding,
            // or one row's `cols` elements), which the caller's `&mut` keeps alive and
            // unaliased until the queued work is done (the stream orders later uses of it).
            unsafe { result::all_reduce(p, p, count, dtype, sys::ncclRedOp_t::ncclSum, self.comm, stream) }
                .map(|_| ())
                .map_err(|e| Error::Nccl(format!("all-reduce of {rows}×{cols} failed: {e:?}")))
        };
        if ld == cols {
            return reduce(base, rows * cols);
        }
        result::group_start().map_err(|e| Error::Nccl(format!("group start: {e:?}")))?;
        let rows_done = (0..rows).try_for_each(|r| reduce(base + (r * ld * 2) as u64, cols));
        let end = result::group_end().map(|_| ()).map_err(|e| Error::Nccl(format!("group end: {e:?}")));
        rows_done.and(end)
    }
}

impl Drop for NcclComm {
    fn drop(&mut self) {
        // SAFETY: the communicator is live and dropped once; pending work on it finishes
        // first (ncclCommDestroy waits for it).
        let _ = unsafe { result::comm_destroy(self.comm) };
    }
}
