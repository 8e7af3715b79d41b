//! Configuration by environment ([`crate::env`]), in three roles: [`parse`] reads what the variables ask for,
//! [`constructor`] applies it once at process start (before `main`, also in programs that call no
//! heap_sampler function), and [`autodump`] writes the profiles asked for (at exit, periodically) through the
//! one safe file writer of [`crate::output`].

mod autodump;
mod constructor;
mod parse;

/// Reports on stderr; a failed write is ignored (`eprintln!` would panic, and abort the process here).
fn warn(message: String) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "heap-sampler: {message}");
}
