//! A fault-injection seam for the spool's file operations.
//!
//! Every open, read, write, fsync and unlink the spool makes asks its [`Faults`] first. In
//! production that is [`Faults::none`], one branch on a `None`. Tests hand the spool a plan
//! that fails chosen operations with chosen errors (`EMFILE`, `EIO`, `ENOSPC`...), which the
//! operating system cannot be made to do on demand, and check that nothing acknowledged is
//! lost. A failed write first writes half of its frame, as a real short write followed by an
//! error can.

use std::fmt;
use std::io;
use std::sync::Arc;

/// A file operation the spool makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// Opening or creating a segment (or the spool directory, to sync it).
    Open,
    /// Reading a segment back (start-up scan, replay).
    Read,
    /// Appending a frame.
    Write,
    /// `fsync` of a segment or the directory.
    Fsync,
    /// Deleting a finished segment.
    Unlink,
}

type Plan = dyn Fn(Op) -> Option<io::Error> + Send + Sync;

/// Which operations fail, and how.
#[derive(Clone, Default)]
pub struct Faults(Option<Arc<Plan>>);

impl Faults {
    /// No injected faults: every operation goes to the operating system.
    pub fn none() -> Self {
        Self(None)
    }

    /// Fails an operation whenever `plan` returns an error for it.
    pub fn inject(plan: impl Fn(Op) -> Option<io::Error> + Send + Sync + 'static) -> Self {
        Self(Some(Arc::new(plan)))
    }

    /// `Err` when the plan fails `op` now.
    pub fn check(&self, op: Op) -> io::Result<()> {
        match self.0.as_ref().and_then(|plan| plan(op)) {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

impl fmt::Debug for Faults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "Faults(injected)"
        } else {
            "Faults(none)"
        })
    }
}
