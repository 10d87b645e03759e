//! lanyard's configuration file (`/etc/lanyard/config.toml`, overridable): default
//! address pools, and the choice of a pool subnet that clashes with nothing.

use crate::{Error, Result};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Default path of the configuration file.
pub const DEFAULT_PATH: &str = "/etc/lanyard/config.toml";

/// One pool: carve `/size` subnets out of `base` (Docker's `default-address-pools`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolConfig {
    /// The range subnets are carved from.
    pub base: IpNet,
    /// Prefix length of each subnet.
    pub size: u8,
}

/// The whole file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Config {
    /// IPv4 and IPv6 pools, tried in order.
    #[serde(default = "default_pools")]
    pub default_address_pools: Vec<PoolConfig>,
    /// The store: `sqlite` (the default, in `--state-dir`) or
    /// `etcd://HOST:PORT[,HOST:PORT…]` for several hosts (`--store` overrides it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
}

fn default_pools() -> Vec<PoolConfig> {
    vec![
        PoolConfig {
            base: "10.89.0.0/16".parse().unwrap_or_else(|_| unreachable!()),
            size: 24,
        },
        PoolConfig {
            base: "fd6c:7961::/48".parse().unwrap_or_else(|_| unreachable!()),
            size: 64,
        },
    ]
}

impl Default for Config {
    fn default() -> Self {
        Config {
            default_address_pools: default_pools(),
            store: None,
        }
    }
}

impl Config {
    /// Reads `path`; a missing file means the defaults.
    pub fn load(path: &Path) -> Result<Config> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
            Err(e) => return Err(Error::Other(format!("reading {}: {e}", path.display()))),
        };
        Self::parse(&text).map_err(|e| Error::Other(format!("{}: {e}", path.display())))
    }

    /// The `store` of the file at `path`, if it sets one. Only a file that mentions
    /// `store` is parsed (every verb asks, and a broken config must not block a
    /// detach on the default store); other keys are not checked here.
    pub fn store_of(path: &Path) -> Result<Option<String>> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) if t.contains("store") => t,
            Ok(_) => return Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::Other(format!("reading {}: {e}", path.display()))),
        };
        #[derive(Deserialize)]
        struct StoreOnly {
            store: Option<String>,
        }
        toml::from_str::<StoreOnly>(&text)
            .map(|s| s.store)
            .map_err(|e| Error::invalid("config", path.display().to_string(), e.to_string()))
    }

    /// Parses the TOML text and checks the pools.
    pub fn parse(text: &str) -> Result<Config> {
        let c: Config =
            toml::from_str(text).map_err(|e| Error::invalid("config", "", e.to_string()))?;
        for p in &c.default_address_pools {
            if p.size < p.base.prefix_len() || p.size > p.base.max_prefix_len() - 2 {
                return Err(Error::invalid(
                    "default-address-pools",
                    format!("{}/{}", p.base, p.size),
                    "size must be between the base's prefix length and /30 (/126)",
                ));
            }
        }
        Ok(c)
    }

    /// The first subnet of the given family from the pools that overlaps none of `taken`.
    pub fn pick_subnet(&self, v6: bool, taken: &[IpNet]) -> Option<IpNet> {
        self.default_address_pools
            .iter()
            .filter(|p| p.base.addr().is_ipv6() == v6)
            .flat_map(|p| p.base.subnets(p.size).into_iter().flatten().take(1 << 16))
            .find(|s| !taken.iter().any(|t| t.contains(s) || s.contains(t)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_first_subnet_clashing_with_nothing() {
        let c = Config::parse("[[default-address-pools]]\nbase = \"198.51.100.0/24\"\nsize = 26\n")
            .unwrap();
        let taken: Vec<IpNet> = vec![
            "198.51.100.0/26".parse().unwrap(),
            "198.51.100.70/32".parse().unwrap(),
        ];
        assert_eq!(
            c.pick_subnet(false, &taken),
            Some("198.51.100.128/26".parse().unwrap())
        );
        let all: Vec<IpNet> = vec!["198.51.100.0/24".parse().unwrap()];
        assert_eq!(c.pick_subnet(false, &all), None);
    }

    #[test]
    fn missing_file_means_defaults_and_bad_size_is_refused() {
        assert_eq!(
            Config::load(Path::new("/nonexistent/lanyard.toml")).unwrap(),
            Config::default()
        );
        assert!(
            Config::parse("[[default-address-pools]]\nbase = \"198.51.100.0/24\"\nsize = 8\n")
                .is_err()
        );
        assert!(Config::parse("colour = 1\n").is_err());
    }

    #[test]
    fn store_is_read_alone_and_a_file_without_it_is_not_parsed() {
        let dir = std::env::temp_dir().join(format!("lanyard-store-of-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("c.toml");
        std::fs::write(
            &p,
            "store = \"etcd://10.0.0.1:2379\"\n[[default-address-pools]]\n",
        )
        .unwrap();
        assert_eq!(
            Config::store_of(&p).unwrap().as_deref(),
            Some("etcd://10.0.0.1:2379")
        );
        std::fs::write(&p, "this is not toml").unwrap();
        assert_eq!(Config::store_of(&p).unwrap(), None);
        std::fs::write(&p, "store = 1").unwrap();
        assert!(Config::store_of(&p).is_err());
        assert_eq!(Config::store_of(&dir.join("none")).unwrap(), None);
        assert!(Config::parse("store = \"sqlite\"\n").is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
