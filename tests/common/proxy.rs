//! A TCP proxy in front of PostgreSQL that a test can cut: `set_down(true)`
//! closes every open connection and refuses new ones, as a database outage
//! would look from the service; `set_down(false)` lets connections through again.
//! `silence_at_next_commit()`: the next COMMIT is lost and every connection
//! open then goes silent for good (what either side sends is lost, none is
//! closed) while new connections work: a failover or a dropped NAT entry in
//! the middle of a flush, as the service sees it. `silence_all(true)`: every
//! connection, open or opened until `silence_all(false)`, is silent for good
//! (a database host that hangs, a route that black-holes).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Proxy {
    pub addr: SocketAddr,
    down: Arc<watch::Sender<bool>>,
    cut: Arc<CutAfterCommit>,
    silence: Arc<Silence>,
    task: tokio::task::JoinHandle<()>,
}

/// Connections are numbered as they open; those below `below` are silent,
/// and so is every one opened while `all` is set.
#[derive(Default)]
struct Silence {
    armed: AtomicBool,
    opened: AtomicU64,
    below: AtomicU64,
    all: AtomicBool,
}

/// When armed: the next client→server chunk holding `COMMIT` is delivered,
/// then the connection is cut before the server's answer comes back, so the
/// client cannot know whether its transaction committed.
#[derive(Default)]
struct CutAfterCommit {
    armed: AtomicBool,
    cuts: AtomicUsize,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (down, _) = watch::channel(false);
        let down = Arc::new(down);
        let state = down.clone();
        let cut = Arc::new(CutAfterCommit::default());
        let cutter = cut.clone();
        let silence = Arc::new(Silence::default());
        let silencer = silence.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                if *state.borrow() {
                    drop(client);
                    continue;
                }
                let mut outage = state.subscribe();
                let cutter = cutter.clone();
                let silencer = silencer.clone();
                let number = silencer.opened.fetch_add(1, Ordering::SeqCst);
                let born_silent = silencer.all.load(Ordering::SeqCst);
                tokio::spawn(async move {
                    let silent = || born_silent || number < silencer.below.load(Ordering::SeqCst);
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (mut from_client, mut to_client) = client.into_split();
                    let (mut from_server, mut to_server) = server.into_split();
                    let muted = AtomicBool::new(false);
                    let upstream = async {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = match from_client.read(&mut buf).await {
                                Ok(0) | Err(_) if silent() => std::future::pending().await,
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            if silent() {
                                continue;
                            }
                            let commit = buf[..n].windows(6).any(|w| w == b"COMMIT");
                            if commit && silencer.armed.swap(false, Ordering::SeqCst) {
                                let opened = silencer.opened.load(Ordering::SeqCst);
                                silencer.below.store(opened, Ordering::SeqCst);
                                continue;
                            }
                            if to_server.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                            if commit && cutter.armed.swap(false, Ordering::SeqCst) {
                                // Let the server commit; its reply is swallowed, then the connection is cut.
                                muted.store(true, Ordering::SeqCst);
                                tokio::time::sleep(Duration::from_millis(50)).await;
                                cutter.cuts.fetch_add(1, Ordering::SeqCst);
                                return;
                            }
                        }
                    };
                    let downstream = async {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = match from_server.read(&mut buf).await {
                                Ok(0) | Err(_) if silent() => std::future::pending().await,
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            if muted.load(Ordering::SeqCst) || silent() {
                                continue;
                            }
                            if to_client.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    };
                    tokio::select! {
                        _ = upstream => {}
                        _ = downstream => {}
                        _ = outage.wait_for(|down| *down) => {}
                    }
                });
            }
        });
        Proxy {
            addr,
            down,
            cut,
            silence,
            task,
        }
    }

    /// The next COMMIT any connection sends is lost, and from then on every
    /// connection open at that moment is silent for good: what either side
    /// sends is lost and neither is told (no reset, no close). New
    /// connections go through.
    pub fn silence_at_next_commit(&self) {
        self.silence.armed.store(true, Ordering::SeqCst);
    }

    /// With `true`: every connection open now, and every one opened until
    /// `silence_all(false)`, is silent for good (what either side sends is
    /// lost; none is closed). With `false`: new connections go through
    /// again; the silent ones stay silent.
    pub fn silence_all(&self, on: bool) {
        if on {
            self.silence.all.store(true, Ordering::SeqCst);
            let opened = self.silence.opened.load(Ordering::SeqCst);
            self.silence.below.fetch_max(opened, Ordering::SeqCst);
        } else {
            self.silence.all.store(false, Ordering::SeqCst);
        }
    }

    /// Whether the armed COMMIT came and the connections went silent.
    pub fn silenced(&self) -> bool {
        self.silence.below.load(Ordering::SeqCst) > 0
    }

    pub fn set_down(&self, down: bool) {
        self.down.send_replace(down);
    }

    /// Cuts the next connection that sends a COMMIT right after sending it.
    pub fn cut_after_next_commit(&self) {
        self.cut.armed.store(true, Ordering::SeqCst);
    }

    /// How many connections were cut after a COMMIT.
    pub fn commit_cuts(&self) -> usize {
        self.cut.cuts.load(Ordering::SeqCst)
    }

    /// The URL of `url`'s database reached through this proxy.
    pub fn url_for(&self, url: &str) -> String {
        let (start, end) = host_span(url);
        format!("{}{}{}", &url[..start], self.addr, &url[end..])
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The host:port of a PostgreSQL URL.
pub async fn upstream_of(url: &str) -> SocketAddr {
    let (start, end) = host_span(url);
    let mut host = url[start..end].to_owned();
    if !host.contains(':') {
        host.push_str(":5432");
    }
    tokio::net::lookup_host(host)
        .await
        .expect("resolve database host")
        .next()
        .expect("database host has an address")
}

/// Where `host[:port]` sits in a URL `scheme://[user[:password]@]host[:port][/db][?query]`.
fn host_span(url: &str) -> (usize, usize) {
    let scheme_end = url.find("://").expect("a URL") + 3;
    let rest = &url[scheme_end..];
    let start = rest.find('@').map_or(0, |i| i + 1);
    let end = rest[start..]
        .find(['/', '?'])
        .map_or(rest.len(), |i| start + i);
    (scheme_end + start, scheme_end + end)
}
