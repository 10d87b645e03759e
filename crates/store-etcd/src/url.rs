//! [`EtcdUrl`]: the `--store` value `etcd://HOST:PORT[,HOST:PORT…][/PREFIX]`.

use lanyard_core::{Error, Result};

/// A parsed etcd store address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdUrl {
    /// `HOST:PORT` of each member given.
    pub endpoints: Vec<String>,
    /// The key prefix every key of this store starts with: `/lanyard/` unless the
    /// URL names another (`etcd://h:2379/lab1` → `/lab1/`).
    pub prefix: String,
}

impl EtcdUrl {
    /// Whether `s` names an etcd store (starts with `etcd://`).
    pub fn is_etcd(s: &str) -> bool {
        s.starts_with("etcd://")
    }

    /// Parses `s`; the error names the field `--store`, the value and why.
    pub fn parse(s: &str) -> Result<EtcdUrl> {
        let bad = |why: &str| Error::invalid("--store", s, why);
        let rest = s
            .strip_prefix("etcd://")
            .ok_or_else(|| bad("must start with etcd:// (or be sqlite)"))?;
        let (hosts, prefix) = match rest.split_once('/') {
            Some((h, p)) => (h, p.trim_matches('/')),
            None => (rest, ""),
        };
        if prefix.chars().any(|c| c.is_control() || c == ' ') {
            return Err(bad(
                "the key prefix may not hold spaces or control characters",
            ));
        }
        let mut endpoints = vec![];
        for hp in hosts.split(',') {
            let Some((host, port)) = hp.rsplit_once(':') else {
                return Err(bad(&format!("member {hp:?} must be HOST:PORT")));
            };
            if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
                return Err(bad(&format!(
                    "member {hp:?} must be HOST:PORT with a port from 1 to 65535"
                )));
            }
            endpoints.push(hp.to_string());
        }
        let prefix = if prefix.is_empty() {
            "/lanyard/".to_string()
        } else {
            format!("/{prefix}/")
        };
        Ok(EtcdUrl { endpoints, prefix })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_and_prefix_are_parsed_and_bad_ones_named() {
        let u = EtcdUrl::parse("etcd://10.0.0.1:2379,10.0.0.2:2379").unwrap();
        assert_eq!(u.endpoints, ["10.0.0.1:2379", "10.0.0.2:2379"]);
        assert_eq!(u.prefix, "/lanyard/");
        assert_eq!(
            EtcdUrl::parse("etcd://[2001:db8::1]:2379/lab")
                .unwrap()
                .prefix,
            "/lab/"
        );
        for bad in [
            "etcd://",
            "etcd://host",
            "etcd://h:0",
            "etcd://h:x",
            "http://h:1",
            "etcd://h:1,",
        ] {
            let e = EtcdUrl::parse(bad).unwrap_err().to_string();
            assert!(e.contains("--store") && e.contains(bad), "{bad}: {e}");
        }
    }
}
