//! The revocation listener: one dedicated connection that `LISTEN`s on [`CHANNEL`] and
//! fires the store's [`Notify`] whenever another process may have recorded a revocation.
//!
//! - **Dedicated, not pooled.** `LISTEN` belongs to a session; a pooled connection would be
//!   handed to requests and recycled, and could drop the subscription at any moment.
//! - **Fires after every (re)connect too.** Notifications sent while no connection listened
//!   are lost for good, so after each successful `LISTEN` the signal fires once: the app then
//!   catches up from its cursor through `revocations_since`, and a replica that lost its
//!   database for a while misses nothing. `LISTEN` comes first, the signal second, so a
//!   revocation recorded in between is either in the catch-up or notified.
//! - **Notices a dead peer.** A connection that only reads would not notice a vanished
//!   server for a long time, so a heartbeat query runs every [`HEARTBEAT_INTERVAL`] with a
//!   deadline; TCP keepalives (see `conn.rs`) back it up.
//! - **Reconnects by itself** with exponential backoff, from [`FIRST_BACKOFF`] to
//!   [`MAX_BACKOFF`], reset after each successful `LISTEN`.
//! - **Ends with the store.** The task holds no reference to the store, only a watch
//!   receiver whose sender the store owns: dropping the store ends the task, which drops
//!   its connection.
//!
//! `Notify::notify_one` stores a permit when nobody waits, so a notification that arrives
//! while the app is busy catching up is not lost either.

use std::future::poll_fn;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio_postgres::AsyncMessage;

use super::conn::Target;

/// The channel `put_revocation` notifies. Channels are database-wide: deployments in
/// different schemas of one database wake each other needlessly, which costs one catch-up
/// query and no correctness.
pub const CHANNEL: &str = channel!();

/// How often the idle connection proves it is alive. A revocation must reach every replica
/// within a second while the database is up; a connection that died silently is found
/// within about two heartbeats and the catch-up after the reconnect covers the gap.
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
/// A heartbeat that takes longer than this means the connection (or the server) is gone.
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(5);
/// The first retry is quick: most drops are a restart or failover that is over at once.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Retries slow down to this, so an outage costs the database one attempt per replica
/// every few seconds, and the replica is back within that long once the database is.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Appended to the connection's application name, so `pg_stat_activity` tells the
/// listener from the pooled connections.
const APPLICATION_SUFFIX: &str = "/listen";

/// Runs until `stop`'s sender is dropped.
pub async fn run(mut target: Target, signal: Arc<Notify>, mut stop: watch::Receiver<()>) {
    let name = format!(
        "{}{APPLICATION_SUFFIX}",
        target.pg.get_application_name().unwrap_or_default()
    );
    target.pg.application_name(name);
    let mut backoff = FIRST_BACKOFF;
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            reason = session(&target, &signal, &mut backoff) => {
                tracing::warn!(
                    %reason,
                    retry_in_ms = u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX),
                    "store: the revocation listener lost its database connection"
                );
            }
        }
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One connection's life: connect, `LISTEN`, signal, then relay notifications until the
/// connection fails. Returns why it ended.
async fn session(target: &Target, signal: &Notify, backoff: &mut Duration) -> String {
    let (client, mut connection) = match target.pg.connect(target.tls.clone()).await {
        Ok(pair) => pair,
        Err(e) => return format!("connect: {e}"),
    };
    // The connection object does the I/O for the client and hands over notifications; both
    // halves run here, in one task, so nothing outlives this function.
    let relay = async {
        loop {
            match poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(_))) => signal.notify_one(),
                Some(Ok(_)) => {} // notices
                Some(Err(e)) => return format!("connection: {e}"),
                None => return "connection closed".to_string(),
            }
        }
    };
    let listen = async {
        if let Err(e) = client.batch_execute(&format!("LISTEN {CHANNEL}")).await {
            return format!("LISTEN: {e}");
        }
        tracing::debug!("store: listening for revocations");
        *backoff = FIRST_BACKOFF;
        signal.notify_one();
        loop {
            tokio::time::sleep(HEARTBEAT_INTERVAL).await;
            match tokio::time::timeout(HEARTBEAT_TIMEOUT, client.simple_query("SELECT 1")).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return format!("heartbeat: {e}"),
                Err(_) => return "heartbeat timed out".to_string(),
            }
        }
    };
    tokio::select! {
        reason = relay => reason,
        reason = listen => reason,
    }
}
