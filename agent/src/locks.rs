//! The agent's one way to take a lock (a leaf: every module may use it).

use std::sync::{Mutex, MutexGuard, PoisonError};

/// A panic while holding one of the agent's locks leaves consistent data
/// behind, so a poisoned lock is used as it is.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
