//! Self-tests of the outside world the gateway's tests stand on (`support/outside.rs`):
//! dnsmasq answers the records it was given to a real resolver, Postfix delivers into a
//! Maildir and relays a domain to a loopback port, dkimpy signs and verifies with the key
//! dnsmasq serves and refuses tampered mail, and nothing is left running after a drop.

mod support;

use std::net::Ipv4Addr;
use std::time::Duration;

use support::outside::{
    DkimAlgorithm, DkimKey, Dns, PostfixConfig, SmtpSink, Zone, dkim_sign, dkim_verify, message,
    postfix::alive, smtp_send,
};

const LIMIT: Duration = Duration::from_secs(30);

/// dnspython (the resolver dkimpy uses): every answer for `name`/`rtype` at the port, TXT
/// strings of one record concatenated; or the exception's class name.
const RESOLVE: &str = r#"
import sys, dns.resolver
port, name, rtype = sys.argv[1:]
r = dns.resolver.Resolver(configure=False)
r.nameservers = ['127.0.0.1']
r.port = int(port)
try:
    for a in r.resolve(name, rtype):
        if rtype == 'TXT':
            print(b''.join(a.strings).decode())
        else:
            print(a.to_text())
except Exception as e:
    print(type(e).__name__)
"#;

fn resolve(dns: &Dns, name: &str, rtype: &str) -> Vec<String> {
    support::python(RESOLVE, &[&dns.port().to_string(), name, rtype])
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn dnsmasq_answers_mx_a_and_txt_records_and_can_change_them() {
    let rsa = DkimKey::generate(DkimAlgorithm::Rsa, "outside.test", "s2026");
    let zone = Zone::new()
        .mail_domain("outside.test")
        .a("gateway.gw.test", Ipv4Addr::new(127, 0, 0, 2))
        .mx("gw.test", "gateway.gw.test", 5)
        .spf("outside.test", "ip4:127.0.0.1 -all")
        .dkim(&rsa)
        .dmarc("outside.test", "p=reject; adkim=s");
    let mut dns = Dns::start(&zone);

    // dig (bind9-dnsutils).
    assert_eq!(dns.query("outside.test", "MX"), ["10 mx.outside.test."]);
    assert_eq!(dns.query("mx.outside.test", "A"), ["127.0.0.1"]);
    assert_eq!(dns.query("gw.test", "MX"), ["5 gateway.gw.test."]);
    assert_eq!(dns.query("gateway.gw.test", "A"), ["127.0.0.2"]);
    assert_eq!(
        dns.query("outside.test", "TXT"),
        ["\"v=spf1 ip4:127.0.0.1 -all\""]
    );
    assert_eq!(
        dns.query("_dmarc.outside.test", "TXT"),
        ["\"v=DMARC1; p=reject; adkim=s\""]
    );
    // A 2048-bit key does not fit one TXT string: two strings of one record.
    let dkim = dns.query("s2026._domainkey.outside.test", "TXT");
    assert_eq!(dkim.len(), 1, "{dkim:?}");
    assert!(dkim[0].matches('"').count() == 4, "{dkim:?}");
    assert_eq!(
        dkim[0].replace("\" \"", "").trim_matches('"'),
        rsa.txt_record()
    );
    assert!(rsa.txt_record().starts_with("v=DKIM1; k=rsa; p=MII"));
    // An unknown name of a served domain does not exist.
    assert!(dns.query("nobody.outside.test", "A").is_empty());

    // dnspython, which dkimpy uses, reads the same.
    assert_eq!(
        resolve(&dns, "s2026._domainkey.outside.test", "TXT"),
        [rsa.txt_record()]
    );
    assert_eq!(resolve(&dns, "outside.test", "MX"), ["10 mx.outside.test."]);
    assert_eq!(resolve(&dns, "nobody.outside.test", "A"), ["NXDOMAIN"]);
    assert!(
        dns.log().contains("s2026._domainkey.outside.test"),
        "{}",
        dns.log()
    );

    // Per test: another policy on the same port.
    let port = dns.port();
    dns.set_zone(&zone.clone().spf("other.test", "-all"));
    assert_eq!(dns.port(), port);
    assert_eq!(dns.query("other.test", "TXT"), ["\"v=spf1 -all\""]);
    assert_eq!(dns.query("outside.test", "MX"), ["10 mx.outside.test."]);

    let pid = dns.pid().unwrap();
    drop(dns);
    assert!(!alive(pid), "dnsmasq {pid} still running after the drop");
    assert!(support::outside::dig(port, "outside.test", "MX").is_err());
}

#[test]
fn postfix_delivers_mail_for_its_domain_into_a_maildir() {
    let pf = PostfixConfig::new("mx.outside.test")
        .mailbox("carol@outside.test")
        .mailbox("dave@outside.test")
        .start();
    let msg = message(
        "alice@gw.test",
        "carol@outside.test",
        "hello from smtplib",
        "first line\nsecond line",
    );
    assert_eq!(
        pf.send("alice@gw.test", &["carol@outside.test"], &msg),
        "OK"
    );
    let got = pf.wait_for_message("carol@outside.test", "hello from smtplib", LIMIT);
    let text = String::from_utf8(got).unwrap();
    assert!(text.contains("first line\nsecond line"), "{text}");
    assert!(text.contains("From: <alice@gw.test>"), "{text}");
    assert!(
        text.contains("Received: from client.outside.test"),
        "{text}"
    );
    assert!(text.starts_with("Return-Path: <alice@gw.test>"), "{text}");
    assert!(pf.messages("dave@outside.test").is_empty());

    // The local submission path too.
    let msg = message(
        "root@outside.test",
        "dave@outside.test",
        "via sendmail",
        "x",
    );
    pf.sendmail("root@outside.test", &["dave@outside.test"], &msg);
    pf.wait_for_message("dave@outside.test", "via sendmail", LIMIT);

    // An address it does not hold, and a domain it neither holds nor relays.
    let refused = pf.send("alice@gw.test", &["nobody@outside.test"], &msg);
    assert!(refused.starts_with("550"), "{refused}");
    let refused = pf.send("alice@gw.test", &["x@elsewhere.test"], &msg);
    assert!(refused.starts_with("554"), "{refused}");
    assert!(refused.contains("Relay access denied"), "{refused}");
    assert_eq!(pf.messages("carol@outside.test").len(), 1);

    let (pid, port) = (pf.master_pid().unwrap(), pf.port());
    drop(pf);
    assert!(
        !alive(pid),
        "postfix master {pid} still running after the drop"
    );
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}

#[test]
fn postfix_relays_the_gateway_domain_to_a_loopback_port() {
    let sink = SmtpSink::start();
    let pf = PostfixConfig::new("mx.outside.test")
        .relay("gw.test", sink.port())
        .source_address(Ipv4Addr::new(127, 0, 0, 3))
        .start();
    let msg = message(
        "carol@outside.test",
        "alice@gw.test",
        "inbound to the gateway",
        "relayed body",
    );
    assert_eq!(
        pf.send("carol@outside.test", &["alice@gw.test"], &msg),
        "OK"
    );
    pf.sendmail("carol@outside.test", &["bob@gw.test"], &msg);
    let got = sink.wait_for(2, LIMIT);
    let mut rcpts: Vec<&str> = got.iter().map(|r| r.rcpt_tos[0].as_str()).collect();
    rcpts.sort_unstable();
    assert_eq!(rcpts, ["alice@gw.test", "bob@gw.test"]);
    for r in &got {
        assert_eq!(r.mail_from, "carol@outside.test");
        assert_eq!(r.helo, "mx.outside.test");
        assert_eq!(r.peer, "127.0.0.3");
        let text = String::from_utf8_lossy(&r.data);
        assert!(text.contains("Subject: inbound to the gateway"), "{text}");
        assert!(text.contains("relayed body"), "{text}");
        assert!(text.contains("by mx.outside.test (Postfix"), "{text}");
    }
    assert!(
        support::wait_until(LIMIT, || pf.queue_is_empty()),
        "{}",
        pf.maillog_tail(20)
    );
    assert!(
        pf.maillog()
            .contains(&format!("relay=127.0.0.1[127.0.0.1]:{}", sink.port()))
    );

    // The sink stops with its value.
    let (pid, port) = (sink.pid().unwrap(), sink.port());
    drop(sink);
    assert!(!alive(pid));
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}

#[test]
fn postfix_relays_to_a_down_port_later_and_bounces_a_refusal() {
    // The gateway side is a second Postfix; it is not up when the first message is sent.
    let gw_port = support::free_port();
    let outside = PostfixConfig::new("mx.outside.test")
        .mailbox("carol@outside.test")
        .relay("gw.test", gw_port)
        .start();
    let msg = message(
        "carol@outside.test",
        "alice@gw.test",
        "deferred then sent",
        "d",
    );
    assert_eq!(
        outside.send("carol@outside.test", &["alice@gw.test"], &msg),
        "OK"
    );
    assert!(
        support::wait_until(LIMIT, || outside.maillog().contains("status=deferred")),
        "{}",
        outside.maillog_tail(20)
    );
    // A receiving Postfix on exactly that port, as the gateway would be.
    let gw = PostfixConfig::new("gateway.gw.test")
        .mailbox("alice@gw.test")
        .start_on(gw_port);
    outside.flush();
    let got = gw.wait_for_message("alice@gw.test", "deferred then sent", LIMIT);
    assert!(String::from_utf8_lossy(&got).contains("by gateway.gw.test (Postfix)"));

    // A refusal by the relay's destination comes back to the sender as a bounce.
    let msg = message("carol@outside.test", "nobody@gw.test", "to be refused", "r");
    assert_eq!(
        outside.send("carol@outside.test", &["nobody@gw.test"], &msg),
        "OK"
    );
    let dsn = outside.wait_for_message("carol@outside.test", "Undelivered Mail", LIMIT);
    let dsn = String::from_utf8_lossy(&dsn);
    assert!(dsn.contains("nobody@gw.test"), "{dsn}");
    assert!(dsn.contains("550"), "{dsn}");
}

#[test]
fn postfix_offers_starttls_with_its_own_certificate() {
    let pf = PostfixConfig::new("mx.outside.test")
        .mailbox("carol@outside.test")
        .tls()
        .start();
    let cert = std::fs::read_to_string(pf.tls_cert().unwrap()).unwrap();
    assert!(cert.contains("BEGIN CERTIFICATE"));
    let msg = message("alice@gw.test", "carol@outside.test", "over tls", "secret");
    assert_eq!(
        smtp_send(
            pf.port(),
            true,
            "alice@gw.test",
            &["carol@outside.test"],
            &msg
        ),
        "OK"
    );
    let got = pf.wait_for_message("carol@outside.test", "over tls", LIMIT);
    let text = String::from_utf8_lossy(&got);
    assert!(text.contains("with ESMTPS"), "{text}");
    assert!(pf.maillog().contains("TLS connection established"));
}

#[test]
fn dkimpy_signs_and_verifies_with_the_served_key_and_refuses_tampering() {
    let ed = DkimKey::generate(DkimAlgorithm::Ed25519, "outside.test", "ed");
    let rsa = DkimKey::generate(DkimAlgorithm::Rsa, "outside.test", "rsa");
    let unpublished = DkimKey::generate(DkimAlgorithm::Ed25519, "outside.test", "gone");
    assert_eq!(ed.public_key.len(), 32);
    assert_eq!(ed.ed25519_seed().unwrap().len(), 32);
    assert!(ed.pkcs8_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
    assert!(
        rsa.rsa_pkcs1_pem()
            .unwrap()
            .starts_with("-----BEGIN RSA PRIVATE KEY-----")
    );
    assert!(ed.txt_record().starts_with("v=DKIM1; k=ed25519; p="));
    let dns = Dns::start(&Zone::new().dkim(&ed).dkim(&rsa));

    let msg = message(
        "carol@outside.test",
        "alice@gw.test",
        "signed outside",
        "the body",
    );
    let unsigned = dkim_verify(&msg, &dns);
    assert!(!unsigned.pass);
    assert_eq!(unsigned.signatures, 0);
    assert_eq!(unsigned.reason, "no DKIM-Signature header");

    for key in [&ed, &rsa] {
        let signed = dkim_sign(&msg, key, &["From", "To", "Subject", "Date", "Message-ID"]);
        let text = String::from_utf8_lossy(&signed);
        assert!(text.starts_with("DKIM-Signature:"), "{text}");
        assert!(text.ends_with(&*String::from_utf8_lossy(&msg)));
        let v = dkim_verify(&signed, &dns);
        assert!(v.pass, "{:?}: {v:?}", key.algorithm);
        assert_eq!(v.domain.as_deref(), Some("outside.test"));
        assert_eq!(v.selector.as_deref(), Some(key.selector.as_str()));

        let body = String::from_utf8_lossy(&signed).replace("the body", "the bodY");
        let v = dkim_verify(body.as_bytes(), &dns);
        assert!(!v.pass);
        assert!(v.reason.contains("body hash mismatch"), "{v:?}");

        let header = String::from_utf8_lossy(&signed).replace("signed outside", "signed inside");
        let v = dkim_verify(header.as_bytes(), &dns);
        assert!(!v.pass, "{v:?}");
        assert!(v.reason.contains("did not verify"), "{v:?}");
    }

    let signed = dkim_sign(&msg, &unpublished, &[]);
    let v = dkim_verify(&signed, &dns);
    assert!(!v.pass);
    assert!(v.reason.contains("missing public key"), "{v:?}");
    assert!(v.reason.contains("gone._domainkey.outside.test"), "{v:?}");
}
