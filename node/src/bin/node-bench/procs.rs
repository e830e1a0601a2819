//! Child processes and ports: a child killed when dropped, waiting for a listener, free
//! loopback ports, file counts and ownership.

use std::fs;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A loopback port free right now, never the same twice in this process, and below the
/// kernel's ephemeral range (32768-60999) so that no bind to port 0 and no outgoing
/// connection's local end takes it before the server under test binds it.
pub fn free_port() -> u16 {
    use rand::Rng;
    use std::collections::HashSet;
    use std::sync::Mutex;
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut given = GIVEN.lock().expect("port set lock");
    let given = given.get_or_insert_with(HashSet::new);
    let mut rng = rand::thread_rng();
    loop {
        let port = rng.gen_range(10_000..32_000);
        if !given.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.insert(port);
            return port;
        }
    }
}

/// A child process that is killed (and reaped) when dropped.
pub struct Kill(pub Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits (up to 30 s) until something accepts connections on `port`.
pub fn wait_port(port: u16, what: &str) -> anyhow::Result<()> {
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if start.elapsed() > Duration::from_secs(30) {
            bail!("{what} did not start listening on {port}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Entries in a directory (0 if it cannot be read).
pub fn count_files(dir: &Path) -> usize {
    fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

pub use crate::postfix::uid_of;

/// Runs a command, failing if it does not succeed.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let st = cmd
        .status()
        .with_context(|| format!("running {:?}", cmd.get_program()))?;
    if !st.success() {
        bail!("{cmd:?} failed: {st}");
    }
    Ok(())
}

/// `chown -R user:user path`.
pub fn chown_r(user: &str, path: &Path) -> anyhow::Result<()> {
    run(Command::new("chown")
        .arg("-R")
        .arg(format!("{user}:{user}"))
        .arg(path))
}
