//! Bounded fuzzing of the Hugging Face checkpoint loader (`HfCheckpoint`, `config_from_json`,
//! `export`); runs in CI, a few seconds in release.
//!
//! The loader must answer every input with `Ok` or `Err`, never a panic, a hang or an
//! allocation the input cannot justify: random bytes as `model.safetensors`, a valid small
//! checkpoint with bytes flipped, cut short or extended, its JSON header rewritten with
//! extreme fields (header length, shapes, offsets, dtypes, names), hostile `config.json`
//! values, and hostile shard indexes. A per-thread counting allocator bounds what opening and
//! reading a checkpoint may allocate. An opened checkpoint must then read every tensor its
//! config needs, and refuse wrong shapes and missing names with an error.
//!
//! The loader does not read `tokenizer.json`, so the checkpoints here have none.
//!
//! `PROPTEST_CASES=<n>` raises every case count (to fuzz longer).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use half::{bf16, f16};
use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestRunner};
use serde_json::{json, Map, Value};
use sparse_tc::model::config::{Arch, Config, RopeStyle};
use sparse_tc::model::load::safetensors::{config_from_json, config_to_json, export, HfCheckpoint};
use sparse_tc::model::weights::{tensor_names, TensorSource, TensorSpec};
use sparse_tc::Error;

#[path = "common/counting_alloc.rs"]
mod counting_alloc;

use counting_alloc::peak_alloc;

#[global_allocator]
static ALLOC: counting_alloc::Counting = counting_alloc::Counting;

/// What opening and reading a checkpoint of `len` input bytes (config and tensor files) may
/// allocate at once: parsed headers and f32 copies of the data, with room for growth, plus a
/// constant no field can change.
fn budget(len: usize) -> usize {
    16 * len + 512 * 1024
}

// ---- Inputs. ----

/// Case count: `PROPTEST_CASES` when set, else `default` (bounded for CI).
fn runner(default: u32) -> TestRunner {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    TestRunner::new(RunnerConfig { cases, failure_persistence: None, ..RunnerConfig::default() })
}

/// A fresh directory under the system's temp dir, unique per case, removed on drop (also when
/// the case panics).
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("stc-fuzz-st-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn write(&self, name: &str, bytes: &[u8]) {
        std::fs::write(self.0.join(name), bytes).unwrap();
    }

    /// A checkpoint of `config` bytes and `model` bytes as `model.safetensors`.
    fn checkpoint(config: &[u8], model: &[u8]) -> Self {
        let d = TempDir::new();
        d.write("config.json", config);
        d.write("model.safetensors", model);
        d
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The tiny LLaMA the base checkpoint holds (grouped-query attention, untied head).
fn base_config() -> Config {
    Config {
        name: "llama".into(),
        arch: Arch::Llama,
        vocab: 12,
        hidden: 8,
        ffn: 6,
        layers: 1,
        heads: 2,
        kv_heads: 1,
        max_seq: 16,
        rope_theta: 10000.0,
        rope_style: RopeStyle::HalfSplit,
        norm_eps: 1e-5,
        tie_embeddings: false,
        eos: vec![2],
        bos: Some(1),
    }
}

fn base_config_json() -> &'static [u8] {
    static B: OnceLock<Vec<u8>> = OnceLock::new();
    B.get_or_init(|| serde_json::to_vec_pretty(&config_to_json(&base_config())).unwrap())
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Dt {
    F32,
    F16,
    Bf16,
}

impl Dt {
    fn name(self) -> &'static str {
        match self {
            Dt::F32 => "F32",
            Dt::F16 => "F16",
            Dt::Bf16 => "BF16",
        }
    }
    fn encode(self, v: f32) -> Vec<u8> {
        match self {
            Dt::F32 => v.to_le_bytes().to_vec(),
            Dt::F16 => f16::from_f32(v).to_le_bytes().to_vec(),
            Dt::Bf16 => bf16::from_f32(v).to_le_bytes().to_vec(),
        }
    }
}

/// One tensor of a safetensors file under construction: its header entry is built from these
/// fields as JSON values, so tests can put anything in them.
#[derive(Clone, Debug)]
struct Entry {
    name: String,
    dtype: Value,
    shape: Value,
    offsets: Value,
}

/// One tensor of the base checkpoint: its spec, dtype, byte range in the data, values.
struct Tensor {
    spec: TensorSpec,
    dt: Dt,
    range: (usize, usize),
    values: Vec<f32>,
}

/// The base checkpoint's tensors: every tensor the config needs, dtypes cycling through
/// F32, F16 and BF16, values exact in each (quarters between -2 and 2).
struct Base {
    entries: Vec<Entry>,
    data: Vec<u8>,
    tensors: Vec<Tensor>,
    /// The whole `model.safetensors`.
    file: Vec<u8>,
}

fn base() -> &'static Base {
    static B: OnceLock<Base> = OnceLock::new();
    B.get_or_init(|| {
        let mut entries = vec![];
        let mut data = vec![];
        let mut tensors = vec![];
        for (i, spec) in tensor_names(&base_config()).into_iter().enumerate() {
            let dt = [Dt::F32, Dt::F16, Dt::Bf16][i % 3];
            let n = spec.rows * spec.cols;
            let values: Vec<f32> = (0..n).map(|j| ((i * 7 + j * 5) % 17) as f32 * 0.25 - 2.0).collect();
            let start = data.len();
            for &v in &values {
                data.extend(dt.encode(v));
            }
            let shape = if spec.rows == 1 { json!([spec.cols]) } else { json!([spec.rows, spec.cols]) };
            entries.push(Entry { name: spec.name.clone(), dtype: json!(dt.name()), shape, offsets: json!([start, data.len()]) });
            tensors.push(Tensor { spec, dt, range: (start, data.len()), values });
        }
        let file = st_file(&header(&entries, &[]), None, &data);
        Base { entries, data, tensors, file }
    })
}

/// The JSON header of `entries`, plus `extra` top-level keys (e.g. `__metadata__`).
fn header(entries: &[Entry], extra: &[(String, Value)]) -> Vec<u8> {
    let mut m = Map::new();
    for e in entries {
        m.insert(e.name.clone(), json!({ "dtype": e.dtype, "shape": e.shape, "data_offsets": e.offsets }));
    }
    for (k, v) in extra {
        m.insert(k.clone(), v.clone());
    }
    serde_json::to_vec(&Value::Object(m)).unwrap()
}

/// A safetensors file: the 8-byte little-endian header length (`len`, or the true one), the
/// header padded with spaces to a multiple of 8 (as the reference writer does), the data.
fn st_file(header: &[u8], len: Option<u64>, data: &[u8]) -> Vec<u8> {
    let mut h = header.to_vec();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut b = len.unwrap_or(h.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(&h);
    b.extend_from_slice(data);
    b
}

/// Specs no tensor of an opened base-shaped checkpoint can satisfy: wrong shapes of real
/// names (also with products that overflow), and names that are not there.
fn wrong_specs(c: &Config) -> Vec<TensorSpec> {
    let spec = |name: &str, rows, cols| TensorSpec { name: name.into(), rows, cols };
    let mut out = vec![
        spec("no.such.tensor", 1, 1),
        spec("", 1, 1),
        spec("model.layers.99.self_attn.q_proj.weight", c.hidden, c.hidden),
        spec("model.layers.0.self_attn.q_proj.weight\0", c.hidden, c.hidden),
    ];
    for t in tensor_names(c) {
        out.push(spec(&t.name, t.rows + 1, t.cols));
        out.push(spec(&t.name, t.rows, t.cols + 1));
        out.push(spec(&t.name, usize::MAX, usize::MAX));
        out.push(spec(&t.name, usize::MAX, 2));
        out.push(spec(&t.name, 0, 0));
        out.push(spec(&t.name, 0, t.rows * t.cols));
        if t.rows > 1 {
            // The same number of values, flattened or transposed.
            out.push(spec(&t.name, 1, t.rows * t.cols));
            if t.rows != t.cols {
                out.push(spec(&t.name, t.cols, t.rows));
            }
        } else if t.cols > 1 {
            out.push(spec(&t.name, t.cols, 1));
        }
    }
    out
}

/// Everything a caller might do with an opened checkpoint; must not panic whatever it holds.
/// Opening checked every tensor the config needs, so each must read; wrong shapes and missing
/// names must be refused.
fn exercise(ck: &HfCheckpoint) {
    let c = ck.config().clone();
    c.validate().expect("an opened checkpoint's config validates");
    let _ = ck.describe();
    for spec in tensor_names(&c) {
        let v = ck.tensor(&spec).unwrap_or_else(|e| panic!("{} of an opened checkpoint: {e}", spec.name));
        assert_eq!(v.len(), spec.rows * spec.cols, "{}", spec.name);
    }
    for spec in wrong_specs(&c) {
        assert!(ck.tensor(&spec).is_err(), "{spec:?} was read");
    }
}

/// Opens `dir` under the allocation budget for `input_len` bytes and exercises what opens.
fn open_bounded(dir: &Path, input_len: usize) -> Result<(), Error> {
    let (r, peak) = peak_alloc(|| HfCheckpoint::open(dir).map(|ck| exercise(&ck)));
    assert!(peak <= budget(input_len), "opening {input_len} bytes allocated {peak} at once");
    r
}

/// Writes `model` as the base config's `model.safetensors`, opens it, exercises it.
fn check_model(model: &[u8]) -> Result<(), Error> {
    let d = TempDir::checkpoint(base_config_json(), model);
    open_bounded(d.path(), model.len() + base_config_json().len())
}

fn err_text(r: Result<(), Error>) -> String {
    match r {
        Ok(()) => panic!("accepted"),
        Err(e) => e.to_string(),
    }
}

// ---- (1) A valid checkpoint loads and reads back what was written. ----

#[test]
fn base_checkpoint_loads_and_reads_back() {
    let b = base();
    let d = TempDir::checkpoint(base_config_json(), &b.file);
    let ck = HfCheckpoint::open(d.path()).unwrap();
    assert_eq!(ck.config(), &base_config());
    for Tensor { spec, dt, values, .. } in &b.tensors {
        assert_eq!(&ck.tensor(spec).unwrap(), values, "{} ({dt:?})", spec.name);
    }
    exercise(&ck);
    // Errors name what is wrong.
    let q = &b.tensors[2].spec;
    let e = ck.tensor(&TensorSpec { rows: q.cols, cols: q.rows + 1, ..q.clone() }).unwrap_err().to_string();
    assert!(e.contains(&q.name) && e.contains("shape"), "{e}");
    let e = ck.tensor(&TensorSpec { name: "nope.weight".into(), rows: 1, cols: 1 }).unwrap_err().to_string();
    assert!(e.contains("nope.weight") && e.contains("missing"), "{e}");
    drop(ck);
    // The same tensors through the reference writer (the `safetensors` crate) read the same.
    let views: Vec<_> = b
        .tensors
        .iter()
        .map(|Tensor { spec: s, dt, range: (a, z), .. }| {
            let dtype = match dt {
                Dt::F32 => safetensors::Dtype::F32,
                Dt::F16 => safetensors::Dtype::F16,
                Dt::Bf16 => safetensors::Dtype::BF16,
            };
            let shape = if s.rows == 1 { vec![s.cols] } else { vec![s.rows, s.cols] };
            (s.name.clone(), safetensors::tensor::TensorView::new(dtype, shape, &b.data[*a..*z]).unwrap())
        })
        .collect();
    let reference = safetensors::serialize(views, None).unwrap();
    let d2 = TempDir::checkpoint(base_config_json(), &reference);
    let ck = HfCheckpoint::open(d2.path()).unwrap();
    for Tensor { spec, values, .. } in &b.tensors {
        assert_eq!(&ck.tensor(spec).unwrap(), values, "{}", spec.name);
    }
    // Missing files.
    std::fs::remove_file(d.path().join("model.safetensors")).unwrap();
    assert!(HfCheckpoint::open(d.path()).is_err());
    std::fs::remove_file(d2.path().join("config.json")).unwrap();
    assert!(HfCheckpoint::open(d2.path()).is_err());
    assert!(HfCheckpoint::open(&d.path().join("no-such-dir")).is_err());
}

/// A tensor source of deterministic values of every magnitude f16 has (and some it has not).
struct Values {
    config: Config,
    seed: u64,
}

impl TensorSource for Values {
    fn config(&self) -> &Config {
        &self.config
    }
    fn tensor(&self, spec: &TensorSpec) -> Result<Vec<f32>, Error> {
        let mut s = self.seed ^ spec.name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
        Ok((0..spec.rows * spec.cols)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                match s % 16 {
                    0 => 0.0,
                    1 => 1e-7,
                    2 => -70000.0, // beyond f16: -inf
                    3 => 65504.0,
                    _ => ((s >> 20) % 20001) as f32 / 64.0 - 156.0,
                }
            })
            .collect())
    }
    fn describe(&self) -> String {
        "fuzz values".into()
    }
}

/// Random small configs of both architectures, exported (with and without pruning) and opened
/// again: the same config, and every tensor as its f16 rounding (or zero where pruned).
#[test]
fn export_round_trips() {
    let strategy = (any::<bool>(), 1usize..4, 1usize..3, 1usize..5, 1usize..10, 1usize..3, 1usize..20, 1usize..40, any::<bool>(), any::<u64>(), any::<bool>());
    runner(40)
        .run(&strategy, |(opt, kv, group, half_head, ffn, layers, vocab, max_seq, tie, seed, prune)| {
            let heads = kv * group;
            let config = Config {
                name: if opt { "opt" } else { "llama" }.into(),
                arch: if opt { Arch::Opt } else { Arch::Llama },
                vocab,
                hidden: heads * 2 * half_head,
                ffn,
                layers,
                heads,
                kv_heads: if opt { heads } else { kv },
                max_seq,
                rope_theta: if opt { 0.0 } else { 500000.0 },
                rope_style: RopeStyle::HalfSplit,
                norm_eps: if opt { 1e-5 } else { 1e-6 },
                tie_embeddings: tie,
                eos: if vocab > 2 { vec![vocab as u32 - 1, 0] } else { vec![0] },
                bos: Some(0),
            };
            config.validate().unwrap();
            let src = Values { config: config.clone(), seed };
            let d = TempDir::new();
            let mut calls = 0;
            export(&src, if prune { 0.5 } else { 0.0 }, d.path(), &mut |_, _| calls += 1).unwrap();
            prop_assert_eq!(calls, tensor_names(&config).len());
            let ck = HfCheckpoint::open(d.path()).unwrap();
            prop_assert_eq!(ck.config(), &config);
            exercise(&ck);
            for spec in tensor_names(&config) {
                let want: Vec<f32> = src.tensor(&spec).unwrap().iter().map(|v| f16::from_f32(*v).to_f32()).collect();
                let got = ck.tensor(&spec).unwrap();
                // Every linear weight is pruned, a one-row one too (a 1×2 gate_proj keeps one).
                let linear = spec.name.ends_with("proj.weight") || (spec.name.contains(".fc") && spec.name.ends_with(".weight"));
                if prune && linear {
                    prop_assert!(got.iter().zip(&want).all(|(g, w)| g == w || *g == 0.0), "{}", spec.name);
                    let zeros = got.iter().filter(|v| **v == 0.0).count();
                    prop_assert!(zeros >= got.len() / 2, "{}: {zeros} zeros of {}", spec.name, got.len());
                } else {
                    prop_assert_eq!(got, want, "{}", spec.name);
                }
            }
            Ok(())
        })
        .unwrap();
}

// ---- (2)–(4) Random, damaged, cut and extended files. ----

#[test]
fn random_bytes_never_panic() {
    runner(1500)
        .run(&proptest::collection::vec(any::<u8>(), 0..600), |bytes| {
            let _ = check_model(&bytes);
            // The same bytes behind a header length that fits them, and as a header.
            let _ = check_model(&st_file(&bytes, None, &[]));
            let _ = check_model(&st_file(&bytes, Some(bytes.len() as u64 / 2), &[]));
            Ok(())
        })
        .unwrap();
}

#[test]
fn flipped_bytes_never_panic() {
    let len = base().file.len();
    // The header (where every byte matters) most of the time, anywhere otherwise.
    let header_end = 8 + u64::from_le_bytes(base().file[..8].try_into().unwrap()) as usize;
    let at = prop_oneof![3 => 0..header_end, 1 => 0..len];
    let flips = proptest::collection::vec((at, any::<u8>()), 1..6);
    runner(2000)
        .run(&flips, |flips| {
            let mut b = base().file.clone();
            for (i, v) in flips {
                b[i] = v;
            }
            let _ = check_model(&b);
            Ok(())
        })
        .unwrap();
}

#[test]
fn truncated_or_extended_is_refused() {
    let len = base().file.len();
    runner(600)
        .run(&(0..len, proptest::collection::vec(any::<u8>(), 1..64)), |(cut, tail)| {
            // The header states the file's exact length: cut or extended, it must be refused.
            prop_assert!(check_model(&base().file[..cut]).is_err(), "a cut file opened");
            let mut b = base().file.clone();
            b.extend_from_slice(&tail);
            prop_assert!(check_model(&b).is_err(), "an extended file opened");
            Ok(())
        })
        .unwrap();
}

// ---- (5) Extreme header fields. ----

/// One change to the base file's header or layout.
#[derive(Clone, Debug)]
enum Edit {
    /// Write this over the 8-byte header length.
    HeaderLen(u64),
    Dtype(usize, Value),
    Shape(usize, Value),
    Offsets(usize, Value),
    /// Exchange the data offsets of two tensors.
    SwapOffsets(usize, usize),
    Rename(usize, String),
    Remove(usize),
    /// Add a top-level key (a tensor, `__metadata__`, junk).
    Extra(String, Value),
    /// Cut this many bytes off the data (modulo its length), or add them.
    CutData(usize),
    PadData(usize),
}

/// The base file with `edits` applied (entries indexed modulo their count).
fn edited(edits: &[Edit]) -> Vec<u8> {
    let b = base();
    let mut entries: Vec<Option<Entry>> = b.entries.iter().cloned().map(Some).collect();
    let n = entries.len();
    let mut extra = vec![];
    let mut len = None;
    let mut data = b.data.clone();
    for e in edits {
        match e {
            Edit::HeaderLen(v) => len = Some(*v),
            Edit::Dtype(i, v) => entries[i % n].iter_mut().for_each(|e| e.dtype = v.clone()),
            Edit::Shape(i, v) => entries[i % n].iter_mut().for_each(|e| e.shape = v.clone()),
            Edit::Offsets(i, v) => entries[i % n].iter_mut().for_each(|e| e.offsets = v.clone()),
            Edit::SwapOffsets(i, j) => {
                let (oi, oj) = (entries[i % n].as_ref().map(|e| e.offsets.clone()), entries[j % n].as_ref().map(|e| e.offsets.clone()));
                if let (Some(oi), Some(oj)) = (oi, oj) {
                    entries[i % n].as_mut().unwrap().offsets = oj;
                    entries[j % n].as_mut().unwrap().offsets = oi;
                }
            }
            Edit::Rename(i, name) => entries[i % n].iter_mut().for_each(|e| e.name = name.clone()),
            Edit::Remove(i) => entries[i % n] = None,
            Edit::Extra(k, v) => extra.push((k.clone(), v.clone())),
            Edit::CutData(k) => data.truncate(data.len() - k % (data.len() + 1)),
            Edit::PadData(k) => data.resize(data.len() + k, 0x3c),
        }
    }
    let entries: Vec<Entry> = entries.into_iter().flatten().collect();
    st_file(&header(&entries, &extra), len, &data)
}

/// Values that stress a size or offset: the extremes of 64 and 32 bits, the data's length
/// and its neighbours, small numbers, anything.
fn extreme_u64() -> impl Strategy<Value = u64> {
    let data_len = base().data.len() as u64;
    prop_oneof![
        Just(0u64),
        Just(1),
        Just(2),
        Just(u64::MAX),
        Just(u64::MAX - 1),
        Just(u64::MAX - 7),
        Just(u64::MAX / 2),
        Just(1 << 63),
        Just(1 << 62),
        Just(1 << 32),
        Just(u32::MAX as u64),
        Just(i32::MAX as u64),
        Just(100_000_000),
        Just(100_000_001),
        Just(data_len),
        Just(data_len - 1),
        Just(data_len + 1),
        0..data_len + 16,
        any::<u64>(),
    ]
}

/// A JSON value for a size or offset: mostly extreme unsigned numbers, sometimes of another
/// kind (negative, fractional, string, null).
fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        8 => extreme_u64().prop_map(|v| json!(v)),
        1 => prop_oneof![Just(json!(-1)), Just(json!(i64::MIN)), Just(json!(1.5)), Just(json!(1e300)), Just(json!("8")), Just(Value::Null)],
    ]
}

fn dtype() -> impl Strategy<Value = Value> {
    let names = [
        "F32", "F16", "BF16", "F64", "I64", "U64", "I32", "U32", "I16", "U16", "I8", "U8", "BOOL", "F8_E4M3", "F8_E5M2",
        "F8_E8M0", "F6_E2M3", "F6_E3M2", "F4", "C64", "f32", "", "F32 ", "Q4_0",
    ];
    prop_oneof![
        8 => proptest::sample::select(names.to_vec()).prop_map(|s| json!(s)),
        1 => prop_oneof![Just(json!(32)), Just(Value::Null), Just(json!(["F32"]))],
    ]
}

fn edit() -> impl Strategy<Value = Edit> {
    let n = base().entries.len();
    let names: Vec<String> = base().entries.iter().map(|e| e.name.clone()).chain(["".into(), "__metadata__".into(), "x".into()]).collect();
    let shape = prop_oneof![
        6 => proptest::collection::vec(number(), 0..4).prop_map(Value::Array),
        1 => prop_oneof![Just(json!("8")), Just(Value::Null), Just(json!({}))],
    ];
    let offsets = prop_oneof![
        6 => (number(), number()).prop_map(|(a, b)| json!([a, b])),
        1 => proptest::collection::vec(number(), 0..4).prop_map(Value::Array),
        1 => prop_oneof![Just(Value::Null), Just(json!(0)), Just(json!({"0": 0}))],
    ];
    let extra_value = prop_oneof![
        Just(json!({"format": "pt"})),
        Just(json!({"format": 1})),
        Just(json!(["F32"])),
        Just(json!({"dtype": "F32", "shape": [0], "data_offsets": [0, 0]})),
        Just(json!({"dtype": "F32", "shape": [1], "data_offsets": [0, 4]})),
        Just(json!({"dtype": "F32", "shape": [2], "data_offsets": [base().data.len(), base().data.len() + 8]})),
    ];
    prop_oneof![
        2 => extreme_u64().prop_map(Edit::HeaderLen),
        3 => (0..n, dtype()).prop_map(|(i, v)| Edit::Dtype(i, v)),
        4 => (0..n, shape).prop_map(|(i, v)| Edit::Shape(i, v)),
        4 => (0..n, offsets).prop_map(|(i, v)| Edit::Offsets(i, v)),
        2 => (0..n, 0..n).prop_map(|(i, j)| Edit::SwapOffsets(i, j)),
        1 => (0..n, proptest::sample::select(names)).prop_map(|(i, s)| Edit::Rename(i, s)),
        1 => (0..n).prop_map(Edit::Remove),
        1 => (proptest::sample::select(vec!["__metadata__", "extra", "model.norm.weight"]), extra_value)
            .prop_map(|(k, v)| Edit::Extra(k.to_string(), v)),
        1 => any::<usize>().prop_map(Edit::CutData),
        1 => (1usize..64).prop_map(Edit::PadData),
    ]
}

#[test]
fn extreme_header_fields_never_panic() {
    runner(2500)
        .run(&proptest::collection::vec(edit(), 1..4), |edits| {
            let _ = check_model(&edited(&edits));
            Ok(())
        })
        .unwrap();
}

/// Named extreme cases, each refused (the reader must check each before trusting it).
#[test]
fn extreme_header_fields_are_refused() {
    let b = base();
    let data_len = b.data.len() as u64;
    let true_len = u64::from_le_bytes(b.file[..8].try_into().unwrap());
    let (norm, q, last) = (1, 2, b.entries.len() - 1); // F16 [8]; BF16 [8, 8]; BF16 [12, 8]
    let (q_start, q_end) = b.tensors[q].range;
    let cases: Vec<(&str, Vec<Edit>)> = vec![
        ("header length u64::MAX", vec![Edit::HeaderLen(u64::MAX)]),
        ("header length u64::MAX - 7 (+8 wraps)", vec![Edit::HeaderLen(u64::MAX - 7)]),
        ("header length 2^63", vec![Edit::HeaderLen(1 << 63)]),
        ("header length over the 100 MB limit", vec![Edit::HeaderLen(100_000_001)]),
        ("header length 0", vec![Edit::HeaderLen(0)]),
        ("header length one short", vec![Edit::HeaderLen(true_len - 1)]),
        ("header length one long", vec![Edit::HeaderLen(true_len + 1)]),
        ("header length the whole file", vec![Edit::HeaderLen(b.file.len() as u64)]),
        ("shape [u64::MAX]", vec![Edit::Shape(norm, json!([u64::MAX]))]),
        ("shape [2^32, 2^32] (product wraps to 0)", vec![Edit::Shape(q, json!([1u64 << 32, 1u64 << 32]))]),
        ("shape [2^63, 2] (bytes wrap)", vec![Edit::Shape(q, json!([1u64 << 63, 2]))]),
        ("shape [0, u64::MAX, u64::MAX]", vec![Edit::Shape(q, json!([0, u64::MAX, u64::MAX]))]),
        ("shape [u64::MAX, u64::MAX, 0]", vec![Edit::Shape(q, json!([u64::MAX, u64::MAX, 0]))]),
        ("negative shape", vec![Edit::Shape(norm, json!([-8]))]),
        ("fractional shape", vec![Edit::Shape(norm, json!([8.0]))]),
        ("scalar shape", vec![Edit::Shape(norm, json!([]))]),
        ("shape smaller than its bytes", vec![Edit::Shape(q, json!([8, 4]))]),
        ("same count, another shape", vec![Edit::Shape(q, json!([4, 16]))]),
        ("same count, three dimensions", vec![Edit::Shape(q, json!([2, 4, 8]))]),
        ("offsets to u64::MAX", vec![Edit::Offsets(norm, json!([b.tensors[norm].range.0, u64::MAX]))]),
        ("offsets past the end", vec![Edit::Offsets(last, json!([data_len + 8, data_len + 8 + 192]))]),
        ("end past the end", vec![Edit::Offsets(last, json!([b.tensors[last].range.0, data_len + 2]))]),
        ("reversed offsets", vec![Edit::Offsets(q, json!([q_end, q_start]))]),
        ("overlapping offsets", vec![Edit::Offsets(q, json!([q_start - 4, q_end - 4]))]),
        ("a gap between tensors", vec![Edit::Offsets(q, json!([q_start + 2, q_end + 2]))]),
        ("three offsets", vec![Edit::Offsets(q, json!([q_start, q_end, q_end]))]),
        ("negative offset", vec![Edit::Offsets(q, json!([-1, q_end]))]),
        ("F64 over F16 bytes", vec![Edit::Dtype(norm, json!("F64"))]),
        ("I16 over F16 bytes (size fits, type does not)", vec![Edit::Dtype(norm, json!("I16"))]),
        ("U16 over BF16 bytes", vec![Edit::Dtype(q, json!("U16"))]),
        ("I32 over F32 bytes", vec![Edit::Dtype(0, json!("I32"))]),
        ("F4 over F16 bytes", vec![Edit::Dtype(norm, json!("F4"))]),
        ("F8_E4M3 over a doubled shape", vec![Edit::Dtype(norm, json!("F8_E4M3")), Edit::Shape(norm, json!([16]))]),
        ("lower-case dtype", vec![Edit::Dtype(norm, json!("f16"))]),
        ("unknown dtype", vec![Edit::Dtype(norm, json!("Q4_0"))]),
        ("numeric dtype", vec![Edit::Dtype(norm, json!(16))]),
        ("a tensor removed (leaves a gap)", vec![Edit::Remove(q)]),
        ("the last tensor removed with its data", vec![Edit::Remove(last), Edit::CutData((data_len - b.tensors[last].range.0 as u64) as usize)]),
        ("a tensor renamed (needed one missing)", vec![Edit::Rename(q, "model.layers.0.self_attn.q_proj.weight2".into())]),
        ("duplicate name", vec![Edit::Rename(q, b.entries[norm].name.clone())]),
        ("a tensor named __metadata__", vec![Edit::Rename(q, "__metadata__".into())]),
        ("__metadata__ not strings", vec![Edit::Extra("__metadata__".into(), json!({"format": 1}))]),
        ("an extra tensor past the end", vec![Edit::Extra("x".into(), json!({"dtype": "F32", "shape": [2], "data_offsets": [data_len, data_len + 8]}))]),
        ("data cut", vec![Edit::CutData(1)]),
        ("data padded", vec![Edit::PadData(8)]),
    ];
    for (what, edits) in cases {
        let r = check_model(&edited(&edits));
        assert!(r.is_err(), "{what}: opened");
    }
    // Headers that are not a JSON object of tensors.
    for h in [&b"[]"[..], b"null", b"{", b"\"x\"", b"{\"a\": 1}", &[0xff, 0xfe, b'{', b'}'], "[".repeat(100_000).as_bytes(), &[b' '; 64]] {
        let r = check_model(&st_file(h, None, &b.data));
        assert!(r.is_err(), "header {:?}: opened", String::from_utf8_lossy(&h[..h.len().min(16)]));
    }
    // A file of 0..8 bytes (no room for the header length).
    for n in 0..9 {
        assert!(check_model(&b.file[..n]).is_err());
    }
    // The loader names the tensor and what is wrong with it when the file itself is valid.
    let e = err_text(check_model(&edited(&[Edit::Shape(q, json!([4, 16]))])));
    assert!(e.contains(&b.entries[q].name) && e.contains("shape"), "{e}");
    let e = err_text(check_model(&edited(&[Edit::Dtype(0, json!("I32"))])));
    assert!(e.contains(&b.entries[0].name) && e.contains("I32"), "{e}");
    let e = err_text(check_model(&edited(&[Edit::Rename(q, "renamed".into())])));
    assert!(e.contains(&b.entries[q].name) && e.contains("missing"), "{e}");
    // Valid variations open: `__metadata__`, an unneeded extra tensor, and two same-sized
    // tensors of one dtype whose offsets are exchanged (out of order in the header, which
    // safetensors allows), each then reading the other's data.
    check_model(&edited(&[Edit::Extra("__metadata__".into(), json!({"format": "pt"}))])).unwrap();
    check_model(&edited(&[
        Edit::Extra("extra".into(), json!({"dtype": "U8", "shape": [2, 4], "data_offsets": [data_len, data_len + 8]})),
        Edit::PadData(8),
    ]))
    .unwrap();
    let o = 5; // o_proj: BF16 [8, 8], like q
    assert_eq!((b.tensors[o].dt, &b.entries[o].shape), (b.tensors[q].dt, &b.entries[q].shape));
    let d = TempDir::checkpoint(base_config_json(), &edited(&[Edit::SwapOffsets(q, o)]));
    let ck = HfCheckpoint::open(d.path()).unwrap();
    assert_eq!(ck.tensor(&b.tensors[q].spec).unwrap(), b.tensors[o].values);
    assert_eq!(ck.tensor(&b.tensors[o].spec).unwrap(), b.tensors[q].values);
}

// ---- (6) Hostile config.json. ----

/// The keys a config may have (what `config_to_json` writes and what the reader refuses).
const KEYS: [&str; 25] = [
    "model_type",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "ffn_dim",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "max_position_embeddings",
    "rope_theta",
    "rms_norm_eps",
    "tie_word_embeddings",
    "bos_token_id",
    "eos_token_id",
    "rope_scaling",
    "sliding_window",
    "word_embed_proj_dim",
    "do_layer_norm_before",
    "activation_function",
    "_name_or_path",
    "torch_dtype",
    "architectures",
    "enable_bias",
    "hidden_act",
];

/// Values for a config field: every JSON kind, numbers at the edges of every width the
/// fields go through (u64, usize, i32, u32, f32), and small ones.
fn hostile_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => proptest::sample::select(vec![
            json!(0),
            json!(1),
            json!(2),
            json!(3),
            json!(-1),
            json!(-8),
            json!(i64::MIN),
            json!(i64::MAX),
            json!(u64::MAX),
            json!(i32::MAX),
            json!(i32::MAX as u64 + 1),
            json!(u32::MAX),
            json!(u32::MAX as u64 + 1),
            json!(u32::MAX as u64 + 3),
            json!(1u64 << 40),
            json!(257),
            json!(512),
            json!(1.5),
            json!(8.0),
            json!(-0.0),
            json!(1e-300),
            json!(1e300),
            json!(3.5e38),
            json!(f64::MIN_POSITIVE),
            json!(f64::MAX),
            json!(1e-50),
            Value::Null,
            json!(true),
            json!(false),
            json!("8"),
            json!("llama"),
            json!("opt"),
            json!("mistral"),
            json!("relu"),
            json!(""),
            json!([]),
            json!([2, u64::MAX]),
            json!([1, -1, 4294967298u64]),
            json!({}),
            json!({"type": "linear", "factor": 2.0}),
        ]),
        2 => (0u64..600).prop_map(|v| json!(v)),
        1 => any::<i64>().prop_map(|v| json!(v)),
        1 => any::<u64>().prop_map(|v| json!(v)),
        1 => any::<f64>().prop_map(|v| json!(v)),
        1 => "\\PC{0,8}".prop_map(Value::String),
        1 => proptest::collection::vec((0u64..40).prop_map(|v| json!(v)), 0..4).prop_map(Value::Array),
    ]
}

/// A config object: the base LLaMA's or an OPT's, with a few keys set to hostile values or
/// removed.
fn hostile_config() -> impl Strategy<Value = Value> {
    let edits = proptest::collection::vec((proptest::sample::select(KEYS.to_vec()), proptest::option::weighted(0.85, hostile_value())), 0..5);
    (any::<bool>(), edits).prop_map(|(opt, edits)| {
        let mut c = base_config();
        if opt {
            c = Config { arch: Arch::Opt, kv_heads: c.heads, tie_embeddings: true, rope_theta: 0.0, ..c };
        }
        let mut v = config_to_json(&c);
        let m = v.as_object_mut().unwrap();
        for (k, value) in edits {
            match value {
                Some(value) => m.insert(k.to_string(), value),
                None => m.remove(k),
            };
        }
        v
    })
}

/// Reads `text` as a config.json; an accepted config must validate and agree with the JSON.
fn check_config(text: &[u8], json: Option<&Value>) -> Result<Config, Error> {
    let d = TempDir::new();
    d.write("config.json", text);
    let (r, peak) = peak_alloc(|| config_from_json(&d.path().join("config.json")));
    assert!(peak <= budget(text.len()), "config of {} bytes allocated {peak}", text.len());
    let c = r?;
    c.validate().expect("config_from_json returned a config that does not validate");
    assert!(c.parameter_count().is_some() && c.linear_parameter_count().is_some());
    if let Some(v) = json {
        let u = |k: &str| v.get(k).and_then(Value::as_u64);
        assert_eq!(u("hidden_size"), Some(c.hidden as u64));
        assert_eq!(u("vocab_size"), Some(c.vocab as u64));
        assert_eq!(u("num_hidden_layers"), Some(c.layers as u64));
        assert_eq!(u("num_attention_heads"), Some(c.heads as u64));
        assert_eq!(u("max_position_embeddings"), Some(c.max_seq as u64));
        let ffn = if c.arch == Arch::Opt { "ffn_dim" } else { "intermediate_size" };
        assert_eq!(u(ffn), Some(c.ffn as u64));
        // Token ids are kept as given, never wrapped into range.
        for (k, ids) in [("eos_token_id", c.eos.clone()), ("bos_token_id", c.bos.into_iter().collect())] {
            for id in ids {
                let given = match v.get(k) {
                    Some(Value::Array(a)) => a.iter().any(|x| x.as_u64() == Some(id as u64)),
                    Some(x) => x.as_u64() == Some(id as u64),
                    None => false,
                };
                assert!(given, "{k} = {id} not in {:?}", v.get(k));
            }
        }
    }
    Ok(c)
}

#[test]
fn hostile_configs_are_refused_or_valid() {
    runner(2500)
        .run(&hostile_config(), |v| {
            let text = serde_json::to_vec(&v).unwrap();
            if check_config(&text, Some(&v)).is_ok() {
                // An accepted config with the base tensors: opened (when they fit) or refused,
                // within the allocation budget whatever the config's sizes.
                let d = TempDir::checkpoint(&text, &base().file);
                let _ = open_bounded(d.path(), text.len() + base().file.len());
            }
            Ok(())
        })
        .unwrap();
    // Random text, and random bytes.
    runner(1000)
        .run(&prop_oneof![any::<String>().prop_map(String::into_bytes), proptest::collection::vec(any::<u8>(), 0..200)], |b| {
            let _ = check_config(&b, None);
            Ok(())
        })
        .unwrap();
}

/// One field of a `Config` set to a stressing value.
#[derive(Clone, Debug)]
enum Field {
    Size(usize, usize),
    Float(bool, f32),
    Eos(Vec<u32>),
    Bos(Option<u32>),
}

/// Any `Config` (as a caller could build it: a valid one with a few fields set to anything)
/// validates or is refused; an accepted LLaMA config round-trips through `config_to_json` and
/// `config_from_json`.
#[test]
fn validate_never_panics() {
    let size = prop_oneof![
        3 => 0usize..10,
        1 => proptest::sample::select(vec![16usize, 256, 257, 512, 1 << 20, i32::MAX as usize, i32::MAX as usize + 1, u32::MAX as usize, 1 << 40, usize::MAX / 2, usize::MAX]),
        1 => any::<usize>(),
    ];
    let float = prop_oneof![
        proptest::sample::select(vec![0.0f32, -0.0, 1.0, 1.5, 1e-6, 10000.0, f32::MAX, f32::MIN_POSITIVE, 1e-45, f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -1.0]),
        any::<f32>(),
    ];
    let id = prop_oneof![0u32..12, Just(u32::MAX), any::<u32>()];
    let field = prop_oneof![
        6 => (0usize..7, size).prop_map(|(i, v)| Field::Size(i, v)),
        2 => (any::<bool>(), float).prop_map(|(theta, v)| Field::Float(theta, v)),
        1 => proptest::collection::vec(id.clone(), 0..3).prop_map(Field::Eos),
        1 => proptest::option::of(id).prop_map(Field::Bos),
    ];
    let valid = (any::<bool>(), 1usize..5, 1usize..5, 1usize..129, 1usize..100, 1usize..4, 1usize..100_000, 1usize..10_000, any::<bool>());
    runner(4000)
        .run(&(valid, proptest::collection::vec(field, 0..3)), |((opt, kv, group, half_head, ffn, layers, vocab, max_seq, tie), fields)| {
            let heads = kv * group;
            let mut c = Config {
                name: "llama".into(),
                arch: if opt { Arch::Opt } else { Arch::Llama },
                vocab,
                hidden: heads * 2 * half_head,
                ffn,
                layers,
                heads,
                kv_heads: if opt { heads } else { kv },
                max_seq,
                rope_theta: 10000.0,
                rope_style: RopeStyle::HalfSplit,
                norm_eps: 1e-5,
                tie_embeddings: tie,
                eos: vec![0],
                bos: Some(0),
            };
            c.validate().unwrap();
            for f in fields {
                match f {
                    Field::Size(i, v) => *[&mut c.vocab, &mut c.hidden, &mut c.ffn, &mut c.layers, &mut c.heads, &mut c.kv_heads, &mut c.max_seq][i] = v,
                    Field::Float(true, v) => c.rope_theta = v,
                    Field::Float(false, v) => c.norm_eps = v,
                    Field::Eos(v) => c.eos = v,
                    Field::Bos(v) => c.bos = v,
                }
            }
            if c.validate().is_ok() {
                prop_assert!(c.parameter_count().is_some() && c.linear_parameter_count().is_some());
                prop_assert_eq!(c.head_dim() * c.heads, c.hidden);
                prop_assert!(c.eos.iter().chain(&c.bos).all(|&t| (t as usize) < c.vocab));
                if c.arch == Arch::Llama {
                    let text = serde_json::to_vec(&config_to_json(&c)).unwrap();
                    let back = check_config(&text, None).unwrap();
                    prop_assert_eq!(back, c);
                }
            }
            Ok(())
        })
        .unwrap();
}

/// Named hostile configs, each refused with an error naming the field.
#[test]
fn hostile_configs_are_refused_by_name() {
    let with = |edits: &[(&str, Value)]| {
        let mut v = config_to_json(&base_config());
        for (k, x) in edits {
            v[*k] = x.clone();
        }
        serde_json::to_vec(&v).unwrap()
    };
    let without = |k: &str| {
        let mut v = config_to_json(&base_config());
        v.as_object_mut().unwrap().remove(k);
        serde_json::to_vec(&v).unwrap()
    };
    let refused = |text: Vec<u8>, names: &str| match check_config(&text, None) {
        Ok(c) => panic!("accepted {:?} as {c:?}", String::from_utf8_lossy(&text)),
        Err(e) => assert!(e.to_string().contains(names), "{e:?} should name {names}"),
    };
    refused(with(&[("hidden_size", json!(-8))]), "hidden_size");
    refused(with(&[("hidden_size", json!(0))]), "hidden");
    refused(with(&[("hidden_size", json!(u64::MAX))]), "hidden");
    refused(with(&[("hidden_size", json!(8.5))]), "hidden_size");
    refused(with(&[("hidden_size", json!("8"))]), "hidden_size");
    refused(with(&[("hidden_size", json!(9))]), "not a multiple of heads");
    refused(with(&[("num_attention_heads", json!(0))]), "heads");
    refused(with(&[("num_attention_heads", json!(3))]), "hidden");
    refused(with(&[("num_key_value_heads", json!(3))]), "kv_heads");
    refused(with(&[("num_hidden_layers", json!(0))]), "layers");
    refused(with(&[("num_hidden_layers", json!(i32::MAX as u64 + 1))]), "layers");
    refused(with(&[("vocab_size", json!(2))]), "special token");
    refused(with(&[("max_position_embeddings", json!(i64::MIN))]), "max_position_embeddings");
    refused(with(&[("rope_theta", json!(1e300))]), "rope_theta");
    refused(with(&[("rope_theta", json!(0.5))]), "rope_theta");
    refused(with(&[("rms_norm_eps", json!(0))]), "norm_eps");
    refused(with(&[("rms_norm_eps", json!(1e-50))]), "norm_eps"); // 0 as f32
    refused(with(&[("hidden_size", json!(1024)), ("num_attention_heads", json!(2))]), "head_dim");
    refused(with(&[("intermediate_size", json!(1u64 << 40))]), "ffn");
    refused(with(&[("rope_scaling", json!({"type": "linear"}))]), "rope_scaling");
    refused(with(&[("model_type", json!("mistral")), ("sliding_window", json!(4096))]), "sliding");
    refused(with(&[("model_type", json!("gpt2"))]), "gpt2");
    refused(with(&[("model_type", json!(3))]), "model_type");
    refused(without("hidden_size"), "hidden_size");
    refused(without("vocab_size"), "vocab_size");
    refused(without("model_type"), "model_type");
    // Sizes that each fit but whose product overflows.
    refused(
        with(&[("hidden_size", json!(1u64 << 30)), ("num_attention_heads", json!(1u64 << 22)), ("num_key_value_heads", json!(1u64 << 22)), ("num_hidden_layers", json!(1u64 << 30)), ("intermediate_size", json!(1u64 << 30))]),
        "overflows",
    );
    // Token ids beyond u32 are refused, not wrapped into the vocabulary (4294967298 as u32
    // is 2, a valid id of the base vocabulary).
    refused(with(&[("eos_token_id", json!(u32::MAX as u64 + 3))]), "eos_token_id");
    refused(with(&[("eos_token_id", json!([2, u32::MAX as u64 + 3]))]), "eos_token_id");
    refused(with(&[("bos_token_id", json!(u32::MAX as u64 + 2))]), "bos_token_id");
    // OPT's own refusals.
    let mut opt = config_to_json(&Config { arch: Arch::Opt, kv_heads: 2, ..base_config() });
    opt["word_embed_proj_dim"] = json!(4);
    refused(serde_json::to_vec(&opt).unwrap(), "word_embed_proj_dim");
    opt["word_embed_proj_dim"] = json!(8);
    opt["activation_function"] = json!("gelu");
    refused(serde_json::to_vec(&opt).unwrap(), "relu");
    // Not JSON, or nested past the parser's depth limit.
    refused(b"{\"model_type\": ".to_vec(), "config.json");
    refused(vec![b'['; 1 << 16], "config.json");
    assert!(check_config(b"", None).is_err());
    // A valid config whose layer count the checkpoint cannot hold is refused before the
    // loader lists the tensors that many layers need (2^31 - 1 layers of this tiny model
    // pass validation, and their list would take hundreds of gigabytes).
    let text = with(&[("num_hidden_layers", json!(i32::MAX))]);
    check_config(&text, None).unwrap();
    let d = TempDir::checkpoint(&text, &base().file);
    let e = err_text(open_bounded(d.path(), text.len() + base().file.len()));
    assert!(e.contains("num_hidden_layers"), "{e}");
    // One layer more than the file holds: refused by the missing tensor's name.
    let text = with(&[("num_hidden_layers", json!(2))]);
    let d = TempDir::checkpoint(&text, &base().file);
    let e = err_text(open_bounded(d.path(), text.len() + base().file.len()));
    assert!(e.contains("model.layers.1.") && e.contains("missing"), "{e}");
}

// ---- Sharded checkpoints: hostile `model.safetensors.index.json`. ----

#[test]
fn hostile_shard_indexes_are_refused_or_valid() {
    let names = prop_oneof![
        4 => Just(json!("model.safetensors")),
        1 => proptest::sample::select(vec!["", ".", "..", "../model.safetensors", "/etc/passwd", "a/b", "missing.safetensors", "config.json", "model.safetensors\0"]).prop_map(|s| json!(s)),
        1 => "\\PC{0,12}".prop_map(Value::String),
        1 => proptest::sample::select(vec![json!(1), Value::Null, json!(["model.safetensors"])]),
    ];
    let index = prop_oneof![
        6 => proptest::collection::vec(("[a-z.]{0,12}", names), 0..6).prop_map(|kv| json!({ "weight_map": kv.into_iter().collect::<Map<_, _>>() })),
        1 => proptest::sample::select(vec![json!({}), json!({"weight_map": []}), json!({"weight_map": null}), json!([]), json!(null)]),
    ];
    runner(500)
        .run(&index, |index| {
            let d = TempDir::checkpoint(base_config_json(), &base().file);
            let text = serde_json::to_vec(&index).unwrap();
            d.write("model.safetensors.index.json", &text);
            let r = open_bounded(d.path(), text.len() + base().file.len() + base_config_json().len());
            // Only an index whose shards are all exactly `model.safetensors` opens.
            let shards: Vec<&Value> = index.get("weight_map").and_then(Value::as_object).map(|m| m.values().filter(|v| v.is_string()).collect()).unwrap_or_default();
            let ok = index.get("weight_map").is_some_and(Value::is_object) && !shards.is_empty() && shards.iter().all(|s| *s == "model.safetensors");
            prop_assert_eq!(r.is_ok(), ok, "{:?}", r.err());
            Ok(())
        })
        .unwrap();
    // Many distinct shard names (none there) are refused without a quadratic scan.
    let d = TempDir::checkpoint(base_config_json(), &base().file);
    let map: Map<String, Value> = (0..100_000).map(|i| (format!("t{i}"), json!(format!("shard-{i}.safetensors")))).collect();
    d.write("model.safetensors.index.json", &serde_json::to_vec(&json!({ "weight_map": map })).unwrap());
    let t = std::time::Instant::now();
    assert!(HfCheckpoint::open(d.path()).is_err());
    assert!(t.elapsed().as_secs() < 5, "{:?}", t.elapsed());
}
