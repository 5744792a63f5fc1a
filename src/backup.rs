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

/// For `backup` and `doctor`: the configured SQLite file must exist (a mistyped path must not
/// quietly create, and then back up or assess, an empty database).
pub fn require_existing_database(settings: &Settings) -> Result<(), StartError> {
    if let Ok(DatabaseTarget::Sqlite(path)) = settings.database_target() {
        if !path.exists() {
            return Err(StartError::Server(format!(
                "no database at {} (check --database-url)",
                path.display()
            )));
        }
    }
    Ok(())
}

/// A private directory (0700) beside the database for the plaintext snapshot, removed with
/// everything in it when dropped, on every path.
struct Scratch(PathBuf);

impl Scratch {
    fn new(database: &Path) -> Result<Self, StartError> {
        use std::os::unix::fs::DirBuilderExt;
        let parent = database
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let dir = parent.join(format!(".ward-backup-{}", crate::crypto::random_token(8)));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| StartError::Server(format!("{}: {e}", dir.display())))?;
        Ok(Self(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    let canonical = |p: &Path| {
        let parent = p
            .parent()
            .filter(|x| !x.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        parent
            .canonicalize()
            .ok()
            .map(|dir| dir.join(p.file_name().unwrap_or_default()))
    };
    matches!((canonical(a), canonical(b)), (Some(x), Some(y)) if x == y)
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), StartError> {
    let tmp = write_partial(path, bytes)?;
    std::fs::rename(&tmp, path).map_err(|e| StartError::Server(format!("{}: {e}", path.display())))
}

/// Writes `bytes` to `PATH.partial` (mode 0600, synced); returns that path.
fn write_partial(path: &Path, bytes: &[u8]) -> Result<PathBuf, StartError> {
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
    Ok(tmp)
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
    let database = sqlite_path(settings)?;
    for live in ["", "-wal", "-shm"] {
        if same_file(to, Path::new(&format!("{}{live}", database.display()))) {
            return Err(StartError::Server(
                "the backup cannot replace the database it copies".into(),
            ));
        }
    }
    refuse_existing(to, force)?;
    // The plaintext snapshot lives in a private directory beside the database (never on the
    // backup volume), in a file created 0600, and is removed on every path.
    let scratch = Scratch::new(&database)?;
    let copy = scratch.0.join("snapshot.db");
    {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&copy)
            .map_err(|e| StartError::Server(format!("{}: {e}", copy.display())))?;
    }
    let absolute = copy
        .canonicalize()
        .map_err(|e| StartError::Server(e.to_string()))?;
    let quoted = absolute.display().to_string().replace('\'', "''");
    let mut conn = db.conn()?;
    diesel::sql_query(format!("VACUUM INTO '{quoted}'"))
        .execute(&mut *conn)
        .map_err(|e| StartError::Server(format!("snapshot failed: {e}")))?;
    let bytes = std::fs::read(&copy).map_err(|e| StartError::Server(e.to_string()))?;
    drop(scratch);
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
    let sealer = Sealer::with_previous(
        &existing_master_key(settings, &target)?,
        &crate::startup::previous_master_keys(settings)?,
    );
    let bytes = sealer.open(aad(), sealed.trim_end()).map_err(|_| {
        StartError::Server(
            "the backup does not open with this master key (wrong key, or the file was altered)"
                .into(),
        )
    })?;
    // A write-ahead log with content means a database in use (or not cleanly closed): its
    // transactions would be lost. Stop Ward first (or pass --force to discard them).
    let wal = PathBuf::from(format!("{}-wal", target.display()));
    if !force && std::fs::metadata(&wal).is_ok_and(|m| m.len() > 0) {
        return Err(StartError::Server(format!(
            "{} has a non-empty write-ahead log: stop Ward before restoring (or pass --force)",
            target.display()
        )));
    }
    // New bytes first; only then retire the old file's log, and swap.
    let partial = write_partial(&target, &bytes)?;
    for suffix in ["-wal", "-shm"] {
        let side = PathBuf::from(format!("{}{suffix}", target.display()));
        if side.exists() {
            std::fs::remove_file(&side).map_err(|e| StartError::Server(e.to_string()))?;
        }
    }
    std::fs::rename(&partial, &target).map_err(|e| StartError::Server(e.to_string()))?;
    Ok(target)
}
