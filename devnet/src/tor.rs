//! A private Tor network on loopback, for the devnet and the integration tests.
//!
//! [`TorNetwork::start`] runs three directory authorities and a few relays (Debian's C `tor`)
//! on 127.0.0.1 with `TestingTorNetwork 1`, on ports chosen at run time, and returns once every
//! authority serves a microdescriptor consensus that lists every node. No exits: onion services
//! only need internal circuits. The settings follow the measured recipe in
//! `shared/tor-testnet.md` (voting every 15 s, `hsdir_interval=6`, `cbtdisabled=1`, …).
//!
//! Keys are slow to make (9-18 s), so they are generated once into a cache directory that
//! survives between runs ([`default_key_cache`], `/var/tmp/onionpost-tor-keys-v1` unless
//! `ONIONPOST_TOR_KEYS` says otherwise) and copied into each run's fresh data directories.
//!
//! Every tor is started with `__OwningControllerProcess` set to this process, so the network
//! dies with its harness even when the harness is killed; dropping the [`TorNetwork`] stops
//! them at once. [`TorNetwork::shared`] gives one network per process (per test binary under
//! `cargo test`), started on first use.
//!
//! Clients (the mail node's arti) learn the network from [`TorNetwork::node_config_toml`]: the
//! authorities' v3 identities and directory addresses, and the fallback caches.

use std::fmt::Write as _;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Number of directory authorities (fixed: the recipe is tuned for three).
pub const AUTHORITIES: usize = 3;

/// Errors building or running a private Tor network.
#[derive(Debug, thiserror::Error)]
pub enum TorNetError {
    /// A tor program could not be run at all.
    #[error("running {program}: {source} (is Debian's `tor` package installed?)")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        source: io::Error,
    },
    /// A key-generation command failed.
    #[error("{what} failed: {detail}")]
    KeyGen {
        /// The command.
        what: String,
        /// Its exit status and error output.
        detail: String,
    },
    /// A file in the key cache or a data directory is missing or malformed.
    #[error("{path}: {problem}")]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// File system trouble.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: io::Error,
    },
    /// A tor exited while the network was starting or running.
    #[error("tor {nickname} exited ({status}); last log lines:\n{log_tail}")]
    Exited {
        /// The node.
        nickname: String,
        /// Its exit status.
        status: String,
        /// The end of its notice log.
        log_tail: String,
    },
    /// The authorities did not agree on a full consensus in time.
    #[error("no full consensus after {0:?}: {1}")]
    NotReady(Duration, String),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> TorNetError {
    let what = what.into();
    move |source| TorNetError::Io { what, source }
}

/// How to build a network.
#[derive(Debug, Clone)]
pub struct TorNetworkConfig {
    /// Where keys are cached between runs.
    pub key_cache: PathBuf,
    /// Where this run's data directories and logs go (created; should be fresh).
    pub work_dir: PathBuf,
    /// Non-authority relays (the authorities are relays too). At least 1.
    pub relays: usize,
    /// How long to wait for a full consensus.
    pub ready_timeout: Duration,
    /// The `tor` program.
    pub tor: PathBuf,
    /// The `tor-gencert` program.
    pub tor_gencert: PathBuf,
}

impl TorNetworkConfig {
    /// Defaults: the shared key cache, 3 relays, 90 s to become ready, programs from the
    /// environment (`ONIONPOST_TOR`, `ONIONPOST_TOR_GENCERT`) or the usual Debian paths.
    pub fn new(work_dir: impl Into<PathBuf>) -> Self {
        Self {
            key_cache: default_key_cache(),
            work_dir: work_dir.into(),
            relays: 3,
            ready_timeout: Duration::from_secs(90),
            tor: find_program("ONIONPOST_TOR", "tor", &["/usr/sbin/tor", "/usr/bin/tor"]),
            tor_gencert: find_program(
                "ONIONPOST_TOR_GENCERT",
                "tor-gencert",
                &["/usr/bin/tor-gencert", "/usr/sbin/tor-gencert"],
            ),
        }
    }
}

/// The key cache: `ONIONPOST_TOR_KEYS`, else `/var/tmp/onionpost-tor-keys-v1`.
pub fn default_key_cache() -> PathBuf {
    std::env::var_os("ONIONPOST_TOR_KEYS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/onionpost-tor-keys-v1"))
}

fn find_program(env: &str, name: &str, candidates: &[&str]) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        return PathBuf::from(p);
    }
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// Public facts about one node of the network.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Its nickname (`auth0`, `relay0`, …).
    pub nickname: String,
    /// RSA identity fingerprint, 40 upper-case hex digits.
    pub rsa_identity: String,
    /// Ed25519 identity, base64 without padding.
    pub ed_identity: String,
    /// The OR port address.
    pub or_addr: SocketAddr,
    /// Directory port (authorities only).
    pub dir_addr: Option<SocketAddr>,
    /// The v3 authority identity, 40 hex digits (authorities only).
    pub v3ident: Option<String>,
}

/// What `onionpost-devnet tor up` writes to `network.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetworkInfo {
    /// The nodes, authorities first.
    pub nodes: Vec<NodeInfo>,
    /// Seconds from start to a full consensus at every authority.
    pub bootstrap_secs: f64,
}

impl NetworkInfo {
    /// The authorities.
    pub fn authorities(&self) -> impl Iterator<Item = &NodeInfo> {
        self.nodes.iter().filter(|n| n.v3ident.is_some())
    }

    /// The `[transport.onion.private]` table of an `onionpost-node` configuration (TOML)
    /// that points a node at this network.
    pub fn node_config_toml(&self) -> String {
        let mut s = String::from("[transport.onion.private]\nauthorities = [\n");
        for a in self.authorities() {
            let _ = writeln!(
                s,
                "  {{ v3ident = \"{}\", dir = \"{}\" }},",
                a.v3ident.as_deref().unwrap_or_default(),
                a.dir_addr.expect("authorities have a DirPort"),
            );
        }
        s.push_str("]\nfallbacks = [\n");
        for a in self.authorities() {
            let _ = writeln!(
                s,
                "  {{ rsa_identity = \"{}\", ed_identity = \"{}\", orport = \"{}\" }},",
                a.rsa_identity, a.ed_identity, a.or_addr,
            );
        }
        s.push_str("]\n");
        s
    }

    /// The torrc of node `n` with its data (keys, state, `notice.log`) in `dir`. With
    /// `owner`, the tor exits when that process does (`__OwningControllerProcess`).
    pub fn torrc(&self, n: &NodeInfo, dir: &Path, owner: Option<u32>) -> String {
        let mut s = String::new();
        let mut line = |l: String| {
            s.push_str(&l);
            s.push('\n');
        };
        line("TestingTorNetwork 1".into());
        line(format!("DataDirectory {}", dir.display()));
        line(format!("Nickname {}", n.nickname));
        line(format!(
            "Log notice file {}",
            dir.join("notice.log").display()
        ));
        line("SafeLogging 0".into());
        line("RunAsDaemon 0".into());
        line("ShutdownWaitLength 0".into());
        if let Some(pid) = owner {
            line(format!("__OwningControllerProcess {pid}"));
        }
        line("GeoIPFile \"\"".into());
        line("GeoIPv6File \"\"".into());
        line("PathsNeededToBuildCircuits 0.67".into());
        line("V3AuthNIntervalsValid 2".into());
        line("SocksPort 0".into());
        line(format!("Address {}", n.or_addr.ip()));
        line(format!("ORPort {}", n.or_addr));
        line("AssumeReachable 1".into());
        line("ExitRelay 0".into());
        line("ExitPolicy reject *:*".into());
        line("ContactInfo onionpost-devnet".into());
        for a in self.authorities() {
            line(format!(
                "DirAuthority {} orport={} no-v2 v3ident={} {} {}",
                a.nickname,
                a.or_addr.port(),
                a.v3ident.as_deref().unwrap_or_default(),
                a.dir_addr.expect("authority DirPort"),
                a.rsa_identity
            ));
        }
        if let Some(dir_addr) = n.dir_addr {
            let hsdirs: Vec<String> = self
                .authorities()
                .map(|a| format!("${}", a.rsa_identity))
                .collect();
            line(format!("DirPort {dir_addr}"));
            line("AuthoritativeDirectory 1".into());
            line("V3AuthoritativeDirectory 1".into());
            line("AuthDirMaxServersPerAddr 0".into());
            line("V3AuthVotingInterval 15".into());
            line("V3AuthVoteDelay 2".into());
            line("V3AuthDistDelay 2".into());
            line("TestingV3AuthInitialVotingInterval 5".into());
            line("TestingV3AuthInitialVoteDelay 2".into());
            line("TestingV3AuthInitialDistDelay 2".into());
            line("AuthDirVoteStableGuaranteeMinUptime 0".into());
            line("AuthDirVoteStableGuaranteeMTBF 0".into());
            line("TestingDirAuthVoteGuard *".into());
            line(format!("TestingDirAuthVoteHSDir {}", hsdirs.join(",")));
            line("TestingDirAuthVoteHSDirIsStrict 1".into());
            line("ConsensusParams hsdir_interval=6 cbtdisabled=1".into());
        } else {
            line("DirCache 0".into());
        }
        s
    }
}

/// One running tor.
#[derive(Debug)]
struct Proc {
    nickname: String,
    dir: PathBuf,
    child: Child,
}

/// A running private Tor network; dropping it stops every tor.
#[derive(Debug)]
pub struct TorNetwork {
    info: NetworkInfo,
    work_dir: PathBuf,
    procs: Vec<Proc>,
}

impl TorNetwork {
    /// Generates (or reuses cached) keys, starts all tors and waits for a full consensus.
    ///
    /// The ports are chosen free a moment before the tors bind them, so another process on
    /// the machine can take one in between (a test suite starts many servers at once, and
    /// outgoing connections draw from the same range); a tor that exits while the network
    /// starts is therefore taken as such a collision, and the network is started again on
    /// fresh ports, up to [`START_ATTEMPTS`] times.
    pub fn start(cfg: &TorNetworkConfig) -> Result<TorNetwork, TorNetError> {
        let started = Instant::now();
        let mut attempt = 1;
        loop {
            match Self::start_once(cfg, started) {
                Err(TorNetError::Exited {
                    nickname,
                    status,
                    log_tail,
                }) if attempt < START_ATTEMPTS => {
                    tracing::warn!(%nickname, %status, attempt, "a tor exited while the network started; starting again on fresh ports: {log_tail}");
                    attempt += 1;
                }
                r => return r,
            }
        }
    }

    fn start_once(cfg: &TorNetworkConfig, started: Instant) -> Result<TorNetwork, TorNetError> {
        let relays = cfg.relays.max(1);
        let keys = ensure_keys(cfg, relays)?;
        fs::create_dir_all(&cfg.work_dir)
            .map_err(io_err(format!("creating {}", cfg.work_dir.display())))?;
        // Ports first: every torrc names all authorities.
        let mut nodes = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            nodes.push(NodeInfo {
                nickname: k.nickname.clone(),
                rsa_identity: k.rsa_identity.clone(),
                ed_identity: k.ed_identity.clone(),
                or_addr: free_addr()?,
                dir_addr: if i < AUTHORITIES {
                    Some(free_addr()?)
                } else {
                    None
                },
                v3ident: k.v3ident.clone(),
            });
        }
        let mut net = TorNetwork {
            info: NetworkInfo {
                nodes,
                bootstrap_secs: 0.0,
            },
            work_dir: cfg.work_dir.clone(),
            procs: Vec::new(),
        };
        for (i, (k, n)) in keys.iter().zip(net.info.nodes.clone()).enumerate() {
            if i == AUTHORITIES {
                // A relay uploads its descriptor once, at start; one that no authority
                // received is not listed for 90 minutes. Relays start when every
                // authority's DirPort accepts.
                net.wait_authorities_listening(cfg.ready_timeout)?;
            }
            let dir = cfg.work_dir.join(&n.nickname);
            // A data directory from an earlier attempt holds that attempt's state and log.
            let _ = fs::remove_dir_all(&dir);
            copy_dir(&k.dir.join("keys"), &dir.join("keys"))?;
            set_mode(&dir, 0o700)?;
            set_mode(&dir.join("keys"), 0o700)?;
            let torrc = dir.join("torrc");
            fs::write(&torrc, net.info.torrc(&n, &dir, Some(std::process::id())))
                .map_err(io_err(format!("writing {}", torrc.display())))?;
            // What tor prints before its notice log is open (a bad option, a port in use).
            let console = fs::File::create(dir.join(CONSOLE_LOG)).map_err(io_err(format!(
                "creating {}",
                dir.join(CONSOLE_LOG).display()
            )))?;
            let child = Command::new(&cfg.tor)
                .arg("-f")
                .arg(&torrc)
                .stdin(Stdio::null())
                .stdout(
                    console
                        .try_clone()
                        .map_err(io_err("duplicating a file handle"))?,
                )
                .stderr(console)
                .spawn()
                .map_err(|source| TorNetError::Spawn {
                    program: cfg.tor.display().to_string(),
                    source,
                })?;
            tracing::debug!(nickname = %n.nickname, pid = child.id(), "started tor");
            net.procs.push(Proc {
                nickname: n.nickname.clone(),
                dir,
                child,
            });
        }
        net.wait_ready(cfg.ready_timeout)?;
        net.info.bootstrap_secs = started.elapsed().as_secs_f64();
        tracing::info!(
            secs = net.info.bootstrap_secs,
            nodes = net.info.nodes.len(),
            "private Tor network ready"
        );
        let json = serde_json::to_vec_pretty(&net.info).expect("serializes");
        let path = cfg.work_dir.join("network.json");
        fs::write(&path, json).map_err(io_err(format!("writing {}", path.display())))?;
        Ok(net)
    }

    /// One network for the whole process, started on first use in a fresh temporary
    /// directory (`ONIONPOST_TOR_WORK` if set). Panics if it cannot start: tests need it.
    ///
    /// Statics are never dropped: the tors outlive the last test by a few seconds and then
    /// exit because their owning process is gone.
    pub fn shared() -> &'static TorNetwork {
        static NET: OnceLock<TorNetwork> = OnceLock::new();
        NET.get_or_init(|| {
            let base = std::env::var_os("ONIONPOST_TOR_WORK")
                .map(PathBuf::from)
                .unwrap_or_else(std::env::temp_dir);
            let work = base.join(format!(
                "onionpost-tor-{}-{}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis())
                    .unwrap_or(0)
            ));
            match TorNetwork::start(&TorNetworkConfig::new(&work)) {
                Ok(n) => n,
                Err(e) => panic!(
                    "starting the private Tor network in {}: {e}",
                    work.display()
                ),
            }
        })
    }

    /// Public facts about the network.
    pub fn info(&self) -> &NetworkInfo {
        &self.info
    }

    /// The `[transport.onion.private]` table for `onionpost-node` configurations.
    pub fn node_config_toml(&self) -> String {
        self.info.node_config_toml()
    }

    /// This run's directory (data directories, torrcs, notice logs, `network.json`).
    pub fn work_dir(&self) -> &Path {
        &self.work_dir
    }

    /// Checks that every tor is still running.
    pub fn check(&mut self) -> Result<(), TorNetError> {
        for p in &mut self.procs {
            if let Ok(Some(status)) = p.child.try_wait() {
                return Err(TorNetError::Exited {
                    nickname: p.nickname.clone(),
                    status: status.to_string(),
                    log_tail: [
                        log_tail(&p.dir.join(CONSOLE_LOG)),
                        log_tail(&p.dir.join("notice.log")),
                    ]
                    .join("\n"),
                });
            }
        }
        Ok(())
    }

    /// Waits until every authority's DirPort accepts connections.
    fn wait_authorities_listening(&mut self, limit: Duration) -> Result<(), TorNetError> {
        let deadline = Instant::now() + limit;
        let addrs: Vec<(String, SocketAddr)> = self
            .info
            .authorities()
            .filter_map(|a| Some((a.nickname.clone(), a.dir_addr?)))
            .collect();
        for (nickname, addr) in addrs {
            loop {
                self.check()?;
                match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                    Ok(_) => break,
                    Err(e) if Instant::now() >= deadline => {
                        return Err(TorNetError::NotReady(
                            limit,
                            format!("{nickname}'s DirPort {addr} does not accept: {e}"),
                        ));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
        Ok(())
    }

    /// Polls every authority's consensus until each lists every node.
    fn wait_ready(&mut self, limit: Duration) -> Result<(), TorNetError> {
        let deadline = Instant::now() + limit;
        let want: Vec<String> = self.info.nodes.iter().map(|n| n.nickname.clone()).collect();
        let mut last = String::from("no authority answered yet");
        loop {
            self.check()?;
            let mut all = true;
            for a in self.info.authorities() {
                let addr = a.dir_addr.expect("authority DirPort");
                match fetch_consensus_nicknames(addr) {
                    Ok(listed) => {
                        let missing: Vec<&String> =
                            want.iter().filter(|w| !listed.contains(*w)).collect();
                        if !missing.is_empty() {
                            all = false;
                            last = format!("{} lists {listed:?}, missing {missing:?}", a.nickname);
                        }
                    }
                    Err(e) => {
                        all = false;
                        last = format!("{}: {e}", a.nickname);
                    }
                }
            }
            if all {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(TorNetError::NotReady(limit, last));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for TorNetwork {
    fn drop(&mut self) {
        for p in &mut self.procs {
            let _ = p.child.kill();
        }
        for p in &mut self.procs {
            let _ = p.child.wait();
        }
    }
}

/// Fetches `/tor/status-vote/current/consensus-microdesc` and returns the nicknames it lists.
pub(crate) fn fetch_consensus_nicknames(dir: SocketAddr) -> io::Result<Vec<String>> {
    let mut s = TcpStream::connect_timeout(&dir, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(
        b"GET /tor/status-vote/current/consensus-microdesc HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n",
    )?;
    let mut body = Vec::new();
    s.read_to_end(&mut body)?;
    let text = String::from_utf8_lossy(&body);
    let status = text.lines().next().unwrap_or_default();
    if !status.contains(" 200") {
        return Err(io::Error::other(format!("answered {status:?}")));
    }
    Ok(text
        .lines()
        .filter_map(|l| l.strip_prefix("r "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_string)
        .collect())
}

/// Cached keys of one node.
#[derive(Debug, Clone)]
pub struct NodeKeys {
    /// Its nickname (`auth0`, `relay0`, …).
    pub nickname: String,
    /// Its directory in the cache (the keys are in `keys/`).
    pub dir: PathBuf,
    /// RSA identity fingerprint.
    pub rsa_identity: String,
    /// Ed25519 identity, base64.
    pub ed_identity: String,
    /// The v3 authority identity (authorities only).
    pub v3ident: Option<String>,
}

fn nicknames(relays: usize) -> Vec<String> {
    (0..AUTHORITIES)
        .map(|i| format!("auth{i}"))
        .chain((0..relays).map(|i| format!("relay{i}")))
        .collect()
}

/// Loads the cached keys of 3 authorities and `relays` relays from `cfg.key_cache`, generating
/// whatever is missing with `cfg.tor` and `cfg.tor_gencert` (a complete cache needs neither).
/// Concurrent processes generate in private directories and rename them into place: the
/// first one wins, the others use it.
pub fn ensure_keys(cfg: &TorNetworkConfig, relays: usize) -> Result<Vec<NodeKeys>, TorNetError> {
    fs::create_dir_all(&cfg.key_cache)
        .map_err(io_err(format!("creating {}", cfg.key_cache.display())))?;
    let mut out = Vec::new();
    for (i, nick) in nicknames(relays).into_iter().enumerate() {
        let dir = cfg.key_cache.join(&nick);
        if !dir.join("complete").exists() {
            let started = Instant::now();
            let tmp = cfg
                .key_cache
                .join(format!(".{nick}.{}.tmp", std::process::id()));
            let _ = fs::remove_dir_all(&tmp);
            generate_keys(cfg, &tmp, &nick, i < AUTHORITIES)?;
            if fs::rename(&tmp, &dir).is_err() {
                // Someone else finished first (or a stale incomplete dir is in the way).
                if !dir.join("complete").exists() {
                    let _ = fs::remove_dir_all(&dir);
                    fs::rename(&tmp, &dir)
                        .map_err(io_err(format!("moving keys into {}", dir.display())))?;
                } else {
                    let _ = fs::remove_dir_all(&tmp);
                }
            }
            tracing::info!(%nick, secs = started.elapsed().as_secs_f64(), "generated tor keys");
        }
        out.push(load_keys(&dir, &nick, i < AUTHORITIES)?);
    }
    Ok(out)
}

fn run_checked(cmd: &mut Command, what: &str, stdin: &[u8]) -> Result<(), TorNetError> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| TorNetError::Spawn { program, source })?;
    if let Some(mut i) = child.stdin.take() {
        let _ = i.write_all(stdin);
    }
    let out = child
        .wait_with_output()
        .map_err(io_err(format!("waiting for {what}")))?;
    if !out.status.success() {
        return Err(TorNetError::KeyGen {
            what: what.into(),
            detail: format!(
                "{}: {}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            ),
        });
    }
    Ok(())
}

fn generate_keys(
    cfg: &TorNetworkConfig,
    dir: &Path,
    nick: &str,
    authority: bool,
) -> Result<(), TorNetError> {
    let keys = dir.join("keys");
    fs::create_dir_all(&keys).map_err(io_err(format!("creating {}", keys.display())))?;
    set_mode(dir, 0o700)?;
    set_mode(&keys, 0o700)?;
    if authority {
        run_checked(
            Command::new(&cfg.tor_gencert)
                .current_dir(&keys)
                .args(["--create-identity-key", "--passphrase-fd", "0", "-m", "24"])
                .args(["-i", "authority_identity_key"])
                .args(["-s", "authority_signing_key"])
                .args(["-c", "authority_certificate"]),
            &format!("tor-gencert for {nick}"),
            b"\n",
        )?;
    }
    run_checked(
        Command::new(&cfg.tor)
            .args(["--ignore-missing-torrc", "-f", "/nonexistent/torrc"])
            .arg("--DataDirectory")
            .arg(dir)
            .args(["--ORPort", "1", "--Nickname", nick])
            .args(["--GeoIPFile", "", "--GeoIPv6File", "", "--SocksPort", "0"])
            .args(["--Log", "err stderr"])
            .arg("--list-fingerprint"),
        &format!("tor --list-fingerprint for {nick}"),
        b"",
    )?;
    // Only the keys are worth caching.
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name();
            if name != "keys" && name != "fingerprint" && name != "fingerprint-ed25519" {
                let p = e.path();
                let _ = if p.is_dir() {
                    fs::remove_dir_all(&p)
                } else {
                    fs::remove_file(&p)
                };
            }
        }
    }
    fs::write(dir.join("complete"), b"").map_err(io_err("marking keys complete"))?;
    Ok(())
}

fn read_field(path: &Path, pick: impl Fn(&str) -> Option<String>) -> Result<String, TorNetError> {
    let text = fs::read_to_string(path).map_err(io_err(format!("reading {}", path.display())))?;
    text.lines()
        .find_map(pick)
        .ok_or_else(|| TorNetError::BadFile {
            path: path.to_path_buf(),
            problem: "expected field not found".into(),
        })
}

fn load_keys(dir: &Path, nick: &str, authority: bool) -> Result<NodeKeys, TorNetError> {
    let second = |l: &str| l.split_whitespace().nth(1).map(str::to_string);
    let rsa_identity = read_field(&dir.join("fingerprint"), second)?;
    let ed_identity = read_field(&dir.join("fingerprint-ed25519"), second)?;
    let v3ident = if authority {
        Some(read_field(
            &dir.join("keys").join("authority_certificate"),
            |l| l.strip_prefix("fingerprint ").map(|s| s.trim().to_string()),
        )?)
    } else {
        None
    };
    Ok(NodeKeys {
        nickname: nick.to_string(),
        dir: dir.to_path_buf(),
        rsa_identity,
        ed_identity,
        v3ident,
    })
}

pub(crate) fn copy_dir(from: &Path, to: &Path) -> Result<(), TorNetError> {
    fs::create_dir_all(to).map_err(io_err(format!("creating {}", to.display())))?;
    for e in fs::read_dir(from).map_err(io_err(format!("reading {}", from.display())))? {
        let e = e.map_err(io_err(format!("reading {}", from.display())))?;
        let dest = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &dest)?;
        } else {
            fs::copy(e.path(), &dest).map_err(io_err(format!("copying to {}", dest.display())))?;
        }
    }
    Ok(())
}

pub(crate) fn set_mode(path: &Path, mode: u32) -> Result<(), TorNetError> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(io_err(format!("chmod {}", path.display())))
}

/// How many times [`TorNetwork::start`] starts the network when a tor exits meanwhile.
pub const START_ATTEMPTS: u32 = 3;

/// A tor's standard output and error, in its data directory.
const CONSOLE_LOG: &str = "console.log";

/// A loopback address with a port that was free a moment ago.
fn free_addr() -> Result<SocketAddr, TorNetError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(io_err("choosing a free port"))?;
    l.local_addr().map_err(io_err("choosing a free port"))
}

fn log_tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a whole network and checks that it becomes ready (needs Debian's `tor`).
    #[test]
    fn private_network_becomes_ready() {
        let work = tempfile::tempdir().unwrap();
        let mut net = TorNetwork::start(&TorNetworkConfig::new(work.path())).unwrap();
        assert_eq!(net.info().nodes.len(), AUTHORITIES + 3);
        assert_eq!(net.info().authorities().count(), AUTHORITIES);
        let toml = net.node_config_toml();
        assert!(
            toml.contains("v3ident") && toml.contains("ed_identity"),
            "{toml}"
        );
        net.check().unwrap();
        eprintln!("network ready in {:.1} s", net.info().bootstrap_secs);
    }
}
