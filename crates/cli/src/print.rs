//! Printing that a closed pipe ends quietly: `cascade ... | head` must not
//! panic as `println!` does once `head` has gone (issue 10, section 5).
//!
//! Every line the binary prints goes through [`outln!`] / [`out!`] (stdout)
//! or [`errln!`] (stderr). A write to stdout that fails with `EPIPE`
//! unwinds to `main` with a [`ClosedStdout`] payload (without running the
//! panic hook, so nothing is printed), dropping whatever the command held —
//! quickstart's child processes are killed on the way — and `main` exits 0.
//! A failed write to stderr is ignored: there is nowhere left to report it,
//! and the command's own exit code still tells the outcome.

use std::io::Write;

/// The payload `main` recognises as "stdout was closed: stop quietly".
pub struct ClosedStdout;

/// Writes `args` to stdout and flushes it. A closed pipe unwinds with
/// [`ClosedStdout`]; any other write error (a full disk) ends the process
/// with exit code 1 after saying so on stderr.
pub fn stdout(args: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    match out.write_fmt(args).and_then(|()| out.flush()) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => {
            drop(out);
            std::panic::resume_unwind(Box::new(ClosedStdout))
        }
        Err(err) => {
            drop(out);
            stderr(format_args!("error: writing to stdout: {err}\n"));
            std::process::exit(1)
        }
    }
}

/// Writes `args` to stderr, ignoring a failure.
pub fn stderr(args: std::fmt::Arguments<'_>) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_fmt(args).and_then(|()| err.flush());
}

/// `println!` that ends the command quietly when stdout is a closed pipe.
macro_rules! outln {
    () => {
        $crate::print::stdout(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::print::stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` that ends the command quietly when stdout is a closed pipe.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::print::stdout(format_args!($($arg)*))
    };
}

/// `eprintln!` that ignores a closed stderr.
macro_rules! errln {
    () => {
        $crate::print::stderr(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::print::stderr(format_args!("{}\n", format_args!($($arg)*)))
    };
}
