//! The rules for calling into PostgreSQL from the store's code.
//!
//! **Invariant:** PostgreSQL is only ever called from the backend's main thread. The store's
//! encoders and decoders run on rayon; [`init`] makes rayon's global pool one thread, the
//! backend's own (`use_current_thread`), so every parallel loop runs inline on the caller and
//! every SPI call comes from the thread PostgreSQL called us on. [`check`] refuses any other.
//!
//! **Invariant:** after PostgreSQL raised an error inside one of our calls, nothing calls it
//! again until the error reached the top: the error left the backend in a state only the
//! transaction's abort cleans up. [`call`] latches that ([`poisoned`]); what unwinds (destructors
//! that would flush pack bytes, rayon finishing a sibling job before it re-raises) then gets a
//! Rust error instead of touching the database.

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::ThreadId;

/// The backend's main thread, and whether rayon's pool was made to run on it alone.
static MAIN: OnceLock<(ThreadId, Result<(), String>)> = OnceLock::new();

/// Set when PostgreSQL raised an error inside [`call`]; cleared when a SQL function starts.
static POISONED: AtomicBool = AtomicBool::new(false);

/// Records the calling thread as the backend's and makes rayon's global pool that one thread.
/// Called from `_PG_init`, on the backend's main thread, before anything uses rayon.
pub fn init() {
    MAIN.get_or_init(|| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .use_current_thread()
            .build_global()
            .map_err(|e| e.to_string());
        (std::thread::current().id(), pool)
    });
}

/// Starts a SQL function: a new statement, so an earlier error no longer applies; refuses to
/// run when rayon could not be confined to this thread.
pub fn enter() -> Result<(), String> {
    POISONED.store(false, Ordering::Relaxed);
    let Some((main, pool)) = MAIN.get() else {
        return Err("the extension was not initialized (_PG_init did not run)".into());
    };
    if *main != std::thread::current().id() {
        return Err("called from a thread other than the backend's".into());
    }
    if let Err(e) = pool {
        return Err(format!(
            "rayon's pool could not be confined to the backend's thread: {e}"
        ));
    }
    if rayon::current_num_threads() != 1 || rayon::current_thread_index() != Some(0) {
        return Err("rayon's pool is not the backend's thread alone".into());
    }
    Ok(())
}

/// True once PostgreSQL raised an error in this statement.
pub fn poisoned() -> bool {
    POISONED.load(Ordering::Relaxed)
}

/// Whether PostgreSQL may be called now: from the main thread, with no error pending, and not
/// while unwinding from one.
pub fn check() -> Result<(), &'static str> {
    match MAIN.get() {
        Some((main, _)) if *main == std::thread::current().id() => {}
        _ => return Err("PostgreSQL was called from a thread other than the backend's"),
    }
    if poisoned() || std::thread::panicking() {
        return Err("an earlier error in this statement stopped further database access");
    }
    Ok(())
}

/// Runs `f`, which calls PostgreSQL; an error PostgreSQL raises inside it (a Rust panic once
/// pgrx caught it) latches [`poisoned`] and goes on unwinding to the SQL function's boundary,
/// where pgrx re-raises it with its own SQLSTATE and message.
pub fn call<T>(f: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(payload) => {
            POISONED.store(true, Ordering::Relaxed);
            resume_unwind(payload)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;

    #[test]
    fn parallel_work_runs_on_the_initializing_thread_and_other_threads_are_refused() {
        init();
        enter().unwrap();
        let me = std::thread::current().id();
        let threads: Vec<ThreadId> = (0..10_000)
            .into_par_iter()
            .map(|_| std::thread::current().id())
            .collect();
        assert!(threads.iter().all(|t| *t == me));
        let (a, b) = rayon::join(
            || std::thread::current().id(),
            || std::thread::current().id(),
        );
        assert_eq!((a, b), (me, me));
        assert!(check().is_ok());
        let elsewhere = std::thread::spawn(|| (check(), enter())).join().unwrap();
        assert!(elsewhere.0.is_err() && elsewhere.1.is_err());

        // An error raised inside `call` latches until the next function starts.
        let unwound = std::panic::catch_unwind(|| call(|| panic!("an ERROR from PostgreSQL")));
        assert!(unwound.is_err());
        assert!(poisoned() && check().is_err());
        enter().unwrap();
        assert!(check().is_ok());
    }
}
