//! WAL checkpoints off the write path (SQLite).
//!
//! In WAL mode SQLite copies committed pages back into the database file ("checkpoints")
//! from inside the commit that pushes the log past 1,000 pages. Every writer here goes
//! through one connection, so that copy — a few hundred scattered pages and an fsync of the
//! database file once the store holds hundreds of thousands of tasks — stalls every queued
//! claim behind it. The store's writer therefore never checkpoints itself
//! (`wal_autocheckpoint = 0`); a background task runs passive checkpoints on a reader
//! connection instead, which proceed while the writer keeps committing. The log file is
//! truncated back to [`LOG_LIMIT_BYTES`] when it restarts.
//!
//! The log restarts from its beginning only once every frame in it has been copied, and a
//! passive checkpoint never waits: under an unbroken stream of commits it may never catch
//! the writer, and the log would grow without end. So once the log holds more than
//! [`RESTART_FRAMES`] the task runs a `RESTART` checkpoint **on the writer connection**,
//! taken from the write pool in turn with the transactions: it copies the frames committed
//! since the passive pass and makes the next commit start the log afresh. Run from a reader
//! instead, a `RESTART` first has to win the write lock from a writer that hardly ever lets
//! go, and blocks every new write transaction while it waits (SQLite's rule for the
//! blocking checkpoint modes): at 1,000,000 tasks that stalled claims for 0.3–3.4 s several
//! times a second. On the writer the stall is the copy of those last frames (tens of
//! milliseconds). It runs without a busy timeout: if a reader still holds an older snapshot
//! (a long read, a backup) it gives up at once and the next pass tries again, rather than
//! holding the writer until the reader is done.
//!
//! At 1,000,000 tasks checkpointing off the write path raised claims by about a tenth
//! (`bench claims --curve`), and restarting on the writer took away the stalls that made the
//! rate swing between runs; at 10,000 tasks, where the pages a claim dirties are few and
//! repeat, it changes little.
//!
//! The same task looks after the writer's memory. Every write transaction runs on the
//! writer, and a claim reads about 35 pages: the front of the claim queue and, at random
//! places, the claimed task's row and index entries. With SQLite's default cache
//! (2,000 KiB) and no map, most of the random pages had left the cache by the next claim at
//! 1,000,000 tasks and were read again from the operating system, a system call and a copy
//! each: the bare claim transaction ran at 0.58 × its 10,000-task rate. A 64 MiB cache
//! brought that to 0.83–0.88 ×, but it was 64 MiB of the server's own memory, and the C10
//! route still came out below 0.8 × in about a third of the runs. The writer now maps up
//! to [`WRITER_MMAP_BYTES`] of the database file (`mmap_size`) and keeps a cache of
//! [`WRITER_CACHE_KIB`]: a page that is neither cached nor in the log is read where the
//! kernel already holds it, and the cache need only hold the pages the transactions write
//! and read from the log. Run alternately with the 64 MiB cache and no map (three pairs of
//! 15 rounds), C10 went from 0.77–0.83 × to 0.85–0.86 ×, the server's anonymous memory
//! after the run from 77 to 16 MB; its peak resident memory counts the mapped pages too
//! (393 MB at 1,000,000 tasks against 149), pages of the kernel's file cache that it can
//! take back at any time. Readers keep the default cache and no map, as they are many. Once
//! the store has had no write for [`SHRINK_AFTER_IDLE`] the task gives the cache back
//! (`PRAGMA shrink_memory`) and unmaps the file, and an idle server returns to its baseline.
//! One cost of the map: should the disk fail under a mapped page, the read is a fatal
//! signal for the process rather than an I/O error for the transaction (every state change
//! is atomic, so the store is as a crash would leave it).
//!
//! The task lives as long as some clone of the [`Store`] does, and checkpoints only after
//! writes committed since its last pass. A process that stops between passes leaves a log
//! SQLite replays on the next open; the last connection to close checkpoints it anyway.
//!
//! [`Store`]: crate::Store

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use sqlx::{AnyPool, Row};
use tracing::warn;

use crate::Store;

/// How often the background task looks for committed writes to checkpoint.
const INTERVAL: Duration = Duration::from_millis(100);

/// Frames in the log past which the next pass forces a restart (16 MiB of 4 KiB pages).
pub(crate) const RESTART_FRAMES: i64 = 4096;

/// The size the write-ahead log is truncated to when it restarts.
pub(crate) const LOG_LIMIT_BYTES: u64 = 64 << 20;

/// How long a connection of the store waits for a lock another holds (`busy_timeout`).
pub(crate) const BUSY_TIMEOUT_MS: u32 = 30_000;

/// Page cache of the writer connection, in KiB.
pub(crate) const WRITER_CACHE_KIB: u32 = 8 * 1024;

/// How long the store goes without writes before the writer's page cache is given back
/// and the database file unmapped.
pub(crate) const SHRINK_AFTER_IDLE: Duration = Duration::from_secs(20);

/// How much of the database file the writer maps into memory (`mmap_size`).
pub(crate) const WRITER_MMAP_BYTES: u64 = 1 << 30;

/// The pragmas of the writer connection on top of [`pragmas`].
pub(crate) fn writer_pragmas() -> String {
    format!("PRAGMA cache_size = -{WRITER_CACHE_KIB}; PRAGMA mmap_size = {WRITER_MMAP_BYTES};")
}

/// The pragmas of every connection of a SQLite store that concern locks and checkpoints.
pub(crate) fn pragmas() -> String {
    format!("PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}; PRAGMA wal_autocheckpoint = 0; PRAGMA journal_size_limit = {LOG_LIMIT_BYTES};")
}

/// Writes committed, shared by the clones of one store and its checkpoint task.
#[derive(Debug, Default)]
pub(crate) struct Commits(AtomicU64);

// `done` trails `count` by one pass, so an idle store is checkpointed twice after its last
// write and then left alone.

impl Commits {
    pub(crate) fn note(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// Start the checkpoint task of a SQLite store (its reader and writer pools) whose commits
/// are counted in `commits`. It ends once every clone of the store (which hold the only
/// strong references to `commits`) is gone.
pub(crate) fn spawn(read: AnyPool, write: AnyPool, commits: &Arc<Commits>) {
    let commits: Weak<Commits> = Arc::downgrade(commits);
    tokio::spawn(async move {
        // writes are counted as they begin, so a pass covers those counted one pass
        // earlier (and any committed since); later ones get the next pass
        let (mut done, mut previous) = (0, 0);
        let mut idle = Idle::new(std::time::Instant::now());
        loop {
            tokio::time::sleep(INTERVAL).await;
            let Some(count) = commits.upgrade().map(|c| c.0.load(Ordering::Relaxed)) else { return };
            if read.is_closed() {
                return; // the store was closed (its clones may live on)
            }
            if idle.shrink_now(count, std::time::Instant::now()) {
                match shrink_writer(&write).await {
                    Ok(()) => {}
                    Err(sqlx::Error::PoolClosed) => return,
                    Err(e) => warn!("could not release the writer's page cache: {e}"),
                }
            }
            if count == done {
                continue;
            }
            match checkpoint(&read, &write).await {
                Ok(()) => done = previous,
                Err(sqlx::Error::PoolClosed) => return, // closed while the pass ran
                Err(e) => warn!("WAL checkpoint failed (retried): {e}"),
            }
            previous = count;
        }
    });
}

/// When to give the writer's page cache back: once per idle spell of [`SHRINK_AFTER_IDLE`].
#[derive(Debug)]
struct Idle {
    /// Writes counted at the last look, and since when that count has not moved.
    count: u64,
    since: std::time::Instant,
    /// Whether this idle spell's shrink is done (a fresh store has nothing to give back).
    shrunk: bool,
}

impl Idle {
    fn new(now: std::time::Instant) -> Idle {
        Idle { count: 0, since: now, shrunk: true }
    }

    /// Whether to shrink now, given the writes counted so far.
    fn shrink_now(&mut self, count: u64, now: std::time::Instant) -> bool {
        if count != self.count {
            (self.count, self.since, self.shrunk) = (count, now, false);
            return false;
        }
        if self.shrunk || now.duration_since(self.since) < SHRINK_AFTER_IDLE {
            return false;
        }
        self.shrunk = true;
        true
    }
}

/// Free the writer connection's cached pages and unmap the database file (it fills the
/// cache and maps the file again as it goes).
async fn shrink_writer(write: &AnyPool) -> sqlx::Result<()> {
    let mut conn = write.acquire().await?;
    sqlx::query("PRAGMA shrink_memory").execute(&mut *conn).await?;
    // a new limit unmaps the file; the next read maps it again, within the old limit
    sqlx::query("PRAGMA mmap_size = 0").execute(&mut *conn).await?;
    sqlx::query(&format!("PRAGMA mmap_size = {WRITER_MMAP_BYTES}")).execute(&mut *conn).await?;
    Ok(())
}

impl Store {
    /// Copy what the write-ahead log holds into the database file now, without waiting for
    /// readers (SQLite: a passive checkpoint, what the background task runs every
    /// [`INTERVAL`] after writes; PostgreSQL: nothing, it checkpoints on its own). For a
    /// caller that wants the store quiet before it measures, such as the claim benches
    /// after a burst of writes.
    pub async fn checkpoint_log(&self) -> crate::Result<()> {
        if self.backend() == crate::Backend::Sqlite {
            sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").fetch_one(self.reader()).await?;
        }
        Ok(())
    }
}

/// One pass: copy what can be copied without waiting; restart a log grown too long.
async fn checkpoint(read: &AnyPool, write: &AnyPool) -> sqlx::Result<()> {
    // (busy, frames in the log, frames copied)
    let row = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").fetch_one(read).await?;
    let frames: i64 = row.try_get(1)?;
    if frames > RESTART_FRAMES {
        restart_on_writer(write).await?;
    }
    Ok(())
}

/// A `RESTART` checkpoint on the writer connection, between its transactions, that gives up
/// at once (busy) if a reader holds an older snapshot.
async fn restart_on_writer(write: &AnyPool) -> sqlx::Result<()> {
    let mut conn = write.acquire().await?;
    sqlx::query("PRAGMA busy_timeout = 0").execute(&mut *conn).await?;
    let restarted = sqlx::query("PRAGMA wal_checkpoint(RESTART)").execute(&mut *conn).await;
    let restored = sqlx::query(&format!("PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")).execute(&mut *conn).await;
    if restored.is_err() {
        // never hand the writer back without its busy timeout: a fresh connection gets it
        let _ = sqlx::Connection::close(conn.detach()).await;
    }
    restarted?;
    restored?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{StoreLocation, StoreOptions};

    /// A SQLite store (no fsync) with a table `filler (id, body)`.
    async fn filler_store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let options = StoreOptions { sqlite_synchronous: "OFF".into(), ..Default::default() };
        let store = Store::connect(&StoreLocation::Sqlite { path: dir.path().join("state.db") }, &options).await.unwrap();
        let mut tx = store.begin_write().await.unwrap();
        sqlx::query("CREATE TABLE filler (id INTEGER PRIMARY KEY, body BLOB)").execute(&mut *tx).await.unwrap();
        tx.commit().await.unwrap();
        (dir, store)
    }

    /// One commit of a 16 KiB row (4+ pages through the log).
    async fn insert_filler(store: &Store) {
        let mut tx = store.begin_write().await.unwrap();
        sqlx::query("INSERT INTO filler (body) VALUES ($1)").bind(vec![7u8; 16 * 1024]).execute(&mut *tx).await.unwrap();
        tx.commit().await.unwrap();
    }

    /// The writer's cache is given back once per idle spell, after SHRINK_AFTER_IDLE
    /// without writes, and not while writes go on.
    #[test]
    fn the_cache_is_released_once_per_idle_spell() {
        let t0 = std::time::Instant::now();
        let at = |s: f64| t0 + Duration::from_secs_f64(s);
        let idle_s = SHRINK_AFTER_IDLE.as_secs_f64();
        let mut idle = Idle::new(t0);
        // a fresh store: nothing to give back however long it stays idle
        assert!(!idle.shrink_now(0, at(idle_s * 3.0)));
        // writes keep coming: never
        for (i, s) in [1.0, idle_s, idle_s * 2.0, idle_s * 3.0].into_iter().enumerate() {
            assert!(!idle.shrink_now(i as u64 + 1, at(idle_s * 3.0 + s)), "shrunk during writes");
        }
        let last_write = idle_s * 6.0;
        assert!(!idle.shrink_now(4, at(last_write - 0.1 + idle_s)), "shrunk before the idle time");
        assert!(idle.shrink_now(4, at(last_write + 0.1 + idle_s)), "not shrunk after the idle time");
        assert!(!idle.shrink_now(4, at(last_write + 5.0 * idle_s)), "shrunk twice in one idle spell");
        // a new write starts a new spell
        assert!(!idle.shrink_now(5, at(last_write + 6.0 * idle_s)));
        assert!(idle.shrink_now(5, at(last_write + 7.1 * idle_s)));
    }

    /// Whether this process maps (part of) the file at `path`.
    fn mapped(path: &std::path::Path) -> bool {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let path = path.canonicalize().unwrap();
        maps.lines().any(|l| l.ends_with(path.to_str().unwrap()))
    }

    /// The writer has its larger cache and maps the database file, the readers have the
    /// default cache and no map; releasing the cache unmaps the file and leaves a working
    /// writer, which maps the file again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_writer_has_the_larger_cache_and_maps_the_file() {
        let (dir, store) = filler_store().await;
        let file = dir.path().join("state.db");
        let mut tx = store.begin_write().await.unwrap();
        let writer: i64 = sqlx::query_scalar("PRAGMA cache_size").fetch_one(&mut *tx).await.unwrap();
        let writer_map: i64 = sqlx::query_scalar("PRAGMA mmap_size").fetch_one(&mut *tx).await.unwrap();
        tx.commit().await.unwrap();
        let reader: i64 = sqlx::query_scalar("PRAGMA cache_size").fetch_one(store.reader()).await.unwrap();
        let reader_map: i64 = sqlx::query_scalar("PRAGMA mmap_size").fetch_one(store.reader()).await.unwrap();
        assert_eq!((writer, reader), (-(WRITER_CACHE_KIB as i64), -2000));
        assert_eq!((writer_map, reader_map), (WRITER_MMAP_BYTES as i64, 0));
        // the writer reads pages from the map once the log no longer holds them
        let write_through = || async {
            insert_filler(&store).await;
            let mut conn = store.write.acquire().await.unwrap();
            sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(&mut *conn).await.unwrap();
            let _: i64 = sqlx::query_scalar("SELECT SUM(length(body)) FROM filler").fetch_one(&mut *conn).await.unwrap();
        };
        write_through().await;
        assert!(mapped(&file), "the writer does not map the database file");
        shrink_writer(&store.write).await.unwrap();
        assert!(!mapped(&file), "the database file is still mapped after the shrink");
        write_through().await;
        assert!(mapped(&file), "the writer did not map the file again");
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM filler").fetch_one(store.reader()).await.unwrap();
        assert_eq!(n, 2);
        store.close().await;
    }

    /// After `checkpoint_log` the database file alone holds every write committed before
    /// it (without it the last writes would still be only in the log: the background task
    /// passes every 100 ms).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn checkpoint_log_puts_every_commit_in_the_database_file() {
        let (dir, store) = filler_store().await;
        for _ in 0..50 {
            insert_filler(&store).await;
        }
        store.checkpoint_log().await.unwrap();
        let copy = tempfile::tempdir().unwrap();
        std::fs::copy(dir.path().join("state.db"), copy.path().join("state.db")).unwrap();
        let alone = Store::connect(&StoreLocation::Sqlite { path: copy.path().join("state.db") }, &StoreOptions::default()).await.unwrap();
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM filler").fetch_one(alone.reader()).await.unwrap();
        assert_eq!(n, 50);
        alone.close().await;
        store.close().await;
    }

    /// An unbroken stream of commits, far more than the restart threshold: the log stays
    /// bounded (without the checkpoint task it would hold every commit) and nothing is
    /// lost.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_log_stays_bounded_under_continuous_writes() {
        let (dir, store) = filler_store().await;
        let wal = dir.path().join("state.db-wal");
        let mut largest = 0;
        // 8,000 commits of 4+ pages each: about 165 MB through the log
        for _ in 0..8000 {
            insert_filler(&store).await;
            largest = largest.max(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0));
        }
        // a few restart thresholds' worth: passes may be late on a busy machine
        let limit = (RESTART_FRAMES as u64 * 4096) * 4;
        assert!(largest < limit, "write-ahead log reached {largest} bytes (limit {limit})");
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM filler").fetch_one(store.reader()).await.unwrap();
        assert_eq!(n, 8000);
        store.close().await;
    }

    /// A reader holding an old snapshot (a long read, a backup) keeps the log from
    /// restarting; the writer must not wait for it. A restart that waited for the reader
    /// (with the connections' 30 s busy timeout) would hold every commit back until the
    /// reader let go.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_long_reader_does_not_hold_the_writer_back() {
        let (dir, store) = filler_store().await;
        let mut snapshot = store.begin_snapshot().await.unwrap();
        let before: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM filler").fetch_one(&mut *snapshot).await.unwrap();
        let wal = dir.path().join("state.db-wal");
        let (mut slowest, mut largest) = (Duration::ZERO, 0);
        // 3,000 commits of 4+ pages: three times the restart threshold, every pass past it
        for _ in 0..3000 {
            let t = std::time::Instant::now();
            insert_filler(&store).await;
            slowest = slowest.max(t.elapsed());
            largest = largest.max(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0));
        }
        // the snapshot still sees the table as it was, so the log could not restart
        let during: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM filler").fetch_one(&mut *snapshot).await.unwrap();
        assert_eq!((before, during), (0, 0));
        assert!(largest > (RESTART_FRAMES as u64) * 4096, "the log restarted under a reader ({largest} bytes)");
        // generous: a write here takes about a millisecond; a waiting restart, seconds
        assert!(slowest < Duration::from_secs(2), "a commit waited {slowest:?} behind the checkpoint");
        snapshot.rollback().await.unwrap();
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM filler").fetch_one(store.reader()).await.unwrap();
        assert_eq!(n, 3000);
        store.close().await;
    }
}
