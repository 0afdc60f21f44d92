//! The balloon device: host-side state, configuration space, features, and
//! the [`VirtioDevice`] implementation the transport drives.

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use virtio_device::activation::{check_acked_features, QueueSlots, Registrations};
use virtio_device::queue::ActiveQueue;
use virtio_device::{
    ActivateError, Activation, GuestRam, VirtioDevice, VirtioInterrupt, TYPE_BALLOON,
};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use crate::ballooned::BalloonedPages;
use crate::config::{
    mib_to_pages, BalloonConfig, ConfigSpace, QUEUE_SIZE, VIRTIO_BALLOON_F_MUST_TELL_HOST,
    VIRTIO_BALLOON_F_STATS_VQ,
};
use crate::inflate::{handle_deflate, handle_inflate, record_inflate};
use crate::metrics::BalloonMetrics;
use crate::queues::{drain, QueueLayout};
use crate::release::{pfn_runs, MadviseReleaser, Releaser};
use crate::release_worker::ReleaseWorker;
use crate::reporting::handle_report;
use crate::stats::{give_back_stats_buffer, take_stats_buffers, BalloonStats};
use crate::BalloonError;

/// What each queue is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum QueueRole {
    Inflate,
    Deflate,
    Stats,
    Reporting,
}

/// Everything that exists only between activation and reset.
pub(crate) struct Active {
    pub mem: GuestRam,
    pub acked_features: u64,
    pub layout: QueueLayout,
    pub inflate: ActiveQueue,
    pub deflate: ActiveQueue,
    pub stats: Option<ActiveQueue>,
    pub reporting: Option<ActiveQueue>,
    pub interrupt: Arc<dyn VirtioInterrupt>,
    pub ballooned: BalloonedPages,
    /// Head of the statistics buffer the device holds until the next
    /// polling tick. Invariant: `Some` only with a stats queue, and then a
    /// valid head index of it that is in no used ring entry yet.
    pub stats_held: Option<u16>,
    /// Releases inflated pages in the background. `Some` only when the
    /// driver acked `MUST_TELL_HOST` (and the thread could be started);
    /// then every path that gives pages back to the driver drains it first
    /// (see [`crate::release_worker`]). `None`: releases are synchronous.
    pub release_worker: Option<ReleaseWorker>,
}

impl Active {
    /// Waits until every release handed to the worker is done; counts the
    /// wait if there was one. Call before giving pages back to the driver.
    fn drain_releases(&self, metrics: &mut BalloonMetrics) {
        if self
            .release_worker
            .as_ref()
            .is_some_and(ReleaseWorker::drain)
        {
            metrics.release_waits += 1;
        }
    }

    /// The queues in use, with their roles.
    pub fn queues(&self) -> impl Iterator<Item = (QueueRole, &ActiveQueue)> {
        [
            Some((QueueRole::Inflate, &self.inflate)),
            Some((QueueRole::Deflate, &self.deflate)),
            self.stats.as_ref().map(|q| (QueueRole::Stats, q)),
            self.reporting.as_ref().map(|q| (QueueRole::Reporting, q)),
        ]
        .into_iter()
        .flatten()
    }

    fn into_events(self) -> impl Iterator<Item = EventFd> {
        [
            Some(self.inflate),
            Some(self.deflate),
            self.stats,
            self.reporting,
        ]
        .into_iter()
        .flatten()
        .map(|q| q.event)
    }
}

/// A virtio-balloon device.
///
/// Invariants: `config.amount_mib * 256 == config_space.num_pages` (both
/// change together, and only through [`Balloon::set_target_mib`]); the
/// offered features and the number of queues are fixed at creation; the
/// statistics timer is armed only while a stats queue is active and the
/// polling interval is non-zero.
pub struct Balloon {
    pub(crate) config: BalloonConfig,
    pub(crate) offered_features: u64,
    queue_sizes: Vec<u16>,
    pub(crate) config_space: ConfigSpace,
    pub(crate) active: Option<Active>,
    /// The event loop's registrations of the queue eventfds.
    pub(crate) registrations: Registrations,
    /// Periodic statistics requests; non-blocking.
    pub(crate) stats_timer: TimerFd,
    pub(crate) timer_registered: bool,
    /// Shared with the release worker of the current activation.
    releaser: Arc<dyn Releaser>,
    /// Run first on each release worker thread (see
    /// [`Balloon::set_worker_start`]).
    worker_start: Option<crate::ThreadStart>,
    pub(crate) metrics: BalloonMetrics,
    last_stats: Option<BalloonStats>,
}

impl std::fmt::Debug for Balloon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Balloon")
            .field("config", &self.config)
            .field(
                "offered_features",
                &format_args!("{:#x}", self.offered_features),
            )
            .field("config_space", &self.config_space)
            .field("activated", &self.active.is_some())
            .field("metrics", &self.metrics)
            .finish_non_exhaustive()
    }
}

fn set_nonblocking(fd: i32) -> std::io::Result<()> {
    // SAFETY: fcntl on a descriptor we own, with no pointer arguments.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

impl Balloon {
    /// A device releasing memory with `madvise`.
    pub fn new(cfg: BalloonConfig) -> Result<Self, BalloonError> {
        Self::with_releaser(cfg, Arc::new(MadviseReleaser))
    }

    /// A device releasing memory through `releaser`.
    pub fn with_releaser(
        cfg: BalloonConfig,
        releaser: Arc<dyn Releaser>,
    ) -> Result<Self, BalloonError> {
        let num_pages = cfg.target_pages()?;
        let offered_features = cfg.offered_features();
        let queues = QueueLayout::from_features(offered_features).len();
        let registrations = Registrations::new().map_err(BalloonError::EventFd)?;
        let stats_timer = TimerFd::new().map_err(|e| BalloonError::Timer(e.into()))?;
        // A tick may be consumed or cancelled between epoll and our read.
        set_nonblocking(stats_timer.as_raw_fd()).map_err(BalloonError::Timer)?;
        Ok(Balloon {
            config: cfg,
            offered_features,
            queue_sizes: vec![QUEUE_SIZE; queues],
            config_space: ConfigSpace {
                num_pages,
                actual: 0,
            },
            active: None,
            registrations,
            stats_timer,
            timer_registered: false,
            releaser,
            worker_start: None,
            metrics: BalloonMetrics::default(),
            last_stats: None,
        })
    }

    /// Makes every release worker thread run `start` before it releases
    /// anything (the VMM installs the thread's seccomp filter with it). A
    /// worker whose `start` fails is not used: that activation releases
    /// synchronously instead.
    pub fn set_worker_start(&mut self, start: crate::ThreadStart) {
        self.worker_start = Some(start);
    }

    /// The configuration now: `amount_mib` is the latest target and
    /// `stats_polling_interval_s` the latest interval.
    pub fn config(&self) -> BalloonConfig {
        self.config
    }

    /// Sets the target to `mib` MiB (`num_pages = mib * 256`) and, when the
    /// device is active, tells the driver with a configuration change
    /// interrupt. The new target stands even if the interrupt fails.
    /// Checking the target against the guest's RAM is the caller's job.
    pub fn set_target_mib(&mut self, mib: u32) -> Result<(), BalloonError> {
        let pages = mib_to_pages(mib).ok_or(BalloonError::TargetTooLarge { mib })?;
        self.config.amount_mib = mib;
        self.config_space.num_pages = pages;
        if let Some(active) = &self.active {
            if let Err(e) = active.interrupt.notify_config() {
                self.metrics.interrupt_errors += 1;
                return Err(BalloonError::Interrupt(e));
            }
            self.metrics.config_notifications += 1;
        }
        Ok(())
    }

    /// The host's target in 4 KiB pages (`num_pages`).
    pub fn target_pages(&self) -> u32 {
        self.config_space.num_pages
    }

    /// Pages the driver says are in the balloon (`actual`, driver-written,
    /// untrusted).
    pub fn actual_pages(&self) -> u32 {
        self.config_space.actual
    }

    /// Pages the device saw inflated and not deflated since activation: the
    /// host's own count, whatever the driver writes to `actual`.
    pub fn inflated_pages(&self) -> u64 {
        self.active.as_ref().map_or(0, |a| a.ballooned.count())
    }

    /// Changes the statistics polling interval; 0 pauses polling. Only
    /// possible when the device was created with statistics (a non-zero
    /// interval), since the stats queue is offered at creation. A new
    /// non-zero interval also asks the driver for fresh values at once.
    pub fn set_stats_interval(&mut self, secs: u16) -> Result<(), BalloonError> {
        if self.offered_features & VIRTIO_BALLOON_F_STATS_VQ == 0 {
            return Err(BalloonError::StatsNotEnabled);
        }
        if secs == self.config.stats_polling_interval_s {
            return Ok(());
        }
        self.config.stats_polling_interval_s = secs;
        if self.active.as_ref().is_some_and(|a| a.stats.is_some()) {
            if secs > 0 {
                self.request_stats()?;
            }
            self.arm_stats_timer(Duration::from_secs(u64::from(secs)))?;
        }
        Ok(())
    }

    /// Arms the statistics timer to tick every `period`; zero disarms it.
    pub(crate) fn arm_stats_timer(&mut self, period: Duration) -> Result<(), BalloonError> {
        let r = if period.is_zero() {
            self.stats_timer.clear()
        } else {
            self.stats_timer.reset(period, Some(period))
        };
        r.map_err(|e| BalloonError::Timer(e.into()))
    }

    /// The last statistics the driver sent, with their time.
    pub fn stats(&self) -> Option<BalloonStats> {
        self.last_stats.clone()
    }

    /// Counters, including one per rejection reason; the release calls
    /// include those the release worker has made so far.
    pub fn metrics(&self) -> BalloonMetrics {
        let mut m = self.metrics.clone();
        if let Some(w) = self.active.as_ref().and_then(|a| a.release_worker.as_ref()) {
            w.tally().add_to(&mut m);
        }
        m
    }

    /// Waits until every inflated page the device has acknowledged so far
    /// has been released to the host (a no-op when releases are
    /// synchronous).
    pub fn wait_for_releases(&mut self) {
        if let Some(a) = &self.active {
            a.drain_releases(&mut self.metrics);
        }
    }

    /// Whether the driver activated the device (and has not reset it).
    pub fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    /// Features the driver acked, while active.
    pub fn acked_features(&self) -> Option<u64> {
        self.active.as_ref().map(|a| a.acked_features)
    }

    /// Which transport queue index does what, while active.
    pub fn queue_layout(&self) -> Option<QueueLayout> {
        self.active.as_ref().map(|a| a.layout)
    }

    /// Processes the inflate queue: every PFN of guest RAM is recorded and
    /// released, coalesced; every buffer is returned. With a release
    /// worker the PFNs of all the buffers taken are released by it, after
    /// the buffers are returned; else each buffer's before it is returned.
    pub fn process_inflate_queue(&mut self) -> Result<(), BalloonError> {
        let Balloon {
            active,
            releaser,
            metrics,
            ..
        } = self;
        let a = active.as_mut().ok_or(BalloonError::NotActivated)?;
        let Active {
            mem,
            inflate,
            ballooned,
            interrupt,
            release_worker,
            ..
        } = a;
        let more = match release_worker {
            Some(worker) => {
                let mut pfns = Vec::new();
                let more = drain(inflate, mem, metrics, |chain, size, m| {
                    record_inflate(chain, size, ballooned, m, &mut pfns)
                });
                // Ranges are submitted with `&mut self`, so no deflate or
                // report can be processed before this submission is in
                // the worker's queue, and each such processing drains it.
                if !pfns.is_empty() {
                    worker.submit(pfn_runs(&mut pfns));
                    metrics.deferred_releases += 1;
                }
                more
            }
            None => drain(inflate, mem, metrics, |chain, size, m| {
                handle_inflate(chain, size, ballooned, releaser.as_ref(), m)
            }),
        };
        inflate.finish_round(mem, interrupt.as_ref(), more, metrics);
        Ok(())
    }

    /// Processes the deflate queue: bookkeeping only; every buffer is
    /// returned (which, with `MUST_TELL_HOST`, lets the driver reuse them).
    /// Pending releases are drained first, so no page named in a returned
    /// buffer is released afterwards.
    pub fn process_deflate_queue(&mut self) -> Result<(), BalloonError> {
        let Balloon {
            active, metrics, ..
        } = self;
        let a = active.as_mut().ok_or(BalloonError::NotActivated)?;
        a.drain_releases(metrics);
        let Active {
            mem,
            deflate,
            ballooned,
            interrupt,
            ..
        } = a;
        let more = drain(deflate, mem, metrics, |chain, size, m| {
            handle_deflate(chain, size, ballooned, m)
        });
        deflate.finish_round(mem, interrupt.as_ref(), more, metrics);
        Ok(())
    }

    /// Processes the free page reporting queue: every reported range is
    /// released, coalesced, before its buffer is returned (the driver
    /// reuses the pages at once). Pending inflate releases are drained
    /// first.
    pub fn process_reporting_queue(&mut self) -> Result<(), BalloonError> {
        let Balloon {
            active,
            releaser,
            metrics,
            ..
        } = self;
        let a = active.as_mut().ok_or(BalloonError::NotActivated)?;
        if a.reporting.is_none() {
            return Err(BalloonError::QueueNotNegotiated("free page reporting"));
        }
        a.drain_releases(metrics);
        let Active {
            mem,
            reporting,
            interrupt,
            ..
        } = a;
        let q = reporting
            .as_mut()
            .ok_or(BalloonError::QueueNotNegotiated("free page reporting"))?;
        let more = drain(q, mem, metrics, |chain, size, m| {
            handle_report(chain, size, releaser.as_ref(), m)
        });
        q.finish_round(mem, interrupt.as_ref(), more, metrics);
        Ok(())
    }

    /// Processes the statistics queue: a posted buffer is parsed and held
    /// until the next polling tick. Should the driver post another valid
    /// one while one is held, the older one is returned. Invalid buffers
    /// are returned at once and change nothing.
    pub fn process_stats_queue(&mut self) -> Result<(), BalloonError> {
        let Balloon {
            active,
            metrics,
            last_stats,
            ..
        } = self;
        let a = active.as_mut().ok_or(BalloonError::NotActivated)?;
        let Active {
            mem,
            stats,
            stats_held,
            interrupt,
            ..
        } = a;
        let q = stats
            .as_mut()
            .ok_or(BalloonError::QueueNotNegotiated("statistics"))?;
        let more = take_stats_buffers(q, mem, stats_held, last_stats, metrics);
        q.finish_round(mem, interrupt.as_ref(), more, metrics);
        Ok(())
    }

    /// The polling tick: returns the held statistics buffer so the driver
    /// refills it, and interrupts. Returns whether a buffer was held.
    pub fn request_stats(&mut self) -> Result<bool, BalloonError> {
        let Balloon {
            active, metrics, ..
        } = self;
        let a = active.as_mut().ok_or(BalloonError::NotActivated)?;
        let q = a
            .stats
            .as_mut()
            .ok_or(BalloonError::QueueNotNegotiated("statistics"))?;
        let returned = give_back_stats_buffer(q, &a.mem, &mut a.stats_held, metrics);
        q.finish_round(&a.mem, a.interrupt.as_ref(), false, metrics);
        Ok(returned)
    }

    /// Processes the queue with `role`.
    pub(crate) fn process_queue(&mut self, role: QueueRole) -> Result<(), BalloonError> {
        match role {
            QueueRole::Inflate => self.process_inflate_queue(),
            QueueRole::Deflate => self.process_deflate_queue(),
            QueueRole::Stats => self.process_stats_queue(),
            QueueRole::Reporting => self.process_reporting_queue(),
        }
    }

    /// Processes every negotiated queue once (e.g. for notifications the
    /// driver sent before the event loop listened).
    pub fn process_all_queues(&mut self) -> Result<(), BalloonError> {
        let roles: Vec<QueueRole> = self
            .active
            .as_ref()
            .ok_or(BalloonError::NotActivated)?
            .queues()
            .map(|(role, _)| role)
            .collect();
        for role in roles {
            self.process_queue(role)?;
        }
        Ok(())
    }

    fn stats_period(&self) -> Duration {
        Duration::from_secs(u64::from(self.config.stats_polling_interval_s))
    }
}

impl VirtioDevice for Balloon {
    fn device_type(&self) -> u32 {
        TYPE_BALLOON
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn device_features(&self) -> u64 {
        self.offered_features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        self.config_space.read(offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let ignored = self.config_space.write(offset, data);
        self.metrics.config_writes_ignored += ignored as u64;
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        if self.active.is_some() {
            return Err(ActivateError("the balloon is already active".into()));
        }
        let Activation {
            mem,
            acked_features,
            queues,
            queue_events,
            interrupt,
        } = activation;
        check_acked_features("balloon", self.offered_features, acked_features)?;
        let layout = QueueLayout::from_features(acked_features);
        let mut slots = QueueSlots::new(queues, queue_events);
        let inflate = slots.take(layout.inflate, "inflate")?;
        let deflate = slots.take(layout.deflate, "deflate")?;
        let stats = layout
            .stats
            .map(|i| slots.take(i, "statistics"))
            .transpose()?;
        let reporting = layout
            .reporting
            .map(|i| slots.take(i, "free page reporting"))
            .transpose()?;
        let has_stats = stats.is_some();
        let release_worker = if acked_features & VIRTIO_BALLOON_F_MUST_TELL_HOST != 0 {
            // Without a thread the device releases synchronously, which is
            // always correct, only slower.
            ReleaseWorker::spawn(mem.clone(), Arc::clone(&self.releaser), self.worker_start).ok()
        } else {
            None
        };
        self.active = Some(Active {
            ballooned: BalloonedPages::new(&mem),
            mem,
            acked_features,
            layout,
            inflate,
            deflate,
            stats,
            reporting,
            interrupt,
            stats_held: None,
            release_worker,
        });
        if let Err(e) = self.registrations.activated("balloon") {
            self.active = None;
            return Err(e);
        }
        if has_stats && self.arm_stats_timer(self.stats_period()).is_err() {
            // Statistics stop; inflation and deflation still work.
            self.metrics.event_errors += 1;
        }
        self.metrics.activations += 1;
        Ok(())
    }

    /// Returns the device to its initial state. Pending releases are
    /// drained first: after a reset the driver (or a rebooted guest) owns
    /// every page again.
    fn reset(&mut self) {
        let events = self.active.take().map(|mut active| {
            active.drain_releases(&mut self.metrics);
            if let Some(worker) = active.release_worker.take() {
                worker.tally().add_to(&mut self.metrics);
            }
            self.metrics.resets += 1;
            active.into_events()
        });
        if self.stats_timer.clear().is_err() {
            self.metrics.event_errors += 1;
        }
        self.config_space.actual = 0;
        // Lets the event loop drop the retired eventfds.
        if self
            .registrations
            .reset(events.into_iter().flatten())
            .is_err()
        {
            self.metrics.event_errors += 1;
        }
    }
}

#[cfg(test)]
mod tests;
