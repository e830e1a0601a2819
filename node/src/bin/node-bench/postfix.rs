//! Throwaway Postfix instances (`postfix -c <dir>`) on a loopback port, stopped when
//! dropped.
//!
//! Shared by `node-bench` and the node's tests (`node/tests/support/outside.rs` includes
//! this file), so it uses nothing of either crate: std and anyhow only.
//!
//! An instance keeps everything in its own directory: `main.cf` and `master.cf`, the
//! queue (`queue/`, created by `postfix start` with the ownership Postfix wants: the
//! directory itself root's, its subdirectories `postfix`'s), `data/` and its log
//! (`maillog`). The directory and its parents must be searchable by the `postfix` user
//! (mode 755 on a temporary directory). Debian's `postfix` package must be installed with
//! debconf's "No configuration" (no system instance runs; see scripts/test.sh).

// Each of the two crates that include this file uses part of it.
#![allow(dead_code)]

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A running Postfix instance; [`Drop`] stops it and waits until its master has exited.
pub struct Instance {
    dir: PathBuf,
    port: u16,
    name: String,
    master: Option<u32>,
}

/// Writes `main.cf` and `master.cf` for an instance in `dir` listening on
/// `127.0.0.1:port`, with `extra` appended to `main.cf` (later lines win), starts it and
/// waits (up to 30 s) until its smtpd answers with a 220 greeting.
///
/// `name` becomes `myhostname` (`<name>` if it contains a dot, else `<name>.test`), so
/// two instances relaying to each other must have different names (Postfix refuses mail
/// that would loop back to its own name).
pub fn start(dir: &Path, name: &str, port: u16, extra: &str) -> anyhow::Result<Instance> {
    for d in ["queue", "data"] {
        fs::create_dir_all(dir.join(d)).with_context(|| format!("creating {}", dir.display()))?;
    }
    chown("postfix:postfix", &dir.join("data"))?;
    let host = if name.contains('.') {
        name.to_string()
    } else {
        format!("{name}.test")
    };
    let main = format!(
        "compatibility_level = 3.6\nqueue_directory = {q}\ndata_directory = {d}\n\
         mail_owner = postfix\nsetgid_group = postdrop\nmyhostname = {host}\nmydomain = {host}\n\
         myorigin = $myhostname\ninet_interfaces = 127.0.0.1\ninet_protocols = ipv4\nmynetworks = 127.0.0.0/8\n\
         mydestination =\nsmtputf8_enable = no\nbiff = no\nmaillog_file = {log}\nmaillog_file_prefixes = {dir}\nsmtp_host_lookup = native\n\
         smtp_dns_support_level = disabled\nmessage_size_limit = 52428800\nvirtual_mailbox_limit = 0\nsyslog_name = pf-{tag}\n\
         default_process_limit = 100\nlocal_recipient_maps =\n{extra}\n",
        q = dir.join("queue").display(),
        d = dir.join("data").display(),
        log = dir.join("maillog").display(),
        dir = dir.display(),
        tag = name.replace('.', "-"),
    );
    fs::write(dir.join("main.cf"), main)?;
    let master = format!(
        "127.0.0.1:{port} inet n - n - - smtpd\n\
         pickup unix n - n 60 1 pickup\ncleanup unix n - n - 0 cleanup\nqmgr unix n - n 300 1 qmgr\n\
         rewrite unix - - n - - trivial-rewrite\nbounce unix - - n - 0 bounce\ndefer unix - - n - 0 bounce\n\
         trace unix - - n - 0 bounce\nverify unix - - n - 1 verify\nflush unix n - n 1000? 0 flush\n\
         proxymap unix - - n - - proxymap\nproxywrite unix - - n - 1 proxymap\nsmtp unix - - n - - smtp\n\
         relay unix - - n - - smtp\nshowq unix n - n - - showq\nerror unix - - n - - error\n\
         retry unix - - n - - error\ndiscard unix - - n - - discard\nlocal unix - n n - - local\n\
         virtual unix - n n - - virtual\nanvil unix - - n - 1 anvil\nscache unix - - n - 1 scache\n\
         tlsmgr unix - - n 1000? 1 tlsmgr\npostlog unix-dgram n - n - 1 postlogd\n"
    );
    fs::write(dir.join("master.cf"), master)?;
    let out = Command::new("postfix")
        .arg("-c")
        .arg(dir)
        .arg("start")
        .output()
        .context("running `postfix start` (is Debian's postfix installed?)")?;
    let mut inst = Instance {
        dir: dir.to_path_buf(),
        port,
        name: name.to_string(),
        master: None,
    };
    if !out.status.success() {
        bail!(
            "postfix {name} did not start: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            inst.maillog()
        );
    }
    inst.master = fs::read_to_string(dir.join("queue/pid/master.pid"))
        .ok()
        .and_then(|p| p.trim().parse().ok());
    inst.wait_greeting(Duration::from_secs(30))?;
    Ok(inst)
}

impl Instance {
    /// The configuration directory (`postfix -c` / `sendmail -C` take it).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The loopback port its smtpd listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The name it was started with.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The pid of its master process (read from the queue's `pid/master.pid`).
    pub fn master_pid(&self) -> Option<u32> {
        self.master
    }

    /// Its log so far (`<dir>/maillog`).
    pub fn maillog(&self) -> String {
        fs::read_to_string(self.dir.join("maillog")).unwrap_or_default()
    }

    /// Waits until a connection to its port reads a `220` greeting.
    fn wait_greeting(&self, limit: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            if let Ok(s) = TcpStream::connect(("127.0.0.1", self.port)) {
                s.set_read_timeout(Some(Duration::from_secs(5)))?;
                let mut line = String::new();
                if BufReader::new(&s).read_line(&mut line).is_ok() && line.starts_with("220") {
                    return Ok(());
                }
            }
            if start.elapsed() > limit {
                bail!(
                    "postfix {} gave no 220 greeting on port {} within {limit:?}; its log:\n{}",
                    self.name,
                    self.port,
                    self.maillog()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops it (`postfix -c <dir> stop`) and waits up to 10 s for its master to exit,
    /// then kills the master (its children exit with it). Idempotent.
    pub fn stop(&mut self) {
        let Some(pid) = self.master.take() else {
            return;
        };
        let _ = Command::new("postfix")
            .arg("-c")
            .arg(&self.dir)
            .arg("stop")
            .output();
        let start = Instant::now();
        while alive(pid) && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(20));
        }
        if alive(pid) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether process `pid` exists and is not a zombie (an exited process whose parent has
/// not reaped it: Postfix's master is reparented to pid 1 by `postfix start`).
pub fn alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X']))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// The numeric uid of a system user (`id -u`).
pub fn uid_of(user: &str) -> anyhow::Result<u32> {
    let out = Command::new("id").args(["-u", user]).output()?;
    if !out.status.success() {
        bail!("no system user {user}");
    }
    String::from_utf8(out.stdout)?
        .trim()
        .parse()
        .with_context(|| format!("uid of {user}"))
}

/// `chown owner path`.
pub fn chown(owner: &str, path: &Path) -> anyhow::Result<()> {
    let st = Command::new("chown").arg(owner).arg(path).status()?;
    if !st.success() {
        bail!("chown {owner} {} failed: {st}", path.display());
    }
    Ok(())
}

/// `main.cf` lines for an instance that delivers mail for `mailboxes` (addresses) into
/// Maildirs under `base` (`<base>/<domain>/<local>/new`) through `virtual(8)`; the map is
/// written to `<dir>/vmailbox` and `base` made `postfix`'s. Mail for other addresses of
/// those domains is refused with 550.
pub fn mailbox_config(dir: &Path, base: &Path, mailboxes: &[String]) -> anyhow::Result<String> {
    fs::create_dir_all(base)?;
    chown("postfix:postfix", base)?;
    let mut domains: Vec<&str> = mailboxes
        .iter()
        .filter_map(|a| a.split_once('@').map(|(_, d)| d))
        .collect();
    domains.sort_unstable();
    domains.dedup();
    let map: String = mailboxes
        .iter()
        .filter_map(|a| a.split_once('@').map(|(l, d)| format!("{a} {d}/{l}/\n")))
        .collect();
    let file = dir.join("vmailbox");
    fs::create_dir_all(dir)?;
    fs::write(&file, map)?;
    let uid = uid_of("postfix")?;
    Ok(format!(
        "virtual_mailbox_domains = {}\nvirtual_mailbox_base = {}\n\
         virtual_mailbox_maps = texthash:{}\nvirtual_uid_maps = static:{uid}\n\
         virtual_gid_maps = static:{uid}\nvirtual_minimum_uid = 1\n",
        domains.join(" "),
        base.display(),
        file.display()
    ))
}

/// `main.cf` lines that relay mail for each `(domain, port)` to `[127.0.0.1]:port`
/// (`transport_maps`, written to `<dir>/transport`; the domains are also
/// `relay_domains`, so any client may send mail for them, as to an MX).
pub fn relay_config(dir: &Path, relays: &[(String, u16)]) -> anyhow::Result<String> {
    let map: String = relays
        .iter()
        .map(|(d, p)| format!("{d} smtp:[127.0.0.1]:{p}\n"))
        .collect();
    let file = dir.join("transport");
    fs::create_dir_all(dir)?;
    fs::write(&file, map)?;
    let domains: Vec<&str> = relays.iter().map(|(d, _)| d.as_str()).collect();
    Ok(format!(
        "transport_maps = texthash:{}\nrelay_domains = {}\n",
        file.display(),
        domains.join(" ")
    ))
}
