//! [`super::admission`]'s counts shared by every task of a server, and the permits that give
//! back what they hold when dropped: a connection, a request stream or an upload slot is
//! returned however its task ends (answered, reset, timed out, cut off by a dying connection,
//! or aborted at shutdown).

use std::sync::{Arc, Mutex, MutexGuard};

use tokio::time::Instant;

use super::admission::{Admission, Asker, Busy, ConnectionVerdict, IpGroup, Limits, Refusal};

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
            ConnectionVerdict::Admit => {
                Ok(Permit { gate: Arc::clone(self), who: ip.into(), kind: Kind::Connection })
            }
            other => Err(other),
        }
    }

    pub fn stream(self: &Arc<Self>, who: Asker) -> Result<Permit, Refusal> {
        self.lock().stream(who)?;
        Ok(Permit { gate: Arc::clone(self), who, kind: Kind::Stream })
    }

    /// An upload slot if `who` may take one now; otherwise the BUSY answer for it.
    pub fn slot(self: &Arc<Self>, who: Asker) -> Result<Permit, Busy> {
        self.lock().slot(who)?;
        Ok(Permit { gate: Arc::clone(self), who, kind: Kind::Slot { since: Instant::now() } })
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
    who: Asker,
    kind: Kind,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut state = self.gate.lock();
        match self.kind {
            Kind::Connection => state.connection_closed(self.who.ip),
            Kind::Stream => state.stream_closed(self.who),
            Kind::Slot { since } => state.slot_released(self.who, since.elapsed()),
        }
    }
}
