//! Bounded fuzzing of the GGUF reader and the tokenizer (runs in CI, a few seconds in release).
//!
//! The reader must answer every input with `Ok` or `Err`, never a panic or a huge allocation:
//! random bytes, valid small files with bytes flipped, cut short or with extreme count and
//! length fields written over their headers. The tokenizer must encode any string without
//! panicking and decode it back to the same string.

use std::sync::OnceLock;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use sparse_tc::model::gguf::{GgmlType, Gguf, GgufWriter, MetaArray, MetaValue};
use sparse_tc::model::tokenizer::Tokenizer;
use sparse_tc::Error;

/// GPT-2's byte alphabet, for a vocabulary that can spell any byte.
fn byte_chars() -> Vec<char> {
    let mut next = 256u32;
    (0..=255u8)
        .map(|b| {
            let c = if matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF) {
                b as u32
            } else {
                next += 1;
                next - 1
            };
            char::from_u32(c).unwrap()
        })
        .collect()
}

/// A small but complete model file: hyperparameters, a byte-level tokenizer, and tensors of
/// each dequantizable family.
fn base_file() -> Vec<u8> {
    let mut tokens = vec!["<|endoftext|>".to_string(), "<|im_start|>".into(), "<|im_end|>".into()];
    let mut types = vec![3, 3, 3];
    for c in byte_chars() {
        tokens.push(c.to_string());
        types.push(1);
    }
    let merges = ["Ġ t", "h e", "Ġt he", "Ġ Ġ", "i n", "Ġ a"];
    for m in merges {
        tokens.push(m.replace(' ', ""));
        types.push(1);
    }
    let mut w = GgufWriter::new();
    w.kv("general.architecture", MetaValue::Str("llama".into()))
        .kv("llama.block_count", MetaValue::U32(1))
        .kv("llama.rope.freq_base", MetaValue::F32(10000.0))
        .kv("tokenizer.ggml.model", MetaValue::Str("gpt2".into()))
        .kv("tokenizer.ggml.pre", MetaValue::Str("smollm".into()))
        .kv("tokenizer.ggml.tokens", MetaValue::Array(MetaArray::Str(tokens)))
        .kv("tokenizer.ggml.token_type", MetaValue::Array(MetaArray::I32(types)))
        .kv(
            "tokenizer.ggml.merges",
            MetaValue::Array(MetaArray::Str(merges.iter().map(|s| s.to_string()).collect())),
        )
        .kv("tokenizer.ggml.bos_token_id", MetaValue::U32(1))
        .kv("tokenizer.ggml.eos_token_id", MetaValue::U32(2))
        .kv("t.nested", MetaValue::Array(MetaArray::Array(vec![MetaArray::U16(vec![1, 2])])));
    let data = |n: usize| (0..n).map(|i| (i * 37 % 251) as u8).collect::<Vec<u8>>();
    let f32s: Vec<u8> = (0..8).flat_map(|i| (i as f32 * 0.5).to_le_bytes()).collect();
    w.tensor("norm", &[8], GgmlType::F32, f32s).unwrap();
    w.tensor("q8", &[2, 32], GgmlType::Q8_0, data(68)).unwrap();
    w.tensor("q4_0", &[1, 32], GgmlType::Q4_0, data(18)).unwrap();
    w.tensor("q4_1", &[2, 32], GgmlType::Q4_1, data(40)).unwrap();
    w.tensor("q5_1", &[1, 32], GgmlType::Q5_1, data(24)).unwrap();
    w.tensor("q4_k", &[1, 256], GgmlType::Q4_K, data(144)).unwrap();
    w.tensor("q6_k", &[1, 256], GgmlType::Q6_K, data(210)).unwrap();
    w.tensor("f16", &[3], GgmlType::F16, data(6)).unwrap();
    w.tensor("q2_k", &[1, 256], GgmlType::Q2_K, data(84)).unwrap();
    w.to_bytes()
}

fn base() -> &'static [u8] {
    static B: OnceLock<Vec<u8>> = OnceLock::new();
    B.get_or_init(base_file)
}

/// Everything a caller might do with an opened file; must not panic whatever it holds.
fn exercise(g: &Gguf) {
    let _ = g.architecture();
    let _ = g.get_u64("llama.block_count");
    let _ = g.get_f32("llama.rope.freq_base");
    let _ = g.get_str_array("tokenizer.ggml.tokens");
    for t in g.tensors() {
        let _ = t.dims();
        match g.tensor_f32(t.name()) {
            Ok(v) => assert_eq!(v.len() as u64, t.n_elements()),
            Err(Error::UnsupportedDtype(_)) => {}
            Err(e) => panic!("{} of a validated file: {e}", t.name()),
        }
    }
    if let Ok(tok) = Tokenizer::from_gguf(g) {
        if let Ok(ids) = tok.encode("the cat <|im_end|> 12", true) {
            let _ = tok.decode(&ids);
        }
    }
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() })
}

#[test]
fn base_file_is_valid() {
    let g = Gguf::from_bytes(base()).unwrap();
    assert_eq!(g.tensor_count(), 9);
    exercise(&g);
    let tok = Tokenizer::from_gguf(&g).unwrap();
    assert_eq!(tok.decode(&tok.encode(" the in a", false).unwrap()).unwrap(), " the in a");
}

#[test]
fn random_bytes_never_panic() {
    runner(20_000)
        .run(&proptest::collection::vec(any::<u8>(), 0..600), |bytes| {
            if let Ok(g) = Gguf::from_bytes(&bytes) {
                exercise(&g);
            }
            // The same bytes behind a valid magic and version get further into the parser.
            let mut b = b"GGUF\x03\x00\x00\x00".to_vec();
            b.extend_from_slice(&bytes);
            if let Ok(g) = Gguf::from_bytes(&b) {
                exercise(&g);
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn flipped_bytes_never_panic() {
    let len = base().len();
    let flips = proptest::collection::vec((0..len, any::<u8>()), 1..8);
    runner(20_000)
        .run(&flips, |flips| {
            let mut b = base().to_vec();
            for (i, v) in flips {
                b[i] = v;
            }
            if let Ok(g) = Gguf::from_bytes(&b) {
                exercise(&g);
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn truncated_or_extended_never_panics() {
    let len = base().len();
    runner(3000)
        .run(&(0..len, proptest::collection::vec(any::<u8>(), 0..64)), |(cut, tail)| {
            assert!(Gguf::from_bytes(&base()[..cut]).is_err(), "a cut file parsed");
            // Extra bytes after the data are allowed and change nothing.
            let mut b = base().to_vec();
            b.extend_from_slice(&tail);
            let g = Gguf::from_bytes(&b).expect("trailing bytes");
            prop_assert_eq!(g.tensor_count(), 9);
            Ok(())
        })
        .unwrap();
}

/// Extreme values written over 4- or 8-byte fields anywhere in the headers (counts, string
/// and array lengths, types, dims, offsets).
#[test]
fn extreme_fields_never_panic() {
    let g = Gguf::from_bytes(base()).unwrap();
    let header_end = g.data_start() as usize;
    let extremes = prop_oneof![
        Just(u64::MAX),
        Just(u64::MAX / 2),
        Just(1u64 << 63),
        Just(1u64 << 32),
        Just(u32::MAX as u64),
        Just(0u64),
        Just(1u64),
        Just(base().len() as u64),
        Just(base().len() as u64 + 1),
        any::<u64>(),
    ];
    runner(20_000)
        .run(&(0..header_end, extremes, any::<bool>()), |(at, value, wide)| {
            let mut b = base().to_vec();
            let bytes = value.to_le_bytes();
            let n = if wide { 8 } else { 4 };
            let end = (at + n).min(b.len());
            b[at..end].copy_from_slice(&bytes[..end - at]);
            if let Ok(g) = Gguf::from_bytes(&b) {
                exercise(&g);
            }
            Ok(())
        })
        .unwrap();
    // The two header counts at their extremes.
    for (field, v) in [(8usize, u64::MAX), (16, u64::MAX), (8, 1 << 40), (16, 1 << 40)] {
        let mut b = base().to_vec();
        b[field..field + 8].copy_from_slice(&v.to_le_bytes());
        assert!(matches!(Gguf::from_bytes(&b), Err(Error::Format(_))));
    }
}

/// Valid files of random shape round-trip through the writer and the reader.
#[test]
fn random_valid_files_round_trip() {
    let kv = (
        "[a-z.]{1,12}",
        prop_oneof![
            any::<u32>().prop_map(MetaValue::U32),
            any::<i64>().prop_map(MetaValue::I64),
            any::<bool>().prop_map(MetaValue::Bool),
            "\\PC{0,12}".prop_map(MetaValue::Str),
            proptest::collection::vec(any::<i32>(), 0..20)
                .prop_map(|v| MetaValue::Array(MetaArray::I32(v))),
            proptest::collection::vec("\\PC{0,6}", 0..6)
                .prop_map(|v| MetaValue::Array(MetaArray::Str(v))),
        ],
    );
    let tensor = (
        1u64..4,
        1u64..3,
        prop_oneof![Just(GgmlType::F32), Just(GgmlType::Q8_0), Just(GgmlType::Q4_1)],
    );
    let alignment = prop_oneof![Just(None), Just(Some(8u32)), Just(Some(64)), Just(Some(256))];
    let strategy = (
        proptest::collection::btree_map(kv.0, kv.1, 0..8),
        proptest::collection::vec(tensor, 0..5),
        alignment,
        any::<u8>(),
    );
    runner(1000)
        .run(&strategy, |(kvs, tensors, alignment, seed)| {
            let mut w = GgufWriter::new();
            for (k, v) in &kvs {
                w.kv(k, v.clone());
            }
            if let Some(a) = alignment {
                w.kv("general.alignment", MetaValue::U32(a));
            }
            let mut expect = Vec::new();
            for (i, &(rows, blocks, ty)) in tensors.iter().enumerate() {
                let cols = blocks * ty.block_size();
                let n_bytes = rows * blocks * ty.type_size();
                let data: Vec<u8> = (0..n_bytes)
                    .map(|j| match ty {
                        // Keep scales finite: f32 values from small integers, f16 scales < 2.
                        GgmlType::F32 => {
                            [0u8, 0, 0x80, 0x3F][j as usize % 4].wrapping_add(seed % 2)
                        }
                        _ => (j as u8).wrapping_mul(seed | 1) & 0x3F,
                    })
                    .collect();
                let name = format!("t{i}");
                w.tensor(&name, &[rows, cols], ty, data.clone()).unwrap();
                expect.push((name, vec![rows, cols], ty, data));
            }
            let g = Gguf::from_bytes(&w.to_bytes()).unwrap();
            prop_assert_eq!(g.alignment(), alignment.map_or(32, u64::from));
            for (k, v) in &kvs {
                prop_assert_eq!(g.metadata(k), Some(v));
            }
            for (name, dims, ty, data) in &expect {
                let t = g.tensor_info(name).unwrap();
                prop_assert_eq!(&t.dims(), dims);
                prop_assert_eq!(t.ggml_type(), *ty);
                prop_assert_eq!(t.file_offset() % g.alignment(), 0);
                prop_assert_eq!(g.tensor_bytes(name).unwrap(), &data[..]);
                prop_assert_eq!(g.tensor_f32(name).unwrap().len() as u64, dims[0] * dims[1]);
            }
            Ok(())
        })
        .unwrap();
}

fn tiny_tokenizer() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| Tokenizer::from_gguf(&Gguf::from_bytes(base()).unwrap()).unwrap())
}

/// The SmolLM2 tokenizer when its file is present (see `.ci/fetch-smollm2`).
fn smollm2() -> Option<&'static Tokenizer> {
    static T: OnceLock<Option<Tokenizer>> = OnceLock::new();
    T.get_or_init(|| {
        let path = std::env::var_os("SPARSE_TC_SMOLLM2")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| {
                std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join(".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf")
            });
        if !path.is_file() {
            println!("SKIPPED tokenizer_fuzz (SmolLM2 part): {} not found", path.display());
            return None;
        }
        Some(Tokenizer::from_gguf(&Gguf::open(&path).unwrap()).unwrap())
    })
    .as_ref()
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,40}",
        any::<String>(),
        "[ \t\r\n0-9a-zA-Z<>|_]{0,40}",
        proptest::collection::vec(
            prop_oneof![
                Just("<|im_start|>".to_string()),
                Just("<|im_end|>".to_string()),
                Just("<|im_".to_string()),
                Just("  ".to_string()),
                Just("12".to_string()),
                Just("😀".to_string()),
                "\\PC{0,4}",
            ],
            0..10
        )
        .prop_map(|v| v.concat()),
    ]
}

#[test]
fn tokenizer_fuzz() {
    let tiny = tiny_tokenizer();
    let real = smollm2();
    runner(5000)
        .run(&text(), |s| {
            for t in [Some(tiny), real].into_iter().flatten() {
                let ids = t.encode(&s, false).unwrap();
                prop_assert_eq!(&t.decode(&ids).unwrap(), &s);
                let mut d = t.stream_decoder();
                let mut streamed = String::new();
                for &i in &ids {
                    streamed.push_str(&d.push(i).unwrap());
                }
                streamed.push_str(&d.finish());
                prop_assert_eq!(&streamed, &s);
                let with_bos = t.encode(&s, true).unwrap();
                prop_assert_eq!(&with_bos[1..], &ids[..]);
            }
            Ok(())
        })
        .unwrap();
    // Arbitrary ids (in range or not) decode or fail cleanly.
    runner(3000)
        .run(&proptest::collection::vec(0u32..300, 0..30), |ids| {
            let _ = tiny.decode(&ids);
            if let Some(r) = real {
                let ids: Vec<u32> = ids.iter().map(|i| i * 163 % r.vocab_size() as u32).collect();
                prop_assert_eq!(r.decode(&ids).unwrap(), r.hf().decode(&ids, false).unwrap());
            }
            Ok(())
        })
        .unwrap();
}
