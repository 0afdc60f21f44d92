//! Host-side configuration, the feature bits and the device configuration
//! space (virtio 1.2, sections 5.5.3 and 5.5.4).

use virtio_device::VIRTIO_F_VERSION_1;

use crate::BalloonError;

/// The driver must tell the host before it reuses deflated pages.
pub const VIRTIO_BALLOON_F_MUST_TELL_HOST: u64 = 1 << 0;
/// A statistics queue is present.
pub const VIRTIO_BALLOON_F_STATS_VQ: u64 = 1 << 1;
/// The guest may deflate the balloon when it runs out of memory.
pub const VIRTIO_BALLOON_F_DEFLATE_ON_OOM: u64 = 1 << 2;
/// Free page hinting (a free_page_vq). Never offered.
pub const VIRTIO_BALLOON_F_FREE_PAGE_HINT: u64 = 1 << 3;
/// Page poisoning (`poison_val` in config space). Never offered.
pub const VIRTIO_BALLOON_F_PAGE_POISON: u64 = 1 << 4;
/// Free page reporting: a reporting_vq is present.
pub const VIRTIO_BALLOON_F_FREE_PAGE_REPORTING: u64 = 1 << 5;

/// The balloon's page size: PFNs on the inflate and deflate queues count
/// 4 KiB pages whatever the guest's own page size
/// (`VIRTIO_BALLOON_PFN_SHIFT` is 12).
pub const BALLOON_PAGE_SIZE: u64 = 4096;
/// `log2(BALLOON_PAGE_SIZE)`.
pub(crate) const BALLOON_PAGE_SHIFT: u32 = 12;
/// 4 KiB pages per MiB.
pub const PAGES_PER_MIB: u32 = 256;
/// Maximum size of every queue.
pub const QUEUE_SIZE: u16 = 256;

/// Size of the configuration space: `num_pages` and `actual`, le32 each.
/// `free_page_hint_cmd_id` and `poison_val` exist only with features we do
/// not offer.
pub(crate) const CONFIG_SPACE_SIZE: usize = 8;
const ACTUAL_OFFSET: usize = 4;

/// How the host wants the balloon, with Firecracker's field names and
/// meaning.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BalloonConfig {
    /// Target balloon size in MiB (`num_pages / 256`).
    pub amount_mib: u32,
    /// Offer `VIRTIO_BALLOON_F_DEFLATE_ON_OOM`.
    pub deflate_on_oom: bool,
    /// Seconds between statistics requests. Non-zero at creation offers
    /// `VIRTIO_BALLOON_F_STATS_VQ`; zero at creation means no stats queue.
    pub stats_polling_interval_s: u16,
    /// Offer `VIRTIO_BALLOON_F_FREE_PAGE_REPORTING`.
    pub free_page_reporting: bool,
}

impl BalloonConfig {
    /// The features a device created from this configuration offers:
    /// `VERSION_1` and `MUST_TELL_HOST` always, the others as configured.
    pub fn offered_features(&self) -> u64 {
        let mut features = VIRTIO_F_VERSION_1 | VIRTIO_BALLOON_F_MUST_TELL_HOST;
        if self.stats_polling_interval_s > 0 {
            features |= VIRTIO_BALLOON_F_STATS_VQ;
        }
        if self.deflate_on_oom {
            features |= VIRTIO_BALLOON_F_DEFLATE_ON_OOM;
        }
        if self.free_page_reporting {
            features |= VIRTIO_BALLOON_F_FREE_PAGE_REPORTING;
        }
        features
    }

    /// `amount_mib` in 4 KiB pages, or an error when it does not fit `u32`.
    pub fn target_pages(&self) -> Result<u32, BalloonError> {
        mib_to_pages(self.amount_mib).ok_or(BalloonError::TargetTooLarge {
            mib: self.amount_mib,
        })
    }
}

/// `mib` in 4 KiB pages; `None` when that does not fit the 32-bit
/// `num_pages` field (more than 16 TiB).
pub fn mib_to_pages(mib: u32) -> Option<u32> {
    mib.checked_mul(PAGES_PER_MIB)
}

/// `pages` 4 KiB pages in whole MiB, rounded down.
pub fn pages_to_mib(pages: u32) -> u32 {
    pages / PAGES_PER_MIB
}

/// The device configuration space.
///
/// Invariant: only `actual` is writable by the driver; `num_pages` changes
/// only through the host API.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ConfigSpace {
    /// Host target in 4 KiB pages (le32 at offset 0).
    pub num_pages: u32,
    /// Pages the driver says are in the balloon (le32 at offset 4).
    pub actual: u32,
}

impl ConfigSpace {
    fn bytes(&self) -> [u8; CONFIG_SPACE_SIZE] {
        let mut b = [0u8; CONFIG_SPACE_SIZE];
        b[..ACTUAL_OFFSET].copy_from_slice(&self.num_pages.to_le_bytes());
        b[ACTUAL_OFFSET..].copy_from_slice(&self.actual.to_le_bytes());
        b
    }

    /// Fills `data` from `offset`; bytes past the end read as zero.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        let bytes = self.bytes();
        for (i, out) in data.iter_mut().enumerate() {
            *out = offset
                .checked_add(i as u64)
                .and_then(|o| usize::try_from(o).ok())
                .and_then(|o| bytes.get(o).copied())
                .unwrap_or(0);
        }
    }

    /// Applies a driver write. Bytes that fall on `actual` update it (a
    /// partial write changes only those bytes); all others are read-only or
    /// past the end and are ignored. Returns how many bytes were ignored.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> usize {
        let mut actual = self.actual.to_le_bytes();
        let mut ignored = 0;
        for (i, &b) in data.iter().enumerate() {
            let pos = offset
                .checked_add(i as u64)
                .and_then(|o| usize::try_from(o).ok());
            match pos {
                Some(p) if (ACTUAL_OFFSET..CONFIG_SPACE_SIZE).contains(&p) => {
                    actual[p - ACTUAL_OFFSET] = b;
                }
                _ => ignored += 1,
            }
        }
        self.actual = u32::from_le_bytes(actual);
        ignored
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_follow_the_configuration() {
        let base = VIRTIO_F_VERSION_1 | VIRTIO_BALLOON_F_MUST_TELL_HOST;
        assert_eq!(BalloonConfig::default().offered_features(), base);
        let all = BalloonConfig {
            amount_mib: 0,
            deflate_on_oom: true,
            stats_polling_interval_s: 1,
            free_page_reporting: true,
        };
        assert_eq!(
            all.offered_features(),
            base | VIRTIO_BALLOON_F_STATS_VQ
                | VIRTIO_BALLOON_F_DEFLATE_ON_OOM
                | VIRTIO_BALLOON_F_FREE_PAGE_REPORTING
        );
        assert_eq!(all.offered_features() & VIRTIO_BALLOON_F_FREE_PAGE_HINT, 0);
    }

    #[test]
    fn mib_and_pages() {
        assert_eq!(mib_to_pages(1), Some(256));
        assert_eq!(mib_to_pages(u32::MAX / 256), Some(u32::MAX / 256 * 256));
        assert_eq!(mib_to_pages(u32::MAX / 256 + 1), None);
        assert_eq!(pages_to_mib(511), 1);
        let cfg = BalloonConfig {
            amount_mib: u32::MAX,
            ..Default::default()
        };
        assert!(matches!(
            cfg.target_pages(),
            Err(BalloonError::TargetTooLarge { mib: u32::MAX })
        ));
    }

    #[test]
    fn config_space_reads_little_endian_and_zero_past_the_end() {
        let cs = ConfigSpace {
            num_pages: 0x0403_0201,
            actual: 0x0807_0605,
        };
        let mut all = [0xffu8; 12];
        cs.read(0, &mut all);
        assert_eq!(all, [1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0]);
        let mut two = [0u8; 2];
        cs.read(3, &mut two);
        assert_eq!(two, [4, 5]);
        let mut far = [0xffu8; 4];
        cs.read(u64::MAX - 1, &mut far);
        assert_eq!(far, [0; 4]);
    }

    #[test]
    fn only_actual_is_writable() {
        let mut cs = ConfigSpace {
            num_pages: 7,
            actual: 0,
        };
        assert_eq!(cs.write(0, &100u32.to_le_bytes()), 4);
        assert_eq!(cs.num_pages, 7);
        assert_eq!(cs.write(4, &0x0102_0304u32.to_le_bytes()), 0);
        assert_eq!(cs.actual, 0x0102_0304);
        // A write straddling num_pages and actual changes only actual.
        assert_eq!(cs.write(2, &[9, 9, 0xaa, 0xbb]), 2);
        assert_eq!((cs.num_pages, cs.actual), (7, 0x0102_bbaa));
        assert_eq!(cs.write(8, &[1, 2, 3, 4]), 4);
        assert_eq!(cs.write(u64::MAX, &[1, 2]), 2);
        assert_eq!(cs.actual, 0x0102_bbaa);
    }
}
