//! IMAP against real clients and a real node process: Python's `imapclient` through every
//! command of the mailbox and extension work (folders, special use, modified UTF-7, UIDPLUS,
//! MOVE, IDLE pushed from a second process's delivery, NAMESPACE, ENABLE, ID), mbsync and
//! offlineimap syncing every folder both ways, neomutt (driven through tmux, as a person
//! would) sending through submission and filing into Sent over IMAP, and UIDVALIDITY/UIDNEXT
//! across a `kill -9` restart.

mod support;

use std::fs;
use std::path::Path;
use std::process::Command;

use support::direct::Node;
use support::python;

/// imapclient is a PyPI package; scripts/test.sh installs it.
const SCENARIO: &str = r#"
import re, subprocess, sys, time
from imapclient import IMAPClient
from imapclient.imapclient import SENT, DRAFTS, TRASH, JUNK, ARCHIVE
from imapclient.exceptions import IMAPClientError
port, smtp_port, user, pw = sys.argv[1:]

def check(cond, what):
    if not cond:
        raise SystemExit('FAILED: ' + what)

c = IMAPClient('127.0.0.1', port=int(port), ssl=False, timeout=30)
pre = c.capabilities()
check(b'AUTH=PLAIN' in pre and b'MOVE' not in pre, 'pre-login capabilities %r' % (pre,))
c.login(user, pw)
caps = c.capabilities()
for cap in [b'IDLE', b'UIDPLUS', b'MOVE', b'NAMESPACE', b'ENABLE', b'ID', b'LITERAL+',
            b'SPECIAL-USE', b'UNSELECT', b'CONDSTORE']:
    check(cap in caps, 'post-login capabilities lack %r: %r' % (cap, caps))
print('CAPS=' + b' '.join(caps).decode())
ns = c.namespace()
check(ns.personal == (('', '/'),) and ns.other is None and ns.shared is None, repr(ns))
idr = c.id_({'name': 'imapclient'})
check(idr in (None, (None,), [None]), 'ID says nothing about the server: %r' % (idr,))
enabled = c.enable('CONDSTORE')
check(enabled == [b'CONDSTORE'], 'ENABLE CONDSTORE: %r' % (enabled,))

# Special-use folders, found by their attributes.
for flag in [SENT, DRAFTS, TRASH, JUNK, ARCHIVE]:
    name = c.find_special_folder(flag)
    check(name is not None, 'no folder with %r' % flag)
    print('SPECIAL %s=%s' % (flag.decode(), name))

# CREATE (with a parent created on the way), modified UTF-7 names, LIST, LSUB.
c.create_folder('Entwürfe/Alt')
names = [f[2] for f in c.list_folders()]
check('Entwürfe' in names and 'Entwürfe/Alt' in names, repr(names))
check([f[2] for f in c.list_folders('', '%') if f[2].startswith('Entw')] == ['Entwürfe'],
      '% stops at the delimiter')
try:
    c.create_folder('Sent')
    check(False, 'CREATE of an existing name succeeded')
except IMAPClientError as e:
    check('ALREADYEXISTS' in str(e), str(e))
c.subscribe_folder('Entwürfe/Alt')
check('Entwürfe/Alt' in [f[2] for f in c.list_sub_folders()], 'LSUB after SUBSCRIBE')
c.unsubscribe_folder('Entwürfe/Alt')
check('Entwürfe/Alt' not in [f[2] for f in c.list_sub_folders()], 'LSUB after UNSUBSCRIBE')
c.rename_folder('Entwürfe', 'Projekte')
names = [f[2] for f in c.list_folders()]
check('Projekte/Alt' in names and 'Entwürfe/Alt' not in names, repr(names))
st = c.folder_status('Archive', [b'MESSAGES', b'UIDNEXT', b'UIDVALIDITY', b'UNSEEN'])
check(st[b'MESSAGES'] == 0 and st[b'UNSEEN'] == 0 and st[b'UIDNEXT'] >= 1, repr(st))

# APPEND with APPENDUID.
r = c.append('Projekte/Alt', b'Subject: appended\r\n\r\nbody\r\n', flags=[b'\\Seen'])
m = re.search(rb'\[APPENDUID (\d+) (\d+)\]', r)
check(m is not None, 'no APPENDUID in %r' % r)
validity, uid = int(m.group(1)), int(m.group(2))
info = c.select_folder('Projekte/Alt')
check(info[b'UIDVALIDITY'] == validity and info[b'EXISTS'] == 1, repr(info))
check(c.search() == [uid], 'the appended UID')

# COPY with COPYUID; MOVE that really moves; UID EXPUNGE.
# imaplib drops the tagged text of UID commands (c.copy returns None), so the COPYUID code
# is read from the tagged response of the same command sent one level down.
typ, data = c._imap._simple_command('UID', 'COPY', str(uid), 'Archive')
check(typ == 'OK', 'UID COPY: %r' % data)
r = data[0]
archive = c.folder_status('Archive', [b'UIDVALIDITY', b'MESSAGES'])
m = re.search(rb'\[COPYUID (\d+) (\d+) (\d+)\]', r)
check(m is not None and int(m.group(1)) == archive[b'UIDVALIDITY'] and int(m.group(2)) == uid,
      'COPYUID %r' % r)
check(archive[b'MESSAGES'] == 1, 'copied')
# A second client has the source open: it is told the message left, and finds it in Trash.
other = IMAPClient('127.0.0.1', port=int(port), ssl=False, timeout=30)
other.login(user, pw)
other.select_folder('Projekte/Alt')
check(other.search() == [uid], 'the second client sees the message')
c.move([uid], 'Trash')
check(c.search() == [], 'MOVE left the original behind')
seen = other.noop()[1]
check((1, b'EXPUNGE') in seen, 'the second client was not told of the move: %r' % (seen,))
check(other.search() == [], 'the second client still sees the moved message')
other.select_folder('Trash')
check(len(other.search()) == 1, 'the second client does not find it in Trash')
other.logout()
check(c.folder_status('Projekte/Alt', [b'MESSAGES'])[b'MESSAGES'] == 0, 'source empty')
c.select_folder('Trash')
ids = c.search()
check(len(ids) == 1, 'moved into Trash: %r' % ids)
got = c.fetch(ids, ['FLAGS', 'BODY.PEEK[HEADER.FIELDS (SUBJECT)]'])[ids[0]]
check(b'\\Seen' in got[b'FLAGS'] and b'appended' in got[b'BODY[HEADER.FIELDS (SUBJECT)]'],
      repr(got))
c.add_flags(ids, [b'\\Deleted'])
c.uid_expunge(ids)
check(c.search() == [], 'UID EXPUNGE')

# EXAMINE is read-only.
c.select_folder('Archive', readonly=True)
try:
    c.add_flags(c.search(), [b'\\Flagged'])
    check(False, 'STORE in EXAMINE succeeded')
except IMAPClientError:
    pass

# DELETE.
c.delete_folder('Projekte/Alt')
check('Projekte/Alt' not in [f[2] for f in c.list_folders()], 'DELETE')

# IDLE: a second process delivers over SMTP; the push must arrive on its own.
SEND = '''
import smtplib, sys, time
port, to = sys.argv[1:]
s = smtplib.SMTP("127.0.0.1", int(port))
s.ehlo("x")
code, text = s.mail("ann@example.onion")
assert code == 250, (code, text)
code, text = s.rcpt(to)
assert code == 250, (code, text)
t0 = time.time()
s.data(b"Subject: pushed\\r\\n\\r\\nhello\\r\\n")
print(t0, time.time())
s.quit()
'''
c.select_folder('INBOX')
before = c.folder_status('INBOX', [b'MESSAGES'])[b'MESSAGES']
c.idle()
sender = subprocess.Popen([sys.executable, '-c', SEND, smtp_port, user],
                          stdout=subprocess.PIPE, text=True)
pushed = None
deadline = time.time() + 10
while pushed is None and time.time() < deadline:
    for resp in c.idle_check(timeout=1):
        if len(resp) == 2 and resp[1] == b'EXISTS' and resp[0] > before:
            pushed = time.time()
c.idle_done()
out, _ = sender.communicate(timeout=30)
check(sender.returncode == 0, 'sender failed')
data_start, acked = map(float, out.split())
check(pushed is not None, 'no EXISTS pushed within 10 s of the delivery')
print('IDLE_DATA_TO_PUSH_MS=%.1f' % ((pushed - data_start) * 1000))
print('IDLE_ACK_TO_PUSH_MS=%.1f' % ((pushed - acked) * 1000))
c.logout()
print('SCENARIO OK')
"#;

#[test]
fn imapclient_scenario_covers_every_command() {
    let mut node = Node::new("bob");
    node.start();
    let out = python(
        SCENARIO,
        &[
            &node.imap.to_string(),
            &node.smtp.to_string(),
            &node.address,
            &node.password,
        ],
    );
    println!("{out}");
    assert!(out.contains("SCENARIO OK"), "{out}");
    for (flag, name) in [
        ("\\Sent", "Sent"),
        ("\\Drafts", "Drafts"),
        ("\\Trash", "Trash"),
        ("\\Junk", "Junk"),
        ("\\Archive", "Archive"),
    ] {
        assert!(out.contains(&format!("SPECIAL {flag}={name}\n")), "{out}");
    }
    // The MOVE really moved: on disk, the message is in no mailbox but Trash... which the
    // scenario then expunged; Archive has the COPY.
    let archive = fs::read_to_string(node.home.join("identities/bob/folders/index.json")).unwrap();
    assert!(archive.contains("\"Projekte\""), "{archive}");
    assert!(!archive.contains("Projekte/Alt"), "deleted: {archive}");
}

/// Raw IMAP over a socket, for the restart test (no client library between us and the
/// numbers).
fn status(port: u16, user: &str, pw: &str, mailbox: &str) -> (u32, u32) {
    let out = python(
        r#"
import imaplib, re, sys
port, user, pw, box = sys.argv[1:]
M = imaplib.IMAP4('127.0.0.1', int(port))
M.login(user, pw)
typ, data = M.status(box, '(UIDVALIDITY UIDNEXT)')
assert typ == 'OK', data
v = re.search(rb'UIDVALIDITY (\d+)', data[0]).group(1).decode()
n = re.search(rb'UIDNEXT (\d+)', data[0]).group(1).decode()
print(v, n)
M.logout()
"#,
        &[&port.to_string(), user, pw, mailbox],
    );
    let mut it = out.split_whitespace().map(|x| x.parse::<u32>().unwrap());
    (it.next().unwrap(), it.next().unwrap())
}

const APPEND_AND_EXPUNGE: &str = r#"
import imaplib, sys
port, user, pw, box, n = sys.argv[1:]
M = imaplib.IMAP4('127.0.0.1', int(port))
M.login(user, pw)
for i in range(int(n)):
    typ, data = M.append(box, '', None, b'Subject: %d\r\n\r\nx\r\n' % i)
    assert typ == 'OK', data
M.select(box)
M.store('1:*', '+FLAGS', '\\Deleted')
M.expunge()
M.logout()
"#;

#[test]
fn uidvalidity_and_uidnext_survive_kill_9() {
    let mut node = Node::new("bob");
    node.start();
    let (addr, pw) = (node.address.clone(), node.password.clone());
    python(
        r#"
import imaplib, sys
port, user, pw = sys.argv[1:]
M = imaplib.IMAP4('127.0.0.1', int(port))
M.login(user, pw)
assert M.create('Work')[0] == 'OK'
M.logout()
"#,
        &[&node.imap.to_string(), &addr, &pw],
    );
    let mut before = Vec::new();
    for b in ["INBOX", "Work", "Sent"] {
        // Fill and empty each mailbox: UIDNEXT is then the only trace of its history.
        python(
            APPEND_AND_EXPUNGE,
            &[&node.imap.to_string(), &addr, &pw, b, "3"],
        );
        before.push(status(node.imap, &addr, &pw, b));
    }
    node.kill9();
    node.start();
    for (b, (v, n)) in ["INBOX", "Work", "Sent"].iter().zip(&before) {
        let (v2, n2) = status(node.imap, &addr, &pw, b);
        assert_eq!(v2, *v, "{b}: UIDVALIDITY changed across the restart");
        assert!(n2 >= *n, "{b}: UIDNEXT went back from {n} to {n2}");
        python(
            APPEND_AND_EXPUNGE,
            &[&node.imap.to_string(), &addr, &pw, b, "1"],
        );
        let (_, n3) = status(node.imap, &addr, &pw, b);
        assert!(n3 > *n, "{b}: a new message got an old UID ({n3} <= {n})");
    }
    // A mailbox deleted and created again gets a new UIDVALIDITY.
    python(
        r#"
import imaplib, sys
port, user, pw = sys.argv[1:]
M = imaplib.IMAP4('127.0.0.1', int(port))
M.login(user, pw)
assert M.delete('Work')[0] == 'OK'
assert M.create('Work')[0] == 'OK'
M.logout()
"#,
        &[&node.imap.to_string(), &addr, &pw],
    );
    let (v, _) = status(node.imap, &addr, &pw, "Work");
    assert!(v > before[1].0, "recreated Work reuses UIDVALIDITY {v}");
}

fn mbsync(cfg: &Path) -> String {
    let out = Command::new("mbsync")
        .arg("-c")
        .arg(cfg)
        .args(["-Dn", "-a"])
        .output()
        .expect("mbsync (Debian package isync) must be installed");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "mbsync failed:\n{text}");
    text
}

/// IMAP commands mbsync sent (its `-Dn` trace marks them with `>>>`).
fn sent_commands(trace: &str) -> Vec<String> {
    trace
        .lines()
        .filter_map(|l| l.split_once(">>> "))
        .map(|(_, c)| c.to_string())
        .collect()
}

fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    ["cur", "new"]
        .iter()
        .flat_map(|s| fs::read_dir(dir.join(s)).into_iter().flatten())
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect()
}

const REMOTE: &str = r#"
import sys, json
from imapclient import IMAPClient
port, user, pw, action = sys.argv[1:5]
M = IMAPClient('127.0.0.1', port=int(port), ssl=False, timeout=30)
M.login(user, pw)
if action == 'seed':
    M.create_folder('Projekte/Alt')
    for box, subject in [('INBOX', 'one'), ('INBOX', 'two'), ('Projekte/Alt', 'old'),
                         ('Sent', 'sent')]:
        M.append(box, b'Subject: %s\r\n\r\nbody\r\n' % subject.encode())
elif action == 'change':
    M.select_folder('INBOX')
    M.add_flags(M.search(['SUBJECT', 'two']), [b'\\Flagged'])
    M.append('INBOX', b'Subject: three\r\n\r\nbody\r\n')
elif action == 'dump':
    out = {}
    for _, _, name in M.list_folders():
        M.select_folder(name, readonly=True)
        got = M.fetch(M.search(), ['FLAGS', 'BODY.PEEK[HEADER.FIELDS (SUBJECT)]'])
        msgs = []
        for d in got.values():
            subject = d[b'BODY[HEADER.FIELDS (SUBJECT)]'].decode().strip().split(': ', 1)[1]
            flags = ' '.join(f.decode() for f in d[b'FLAGS'])
            msgs.append('%s[%s]' % (subject, flags))
        out[name] = sorted(msgs)
    print(json.dumps(out, sort_keys=True))
M.logout()
"#;

fn remote(node: &Node, action: &str) -> String {
    python(
        REMOTE,
        &[
            &node.imap.to_string(),
            &node.address,
            &node.password,
            action,
        ],
    )
}

#[test]
fn mbsync_syncs_every_folder_both_ways_then_transfers_nothing() {
    let mut node = Node::new("bob");
    node.start();
    remote(&node, "seed");
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("mail");
    fs::create_dir_all(&local).unwrap();
    let cfg = dir.path().join("mbsyncrc");
    fs::write(
        &cfg,
        format!(
            "IMAPAccount node\nHost 127.0.0.1\nPort {}\nUser {}\nPass {}\nSSLType None\n\
             AuthMechs LOGIN\n\n\
             IMAPStore remote\nAccount node\n\n\
             MaildirStore local\nPath {}/\nInbox {}/INBOX\nSubFolders Verbatim\n\n\
             Channel all\nFar :remote:\nNear :local:\nPatterns *\nCreate Both\n\
             Expunge Both\nSyncState *\nSync All\n",
            node.imap,
            node.address,
            node.password,
            local.display(),
            local.display()
        ),
    )
    .unwrap();

    // First run: every folder comes down.
    mbsync(&cfg);
    for (b, n) in [
        ("INBOX", 2),
        ("Projekte/Alt", 1),
        ("Sent", 1),
        ("Drafts", 0),
        ("Trash", 0),
        ("Junk", 0),
        ("Archive", 0),
    ] {
        assert_eq!(files(&local.join(b)).len(), n, "{b} after the first sync");
    }

    // Changes on both sides.
    // Near: read "one" (Seen), delete "old", file a new message in Archive, a new folder.
    for f in files(&local.join("INBOX")) {
        if fs::read_to_string(&f).unwrap().contains("Subject: one") {
            let name = f.to_string_lossy().into_owned();
            let renamed = if name.contains(":2,") {
                format!("{name}S")
            } else {
                format!("{name}:2,S")
            };
            fs::rename(&f, renamed.replace("/new/", "/cur/")).unwrap();
        }
    }
    for f in files(&local.join("Projekte/Alt")) {
        let name = f.to_string_lossy().into_owned();
        let renamed = if name.contains(":2,") {
            format!("{name}T")
        } else {
            format!("{name}:2,T")
        };
        fs::rename(&f, renamed.replace("/new/", "/cur/")).unwrap();
    }
    fs::write(
        local.join("Archive/new/1700000000.local.host"),
        "Subject: archived\r\n\r\nbody\r\n",
    )
    .unwrap();
    for sub in ["cur", "new", "tmp"] {
        fs::create_dir_all(local.join("Local").join(sub)).unwrap();
    }
    fs::write(
        local.join("Local/new/1700000001.local.host"),
        "Subject: local\r\n\r\nbody\r\n",
    )
    .unwrap();
    // Far: flag "two", a new message "three".
    remote(&node, "change");

    mbsync(&cfg);
    let far = remote(&node, "dump");
    for want in [
        r#""Archive": ["archived[]"]"#,
        r#""Local": ["local[]"]"#,
        r#""Projekte/Alt": []"#,
        r#""Sent": ["sent[]"]"#,
    ] {
        assert!(far.contains(want), "{want} not in {far}");
    }
    assert!(
        far.contains(r#""INBOX": ["one[\\Seen]", "three[]", "two[\\Flagged]"]"#),
        "{far}"
    );
    let near: Vec<String> = files(&local.join("INBOX"))
        .iter()
        .map(|f| {
            let text = fs::read_to_string(f).unwrap();
            let subject = text
                .lines()
                .find_map(|l| l.strip_prefix("Subject: "))
                .unwrap()
                .to_string();
            let flags = f
                .to_string_lossy()
                .split_once(":2,")
                .map(|x| x.1.to_string())
                .unwrap_or_default();
            format!("{subject}[{flags}]")
        })
        .collect();
    let mut near = near;
    near.sort();
    assert_eq!(near, ["one[S]", "three[]", "two[F]"]);
    assert!(
        files(&local.join("Projekte/Alt")).is_empty(),
        "deleted near and far"
    );

    // Third run: in sync, nothing moves.
    let trace = mbsync(&cfg);
    let cmds = sent_commands(&trace);
    let moving: Vec<&String> = cmds
        .iter()
        .filter(|c| {
            let u = c.to_ascii_uppercase();
            u.contains("APPEND")
                || u.contains(" STORE ")
                || u.contains("BODY.PEEK[]")
                || u.contains("EXPUNGE")
                || u.contains(" CREATE ")
        })
        .collect();
    println!("third run sent: {cmds:#?}");
    assert!(!cmds.is_empty(), "no trace of mbsync's commands:\n{trace}");
    assert!(moving.is_empty(), "the third sync transferred: {moving:?}");
    assert_eq!(
        remote(&node, "dump"),
        far,
        "the third sync changed the server"
    );
}

/// A client that submits a message and then files its own copy in Sent (what Thunderbird
/// and K-9 do) ends up with one copy: the node filed one at submission, and the APPEND of
/// the same message (same Message-ID, the client's original headers) is recognised.
#[test]
fn a_submitted_message_appended_to_sent_is_stored_once() {
    let mut node = Node::new("bob");
    node.start();
    let out = python(
        r#"
import re, smtplib, sys
from email.message import EmailMessage
from imapclient import IMAPClient
sub_port, imap_port, user, pw = sys.argv[1:]
m = EmailMessage()
m['From'] = user
m['To'] = user
m['Subject'] = 'filed once'
m['User-Agent'] = 'LeakyClient/1.0'
m['Message-ID'] = '<filed-once@my-laptop.example>'
m.set_content('hello')
with smtplib.SMTP('127.0.0.1', int(sub_port)) as s:
    s.login(user, pw)
    s.send_message(m)
c = IMAPClient('127.0.0.1', port=int(imap_port), ssl=False, timeout=30)
c.login(user, pw)
before = c.folder_status('Sent', [b'MESSAGES', b'UIDNEXT'])
r = c.append('Sent', m.as_bytes(), flags=[b'\\Seen'])
after = c.folder_status('Sent', [b'MESSAGES', b'UIDNEXT'])
uid = int(re.search(rb'\[APPENDUID \d+ (\d+)\]', r).group(1))
c.select_folder('Sent')
subjects = [d[b'BODY[HEADER.FIELDS (SUBJECT)]'].decode().strip()
            for d in c.fetch(c.search(), ['BODY.PEEK[HEADER.FIELDS (SUBJECT)]']).values()]
print('BEFORE=%d AFTER=%d UIDNEXT_SAME=%s UID_IN_SENT=%s SUBJECTS=%r' % (
    before[b'MESSAGES'], after[b'MESSAGES'], before[b'UIDNEXT'] == after[b'UIDNEXT'],
    uid in c.search(), subjects))
# A different message appended to Sent is stored as usual.
r = c.append('Sent', b'Message-ID: <other@x>\r\nSubject: other\r\n\r\nx\r\n')
print('OTHER=%d' % c.folder_status('Sent', [b'MESSAGES'])[b'MESSAGES'])
c.logout()
"#,
        &[
            &node.submission.to_string(),
            &node.imap.to_string(),
            &node.address,
            &node.password,
        ],
    );
    assert!(
        out.contains(
            "BEFORE=1 AFTER=1 UIDNEXT_SAME=True UID_IN_SENT=True SUBJECTS=['Subject: filed once']"
        ),
        "{out}"
    );
    assert!(out.contains("OTHER=2"), "{out}");
}

/// Runs offlineimap once with `rc`; its output (it logs every copy, flag change and deletion).
fn offlineimap(rc: &Path) -> String {
    let out = Command::new("offlineimap")
        .arg("-c")
        .arg(rc)
        .args(["-o", "-u", "basic"])
        .output()
        .expect("offlineimap (Debian package offlineimap3) must be installed");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "offlineimap failed:\n{text}");
    assert!(
        !text.contains("ERROR"),
        "offlineimap reported an error:\n{text}"
    );
    text
}

#[test]
fn offlineimap_syncs_every_folder_both_ways_then_transfers_nothing() {
    let mut node = Node::new("bob");
    node.start();
    remote(&node, "seed");
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("mail");
    fs::create_dir_all(&local).unwrap();
    let rc = dir.path().join("offlineimaprc");
    fs::write(
        &rc,
        format!(
            "[general]\naccounts = node\nmetadata = {meta}\n\n\
             [Account node]\nlocalrepository = local\nremoterepository = remote\n\n\
             [Repository local]\ntype = Maildir\nlocalfolders = {local}\nsep = /\n\n\
             [Repository remote]\ntype = IMAP\nremotehost = 127.0.0.1\nremoteport = {port}\n\
             remoteuser = {user}\nremotepass = {pw}\nssl = no\nstarttls = no\n",
            meta = dir.path().join("meta").display(),
            local = local.display(),
            port = node.imap,
            user = node.address,
            pw = node.password,
        ),
    )
    .unwrap();

    // First run: every folder and message comes down.
    offlineimap(&rc);
    for (b, n) in [
        ("INBOX", 2),
        ("Projekte/Alt", 1),
        ("Sent", 1),
        ("Drafts", 0),
        ("Trash", 0),
        ("Junk", 0),
        ("Archive", 0),
    ] {
        assert_eq!(files(&local.join(b)).len(), n, "{b} after the first sync");
    }

    // Near: read "one" (Seen), delete "old", a new message in INBOX. Far: flag "two", a new
    // message "three".
    for f in files(&local.join("INBOX")) {
        if fs::read_to_string(&f).unwrap().contains("Subject: one") {
            let name = f.to_string_lossy().into_owned();
            let (base, flags) = name.split_once(":2,").unwrap();
            fs::rename(&f, format!("{base}:2,{flags}S").replace("/new/", "/cur/")).unwrap();
        }
    }
    for f in files(&local.join("Projekte/Alt")) {
        fs::remove_file(f).unwrap();
    }
    fs::write(
        local.join("INBOX/new/1700000002.local.host"),
        "Subject: written offline\r\n\r\nbody\r\n",
    )
    .unwrap();
    remote(&node, "change");

    offlineimap(&rc);
    let far = remote(&node, "dump");
    assert!(far.contains(r#""Projekte/Alt": []"#), "{far}");
    assert!(
        far.contains(
            r#""INBOX": ["one[\\Seen]", "three[]", "two[\\Flagged]", "written offline[]"]"#
        ),
        "{far}"
    );
    let mut near: Vec<String> = files(&local.join("INBOX"))
        .iter()
        .map(|f| {
            let text = fs::read_to_string(f).unwrap();
            let subject = text
                .lines()
                .find_map(|l| l.strip_prefix("Subject: "))
                .unwrap()
                .to_string();
            let flags = f
                .to_string_lossy()
                .split_once(":2,")
                .map(|x| x.1.to_string())
                .unwrap_or_default();
            format!("{subject}[{flags}]")
        })
        .collect();
    near.sort();
    assert_eq!(
        near,
        ["one[S]", "three[]", "two[F]", "written offline[]"],
        "near side after the second sync"
    );

    // Third run: in sync, nothing is copied, flagged or deleted either way.
    let log = offlineimap(&rc);
    for moving in ["Copy message", "flag", "Deleting"] {
        assert!(
            !log.contains(moving),
            "the third sync transferred ({moving}):\n{log}"
        );
    }
    assert_eq!(
        remote(&node, "dump"),
        far,
        "the third sync changed the server"
    );
}

/// A tmux session, killed on drop.
struct Tmux(String);

impl Tmux {
    fn start(name: &str, command: &str) -> Tmux {
        let st = Command::new("tmux")
            .args([
                "new-session",
                "-d",
                "-s",
                name,
                "-x",
                "200",
                "-y",
                "50",
                command,
            ])
            .status()
            .expect("tmux must be installed");
        assert!(st.success());
        Tmux(name.to_string())
    }

    fn screen(&self) -> String {
        let out = Command::new("tmux")
            .args(["capture-pane", "-p", "-t", &self.0])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn keys(&self, keys: &str) {
        let st = Command::new("tmux")
            .args(["send-keys", "-t", &self.0, keys])
            .status()
            .unwrap();
        assert!(st.success());
    }

    /// Waits until the screen shows `text`, up to 20 s.
    fn wait_for(&self, text: &str) {
        let ok = support::wait_until(std::time::Duration::from_secs(20), || {
            self.screen().contains(text)
        });
        assert!(ok, "the screen never showed {text:?}:\n{}", self.screen());
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.0])
            .status();
    }
}

/// neomutt, as a person uses it (interactively, in a terminal driven through tmux): it sends
/// through the node's submission port and files its copy into Sent over IMAP (an APPEND, in
/// its debug log); the message arrives in INBOX and Sent holds it once (the node filed one at
/// submission and recognises neomutt's).
#[test]
fn neomutt_sends_through_submission_and_files_into_sent_over_imap() {
    let mut node = Node::new("bob");
    node.start();
    let dir = tempfile::tempdir().unwrap();
    let user = node.address.replace('@', "%40");
    let muttrc = dir.path().join("muttrc");
    fs::write(
        &muttrc,
        format!(
            "set from = \"{addr}\"\nset use_from = yes\n\
             set smtp_url = \"smtp://{user}@127.0.0.1:{sub}/\"\nset smtp_pass = \"{pw}\"\n\
             set folder = \"imap://{user}@127.0.0.1:{imap}/\"\nset imap_pass = \"{pw}\"\n\
             set record = \"=Sent\"\nset copy = yes\n\
             set ssl_starttls = no\nset ssl_force_tls = no\n\
             set editor = \"true\"\nset abort_unmodified = no\n",
            addr = node.address,
            sub = node.submission,
            imap = node.imap,
            pw = node.password,
        ),
    )
    .unwrap();
    let body = dir.path().join("body.txt");
    fs::write(&body, "written in neomutt\n").unwrap();
    let log = dir.path().join("neomutt.log");
    let done = dir.path().join("done");
    let session = Tmux::start(
        &format!("neomutt-{}", std::process::id()),
        &format!(
            "neomutt -d 2 -l {log} -F {rc} -s 'from neomutt' -i {body} -- {to}; touch {done}; sleep 60",
            log = log.display(),
            rc = muttrc.display(),
            body = body.display(),
            to = node.address,
            done = done.display(),
        ),
    );
    session.wait_for("To: ");
    session.keys("Enter");
    session.wait_for("Subject: from neomutt");
    session.keys("Enter");
    session.wait_for("y:Send");
    session.keys("y");
    assert!(
        support::wait_until(std::time::Duration::from_secs(30), || done.exists()),
        "neomutt did not finish sending:\n{}",
        session.screen()
    );

    let trace: String = fs::read_dir(dir.path())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("neomutt.log"))
        .map(|e| fs::read_to_string(e.path()).unwrap_or_default())
        .collect();
    assert!(
        trace.contains("APPEND \"Sent\""),
        "neomutt did not file its copy over IMAP:\n{trace}"
    );
    let dump = remote(&node, "dump");
    // Signed by the node, but this node has no ledger to check the signing key on.
    assert!(
        dump.contains(r#""INBOX": ["from neomutt[$Unverified]"]"#),
        "{dump}"
    );
    assert!(
        dump.contains(r#""Sent": ["from neomutt[\\Seen]"]"#),
        "{dump}"
    );
}
