//! Integer bit manipulation that plain Rust operators do not reach (PTX ISA 9.7.8, Logic and
//! Shift Instructions). Shifts, masks and `count_ones` (`popc.b32`) need no wrapper: LLVM
//! emits them from the operators.

use core::arch::asm;

/// `prmt.b32` (PTX ISA 9.7.8.7, generic mode): byte `i` of the result is byte `sel_i` of the
/// eight bytes `{b, a}` (`a` gives bytes 0–3, `b` bytes 4–7), where `sel_i` is nibble `i` of
/// `sel` (bits `4i .. 4i + 4`, only `sel[15:0]` is read). A nibble with its top bit set (8–15)
/// replicates the sign bit of byte `sel_i & 7` instead, so selecting a byte that is zero gives
/// zero either way.
#[inline(always)]
pub fn prmt(a: u32, b: u32, sel: u32) -> u32 {
    let r: u32;
    // SAFETY: register-only instruction.
    unsafe { asm!("prmt.b32 {0}, {1}, {2}, {3};", out(reg32) r, in(reg32) a, in(reg32) b, in(reg32) sel, options(pure, nomem, nostack)) };
    r
}
