//! `fp-relay spool status`: what a spool directory holds, read beside a running relay (a
//! read-only connection; SQLite's WAL lets it read while the relay writes). It runs the queries
//! docs/durability.md gives for `sqlite3 spool.db`, so the two always agree.

use std::io::Write;
use std::path::Path;

use rusqlite::{Connection, OpenFlags};

use crate::spool::import;
use crate::spool::store::DB_FILE;
use crate::tools::ToolError;

/// Which spool.
#[derive(Debug, Clone, clap::Args)]
pub struct SpoolStatusOptions {
    #[command(flatten)]
    pub spool: super::SpoolArgs,
}

/// Records waiting for Kafka: count, bytes, oldest arrival (ms since the epoch).
pub const PENDING_SQL: &str = "SELECT count(*), coalesce(sum(bytes), 0), min(received_ms) FROM records WHERE quarantine IS NULL";
/// Records waiting for Kafka, by topic.
pub const BY_TOPIC_SQL: &str = "SELECT topic, count(*) FROM records WHERE quarantine IS NULL GROUP BY topic ORDER BY count(*) DESC, topic";
/// Quarantined records, by topic and reason.
pub const QUARANTINED_SQL: &str = "SELECT topic, quarantine, count(*), sum(bytes) FROM records WHERE quarantine IS NOT NULL GROUP BY topic, quarantine ORDER BY topic";

/// Prints what the spool in the directory holds.
pub fn run(options: &SpoolStatusOptions, out: &mut impl Write) -> Result<(), ToolError> {
    let (_, dir) = options.spool.load()?;
    let db = dir.join(DB_FILE);
    if !dir.is_dir() {
        return Err(ToolError::Usage(format!(
            "{}: no spool directory there",
            dir.display()
        )));
    }
    writeln!(out, "spool: {}", dir.display())?;
    if db.exists() {
        report(&db, out).map_err(|error| ToolError::Usage(format!("{}: {error}", db.display())))?;
    } else {
        writeln!(out, "pending: 0 record(s) (no {DB_FILE} yet)")?;
    }
    let aside = import::set_aside(&dir)?;
    if !aside.is_empty() {
        let names: Vec<String> = aside
            .iter()
            .filter_map(|p| Some(p.file_name()?.to_string_lossy().into_owned()))
            .collect();
        writeln!(
            out,
            "set aside (could not be read; kept, taken in once they read): {}",
            names.join(", ")
        )?;
    }
    let old = import::journal_files(&dir)?.len();
    if old > 0 {
        writeln!(
            out,
            "{old} file(s) of the spool format before SQLite: imported at the relay's next start"
        )?;
    }
    Ok(())
}

fn report(db: &Path, out: &mut impl Write) -> Result<(), Box<dyn std::error::Error>> {
    let conn = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NOFOLLOW,
    )?;
    let (count, bytes, oldest): (i64, i64, Option<i64>) =
        conn.query_row(PENDING_SQL, [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    let age = oldest
        .map(|ms| {
            let now = crate::spool::now_ms() as i64;
            let age = std::time::Duration::from_secs((now - ms).max(0) as u64 / 1000);
            format!(", oldest received {} ago", humantime::format_duration(age))
        })
        .unwrap_or_default();
    writeln!(out, "pending: {count} record(s), {bytes} bytes{age}")?;
    let mut by_topic = conn.prepare(BY_TOPIC_SQL)?;
    let rows = by_topic.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
    for row in rows {
        let (topic, count) = row?;
        writeln!(out, "  {topic}: {count}")?;
    }
    let mut quarantined = conn.prepare(QUARANTINED_SQL)?;
    let rows = quarantined.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, i64>(3)?,
        ))
    })?;
    let mut header = false;
    for row in rows {
        let (topic, reason, count, bytes) = row?;
        if !header {
            writeln!(
                out,
                "quarantined (fp-relay spool requeue puts them back once fixed):"
            )?;
            header = true;
        }
        writeln!(out, "  {topic}: {count} record(s), {bytes} bytes: {reason}")?;
    }
    if !header {
        writeln!(out, "quarantined: 0 record(s)")?;
    }
    Ok(())
}
