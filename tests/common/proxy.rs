//! A TCP proxy in front of PostgreSQL that a test can cut: `set_down(true)`
//! closes every open connection and refuses new ones, as a database outage
//! would look from the service; `set_down(false)` lets connections through again.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Proxy {
    pub addr: SocketAddr,
    down: Arc<watch::Sender<bool>>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (down, _) = watch::channel(false);
        let down = Arc::new(down);
        let state = down.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                if *state.borrow() {
                    drop(client);
                    continue;
                }
                let mut cut = state.subscribe();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let mut client = client;
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.wait_for(|down| *down) => {}
                    }
                });
            }
        });
        Proxy { addr, down, task }
    }

    pub fn set_down(&self, down: bool) {
        self.down.send_replace(down);
    }

    /// The URL of `url`'s database reached through this proxy.
    pub fn url_for(&self, url: &str) -> String {
        let scheme_end = url.find("://").expect("a URL") + 3;
        let rest = &url[scheme_end..];
        let host_start = rest.find('@').map_or(0, |i| i + 1);
        let host_end = rest[host_start..]
            .find(['/', '?'])
            .map_or(rest.len(), |i| host_start + i);
        format!(
            "{}{}{}{}",
            &url[..scheme_end],
            &rest[..host_start],
            self.addr,
            &rest[host_end..]
        )
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The host:port of a PostgreSQL URL.
pub async fn upstream_of(url: &str) -> SocketAddr {
    let rest = &url[url.find("://").expect("a URL") + 3..];
    let host_start = rest.find('@').map_or(0, |i| i + 1);
    let host_end = rest[host_start..]
        .find(['/', '?'])
        .map_or(rest.len(), |i| host_start + i);
    let mut host = rest[host_start..host_end].to_owned();
    if !host.contains(':') {
        host.push_str(":5432");
    }
    tokio::net::lookup_host(host)
        .await
        .expect("resolve database host")
        .next()
        .expect("database host has an address")
}
