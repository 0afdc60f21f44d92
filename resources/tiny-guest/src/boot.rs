//! The PVH boot stub: from the 32-bit PVH entry to Rust at CPL3.
//!
//! PVH entry state (Xen/x86 PVH boot ABI): 32-bit protected mode with flat
//! segments, paging off, interrupts off, `EBX` = physical address of
//! `hvm_start_info`. The stack pointer is undefined.
//!
//! On hosts with the PVM flavour of KVM every CPL0 instruction is run by
//! KVM's instruction emulator (~1.5 million instructions per second), so the
//! stub does the least possible work at CPL0: about 30 instructions, no loops.
//! In particular the page tables are *not* built at run time: they are
//! assembled into `.data.pagetables` and simply loaded with the image.
//!
//! Steps:
//! 1. CR3 = static PML4; CR4 = PAE | OSFXSR | OSXMMEXCPT (SSE usable, since
//!    rustc emits SSE for the host triple); EFER.LME = 1.
//! 2. Load our GDT, CR0 = PG | WP | NE | ET | MP | PE (EM and TS clear).
//! 3. Far jump into the 64-bit CPL0 code segment.
//! 4. `iretq` to the 64-bit CPL3 code segment with RFLAGS = IOPL 3, IF 0, on
//!    the user stack at the top of `.stack`.
//! 5. At CPL3 (native speed): zero `.bss`, set MXCSR to its reset value and
//!    call `tiny_main(start_info_paddr)` with the System V ABI.
//!
//! Invariants the rest of the guest relies on:
//! * Guest-physical addresses `0 .. MAPPED_LIMIT` are identity-mapped with
//!   2 MiB pages, present, writable and user-accessible (accessed and dirty
//!   bits preset). 3 GiB .. 4 GiB (the MMIO hole of our VMM's layout) is
//!   mapped uncached (PCD | PWT); everything else write-back.
//! * There is no IDT and no TSS: the guest never enables interrupts, and any
//!   exception is a triple fault (the VM resets or stops). Code after the
//!   stub must therefore never fault; it checks addresses against
//!   [`MAPPED_LIMIT`] before dereferencing host-provided pointers.
//! * Port I/O works at CPL3 because IOPL = 3. `hlt`, `cli`/`sti` and other
//!   privileged instructions must not be used after the stub.

use core::arch::global_asm;

/// Bytes identity-mapped by the boot page tables (64 GiB).
pub const MAPPED_LIMIT: u64 = 64 << 30;

/// Number of 2 MiB page-directory entries needed for [`MAPPED_LIMIT`].
const PD_ENTRIES: u64 = MAPPED_LIMIT >> 21;
// The assembly below hard-codes 64 PDPT entries and 32768 PD entries.
const _: () = assert!(PD_ENTRIES == 32768);

/// Size of the CPL3 stack in `.stack` (right after `.bss`).
pub const STACK_SIZE: usize = 64 << 10;

extern "C" {
    /// First byte after the loaded image including `.bss` and the stack,
    /// 4 KiB aligned (defined by `linker.ld`).
    static __image_end: u8;
}

/// Physical address of the first byte after the guest image.
pub fn image_end() -> u64 {
    // Only the address of the linker symbol is taken (safe since Rust 1.82);
    // the byte itself is never read.
    core::ptr::addr_of!(__image_end) as u64
}

// Selectors of the GDT below: 0x08 CPL0 code64, 0x10 CPL0 data,
// 0x18 CPL3 data (RPL 3: 0x1b), 0x20 CPL3 code64 (RPL 3: 0x23).
//
// Page-table entry flags: P(0x1) | RW(0x2) | US(0x4) | A(0x20), plus
// PS(0x80) | D(0x40) in the 2 MiB leaves, plus PWT(0x8) | PCD(0x10) for
// the 3-4 GiB MMIO hole.
global_asm!(
    r#"
    .section .text.boot, "ax", @progbits
    .code32
    .globl tiny_pvh_start
    .type tiny_pvh_start, @function
tiny_pvh_start:
    movl $tiny_pml4, %eax
    movl %eax, %cr3
    movl $0x620, %eax                 /* CR4: PAE | OSFXSR | OSXMMEXCPT */
    movl %eax, %cr4
    movl $0xc0000080, %ecx            /* IA32_EFER */
    rdmsr
    orl $0x100, %eax                  /* LME */
    wrmsr
    lgdt tiny_gdt_ptr
    movl $0x80010033, %eax            /* CR0: PG | WP | NE | ET | MP | PE */
    movl %eax, %cr0
    ljmp $0x08, $tiny_start64

    .code64
tiny_start64:
    movw $0x10, %ax
    movw %ax, %ss
    movw $0x1b, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %fs
    movw %ax, %gs
    movl $tiny_stack_top, %esp
    movl %ebx, %edi                   /* start_info, zero-extended */
    pushq $0x1b                       /* SS */
    pushq $tiny_stack_top             /* RSP */
    pushq $0x3002                     /* RFLAGS: IOPL 3, IF 0 */
    pushq $0x23                       /* CS */
    pushq $tiny_user_start            /* RIP */
    iretq

    /* From here on: CPL3, native speed. */
tiny_user_start:
    cld
    movq %rdi, %r12
    movl $__bss_start, %edi
    movl $__bss_end, %ecx
    subl %edi, %ecx
    xorl %eax, %eax
    rep stosb
    ldmxcsr tiny_mxcsr_reset
    movq %r12, %rdi
    call tiny_main
    ud2

    .section .rodata.boot, "a", @progbits
    .balign 8
tiny_mxcsr_reset:
    .long 0x1f80
    .balign 8
tiny_gdt:
    .quad 0
    .quad 0x00af9a000000ffff          /* 0x08: CPL0 code, 64-bit */
    .quad 0x00cf92000000ffff          /* 0x10: CPL0 data */
    .quad 0x00cff2000000ffff          /* 0x18: CPL3 data */
    .quad 0x00affa000000ffff          /* 0x20: CPL3 code, 64-bit */
tiny_gdt_end:
    .balign 8
    .word 0
tiny_gdt_ptr:
    .word tiny_gdt_end - tiny_gdt - 1
    .long tiny_gdt

    /* PVH entry point note (Xen ELF note type 18, XEN_ELFNOTE_PHYS32_ENTRY).
       The descriptor is 8 bytes like Linux's: QEMU reads a size_t there,
       linux-loader reads the low 4 bytes. */
    .section .note.Xen, "a", @note
    .balign 4
    .long 4                           /* namesz: "Xen\0" */
    .long 8                           /* descsz */
    .long 18                          /* type */
    .asciz "Xen"
    .balign 4
    .quad tiny_pvh_start

    /* Identity page tables: 1 PML4, 1 PDPT (64 entries), 64 PDs. */
    .section .data.pagetables, "aw", @progbits
    .balign 4096
tiny_pml4:
    .quad tiny_pdpt + 0x27
    .fill 511, 8, 0
tiny_pdpt:
    .set tiny_pt_i, 0
    .rept 64
    .quad tiny_pd + tiny_pt_i * 4096 + 0x27
    .set tiny_pt_i, tiny_pt_i + 1
    .endr
    .fill 448, 8, 0
tiny_pd:
    .set tiny_pt_i, 0
    .rept 1536                        /* 0 .. 3 GiB: write-back */
    .quad (tiny_pt_i << 21) + 0xe7
    .set tiny_pt_i, tiny_pt_i + 1
    .endr
    .rept 512                         /* 3 .. 4 GiB: uncached */
    .quad (tiny_pt_i << 21) + 0xff
    .set tiny_pt_i, tiny_pt_i + 1
    .endr
    .rept 30720                       /* 4 .. 64 GiB: write-back */
    .quad (tiny_pt_i << 21) + 0xe7
    .set tiny_pt_i, tiny_pt_i + 1
    .endr

    .section .stack, "aw", @nobits
    .balign 16
    .skip {stack_size}
tiny_stack_top:
    "#,
    stack_size = const STACK_SIZE,
    options(att_syntax)
);
