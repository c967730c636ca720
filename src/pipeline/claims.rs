//! Customers claimed by the runs that share a [`super::Pace`]: a customer's
//! chain in one run waits for its chain in an earlier run to end (first
//! come, first served), so that runs overlapping at a file boundary
//! (`orderbatch inbox`) never work on one customer at once — the next file's
//! lookup of an order cannot race the last file's create of it. Within one
//! run each customer is claimed once, and a claim never waits.
//!
//! A claim's turn is taken when the dispatcher hands its customer out (in
//! order, synchronously), and waited for in the customer's own task; the
//! map holds only customers with a claim alive.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;

/// The customers claimed by the runs of one budget.
#[derive(Debug, Default)]
pub struct Claims {
    held: Mutex<HashMap<String, Queue>>,
}

/// The claims of one customer: tickets in the order they were taken.
#[derive(Debug)]
struct Queue {
    /// The next ticket to give out.
    next: u64,
    /// The ticket whose turn it is.
    turn: watch::Sender<u64>,
    /// Tickets ended out of turn (a claim dropped while it waited).
    ended: BTreeSet<u64>,
}

/// One run's claim of one customer, held until it is dropped.
#[derive(Debug)]
pub struct Claim {
    claims: Arc<Claims>,
    key: String,
    ticket: u64,
    turn: watch::Receiver<u64>,
}

impl Claims {
    /// Takes a ticket for `key` now; [`Claim::ready`] waits for its turn.
    pub fn claim(self: &Arc<Self>, key: &str) -> Claim {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let queue = held.entry(key.to_string()).or_insert_with(|| Queue {
            next: 0,
            turn: watch::Sender::new(0),
            ended: BTreeSet::new(),
        });
        let ticket = queue.next;
        queue.next += 1;
        Claim {
            claims: self.clone(),
            key: key.to_string(),
            ticket,
            turn: queue.turn.subscribe(),
        }
    }

    /// How many customers are claimed.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

impl Claim {
    /// Waits until every earlier claim of the customer has ended.
    pub async fn ready(&mut self) {
        let ticket = self.ticket;
        // The sender lives as long as the claim's queue, which outlives
        // this claim's ticket.
        let _ = self.turn.wait_for(|turn| *turn == ticket).await;
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut held = self
            .claims
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(queue) = held.get_mut(&self.key) else {
            return;
        };
        queue.ended.insert(self.ticket);
        let mut turn = *queue.turn.borrow();
        while queue.ended.remove(&turn) {
            turn += 1;
        }
        queue.turn.send_replace(turn);
        if turn == queue.next {
            held.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_later_claim_waits_for_the_earlier_ones_in_order() {
        let claims = Arc::new(Claims::default());
        let mut first = claims.claim("c");
        let mut second = claims.claim("c");
        let mut third = claims.claim("c");
        let mut other = claims.claim("d");
        first.ready().await;
        other.ready().await;
        let waits = tokio::time::timeout(Duration::from_millis(50), second.ready()).await;
        assert!(
            waits.is_err(),
            "the second claim went before the first ended"
        );
        // A claim dropped while it waits gives its turn on.
        drop(third);
        drop(first);
        tokio::time::timeout(Duration::from_secs(1), second.ready())
            .await
            .expect("the second claim's turn");
        drop(second);
        drop(other);
        assert_eq!(claims.len(), 0, "ended claims are forgotten");
        let mut again = claims.claim("c");
        tokio::time::timeout(Duration::from_secs(1), again.ready())
            .await
            .expect("a new claim of a free customer goes at once");
        third = claims.claim("c");
        drop(again);
        tokio::time::timeout(Duration::from_secs(1), third.ready())
            .await
            .expect("turn passed on");
    }
}
