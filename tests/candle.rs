//! `sparse_tc::candle::SparseLinear` (feature `candle`): the CPU op in CI, the CUDA op on the
//! GPU (feature `candle-cuda`), each against the plain API on the same data, bit for bit.
#![cfg(feature = "candle")]

mod common;

use candle_core::{DType, Device, Module, Tensor};
use common::{assert_close, random, Rng};
use half::{bf16, f16};
use sparse_tc::candle::SparseLinear;
use sparse_tc::{Element, SparseWeight};

/// A weight `m × k` with `sparsity` of each row zero (magnitude), as f16 values.
fn pruned<T: Element>(rng: &mut Rng, m: usize, k: usize, sparsity: f64) -> (SparseWeight<T>, Vec<T>) {
    let w = SparseWeight::prune_magnitude(m, k, &random::<T>(rng, m * k), sparsity).unwrap();
    let dense = w.to_dense();
    (w, dense)
}

fn tensor<T: Element + candle_core::WithDType>(v: &[T], shape: &[usize], dev: &Device) -> Tensor {
    Tensor::from_slice(v, shape, dev).unwrap()
}

fn values<T: candle_core::WithDType>(t: &Tensor) -> Vec<T> {
    t.flatten_all().unwrap().to_vec1::<T>().unwrap()
}

#[test]
fn cpu_forward_equals_the_cpu_linear() {
    let mut rng = Rng::new(11);
    let (m, k) = (96, 200);
    let (w, dense) = pruned::<f16>(&mut rng, m, k, 0.6);
    let layer = SparseLinear::new(&tensor(&dense, &[m, k], &Device::Cpu), None).unwrap();
    assert_eq!(layer.shape(), (m, k));
    // A [2, 3, k] batch: 6 tokens.
    let x = random::<f16>(&mut rng, 6 * k);
    let y = layer.forward(&tensor(&x, &[2, 3, k], &Device::Cpu)).unwrap();
    assert_eq!(y.dims(), [2, 3, m]);
    let got = values::<f16>(&y);
    assert_eq!(got, sparse_tc::cpu::linear_sparse(&x, 6, &w).unwrap());
    assert_close(&got, &x, &dense, 6, m, k);
}

#[test]
fn cpu_bias_non_contiguous_input_and_bf16() {
    let mut rng = Rng::new(12);
    let (m, k) = (64, 128);
    let (w, dense) = pruned::<bf16>(&mut rng, m, k, 0.5);
    let bias = random::<bf16>(&mut rng, m);
    let layer = SparseLinear::new(&tensor(&dense, &[m, k], &Device::Cpu), Some(tensor(&bias, &[m], &Device::Cpu))).unwrap();
    // The input as the transpose of a [k, 4] tensor: not contiguous, forward copies it.
    let xt = random::<bf16>(&mut rng, k * 4);
    let x = tensor(&xt, &[k, 4], &Device::Cpu).t().unwrap();
    let y = values::<bf16>(&layer.forward(&x).unwrap());
    let xs = values::<bf16>(&x);
    let plain = sparse_tc::cpu::linear_sparse(&xs, 4, &w).unwrap();
    // candle adds the bias in bf16: one more rounding of the plain result.
    for i in 0..4 {
        for j in 0..m {
            let want = bf16::from_f32(plain[i * m + j].to_f32() + bias[j].to_f32());
            assert_eq!(y[i * m + j], want, "y[{i}][{j}]");
        }
    }
}

#[test]
fn bad_inputs_are_refused_with_their_names() {
    let cpu = Device::Cpu;
    let w = Tensor::zeros((8, 16), DType::F16, &cpu).unwrap();
    let err = |r: candle_core::Result<Tensor>| r.expect_err("an error").to_string();
    // Weight: not 2-D, f32, bias of the wrong length.
    let e = SparseLinear::new(&Tensor::zeros((2, 8, 16), DType::F16, &cpu).unwrap(), None).err().unwrap().to_string();
    assert!(e.contains("[out, in]"), "{e}");
    let e = SparseLinear::new(&Tensor::zeros((8, 16), DType::F32, &cpu).unwrap(), None).err().unwrap().to_string();
    assert!(e.contains("F32") && e.contains("f16 or bf16"), "{e}");
    let e = SparseLinear::new(&w, Some(Tensor::zeros(9, DType::F16, &cpu).unwrap())).err().unwrap().to_string();
    assert!(e.contains("bias") && e.contains("[8]"), "{e}");
    // Input: wrong last dimension, wrong dtype, a scalar.
    let layer = SparseLinear::new(&w, None).unwrap();
    let e = err(layer.forward(&Tensor::zeros((3, 15), DType::F16, &cpu).unwrap()));
    assert!(e.contains("in_features = 16"), "{e}");
    let e = err(layer.forward(&Tensor::zeros((3, 16), DType::BF16, &cpu).unwrap()));
    assert!(e.contains("BF16") && e.contains("F16"), "{e}");
    let e = err(layer.forward(&Tensor::new(f16::ONE, &cpu).unwrap()));
    assert!(e.contains("scalar"), "{e}");
    // An all-zero weight is a valid layer: zeros out.
    let y = values::<f16>(&layer.forward(&Tensor::ones((2, 16), DType::F16, &cpu).unwrap()).unwrap());
    assert!(y.iter().all(|v| v.to_f32() == 0.0));
}

#[cfg(feature = "candle-cuda")]
#[test]
fn cuda_forward_equals_the_plain_api() {
    let Some(plain) = common::gpu("cuda_forward_equals_the_plain_api") else { return };
    let dev = Device::new_cuda(0).expect("candle's CUDA device");
    let mut rng = Rng::new(13);
    for (m, k, n, sparsity) in [(576, 576, 1, 0.5), (1536, 576, 7, 0.7), (576, 1536, 32, 0.9), (256, 64, 3, 0.0)] {
        let (w, dense) = pruned::<f16>(&mut rng, m, k, sparsity);
        let bias = random::<f16>(&mut rng, m);
        let x = random::<f16>(&mut rng, n * k);
        let layer = SparseLinear::new(&tensor(&dense, &[m, k], &dev), None).unwrap();
        let y = layer.forward(&tensor(&x, &[n, k], &dev)).unwrap();
        assert!(y.device().is_cuda());
        let got = values::<f16>(&y);
        // The plain API: its own handle and uploads, the same format choice.
        let xu = plain.upload(n, k, &x).unwrap();
        let wu = plain.upload_sparse_as(&w, sparse_tc::sparse::FormatChoice::Auto).unwrap();
        let want = plain.download(&plain.linear(&xu, &wu).unwrap()).unwrap();
        assert_eq!(got, want, "{m}×{k}, {n} tokens, {sparsity}");
        assert_close(&got, &x, &dense, n, m, k);
        // With a bias, and chained with candle's own ops on the same stream.
        let with_bias = SparseLinear::new(&tensor(&dense, &[m, k], &dev), Some(tensor(&bias, &[m], &dev))).unwrap();
        let z = values::<f16>(&with_bias.forward(&tensor(&x, &[n, k], &dev)).unwrap().relu().unwrap());
        for (i, (zv, yv)) in z.iter().zip(&got).enumerate() {
            let want = f16::from_f32(yv.to_f32() + bias[i % m].to_f32()).max(f16::ZERO);
            assert_eq!(*zv, want, "bias and relu, element {i}");
        }
    }
    // A CPU input to a CUDA layer is refused.
    let (_, dense) = pruned::<f16>(&mut rng, 64, 64, 0.5);
    let layer = SparseLinear::new(&tensor(&dense, &[64, 64], &dev), None).unwrap();
    let e = layer.forward(&Tensor::zeros((1, 64), DType::F16, &Device::Cpu).unwrap()).err().unwrap().to_string();
    assert!(e.contains("CPU"), "{e}");
}
