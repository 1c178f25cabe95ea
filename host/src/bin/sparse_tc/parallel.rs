//! `--gpus N`: a tensor-parallel model over N GPUs of this machine (feature `nccl`; one
//! thread per GPU, each with its own `Gpu`, NCCL communicator and shard of the model).

use super::{Loaded, ModelArgs};
use anyhow::{bail, Result};
use half::f16;
use sparse_tc::model::transformer::Transformer;
use sparse_tc::model::{Config, FormatChoice, GpuBackend, WeightPlan};

/// What a rank gets: its rank, backend, model shard and the opened checkpoint.
pub type RankFn<'a, R> = dyn Fn(usize, &GpuBackend<f16>, &Transformer<GpuBackend<f16>>, &Loaded) -> Result<R> + Sync + 'a;

/// The memory a shard needs, checked on every GPU before anything is loaded.
#[cfg_attr(not(feature = "nccl"), allow(dead_code))]
pub struct Fit<'a> {
    pub config: &'a Config,
    pub format: FormatChoice,
    pub sparsity: f64,
    pub batch: usize,
    pub seq: usize,
    pub rows: usize,
}

/// Runs `f` on every rank of a group of `gpus` GPUs and returns rank 0's result (or the
/// first error of any rank). Every rank opens the checkpoint itself, loads its shard
/// (`Transformer::load_shard`) and must make the same calls as the others: the all-reduces
/// pair up in order. A rank that cannot load makes every rank stop before the first
/// collective, so none is left waiting for it.
#[cfg(feature = "nccl")]
pub fn on_gpus<R: Send>(gpus: usize, m: &ModelArgs, plan: WeightPlan, fit: &Fit<'_>, f: &RankFn<'_, R>) -> Result<R> {
    use super::{check_fits, open_model};
    use anyhow::Context;
    use sparse_tc::model::transformer::Shard;
    use sparse_tc::nccl::{NcclComm, NcclId};
    use sparse_tc::Gpu;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Barrier;
    let present = Gpu::device_count();
    if gpus == 0 || gpus > present {
        bail!("--gpus {gpus}: this machine has {present} GPU(s)");
    }
    let handles: Vec<Gpu> = (0..gpus).map(|r| Gpu::with_device(r as u32).with_context(|| format!("opening GPU {r}"))).collect::<Result<_>>()?;
    for g in &handles {
        check_fits(g, fit.config, fit.format, fit.sparsity, fit.batch, fit.seq, fit.rows, gpus)?;
    }
    let id = NcclId::new()?;
    let loaded = Barrier::new(gpus);
    let failed = AtomicBool::new(false);
    let results: Vec<Result<R>> = std::thread::scope(|s| {
        let threads: Vec<_> = handles
            .into_iter()
            .enumerate()
            .map(|(rank, gpu)| {
                let (id, loaded, failed) = (&id, &loaded, &failed);
                s.spawn(move || -> Result<R> {
                    let comm = NcclComm::join(&gpu, id, rank, gpus)?;
                    let b = GpuBackend::<f16>::rank_of(gpu, comm);
                    let load = open_model(m).and_then(|ck| {
                        let shard = Shard { rank, world: gpus };
                        let model = Transformer::load_shard(&b, ck.source.as_ref(), plan, shard, &mut |_, _| {})?;
                        Ok((ck, model))
                    });
                    if load.is_err() {
                        failed.store(true, Ordering::SeqCst);
                    }
                    loaded.wait();
                    let (ck, model) = load.with_context(|| format!("rank {rank} (GPU {rank})"))?;
                    if failed.load(Ordering::SeqCst) {
                        bail!("rank {rank}: another rank could not load its shard");
                    }
                    f(rank, &b, &model, &ck)
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a rank panicked")))).collect()
    });
    let mut first = None;
    for r in results {
        match (r, &first) {
            (Err(e), _) => return Err(e),
            (Ok(v), None) => first = Some(v),
            (Ok(_), Some(_)) => {}
        }
    }
    first.context("no ranks")
}

/// Without the `nccl` feature: one GPU only.
#[cfg(not(feature = "nccl"))]
pub fn on_gpus<R: Send>(gpus: usize, _: &ModelArgs, _: WeightPlan, _: &Fit<'_>, _: &RankFn<'_, R>) -> Result<R> {
    bail!("--gpus {gpus}: this build has no multi-GPU support (build with `--features nccl`)")
}
