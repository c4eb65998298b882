//! The in-flight count of a server: requests proxied to it right now, for the dashboard,
//! `/status?format=json` and `graysplit_server_in_flight`.
//!
//! A guard rather than two calls: the request context holds an [`InFlight`] for the server of
//! the current attempt, a retry replaces it (the failed server's count goes down at once), and
//! dropping the context — at the end of the request, however it ended — takes the last one down.
//! Two relaxed atomic operations per attempt; no lock, no lookup.

use std::sync::Arc;

use super::health::ServerHealth;

/// Counts one request on a server until dropped.
#[derive(Debug)]
pub struct InFlight(Arc<ServerHealth>);

impl InFlight {
    pub fn start(health: &Arc<ServerHealth>) -> InFlight {
        health.in_flight_add();
        InFlight(health.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight_sub();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_while_held_and_a_replacement_moves_the_count() {
        let (a, b) = (
            Arc::new(ServerHealth::default()),
            Arc::new(ServerHealth::default()),
        );
        // As in the request context: the slot of the current attempt.
        let mut slot = Some(InFlight::start(&a));
        let other = InFlight::start(&a);
        assert_eq!((a.in_flight(), b.in_flight()), (2, 0));
        drop(slot.replace(InFlight::start(&b))); // a retry on another server
        assert_eq!((a.in_flight(), b.in_flight()), (1, 1));
        drop(other);
        drop(slot);
        assert_eq!((a.in_flight(), b.in_flight()), (0, 0));
    }
}
