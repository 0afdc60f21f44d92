//! What every device's counters share: saturating counters, one counter
//! per rejection reason ([`crate::rejections!`]), and the counting of the
//! shared queue code ([`crate::queue_counters!`]).
//!
//! Counters are plain integers that only grow, saturating: a device is
//! used behind a lock, and callers snapshot its whole metrics struct.

/// Adds one to a counter, saturating.
pub fn bump(counter: &mut u64) {
    *counter = counter.saturating_add(1);
}

/// Declares a device's rejection reasons and its counters of them: the
/// enum `$reason` (with `ALL`, every reason in declaration order), the
/// struct `$counters` with one `u64` field per reason (serialized with
/// serde, so the calling crate depends on `serde`), and
/// `From<ChainFault>` for `$reason`.
///
/// Invariants: each reason has its own counter (the field named after
/// it); every device has a reason named after each [`ChainFault`] variant
/// (`QueueBroken`, `BadHeadIndex`, `UsedRingError`, `EmptyChain`,
/// `LoopingChain`, `BrokenChain`, `DescriptorOutsideMemory`), under which
/// the shared chain and queue code's faults are counted.
///
/// [`ChainFault`]: crate::chain::ChainFault
///
/// ```
/// virtio_device::rejections! {
///     /// Why the device refused something.
///     pub enum RejectReason {
///         /// A request of an unknown type.
///         UnknownType => unknown_type,
///         EmptyChain => empty_chain,
///         LoopingChain => looping_chain,
///         BrokenChain => broken_chain,
///         DescriptorOutsideMemory => descriptor_outside_memory,
///         QueueBroken => queue_broken,
///         UsedRingError => used_ring_error,
///         BadHeadIndex => bad_head_index,
///     }
///     /// One counter per [`RejectReason`].
///     pub struct Rejections;
/// }
/// let mut r = Rejections::default();
/// r.add(RejectReason::UnknownType, 2);
/// assert_eq!((r.unknown_type, r.total()), (2, 2));
/// ```
#[macro_export]
macro_rules! rejections {
    (
        $(#[$reason_meta:meta])*
        pub enum $reason:ident {
            $($(#[$variant_meta:meta])* $variant:ident => $field:ident,)*
        }
        $(#[$counters_meta:meta])*
        pub struct $counters:ident;
    ) => {
        $(#[$reason_meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $reason {
            $($(#[$variant_meta])* $variant,)*
        }

        impl $reason {
            /// Every reason, in declaration order.
            pub const ALL: &'static [$reason] = &[$($reason::$variant),*];
        }

        $(#[$counters_meta])*
        #[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
        pub struct $counters {
            $(pub $field: u64,)*
        }

        impl $counters {
            /// Counts `n` rejections for `reason`, saturating.
            pub fn add(&mut self, reason: $reason, n: u64) {
                let counter = match reason {
                    $($reason::$variant => &mut self.$field,)*
                };
                *counter = counter.saturating_add(n);
            }

            /// The counter for `reason`.
            pub fn count(&self, reason: $reason) -> u64 {
                match reason {
                    $($reason::$variant => self.$field,)*
                }
            }

            /// All rejections together.
            pub fn total(&self) -> u64 {
                $reason::ALL
                    .iter()
                    .fold(0u64, |sum, r| sum.saturating_add(self.count(*r)))
            }
        }

        impl From<$crate::chain::ChainFault> for $reason {
            fn from(fault: $crate::chain::ChainFault) -> Self {
                use $crate::chain::ChainFault;
                match fault {
                    ChainFault::QueueBroken => $reason::QueueBroken,
                    ChainFault::BadHeadIndex => $reason::BadHeadIndex,
                    ChainFault::UsedRingError => $reason::UsedRingError,
                    ChainFault::EmptyChain => $reason::EmptyChain,
                    ChainFault::LoopingChain => $reason::LoopingChain,
                    ChainFault::BrokenChain => $reason::BrokenChain,
                    ChainFault::DescriptorOutsideMemory => $reason::DescriptorOutsideMemory,
                }
            }
        }
    };
}

/// Implements [`QueueCounters`] for a device's metrics struct `$metrics`,
/// which has a `rejections` field declared with [`crate::rejections!`]
/// (chain faults are counted there under their reasons) and the counters
/// `used_notifications` (used-buffer interrupts raised),
/// `interrupt_errors` (interrupts that could not be raised) and
/// `event_errors` (events that could not be signalled).
///
/// [`QueueCounters`]: crate::queue::QueueCounters
#[macro_export]
macro_rules! queue_counters {
    ($metrics:ty) => {
        impl $crate::queue::QueueCounters for $metrics {
            fn chain_fault(&mut self, fault: $crate::chain::ChainFault) {
                self.rejections.add(fault.into(), 1);
            }

            fn round_end(&mut self, end: $crate::queue::RoundEnd) {
                end.count(
                    &mut self.used_notifications,
                    &mut self.interrupt_errors,
                    &mut self.event_errors,
                );
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use crate::chain::ChainFault;
    use crate::queue::{QueueCounters, RoundEnd};

    crate::rejections! {
        /// Reasons of a test device.
        pub enum Reason {
            EmptyChain => empty_chain,
            LoopingChain => looping_chain,
            BrokenChain => broken_chain,
            DescriptorOutsideMemory => descriptor_outside_memory,
            /// One of its own.
            TooOdd => too_odd,
            QueueBroken => queue_broken,
            UsedRingError => used_ring_error,
            BadHeadIndex => bad_head_index,
        }
        /// Its counters.
        pub struct Counters;
    }

    #[derive(Default)]
    struct Metrics {
        rejections: Counters,
        used_notifications: u64,
        interrupt_errors: u64,
        event_errors: u64,
    }

    crate::queue_counters!(Metrics);

    #[test]
    fn each_reason_has_its_own_counter() {
        let mut c = Counters::default();
        for (i, r) in Reason::ALL.iter().enumerate() {
            c.add(*r, i as u64 + 1);
        }
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(c.count(*r), i as u64 + 1, "{r:?}");
        }
        let n = Reason::ALL.len() as u64;
        assert_eq!(c.total(), n * (n + 1) / 2);
        c.add(Reason::TooOdd, u64::MAX);
        assert_eq!((c.too_odd, c.total()), (u64::MAX, u64::MAX), "saturating");
    }

    #[test]
    fn chain_faults_count_under_their_names() {
        let faults = [
            (ChainFault::QueueBroken, Reason::QueueBroken),
            (ChainFault::BadHeadIndex, Reason::BadHeadIndex),
            (ChainFault::UsedRingError, Reason::UsedRingError),
            (ChainFault::EmptyChain, Reason::EmptyChain),
            (ChainFault::LoopingChain, Reason::LoopingChain),
            (ChainFault::BrokenChain, Reason::BrokenChain),
            (
                ChainFault::DescriptorOutsideMemory,
                Reason::DescriptorOutsideMemory,
            ),
        ];
        let mut m = Metrics::default();
        for (f, r) in faults {
            assert_eq!(Reason::from(f), r);
            m.chain_fault(f);
            assert_eq!(m.rejections.count(r), 1, "{f:?}");
        }
        assert_eq!(m.rejections.total(), faults.len() as u64);
    }

    #[test]
    fn a_round_end_counts_what_it_did() {
        let mut m = Metrics::default();
        m.round_end(RoundEnd::default());
        m.round_end(RoundEnd {
            interrupt: Some(true),
            event_failed: false,
        });
        m.round_end(RoundEnd {
            interrupt: Some(false),
            event_failed: true,
        });
        assert_eq!(
            (m.used_notifications, m.interrupt_errors, m.event_errors),
            (1, 1, 1)
        );
    }
}
