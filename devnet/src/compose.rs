//! The compose devnet: the validators, the private Tor network and mail nodes as containers
//! on a private Docker network, run by `docker-compose.yml` at the top of the repository.
//!
//! [`init`] writes everything the containers mount; [`Compose`] runs `docker compose` (or the
//! older `docker-compose`) on it, and cuts, pauses, kills and restores containers for the
//! fault tests. The images come from `docker/build-images.sh`.
//!
//! Every container has a fixed address on the subnet `P.0/24` ([`ComposeOptions::subnet`],
//! default `10.89.0`), because validator and Tor configurations name socket addresses:
//! validators `P.10`–`P.13`, directory authorities `P.20`–`P.22`, relays `P.30`–`P.32`,
//! mail nodes `P.40`–`P.42`. The host reaches them there too, so `onionpost-devnet status`
//! asks the validators directly.
//!
//! Layout of a compose devnet directory:
//! - everything of a process devnet (`devnet.json`, `admin-0.key`, `validator-<i>/`), with
//!   container addresses; each `validator-<i>/` is mounted at `/home/validator`;
//! - `compose.json` ([`ComposeManifest`]: services, addresses, identities and their
//!   passwords) and `compose.env` (the variables `docker-compose.yml` reads);
//! - `tor/network.json` (the network's public facts) and `tor/<nickname>/` (`torrc`, keys,
//!   the tor's data), mounted at `/tor`;
//! - `node-<i>/`: a mail node's home (`node.toml`, identities, mailboxes, queue, and
//!   `tor-probe/`, the C tor client its health check connects through), mounted at
//!   `/home/node`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use anyhow::{Context, Result, bail, ensure};
use serde::{Deserialize, Serialize};

use crate::tor::{self, NetworkInfo, NodeInfo, TorNetworkConfig};
use crate::{InitOptions, init_at};

/// Validators of the compose devnet (the compose file names four).
pub const VALIDATORS: usize = 4;
/// Non-authority relays of its Tor network.
pub const RELAYS: usize = 3;
/// The identity each mail node hosts: node `i` hosts `IDENTITIES[i]`.
pub const IDENTITIES: [&str; 3] = ["alice", "bob", "carol"];
/// Validator consensus port (gRPC is the next one).
pub const VALIDATOR_PORT: u16 = 26600;
/// Tor OR port of every relay.
pub const OR_PORT: u16 = 5000;
/// Tor directory port of every authority.
pub const DIR_PORT: u16 = 7000;
/// The mail nodes' SMTP submission port, on the container's loopback.
pub const SUBMISSION_PORT: u16 = 587;
/// The mail nodes' IMAP port, on the container's loopback.
pub const IMAP_PORT: u16 = 143;
/// File name of the manifest.
pub const COMPOSE_MANIFEST: &str = "compose.json";
/// File name of the variables for `docker compose --env-file`.
pub const COMPOSE_ENV: &str = "compose.env";

/// Options of [`init`].
#[derive(Debug, Clone)]
pub struct ComposeOptions {
    /// The compose project: container names are `<project>-<service>`, the network
    /// `<project>-devnet`.
    pub project: String,
    /// The first three octets of the /24 the containers live on.
    pub subnet: [u8; 3],
    /// Target milliseconds between blocks.
    pub block_ms: u64,
    /// Chain id.
    pub chain_id: String,
    /// Where Tor keys are cached between runs ([`tor::default_key_cache`]).
    pub key_cache: PathBuf,
    /// The image whose `tor` generates missing Tor keys.
    pub tor_image: String,
}

impl Default for ComposeOptions {
    fn default() -> Self {
        Self {
            project: "onionpost".into(),
            subnet: [10, 89, 0],
            block_ms: 200,
            chain_id: "onionpost-compose".into(),
            key_cache: tor::default_key_cache(),
            tor_image: "onionpost-tor:dev".into(),
        }
    }
}

/// One container of the devnet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    /// The compose service name (`validator-0`, `auth0`, `relay1`, `node-2`).
    pub service: String,
    /// The container's name.
    pub container: String,
    /// Its address on the devnet network.
    pub ip: IpAddr,
}

/// An identity hosted by a mail node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityEntry {
    /// Its name (the local part).
    pub name: String,
    /// Its address, `name@<onion>.onion`; also its IMAP and submission login.
    pub address: String,
    /// Its IMAP and submission password (a devnet keeps it in clear here).
    pub password: String,
}

/// A mail node and its identities.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeService {
    /// The container.
    #[serde(flatten)]
    pub service: Service,
    /// Its identities.
    pub identities: Vec<IdentityEntry>,
}

/// What [`init`] writes to `compose.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComposeManifest {
    /// The compose project.
    pub project: String,
    /// The Docker network.
    pub network: String,
    /// The subnet, `a.b.c.0/24`.
    pub subnet: String,
    /// Validators.
    pub validators: Vec<Service>,
    /// Tor authorities, then relays.
    pub tor: Vec<Service>,
    /// Mail nodes.
    pub nodes: Vec<NodeService>,
}

impl ComposeManifest {
    /// Every service: validators, tor, nodes.
    pub fn services(&self) -> impl Iterator<Item = &Service> {
        self.validators
            .iter()
            .chain(&self.tor)
            .chain(self.nodes.iter().map(|n| &n.service))
    }

    /// The service called `name`.
    pub fn service(&self, name: &str) -> Result<&Service> {
        self.services()
            .find(|s| s.service == name)
            .with_context(|| format!("the compose devnet has no service {name:?}"))
    }
}

fn ip(subnet: [u8; 3], host: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(subnet[0], subnet[1], subnet[2], host))
}

/// Parses `a.b.c` (or `a.b.c.0/24`) into the three octets of a /24.
pub fn parse_subnet(s: &str) -> Result<[u8; 3]> {
    let s = s.strip_suffix(".0/24").unwrap_or(s);
    let parts: Vec<&str> = s.split('.').collect();
    ensure!(
        parts.len() == 3,
        "subnet {s:?}: want three octets such as 10.89.0"
    );
    let mut out = [0u8; 3];
    for (o, p) in out.iter_mut().zip(parts) {
        *o = p
            .parse()
            .with_context(|| format!("subnet {s:?}: {p:?} is not an octet"))?;
    }
    Ok(out)
}

/// Creates a compose devnet in `dir` (which must not hold a devnet): validator homes and
/// genesis, Tor keys (generated in `opts.tor_image` unless cached) and torrcs, mail node homes
/// with one identity each and their `node.toml`, and the manifest.
pub fn init(dir: &Path, opts: &ComposeOptions) -> Result<ComposeManifest> {
    ensure!(
        !dir.join(COMPOSE_MANIFEST).exists(),
        "{} already holds a compose devnet; remove it or choose another --dir",
        dir.display()
    );
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let dir = dir
        .canonicalize()
        .with_context(|| format!("resolving {}", dir.display()))?;
    let project = &opts.project;
    let container = |service: &str| format!("{project}-{service}");
    let service = |name: String, host: u8| Service {
        container: container(&name),
        service: name,
        ip: ip(opts.subnet, host),
    };

    // Validators: a process devnet's homes, on container addresses.
    let m = init_at(
        &dir,
        &InitOptions {
            validators: VALIDATORS,
            admins: 1,
            chain_id: opts.chain_id.clone(),
            base_port: VALIDATOR_PORT,
            block_ms: opts.block_ms,
        },
        |i| ip(opts.subnet, 10 + i as u8),
    )?;
    let validators: Vec<Service> = m
        .validators
        .iter()
        .enumerate()
        .map(|(i, v)| service(v.moniker.clone(), 10 + i as u8))
        .collect();

    // The Tor network.
    let keys = tor_keys(&dir, opts)?;
    let mut nodes = Vec::new();
    let mut tor_services = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        let host = if i < tor::AUTHORITIES {
            20 + i
        } else {
            30 + i - tor::AUTHORITIES
        } as u8;
        let addr = ip(opts.subnet, host);
        nodes.push(NodeInfo {
            nickname: k.nickname.clone(),
            rsa_identity: k.rsa_identity.clone(),
            ed_identity: k.ed_identity.clone(),
            or_addr: SocketAddr::new(addr, OR_PORT),
            dir_addr: k.v3ident.as_ref().map(|_| SocketAddr::new(addr, DIR_PORT)),
            v3ident: k.v3ident.clone(),
        });
        tor_services.push(service(k.nickname.clone(), host));
    }
    let net = NetworkInfo {
        nodes,
        bootstrap_secs: 0.0,
    };
    let tor_dir = dir.join("tor");
    for (k, n) in keys.iter().zip(&net.nodes) {
        let d = tor_dir.join(&n.nickname);
        tor::copy_dir(&k.dir.join("keys"), &d.join("keys"))?;
        tor::set_mode(&d, 0o700)?;
        tor::set_mode(&d.join("keys"), 0o700)?;
        let torrc = format!(
            "{}Log notice stdout\n",
            net.torrc(n, Path::new("/tor"), None)
        );
        write(&d.join("torrc"), torrc.as_bytes())?;
    }
    write(
        &tor_dir.join("network.json"),
        &serde_json::to_vec_pretty(&net)?,
    )?;

    // Mail nodes, one identity each, reading the ledger of the validators above.
    let genesis = m.validators[0].home.join("genesis.json");
    let ledger = NodeLedger {
        endpoints: validators
            .iter()
            .map(|v| format!("http://{}", SocketAddr::new(v.ip, VALIDATOR_PORT + 1)))
            .collect(),
        chain_id: opts.chain_id.clone(),
    };
    let mut mail_nodes = Vec::new();
    for (i, name) in IDENTITIES.iter().enumerate() {
        let home = dir.join(format!("node-{i}"));
        onionpost_node::fsutil::create_dir_mode(&home, 0o700)
            .with_context(|| format!("creating {}", home.display()))?;
        let (id, password) = onionpost_node::identity::IdentityStore::new(&home)
            .create(name)
            .with_context(|| format!("creating identity {name} in {}", home.display()))?;
        write(&home.join("node.toml"), node_toml(&net, &ledger).as_bytes())?;
        std::fs::copy(&genesis, home.join(NODE_GENESIS))
            .with_context(|| format!("copying {} into {}", genesis.display(), home.display()))?;
        let probe = home.join("tor-probe");
        std::fs::create_dir_all(&probe).with_context(|| format!("creating {}", probe.display()))?;
        tor::set_mode(&probe, 0o700)?;
        write(&probe.join("torrc"), probe_torrc(&net).as_bytes())?;
        mail_nodes.push(NodeService {
            service: service(format!("node-{i}"), 40 + i as u8),
            identities: vec![IdentityEntry {
                name: name.to_string(),
                address: id.address(),
                password,
            }],
        });
    }

    let manifest = ComposeManifest {
        project: project.clone(),
        network: format!("{project}-devnet"),
        subnet: format!(
            "{}.{}.{}.0/24",
            opts.subnet[0], opts.subnet[1], opts.subnet[2]
        ),
        validators,
        tor: tor_services,
        nodes: mail_nodes,
    };
    write_private(
        &dir.join(COMPOSE_MANIFEST),
        &serde_json::to_vec_pretty(&manifest)?,
    )?;
    let (uid, gid) = owner(&dir)?;
    let env = format!(
        "COMPOSE_PROJECT_NAME={project}\nONIONPOST_PROJECT={project}\nONIONPOST_DEVNET={}\n\
         ONIONPOST_SUBNET={}.{}.{}\nONIONPOST_UID={uid}\nONIONPOST_GID={gid}\n",
        dir.display(),
        opts.subnet[0],
        opts.subnet[1],
        opts.subnet[2]
    );
    write(&dir.join(COMPOSE_ENV), env.as_bytes())?;
    Ok(manifest)
}

/// The genesis file in a mail node's home (mounted at `/home/node`), from which its ledger
/// client derives the validator set.
pub const NODE_GENESIS: &str = "genesis.json";

/// What a mail node needs to read the devnet's ledger.
struct NodeLedger {
    /// Every validator's gRPC endpoint on the devnet's network.
    endpoints: Vec<String>,
    /// The chain id.
    chain_id: String,
}

/// The configuration of a mail node in the devnet: client listeners on the container's
/// loopback, the private Tor network, quick retries (a devnet heals in seconds, not hours),
/// and the devnet's ledger (every validator an endpoint) for list mail.
fn node_toml(net: &NetworkInfo, ledger: &NodeLedger) -> String {
    let endpoints: Vec<String> = ledger
        .endpoints
        .iter()
        .map(|e| format!("\"{e}\""))
        .collect();
    format!(
        "[submission]\nlisten = \"127.0.0.1:{SUBMISSION_PORT}\"\n\
         [imap]\nlisten = \"127.0.0.1:{IMAP_PORT}\"\n\
         [queue]\nretry_base_secs = 2\nretry_max_secs = 10\n\
         [ledger]\nendpoints = [{}]\nchain_id = \"{}\"\ngenesis = \"/home/node/{NODE_GENESIS}\"\n\
         [transport]\nkind = \"onion\"\n\
         [transport.onion]\nstate_dir = \"/home/node/arti\"\n{}",
        endpoints.join(", "),
        ledger.chain_id,
        net.node_config_toml()
    )
}

/// The torrc of the C tor client next to each mail node, through which its health check
/// reaches the node's onion services from outside, as any sender would.
fn probe_torrc(net: &NetworkInfo) -> String {
    let mut s = String::from(
        "TestingTorNetwork 1\nDataDirectory /home/node/tor-probe\nSocksPort 127.0.0.1:9050\n\
         UseEntryGuards 0\nPathsNeededToBuildCircuits 0.67\nGeoIPFile \"\"\nGeoIPv6File \"\"\n\
         Log notice file /home/node/tor-probe/notice.log\nRunAsDaemon 0\nShutdownWaitLength 0\n",
    );
    for a in net.authorities() {
        s.push_str(&format!(
            "DirAuthority {} orport={} no-v2 v3ident={} {} {}\n",
            a.nickname,
            a.or_addr.port(),
            a.v3ident.as_deref().unwrap_or_default(),
            a.dir_addr.map(|d| d.to_string()).unwrap_or_default(),
            a.rsa_identity
        ));
    }
    s
}

/// The Tor keys of 3 authorities and [`RELAYS`] relays from the key cache, generated first
/// by the tor image when the cache lacks them (the host needs no `tor`).
fn tor_keys(dir: &Path, opts: &ComposeOptions) -> Result<Vec<tor::NodeKeys>> {
    let mut cfg = TorNetworkConfig::new(dir);
    cfg.key_cache = opts.key_cache.clone();
    // Programs that cannot exist: loading a complete cache needs none, and a missing key
    // must be made by the image's tor, not by whatever tor the host may have.
    cfg.tor = "/nonexistent/tor".into();
    cfg.tor_gencert = "/nonexistent/tor-gencert".into();
    let complete = (0..tor::AUTHORITIES)
        .map(|i| format!("auth{i}"))
        .chain((0..RELAYS).map(|i| format!("relay{i}")))
        .all(|nick| opts.key_cache.join(nick).join("complete").exists());
    if complete {
        return Ok(tor::ensure_keys(&cfg, RELAYS)?);
    }
    std::fs::create_dir_all(&opts.key_cache)
        .with_context(|| format!("creating {}", opts.key_cache.display()))?;
    let (uid, gid) = owner(&opts.key_cache)?;
    let out = Command::new("docker")
        .args(["run", "--rm", "--network", "none", "--user"])
        .arg(format!("{uid}:{gid}"))
        .arg("-v")
        .arg(format!("{}:/keys", opts.key_cache.display()))
        .arg(&opts.tor_image)
        .args(["onionpost-devnet", "tor", "keys", "--keys", "/keys"])
        .args(["--relays", &RELAYS.to_string()])
        .output()
        .context("running docker")?;
    ensure!(
        out.status.success(),
        "generating Tor keys in {}: {}{} (built by docker/build-images.sh?)",
        opts.tor_image,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    tor::ensure_keys(&cfg, RELAYS).context("reading the Tor keys the image generated")
}

fn owner(path: &Path) -> Result<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    Ok((md.uid(), md.gid()))
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(bytes)
        .with_context(|| format!("writing {}", path.display()))
}

/// Reads a compose devnet's manifest, if `dir` holds one.
pub fn load(dir: &Path) -> Result<Option<ComposeManifest>> {
    let path = dir.join(COMPOSE_MANIFEST);
    match std::fs::read(&path) {
        Ok(b) => {
            Ok(Some(serde_json::from_slice(&b).with_context(|| {
                format!("{} is corrupt", path.display())
            })?))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Runs `docker ARGS`; its standard output, or an error with its standard error.
pub fn docker<I, S>(args: I) -> Result<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut cmd = Command::new("docker");
    cmd.args(args);
    checked(&mut cmd)
}

fn checked(cmd: &mut Command) -> Result<String> {
    let what = format!("{cmd:?}");
    let out: Output = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The compose program: `docker compose` when the plugin is there, else `docker-compose`.
fn compose_program() -> &'static [&'static str] {
    static PROGRAM: OnceLock<&'static [&'static str]> = OnceLock::new();
    PROGRAM.get_or_init(|| {
        let plugin = Command::new("docker")
            .args(["compose", "version"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if plugin {
            &["docker", "compose"]
        } else {
            &["docker-compose"]
        }
    })
}

/// What Docker says about a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContainerState {
    /// `running`, `paused`, `exited`, … or `absent`.
    pub status: String,
    /// `healthy`, `unhealthy`, `starting`, or empty when it has no health check.
    pub health: String,
    /// Whether it is attached to the devnet network.
    pub connected: bool,
}

/// A compose devnet on disk, and the compose file that runs it.
#[derive(Debug, Clone)]
pub struct Compose {
    /// The devnet directory.
    pub dir: PathBuf,
    /// The compose file.
    pub file: PathBuf,
    /// Its manifest.
    pub manifest: ComposeManifest,
}

impl Compose {
    /// Opens the compose devnet in `dir`, run by the compose file `file`.
    pub fn open(dir: &Path, file: &Path) -> Result<Compose> {
        let dir = dir
            .canonicalize()
            .with_context(|| format!("resolving {}", dir.display()))?;
        let manifest = load(&dir)?.with_context(|| {
            format!(
                "{} holds no compose devnet (run `onionpost-devnet compose init --dir {}`)",
                dir.display(),
                dir.display()
            )
        })?;
        ensure!(file.is_file(), "no compose file at {}", file.display());
        Ok(Compose {
            dir,
            file: file.to_path_buf(),
            manifest,
        })
    }

    /// A `docker compose` command for this devnet (project, variables, file), without
    /// its subcommand.
    pub fn command(&self) -> Command {
        let prog = compose_program();
        let mut cmd = Command::new(prog[0]);
        cmd.args(&prog[1..])
            .arg("--project-name")
            .arg(&self.manifest.project)
            .arg("--env-file")
            .arg(self.dir.join(COMPOSE_ENV))
            .arg("--file")
            .arg(&self.file);
        cmd
    }

    /// Creates and starts `services` (all when empty) in the background.
    pub fn up(&self, services: &[&str]) -> Result<()> {
        let mut cmd = self.command();
        cmd.args(["up", "--detach", "--no-build", "--no-color"])
            .args(services);
        checked(&mut cmd).map(|_| ())
    }

    /// Stops and removes every container and the network.
    pub fn down(&self) -> Result<()> {
        let mut cmd = self.command();
        cmd.args(["down", "--remove-orphans", "--timeout", "2"]);
        checked(&mut cmd).map(|_| ())
    }

    /// The last `lines` lines of a service's log.
    pub fn logs(&self, service: &str, lines: usize) -> String {
        let c = self.container(service).unwrap_or_default();
        let out = Command::new("docker")
            .args(["logs", "--tail", &lines.to_string(), &c])
            .output();
        match out {
            Ok(o) => format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => format!("(docker logs {c}: {e})"),
        }
    }

    /// The container of `service`.
    pub fn container(&self, service: &str) -> Result<String> {
        Ok(self.manifest.service(service)?.container.clone())
    }

    /// Detaches `service` from the devnet network: nothing reaches it, it reaches nothing.
    pub fn disconnect(&self, service: &str) -> Result<()> {
        let c = self.container(service)?;
        docker(["network", "disconnect", &self.manifest.network, &c]).map(|_| ())
    }

    /// Attaches `service` to the devnet network again, on its own address.
    pub fn connect(&self, service: &str) -> Result<()> {
        let s = self.manifest.service(service)?;
        docker([
            "network",
            "connect",
            "--ip",
            &s.ip.to_string(),
            &self.manifest.network,
            &s.container,
        ])
        .map(|_| ())
    }

    /// Freezes every process of `service` (`docker pause`).
    pub fn pause(&self, service: &str) -> Result<()> {
        docker(["pause", &self.container(service)?]).map(|_| ())
    }

    /// Thaws `service`.
    pub fn unpause(&self, service: &str) -> Result<()> {
        docker(["unpause", &self.container(service)?]).map(|_| ())
    }

    /// Kills `service` with SIGKILL.
    pub fn kill(&self, service: &str) -> Result<()> {
        docker(["kill", "--signal", "KILL", &self.container(service)?]).map(|_| ())
    }

    /// Starts a stopped `service` again.
    pub fn start(&self, service: &str) -> Result<()> {
        docker(["start", &self.container(service)?]).map(|_| ())
    }

    /// Runs `args` in `service`'s container; its standard output.
    pub fn exec(&self, service: &str, args: &[&str]) -> Result<String> {
        let c = self.container(service)?;
        let mut all = vec!["exec", c.as_str()];
        all.extend_from_slice(args);
        docker(all)
    }

    /// Drops every packet from `service` to the addresses of `peers` (a route to nowhere in
    /// its network namespace; the container needs `NET_ADMIN`). Doing it on both sides of a
    /// cut partitions the network while each side stays connected within itself.
    pub fn blackhole(&self, service: &str, peers: &[&str]) -> Result<()> {
        for p in peers {
            let ip = self.manifest.service(p)?.ip.to_string();
            self.exec(service, &["ip", "route", "add", "blackhole", &ip])?;
        }
        Ok(())
    }

    /// Removes the routes [`Compose::blackhole`] added.
    pub fn heal(&self, service: &str, peers: &[&str]) -> Result<()> {
        for p in peers {
            let ip = self.manifest.service(p)?.ip.to_string();
            self.exec(service, &["ip", "route", "del", "blackhole", &ip])?;
        }
        Ok(())
    }

    /// The output of `service`'s last health checks, oldest first, one line each (empty
    /// when it has none): what a check saw when the container is `unhealthy`.
    pub fn health_log(&self, service: &str) -> String {
        let Ok(c) = self.container(service) else {
            return String::new();
        };
        let format = "{{if .State.Health}}{{range .State.Health.Log}}\
                      exit {{.ExitCode}} at {{.End}}: {{.Output}}\n{{end}}{{end}}";
        docker(["inspect", "--format", format, &c]).unwrap_or_else(|e| format!("({e:#})"))
    }

    /// What Docker says about `service`'s container.
    pub fn state(&self, service: &str) -> Result<ContainerState> {
        let c = self.container(service)?;
        let format = format!(
            "{{{{.State.Status}}}}|{{{{if .State.Health}}}}{{{{.State.Health.Status}}}}{{{{end}}}}|\
             {{{{if index .NetworkSettings.Networks \"{}\"}}}}yes{{{{end}}}}",
            self.manifest.network
        );
        match docker(["inspect", "--format", &format, &c]) {
            Ok(out) => {
                let mut f = out.trim().split('|');
                Ok(ContainerState {
                    status: f.next().unwrap_or_default().to_string(),
                    health: f.next().unwrap_or_default().to_string(),
                    connected: f.next() == Some("yes"),
                })
            }
            Err(e) if e.to_string().contains("No such") => Ok(ContainerState {
                status: "absent".into(),
                health: String::new(),
                connected: false,
            }),
            Err(e) => Err(e),
        }
    }
}

/// The containers of the compose devnet in `dir` and what Docker says about each, for
/// `onionpost-devnet status`; `None` when `dir` is a process devnet.
pub fn container_states(dir: &Path) -> Result<Option<Vec<(Service, ContainerState)>>> {
    let Some(m) = load(dir)? else {
        return Ok(None);
    };
    // `state` needs no compose file: it asks Docker about containers by name.
    let c = Compose {
        dir: dir.to_path_buf(),
        file: PathBuf::new(),
        manifest: m.clone(),
    };
    let mut out = Vec::new();
    for s in m.services() {
        out.push((s.clone(), c.state(&s.service)?));
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_parse_and_bad_ones_are_refused() {
        assert_eq!(parse_subnet("10.89.0").unwrap(), [10, 89, 0]);
        assert_eq!(parse_subnet("172.30.5.0/24").unwrap(), [172, 30, 5]);
        assert!(parse_subnet("10.89").is_err());
        assert!(parse_subnet("10.89.300").is_err());
    }

    /// A key cache as `tor` leaves it, with made-up identities (init only reads the public
    /// parts, so no tor is needed).
    fn fake_key_cache(dir: &Path) {
        let nicks = ["auth0", "auth1", "auth2", "relay0", "relay1", "relay2"];
        for (i, nick) in nicks.iter().enumerate() {
            let d = dir.join(nick);
            std::fs::create_dir_all(d.join("keys")).unwrap();
            std::fs::write(
                d.join("fingerprint"),
                format!("{nick} {}\n", format!("{i:X}").repeat(40)),
            )
            .unwrap();
            std::fs::write(
                d.join("fingerprint-ed25519"),
                format!("{nick} ed{i}base64\n"),
            )
            .unwrap();
            if nick.starts_with("auth") {
                std::fs::write(
                    d.join("keys/authority_certificate"),
                    format!(
                        "dir-key-certificate-version 3\nfingerprint {}\n",
                        format!("{}", i + 7).repeat(40)
                    ),
                )
                .unwrap();
            }
            std::fs::write(d.join("complete"), b"").unwrap();
        }
    }

    #[test]
    fn init_writes_what_every_container_mounts() {
        let keys = tempfile::tempdir().unwrap();
        fake_key_cache(keys.path());
        let dir = tempfile::tempdir().unwrap();
        let opts = ComposeOptions {
            project: "t".into(),
            subnet: [10, 89, 42],
            key_cache: keys.path().to_path_buf(),
            tor_image: "no-such-image".into(),
            ..Default::default()
        };
        let m = init(dir.path(), &opts).unwrap();
        assert_eq!(m.network, "t-devnet");
        assert_eq!(m.subnet, "10.89.42.0/24");
        let ips: Vec<String> = m.services().map(|s| s.ip.to_string()).collect();
        assert_eq!(ips.len(), 4 + 6 + 3);
        assert_eq!(ips[0], "10.89.42.10");
        assert_eq!(ips[4], "10.89.42.20");
        assert_eq!(ips[7], "10.89.42.30");
        assert_eq!(ips[10], "10.89.42.40");
        assert_eq!(m.service("node-1").unwrap().container, "t-node-1");
        assert!(m.service("nobody").is_err());

        // Validators listen and peer on container addresses.
        let dev = crate::load(dir.path()).unwrap();
        for (v, s) in dev.validators.iter().zip(&m.validators) {
            let c = onionpost_ledger::validator::config::ValidatorConfig::load(&v.home).unwrap();
            assert_eq!(c.p2p_listen.ip(), s.ip);
            assert_eq!(c.grpc_listen, SocketAddr::new(s.ip, VALIDATOR_PORT + 1));
            assert_eq!(c.persistent_peers.len(), 3);
        }
        // Each tor has its keys and a torrc naming its own address and every authority.
        for s in &m.tor {
            let d = dir.path().join("tor").join(&s.service);
            assert!(d.join("keys").is_dir());
            let torrc = std::fs::read_to_string(d.join("torrc")).unwrap();
            assert!(torrc.contains(&format!("Address {}\n", s.ip)), "{torrc}");
            assert!(
                torrc.contains(&format!("ORPort {}:{OR_PORT}\n", s.ip)),
                "{torrc}"
            );
            assert_eq!(torrc.matches("DirAuthority ").count(), 3, "{torrc}");
            assert!(!torrc.contains("__OwningControllerProcess"), "{torrc}");
            assert_eq!(
                torrc.contains("DirPort"),
                s.service.starts_with("auth"),
                "{torrc}"
            );
        }
        // Mail nodes: a config the node accepts, pointing at the authorities' container
        // addresses; an identity whose password the store accepts; the probe's torrc.
        for n in &m.nodes {
            let home = dir.path().join(&n.service.service);
            let cfg = onionpost_node::config::Config::load(&home.join("node.toml")).unwrap();
            let private = cfg.transport.onion.private.unwrap();
            assert_eq!(private.authorities[0].dir.to_string(), "10.89.42.20:7000");
            assert_eq!(private.fallbacks[2].orport.to_string(), "10.89.42.22:5000");
            assert_eq!(cfg.imap.listen.unwrap().to_string(), "127.0.0.1:143");
            // The ledger: every validator on its container address, genesis in the home.
            let ledger = cfg.ledger.as_ref().unwrap();
            assert_eq!(ledger.endpoints.len(), 4);
            assert_eq!(
                ledger.endpoints[0],
                format!("http://10.89.42.10:{}", VALIDATOR_PORT + 1)
            );
            assert_eq!(ledger.genesis, Path::new("/home/node").join(NODE_GENESIS));
            assert_eq!(
                std::fs::read(home.join(NODE_GENESIS)).unwrap(),
                std::fs::read(dev.validators[0].home.join("genesis.json")).unwrap()
            );
            let id = &n.identities[0];
            let stored = onionpost_node::identity::IdentityStore::new(&home)
                .load(&id.name)
                .unwrap();
            assert_eq!(stored.address(), id.address);
            assert!(stored.check_password(&id.password));
            let probe = std::fs::read_to_string(home.join("tor-probe/torrc")).unwrap();
            assert!(probe.contains("SocksPort 127.0.0.1:9050"), "{probe}");
            assert_eq!(probe.matches("DirAuthority ").count(), 3);
        }
        let env = std::fs::read_to_string(dir.path().join(COMPOSE_ENV)).unwrap();
        assert!(
            env.contains("ONIONPOST_SUBNET=10.89.42\n") && env.contains("ONIONPOST_PROJECT=t\n"),
            "{env}"
        );
        assert_eq!(load(dir.path()).unwrap().unwrap(), m);
        // A second init into the same directory is refused.
        let e = init(dir.path(), &opts).unwrap_err().to_string();
        assert!(e.contains("already holds a compose devnet"), "{e}");
    }
}
