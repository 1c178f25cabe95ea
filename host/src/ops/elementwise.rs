//! Element-wise operations: residual adds, linear biases, SwiGLU's gate, ReLU.
//!
//! f32 on the exact values of the 16-bit inputs, one rounding per result (PyTorch, computing
//! `silu(gate) * up` as two operations, rounds the SiLU to the input type in between).

use super::{chunk_blocks as blocks, dim, ld, row_of, same_shape, Operand, CHUNK_THREADS};
use crate::element::Element;
use crate::error::Result;
use crate::gpu::Gpu;
use crate::linear::args;
use crate::matrix::DeviceMatrix;

impl Gpu {
    /// `acc += x` (same shapes).
    ///
    /// Errors: [`Error::Shape`](crate::Error::Shape) naming the operand whose shape does not
    /// fit, [`Error::InvalidArgument`](crate::Error::InvalidArgument) for an operand of another
    /// handle; likewise for the other operations here.
    pub fn add_assign<T: Element>(&self, acc: &mut DeviceMatrix<T>, x: &DeviceMatrix<T>) -> Result<()> {
        const OP: &str = "add_assign";
        self.check_owner("add_assign: acc", &acc.buf)?;
        self.check_owner("add_assign: x", &x.buf)?;
        same_shape(OP, Operand::of("acc", acc), Operand::of("x", x))?;
        let (accp, lda, xp, ldx) = (acc.device_ptr(), ld(OP, acc)?, x.device_ptr(), ld(OP, x)?);
        let (rows, cols) = dims(OP, acc)?;
        let mut a = args![accp, lda, xp, ldx, rows, cols];
        self.launch_op::<T>(OP, CHUNK_THREADS, 0, blocks(acc), &mut a)
    }

    /// `x += bias`, the `1 × cols` bias added to every row.
    pub fn add_bias<T: Element>(&self, x: &mut DeviceMatrix<T>, bias: &DeviceMatrix<T>) -> Result<()> {
        const OP: &str = "add_bias";
        self.check_owner("add_bias: x", &x.buf)?;
        self.check_owner("add_bias: bias", &bias.buf)?;
        row_of(OP, Operand::of("x", x), Operand::of("bias", bias))?;
        let (xp, ldx, bp) = (x.device_ptr(), ld(OP, x)?, bias.device_ptr());
        let (rows, cols) = dims(OP, x)?;
        let mut a = args![xp, ldx, bp, rows, cols];
        self.launch_op::<T>(OP, CHUNK_THREADS, 0, blocks(x), &mut a)
    }

    /// `out = silu(gate) · up`, SiLU(g) = g / (1 + e⁻ᵍ) (LLaMA's SwiGLU feed-forward; same
    /// shapes).
    pub fn silu_mul<T: Element>(
        &self,
        gate: &DeviceMatrix<T>,
        up: &DeviceMatrix<T>,
        out: &mut DeviceMatrix<T>,
    ) -> Result<()> {
        const OP: &str = "silu_mul";
        self.check_owner("silu_mul: gate", &gate.buf)?;
        self.check_owner("silu_mul: up", &up.buf)?;
        self.check_owner("silu_mul: out", &out.buf)?;
        let g = Operand::of("gate", gate);
        same_shape(OP, g, Operand::of("up", up))?;
        same_shape(OP, g, Operand::of("out", out))?;
        let (gp, ldg, upp, ldu) = (gate.device_ptr(), ld(OP, gate)?, up.device_ptr(), ld(OP, up)?);
        let (outp, ldo) = (out.device_ptr(), ld(OP, out)?);
        let (rows, cols) = dims(OP, gate)?;
        let mut a = args![gp, ldg, upp, ldu, outp, ldo, rows, cols];
        self.launch_op::<T>(OP, CHUNK_THREADS, 0, blocks(gate), &mut a)
    }

    /// `x = max(x, 0)` in place (OPT's feed-forward); NaN stays NaN, −0 stays −0.
    pub fn relu<T: Element>(&self, x: &mut DeviceMatrix<T>) -> Result<()> {
        const OP: &str = "relu";
        self.check_owner("relu: x", &x.buf)?;
        let (xp, ldx) = (x.device_ptr(), ld(OP, x)?);
        let (rows, cols) = dims(OP, x)?;
        let mut a = args![xp, ldx, rows, cols];
        self.launch_op::<T>(OP, CHUNK_THREADS, 0, blocks(x), &mut a)
    }
}

/// Rows and columns as the kernels take them (each operand's leading dimension goes with
/// its pointer, [`ld`]).
fn dims<T: Element>(op: &str, m: &DeviceMatrix<T>) -> Result<(u32, u32)> {
    Ok((dim(op, "rows", m.rows())?, dim(op, "cols", m.cols())?))
}
