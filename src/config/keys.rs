//! Which keys exist, and what to say about one that does not: every section's
//! known keys come from its serde struct (so the list cannot drift), and an
//! unknown key gets a "did you mean" or the section it belongs in.

use serde::Deserialize;

use super::raw::{
    RawAdmin, RawBan, RawFirewall, RawLimits, RawLog, RawMetrics, RawProxyProtocol, RawRateLimit,
    RawRoute, RawTls, RawTop, RawUnknown, SECTIONS,
};

/// `unknown key "maxretry" in [ban] (did you mean "max_retry"?)`.
pub(super) fn unknown_key(key: &str, place: &str, fields: &[&str]) -> String {
    let mut msg = format!("unknown key {key:?} {place}");
    let nearest = fields
        .iter()
        .map(|f| (edit_distance(key, f), *f))
        .filter(|&(d, f)| d <= 2 && d < f.len())
        .min();
    if let Some((_, f)) = nearest {
        msg.push_str(&format!(" (did you mean {f:?}?)"));
    } else if let Some(home) = SECTIONS.iter().find(|s| section_fields(s).contains(&key)) {
        msg.push_str(&format!(" ({key:?} belongs in [{home}])"));
    } else if fields_of::<RawTop>().contains(&key) || SECTIONS.contains(&key) {
        msg.push_str(&format!(
            " ({key:?} is a top-level key: move it above the first [table], or it belongs to that table)"
        ));
    } else {
        msg.push_str(&format!("; expected one of: {}", fields.join(", ")));
    }
    msg
}

/// The keys a section accepts (for suggesting where a misplaced key belongs).
pub(super) fn section_fields(section: &str) -> &'static [&'static str] {
    match section {
        "limits" => fields_of::<RawLimits>(),
        "tls" => fields_of::<RawTls>(),
        "http" => fields_of::<super::raw::RawHttp>(),
        "route" => fields_of::<RawRoute>(),
        "unknown" => fields_of::<RawUnknown>(),
        "ban" => fields_of::<RawBan>(),
        "rate_limit" => fields_of::<RawRateLimit>(),
        "metrics" => fields_of::<RawMetrics>(),
        "admin" => fields_of::<RawAdmin>(),
        "log" => fields_of::<RawLog>(),
        "firewall" => fields_of::<RawFirewall>(),
        "proxy_protocol" => fields_of::<RawProxyProtocol>(),
        "crowdsec" => fields_of::<super::crowdsec::RawCrowdsec>(),
        _ => &[],
    }
}

/// Levenshtein distance, for "did you mean" (keys are short ASCII words).
// Indices stay within `row` (length `b.len() + 1`) by construction.
#[allow(clippy::indexing_slicing)]
pub(super) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

/// The field names of a serde struct, as its derived `Deserialize` declares
/// them: the one list of known keys, so it cannot drift from the structs.
pub(super) fn fields_of<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    let mut fields: &'static [&'static str] = &[];
    // The probe always fails by design; only the recorded field list matters.
    let _ = T::deserialize(FieldsProbe(&mut fields));
    fields
}

/// A deserializer that records the field list passed to `deserialize_struct`.
struct FieldsProbe<'f>(&'f mut &'static [&'static str]);

impl<'de> serde::Deserializer<'de> for FieldsProbe<'_> {
    type Error = serde::de::value::Error;

    fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(serde::de::Error::custom("field probe"))
    }

    fn deserialize_struct<V: serde::de::Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = fields;
        Err(serde::de::Error::custom("field probe"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_lists_struct_fields() {
        assert_eq!(fields_of::<RawRateLimit>(), ["per_ip", "burst"]);
        assert!(section_fields("ban").contains(&"max_retry"));
    }

    #[test]
    fn suggestions() {
        assert_eq!(edit_distance("maxretry", "max_retry"), 1);
        assert_eq!(edit_distance("", "ab"), 2);
        let m = unknown_key("maxretry", "in [ban]", section_fields("ban"));
        assert_eq!(
            m,
            "unknown key \"maxretry\" in [ban] (did you mean \"max_retry\"?)"
        );
        let m = unknown_key("per_ip", "at top level", &["listen"]);
        assert!(m.contains("belongs in [rate_limit]"), "{m}");
        let m = unknown_key("zzzzzz", "in [tls]", section_fields("tls"));
        assert!(m.ends_with("expected one of: min_version"), "{m}");
    }
}
