//! One sidecar's configuration, as the TOML `walship run --config` reads (DESIGN.md).

use std::path::{Path, PathBuf};

use crate::config::Role;

/// Another sidecar of the cluster, as a `[[peers]]` entry: on loopback.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub node: String,
    pub relay_port: u16,
    pub admin_port: u16,
}

/// Everything a local sidecar's configuration says. Sidecars listen on 127.0.0.1.
#[derive(Clone, Debug)]
pub struct SidecarConfig {
    pub node: String,
    pub cluster: String,
    pub role: Role,
    pub data_dir: PathBuf,
    /// Conninfo of the PostgreSQL beside it.
    pub postgres: String,
    pub relay_port: u16,
    pub admin_port: u16,
    pub token_file: PathBuf,
    pub peers: Vec<Peer>,
    /// TOML placed after the top-level keys and before the peers (keys, or sections such as
    /// `[source]` and `[log]`).
    pub extra: String,
}

impl SidecarConfig {
    /// How other sidecars list this one.
    pub fn as_peer(&self) -> Peer {
        Peer { node: self.node.clone(), relay_port: self.relay_port, admin_port: self.admin_port }
    }

    pub fn to_toml(&self) -> String {
        let role = match self.role {
            Role::Leader => "leader",
            Role::Follower => "follower",
        };
        let mut text = format!(
            "node = {}\ncluster = {}\ndata_dir = {}\npostgres = {}\nrole = \"{role}\"\n\
             listen = \"127.0.0.1:{}\"\nadmin = \"127.0.0.1:{}\"\ntoken_file = {}\n",
            toml_string(&self.node),
            toml_string(&self.cluster),
            toml_path(&self.data_dir),
            toml_string(&self.postgres),
            self.relay_port,
            self.admin_port,
            toml_path(&self.token_file),
        );
        if !self.extra.is_empty() {
            text.push('\n');
            text.push_str(&self.extra);
            text.push('\n');
        }
        for peer in &self.peers {
            text.push_str(&format!(
                "\n[[peers]]\nnode = {}\nrelay = \"127.0.0.1:{}\"\nadmin = \"127.0.0.1:{}\"\n",
                toml_string(&peer.node),
                peer.relay_port,
                peer.admin_port
            ));
        }
        text
    }
}

/// A TOML basic string, quoted and escaped.
fn toml_string(value: &str) -> String {
    toml::Value::String(value.to_owned()).to_string()
}

fn toml_path(path: &Path) -> String {
    toml_string(&path.to_string_lossy())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_follower_config_names_its_peers_and_keeps_extra_sections() {
        let config = SidecarConfig {
            node: "b".into(),
            cluster: "demo".into(),
            role: Role::Follower,
            data_dir: "/tmp/x/b/walship-data".into(),
            postgres: "host=127.0.0.1 port=5432 user=postgres dbname=postgres".into(),
            relay_port: 7401,
            admin_port: 7481,
            token_file: "/tmp/x/token".into(),
            peers: vec![Peer { node: "a".into(), relay_port: 7400, admin_port: 7480 }],
            extra: "[source]\nheartbeat_interval = \"200ms\"".into(),
        };
        let parsed: toml::Value = toml::from_str(&config.to_toml()).unwrap();
        assert_eq!(parsed["role"].as_str(), Some("follower"));
        assert_eq!(parsed["peers"][0]["node"].as_str(), Some("a"));
        assert_eq!(parsed["peers"][0]["relay"].as_str(), Some("127.0.0.1:7400"));
        assert_eq!(parsed["data_dir"].as_str(), Some("/tmp/x/b/walship-data"));
        assert_eq!(parsed["source"]["heartbeat_interval"].as_str(), Some("200ms"));
        assert_eq!(config.as_peer().admin_port, 7481);
    }
}
