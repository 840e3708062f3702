//! The part of `/usr/lib/abforge/profile.json` the init uses: mounts and overlays.
//!
//! Follows the `ProfileRecord` the builder's security profile writes
//! (`builder/src/profile/inspect.rs`, record_version 1): `mounts[]` with `mount`,
//! `partuuid`, `options` (fstab style) and `overlays[]` with `path`, `upper`, `work`,
//! all paths as the running system sees them. Other fields are ignored; a
//! record_version other than 1 is refused, as its fields may mean something else.

use serde::Deserialize;

/// Where the record lives in the root.
pub const RECORD_PATH: &str = "/usr/lib/abforge/profile.json";
/// The record format this init understands.
pub const RECORD_VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Profile {
    pub record_version: u32,
    #[serde(default)]
    pub mounts: Vec<ProfileMount>,
    #[serde(default)]
    pub overlays: Vec<ProfileOverlay>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct ProfileMount {
    pub mount: String,
    pub partuuid: String,
    pub options: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct ProfileOverlay {
    pub path: String,
    pub upper: String,
    pub work: String,
}

/// Parses the record; the error names the file and what is wrong.
pub fn parse_profile(text: &str) -> Result<Profile, String> {
    let profile: Profile = serde_json::from_str(text)
        .map_err(|e| format!("{RECORD_PATH} is not a valid profile record: {e}"))?;
    if profile.record_version != RECORD_VERSION {
        return Err(format!(
            "{RECORD_PATH} has record_version {}, this init reads version {RECORD_VERSION}",
            profile.record_version
        ));
    }
    Ok(profile)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape of the builder's record (builder/tests/profile.rs, EXPECTED_RECORD), abridged.
    pub const SAMPLE: &str = r#"{
  "record_version": 1,
  "image_id": "eflow",
  "image_version": "1.4.0",
  "root_device": "/dev/mapper/root",
  "read_only_root": true,
  "mounts": [
    { "mount": "/var", "partuuid": "8d1c2b7e-5a4f-4e3b-9c2d-1f0e9d8c7b6a", "options": "defaults,nodev" },
    { "mount": "/logs", "partuuid": "2f3e4d5c-6b7a-4891-a0b1-c2d3e4f5a6b7", "options": "defaults,nodev,nosuid,noexec" }
  ],
  "overlays": [
    { "path": "/etc", "upper": "/var/.eflow/overlays/etc/upper", "work": "/var/.eflow/overlays/etc/work" },
    { "path": "/home", "upper": "/var/.eflow/overlays/home/upper", "work": "/var/.eflow/overlays/home/work" }
  ],
  "firewall": null,
  "ssh": { "password_authentication": false },
  "empty_machine_id": true,
  "files": []
}"#;

    #[test]
    fn reads_mounts_and_overlays() {
        let p = parse_profile(SAMPLE).unwrap();
        assert_eq!(p.mounts.len(), 2);
        assert_eq!(p.mounts[1].mount, "/logs");
        assert_eq!(p.mounts[1].options, "defaults,nodev,nosuid,noexec");
        assert_eq!(
            p.overlays[0],
            ProfileOverlay {
                path: "/etc".into(),
                upper: "/var/.eflow/overlays/etc/upper".into(),
                work: "/var/.eflow/overlays/etc/work".into()
            }
        );
    }

    #[test]
    fn bad_records_are_refused() {
        let err = parse_profile("{").unwrap_err();
        assert!(
            err.starts_with("/usr/lib/abforge/profile.json is not a valid profile record"),
            "{err}"
        );
        let err = parse_profile(&SAMPLE.replace("\"record_version\": 1", "\"record_version\": 2"))
            .unwrap_err();
        assert!(err.contains("record_version 2"), "{err}");
        let err =
            parse_profile(r#"{"record_version":1,"overlays":[{"path":"/etc"}]}"#).unwrap_err();
        assert!(err.contains("missing field `upper`"), "{err}");
    }
}
