//! Delays between reconnect attempts: short first (a failover usually takes well under a
//! second), doubling, bounded, and back to the start once a login succeeds.

use std::time::Duration;

#[derive(Clone, Debug)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// 100 ms, doubling up to 1.6 s.
    pub fn standard() -> Backoff {
        Backoff::new(Duration::from_millis(100), Duration::from_millis(1600))
    }

    pub fn new(first: Duration, max: Duration) -> Backoff {
        let max = max.max(first);
        Backoff {
            first,
            max,
            next: first,
        }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    /// A connection succeeded: the next failure starts from the first delay again.
    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn doubles_up_to_the_bound() {
        let mut b = Backoff::standard();
        let delays: Vec<_> = (0..7).map(|_| b.next_delay()).collect();
        assert_eq!(
            delays,
            [
                ms(100),
                ms(200),
                ms(400),
                ms(800),
                ms(1600),
                ms(1600),
                ms(1600)
            ]
        );
    }

    #[test]
    fn a_success_starts_over() {
        let mut b = Backoff::standard();
        b.next_delay();
        b.next_delay();
        b.reset();
        assert_eq!(b.next_delay(), ms(100));
    }

    #[test]
    fn a_bound_below_the_first_delay_is_the_first_delay() {
        let mut b = Backoff::new(ms(300), ms(100));
        assert_eq!(b.next_delay(), ms(300));
        assert_eq!(b.next_delay(), ms(300));
    }
}
