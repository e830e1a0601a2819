//! A local onionpost network on loopback: validator homes (keys, genesis, configs) on
//! 127.0.0.x addresses, the validator processes, and their status. The `onionpost-devnet`
//! command and the integration tests both use this.
//!
//! Layout of a devnet directory:
//! - `devnet.json`: the manifest (chain id, validators and their addresses);
//! - `admin-<i>.key`: keys of the governing list's initial admins (client key format);
//! - `validator-<i>/`: each validator's home (`config.toml`, `genesis.json`,
//!   `validator.key`, `data/`, `validator.log`, `validator.pid`).

pub mod compose;
pub mod health;
pub mod hostile;
pub mod tor;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use onionpost_ledger::genesis::{AppGenesis, GenesisIdentity};
use onionpost_ledger::validator::config::{
    self as vconfig, ChainGenesis, GenesisValidator, ValidatorConfig,
};
use onionpost_proto::v1::ledger_client::LedgerClient;
use onionpost_proto::v1::{GetStatusRequest, StatusAnswer};
use serde::{Deserialize, Serialize};

/// Name of the manifest file.
pub const MANIFEST: &str = "devnet.json";
/// The governing list of a devnet.
pub const GOVERNING_LIST: &str = "govern";

/// What `init` writes and the other commands read.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// The chain id.
    pub chain_id: String,
    /// The validators, in order.
    pub validators: Vec<ValidatorEntry>,
    /// Key files of the initial admins.
    pub admin_keys: Vec<PathBuf>,
}

/// One validator of the manifest.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ValidatorEntry {
    /// Its moniker.
    pub moniker: String,
    /// Its home directory.
    pub home: PathBuf,
    /// Its consensus address.
    pub p2p: SocketAddr,
    /// Its gRPC address.
    pub grpc: SocketAddr,
    /// Its public key (hex).
    pub pub_key: String,
}

/// Options of `init`.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// How many validators.
    pub validators: usize,
    /// How many admins of the governing list.
    pub admins: usize,
    /// The chain id.
    pub chain_id: String,
    /// First port; validator i uses `base_port` (p2p) and `base_port + 1` (gRPC) on 127.0.0.(10+i).
    pub base_port: u16,
    /// Target milliseconds between blocks.
    pub block_ms: u64,
}

impl Default for InitOptions {
    fn default() -> Self {
        Self {
            validators: 4,
            admins: 1,
            chain_id: "onionpost-devnet".into(),
            base_port: 26600,
            block_ms: 100,
        }
    }
}

/// The loopback address of validator `i`.
pub fn validator_ip(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 10 + i as u8))
}

/// Creates a devnet in `dir` (which must not hold one already), validator `i` on
/// [`validator_ip`]`(i)`.
pub fn init(dir: &Path, opts: &InitOptions) -> Result<Manifest> {
    init_at(dir, opts, validator_ip)
}

/// Creates a devnet in `dir` (which must not hold one already) with validator `i` on the
/// address `ip(i)`: the compose devnet puts them on container addresses.
pub fn init_at(dir: &Path, opts: &InitOptions, ip: impl Fn(usize) -> IpAddr) -> Result<Manifest> {
    if opts.validators == 0 || opts.validators > 100 {
        bail!(
            "--validators must be between 1 and 100, not {}",
            opts.validators
        );
    }
    if opts.admins == 0 {
        bail!("--admins must be at least 1");
    }
    if dir.join(MANIFEST).exists() {
        bail!(
            "{} already holds a devnet; remove it or choose another --dir",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut admin_keys = Vec::new();
    let mut admins = Vec::new();
    for i in 0..opts.admins {
        let path = dir.join(format!("admin-{i}.key"));
        let key = vconfig::create_key_file(&path)?;
        admins.push(GenesisIdentity {
            public_key: hex::encode(key.verification_key().to_bytes()),
            display_name: format!("admin-{i}"),
        });
        admin_keys.push(path);
    }
    let mut entries = Vec::new();
    for i in 0..opts.validators {
        let home = dir.join(format!("validator-{i}"));
        std::fs::create_dir_all(&home)
            .with_context(|| format!("cannot create {}", home.display()))?;
        let key = vconfig::create_key(&home)?;
        let ip = ip(i);
        entries.push(ValidatorEntry {
            moniker: format!("validator-{i}"),
            home,
            p2p: SocketAddr::new(ip, opts.base_port),
            grpc: SocketAddr::new(ip, opts.base_port + 1),
            pub_key: hex::encode(key.verification_key().to_bytes()),
        });
    }
    let genesis = ChainGenesis {
        chain_id: opts.chain_id.clone(),
        genesis_time: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        validators: entries
            .iter()
            .map(|e| GenesisValidator {
                pub_key: e.pub_key.clone(),
                power: 10,
            })
            .collect(),
        app_state: AppGenesis {
            governing_list: GOVERNING_LIST.into(),
            admins,
            identities: vec![],
        },
    };
    for e in &entries {
        ValidatorConfig {
            moniker: e.moniker.clone(),
            p2p_listen: e.p2p,
            persistent_peers: entries
                .iter()
                .filter(|o| o.p2p != e.p2p)
                .map(|o| o.p2p)
                .collect(),
            grpc_listen: e.grpc,
            peer_grpc: entries
                .iter()
                .filter(|o| o.grpc != e.grpc)
                .map(|o| o.grpc)
                .collect(),
            block_ms: opts.block_ms,
        }
        .save(&e.home)?;
        genesis.save(&e.home)?;
    }
    let manifest = Manifest {
        chain_id: opts.chain_id.clone(),
        validators: entries,
        admin_keys,
    };
    let path = dir.join(MANIFEST);
    std::fs::write(&path, serde_json::to_vec_pretty(&manifest)?)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(manifest)
}

/// Adds a validator home to an existing devnet: a new key, the chain's genesis and a config
/// peering with every existing validator. It is *not* in the validator set until a
/// `propose_validator_update` approved by the governing admins adds it; until then it follows
/// the chain. Returns its entry (also appended to the manifest).
pub fn add_validator(dir: &Path) -> Result<ValidatorEntry> {
    let mut m = load(dir)?;
    let i = m.validators.len();
    let first = m
        .validators
        .first()
        .context("the devnet has no validators")?;
    let base_port = first.p2p.port();
    let home = dir.join(format!("validator-{i}"));
    std::fs::create_dir_all(&home).with_context(|| format!("cannot create {}", home.display()))?;
    let key = vconfig::create_key(&home)?;
    ChainGenesis::load(&first.home)?.save(&home)?;
    let ip = validator_ip(i);
    let entry = ValidatorEntry {
        moniker: format!("validator-{i}"),
        home: home.clone(),
        p2p: SocketAddr::new(ip, base_port),
        grpc: SocketAddr::new(ip, base_port + 1),
        pub_key: hex::encode(key.verification_key().to_bytes()),
    };
    ValidatorConfig {
        moniker: entry.moniker.clone(),
        p2p_listen: entry.p2p,
        persistent_peers: m.validators.iter().map(|v| v.p2p).collect(),
        grpc_listen: entry.grpc,
        peer_grpc: m.validators.iter().map(|v| v.grpc).collect(),
        block_ms: ValidatorConfig::load(&first.home)?.block_ms,
    }
    .save(&home)?;
    m.validators.push(entry.clone());
    std::fs::write(dir.join(MANIFEST), serde_json::to_vec_pretty(&m)?)?;
    Ok(entry)
}

/// Reads a devnet's manifest.
pub fn load(dir: &Path) -> Result<Manifest> {
    let path = dir.join(MANIFEST);
    let bytes = std::fs::read(&path).with_context(|| {
        format!(
            "{} has no devnet (run `onionpost-devnet init --dir {}` first)",
            dir.display(),
            dir.display()
        )
    })?;
    serde_json::from_slice(&bytes).with_context(|| format!("{} is corrupt", path.display()))
}

/// The `onionpost-ledger` binary: `ONIONPOST_LEDGER_BIN`, else next to this executable,
/// else on `PATH`.
pub fn ledger_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("ONIONPOST_LEDGER_BIN") {
        return p.into();
    }
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1).take(2) {
            let cand = dir.join("onionpost-ledger");
            if cand.is_file() {
                return cand;
            }
        }
    }
    "onionpost-ledger".into()
}

/// Starts validator `v` as a background process logging to `HOME/validator.log`.
pub fn start_validator(v: &ValidatorEntry) -> Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(v.home.join("validator.log"))
        .with_context(|| format!("cannot open the log in {}", v.home.display()))?;
    let child = Command::new(ledger_binary())
        .arg("validator")
        .arg("--home")
        .arg(&v.home)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("cannot start {} ({})", ledger_binary().display(), v.moniker))?;
    std::fs::write(v.home.join("validator.pid"), child.id().to_string())?;
    Ok(child)
}

/// Asks a validator for its status.
pub async fn status(v: &ValidatorEntry) -> Result<StatusAnswer> {
    let mut c = LedgerClient::connect(format!("http://{}", v.grpc))
        .await
        .with_context(|| format!("{} does not answer on {}", v.moniker, v.grpc))?;
    Ok(c.get_status(GetStatusRequest {}).await?.into_inner())
}

/// Waits until every validator answers gRPC, or fails after `timeout`.
pub async fn wait_ready(m: &Manifest, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    for v in &m.validators {
        loop {
            match status(v).await {
                Ok(_) => break,
                Err(e) if Instant::now() > deadline => {
                    return Err(e.context(format!(
                        "{} not ready; see {}",
                        v.moniker,
                        v.home.join("validator.log").display()
                    )));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
    Ok(())
}

/// Stops validator `v` if its pid file names a live process (SIGTERM, then SIGKILL).
pub fn stop_validator(v: &ValidatorEntry) -> Result<bool> {
    let pid_file = v.home.join("validator.pid");
    let Ok(pid) = std::fs::read_to_string(&pid_file) else {
        return Ok(false);
    };
    let pid = pid.trim().to_owned();
    let alive = |pid: &str| Path::new(&format!("/proc/{pid}")).exists();
    if !alive(&pid) {
        let _ = std::fs::remove_file(&pid_file);
        return Ok(false);
    }
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(&pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if alive(&pid) {
        let _ = Command::new("kill").args(["-KILL", &pid]).status();
    }
    let _ = std::fs::remove_file(&pid_file);
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_writes_homes_the_validator_can_load() {
        let dir = tempfile::tempdir().unwrap();
        let m = init(
            dir.path(),
            &InitOptions {
                validators: 3,
                admins: 2,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(m.validators.len(), 3);
        let again = load(dir.path()).unwrap();
        assert_eq!(again.validators.len(), 3);
        for (i, v) in m.validators.iter().enumerate() {
            let c = ValidatorConfig::load(&v.home).unwrap();
            assert_eq!(c.p2p_listen.ip(), validator_ip(i));
            assert_eq!(c.persistent_peers.len(), 2, "everyone but itself");
            assert!(!c.persistent_peers.contains(&c.p2p_listen));
            let g = ChainGenesis::load(&v.home).unwrap();
            assert_eq!(g.validators.len(), 3);
            assert_eq!(g.app_state.admins.len(), 2);
            let key = vconfig::load_key(&v.home).unwrap();
            assert_eq!(hex::encode(key.verification_key().to_bytes()), v.pub_key);
        }
    }

    #[test]
    fn bad_requests_get_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let e = init(
            dir.path(),
            &InitOptions {
                validators: 0,
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("--validators"), "{e}");
        init(dir.path(), &InitOptions::default()).unwrap();
        let e = init(dir.path(), &InitOptions::default()).unwrap_err();
        assert!(e.to_string().contains("already holds a devnet"), "{e}");
        let empty = tempfile::tempdir().unwrap();
        let e = load(empty.path()).unwrap_err();
        assert!(format!("{e:#}").contains("onionpost-devnet init"), "{e:#}");
        // A genesis with a broken key is refused with the file named.
        let home = &load(dir.path()).unwrap().validators[0].home;
        let path = home.join(vconfig::GENESIS_FILE);
        let text = std::fs::read_to_string(&path).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let key = v["validators"][0]["pub_key"].as_str().unwrap().to_owned();
        std::fs::write(&path, text.replace(&key, "abcd")).unwrap();
        let e = ChainGenesis::load(home).unwrap_err().to_string();
        assert!(e.contains("genesis.json") && e.contains("abcd"), "{e}");
    }
}
