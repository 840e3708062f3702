//! The `owner:` mapping of a source: which uid and gid the image's entries get.
//!
//! A non-root CI job cannot create root-owned files, so the owners it unpacks are
//! its own. The mapping fixes that when the image is made, without touching the
//! source: either force one uid/gid on every entry, or translate some ids and keep
//! the others.
//!
//! ```yaml
//! owner: { uid: 0, gid: 0 }                 # everything root:root
//! owner: { uids: { 1000: 0 }, gids: { 1000: 0 } }   # only the builder's ids become root
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;

/// How uids and gids found in the source become the image's.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OwnerMapping {
    /// Every entry gets this uid (overrides `uids`).
    #[serde(default)]
    pub uid: Option<u32>,
    /// Every entry gets this gid (overrides `gids`).
    #[serde(default)]
    pub gid: Option<u32>,
    /// Source uid → image uid; uids not listed are kept.
    #[serde(default)]
    pub uids: BTreeMap<u32, u32>,
    /// Source gid → image gid; gids not listed are kept.
    #[serde(default)]
    pub gids: BTreeMap<u32, u32>,
}

impl OwnerMapping {
    /// Every entry owned by `uid:gid`.
    pub fn force(uid: u32, gid: u32) -> OwnerMapping {
        OwnerMapping { uid: Some(uid), gid: Some(gid), ..OwnerMapping::default() }
    }

    /// Refuses a mapping that says two things about the same id kind, so a
    /// manifest never carries a `uids:` table that silently does nothing.
    pub fn validate(&self) -> Result<(), String> {
        if self.uid.is_some() && !self.uids.is_empty() {
            return Err("owner: give either 'uid' (for every entry) or 'uids' (a map), not both"
                .to_string());
        }
        if self.gid.is_some() && !self.gids.is_empty() {
            return Err("owner: give either 'gid' (for every entry) or 'gids' (a map), not both"
                .to_string());
        }
        Ok(())
    }

    pub fn map_uid(&self, uid: u32) -> u32 {
        self.uid.unwrap_or_else(|| self.uids.get(&uid).copied().unwrap_or(uid))
    }

    pub fn map_gid(&self, gid: u32) -> u32 {
        self.gid.unwrap_or_else(|| self.gids.get(&gid).copied().unwrap_or(gid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn force_and_map() {
        let force: OwnerMapping = serde_json::from_str(r#"{"uid": 0, "gid": 0}"#).unwrap();
        assert_eq!(force, OwnerMapping::force(0, 0));
        assert_eq!((force.map_uid(1000), force.map_gid(100)), (0, 0));

        let map: OwnerMapping = serde_json::from_str(r#"{"uids": {"1000": 0}, "gid": 5}"#).unwrap();
        map.validate().unwrap();
        assert_eq!((map.map_uid(1000), map.map_uid(1001), map.map_gid(7)), (0, 1001, 5));
    }

    #[test]
    fn refuses_unknown_keys_and_contradictions() {
        assert!(serde_json::from_str::<OwnerMapping>(r#"{"user": 0}"#).is_err());
        let both: OwnerMapping = serde_json::from_str(r#"{"uid": 0, "uids": {"1": 2}}"#).unwrap();
        assert!(both.validate().is_err());
    }
}
