//! Stalled balloons: a guest asked to inflate that does not, or too
//! slowly to matter.
//!
//! Reclaim through a balloon is a request to the guest, and the guest may
//! not answer: its driver is wedged, it is busy, it is hostile, or it has
//! no memory it is willing to give after all. Waiting on such a balloon
//! while the host starves is how balloon-first reclaim turns into
//! kill-late reclaim. Android's host-side memory manager calls a balloon
//! that inflates slower than 15 MB/s stalled and backs off from it; so do
//! we: a balloon still short of its target that grew less than
//! [`STALL_RATE_MIB_S`] over a window of at least [`STALL_WINDOW`] is
//! **stalled**. The policy then stops counting on it (no more asks, it
//! does not hold up the decision) for [`STALL_BACKOFF`], and says so in a
//! `balloon_stalled` event.
//!
//! This module is the bookkeeping alone, a pure function of the times and
//! sizes it is shown, so that it can be tested without a guest.

use std::time::{Duration, Instant};

/// Slowest inflation that still counts as progress, in MiB/s (Android's
/// rule of 15 MB/s, rounded down to MiB).
pub const STALL_RATE_MIB_S: f64 = 14.0;
/// Shortest time over which the rate is judged: shorter windows make
/// slow-but-steady guests look stalled between two polls.
pub const STALL_WINDOW: Duration = Duration::from_secs(1);
/// How long a stalled balloon is left alone before it is asked again.
pub const STALL_BACKOFF: Duration = Duration::from_secs(30);

/// What one balloon is doing about the target it was asked for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum InflateState {
    /// It holds its target (or more); nothing is outstanding.
    Settled,
    /// Short of its target and moving at a useful rate, or not yet
    /// watched for a full window.
    Inflating,
    /// Short of its target and slower than [`STALL_RATE_MIB_S`] over the
    /// last window: `rate_mib_s` is what it managed. Reported once per
    /// window.
    Stalled { rate_mib_s: f64 },
    /// Stalled earlier and still within its back-off.
    BackingOff,
}

/// The watch over one balloon's inflation.
///
/// Invariant: `window_start` is `Some` exactly while a target above the
/// balloon's actual size is outstanding and not backed off from.
#[derive(Debug, Clone, Default)]
pub struct InflateWatch {
    /// The target last asked for, MiB.
    target_mib: u32,
    /// When the current window opened and the actual size then, MiB.
    window_start: Option<(Instant, u32)>,
    /// Until when the balloon is left alone.
    backoff_until: Option<Instant>,
}

impl InflateWatch {
    /// The policy asked for `target_mib` at `now`, while the balloon held
    /// `actual_mib`. A raise does not restart a window already open: a
    /// guest that is asked for more and more must still show progress.
    pub fn asked(&mut self, now: Instant, target_mib: u32, actual_mib: u32) {
        self.target_mib = target_mib;
        if actual_mib < target_mib && self.window_start.is_none() {
            self.window_start = Some((now, actual_mib));
        }
    }

    /// Whether the policy may count on this balloon (ask it for more) at
    /// `now`.
    pub fn usable(&self, now: Instant) -> bool {
        self.backoff_until.is_none_or(|t| now >= t)
    }

    /// The balloon holds `actual_mib` at `now`: how its inflation goes.
    pub fn observe(&mut self, now: Instant, actual_mib: u32) -> InflateState {
        if !self.usable(now) {
            return InflateState::BackingOff;
        }
        self.backoff_until = None;
        if actual_mib >= self.target_mib {
            self.window_start = None;
            return InflateState::Settled;
        }
        let Some((since, then_mib)) = self.window_start else {
            // Short of a target asked before a back-off ended: watch anew.
            self.window_start = Some((now, actual_mib));
            return InflateState::Inflating;
        };
        let elapsed = now.saturating_duration_since(since);
        if elapsed < STALL_WINDOW {
            return InflateState::Inflating;
        }
        let rate_mib_s = f64::from(actual_mib.saturating_sub(then_mib)) / elapsed.as_secs_f64();
        if rate_mib_s >= STALL_RATE_MIB_S {
            self.window_start = Some((now, actual_mib));
            return InflateState::Inflating;
        }
        self.window_start = None;
        self.backoff_until = Some(now + STALL_BACKOFF);
        InflateState::Stalled { rate_mib_s }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn a_balloon_that_keeps_up_is_never_stalled() {
        let t0 = Instant::now();
        let mut w = InflateWatch::default();
        w.asked(t0, 200, 0);
        // 100 MiB/s, polled every 100 ms.
        for i in 1..20u32 {
            let state = w.observe(at(t0, u64::from(i) * 100), i * 10);
            assert_eq!(state, InflateState::Inflating, "poll {i}");
        }
        assert_eq!(w.observe(at(t0, 2000), 200), InflateState::Settled);
        assert!(w.usable(at(t0, 2000)));
    }

    #[test]
    fn a_balloon_that_does_not_move_is_stalled_after_a_window_then_left_alone() {
        let t0 = Instant::now();
        let mut w = InflateWatch::default();
        w.asked(t0, 64, 8);
        assert_eq!(w.observe(at(t0, 500), 8), InflateState::Inflating);
        let InflateState::Stalled { rate_mib_s } = w.observe(at(t0, 1000), 10) else {
            panic!("2 MiB in 1 s is a stall");
        };
        assert!((rate_mib_s - 2.0).abs() < 1e-9, "{rate_mib_s}");
        assert!(!w.usable(at(t0, 1001)));
        assert_eq!(w.observe(at(t0, 5000), 64), InflateState::BackingOff);
        // Once the back-off is over it is watched again.
        let after = at(t0, 1000) + STALL_BACKOFF;
        assert!(w.usable(after));
        assert_eq!(w.observe(after, 20), InflateState::Inflating);
        assert!(matches!(
            w.observe(after + STALL_WINDOW, 20),
            InflateState::Stalled { .. }
        ));
    }

    #[test]
    fn raising_the_target_does_not_restart_the_window() {
        let t0 = Instant::now();
        let mut w = InflateWatch::default();
        w.asked(t0, 32, 0);
        w.asked(at(t0, 600), 48, 0);
        w.asked(at(t0, 900), 64, 1);
        assert!(matches!(
            w.observe(at(t0, 1000), 1),
            InflateState::Stalled { .. }
        ));
    }

    #[test]
    fn slow_but_above_the_rate_is_progress() {
        let t0 = Instant::now();
        let mut w = InflateWatch::default();
        w.asked(t0, 100, 0);
        assert_eq!(w.observe(at(t0, 1000), 15), InflateState::Inflating);
        // The next window is judged on its own: 5 MiB in it is a stall.
        assert_eq!(w.observe(at(t0, 1500), 18), InflateState::Inflating);
        assert!(matches!(
            w.observe(at(t0, 2000), 20),
            InflateState::Stalled { .. }
        ));
    }
}
