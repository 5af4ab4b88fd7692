//! The order in which the keyword probes are given to aho-corasick, chosen so that its SIMD
//! searcher (Teddy) stops rarely in source code and prose.
//!
//! Teddy sorts the patterns into buckets (8, or 16 past 32 patterns) and, for each of the first
//! `m` bytes of a pattern (`m` = the shortest pattern's length, at most 4), keeps per bucket the
//! set of low nibbles and the set of high nibbles seen there. It stops to verify wherever, for
//! some bucket, each of `m` consecutive bytes has both its nibbles in that bucket's sets. Which
//! patterns share a bucket decides how often that happens: lumping `toke`, `://` and `AKIA`
//! together lets through most of the bytes of code, and with the built-in probes in sorted order
//! Teddy stopped on about one byte in thirty, which held the masker near 0.7 GB/s. aho-corasick
//! (1.1, pinned by the lock file) puts pattern `i` in bucket `B - 1 - i % B`, except that a
//! pattern whose first `m` bytes have the same low nibbles as an earlier one's joins that one's
//! bucket; so an order is a bucket assignment, and this module picks one that keeps the buckets'
//! sets small under the byte frequencies of code.
//!
//! Only speed depends on it: a leftmost-first search for probes, restarted one byte after each
//! probe found, finds the same places in any order. Must never drop a probe, and never give
//! aho-corasick more than 64 patterns (past that it has no SIMD searcher at all).

/// How often each ASCII byte occurs in text files of the cargo registry (source code, docs,
/// manifests), per 100,000 bytes; at least 1. Bytes past ASCII make up about 350 of them.
const TEXT_FREQ: [u16; 128] = [
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2740, 1, 1, 16, 1, 1, //
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, //
    21204, 180, 701, 229, 39, 19, 221, 253, 1124, 1124, 171, 40, 1869, 357, 676, 1287, //
    1160, 758, 871, 747, 415, 320, 461, 272, 355, 233, 2478, 744, 189, 721, 325, 53, //
    7, 588, 261, 509, 466, 814, 378, 184, 140, 593, 17, 94, 380, 291, 487, 513, //
    410, 35, 562, 738, 722, 279, 171, 138, 78, 112, 24, 307, 110, 307, 8, 2383, //
    284, 2804, 1071, 1907, 1528, 5070, 1415, 806, 808, 2756, 38, 307, 1933, 1255, 3047, 2646, //
    1630, 123, 2914, 2927, 4311, 2316, 365, 465, 800, 630, 139, 419, 52, 419, 5, 1, //
];

/// Most patterns Teddy takes, and most it sorts into 8 buckets rather than 16.
const TEDDY_MAX: usize = 64;
const SLIM_MAX: usize = 32;

fn freq(byte: usize) -> f64 {
    match TEXT_FREQ.get(byte) {
        Some(&f) => f64::from(f),
        None => 350.0 / 128.0,
    }
}

/// The nibble sets of a bucket at each of the first `m` bytes: (low nibbles, high nibbles).
#[derive(Clone, Copy, Default)]
struct Masks([(u16, u16); 4]);

impl Masks {
    fn of(probe: &[u8], m: usize) -> Masks {
        let mut masks = Masks::default();
        for (i, &b) in probe[..m].iter().enumerate() {
            masks.0[i] = (1 << (b & 15), 1 << (b >> 4));
        }
        masks
    }

    fn union(mut self, other: &Masks) -> Masks {
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            a.0 |= b.0;
            a.1 |= b.1;
        }
        self
    }

    /// About how often, per byte of text, the bucket fires.
    fn rate(&self, m: usize) -> f64 {
        self.0[..m]
            .iter()
            .map(|&(lo, hi)| {
                let mut p = 0.0;
                for h in bits(hi) {
                    for l in bits(lo) {
                        p += freq(h << 4 | l);
                    }
                }
                p / 100_000.0
            })
            .product()
    }
}

/// The indices of the bits set in `set`.
fn bits(set: u16) -> impl Iterator<Item = usize> {
    (0..16).filter(move |i| set & (1 << i) != 0)
}

/// `probes` (distinct, none empty) in an order that gives Teddy rare buckets, possibly with some
/// repeated to fill the order (a repeat joins its original's bucket and never matches first).
pub(super) fn order(probes: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    let Some(m) = probes.iter().map(Vec::len).min().map(|l| l.min(4)) else {
        return probes;
    };
    if m == 0 || probes.len() > TEDDY_MAX {
        return probes;
    }
    let nbuckets = if probes.len() > SLIM_MAX { 16 } else { 8 };
    // Probes whose first bytes share their low nibbles go to one bucket whatever the order.
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let lows = |p: &[u8]| -> [u8; 4] {
        let mut k = [0; 4];
        for (k, b) in k.iter_mut().zip(&p[..m]) {
            *k = b & 15;
        }
        k
    };
    for (i, p) in probes.iter().enumerate() {
        match groups.iter_mut().find(|g| lows(&probes[g[0]]) == lows(p)) {
            Some(g) => g.push(i),
            None => groups.push(vec![i]),
        }
    }
    let group_masks: Vec<Masks> = groups
        .iter()
        .map(|g| {
            g.iter()
                .fold(Masks::default(), |acc, &i| acc.union(&Masks::of(&probes[i], m)))
        })
        .collect();
    let rate = |members: &[usize]| {
        members
            .iter()
            .fold(Masks::default(), |acc, &g| acc.union(&group_masks[g]))
            .rate(m)
    };
    // Balanced buckets, so that the order needs few or no repeats; greedily, the groups that
    // fire most first, each where it adds least; then swaps between buckets while they help.
    let cap = groups.len().div_ceil(nbuckets);
    let mut by_rate: Vec<(f64, usize)> = (0..groups.len()).map(|g| (rate(&[g]), g)).collect();
    by_rate.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut buckets: Vec<Vec<usize>> = vec![Vec::new(); nbuckets];
    for &(_, g) in &by_rate {
        let best = (0..nbuckets)
            .filter(|&b| buckets[b].len() < cap)
            .map(|b| {
                let mut with = buckets[b].clone();
                with.push(g);
                (rate(&with) - rate(&buckets[b]), b)
            })
            .min_by(|x, y| x.0.total_cmp(&y.0))
            .map_or(0, |(_, b)| b);
        buckets[best].push(g);
    }
    for _ in 0..16 {
        let mut improved = false;
        for a in 0..nbuckets {
            for b in a + 1..nbuckets {
                for i in 0..buckets[a].len() {
                    for j in 0..buckets[b].len() {
                        let before = rate(&buckets[a]) + rate(&buckets[b]);
                        let (ga, gb) = (buckets[a][i], buckets[b][j]);
                        buckets[a][i] = gb;
                        buckets[b][j] = ga;
                        if rate(&buckets[a]) + rate(&buckets[b]) < before * (1.0 - 1e-9) {
                            improved = true;
                        } else {
                            buckets[a][i] = ga;
                            buckets[b][j] = gb;
                        }
                    }
                }
            }
        }
        if !improved {
            break;
        }
    }
    // Fullest buckets first: the order begins with bucket B - 1.
    buckets.sort_by_key(|b| std::cmp::Reverse(b.len()));
    let mut order: Vec<Vec<u8>> = Vec::with_capacity(probes.len());
    let mut next_group: Vec<std::vec::IntoIter<usize>> = buckets.into_iter().map(|b| b.into_iter()).collect();
    // Probes after the first of their group: placed anywhere, they join its bucket.
    let mut followers: Vec<usize> = Vec::new();
    let mut left = probes.len();
    while left > 0 {
        let bucket = nbuckets - 1 - order.len() % nbuckets;
        let slot = nbuckets - 1 - bucket;
        if let Some(g) = next_group[slot].next() {
            order.push(probes[groups[g][0]].clone());
            followers.extend(&groups[g][1..]);
            left -= 1;
        } else if let Some(i) = followers.pop() {
            order.push(probes[i].clone());
            left -= 1;
        } else {
            // Nothing for this bucket yet: a repeat of the first probe fills the place.
            order.push(order[0].clone());
        }
    }
    let fits = order.len() <= TEDDY_MAX && (order.len() > SLIM_MAX) == (probes.len() > SLIM_MAX);
    if fits { order } else { probes }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_probe_is_kept_and_the_count_stays_in_teddy_s_class() {
        let probes: Vec<Vec<u8>> = [
            "ghp_", "toke", "TOKE", "Toke", "://", "AKIA", "----", "sk_", "api", "API",
        ]
        .iter()
        .map(|p| p.as_bytes().to_vec())
        .collect();
        let ordered = order(probes.clone());
        assert!(ordered.len() <= SLIM_MAX);
        for p in &probes {
            assert!(ordered.contains(p), "{}", String::from_utf8_lossy(p));
        }
        for p in &ordered {
            assert!(probes.contains(p));
        }
    }
}
