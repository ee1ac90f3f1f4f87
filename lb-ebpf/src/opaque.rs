//! Values hidden from the compiler.

/// `x`, hidden from the compiler (one move to itself): it cannot tell that a value is 0 or 1,
/// and so cannot make a multiplication or a mask by it a branch, as it does with what it can
/// (flow_table.rs); nor that a mask changes no value, and so cannot drop one that the verifier
/// needs (parse/ipv6.rs).
#[inline(always)]
pub fn opaque(mut x: u64) -> u64 {
    // SAFETY: a move of the register to itself. (Not an empty template: the kernel refuses the
    // line information that an instruction of no length leaves.)
    unsafe { core::arch::asm!("{0} = {0}", inout(reg) x, options(pure, nomem, nostack)) };
    x
}
