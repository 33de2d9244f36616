//! Minimal logging to stderr with raw writes (no stdio locks): `ckpt[<pid>]: level: msg`.

use std::sync::atomic::{AtomicU8, Ordering};

static LEVEL: AtomicU8 = AtomicU8::new(2);

pub fn set_level(s: &str) {
    let l = match s.to_ascii_lowercase().as_str() {
        "off" | "none" => 0,
        "error" => 1,
        "warn" | "warning" => 2,
        "info" => 3,
        "debug" | "trace" => 4,
        _ => 2,
    };
    LEVEL.store(l, Ordering::Relaxed);
}

pub fn enabled(l: u8) -> bool {
    LEVEL.load(Ordering::Relaxed) >= l
}

pub fn emit(l: u8, msg: &str) {
    let name = ["", "error", "warning", "info", "debug"][l as usize];
    let line = format!("ckpt[{}]: {}: {}\n", crate::vids::getpid(), name, msg);
    crate::sys::write_all(2, line.as_bytes());
}

#[macro_export]
macro_rules! log_at {
    ($l:expr, $($t:tt)*) => {
        if $crate::log::enabled($l) { $crate::log::emit($l, &format!($($t)*)) }
    };
}
#[macro_export]
macro_rules! error { ($($t:tt)*) => { $crate::log_at!(1, $($t)*) }; }
#[macro_export]
macro_rules! warn { ($($t:tt)*) => { $crate::log_at!(2, $($t)*) }; }
#[macro_export]
macro_rules! info { ($($t:tt)*) => { $crate::log_at!(3, $($t)*) }; }
#[macro_export]
macro_rules! debug { ($($t:tt)*) => { $crate::log_at!(4, $($t)*) }; }
