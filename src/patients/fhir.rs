//! Minimal FHIR R4 Patient directory records for the standalone-launch
//! patient picker.
//!
//! `ward patient import FILE` feeds every non-blank NDJSON line (a FHIR Bulk
//! Data export) to [`parse_line`]. Following the HIPAA "minimum necessary"
//! rule only the logical id, one name (family, given), birthDate, gender and
//! up to [`MAX_IDENTIFIERS`] identifiers are kept; every other member
//! (address, telecom, extension, text, meta, ...) is ignored without being
//! validated.
//!
//! The picker's single search box goes through [`parse_query`]; [`matches`]
//! is the reference semantics of the SQL search over the pre-computed columns
//! [`PatientRecord::search_name`] and [`PatientRecord::search_identifiers`].
//!
//! Error messages never echo more than [`MAX_ECHO_CHARS`] characters of input,
//! and control / bidi-override characters in echoed input are replaced.

use serde_json::{Map, Value};
use unicode_normalization::char::is_combining_mark;
use unicode_normalization::UnicodeNormalization;

/// Longest NDJSON line accepted, in bytes (1 MiB).
pub const MAX_LINE_BYTES: usize = 1024 * 1024;
/// Longest FHIR logical id (FHIR R4 `id` datatype).
pub const MAX_ID_LEN: usize = 64;
/// Longest family name, and longest joined given names, in characters.
pub const MAX_NAME_CHARS: usize = 256;
/// Identifiers kept per patient (further ones are ignored).
pub const MAX_IDENTIFIERS: usize = 10;
/// Longest identifier value, in characters.
pub const MAX_IDENTIFIER_VALUE_CHARS: usize = 128;
/// Longest identifier system, in characters.
pub const MAX_IDENTIFIER_SYSTEM_CHARS: usize = 256;
/// Longest picker query, in characters (after trimming).
pub const MAX_QUERY_CHARS: usize = 100;
/// Shortest picker query, and shortest name word, in characters.
pub const MIN_QUERY_CHARS: usize = 2;
/// Most name words in a picker query.
pub const MAX_QUERY_WORDS: usize = 5;
/// Most characters of input quoted in an error message.
pub const MAX_ECHO_CHARS: usize = 40;

/// A patient identifier (MRN, SSN, driver's licence, ...). `value` is trimmed
/// and non-empty; `system` is `None` when absent or blank.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Identifier {
    pub system: Option<String>,
    pub value: String,
}

/// The minimal patient record Ward keeps.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PatientRecord {
    /// FHIR logical id: `[A-Za-z0-9\-\.]{1,64}` (ids made only of dots are refused).
    pub id: String,
    /// From the "official" name if there is one, else "usual", else the first
    /// name entry; may be "" (e.g. the name has only `text`). Whitespace-collapsed.
    pub family: String,
    /// Given names joined by " " (or the name's `text` when it has neither
    /// family nor given). Whitespace-collapsed.
    pub given: String,
    /// FHIR date: YYYY, YYYY-MM or YYYY-MM-DD, validated.
    pub birth_date: Option<String>,
    /// male | female | other | unknown.
    pub gender: Option<String>,
    /// At most [`MAX_IDENTIFIERS`], duplicates removed, in resource order.
    pub identifiers: Vec<Identifier>,
}

impl PatientRecord {
    /// Lower-case, accent-free (NFKD, drop combining marks), whitespace-collapsed
    /// "given family". See [`normalize_for_search`].
    pub fn search_name(&self) -> String {
        normalize_for_search(&format!("{} {}", self.given, self.family))
    }

    /// `"|v1|v2|"` of lower-cased identifier values, for an SQL
    /// `LIKE '%|value|%'` exact-value match. `""` when there is no searchable
    /// identifier. Values containing `|` cannot be matched exactly this way and
    /// are left out (they stay in `identifiers`).
    pub fn search_identifiers(&self) -> String {
        let values: Vec<String> = self
            .identifiers
            .iter()
            .map(|i| i.value.to_lowercase())
            .filter(|v| !v.is_empty() && !v.contains('|'))
            .collect();
        if values.is_empty() {
            String::new()
        } else {
            format!("|{}|", values.join("|"))
        }
    }

    /// "Given Family", or "(no name)".
    pub fn display_name(&self) -> String {
        let joined = collapse_whitespace(&format!("{} {}", self.given, self.family));
        if joined.is_empty() {
            "(no name)".to_string()
        } else {
            joined
        }
    }
}

/// Why an NDJSON line could not be imported.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImportError {
    #[error("line is {0} bytes long; at most 1 MiB (1048576 bytes) is accepted")]
    LineTooLong(usize),
    #[error("line is not valid JSON: {0}")]
    NotJson(String),
    #[error("line is JSON but not a JSON object")]
    NotAnObject,
    #[error("resource has no resourceType")]
    MissingResourceType,
    #[error("resource is a {0:?}, not a Patient")]
    NotAPatient(String),
    #[error("Patient has no id")]
    MissingId,
    #[error("Patient id {0:?} is invalid: expected 1-64 characters of A-Z a-z 0-9 - .")]
    InvalidId(String),
    #[error(
        "Patient birthDate {0:?} is invalid: expected a real date as YYYY, YYYY-MM or YYYY-MM-DD"
    )]
    InvalidBirthDate(String),
    #[error("Patient gender {0:?} is invalid: expected male, female, other or unknown")]
    InvalidGender(String),
    #[error("Patient {field} is too long: at most {max} characters")]
    TooLong { field: &'static str, max: usize },
    #[error("Patient {field} has the wrong JSON type: expected {expected}")]
    WrongType {
        field: &'static str,
        expected: &'static str,
    },
    #[error("Patient {0} contains control or bidirectional-override characters")]
    InvalidCharacters(&'static str),
}

/// Parses one NDJSON line into the minimal record.
///
/// Blank lines are the caller's business (skip them). Lines over
/// [`MAX_LINE_BYTES`] are rejected before parsing. A leading UTF-8 BOM and a
/// trailing CR/LF are tolerated. Members Ward does not keep are ignored, not
/// validated.
pub fn parse_line(line: &str) -> Result<PatientRecord, ImportError> {
    if line.len() > MAX_LINE_BYTES {
        return Err(ImportError::LineTooLong(line.len()));
    }
    let line = line.strip_prefix('\u{feff}').unwrap_or(line);
    let value: Value =
        serde_json::from_str(line).map_err(|e| ImportError::NotJson(e.to_string()))?;
    let obj = match &value {
        Value::Object(obj) => obj,
        _ => return Err(ImportError::NotAnObject),
    };

    match obj.get("resourceType") {
        None | Some(Value::Null) => return Err(ImportError::MissingResourceType),
        Some(Value::String(rt)) if rt == "Patient" => {}
        Some(Value::String(rt)) => return Err(ImportError::NotAPatient(snippet(rt))),
        Some(_) => {
            return Err(ImportError::WrongType {
                field: "resourceType",
                expected: "string",
            })
        }
    }

    let id = parse_id(obj.get("id"))?;
    let (family, given) = parse_name(obj.get("name"))?;
    let birth_date = parse_birth_date(obj.get("birthDate"))?;
    let gender = parse_gender(obj.get("gender"))?;
    let identifiers = parse_identifiers(obj.get("identifier"))?;

    Ok(PatientRecord {
        id,
        family,
        given,
        birth_date,
        gender,
        identifiers,
    })
}

fn parse_id(v: Option<&Value>) -> Result<String, ImportError> {
    let id = match v {
        None | Some(Value::Null) => return Err(ImportError::MissingId),
        Some(Value::String(s)) => s,
        Some(_) => {
            return Err(ImportError::WrongType {
                field: "id",
                expected: "string",
            })
        }
    };
    if is_valid_id(id) {
        Ok(id.clone())
    } else {
        Err(ImportError::InvalidId(snippet(id)))
    }
}

/// FHIR R4 `id`: `[A-Za-z0-9\-\.]{1,64}`. Ids made only of dots ("." / "..")
/// are refused as well: apps build `{base}/Patient/{id}` URLs, where such a
/// segment would be resolved away as a dot-segment.
fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !id.bytes().all(|b| b == b'.')
}

/// One HumanName entry, type-checked but not yet content-checked.
struct NameEntry<'a> {
    use_: Option<&'a str>,
    family: Option<&'a str>,
    given: Vec<&'a str>,
    text: Option<&'a str>,
}

impl NameEntry<'_> {
    fn has_content(&self) -> bool {
        self.family.is_some_and(|f| !f.trim().is_empty())
            || self.given.iter().any(|g| !g.trim().is_empty())
            || self.text.is_some_and(|t| !t.trim().is_empty())
    }
}

fn opt_str<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    field: &'static str,
) -> Result<Option<&'a str>, ImportError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(_) => Err(ImportError::WrongType {
            field,
            expected: "string",
        }),
    }
}

fn name_entry(v: &Value) -> Result<NameEntry<'_>, ImportError> {
    let obj = v.as_object().ok_or(ImportError::WrongType {
        field: "name",
        expected: "array of HumanName objects",
    })?;
    let given = match obj.get("given") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .filter(|g| !g.is_null())
            .map(|g| {
                g.as_str().ok_or(ImportError::WrongType {
                    field: "name.given",
                    expected: "array of strings",
                })
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(_) => {
            return Err(ImportError::WrongType {
                field: "name.given",
                expected: "array of strings",
            })
        }
    };
    Ok(NameEntry {
        use_: opt_str(obj, "use", "name.use")?,
        family: opt_str(obj, "family", "name.family")?,
        given,
        text: opt_str(obj, "text", "name.text")?,
    })
}

/// Picks the official name, else the usual one, else the first entry (entries
/// without any family, given or text are passed over).
fn parse_name(v: Option<&Value>) -> Result<(String, String), ImportError> {
    let items = match v {
        None | Some(Value::Null) => return Ok((String::new(), String::new())),
        Some(Value::Array(items)) => items,
        Some(_) => {
            return Err(ImportError::WrongType {
                field: "name",
                expected: "array of HumanName objects",
            })
        }
    };
    let entries = items
        .iter()
        .map(name_entry)
        .collect::<Result<Vec<_>, _>>()?;
    let usable: Vec<&NameEntry<'_>> = entries.iter().filter(|e| e.has_content()).collect();
    let chosen = usable
        .iter()
        .find(|e| e.use_ == Some("official"))
        .or_else(|| usable.iter().find(|e| e.use_ == Some("usual")))
        .or_else(|| usable.first());
    let Some(entry) = chosen else {
        return Ok((String::new(), String::new()));
    };

    let family = clean_text(entry.family.unwrap_or(""), "name.family")?;
    let mut given = clean_text(&entry.given.join(" "), "name.given")?;
    if family.is_empty() && given.is_empty() {
        given = clean_text(entry.text.unwrap_or(""), "name.text")?;
    }
    check_len(&family, MAX_NAME_CHARS, "name.family")?;
    check_len(&given, MAX_NAME_CHARS, "name.given")?;
    Ok((family, given))
}

fn parse_birth_date(v: Option<&Value>) -> Result<Option<String>, ImportError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if is_valid_fhir_date(s) => Ok(Some(s.clone())),
        Some(Value::String(s)) => Err(ImportError::InvalidBirthDate(snippet(s))),
        Some(other) => Err(ImportError::InvalidBirthDate(snippet(&other.to_string()))),
    }
}

fn parse_gender(v: Option<&Value>) -> Result<Option<String>, ImportError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if matches!(s.as_str(), "male" | "female" | "other" | "unknown") => {
            Ok(Some(s.clone()))
        }
        Some(Value::String(s)) => Err(ImportError::InvalidGender(snippet(s))),
        Some(other) => Err(ImportError::InvalidGender(snippet(&other.to_string()))),
    }
}

/// Keeps the first [`MAX_IDENTIFIERS`] distinct identifiers that have a value;
/// identifiers past that point are not examined.
fn parse_identifiers(v: Option<&Value>) -> Result<Vec<Identifier>, ImportError> {
    const EXPECTED: &str = "array of Identifier objects";
    let items = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(_) => {
            return Err(ImportError::WrongType {
                field: "identifier",
                expected: EXPECTED,
            })
        }
    };
    let mut out: Vec<Identifier> = Vec::new();
    for item in items {
        if out.len() >= MAX_IDENTIFIERS {
            break;
        }
        let obj = item.as_object().ok_or(ImportError::WrongType {
            field: "identifier",
            expected: EXPECTED,
        })?;
        let value = trimmed_clean(
            opt_str(obj, "value", "identifier.value")?.unwrap_or(""),
            "identifier.value",
        )?;
        if value.is_empty() {
            continue; // e.g. an identifier carrying only a type or an extension
        }
        check_len(&value, MAX_IDENTIFIER_VALUE_CHARS, "identifier.value")?;
        let system = trimmed_clean(
            opt_str(obj, "system", "identifier.system")?.unwrap_or(""),
            "identifier.system",
        )?;
        check_len(&system, MAX_IDENTIFIER_SYSTEM_CHARS, "identifier.system")?;
        let ident = Identifier {
            system: (!system.is_empty()).then_some(system),
            value,
        };
        if !out.contains(&ident) {
            out.push(ident);
        }
    }
    Ok(out)
}

/// Control characters (other than whitespace) and bidi embedding / override /
/// isolate characters, which could make one patient's name display as another's.
fn is_forbidden_char(c: char) -> bool {
    (c.is_control() && !c.is_whitespace())
        || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Rejects forbidden characters and collapses whitespace runs to one space.
fn clean_text(s: &str, field: &'static str) -> Result<String, ImportError> {
    if s.chars().any(is_forbidden_char) {
        return Err(ImportError::InvalidCharacters(field));
    }
    Ok(collapse_whitespace(s))
}

/// Rejects forbidden characters and any whitespace other than plain spaces,
/// then trims.
fn trimmed_clean(s: &str, field: &'static str) -> Result<String, ImportError> {
    if s.chars()
        .any(|c| is_forbidden_char(c) || (c.is_whitespace() && c != ' '))
    {
        return Err(ImportError::InvalidCharacters(field));
    }
    Ok(s.trim().to_string())
}

fn check_len(s: &str, max: usize, field: &'static str) -> Result<(), ImportError> {
    if s.chars().count() > max {
        Err(ImportError::TooLong { field, max })
    } else {
        Ok(())
    }
}

fn collapse_whitespace(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// At most [`MAX_ECHO_CHARS`] characters of `s` for an error message, with
/// control and bidi characters replaced by U+FFFD and "…" when truncated.
fn snippet(s: &str) -> String {
    let mut out: String = s
        .chars()
        .take(MAX_ECHO_CHARS)
        .map(|c| {
            if c.is_control() || is_forbidden_char(c) {
                '\u{FFFD}'
            } else {
                c
            }
        })
        .collect();
    if s.chars().nth(MAX_ECHO_CHARS).is_some() {
        out.push('…');
    }
    out
}

fn is_leap_year(year: u32) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap_year(year) => 29,
        2 => 28,
        _ => 0,
    }
}

/// Parses exactly `n` ASCII digits.
fn digits(s: &str, n: usize) -> Option<u32> {
    if s.len() == n && s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse().ok()
    } else {
        None
    }
}

/// FHIR R4 `date`: YYYY, YYYY-MM or YYYY-MM-DD with year 0001-9999, month
/// 01-12 and a day that exists in that month (leap years included).
pub fn is_valid_fhir_date(s: &str) -> bool {
    let mut parts = s.split('-');
    let Some(year) = parts.next().and_then(|y| digits(y, 4)) else {
        return false;
    };
    if year == 0 {
        return false;
    }
    let month = match parts.next() {
        None => return true,
        Some(m) => match digits(m, 2) {
            Some(m @ 1..=12) => m,
            _ => return false,
        },
    };
    let day_ok = match parts.next() {
        None => true,
        Some(d) => matches!(digits(d, 2), Some(d) if d >= 1 && d <= days_in_month(year, month)),
    };
    day_ok && parts.next().is_none()
}

/// The normalization behind [`PatientRecord::search_name`] and name queries:
/// NFKD, combining marks dropped, lower-cased (twice, since compatibility
/// decomposition can yield capitals), a few letters without a decomposition
/// folded to ASCII (ł→l, ø→o, đ/ð→d, ħ→h, ı→i, ß→ss, æ→ae, œ→oe, þ→th),
/// typographic apostrophes made `'`, zero-width characters and soft hyphens
/// dropped, whitespace collapsed to single spaces and trimmed. Idempotent.
pub fn normalize_for_search(s: &str) -> String {
    let once: String = s
        .nfkd()
        .filter(|c| !is_combining_mark(*c))
        .flat_map(char::to_lowercase)
        .collect();
    let mut folded = String::with_capacity(once.len());
    for c in once
        .nfkd()
        .filter(|c| !is_combining_mark(*c))
        .flat_map(char::to_lowercase)
    {
        match c {
            'ł' => folded.push('l'),
            'ø' => folded.push('o'),
            'đ' | 'ð' => folded.push('d'),
            'ħ' => folded.push('h'),
            'ı' => folded.push('i'),
            'ß' => folded.push_str("ss"),
            'æ' => folded.push_str("ae"),
            'œ' => folded.push_str("oe"),
            'þ' => folded.push_str("th"),
            '\u{2018}' | '\u{2019}' | '\u{02BC}' | '\u{2032}' => folded.push('\''),
            '\u{00AD}' | '\u{200B}' | '\u{200C}' | '\u{200D}' | '\u{2060}' | '\u{FEFF}' => {}
            c => folded.push(c),
        }
    }
    collapse_whitespace(&folded)
}

/// What a clinician typed in the picker's one search box.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PatientQuery {
    /// YYYY-MM-DD only (no DD/MM/YYYY, to avoid day/month ambiguity): exact birth date.
    BirthDate(String),
    /// Name words, normalized like `search_name`; each must occur as a
    /// substring of `search_name`. 1..=5 words, each ≥ 2 chars.
    Name(Vec<String>),
    /// Anything containing a digit and no whitespace that is not a date: an
    /// identifier value (lower-cased), exact match.
    Identifier(String),
}

/// `None` when the input is empty, too short (< 2 chars after trimming),
/// longer than 100 chars or otherwise unusable: control characters, an
/// invalid or non-ISO date (`2023-02-30`, `02/04/1980`, `02.04.1980`), an
/// identifier containing `|`, more than 5 name words or a name word shorter
/// than 2 characters. Commas and semicolons separate name words
/// ("Smith, John").
pub fn parse_query(input: &str) -> Option<PatientQuery> {
    if input.len() > MAX_QUERY_CHARS * 4 + 64 {
        return None; // cheap bound before any per-char work
    }
    let s = input.trim();
    let n = s.chars().count();
    if !(MIN_QUERY_CHARS..=MAX_QUERY_CHARS).contains(&n) || s.chars().any(is_forbidden_char) {
        return None;
    }
    if is_iso_date_shaped(s) {
        return is_valid_fhir_date(s).then(|| PatientQuery::BirthDate(s.to_string()));
    }
    if is_local_date_shaped(s) {
        return None;
    }
    if !s.chars().any(char::is_whitespace) && s.chars().any(|c| c.is_ascii_digit()) {
        let id = s.to_lowercase();
        return (!id.contains('|')).then_some(PatientQuery::Identifier(id));
    }
    let spaced: String = s
        .chars()
        .map(|c| if c == ',' || c == ';' { ' ' } else { c })
        .collect();
    let words: Vec<String> = normalize_for_search(&spaced)
        .split(' ')
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect();
    let usable = !words.is_empty()
        && words.len() <= MAX_QUERY_WORDS
        && words.iter().all(|w| w.chars().count() >= MIN_QUERY_CHARS);
    usable.then_some(PatientQuery::Name(words))
}

/// `DDDD-DD-DD`.
fn is_iso_date_shaped(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 10
        && b.iter().enumerate().all(|(i, &c)| {
            if i == 4 || i == 7 {
                c == b'-'
            } else {
                c.is_ascii_digit()
            }
        })
}

/// Day/month-ambiguous or non-ISO dates: `D/M/YY`, `DD/MM/YYYY`,
/// `YYYY/MM/DD`, `DD.MM.YYYY`, `DD-MM-YYYY`.
fn is_local_date_shaped(s: &str) -> bool {
    let Some(sep) = s.chars().find(|c| matches!(c, '/' | '.' | '-')) else {
        return false;
    };
    let parts: Vec<&str> = s.split(sep).collect();
    if parts.len() != 3
        || parts
            .iter()
            .any(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return false;
    }
    let lens = [parts[0].len(), parts[1].len(), parts[2].len()];
    let short = |l: usize| (1..=2).contains(&l);
    let year_last =
        short(lens[0]) && short(lens[1]) && (lens[2] == 4 || (sep == '/' && lens[2] == 2));
    let year_first = sep != '-' && lens[0] == 4 && short(lens[1]) && short(lens[2]);
    year_last || year_first
}

/// The reference semantics of the picker's SQL search:
/// - `BirthDate(d)`: `birth_date = d` (partial birth dates never match);
/// - `Name(ws)`: every word occurs in `search_name` (`LIKE '%' || escape_like(w) || '%' ESCAPE '\'`
///   for each word, ANDed); an empty word list matches nothing;
/// - `Identifier(v)`: `search_identifiers LIKE '%|' || escape_like(v) || '|%' ESCAPE '\'`;
///   an empty value or one containing `|` matches nothing.
pub fn matches(record: &PatientRecord, query: &PatientQuery) -> bool {
    match query {
        PatientQuery::BirthDate(d) => record.birth_date.as_deref() == Some(d.as_str()),
        PatientQuery::Name(words) => {
            let name = record.search_name();
            !words.is_empty() && words.iter().all(|w| name.contains(w.as_str()))
        }
        PatientQuery::Identifier(v) => {
            !v.is_empty()
                && !v.contains('|')
                && record.search_identifiers().contains(&format!("|{v}|"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    const SYNTHEA: &str = r#"{"resourceType":"Patient","id":"b7f2d1c4-3e5a-4f6b-9c8d-7e6f5a4b3c2d","meta":{"profile":["http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient"]},"text":{"status":"generated","div":"<div xmlns=\"http://www.w3.org/1999/xhtml\">Generated by <a href=\"https://github.com/synthetichealth/synthea\">Synthea</a>.</div>"},"extension":[{"url":"http://hl7.org/fhir/us/core/StructureDefinition/us-core-race","extension":[{"url":"ombCategory","valueCoding":{"system":"urn:oid:2.16.840.1.113883.6.238","code":"2106-3","display":"White"}},{"url":"text","valueString":"White"}]},{"url":"http://hl7.org/fhir/us/core/StructureDefinition/us-core-ethnicity","extension":[{"url":"ombCategory","valueCoding":{"system":"urn:oid:2.16.840.1.113883.6.238","code":"2135-2","display":"Hispanic or Latino"}},{"url":"text","valueString":"Hispanic or Latino"}]},{"url":"http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName","valueString":"Carmen Ortiz"},{"url":"http://hl7.org/fhir/us/core/StructureDefinition/us-core-birthsex","valueCode":"M"},{"url":"http://hl7.org/fhir/StructureDefinition/patient-birthPlace","valueAddress":{"city":"Boston","state":"Massachusetts","country":"US"}},{"url":"http://synthetichealth.github.io/synthea/disability-adjusted-life-years","valueDecimal":0.51},{"url":"http://synthetichealth.github.io/synthea/quality-adjusted-life-years","valueDecimal":42.49}],"identifier":[{"system":"https://github.com/synthetichealth/synthea","value":"b7f2d1c4-3e5a-4f6b-9c8d-7e6f5a4b3c2d"},{"type":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/v2-0203","code":"MR","display":"Medical Record Number"}],"text":"Medical Record Number"},"system":"http://hospital.smarthealthit.org","value":"MRN12345"},{"type":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/v2-0203","code":"SS","display":"Social Security Number"}],"text":"Social Security Number"},"system":"http://hl7.org/fhir/sid/us-ssn","value":"999-56-7890"},{"type":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/v2-0203","code":"DL","display":"Driver's license number"}],"text":"Driver's license number"},"system":"urn:oid:2.16.840.1.113883.4.3.25","value":"S99912345"}],"name":[{"use":"nickname","given":["Pepe"]},{"use":"official","family":"Núñez","given":["José","Luis"],"prefix":["Mr."]},{"use":"usual","family":"Nunez","given":["Joe"]}],"telecom":[{"system":"phone","value":"555-123-4567","use":"home"}],"gender":"male","birthDate":"1980-04-02","address":[{"extension":[{"url":"http://hl7.org/fhir/StructureDefinition/geolocation","extension":[{"url":"latitude","valueDecimal":42.35},{"url":"longitude","valueDecimal":-71.06}]}],"line":["123 Main St"],"city":"Boston","state":"MA","postalCode":"02118","country":"US"}],"maritalStatus":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/v3-MaritalStatus","code":"M","display":"Married"}],"text":"Married"},"multipleBirthBoolean":false,"communication":[{"language":{"coding":[{"system":"urn:ietf:bcp:47","code":"es","display":"Spanish"}],"text":"Spanish"}}]}"#;

    fn patient(extra: serde_json::Value) -> String {
        let mut base = json!({"resourceType": "Patient", "id": "p1"});
        if let (Some(b), Some(e)) = (base.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                b.insert(k.clone(), v.clone());
            }
        }
        base.to_string()
    }

    fn rec(family: &str, given: &str, birth: Option<&str>, ids: &[&str]) -> PatientRecord {
        PatientRecord {
            id: "p1".into(),
            family: family.into(),
            given: given.into(),
            birth_date: birth.map(str::to_string),
            gender: None,
            identifiers: ids
                .iter()
                .map(|v| Identifier {
                    system: None,
                    value: (*v).to_string(),
                })
                .collect(),
        }
    }

    #[test]
    fn synthea_patient_parses_to_minimal_record() {
        let r = parse_line(SYNTHEA).unwrap();
        let ident = |s: &str, v: &str| Identifier {
            system: Some(s.to_string()),
            value: v.to_string(),
        };
        assert_eq!(
            r,
            PatientRecord {
                id: "b7f2d1c4-3e5a-4f6b-9c8d-7e6f5a4b3c2d".into(),
                family: "Núñez".into(),
                given: "José Luis".into(),
                birth_date: Some("1980-04-02".into()),
                gender: Some("male".into()),
                identifiers: vec![
                    ident(
                        "https://github.com/synthetichealth/synthea",
                        "b7f2d1c4-3e5a-4f6b-9c8d-7e6f5a4b3c2d"
                    ),
                    ident("http://hospital.smarthealthit.org", "MRN12345"),
                    ident("http://hl7.org/fhir/sid/us-ssn", "999-56-7890"),
                    ident("urn:oid:2.16.840.1.113883.4.3.25", "S99912345"),
                ],
            }
        );
        assert_eq!(r.display_name(), "José Luis Núñez");
        assert_eq!(r.search_name(), "jose luis nunez");
        assert_eq!(
            r.search_identifiers(),
            "|b7f2d1c4-3e5a-4f6b-9c8d-7e6f5a4b3c2d|mrn12345|999-56-7890|s99912345|"
        );
        // Nothing outside the minimum necessary survives serialization.
        let json = serde_json::to_string(&r).unwrap();
        for leaked in [
            "Main St", "555-123", "Carmen", "Pepe", "Married", "Boston", "Mr.",
        ] {
            assert!(!json.contains(leaked), "{leaked} leaked into {json}");
        }
        // CRLF line endings and a BOM on the first line are tolerated.
        assert_eq!(parse_line(&format!("\u{feff}{SYNTHEA}\r\n")).unwrap(), r);
    }

    #[test]
    fn name_selection_official_usual_first_text() {
        let p = |names: serde_json::Value| parse_line(&patient(json!({ "name": names }))).unwrap();
        let r = p(
            json!([{"use":"nickname","given":["Bob"]},{"use":"usual","family":"Smith","given":["Robert"]}]),
        );
        assert_eq!((r.family.as_str(), r.given.as_str()), ("Smith", "Robert"));
        let r = p(json!([{"use":"nickname","given":["Bob"]},{"family":"Smith"}]));
        assert_eq!((r.family.as_str(), r.given.as_str()), ("", "Bob"));
        let r = p(json!([{"use":"official","text":"  Dr.  Jane\tDoe "}]));
        assert_eq!((r.family.as_str(), r.given.as_str()), ("", "Dr. Jane Doe"));
        // text is only a fallback.
        let r = p(json!([{"use":"official","family":"Doe","text":"Jane Doe"}]));
        assert_eq!((r.family.as_str(), r.given.as_str()), ("Doe", ""));
        // An empty official entry is passed over.
        let r = p(
            json!([{"use":"official","period":{"end":"2001"}},{"family":"Roe","given":["Ann", "", "Marie"]}]),
        );
        assert_eq!(r.display_name(), "Ann Marie Roe");
        let r = p(json!([]));
        assert_eq!(r.display_name(), "(no name)");
        assert_eq!(r.search_name(), "");
        let r = parse_line(&patient(json!({}))).unwrap();
        assert_eq!(r.display_name(), "(no name)");
    }

    #[test]
    fn invalid_ids_rejected() {
        for bad in ["../x", "", ".", "..", "a b", "a/b", "é", &"a".repeat(65)] {
            let err = parse_line(&patient(json!({ "id": bad }))).unwrap_err();
            assert!(matches!(err, ImportError::InvalidId(_)), "{bad:?}: {err:?}");
        }
        assert_eq!(
            parse_line(r#"{"resourceType":"Patient"}"#),
            Err(ImportError::MissingId)
        );
        assert!(matches!(
            parse_line(&patient(json!({ "id": 12 }))),
            Err(ImportError::WrongType { field: "id", .. })
        ));
        let ok = "A-z.09".repeat(10) + "abcd";
        assert_eq!(ok.len(), 64);
        assert_eq!(parse_line(&patient(json!({ "id": ok }))).unwrap().id, ok);
    }

    #[test]
    fn structural_errors() {
        assert!(matches!(
            parse_line("not json"),
            Err(ImportError::NotJson(_))
        ));
        assert!(matches!(
            parse_line("{\"a\":1"),
            Err(ImportError::NotJson(_))
        ));
        assert_eq!(parse_line("[1,2]"), Err(ImportError::NotAnObject));
        assert_eq!(parse_line("\"Patient\""), Err(ImportError::NotAnObject));
        assert_eq!(
            parse_line(r#"{"id":"x"}"#),
            Err(ImportError::MissingResourceType)
        );
        assert_eq!(
            parse_line(r#"{"resourceType":"Observation","id":"x"}"#),
            Err(ImportError::NotAPatient("Observation".into()))
        );
        assert_eq!(
            parse_line(r#"{"resourceType":"patient","id":"x"}"#),
            Err(ImportError::NotAPatient("patient".into()))
        );
        let long = parse_line(&json!({"resourceType": "X".repeat(500)}).to_string()).unwrap_err();
        assert_eq!(
            long,
            ImportError::NotAPatient(format!("{}…", "X".repeat(40)))
        );
        let huge = format!(
            "{{\"resourceType\":\"Patient\",\"id\":\"x\",\"pad\":\"{}\"}}",
            " ".repeat(MAX_LINE_BYTES)
        );
        assert_eq!(parse_line(&huge), Err(ImportError::LineTooLong(huge.len())));
        assert!(matches!(
            parse_line(&patient(json!({"name": {"family": "x"}}))),
            Err(ImportError::WrongType { field: "name", .. })
        ));
        assert!(matches!(
            parse_line(&patient(json!({"name": [{"family": ["x"]}]}))),
            Err(ImportError::WrongType {
                field: "name.family",
                ..
            })
        ));
        assert!(matches!(
            parse_line(&patient(json!({"identifier": [{"value": 5}]}))),
            Err(ImportError::WrongType {
                field: "identifier.value",
                ..
            })
        ));
    }

    #[test]
    fn error_messages_echo_at_most_40_chars() {
        let evil = format!("\u{1b}[31m{}\u{202e}", "y".repeat(100));
        let errs = [
            parse_line(&json!({"resourceType": evil}).to_string()).unwrap_err(),
            parse_line(&patient(json!({"id": evil}))).unwrap_err(),
            parse_line(&patient(json!({"birthDate": evil}))).unwrap_err(),
            parse_line(&patient(json!({"gender": evil}))).unwrap_err(),
        ];
        for e in errs {
            let msg = e.to_string();
            assert!(
                !msg.contains('\u{1b}') && !msg.contains('\u{202e}'),
                "{msg:?}"
            );
            assert!(!msg.contains(&"y".repeat(MAX_ECHO_CHARS)), "{msg:?}");
        }
    }

    #[test]
    fn birth_dates() {
        let bd = |d: serde_json::Value| parse_line(&patient(json!({ "birthDate": d })));
        for good in [
            "2024-02-29",
            "2000-02-29",
            "1980",
            "1980-04",
            "1980-04-30",
            "0001-01-01",
        ] {
            assert_eq!(bd(json!(good)).unwrap().birth_date.as_deref(), Some(good));
        }
        for bad in [
            "2023-02-30",
            "2023-13-01",
            "yesterday",
            "2023-02-29",
            "1900-02-29",
            "2023-04-31",
            "2023-00-10",
            "2023-01-00",
            "0000",
            "80-04-02",
            "1980-4-2",
            "1980-04-02T10:00:00Z",
            "1980-04-02-",
            " 1980",
            "",
        ] {
            assert!(
                matches!(bd(json!(bad)), Err(ImportError::InvalidBirthDate(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            bd(json!(1980)),
            Err(ImportError::InvalidBirthDate(_))
        ));
        assert_eq!(bd(json!(null)).unwrap().birth_date, None);
    }

    #[test]
    fn genders() {
        let g = |v: &str| parse_line(&patient(json!({ "gender": v })));
        for ok in ["male", "female", "other", "unknown"] {
            assert_eq!(g(ok).unwrap().gender.as_deref(), Some(ok));
        }
        for bad in ["M", "Male", "F", "", "unknown "] {
            assert!(
                matches!(g(bad), Err(ImportError::InvalidGender(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn identifier_limits() {
        let many: Vec<_> = (0..15)
            .map(|i| json!({"system": "urn:s", "value": format!("v{i}")}))
            .collect();
        let r = parse_line(&patient(json!({ "identifier": many }))).unwrap();
        assert_eq!(r.identifiers.len(), MAX_IDENTIFIERS);
        assert_eq!(r.identifiers[9].value, "v9");

        let r = parse_line(&patient(json!({"identifier": [
            {"type": {"text": "no value"}},
            {"value": "  A1  ", "system": ""},
            {"value": "A1"},
            {"value": "x|y"}
        ]})))
        .unwrap();
        assert_eq!(
            r.identifiers,
            vec![
                Identifier {
                    system: None,
                    value: "A1".into()
                },
                Identifier {
                    system: None,
                    value: "x|y".into()
                },
            ]
        );
        assert_eq!(r.search_identifiers(), "|a1|");

        let v = |value: String, system: String| {
            parse_line(&patient(
                json!({"identifier": [{"value": value, "system": system}]}),
            ))
        };
        assert!(v("x".repeat(128), "s".repeat(256)).is_ok());
        assert_eq!(
            v("x".repeat(129), "s".into()),
            Err(ImportError::TooLong {
                field: "identifier.value",
                max: 128
            })
        );
        assert_eq!(
            v("x".into(), "s".repeat(257)),
            Err(ImportError::TooLong {
                field: "identifier.system",
                max: 256
            })
        );
        assert_eq!(
            v("a\tb".into(), "s".into()),
            Err(ImportError::InvalidCharacters("identifier.value"))
        );
    }

    #[test]
    fn name_limits_and_characters() {
        let n = |name: serde_json::Value| parse_line(&patient(json!({ "name": [name] })));
        assert!(n(json!({"family": "x".repeat(256)})).is_ok());
        assert_eq!(
            n(json!({"family": "x".repeat(257)})),
            Err(ImportError::TooLong {
                field: "name.family",
                max: 256
            })
        );
        assert_eq!(
            n(json!({"given": ["x".repeat(200), "y".repeat(100)]})),
            Err(ImportError::TooLong {
                field: "name.given",
                max: 256
            })
        );
        assert_eq!(
            n(json!({"family": "Doe\u{202e}xelA"})),
            Err(ImportError::InvalidCharacters("name.family"))
        );
        assert_eq!(
            n(json!({"given": ["A\u{0}"]})),
            Err(ImportError::InvalidCharacters("name.given"))
        );
        let r = n(json!({"family": " van  der\nBerg ", "given": [" Anna "]})).unwrap();
        assert_eq!(
            (r.family.as_str(), r.given.as_str()),
            ("van der Berg", "Anna")
        );
    }

    #[test]
    fn search_name_is_accent_free() {
        let r = rec("Núñez", "José", None, &[]);
        assert_eq!(r.search_name(), "jose nunez");
        assert_eq!(rec("", "", None, &[]).search_name(), "");
        assert_eq!(
            normalize_for_search("  ŁUKASZ   Øster\u{00A0}STRAßE "),
            "lukasz oster strasse"
        );
        assert_eq!(
            normalize_for_search("O’Brien İlkay ﬁona"),
            "o'brien ilkay fiona"
        );
        assert_eq!(normalize_for_search("ᴬnna"), "anna");
    }

    #[test]
    fn queries() {
        assert_eq!(
            parse_query("1980-04-02"),
            Some(PatientQuery::BirthDate("1980-04-02".into()))
        );
        assert_eq!(
            parse_query(" 2024-02-29 "),
            Some(PatientQuery::BirthDate("2024-02-29".into()))
        );
        assert_eq!(parse_query("2023-02-29"), None);
        assert_eq!(parse_query("2023-13-01"), None);
        assert_eq!(
            parse_query("smith jo"),
            Some(PatientQuery::Name(vec!["smith".into(), "jo".into()]))
        );
        assert_eq!(
            parse_query("Núñez,  José"),
            Some(PatientQuery::Name(vec!["nunez".into(), "jose".into()]))
        );
        assert_eq!(
            parse_query("MRN12345"),
            Some(PatientQuery::Identifier("mrn12345".into()))
        );
        assert_eq!(
            parse_query("999-56-7890"),
            Some(PatientQuery::Identifier("999-56-7890".into()))
        );
        assert_eq!(
            parse_query("1980"),
            Some(PatientQuery::Identifier("1980".into()))
        );
        assert_eq!(parse_query("a"), None);
        assert_eq!(parse_query(""), None);
        assert_eq!(parse_query("   "), None);
        assert_eq!(parse_query("02/04/1980"), None);
        assert_eq!(parse_query("2.4.1980"), None);
        assert_eq!(parse_query("02-04-1980"), None);
        assert_eq!(parse_query("1980/04/02"), None);
        assert_eq!(parse_query("a|1"), None);
        assert_eq!(parse_query("smith j"), None);
        assert_eq!(parse_query("aa bb cc dd ee ff"), None);
        assert!(parse_query("aa bb cc dd ee").is_some());
        assert_eq!(parse_query(&"x".repeat(101)), None);
        assert!(parse_query(&"x".repeat(100)).is_some());
        assert_eq!(parse_query("smith\u{7}"), None);
        assert_eq!(
            parse_query("ab"),
            Some(PatientQuery::Name(vec!["ab".into()]))
        );
    }

    #[test]
    fn matches_is_consistent() {
        let r = parse_line(SYNTHEA).unwrap();
        let q = |s: &str| parse_query(s).unwrap();
        assert!(matches(&r, &q("1980-04-02")));
        assert!(!matches(&r, &q("1980-04-03")));
        assert!(matches(&r, &q("nunez jose")));
        assert!(matches(&r, &q("NÚÑEZ")));
        assert!(matches(&r, &q("jo nu")));
        assert!(matches(&r, &q("luis")));
        assert!(!matches(&r, &q("pepe")), "nickname is not kept");
        assert!(!matches(&r, &q("smith jo")));
        assert!(matches(&r, &q("mrn12345")));
        assert!(matches(&r, &q("MRN12345")));
        assert!(matches(&r, &q("999-56-7890")));
        assert!(!matches(&r, &q("MRN1234")), "identifier match is exact");
        assert!(!matches(&r, &q("RN12345")));
        assert!(!matches(&r, &PatientQuery::Name(vec![])));
        assert!(!matches(&r, &PatientQuery::Identifier(String::new())));
        assert!(!matches(
            &r,
            &PatientQuery::Identifier("mrn12345|999-56-7890".into())
        ));
        let partial = rec("Doe", "Jane", Some("1980"), &["x|y", "z"]);
        assert!(!matches(&partial, &q("1980-01-01")));
        assert!(!matches(&partial, &PatientQuery::Identifier("x".into())));
        assert!(matches(&partial, &PatientQuery::Identifier("z".into())));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn parse_line_never_panics(s in any::<String>()) {
            let _ = parse_line(&s);
        }

        #[test]
        fn parse_line_never_panics_on_json_ish(s in r#"[\{\}\[\]",:0-9a-zA-Z \\é\u{0}-\u{1f}]{0,200}"#) {
            let _ = parse_line(&s);
            let _ = parse_line(&format!(r#"{{"resourceType":"Patient","id":"x",{s}"#));
        }

        #[test]
        fn parse_line_ok_records_respect_invariants(
            id in any::<String>(),
            family in any::<String>(),
            given in proptest::collection::vec(any::<String>(), 0..4),
            text in any::<String>(),
            birth in any::<String>(),
            gender in any::<String>(),
            ids in proptest::collection::vec((any::<String>(), any::<String>()), 0..14),
        ) {
            let identifiers: Vec<_> = ids.iter().map(|(s, v)| json!({"system": s, "value": v})).collect();
            let line = json!({
                "resourceType": "Patient", "id": id,
                "name": [{"use": "official", "family": family, "given": given, "text": text}],
                "birthDate": birth, "gender": gender, "identifier": identifiers,
            }).to_string();
            if let Ok(r) = parse_line(&line) {
                prop_assert!(is_valid_id(&r.id));
                prop_assert!(r.family.chars().count() <= MAX_NAME_CHARS);
                prop_assert!(r.given.chars().count() <= MAX_NAME_CHARS);
                prop_assert!(r.birth_date.as_deref().is_none_or(is_valid_fhir_date));
                prop_assert!(r.identifiers.len() <= MAX_IDENTIFIERS);
                for i in &r.identifiers {
                    prop_assert!(!i.value.is_empty());
                    prop_assert!(i.value.chars().count() <= MAX_IDENTIFIER_VALUE_CHARS);
                }
                let _ = (r.search_name(), r.search_identifiers(), r.display_name());
            }
        }

        #[test]
        fn parse_query_never_panics_and_is_well_formed(s in any::<String>()) {
            match parse_query(&s) {
                None => {}
                Some(PatientQuery::BirthDate(d)) => {
                    prop_assert_eq!(d.len(), 10);
                    prop_assert!(is_valid_fhir_date(&d));
                }
                Some(PatientQuery::Name(ws)) => {
                    prop_assert!((1..=MAX_QUERY_WORDS).contains(&ws.len()));
                    for w in &ws {
                        prop_assert!(w.chars().count() >= MIN_QUERY_CHARS);
                        prop_assert_eq!(&normalize_for_search(w), w);
                        prop_assert!(!w.contains(' '));
                    }
                }
                Some(PatientQuery::Identifier(v)) => {
                    prop_assert!(v.chars().any(|c| c.is_ascii_digit()));
                    prop_assert!(!v.chars().any(char::is_whitespace));
                    prop_assert!(!v.contains('|'));
                    prop_assert_eq!(v.to_lowercase(), v);
                }
            }
        }

        #[test]
        fn normalize_is_idempotent(s in any::<String>()) {
            let n = normalize_for_search(&s);
            prop_assert_eq!(normalize_for_search(&n), n);
        }

        #[test]
        fn typed_name_finds_record(
            given in "[A-Za-zÀ-ÿ]{2,10}( [A-Za-zÀ-ÿ]{2,10})?",
            family in "[A-Za-zÀ-ÿ'-]{2,12}",
        ) {
            let r = rec(&family, &given, None, &[]);
            let typed = format!("{family}, {given}");
            if let Some(q @ PatientQuery::Name(_)) = parse_query(&typed) {
                prop_assert!(matches(&r, &q));
            }
            if let Some(q) = parse_query(&family.to_uppercase()) {
                prop_assert!(matches(&r, &q));
            }
        }

        #[test]
        fn typed_identifier_finds_record(v in "[A-Za-z0-9-]{0,20}[0-9][A-Za-z0-9.-]{0,20}") {
            let r = rec("Doe", "Jane", None, &["other", &v]);
            if let Some(q @ PatientQuery::Identifier(_)) = parse_query(&v) {
                prop_assert!(matches(&r, &q));
            }
            if let Some(q @ PatientQuery::Identifier(_)) = parse_query(&v.to_uppercase()) {
                prop_assert!(matches(&r, &q));
            }
        }

        #[test]
        fn valid_dates_roundtrip(y in 1u32..=9999, m in 1u32..=12, d in 1u32..=31) {
            let s = format!("{y:04}-{m:02}-{d:02}");
            prop_assert_eq!(is_valid_fhir_date(&s), d <= days_in_month(y, m));
            let q = parse_query(&s);
            prop_assert_eq!(q.is_some(), d <= days_in_month(y, m));
            let r = rec("Doe", "Jane", Some(&s), &[]);
            if let Some(q) = q {
                prop_assert!(matches(&r, &q));
            }
        }
    }
}
