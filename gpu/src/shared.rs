//! Dynamic shared memory and 32-bit shared-window addresses.
//!
//! Rust has no attribute that places a static in `.shared`, so the module declares one
//! dynamically sized `.extern .shared` array; the launch sets its size. Everything that
//! touches shared memory takes a [`SmemAddr`]: the 32-bit address in the shared window that
//! `cp.async`, `ldmatrix`, `ld.shared` and `st.shared` expect.

use core::arch::{asm, global_asm};

global_asm!(".extern .shared .align 128 .b8 SMEM[];");

/// A byte address in the shared-memory window of the block.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(transparent)]
pub struct SmemAddr(pub u32);

impl SmemAddr {
    /// The address `bytes` further on.
    #[inline(always)]
    pub const fn offset(self, bytes: usize) -> SmemAddr {
        SmemAddr(self.0 + bytes as u32)
    }
}

/// Base address of the block's dynamic shared memory (128-byte aligned), via
/// `mov.u32 %r, SMEM;`.
#[inline(always)]
pub fn dynamic_smem_base() -> SmemAddr {
    let base: u32;
    // SAFETY: takes the address of a module-level symbol; no memory is accessed.
    unsafe { asm!("mov.u32 {0}, SMEM;", out(reg32) base, options(pure, nomem, nostack)) };
    SmemAddr(base)
}

/// `st.shared.b16` (PTX ISA 9.7.9.10): stores 16 bits.
///
/// # Safety
/// `addr` must be 2-byte aligned and inside the launch's dynamic shared memory.
#[inline(always)]
pub unsafe fn st_shared_b16(addr: SmemAddr, value: u16) {
    asm!("st.shared.b16 [{0}], {1};", in(reg32) addr.0, in(reg16) value, options(nostack));
}

/// `ld.shared.b16` (PTX ISA 9.7.9.8): loads 16 bits (the bitmap kernel's values, fragment
/// offsets and pairs of word prefix bytes).
///
/// # Safety
/// `addr` must be 2-byte aligned and inside the launch's dynamic shared memory, and the
/// bytes must have been written (and made visible by a barrier) before.
#[inline(always)]
pub unsafe fn ld_shared_b16(addr: SmemAddr) -> u16 {
    let v: u16;
    asm!("ld.shared.b16 {0}, [{1}];", out(reg16) v, in(reg32) addr.0, options(nostack, readonly));
    v
}

/// `ld.shared.b32` (PTX ISA 9.7.9.8): loads 4 bytes (the bitmap kernel's mask words).
///
/// # Safety
/// `addr` must be 4-byte aligned and inside the launch's dynamic shared memory, and the
/// bytes must have been written (and made visible by a barrier) before.
#[inline(always)]
pub unsafe fn ld_shared_b32(addr: SmemAddr) -> u32 {
    let v: u32;
    asm!("ld.shared.b32 {0}, [{1}];", out(reg32) v, in(reg32) addr.0, options(nostack, readonly));
    v
}

/// `st.shared.v4.b32`: stores 16 bytes.
///
/// # Safety
/// `addr` must be 16-byte aligned and inside the launch's dynamic shared memory.
#[inline(always)]
pub unsafe fn st_shared_v4_b32(addr: SmemAddr, v: [u32; 4]) {
    asm!(
        "st.shared.v4.b32 [{0}], {{{1}, {2}, {3}, {4}}};",
        in(reg32) addr.0, in(reg32) v[0], in(reg32) v[1], in(reg32) v[2], in(reg32) v[3],
        options(nostack)
    );
}

/// `ld.shared.v4.b32` (PTX ISA 9.7.9.8): loads 16 bytes.
///
/// # Safety
/// `addr` must be 16-byte aligned and inside the launch's dynamic shared memory, and the
/// bytes must have been written (and made visible by a barrier) before.
#[inline(always)]
pub unsafe fn ld_shared_v4_b32(addr: SmemAddr) -> [u32; 4] {
    let (a, b, c, d): (u32, u32, u32, u32);
    asm!(
        "ld.shared.v4.b32 {{{0}, {1}, {2}, {3}}}, [{4}];",
        out(reg32) a, out(reg32) b, out(reg32) c, out(reg32) d, in(reg32) addr.0,
        options(nostack, readonly)
    );
    [a, b, c, d]
}

/// `st.shared.v2.b32`: stores 8 bytes (the row-wise kernels' per-warp reduction slots).
///
/// # Safety
/// `addr` must be 8-byte aligned and inside the launch's dynamic shared memory.
#[inline(always)]
pub unsafe fn st_shared_v2_b32(addr: SmemAddr, v: [u32; 2]) {
    asm!(
        "st.shared.v2.b32 [{0}], {{{1}, {2}}};",
        in(reg32) addr.0, in(reg32) v[0], in(reg32) v[1],
        options(nostack)
    );
}

/// `ld.shared.v2.b32`: loads 8 bytes.
///
/// # Safety
/// `addr` must be 8-byte aligned and inside the launch's dynamic shared memory, and the
/// bytes must have been written (and made visible by a barrier) before.
#[inline(always)]
pub unsafe fn ld_shared_v2_b32(addr: SmemAddr) -> [u32; 2] {
    let (a, b): (u32, u32);
    asm!(
        "ld.shared.v2.b32 {{{0}, {1}}}, [{2}];",
        out(reg32) a, out(reg32) b, in(reg32) addr.0,
        options(nostack, readonly)
    );
    [a, b]
}

/// `atom.relaxed.cta.shared.exch.b64` with the immediate 0 (PTX ISA 9.7.13.3; only in the
/// `sm90` build, whose H100 timings are the ones measured): loads 8 bytes and leaves zeros
/// in their place. On the H100 a warp's exchange of 256 contiguous bytes costs what a store
/// of them alone costs, half of a load plus a clearing store (`benches/results/NOTES.md`
/// items 35 and 36), and `ptxas` takes the zeros from the zero register (`ATOMS.EXCH.64 Rd,
/// [Ra], RZ`), so the result feeds `mma` without register copies.
///
/// # Safety
/// `addr` must be 8-byte aligned and inside the launch's dynamic shared memory, and the
/// bytes must have been written (and made visible by a barrier) before.
#[cfg(sm90)]
#[inline(always)]
pub unsafe fn take_shared_v2_b32(addr: SmemAddr) -> [u32; 2] {
    let v: u64;
    asm!(
        "atom.relaxed.cta.shared.exch.b64 {0}, [{1}], 0;",
        out(reg64) v, in(reg32) addr.0,
        options(nostack)
    );
    [v as u32, (v >> 32) as u32]
}
