//! The local control API: HTTP + JSON (and a Server-Sent Events stream) served
//! by a running [`ChatNode`] on 127.0.0.1, for the CLI, the terminal UI and the
//! web UI. `docs/api.md` documents every endpoint.
//!
//! Security, in the order the checks run on every request:
//!
//! 1. The server binds to `127.0.0.1` only; [`serve`] refuses any other IP.
//! 2. `Host` must be `127.0.0.1:PORT` or `localhost:PORT` (a page on another
//!    name that DNS-rebinds to 127.0.0.1 is refused): 403 otherwise.
//! 3. An `Origin` header, when present, must be `http://127.0.0.1:PORT` or
//!    `http://localhost:PORT` (no cross-site requests): 403 otherwise.
//! 4. `Authorization: Bearer TOKEN`, compared in constant time with the token
//!    made at start (32 random bytes, hex) and written with the address to
//!    `api.json` in the data dir, mode 0600: 401 otherwise.
//!
//! The token is never logged. Request bodies are limited to [`MAX_BODY`] bytes.
//!
//! ```no_run
//! # async fn demo(node: &peerchat_node::chat::ChatNode) -> Result<(), peerchat_node::api::ApiError> {
//! use peerchat_node::api;
//! let server = api::serve(node, "127.0.0.1:0".parse().unwrap(), std::future::pending()).await?;
//! println!("API on {}", server.url());
//! // ... later:
//! server.shutdown().await?;
//! # Ok(()) }
//! ```

mod client;
mod network;
mod routes;
mod web;

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

use crate::chat::ChatNode;
use crate::datadir::{ApiInfo, DataDirError, make_token};

pub use client::{ApiClient, ApiClientError, ApiEvent, EventStream};
pub use network::{BucketView, LookupView, NetworkView, PeerView};
/// The request bodies, for the fuzz targets (`fuzz/`); not an API.
#[doc(hidden)]
pub use routes::{AddContactRequest, LimitQuery, SendRequest};

/// Largest request body accepted (bigger: 413).
pub const MAX_BODY: usize = 16 * 1024;

/// How long [`ApiServer::shutdown`] lets open requests finish before it stops waiting.
pub const DRAIN: Duration = Duration::from_secs(5);

/// Why the API could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Only 127.0.0.1 is served.
    #[error("the local API only listens on 127.0.0.1 (asked for {0}); use --api 127.0.0.1:PORT")]
    NotLoopback(SocketAddr),
    /// The port could not be opened.
    #[error(
        "cannot listen for the local API on {addr}: {source} (choose another --api port, or 0)"
    )]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// `api.json` could not be written.
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    /// The server failed while running.
    #[error("the local API stopped: {0}")]
    Serve(std::io::Error),
}

/// A running local API server. Dropping it does not stop it: call
/// [`ApiServer::shutdown`], or resolve the `shutdown` future given to [`serve`]
/// and then [`ApiServer::wait`].
pub struct ApiServer {
    addr: SocketAddr,
    token: String,
    stop: Arc<watch::Sender<bool>>,
    task: JoinHandle<Result<(), std::io::Error>>,
}

impl std::fmt::Debug for ApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServer")
            .field("addr", &self.addr)
            .field("token", &"<redacted>")
            .finish()
    }
}

impl ApiServer {
    /// Where it listens (127.0.0.1 and the port actually bound).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The web app's address, `http://127.0.0.1:PORT/#token=TOKEN`: the token
    /// rides in the fragment, which the browser never sends to a server. It is
    /// for a person to open; do not log it.
    pub fn web_url(&self) -> String {
        web_url(self.addr, &self.token)
    }

    /// The bearer token (also in `api.json`). Do not log it.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Asks the server to stop (ends event streams, refuses new connections),
    /// without waiting.
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// Stops the server and waits (at most [`DRAIN`]) for open requests to finish.
    pub async fn shutdown(self) -> Result<(), ApiError> {
        self.stop();
        self.wait().await
    }

    /// Waits until the server has stopped (after the `shutdown` future given to
    /// [`serve`] resolved, or [`ApiServer::stop`]).
    pub async fn wait(self) -> Result<(), ApiError> {
        match self.task.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ApiError::Serve(e)),
            Err(e) => Err(ApiError::Serve(std::io::Error::other(e.to_string()))),
        }
    }
}

/// The web app's address for an API at `addr` with `token` (see
/// [`ApiServer::web_url`]); also for a client that read `api.json`.
pub fn web_url(addr: SocketAddr, token: &str) -> String {
    format!("http://{addr}/#token={token}")
}

/// Serves the local API of `node` on `bind` (which must be `127.0.0.1:PORT`;
/// port 0 picks a free one) until `shutdown` resolves or
/// [`ApiServer::shutdown`] is called.
///
/// Makes a new random token and writes it with the bound address and this
/// process id to `api.json` in the node's data dir (mode 0600) before
/// returning; the file is removed when the node shuts down (see
/// [`ChatNode::shutdown`]). Call this at most once per node.
pub async fn serve<F>(node: &ChatNode, bind: SocketAddr, shutdown: F) -> Result<ApiServer, ApiError>
where
    F: Future<Output = ()> + Send + 'static,
{
    if bind.ip() != Ipv4Addr::LOCALHOST {
        return Err(ApiError::NotLoopback(bind));
    }
    let listener = TcpListener::bind(bind)
        .await
        .map_err(|source| ApiError::Bind { addr: bind, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| ApiError::Bind { addr: bind, source })?;
    let token = make_token(&rand::random::<[u8; 32]>());
    let (stop, stopped) = watch::channel(false);
    let stop = Arc::new(stop);
    let (events, _) = broadcast::channel(routes::EVENT_BUFFER);
    let app = routes::router(routes::AppState {
        client: node.client(),
        events: events.clone(),
        token: token.clone(),
        port: addr.port(),
        stopped: stopped.clone(),
    });
    node.data_dir().write_api_info(&ApiInfo {
        addr,
        token: token.clone(),
        pid: std::process::id(),
    })?;

    let graceful = {
        let stop = stop.clone();
        let mut stopped = stopped.clone();
        async move {
            tokio::select! {
                _ = shutdown => {}
                _ = stopped.wait_for(|s| *s) => {}
            }
            // Ends the event streams, so that the graceful drain can finish.
            stop.send_replace(true);
        }
    };
    tokio::spawn(routes::forward_events(
        node.subscribe(),
        events,
        stopped.clone(),
    ));
    let mut drained = stopped;
    let task = tokio::spawn(async move {
        let server = axum::serve(listener, app).with_graceful_shutdown(graceful);
        tokio::select! {
            r = server => r,
            _ = async {
                let _ = drained.wait_for(|s| *s).await;
                tokio::time::sleep(DRAIN).await;
            } => {
                tracing::debug!("local API: requests still open after {DRAIN:?}; not waiting for them");
                Ok(())
            }
        }
    });
    tracing::info!("local API listening on http://{addr}");
    Ok(ApiServer {
        addr,
        token,
        stop,
        task,
    })
}
