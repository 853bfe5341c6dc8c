//! The reference (`reference.rs`, the source of `sniroute.toml(5)`) against
//! the parser: the same keys, and the same defaults.

use super::keys::{fields_of, section_fields};
use super::raw::{RawHealthCheck, RawTop, SECTIONS};
use super::reference::{REFERENCE, Section};

/// The keys the parser accepts in the table a reference section names.
fn parser_keys(section: &str) -> &'static [&'static str] {
    match section {
        "" => fields_of::<RawTop>(),
        "route.health_check" => fields_of::<RawHealthCheck>(),
        name => section_fields(name),
    }
}

#[test]
fn every_key_is_in_the_reference() {
    for name in SECTIONS {
        assert!(
            REFERENCE.iter().any(|s| s.name == name),
            "[{name}] is missing from src/config/reference.rs (the source of sniroute.toml(5))"
        );
    }
    for section in REFERENCE {
        let documented: Vec<&str> = section.keys.iter().map(|k| k.name).collect();
        let parsed = parser_keys(section.name);
        assert!(!parsed.is_empty(), "unknown section {:?}", section.name);
        for key in parsed {
            assert!(
                documented.contains(key),
                "key {:?} of [{}] is missing from src/config/reference.rs: add a Key with its \
                 default and a sentence (it becomes sniroute.toml(5))",
                key,
                section.name
            );
        }
        for key in &documented {
            assert!(
                parsed.contains(key),
                "src/config/reference.rs documents {key:?} in [{}], which the parser does not know",
                section.name
            );
        }
    }
}

/// A config with one route; `section_text` goes where the section belongs.
fn config_text(section: &Section, body: &str) -> String {
    let top = "listen = [\"0.0.0.0:443\"]\n";
    let route = "[[route]]\nsni = [\"a.example.org\"]\nbackend = \"10.0.0.5:443\"\n";
    match section.name {
        "" => format!("{top}{body}\n{route}"),
        "route" => format!("{top}{route}{body}\n"),
        name => format!("{top}{route}[{name}]\n{body}\n"),
    }
}

#[test]
fn every_written_default_is_the_real_default() {
    for section in REFERENCE {
        let without = config_text(section, "");
        let without = super::parse_str(&without).unwrap_or_else(|e| panic!("{without}\n{e:?}"));
        for key in section.keys.iter().filter(|k| !k.default.starts_with('(')) {
            let text = config_text(section, &format!("{} = {}", key.name, key.default));
            let with = super::parse_str(&text)
                .unwrap_or_else(|e| panic!("the documented default does not load:\n{text}\n{e:?}"));
            assert_eq!(
                format!("{with:?}"),
                format!("{without:?}"),
                "{}.{} = {} is not the default",
                section.name,
                key.name,
                key.default
            );
        }
    }
}
