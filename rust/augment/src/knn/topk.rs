//! The K best (score, row) pairs seen so far, best first: higher score first, and on equal
//! scores the lower row first. That order is total, so partial results of any split of the rows
//! merge into the same K whatever the split, which is what keeps the search independent of the
//! thread count.

#[derive(Clone, Debug)]
pub struct TopK {
    k: usize,
    items: Vec<(f32, u32)>,
    /// The least score that may still enter: the last item's once the list is full (a pair with
    /// an equal score enters only with a lower row), -inf before, +inf when `k` is 0. Nearly
    /// every pair of a long scan fails this one comparison.
    floor: f32,
}

/// Whether `a` ranks before `b`.
#[inline]
fn before(a: (f32, u32), b: (f32, u32)) -> bool {
    a.0 > b.0 || (a.0 == b.0 && a.1 < b.1)
}

impl TopK {
    pub fn new(k: usize) -> TopK {
        TopK {
            k,
            items: Vec::with_capacity(k + 1),
            floor: if k == 0 {
                f32::INFINITY
            } else {
                f32::NEG_INFINITY
            },
        }
    }

    /// Offers one pair; NaN scores never enter.
    #[inline]
    pub fn push(&mut self, score: f32, row: u32) {
        // False for NaN too.
        if score >= self.floor {
            self.insert(score, row);
        }
    }

    #[inline(never)]
    fn insert(&mut self, score: f32, row: u32) {
        if self.k == 0 {
            return;
        }
        let item = (score, row);
        if self.items.len() == self.k && !before(item, self.items[self.k - 1]) {
            return;
        }
        let at = self.items.partition_point(|&x| before(x, item));
        self.items.insert(at, item);
        self.items.truncate(self.k);
        if self.items.len() == self.k {
            self.floor = self.items[self.k - 1].0;
        }
    }

    pub fn merge(&mut self, other: &TopK) {
        for &(score, row) in &other.items {
            self.push(score, row);
        }
    }

    /// Best first.
    pub fn into_sorted(self) -> Vec<(f32, u32)> {
        self.items
    }
}

#[cfg(test)]
mod tests {
    use super::TopK;

    #[test]
    fn keeps_the_best_with_low_rows_on_ties() {
        let mut t = TopK::new(3);
        for (s, r) in [
            (0.5, 4),
            (0.9, 7),
            (0.5, 2),
            (f32::NAN, 1),
            (0.1, 0),
            (0.9, 9),
        ] {
            t.push(s, r);
        }
        assert_eq!(t.into_sorted(), vec![(0.9, 7), (0.9, 9), (0.5, 2)]);
    }

    #[test]
    fn ties_at_the_floor_enter_by_row_and_infinities_count() {
        let mut t = TopK::new(2);
        for (s, r) in [
            (f32::NEG_INFINITY, 9),
            (1.0, 5),
            (1.0, 7),
            (1.0, 3),
            (1.0, 6),
        ] {
            t.push(s, r);
        }
        assert_eq!(t.clone().into_sorted(), vec![(1.0, 3), (1.0, 5)]);
        t.push(f32::INFINITY, 8);
        assert_eq!(t.into_sorted(), vec![(f32::INFINITY, 8), (1.0, 3)]);
        let mut none = TopK::new(0);
        none.push(f32::INFINITY, 1);
        assert!(none.into_sorted().is_empty());
    }

    #[test]
    fn merging_splits_gives_the_whole() {
        let pairs: Vec<(f32, u32)> = (0..50).map(|i| (((i * 7) % 11) as f32, i)).collect();
        let mut whole = TopK::new(5);
        pairs.iter().for_each(|&(s, r)| whole.push(s, r));
        let (mut a, mut b) = (TopK::new(5), TopK::new(5));
        pairs[..17].iter().for_each(|&(s, r)| a.push(s, r));
        pairs[17..].iter().for_each(|&(s, r)| b.push(s, r));
        b.merge(&a);
        assert_eq!(b.into_sorted(), whole.into_sorted());
    }
}
