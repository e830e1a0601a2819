//! How outbound SMTP reaches an onion address.
//!
//! Production uses Tor (the onion transport plugs in here, with one isolated circuit set per
//! sending identity). Tests use [`DirectTransport`], a fixed map from onion names to loopback
//! socket addresses.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;

use onionpost_proto::onion::OnionAddress;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Opens byte streams to `onion:port` on behalf of a sending identity.
pub trait Transport: Send + Sync + 'static {
    /// The connected stream.
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// Connects to `port` of the onion service `onion`. `identity` is the sending identity:
    /// implementations must keep different identities' connections unlinkable (separate
    /// circuits), and must never reveal it to the remote side.
    fn connect(
        &self,
        onion: &OnionAddress,
        port: u16,
        identity: &OnionAddress,
    ) -> impl Future<Output = io::Result<Self::Stream>> + Send;
}

/// Test transport: onion names map to fixed socket addresses; the port is ignored.
#[derive(Debug, Clone, Default)]
pub struct DirectTransport {
    map: HashMap<OnionAddress, SocketAddr>,
}

impl DirectTransport {
    /// A transport with the given routes.
    pub fn new(map: HashMap<OnionAddress, SocketAddr>) -> Self {
        Self { map }
    }
}

impl Transport for DirectTransport {
    type Stream = TcpStream;

    async fn connect(
        &self,
        onion: &OnionAddress,
        _port: u16,
        _identity: &OnionAddress,
    ) -> io::Result<TcpStream> {
        let addr = self.map.get(onion).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("no direct route to {onion}"),
            )
        })?;
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        Ok(s)
    }
}
