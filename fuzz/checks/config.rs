//! Config parsing's properties, checked on one fuzz input. Shared by the
//! libFuzzer target (`fuzz_targets/config.rs`) and the CI replay of the seeds
//! and regressions (`tests/hardening.rs`).
//!
//! `config::parse_str` is what `check`, `run` and a reload all call. Checked,
//! beyond "no panic, no hang, no huge allocation": a valid config has at least
//! one listener and one route and its summary renders; an invalid one has at
//! least one diagnostic, each pointing inside the text (a 1-based line that
//! exists, a 1-based column at most one past that line's last character,
//! counted in characters) with a message, sorted by place.

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
            let lines: Vec<&str> = text.split('\n').collect();
            for d in &diagnostics {
                let line = d.line.checked_sub(1).and_then(|i| lines.get(i));
                assert!(
                    line.is_some_and(|line| d.col >= 1 && d.col <= line.chars().count() + 1),
                    "diagnostic outside the text: {d:?}"
                );
                assert!(!d.message.is_empty(), "empty message: {d:?}");
            }
            assert!(
                diagnostics.is_sorted_by_key(|d| (d.line, d.col)),
                "diagnostics out of order"
            );
        }
    }
}
