//! The files of a spool: the segment being appended to, the directory's durability, private
//! files, and appends made durable at once (the quarantine).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

use super::segment_path;
use crate::spool::fault::{Faults, Op};

/// An open segment being appended to.
pub struct ActiveSegment {
    pub id: u64,
    pub(super) file: File,
    pub len: u64,
    faults: Faults,
}

impl ActiveSegment {
    /// Creates segment `id` (and makes its directory entry durable).
    pub fn create(dir: &Path, id: u64, faults: &Faults) -> io::Result<Self> {
        faults.check(Op::Open)?;
        let file = private(OpenOptions::new().create_new(true).append(true))
            .open(segment_path(dir, id))?;
        sync_dir(dir, faults)?;
        Ok(Self {
            id,
            file,
            len: 0,
            faults: faults.clone(),
        })
    }

    /// Appends framed records; returns the offset of the first. Not durable until [`Self::sync`].
    pub fn append(&mut self, frame: &[u8]) -> io::Result<u64> {
        let offset = self.len;
        if let Err(error) = self.faults.check(Op::Write) {
            // What a short write followed by an error leaves: part of the frame.
            self.file.write_all(&frame[..frame.len() / 2])?;
            return Err(error);
        }
        // On failure part of the frame may be in the file: the caller truncates back to `len`.
        self.file.write_all(frame)?;
        self.len += frame.len() as u64;
        Ok(offset)
    }

    /// Makes everything appended so far durable.
    pub fn sync(&self) -> io::Result<()> {
        self.faults.check(Op::Fsync)?;
        self.file.sync_data()
    }

    /// Cuts the segment back to `len` bytes, undoing appends whose write or sync failed: a
    /// partial frame left in place would shift every later record and end every later scan.
    pub fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.faults.check(Op::Write)?;
        self.file.set_len(len)?;
        self.sync()?;
        self.len = len;
        Ok(())
    }
}

/// Makes the directory's entries (a new or deleted segment) durable.
pub fn sync_dir(dir: &Path, faults: &Faults) -> io::Result<()> {
    faults.check(Op::Open)?;
    let dir = File::open(dir)?;
    faults.check(Op::Fsync)?;
    dir.sync_all()
}

/// Options for a spool file: readable by the relay's user only (segments hold payloads with
/// personal data), and never through a symbolic link (a link planted in the spool directory
/// must not redirect a write elsewhere).
pub fn private(options: &mut OpenOptions) -> &mut OpenOptions {
    use std::os::unix::fs::OpenOptionsExt;
    options.mode(0o600).custom_flags(libc::O_NOFOLLOW)
}

/// Creates the spool directory (and its parents) if missing, with only its owner allowed in.
/// A directory that exists is left as it is: a mounted volume's root belongs to root with the
/// pod's fsGroup, and the files in it are private anyway.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Appends `frame` to the file at `path` (created if missing) and makes it durable.
pub fn append_durably(path: &Path, frame: &[u8], faults: &Faults) -> io::Result<()> {
    faults.check(Op::Open)?;
    let mut file = private(OpenOptions::new().create(true).append(true)).open(path)?;
    faults.check(Op::Write)?;
    file.write_all(frame)?;
    faults.check(Op::Fsync)?;
    file.sync_data()
}

/// Deletes segment `id`.
pub fn remove_segment(dir: &Path, id: u64, faults: &Faults) -> io::Result<()> {
    faults.check(Op::Unlink)?;
    std::fs::remove_file(segment_path(dir, id))
}

/// The file in a spool directory whose lock says which process owns it.
pub const OWNER_FILE: &str = "owner.lock";

/// An exclusive hold on a spool directory: one relay or one `spool drain` per directory, for
/// its whole life. It is a `flock(2)` on [`OWNER_FILE`], which the kernel releases when the
/// process ends however it ends, so a `kill -9` leaves nothing stale to clean up.
#[derive(Debug)]
pub struct Owner {
    /// Held open: closing it releases the lock.
    _file: File,
}

/// Why a spool directory could not be owned.
#[derive(Debug, thiserror::Error)]
pub enum OwnerError {
    /// Another process holds it.
    #[error("another process owns the spool directory {dir} ({holder}); one relay or spool drain per directory")]
    Held { dir: String, holder: String },
    #[error("cannot lock the spool directory {dir}: {source}")]
    Io { dir: String, source: io::Error },
}

/// Takes the directory's lock without waiting, and writes this process's id into the lock file
/// so that a second owner can name who has it.
pub fn take_ownership(dir: &Path) -> Result<Owner, OwnerError> {
    use std::os::fd::AsRawFd;
    let path = dir.join(OWNER_FILE);
    let io_error = |source| OwnerError::Io {
        dir: dir.display().to_string(),
        source,
    };
    let mut file = private(OpenOptions::new().read(true).write(true).create(true))
        .open(&path)
        .map_err(io_error)?;
    // SAFETY: a valid open descriptor, for the duration of the call.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let error = io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(io_error(error));
        }
        let mut text = String::new();
        let _ = io::Read::read_to_string(&mut file, &mut text);
        let holder = match text.trim() {
            "" => "its process id is not recorded".to_owned(),
            held => held.to_owned(),
        };
        return Err(OwnerError::Held {
            dir: dir.display().to_string(),
            holder,
        });
    }
    let me = format!(
        "pid {} ({})",
        std::process::id(),
        std::env::args().take(2).collect::<Vec<_>>().join(" ")
    );
    file.set_len(0).map_err(io_error)?;
    file.write_all(me.as_bytes()).map_err(io_error)?;
    Ok(Owner { _file: file })
}
