//! The control socket `<home>/control.sock`: how `onionpost-node status` reads the live state
//! of the running node, and how `identity new` tells it to pick up a new identity.
//!
//! One JSON request per line, one JSON answer per line. The socket is a Unix socket with mode
//! 0600 inside the 0700 home, so only the node's owner can use it.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;

use super::status::Status;

/// The socket's path under a home.
pub fn socket_path(home: &Path) -> PathBuf {
    home.join("control.sock")
}

/// A request to the running node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "lowercase")]
pub enum Request {
    /// The live state.
    Status,
    /// Re-read the identity store (after `identity new` or a deletion).
    Reload,
}

/// The node's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Answer {
    /// For [`Request::Status`].
    Status(Status),
    /// For [`Request::Reload`]: addresses added and removed.
    Reloaded {
        /// Identities now served.
        added: Vec<String>,
        /// Identities no longer served.
        removed: Vec<String>,
    },
    /// The request failed.
    Error(String),
}

/// Answers requests (the runtime).
pub type Handler = Arc<dyn Fn(Request) -> BoxFuture<'static, Answer> + Send + Sync>;

/// Why a request could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// No node is running on that home (no socket, or nobody listening).
    #[error("no node is running on this home")]
    NotRunning,
    /// The conversation failed.
    #[error("talking to the running node: {0}")]
    Io(#[from] io::Error),
    /// The node answered something unreadable.
    #[error("the running node answered something unreadable: {0}")]
    Protocol(String),
}

/// Binds the socket (replacing a stale one left by a crash; the caller holds the home lock,
/// so no live node owns it) and serves until `shutdown`. The socket file is removed then.
pub async fn serve(home: &Path, handler: Handler, shutdown: CancellationToken) -> io::Result<()> {
    let path = socket_path(home);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = UnixListener::bind(&path)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    tokio::spawn(async move {
        loop {
            let conn = tokio::select! {
                c = listener.accept() => c,
                () = shutdown.cancelled() => break,
            };
            let Ok((stream, _)) = conn else { continue };
            let handler = handler.clone();
            tokio::spawn(async move {
                let (r, mut w) = stream.into_split();
                let mut line = String::new();
                let mut r = tokio::io::BufReader::new(r.take(64 * 1024));
                let read = tokio::time::timeout(Duration::from_secs(10), r.read_line(&mut line));
                if !matches!(read.await, Ok(Ok(n)) if n > 0) {
                    return;
                }
                let answer = match serde_json::from_str::<Request>(&line) {
                    Ok(req) => handler(req).await,
                    Err(e) => Answer::Error(format!("bad request: {e}")),
                };
                let mut text = serde_json::to_string(&answer).expect("answers serialize");
                text.push('\n');
                let _ = w.write_all(text.as_bytes()).await;
            });
        }
        let _ = std::fs::remove_file(&path);
    });
    Ok(())
}

/// Sends one request to the node running on `home` (blocking; for the command line).
pub fn request(home: &Path, req: &Request) -> Result<Answer, ControlError> {
    let mut stream = match UnixStream::connect(socket_path(home)) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Err(ControlError::NotRunning);
        }
        Err(e) => return Err(e.into()),
    };
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut text = serde_json::to_string(req).expect("requests serialize");
    text.push('\n');
    stream.write_all(text.as_bytes())?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    serde_json::from_str(&line).map_err(|e| ControlError::Protocol(format!("{e}: {line:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn requests_reach_the_handler_and_a_missing_node_is_not_running() {
        let home = tempfile::tempdir().unwrap();
        let h = home.path().to_path_buf();
        assert!(matches!(
            tokio::task::spawn_blocking(move || request(&h, &Request::Status))
                .await
                .unwrap(),
            Err(ControlError::NotRunning)
        ));
        // A stale socket file from a crashed node is replaced.
        std::fs::write(socket_path(home.path()), b"").unwrap();
        let token = CancellationToken::new();
        let handler: Handler = Arc::new(|req| {
            Box::pin(async move {
                match req {
                    Request::Reload => Answer::Reloaded {
                        added: vec!["a@x.onion".into()],
                        removed: vec![],
                    },
                    Request::Status => Answer::Error("not in this test".into()),
                }
            })
        });
        serve(home.path(), handler, token.clone()).await.unwrap();
        let h = home.path().to_path_buf();
        let answer = tokio::task::spawn_blocking(move || request(&h, &Request::Reload))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            answer,
            Answer::Reloaded {
                added: vec!["a@x.onion".into()],
                removed: vec![]
            }
        );
        token.cancel();
    }
}
