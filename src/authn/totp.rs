//! TOTP (RFC 6238: HMAC-SHA-1, 6 digits, 30-second steps) with replay protection.
//!
//! A code is accepted for the current step or one step either side (clock drift), and only if
//! its step is later than the last accepted step of that credential (RFC 6238 §5.2): a code can
//! never be used twice, nor can an older one after a newer one. Claiming the step is a
//! conditional update in the store, so two concurrent logins with the same code cannot both win.

use base64::Engine;
use totp_rs::{Algorithm, TOTP};

use crate::crypto::constant_time_eq;

pub const STEP_SECONDS: i64 = 30;
pub const DIGITS: usize = 6;
pub const SECRET_BYTES: usize = 20;

/// A TOTP generator for one secret.
pub struct Totp(TOTP);

impl Totp {
    pub fn new(secret: &[u8]) -> Option<Self> {
        TOTP::new(
            Algorithm::SHA1,
            DIGITS,
            1,
            STEP_SECONDS as u64,
            secret.to_vec(),
        )
        .ok()
        .map(Self)
    }

    pub fn code_at_step(&self, step: i64) -> String {
        self.0
            .generate(u64::try_from(step.max(0) * STEP_SECONDS).unwrap_or(0))
    }

    /// The step a presented code belongs to, if it is valid now (±1 step) and later than
    /// `last_step`. Every candidate is compared in constant time.
    pub fn matching_step(&self, code: &str, now_secs: i64, last_step: Option<i64>) -> Option<i64> {
        let code = code.trim().replace(' ', "");
        if code.len() != DIGITS || !code.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let current = now_secs.div_euclid(STEP_SECONDS);
        let mut found = None;
        for step in [current - 1, current, current + 1] {
            let equal = constant_time_eq(self.code_at_step(step).as_bytes(), code.as_bytes());
            let fresh = last_step.is_none_or(|last| step > last);
            if equal && fresh && found.is_none() {
                found = Some(step);
            }
        }
        found
    }
}

pub fn generate_secret() -> Vec<u8> {
    use rand::RngCore;
    let mut secret = vec![0u8; SECRET_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    secret
}

/// RFC 4648 base32 without padding: how authenticator apps take a secret by hand.
pub fn base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::new();
    let mut buffer: u32 = 0;
    let mut bits = 0;
    for byte in bytes {
        buffer = (buffer << 8) | u32::from(*byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ALPHABET[((buffer >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(ALPHABET[((buffer << (5 - bits)) & 31) as usize]));
    }
    out
}

fn percent_encode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// The `otpauth://` URI authenticator apps scan.
pub fn provisioning_uri(issuer: &str, account: &str, secret: &[u8]) -> String {
    format!(
        "otpauth://totp/{}:{}?secret={}&issuer={}&algorithm=SHA1&digits={DIGITS}&period={STEP_SECONDS}",
        percent_encode(issuer),
        percent_encode(account),
        base32(secret),
        percent_encode(issuer)
    )
}

/// The URI as an inline SVG QR code, rendered here: no external service sees the secret.
pub fn qr_svg(uri: &str) -> String {
    match qrcode::QrCode::new(uri.as_bytes()) {
        Ok(code) => code
            .render::<qrcode::render::svg::Color>()
            .min_dimensions(220, 220)
            .quiet_zone(true)
            .build(),
        Err(_) => String::new(),
    }
}

/// Stored form of a secret before sealing.
pub fn encode_secret(secret: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(secret)
}

pub fn decode_secret(text: &[u8]) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD.decode(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 6238 Appendix B test secret (SHA-1): "12345678901234567890".
    const RFC_SECRET: &[u8] = b"12345678901234567890";

    #[test]
    fn matches_rfc_6238_test_vectors() {
        let totp = Totp::new(RFC_SECRET).unwrap();
        // 8-digit vectors truncated to 6 digits: 94287082 → 287082 at T=59.
        assert_eq!(totp.code_at_step(59 / 30), "287082");
        assert_eq!(totp.code_at_step(1_111_111_109 / 30), "081804");
        assert_eq!(totp.code_at_step(1_234_567_890 / 30), "005924");
    }

    #[test]
    fn accepts_one_step_of_drift_either_way() {
        let totp = Totp::new(RFC_SECRET).unwrap();
        let now = 1_234_567_890;
        let step = now / STEP_SECONDS;
        for s in [step - 1, step, step + 1] {
            assert_eq!(
                totp.matching_step(&totp.code_at_step(s), now, None),
                Some(s)
            );
        }
        for s in [step - 2, step + 2] {
            assert_eq!(totp.matching_step(&totp.code_at_step(s), now, None), None);
        }
    }

    #[test]
    fn rejects_replays_and_older_codes() {
        let totp = Totp::new(RFC_SECRET).unwrap();
        let now = 1_234_567_890;
        let step = now / STEP_SECONDS;
        let code = totp.code_at_step(step);
        assert_eq!(totp.matching_step(&code, now, Some(step - 1)), Some(step));
        // The same step again, also one step later in time: a replay.
        assert_eq!(totp.matching_step(&code, now, Some(step)), None);
        assert_eq!(totp.matching_step(&code, now + 30, Some(step)), None);
        // An older code after a newer one was used.
        assert_eq!(
            totp.matching_step(&totp.code_at_step(step - 1), now, Some(step)),
            None
        );
        // The next step's code is still fine.
        assert_eq!(
            totp.matching_step(&totp.code_at_step(step + 1), now, Some(step)),
            Some(step + 1)
        );
    }

    #[test]
    fn rejects_malformed_codes() {
        let totp = Totp::new(RFC_SECRET).unwrap();
        for bad in ["", "12345", "1234567", "abcdef", "12 34 5x", "１２３４５６"] {
            assert_eq!(totp.matching_step(bad, 1_234_567_890, None), None, "{bad}");
        }
    }

    #[test]
    fn base32_and_provisioning_uri() {
        assert_eq!(
            base32(b"12345678901234567890"),
            "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"
        );
        let uri = provisioning_uri("Ward", "dr.who", RFC_SECRET);
        assert!(uri.starts_with("otpauth://totp/Ward:dr.who?secret=GEZDGNBV"));
        assert!(qr_svg(&uri).starts_with("<?xml") || qr_svg(&uri).contains("<svg"));
    }
}
