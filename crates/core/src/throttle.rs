//! One throttle for every "too many failures" rule: strikes counted per
//! key (a client address, a user, a stored account), a pause once a
//! threshold is reached, and an injected clock so the rules are tested
//! without waiting.
//!
//! | rule | key | threshold | counted | pause |
//! |---|---|---|---|---|
//! | local login failures | client address | 5 | within 10 min | 15 min |
//! | upstream refused stored credentials | account | 1 | until a success | 1 min, doubling, ≤ 32 min |
//! | upstream refused an APOP digest | user | 3 | consecutive, afresh after a pause | 10 min |

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a key pauses once it reached the threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pause {
    /// Always the same.
    Fixed(Duration),
    /// `first`, doubled for each strike beyond the threshold, at most
    /// `first · 2^max_doublings`.
    Doubling {
        /// The first pause.
        first: Duration,
        /// How many times it may double.
        max_doublings: u32,
    },
}

/// A throttling rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// Strikes that start a pause.
    pub threshold: u32,
    /// Strikes older than this (from the first one) are forgotten; `None`:
    /// counted until [`Throttle::clear`].
    pub window: Option<Duration>,
    /// After a pause ran out, the next strike starts counting afresh.
    pub afresh_after_pause: bool,
    /// The pause.
    pub pause: Pause,
}

#[derive(Debug, Clone, Copy)]
struct Strikes {
    count: u32,
    first: Instant,
    until: Option<Instant>,
}

/// Strikes per key under one [`Rule`]. Memory stays bounded: past
/// [`Throttle::MAX_KEYS`] keys, entries that neither pause nor count
/// within their window are dropped.
#[derive(Debug)]
pub struct Throttle<K> {
    rule: Rule,
    keys: Mutex<HashMap<K, Strikes>>,
}

impl<K: Eq + Hash> Throttle<K> {
    /// Keys kept before stale ones are dropped.
    pub const MAX_KEYS: usize = 10_000;

    /// An empty throttle.
    pub fn new(rule: Rule) -> Self {
        Self {
            rule,
            keys: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `key` is paused at `now`. A poisoned lock pauses everyone
    /// (fail closed).
    pub fn paused(&self, key: &K, now: Instant) -> bool {
        let Ok(keys) = self.keys.lock() else {
            return true;
        };
        keys.get(key)
            .and_then(|s| s.until)
            .is_some_and(|until| now < until)
    }

    /// Records a strike against `key` at `now`.
    pub fn strike(&self, key: K, now: Instant) {
        let Ok(mut keys) = self.keys.lock() else {
            return;
        };
        let rule = self.rule;
        if keys.len() > Self::MAX_KEYS {
            keys.retain(|_, s| {
                s.until.is_some_and(|u| now < u)
                    || rule.window.is_some_and(|w| now.duration_since(s.first) < w)
            });
        }
        let s = keys.entry(key).or_insert(Strikes {
            count: 0,
            first: now,
            until: None,
        });
        let window_passed = rule.window.is_some_and(|w| now.duration_since(s.first) > w);
        let pause_over = rule.afresh_after_pause && s.until.is_some_and(|u| now >= u);
        if window_passed || pause_over {
            *s = Strikes {
                count: 0,
                first: now,
                until: None,
            };
        }
        s.count = s.count.saturating_add(1);
        if s.count >= rule.threshold {
            let beyond = s.count - rule.threshold;
            let pause = match rule.pause {
                Pause::Fixed(d) => d,
                Pause::Doubling {
                    first,
                    max_doublings,
                } => first.saturating_mul(1 << beyond.min(max_doublings).min(16)),
            };
            s.until = Some(now + pause);
        }
    }

    /// Forgets `key`'s strikes (a success).
    pub fn clear(&self, key: &K) {
        if let Ok(mut keys) = self.keys.lock() {
            keys.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn a_window_forgets_old_strikes_and_a_fixed_pause_ends() {
        let t = Throttle::new(Rule {
            threshold: 3,
            window: Some(10 * MIN),
            afresh_after_pause: false,
            pause: Pause::Fixed(15 * MIN),
        });
        let t0 = Instant::now();
        t.strike("a", t0);
        t.strike("a", t0 + MIN);
        // The window passed: counting starts again.
        t.strike("a", t0 + 11 * MIN);
        assert!(!t.paused(&"a", t0 + 11 * MIN));
        t.strike("a", t0 + 12 * MIN);
        t.strike("a", t0 + 13 * MIN);
        assert!(t.paused(&"a", t0 + 13 * MIN));
        assert!(
            !t.paused(&"b", t0 + 13 * MIN),
            "other keys are not affected"
        );
        assert!(!t.paused(&"a", t0 + 28 * MIN + Duration::from_secs(1)));
        t.clear(&"a");
        assert!(!t.paused(&"a", t0 + 14 * MIN));
    }

    #[test]
    fn doubling_pauses_grow_until_cleared() {
        let t = Throttle::new(Rule {
            threshold: 1,
            window: None,
            afresh_after_pause: false,
            pause: Pause::Doubling {
                first: MIN,
                max_doublings: 5,
            },
        });
        let mut now = Instant::now();
        let mut pauses = Vec::new();
        for _ in 0..8 {
            t.strike(7usize, now);
            let mut p = 0;
            while t.paused(&7, now + Duration::from_secs(p)) {
                p += 30;
            }
            pauses.push(p / 60);
            now += Duration::from_secs(p);
        }
        assert_eq!(pauses, vec![1, 2, 4, 8, 16, 32, 32, 32]);
        t.clear(&7);
        t.strike(7, now);
        assert!(
            !t.paused(&7, now + MIN + Duration::from_secs(1)),
            "back to the first pause"
        );
    }

    #[test]
    fn consecutive_strikes_count_afresh_after_a_pause() {
        let t = Throttle::new(Rule {
            threshold: 3,
            window: None,
            afresh_after_pause: true,
            pause: Pause::Fixed(10 * MIN),
        });
        let t0 = Instant::now();
        for i in 0..3 {
            t.strike("tim".to_owned(), t0 + Duration::from_secs(i));
        }
        assert!(t.paused(&"tim".to_owned(), t0 + MIN));
        let later = t0 + 11 * MIN;
        assert!(!t.paused(&"tim".to_owned(), later));
        t.strike("tim".to_owned(), later);
        assert!(
            !t.paused(&"tim".to_owned(), later),
            "one strike after the pause is not three"
        );
    }

    #[test]
    fn memory_stays_bounded() {
        let t = Throttle::new(Rule {
            threshold: 5,
            window: Some(MIN),
            afresh_after_pause: false,
            pause: Pause::Fixed(MIN),
        });
        let t0 = Instant::now();
        for k in 0..Throttle::<u32>::MAX_KEYS as u32 + 10 {
            t.strike(k, t0);
        }
        t.strike(u32::MAX, t0 + 2 * MIN);
        let len = t.keys.lock().map(|k| k.len()).unwrap_or(usize::MAX);
        assert!(len < 10, "stale keys dropped, {len} left");
    }
}
