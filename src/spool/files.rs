//! The spool directory itself: private files, its durability, and the lock that makes one
//! process its owner.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

use crate::spool::fault::{Faults, Op};

/// Makes the directory's entries (a file renamed, imported or removed) durable.
pub fn sync_dir(dir: &Path, faults: &Faults) -> io::Result<()> {
    faults.check(Op::Open)?;
    let dir = File::open(dir)?;
    faults.check(Op::Commit)?;
    dir.sync_all()
}

/// Options for a spool file: readable by the relay's user only (the database holds payloads
/// with personal data), and never through a symbolic link (a link planted in the spool directory
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
