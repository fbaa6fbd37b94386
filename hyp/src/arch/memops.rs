//! Bulk memory operations with LDM/STM of eight registers: copying images into guest RAM, zeroing it, filling page records.
//!
//! The compiler's `memcpy`/`memset` for this target move a word per load or
//! store; these move 32 bytes per LDM/STM pair (Arm ARM A8.8.58 LDM, A8.8.199
//! STM), which is what the boot path's large copies and the page records'
//! fills are made of. Both need word-aligned addresses (an unaligned LDM/STM
//! faults whatever SCTLR.A says, A3.2.1): the safe wrappers do the unaligned
//! head and tail with the ordinary slice operations.

use carve_core::mm::Page;

core::arch::global_asm!(
    r#"
    .section .text.carve_copy32, "ax"
    .arm
    .global carve_copy32
    .type carve_copy32, %function
    @ r0 = destination, r1 = source (both word aligned), r2 = bytes (a multiple of 32, may be 0).
carve_copy32:
    push    {{r4-r10}}
    add     r2, r0, r2              @ r2 = the destination's end
    sub     r12, r2, #128
1:  cmp     r0, r12                 @ 128 bytes a turn while 128 remain
    bhi     2f
    ldm     r1!, {{r3-r10}}
    stm     r0!, {{r3-r10}}
    ldm     r1!, {{r3-r10}}
    stm     r0!, {{r3-r10}}
    ldm     r1!, {{r3-r10}}
    stm     r0!, {{r3-r10}}
    ldm     r1!, {{r3-r10}}
    stm     r0!, {{r3-r10}}
    b       1b
2:  cmp     r0, r2                  @ then 32 at a time
    ldmlo   r1!, {{r3-r10}}
    stmlo   r0!, {{r3-r10}}
    blo     2b
    pop     {{r4-r10}}
    bx      lr
    .size carve_copy32, . - carve_copy32

    .section .text.carve_fill16, "ax"
    .global carve_fill16
    .type carve_fill16, %function
    @ r0 = destination (word aligned), r1 = bytes (a multiple of 16, may be 0), r2 = the 16-byte pattern (word aligned).
carve_fill16:
    push    {{r4-r11}}
    ldm     r2, {{r4-r7}}
    mov     r8, r4
    mov     r9, r5
    mov     r10, r6
    mov     r11, r7
    add     r1, r0, r1              @ r1 = the end
    sub     r12, r1, #128
1:  cmp     r0, r12                 @ 128 bytes a turn while 128 remain
    bhi     2f
    stm     r0!, {{r4-r11}}
    stm     r0!, {{r4-r11}}
    stm     r0!, {{r4-r11}}
    stm     r0!, {{r4-r11}}
    b       1b
2:  cmp     r0, r1                  @ then 16 at a time
    stmlo   r0!, {{r4-r7}}
    blo     2b
    pop     {{r4-r11}}
    bx      lr
    .size carve_fill16, . - carve_fill16
"#
);

extern "C" {
    fn carve_copy32(dst: *mut u8, src: *const u8, bytes: usize);
    fn carve_fill16(dst: *mut u8, bytes: usize, pattern: *const [u32; 4]);
}

/// Copies `src` into `dst` (the shorter length of the two).
pub fn copy(dst: &mut [u8], src: &[u8]) {
    let n = dst.len().min(src.len());
    let (dst, src) = (&mut dst[..n], &src[..n]);
    let (d, s) = (dst.as_ptr() as usize, src.as_ptr() as usize);
    if (d ^ s) & 3 != 0 || n < 64 {
        return dst.copy_from_slice(src); // they never word-align together, or too short to matter
    }
    let head = d.wrapping_neg() & 3;
    let body = (n - head) & !31;
    dst[..head].copy_from_slice(&src[..head]);
    // SAFETY: [head, head + body) lies inside both slices (body <= n - head),
    // whose borrows make it ours; both start word aligned there (d and s are
    // congruent mod 4 and `head` aligns d), and body is a multiple of 32.
    unsafe { carve_copy32(dst.as_mut_ptr().add(head), src.as_ptr().add(head), body) };
    dst[head + body..].copy_from_slice(&src[head + body..]);
}

/// Fills `dst` with the 16-byte `pattern` repeated (`dst` word aligned, its length a multiple of 16).
fn fill16(dst: &mut [u8], pattern: [u32; 4]) {
    debug_assert!(dst.as_ptr() as usize & 3 == 0 && dst.len() % 16 == 0);
    // SAFETY: `dst` is ours (a unique borrow) and word aligned with a length
    // that is a multiple of 16 (both callers' promise, checked in debug);
    // `pattern` is a word-aligned local.
    unsafe { carve_fill16(dst.as_mut_ptr(), dst.len() & !15, &pattern) };
}

/// Zeroes `dst`.
pub fn zero(dst: &mut [u8]) {
    let head = (dst.as_ptr() as usize).wrapping_neg() & 3;
    if dst.len() < head + 64 {
        return dst.fill(0);
    }
    let body = (dst.len() - head) & !15;
    dst[..head].fill(0);
    fill16(&mut dst[head..head + body], [0; 4]);
    dst[head + body..].fill(0);
}

/// Sets every record of `records` to `page`.
pub fn fill_records(records: &mut [Page], page: Page) {
    const _: () = assert!(core::mem::size_of::<Page>() == 16 && core::mem::align_of::<Page>() >= 4);
    // SAFETY: Page is repr(C), 16 bytes of integer fields without padding (see
    // carve-core's `Page`), so it reads as four words and any bytes written
    // from four words of one Page form that Page again.
    let words: [u32; 4] = unsafe { core::mem::transmute::<Page, [u32; 4]>(page) };
    let len = core::mem::size_of_val(records);
    // SAFETY: the records' memory as bytes, borrowed uniquely for the fill;
    // Page's alignment (4) makes it word aligned and its length is 16 per record.
    let bytes = unsafe { core::slice::from_raw_parts_mut(records.as_mut_ptr().cast::<u8>(), len) };
    fill16(bytes, words);
}
