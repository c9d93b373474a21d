//! What the spool takes into its database besides appends: a directory written by the old
//! journal format (an upgrade), and databases set aside because they could not be read, once
//! they read again.
//!
//! Each import is one transaction that also records the source's name as imported; the source's
//! files are removed only after that commit, and the name forgotten only after they are gone. A
//! crash anywhere in between neither loses a record nor imports one twice. A source that cannot
//! be read whole is not imported at all and nothing of it is removed: it is tried again later.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use super::fault::Faults;
use super::files::sync_dir;
use super::journal::{self, Found, Location};
use super::store::{Store, Stored, ASIDE_PREFIX};
use super::QUARANTINE_REASON_HEADER;
use crate::kafka::record::OutboundRecord;

/// The name an import of the old journal is recorded under.
const JOURNAL: &str = "journal";
/// The old journal's quarantine file, and the one an interrupted requeue left.
const OLD_QUARANTINE: &str = "quarantine.log";
const OLD_REQUEUING: &str = "quarantine.requeuing";
/// The old journal's marker for no event (its disk probe).
const PROBE_SEQ: u64 = u64::MAX;

/// The files of the old journal in `dir`, if any.
pub fn journal_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = journal::list_segments(dir)?
        .into_iter()
        .map(|id| journal::segment_path(dir, id))
        .collect();
    for name in [OLD_QUARANTINE, OLD_REQUEUING] {
        if dir.join(name).exists() {
            files.push(dir.join(name));
        }
    }
    Ok(files)
}

/// Imports a spool directory written by the old journal: every event without a done-marker,
/// in receive order, then the quarantine. `Ok(n)`: records imported now (0 when there was
/// nothing to import). Damaged records (a torn tail) are counted in `corrupt` and skipped, as
/// the journal's own recovery did; any other read error imports nothing.
pub fn journal(
    dir: &Path,
    store: &mut Store,
    faults: &Faults,
    corrupt: &mut u64,
) -> io::Result<usize> {
    let files = journal_files(dir)?;
    if files.is_empty() {
        if store.imported(JOURNAL)? {
            store.forget_import(JOURNAL)?;
        }
        return Ok(0);
    }
    let mut imported = 0;
    if !store.imported(JOURNAL)? {
        let (pending, quarantined) = scan_journal(dir, faults, corrupt)?;
        store.import(JOURNAL, &mut |put| {
            for (path, location) in pending.values().chain(&quarantined) {
                let event = match journal::read_event_at(path, *location) {
                    Ok(event) => event,
                    Err(error) if journal::is_damage(&error) => {
                        *corrupt += 1;
                        continue;
                    }
                    Err(error) => return Err(error),
                };
                let mut record = OutboundRecord {
                    topic: event.topic,
                    key: event.key,
                    payload: event.payload,
                    headers: Vec::with_capacity(event.headers.len()),
                };
                let mut quarantine = None;
                for (name, value) in event.headers {
                    if name == QUARANTINE_REASON_HEADER {
                        quarantine = Some(value);
                    } else {
                        record.headers.push((name.into(), value));
                    }
                }
                if path.ends_with(OLD_QUARANTINE) || path.ends_with(OLD_REQUEUING) {
                    quarantine.get_or_insert_with(|| "quarantined".to_owned());
                }
                put(Stored {
                    id: 0,
                    received_ms: event.received_ms,
                    record,
                    bytes: 0,
                    quarantine,
                })?;
                imported += 1;
            }
            Ok(())
        })?;
        tracing::info!(
            records = imported,
            dir = %dir.display(),
            "imported the spool written by an earlier fp-relay into spool.db"
        );
    }
    for file in &files {
        match std::fs::remove_file(file) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
            _ => {}
        }
    }
    sync_dir(dir, faults)?;
    store.forget_import(JOURNAL)?;
    Ok(imported)
}

/// Where each record of the old journal to import is: events with no done-marker by sequence
/// number, and the quarantine's records (those an interrupted requeue had not published).
#[allow(clippy::type_complexity)]
fn scan_journal(
    dir: &Path,
    faults: &Faults,
    corrupt: &mut u64,
) -> io::Result<(BTreeMap<u64, (PathBuf, Location)>, Vec<(PathBuf, Location)>)> {
    let mut pending = BTreeMap::new();
    for id in journal::list_segments(dir)? {
        let path = journal::segment_path(dir, id);
        let scan = journal::scan(dir, id, faults, |found| match found {
            Found::Event { seq, location, .. } => {
                pending.insert(seq, (path.clone(), location));
            }
            Found::Done(seq) => {
                pending.remove(&seq);
            }
        })?;
        *corrupt += scan.corrupt;
    }
    let mut quarantined = Vec::new();
    for name in [OLD_QUARANTINE, OLD_REQUEUING] {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        let mut events = Vec::new();
        let mut done = std::collections::BTreeSet::new();
        let scan = journal::scan_file(&path, 0, faults, |found| match found {
            Found::Event { seq, location, .. } => events.push((seq, location)),
            Found::Done(seq) => {
                done.insert(seq);
            }
        })?;
        *corrupt += scan.corrupt;
        quarantined.extend(
            events
                .into_iter()
                .filter(|(seq, _)| *seq != PROBE_SEQ && !done.contains(seq))
                .map(|(_, location)| (path.clone(), location)),
        );
    }
    Ok((pending, quarantined))
}

/// The databases set aside in `dir`, oldest first.
pub fn set_aside(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let aside = name.starts_with(ASIDE_PREFIX)
                && !name.ends_with("-wal")
                && !name.ends_with("-shm")
                && !name.ends_with("-journal");
            aside.then(|| entry.path())
        })
        .collect();
    found.sort();
    Ok(found)
}

/// Moves the database at `path` (with its WAL) aside, so that a new one can take its place and
/// nothing of it is lost; returns where it went. The database goes first and its WAL after it,
/// each rename made durable before the next; a rename that fails puts back what moved, and a
/// move a crash cut short is finished by [`finish_move`] at the next start.
pub fn move_aside(path: &Path, faults: &Faults) -> io::Result<PathBuf> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let aside = dir.join(format!("{ASIDE_PREFIX}{}", super::now_ms()));
    let named = |base: &Path, suffix: &str| PathBuf::from(format!("{}{suffix}", base.display()));
    let mut moved: Vec<&str> = Vec::new();
    for suffix in ["", "-wal", "-shm"] {
        let result = match std::fs::rename(named(path, suffix), named(&aside, suffix)) {
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other.and_then(|()| sync_dir(dir, faults)),
        };
        if let Err(error) = result {
            for suffix in moved.iter().rev() {
                let _ = std::fs::rename(named(&aside, suffix), named(path, suffix));
            }
            let _ = sync_dir(dir, faults);
            return Err(error);
        }
        moved.push(suffix);
    }
    Ok(aside)
}

/// Finishes a [`move_aside`] a crash cut short: a WAL left behind without its database (which
/// went aside first) joins the newest database set aside without one. A new database must never
/// open beside it: SQLite would replay another database's pages into it. `Err` if it has no
/// such place (nothing is touched then).
pub fn finish_move(path: &Path, faults: &Faults) -> io::Result<()> {
    let wal = PathBuf::from(format!("{}-wal", path.display()));
    if path.exists() || !wal.exists() {
        return Ok(());
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let without_wal = set_aside(dir)?
        .into_iter()
        .rev()
        .find(|aside| !PathBuf::from(format!("{}-wal", aside.display())).exists());
    let Some(aside) = without_wal else {
        return Err(io::Error::other(format!(
            "{} has no database beside it; move it back as {} or aside, nothing else is touched",
            wal.display(),
            path.display()
        )));
    };
    for suffix in ["-wal", "-shm"] {
        let from = PathBuf::from(format!("{}{suffix}", path.display()));
        match std::fs::rename(&from, format!("{}{suffix}", aside.display())) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
            _ => {}
        }
    }
    sync_dir(dir, faults)
}

/// Imports the database set aside at `aside` into `store` if it reads now (pending records,
/// then quarantined ones, each in id order), then removes it. `Ok(None)` when it still cannot
/// be read (it stays where it is).
pub fn absorb(aside: &Path, store: &mut Store, faults: &Faults) -> io::Result<Option<usize>> {
    let name = aside
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut count = 0;
    if !store.imported(&name)? {
        let source = match Store::open(aside, faults) {
            Ok(source) => source,
            Err(error) => {
                tracing::warn!(%error, file = %aside.display(), "a spool file set aside still cannot be read; trying again later");
                return Ok(None);
            }
        };
        let read = store.import(&name, &mut |put| {
            for quarantined in [false, true] {
                let mut after = 0;
                loop {
                    let batch = source.read(quarantined, after, 256, &|_| false)?;
                    let Some(last) = batch.last() else { break };
                    after = last.id;
                    for stored in batch {
                        put(stored)?;
                        count += 1;
                    }
                }
            }
            Ok(())
        });
        if let Err(error) = read {
            tracing::warn!(%error, file = %aside.display(), "a spool file set aside still cannot be read whole; trying again later");
            return Ok(None);
        }
        drop(source);
        tracing::info!(records = count, file = %aside.display(), "a spool file set aside reads again; its records are back in the spool");
    }
    for suffix in ["-wal", "-shm", ""] {
        let file = PathBuf::from(format!("{}{suffix}", aside.display()));
        match std::fs::remove_file(&file) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
            _ => {}
        }
    }
    sync_dir(aside.parent().unwrap_or(Path::new(".")), faults)?;
    store.forget_import(&name)?;
    Ok(Some(count))
}
