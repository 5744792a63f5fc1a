//! `ward patient`: the patient directory behind the standalone-launch patient picker.

use std::io::BufReader;
use std::path::PathBuf;

use clap::Subcommand;
use serde_json::json;

use crate::audit::AuditContext;
use crate::clients::FieldError;
use crate::clock::SharedClock;
use crate::config::Settings;
use crate::patients;
use crate::startup::{self, StartError};

#[derive(Debug, Subcommand)]
pub enum PatientCommand {
    /// Load FHIR R4 Patient resources from NDJSON (one resource per line, as a FHIR Bulk Data
    /// export writes them; `-` reads standard input). Only name, birth date, gender and
    /// identifiers are kept. All or nothing: one bad line and nothing is written.
    Import {
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Search the directory as the patient picker does (name words, YYYY-MM-DD or identifier).
    Search {
        query: String,
        #[arg(long, default_value_t = 20)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
}

pub fn patient(
    settings: &Settings,
    clock: &SharedClock,
    command: PatientCommand,
) -> Result<(), StartError> {
    let db = startup::open_db(settings)?;
    let ctx = AuditContext::cli();
    startup::migrate(&db, clock, &ctx)?;
    let mut conn = db.conn()?;
    match command {
        PatientCommand::Import { file, json } => {
            let report = if file.as_os_str() == "-" {
                patients::import(&mut conn, clock.as_ref(), &ctx, std::io::stdin().lock())?
            } else {
                let handle = std::fs::File::open(&file).map_err(|e| {
                    StartError::Invalid(vec![FieldError::new(
                        "file",
                        format!("{}: {e}", file.display()),
                    )])
                })?;
                patients::import(&mut conn, clock.as_ref(), &ctx, BufReader::new(handle))?
            };
            if json {
                println!("{}", json!(report));
            }
            if !report.errors.is_empty() {
                return Err(StartError::Invalid(
                    report
                        .errors
                        .iter()
                        .map(|e| FieldError::new("patients", e.clone()))
                        .collect(),
                ));
            }
            if !json {
                println!(
                    "Imported patients: {} new, {} updated.",
                    report.created, report.updated
                );
            }
            Ok(())
        }
        PatientCommand::Search { query, limit, json } => {
            let found = patients::search(&mut conn, &query, limit.clamp(1, 200))?;
            if json {
                println!("{}", json!(found));
            } else {
                for p in &found {
                    println!(
                        "{}\t{}\t{}\t{}",
                        p.id,
                        p.name,
                        p.birth_date.as_deref().unwrap_or("-"),
                        p.gender.as_deref().unwrap_or("-")
                    );
                }
            }
            Ok(())
        }
    }
}
