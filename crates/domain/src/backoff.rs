//! Exponential backoff with jitter, as a pure value: the caller sleeps and
//! supplies the randomness, so the schedule is testable and the domain
//! reads no clock and no random source.
//!
//! Used by the agent while its download sources are unavailable (issue
//! 10); meant to become the one backoff of every worker (issue 11).

use std::time::Duration;

/// The delays of a retry loop: `initial`, then doubled after each failure
/// up to `max`, each stretched by up to `jitter` (a fraction) so that many
/// clients failing together do not retry in step.
#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    jitter: f64,
    next: Duration,
}

impl Backoff {
    /// A schedule from `initial` to `max`, with up to `jitter` (0.0–1.0)
    /// added to each delay.
    pub fn new(initial: Duration, max: Duration, jitter: f64) -> Backoff {
        Backoff {
            initial,
            max: max.max(initial),
            jitter: jitter.clamp(0.0, 1.0),
            next: initial,
        }
    }

    /// The delay before the next try; `random` is a number in `[0, 1)`
    /// from the caller's random source. Each call doubles the base delay
    /// (up to the maximum).
    pub fn next_delay(&mut self, random: f64) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        base.mul_f64(1.0 + self.jitter * random.clamp(0.0, 1.0))
    }

    /// Back to the initial delay, after a success.
    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_maximum_and_reset() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(500), 0.5);
        let delays: Vec<u128> = (0..5)
            .map(|_| backoff.next_delay(0.0).as_millis())
            .collect();
        assert_eq!(delays, [100, 200, 400, 500, 500]);
        assert_eq!(backoff.next_delay(1.0), Duration::from_millis(750));
        backoff.reset();
        assert_eq!(backoff.next_delay(0.0), Duration::from_millis(100));
    }
}
