//! The NDJSON patient import and the picker's search box on arbitrary input: never panic; a
//! parsed record keeps its invariants; a record is always found by its own identifiers.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ward_fuzz::patients::fhir::{matches, parse_line, parse_query, PatientQuery};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Some(query) = parse_query(&text) {
        if let PatientQuery::Name(words) = &query {
            assert!(!words.is_empty());
        }
    }
    if let Ok(record) = parse_line(&text) {
        assert!(!record.id.is_empty() && record.id.len() <= 64);
        assert!(record.identifiers.len() <= 10);
        let _ = record.search_name();
        for identifier in &record.identifiers {
            if let Some(q) = parse_query(&identifier.value) {
                if let PatientQuery::Identifier(_) = q {
                    assert!(
                        matches(&record, &q),
                        "a record is found by its own identifier"
                    );
                }
            }
        }
    }
});
