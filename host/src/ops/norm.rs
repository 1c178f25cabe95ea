//! RMSNorm (LLaMA) and LayerNorm (OPT), plain and fused with the residual add before them.
//!
//! Numerics: f32 on the exact values of the 16-bit inputs, block-wide sums in a fixed order
//! (the same bits every run), `1 / sqrt(·)` correctly rounded, one rounding of each output.
//! Hugging Face's `LlamaRMSNorm` rounds the normalised value to the input type before the
//! weight multiplies it; here the product is rounded once (at most one unit in the last place
//! of difference, and closer to the exact result).

use super::{check_eps, dim, ld, row_of, same_shape, Operand, NORM_THREADS, SCRATCH_BYTES};
use crate::element::Element;
use crate::error::Result;
use crate::gpu::Gpu;
use crate::linear::args;
use crate::matrix::DeviceMatrix;

impl Gpu {
    /// `out = x · weight / sqrt(mean(x²) + eps)` per row (RMSNorm; `weight` is `1 × d`,
    /// `x` and `out` are `n × d`).
    ///
    /// Errors: [`Error::Shape`](crate::Error::Shape) naming the operand whose shape does not
    /// fit, [`Error::InvalidArgument`](crate::Error::InvalidArgument) for an `eps` that is
    /// negative or not finite, or an operand of another handle.
    pub fn rms_norm<T: Element>(
        &self,
        x: &DeviceMatrix<T>,
        weight: &DeviceMatrix<T>,
        eps: f32,
        out: &mut DeviceMatrix<T>,
    ) -> Result<()> {
        self.norm("rms_norm", None, x, weight, None, eps, out)
    }

    /// `residual += delta`, then `out = rms_norm(residual)`: the fused form used between
    /// sublayers. The residual is stored rounded to `T` and normalised as stored.
    pub fn add_rms_norm<T: Element>(
        &self,
        residual: &mut DeviceMatrix<T>,
        delta: &DeviceMatrix<T>,
        weight: &DeviceMatrix<T>,
        eps: f32,
        out: &mut DeviceMatrix<T>,
    ) -> Result<()> {
        self.norm("add_rms_norm", Some(delta), residual, weight, None, eps, out)
    }

    /// `out = (x − mean(x)) · weight / sqrt(var(x) + eps) + bias` per row (LayerNorm, biased
    /// variance; `weight` and `bias` are `1 × d`).
    pub fn layer_norm<T: Element>(
        &self,
        x: &DeviceMatrix<T>,
        weight: &DeviceMatrix<T>,
        bias: &DeviceMatrix<T>,
        eps: f32,
        out: &mut DeviceMatrix<T>,
    ) -> Result<()> {
        self.norm("layer_norm", None, x, weight, Some(bias), eps, out)
    }

    /// `residual += delta`, then `out = layer_norm(residual)`.
    pub fn add_layer_norm<T: Element>(
        &self,
        residual: &mut DeviceMatrix<T>,
        delta: &DeviceMatrix<T>,
        weight: &DeviceMatrix<T>,
        bias: &DeviceMatrix<T>,
        eps: f32,
        out: &mut DeviceMatrix<T>,
    ) -> Result<()> {
        self.norm("add_layer_norm", Some(delta), residual, weight, Some(bias), eps, out)
    }

    /// The four norms: checks, then one launch. `x` is written only by the fused forms (the
    /// callers with `delta`, which hold it as `&mut`).
    #[allow(clippy::too_many_arguments)]
    fn norm<T: Element>(
        &self,
        op: &str,
        delta: Option<&DeviceMatrix<T>>,
        x: &DeviceMatrix<T>,
        weight: &DeviceMatrix<T>,
        bias: Option<&DeviceMatrix<T>>,
        eps: f32,
        out: &mut DeviceMatrix<T>,
    ) -> Result<()> {
        let xname = if delta.is_some() { "residual" } else { "x" };
        self.check_owner(&format!("{op}: {xname}"), &x.buf)?;
        self.check_owner(&format!("{op}: weight"), &weight.buf)?;
        self.check_owner(&format!("{op}: out"), &out.buf)?;
        if let Some(d) = delta {
            self.check_owner(&format!("{op}: delta"), &d.buf)?;
        }
        if let Some(b) = bias {
            self.check_owner(&format!("{op}: bias"), &b.buf)?;
        }
        let xo = Operand::of(xname, x);
        if let Some(d) = delta {
            same_shape(op, xo, Operand::of("delta", d))?;
        }
        row_of(op, xo, Operand::of("weight", weight))?;
        if let Some(b) = bias {
            row_of(op, xo, Operand::of("bias", b))?;
        }
        same_shape(op, xo, Operand::of("out", out))?;
        check_eps(op, eps)?;
        let (rows, cols) = (dim(op, "rows", x.rows())?, dim(op, "cols", x.cols())?);
        let (xp, ldx, wp) = (x.device_ptr(), ld(op, x)?, weight.device_ptr());
        let (op_out, ldo) = (out.device_ptr(), ld(op, out)?);
        let n = x.rows();
        match (delta, bias) {
            (None, None) => {
                let mut a = args![xp, ldx, wp, op_out, ldo, rows, cols, eps];
                self.launch_op::<T>("rms_norm", NORM_THREADS, SCRATCH_BYTES, n, &mut a)
            }
            (Some(d), None) => {
                let (dp, ldd) = (d.device_ptr(), ld(op, d)?);
                let mut a = args![xp, ldx, dp, ldd, wp, op_out, ldo, rows, cols, eps];
                self.launch_op::<T>("add_rms_norm", NORM_THREADS, SCRATCH_BYTES, n, &mut a)
            }
            (None, Some(b)) => {
                let bp = b.device_ptr();
                let mut a = args![xp, ldx, wp, bp, op_out, ldo, rows, cols, eps];
                self.launch_op::<T>("layer_norm", NORM_THREADS, SCRATCH_BYTES, n, &mut a)
            }
            (Some(d), Some(b)) => {
                let (dp, ldd, bp) = (d.device_ptr(), ld(op, d)?, b.device_ptr());
                let mut a = args![xp, ldx, dp, ldd, wp, bp, op_out, ldo, rows, cols, eps];
                self.launch_op::<T>("add_layer_norm", NORM_THREADS, SCRATCH_BYTES, n, &mut a)
            }
        }
    }
}
