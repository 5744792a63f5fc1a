//! `ward audit`: the tamper-evident chain from the command line.

use std::path::PathBuf;

use clap::Subcommand;
use serde_json::json;

use super::key_store;
use crate::audit::chain;
use crate::clients::FieldError;
use crate::clock::SharedClock;
use crate::config::Settings;
use crate::keys::{KeyAlg, KeyRing};
use crate::startup::{self, StartError};

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Walk the whole chain and report the first broken link (exit 1 when broken). With
    /// --checkpoint, also check the chain still reaches that head. Reads only.
    Verify {
        #[arg(long, value_name = "FILE")]
        checkpoint: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Print a signed statement of the chain's head; keep it outside the database.
    Checkpoint {
        #[arg(long)]
        json: bool,
    },
    /// Export events as FHIR R4 AuditEvent resources (IHE BALP codes): NDJSON, or a Bundle.
    Export {
        /// fhir (the only format).
        #[arg(long, default_value = "fhir")]
        format: String,
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        until: Option<String>,
        /// One Bundle (type collection) instead of NDJSON.
        #[arg(long)]
        bundle: bool,
    },
    /// Accounting of disclosures: who obtained access to one patient's data, as far as Ward knows.
    Disclosures {
        /// `Patient/123` or `123`.
        #[arg(long)]
        patient: String,
        /// From this time (RFC 3339) or date (YYYY-MM-DD, UTC).
        #[arg(long)]
        since: Option<String>,
        /// Until (excluding) this time or date.
        #[arg(long)]
        until: Option<String>,
        /// text (default), csv or json.
        #[arg(long, default_value = "text")]
        format: String,
    },
}

fn time_arg(name: &str, value: Option<&str>) -> Result<Option<i64>, StartError> {
    match value {
        None => Ok(None),
        Some(text) => crate::clock::parse_time_millis(text)
            .map(Some)
            .ok_or_else(|| {
                StartError::Invalid(vec![FieldError::new(
                    name,
                    "must be an RFC 3339 time or a YYYY-MM-DD date (UTC)",
                )])
            }),
    }
}

pub fn audit(
    settings: &Settings,
    clock: &SharedClock,
    command: AuditCommand,
) -> Result<(), StartError> {
    let (db, sealer) = key_store(settings, clock)?;
    let mut conn = db.conn()?;
    let now = clock.now_secs();
    // Opened only where a signature is made or checked: verifying without a checkpoint needs no
    // signing key, so it still runs (and names the key it lacks) when the master key that
    // sealed the signing keys is not held.
    let ring = |conn: &mut crate::store::DbConnection| {
        KeyRing::load(conn, sealer.clone(), startup::key_timing(settings), now)
    };
    // Read-only: verifying never links (a linker would bless whatever it finds unlinked).
    let now_ms = clock.now_millis();
    match command {
        AuditCommand::Export {
            format,
            since,
            until,
            bundle,
        } => {
            if format != "fhir" {
                return Err(StartError::Invalid(vec![FieldError::new(
                    "format",
                    format!("`{format}`: the export format is fhir"),
                )]));
            }
            let rows = crate::store::audit_events::all_matching(
                &mut conn,
                &crate::store::audit_events::AuditQuery {
                    since_ms: time_arg("since", since.as_deref())?,
                    until_ms: time_arg("until", until.as_deref())?,
                    ..Default::default()
                },
            )?;
            let issuer = settings.issuer()?;
            let observer = crate::audit::fhir::Observer {
                issuer: &issuer,
                node_hint: None,
            };
            if bundle {
                println!("{}", crate::audit::fhir::to_bundle(&rows, &observer));
            } else {
                print!("{}", crate::audit::fhir::to_ndjson(&rows, &observer));
            }
            Ok(())
        }
        AuditCommand::Disclosures {
            patient,
            since,
            until,
            format,
        } => {
            use crate::audit::disclosures;
            let rows = disclosures::events(
                &mut conn,
                &patient,
                time_arg("since", since.as_deref())?,
                time_arg("until", until.as_deref())?,
            )?;
            let items = disclosures::disclosures(&mut conn, &rows)?;
            match format.as_str() {
                "text" => print!("{}", disclosures::to_text(&patient, &items)),
                "csv" => print!("{}", disclosures::to_csv(&items)),
                "json" => println!(
                    "{}",
                    json!({
                        "patient": format!("Patient/{}", disclosures::patient_id(&patient)),
                        "disclosures": items,
                        "limits": disclosures::LIMITS,
                    })
                ),
                other => {
                    return Err(StartError::Invalid(vec![FieldError::new(
                        "format",
                        format!("`{other}`: use text, csv or json"),
                    )]))
                }
            }
            Ok(())
        }
        AuditCommand::Checkpoint { json } => {
            let report = chain::verify(&mut conn, &sealer, None, now_ms)?;
            if let Some(problem) = report.first_break {
                return Err(StartError::Server(format!(
                    "the audit chain is broken ({problem:?}); not signing a checkpoint"
                )));
            }
            let head = report.head.unwrap_or(chain::Head {
                seq: 0,
                hash: chain::GENESIS.to_owned(),
            });
            let signer = ring(&mut conn)?.signer(KeyAlg::Es256, now)?;
            let jws = chain::sign_checkpoint(&signer, &head, &settings.issuer()?, now)?;
            if json {
                println!(
                    "{}",
                    json!({ "seq": head.seq, "hash": head.hash, "checkpoint": jws })
                );
            } else {
                println!("{jws}");
            }
            Ok(())
        }
        AuditCommand::Verify { checkpoint, json } => {
            let head = match &checkpoint {
                None => None,
                Some(path) => {
                    let text = std::fs::read_to_string(path).map_err(|e| {
                        StartError::Invalid(vec![FieldError::new(
                            "checkpoint",
                            format!("{}: {e}", path.display()),
                        )])
                    })?;
                    let text = serde_json::from_str::<serde_json::Value>(&text)
                        .ok()
                        .and_then(|v| {
                            v.get("checkpoint")
                                .and_then(|c| c.as_str())
                                .map(str::to_owned)
                        })
                        .unwrap_or(text);
                    Some(
                        chain::read_checkpoint(&ring(&mut conn)?, &text).ok_or_else(|| {
                            StartError::Invalid(vec![FieldError::new(
                                "checkpoint",
                                "is not a checkpoint signed by this Ward's keys",
                            )])
                        })?,
                    )
                }
            };
            let report = chain::verify(&mut conn, &sealer, head.as_ref(), now_ms)?;
            if json {
                println!("{}", json!(report));
            } else {
                match &report.first_break {
                    None => println!(
                        "Audit chain intact: {} events verified{}.",
                        report.verified,
                        describe_keys(&report.keys)
                    ),
                    Some(problem) => println!(
                        "AUDIT CHAIN BROKEN after {} good events: {}",
                        report.verified,
                        describe(problem)
                    ),
                }
            }
            if let Some(problem) = &report.first_break {
                // A high-severity event: a running Ward raises the security alert for it.
                crate::audit::record(
                    &mut conn,
                    clock.as_ref(),
                    &crate::audit::AuditContext::cli(),
                    &crate::audit::AuditEvent::AuditVerificationFailed {
                        verified: u64::try_from(report.verified).unwrap_or(0),
                        problem: describe(problem),
                    },
                )?;
            }
            match report.first_break {
                None => {
                    // For `ward doctor`: when the chain was last seen intact.
                    crate::store::meta::set(
                        &mut conn,
                        crate::store::meta::AUDIT_VERIFIED_AT,
                        &now.to_string(),
                    )?;
                    Ok(())
                }
                Some(_) => Err(StartError::Server("the audit chain is broken".into())),
            }
        }
    }
}

fn describe(problem: &chain::Break) -> String {
    match problem {
        chain::Break::Altered { seq, event_id } => format!(
            "event #{seq} (row {event_id}) was changed, or events were reordered"
        ),
        chain::Break::Missing { expected } => format!("event #{expected} is missing (deleted)"),
        chain::Break::Truncated { checkpoint_seq, last_seq } => format!(
            "the chain ends at #{last_seq} but the checkpoint saw #{checkpoint_seq}: events were removed from the end"
        ),
        chain::Break::CheckpointMismatch { seq } => {
            format!("event #{seq} is not the one the checkpoint signed")
        }
        chain::Break::UnknownKey { seq, event_id, key_id } => format!(
            "event #{seq} (row {event_id}) names chain key `{key_id}`, which this Ward does not hold, so it cannot be checked: either the master key with id `{key_id}` was rotated away (supply it as a previous key with WARD_MASTER_KEY_PREVIOUS or keys.master_key_previous_files and verify again) or the key id itself was altered (tampering) if no such key ever existed"
        ),
        chain::Break::KeyOutOfOrder { seq, event_id, key_id } => format!(
            "event #{seq} (row {event_id}) is linked under chain key `{key_id}` after the chain had moved on to another key: keys only ever move forward (a master-key rotation), so this link was rewritten with an old key (tampering)"
        ),
        chain::Break::Unlinked { count } => format!(
            "{count} events older than ten minutes are not in the chain (written outside Ward, or the linker is stopped)"
        ),
    }
}

/// ` (chain key A for #1–#9, B for #10–#20)`, or nothing for an empty chain.
fn describe_keys(keys: &[chain::KeyUse]) -> String {
    if keys.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = keys
        .iter()
        .map(|k| format!("{} for #{}–#{}", k.key_id, k.first_seq, k.last_seq))
        .collect();
    format!(" (chain key {})", parts.join(", "))
}
