//! The paravirtual idle port: how a guest that cannot `hlt` sleeps.
//!
//! The embedded tiny guest runs at CPL3 with interrupts off and polls its
//! devices; without this port every idle tiny VM busy-spins a host core.
//! Instead it writes the longest it may sleep, in microseconds, to port
//! [`IDLE_PORT`] (`out dx, eax`, little endian; 1- and 2-byte writes count
//! too). The vCPU thread then blocks in the VMM until that deadline, at
//! most [`MAX_SLEEP`], or until something the guest may be polling for
//! happens to this VM ([`IdleWake::wake`]): a device put buffers in a used
//! ring or changed its configuration (every virtio interrupt, raised or
//! suppressed by the driver), or the VM is stopping or parking. The write
//! then completes and the guest looks again.
//!
//! A sleep is only a hint: it may end early at any time (a wake meant for
//! another vCPU, an event the guest does not care about), so guests loop.
//! Wakes are never lost: an event that comes after the vCPU's previous
//! sleep ended and before it asks to sleep again makes that sleep return at
//! once, so a guest that checks its rings and then sleeps cannot sleep
//! through work that arrived in between. [`MAX_SLEEP`] bounds what a
//! missed wake (an event source not wired here) would cost: latency, never
//! a hang. A 32-bit read of the port returns [`IDLE_MAGIC`] ("IDLE"), so
//! a guest can tell that sleeps really wait for news (other widths read
//! all ones, as an unclaimed port does).
//!
//! Under QEMU the port is unclaimed: writes return at once and the guest
//! polls as before.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// The idle port. Next to the debug-exit port (0xf4-0xf7); nothing on the
/// microVM machine model (or QEMU's microvm) claims it.
pub const IDLE_PORT: u16 = 0xf8;
/// Ports claimed: a 32-bit write.
pub const IDLE_PORT_LEN: u16 = 4;

/// What a 32-bit read of [`IDLE_PORT`] returns: "IDLE", little endian.
pub const IDLE_MAGIC: u32 = 0x454c_4449;

/// Fills `data` for a guest read of [`IDLE_PORT`].
pub fn read(data: &mut [u8]) {
    if data.len() == 4 {
        data.copy_from_slice(&IDLE_MAGIC.to_le_bytes());
    } else {
        data.fill(0xff);
    }
}

/// The longest one sleep lasts, whatever the guest asks: bounds the cost
/// of a missed wake (an event source not wired to [`IdleWake`]) to this
/// much latency. Every source we have is wired, so it is long: an idle
/// guest costs one VM exit (~30 µs on PVM hosts) plus its own re-check
/// per period, ~0.003 % of a core for `tiny.hold=forever`.
pub const MAX_SLEEP: Duration = Duration::from_secs(1);

/// The sleep a guest asked for by writing `data` to [`IDLE_PORT`]:
/// `data` read as a little-endian count of microseconds, capped at
/// [`MAX_SLEEP`]. Guest-controlled: any width and value are accepted.
pub fn requested_sleep(data: &[u8]) -> Duration {
    let mut le = [0u8; 8];
    let n = data.len().min(le.len());
    le[..n].copy_from_slice(&data[..n]);
    Duration::from_micros(u64::from_le_bytes(le)).min(MAX_SLEEP)
}

/// One VM's wake-up call for its sleeping vCPUs, shared by the vCPU
/// threads, the device threads (through the virtio transport), the exit
/// signal and the park request.
#[derive(Default)]
pub struct IdleWake {
    state: Mutex<WakeState>,
    woken: Condvar,
    metrics: IdleMetrics,
}

#[derive(Default)]
struct WakeState {
    /// Bumped by every [`IdleWake::wake`]; each vCPU remembers the value
    /// it last saw, so an event between two sleeps ends the next at once.
    generation: u64,
    /// vCPU threads waiting now: wakes without one skip the futex call.
    sleepers: u32,
}

/// What the idle port did, for benchmarks and tests (all since boot).
#[derive(Debug, Default)]
pub struct IdleMetrics {
    /// Writes to the port.
    pub sleeps: AtomicU64,
    /// Sleeps that ended because of a wake (or returned at once because
    /// one came before them).
    pub woken: AtomicU64,
    /// Sleeps that lasted until their deadline.
    pub timed_out: AtomicU64,
    /// Wakes raised (events that would end a sleep).
    pub wakes: AtomicU64,
}

/// A vCPU's side of [`IdleWake`]: the last generation it saw.
#[derive(Debug, Default)]
pub struct Sleeper {
    seen: u64,
}

/// How a sleep ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Woke {
    /// An event since the vCPU's previous sleep, or during this one.
    Event,
    /// The deadline passed.
    Deadline,
}

impl IdleWake {
    fn state(&self) -> MutexGuard<'_, WakeState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Something the guest may be waiting for happened: ends every sleep
    /// now and the next sleep of each vCPU that has not seen it. Cheap
    /// when no vCPU sleeps (a lock, no system call).
    pub fn wake(&self) {
        let sleepers = {
            let mut state = self.state();
            state.generation = state.generation.wrapping_add(1);
            state.sleepers
        };
        self.metrics.wakes.fetch_add(1, Ordering::Relaxed);
        if sleepers > 0 {
            self.woken.notify_all();
        }
    }

    /// Blocks the calling vCPU thread for up to `max`, or until a wake
    /// that `me` has not seen yet.
    pub fn sleep(&self, me: &mut Sleeper, max: Duration) -> Woke {
        self.metrics.sleeps.fetch_add(1, Ordering::Relaxed);
        // A deadline past the end of time cannot come from MAX_SLEEP.
        let deadline = Instant::now().checked_add(max);
        let mut state = self.state();
        state.sleepers += 1;
        let woke = loop {
            if state.generation != me.seen {
                break Woke::Event;
            }
            let left = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()),
                None => Duration::ZERO,
            };
            if left.is_zero() {
                break Woke::Deadline;
            }
            state = self
                .woken
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        };
        state.sleepers -= 1;
        me.seen = state.generation;
        drop(state);
        let counter = match woke {
            Woke::Event => &self.metrics.woken,
            Woke::Deadline => &self.metrics.timed_out,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        woke
    }

    /// The counters.
    pub fn metrics(&self) -> &IdleMetrics {
        &self.metrics
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_32_bit_read_says_the_port_is_served() {
        let mut word = [0u8; 4];
        read(&mut word);
        assert_eq!(&word, b"IDLE");
        let mut byte = [0u8; 1];
        read(&mut byte);
        assert_eq!(byte, [0xff]);
    }

    #[test]
    fn the_guest_value_is_microseconds_capped() {
        assert_eq!(requested_sleep(&[]), Duration::ZERO);
        assert_eq!(requested_sleep(&[0xe8, 0x03]), Duration::from_millis(1));
        assert_eq!(
            requested_sleep(&5000u32.to_le_bytes()),
            Duration::from_millis(5)
        );
        assert_eq!(requested_sleep(&u32::MAX.to_le_bytes()), MAX_SLEEP);
        assert_eq!(requested_sleep(&[0xff; 16]), MAX_SLEEP);
    }

    #[test]
    fn a_sleep_lasts_until_its_deadline_without_events() {
        let wake = IdleWake::default();
        let mut me = Sleeper::default();
        let t0 = Instant::now();
        assert_eq!(
            wake.sleep(&mut me, Duration::from_millis(20)),
            Woke::Deadline
        );
        assert!(t0.elapsed() >= Duration::from_millis(20));
        assert_eq!(wake.sleep(&mut me, Duration::ZERO), Woke::Deadline);
    }

    #[test]
    fn an_event_before_the_sleep_is_not_lost() {
        let wake = IdleWake::default();
        let mut me = Sleeper::default();
        wake.wake();
        // Far longer than the test may take: only the earlier wake ends it.
        assert_eq!(wake.sleep(&mut me, Duration::from_secs(3600)), Woke::Event);
        // Seen now: the next sleep waits again.
        assert_eq!(
            wake.sleep(&mut me, Duration::from_millis(1)),
            Woke::Deadline
        );
    }

    #[test]
    fn a_wake_ends_every_sleeping_vcpu() {
        let wake = Arc::new(IdleWake::default());
        let sleepers: Vec<_> = (0..3)
            .map(|_| {
                let wake = wake.clone();
                std::thread::spawn(move || {
                    let mut me = Sleeper::default();
                    wake.sleep(&mut me, Duration::from_secs(3600))
                })
            })
            .collect();
        while wake.state().sleepers < 3 {
            std::thread::yield_now();
        }
        wake.wake();
        for s in sleepers {
            assert_eq!(s.join().unwrap(), Woke::Event);
        }
        assert_eq!(wake.metrics().woken.load(Ordering::Relaxed), 3);
    }
}
