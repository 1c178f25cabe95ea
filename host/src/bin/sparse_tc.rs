//! `sparse-tc`: generate text with a dense or sparse model, benchmark end to end, export.
//!
//! ```text
//! sparse-tc generate --model PATH|synthetic:NAME [--sparsity S] [--prompt TEXT]... [--batch B] [--max-tokens T]
//! sparse-tc bench-e2e --models llama-2-7b,llama-2-13b --batch 1,8 --sparsity 0,0.8 --csv out.csv
//! sparse-tc generate|bench-e2e … --gpus N                        (tensor parallel; feature `nccl`)
//! sparse-tc logits --model PATH --prompt TEXT --out FILE       (every position's logits, for reference checks)
//! sparse-tc export --model PATH [--sparsity S] --out DIR          (Hugging Face safetensors)
//! sparse-tc prune --model PATH --method wanda --sparsity 0.5 --out DIR   (a sparse checkpoint)
//! sparse-tc perplexity --model PATH --text FILE [--context 512]
//! ```

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use half::f16;
use indicatif::{ProgressBar, ProgressStyle};
use sparse_tc::model::backend::Backend;
use sparse_tc::model::generate::{check_request, generate, Output, Request};
use sparse_tc::model::load::gguf::GgufCheckpoint;
use sparse_tc::model::load::safetensors::{export_with, ExportOptions, HfCheckpoint};
use sparse_tc::model::perplexity::perplexity;
use sparse_tc::model::prune::{calibration_windows, prune_model, Method, Owl, Pattern, PruneConfig, SparseGptOptions};
use sparse_tc::model::load::synthetic::Synthetic;
use sparse_tc::model::tokenizer::Tokenizer;
use sparse_tc::model::transformer::{Scratch, StepIo, Transformer};
use sparse_tc::model::weights::TensorSource;
use sparse_tc::model::{Config, CpuBackend, FormatChoice, GpuBackend, LinearFormat, WeightPlan};
use sparse_tc::ops::SamplingParams;
use sparse_tc::Gpu;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[path = "sparse_tc/parallel.rs"]
mod parallel;

#[derive(Parser)]
#[command(name = "sparse-tc", version, about = "Sparse LLM inference on NVIDIA Tensor Cores")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text (or tokens, for synthetic models) and report tokens/s.
    Generate(GenerateArgs),
    /// Decode throughput of synthetic models: models × batch × sparsity, written as CSV.
    BenchE2e(BenchArgs),
    /// Logits of every prompt position, as little-endian f32 (rows × vocab) plus a JSON header.
    Logits(LogitsArgs),
    /// Write a model (optionally magnitude-pruned) as a Hugging Face safetensors checkpoint
    /// (dense: zeros in place; a sparse checkpoint exports dense this way).
    Export(ExportArgs),
    /// Prune a model's linear layers (magnitude, Wanda or SparseGPT, calibrated on a text)
    /// and write a sparse checkpoint that loads without re-pruning.
    Prune(PruneArgs),
    /// Perplexity of a model on a text file (sliding windows, token-level cross-entropy).
    Perplexity(PerplexityArgs),
}

#[derive(Args, Clone)]
struct ModelArgs {
    /// A `.gguf` file, a Hugging Face directory (config.json + safetensors), or
    /// `synthetic:NAME` (llama-2-7b, llama-2-13b, llama-2-70b, llama-3-8b, opt-30b, opt-66b, …).
    #[arg(long)]
    model: String,
    /// Magnitude-prune the linear weights to this sparsity (synthetic: random zeros).
    #[arg(long, default_value_t = 0.0)]
    sparsity: f64,
    /// Storage of the linear weights: auto (per linear, the storage predicted fastest for its
    /// density: dense above 50%, bitmap from 25%, Tiled-CSL below), dense, sparse (Tiled-CSL),
    /// bitmap, or `both` (generate runs the pruned model dense, then sparse, side by side). On a GPU, a sparse model whose Tiled-CSL weights do not fit in its memory but
    /// whose bitmap ones do is loaded as bitmap.
    #[arg(long, default_value = "auto")]
    format: String,
    /// Run on the CPU even if a GPU is present.
    #[arg(long)]
    cpu: bool,
    /// Seed of synthetic weights and of sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

impl ModelArgs {
    /// `--model synthetic:NAME --sparsity S`, stored sparse when `S > 0` (benchmarks).
    fn synthetic(name: &str, sparsity: f64) -> Self {
        let format = if sparsity == 0.0 { "dense" } else { "sparse" };
        ModelArgs { model: format!("synthetic:{name}"), sparsity, format: format.into(), cpu: false, seed: 0 }
    }
}

#[derive(Args)]
struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt text (repeat for several sequences).
    #[arg(long)]
    prompt: Vec<String>,
    /// Format prompts with the model's chat template.
    #[arg(long)]
    chat: bool,
    /// Sequences in the batch (prompts are repeated to fill it).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Most new tokens per sequence.
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    /// Prompt length in tokens for synthetic models (random tokens).
    #[arg(long, default_value_t = 128)]
    prompt_len: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Sample among the k most likely tokens (0 = all).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Nucleus sampling threshold (1 = off).
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Launch every decode step's kernels one by one instead of replaying a recorded step
    /// (a CUDA graph).
    #[arg(long)]
    eager: bool,
    /// GPUs to split the model over (tensor parallel over NCCL; needs the `nccl` feature).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    gpus: u32,
}

#[derive(Args)]
struct BenchArgs {
    /// Comma-separated presets.
    #[arg(long, default_value = "llama-2-7b,llama-2-13b")]
    models: String,
    /// Comma-separated batch sizes.
    #[arg(long, default_value = "1,8,16,32")]
    batch: String,
    /// Comma-separated sparsities (0 = dense).
    #[arg(long, default_value = "0,0.5,0.7,0.8,0.9")]
    sparsity: String,
    #[arg(long, default_value_t = 128)]
    prompt_len: usize,
    #[arg(long, default_value_t = 128)]
    gen: usize,
    /// CSV output file (appended rows; header when new).
    #[arg(long, default_value = "bench_e2e.csv")]
    csv: PathBuf,
    /// Decode without replaying a recorded step (a CUDA graph).
    #[arg(long)]
    eager: bool,
    /// Comma-separated: `stacked` (q|k|v and gate|up as one linear each, the default of
    /// every command) and/or `separate` (one linear per projection).
    #[arg(long, default_value = "stacked")]
    projections: String,
    /// GPUs to split each model over (tensor parallel over NCCL; needs the `nccl` feature;
    /// no time split then).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    gpus: u32,
    /// Storage of the sparse rows: `auto` (per linear, the storage predicted fastest for its
    /// density, as `--format auto`), `sparse` (Tiled-CSL; bitmap where only that fits on the
    /// GPU) or `bitmap`.
    #[arg(long, default_value = "auto", value_parser = ["auto", "sparse", "bitmap"])]
    sparse_format: String,
}

#[derive(Args)]
struct LogitsArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long)]
    prompt: Vec<String>,
    /// Output prefix: writes PREFIX.json (shapes, token ids) and PREFIX.f32 (logits).
    #[arg(long)]
    out: PathBuf,
    /// Also generate this many greedy tokens per prompt (no stop tokens), recorded in the JSON.
    #[arg(long, default_value_t = 0)]
    generate: usize,
}

#[derive(Args)]
struct ExportArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
struct PruneArgs {
    /// A `.gguf` file or a Hugging Face directory.
    #[arg(long)]
    model: String,
    /// magnitude, wanda or sparsegpt.
    #[arg(long, default_value = "wanda")]
    method: String,
    /// Share of each row's weights set to zero, in [0, 1) (2:4 implies 0.5).
    #[arg(long, default_value_t = 0.5)]
    sparsity: f64,
    /// `unstructured` or N:M (e.g. `2:4`: 2 zeros in every 4 consecutive weights).
    #[arg(long, default_value = "unstructured")]
    pattern: String,
    /// OWL: per-layer sparsities from the layers' outlier ratios (spread ±lambda around
    /// --sparsity); for wanda and sparsegpt, unstructured.
    #[arg(long)]
    owl: bool,
    /// OWL's spread of layer sparsities.
    #[arg(long, default_value_t = 0.08)]
    owl_lambda: f64,
    /// Calibration text (wanda, sparsegpt); `.ci/fetch-texts` provides the default.
    #[arg(long, default_value = ".cache/texts/calib.txt")]
    calib: PathBuf,
    /// Calibration windows, spread over the text (on SmolLM2-135M at 50%, Wanda with fewer
    /// than 128 leaves a model that repeats itself; on the CPU 128 take about 6 CPU-minutes).
    #[arg(long, default_value_t = 128)]
    calib_samples: usize,
    /// Tokens per calibration window.
    #[arg(long, default_value_t = 256)]
    calib_len: usize,
    /// Output directory (a checkpoint: config.json, model.safetensors, tokenizer files).
    #[arg(long)]
    out: PathBuf,
    /// Write the linear weights dense (zeros in place, the plain Hugging Face layout)
    /// instead of packed.
    #[arg(long)]
    dense: bool,
    /// Run on the CPU even if a GPU is present.
    #[arg(long)]
    cpu: bool,
}

#[derive(Args)]
struct PerplexityArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// UTF-8 text to evaluate (`.ci/fetch-texts` provides `.cache/texts/eval.txt`).
    #[arg(long)]
    text: PathBuf,
    /// Tokens per window.
    #[arg(long, default_value_t = 512)]
    context: usize,
    /// Tokens between window starts (default: the context, non-overlapping windows).
    #[arg(long)]
    stride: Option<usize>,
    /// Evaluate at most this many tokens of the text (0 = all).
    #[arg(long, default_value_t = 0)]
    max_tokens: usize,
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Generate(a) => cmd_generate(a),
        Command::BenchE2e(a) => cmd_bench(a),
        Command::Logits(a) => cmd_logits(a),
        Command::Export(a) => cmd_export(a),
        Command::Prune(a) => cmd_prune(a),
        Command::Perplexity(a) => cmd_perplexity(a),
    }
}

/// A checkpoint and, for real models, its tokenizer.
struct Loaded {
    source: Box<dyn TensorSource>,
    tokenizer: Option<Tokenizer>,
}

fn open_model(m: &ModelArgs) -> Result<Loaded> {
    if !(0.0..1.0).contains(&m.sparsity) {
        bail!("--sparsity {} must be in [0, 1)", m.sparsity);
    }
    if let Some(name) = m.model.strip_prefix("synthetic:") {
        return Ok(Loaded { source: Box::new(Synthetic::new(name, m.sparsity, m.seed)?), tokenizer: None });
    }
    let path = Path::new(&m.model);
    if path.extension().is_some_and(|e| e == "gguf") {
        let ck = GgufCheckpoint::open(path).with_context(|| format!("opening {}", path.display()))?;
        let tokenizer = Tokenizer::from_gguf(ck.gguf()).context("building the tokenizer from the GGUF metadata")?;
        return Ok(Loaded { source: Box::new(ck), tokenizer: Some(tokenizer) });
    }
    if path.is_dir() {
        let ck = HfCheckpoint::open(path).with_context(|| format!("opening {}", path.display()))?;
        let tokenizer = if path.join("tokenizer.json").exists() { Some(Tokenizer::from_hf_dir(path)?) } else { None };
        return Ok(Loaded { source: Box::new(ck), tokenizer });
    }
    bail!("--model {}: not a .gguf file, a directory, or synthetic:NAME", m.model)
}

/// The pruning to apply at load: synthetic weights come pruned already.
fn prune_of(m: &ModelArgs) -> f64 {
    if m.model.starts_with("synthetic:") {
        0.0
    } else {
        m.sparsity
    }
}

fn formats(m: &ModelArgs) -> Result<Vec<FormatChoice>> {
    Ok(match m.format.as_str() {
        "auto" => vec![FormatChoice::Auto],
        "dense" => vec![FormatChoice::Dense],
        "sparse" => vec![FormatChoice::Sparse],
        "bitmap" => vec![FormatChoice::Bitmap],
        "both" => vec![FormatChoice::Dense, FormatChoice::Sparse],
        other => bail!("--format {other}: one of auto, dense, sparse, bitmap, both"),
    })
}

fn progress_bar(len: usize, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len as u64);
    pb.set_style(ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {elapsed}").unwrap().progress_chars("=> "));
    pb.set_message(what.to_string());
    pb
}

/// Estimated device bytes of a model of `c` whose linears keep `density` of their weights,
/// stored as `format` (Tiled-CSL: 4 bytes per nonzero plus padding; bitmap: 2 bytes per
/// nonzero plus a bit per element and the tile headers), plus the KV cache and activations
/// for `rows` rows and `batch` sequences of `seq` positions.
/// Bytes one of `world` GPUs needs (its share of the linear weights and the KV cache; the
/// rest whole on every GPU).
fn device_bytes(c: &Config, format: LinearFormat, density: f64, batch: usize, seq: usize, rows: usize, world: usize) -> Option<u128> {
    let linear = c.linear_parameter_count()? as u128;
    let other = (c.parameter_count()? as u128).checked_sub(linear)?;
    let linear_bytes = match format {
        LinearFormat::Dense => linear * 2,
        LinearFormat::Sparse => (linear as f64 * density * 4.0 * 1.05) as u128,
        // 800 header bytes, 4 offset bytes and ≤ 15 padding bytes per 64×64 tile.
        LinearFormat::Bitmap => (linear as f64 * (density * 2.0 + 819.0 / 4096.0)) as u128,
    };
    let kv = 2 * 2 * (c.layers * batch) as u128 * (seq * c.kv_dim()) as u128;
    let act = Scratch::<CpuBackend<f16>>::bytes_per_row(c)? as u128 * rows as u128 + 2 * (batch * c.vocab) as u128;
    Some((linear_bytes + kv).div_ceil(world.max(1) as u128) + other * 2 + act)
}

fn gpu_or_none(cpu: bool) -> Option<Gpu> {
    if cpu {
        return None;
    }
    match Gpu::new() {
        Ok(g) => Some(g),
        Err(e) => {
            eprintln!("no usable GPU ({e}): running on the CPU (slow but correct)");
            None
        }
    }
}

/// Refuses a model that does not fit in the GPU's free memory, with the sizes named.
fn check_fits(gpu: &Gpu, c: &Config, format: FormatChoice, sparsity: f64, batch: usize, seq: usize, rows: usize, world: usize) -> Result<()> {
    let (free, total) = gpu.memory_info()?;
    let linear = format.for_density(1.0 - sparsity);
    let need = device_bytes(c, linear, 1.0 - sparsity, batch, seq, rows, world).context("model size overflows")?;
    if need > free as u128 {
        bail!(
            "{} ({}, {:.0}% sparse) needs about {:.1} GB of GPU memory per GPU over {world} (weights, KV cache for {batch}×{seq} positions, activations); {} has {:.1} GB free of {:.1} GB",
            c.name,
            format!("{linear:?}").to_lowercase(),
            sparsity * 100.0,
            need as f64 / 1e9,
            gpu.name(),
            free as f64 / 1e9,
            total as f64 / 1e9
        );
    }
    Ok(())
}

/// The storage to load a model with on one GPU: `format` if it fits (see [`check_fits`]);
/// a model whose linears `format` stores in Tiled-CSL (`sparse`, or `auto` at high sparsity)
/// and whose Tiled-CSL weights do not fit but whose bitmap ones do is loaded in the bitmap
/// format, and says so.
fn fitting_format(gpu: &Gpu, c: &Config, format: FormatChoice, sparsity: f64, batch: usize, seq: usize, rows: usize) -> Result<FormatChoice> {
    let Err(e) = check_fits(gpu, c, format, sparsity, batch, seq, rows, 1) else { return Ok(format) };
    if format.for_density(1.0 - sparsity) != LinearFormat::Sparse || check_fits(gpu, c, FormatChoice::Bitmap, sparsity, batch, seq, rows, 1).is_err() {
        return Err(e);
    }
    eprintln!("{e:#}: loading the linear weights in the bitmap format instead (fewer bytes)");
    Ok(FormatChoice::Bitmap)
}

fn load<B: Backend>(backend: &B, src: &dyn TensorSource, plan: WeightPlan) -> Result<Transformer<B>> {
    let c = src.config();
    let pb = progress_bar(c.layers, &format!("loading {} onto {}", c.name, backend.describe()));
    let t = Instant::now();
    let model = Transformer::load(backend, src, plan, &mut |done, _| pb.set_position(done as u64))?;
    backend.synchronize()?;
    pb.finish_and_clear();
    let (bytes, sparse, total) = model.linear_bytes(backend);
    eprintln!(
        "loaded {} in {:.1} s: {sparse}/{total} linears sparse, linear weights {:.2} GB",
        model.source,
        t.elapsed().as_secs_f64(),
        bytes as f64 / 1e9
    );
    Ok(model)
}

fn prompts_for(a: &GenerateArgs, loaded: &Loaded, c: &Config) -> Result<(Vec<Vec<u32>>, Vec<String>)> {
    if a.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let texts: Vec<String> = if a.prompt.is_empty() { vec!["The capital of France is".into()] } else { a.prompt.clone() };
    let mut ids = vec![];
    let mut shown = vec![];
    for i in 0..a.batch {
        match &loaded.tokenizer {
            Some(tok) => {
                let text = &texts[i % texts.len()];
                let formatted = if a.chat { tok.apply_chat_template(text, true)? } else { text.clone() };
                ids.push(tok.encode(&formatted, !a.chat && tok.add_bos_by_default())?);
                shown.push(text.clone());
            }
            None => {
                // Synthetic: random prompt tokens.
                let mut x = a.model.seed.wrapping_add(i as u64 * 0x9E37_79B9);
                let p: Vec<u32> = (0..a.prompt_len)
                    .map(|_| {
                        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                        ((x >> 33) % c.vocab as u64) as u32
                    })
                    .collect();
                shown.push(format!("<{} random tokens>", p.len()));
                ids.push(p);
            }
        }
    }
    Ok((ids, shown))
}

fn cmd_generate(a: GenerateArgs) -> Result<()> {
    let loaded = open_model(&a.model)?;
    let c = loaded.source.config().clone();
    let (prompts, shown) = prompts_for(&a, &loaded, &c)?;
    let sampling = SamplingParams { temperature: a.temperature, top_k: a.top_k, top_p: a.top_p, seed: a.model.seed };
    let req = Request { prompts, max_new_tokens: a.max_tokens, sampling, stop: vec![], honour_stop: loaded.tokenizer.is_some(), record_decode: !a.eager };
    let seq = check_request(&c, &req)?;
    let rows: usize = req.prompts.iter().map(Vec::len).sum();
    let plan_of = |format| WeightPlan { prune: prune_of(&a.model), format, stack: true };
    if a.gpus > 1 {
        if a.model.cpu {
            bail!("--gpus {} and --cpu: the CPU path runs on one device", a.gpus);
        }
        for format in formats(&a.model)? {
            let fit = parallel::Fit { config: &c, format, sparsity: a.model.sparsity, batch: req.prompts.len(), seq, rows };
            parallel::on_gpus(a.gpus as usize, &a.model, plan_of(format), &fit, &|rank, b, model, loaded| {
                if rank == 0 {
                    run_generate(b, model, &req, loaded, &shown, format)
                } else {
                    generate(b, model, &req, &mut |_, _| {}).map(|_| ()).map_err(Into::into)
                }
            })?;
        }
        return Ok(());
    }
    match gpu_or_none(a.model.cpu) {
        Some(gpu) => {
            let backend = GpuBackend::<f16>::new(gpu);
            for format in formats(&a.model)? {
                let format = fitting_format(backend.gpu(), &c, format, a.model.sparsity, req.prompts.len(), seq, rows)?;
                let model = load(&backend, loaded.source.as_ref(), plan_of(format))?;
                run_generate(&backend, &model, &req, &loaded, &shown, format)?;
            }
        }
        None => {
            let backend = CpuBackend::<f16>::new();
            for format in formats(&a.model)? {
                let model = load(&backend, loaded.source.as_ref(), plan_of(format))?;
                run_generate(&backend, &model, &req, &loaded, &shown, format)?;
            }
        }
    }
    Ok(())
}

fn run_generate<B: Backend>(
    backend: &B,
    model: &Transformer<B>,
    req: &Request,
    loaded: &Loaded,
    shown: &[String],
    format: FormatChoice,
) -> Result<()> {
    let stream = req.prompts.len() == 1 && loaded.tokenizer.is_some();
    let label = format!("{format:?}").to_lowercase();
    if stream {
        print!("[{label}] {}", shown[0]);
        std::io::stdout().flush()?;
    }
    let mut streamed: Vec<u32> = vec![];
    let mut printed = 0;
    let out = generate(backend, model, req, &mut |_, t| {
        if let (true, Some(tok)) = (stream, &loaded.tokenizer) {
            streamed.push(t);
            // Print what decodes cleanly so far (a multi-byte character may span tokens).
            if let Ok(text) = tok.decode(&streamed) {
                if text.len() > printed && !text.ends_with('\u{FFFD}') {
                    print!("{}", &text[printed..]);
                    printed = text.len();
                    let _ = std::io::stdout().flush();
                }
            }
        }
    })?;
    if stream {
        println!();
    } else {
        for (i, toks) in out.tokens.iter().enumerate() {
            let text = match &loaded.tokenizer {
                Some(tok) => tok.decode(toks)?,
                None => format!("{toks:?}"),
            };
            println!("[{label} {i}] {} → {text}", shown[i]);
        }
    }
    let generated: usize = out.tokens.iter().map(Vec::len).sum();
    println!(
        "[{label}] {} on {}: batch {}, prefill {} tokens in {:.1} ms, decode {} steps: {:.1} tokens/s ({:.2} ms/step); {generated} tokens generated",
        model.source,
        backend.describe(),
        out.tokens.len(),
        out.prompt_tokens,
        out.prefill.as_secs_f64() * 1e3,
        out.decode_steps,
        out.decode_tokens_per_s(),
        out.decode.as_secs_f64() * 1e3 / out.decode_steps.max(1) as f64,
    );
    if loaded.tokenizer.is_none() {
        println!("(synthetic weights: the tokens are meaningless, the speed is real)");
    }
    Ok(())
}

fn cmd_bench(a: BenchArgs) -> Result<()> {
    let list = |s: &str| s.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect::<Vec<_>>();
    let batches: Vec<usize> = list(&a.batch).iter().map(|b| b.parse()).collect::<Result<_, _>>().context("--batch")?;
    let sparsities: Vec<f64> = list(&a.sparsity).iter().map(|b| b.parse()).collect::<Result<_, _>>().context("--sparsity")?;
    let gpu = Gpu::new().context("bench-e2e needs a GPU")?;
    let backend = GpuBackend::<f16>::new(gpu);
    let new_file = !a.csv.exists();
    let mut csv = std::fs::OpenOptions::new().create(true).append(true).open(&a.csv)?;
    if new_file {
        writeln!(
            csv,
            "device,model,sparsity,format,batch,prompt_len,gen,replayed,prefill_ms,decode_ms_per_step,decode_tok_s,\
             gpu_used_gb,linear_gb,kv_gb,copy_tb_s,floor_ms,step_eager_ms,step_recorded_ms,linears_ms,attention_ms,rest_ms,\
             projections,dependent_launch,gpus,tok_s_per_gpu"
        )?;
    }
    let gpus = a.gpus as usize;
    // The HBM floor of a step: the bytes it must read at the copy bandwidth of this run.
    let bandwidth = copy_bandwidth(backend.gpu())?;
    println!("{}: device-to-device copy {:.2} TB/s (read + write)", backend.gpu().name(), bandwidth / 1e12);
    let max_batch = *batches.iter().max().context("no batch sizes")?;
    let stacks = list(&a.projections)
        .iter()
        .map(|p| match p.as_str() {
            "stacked" => Ok(true),
            "separate" => Ok(false),
            other => bail!("--projections: `{other}` is neither `stacked` nor `separate`"),
        })
        .collect::<Result<Vec<bool>>>()?;
    for model_name in list(&a.models) {
        for &s in &sparsities {
            let src = Synthetic::new(&model_name, s, 0)?;
            let c = src.config().clone();
            let format = match (s == 0.0, a.sparse_format.as_str()) {
                (true, _) => FormatChoice::Dense,
                (false, "bitmap") => FormatChoice::Bitmap,
                (false, "sparse") => FormatChoice::Sparse,
                (false, _) => FormatChoice::Auto,
            };
            let seq = a.prompt_len + a.gen;
            if gpus > 1 {
                if let Err(e) = bench_parallel(&a, &model_name, s, format, &batches, bandwidth, &mut csv) {
                    println!("skip {model_name} at {s} over {gpus} GPUs: {e:#}");
                }
                continue;
            }
            let format = match fitting_format(backend.gpu(), &c, format, s, max_batch, seq, max_batch * a.prompt_len) {
                Ok(f) => f,
                Err(e) => {
                    println!("skip {model_name} at {s}: {e:#}");
                    continue;
                }
            };
            for &stack in &stacks {
                let model = load(&backend, &src, WeightPlan { prune: 0.0, format, stack })?;
                let (bytes, _, _) = model.linear_bytes(&backend);
                for &b in &batches {
                    let req = bench_request(&a, b, c.vocab);
                    let out = match generate(&backend, &model, &req, &mut |_, _| {}) {
                        Ok(o) => o,
                        Err(e) => {
                            println!("{model_name} sparsity {s} batch {b}: {e}");
                            continue;
                        }
                    };
                    let mean_pos = a.prompt_len + a.gen / 2;
                    let split = time_split(&backend, &model, b, mean_pos)?;
                    let used = backend.gpu().memory_info().map(|(free, total)| (total - free) as f64 / 1e9)?;
                    let gpu = backend.gpu();
                    let run = E2eRun { device: gpu.name(), format: format.for_density(1.0 - s), dependent: gpu.dependent_launch(), gpus: 1, stacked: stack, used_gb: used };
                    let row = e2e_row(&a, &c, s, b, &out, &run, bytes, bandwidth, Some(&split));
                    if let Some(e) = &out.record_error {
                        println!("note: decode ran eagerly, recording failed: {e}");
                    }
                    println!("{row}");
                    writeln!(csv, "{row}")?;
                }
            }
        }
    }
    Ok(())
}

/// How a `bench-e2e` row was run.
struct E2eRun<'a> {
    device: &'a str,
    /// The storage of the linear weights.
    format: LinearFormat,
    dependent: bool,
    gpus: usize,
    stacked: bool,
    used_gb: f64,
}

/// One CSV row of `bench-e2e` (the header in `cmd_bench`): `bytes` are the model's linear
/// weight bytes (all GPUs together); the floor is a step's bytes (weights, LM head, KV cache
/// at the mean position) over the copy bandwidth of all the GPUs; without a time split its
/// columns are NaN.
#[allow(clippy::too_many_arguments)]
fn e2e_row(a: &BenchArgs, c: &Config, s: f64, b: usize, out: &Output, run: &E2eRun<'_>, bytes: usize, bandwidth: f64, split: Option<&StepSplit>) -> String {
    let (seq, mean_pos) = (a.prompt_len + a.gen, a.prompt_len + a.gen / 2);
    let kv = 4 * c.layers * b * seq * c.kv_dim();
    let step_bytes = bytes + 2 * c.vocab * c.hidden + 4 * c.layers * b * mean_pos * c.kv_dim();
    let nan = StepSplit { eager: f64::NAN, recorded: f64::NAN, linears: f64::NAN, attention: f64::NAN, rest: f64::NAN };
    let split = split.unwrap_or(&nan);
    let tok_s = out.decode_tokens_per_s();
    format!(
        "{},{},{s},{},{b},{},{},{},{:.2},{:.3},{:.1},{:.2},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3},{},{},{},{:.1}",
        run.device,
        c.name,
        format!("{:?}", run.format).to_lowercase(),
        a.prompt_len,
        a.gen,
        out.replayed,
        out.prefill.as_secs_f64() * 1e3,
        out.decode.as_secs_f64() * 1e3 / out.decode_steps.max(1) as f64,
        tok_s,
        run.used_gb,
        bytes as f64 / 1e9,
        kv as f64 / 1e9,
        bandwidth / 1e12,
        step_bytes as f64 / (bandwidth * run.gpus as f64) * 1e3,
        split.eager,
        split.recorded,
        split.linears,
        split.attention,
        split.rest,
        if run.stacked { "stacked" } else { "separate" },
        run.dependent,
        run.gpus,
        tok_s / run.gpus as f64,
    )
}

/// The benchmark's request: `batch` prompts of `--prompt-len` fixed pseudo-random tokens,
/// greedy, `--gen` new tokens each (no stop tokens).
fn bench_request(a: &BenchArgs, batch: usize, vocab: usize) -> Request {
    Request {
        prompts: (0..batch).map(|i| (0..a.prompt_len).map(|j| ((i * 7919 + j * 31) % vocab) as u32).collect()).collect(),
        max_new_tokens: a.gen,
        sampling: SamplingParams { temperature: 0.0, top_k: 0, top_p: 1.0, seed: 0 },
        stop: vec![],
        honour_stop: false,
        record_decode: !a.eager,
    }
}

/// `bench-e2e --gpus N`: each batch size on a tensor-parallel model over N GPUs (rank 0's
/// timings; the weights, KV-cache and floor columns are the whole model's, the time split is
/// not measured: NaN).
fn bench_parallel(
    a: &BenchArgs,
    model_name: &str,
    s: f64,
    format: FormatChoice,
    batches: &[usize],
    bandwidth: f64,
    csv: &mut std::fs::File,
) -> Result<()> {
    let gpus = a.gpus as usize;
    let m = ModelArgs::synthetic(model_name, s);
    let c = Synthetic::new(model_name, s, 0)?.config().clone();
    let max_batch = batches.iter().copied().max().unwrap_or(1);
    let fit = parallel::Fit { config: &c, format, sparsity: s, batch: max_batch, seq: a.prompt_len + a.gen, rows: max_batch * a.prompt_len };
    let plan = WeightPlan { prune: 0.0, format, stack: false };
    // Every rank runs every batch size on its shard, loaded once; rank 0's results are kept.
    let (device, dependent, bytes, runs) = parallel::on_gpus(gpus, &m, plan, &fit, &|_, backend, model, _| {
        let gpu = backend.gpu();
        let mut runs = vec![];
        for &b in batches {
            let out = generate(backend, model, &bench_request(a, b, c.vocab), &mut |_, _| {})?;
            let used = gpu.memory_info().map(|(free, total)| (total - free) as f64 / 1e9)?;
            runs.push((b, out, used));
        }
        Ok((gpu.name().to_string(), gpu.dependent_launch(), model.linear_bytes(backend).0 * gpus, runs))
    })?;
    for (b, out, used) in runs {
        let run = E2eRun { device: &device, format: format.for_density(1.0 - s), dependent, gpus, stacked: false, used_gb: used };
        let row = e2e_row(a, &c, s, b, &out, &run, bytes, bandwidth, None);
        if let Some(e) = &out.record_error {
            println!("note: decode ran eagerly, recording failed: {e}");
        }
        println!("{row}");
        writeln!(csv, "{row}")?;
    }
    Ok(())
}

/// Median GPU milliseconds of `f`'s queued work over 20 runs after 3 warm-ups, from CUDA
/// events on the handle's stream (launch gaps included: the GPU idles while the host queues).
fn median_ms(gpu: &Gpu, f: &mut dyn FnMut() -> Result<()>) -> Result<f64> {
    use cust::event::{Event, EventFlags};
    let (start, stop) = (Event::new(EventFlags::DEFAULT)?, Event::new(EventFlags::DEFAULT)?);
    let mut times = vec![];
    for i in 0..23 {
        start.record(gpu.stream())?;
        f()?;
        stop.record(gpu.stream())?;
        stop.synchronize()?;
        if i >= 3 {
            times.push(stop.elapsed_time_f32(&start)? as f64);
        }
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// Device-to-device copy bandwidth (bytes read + written per second) of a 1 GiB matrix.
fn copy_bandwidth(gpu: &Gpu) -> Result<f64> {
    let (rows, cols) = (32768, 16384);
    let src = gpu.zeros::<f16>(rows, cols)?;
    let mut dst = gpu.zeros::<f16>(rows, cols)?;
    let ms = median_ms(gpu, &mut || Ok(gpu.copy(&src, &mut dst)?))?;
    Ok(2.0 * (rows * cols * 2) as f64 / (ms * 1e-3))
}

/// One decode step of `batch` sequences at position `pos`, in milliseconds: the whole step
/// launched eagerly and replayed from a recording, then (recorded) only the linears, only
/// attention with the KV-cache writes, only the rest. Launch gaps = eager − recorded.
struct StepSplit {
    eager: f64,
    recorded: f64,
    linears: f64,
    attention: f64,
    rest: f64,
}

fn time_split<T: sparse_tc::Element>(backend: &GpuBackend<T>, model: &Transformer<GpuBackend<T>>, batch: usize, pos: usize) -> Result<StepSplit> {
    use sparse_tc::model::transformer::Phases;
    let c = &model.config;
    let mut cache = backend.kv_cache(c.layers, batch, c.kv_heads, pos + 1, c.head_dim())?;
    let arr = |v: &[u32]| -> Result<_> {
        let mut a = backend.ids(v.len())?;
        backend.write_ids(&mut a, v)?;
        Ok(a)
    };
    let slots: Vec<u32> = (0..batch as u32).collect();
    let io = StepIo { ids: arr(&vec![1; batch])?, slots: arr(&slots)?, positions: arr(&vec![pos as u32; batch])?, last: arr(&slots)? };
    let mut s = Scratch::new(backend, c, batch, batch)?;
    let gpu = backend.gpu();
    let only = |linears, attention, rest| Phases { linears, attention, rest };
    let mut ms = vec![median_ms(gpu, &mut || Ok(model.forward(backend, &mut s, &mut cache, &io)?))?];
    for p in [Phases::ALL, only(true, false, false), only(false, true, false), only(false, false, true)] {
        let rec = gpu.record(|| model.forward_phases(backend, &mut s, &mut cache, &io, p))?;
        // SAFETY: the recorded operands (model, `s`, `cache`, `io`) outlive `rec`.
        ms.push(median_ms(gpu, &mut || Ok(unsafe { gpu.replay(&rec) }?))?);
    }
    Ok(StepSplit { eager: ms[0], recorded: ms[1], linears: ms[2], attention: ms[3], rest: ms[4] })
}

fn cmd_logits(a: LogitsArgs) -> Result<()> {
    let loaded = open_model(&a.model)?;
    let tok = loaded.tokenizer.as_ref().context("logits needs a model with a tokenizer")?;
    let c = loaded.source.config().clone();
    let format = formats(&a.model)?[0];
    let plan = WeightPlan { prune: prune_of(&a.model), format, stack: true };
    let prompts: Vec<Vec<u32>> =
        a.prompt.iter().map(|p| tok.encode(p, tok.add_bos_by_default())).collect::<sparse_tc::Result<_>>()?;
    if prompts.is_empty() {
        bail!("give at least one --prompt");
    }
    let write = |(logits, generated, margins): LogitsAndTokens, device: String| -> Result<()> {
        let header = serde_json::json!({
            "model": c.name, "device": device, "vocab": c.vocab,
            "prompts": a.prompt, "tokens": prompts, "generated": generated, "greedy_margins": margins,
        });
        std::fs::write(a.out.with_extension("json"), serde_json::to_vec_pretty(&header)?)?;
        let bytes: Vec<u8> = logits.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(a.out.with_extension("f32"), bytes)?;
        Ok(())
    };
    match gpu_or_none(a.model.cpu) {
        Some(gpu) => {
            let b = GpuBackend::<f16>::new(gpu);
            let m = load(&b, loaded.source.as_ref(), plan)?;
            write(logits_and_tokens(&b, &m, &prompts, a.generate)?, b.describe())
        }
        None => {
            let b = CpuBackend::<f16>::new();
            let m = load(&b, loaded.source.as_ref(), plan)?;
            write(logits_and_tokens(&b, &m, &prompts, a.generate)?, b.describe())
        }
    }
}

/// Every prompt position's logits, the greedy tokens of each prompt and each token's top-2
/// logit gap.
type LogitsAndTokens = (Vec<f32>, Vec<Vec<u32>>, Vec<Vec<f32>>);

/// Every prompt position's logits, and `generate` greedy tokens per prompt (none when 0).
fn logits_and_tokens<B: Backend>(backend: &B, model: &Transformer<B>, prompts: &[Vec<u32>], generate_n: usize) -> Result<LogitsAndTokens> {
    let logits = all_logits(backend, model, prompts)?;
    if generate_n == 0 {
        return Ok((logits, vec![], vec![]));
    }
    let req = Request {
        prompts: prompts.to_vec(),
        max_new_tokens: generate_n,
        sampling: SamplingParams { temperature: 0.0, top_k: 0, top_p: 1.0, seed: 0 },
        stop: vec![],
        honour_stop: false,
        record_decode: true,
    };
    let generated = generate(backend, model, &req, &mut |_, _| {})?.tokens;
    let margins = greedy_margins(backend, model, prompts, &generated)?;
    Ok((logits, generated, margins))
}

/// For each generated token, the gap between the largest and the second-largest logit of the
/// step that picked it (recomputed by one prefill of prompt + generated tokens): where two
/// implementations' greedy tokens part, this says whether the step was a near-tie, closer
/// than the logits' error bound.
fn greedy_margins<B: Backend>(backend: &B, model: &Transformer<B>, prompts: &[Vec<u32>], generated: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
    let vocab = model.config.vocab;
    let mut out = vec![];
    for (p, g) in prompts.iter().zip(generated) {
        let full: Vec<u32> = p.iter().chain(g).copied().collect();
        let logits = all_logits(backend, model, &[full[..full.len() - 1].to_vec()])?;
        // Row p.len() - 1 + i predicted generated token i.
        let margins = (0..g.len())
            .map(|i| {
                let row = &logits[(p.len() - 1 + i) * vocab..(p.len() + i) * vocab];
                let (mut a, mut b) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
                for &v in row {
                    if v > a {
                        b = a;
                        a = v;
                    } else if v > b {
                        b = v;
                    }
                }
                a - b
            })
            .collect();
        out.push(margins);
    }
    Ok(out)
}

/// Logits of every position of every prompt (one prefill; rows in prompt order).
fn all_logits<B: Backend>(backend: &B, model: &Transformer<B>, prompts: &[Vec<u32>]) -> Result<Vec<f32>> {
    let c = &model.config;
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let mut cache = backend.kv_cache(c.layers, prompts.len(), c.kv_heads, longest, c.head_dim())?;
    let (mut ids, mut slots, mut pos) = (vec![], vec![], vec![]);
    for (s, p) in prompts.iter().enumerate() {
        ids.extend_from_slice(p);
        slots.extend(std::iter::repeat_n(s as u32, p.len()));
        pos.extend(0..p.len() as u32);
    }
    let rows: Vec<u32> = (0..ids.len() as u32).collect();
    let arr = |v: &[u32]| -> Result<B::Ids> {
        let mut a = backend.ids(v.len())?;
        backend.write_ids(&mut a, v)?;
        Ok(a)
    };
    let io = StepIo { ids: arr(&ids)?, slots: arr(&slots)?, positions: arr(&pos)?, last: arr(&rows)? };
    let mut s = Scratch::new(backend, c, ids.len(), ids.len())?;
    model.forward(backend, &mut s, &mut cache, &io)?;
    Ok(backend.read(&s.logits)?)
}

fn cmd_export(a: ExportArgs) -> Result<()> {
    let loaded = open_model(&a.model)?;
    refuse_same_dir(&a.model.model, &a.out)?;
    let specs = sparse_tc::model::weights::tensor_names(loaded.source.config()).len();
    let pb = progress_bar(specs, "exporting");
    let opts = ExportOptions { prune: prune_of(&a.model), tokenizer: loaded.tokenizer.as_ref(), ..ExportOptions::default() };
    export_with(loaded.source.as_ref(), &a.out, &opts, &mut |d, _| pb.set_position(d as u64))?;
    pb.finish_and_clear();
    eprintln!("wrote {}", a.out.display());
    Ok(())
}

/// Refuses writing a checkpoint into the directory it is read from (the input files are
/// memory-mapped while the output replaces them).
fn refuse_same_dir(model: &str, out: &Path) -> Result<()> {
    let input = Path::new(model);
    let input_dir = if input.is_dir() { Some(input.to_path_buf()) } else { input.parent().map(Path::to_path_buf) };
    if let (Some(i), true) = (input_dir, out.exists()) {
        if i.canonicalize().ok() == out.canonicalize().ok() {
            bail!("--out {} is the directory of --model: write the new checkpoint elsewhere", out.display());
        }
    }
    Ok(())
}

/// Tokens of a UTF-8 text file, with the tokenizer's BOS first when the model asks for one.
fn text_tokens(path: &Path, tok: &Tokenizer) -> Result<Vec<u32>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(tok.encode(&text, tok.add_bos_by_default())?)
}

fn cmd_prune(a: PruneArgs) -> Result<()> {
    let method = Method::parse(&a.method)?;
    let pattern = match a.pattern.as_str() {
        "unstructured" => Pattern::Unstructured,
        nm => {
            let (n, m) = nm.split_once(':').with_context(|| format!("--pattern {nm}: `unstructured` or N:M such as 2:4"))?;
            let p = Pattern::NofM { n: n.parse().context("--pattern N")?, m: m.parse().context("--pattern M")? };
            p.validate()?;
            p
        }
    };
    let cfg = PruneConfig {
        method,
        sparsity: a.sparsity,
        pattern,
        owl: a.owl.then_some(Owl { lambda: a.owl_lambda, ..Owl::default() }),
        sparsegpt: SparseGptOptions::default(),
    };
    if a.model.starts_with("synthetic:") {
        bail!("--model {}: prune a real checkpoint (synthetic weights are pruned at random already)", a.model);
    }
    let margs = ModelArgs { model: a.model.clone(), sparsity: 0.0, format: "dense".into(), cpu: a.cpu, seed: 0 };
    let loaded = open_model(&margs)?;
    refuse_same_dir(&a.model, &a.out)?;
    let c = loaded.source.config().clone();
    let gpu = gpu_or_none(a.cpu);
    let samples = a.calib_samples;
    let windows = if method == Method::Magnitude {
        vec![]
    } else {
        let tok = loaded.tokenizer.as_ref().context("calibration needs the model's tokenizer (none found with --model)")?;
        if !a.calib.exists() {
            bail!("calibration text {} not found: run .ci/fetch-texts, or pass --calib FILE", a.calib.display());
        }
        let tokens = text_tokens(&a.calib, tok)?;
        let windows = calibration_windows(&tokens, samples, a.calib_len.min(c.max_seq)).with_context(|| format!("calibration text {}", a.calib.display()))?;
        if windows.len() < samples {
            eprintln!("calibration text {} holds {} windows of {} tokens (asked for {samples})", a.calib.display(), windows.len(), a.calib_len);
        }
        windows
    };
    let plan = WeightPlan { prune: 0.0, format: FormatChoice::Dense, stack: false };
    let t = Instant::now();
    let pruned_layers = |p: &sparse_tc::model::prune::Pruned<'_>| {
        let spread = p.layer_sparsity.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), &s| (lo.min(s), hi.max(s)));
        eprintln!(
            "pruned in {:.1} s ({}): linear sparsity {:.1}% (layers {:.1}–{:.1}%)",
            t.elapsed().as_secs_f64(),
            p.how,
            p.sparsity() * 100.0,
            spread.0 * 100.0,
            spread.1 * 100.0
        );
    };
    let write = |p: &sparse_tc::model::prune::Pruned<'_>| -> Result<()> {
        let provenance = serde_json::json!({
            "source": loaded.source.describe(),
            "pruning": p.how,
            "layer_sparsity": p.layer_sparsity,
            "sparse_tc_version": env!("CARGO_PKG_VERSION"),
        });
        let opts = ExportOptions { prune: 0.0, packed: !a.dense, provenance: Some(provenance), tokenizer: loaded.tokenizer.as_ref() };
        let pb = progress_bar(sparse_tc::model::weights::tensor_names(&c).len(), "writing");
        export_with(p, &a.out, &opts, &mut |d, _| pb.set_position(d as u64))?;
        pb.finish_and_clear();
        eprintln!("wrote {} ({})", a.out.display(), if a.dense { "dense Hugging Face layout" } else { "sparse checkpoint, packed linears" });
        Ok(())
    };
    macro_rules! prune_on {
        ($backend:expr, $where:expr) => {{
            let backend = $backend;
            let mut model = load(&backend, loaded.source.as_ref(), plan)?;
            let pb = progress_bar(c.layers, &format!("pruning ({}){}", method.name(), $where));
            let p = prune_model(&backend, &mut model, loaded.source.as_ref(), &windows, &cfg, &mut |d, t| {
                pb.set_length(t as u64);
                pb.set_position(d as u64)
            })?;
            pb.finish_and_clear();
            pruned_layers(&p);
            write(&p)
        }};
    }
    match gpu {
        Some(gpu) => prune_on!(GpuBackend::<f16>::new(gpu), ""),
        None => prune_on!(CpuBackend::<f16>::new(), " on the CPU"),
    }
}

fn cmd_perplexity(a: PerplexityArgs) -> Result<()> {
    let loaded = open_model(&a.model)?;
    let tok = loaded.tokenizer.as_ref().context("perplexity needs the model's tokenizer (none found with --model)")?;
    let mut tokens = text_tokens(&a.text, tok)?;
    if a.max_tokens > 0 {
        tokens.truncate(a.max_tokens);
    }
    let stride = a.stride.unwrap_or(a.context);
    let c = loaded.source.config().clone();
    let formats = formats(&a.model)?;
    let plan_of = |format| WeightPlan { prune: prune_of(&a.model), format, stack: true };
    let report = |what: &str, p: &sparse_tc::model::perplexity::Perplexity, secs: f64| {
        println!(
            "{} [{what}] on {}: perplexity {:.3} (mean NLL {:.4} nats over {} tokens, {} windows of ≤ {} tokens, stride {stride}) in {secs:.1} s",
            c.name,
            a.text.display(),
            p.perplexity,
            p.nll,
            p.tokens,
            p.windows,
            a.context
        )
    };
    macro_rules! eval {
        ($backend:expr) => {{
            let backend = $backend;
            for &format in &formats {
                let model = load(&backend, loaded.source.as_ref(), plan_of(format))?;
                let pb = progress_bar(1, "perplexity");
                let t = Instant::now();
                let p = perplexity(&backend, &model, &tokens, a.context, stride, &mut |d, n| {
                    pb.set_length(n as u64);
                    pb.set_position(d as u64)
                })?;
                pb.finish_and_clear();
                report(&format!("{} on {}", format!("{format:?}").to_lowercase(), backend.describe()), &p, t.elapsed().as_secs_f64());
            }
        }};
    }
    match gpu_or_none(a.model.cpu) {
        Some(gpu) => eval!(GpuBackend::<f16>::new(gpu)),
        None => eval!(CpuBackend::<f16>::new()),
    }
    Ok(())
}
