//! Faults an agent process can be told to inject, for the fault tests.
//! Built only with the `fault-injection` feature: a release binary has
//! neither this module nor the flags that set it.

use std::sync::atomic::{AtomicBool, Ordering};

static CORRUPT_SERVING: AtomicBool = AtomicBool::new(false);

/// Whether every chunk this process serves to peers has one byte flipped.
pub fn corrupt_serving() -> bool {
    CORRUPT_SERVING.load(Ordering::Relaxed)
}

pub fn set_corrupt_serving(on: bool) {
    CORRUPT_SERVING.store(on, Ordering::Relaxed);
}
