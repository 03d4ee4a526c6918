//! Runtime changes made through the admin API, kept apart from the config file and laid over
//! it: servers added, servers removed, per-server state and weight overrides, and the runtime
//! block list (which applies to every frontend, whatever the file says). The overlay
//! is what the state file holds, so a restart (or a reload of the file) keeps what operators
//! changed. Pure: reading and writing the file is the control plane's job.
//!
//! How the two combine: the config file gives each pool its servers; the overlay then removes
//! the servers it lists as removed, adds the ones it lists as added (if not already there),
//! and applies overrides to whatever remains. Changes through the API always win over the file.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::addr::parse_dest;
use crate::model::{Config, MAX_SERVER_CONNECTIONS, MAX_WEIGHT, Server, ServerState};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Overlay {
    /// Format version of the state file.
    #[serde(default = "version")]
    pub version: u32,
    #[serde(default)]
    pub pools: BTreeMap<String, PoolOverlay>,
    /// The runtime block list (`fulcrum ctl blocks`), entries that ended included until the
    /// control plane sweeps them out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blocks: Vec<BlockRecord>,
}

/// One entry of the runtime block list as the state file keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockRecord {
    /// An address or CIDR range, e.g. `"203.0.113.0/24"`.
    pub cidr: String,
    /// When it was added, Unix milliseconds.
    pub created_unix_ms: u64,
    /// When it ends, Unix milliseconds; absent: until removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_unix_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

fn version() -> u32 {
    1
}

impl Default for Overlay {
    fn default() -> Self {
        Self { version: version(), pools: BTreeMap::new(), blocks: Vec::new() }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolOverlay {
    /// Servers added at run time: address → weight.
    #[serde(default)]
    pub added: BTreeMap<String, u32>,
    /// Servers of the config file removed at run time.
    #[serde(default)]
    pub removed: Vec<String>,
    #[serde(default)]
    pub overrides: BTreeMap<String, ServerOverride>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerOverride {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// The server's cap of proxied connections (given when it was added through the API).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateFileError(pub String);

impl std::fmt::Display for StateFileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why an API change was refused; `not_found` maps to 404, the rest to 400/409.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeError {
    NotFound(String),
    Invalid(String),
    Conflict(String),
}

impl Overlay {
    pub fn from_json(text: &str) -> Result<Overlay, StateFileError> {
        let o: Overlay = serde_json::from_str(text).map_err(|e| StateFileError(e.to_string()))?;
        if o.version != 1 {
            return Err(StateFileError(format!("unsupported state file version {}", o.version)));
        }
        Ok(o)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|_| "{}".into())
    }

    /// The config with this overlay applied. Entries naming pools or servers that no longer
    /// exist are ignored (and kept, so they apply again if the pool comes back).
    pub fn apply(&self, base: &Config) -> Config {
        let mut c = base.clone();
        for pool in &mut c.pools {
            let Some(o) = self.pools.get(&pool.name) else { continue };
            pool.servers.retain(|s| !o.removed.contains(&s.address.to_string()));
            for (addr, weight) in &o.added {
                let Ok(a) = parse_dest(addr) else { continue };
                if !pool.servers.iter().any(|s| s.address == a) {
                    pool.servers.push(Server { weight: *weight, ..Server::new(a) });
                }
            }
            for s in &mut pool.servers {
                if let Some(ov) = o.overrides.get(&s.address.to_string()) {
                    if let Some(w) = ov.weight {
                        s.weight = w;
                    }
                    if let Some(st) = ov.state.as_deref().and_then(|x| x.parse().ok()) {
                        s.state = st;
                    }
                    if ov.max_connections.is_some() {
                        s.max_connections = ov.max_connections;
                    }
                }
            }
        }
        c
    }

    /// Adds `address` to `pool` (as seen in `current`, the config with the overlay applied).
    pub fn add_server(
        &mut self,
        current: &Config,
        pool: &str,
        address: &str,
        weight: u32,
    ) -> Result<String, ChangeError> {
        let p = current
            .pool(pool)
            .ok_or_else(|| ChangeError::NotFound(format!("pool \"{pool}\" does not exist")))?;
        let a = parse_dest(address).map_err(|e| ChangeError::Invalid(format!("address: {e}")))?;
        if weight > MAX_WEIGHT {
            return Err(ChangeError::Invalid(format!(
                "weight: {weight} is out of range (0-{MAX_WEIGHT})"
            )));
        }
        let key = a.to_string();
        if p.servers.iter().any(|s| s.address == a) {
            return Err(ChangeError::Conflict(format!("{key} is already in pool \"{pool}\"")));
        }
        let o = self.pools.entry(pool.to_string()).or_default();
        o.removed.retain(|r| r != &key);
        o.added.insert(key.clone(), weight);
        // A server re-added after removal starts afresh.
        o.overrides.remove(&key);
        Ok(key)
    }

    /// Caps `address` of `pool` at `max` proxied connections (after [`Overlay::add_server`]).
    pub fn set_max_connections(
        &mut self,
        current: &Config,
        pool: &str,
        address: &str,
        max: u32,
    ) -> Result<String, ChangeError> {
        if !(1..=MAX_SERVER_CONNECTIONS).contains(&max) {
            return Err(ChangeError::Invalid(format!(
                "max_connections: {max} is out of range (1-{MAX_SERVER_CONNECTIONS})"
            )));
        }
        let key = self.find(current, pool, address)?;
        let o = self.pools.entry(pool.to_string()).or_default();
        o.overrides.entry(key.clone()).or_default().max_connections = Some(max);
        Ok(key)
    }

    pub fn remove_server(
        &mut self,
        current: &Config,
        pool: &str,
        address: &str,
    ) -> Result<String, ChangeError> {
        let key = self.find(current, pool, address)?;
        let o = self.pools.entry(pool.to_string()).or_default();
        if o.added.remove(&key).is_none() {
            o.removed.push(key.clone());
        }
        o.overrides.remove(&key);
        Ok(key)
    }

    pub fn patch_server(
        &mut self,
        current: &Config,
        pool: &str,
        address: &str,
        state: Option<ServerState>,
        weight: Option<u32>,
    ) -> Result<String, ChangeError> {
        let key = self.find(current, pool, address)?;
        if let Some(w) = weight
            && w > MAX_WEIGHT
        {
            return Err(ChangeError::Invalid(format!(
                "weight: {w} is out of range (0-{MAX_WEIGHT})"
            )));
        }
        let o = self.pools.entry(pool.to_string()).or_default();
        if let Some(w) = weight {
            match o.added.get_mut(&key) {
                Some(aw) => *aw = w,
                None => o.overrides.entry(key.clone()).or_default().weight = Some(w),
            }
        }
        if let Some(s) = state {
            o.overrides.entry(key.clone()).or_default().state = Some(s.name().to_string());
        }
        Ok(key)
    }

    fn find(&self, current: &Config, pool: &str, address: &str) -> Result<String, ChangeError> {
        let p = current
            .pool(pool)
            .ok_or_else(|| ChangeError::NotFound(format!("pool \"{pool}\" does not exist")))?;
        let a = parse_dest(address).map_err(|e| ChangeError::Invalid(format!("address: {e}")))?;
        if !p.servers.iter().any(|s| s.address == a) {
            return Err(ChangeError::NotFound(format!("{a} is not in pool \"{pool}\"")));
        }
        Ok(a.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse_str;

    fn base() -> Config {
        parse_str(
            "[frontend.f]\nbind = \"127.0.0.1:1\"\npool = \"p\"\n[pool.p]\nservers = [\"127.0.0.1:10\", \"127.0.0.1:11\"]\n",
            "t.toml",
        )
        .unwrap()
    }

    fn addrs(c: &Config) -> Vec<String> {
        c.pools[0].servers.iter().map(|s| s.address.to_string()).collect()
    }

    #[test]
    fn blocks_round_trip_and_older_files_have_none() {
        let mut o = Overlay::default();
        o.blocks.push(BlockRecord {
            cidr: "203.0.113.0/24".into(),
            created_unix_ms: 1,
            until_unix_ms: Some(2),
            reason: Some("scanner".into()),
        });
        o.blocks.push(BlockRecord {
            cidr: "::1/128".into(),
            created_unix_ms: 3,
            until_unix_ms: None,
            reason: None,
        });
        assert_eq!(Overlay::from_json(&o.to_json()).unwrap(), o);
        assert!(!Overlay::default().to_json().contains("blocks"), "no key without blocks");
        let old = Overlay::from_json(r#"{"version": 1, "pools": {}}"#).unwrap();
        assert!(old.blocks.is_empty());
        assert!(Overlay::from_json(r#"{"blocks": [{"cidr": "::1"}]}"#).is_err(), "created");
    }

    #[test]
    fn add_remove_patch_and_round_trip() {
        let b = base();
        let mut o = Overlay::default();
        o.add_server(&o.apply(&b), "p", "127.0.0.1:12", 2).unwrap();
        assert_eq!(addrs(&o.apply(&b)), ["127.0.0.1:10", "127.0.0.1:11", "127.0.0.1:12"]);
        o.remove_server(&o.apply(&b), "p", "127.0.0.1:10").unwrap();
        o.patch_server(&o.apply(&b), "p", "127.0.0.1:11", Some(ServerState::Drain), Some(5))
            .unwrap();
        o.patch_server(&o.apply(&b), "p", "127.0.0.1:12", None, Some(7)).unwrap();
        let c = o.apply(&b);
        assert_eq!(addrs(&c), ["127.0.0.1:11", "127.0.0.1:12"]);
        assert_eq!(
            (c.pools[0].servers[0].state, c.pools[0].servers[0].weight),
            (ServerState::Drain, 5)
        );
        assert_eq!(c.pools[0].servers[1].weight, 7);
        o.set_max_connections(&o.apply(&b), "p", "127.0.0.1:12", 3).unwrap();
        assert_eq!(o.apply(&b).pools[0].servers[1].max_connections, Some(3));
        assert!(matches!(
            o.set_max_connections(&o.apply(&b), "p", "127.0.0.1:12", 0),
            Err(ChangeError::Invalid(_))
        ));
        let again = Overlay::from_json(&o.to_json()).unwrap();
        assert_eq!(again, o);
        // Removing an added server forgets it; re-adding a removed one brings it back.
        o.remove_server(&o.apply(&b), "p", "127.0.0.1:12").unwrap();
        o.add_server(&o.apply(&b), "p", "127.0.0.1:10", 1).unwrap();
        assert_eq!(addrs(&o.apply(&b)), ["127.0.0.1:10", "127.0.0.1:11"]);
    }

    #[test]
    fn refusals() {
        let b = base();
        let mut o = Overlay::default();
        assert!(matches!(
            o.add_server(&b, "nope", "127.0.0.1:1", 1),
            Err(ChangeError::NotFound(_))
        ));
        assert!(matches!(o.add_server(&b, "p", "127.0.0.1:10", 1), Err(ChangeError::Conflict(_))));
        assert!(matches!(o.add_server(&b, "p", "bad addr", 1), Err(ChangeError::Invalid(_))));
        assert!(matches!(o.remove_server(&b, "p", "127.0.0.1:99"), Err(ChangeError::NotFound(_))));
        assert!(Overlay::from_json("{\"version\":1,\"pools\":{").is_err());
        assert!(Overlay::from_json("{\"version\":2}").is_err());
    }
}
