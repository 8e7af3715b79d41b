//! A DWARF unwinder that remembers, per code address, how to step to the caller's frame.
//!
//! Unwinding one frame with DWARF call-frame information means finding the frame description entry (FDE)
//! that covers the address and running its CFI program up to that address. libgcc's `_Unwind_Backtrace`
//! does both for every frame of every stack. The stacks of sampled allocations
//! go through the same few thousand return addresses again and again, so this unwinder keeps the result:
//! a table of 2^14 words, each holding one code address together with its rule (where the canonical frame
//! address is, and where the caller's frame pointer was saved). A frame whose address is in the table costs
//! a load and a few additions. A miss asks libgcc for the FDE (`_Unwind_Find_FDE`, the lookup its own
//! unwinder uses, through glibc's `_dl_find_object` or `dl_iterate_phdr`) and runs the CFI program with
//! gimli, without allocating.
//!
//! x86_64 only. The walk reads memory only inside the thread's own stack, between the stack pointer and the
//! top of the stack; frames it cannot describe with a cached rule (a CFA given by a DWARF expression, as in
//! signal trampolines, or a register saved elsewhere than the stack) make the caller fall back to libgcc's
//! unwinder for the whole stack, so the result is never worse than the system unwinder's.
//!
//! Code unloaded with `dlclose` whose addresses are reused by a newly loaded library keeps its old rules in
//! the table; a stale rule can only end or shorten a walk (every read is bounds-checked), never crash it.

use core::ffi::c_void;
use core::mem::MaybeUninit;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

use gimli::{
    BaseAddresses, CfaRule, EhFrame, EhFrameOffset, LittleEndian, Register, RegisterRule,
    UnwindContext, UnwindContextStorage, UnwindSection, UnwindTableRow, X86_64,
};

/// `struct dwarf_eh_bases` of libgcc's `unwind-dw2-fde.h`: the bases that FDE pointer encodings are
/// relative to, and the start of the function the FDE describes.
#[repr(C)]
struct DwarfEhBases {
    tbase: *mut c_void,
    dbase: *mut c_void,
    func: *mut c_void,
}

unsafe extern "C" {
    /// libgcc's (and LLVM libunwind's) FDE lookup: the FDE covering `pc`, or null.
    fn _Unwind_Find_FDE(pc: *mut c_void, bases: *mut DwarfEhBases) -> *const u8;
}

/// How to step from a frame to its caller's, for one code address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rule {
    /// The outermost frame (the return address is undefined, as in `_start` and `clone`).
    Outermost,
    /// The canonical frame address (CFA, the stack pointer before the call) is the stack pointer (or, with
    /// `from_rbp`, the frame pointer) plus `cfa_offset` bytes; the return address is at CFA − 8; the
    /// caller's frame pointer is at CFA − 8·`rbp_slot` when `rbp_slot` is not 0, else unchanged.
    Step {
        from_rbp: bool,
        cfa_offset: u32,
        rbp_slot: u32,
    },
}

/// Why an address has no rule.
enum Miss {
    /// No unwind information covers it: the walk ends there, as libgcc's does.
    NoInfo,
    /// Its unwind information says something the walk does not model: unwind with libgcc instead.
    Unsupported,
}

/// Bits of a table word: the address in the low 47 (user-space addresses on x86_64), then the rule.
const ADDRESS_BITS: u32 = 47;
const ADDRESS_MASK: u64 = (1 << ADDRESS_BITS) - 1;
/// The CFA offset is stored in units of 8 bytes in 12 bits: rules with larger frames are not cached.
const MAX_CACHED_CFA_OFFSET: u32 = 8 * 4095;
/// The frame pointer's save slot is stored in 4 bits.
const MAX_RBP_SLOT: u32 = 15;

const TABLE_BITS: u32 = 14;
/// The rule table: 2^14 words, 128 KiB of zeroed memory of which only touched pages are resident.
static TABLE: [AtomicU64; 1 << TABLE_BITS] = [const { AtomicU64::new(0) }; 1 << TABLE_BITS];

fn slot(address: usize) -> &'static AtomicU64 {
    let index = (address as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - TABLE_BITS);
    &TABLE[index as usize]
}

/// Packs `address` and its rule into one word (0 is the empty word: address 0 is never looked up), or
/// `None` if they do not fit.
fn pack(address: usize, rule: Rule) -> Option<u64> {
    let address = address as u64;
    if address == 0 || address > ADDRESS_MASK {
        return None;
    }
    let fields = match rule {
        // A CFA offset of 0 is impossible for a real frame (the return address is below it), so it marks
        // the outermost frame.
        Rule::Outermost => 0,
        Rule::Step {
            from_rbp,
            cfa_offset,
            rbp_slot,
        } => {
            if cfa_offset == 0
                || cfa_offset % 8 != 0
                || cfa_offset > MAX_CACHED_CFA_OFFSET
                || rbp_slot > MAX_RBP_SLOT
            {
                return None;
            }
            u64::from(cfa_offset / 8) | (from_rbp as u64) << 12 | u64::from(rbp_slot) << 13
        }
    };
    Some(address | fields << ADDRESS_BITS)
}

/// The CFA offset of a table word, in bytes (0 for the outermost frame).
#[inline(always)]
fn word_cfa_offset(word: u64) -> usize {
    ((word >> (ADDRESS_BITS - 3)) & (0xfff << 3)) as usize
}

/// Whether a table word's CFA is based on the frame pointer.
#[inline(always)]
fn word_from_rbp(word: u64) -> bool {
    word >> (ADDRESS_BITS + 12) & 1 == 1
}

/// The frame pointer's save slot of a table word.
#[inline(always)]
fn word_rbp_slot(word: u64) -> usize {
    (word >> (ADDRESS_BITS + 13)) as usize
}

#[cfg(test)]
fn unpack(word: u64) -> Rule {
    match word_cfa_offset(word) {
        0 => Rule::Outermost,
        cfa_offset => Rule::Step {
            from_rbp: word_from_rbp(word),
            cfa_offset: cfa_offset as u32,
            rbp_slot: word_rbp_slot(word) as u32,
        },
    }
}

/// The rule for `address` when the table does not have it: computed, and remembered if it fits a word.
#[cold]
fn rule_after_miss(address: usize) -> Result<Rule, Miss> {
    let rule = compute_rule(address)?;
    if let Some(word) = pack(address, rule) {
        // One word holds both the address and its rule, so a reader never sees one without the other.
        slot(address).store(word, Relaxed);
    }
    Ok(rule)
}

/// Register rules per row and rows the CFI evaluation keeps, in place. x86_64 code saves at most the six
/// callee-saved registers besides the return address; the rows are the CIE's initial rules (when it sets
/// more than one), the row being evaluated and one `DW_CFA_remember_state`. CFI that needs more makes gimli
/// return an error, and the walk falls back to libgcc. Every row is copied a few times on the stack while a
/// rule is computed, so their size is most of the stack that a rule lookup needs.
struct InlineStorage;

impl<T: gimli::ReaderOffset> UnwindContextStorage<T> for InlineStorage {
    type Rules = [(Register, RegisterRule<T>); 12];
    type Stack = [UnwindTableRow<T, Self>; 3];
}

/// Finds the FDE covering `address` and evaluates its CFI program up to it.
#[inline(never)]
fn compute_rule(address: usize) -> Result<Rule, Miss> {
    let mut bases = DwarfEhBases {
        tbase: core::ptr::null_mut(),
        dbase: core::ptr::null_mut(),
        func: core::ptr::null_mut(),
    };
    // SAFETY: `_Unwind_Find_FDE` only reads the loaded objects' unwind tables and writes `bases`, a valid
    // local; it is what libgcc's unwinder calls for each frame.
    let fde = unsafe { _Unwind_Find_FDE(address as *mut c_void, &mut bases) };
    if fde.is_null() {
        return Err(Miss::NoInfo);
    }
    // SAFETY: an FDE starts with its 32-bit length and the 32-bit offset back to its CIE (`.eh_frame`
    // format); both lie in the mapped unwind table that libgcc just found it in.
    let (length, cie_pointer) = unsafe {
        (
            (fde as *const u32).read_unaligned(),
            (fde.add(4) as *const u32).read_unaligned(),
        )
    };
    // 0xffff_ffff introduces a 64-bit length (never emitted for .eh_frame on x86_64); 0 is a CIE.
    if length == 0 || length == u32::MAX || cie_pointer == 0 {
        return Err(Miss::Unsupported);
    }
    let fde_address = fde as usize;
    let Some(cie_address) = (fde_address + 4).checked_sub(cie_pointer as usize) else {
        return Err(Miss::Unsupported);
    };
    let end = fde_address + 4 + length as usize;
    // SAFETY: in `.eh_frame` the CIE an FDE refers to precedes it, so `[cie, end of FDE)` is part of the
    // same mapped, immutable section; gimli reads only the two entries within it.
    let section =
        unsafe { core::slice::from_raw_parts(cie_address as *const u8, end - cie_address) };
    let mut eh_frame = EhFrame::new(section, LittleEndian);
    eh_frame.set_address_size(8);
    let bases = BaseAddresses::default()
        .set_eh_frame(cie_address as u64)
        .set_text(bases.tbase as u64)
        .set_got(bases.dbase as u64);
    let fde = eh_frame
        .fde_from_offset(
            &bases,
            EhFrameOffset(fde_address - cie_address),
            EhFrame::cie_from_offset,
        )
        .map_err(|_| Miss::Unsupported)?;
    let mut context = UnwindContext::<usize, InlineStorage>::new_in();
    let row = fde
        .unwind_info_for_address(&eh_frame, &bases, &mut context, address as u64)
        .map_err(|_| Miss::Unsupported)?;
    rule_of_row(row)
}

fn rule_of_row<S: UnwindContextStorage<usize>>(
    row: &UnwindTableRow<usize, S>,
) -> Result<Rule, Miss> {
    match row.register(X86_64::RA) {
        Some(RegisterRule::Offset(-8)) => {}
        Some(RegisterRule::Undefined) => return Ok(Rule::Outermost),
        _ => return Err(Miss::Unsupported),
    }
    let (from_rbp, cfa_offset) = match *row.cfa() {
        CfaRule::RegisterAndOffset { register, offset } if register == X86_64::RSP => {
            (false, offset)
        }
        CfaRule::RegisterAndOffset { register, offset } if register == X86_64::RBP => {
            (true, offset)
        }
        _ => return Err(Miss::Unsupported),
    };
    let cfa_offset = u32::try_from(cfa_offset).map_err(|_| Miss::Unsupported)?;
    if cfa_offset < 8 {
        return Err(Miss::Unsupported);
    }
    let rbp_slot = match row.register(X86_64::RBP) {
        None | Some(RegisterRule::SameValue | RegisterRule::Undefined) => 0,
        Some(RegisterRule::Offset(offset)) if offset < 0 && offset % 8 == 0 => {
            u32::try_from(-offset / 8).map_err(|_| Miss::Unsupported)?
        }
        _ => return Err(Miss::Unsupported),
    };
    Ok(Rule::Step {
        from_rbp,
        cfa_offset,
        rbp_slot,
    })
}

/// Return addresses inside the profiler's entry points, found once by function address: the walk's frames
/// up to them are the profiler's own.
static ENTRY_RETURNS: [AtomicUsize; 4] = [const { AtomicUsize::new(0) }; 4];

/// The profiler's own frames searched for the entry point before giving up and keeping them all.
const ENTRY_SEARCH_FRAMES: usize = 6;

/// Whether `return_address` is one already found to lie in an entry point.
fn known_entry_return(return_address: usize) -> bool {
    ENTRY_RETURNS
        .iter()
        .any(|known| known.load(Relaxed) == return_address)
}

/// Whether `return_address` lies in the function that starts at `entry`, by FDE lookup; if so, it is
/// remembered for [`known_entry_return`].
fn returns_into(return_address: usize, entry: usize) -> bool {
    let mut bases = DwarfEhBases {
        tbase: core::ptr::null_mut(),
        dbase: core::ptr::null_mut(),
        func: core::ptr::null_mut(),
    };
    // SAFETY: as in `compute_rule`.
    let fde = unsafe { _Unwind_Find_FDE((return_address - 1) as *mut c_void, &mut bases) };
    if fde.is_null() || bases.func as usize != entry {
        return false;
    }
    for known in &ENTRY_RETURNS {
        if known
            .compare_exchange(0, return_address, Relaxed, Relaxed)
            .is_ok()
        {
            break;
        }
    }
    true
}

/// The registers the walk starts from: an address inside [`walk`], and the stack and frame pointers there.
#[inline(always)]
fn registers() -> (usize, usize, usize) {
    let (pc, sp, fp): (usize, usize, usize);
    // SAFETY: reads the instruction pointer, stack pointer and frame pointer; touches no memory.
    unsafe {
        core::arch::asm!(
            "lea {pc}, [rip]",
            "mov {sp}, rsp",
            "mov {fp}, rbp",
            pc = out(reg) pc,
            sp = out(reg) sp,
            fp = out(reg) fp,
            options(nomem, nostack, preserves_flags)
        );
    }
    (pc, sp, fp)
}

/// One step of a walk.
enum Step {
    /// The caller's return address.
    Frame(usize),
    /// No caller: the outermost frame, or code without unwind information.
    End,
    /// No caller: the return address read at the new stack pointer − 8 is 0.
    ZeroReturn,
    /// A frame needs the system unwinder.
    Fallback,
    /// A frame's rule is not in the table, and the stack has no room to compute it.
    NoRoom,
}

/// The registers of the frame being unwound.
#[derive(Clone, Copy)]
struct Cursor {
    /// The address whose rule applies: the instruction pointer in the innermost frame, the return
    /// address minus one in the others (the call may be the last instruction of a function that does not
    /// return, so the return address can belong to the next function).
    lookup: usize,
    sp: usize,
    fp: usize,
    /// The top of the thread's stack: every read lies in `[sp, stack_top)`.
    stack_top: usize,
    /// Whether the stack has room to compute a rule missing from the table.
    rules_fit: bool,
    /// Whether the last step took its CFA from the frame pointer, and the save slot of its rule (see
    /// [`Rule::Step`]).
    from_rbp: bool,
    rbp_slot: usize,
}

impl Cursor {
    /// Steps to the caller's frame.
    #[inline(always)]
    fn step(&mut self) -> Step {
        let word = slot(self.lookup).load(Relaxed);
        if word == 0 || (word & ADDRESS_MASK) as usize != self.lookup {
            // By value, so that the cursor of the hot loop never needs an address and stays in registers.
            let (step, cursor) = self.step_after_miss();
            *self = cursor;
            return step;
        }
        match word_cfa_offset(word) {
            0 => Step::End,
            cfa_offset => self.apply(word_from_rbp(word), cfa_offset, word_rbp_slot(word)),
        }
    }

    #[inline(never)]
    fn step_after_miss(mut self) -> (Step, Cursor) {
        if !self.rules_fit {
            return (Step::NoRoom, self);
        }
        let step = match rule_after_miss(self.lookup) {
            Ok(Rule::Step {
                from_rbp,
                cfa_offset,
                rbp_slot,
            }) => self.apply(from_rbp, cfa_offset as usize, rbp_slot as usize),
            Ok(Rule::Outermost) | Err(Miss::NoInfo) => Step::End,
            Err(Miss::Unsupported) => Step::Fallback,
        };
        (step, self)
    }

    /// Applies one rule: the CFA is `cfa_offset` bytes above the stack pointer (or the frame pointer, with
    /// `from_rbp`), the return address is at CFA − 8, the caller's frame pointer at CFA − 8·`rbp_slot`
    /// unless `rbp_slot` is 0.
    #[inline(always)]
    fn apply(&mut self, from_rbp: bool, cfa_offset: usize, rbp_slot: usize) -> Step {
        let base = if from_rbp { self.fp } else { self.sp };
        let cfa = base.wrapping_add(cfa_offset);
        // Every slot read lies in [sp, stack_top), the live part of this thread's stack, and is a whole
        // aligned word; a CFA outside it or not 8-aligned means the rules do not describe this stack (a frame
        // pointer not kept as the rule assumes, a stale rule of unloaded code).
        let lowest_read = cfa.wrapping_sub(8 * rbp_slot.max(1));
        if !cfa.is_multiple_of(8) || cfa <= self.sp || cfa > self.stack_top || lowest_read < self.sp
        {
            return Step::Fallback;
        }
        // SAFETY: `cfa - 8` is 8-aligned and lies in [sp, stack_top), mapped stack memory of this thread
        // (checked above).
        let return_address = unsafe { *((cfa - 8) as *const usize) };
        if rbp_slot != 0 {
            // SAFETY: `cfa - 8·rbp_slot` is 8-aligned and lies in [sp, stack_top) (checked above).
            self.fp = unsafe { *((cfa - 8 * rbp_slot) as *const usize) };
        }
        self.sp = cfa;
        self.from_rbp = from_rbp;
        self.rbp_slot = rbp_slot;
        if return_address == 0 {
            return Step::ZeroReturn;
        }
        self.lookup = return_address - 1;
        Step::Frame(return_address)
    }
}

/// Steps a thread remembers of its last walk: enough for most stacks of the default depth. A step is one bit
/// of a `u64` in [`Memo`]'s masks.
const REMEMBERED_STEPS: usize = 64;
const _: () = assert!(REMEMBERED_STEPS <= u64::BITS as usize);

/// The bits of steps `from..to` of a step mask (`from <= to <= 64`).
#[inline(always)]
fn step_bits(from: usize, to: usize) -> u64 {
    let from_on = |i: usize| u64::MAX.checked_shl(i as u32).unwrap_or(0);
    from_on(from) & !from_on(to)
}

/// `mask` with its bits `from..to` moved to `to_index..`, as [`Memo::move_steps`] moves steps.
fn move_bits(mask: u64, from: usize, to: usize, to_index: usize) -> u64 {
    let moved = (mask & step_bits(from, to))
        .checked_shr(from as u32)
        .unwrap_or(0);
    (mask & !step_bits(to_index, to_index + (to - from)))
        | moved.checked_shl(to_index as u32).unwrap_or(0)
}

/// The last walk of a thread: its steps from the walk's own frame outwards. A walk that reaches a frame at
/// the same stack position with the same return address as a remembered step (or that starts where the
/// remembered walk started) checks that the stack words the remembered steps read after it are unchanged,
/// and copies their return addresses instead of stepping: the stacks of a thread's sampled allocations
/// mostly share their outer frames, which are then not unwound again.
///
/// Given the registers before a step, the step depends only on the rule of their address, which does not
/// change, and on the stack words it reads, which are kept: if those words are still there, the step goes
/// the same way. Step `i` is index `i` of each array and bit `i` of each mask, so that the check of the
/// return addresses runs through two arrays, and the copy of the frames is the copy of one.
struct Memo {
    /// Steps remembered; 0 for none (the last walk fell back, or did not recognise the entry point).
    len: usize,
    /// The first step whose return address is the program's (after the profiler's entry point).
    first: usize,
    /// Whether the walk ended after the last step remembered (else it was cut: more frames may follow).
    ended: bool,
    /// The stack and frame pointers the walk started from, in [`walk`].
    start_sp: usize,
    start_fp: usize,
    /// The number of the thread's last walk, from 1 (see [`Serial`]).
    serial: u64,
    /// How many frames the last walk had room for, if it replayed a remembered walk that reached the
    /// outermost frame; else 0.
    pure_room: usize,
    /// The CFA of each step: the caller's stack pointer.
    cfa: [usize; REMEMBERED_STEPS],
    /// The return address each step read at its CFA − 8 (0 for a step that ended the walk there).
    ret: [usize; REMEMBERED_STEPS],
    /// The frame pointer after each step: read at CFA − 8·slot when its rule has a save slot, else the one
    /// before the step.
    fp: [usize; REMEMBERED_STEPS],
    /// Where each step read the frame pointer it saved: CFA − 8·slot, for a step whose rule has a save slot
    /// (else 0).
    rbp_at: [usize; REMEMBERED_STEPS],
    /// The steps whose CFA came from the frame pointer.
    from_rbp: u64,
    /// The steps whose rule has a save slot for the frame pointer.
    saves_rbp: u64,
}

impl Memo {
    const EMPTY: Memo = Memo {
        len: 0,
        first: 0,
        ended: false,
        start_sp: 0,
        start_fp: 0,
        serial: 0,
        pure_room: 0,
        cfa: [0; REMEMBERED_STEPS],
        ret: [0; REMEMBERED_STEPS],
        fp: [0; REMEMBERED_STEPS],
        rbp_at: [0; REMEMBERED_STEPS],
        from_rbp: 0,
        saves_rbp: 0,
    };

    /// Remembers, as step `i`, the step the cursor just took, which read `return_address`.
    #[inline(always)]
    fn set_step(&mut self, i: usize, cursor: &Cursor, return_address: usize) {
        self.cfa[i] = cursor.sp;
        self.ret[i] = return_address;
        self.fp[i] = cursor.fp;
        self.rbp_at[i] = match cursor.rbp_slot {
            0 => 0,
            slot => cursor.sp - 8 * slot,
        };
        let bit = step_bits(i, i + 1);
        let set = |mask: u64, on: bool| if on { mask | bit } else { mask & !bit };
        self.from_rbp = set(self.from_rbp, cursor.from_rbp);
        self.saves_rbp = set(self.saves_rbp, cursor.rbp_slot != 0);
    }

    /// Moves the steps `from..to` to `to_index..`, as `copy_within` does.
    fn move_steps(&mut self, from: usize, to: usize, to_index: usize) {
        if from == to_index {
            return;
        }
        self.cfa.copy_within(from..to, to_index);
        self.ret.copy_within(from..to, to_index);
        self.fp.copy_within(from..to, to_index);
        self.rbp_at.copy_within(from..to, to_index);
        self.from_rbp = move_bits(self.from_rbp, from, to, to_index);
        self.saves_rbp = move_bits(self.saves_rbp, from, to, to_index);
    }

    /// Whether the steps `from..to` would go the same way again from the registers they were taken from, but
    /// for the frame pointer, which is `fp` now and was `remembered_fp` before step `from`: every return
    /// address they read is unchanged, and every step that takes its CFA from the frame pointer finds the one
    /// it found then. Returns the frame pointer after the steps.
    ///
    /// A saved frame pointer that differs does not stop the steps: in code built without frame pointers the
    /// register holds anything (a loop counter, a pointer), saved by the callee like any other register, and
    /// only a later step whose CFA is based on it depends on its value.
    ///
    /// The steps must start at or above the current stack pointer: at the start of the remembered walk, when
    /// the current walk starts there too, or at the CFA of step `from − 1`, when the current walk has just
    /// stepped there. The words they read then lie in the live part of the thread's stack: the remembered
    /// walk checked that each lies in [sp, stack_top) of this thread's stack, with `sp` the stack pointer
    /// before its step, and is 8-aligned, and the steps' CFAs rise from one step to the next (each above the
    /// stack pointer before it), so all lie between the stack pointer before step `from` and the stack's top.
    /// Each can then be read whatever the others hold, and they are read in runs, without a branch per step.
    #[inline(always)]
    fn verify(&self, from: usize, to: usize, fp: usize, remembered_fp: usize) -> Option<usize> {
        // SAFETY: each step's return address is at its CFA − 8, in the live part of the stack (see above).
        if unsafe { words_differ::<8>(&self.cfa[from..to], &self.ret[from..to]) } {
            return None;
        }
        let steps = step_bits(from, to);
        let saves_rbp = self.saves_rbp & steps;
        let from_rbp = self.from_rbp & steps;
        // A step whose CFA comes from the frame pointer right after one that saved it (every step, in code
        // built with frame pointers) finds the frame pointer that one reads now, which must be the one it read.
        let saved_then_used = (from_rbp >> 1) & saves_rbp;
        if saved_then_used != 0 && self.saved_differ(saved_then_used) {
            return None;
        }
        // The others find the one that the last step before them that saves it reads now, or `fp`.
        let mut others = from_rbp & !(saved_then_used << 1);
        while others != 0 {
            let i = others.trailing_zeros() as usize;
            others &= others - 1;
            let expected = if i == from {
                remembered_fp
            } else {
                self.fp[i - 1]
            };
            if self.fp_before(i, saves_rbp, fp) != expected {
                return None;
            }
        }
        Some(self.fp_before(to, saves_rbp, fp))
    }

    /// Whether the frame pointer that one of the steps `saves` saved differs from the one it read, for steps
    /// being checked by [`Memo::verify`].
    fn saved_differ(&self, saves: u64) -> bool {
        let first = saves.trailing_zeros() as usize;
        let end = (u64::BITS - saves.leading_zeros()) as usize;
        if saves == step_bits(first, end) {
            // SAFETY: each saved frame pointer lies in the live part of the stack (see `verify`).
            return unsafe { words_differ::<0>(&self.rbp_at[first..end], &self.fp[first..end]) };
        }
        let mut saves = saves;
        let mut differ = 0;
        while saves != 0 {
            let i = saves.trailing_zeros() as usize;
            saves &= saves - 1;
            // SAFETY: as above.
            differ |= unsafe { *(self.rbp_at[i] as *const usize) } ^ self.fp[i];
        }
        differ != 0
    }

    /// The frame pointer before step `i`, given `fp` before the first step of `saves_rbp`, the steps being
    /// checked by [`Memo::verify`] that save it: as the last of them before `i` reads it now, or `fp` if none
    /// does.
    #[inline(always)]
    fn fp_before(&self, i: usize, saves_rbp: u64, fp: usize) -> usize {
        let before = saves_rbp & step_bits(0, i);
        if before == 0 {
            return fp;
        }
        let last = (u64::BITS - 1 - before.leading_zeros()) as usize;
        // SAFETY: the saved frame pointer lies in the live part of the stack (see `verify`).
        unsafe { *(self.rbp_at[last] as *const usize) }
    }
}

/// Whether one of the words at `addresses[i] − BELOW` is no longer `expected[i]`. Compares them four at a
/// time, with one branch for the four.
///
/// # Safety
///
/// Every `addresses[i] − BELOW` must be an aligned word of mapped memory.
#[inline(always)]
unsafe fn words_differ<const BELOW: usize>(addresses: &[usize], expected: &[usize]) -> bool {
    // SAFETY: the caller's promise.
    let differs =
        |at: usize, expected: usize| unsafe { *((at - BELOW) as *const usize) } ^ expected;
    let four = |at: &[usize; 4], expected: &[usize; 4]| {
        differs(at[0], expected[0])
            | differs(at[1], expected[1])
            | differs(at[2], expected[2])
            | differs(at[3], expected[3])
    };
    for (at, expected) in addresses
        .as_chunks::<4>()
        .0
        .iter()
        .zip(expected.as_chunks::<4>().0)
    {
        if four(at, expected) != 0 {
            return true;
        }
    }
    if addresses.len().is_multiple_of(4) {
        return false;
    }
    let differ = match (addresses.last_chunk::<4>(), expected.last_chunk::<4>()) {
        // The last four again, which takes in the one to three past the last whole four.
        (Some(at), Some(expected)) => four(at, expected),
        _ => addresses
            .iter()
            .zip(expected)
            .fold(0, |differ, (&at, &expected)| differ | differs(at, expected)),
    };
    differ != 0
}

thread_local! {
    /// This thread's last walk. `const`-initialised, without destructor: reachable during thread exit.
    static MEMO: core::cell::UnsafeCell<Memo> = const { core::cell::UnsafeCell::new(Memo::EMPTY) };
}

/// What a walk produced.
pub(super) enum Walk {
    /// The stack was unwound: this many return addresses were written, and whether more frames remained.
    Done { len: usize, truncated: bool },
    /// The stack is the thread's last walk's, as [`Serial::repeats`] says, and nothing was written: the frames
    /// are the same, and only a sample that needs them (see [`write_last`]) writes them.
    Repeated,
    /// A frame needs the system unwinder: unwind the whole stack with it.
    Fallback,
    /// A rule had to be computed, and `rules_fit` was false: nothing was captured.
    NoRoom,
}

/// Which of its thread's walks a walk was, and which earlier one's frames it wrote again.
#[derive(Clone, Copy, Default)]
pub(super) struct Serial {
    /// The walk's number on its thread, from 1.
    pub(super) this: u64,
    /// The number of the thread's walk before this one when both replayed, from the same start and
    /// through the same stack words, the same remembered walk, one that reached the outermost frame, into
    /// as many frames: they wrote the same frames. 0 when that is not known.
    pub(super) repeats: u64,
}

/// Writes up to `frames.len()` return addresses of the current thread's stack into `frames`, innermost
/// first, starting with the caller of the function that starts at `skip_through` (or with this function's
/// caller if it is not found in the first few frames). `stack_top` is the top of the thread's own stack, on
/// which the caller has checked it runs. Without `rules_fit`, the walk looks nothing up (it has not the stack
/// room for libgcc's FDE lookup and the CFI evaluation): a rule missing from the table ends it with
/// [`Walk::NoRoom`].
#[inline(never)]
pub(super) fn walk(
    frames: &mut [MaybeUninit<usize>],
    skip_through: usize,
    stack_top: usize,
    rules_fit: bool,
) -> (Walk, Serial) {
    let (pc, sp, fp) = registers();
    let cursor = Cursor {
        lookup: pc,
        sp,
        fp,
        stack_top,
        rules_fit,
        from_rbp: false,
        rbp_slot: 0,
    };
    MEMO.try_with(|memo| {
        // SAFETY: only this thread's walks touch its memo, and they never overlap: a walk runs inside the
        // profiler guard and calls nothing that walks again.
        let memo = unsafe { &mut *memo.get() };
        walk_remembering(memo, cursor, frames, skip_through)
    })
    .unwrap_or((Walk::Fallback, Serial::default()))
}

/// The current walk's steps as they are remembered, in place of the last walk's: step `i` at index `i`.
/// The last walk's steps not yet passed, `old..old_len`, are kept above the current walk's, moved up the
/// array if the current walk reaches them.
struct Recorder {
    /// Steps of the current walk recorded.
    len: usize,
    /// Whether recording stopped (the array is full).
    cut: bool,
    old: usize,
    old_len: usize,
    /// Where the last walk's program frames start (moved with its steps).
    old_first: usize,
}

impl Recorder {
    /// Records the step the cursor just took, which read `return_address` (0 for a step that ended the
    /// walk).
    #[inline(always)]
    fn record(&mut self, memo: &mut Memo, cursor: &Cursor, return_address: usize) {
        if self.cut {
            return;
        }
        let i = self.len;
        if i >= REMEMBERED_STEPS {
            self.cut = true;
            return;
        }
        if i == self.old && i < self.old_len {
            if memo.cfa[i] <= cursor.sp {
                // The last walk's step at this index is at or below this one: the walk goes on above it, so
                // no later step rejoins it, and this one takes its place.
                self.old = i + 1;
            } else {
                self.make_room(memo);
            }
        }
        memo.set_step(i, cursor, return_address);
        self.len = i + 1;
    }

    /// The current walk reached the index of the last walk's next step, which lies above the current
    /// step: moves the last walk's steps from there to the top of the array, or forgets them if they do not
    /// fit there.
    #[cold]
    #[inline(never)]
    fn make_room(&mut self, memo: &mut Memo) {
        let to = REMEMBERED_STEPS - (self.old_len - self.old);
        if to > self.len {
            memo.move_steps(self.old, self.old_len, to);
            self.old_first = (self.old_first + to).saturating_sub(self.old);
            self.old = to;
            self.old_len = REMEMBERED_STEPS;
        } else {
            self.old_len = self.old;
        }
    }

    /// After the current walk's step to `cursor`, which read `return_address` (a frame of the program): if the
    /// last walk took a step to the same stack position with the same return address and what follows it is
    /// unchanged, records the step and the last walk's steps after it as the current walk's, and returns the
    /// index of the first of those and the frame pointer after them.
    #[inline(always)]
    fn rejoin(
        &mut self,
        memo: &mut Memo,
        cursor: &Cursor,
        return_address: usize,
    ) -> Option<(usize, usize)> {
        while self.old < self.old_len && memo.cfa[self.old] < cursor.sp {
            self.old += 1;
        }
        if self.cut || self.old == self.old_len || self.old + 1 < self.old_first {
            return None;
        }
        if memo.cfa[self.old] != cursor.sp || memo.ret[self.old] != return_address {
            return None;
        }
        self.rejoin_at(memo, cursor, return_address)
    }

    #[inline(never)]
    fn rejoin_at(
        &mut self,
        memo: &mut Memo,
        cursor: &Cursor,
        return_address: usize,
    ) -> Option<(usize, usize)> {
        let (old, old_len) = (self.old, self.old_len);
        let fp = memo.verify(old + 1, old_len, cursor.fp, memo.fp[old])?;
        // The current walk's steps stay below the last walk's (see `record`): `len <= old`.
        debug_assert!(self.len <= old);
        let i = self.len;
        memo.set_step(i, cursor, return_address);
        memo.move_steps(old + 1, old_len, i + 1);
        self.len = i + 1 + (old_len - old - 1);
        self.old = 0;
        self.old_len = 0;
        Some((i + 1, fp))
    }
}

/// [`walk`] from `cursor`, with this thread's `memo` of its last walk, which it replaces with this one.
fn walk_remembering(
    memo: &mut Memo,
    cursor: Cursor,
    frames: &mut [MaybeUninit<usize>],
    skip_through: usize,
) -> (Walk, Serial) {
    let previous = memo.serial;
    memo.serial = previous.wrapping_add(1);
    let mut serial = Serial {
        this: memo.serial,
        repeats: 0,
    };
    let pure_room = core::mem::replace(&mut memo.pure_room, 0);
    // Started where the last walk started, through unchanged frames: the same walk.
    if memo.len > 0
        && memo.start_sp == cursor.sp
        && let Some(fp) = memo.verify(0, memo.len, cursor.fp, memo.start_fp)
    {
        let first = memo.first;
        let mut recorder = Recorder {
            len: memo.len,
            cut: false,
            old: 0,
            old_len: 0,
            old_first: 0,
        };
        // A remembered walk that reached the outermost frame is copied and nothing else: the frames written
        // depend on the steps remembered and the room alone, which a replay leaves as they were. Into as many
        // frames as the last walk, which did the same, the frames are those it wrote: they are not copied.
        if memo.ended {
            memo.pure_room = frames.len();
            if pure_room == frames.len() {
                serial.repeats = previous;
                return (Walk::Repeated, serial);
            }
        }
        let walk = replay(memo, &mut recorder, cursor, fp, first, frames, 0);
        return (walk, serial);
    }

    let mut recorder = Recorder {
        len: 0,
        cut: false,
        old: 0,
        old_len: memo.len,
        old_first: memo.first,
    };
    memo.start_sp = cursor.sp;
    memo.start_fp = cursor.fp;
    let walk = walk_recording(memo, &mut recorder, cursor, frames, skip_through);
    if !matches!(walk, Walk::Done { .. }) {
        memo.len = 0;
    }
    (walk, serial)
}

/// Copies the return addresses of the remembered steps from `from` on into `frames` from `len` on, and
/// goes on walking past them if the remembered walk was cut and `frames` has room left. `cursor` is the
/// state before step `from`; `fp` the frame pointer after the steps.
fn replay(
    memo: &mut Memo,
    recorder: &mut Recorder,
    mut cursor: Cursor,
    fp: usize,
    from: usize,
    frames: &mut [MaybeUninit<usize>],
    mut len: usize,
) -> Walk {
    let end = recorder.len;
    let returns = frame_returns(&memo.ret[from..end]);
    let copied = write_returns(returns, &mut frames[len..]);
    len += copied;
    if copied < returns.len() {
        memo.len = end;
        return Walk::Done {
            len,
            truncated: true,
        };
    }
    memo.len = end;
    if memo.ended {
        return Walk::Done {
            len,
            truncated: false,
        };
    }
    // The remembered walk was cut: go on from its last step.
    if let Some(last) = end.checked_sub(1) {
        cursor.lookup = memo.ret[last].wrapping_sub(1);
        cursor.sp = memo.cfa[last];
        cursor.fp = fp;
    }
    let walk = program_frames(memo, recorder, cursor, frames, len);
    if !matches!(walk, Walk::Done { .. }) {
        memo.len = 0;
    }
    walk
}

/// The return addresses of some remembered steps without the zero one that ended the walk, not a frame.
fn frame_returns(returns: &[usize]) -> &[usize] {
    match returns {
        [frames_of @ .., 0] => frames_of,
        _ => returns,
    }
}

/// Writes `returns` into `frames`, as many as fit; returns how many.
fn write_returns(returns: &[usize], frames: &mut [MaybeUninit<usize>]) -> usize {
    let copied = returns.len().min(frames.len());
    for (frame, &return_address) in frames[..copied].iter_mut().zip(&returns[..copied]) {
        frame.write(return_address);
    }
    copied
}

/// Writes the frames of the thread's last walk, a [`Walk::Repeated`] into as many `frames`, as that walk's
/// replay would have: returns how many were written, and whether more frames remained. To be called before
/// the thread walks again.
pub(super) fn write_last(frames: &mut [MaybeUninit<usize>]) -> (usize, bool) {
    MEMO.try_with(|memo| {
        // SAFETY: as in `walk`: only this thread's walks touch its memo, and none runs meanwhile.
        let memo = unsafe { &*memo.get() };
        debug_assert!(memo.ended && memo.pure_room == frames.len());
        let returns = frame_returns(&memo.ret[memo.first..memo.len]);
        let len = write_returns(returns, frames);
        (len, len < returns.len())
    })
    .unwrap_or((0, false))
}

/// The walk, recording each step: the profiler's own frames first, up to its entry point, then the
/// program's.
fn walk_recording(
    memo: &mut Memo,
    recorder: &mut Recorder,
    mut cursor: Cursor,
    frames: &mut [MaybeUninit<usize>],
    skip_through: usize,
) -> Walk {
    // The profiler's own frames, up to the entry point, recognised by a remembered return address.
    let mut own = [0usize; ENTRY_SEARCH_FRAMES];
    let mut own_len = 0;
    let mut ended = false;
    let mut entry_found = false;
    while own_len < ENTRY_SEARCH_FRAMES {
        match cursor.step() {
            Step::Frame(return_address) => {
                recorder.record(memo, &cursor, return_address);
                if known_entry_return(return_address) {
                    entry_found = true;
                    break;
                }
                own[own_len] = return_address;
                own_len += 1;
            }
            Step::ZeroReturn => {
                recorder.record(memo, &cursor, 0);
                ended = true;
                break;
            }
            Step::End => {
                ended = true;
                break;
            }
            Step::Fallback => return Walk::Fallback,
            Step::NoRoom => return Walk::NoRoom,
        }
    }
    let kept = if entry_found {
        &own[..0]
    } else if !cursor.rules_fit {
        // Finding the entry point by function address is an FDE lookup too.
        return Walk::NoRoom;
    } else {
        // The first walk (or a new entry point): not remembered, so that a walk that starts like it finds
        // the entry point by its return address. Find the entry by function address; failing that, keep
        // every frame, and the dump trims the profiler's by name.
        recorder.cut = true;
        recorder.len = 0;
        match own[..own_len]
            .iter()
            .position(|&return_address| returns_into(return_address, skip_through))
        {
            Some(entry) => &own[entry + 1..own_len],
            None => &own[..own_len],
        }
    };
    memo.first = recorder.len;
    let len = kept.len().min(frames.len());
    for (frame, &return_address) in frames.iter_mut().zip(&kept[..len]) {
        frame.write(return_address);
    }
    if len < kept.len() {
        return finish(memo, recorder, false, len, true);
    }
    if ended {
        return finish(memo, recorder, true, len, false);
    }
    program_frames(memo, recorder, cursor, frames, len)
}

/// Walks the program's frames from `cursor` on, writing them into `frames` from `len` on.
fn program_frames(
    memo: &mut Memo,
    recorder: &mut Recorder,
    mut cursor: Cursor,
    frames: &mut [MaybeUninit<usize>],
    mut len: usize,
) -> Walk {
    loop {
        match cursor.step() {
            Step::Frame(return_address) => {
                if let Some((from, fp)) = recorder.rejoin(memo, &cursor, return_address) {
                    if len == frames.len() {
                        memo.len = recorder.len;
                        return Walk::Done {
                            len,
                            truncated: true,
                        };
                    }
                    frames[len].write(return_address);
                    // The last walk's end is this one's now.
                    return replay(memo, recorder, cursor, fp, from, frames, len + 1);
                }
                recorder.record(memo, &cursor, return_address);
                if len == frames.len() {
                    return finish(memo, recorder, false, len, true);
                }
                frames[len].write(return_address);
                len += 1;
            }
            Step::ZeroReturn => {
                recorder.record(memo, &cursor, 0);
                return finish(memo, recorder, true, len, false);
            }
            Step::End => return finish(memo, recorder, true, len, false),
            Step::Fallback => return Walk::Fallback,
            Step::NoRoom => return Walk::NoRoom,
        }
    }
}

/// Ends a walk of `len` frames (`truncated` if more remained): remembers it, as having `ended` if no frame
/// followed its last step.
fn finish(memo: &mut Memo, recorder: &Recorder, ended: bool, len: usize, truncated: bool) -> Walk {
    memo.len = recorder.len;
    memo.ended = ended && !recorder.cut;
    Walk::Done { len, truncated }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rule_that_does_not_fit_the_stack_falls_back_without_reading() {
        // A one-page "stack" between two inaccessible pages: a read outside it faults, failing the test.
        // SAFETY: a private anonymous mapping of three pages, the outer two made inaccessible; only the
        // middle one is read (by `apply`, if it is right) or written (here), and all is unmapped at the end.
        let base = unsafe {
            let base = libc::mmap(
                core::ptr::null_mut(),
                3 * 4096,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            assert_ne!(base, libc::MAP_FAILED);
            let stack = base.cast::<u8>().add(4096).cast();
            assert_eq!(
                libc::mprotect(stack, 4096, libc::PROT_READ | libc::PROT_WRITE),
                0
            );
            base as usize
        };
        let (low, high) = (base + 4096, base + 2 * 4096);
        let cursor = |sp: usize, fp: usize| Cursor {
            lookup: 1,
            sp,
            fp,
            stack_top: high,
            rules_fit: true,
            from_rbp: false,
            rbp_slot: 0,
        };
        let falls_back = |sp, fp, from_rbp, cfa_offset, rbp_slot| {
            matches!(
                cursor(sp, fp).apply(from_rbp, cfa_offset, rbp_slot),
                Step::Fallback
            )
        };
        // A frame pointer that is not a word's address (a corrupted or stale rule).
        assert!(falls_back(low, low + 3, true, 16, 2));
        // A CFA above the stack's top, from the frame pointer or the stack pointer.
        assert!(falls_back(low, high, true, 16, 2));
        assert!(falls_back(low, low, false, 8 * 1024, 0));
        // A CFA at or below the stack pointer, and one that wraps around the address space.
        assert!(falls_back(low + 64, low, true, 16, 2));
        assert!(falls_back(low + 64, low + 64, false, 0, 0));
        assert!(falls_back(low + 64, usize::MAX - 8, true, 16, 2));
        // The caller's frame pointer saved below the stack pointer.
        assert!(falls_back(low + 64, low, false, 16, 4));
        // A rule that fits reads the return address at CFA − 8 and the frame pointer at CFA − 16, here the
        // last two words below the top.
        let return_address = 0x5555_0000_1234_usize;
        // SAFETY: the two words lie in the middle page, mapped read-write.
        unsafe {
            ((high - 8) as *mut usize).write(return_address);
            ((high - 16) as *mut usize).write(low + 256);
        }
        let mut at_top = cursor(high - 16, 0);
        assert!(matches!(
            at_top.apply(false, 16, 2),
            Step::Frame(found) if found == return_address
        ));
        assert_eq!((at_top.sp, at_top.fp), (high, low + 256));
        // SAFETY: the mapping made above, no longer used.
        unsafe { libc::munmap(base as *mut libc::c_void, 3 * 4096) };
    }

    /// The cursor after a step of a made-up walk to `cfa`, as [`Memo::set_step`] takes it.
    fn after_step(cfa: usize, fp: usize, from_rbp: bool, rbp_slot: usize) -> Cursor {
        Cursor {
            lookup: 0,
            sp: cfa,
            fp,
            stack_top: 0,
            rules_fit: false,
            from_rbp,
            rbp_slot,
        }
    }

    /// What [`Memo::verify`] answers, found step by step as the walk goes: the reference its checks are
    /// compared with.
    fn verify_step_by_step(
        memo: &Memo,
        from: usize,
        to: usize,
        mut fp: usize,
        remembered_fp: usize,
    ) -> Option<usize> {
        let mut expected_fp = remembered_fp;
        for i in from..to {
            // SAFETY: the tests' steps read words of their own made-up stacks, as `verify` does.
            let read = unsafe { *((memo.cfa[i] - 8) as *const usize) };
            if read != memo.ret[i] || (memo.from_rbp >> i & 1 == 1 && fp != expected_fp) {
                return None;
            }
            if memo.saves_rbp >> i & 1 == 1 {
                // SAFETY: as above.
                fp = unsafe { *(memo.rbp_at[i] as *const usize) };
            }
            expected_fp = memo.fp[i];
        }
        Some(fp)
    }

    #[test]
    fn a_remembered_walk_goes_on_past_a_saved_frame_pointer_that_changed_unless_a_cfa_needs_it() {
        // A made-up stack of 8 words: step 0 (CFA from the stack pointer) saves the caller's frame pointer
        // at CFA − 16; step 1 takes its CFA from that frame pointer.
        let mut stack = [0usize; 8];
        let words = stack.as_mut_ptr();
        let base = words as usize;
        // SAFETY: `i` < 8, within `stack`, which is only reached through `words` from here on.
        let set = |i: usize, value: usize| unsafe { words.add(i).write(value) };
        let (cfa0, cfa1) = (base + 3 * 8, base + 6 * 8);
        let (ret0, ret1) = (0x5555_0000_1000_usize, 0x5555_0000_2000_usize);
        set(2, ret0);
        set(1, cfa1 - 32);
        set(5, ret1);
        let mut memo = Memo::EMPTY;
        memo.set_step(0, &after_step(cfa0, cfa1 - 32, false, 2), ret0);
        memo.set_step(1, &after_step(cfa1, cfa1 - 32, true, 0), ret1);
        // Unchanged, from any frame pointer before step 0 (only step 1's CFA depends on one, step 0's).
        assert_eq!(memo.verify(0, 2, 7, 7), Some(cfa1 - 32));
        assert_eq!(memo.verify(0, 2, 99, 7), Some(cfa1 - 32));
        // The saved frame pointer changed: the step that used it for its CFA cannot be replayed…
        set(1, 12345 * 8);
        assert_eq!(memo.verify(0, 2, 7, 7), None);
        // …but the steps before it can, and give the frame pointer as it is now.
        assert_eq!(memo.verify(0, 1, 7, 7), Some(12345 * 8));
        // A step whose CFA comes from the frame pointer, entered with another one than remembered.
        assert_eq!(memo.verify(1, 2, 8, cfa1 - 32), None);
        assert_eq!(memo.verify(1, 2, cfa1 - 32, cfa1 - 32), Some(cfa1 - 32));
        // A return address that changed.
        set(1, cfa1 - 32);
        set(5, ret0);
        assert_eq!(memo.verify(0, 2, 7, 7), None);
    }

    #[test]
    fn a_remembered_walk_stops_at_any_return_address_that_changed() {
        // 11 steps of 3 words each, without frame pointers: the return address at CFA − 8, and every third
        // step saving the frame pointer (a register like any other here) at CFA − 16.
        const STEPS: usize = 11;
        let mut stack = [0usize; 3 * STEPS];
        let words = stack.as_mut_ptr();
        let base = words as usize;
        // SAFETY: `i` < 3·STEPS, within `stack`, which is only reached through `words` from here on.
        let set = |i: usize, value: usize| unsafe { words.add(i).write(value) };
        let return_address = |step: usize| 0x5555_0000_1000 + 16 * step;
        let saves = |step: usize| step % 3 == 1;
        let mut memo = Memo::EMPTY;
        let mut fp = 5;
        for step in 0..STEPS {
            set(3 * step + 2, return_address(step));
            if saves(step) {
                fp = 100 + step;
                set(3 * step + 1, fp);
            }
            let cfa = base + 8 * (3 * step + 3);
            let cursor = after_step(cfa, fp, false, if saves(step) { 2 } else { 0 });
            memo.set_step(step, &cursor, return_address(step));
        }
        let last_saved = 100 + (0..STEPS).rfind(|&step| saves(step)).unwrap();
        for from in 0..STEPS {
            for to in from..=STEPS {
                let expected = verify_step_by_step(&memo, from, to, 5, 5);
                assert!(expected.is_some());
                assert_eq!(memo.verify(from, to, 5, 5), expected);
            }
        }
        assert_eq!(memo.verify(0, STEPS, 5, 5), Some(last_saved));
        // Each return address changed in turn, in and past the whole fours that are checked together.
        for step in 0..STEPS {
            set(3 * step + 2, return_address(step) + 1);
            for from in 0..=step {
                for to in step + 1..=STEPS {
                    assert_eq!(memo.verify(from, to, 5, 5), None, "{step} in {from}..{to}");
                }
            }
            set(3 * step + 2, return_address(step));
        }
        // A saved frame pointer changed: no CFA depends on it, and the walk goes on with the value read now.
        set(3 * 4 + 1, 77);
        assert_eq!(memo.verify(0, 5, 5, 5), Some(77));
        assert_eq!(memo.verify(0, STEPS, 5, 5), Some(last_saved));
        set(3 * (STEPS - 1) + 1, 78);
        assert_eq!(memo.verify(0, STEPS, 5, 5), Some(78));
    }

    #[test]
    fn the_checks_of_a_remembered_walk_answer_as_its_steps_would() {
        // Made-up walks through a made-up stack, in which one word may change, checked from and to every
        // step, from the frame pointer remembered or another, before and after the steps are moved up the
        // array: the answers are those of the steps taken one by one.
        let mut stack = [0usize; 8 * REMEMBERED_STEPS];
        let words = stack.as_mut_ptr();
        let base = words as usize;
        // SAFETY: `i` < the stack's length, and `stack` is only reached through `words` from here on.
        let set = |i: usize, value: usize| unsafe { words.add(i).write(value) };
        // SAFETY: as above.
        let get = |i: usize| unsafe { words.add(i).read() };
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut random = |below: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % below as u64) as usize
        };
        let (mut accepted, mut refused) = (0, 0);
        for _ in 0..3000 {
            let len = 1 + random(REMEMBERED_STEPS);
            let start_fp = 1000 + random(4);
            // A third of the walks are as in code built with frame pointers: most steps save the frame
            // pointer at CFA − 16 and take their CFA from it.
            let frame_pointers = random(3) == 0;
            let mut memo = Memo::EMPTY;
            // The index in `stack` of each step's return address, and of its saved frame pointer.
            let mut read = [(0, None); REMEMBERED_STEPS];
            let (mut sp, mut fp) = (0, start_fp);
            for (step, read) in read.iter_mut().enumerate().take(len) {
                let size = 2 + random(6);
                let cfa = sp + size;
                let (from_rbp, slot) = match frame_pointers && random(8) != 0 {
                    true => (true, 2),
                    false => (
                        random(3) == 0,
                        if random(3) == 0 { 1 + random(size) } else { 0 },
                    ),
                };
                set(cfa - 1, 0x5555_0000_0000 + random(1 << 20));
                if slot != 0 {
                    // Frame pointers from a few values, so that a changed one may be the same again.
                    fp = 1000 + random(4);
                    set(cfa - slot, fp);
                }
                let cursor = after_step(base + 8 * cfa, fp, from_rbp, slot);
                memo.set_step(step, &cursor, get(cfa - 1));
                *read = (cfa - 1, (slot != 0).then(|| cfa - slot));
                sp = cfa;
            }
            // Most of the time, a word of the walk's part of the stack changes, perhaps to its own value: a
            // return address, a saved frame pointer, or any word.
            let (return_at, saved_at) = read[random(len)];
            let changed = match random(4) {
                0 => None,
                1 => Some(return_at),
                2 => saved_at,
                _ => Some(random(sp)),
            };
            if let Some(i) = changed {
                set(
                    i,
                    if random(4) == 0 {
                        get(i)
                    } else {
                        1000 + random(4)
                    },
                );
            }
            let from = random(len + 1);
            let to = from + random(len - from + 1);
            let entry_fp = 1000 + random(4);
            let remembered_fp = match from {
                0 => start_fp,
                _ => memo.fp[from - 1],
            };
            let expected = verify_step_by_step(&memo, from, to, entry_fp, remembered_fp);
            assert_eq!(memo.verify(from, to, entry_fp, remembered_fp), expected);
            // The same steps moved to the top of the array.
            let up = REMEMBERED_STEPS - len;
            memo.move_steps(0, len, up);
            let moved = memo.verify(up + from, up + to, entry_fp, remembered_fp);
            assert_eq!(moved, expected);
            let moved_reference =
                verify_step_by_step(&memo, up + from, up + to, entry_fp, remembered_fp);
            assert_eq!(moved_reference, expected);
            if expected.is_some() {
                accepted += 1;
            } else {
                refused += 1;
            }
        }
        // Both answers are common enough to have been tested.
        assert!(accepted > 750 && refused > 750, "{accepted} {refused}");
    }

    #[test]
    fn rules_round_trip_through_table_words() {
        let address = 0x5555_1234_5678;
        for rule in [
            Rule::Outermost,
            Rule::Step {
                from_rbp: false,
                cfa_offset: 8,
                rbp_slot: 0,
            },
            Rule::Step {
                from_rbp: true,
                cfa_offset: 16,
                rbp_slot: 2,
            },
            Rule::Step {
                from_rbp: false,
                cfa_offset: MAX_CACHED_CFA_OFFSET,
                rbp_slot: MAX_RBP_SLOT,
            },
        ] {
            let word = pack(address, rule).unwrap();
            assert_eq!(word & ADDRESS_MASK, address as u64);
            assert_eq!(unpack(word), rule);
        }
        let large = Rule::Step {
            from_rbp: false,
            cfa_offset: MAX_CACHED_CFA_OFFSET + 8,
            rbp_slot: 0,
        };
        assert_eq!(pack(address, large), None);
        assert_eq!(pack(1 << 47, Rule::Outermost), None);
    }
}
