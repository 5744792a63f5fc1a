//! `ward backup` and `ward restore` for the embedded SQLite database: a consistent online copy
//! (`VACUUM INTO`, which reads one snapshot while Ward keeps serving), sealed with AES-256-GCM
//! under the master key, so a backup file alone discloses nothing. PostgreSQL installations use
//! PostgreSQL's own tools (README.md, "Backups").

use std::io::Write;
use std::path::{Path, PathBuf};

use diesel::RunQueryDsl;

use crate::clock::Clock;
use crate::config::{DatabaseTarget, Settings};
use crate::crypto::seal::{Aad, MasterKey, Sealer};
use crate::startup::StartError;
use crate::store::{meta, Db};

const MAGIC: &str = "WARD-BACKUP v1 sqlite\n";

fn aad() -> Aad<'static> {
    Aad {
        table: "backup",
        column: "sqlite",
        row: "v1",
    }
}

fn sqlite_path(settings: &Settings) -> Result<PathBuf, StartError> {
    match settings.database_target()? {
        DatabaseTarget::Sqlite(path) => Ok(path),
        DatabaseTarget::Postgres(_) => Err(StartError::Server(
            "ward backup copies the embedded SQLite database; back up PostgreSQL with pg_dump or continuous archiving (README.md, Backups)".into(),
        )),
    }
}

fn refuse_existing(path: &Path, force: bool) -> Result<(), StartError> {
    if path.exists() && !force {
        return Err(StartError::Server(format!(
            "{} exists; pass --force to replace it",
            path.display()
        )));
    }
    Ok(())
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), StartError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |e: std::io::Error| StartError::Server(format!("{}: {e}", path.display()));
    let tmp = path.with_extension("partial");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// Writes a sealed, consistent copy of the database to `to`; returns its size in bytes.
pub fn backup(
    settings: &Settings,
    db: &Db,
    sealer: &Sealer,
    clock: &dyn Clock,
    to: &Path,
    force: bool,
) -> Result<u64, StartError> {
    sqlite_path(settings)?;
    refuse_existing(to, force)?;
    // The plaintext snapshot exists only until it is sealed, beside the target.
    let copy = to.with_extension("snapshot");
    if copy.exists() {
        std::fs::remove_file(&copy).map_err(|e| StartError::Server(e.to_string()))?;
    }
    let quoted = copy.display().to_string().replace('\'', "''");
    let mut conn = db.conn()?;
    diesel::sql_query(format!("VACUUM INTO '{quoted}'"))
        .execute(&mut *conn)
        .map_err(|e| StartError::Server(format!("snapshot failed: {e}")))?;
    let bytes = std::fs::read(&copy).map_err(|e| StartError::Server(e.to_string()));
    let _ = std::fs::remove_file(&copy);
    let bytes = bytes?;
    let sealed = sealer
        .seal(aad(), &bytes)
        .map_err(|e| StartError::Server(e.to_string()))?;
    let mut out = MAGIC.as_bytes().to_vec();
    out.extend_from_slice(sealed.as_bytes());
    write_private(to, &out)?;
    meta::set(&mut conn, meta::BACKUP_AT, &clock.now_secs().to_string())?;
    Ok(bytes.len() as u64)
}

/// The master key that must have sealed the backup: configured, or the key file beside the
/// target database (never a new one).
fn existing_master_key(settings: &Settings, db_path: &Path) -> Result<MasterKey, StartError> {
    match (&settings.master_key, &settings.keys.master_key_file) {
        (Some(secret), _) => MasterKey::from_base64(secret.expose())
            .map_err(|e| StartError::MasterKey(format!("WARD_MASTER_KEY: {e}"))),
        (None, Some(path)) => crate::startup::read_key_file(path),
        (None, None) => {
            let path = crate::startup::default_key_path(db_path);
            if path.exists() {
                crate::startup::read_key_file(&path)
            } else {
                Err(StartError::MasterKey(format!(
                    "restoring needs the master key that sealed the backup: put it at {} or set WARD_MASTER_KEY",
                    path.display()
                )))
            }
        }
    }
}

/// Restores a backup over the configured SQLite database file (which Ward must not be using).
pub fn restore(settings: &Settings, from: &Path, force: bool) -> Result<PathBuf, StartError> {
    let target = sqlite_path(settings)?;
    refuse_existing(&target, force)?;
    let text = std::fs::read_to_string(from)
        .map_err(|e| StartError::Server(format!("{}: {e}", from.display())))?;
    let sealed = text
        .strip_prefix(MAGIC)
        .ok_or_else(|| StartError::Server(format!("{} is not a Ward backup", from.display())))?;
    let sealer = Sealer::new(&existing_master_key(settings, &target)?);
    let bytes = sealer.open(aad(), sealed.trim_end()).map_err(|_| {
        StartError::Server(
            "the backup does not open with this master key (wrong key, or the file was altered)"
                .into(),
        )
    })?;
    // The database's own write-ahead log belongs to the file being replaced.
    for suffix in ["-wal", "-shm"] {
        let side = PathBuf::from(format!("{}{suffix}", target.display()));
        if side.exists() {
            std::fs::remove_file(&side).map_err(|e| StartError::Server(e.to_string()))?;
        }
    }
    write_private(&target, &bytes)?;
    Ok(target)
}
