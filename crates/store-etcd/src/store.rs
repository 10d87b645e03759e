//! [`EtcdStore`]: the connection to the cluster (a small current-thread tokio
//! runtime owned by the store, made only when an etcd store is opened), the retry
//! loop of [`Store::write`], and the host's lease ([`EtcdStore::lease_key`]).

use crate::kv::{Commit, KvTx};
use crate::seen::Seen;
use crate::tx::EtcdTx;
use crate::url::EtcdUrl;
use etcd_client::{Client, ConnectOptions, KvClient, PutOptions};
use lanyard_core::store::{Store, Tx};
use lanyard_core::{Error, Result};
use std::future::Future;
use std::time::{Duration, Instant};

/// How long connecting to a member may take, and how long a request goes on
/// being sent while no member accepts a connection: an unreachable cluster (its
/// ports refuse) fails an attach in about this long, with nothing written.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one request may take, tries again included, while members are
/// connected but slow or busy (a member down, a leader election: about a second;
/// a host starved of CPU: several). A cluster that drops packets without
/// answering fails a request after this long.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one try of a request may take before it is sent again (a member that
/// died with the request unanswered gives no answer at all).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);
/// The pause before a failed request is sent again.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// How long a write keeps retrying after conflicts before it reports `TryAgain`.
pub const CONFLICT_BUDGET: Duration = Duration::from_secs(60);

/// The connection a transaction runs on.
pub(crate) struct Conn {
    rt: tokio::runtime::Runtime,
    pub(crate) kv: KvClient,
    client: Client,
    /// Every key starts with it (`/lanyard/`).
    pub(crate) prefix: String,
    endpoints: String,
}

impl Conn {
    /// `key` with the store's prefix.
    pub(crate) fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// Runs one request on the runtime. A failed or unanswered request is sent
    /// again (to whichever member answers: one may be down or electing a leader)
    /// until [`REQUEST_TIMEOUT`] has passed; errors say what was being done and where.
    pub(crate) fn run<T, F, Fut>(&self, what: &str, key: &str, f: F) -> Result<T>
    where
        F: Fn(KvClient) -> Fut,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        loop {
            let why = match self.once(f(self.kv.clone()), deadline) {
                Ok(v) => return Ok(v),
                Err(why) => why,
            };
            self.pause(what, key, &why, deadline)?;
        }
    }

    /// Runs one request until `deadline`; the error as text.
    pub(crate) fn once<T>(
        &self,
        fut: impl Future<Output = std::result::Result<T, etcd_client::Error>>,
        deadline: Instant,
    ) -> std::result::Result<T, Failure> {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .min(ATTEMPT_TIMEOUT);
        match self
            .rt
            .block_on(async { tokio::time::timeout(left, fut).await })
        {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(Failure::of(&e)),
            Err(_) => Err(Failure {
                why: format!("no answer within {left:?}"),
                refused: false,
            }),
        }
    }

    /// After a failed request (whose `deadline` is [`REQUEST_TIMEOUT`] after its
    /// start): waits a little before it is sent again, or says the cluster is
    /// unreachable when `deadline` is too near, or when the request was refused
    /// for [`DIAL_TIMEOUT`] and no member listens now.
    pub(crate) fn pause(
        &self,
        what: &str,
        key: &str,
        why: &Failure,
        deadline: Instant,
    ) -> Result<()> {
        let now = Instant::now();
        let started = deadline.checked_sub(REQUEST_TIMEOUT).unwrap_or(now);
        let down = why.refused && now >= started + DIAL_TIMEOUT && !self.any_member_listens();
        if now + RETRY_PAUSE >= deadline || down {
            return Err(self.unreachable(what, key, &why.why));
        }
        tracing::debug!("etcd: {what} {key:?}: {}; trying again", why.why);
        std::thread::sleep(RETRY_PAUSE);
        Ok(())
    }

    /// Whether any member accepts a TCP connection (the client's balancer goes on
    /// sending some requests to a member that is down while others are up).
    fn any_member_listens(&self) -> bool {
        use std::net::{TcpStream, ToSocketAddrs};
        self.endpoints.split(',').any(|hp| {
            hp.to_socket_addrs()
                .into_iter()
                .flatten()
                .any(|a| TcpStream::connect_timeout(&a, Duration::from_millis(500)).is_ok())
        })
    }

    fn unreachable(&self, what: &str, key: &str, why: &str) -> Error {
        let on = if key.is_empty() {
            String::new()
        } else {
            format!(" {key:?}")
        };
        Error::Unreachable(format!(
            "etcd at {}: {what}{on}: {why} (is the cluster up and reachable from this host?)",
            self.endpoints
        ))
    }
}

/// Why one try of a request failed.
#[derive(Debug)]
pub(crate) struct Failure {
    /// The error, as text.
    pub(crate) why: String,
    /// The member tried refused the connection (nothing listens, no route): down,
    /// not slow. The cluster is down when no member listens.
    pub(crate) refused: bool,
}

impl Failure {
    fn of(e: &etcd_client::Error) -> Failure {
        let why = e.to_string();
        let refused = match e {
            etcd_client::Error::TransportError(_) => true,
            // tonic's "tcp connect error" (refused, no route), as an Unavailable status.
            etcd_client::Error::GRpcStatus(_) => why.contains("connect error"),
            _ => false,
        };
        Failure { why, refused }
    }
}

/// lanyard's state in an etcd cluster, shared by every host on one LAN: networks,
/// endpoints, addresses and ports. Transactions are optimistic (the kv module):
/// [`Store::write`] runs its closure again when another writer changed what it read.
///
/// One value is one client. It is `Send` but not `Sync`; transactions do not nest.
pub struct EtcdStore {
    conn: Conn,
    /// This host's name, if set ([`EtcdStore::with_node`]).
    node: Option<String>,
    /// What the last transaction saw, when observing ([`EtcdStore::observing`]).
    seen: Option<std::cell::RefCell<Option<Seen>>>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EtcdStore({})", self.conn.endpoints)
    }
}

impl EtcdStore {
    /// Connects to the cluster named by `url` (`etcd://HOST:PORT[,HOST:PORT…]`),
    /// failing within about [`DIAL_TIMEOUT`] when no member answers.
    pub fn open(url: &str) -> Result<Self> {
        let u = EtcdUrl::parse(url)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Store(format!("etcd: starting the client runtime: {e}")))?;
        let endpoints = u.endpoints.join(",");
        let opts = ConnectOptions::new()
            .with_connect_timeout(DIAL_TIMEOUT)
            .with_timeout(DIAL_TIMEOUT);
        let eps: Vec<String> = u.endpoints.iter().map(|e| format!("http://{e}")).collect();
        let client = rt
            .block_on(async {
                tokio::time::timeout(DIAL_TIMEOUT, Client::connect(eps, Some(opts))).await
            })
            .map_err(|_| format!("no member answered within {DIAL_TIMEOUT:?}"))
            .and_then(|r| r.map_err(|e| e.to_string()))
            .map_err(|why| {
                Error::Unreachable(format!(
                    "etcd at {endpoints}: connecting: {why} (is the cluster up and \
                     reachable from this host?)"
                ))
            })?;
        Ok(EtcdStore {
            conn: Conn {
                rt,
                kv: client.kv_client(),
                client,
                prefix: u.prefix,
                endpoints,
            },
            node: None,
            seen: None,
        })
    }

    /// Notes what each transaction reads and writes of networks and endpoints, for
    /// [`EtcdStore::take_seen`] (a host's local copy of them).
    pub fn observing(mut self) -> Self {
        self.seen = Some(Default::default());
        self
    }

    /// What the last successful transaction saw of networks and endpoints, when
    /// observing; each is handed out once.
    pub fn take_seen(&self) -> Option<Seen> {
        self.seen.as_ref()?.borrow_mut().take()
    }

    fn keep(&self, seen: Option<Seen>) {
        if let (Some(cell), Some(s)) = (&self.seen, seen) {
            *cell.borrow_mut() = Some(s);
        }
    }

    /// Names the host this store serves. A namespace's (device, inode) pair is
    /// unique on one host only, so `Tx::endpoints_in_netns` then returns only this
    /// node's endpoints (and those recorded without a node): another host's
    /// namespace that happens to have the same pair is not this one.
    pub fn with_node(mut self, node: Option<&str>) -> Self {
        self.node = node.map(str::to_string);
        self
    }

    /// The members' addresses, comma-separated.
    pub fn endpoints(&self) -> &str {
        &self.conn.endpoints
    }

    /// Binds `key` (under the store's prefix, e.g. `meta/alive/NODE`) to a fresh
    /// etcd lease of `ttl`, which [`EtcdStore::keep_alive`] renews: etcd deletes the
    /// key when the lease runs out (its holder died). The lease id.
    pub fn lease_key(&self, key: &str, ttl: Duration) -> Result<i64> {
        let lease = self.conn.client.lease_client();
        let secs = ttl.as_secs().max(2) as i64;
        let full = self.conn.key(key);
        let id = self.conn.run("granting a lease for", key, |_| {
            let mut lease = lease.clone();
            async move { Ok(lease.grant(secs, None).await?.id()) }
        })?;
        self.conn.run("writing", key, |mut kv| {
            let full = full.clone();
            async move {
                kv.put(full, "", Some(PutOptions::new().with_lease(id)))
                    .await
                    .map(drop)
            }
        })?;
        Ok(id)
    }

    /// Renews the lease [`EtcdStore::lease_key`] granted; `Ok(false)` when it has
    /// expired meanwhile (register again).
    pub fn keep_alive(&self, lease: i64) -> Result<bool> {
        let client = self.conn.client.lease_client();
        self.conn
            .run("renewing the lease of", "", |_| {
                let mut client = client.clone();
                async move {
                    let (mut keeper, mut stream) = client.keep_alive(lease).await?;
                    keeper.keep_alive().await?;
                    Ok(stream.message().await?.map(|r| r.ttl() > 0))
                }
            })
            .map(|r| r.unwrap_or(false))
    }
}

impl Store for EtcdStore {
    fn read<T>(&self, f: &mut dyn FnMut(&dyn Tx) -> Result<T>) -> Result<T> {
        let kv = KvTx::new(&self.conn, 0, self.seen.is_some());
        let out = f(&EtcdTx::new(&kv, self.node.as_deref()))?;
        self.keep(kv.seen());
        Ok(out)
    }

    fn write<T>(&self, f: &mut dyn FnMut(&mut dyn Tx) -> Result<T>) -> Result<T> {
        let start = Instant::now();
        let mut attempt = 0u32;
        loop {
            let kv = KvTx::new(&self.conn, attempt, self.seen.is_some());
            let out = f(&mut EtcdTx::new(&kv, self.node.as_deref()))?;
            if let Commit::Done(seen) = kv.commit()? {
                self.keep(seen);
                return Ok(out);
            }
            attempt += 1;
            if start.elapsed() > CONFLICT_BUDGET {
                return Err(Error::TryAgain(format!(
                    "etcd at {}: gave up after {attempt} conflicting attempts in {:?}",
                    self.conn.endpoints,
                    start.elapsed()
                )));
            }
            std::thread::sleep(backoff(attempt));
        }
    }
}

/// Jittered exponential backoff after `attempt` conflicts: 0.5..1 ms doubling up
/// to 32..64 ms, so writers that collided spread out.
fn backoff(attempt: u32) -> Duration {
    let base = 500u64 << attempt.min(6);
    Duration::from_micros(base + random() % base)
}

/// A number that differs between processes and calls (spreading, not secrecy).
pub(crate) fn random() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}
