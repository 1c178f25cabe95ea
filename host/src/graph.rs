//! Recording a handle's queued work once and replaying it (CUDA graphs, driver API).
//!
//! A decode step of a model is several hundred short kernels; launched one by one, the
//! host's launch cost and the gaps between kernels are a large share of a batch-1 step. A
//! [`Recording`] is the step captured from the handle's stream (`cuStreamBeginCapture`) and
//! instantiated once; [`Gpu::replay`] queues all of it with one `cuGraphLaunch`.
//!
//! What a recording fixes at capture time: every kernel's arguments (device addresses, shapes,
//! the SpMM completion-flag numbers) and grid. So the work must not depend on host values that
//! change between replays (a decode step's token ids and positions are written into device
//! arrays before each replay instead), and the buffers it touches must stay allocated: the
//! caller's operands by the contract of [`Gpu::replay`], the handle's own workspaces by the
//! check that they were not reallocated since the capture.
//!
//! The split SpMM's completion flags: each launch publishes its own number
//! (`linear.rs: completion_flags`), and a replay publishes the same numbers as the last one.
//! The recording therefore starts by zeroing the flags (a captured memset), and after a replay
//! (or a capture, whose memsets did not run) the next ordinary launch zeroes them again, so no
//! flag set by an earlier replay ever matches a launch's number.
//!
//! Threads: [`Gpu::record`] holds the handle's queue lock (`gpu.rs`) from the start of the
//! capture to its end, so work other threads queue on the handle waits instead of being
//! captured; [`Gpu::replay`] checks and launches under it. A [`Recording`] is `Send + Sync`.

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::memory::Owner;
use cust::sys::{CUgraph, CUgraphExec};
use std::sync::Arc;

/// The handle's buffers that grow on demand (`gpu.rs: QueueState`), each as (address,
/// length): the split SpMM's completion flags, the split-K workspace and the split dense
/// launches' arrival counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Buffers {
    flags: (u64, usize),
    workspace: (u64, usize),
    counters: (u64, usize),
}

/// Work captured from a [`Gpu`]'s stream, ready to replay with [`Gpu::replay`].
pub struct Recording {
    graph: CUgraph,
    exec: CUgraphExec,
    /// Keeps the context alive and names the handle that recorded it.
    owner: Arc<Owner>,
    /// The handle's grown buffers at capture: the recorded kernels use these addresses.
    buffers: Buffers,
    /// Kernel launches recorded (for reports).
    launches: usize,
}

impl std::fmt::Debug for Recording {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recording").field("nodes", &self.launches).finish_non_exhaustive()
    }
}

impl Recording {
    /// Operations the recording queues per replay (kernels and memsets).
    pub fn nodes(&self) -> usize {
        self.launches
    }
}

impl Gpu {
    /// Records the work `f` queues on this handle's stream (nothing runs) and instantiates it.
    ///
    /// `f` must only queue work: an operation that would allocate or wait (a first use of a
    /// larger workspace, a download) fails the capture, and `record` returns that error. Run
    /// the same work once without recording first, so every workspace has its final size.
    pub fn record(&self, f: impl FnOnce() -> Result<()>) -> Result<Recording> {
        // Held until the capture has ended: `f` takes it again (reentrant), other threads wait.
        let _queue = self.bind()?;
        let stream = self.stream.as_inner();
        // SAFETY: a live stream of this handle; thread-local mode makes only this thread's
        // capture-unsafe calls (allocation, synchronisation) fail while recording.
        let rc = unsafe {
            cust::sys::cuStreamBeginCapture_v2(stream, cust::sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        };
        Error::check_raw("begin stream capture", rc)?;
        self.state().recording = true;
        let buffers = self.buffers();
        let queued = self.zero_u32_queued(buffers.flags, "zeroing completion flags").and_then(|()| f()).and_then(|()| {
            // A buffer (re)allocated while recording: kernels recorded before the growth use
            // the freed address, and the flag zeroing above too. Refuse the recording.
            if self.buffers() != buffers {
                return Err(Error::InvalidArgument(
                    "record: the work grew the handle's workspace while recording; run it once without recording first".into(),
                ));
            }
            Ok(())
        });
        let mut graph: CUgraph = std::ptr::null_mut();
        // SAFETY: ends the capture begun above on the same stream, always (also after an
        // error), so the stream returns to normal use.
        let ended = Error::check_raw("end stream capture", unsafe { cust::sys::cuStreamEndCapture(stream, &mut graph) });
        // Memsets queued while recording (the one above, a wrap's) did not run: have the next
        // ordinary launch zero the flags.
        {
            let mut state = self.state();
            state.recording = false;
            state.flags_stale = true;
        }
        let destroy = |g: CUgraph| {
            if !g.is_null() {
                // SAFETY: a graph the capture returned, destroyed once.
                unsafe { cust::sys::cuGraphDestroy(g) };
            }
        };
        if let Err(e) = queued.and(ended) {
            destroy(graph);
            return Err(e);
        }
        let mut launches = 0usize;
        // SAFETY: counts the nodes of a live graph (null node array: the count only).
        let rc = unsafe { cust::sys::cuGraphGetNodes(graph, std::ptr::null_mut(), &mut launches) };
        if let Err(e) = Error::check_raw("graph nodes", rc) {
            destroy(graph);
            return Err(e);
        }
        let mut exec: CUgraphExec = std::ptr::null_mut();
        // SAFETY: instantiates a live graph into `exec`.
        let rc = unsafe { cust::sys::cuGraphInstantiateWithFlags(&mut exec, graph, 0) };
        if let Err(e) = Error::check_raw("instantiate graph", rc) {
            destroy(graph);
            return Err(e);
        }
        Ok(Recording {
            graph,
            exec,
            owner: Arc::clone(&self.owner),
            buffers,
            launches,
        })
    }

    /// Queues the recorded work on this handle's stream.
    ///
    /// # Safety
    /// Every device object the recorded work used (matrices, weights, index arrays, caches)
    /// is still alive, and the host does not read or write them until the replay is done
    /// (a download on this handle waits for it). The handle's own workspaces are checked here.
    pub unsafe fn replay(&self, r: &Recording) -> Result<()> {
        if !Owner::same(&self.owner, &r.owner) {
            return Err(Error::InvalidArgument("replay: the recording was made by another Gpu handle".into()));
        }
        let _queue = self.bind()?;
        if self.buffers() != r.buffers {
            return Err(Error::InvalidArgument(
                "replay: the handle's workspace was reallocated since the recording (a larger call ran in between); record again".into(),
            ));
        }
        // SAFETY: a live executable graph of this handle's context, on its stream; the operands
        // are alive by the caller's contract, the workspaces by the check above.
        let rc = unsafe { cust::sys::cuGraphLaunch(r.exec, self.stream.as_inner()) };
        Error::check_raw("graph launch", rc)?;
        self.state().flags_stale = true;
        Ok(())
    }

    /// Address and length of each grown buffer of the handle ((0, 0) where none).
    fn buffers(&self) -> Buffers {
        let state = self.state();
        Buffers {
            flags: buffer_span(&state.flags),
            workspace: buffer_span(&state.workspace),
            counters: buffer_span(&state.counters),
        }
    }
}

/// Address and length of one of the handle's grow-on-demand buffers ((0, 0) when none).
fn buffer_span<T: cust::memory::DeviceCopy>(b: &Option<crate::memory::DeviceAlloc<T>>) -> (u64, usize) {
    b.as_ref().map_or((0, 0), |b| (b.ptr(), b.len()))
}

// SAFETY: the graph handles are plain driver handles, valid from any thread with their context
// current. They are used only by `Gpu::replay` (under the handle's queue lock, which
// serialises launches of the same executable graph) and by `drop` (exclusive access).
unsafe impl Send for Recording {}
unsafe impl Sync for Recording {}

impl Drop for Recording {
    fn drop(&mut self) {
        let ctx = self.owner.raw_context();
        // SAFETY: `ctx` is retained by `self.owner`; push/pop as in `DeviceAlloc::drop`, so the
        // graph is destroyed in its context on any thread. Destroying an executable graph
        // that is still running is allowed: the driver finishes it first.
        unsafe {
            let pushed = cust::sys::cuCtxPushCurrent_v2(ctx) == cust::sys::cudaError_enum::CUDA_SUCCESS;
            cust::sys::cuGraphExecDestroy(self.exec);
            cust::sys::cuGraphDestroy(self.graph);
            if pushed {
                let mut popped = std::ptr::null_mut();
                cust::sys::cuCtxPopCurrent_v2(&mut popped);
            }
        }
    }
}
