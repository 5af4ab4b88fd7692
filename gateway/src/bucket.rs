//! A token bucket: at most `burst` at once, refilled at `per_second`. Used for a connection's
//! request rate and for the GitHub App's mint budgets.
#[cfg(test)]
use std::time::Duration;
use std::time::Instant;

#[derive(Debug)]
pub struct TokenBucket {
    per_second: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(per_second: f64, burst: f64) -> Self {
        Self {
            per_second,
            burst,
            tokens: burst,
            last: Instant::now(),
        }
    }

    fn refill(&mut self) {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.last).as_secs_f64() * self.per_second).min(self.burst);
        self.last = now;
    }

    /// Takes one token, if there is one.
    pub fn take(&mut self) -> bool {
        self.refill();
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Gives back a token taken but not spent.
    pub fn give_back(&mut self) {
        self.tokens = (self.tokens + 1.0).min(self.burst);
    }

    /// Whether the bucket has refilled to its burst (as good as a new one).
    pub fn is_full(&mut self) -> bool {
        self.refill();
        self.tokens >= self.burst
    }

    /// As if `d` had passed (tests).
    #[cfg(test)]
    pub fn age(&mut self, d: Duration) {
        self.last -= d;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate_and_a_token_given_back() {
        let mut b = TokenBucket::new(5.0, 5.0);
        assert!((0..5).all(|_| b.take()));
        assert!(!b.take(), "the sixth within the same instant is over");
        b.age(Duration::from_millis(400)); // two tokens' worth of time
        assert!(b.take() && b.take());
        assert!(!b.take());
        b.give_back();
        assert!(b.take());
        assert!(!b.is_full());
        b.age(Duration::from_secs(2));
        assert!(b.is_full());
    }
}
