//! The patient directory behind the standalone-launch patient picker: imported from FHIR
//! Patient resources (NDJSON, as a Bulk Data export writes them), keeping only what a picker
//! needs (HIPAA minimum necessary), and searched by name, birth date or identifier.

pub mod fhir;

use std::io::BufRead;

use serde::Serialize;

use crate::audit::{self, AuditContext, AuditEvent};
use crate::clock::Clock;
use crate::store::patients::{self as rows, PatientRow};
use crate::store::{write_transaction, DbConnection, StoreError};
use fhir::{Identifier, PatientQuery, PatientRecord};

/// A patient as the picker shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PatientSummary {
    pub id: String,
    pub name: String,
    pub birth_date: Option<String>,
    pub gender: Option<String>,
    pub identifiers: Vec<Identifier>,
}

impl From<PatientRow> for PatientSummary {
    fn from(r: PatientRow) -> Self {
        let record = PatientRecord {
            id: r.id,
            family: r.family,
            given: r.given,
            birth_date: r.birth_date,
            gender: r.gender,
            identifiers: serde_json::from_str(&r.identifiers).unwrap_or_default(),
        };
        Self {
            name: record.display_name(),
            id: record.id,
            birth_date: record.birth_date,
            gender: record.gender,
            identifiers: record.identifiers,
        }
    }
}

/// Searches the directory; an unusable query finds nothing.
pub fn search(
    conn: &mut DbConnection,
    input: &str,
    limit: i64,
) -> Result<Vec<PatientSummary>, StoreError> {
    let rows = match fhir::parse_query(input) {
        None => Vec::new(),
        Some(PatientQuery::Name(words)) => rows::by_name(conn, &words, limit)?,
        Some(PatientQuery::BirthDate(date)) => rows::by_birth_date(conn, &date, limit)?,
        Some(PatientQuery::Identifier(value)) => rows::by_identifier(conn, &value, limit)?,
    };
    Ok(rows.into_iter().map(PatientSummary::from).collect())
}

pub fn get(conn: &mut DbConnection, id: &str) -> Result<Option<PatientSummary>, StoreError> {
    Ok(rows::find(conn, id)?.map(PatientSummary::from))
}

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ImportReport {
    pub created: u64,
    pub updated: u64,
    /// `line N: reason` for every line refused (nothing is written when any line is refused).
    pub errors: Vec<String>,
}

/// Parses every line first; only when all are valid are they written, in one transaction
/// (a bad file changes nothing).
pub fn import(
    conn: &mut DbConnection,
    clock: &dyn Clock,
    ctx: &AuditContext,
    input: impl BufRead,
) -> Result<ImportReport, StoreError> {
    let mut records = Vec::new();
    let mut report = ImportReport::default();
    for (index, line) in input.split(b'\n').enumerate() {
        let number = index + 1;
        let bytes = match line {
            Ok(b) => b,
            Err(e) => {
                report.errors.push(format!("line {number}: {e}"));
                break;
            }
        };
        let Ok(text) = std::str::from_utf8(&bytes) else {
            report.errors.push(format!("line {number}: not UTF-8"));
            continue;
        };
        if text.trim().is_empty() {
            continue;
        }
        match fhir::parse_line(text) {
            Ok(record) => records.push(record),
            Err(e) => report.errors.push(format!("line {number}: {e}")),
        }
    }
    if !report.errors.is_empty() {
        return Ok(report);
    }
    let now = clock.now_secs();
    write_transaction(conn, |conn| {
        for record in &records {
            let identifiers = serde_json::to_string(&record.identifiers)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let created = rows::upsert(
                conn,
                &PatientRow {
                    id: record.id.clone(),
                    family: record.family.clone(),
                    given: record.given.clone(),
                    birth_date: record.birth_date.clone(),
                    gender: record.gender.clone(),
                    identifiers,
                    search_name: record.search_name(),
                    search_identifiers: record.search_identifiers(),
                    created_at: now,
                    updated_at: now,
                },
            )?;
            if created {
                report.created += 1;
            } else {
                report.updated += 1;
            }
        }
        audit::append(
            conn,
            clock,
            ctx,
            &AuditEvent::PatientsImported {
                created: report.created,
                updated: report.updated,
            },
        )
    })?;
    Ok(report)
}
