//! A fault-injection seam for the spool's database and file operations.
//!
//! Every open, read, write and commit the spool makes asks its [`Faults`] first. In
//! production that is [`Faults::none`], one branch on a `None`. Tests hand the spool a plan
//! that fails chosen operations with chosen errors (`EMFILE`, `EIO`, `ENOSPC`...), which the
//! operating system cannot be made to do on demand, and check that nothing acknowledged is
//! lost. A failed write fails half way through its transaction's rows, so that the rollback
//! is what is tested.

use std::fmt;
use std::io;
use std::sync::Arc;

/// An operation the spool makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// Opening the database (or a file of the old journal, or the directory to sync it).
    Open,
    /// Reading records (start-up totals, replay, the old journal's import).
    Read,
    /// Inserting, deleting or quarantining records.
    Write,
    /// Committing a transaction (its fsync), or `fsync` of the directory.
    Commit,
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
