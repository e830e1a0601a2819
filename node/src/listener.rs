//! The accept loop every TCP listener of the node shares: a cap on concurrent connections
//! (one over the cap is told so in its protocol and closed), a tracing span per connection,
//! and graceful shutdown (stop accepting when the token is cancelled; connections already
//! accepted are tracked so the runtime can wait for them).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// Counts the connections of one listener (or one onion service) against its cap.
#[derive(Debug, Clone)]
pub struct ConnectionLimit {
    slots: Arc<Semaphore>,
    max: usize,
}

impl ConnectionLimit {
    /// A cap of `max` concurrent connections.
    pub fn new(max: usize) -> Self {
        let max = max.max(1);
        Self {
            slots: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    /// A slot for one more connection, or `None` when the cap is reached.
    pub fn try_acquire(&self) -> Option<OwnedSemaphorePermit> {
        self.slots.clone().try_acquire_owned().ok()
    }

    /// Connections open now.
    pub fn active(&self) -> usize {
        self.max - self.slots.available_permits()
    }

    /// The cap.
    pub fn max(&self) -> usize {
        self.max
    }
}

/// How one listener behaves.
#[derive(Debug, Clone)]
pub struct ListenerSpec {
    /// Name for logs and status ("smtp", "submission", "imap").
    pub name: &'static str,
    /// The cap.
    pub limit: ConnectionLimit,
    /// What a connection over the cap is sent before it is closed (a protocol-level "busy").
    pub busy: &'static [u8],
}

/// Accepts connections until `shutdown` is cancelled, running `handle` for each in a task
/// tracked by `tasks` (with the connection's slot held until it ends).
pub async fn serve<F, Fut>(
    listener: TcpListener,
    spec: ListenerSpec,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    handle: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let handle = Arc::new(handle);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = shutdown.cancelled() => {
                tracing::info!(listener = spec.name, "no longer accepting");
                return;
            }
        };
        let (mut stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(listener = spec.name, "accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!("set_nodelay: {e}");
        }
        let span = tracing::info_span!("conn", listener = spec.name, %peer);
        let Some(permit) = spec.limit.try_acquire() else {
            let busy = spec.busy;
            tasks.spawn(
                async move {
                    tracing::warn!("connection cap reached; refusing");
                    let _ =
                        tokio::time::timeout(Duration::from_secs(5), stream.write_all(busy)).await;
                }
                .instrument(span),
            );
            continue;
        };
        let handle = handle.clone();
        tasks.spawn(
            async move {
                handle(stream, peer).await;
                drop(permit);
            }
            .instrument(span),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn refuses_over_the_cap_and_stops_on_shutdown() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let limit = ConnectionLimit::new(1);
        let spec = ListenerSpec {
            name: "test",
            limit: limit.clone(),
            busy: b"BUSY\r\n",
        };
        let token = CancellationToken::new();
        let tasks = TaskTracker::new();
        let release = Arc::new(tokio::sync::Notify::new());
        let r2 = release.clone();
        let server = tokio::spawn(serve(
            l,
            spec,
            token.clone(),
            tasks.clone(),
            move |mut s, _| {
                let r = r2.clone();
                async move {
                    s.write_all(b"HELLO\r\n").await.unwrap();
                    r.notified().await;
                }
            },
        ));
        let mut first = TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 7];
        first.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"HELLO\r\n");
        assert_eq!(limit.active(), 1);
        let mut second = TcpStream::connect(addr).await.unwrap();
        let mut got = Vec::new();
        second.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"BUSY\r\n");
        token.cancel();
        server.await.unwrap();
        assert!(TcpStream::connect(addr).await.is_err(), "listener closed");
        release.notify_one();
        tasks.close();
        tasks.wait().await;
        assert_eq!(limit.active(), 0);
    }
}
