//! Throwaway Postfix instances (`postfix -c <dir>`), stopped when dropped.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::bail;

use crate::procs::wait_port;

/// Writes `main.cf` and `master.cf` for an instance in `dir` listening on `port`, with
/// `extra` appended to `main.cf`, and starts it.
pub fn start(dir: &Path, name: &str, port: u16, extra: &str) -> anyhow::Result<()> {
    for d in ["queue", "data"] {
        fs::create_dir_all(dir.join(d))?;
    }
    Command::new("chown")
        .arg("postfix")
        .arg(dir.join("data"))
        .status()?;
    let main = format!(
        "compatibility_level = 3.6\nqueue_directory = {q}\ndata_directory = {d}\n\
         mail_owner = postfix\nsetgid_group = postdrop\nmyhostname = {name}.test\nmydomain = {name}.test\n\
         myorigin = $myhostname\ninet_interfaces = 127.0.0.1\ninet_protocols = ipv4\nmynetworks = 127.0.0.0/8\n\
         mydestination =\nsmtputf8_enable = no\nbiff = no\nmaillog_file = {log}\nmaillog_file_prefixes = {dir}\nsmtp_host_lookup = native\n\
         smtp_dns_support_level = disabled\nmessage_size_limit = 52428800\nvirtual_mailbox_limit = 0\nsyslog_name = bench-{name}\n\
         default_process_limit = 100\nlocal_recipient_maps =\n{extra}\n",
        q = dir.join("queue").display(),
        d = dir.join("data").display(),
        log = dir.join("maillog").display(),
        dir = dir.display(),
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
         postlog unix-dgram n - n - 1 postlogd\n"
    );
    fs::write(dir.join("master.cf"), master)?;
    let st = Command::new("postfix")
        .arg("-c")
        .arg(dir)
        .arg("start")
        .status()?;
    if !st.success() {
        bail!(
            "postfix {name} did not start (see {})",
            dir.join("maillog").display()
        );
    }
    wait_port(port, "postfix")
}

/// Stops the instances in these directories when dropped.
pub struct Stop(pub Vec<PathBuf>);

impl Drop for Stop {
    fn drop(&mut self) {
        for d in &self.0 {
            let _ = Command::new("postfix")
                .arg("-c")
                .arg(d)
                .arg("stop")
                .status();
        }
    }
}
