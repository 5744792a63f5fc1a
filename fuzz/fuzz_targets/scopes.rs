//! The SMART scope parser and algebra on arbitrary input: never panic, printing round-trips,
//! and an intersection is never wider than either side.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ward_fuzz::smart::scopes::{intersect, ScopeSet};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (left_text, right_text) = text.split_once('\n').unwrap_or((&text, "user/*.rs"));
    let (left, _) = ScopeSet::parse(left_text);
    let (right, _) = ScopeSet::parse(right_text);
    let printed = left.to_string();
    let (reparsed, errors) = ScopeSet::parse(&printed);
    assert!(errors.is_empty(), "printed scopes must parse: {printed}");
    assert_eq!(reparsed.to_string(), printed);
    let both = intersect(&left, &right);
    for scope in both.resource_scopes() {
        assert!(left.covers_scope(scope), "{scope} wider than the request");
        assert!(right.covers_scope(scope), "{scope} wider than the ceiling");
    }
});
