//! `node-bench`: throughput of mail from node A to node B over loopback (10 KB messages,
//! several concurrent submission connections) and IMAP FETCH of 1,000 messages, measured for
//! onionpost and, in the same run, for Debian's Postfix (two instances, A relaying to B) and
//! Dovecot (IMAP on a copy of the same Maildir). Prints a table with ratios.
//!
//! Build and run (as root, with `postfix` and `dovecot-imapd` installed):
//! `cargo build --release -p onionpost-node && target/release/node-bench`

use std::fmt::Write as _;
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine;
use clap::Parser;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Benchmark onionpost against Postfix and Dovecot on loopback.
#[derive(Parser, Debug, Clone)]
#[command(about)]
struct Args {
    /// Messages to send A -> B.
    #[arg(long, default_value_t = 1000)]
    messages: usize,
    /// Concurrent submission connections.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Message size in bytes.
    #[arg(long, default_value_t = 10 * 1024)]
    size: usize,
    /// Messages fetched over IMAP in one FETCH.
    #[arg(long, default_value_t = 1000)]
    fetch: usize,
    /// Skip the Postfix/Dovecot comparison. (Set BENCH_KEEP=1 to keep the work directory.)
    #[arg(long)]
    no_postfix: bool,
    /// The onionpost-node binary (default: next to this one).
    #[arg(long)]
    node_bin: Option<PathBuf>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_port(port: u16, what: &str) -> anyhow::Result<()> {
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if start.elapsed() > Duration::from_secs(30) {
            bail!("{what} did not start listening on {port}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn count_files(dir: &Path) -> usize {
    fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

fn make_message(from: &str, to: &str, i: usize, size: usize) -> Vec<u8> {
    let mut m = format!(
        "From: <{from}>\r\nTo: <{to}>\r\nSubject: bench {i}\r\nMessage-ID: <bench-{i}-{}@bench>\r\n\r\n",
        std::process::id()
    );
    let line = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789\r\n";
    while m.len() + line.len() <= size {
        m.push_str(line);
    }
    m.into_bytes()
}

async fn expect(r: &mut BufReader<TcpStream>, code: &str) -> anyhow::Result<()> {
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await? == 0 {
            bail!("server closed the connection, expected {code}");
        }
        if !line.starts_with(code) {
            bail!("expected {code}, got {line:?}");
        }
        if line.as_bytes().get(3) != Some(&b'-') {
            return Ok(());
        }
    }
}

/// Sends `msgs` over one SMTP connection (with AUTH PLAIN if credentials are given).
async fn smtp_send(
    port: u16,
    auth: Option<(String, String)>,
    from: String,
    to: String,
    msgs: Vec<Vec<u8>>,
) -> anyhow::Result<()> {
    let mut r = BufReader::new(TcpStream::connect(("127.0.0.1", port)).await?);
    expect(&mut r, "220").await?;
    r.get_mut().write_all(b"EHLO bench\r\n").await?;
    expect(&mut r, "250").await?;
    if let Some((u, p)) = auth {
        let b64 = base64::engine::general_purpose::STANDARD.encode(format!("\0{u}\0{p}"));
        r.get_mut()
            .write_all(format!("AUTH PLAIN {b64}\r\n").as_bytes())
            .await?;
        expect(&mut r, "235").await?;
    }
    for m in msgs {
        r.get_mut()
            .write_all(format!("MAIL FROM:<{from}>\r\nRCPT TO:<{to}>\r\nDATA\r\n").as_bytes())
            .await?;
        expect(&mut r, "250").await?;
        expect(&mut r, "250").await?;
        expect(&mut r, "354").await?;
        r.get_mut()
            .write_all(&onionpost_node::smtp::client::dot_stuff(&m))
            .await?;
        expect(&mut r, "250").await?;
    }
    r.get_mut().write_all(b"QUIT\r\n").await?;
    Ok(())
}

/// Submits all messages over `conns` connections, then waits until `count()` reaches `n`.
/// Returns messages per second.
async fn throughput(
    args: &Args,
    port: u16,
    auth: Option<(String, String)>,
    from: &str,
    to: &str,
    delivered: impl Fn() -> usize,
) -> anyhow::Result<f64> {
    let before = delivered();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..args.connections {
        let msgs: Vec<Vec<u8>> = (0..args.messages)
            .filter(|i| i % args.connections == c)
            .map(|i| make_message(from, to, i, args.size))
            .collect();
        tasks.push(tokio::spawn(smtp_send(
            port,
            auth.clone(),
            from.into(),
            to.into(),
            msgs,
        )));
    }
    for t in tasks {
        t.await??;
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    while delivered() < before + args.messages {
        if Instant::now() > deadline {
            bail!(
                "only {} of {} delivered",
                delivered() - before,
                args.messages
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(args.messages as f64 / start.elapsed().as_secs_f64())
}

/// Logs in, selects INBOX and fetches messages 1..=n with BODY.PEEK[]; returns seconds and bytes.
async fn imap_fetch(port: u16, user: &str, pass: &str, n: usize) -> anyhow::Result<(f64, usize)> {
    let mut r = BufReader::new(TcpStream::connect(("127.0.0.1", port)).await?);
    let mut line = String::new();
    r.read_line(&mut line).await?;
    let q = |s: &str| format!("\"{s}\"");
    r.get_mut()
        .write_all(format!("a LOGIN {} {}\r\nb SELECT INBOX\r\n", q(user), q(pass)).as_bytes())
        .await?;
    loop {
        line.clear();
        if r.read_line(&mut line).await? == 0 {
            bail!("imap closed");
        }
        if line.starts_with("a NO") || line.starts_with("a BAD") || line.starts_with("b NO") {
            bail!("imap: {line}");
        }
        if line.starts_with("b OK") {
            break;
        }
    }
    let start = Instant::now();
    r.get_mut()
        .write_all(format!("c FETCH 1:{n} (FLAGS BODY.PEEK[])\r\n").as_bytes())
        .await?;
    let mut bytes = 0usize;
    let mut fetched = 0usize;
    loop {
        line.clear();
        if r.read_line(&mut line).await? == 0 {
            bail!("imap closed during FETCH");
        }
        if line.starts_with("c ") {
            if !line.starts_with("c OK") {
                bail!("FETCH failed: {line}");
            }
            break;
        }
        if line.starts_with('*') && line.contains(" FETCH ") {
            fetched += 1;
        }
        if let Some(open) = line
            .trim_end()
            .strip_suffix('}')
            .and_then(|l| l.rsplit_once('{'))
        {
            let len: usize = open.1.parse().context("literal length")?;
            let mut buf = vec![0u8; len];
            r.read_exact(&mut buf).await?;
            bytes += len;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    if fetched != n {
        bail!("fetched {fetched} of {n}");
    }
    r.get_mut().write_all(b"z LOGOUT\r\n").await?;
    Ok((secs, bytes))
}

/// One warm-up FETCH (Dovecot builds its index, the page cache fills), then the best of three.
async fn best_fetch(port: u16, user: &str, pass: &str, n: usize) -> anyhow::Result<(f64, usize)> {
    let mut best = imap_fetch(port, user, pass, n).await?;
    best.0 = f64::MAX;
    for _ in 0..3 {
        let r = imap_fetch(port, user, pass, n).await?;
        if r.0 < best.0 {
            best = r;
        }
    }
    Ok(best)
}

struct Results {
    rate: f64,
    fetch_secs: f64,
    fetch_bytes: usize,
}

async fn bench_onionpost(args: &Args, work: &Path) -> anyhow::Result<(Results, PathBuf)> {
    let bin = match &args.node_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()?.with_file_name("onionpost-node"),
    };
    let new_identity = |home: &Path, name: &str| -> anyhow::Result<(String, String)> {
        let out = Command::new(&bin)
            .arg("--home")
            .arg(home)
            .args(["identity", "new", name])
            .output()
            .with_context(|| format!("running {}", bin.display()))?;
        let text = String::from_utf8(out.stdout)?;
        let get = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k).map(|v| v.trim().to_string()))
                .context("identity output")
        };
        Ok((get("address:")?, get("password:")?))
    };
    let (home_a, home_b) = (work.join("op-a"), work.join("op-b"));
    let (addr_a, pw_a) = new_identity(&home_a, "alice")?;
    let (addr_b, pw_b) = new_identity(&home_b, "bob")?;
    let onion_b = addr_b.split_once('@').unwrap().1.to_string();
    let (smtp_b, sub_a, imap_b) = (free_port(), free_port(), free_port());
    let cfg_a = format!(
        "[submission]\nlisten = \"127.0.0.1:{sub_a}\"\n[queue]\nconcurrency = 32\n\
         [transport]\nkind = \"direct\"\n[transport.direct]\n\"{onion_b}\" = \"127.0.0.1:{smtp_b}\"\n"
    );
    let cfg_b = format!(
        "[smtp]\nlisten = \"127.0.0.1:{smtp_b}\"\n[imap]\nlisten = \"127.0.0.1:{imap_b}\"\n\
         [transport]\nkind = \"direct\"\n"
    );
    fs::write(home_a.join("node.toml"), cfg_a)?;
    fs::write(home_b.join("node.toml"), cfg_b)?;
    let run = |home: &Path| -> anyhow::Result<Kill> {
        Ok(Kill(
            Command::new(&bin)
                .arg("--home")
                .arg(home)
                .arg("run")
                .arg("--config")
                .arg(home.join("node.toml"))
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()?,
        ))
    };
    let _b = run(&home_b)?;
    let _a = run(&home_a)?;
    wait_port(sub_a, "onionpost A")?;
    wait_port(imap_b, "onionpost B")?;
    let cur = home_b.join("identities/bob/Maildir/cur");
    let rate = throughput(
        args,
        sub_a,
        Some((addr_a.clone(), pw_a)),
        &addr_a,
        &addr_b,
        || count_files(&cur),
    )
    .await?;
    let total = count_files(&cur);
    let n = args.fetch.min(total);
    let (fetch_secs, fetch_bytes) = best_fetch(imap_b, &addr_b, &pw_b, n).await?;
    Ok((
        Results {
            rate,
            fetch_secs,
            fetch_bytes,
        },
        home_b.join("identities/bob/Maildir"),
    ))
}

fn uid_of(user: &str) -> anyhow::Result<u32> {
    let out = Command::new("id").args(["-u", user]).output()?;
    Ok(String::from_utf8(out.stdout)?.trim().parse()?)
}

fn postfix_instance(dir: &Path, name: &str, port: u16, extra: &str) -> anyhow::Result<()> {
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

struct StopPostfix(Vec<PathBuf>);
impl Drop for StopPostfix {
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

async fn bench_postfix(args: &Args, work: &Path, maildir: &Path) -> anyhow::Result<Results> {
    let (pa, pb, pimap) = (free_port(), free_port(), free_port());
    let (dir_a, dir_b) = (work.join("pf-a"), work.join("pf-b"));
    let vmail = work.join("pf-vmail");
    fs::create_dir_all(&vmail)?;
    let uid = uid_of("postfix")?;
    Command::new("chown")
        .arg("postfix:postfix")
        .arg(&vmail)
        .status()?;
    fs::create_dir_all(&dir_b)?;
    fs::write(dir_b.join("vmailbox"), "bob@b.test bob/\n")?;
    let _stop = StopPostfix(vec![dir_a.clone(), dir_b.clone()]);
    postfix_instance(
        &dir_b,
        "b",
        pb,
        &format!(
            "virtual_mailbox_domains = b.test\nvirtual_mailbox_base = {}\n\
             virtual_mailbox_maps = texthash:{}\nvirtual_uid_maps = static:{uid}\n\
             virtual_gid_maps = static:{uid}\nvirtual_minimum_uid = 1",
            vmail.display(),
            dir_b.join("vmailbox").display()
        ),
    )?;
    postfix_instance(&dir_a, "a", pa, &format!("relayhost = [127.0.0.1]:{pb}"))?;
    let cur = vmail.join("bob/new");
    let rate = throughput(args, pa, None, "alice@a.test", "bob@b.test", || {
        count_files(&cur)
    })
    .await?;

    // Dovecot on a copy of onionpost's Maildir (identical messages).
    let dc = work.join("dovecot");
    fs::create_dir_all(dc.join("run"))?;
    let copy = dc.join("Maildir");
    Command::new("cp")
        .arg("-a")
        .arg(maildir)
        .arg(&copy)
        .status()?;
    Command::new("chown")
        .args(["-R", "postfix:postfix"])
        .arg(&dc)
        .status()?;
    let conf = format!(
        "protocols = imap\nlisten = 127.0.0.1\nbase_dir = {run}\nstate_dir = {run}\n\
         log_path = {dir}/dovecot.log\nssl = no\ndisable_plaintext_auth = no\nauth_mechanisms = plain\n\
         passdb {{\n  driver = static\n  args = password=pw\n}}\n\
         userdb {{\n  driver = static\n  args = uid={uid} gid={uid} home={dir}\n}}\n\
         mail_location = maildir:{maildir}\nfirst_valid_uid = 1\n\
         service imap-login {{\n  inet_listener imap {{\n    port = {pimap}\n  }}\n}}\n\
         service anvil {{\n  chroot =\n}}\nservice imap-login {{\n  chroot =\n}}\n",
        run = dc.join("run").display(),
        dir = dc.display(),
        maildir = copy.display(),
    );
    fs::write(dc.join("dovecot.conf"), conf)?;
    let _dovecot = Kill(
        Command::new("dovecot")
            .arg("-F")
            .arg("-c")
            .arg(dc.join("dovecot.conf"))
            .stdout(Stdio::null())
            .spawn()
            .context("starting dovecot")?,
    );
    wait_port(pimap, "dovecot")?;
    let n = args.fetch.min(count_files(&copy.join("cur")));
    let (fetch_secs, fetch_bytes) = best_fetch(pimap, "bob", "pw", n).await?;
    Ok(Results {
        rate,
        fetch_secs,
        fetch_bytes,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let tmp = tempfile::tempdir()?;
    let work = tmp.path().to_path_buf();
    if std::env::var_os("BENCH_KEEP").is_some() {
        eprintln!("keeping {}", tmp.keep().display());
    }
    let work = work.as_path();
    // Postfix's and Dovecot's unprivileged users must reach the work directory.
    Command::new("chmod").arg("755").arg(work).status()?;
    eprintln!(
        "onionpost: {} x {} bytes over {} connections ...",
        args.messages, args.size, args.connections
    );
    let (op, maildir) = bench_onionpost(&args, work).await?;
    let mut report = String::new();
    writeln!(
        report,
        "| measurement | onionpost | postfix/dovecot | ratio |"
    )?;
    writeln!(report, "| --- | ---: | ---: | ---: |")?;
    let op_fetch = args.fetch as f64 / op.fetch_secs;
    if args.no_postfix {
        writeln!(
            report,
            "| A->B msgs/s ({} B, {} conns) | {:.0} | - | - |",
            args.size, args.connections, op.rate
        )?;
        writeln!(
            report,
            "| IMAP FETCH {} msgs, msgs/s | {:.0} | - | - |",
            args.fetch, op_fetch
        )?;
    } else {
        eprintln!("postfix/dovecot ...");
        let pf = bench_postfix(&args, work, &maildir).await?;
        let pf_fetch = args.fetch as f64 / pf.fetch_secs;
        writeln!(
            report,
            "| A->B msgs/s ({} B, {} conns) | {:.0} | {:.0} | {:.2} |",
            args.size,
            args.connections,
            op.rate,
            pf.rate,
            op.rate / pf.rate
        )?;
        writeln!(
            report,
            "| IMAP FETCH {} msgs (BODY.PEEK[]), msgs/s | {:.0} | {:.0} | {:.2} |",
            args.fetch,
            op_fetch,
            pf_fetch,
            op_fetch / pf_fetch
        )?;
        eprintln!(
            "fetched bytes: onionpost {} dovecot {}",
            op.fetch_bytes, pf.fetch_bytes
        );
    }
    print!("{report}");
    Ok(())
}
