//! The allocator's fast path, pinned in the machine code of a release build, as tcmalloc's
//! `testing/fast_path.opt.golden` pins its own: an allocation that is not sampled costs a thread-local
//! subtraction and a sign test, a free a test of two bits of the pointer, and nothing else. What the compiler makes of
//! that is checked here, so that a change that puts a lock, an atomic read-modify-write or a call on that path
//! fails a test rather than slowing every allocation of every program unnoticed.
//!
//! The allocator's entry points are Rust's allocator shims (`__rust_alloc`, `__rust_alloc_zeroed`,
//! `__rust_dealloc`, `__rust_realloc`), into which the compiler inlines `SamplingAllocator`'s `GlobalAlloc`
//! methods, the sampler's countdown and the inner allocator's methods. A shim that only jumps to another
//! shim or to a `GlobalAlloc` method that was not inlined is followed there. The whole of each body is
//! checked, so that no decision is needed about which branch is the unsampled one:
//!
//! - no atomic read-modify-write and no full fence: no `lock` prefix, no `xchg` with memory (locked
//!   implicitly), no `cmpxchg`, no `mfence`;
//! - every call or jump out of the body goes to the inner allocator (the fixture wraps `System`, so libc's
//!   allocation functions and `System`'s own) or to one of the entry point's slow-path functions, named
//!   below: out-of-line, cold functions that hold everything a sample needs, locks included. Any other call
//!   (a lock's, a helper that is no longer inlined, an indirect call through a register) fails.
//!
//! Branches are not told apart, so a slow-path function called on every allocation would pass. Each entry
//! point must call both the inner allocator and one of its slow paths: otherwise the code found is not the
//! entry point described here, and the check fails.
//!
//! The free is held to more: whether a pointer may be sampled is told by two of its bits (see the crate's
//! `mark` module), so `__rust_dealloc`, up to its jumps to the inner allocator and to its slow path, reads
//! no memory at all (no operand in memory but the stack's, which only a frame's setup would touch) and is
//! at most [`MAX_FREE_INSTRUCTIONS`] instructions long.
//!
//! The instructions are x86-64's, as `objdump` prints them: the check exists only on x86-64.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::process::Command;

use crate::common;

/// Each allocator entry point checked, with the `heap_sampler` functions its sampled path may call or jump to
/// (by their last path segment): the sampler's slow path and the allocator's `#[cold]` functions.
const ENTRY_POINTS: &[(&str, &[&str])] = &[
    ("__rust_alloc", &["on_alloc_slow", "alloc_sampled"]),
    ("__rust_alloc_zeroed", &["on_alloc_slow", "alloc_sampled"]),
    ("__rust_dealloc", &["dealloc_candidate"]),
    ("__rust_realloc", &["on_alloc_slow", "realloc_slow"]),
];

/// The most instructions `__rust_dealloc` may have, over every function walked: the mask made from the
/// alignment, its test of the pointer and the branch, the tail call to the inner allocator, and the slow
/// path's jump with the allocator's address.
const MAX_FREE_INSTRUCTIONS: usize = 7;

/// The entry point whose code may not read memory, nor be longer than [`MAX_FREE_INSTRUCTIONS`].
const FREE_ENTRY: &str = "__rust_dealloc";

/// The inner allocator, `System`: the C library's functions it calls (`memset` zeroes a block allocated
/// with `posix_memalign` for `alloc_zeroed`).
const INNER_FUNCTIONS: &[&str] = &[
    "malloc",
    "calloc",
    "realloc",
    "free",
    "posix_memalign",
    "aligned_alloc",
    "memalign",
    "memset",
];

/// The inner allocator, `System`: its methods and the standard library's helpers for them, where they are not
/// inlined.
const INNER_PREFIXES: &[&str] = &[
    "<std::alloc::System as core::alloc::global::GlobalAlloc>::",
    "std::sys::alloc::",
];

/// Whether a function called from an entry point is part of that entry point: another of Rust's allocator
/// shims, or one of `SamplingAllocator`'s `GlobalAlloc` methods that was not inlined into the shim.
fn is_part_of_entry(name: &str) -> bool {
    let last = name.rsplit("::").next().unwrap_or(name);
    (!name.contains('<') && (last.starts_with("__rust_") || last.starts_with("__rg_")))
        || (name.starts_with("<heap_sampler::allocator::SamplingAllocator<")
            && name.contains(" as core::alloc::global::GlobalAlloc>::"))
}

fn is_inner_allocator(name: &str) -> bool {
    INNER_FUNCTIONS.contains(&name) || INNER_PREFIXES.iter().any(|p| name.starts_with(p))
}

fn is_slow_path(name: &str, slow: &[&str]) -> bool {
    name.starts_with("heap_sampler::") && slow.contains(&name.rsplit("::").next().unwrap_or(name))
}

/// One instruction as `objdump -d --no-show-raw-insn -C` prints it: its address, its prefixes and mnemonic,
/// its operands, and objdump's comment (the address a RIP-relative operand refers to).
struct Instruction {
    address: u64,
    prefixes: Vec<String>,
    mnemonic: String,
    operands: String,
    comment: String,
}

const PREFIXES: &[&str] = &[
    "lock", "rep", "repz", "repe", "repnz", "repne", "notrack", "bnd", "xacquire", "xrelease",
    "data16", "addr32", "cs", "ds", "ss", "es", "fs", "gs",
];

fn parse(line: &str) -> Option<Instruction> {
    let (address, text) = line.trim_start().split_once(":\t")?;
    let address = u64::from_str_radix(address, 16).ok()?;
    let (code, comment) = text.split_once('#').unwrap_or((text, ""));
    let mut words = code.split_whitespace().peekable();
    let mut prefixes = Vec::new();
    while let Some(word) = words.next_if(|w| PREFIXES.contains(w)) {
        prefixes.push(word.to_string());
    }
    let mnemonic = words.next().unwrap_or_default().to_string();
    Some(Instruction {
        address,
        prefixes,
        mnemonic,
        operands: words.collect::<Vec<_>>().join(" "),
        comment: comment.trim().to_string(),
    })
}

/// The first hexadecimal number of `text` (`45ef0 <name>`, `140088 <_DYNAMIC+0x270>`).
fn leading_address(text: &str) -> Option<u64> {
    u64::from_str_radix(text.split_whitespace().next()?, 16).ok()
}

/// The name objdump gives an address in `text` (`45ef0 <malloc@plt>`), without its version or PLT suffix.
fn annotated_name(text: &str) -> Option<String> {
    let inner = text.split_once('<')?.1.strip_suffix('>')?;
    Some(inner.split('@').next().unwrap_or(inner).to_string())
}

/// What the GOT slots of `elf` hold, by slot address, from its dynamic relocations (`readelf -rW`): the
/// function a `RELATIVE` slot points into, or the symbol a `GLOB_DAT` or `JUMP_SLOT` slot is bound to.
fn got_slots(elf: &Path, symbols: &[(u64, u64, String)]) -> HashMap<u64, String> {
    let hex = |s: &str| u64::from_str_radix(s, 16).ok();
    common::readelf("-rW", elf)
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let slot = hex(fields.first()?)?;
            let kind = *fields.get(2)?;
            let name = if kind.ends_with("_RELATIVE") {
                function_at(symbols, hex(fields.get(3)?)?)?.2.clone()
            } else if kind.ends_with("_GLOB_DAT") || kind.ends_with("_JUMP_SLOT") {
                match hex(fields.get(3)?)? {
                    0 => fields.get(4)?.split('@').next()?.to_string(),
                    value => function_at(symbols, value)?.2.clone(),
                }
            } else {
                return None;
            };
            Some((slot, name))
        })
        .collect()
}

/// The function of `symbols` whose code holds `address`.
fn function_at(symbols: &[(u64, u64, String)], address: u64) -> Option<&(u64, u64, String)> {
    let i = symbols.partition_point(|&(start, _, _)| start <= address);
    symbols[..i]
        .iter()
        .rev()
        .find(|&&(start, size, _)| address < start + size)
}

/// `objdump -d --no-show-raw-insn -C` of the bytes `start..end` of `elf`.
fn disassemble(elf: &Path, start: u64, end: u64) -> String {
    let out = Command::new("objdump")
        .args(["-d", "--no-show-raw-insn", "-C"])
        .arg(format!("--start-address={start:#x}"))
        .arg(format!("--stop-address={end:#x}"))
        .arg(elf)
        .output()
        .expect("objdump (binutils) runs");
    assert!(out.status.success(), "objdump failed: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What one entry point's code does, gathered over the functions that make it up.
#[derive(Default)]
struct Findings {
    /// The disassembly of each function walked, for the failure message.
    listing: String,
    problems: Vec<String>,
    inner_calls: BTreeSet<String>,
    slow_calls: BTreeSet<String>,
}

/// Checks the entry point `entry` of `elf` (see the module's documentation); panics with every problem and
/// the disassembly when one is found.
fn check_entry(
    elf: &Path,
    symbols: &[(u64, u64, String)],
    got: &HashMap<u64, String>,
    entry: &str,
    slow: &[&str],
) {
    let named = |name: &str| name == entry || name.ends_with(&format!("::{entry}"));
    let Some(&(start, size, ref name)) = symbols.iter().find(|(_, size, n)| *size > 0 && named(n))
    else {
        let shims: Vec<&str> = symbols
            .iter()
            .map(|(_, _, n)| n.as_str())
            .filter(|n| n.contains("__rust_") || n.contains("__rg_"))
            .collect();
        panic!(
            "no function {entry} in {}; the allocator shims found: {shims:?}",
            elf.display()
        );
    };
    let mut findings = Findings::default();
    let mut queue = vec![(start, start + size, name.clone())];
    let mut walked = BTreeSet::new();
    let mut instructions = 0;
    while let Some((start, end, function)) = queue.pop() {
        if !walked.insert(start) {
            continue;
        }
        let text = disassemble(elf, start, end);
        findings.listing += &text;
        for instruction in text.lines().filter_map(parse) {
            let at = format!("{function}+{:#x}", instruction.address - start);
            let m = instruction.mnemonic.as_str();
            let memory = instruction.operands.contains('(');
            // Padding between functions is not the function's.
            if !m.starts_with("nop") && m != "int3" {
                instructions += 1;
            }
            let on_stack =
                instruction.operands.contains("(%rsp") || instruction.operands.contains("(%rbp");
            if entry == FREE_ENTRY
                && memory
                && !on_stack
                && !m.starts_with("nop")
                && !m.starts_with("lea")
                && !instruction.operands.starts_with('*')
            {
                findings.problems.push(format!(
                    "{at}: the free reads memory: {m} {}",
                    instruction.operands
                ));
            }
            if instruction.prefixes.iter().any(|p| p == "lock")
                || (m.starts_with("xchg") && memory)
                || m.starts_with("cmpxchg")
                || m == "mfence"
            {
                findings.problems.push(format!(
                    "{at}: an atomic read-modify-write or fence: {} {m} {}",
                    instruction.prefixes.join(" "),
                    instruction.operands
                ));
                continue;
            }
            if !(m.starts_with("call") || m.starts_with('j')) {
                continue;
            }
            let target = match instruction.operands.strip_prefix('*') {
                // Through a GOT slot: `*0xfa5aa(%rip)`, objdump's comment giving the slot's address.
                Some(slot) if slot.ends_with("(%rip)") => {
                    leading_address(&instruction.comment).and_then(|s| got.get(&s).cloned())
                }
                Some(_) => None,
                None => match leading_address(&instruction.operands) {
                    Some(address) if (start..end).contains(&address) => continue,
                    Some(address) => match function_at(symbols, address) {
                        Some((s, size, name)) if is_part_of_entry(name) => {
                            queue.push((*s, s + size, name.clone()));
                            continue;
                        }
                        Some((_, _, name)) => Some(name.clone()),
                        // Not in the symbol table: a PLT entry, which objdump names.
                        None => annotated_name(&instruction.operands),
                    },
                    None => None,
                },
            };
            match target {
                Some(name) if is_inner_allocator(&name) => {
                    findings.inner_calls.insert(name);
                }
                Some(name) if is_slow_path(&name, slow) => {
                    findings.slow_calls.insert(name);
                }
                Some(name) => findings.problems.push(format!(
                    "{at}: {m} to {name}, neither the inner allocator nor a slow path"
                )),
                None => findings.problems.push(format!(
                    "{at}: {m} {} to an unknown target",
                    instruction.operands
                )),
            }
        }
    }
    eprintln!(
        "[fast path] {entry}: {} function(s) walked; calls the inner allocator's {:?} and the slow paths {:?}",
        walked.len(),
        findings.inner_calls,
        findings.slow_calls
    );
    if entry == FREE_ENTRY && instructions > MAX_FREE_INSTRUCTIONS {
        findings.problems.push(format!(
            "{instructions} instructions, more than {MAX_FREE_INSTRUCTIONS} for the free"
        ));
    }
    // Without both, the code walked is not the entry point this check describes.
    if findings.inner_calls.is_empty() {
        findings
            .problems
            .push("no call to the inner allocator found".to_string());
    }
    if findings.slow_calls.is_empty() {
        findings.problems.push(format!(
            "no call to a slow path found (expected one of {slow:?})"
        ));
    }
    assert!(
        findings.problems.is_empty(),
        "the allocator's entry point {entry} in {} breaks the fast path's rules:\n{}\n\n{}",
        elf.display(),
        findings.problems.join("\n"),
        findings.listing
    );
}

/// Checks the allocator's entry points in `elf`, a release build that installs
/// `SamplingAllocator<System>` (see the module's documentation).
pub fn check(elf: &Path) {
    let symbols = super::symbol_table(elf);
    let got = got_slots(elf, &symbols);
    for (entry, slow) in ENTRY_POINTS {
        check_entry(elf, &symbols, &got, entry, slow);
    }
}
