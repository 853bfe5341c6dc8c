//! Config parsing's properties, checked on one fuzz input. Shared by the
//! libFuzzer target (`fuzz_targets/config.rs`) and the CI replay of the seeds
//! and regressions (`tests/hardening.rs`).
//!
//! `config::parse_str` is what `check`, `run` and a reload all call. Checked,
//! beyond "no panic, no hang, no huge allocation": a valid config has at least
//! one listener and one route and its summary renders; an invalid one has at
//! least one diagnostic, each pointing inside the text (1-based line and
//! column) with a message.

/// Checks one fuzz input; panics on a broken property.
pub fn check_input(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match sniroute::config::parse_str(text) {
        Ok(config) => {
            assert!(!config.listen.is_empty(), "valid without a listener");
            assert!(!config.routes.is_empty(), "valid without a route");
            let _ = config.summary();
        }
        Err(diagnostics) => {
            assert!(!diagnostics.is_empty(), "invalid without a diagnostic");
            let lines = text.split('\n').count();
            for d in &diagnostics {
                assert!(
                    d.line >= 1 && d.line <= lines + 1 && d.col >= 1,
                    "diagnostic outside the text: {d:?}"
                );
                assert!(!d.message.is_empty(), "empty message: {d:?}");
            }
        }
    }
}
