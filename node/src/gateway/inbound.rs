//! The internet to participants: the SMTP service of the public listener (the MX of the
//! gateway's domain).
//!
//! It takes mail only for `name@domain` of a served participant: an unknown name gets
//! `550 5.1.1`, and any address outside the domain `554 5.7.1 relaying denied`, whoever
//! connects (loopback included: the gateway has no trusted networks). Each message is
//! checked with mail-auth (SPF of the connecting address and the envelope sender or HELO
//! name, DKIM, DMARC of the header From) and the results recorded in an
//! `Authentication-Results` field (RFC 8601) that replaces any the message came with; then it
//! is queued for the participants' onion addresses. The checks only record: what to do with
//! a failing message is the participant's to decide (its node shows the field).

use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use mail_auth::common::headers::HeaderWriter;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{AuthenticatedMessage, AuthenticationResults, DmarcResult};

use super::config::GatewayConfig;
use super::{Gateway, INBOUND, scrub};
use crate::smtp::reply::{Reply, reply};
use tokio_util::sync::CancellationToken;

use crate::smtp::server::{Service, Timing};
use crate::smtp::session::{Envelope, Policy, SessionConfig};

/// Which recipients the public listener takes, and how it refuses the others. Pure.
pub fn recipient(cfg: &GatewayConfig, address: &str) -> Result<String, Reply> {
    if let Some(p) = cfg.by_public(address) {
        return Ok(p.address.clone());
    }
    if cfg.is_ours(address) {
        return Err(reply(550, [5, 1, 1], "Error: no such user here"));
    }
    Err(reply(
        554,
        [5, 7, 1],
        format!(
            "Error: relaying denied: this host takes mail for @{} only",
            cfg.domain
        ),
    ))
}

/// The public listener's session policy: served names of the domain only.
#[derive(Debug, Clone)]
pub struct PublicPolicy {
    g: Arc<Gateway>,
    helo: Arc<Mutex<String>>,
    starttls: bool,
}

impl Policy for PublicPolicy {
    fn accepts(&self, address: &str) -> bool {
        recipient(&self.g.config, address).is_ok()
    }

    fn authenticate(&self, _user: &str, _password: &str) -> Option<String> {
        None
    }

    fn refusal(&self, address: &str) -> Option<Reply> {
        recipient(&self.g.config, address).err()
    }

    fn greeted(&self, helo: &str) {
        *self.helo.lock().expect("helo lock") = helo.to_string();
    }

    fn starttls(&self) -> bool {
        self.starttls
    }
}

/// The public listener's STARTTLS: the configured certificate.
pub type Tls = tokio_rustls::TlsAcceptor;

/// The public listener, for one connection from `peer`.
#[derive(Clone)]
pub struct PublicService {
    g: Arc<Gateway>,
    peer: IpAddr,
    helo: Arc<Mutex<String>>,
    /// STARTTLS, until it has been done.
    tls: Option<Tls>,
    /// The connection is over TLS.
    secure: bool,
}

impl std::fmt::Debug for PublicService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublicService")
            .field("peer", &self.peer)
            .field("starttls", &self.tls.is_some())
            .field("secure", &self.secure)
            .finish_non_exhaustive()
    }
}

impl PublicService {
    /// The service of one connection from `peer`; with `tls`, STARTTLS is offered.
    pub fn new(g: Arc<Gateway>, peer: IpAddr, tls: Option<Tls>) -> Self {
        PublicService {
            g,
            peer,
            helo: Arc::new(Mutex::new(String::new())),
            tls,
            secure: false,
        }
    }

    /// Runs the connection: the session, and after STARTTLS the handshake and a fresh
    /// session over TLS (RFC 3207: the client says EHLO again, and nothing from before the
    /// handshake is kept).
    pub async fn serve(
        self,
        stream: tokio::net::TcpStream,
        session: SessionConfig,
        timing: Timing,
        shutdown: &CancellationToken,
    ) -> std::io::Result<()> {
        let Some(tls) = self.tls.clone() else {
            return crate::smtp::server::handle(stream, &self, session, timing, shutdown).await;
        };
        let started = crate::smtp::server::handle_until_starttls(
            stream,
            &self,
            session.clone(),
            timing,
            shutdown,
        )
        .await?;
        let Some(tcp) = started else {
            return Ok(());
        };
        let secured = tls.accept(tcp).await?;
        tracing::debug!(peer = %self.peer, "STARTTLS");
        let after = PublicService {
            secure: true,
            ..self
        };
        crate::smtp::server::resume(secured, &after, session, timing, shutdown).await
    }
}

/// The `Authentication-Results` field for a message from `ip` (which said `helo`), with
/// envelope sender `mail_from`, checked with the gateway's resolver.
pub async fn check(g: &Gateway, ip: IpAddr, helo: &str, mail_from: &str, message: &[u8]) -> String {
    let host = g.config.hostname();
    let Some(msg) = AuthenticatedMessage::parse(message) else {
        return format!(
            "Authentication-Results: {host};\r\n\tspf=none;\r\n\tdkim=permerror (unparsable message);\r\n\tdmarc=none\r\n"
        );
    };
    let helo = if helo.is_empty() { "unknown" } else { helo };
    let spf = if mail_from.is_empty() {
        g.dns
            .verify_spf(SpfParameters::verify_ehlo(ip, helo, host))
            .await
    } else {
        g.dns
            .verify_spf(SpfParameters::verify_mail_from(ip, helo, host, mail_from))
            .await
    };
    let dkim = g.dns.verify_dkim(&msg).await;
    let mail_from_domain = mail_from
        .rsplit_once('@')
        .map_or(helo, |(_, d)| d)
        .to_string();
    let mut dmarc = g
        .dns
        .verify_dmarc(DmarcParameters::new(&msg, &dkim, &mail_from_domain, &spf))
        .await;
    // mail-auth leaves both results unset when neither SPF nor DKIM passed; with a policy
    // published that is a DMARC failure (RFC 7489 6.6.2), and says so.
    if dmarc.dmarc_record().is_some()
        && *dmarc.spf_result() == DmarcResult::None
        && *dmarc.dkim_result() == DmarcResult::None
    {
        dmarc = dmarc
            .with_spf_result(DmarcResult::Fail(mail_auth::Error::NotAligned))
            .with_dkim_result(DmarcResult::Fail(mail_auth::Error::NotAligned));
    }
    let mut results = AuthenticationResults::new(host).with_dkim_results(&dkim, msg.from());
    results = if mail_from.is_empty() {
        results.with_spf_ehlo_result(&spf, ip, helo)
    } else {
        results.with_spf_mailfrom_result(&spf, ip, mail_from, helo)
    };
    results.with_dmarc_result(&dmarc).to_header()
}

impl Service for PublicService {
    type Policy = PublicPolicy;

    fn policy(&self) -> PublicPolicy {
        PublicPolicy {
            g: self.g.clone(),
            helo: self.helo.clone(),
            starttls: self.tls.is_some() && !self.secure,
        }
    }

    async fn accept(&self, env: Envelope) -> Result<(), Reply> {
        let g = &self.g;
        let mut onions = Vec::with_capacity(env.recipients.len());
        for r in &env.recipients {
            onions.push(recipient(&g.config, r)?);
        }
        let helo = self.helo.lock().expect("helo lock").clone();
        let results = check(g, self.peer, &helo, &env.from, &env.data).await;
        let received = format!(
            "Received: from {} ([{}])\r\n\tby {} with ESMTP{}; {}\r\n",
            if helo.is_empty() { "unknown" } else { &helo },
            self.peer,
            g.config.hostname(),
            if self.secure { "S" } else { "" },
            crate::message::rfc5322_date(chrono::Utc::now())
        );
        let message = scrub::inbound(&env.data, &format!("{results}{received}"));
        let now = g.clock.now();
        let q = g.queue.clone();
        let from = env.from.clone();
        let queued =
            tokio::task::spawn_blocking(move || q.enqueue(INBOUND, &from, &onions, &message, now))
                .await;
        match queued {
            Ok(Ok(m)) => {
                tracing::info!(id = %m.id, rcpts = m.recipients.len(), peer = %self.peer, "queued for participants");
                Ok(())
            }
            Ok(Err(e)) => {
                tracing::error!("spooling: {e}");
                Err(reply(
                    451,
                    [4, 3, 0],
                    "Error: local storage error; try again later",
                ))
            }
            Err(e) => {
                tracing::error!("spool task: {e}");
                Err(reply(451, [4, 3, 0], "Error: local error; try again later"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use onionpost_proto::onion::OnionAddress;

    #[test]
    fn only_served_names_of_the_domain_are_taken() {
        let onion = OnionAddress::from_public_key([4; 32]).hostname();
        let cfg = GatewayConfig::parse(&format!(
            "domain = \"gw.example\"\n[[participant]]\nname = \"alice\"\naddress = \"alice@{onion}\"\n"
        ))
        .unwrap();
        assert_eq!(
            recipient(&cfg, "Alice@GW.example"),
            Ok(format!("alice@{onion}"))
        );
        let r = recipient(&cfg, "bob@gw.example").unwrap_err();
        assert_eq!((r.code, r.esc), (550, [5, 1, 1]));
        for outside in [
            "bob@example.com",
            &format!("alice@{onion}"),
            "x@gw.example.evil",
        ] {
            let r = recipient(&cfg, outside).unwrap_err();
            assert_eq!((r.code, r.esc), (554, [5, 7, 1]), "{outside}");
        }
    }
}
