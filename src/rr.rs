//! The weighted round-robin sequence a VIP's new flows walk through.
//!
//! Smooth weighted round-robin (as in nginx): each backend appears in
//! proportion to its weight, spread out rather than in bursts. The sequence
//! is at most `RR_SLOTS` long; larger weight sums are scaled down, keeping
//! every backend with a weight above 0 at least once.

use crate::skel::RR_SLOTS;

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Indices into `weights`, in the order new flows are assigned.
pub fn sequence(weights: &[u32]) -> Vec<usize> {
    let g = weights.iter().copied().filter(|w| *w > 0).fold(0, gcd);
    if g == 0 {
        return Vec::new();
    }
    let mut w: Vec<u64> = weights.iter().map(|x| u64::from(x / g)).collect();
    let total: u64 = w.iter().sum();
    if total > u64::from(RR_SLOTS) {
        for (x, orig) in w.iter_mut().zip(weights) {
            if *orig > 0 {
                *x = (*x * u64::from(RR_SLOTS) / total).max(1);
            }
        }
        // Rounding up the small ones may overshoot: trim the largest.
        while w.iter().sum::<u64>() > u64::from(RR_SLOTS) {
            let i = (0..w.len()).max_by_key(|i| w[*i]).unwrap_or(0);
            w[i] -= 1;
        }
    }
    let total: i64 = w.iter().sum::<u64>() as i64;
    let mut current = vec![0i64; w.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, x) in current.iter_mut().zip(&w) {
            *c += *x as i64;
        }
        let best = (0..w.len()).max_by_key(|i| (current[*i], std::cmp::Reverse(*i))).unwrap_or(0);
        current[best] -= total;
        out.push(best);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_weights_rotate() {
        assert_eq!(sequence(&[1, 1, 1]), vec![0, 1, 2]);
        assert_eq!(sequence(&[5, 5]), vec![0, 1]);
    }

    #[test]
    fn weights_are_counted_and_spread() {
        let s = sequence(&[1, 2, 3]);
        assert_eq!(s.len(), 6);
        for (i, w) in [1, 2, 3].iter().enumerate() {
            assert_eq!(s.iter().filter(|x| **x == i).count(), *w);
        }
        assert_ne!(s[0], s[1], "smooth: the heaviest does not take every turn first");
    }

    #[test]
    fn zero_weight_is_skipped_and_all_zero_is_empty() {
        assert_eq!(sequence(&[1, 0, 1]), vec![0, 2]);
        assert!(sequence(&[0, 0]).is_empty());
    }

    #[test]
    fn large_weights_fit_the_slots() {
        let s = sequence(&[1000, 1, 999]);
        assert!(s.len() <= RR_SLOTS as usize);
        assert!(s.contains(&1), "a small weight keeps at least one turn");
    }
}
