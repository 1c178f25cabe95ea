//! The generation loop, outside the model: prefill every prompt in one forward pass, then one
//! decode step per new token for the whole batch, until each sequence meets a stop token or
//! its length limit.

use super::backend::Backend;
use super::transformer::{StepIo, Transformer};
use crate::error::{Error, Result};
use crate::ops::SamplingParams;
use std::time::{Duration, Instant};

/// What to generate.
#[derive(Clone, Debug)]
pub struct Request {
    /// Token ids of each prompt (batch = number of prompts); each non-empty.
    pub prompts: Vec<Vec<u32>>,
    /// Most new tokens per sequence.
    pub max_new_tokens: usize,
    /// Greedy (temperature 0) or sampled.
    pub sampling: SamplingParams,
    /// Ending a sequence (the token itself is kept); the model's EOS ids are added.
    pub stop: Vec<u32>,
    /// When false, sequences run `max_new_tokens` steps whatever they produce (benchmarks).
    pub honour_stop: bool,
    /// Record the decode step once and replay it (a CUDA graph on the GPU: one launch per
    /// step instead of hundreds); the CPU and a driver that refuses run every step eagerly.
    pub record_decode: bool,
}

/// What came out, with timings measured around the synchronised GPU work.
#[derive(Clone, Debug)]
pub struct Output {
    /// New tokens of each sequence.
    pub tokens: Vec<Vec<u32>>,
    /// Prefill (all prompts, first token picked).
    pub prefill: Duration,
    /// All decode steps.
    pub decode: Duration,
    /// Decode steps run (each produces one token for every unfinished sequence).
    pub decode_steps: usize,
    /// Prompt tokens processed.
    pub prompt_tokens: usize,
    /// Whether the decode steps after the first replayed a recording.
    pub replayed: bool,
    /// Why recording was asked for but not used (the steps ran eagerly).
    pub record_error: Option<String>,
}

impl Output {
    /// Generated tokens per second of decode (all sequences of the batch, excluding the first
    /// token, which the prefill produced).
    pub fn decode_tokens_per_s(&self) -> f64 {
        let batch = self.tokens.len();
        (self.decode_steps * batch) as f64 / self.decode.as_secs_f64().max(1e-9)
    }
}

/// Checks a request against a model and returns the cache length it needs.
pub fn check_request(c: &super::config::Config, req: &Request) -> Result<usize> {
    if req.prompts.is_empty() {
        return Err(Error::InvalidArgument("no prompts given".into()));
    }
    if req.max_new_tokens == 0 {
        return Err(Error::InvalidArgument("max_new_tokens must be at least 1".into()));
    }
    let mut longest = 0;
    for (i, p) in req.prompts.iter().enumerate() {
        if p.is_empty() {
            return Err(Error::InvalidArgument(format!("prompt {i} is empty")));
        }
        if let Some(&t) = p.iter().find(|&&t| t as usize >= c.vocab) {
            return Err(Error::InvalidArgument(format!("prompt {i} holds token {t}, outside the vocabulary of {}", c.vocab)));
        }
        longest = longest.max(p.len());
    }
    let need = longest
        .checked_add(req.max_new_tokens)
        .ok_or_else(|| Error::InvalidArgument("max_new_tokens overflows".into()))?;
    if need > c.max_seq {
        return Err(Error::InvalidArgument(format!(
            "the longest prompt ({longest} tokens) plus max_new_tokens ({}) is {need}, longer than the model's context of {}",
            req.max_new_tokens, c.max_seq
        )));
    }
    let p = &req.sampling;
    if !(p.temperature >= 0.0 && p.temperature.is_finite()) || !(p.top_p > 0.0 && p.top_p <= 1.0) {
        return Err(Error::InvalidArgument(format!(
            "sampling: temperature {} must be ≥ 0 and finite, top_p {} in (0, 1]",
            p.temperature, p.top_p
        )));
    }
    Ok(need)
}

/// Generates for every prompt of `req`; `on_token(sequence, token)` sees each new token as it
/// is picked (for streaming output).
pub fn generate<B: Backend>(
    backend: &B,
    model: &Transformer<B>,
    req: &Request,
    on_token: &mut dyn FnMut(usize, u32),
) -> Result<Output> {
    let c = &model.config;
    let max_seq = check_request(c, req)?;
    let batch = req.prompts.len();
    let mut cache = model.kv_cache(backend, batch, max_seq)?;
    let stops: Vec<u32> = req.stop.iter().chain(&c.eos).copied().collect();

    // Prefill: every prompt token of every sequence, one row each.
    let start = Instant::now();
    let prompt_tokens: usize = req.prompts.iter().map(Vec::len).sum();
    let (mut ids, mut slots, mut positions, mut last) = (vec![], vec![], vec![], vec![]);
    for (slot, p) in req.prompts.iter().enumerate() {
        ids.extend_from_slice(p);
        slots.extend(std::iter::repeat_n(slot as u32, p.len()));
        positions.extend(0..p.len() as u32);
        last.push((ids.len() - 1) as u32);
    }
    let io = |ids: &[u32], slots: &[u32], positions: &[u32], last: &[u32]| -> Result<StepIo<B>> {
        let arr = |v: &[u32]| -> Result<B::Ids> {
            let mut a = backend.ids(v.len())?;
            backend.write_ids(&mut a, v)?;
            Ok(a)
        };
        Ok(StepIo { ids: arr(ids)?, slots: arr(slots)?, positions: arr(positions)?, last: arr(last)? })
    };
    let mut next = backend.ids(batch)?;
    {
        let prefill_io = io(&ids, &slots, &positions, &last)?;
        let mut scratch = model.scratch(backend, ids.len(), batch)?;
        model.forward(backend, &mut scratch, &mut cache, &prefill_io)?;
        backend.next_tokens(&scratch.logits, &req.sampling, 0, &mut next)?;
    }
    let mut tokens: Vec<Vec<u32>> = vec![vec![]; batch];
    let mut done = vec![false; batch];
    let mut record = |tokens: &mut Vec<Vec<u32>>, done: &mut Vec<bool>, picked: &[u32]| {
        for (s, &t) in picked.iter().enumerate() {
            if done[s] {
                continue;
            }
            tokens[s].push(t);
            on_token(s, t);
            if (req.honour_stop && stops.contains(&t)) || tokens[s].len() >= req.max_new_tokens {
                done[s] = true;
            }
        }
    };
    let picked = backend.read_ids(&next)?;
    record(&mut tokens, &mut done, &picked);
    let prefill = start.elapsed();

    // Decode: one row per sequence (finished ones keep running on their last token, their
    // output ignored, so the batch shape — and a captured step — never changes).
    let start = Instant::now();
    let mut steps = 0;
    let all_slots: Vec<u32> = (0..batch as u32).collect();
    let mut step_io = io(&picked, &all_slots, &vec![0; batch], &all_slots)?;
    let mut scratch = model.scratch(backend, batch, batch)?;
    let mut feed = picked;
    // Declared after every operand it uses, so it is dropped first.
    let mut recording: Option<B::Recording> = None;
    let mut record_error = None;
    while !done.iter().all(|&d| d) {
        let pos: Vec<u32> = (0..batch)
            .map(|s| (req.prompts[s].len() + tokens[s].len() - 1).min(max_seq - 1) as u32)
            .collect();
        backend.write_ids(&mut step_io.ids, &feed)?;
        backend.write_ids(&mut step_io.positions, &pos)?;
        // The first step runs eagerly (its workspaces reach their final size), the second is
        // recorded, then every step replays it with the ids and positions written above.
        if steps == 1 && req.record_decode {
            match backend.record(&mut || model.forward(backend, &mut scratch, &mut cache, &step_io)) {
                Ok(r) => recording = r,
                Err(e) => record_error = Some(e.to_string()),
            }
        }
        match &recording {
            // SAFETY: the recorded step's operands (the model, `scratch`, `cache`, `step_io`)
            // outlive `recording`, and the host touches them only through the backend's
            // stream-ordered copies.
            Some(r) => unsafe { backend.replay(r)? },
            None => model.forward(backend, &mut scratch, &mut cache, &step_io)?,
        }
        steps += 1;
        backend.next_tokens(&scratch.logits, &req.sampling, steps as u64, &mut next)?;
        let picked = backend.read_ids(&next)?;
        record(&mut tokens, &mut done, &picked);
        for s in 0..batch {
            if !done[s] {
                feed[s] = picked[s];
            }
        }
    }
    let replayed = recording.is_some();
    Ok(Output { tokens, prefill, decode: start.elapsed(), decode_steps: steps, prompt_tokens, replayed, record_error })
}
