//! The sidecar's configuration: TOML (keys fixed by DESIGN.md), validated once into [`Config`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Parse { path: PathBuf, source: toml::de::Error },
    #[error("{path}: {key}: {reason}")]
    Invalid { path: PathBuf, key: &'static str, reason: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Leader,
    Follower,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Async,
    SemiSync,
    Sync,
}

#[derive(Clone, Debug)]
pub struct Peer {
    pub node: String,
    pub relay: String,
    pub admin: String,
}

/// The validated configuration of one sidecar.
#[derive(Clone, Debug)]
pub struct Config {
    pub node: String,
    pub cluster: String,
    pub data_dir: PathBuf,
    /// The local instance, as libpq-style key=value text and parsed.
    pub postgres_conninfo: String,
    pub postgres: tokio_postgres::Config,
    pub role: Role,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub token_file: Option<PathBuf>,
    pub peers: Vec<Peer>,
    pub mode: Mode,
    pub sync_quorum: usize,
    /// `true`: commits wait for followers for ever; `false`: degrade to async after
    /// `sync_timeout`.
    pub strict: bool,
    pub sync_timeout: Duration,
    pub source: SourceSettings,
    pub log: LogSettings,
    /// `relay.timeout`: how long either side of a relay connection waits without hearing
    /// from the other before it closes the connection.
    pub relay_timeout: Duration,
    pub failover: FailoverSettings,
}

/// `[failover]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailoverSettings {
    /// `lease_timeout`: a leader that has not heard from a majority of the cluster (itself
    /// included) for this long fences itself. `None` (`"off"`, the default): it never does.
    pub lease_timeout: Option<Duration>,
    /// `switchover_timeout`: how long a switchover waits for its target before the leader
    /// takes writes again.
    pub switchover_timeout: Duration,
}

/// How long a switchover waits for its target by default.
pub const DEFAULT_SWITCHOVER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a commit waits for followers before a non-strict leader degrades to async.
pub const DEFAULT_SYNC_TIMEOUT: Duration = Duration::from_secs(10);

/// Leader-side settings (`[source]`).
#[derive(Clone, Debug)]
pub struct SourceSettings {
    pub publication: String,
    pub slot: String,
    pub heartbeat_interval: Duration,
    /// An open transaction larger than this is written to the log in chunks.
    pub spill_bytes: usize,
    /// Published tables without a key get `REPLICA IDENTITY FULL` (now, and when created).
    pub auto_replica_identity: bool,
}

/// Durable log settings (`[log]`).
#[derive(Clone, Debug)]
pub struct LogSettings {
    pub segment_bytes: u64,
    /// The leader keeps entries a follower still needs only up to this size.
    pub retain_max_bytes: u64,
}

/// Default of `log.retain_max_bytes`.
pub const DEFAULT_RETAIN_MAX_BYTES: u64 = 8 << 30;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    node: String,
    cluster: String,
    data_dir: PathBuf,
    postgres: String,
    #[serde(default = "default_role")]
    role: String,
    #[serde(default = "default_listen")]
    listen: String,
    #[serde(default = "default_admin")]
    admin: String,
    token_file: Option<PathBuf>,
    #[serde(default)]
    peers: Vec<RawPeer>,
    #[serde(default)]
    replication: RawReplication,
    #[serde(default)]
    source: RawSource,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    relay: RawRelay,
    #[serde(default)]
    failover: RawFailover,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawFailover {
    lease_timeout: Option<String>,
    switchover_timeout: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRelay {
    timeout: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    node: String,
    relay: String,
    admin: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawReplication {
    mode: Option<String>,
    sync_quorum: Option<usize>,
    strict: Option<bool>,
    sync_timeout: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSource {
    publication: Option<String>,
    slot: Option<String>,
    heartbeat_interval: Option<String>,
    spill_bytes: Option<usize>,
    auto_replica_identity: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLog {
    segment_bytes: Option<u64>,
    retain_max_bytes: Option<u64>,
}

fn default_role() -> String {
    "follower".into()
}
fn default_listen() -> String {
    "0.0.0.0:7400".into()
}
fn default_admin() -> String {
    "127.0.0.1:7480".into()
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        Config::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|source| ConfigError::Parse { path: path.into(), source })?;
        let invalid = |key: &'static str, reason: String| ConfigError::Invalid { path: path.into(), key, reason };
        check_name(&raw.node).map_err(|r| invalid("node", r))?;
        check_name(&raw.cluster).map_err(|r| invalid("cluster", r))?;
        let postgres =
            tokio_postgres::Config::from_str(&raw.postgres).map_err(|e| invalid("postgres", e.to_string()))?;
        if postgres.get_user().is_none() {
            return Err(invalid("postgres", "must name a user (user=...)".into()));
        }
        let role = match raw.role.as_str() {
            "leader" => Role::Leader,
            "follower" => Role::Follower,
            other => return Err(invalid("role", format!("{other:?} is neither \"leader\" nor \"follower\""))),
        };
        let listen = raw.listen.parse().map_err(|e| invalid("listen", format!("{:?}: {e}", raw.listen)))?;
        let admin = raw.admin.parse().map_err(|e| invalid("admin", format!("{:?}: {e}", raw.admin)))?;
        let mode = match raw.replication.mode.as_deref().unwrap_or("async") {
            "async" => Mode::Async,
            "semi-sync" => Mode::SemiSync,
            "sync" => Mode::Sync,
            other => return Err(invalid("replication.mode", format!("{other:?}: expected async, semi-sync or sync"))),
        };
        let sync_quorum = raw.replication.sync_quorum.unwrap_or(1);
        if sync_quorum == 0 {
            return Err(invalid("replication.sync_quorum", "must be at least 1".into()));
        }
        if mode == Mode::SemiSync && sync_quorum > raw.peers.len() {
            let reason =
                format!("{sync_quorum} followers must hold each commit but [[peers]] lists {}", raw.peers.len());
            return Err(invalid("replication.sync_quorum", reason));
        }
        let strict = raw.replication.strict.unwrap_or(false);
        let sync_timeout = match raw.replication.sync_timeout {
            None => DEFAULT_SYNC_TIMEOUT,
            Some(text) => parse_duration(&text).map_err(|r| invalid("replication.sync_timeout", r))?,
        };
        if sync_timeout.is_zero() {
            return Err(invalid("replication.sync_timeout", "must be more than 0s".into()));
        }
        let mut peers = Vec::with_capacity(raw.peers.len());
        for p in raw.peers {
            check_name(&p.node).map_err(|r| invalid("peers.node", r))?;
            if p.node == raw.node || peers.iter().any(|q: &Peer| q.node == p.node) {
                return Err(invalid("peers.node", format!("{:?} is listed twice (or is this node)", p.node)));
            }
            peers.push(Peer { node: p.node, relay: p.relay, admin: p.admin });
        }
        let source = source_settings(&raw.node, raw.source).map_err(|(k, r)| invalid(k, r))?;
        let relay_timeout = match raw.relay.timeout {
            None => crate::relay::DEFAULT_RELAY_TIMEOUT,
            Some(text) => parse_duration(&text).map_err(|r| invalid("relay.timeout", r))?,
        };
        if relay_timeout < 2 * crate::relay::ACK_INTERVAL {
            return Err(invalid("relay.timeout", "must be at least 2s (followers acknowledge every second)".into()));
        }
        let failover = failover_settings(raw.failover, peers.len()).map_err(|(k, r)| invalid(k, r))?;
        let log = LogSettings {
            segment_bytes: raw.log.segment_bytes.unwrap_or(64 << 20).max(1 << 16),
            retain_max_bytes: raw.log.retain_max_bytes.unwrap_or(DEFAULT_RETAIN_MAX_BYTES),
        };
        Ok(Config {
            node: raw.node,
            cluster: raw.cluster,
            data_dir: raw.data_dir,
            postgres_conninfo: raw.postgres,
            postgres,
            role,
            listen,
            admin,
            token_file: raw.token_file,
            peers,
            mode,
            sync_quorum,
            strict,
            sync_timeout,
            source,
            log,
            relay_timeout,
            failover,
        })
    }

    /// Where the durable log lives.
    pub fn log_dir(&self) -> PathBuf {
        self.data_dir.join("log")
    }
}

fn failover_settings(raw: RawFailover, peers: usize) -> Result<FailoverSettings, (&'static str, String)> {
    let lease_timeout = match raw.lease_timeout.as_deref() {
        None | Some("off") => None,
        Some(text) => Some(parse_duration(text).map_err(|r| ("failover.lease_timeout", r))?),
    };
    if let Some(timeout) = lease_timeout {
        if timeout < 2 * crate::relay::ACK_INTERVAL {
            return Err((
                "failover.lease_timeout",
                "must be at least 2s (followers acknowledge every second), or \"off\"".into(),
            ));
        }
        if peers < 2 {
            return Err((
                "failover.lease_timeout",
                "needs at least three nodes: in a two-node cluster the leader would fence itself whenever its \
                 one follower is away; set \"off\""
                    .into(),
            ));
        }
    }
    let switchover_timeout = match raw.switchover_timeout {
        None => DEFAULT_SWITCHOVER_TIMEOUT,
        Some(text) => parse_duration(&text).map_err(|r| ("failover.switchover_timeout", r))?,
    };
    if switchover_timeout.is_zero() {
        return Err(("failover.switchover_timeout", "must be more than 0s".into()));
    }
    Ok(FailoverSettings { lease_timeout, switchover_timeout })
}

fn source_settings(node: &str, raw: RawSource) -> Result<SourceSettings, (&'static str, String)> {
    let slot = raw.slot.unwrap_or_else(|| format!("walship_{}", node.to_lowercase().replace('-', "_")));
    if slot.is_empty()
        || slot.len() > 63
        || !slot.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(("source.slot", format!("{slot:?}: lowercase letters, digits and '_', at most 63")));
    }
    let publication = raw.publication.unwrap_or_else(|| "walship".into());
    if publication.is_empty() || publication.len() > 63 {
        return Err(("source.publication", "must be 1 to 63 characters".into()));
    }
    let heartbeat_interval = match raw.heartbeat_interval {
        None => Duration::from_secs(1),
        Some(text) => parse_duration(&text).map_err(|r| ("source.heartbeat_interval", r))?,
    };
    if heartbeat_interval < Duration::from_millis(10) {
        return Err(("source.heartbeat_interval", "must be at least 10ms".into()));
    }
    let spill_bytes = raw.spill_bytes.unwrap_or(crate::source::builder::DEFAULT_SPILL_BYTES).max(64 << 10);
    let auto_replica_identity = raw.auto_replica_identity.unwrap_or(true);
    Ok(SourceSettings { publication, slot, heartbeat_interval, spill_bytes, auto_replica_identity })
}

fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 63 {
        return Err(format!("{name:?} must be 1 to 63 characters"));
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Err(format!("{name:?} may hold only letters, digits, '-' and '_'"));
    }
    Ok(())
}

/// `"16MB"`, `"512kB"`, `"1GB"`, `"4096"` (bytes): PostgreSQL's units, 1024-based, the unit's
/// case ignored.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| format!("{text:?}: expected a number and a unit (B, kB, MB, GB, TB)"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "kb" => 10,
        "mb" => 20,
        "gb" => 30,
        "tb" => 40,
        _ => return Err(format!("{text:?}: unit must be B, kB, MB, GB or TB")),
    };
    n.checked_mul(1 << shift).ok_or_else(|| format!("{text:?} is too large"))
}

/// `"250ms"`, `"1s"`, `"2m"`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| format!("{text:?}: expected a number and a unit (ms, s, m)"))?;
    match unit.trim() {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("{text:?}: unit must be ms, s or m")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
node = "b"
cluster = "shop"
data_dir = "/var/lib/walship"
postgres = "host=127.0.0.1 port=5432 user=postgres dbname=app"
role = "follower"
listen = "0.0.0.0:7400"
admin = "127.0.0.1:7480"
token_file = "/etc/walship/token"

[[peers]]
node = "a"
relay = "10.0.0.1:7400"
admin = "10.0.0.1:7480"

[replication]
mode = "async"
sync_quorum = 1
strict = false
sync_timeout = "10s"
"#;

    #[test]
    fn the_design_example_parses() {
        let c = Config::parse(Path::new("x.toml"), EXAMPLE).unwrap();
        assert_eq!(c.node, "b");
        assert_eq!(c.role, Role::Follower);
        assert_eq!(c.mode, Mode::Async);
        assert_eq!((c.strict, c.sync_timeout), (false, Duration::from_secs(10)));
        assert_eq!(c.peers.len(), 1);
        assert_eq!(c.source.slot, "walship_b");
        assert_eq!(c.source.heartbeat_interval, Duration::from_secs(1));
        assert_eq!(c.postgres.get_dbname(), Some("app"));
        assert_eq!(c.failover, FailoverSettings { lease_timeout: None, switchover_timeout: Duration::from_secs(10) });
        let three = EXAMPLE.replace(
            "[replication]",
            "[[peers]]\nnode = \"c\"\nrelay = \"10.0.0.3:7400\"\nadmin = \"10.0.0.3:7480\"\n\
             [failover]\nlease_timeout = \"5s\"\n[replication]",
        );
        let c = Config::parse(Path::new("x.toml"), &three).unwrap();
        assert_eq!(c.failover.lease_timeout, Some(Duration::from_secs(5)));
        let short = three.replace("\"5s\"", "\"1s\"");
        assert!(Config::parse(Path::new("x.toml"), &short).is_err());
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            ("role = \"follower\"", "role = \"boss\"", "role"),
            ("mode = \"async\"", "mode = \"eventually\"", "replication.mode"),
            ("node = \"b\"", "node = \"b c\"", "node"),
            ("node = \"b\"", "node = \"a\"", "peers.node"),
            ("listen = \"0.0.0.0:7400\"", "listen = \"nowhere\"", "listen"),
            ("sync_timeout = \"10s\"", "sync_timeout = \"soon\"", "replication.sync_timeout"),
            ("[replication]", "[relay]\ntimeout = \"500ms\"\n[replication]", "relay.timeout"),
            ("sync_timeout = \"10s\"", "sync_timeout = \"0s\"", "replication.sync_timeout"),
            ("mode = \"async\"\nsync_quorum = 1", "mode = \"semi-sync\"\nsync_quorum = 2", "replication.sync_quorum"),
            // One peer: a lease would fence the leader whenever its follower is away.
            ("[replication]", "[failover]\nlease_timeout = \"5s\"\n[replication]", "failover.lease_timeout"),
            ("[replication]", "[failover]\nswitchover_timeout = \"0s\"\n[replication]", "failover.switchover_timeout"),
        ];
        for (from, to, key) in cases {
            let text = EXAMPLE.replace(from, to);
            match Config::parse(Path::new("x.toml"), &text) {
                Err(ConfigError::Invalid { key: k, .. }) => assert_eq!(k, key, "{to}"),
                other => panic!("{to}: expected invalid {key}, got {other:?}"),
            }
        }
        let unknown = format!("{EXAMPLE}\n[log]\nsegmnt_bytes = 5\n");
        assert!(matches!(Config::parse(Path::new("x.toml"), &unknown), Err(ConfigError::Parse { .. })));
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("16MB").unwrap(), 16 << 20);
        assert_eq!(parse_size(" 512 kB ").unwrap(), 512 << 10);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("1gb").unwrap(), 1 << 30);
        for bad in ["", "MB", "16XB", "-1MB", "99999999999TB"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("5h").is_err());
    }
}
