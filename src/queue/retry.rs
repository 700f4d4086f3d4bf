//! When to try again, when to give up, and when to warn the sender that a message is late.
//!
//! All functions take the time as an argument and the randomness from the caller, so a table test
//! with an explicit `now` and a seeded RNG replays exactly.

use super::{Policy, PolicyError};
use crate::time::UnixTime;
use rand::Rng;
use std::time::Duration;

/// The waits between delivery attempts: after the n-th failed attempt the n-th step (counting
/// from 1) is waited; past the end of the list the last step repeats.
///
/// Valid by construction: non-empty, every step at least one second (the queue counts whole
/// seconds, see [`UnixTime`]) and no step shorter than the one before, so a recipient that keeps
/// failing is never retried faster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySchedule(Vec<Duration>);

/// Why a list of durations is not a [`RetrySchedule`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ScheduleError {
    /// No steps at all.
    #[error("the retry schedule is empty")]
    Empty,
    /// A step shorter than one second.
    #[error("retry step {index} is {step:?}; each step must be at least 1s")]
    TooShort {
        /// Position in the list, from 0.
        index: usize,
        /// The offending step.
        step: Duration,
    },
    /// A step shorter than the one before it.
    #[error("retry step {index} ({step:?}) is shorter than the step before it ({previous:?})")]
    Decreasing {
        /// Position in the list, from 0.
        index: usize,
        /// The step before.
        previous: Duration,
        /// The offending step.
        step: Duration,
    },
}

impl TryFrom<Vec<Duration>> for RetrySchedule {
    type Error = ScheduleError;

    fn try_from(steps: Vec<Duration>) -> Result<Self, Self::Error> {
        if steps.is_empty() {
            return Err(ScheduleError::Empty);
        }
        let mut previous = Duration::ZERO;
        for (index, &step) in steps.iter().enumerate() {
            if step < Duration::from_secs(1) {
                return Err(ScheduleError::TooShort { index, step });
            }
            if step < previous {
                return Err(ScheduleError::Decreasing {
                    index,
                    previous,
                    step,
                });
            }
            previous = step;
        }
        Ok(RetrySchedule(steps))
    }
}

impl Default for RetrySchedule {
    /// 1m, 5m, 15m, 30m, 1h, 2h, 4h, 8h, then every 8h: quick retries for the common short
    /// outage (greylisting answers 451 for a few minutes), then backing off like Postfix's
    /// `maximal_backoff_time` so a dead host is not hammered for five days.
    fn default() -> Self {
        const MINUTE: u64 = 60;
        const HOUR: u64 = 60 * MINUTE;
        RetrySchedule(
            [
                MINUTE,
                5 * MINUTE,
                15 * MINUTE,
                30 * MINUTE,
                HOUR,
                2 * HOUR,
                4 * HOUR,
                8 * HOUR,
            ]
            .into_iter()
            .map(Duration::from_secs)
            .collect(),
        )
    }
}

impl RetrySchedule {
    /// The steps, in order.
    pub fn steps(&self) -> &[Duration] {
        &self.0
    }

    /// The wait after `attempts` failed attempts (0 is treated as 1: the first step).
    pub fn delay_after(&self, attempts: u32) -> Duration {
        let index = usize::try_from(attempts.saturating_sub(1)).unwrap_or(usize::MAX);
        match self.0.get(index).or(self.0.last()) {
            Some(&step) => step,
            // Unreachable by construction (non-empty); a minute is a harmless answer anyway.
            None => Duration::from_secs(60),
        }
    }
}

/// Random spread applied to each retry delay, as a fraction of it.
///
/// Without it, every message deferred by one outage of a big receiver comes back in the same
/// second and knocks it over again; ±10% spreads a 1h retry over 12 minutes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Jitter {
    permille: u16,
}

impl Jitter {
    /// No spread: delays exactly as scheduled (tests, or operators who want it predictable).
    pub const NONE: Jitter = Jitter { permille: 0 };

    /// The largest spread accepted, ±50%: beyond it a later step could come sooner than an
    /// earlier one by a factor of three, and the schedule would stop meaning anything.
    pub const MAX_PERCENT: u8 = 50;

    /// ±`percent`% of each delay.
    pub fn percent(percent: u8) -> Result<Jitter, PolicyError> {
        if percent > Self::MAX_PERCENT {
            return Err(PolicyError::JitterTooLarge { percent });
        }
        Ok(Jitter {
            permille: u16::from(percent) * 10,
        })
    }

    /// The spread in percent.
    pub fn as_percent(self) -> u8 {
        u8::try_from(self.permille / 10).unwrap_or(Self::MAX_PERCENT)
    }

    /// `delay` moved by a uniformly drawn offset in `[-spread, +spread]`, at least one second.
    pub fn apply<R: Rng + ?Sized>(self, delay: Duration, rng: &mut R) -> Duration {
        let secs = delay.as_secs();
        let spread = secs.saturating_mul(u64::from(self.permille)) / 1000;
        if spread == 0 {
            return Duration::from_secs(secs.max(1));
        }
        let draw = rng.gen_range(0..=spread.saturating_mul(2));
        // secs + draw - spread, without going below one second or overflowing.
        let jittered = secs.saturating_add(draw).saturating_sub(spread).max(1);
        Duration::from_secs(jittered)
    }
}

impl Default for Jitter {
    /// ±10%.
    fn default() -> Self {
        Jitter { permille: 100 }
    }
}

/// What to do with a recipient after a temporary failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Try again at this time.
    RetryAt(UnixTime),
    /// The message is older than [`Policy::expire`]: give up and send a failure DSN.
    Expire,
}

impl Policy {
    /// When the recipient of a message that arrived at `arrival` should be tried again, now that
    /// its `attempts`-th attempt (counting the one that just failed) failed temporarily at `now`.
    ///
    /// Gives up ([`Decision::Expire`]) once `now` is at or past `arrival + expire`. A retry that
    /// the schedule would put past that deadline is moved to the deadline itself, so the last
    /// attempt happens as late as the sender allowed rather than a whole step before it (Postfix
    /// instead tries once more after the deadline; we keep the promise "five days" literal).
    pub fn next_attempt<R: Rng + ?Sized>(
        &self,
        arrival: UnixTime,
        attempts: u32,
        now: UnixTime,
        rng: &mut R,
    ) -> Decision {
        let deadline = self.expires_at(arrival);
        if now >= deadline {
            return Decision::Expire;
        }
        let delay = self.jitter.apply(self.retry.delay_after(attempts), rng);
        Decision::RetryAt(now.plus(delay).min(deadline))
    }

    /// When a message that arrived at `arrival` expires.
    pub fn expires_at(&self, arrival: UnixTime) -> UnixTime {
        arrival.plus(self.expire)
    }

    /// When the delay warning for a message that arrived at `arrival` falls due, if warnings are
    /// on and it falls before expiry (a warning after the failure DSN would be absurd).
    pub fn delay_warning_at(&self, arrival: UnixTime) -> Option<UnixTime> {
        let after = self.delay_warning?;
        let at = arrival.plus(after);
        (at < self.expires_at(arrival)).then_some(at)
    }
}

/// Whether to send the sender a "delayed" DSN (RFC 3464 `Action: delayed`) now.
///
/// Once per message (`already_warned`), once it has waited [`Policy::delay_warning`], and never
/// when warnings are off or the message has expired (then it gets the failure DSN instead).
/// Which recipients the warning names is up to NOTIFY (RFC 3461 §4.1), decided in
/// [`super::build_dsn`].
pub fn should_warn_delay(
    arrival: UnixTime,
    now: UnixTime,
    already_warned: bool,
    policy: &Policy,
) -> bool {
    if already_warned {
        return false;
    }
    match policy.delay_warning_at(arrival) {
        Some(at) => now >= at && now < policy.expires_at(arrival),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    const ARRIVAL: UnixTime = UnixTime(1_700_000_000);
    const M: u64 = 60;
    const H: u64 = 3600;
    const D: u64 = 86_400;

    fn exact() -> Policy {
        Policy {
            jitter: Jitter::NONE,
            ..Policy::default()
        }
    }

    fn at(offset: u64) -> UnixTime {
        ARRIVAL.plus(Duration::from_secs(offset))
    }

    #[test]
    fn schedule_validation_table() {
        let s = Duration::from_secs;
        let rows: Vec<(Vec<Duration>, Result<(), ScheduleError>)> = vec![
            (vec![], Err(ScheduleError::Empty)),
            (vec![s(60)], Ok(())),
            (vec![s(60), s(60), s(120)], Ok(())),
            (
                vec![s(60), Duration::from_millis(500)],
                Err(ScheduleError::TooShort {
                    index: 1,
                    step: Duration::from_millis(500),
                }),
            ),
            (
                vec![Duration::ZERO],
                Err(ScheduleError::TooShort {
                    index: 0,
                    step: Duration::ZERO,
                }),
            ),
            (
                vec![s(60), s(300), s(120)],
                Err(ScheduleError::Decreasing {
                    index: 2,
                    previous: s(300),
                    step: s(120),
                }),
            ),
        ];
        for (steps, want) in rows {
            let got = RetrySchedule::try_from(steps.clone()).map(|_| ());
            assert_eq!(got, want, "{steps:?}");
        }
    }

    #[test]
    fn default_schedule_then_every_eight_hours() {
        let schedule = RetrySchedule::default();
        let rows = [
            (0, M),
            (1, M),
            (2, 5 * M),
            (3, 15 * M),
            (4, 30 * M),
            (5, H),
            (6, 2 * H),
            (7, 4 * H),
            (8, 8 * H),
            (9, 8 * H),
            (100, 8 * H),
            (u32::MAX, 8 * H),
        ];
        for (attempts, want) in rows {
            assert_eq!(
                schedule.delay_after(attempts),
                Duration::from_secs(want),
                "after {attempts} attempts"
            );
        }
    }

    #[test]
    fn next_attempt_table() {
        let policy = exact();
        let mut rng = StdRng::seed_from_u64(1);
        // (attempts so far, now as offset from arrival, decision)
        let rows = [
            (1, 0, Decision::RetryAt(at(M))),
            (2, M, Decision::RetryAt(at(6 * M))),
            (3, 6 * M, Decision::RetryAt(at(21 * M))),
            (8, 10 * H, Decision::RetryAt(at(18 * H))),
            (12, 3 * D, Decision::RetryAt(at(3 * D + 8 * H))),
            // The schedule would go past the deadline: last attempt at the deadline.
            (20, 5 * D - H, Decision::RetryAt(at(5 * D))),
            (20, 5 * D - 1, Decision::RetryAt(at(5 * D))),
            // At or after the deadline: give up.
            (21, 5 * D, Decision::Expire),
            (21, 6 * D, Decision::Expire),
        ];
        for (attempts, now, want) in rows {
            assert_eq!(
                policy.next_attempt(ARRIVAL, attempts, at(now), &mut rng),
                want,
                "attempt {attempts} at +{now}s"
            );
        }
    }

    #[test]
    fn jitter_stays_within_ten_percent_and_varies() {
        let policy = Policy::default();
        let mut rng = StdRng::seed_from_u64(7);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..500 {
            let Decision::RetryAt(t) = policy.next_attempt(ARRIVAL, 5, ARRIVAL, &mut rng) else {
                panic!("expired on the first day");
            };
            let delay = t.0 - ARRIVAL.0;
            assert!((3240..=3960).contains(&delay), "{delay}");
            seen.insert(delay);
        }
        assert!(seen.len() > 50, "jitter barely varies: {}", seen.len());
    }

    #[test]
    fn jitter_never_goes_below_one_second() {
        let jitter = Jitter::percent(50).unwrap();
        let mut rng = StdRng::seed_from_u64(3);
        for secs in [1, 2, 3] {
            for _ in 0..50 {
                assert!(
                    jitter.apply(Duration::from_secs(secs), &mut rng) >= Duration::from_secs(1)
                );
            }
        }
        assert_eq!(
            Jitter::percent(51),
            Err(PolicyError::JitterTooLarge { percent: 51 })
        );
        assert_eq!(Jitter::default().as_percent(), 10);
    }

    #[test]
    fn delay_warning_table() {
        let on = Policy::default();
        let off = Policy {
            delay_warning: None,
            ..Policy::default()
        };
        // (policy, now offset, already warned, expected)
        let rows = [
            (&on, 0, false, false),
            (&on, 4 * H - 1, false, false),
            (&on, 4 * H, false, true),
            (&on, 2 * D, false, true),
            (&on, 2 * D, true, false),
            // Expired: the failure DSN replaces the warning.
            (&on, 5 * D, false, false),
            (&off, 4 * H, false, false),
            (&off, 2 * D, false, false),
        ];
        for (policy, now, warned, want) in rows {
            assert_eq!(
                should_warn_delay(ARRIVAL, at(now), warned, policy),
                want,
                "now +{now}s warned {warned} warning {:?}",
                policy.delay_warning
            );
        }
    }

    #[test]
    fn a_warning_time_past_expiry_never_fires() {
        let policy = Policy {
            delay_warning: Some(Duration::from_secs(6 * D)),
            ..Policy::default()
        };
        assert_eq!(policy.delay_warning_at(ARRIVAL), None);
        assert!(!should_warn_delay(ARRIVAL, at(5 * D + 1), false, &policy));
    }
}
