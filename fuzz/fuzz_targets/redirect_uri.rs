//! Redirect-URI validation and matching on arbitrary input: never panic, and a URI always
//! matches itself but never a different one unless it is the loopback port exception.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ward_fuzz::oauth::redirect_uri::{matches, validate};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (registered, presented) = text.split_once('\n').unwrap_or((&text, &text));
    for native in [false, true] {
        let _ = validate(registered, native);
        if matches(registered, presented, native) && registered != presented {
            assert!(native, "only native apps get the loopback port exception");
            assert!(
                registered.starts_with("http://127.") || registered.starts_with("http://[::1]")
            );
        }
    }
    assert!(matches(registered, registered, false));
});
