//! What `onionpost-node status` shows: the live state of a running node, read over its
//! control socket (not a file that lags behind), and how it is printed.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::hosting::store::HeldTotals;
use crate::onion::TorStatus;
use crate::queue::QueueStatus;

/// One listener.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListenerStatus {
    /// The bound address.
    pub address: SocketAddr,
    /// Connections open now.
    pub connections: usize,
    /// The cap.
    pub max_connections: usize,
}

/// The live state of a running node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// Process id.
    pub pid: u32,
    /// Hosted identities' addresses.
    pub identities: Vec<String>,
    /// Listener name -> its state.
    pub listeners: BTreeMap<String, ListenerStatus>,
    /// The outbound queue.
    pub queue: QueueStatus,
    /// Tor clients and onion services (onion transport only).
    pub tor: Option<TorStatus>,
    /// Alerts of the ledger monitor: keys bound to our identities that this node did not
    /// make.
    #[serde(default)]
    pub alerts: Vec<String>,
    /// Mail held for others, if this node is a mailbox host (`[hosting] enabled`).
    #[serde(default)]
    pub held: Option<HeldTotals>,
}

/// The text `status` prints for a running node.
pub fn render(s: &Status) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "node: running (pid {})", s.pid);
    let _ = writeln!(o, "identities:");
    for a in &s.identities {
        let _ = writeln!(o, "  {a}");
    }
    let _ = writeln!(o, "listeners:");
    for (k, l) in &s.listeners {
        let _ = writeln!(
            o,
            "  {k}: {} ({} of {} connections)",
            l.address, l.connections, l.max_connections
        );
    }
    if let Some(t) = &s.tor {
        let _ = writeln!(
            o,
            "tor: {} network; outbound onion connections: {} ok, {} failed",
            t.network, t.outbound_ok, t.outbound_failed
        );
        for (onion, svc) in &t.services {
            // arti reports a fresh service as degraded for about a minute (its descriptor
            // upload is rate-limited) while it already serves: a served stream is the proof.
            let service = if svc.inbound_streams > 0 {
                format!(
                    "reachable ({} inbound stream(s); arti: {})",
                    svc.inbound_streams, svc.state
                )
            } else {
                format!("{} (no inbound stream yet)", svc.state)
            };
            let _ = writeln!(o, "  {onion}: service {service}; client {}", svc.bootstrap);
        }
    }
    let next = s
        .queue
        .next_attempt_in
        .map(|t| format!(", next attempt in {t:.1} s"))
        .unwrap_or_default();
    let _ = writeln!(
        o,
        "queue: {} message(s), {} being delivered{next}",
        s.queue.messages, s.queue.in_flight
    );
    match &s.held {
        Some(h) => {
            let _ = writeln!(
                o,
                "mailbox host: {} message(s), {} bytes, held for {} identit{}",
                h.messages,
                h.bytes,
                h.recipients,
                if h.recipients == 1 { "y" } else { "ies" }
            );
        }
        None => {
            let _ = writeln!(o, "mailbox host: off");
        }
    }
    render_alerts(&mut o, &s.alerts);
    o
}

/// The `alerts:` part (also shown for a node that is not running).
pub fn render_alerts(o: &mut String, alerts: &[String]) {
    if alerts.is_empty() {
        let _ = writeln!(o, "alerts: none");
        return;
    }
    let _ = writeln!(o, "alerts: {}", alerts.len());
    for a in alerts {
        let _ = writeln!(o, "  ALERT: {a}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_part() {
        let s = Status {
            pid: 7,
            identities: vec!["a@x.onion".into()],
            listeners: BTreeMap::from([(
                "imap".to_string(),
                ListenerStatus {
                    address: "127.0.0.1:143".parse().unwrap(),
                    connections: 1,
                    max_connections: 64,
                },
            )]),
            queue: QueueStatus {
                messages: 2,
                in_flight: 1,
                next_attempt_in: Some(3.25),
            },
            tor: Some(TorStatus {
                network: "private".into(),
                services: BTreeMap::from([(
                    "x.onion".to_string(),
                    crate::onion::ServiceStatus {
                        bootstrap: "100%".into(),
                        ready: true,
                        state: "DegradedUnreachable".into(),
                        inbound_streams: 2,
                    },
                )]),
                outbound_ok: 3,
                outbound_failed: 0,
            }),
            alerts: vec!["the ledger binds to a@x.onion a key".into()],
            held: Some(HeldTotals {
                recipients: 1,
                messages: 3,
                bytes: 4096,
            }),
        };
        let text = render(&s);
        assert!(
            text.contains(
                "x.onion: service reachable (2 inbound stream(s); arti: DegradedUnreachable)"
            ),
            "{text}"
        );
        assert!(text.contains("node: running (pid 7)"));
        assert!(text.contains("imap: 127.0.0.1:143 (1 of 64 connections)"));
        assert!(text.contains("queue: 2 message(s), 1 being delivered, next attempt in 3.2 s"));
        assert!(
            text.contains("alerts: 1\n  ALERT: the ledger binds to a@x.onion a key\n"),
            "{text}"
        );
        assert!(
            text.contains("mailbox host: 3 message(s), 4096 bytes, held for 1 identity\n"),
            "{text}"
        );
        let off = render(&Status { held: None, ..s });
        assert!(off.contains("mailbox host: off\n"), "{off}");
        let mut none = String::new();
        render_alerts(&mut none, &[]);
        assert_eq!(none, "alerts: none\n");
    }
}
