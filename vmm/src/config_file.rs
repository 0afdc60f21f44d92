//! `vmm run --config-file FILE`: a VM described in Firecracker's JSON
//! layout ([`FullVmConfig`], the shape of `GET /vm/config`), booted without
//! the API. Unknown sections and fields are errors that name them.

use std::path::{Path, PathBuf};

use crate::api::FullVmConfig;

/// The configuration file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("cannot read the configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("configuration file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// Reads and parses `path`; the error names the field at fault.
pub fn read(path: &Path) -> Result<FullVmConfig, ConfigFileError> {
    let text = std::fs::read(path).map_err(|source| ConfigFileError::Read {
        path: path.into(),
        source,
    })?;
    parse(&text).map_err(|message| ConfigFileError::Invalid {
        path: path.into(),
        message,
    })
}

/// Parses a configuration; the error names the field at fault.
pub fn parse(text: &[u8]) -> Result<FullVmConfig, String> {
    let mut de = serde_json::Deserializer::from_slice(text);
    let config: FullVmConfig = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        if e.path().to_string() == "." {
            e.inner().to_string()
        } else {
            e.to_string()
        }
    })?;
    de.end().map_err(|e| e.to_string())?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn firecracker_layout_parses_and_mistakes_are_named() {
        let full = parse(
            br#"{
              "boot-source": {"kernel_image_path": "/k", "boot_args": "console=ttyS0"},
              "machine-config": {"vcpu_count": 2, "mem_size_mib": 256, "smt": false},
              "drives": [], "network-interfaces": [],
              "balloon": {"amount_mib": 0, "deflate_on_oom": true},
              "vsock": {"guest_cid": 3, "uds_path": "/tmp/v.sock"},
              "logger": {"log_path": "/tmp/l", "level": "Info"},
              "metrics": {"metrics_path": "/tmp/m"}
            }"#,
        )
        .unwrap();
        assert_eq!(full.machine_config.unwrap().vcpu_count, 2);
        assert_eq!(
            full.boot_source.unwrap().kernel_image_path.as_deref(),
            Some("/k")
        );
        let err = parse(br#"{"mmds-config": {}}"#).unwrap_err();
        assert!(
            err.starts_with("mmds-config: unknown field `mmds-config`"),
            "{err}"
        );
        let err = parse(br#"{"machine-config": {"vcpu_count": 1}}"#).unwrap_err();
        assert!(err.contains("missing field `mem_size_mib`"), "{err}");
        let err = parse(br#"{"machine-config": {"vcpu_count": 1, "mem_size_mib": 8, "x": 1}}"#)
            .unwrap_err();
        assert!(
            err.starts_with("machine-config.x: unknown field `x`"),
            "{err}"
        );
        assert!(parse(b"{} {}").is_err());
        assert!(parse(b"").is_err());
    }
}
