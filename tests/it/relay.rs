//! A TCP relay the tests can cut and restore: put between a gatehouse and its database (or
//! Redis) to take the connection away mid-test and give it back.
//!
//! While cut, every relayed connection is closed and new ones are refused (accepted and
//! closed at once), which is how a network partition or a database restart looks to a
//! client pool.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A running relay; dropping it stops it and closes every connection.
pub struct Relay {
    pub addr: SocketAddr,
    open: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// Relays connections to `target` on a fresh loopback port.
    pub async fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let addr = listener.local_addr().expect("relay address");
        let (open, watch) = watch::channel(true);
        let watch = Arc::new(watch);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let mut state = (*watch).clone();
                if !*state.borrow_and_update() {
                    drop(client);
                    continue;
                }
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (mut client, mut server) = (client, server);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        // Cut: both sides are dropped, so each sees its peer vanish.
                        _ = state.wait_for(|open| !*open) => {}
                    }
                });
            }
        });
        Relay { addr, open, task }
    }

    /// Closes every relayed connection and refuses new ones until [`Relay::restore`].
    pub fn cut(&self) {
        self.open.send_replace(false);
    }

    /// Relays new connections again.
    pub fn restore(&self) {
        self.open.send_replace(true);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.open.send_replace(false);
        self.task.abort();
    }
}
