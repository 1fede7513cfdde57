//! [`super::admission`]'s counts shared by every task of a server, and the permits that give
//! back what they hold when dropped: a connection, a request stream or an upload slot is
//! returned however its task ends (answered, reset, timed out, cut off by a dying connection,
//! or aborted at shutdown).

use std::sync::{Arc, Mutex, MutexGuard};

use tokio::time::Instant;

use super::admission::{Admission, Busy, ConnectionVerdict, IpGroup, Limits, Refusal};

pub(super) struct Gate {
    state: Mutex<Admission>,
}

impl Gate {
    pub fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Self { state: Mutex::new(Admission::new(limits)) })
    }

    fn lock(&self) -> MutexGuard<'_, Admission> {
        // The state is counters, consistent after every call: a panic elsewhere cannot leave it
        // half-updated, so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The verdict on a connection from `ip`, with its permit when admitted.
    pub fn connection(self: &Arc<Self>, ip: IpGroup, validated: bool) -> Result<Permit, ConnectionVerdict> {
        match self.lock().connection(ip, validated) {
            ConnectionVerdict::Admit => Ok(Permit { gate: Arc::clone(self), ip, kind: Kind::Connection }),
            other => Err(other),
        }
    }

    pub fn stream(self: &Arc<Self>, ip: IpGroup) -> Result<Permit, Refusal> {
        self.lock().stream(ip)?;
        Ok(Permit { gate: Arc::clone(self), ip, kind: Kind::Stream })
    }

    /// An upload slot if `ip` may take one now; otherwise the BUSY answer for it.
    pub fn slot(self: &Arc<Self>, ip: IpGroup) -> Result<Permit, Busy> {
        self.lock().slot(ip)?;
        Ok(Permit { gate: Arc::clone(self), ip, kind: Kind::Slot { since: Instant::now() } })
    }

    /// `(free_slots, queue_len)` for a `Status` answer.
    pub fn status(&self) -> (u32, u32) {
        self.lock().status()
    }
}

enum Kind {
    Connection,
    Stream,
    Slot { since: Instant },
}

/// Something admitted: held while it lasts, given back when dropped.
pub(super) struct Permit {
    gate: Arc<Gate>,
    ip: IpGroup,
    kind: Kind,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut state = self.gate.lock();
        match self.kind {
            Kind::Connection => state.connection_closed(self.ip),
            Kind::Stream => state.stream_closed(self.ip),
            Kind::Slot { since } => state.slot_released(self.ip, since.elapsed()),
        }
    }
}
