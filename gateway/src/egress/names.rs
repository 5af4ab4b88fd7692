//! Which name each address was last looked up by, as the gateway's resolver answered it: what a
//! record says a connection to that address was for.
//!
//! Bounded: past its capacity the entry that expires first is forgotten. Never consulted for a
//! decision: only the allow tries decide.
use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
    time::Duration,
};

use tokio::time::Instant;

pub struct NameCache {
    capacity: usize,
    by_addr: HashMap<IpAddr, (String, Instant)>,
    by_expiry: BTreeSet<(Instant, IpAddr)>,
}

impl NameCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            by_addr: HashMap::new(),
            by_expiry: BTreeSet::new(),
        }
    }

    /// `addr` was given as an answer for `name`, to be remembered for `keep`.
    pub fn insert(&mut self, addr: IpAddr, name: &str, keep: Duration, now: Instant) {
        let until = now + keep;
        if let Some((_, old)) = self.by_addr.remove(&addr) {
            self.by_expiry.remove(&(old, addr));
        }
        self.expire(now);
        while self.by_addr.len() >= self.capacity {
            let Some(first) = self.by_expiry.pop_first() else {
                break;
            };
            self.by_addr.remove(&first.1);
        }
        self.by_addr.insert(addr, (name.to_owned(), until));
        self.by_expiry.insert((until, addr));
    }

    pub fn get(&self, addr: IpAddr, now: Instant) -> Option<&str> {
        self.by_addr
            .get(&addr.to_canonical())
            .filter(|(_, until)| *until > now)
            .map(|(n, _)| n.as_str())
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(until, addr)) = self.by_expiry.first() {
            if until > now {
                break;
            }
            self.by_expiry.pop_first();
            self.by_addr.remove(&addr);
        }
    }

    pub fn len(&self) -> usize {
        self.by_addr.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_addr.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn names_expire_and_the_cache_stays_bounded() {
        let t0 = Instant::now();
        let mut c = NameCache::new(2);
        c.insert(ip("10.0.0.1"), "a.test", Duration::from_secs(10), t0);
        c.insert(ip("10.0.0.2"), "b.test", Duration::from_secs(30), t0);
        assert_eq!(c.get(ip("10.0.0.1"), t0), Some("a.test"));
        assert_eq!(
            c.get(ip("::ffff:10.0.0.1"), t0),
            Some("a.test"),
            "v4-mapped is the v4 address"
        );
        assert_eq!(
            c.get(ip("10.0.0.1"), t0 + Duration::from_secs(11)),
            None,
            "expired"
        );
        // Full: the entry that expires first goes.
        c.insert(ip("10.0.0.3"), "c.test", Duration::from_secs(20), t0);
        assert_eq!(c.len(), 2);
        assert_eq!(c.get(ip("10.0.0.1"), t0), None);
        assert_eq!(c.get(ip("10.0.0.2"), t0), Some("b.test"));
        // A new answer replaces the old name.
        c.insert(ip("10.0.0.2"), "b2.test", Duration::from_secs(5), t0);
        assert_eq!(c.get(ip("10.0.0.2"), t0), Some("b2.test"));
        assert_eq!(c.len(), 2);
    }
}
