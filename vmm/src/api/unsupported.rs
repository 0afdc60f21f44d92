//! Firecracker resources this VMM does not have: each gets a 400 that
//! names what is missing, rather than a 404 that reads like a typo.

use super::error::ApiError;

/// Firecracker's resources we refuse, by path prefix, with the reason.
/// A prefix ending in `/` covers the resources under it.
const UNSUPPORTED: &[(&str, &str)] = &[
    ("/snapshot/", "snapshots are not supported by this VMM"),
    ("/mmds", "MMDS (the microVM metadata service) is not supported by this VMM"),
    ("/mmds/", "MMDS (the microVM metadata service) is not supported by this VMM"),
    ("/entropy", "the virtio-rng entropy device is not supported by this VMM"),
    ("/cpu-config", "custom CPU templates are not supported by this VMM (use `vmm run --cpuid-hide`)"),
    ("/serial", "configuring the serial console over the API is not supported by this VMM (use `vmm run --serial-out`)"),
    ("/hotplug/", "memory hotplug is not supported by this VMM (use the balloon)"),
    ("/pmem/", "virtio-pmem devices are not supported by this VMM"),
    ("/balloon/hinting/", "free page hinting is not supported by this VMM (free_page_reporting is)"),
];

/// The 400 for a Firecracker resource we do not have, if `path` is one.
pub(crate) fn refuse(path: &str) -> Option<ApiError> {
    UNSUPPORTED.iter().find_map(|(prefix, why)| {
        let hit = match prefix.strip_suffix('/') {
            Some(dir) => path.starts_with(prefix) && path.len() > prefix.len() || path == dir,
            None => path == *prefix,
        };
        hit.then(|| ApiError::BadRequest(format!("{path}: {why}")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn firecracker_resources_we_lack_get_a_400_naming_them() {
        for path in [
            "/snapshot/create",
            "/snapshot/load",
            "/mmds",
            "/mmds/config",
            "/entropy",
            "/cpu-config",
            "/serial",
            "/hotplug/memory",
            "/pmem/p0",
            "/balloon/hinting/start",
        ] {
            let err = refuse(path).unwrap_or_else(|| panic!("{path}"));
            assert_eq!(err.status(), 400, "{path}");
            assert!(err.to_string().starts_with(path), "{err}");
            assert!(err.to_string().contains("not supported"), "{err}");
        }
        assert!(refuse("/drivesx").is_none());
        assert!(refuse("/vm").is_none());
        assert!(refuse("/nope").is_none());
    }
}
