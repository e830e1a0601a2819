//! The onionpost mail node: identities, onion services, SMTP in and out, a durable outbound
//! queue, a mail store per identity, and IMAP and submission for ordinary mail clients.
//!
//! The shape, from the bottom up (imports go one way, upwards in this list never):
//!
//! * seams: [`store`] (`MailStore`), [`transport`] (`Transport`), [`ledger`] (`Ledger`),
//!   [`clock`] (`Clock`), plus the durable [`spool`] and the [`identity`] store on disk;
//! * protocol cores, sans I/O: [`smtp::session`], [`imap::session`], and the pure decisions of
//!   [`queue::schedule`] and [`delivery`];
//! * [`context`]: the read-only configuration and hosted identities every task looks at;
//! * [`delivery`]: inbound and outbound stages, each a pure decision plus a seam;
//! * [`e2e`]: end-to-end OpenPGP: identities' keyrings and the ledger's key bindings;
//! * [`hosting`]: mailbox hosts: holding mail for others, going to a recipient's hosts, and
//!   collecting our identities' held mail;
//! * [`gateway`]: the gateway to ordinary e-mail, run by its own binary
//!   (`onionpost-gateway`), never inside a participant's node;
//! * edges: [`smtp::server`], [`imap::server`], [`onion`], [`listener`], [`queue::runner`];
//! * [`runtime`]: wires it all, runs it, and shuts it down; only `main` imports it.

pub mod clock;
pub mod config;
pub mod context;
pub mod delivery;
pub mod e2e;
pub mod fsutil;
pub mod gateway;
pub mod hosting;
pub mod identity;
pub mod imap;
pub mod ledger;
pub mod listener;
pub mod lists;
pub mod message;
pub mod onion;
pub mod queue;
pub mod runtime;
pub mod smtp;
pub mod spool;
pub mod store;
pub mod transport;
