//! config.yaml bytes → plan → rendered units: no panic, and every unit reads back as
//! exactly what the plan meant (`unit_check`). Run: `cargo +nightly fuzz run config_to_units`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(problem) = atomic_preload::unit_check::check_config(data) {
        panic!("{problem}");
    }
});
