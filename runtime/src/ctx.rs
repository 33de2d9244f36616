//! Saving and resuming a thread's callee-saved context (a minimal setjmp/longjmp with our
//! own layout, shared with the restorer through `ckpt_plan::JumpContext`), and creating a
//! thread that starts directly in such a context.

use std::arch::global_asm;

/// Callee-saved registers, stack pointer and resume address. Same order as the first
/// eight fields of `ckpt_plan::JumpContext`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Ctx {
    pub rbx: u64,
    pub rbp: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub rsp: u64,
    pub rip: u64,
}

global_asm!(
    ".globl __ckpt_save_context",
    ".hidden __ckpt_save_context",
    ".type __ckpt_save_context,@function",
    "__ckpt_save_context:",
    "mov [rdi + 0], rbx",
    "mov [rdi + 8], rbp",
    "mov [rdi + 16], r12",
    "mov [rdi + 24], r13",
    "mov [rdi + 32], r14",
    "mov [rdi + 40], r15",
    "lea rax, [rsp + 8]",
    "mov [rdi + 48], rax",
    "mov rax, [rsp]",
    "mov [rdi + 56], rax",
    "xor eax, eax",
    "ret",
    "",
    ".globl __ckpt_clone_into",
    ".hidden __ckpt_clone_into",
    ".type __ckpt_clone_into,@function",
    // (flags rdi, stack rsi, ptid rdx, ctid rcx, tls r8, ctx r9, retval [rsp+8])
    "__ckpt_clone_into:",
    "push r12",
    "push r13",
    "mov r12, r9",
    "mov r13, [rsp + 24]",
    "mov r10, rcx",
    "mov eax, 56",
    "syscall",
    "test rax, rax",
    "jnz 2f",
    "mov rbx, [r12 + 0]",
    "mov rbp, [r12 + 8]",
    "mov r14, [r12 + 32]",
    "mov r15, [r12 + 40]",
    "mov rsp, [r12 + 48]",
    "mov rcx, [r12 + 56]",
    "mov rax, r13",
    "mov r13, [r12 + 24]",
    "mov r12, [r12 + 16]",
    "jmp rcx",
    "2:",
    "pop r13",
    "pop r12",
    "ret",
);

extern "C" {
    /// Saves the caller's context into `ctx` and returns 0. When the context is later
    /// resumed (by the restorer or [`clone_into`]), it returns again, with a non-zero value.
    /// Callers must not rely on locals modified after the first return.
    pub fn __ckpt_save_context(ctx: *mut Ctx) -> u64;
    fn __ckpt_clone_into(
        flags: u64,
        stack: u64,
        ptid: u64,
        ctid: u64,
        tls: u64,
        ctx: *const Ctx,
        retval: u64,
    ) -> i64;
}

/// Creates a thread (raw clone) that resumes `ctx` with thread pointer `tls`; its
/// `save_context` call returns `retval`. `tid_addr` (glibc's `pthread.tid` of that thread)
/// receives the new tid and is cleared + woken at thread exit, as for a pthread.
///
/// # Safety
/// `ctx` must have been saved by a thread of this process whose stack and TLS are mapped,
/// and nothing else may be running on that stack.
pub unsafe fn clone_into(ctx: &Ctx, tls: u64, tid_addr: u64, retval: u64) -> i64 {
    let mut flags = (libc::CLONE_VM
        | libc::CLONE_FS
        | libc::CLONE_FILES
        | libc::CLONE_SIGHAND
        | libc::CLONE_THREAD
        | libc::CLONE_SYSVSEM
        | libc::CLONE_SETTLS) as u64;
    if tid_addr != 0 {
        flags |= (libc::CLONE_PARENT_SETTID | libc::CLONE_CHILD_CLEARTID) as u64;
    }
    let stack = (ctx.rsp - 1024) & !15;
    // SAFETY: forwarded contract; the child never returns into our frame.
    unsafe {
        __ckpt_clone_into(
            flags,
            stack,
            tid_addr,
            tid_addr,
            tls,
            ctx as *const Ctx,
            retval,
        )
    }
}
