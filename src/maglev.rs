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
    build_owners(backends, size).into_iter().map(|i| (i != NO_OWNER).then_some(i as usize)).collect()
}

/// A slot `build_owners` left without a backend.
pub const NO_OWNER: u32 = u32::MAX;

/// `build`, with each slot's backend as a u32 index (`NO_OWNER`: none):
/// a quarter of the memory, and no conversion pass for callers that map
/// indices to ids anyway.
pub fn build_owners(backends: &[(Vec<u8>, u32)], size: u32) -> Vec<u32> {
    let max_w = backends.iter().map(|b| b.1).max().unwrap_or(0);
    if max_w == 0 || size < 2 {
        return vec![NO_OWNER; size as usize];
    }
    let m = u64::from(size);
    // Only backends with a weight take part; their order is the input
    // order (ties are broken by it). `pos` walks the backend's permutation
    // offset + k * skip (mod m) by adding skip and subtracting m once,
    // which is the same sequence as computing it anew with a division.
    struct Walk {
        index: u32,
        weight: u64,
        credit: u64,
        pos: u64,
        skip: u64,
    }
    let mut walks: Vec<Walk> = backends
        .iter()
        .enumerate()
        .filter(|(_, (_, w))| *w > 0)
        .map(|(i, (id, w))| Walk {
            index: i as u32,
            weight: u64::from(*w),
            credit: 0,
            pos: stable_hash(id, 0x6d61_676c_6576_0001) % m,
            skip: stable_hash(id, 0x6d61_676c_6576_0002) % (m - 1) + 1,
        })
        .collect();
    let max_w = u64::from(max_w);
    // Owners as indices, and which slots are taken as a bitmap: the
    // probes, most of which find a taken slot, touch 1 bit per slot instead
    // of its owner (8 KiB for 65537 slots: stays in L1).
    let mut owner = vec![NO_OWNER; size as usize];
    let mut taken = vec![0u64; (size as usize).div_ceil(64)];
    let mut left = size;
    'rounds: loop {
        for w in walks.iter_mut() {
            if w.weight != max_w {
                w.credit += w.weight;
                if w.credit < max_w {
                    continue;
                }
                w.credit -= max_w;
            }
            let (mut pos, skip) = (w.pos, w.skip);
            loop {
                let c = pos as usize;
                pos += skip;
                if pos >= m {
                    pos -= m;
                }
                let (word, bit) = (c / 64, 1u64 << (c % 64));
                if taken[word] & bit == 0 {
                    taken[word] |= bit;
                    owner[c] = w.index;
                    break;
                }
            }
            w.pos = pos;
            left -= 1;
            if left == 0 {
                break 'rounds;
            }
        }
    }
    owner
}

/// How many slots each backend owns.
pub fn shares(table: &[Option<usize>], backends: usize) -> Vec<usize> {
    let mut n = vec![0; backends];
    for i in table.iter().flatten() {
        n[*i] += 1;
    }
    n
}

/// The first implementation of `build`, kept as the reference the fast one
/// must match slot for slot (other nodes and older weirs build with it).
#[cfg(test)]
mod reference {
    use super::stable_hash;

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
}

#[cfg(test)]
mod tests {
    use super::*;

    /// splitmix64: reproducible pseudo-random inputs without a dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// Random backend sets: 1 to 1000 backends, identities of 4 or 16
    /// bytes (some repeated), weights from all equal over small and mixed
    /// to extreme, zeros included.
    fn random_backends(r: &mut Rng) -> Vec<(Vec<u8>, u32)> {
        let n = match r.below(4) {
            0 => 1 + r.below(10),
            1 => 1 + r.below(100),
            _ => 1 + r.below(1000),
        } as usize;
        let style = r.below(6);
        (0..n)
            .map(|_| {
                let len = if r.below(2) == 0 { 4 } else { 16 };
                let mut id: Vec<u8> = (0..len).map(|_| r.next() as u8).collect();
                if r.below(50) == 0 {
                    id = vec![10, 0, 0, 1]; // the same identity twice: its own permutation, twice
                }
                let w = match style {
                    0 => 1,
                    1 => 1 + r.below(4) as u32,
                    2 => r.below(101) as u32,
                    3 => if r.below(10) == 0 { 0 } else { 1 + r.below(1000) as u32 },
                    4 => if r.below(3) == 0 { u32::MAX } else { r.next() as u32 },
                    _ => if r.below(2) == 0 { 0 } else { 7 },
                };
                (id, w)
            })
            .collect()
    }

    #[test]
    fn same_table_as_the_reference_for_random_inputs() {
        let mut r = Rng(0x5eed_0f_7ab1e);
        let mut cases = 0;
        for (size, runs) in [(65537u32, 60), (251, 400), (13, 200), (2, 50), (1, 5), (0, 5)] {
            for _ in 0..runs {
                let b = random_backends(&mut r);
                let want = reference::build(&b, size);
                let got = build(&b, size);
                assert!(
                    got == want,
                    "M={size}, {} backends, weights {:?}...: the table differs from the reference at slot {:?}",
                    b.len(),
                    b.iter().take(8).map(|x| x.1).collect::<Vec<_>>(),
                    got.iter().zip(&want).position(|(g, w)| g != w)
                );
                cases += 1;
            }
        }
        // And the inputs the benchmark and the other tests use.
        for n in [1usize, 2, 3, 10, 100, 1000] {
            for size in [65537u32, 251] {
                let b: Vec<(Vec<u8>, u32)> = (0..n).map(|i| (vec![10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 1)).collect();
                assert!(build(&b, size) == reference::build(&b, size), "M={size} N={n}");
                assert!(build(&ids(n), size) == reference::build(&ids(n), size), "M={size} N={n} (ids)");
                cases += 2;
            }
        }
        assert!(cases > 700);
    }

    /// The fast build against the reference on the bench's inputs: the
    /// same tables (checked), and both timed in one run, printed
    /// (`cargo test --release --lib maglev::tests::speed -- --nocapture`).
    #[test]
    fn speed() {
        for size in [65537u32, 655373] {
            for n in [10usize, 100, 1000] {
                let b: Vec<(Vec<u8>, u32)> = (0..n).map(|i| (vec![10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 1)).collect();
                assert_eq!(build(&b, size), reference::build(&b, size), "M={size} N={n}: the table differs from the reference");
                let time = |f: &dyn Fn() -> Vec<Option<usize>>| {
                    let mut v: Vec<f64> = (0..7)
                        .map(|_| {
                            let t = std::time::Instant::now();
                            std::hint::black_box(f());
                            t.elapsed().as_secs_f64() * 1e3
                        })
                        .collect();
                    v.sort_by(f64::total_cmp);
                    (v[3], v[0], v[6])
                };
                let (old, omin, omax) = time(&|| reference::build(&b, size));
                let (new, nmin, nmax) = time(&|| build(&b, size));
                println!(
                    "M={size} N={n}: reference {old:.2} ms ({omin:.2}-{omax:.2}), now {new:.2} ms ({nmin:.2}-{nmax:.2}), ratio {:.2}",
                    new / old
                );
            }
        }
    }

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
