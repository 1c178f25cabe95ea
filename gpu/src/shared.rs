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

/// `atom.relaxed.cta.shared.exch.b128` (PTX ISA 9.7.13.3; sm_90 and PTX 8.3, so only in the
/// `sm90` build): loads 16 bytes and leaves zeros in their place. On the H100 this costs what
/// a 16-byte store alone costs (`benches/results/NOTES.md` item 34), half of a load plus a
/// clearing store. The hardware instruction takes the zeros from its destination registers,
/// so each use also costs two register clears.
///
/// # Safety
/// `addr` must be 16-byte aligned and inside the launch's dynamic shared memory, and the
/// bytes must have been written (and made visible by a barrier) before.
#[cfg(sm90)]
#[inline(always)]
pub unsafe fn take_shared_v4_b32(addr: SmemAddr) -> [u32; 4] {
    let (a, b, c, d): (u32, u32, u32, u32);
    asm!(
        "{{",
        ".reg .b128 %tq_in, %tq_out;",
        ".reg .b64 %tz, %tlo, %thi;",
        "mov.b64 %tz, 0;",
        "mov.b128 %tq_in, {{%tz, %tz}};",
        "atom.relaxed.cta.shared.exch.b128 %tq_out, [{4}], %tq_in;",
        "mov.b128 {{%tlo, %thi}}, %tq_out;",
        "mov.b64 {{{0}, {1}}}, %tlo;",
        "mov.b64 {{{2}, {3}}}, %thi;",
        "}}",
        out(reg32) a, out(reg32) b, out(reg32) c, out(reg32) d, in(reg32) addr.0,
        options(nostack)
    );
    [a, b, c, d]
}
