//! Maglev consistent hashing (Eisenbud et al., NSDI 2016), weighted.
//!
//! The table is a pure function of the backend set (identity + weight) and
//! its size, so several weir nodes with the same config agree on every slot.

/// 64-bit FNV-1a followed by the murmur3 finaliser. Fixed forever: changing it
/// changes every node's table.
pub fn stable_hash(bytes: &[u8], seed: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2u64;
    while d * d <= u64::from(n) {
        if u64::from(n) % d == 0 {
            return false;
        }
        d += 1;
    }
    true
}

/// One entry per backend: its identity (bytes that name it, e.g. its
/// address) and weight. Returns, for each of `size` slots, the index of the
/// backend that owns it, or `None` when no backend has a weight above 0.
///
/// Weighted like Katran: per round, a backend claims its next preferred free
/// slot each time its accumulated weight reaches the largest weight, so the
/// share of slots is proportional to weight. Ties are broken by input order;
/// callers sort backends by identity to stay independent of config order.
pub fn build(backends: &[(Vec<u8>, u32)], size: u32) -> Vec<Option<usize>> {
    let m = u64::from(size);
    let mut table: Vec<Option<usize>> = vec![None; size as usize];
    let max_w = backends.iter().map(|b| b.1).max().unwrap_or(0);
    if max_w == 0 || size < 2 {
        return table;
    }
    let perm: Vec<(u64, u64)> = backends
        .iter()
        .map(|(id, _)| {
            let offset = stable_hash(id, 0x6d61_676c_6576_0001) % m;
            let skip = stable_hash(id, 0x6d61_676c_6576_0002) % (m - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; backends.len()];
    let mut credit = vec![0u64; backends.len()];
    let mut filled = 0u64;
    loop {
        for (i, (_, w)) in backends.iter().enumerate() {
            if *w == 0 {
                continue;
            }
            credit[i] += u64::from(*w);
            if credit[i] < u64::from(max_w) {
                continue;
            }
            credit[i] -= u64::from(max_w);
            let (offset, skip) = perm[i];
            loop {
                let c = ((offset + next[i] * skip) % m) as usize;
                next[i] += 1;
                if table[c].is_none() {
                    table[c] = Some(i);
                    filled += 1;
                    break;
                }
            }
            if filled == m {
                return table;
            }
        }
    }
}

/// How many slots each backend owns.
pub fn shares(table: &[Option<usize>], backends: usize) -> Vec<usize> {
    let mut n = vec![0; backends];
    for i in table.iter().flatten() {
        n[*i] += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<(Vec<u8>, u32)> {
        (0..n).map(|i| (format!("10.0.{}.{}", i / 250, i % 250 + 1).into_bytes(), 1)).collect()
    }

    #[test]
    fn equal_weights_balance_within_one_percent() {
        for n in [3, 10, 100] {
            let t = build(&ids(n), 65537);
            assert!(t.iter().all(Option::is_some), "every slot filled");
            let fair = 65537.0 / n as f64;
            for (i, s) in shares(&t, n).iter().enumerate() {
                let dev = (*s as f64 - fair).abs() / fair;
                assert!(dev < 0.01, "n={n}: backend {i} owns {s} slots, fair share {fair:.0} ({:.2}% off)", dev * 100.0);
            }
        }
    }

    #[test]
    fn weights_are_respected() {
        let mut b = ids(3);
        b[0].1 = 1;
        b[1].1 = 2;
        b[2].1 = 3;
        let s = shares(&build(&b, 65537), 3);
        for (i, w) in [1.0, 2.0, 3.0].iter().enumerate() {
            let want = 65537.0 * w / 6.0;
            let dev = (s[i] as f64 - want).abs() / want;
            assert!(dev < 0.01, "backend {i} weight {w}: {} slots, want {want:.0}", s[i]);
        }
    }

    #[test]
    fn zero_weight_owns_nothing_and_all_zero_is_empty() {
        let mut b = ids(3);
        b[1].1 = 0;
        let s = shares(&build(&b, 65537), 3);
        assert_eq!(s[1], 0);
        assert!(s[0] > 0 && s[2] > 0);
        b.iter_mut().for_each(|x| x.1 = 0);
        assert!(build(&b, 251).iter().all(Option::is_none));
    }

    #[test]
    fn deterministic() {
        assert_eq!(build(&ids(10), 65537), build(&ids(10), 65537));
    }

    /// Removing one of N backends: its slots move (1/N of the table), and
    /// Maglev moves only a small fraction between survivors (the paper's
    /// trade-off for its near-perfect balance; tracked flows do not move at
    /// all because the flow table pins them).
    #[test]
    fn removal_disrupts_minimally() {
        for n in [5usize, 10, 50] {
            let all = ids(n);
            let before = build(&all, 65537);
            let removed = n / 2;
            let rest: Vec<_> = all.iter().enumerate().filter(|(i, _)| *i != removed).map(|(_, b)| b.clone()).collect();
            let after = build(&rest, 65537);
            // Map `after` indices back to `all` indices.
            let back = |i: usize| if i >= removed { i + 1 } else { i };
            let mut moved = 0;
            let mut between_survivors = 0;
            for (b, a) in before.iter().zip(after.iter()) {
                let (b, a) = (b.unwrap(), back(a.unwrap()));
                if b != a {
                    moved += 1;
                    if b != removed {
                        between_survivors += 1;
                    }
                }
            }
            let frac = moved as f64 / 65537.0;
            let surv = between_survivors as f64 / 65537.0;
            let ideal = 1.0 / n as f64;
            assert!(frac >= ideal * 0.99, "n={n}: {frac} moved, the removed backend owned ~{ideal}");
            assert!(frac <= ideal + 0.03, "n={n}: {:.2}% of slots moved, ideal {:.2}%", frac * 100.0, ideal * 100.0);
            assert!(surv <= 0.03, "n={n}: {:.2}% of slots moved between survivors", surv * 100.0);
        }
    }

    #[test]
    fn primes() {
        assert!(is_prime(65537) && is_prime(655373) && is_prime(251));
        assert!(!is_prime(65536) && !is_prime(1) && !is_prime(65535));
    }
}
