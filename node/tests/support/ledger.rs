//! A real ledger for the list tests: a devnet of `onionpost-ledger validator` processes on
//! 127.0.0.x, and the `onionpost` command line that signs transactions as node identities.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use onionpost_devnet::{InitOptions, Manifest, init, start_validator, validator_ip, wait_ready};
use onionpost_proto::v1 as pb;
use onionpost_proto::v1::ledger_client::LedgerClient;

/// A workspace binary of another package, built once (with cargo, as the rest of the
/// workspace is) if the test run did not build it.
pub fn workspace_bin(package: &str, name: &str) -> PathBuf {
    static BUILT: OnceLock<std::sync::Mutex<Vec<String>>> = OnceLock::new();
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().unwrap().parent().unwrap().join(name);
    let built = BUILT.get_or_init(Default::default);
    let mut built = built.lock().unwrap();
    // A workspace test run builds it; `cargo nextest run -p onionpost-node` alone does not.
    if !path.exists() && !built.iter().any(|b| b == name) {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--quiet", "-p", package, "--bin", name])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building {name} failed");
        built.push(name.to_string());
    }
    assert!(
        path.exists(),
        "{} is missing after cargo build",
        path.display()
    );
    path
}

/// A validator network, killed on drop.
pub struct Devnet {
    pub dir: tempfile::TempDir,
    pub m: Manifest,
    children: Vec<Option<Child>>,
}

impl Drop for Devnet {
    fn drop(&mut self) {
        for c in self.children.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_base_port(n: usize) -> u16 {
    let mut seed = std::process::id() as u64 ^ Instant::now().elapsed().as_nanos() as u64;
    for _ in 0..200 {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let p = 20_000 + ((seed >> 33) % 20_000) as u16 * 2;
        let free = (0..n).all(|i| {
            [p, p + 1]
                .iter()
                .all(|port| TcpListener::bind(SocketAddr::new(validator_ip(i), *port)).is_ok())
        });
        if free {
            return p;
        }
    }
    panic!("no free ports for {n} validators");
}

impl Devnet {
    /// Starts `n` validators and waits until every one answers.
    pub fn start(n: usize, chain_id: &str) -> Devnet {
        // Built next to the test binaries, where `onionpost_devnet::ledger_binary` looks.
        workspace_bin("onionpost-ledger", "onionpost-ledger");
        let dir = tempfile::tempdir().unwrap();
        let m = init(
            dir.path(),
            &InitOptions {
                validators: n,
                admins: 1,
                chain_id: chain_id.into(),
                base_port: free_base_port(n),
                block_ms: 100,
            },
        )
        .unwrap();
        let children = m
            .validators
            .iter()
            .map(|v| Some(start_validator(v).unwrap()))
            .collect();
        let net = Devnet { dir, m, children };
        rt().block_on(wait_ready(&net.m, Duration::from_secs(60)))
            .unwrap();
        net
    }

    pub fn url(&self, i: usize) -> String {
        format!("http://{}", self.m.validators[i].grpc)
    }

    pub fn genesis(&self) -> PathBuf {
        self.m.validators[0].home.join("genesis.json")
    }

    /// The `[ledger]` table of a node on this devnet (every validator an endpoint).
    pub fn ledger_toml(&self) -> String {
        let endpoints: Vec<String> = (0..self.m.validators.len())
            .map(|i| format!("\"{}\"", self.url(i)))
            .collect();
        format!(
            "[ledger]\nendpoints = [{}]\nchain_id = \"{}\"\ngenesis = \"{}\"\nrelay_timeout_secs = 3\n",
            endpoints.join(", "),
            self.m.chain_id,
            self.genesis().display()
        )
    }

    /// The latest decided height.
    pub fn height(&self) -> u64 {
        rt().block_on(async {
            let mut c = LedgerClient::connect(self.url(0)).await.unwrap();
            c.get_status(pb::GetStatusRequest {})
                .await
                .unwrap()
                .into_inner()
                .anchor
                .unwrap()
                .height
        })
    }

    /// Waits until the chain is past `h`.
    pub fn wait_past(&self, h: u64) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.height() <= h {
            assert!(Instant::now() < deadline, "the chain never passed {h}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A small runtime for the async bits of a sync test.
pub fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Runtime::new().unwrap())
}

/// The `onionpost` command line, signing as identity `name` of the node at `home`.
pub fn onionpost_as(home: &Path, name: &str, ledger: &str, tx: &[&str]) -> Output {
    let bin = workspace_bin("onionpost", "onionpost");
    Command::new(bin)
        .arg("--home")
        .arg(home)
        .args(["--identity", name, "tx", "--ledger", ledger])
        .args(tx)
        .output()
        .unwrap()
}

/// Like [`onionpost_as`], failing the test unless the transaction was applied.
pub fn tx_as(home: &Path, name: &str, ledger: &str, tx: &[&str]) -> String {
    let out = onionpost_as(home, name, ledger, tx);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && stdout.contains("applied"),
        "onionpost {tx:?} as {name}: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}
