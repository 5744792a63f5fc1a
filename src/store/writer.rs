//! SQLite writes: one writer at a time inside the process, and group commit on the hot paths.
//!
//! SQLite has one write lock per database. Writers that find it taken sleep in SQLite's busy
//! handler and retry, with no order among them; and every commit appends each page it dirtied
//! to the WAL, so a transaction that inserts one token writes a dozen pages.
//!
//! Two things follow:
//!
//! - **An in-process write lock, first come first served** (`WriteLock`): every
//!   `write_transaction` of `Db::run` work on SQLite takes it before `BEGIN IMMEDIATE`. Ward's
//!   own writers queue in order instead of sleeping and polling; only other processes (the CLI)
//!   still meet SQLite's busy timeout.
//! - **Group commit** (`Combiner`, used through `Db::write`): the token endpoint's work goes to
//!   one writer thread with its own connection, which runs every piece of work waiting at that
//!   moment inside one transaction and commits once. Each piece runs as it would alone: its own
//!   `write_transaction`s become savepoints, so a refusal or an injected fault rolls back that
//!   piece's writes only, and what it writes outside them commits as autocommit would. Nobody
//!   hears an answer before the commit: when the batch cannot commit, every piece in it answers
//!   "unavailable" (503), never a success that did not last. Changes published by the batch
//!   reach this node's caches after the commit, before any answer.
//!
//! A batch is poisoned, rolled back whole and its connection discarded when a piece panics or
//! SQLite ends the transaction underneath it (disk full, I/O error): the pieces before it would
//! otherwise be reported as done.

use std::cell::RefCell;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use diesel::connection::{AnsiTransactionManager, TransactionManager};
use diesel::Connection;
use tokio::sync::{mpsc, oneshot};

use super::{changes, ConnectionManager, DbConnection, StoreError};

/// The most pieces of work one transaction carries.
const MAX_BATCH: usize = 64;
/// Pieces waiting for the writer beyond the one running; more wait as futures for a place.
const QUEUE: usize = 1024;

/// The in-process SQLite write lock of one database. `tokio::sync::Mutex` is fair (FIFO).
pub(super) type WriteLock = Arc<tokio::sync::Mutex<()>>;

thread_local! {
    static LOCK: RefCell<Option<WriteLock>> = const { RefCell::new(None) };
}

/// Runs `work` with `lock` as the write lock `write_transaction` takes on this thread.
pub(super) fn with_write_lock<T>(lock: Option<WriteLock>, work: impl FnOnce() -> T) -> T {
    struct Reset(Option<WriteLock>);
    impl Drop for Reset {
        fn drop(&mut self) {
            let previous = self.0.take();
            LOCK.with(|l| *l.borrow_mut() = previous);
        }
    }
    let previous = LOCK.with(|l| std::mem::replace(&mut *l.borrow_mut(), lock));
    let _reset = Reset(previous);
    work()
}

/// Takes this thread's write lock, if it has one (blocking threads of `Db::run`; not the CLI).
pub(super) fn hold() -> Option<tokio::sync::OwnedMutexGuard<()>> {
    LOCK.with(|l| l.borrow().clone())
        .map(tokio::sync::Mutex::blocking_lock_owned)
}

/// One piece of work waiting for the writer, with its answer's way back.
trait Job: Send {
    fn run(&mut self, conn: &mut DbConnection);
    /// `Ok` once the batch committed: the piece's own result goes back. Otherwise the error.
    fn finish(self: Box<Self>, batch: Result<(), StoreError>);
}

struct Pending<T, E, F> {
    work: Option<F>,
    result: Option<Result<T, E>>,
    reply: oneshot::Sender<Result<T, E>>,
}

impl<T, E, F> Job for Pending<T, E, F>
where
    F: FnOnce(&mut DbConnection) -> Result<T, E> + Send,
    T: Send,
    E: From<StoreError> + Send,
{
    fn run(&mut self, conn: &mut DbConnection) {
        if let Some(work) = self.work.take() {
            self.result = Some(work(conn));
        }
    }

    fn finish(self: Box<Self>, batch: Result<(), StoreError>) {
        let answer = match (batch, self.result) {
            (Ok(()), Some(result)) => result,
            (Err(e), _) => Err(E::from(e)),
            (Ok(()), None) => Err(E::from(StoreError::Unavailable(
                "the work did not run".into(),
            ))),
        };
        // The caller may have gone away; the work is done either way.
        let _ = self.reply.send(answer);
    }
}

/// The group-commit writer of one SQLite database (see the module docs). Its thread ends when
/// the last `Db` handle holding it is dropped.
pub(super) struct Combiner {
    queue: mpsc::Sender<Box<dyn Job>>,
}

/// What the writer thread needs besides its queue.
pub(super) struct WriterSetup {
    pub manager: ConnectionManager,
    pub lock: WriteLock,
    pub sink: Arc<std::sync::OnceLock<Arc<dyn changes::ChangeSink>>>,
    pub identity: Arc<str>,
}

impl Combiner {
    pub(super) fn start(setup: WriterSetup) -> Result<Self, StoreError> {
        let (queue, jobs) = mpsc::channel(QUEUE);
        std::thread::Builder::new()
            .name("ward-sqlite-writer".into())
            .spawn(move || writer_loop(jobs, setup))
            .map_err(|e| StoreError::Unavailable(format!("cannot start the writer: {e}")))?;
        Ok(Self { queue })
    }

    /// Queues `work` (waiting at most `wait` for a place) and answers its result once the
    /// transaction that carried it committed.
    pub(super) async fn submit<T, E, F>(&self, wait: std::time::Duration, work: F) -> Result<T, E>
    where
        F: FnOnce(&mut DbConnection) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: Box<dyn Job> = Box::new(Pending {
            work: Some(work),
            result: None,
            reply,
        });
        match tokio::time::timeout(wait, self.queue.send(job)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                return Err(E::from(StoreError::Unavailable(
                    "the database writer stopped".into(),
                )))
            }
            Err(_) => {
                return Err(E::from(StoreError::Unavailable(
                    "the database writer is overloaded".into(),
                )))
            }
        }
        answer.await.unwrap_or_else(|_| {
            Err(E::from(StoreError::Unavailable(
                "the database writer stopped".into(),
            )))
        })
    }
}

fn writer_loop(mut jobs: mpsc::Receiver<Box<dyn Job>>, setup: WriterSetup) {
    let mut conn: Option<DbConnection> = None;
    while let Some(first) = jobs.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let sink = setup.sink.get().cloned();
        changes::with_sink(sink, || {
            crate::fault::scoped(&setup.identity, || run_batch(&mut conn, &setup, batch));
        });
    }
}

fn run_batch(slot: &mut Option<DbConnection>, setup: &WriterSetup, batch: Vec<Box<dyn Job>>) {
    // The same per-piece fault point as `Db::run`: the database "cannot be reached".
    let mut ready = Vec::with_capacity(batch.len());
    for job in batch {
        match crate::fault::point(crate::fault::Point::DbConnect) {
            Ok(()) => ready.push(job),
            Err(e) => job.finish(Err(e)),
        }
    }
    if ready.is_empty() {
        return;
    }
    if slot.is_none() {
        match setup.manager.establish() {
            Ok(conn) => *slot = Some(conn),
            Err(e) => {
                let reason = format!("cannot connect: {e}");
                for job in ready {
                    job.finish(Err(StoreError::Unavailable(reason.clone())));
                }
                return;
            }
        }
    }
    let Some(conn) = slot.as_mut() else { return };
    let held = setup.lock.blocking_lock();
    let outcome = commit_together(conn, &mut ready);
    drop(held);
    match outcome {
        Ok(()) => {
            for job in ready {
                job.finish(Ok(()));
            }
        }
        Err(reason) => {
            // A connection that failed a batch is not trusted with the next one.
            *slot = None;
            for job in ready {
                job.finish(Err(StoreError::Unavailable(reason.clone())));
            }
        }
    }
}

/// Runs every piece in one `BEGIN IMMEDIATE` transaction and commits once. `Err` (with the
/// reason) when nothing of the batch committed.
fn commit_together(conn: &mut DbConnection, batch: &mut [Box<dyn Job>]) -> Result<(), String> {
    let DbConnection::Sqlite(inner) = conn else {
        return Err("group commit is for SQLite".into());
    };
    AnsiTransactionManager::begin_transaction_sql(inner, "BEGIN IMMEDIATE")
        .map_err(|e| format!("cannot begin: {e}"))?;
    let open = changes::transaction_began();
    for job in batch.iter_mut() {
        let ran = std::panic::catch_unwind(AssertUnwindSafe(|| job.run(conn)));
        let still_open = matches!(depth(conn), Ok(Some(1)));
        if ran.is_err() || !still_open {
            open.ended(false);
            let _ = <DbConnection as Connection>::TransactionManager::rollback_transaction(conn);
            return Err(if ran.is_err() {
                "a piece of work failed unexpectedly; its batch was rolled back".into()
            } else {
                "the database ended the transaction; the batch was rolled back".into()
            });
        }
    }
    let committed = <DbConnection as Connection>::TransactionManager::commit_transaction(conn);
    open.ended(committed.is_ok());
    committed.map_err(|e| {
        let _ = <DbConnection as Connection>::TransactionManager::rollback_transaction(conn);
        format!("cannot commit: {e}")
    })
}

/// How many transactions (the outer one and savepoints) are open on `conn`.
pub(super) fn depth(conn: &mut DbConnection) -> diesel::QueryResult<Option<u32>> {
    <DbConnection as Connection>::TransactionManager::transaction_manager_status_mut(conn)
        .transaction_depth()
        .map(|d| d.map(std::num::NonZeroU32::get))
}
