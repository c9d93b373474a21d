//! The spool's database: one SQLite file, `spool.db`, in `spool.dir`.
//!
//! SQLite makes the two properties the spool lives by properties of the engine, not of our
//! code: a record leaves only by a `DELETE` of ids Kafka acknowledged (committed, or not at
//! all), and an id is never given out twice (`AUTOINCREMENT`). WAL with `synchronous=FULL`:
//! a commit is durable when it returns; one commit per group of appends.
//!
//! ```sql
//! records(id INTEGER PRIMARY KEY AUTOINCREMENT, received_ms, topic, key, headers, payload,
//!         bytes, quarantine)  -- quarantine: NULL while pending, else why no topic took it
//! imported(name TEXT PRIMARY KEY)  -- files imported whose removal may not have finished
//! ```
//!
//! Operators can read it with `sqlite3` (see docs/durability.md); `headers` is a JSON array of
//! `[name, value]` pairs. Every call asks the [`Faults`] seam first, so tests can fail each
//! step (open, read, write, commit) with the errors a disk gives.

use std::io;
use std::path::Path;

use bytes::Bytes;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use super::fault::{Faults, Op};
use crate::kafka::record::OutboundRecord;

/// The database file in a spool directory.
pub const DB_FILE: &str = "spool.db";

/// A file set aside because it could not be read is renamed to this prefix and the time.
pub const ASIDE_PREFIX: &str = "spool.db.unreadable-";

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS records (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        received_ms INTEGER NOT NULL,
        topic TEXT NOT NULL,
        key TEXT,
        headers TEXT NOT NULL,
        payload BLOB NOT NULL,
        bytes INTEGER NOT NULL,
        quarantine TEXT
    );
    CREATE INDEX IF NOT EXISTS records_held ON records (quarantine, bytes);
    CREATE TABLE IF NOT EXISTS imported (name TEXT PRIMARY KEY);
    CREATE TABLE IF NOT EXISTS probe (at INTEGER, pad BLOB);
";

/// A record read back.
#[derive(Debug, Clone)]
pub struct Stored {
    pub id: i64,
    pub received_ms: u64,
    pub record: OutboundRecord,
    /// What it counts against `spool.max_bytes`.
    pub bytes: u64,
    /// Why no topic took it, for a quarantined record.
    pub quarantine: Option<String>,
}

/// Records and bytes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub records: u64,
    pub bytes: u64,
}

impl Tally {
    pub fn add(&mut self, other: Tally) {
        self.records += other.records;
        self.bytes += other.bytes;
    }
    pub fn sub(&mut self, other: Tally) {
        self.records = self.records.saturating_sub(other.records);
        self.bytes = self.bytes.saturating_sub(other.bytes);
    }
}

/// What the database holds.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    pub pending: Tally,
    pub quarantined: Tally,
}

/// The size a record counts against `spool.max_bytes`: its payload, topic, key and headers as
/// stored.
pub fn size_of(record: &OutboundRecord) -> u64 {
    let headers: usize = record
        .headers
        .iter()
        .map(|(k, v)| k.len() + v.len() + 8)
        .sum();
    (record.payload.len() + record.topic.len() + record.key.as_ref().map_or(0, String::len)) as u64
        + headers as u64
        + 32
}

/// A write the disk refused (full, a file size limit, a failed write or fsync): about the
/// disk, never about what the file holds.
fn refused_write(code: &rusqlite::ffi::Error) -> bool {
    use rusqlite::ffi;
    code.code == rusqlite::ErrorCode::DiskFull
        || [
            ffi::SQLITE_IOERR_WRITE,
            ffi::SQLITE_IOERR_FSYNC,
            ffi::SQLITE_IOERR_TRUNCATE,
            ffi::SQLITE_IOERR_SHMSIZE,
        ]
        .contains(&code.extended_code)
}

fn sql(error: rusqlite::Error) -> io::Error {
    match error {
        rusqlite::Error::SqliteFailure(ref code, _) if refused_write(code) => io::Error::new(
            io::ErrorKind::StorageFull,
            format!("the disk refused a write (full, or a file size limit): {error}"),
        ),
        rusqlite::Error::SqliteFailure(ref code, _)
            if matches!(
                code.code,
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
            ) =>
        {
            io::Error::new(io::ErrorKind::WouldBlock, error.to_string())
        }
        other => io::Error::other(other.to_string()),
    }
}

/// What an import's source calls for each record it gives.
pub type Put<'a> = dyn FnMut(Stored) -> io::Result<()> + 'a;

/// One connection to a spool database.
pub struct Store {
    conn: Connection,
    faults: Faults,
}

impl Store {
    /// Opens (creating if missing) the database at `path` and checks it whole
    /// (`PRAGMA quick_check`): `Err` when it cannot be opened, read or trusted.
    pub fn open(path: &Path, faults: &Faults) -> io::Result<Self> {
        let store = Self::connect(path, faults)?;
        faults.check(Op::Read)?;
        let check: String = store
            .conn
            .query_row("PRAGMA quick_check", [], |row| row.get(0))
            .map_err(sql)?;
        if check != "ok" {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the database is damaged: {check}"),
            ));
        }
        Ok(store)
    }

    /// Another connection to a database [`Store::open`] has checked already (the check reads
    /// the whole file: once at start-up is enough).
    pub fn connect(path: &Path, faults: &Faults) -> io::Result<Self> {
        faults.check(Op::Open)?;
        // Created private before SQLite opens it: SQLite gives its WAL and shared-memory files
        // the database file's mode, and payloads carry personal data.
        super::files::private(std::fs::OpenOptions::new().create(true).append(true)).open(path)?;
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NOFOLLOW
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sql)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(sql)?;
        // page_size and auto_vacuum take effect only before the first table. Pages of 16 KiB
        // hold several events of a few KB each (at 4 KiB each took a page of its own: twice the
        // disk and the writes). A drained spool gives its pages back (`incremental_vacuum`)
        // and empties its WAL, deleted payloads are overwritten where that costs no extra
        // write (secure_delete FAST), and the WAL is cut back to 64 MiB after each checkpoint:
        // personal data is not kept longer than needed, and the disk holds what is pending.
        conn.execute_batch(
            "PRAGMA page_size = 16384;
             PRAGMA auto_vacuum = INCREMENTAL;
             PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             PRAGMA secure_delete = FAST;
             PRAGMA journal_size_limit = 67108864;",
        )
        .map_err(sql)?;
        conn.execute_batch(SCHEMA).map_err(sql)?;
        Ok(Self {
            conn,
            faults: faults.clone(),
        })
    }

    /// Inserts `records` (with their arrival times) in one transaction; `before_commit` sees
    /// their ids before the commit makes them visible to readers. Returns the ids, in order.
    pub fn insert(
        &mut self,
        records: &[(&OutboundRecord, u64)],
        before_commit: impl FnOnce(&[i64]),
    ) -> io::Result<Vec<i64>> {
        let tx = self.conn.transaction().map_err(sql)?;
        let mut ids = Vec::with_capacity(records.len());
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO records (received_ms, topic, key, headers, payload, bytes, quarantine)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .map_err(sql)?;
            for (i, (record, received_ms)) in records.iter().enumerate() {
                // What a write that fails half way leaves: some rows, then the error; the
                // transaction is rolled back whole.
                if i == records.len() / 2 {
                    self.faults.check(Op::Write)?;
                }
                insert
                    .execute(params![
                        *received_ms as i64,
                        record.topic,
                        record.key,
                        headers_json(record),
                        &record.payload[..],
                        size_of(record) as i64,
                        Option::<&str>::None,
                    ])
                    .map_err(sql)?;
                ids.push(tx.last_insert_rowid());
            }
        }
        before_commit(&ids);
        self.faults.check(Op::Commit)?;
        tx.commit().map_err(sql)?;
        Ok(ids)
    }

    /// Deletes `ids` (sorted, each once); returns what left the pending records and the
    /// quarantined ones (a missing id counts for nothing). Runs of consecutive ids, which is what
    /// replay delivers, go in one statement each.
    pub fn delete(&mut self, ids: &[i64]) -> io::Result<(Tally, Tally)> {
        let tx = self.conn.transaction().map_err(sql)?;
        let (mut pending, mut quarantined) = (Tally::default(), Tally::default());
        {
            self.faults.check(Op::Write)?;
            let mut delete = tx
                .prepare_cached(
                    "DELETE FROM records WHERE id BETWEEN ?1 AND ?2 RETURNING bytes, quarantine IS NOT NULL",
                )
                .map_err(sql)?;
            let mut start = 0;
            while start < ids.len() {
                let mut end = start;
                while end + 1 < ids.len() && ids[end + 1] == ids[end] + 1 {
                    end += 1;
                }
                let mut rows = delete.query([ids[start], ids[end]]).map_err(sql)?;
                while let Some(row) = rows.next().map_err(sql)? {
                    let bytes: i64 = row.get(0).map_err(sql)?;
                    let tally = if row.get(1).map_err(sql)? {
                        &mut quarantined
                    } else {
                        &mut pending
                    };
                    tally.add(Tally {
                        records: 1,
                        bytes: bytes as u64,
                    });
                }
                start = end + 1;
            }
        }
        self.faults.check(Op::Commit)?;
        tx.commit().map_err(sql)?;
        Ok((pending, quarantined))
    }

    /// Gives back the pages of deleted records once nothing is pending (cheap then).
    pub fn shrink(&mut self) {
        let _ = self.conn.execute_batch("PRAGMA incremental_vacuum;");
        // Never waits for a reader (an operator's sqlite3 would hold every append back): tried
        // again the next time the spool is empty.
        let _ = self.conn.busy_timeout(std::time::Duration::ZERO);
        let _ = self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);");
        let _ = self.conn.busy_timeout(std::time::Duration::from_secs(5));
    }

    /// Keeps record `id` as quarantined with `reason`; returns what left the pending records.
    pub fn quarantine(&mut self, id: i64, reason: &str) -> io::Result<Tally> {
        self.faults.check(Op::Write)?;
        let bytes: Option<i64> = self
            .conn
            .query_row(
                "UPDATE records SET quarantine = ?2 WHERE id = ?1 AND quarantine IS NULL RETURNING bytes",
                params![id, reason],
                |row| row.get(0),
            )
            .optional()
            .map_err(sql)?;
        Ok(bytes.map_or(Tally::default(), |bytes| Tally {
            records: 1,
            bytes: bytes as u64,
        }))
    }

    /// A real write and commit of `bytes` that matter to nobody, then their delete: proves the
    /// disk takes a record of that size again (a probe smaller than the records it stands for
    /// once said "writable" while every real write still failed: EFBIG, EDQUOT).
    pub fn probe(&mut self, bytes: u64) -> io::Result<()> {
        for pad in [bytes, 0] {
            let tx = self.conn.transaction().map_err(sql)?;
            self.faults.check(Op::Write)?;
            tx.execute("DELETE FROM probe", []).map_err(sql)?;
            if pad > 0 {
                tx.execute(
                    "INSERT INTO probe (at, pad) VALUES (?1, zeroblob(?2))",
                    params![crate::spool::now_ms() as i64, pad as i64],
                )
                .map_err(sql)?;
            }
            self.faults.check(Op::Commit)?;
            tx.commit().map_err(sql)?;
        }
        Ok(())
    }

    /// Up to `max` records in id order: pending ones with `quarantined` false, quarantined
    /// ones otherwise, skipping ids in `skip`, from the first id above `after`.
    pub fn read(
        &self,
        quarantined: bool,
        after: i64,
        max: usize,
        skip: &dyn Fn(i64) -> bool,
    ) -> io::Result<Vec<Stored>> {
        self.faults.check(Op::Read)?;
        let query = if quarantined {
            "SELECT id, received_ms, topic, key, headers, payload, bytes, quarantine FROM records
             WHERE quarantine IS NOT NULL AND id > ?1 ORDER BY id LIMIT ?2"
        } else {
            "SELECT id, received_ms, topic, key, headers, payload, bytes, quarantine FROM records
             WHERE quarantine IS NULL AND id > ?1 ORDER BY id LIMIT ?2"
        };
        let mut select = self.conn.prepare_cached(query).map_err(sql)?;
        let mut out = Vec::with_capacity(max.min(1024));
        let mut after = after;
        while out.len() < max {
            let mut rows = select
                .query(params![after, (max - out.len()) as i64])
                .map_err(sql)?;
            let mut any = false;
            while let Some(row) = rows.next().map_err(sql)? {
                any = true;
                let stored = stored(row).map_err(sql)?;
                after = stored.id;
                if !skip(stored.id) {
                    out.push(stored);
                }
            }
            if !any {
                break;
            }
        }
        Ok(out)
    }

    /// What the database holds.
    pub fn totals(&self) -> io::Result<Totals> {
        self.faults.check(Op::Read)?;
        let tally = |quarantined: bool| -> io::Result<Tally> {
            let query = if quarantined {
                "SELECT count(*), coalesce(sum(bytes), 0) FROM records WHERE quarantine IS NOT NULL"
            } else {
                "SELECT count(*), coalesce(sum(bytes), 0) FROM records WHERE quarantine IS NULL"
            };
            self.conn
                .query_row(query, [], |row| {
                    Ok(Tally {
                        records: row.get::<_, i64>(0)? as u64,
                        bytes: row.get::<_, i64>(1)? as u64,
                    })
                })
                .map_err(sql)
        };
        Ok(Totals {
            pending: tally(false)?,
            quarantined: tally(true)?,
        })
    }

    /// Arrival time of the oldest pending record.
    pub fn oldest_ms(&self) -> io::Result<Option<u64>> {
        self.conn
            .query_row(
                "SELECT received_ms FROM records WHERE quarantine IS NULL ORDER BY id LIMIT 1",
                [],
                |row| row.get::<_, i64>(0),
            )
            .optional()
            .map(|ms| ms.map(|ms| ms as u64))
            .map_err(sql)
    }

    /// Copies every record of `source` (pending and quarantined, in id order) into this
    /// database in one transaction that also records `name` as imported: after a crash the
    /// import is never done twice. `Ok(false)` if `name` was imported already.
    pub fn import(
        &mut self,
        name: &str,
        source: &mut dyn FnMut(&mut Put<'_>) -> io::Result<()>,
    ) -> io::Result<bool> {
        if self.imported(name)? {
            return Ok(false);
        }
        let tx = self.conn.transaction().map_err(sql)?;
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO records (received_ms, topic, key, headers, payload, bytes, quarantine)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .map_err(sql)?;
            source(&mut |stored: Stored| {
                insert
                    .execute(params![
                        stored.received_ms as i64,
                        stored.record.topic,
                        stored.record.key,
                        headers_json(&stored.record),
                        &stored.record.payload[..],
                        size_of(&stored.record) as i64,
                        stored.quarantine,
                    ])
                    .map(drop)
                    .map_err(sql)
            })?;
            tx.execute("INSERT INTO imported (name) VALUES (?1)", [name])
                .map_err(sql)?;
        }
        self.faults.check(Op::Commit)?;
        tx.commit().map_err(sql)?;
        Ok(true)
    }

    /// Whether `name` was imported and its removal may not have finished.
    pub fn imported(&self, name: &str) -> io::Result<bool> {
        self.conn
            .query_row("SELECT 1 FROM imported WHERE name = ?1", [name], |_| Ok(()))
            .optional()
            .map(|found| found.is_some())
            .map_err(sql)
    }

    /// `name`'s files are gone: forget it.
    pub fn forget_import(&mut self, name: &str) -> io::Result<()> {
        self.conn
            .execute("DELETE FROM imported WHERE name = ?1", [name])
            .map(drop)
            .map_err(sql)
    }
}

fn headers_json(record: &OutboundRecord) -> String {
    let pairs: Vec<[&str; 2]> = record
        .headers
        .iter()
        .map(|(k, v)| [k.as_ref(), v.as_str()])
        .collect();
    serde_json::to_string(&pairs).expect("strings serialise")
}

fn stored(row: &rusqlite::Row<'_>) -> rusqlite::Result<Stored> {
    let headers: String = row.get(4)?;
    let headers: Vec<(String, String)> = serde_json::from_str(&headers).map_err(|error| {
        rusqlite::Error::FromSqlConversionFailure(4, rusqlite::types::Type::Text, Box::new(error))
    })?;
    Ok(Stored {
        id: row.get(0)?,
        received_ms: row.get::<_, i64>(1)? as u64,
        record: OutboundRecord {
            topic: row.get(2)?,
            key: row.get(3)?,
            headers: headers.into_iter().map(|(k, v)| (k.into(), v)).collect(),
            payload: Bytes::from(row.get::<_, Vec<u8>>(5)?),
        },
        bytes: row.get::<_, i64>(6)? as u64,
        quarantine: row.get(7)?,
    })
}
