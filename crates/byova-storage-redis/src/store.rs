//! The Redis store. See the crate docs for the key layout and the guarantees.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use byova_core::{
    Clock, OAuthTokens, OrgId, StorageError, SystemClock, TokenKey,
    backend::{Expect, Lease, PendingAuthorization, Versioned, decode_record, stored_org_ids},
};
use redis::{Script, Value};

const IO_TIMEOUT: Duration = Duration::from_secs(5);
const POOL_SIZE: usize = 16;

const STORE: &str = r"
local cur = redis.call('HGET', KEYS[1], 'v')
if ARGV[1] == 'absent' and cur then return -1 end
if ARGV[1] == 'version' and cur ~= ARGV[2] then return -1 end
local v = redis.call('INCR', KEYS[3])
redis.call('HSET', KEYS[1], 'v', v, 'r', ARGV[3])
if ARGV[4] ~= '' then redis.call('SADD', KEYS[2], ARGV[4]) end
return v
";
const DELETE: &str = r"
local cur = redis.call('HGET', KEYS[1], 'v')
if ARGV[2] == 'absent' and cur then return -1 end
if ARGV[2] == 'version' and cur ~= ARGV[3] then return -1 end
redis.call('DEL', KEYS[1])
if ARGV[1] ~= '' then redis.call('SREM', KEYS[2], ARGV[1]) end
return 1
";
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";
const TAKE: &str = r"
local v = redis.call('GET', KEYS[1])
if v then redis.call('DEL', KEYS[1]) end
return v
";
const EXTEND: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
";

/// A Redis token store. Cheap to clone.
#[derive(Clone)]
pub struct RedisTokenStorage {
    inner: Arc<Inner>,
}

struct Inner {
    client: Backend,
    prefix: String,
    display: String,
    scripts: Scripts,
    #[cfg(feature = "blocking")]
    pool: Mutex<Vec<SyncConn>>,
    /// The async connection; `None` until first used, and again after a call on it was
    /// abandoned mid-way (its caller timed out: on a silent network the multiplexed stream may
    /// be out of step with its replies forever, so the next call connects afresh).
    #[cfg(feature = "async")]
    manager: tokio::sync::Mutex<Option<AsyncConn>>,
    #[cfg(feature = "async")]
    suspect: std::sync::atomic::AtomicBool,
}

/// One Redis server (or a primary behind a proxy), or a Redis Cluster.
enum Backend {
    Single(Box<redis::Client>),
    Cluster(Box<redis::cluster::ClusterClient>),
}

#[cfg(feature = "blocking")]
enum SyncConn {
    Single(redis::Connection),
    Cluster(Box<redis::cluster::ClusterConnection>),
}

#[cfg(feature = "async")]
#[derive(Clone)]
enum AsyncConn {
    Single(redis::aio::ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

struct Scripts {
    store: Script,
    delete: Script,
    release: Script,
    extend: Script,
    take: Script,
}

impl std::fmt::Debug for RedisTokenStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTokenStorage")
            .field("server", &self.inner.display)
            .field("prefix", &self.inner.prefix)
            .finish()
    }
}

/// What one operation sends, built once for both implementations.
enum Op {
    Load {
        record: String,
    },
    Store {
        record: String,
        index: String,
        counter: String,
        mode: &'static str,
        expected: u64,
        payload: Vec<u8>,
        org: String,
    },
    Delete {
        record: String,
        index: String,
        org: String,
        mode: &'static str,
        expected: u64,
    },
    List {
        index: String,
    },
    Acquire {
        lease: String,
        owner: String,
        ttl_ms: u64,
    },
    Release {
        lease: String,
        owner: String,
    },
    Extend {
        lease: String,
        owner: String,
        ttl_ms: u64,
    },
    SavePending {
        key: String,
        payload: Vec<u8>,
        ttl_ms: u64,
    },
    LoadState {
        record: String,
    },
    /// Cluster layout: the org index lives in its own slot, written beside the record.
    IndexAdd {
        index: String,
        org: String,
    },

    TakePending {
        key: String,
    },
}

fn unavailable_or_other(what: &str, e: &redis::RedisError) -> StorageError {
    let text = e.to_string().replace('\n', " ");
    if text.contains("certificate")
        || text.contains("CertificateRequired")
        || text.contains("HandshakeFailure")
    {
        // Not worth retrying: the server's certificate is not trusted (or TLS is misconfigured).
        return StorageError::other(format!(
            "redis {what}: TLS failed: {text} (trust the server's CA with BYOVA_STORAGE_CA_FILE, or check the rediss:// host)"
        ));
    }
    let message = format!("redis {what}: {text}");
    if e.is_io_error() || e.is_connection_refusal() || e.is_timeout() || e.is_connection_dropped() {
        StorageError::unavailable(message)
    } else {
        StorageError::other(message)
    }
}

/// The `prefix=` of a storage URL's query (default `byova`).
fn prefix_of(query: &str) -> Result<String, StorageError> {
    let prefix = query.split('&').find_map(|pair| pair.strip_prefix("prefix=")).unwrap_or("byova").to_owned();
    if prefix.is_empty() || prefix.contains(['{', '}']) {
        return Err(StorageError::other(format!(
            "the redis key prefix {prefix:?} must be non-empty and free of braces"
        )));
    }
    Ok(prefix)
}

fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl RedisTokenStorage {
    /// A store for `redis://host:port/db?prefix=NAME`, or `rediss://…` (TLS, verified against
    /// the system's roots). Connects lazily.
    ///
    /// # Errors
    /// For an unparseable URL or a prefix containing `{` or `}`.
    pub fn open(url: &str) -> Result<Self, StorageError> {
        Self::open_with_ca(url, None)
    }

    /// [`open`](Self::open), trusting the PEM CA certificate(s) in `ca_file` (instead of the
    /// system's roots) for a `rediss://` URL; ignored for plain `redis://`.
    ///
    /// # Errors
    /// As [`open`](Self::open); an unreadable or unparseable CA file.
    pub fn open_with_ca(url: &str, ca_file: Option<&std::path::Path>) -> Result<Self, StorageError> {
        if url.starts_with("redis+cluster://") || url.starts_with("rediss+cluster://") {
            return Self::open_cluster(url, ca_file);
        }
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let prefix = prefix_of(query)?;
        let kept: Vec<&str> =
            query.split('&').filter(|p| !p.is_empty() && p.split('=').next() != Some("prefix")).collect();
        let client_url = if kept.is_empty() { base.to_owned() } else { format!("{base}?{}", kept.join("&")) };
        let unusable = |e: redis::RedisError| {
            StorageError::other(format!(
                "{} is not a usable redis URL: {e}",
                byova_core::backend::redact_url(base)
            ))
        };
        if ca_file.is_some() && !base.starts_with("rediss://") {
            return Err(StorageError::other(format!(
                "a CA file was given for {}, which does not use TLS: use rediss://",
                byova_core::backend::redact_url(base)
            )));
        }
        let client = match ca_file {
            Some(path) if base.starts_with("rediss://") => {
                let pem = std::fs::read(path).map_err(|e| {
                    StorageError::other(format!("cannot read the CA file {}: {e}", path.display()))
                })?;
                let certificates = redis::TlsCertificates { client_tls: None, root_cert: Some(pem) };
                redis::Client::build_with_tls(client_url.as_str(), certificates).map_err(|e| {
                    StorageError::other(format!("the CA file {} is not usable: {e}", path.display()))
                })?
            }
            _ => redis::Client::open(client_url.as_str()).map_err(unusable)?,
        };
        Ok(Self::with_backend(
            Backend::Single(Box::new(client)),
            byova_core::backend::redact_url(base),
            prefix,
        ))
    }

    /// `redis+cluster://host:port,host:port/?prefix=NAME` (`rediss+cluster://` for TLS): a
    /// Redis Cluster through redis-rs's cluster client. See the crate docs for the key layout.
    fn open_cluster(url: &str, ca_file: Option<&std::path::Path>) -> Result<Self, StorageError> {
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let prefix = prefix_of(query)?;
        let (scheme, rest) = match base.split_once("+cluster://") {
            Some(("rediss", rest)) => ("rediss", rest),
            Some((_, rest)) => ("redis", rest),
            None => ("redis", base),
        };
        let authority = rest.split('/').next().unwrap_or_default();
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((user, hosts)) => (format!("{user}@"), hosts),
            None => (String::new(), authority),
        };
        let nodes: Vec<String> = hosts
            .split(',')
            .filter(|h| !h.trim().is_empty())
            .map(|h| format!("{scheme}://{userinfo}{}", h.trim()))
            .collect();
        if nodes.is_empty() {
            return Err(StorageError::other(format!(
                "{} names no cluster node",
                byova_core::backend::redact_url(base)
            )));
        }
        let mut builder = redis::cluster::ClusterClientBuilder::new(nodes)
            .connection_timeout(IO_TIMEOUT)
            .response_timeout(IO_TIMEOUT);
        if ca_file.is_some() && scheme != "rediss" {
            return Err(StorageError::other(format!(
                "a CA file was given for {}, which does not use TLS: use rediss+cluster://",
                byova_core::backend::redact_url(base)
            )));
        }
        if let Some(path) = ca_file {
            let pem = std::fs::read(path).map_err(|e| {
                StorageError::other(format!("cannot read the CA file {}: {e}", path.display()))
            })?;
            builder = builder.certs(redis::TlsCertificates { client_tls: None, root_cert: Some(pem) });
        }
        let client = builder.build().map_err(|e| {
            StorageError::other(format!(
                "{} is not a usable redis cluster URL: {e}",
                byova_core::backend::redact_url(base)
            ))
        })?;
        Ok(Self::with_backend(
            Backend::Cluster(Box::new(client)),
            byova_core::backend::redact_url(base),
            prefix,
        ))
    }

    fn with_backend(client: Backend, display: String, prefix: String) -> Self {
        let scripts = Scripts {
            store: Script::new(STORE),
            delete: Script::new(DELETE),
            release: Script::new(RELEASE),
            extend: Script::new(EXTEND),
            take: Script::new(TAKE),
        };
        Self {
            inner: Arc::new(Inner {
                client,
                display,
                prefix,
                scripts,
                #[cfg(feature = "blocking")]
                pool: Mutex::new(Vec::new()),
                #[cfg(feature = "async")]
                manager: tokio::sync::Mutex::new(None),
                #[cfg(feature = "async")]
                suspect: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    /// Whether this is a Redis Cluster (one hash tag per key, not one for the store).
    fn is_cluster(&self) -> bool {
        matches!(self.inner.client, Backend::Cluster(_))
    }

    /// The hash tag of `key`'s keys: `{prefix}` for everything on one server; on a cluster one
    /// tag per token key, so a fleet's records spread over the shards while a record, its
    /// version counter and its lease share a slot.
    fn tag(&self, key: &TokenKey) -> String {
        let p = &self.inner.prefix;
        match (self.is_cluster(), key) {
            (false, _) => format!("{{{p}}}"),
            (true, TokenKey::Integration) => format!("{{{p}:integration}}"),
            (true, TokenKey::Org(org)) => format!("{{{p}:org:{org}}}"),
        }
    }

    /// The key prefix (inside the `{}` hash tag).
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// The Redis key holding `key`'s record (for inspection and tests).
    pub fn record_key(&self, key: &TokenKey) -> String {
        let tag = self.tag(key);
        match (self.is_cluster(), key) {
            (true, _) => format!("{tag}:record"),
            (false, TokenKey::Integration) => format!("{tag}:integration"),
            (false, TokenKey::Org(org)) => format!("{tag}:org:{org}"),
        }
    }

    fn lease_key(&self, key: &TokenKey) -> String {
        let tag = self.tag(key);
        match (self.is_cluster(), key) {
            (true, _) => format!("{tag}:lease"),
            (false, TokenKey::Integration) => format!("{tag}:lease:integration"),
            (false, TokenKey::Org(org)) => format!("{tag}:lease:org:{org}"),
        }
    }

    /// Where `key`'s versions come from: one counter for the store on one server (its slot is
    /// every key's), one per key on a cluster (kept when the record is deleted, so versions
    /// never repeat either way).
    fn counter_key(&self, key: &TokenKey) -> String {
        format!("{}:version", self.tag(key))
    }

    fn pending_op_key(&self, key: &str) -> Result<String, StorageError> {
        if key.len() != 64 || !key.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(StorageError::other("a pending authorization key is 64 hex digits"));
        }
        Ok(format!("{{{}}}:pending:{key}", self.inner.prefix))
    }

    fn save_pending_op(&self, key: &str, pending: &PendingAuthorization) -> Result<Op, StorageError> {
        Ok(Op::SavePending {
            key: self.pending_op_key(key)?,
            payload: pending.to_json(),
            ttl_ms: ttl_ms(pending.remaining(SystemClock.now())),
        })
    }

    /// A shared state's keys: the record and its version counter (one slot on a cluster).
    fn state_keys(&self, name: &str) -> Result<(String, String), StorageError> {
        byova_core::backend::check_state_name(name)?;
        let p = &self.inner.prefix;
        let tag = if self.is_cluster() { format!("{{{p}:state:{name}}}") } else { format!("{{{p}}}") };
        Ok((format!("{tag}:state:{name}"), format!("{tag}:state:{name}:version")))
    }

    fn index_key(&self) -> String {
        format!("{{{}}}:orgs", self.inner.prefix)
    }

    fn load_op(&self, key: &TokenKey) -> Result<Op, StorageError> {
        Ok(Op::Load { record: self.record_key(key) })
    }

    fn store_op(&self, key: &TokenKey, tokens: &OAuthTokens, expect: Expect) -> Result<Op, StorageError> {
        let (mode, expected) = expect_args(expect);
        let org = match key {
            TokenKey::Org(org) => org.to_string(),
            TokenKey::Integration => String::new(),
        };
        // On a cluster the index is in another slot: written by a command of its own.
        let (index, org) =
            if self.is_cluster() { (self.record_key(key), String::new()) } else { (self.index_key(), org) };
        Ok(Op::Store {
            record: self.record_key(key),
            index,
            counter: self.counter_key(key),
            mode,
            expected,
            payload: tokens.to_json(),
            org,
        })
    }

    fn delete_op(&self, org_id: &OrgId, expect: Expect) -> Result<Op, StorageError> {
        let key = TokenKey::org(org_id);
        let (mode, expected) = expect_args(expect);
        let (index, org) = if self.is_cluster() {
            (self.record_key(&key), String::new())
        } else {
            (self.index_key(), org_id.to_string())
        };
        Ok(Op::Delete { record: self.record_key(&key), index, org, mode, expected })
    }

    fn acquire_op(&self, key: &TokenKey, ttl: Duration, owner: u128) -> Result<Op, StorageError> {
        Ok(Op::Acquire { lease: self.lease_key(key), owner: owner.to_string(), ttl_ms: ttl_ms(ttl) })
    }

    fn invocation(&self, op: &Op) -> Result<Invocation<'_>, StorageError> {
        let s = &self.inner.scripts;
        Ok(match op {
            Op::Load { record } | Op::LoadState { record } => {
                Invocation::Cmd(redis::cmd("HMGET").arg(record).arg("v").arg("r").clone())
            }
            Op::List { index } => Invocation::Cmd(redis::cmd("SMEMBERS").arg(index).clone()),
            Op::Acquire { lease, owner, ttl_ms } => Invocation::Cmd(
                redis::cmd("SET").arg(lease).arg(owner).arg("NX").arg("PX").arg(*ttl_ms).clone(),
            ),
            Op::Store { record, index, counter, mode, expected, payload, org } => {
                let mut inv = s.store.prepare_invoke();
                inv.key(record)
                    .key(index)
                    .key(counter)
                    .arg(*mode)
                    .arg(expected.to_string())
                    .arg(payload.as_slice())
                    .arg(org);
                Invocation::Script(inv)
            }
            Op::Delete { record, index, org, mode, expected } => {
                let mut inv = s.delete.prepare_invoke();
                inv.key(record).key(index).arg(org).arg(*mode).arg(expected.to_string());
                Invocation::Script(inv)
            }
            Op::Release { lease, owner } => {
                let mut inv = s.release.prepare_invoke();
                inv.key(lease).arg(owner);
                Invocation::Script(inv)
            }
            Op::Extend { lease, owner, ttl_ms } => {
                let mut inv = s.extend.prepare_invoke();
                inv.key(lease).arg(owner).arg(*ttl_ms);
                Invocation::Script(inv)
            }
            Op::SavePending { key, payload, ttl_ms } => Invocation::Cmd(
                redis::cmd("SET").arg(key).arg(payload.as_slice()).arg("PX").arg(*ttl_ms).clone(),
            ),
            Op::TakePending { key } => {
                let mut inv = s.take.prepare_invoke();
                inv.key(key);
                Invocation::Script(inv)
            }
            Op::IndexAdd { index, org } => Invocation::Cmd(redis::cmd("SADD").arg(index).arg(org).clone()),
        })
    }

    fn where_(&self) -> String {
        format!("redis {} (prefix {})", self.inner.display, self.inner.prefix)
    }

    /// Turns the reply to `op` into the operation's result.
    fn interpret(&self, op: &Op, key: Option<&TokenKey>, reply: Value) -> Result<Reply, StorageError> {
        let bad =
            |what: &str| StorageError::other(format!("unexpected reply from {} to {what}", self.where_()));
        match op {
            Op::Load { .. } => {
                let Value::Array(items) = reply else { return Err(bad("HMGET")) };
                match items.as_slice() {
                    [Value::Nil, _] | [] => Ok(Reply::Record(None)),
                    [v, r] => {
                        let key = key.cloned().unwrap_or(TokenKey::Integration);
                        let version = redis::from_redis_value::<u64>(v.clone()).map_err(|_| {
                            StorageError::corrupt(format!(
                                "the version of {key} in {} is not a number",
                                self.where_()
                            ))
                        })?;
                        let bytes = redis::from_redis_value::<Vec<u8>>(r.clone()).unwrap_or_default();
                        let value = decode_record(&bytes, &key, &self.where_())?;
                        Ok(Reply::Record(Some(Versioned { value, version })))
                    }
                    _ => Err(bad("HMGET")),
                }
            }
            Op::Store { .. } => match redis::from_redis_value::<i64>(reply) {
                Ok(-1) => Err(StorageError::conflict(key.unwrap_or(&TokenKey::Integration))),
                Ok(v) => Ok(Reply::Version(u64::try_from(v).map_err(|_| bad("a write"))?)),
                Err(_) => Err(bad("a write")),
            },
            Op::List { .. } => {
                let names: Vec<String> = redis::from_redis_value(reply).map_err(|_| bad("SMEMBERS"))?;
                Ok(Reply::Orgs(stored_org_ids(names, &self.where_())))
            }
            Op::Acquire { .. } => Ok(Reply::Flag(
                matches!(reply, Value::Okay) || matches!(&reply, Value::SimpleString(s) if s == "OK"),
            )),
            Op::Delete { .. } => match redis::from_redis_value::<i64>(reply) {
                Ok(-1) => Err(StorageError::conflict(key.unwrap_or(&TokenKey::Integration))),
                Ok(_) => Ok(Reply::Flag(true)),
                Err(_) => Err(bad("a delete")),
            },
            Op::Release { .. } => Ok(Reply::Flag(true)),
            Op::Extend { .. } => Ok(Reply::Flag(redis::from_redis_value::<i64>(reply).unwrap_or(0) == 1)),
            Op::SavePending { .. } | Op::IndexAdd { .. } => Ok(Reply::Flag(true)),
            Op::LoadState { .. } => {
                let Value::Array(items) = reply else { return Err(bad("HMGET")) };
                match items.as_slice() {
                    [Value::Nil, _] | [] => Ok(Reply::State(None)),
                    [v, r] => {
                        let version = redis::from_redis_value::<u64>(v.clone()).map_err(|_| {
                            StorageError::corrupt(format!(
                                "a shared state's version in {} is not a number",
                                self.where_()
                            ))
                        })?;
                        let value = redis::from_redis_value::<Vec<u8>>(r.clone()).unwrap_or_default();
                        Ok(Reply::State(Some(Versioned { value, version })))
                    }
                    _ => Err(bad("HMGET")),
                }
            }
            Op::TakePending { .. } => match redis::from_redis_value::<Option<Vec<u8>>>(reply) {
                Ok(None) => Ok(Reply::Pending(None)),
                Ok(Some(bytes)) => {
                    PendingAuthorization::from_json(&bytes).map(|p| Reply::Pending(Some(p))).map_err(|why| {
                        StorageError::corrupt(format!(
                            "a pending authorization in {} is unreadable: {why}",
                            self.where_()
                        ))
                    })
                }
                Err(_) => Err(bad("a pending authorization take")),
            },
        }
    }
}

enum Invocation<'a> {
    Cmd(redis::Cmd),
    Script(redis::ScriptInvocation<'a>),
}

impl Invocation<'_> {
    #[cfg(feature = "blocking")]
    fn run(self, conn: &mut impl redis::ConnectionLike) -> Result<Value, redis::RedisError> {
        match self {
            Invocation::Cmd(cmd) => cmd.query(conn),
            Invocation::Script(inv) => inv.invoke(conn),
        }
    }

    #[cfg(feature = "async")]
    async fn run_async(
        self,
        conn: &mut (impl redis::aio::ConnectionLike + Send),
    ) -> Result<Value, redis::RedisError> {
        match self {
            Invocation::Cmd(cmd) => cmd.query_async(conn).await,
            Invocation::Script(inv) => inv.invoke_async(conn).await,
        }
    }
}

enum Reply {
    Record(Option<Versioned<OAuthTokens>>),
    Version(u64),
    Orgs(Vec<OrgId>),
    Flag(bool),
    Pending(Option<PendingAuthorization>),
    State(Option<Versioned<Vec<u8>>>),
}

/// An `Expect` as the scripts' mode and version arguments (the same table as
/// [`Expect::admits`]).
fn expect_args(expect: Expect) -> (&'static str, u64) {
    match expect {
        Expect::Any => ("any", 0),
        Expect::Absent => ("absent", 0),
        Expect::Version(v) => ("version", v),
    }
}

macro_rules! reply_as {
    ($reply:expr, $variant:ident) => {
        match $reply {
            Reply::$variant(v) => Ok(v),
            _ => Err(StorageError::other("internal: mismatched redis reply")),
        }
    };
}

/// The coordinated primitives over one way of running an [`Op`] (`run` on a pooled blocking
/// connection, `run_async` on the connection manager): written once for both traits.
macro_rules! coordinated_impl {
    ($(#[$attr:meta])* $trait:ident, $run:ident, $existing:ident $(, $async_kw:ident, $await:tt)?) => {
        $(#[$attr])*
        impl $trait for RedisTokenStorage {
            $($async_kw)? fn load(&self, key: &TokenKey) -> Result<Option<Versioned<OAuthTokens>>, StorageError> {
                reply_as!(self.$run(self.load_op(key)?, Some(key))$(.$await)??, Record)
            }
            $($async_kw)? fn store(&self, key: &TokenKey, tokens: &OAuthTokens, expect: Expect) -> Result<u64, StorageError> {
                let op = self.store_op(key, tokens, expect)?;
                if let (true, TokenKey::Org(org)) = (self.is_cluster(), key) {
                    // Index first: listing checks that a record exists, so an entry ahead of its
                    // record is harmless, while a record missing from the index would be lost
                    // to the refresher.
                    self.$run(Op::IndexAdd { index: self.index_key(), org: org.to_string() }, None)$(.$await)??;
                }
                reply_as!(self.$run(op, Some(key))$(.$await)??, Version)
            }
            $($async_kw)? fn delete_org(&self, org_id: &OrgId, expect: Expect) -> Result<(), StorageError> {
                // On a cluster the index entry stays (listing filters by existence): removing
                // it could race a re-registration in another replica and lose the org.
                let key = TokenKey::org(org_id);
                self.$run(self.delete_op(org_id, expect)?, Some(&key))$(.$await)?.map(drop)
            }
            $($async_kw)? fn list_orgs(&self) -> Result<Vec<OrgId>, StorageError> {
                let indexed = reply_as!(self.$run(Op::List { index: self.index_key() }, None)$(.$await)??, Orgs)?;
                if !self.is_cluster() {
                    return Ok(indexed);
                }
                self.$existing(indexed)$(.$await)?
            }
            $($async_kw)? fn try_acquire_lease(&self, key: &TokenKey, ttl: Duration) -> Result<Option<Lease>, StorageError> {
                let lease = Lease::new(key.clone());
                let granted = reply_as!(self.$run(self.acquire_op(key, ttl, lease.owner)?, Some(key))$(.$await)??, Flag)?;
                Ok(granted.then_some(lease))
            }
            $($async_kw)? fn release_lease(&self, lease: &Lease) -> Result<(), StorageError> {
                let op = Op::Release { lease: self.lease_key(&lease.key), owner: lease.owner.to_string() };
                self.$run(op, None)$(.$await)?.map(drop)
            }
            $($async_kw)? fn extend_lease(&self, lease: &Lease, ttl: Duration) -> Result<bool, StorageError> {
                let op = Op::Extend { lease: self.lease_key(&lease.key), owner: lease.owner.to_string(), ttl_ms: ttl_ms(ttl) };
                reply_as!(self.$run(op, None)$(.$await)??, Flag)
            }
            $($async_kw)? fn save_pending_authorization(&self, key: &str, pending: &PendingAuthorization) -> Result<bool, StorageError> {
                reply_as!(self.$run(self.save_pending_op(key, pending)?, None)$(.$await)??, Flag)
            }
            $($async_kw)? fn take_pending_authorization(&self, key: &str) -> Result<Option<PendingAuthorization>, StorageError> {
                let op = Op::TakePending { key: self.pending_op_key(key)? };
                reply_as!(self.$run(op, None)$(.$await)??, Pending)
            }
            $($async_kw)? fn load_state(&self, name: &str) -> Result<Option<Versioned<Vec<u8>>>, StorageError> {
                let (record, _) = self.state_keys(name)?;
                reply_as!(self.$run(Op::LoadState { record }, None)$(.$await)??, State)
            }
            $($async_kw)? fn store_state(&self, name: &str, bytes: &[u8], expect: Expect) -> Result<u64, StorageError> {
                let (record, counter) = self.state_keys(name)?;
                let (mode, expected) = expect_args(expect);
                let op = Op::Store { index: record.clone(), record, counter, mode, expected, payload: bytes.to_vec(), org: String::new() };
                match self.$run(op, None)$(.$await)? {
                    Err(e) if e.kind() == byova_core::StorageErrorKind::Conflict => Err(byova_core::backend::state_conflict(name)),
                    other => reply_as!(other?, Version),
                }
            }
        }
    };
}

#[cfg(feature = "blocking")]
mod blocking {
    use super::*;
    use byova_core::backend::BlockingCoordinatedTokenStorage;

    impl RedisTokenStorage {
        fn run(&self, op: Op, key: Option<&TokenKey>) -> Result<Reply, StorageError> {
            let mut conn = self.connection()?;
            let invocation = self.invocation(&op)?;
            let reply: Result<Value, redis::RedisError> = match &mut conn {
                SyncConn::Single(c) => invocation.run(c),
                SyncConn::Cluster(c) => invocation.run(c.as_mut()),
            };
            match reply {
                Ok(value) => {
                    self.inner.pool.lock().unwrap_or_else(|e| e.into_inner()).push(conn);
                    self.interpret(&op, key, value)
                }
                // The connection may be broken: drop it rather than return it to the pool.
                Err(e) => Err(unavailable_or_other("command failed", &e)),
            }
        }

        fn connection(&self) -> Result<SyncConn, StorageError> {
            if let Some(conn) = self.inner.pool.lock().unwrap_or_else(|e| e.into_inner()).pop() {
                return Ok(conn);
            }
            let connect = |e: redis::RedisError| {
                unavailable_or_other(&format!("connect to {}", self.inner.display), &e)
            };
            match &self.inner.client {
                Backend::Single(client) => {
                    let conn = client.get_connection_with_timeout(IO_TIMEOUT).map_err(connect)?;
                    conn.set_read_timeout(Some(IO_TIMEOUT))
                        .and_then(|()| conn.set_write_timeout(Some(IO_TIMEOUT)))
                        .map_err(|e| unavailable_or_other("configure", &e))?;
                    Ok(SyncConn::Single(conn))
                }
                Backend::Cluster(client) => {
                    Ok(SyncConn::Cluster(Box::new(client.get_connection().map_err(connect)?)))
                }
            }
        }
    }

    impl RedisTokenStorage {
        /// The orgs among `indexed` whose record exists, checked in cluster pipelines of 1,000
        /// (each command routed to its node).
        fn existing_orgs(&self, indexed: Vec<OrgId>) -> Result<Vec<OrgId>, StorageError> {
            let Backend::Cluster(client) = &self.inner.client else { return Ok(indexed) };
            let mut conn = client
                .get_connection()
                .map_err(|e| unavailable_or_other(&format!("connect to {}", self.inner.display), &e))?;
            let mut orgs = Vec::with_capacity(indexed.len());
            for chunk in indexed.chunks(1_000) {
                let mut pipe = redis::cluster::cluster_pipe();
                for org in chunk {
                    pipe.cmd("EXISTS").arg(self.record_key(&TokenKey::org(org)));
                }
                let exists: Vec<i64> = pipe.query(&mut conn).map_err(|e| unavailable_or_other("list", &e))?;
                orgs.extend(chunk.iter().zip(exists).filter(|(_, e)| *e == 1).map(|(o, _)| o.clone()));
            }
            Ok(orgs)
        }
    }

    impl Drop for Inner {
        fn drop(&mut self) {
            let pool = self.pool.get_mut().unwrap_or_else(|e| e.into_inner());
            pool.truncate(POOL_SIZE.min(pool.len()));
        }
    }

    coordinated_impl!(BlockingCoordinatedTokenStorage, run, existing_orgs);
}

#[cfg(feature = "async")]
mod async_impl {
    use super::*;
    use byova_core::{async_trait, backend::CoordinatedTokenStorage};

    impl RedisTokenStorage {
        async fn manager(&self) -> Result<AsyncConn, StorageError> {
            use std::sync::atomic::Ordering;
            let mut slot = self.inner.manager.lock().await;
            if self.inner.suspect.swap(false, Ordering::AcqRel) {
                // A call on it was abandoned mid-way: connect afresh.
                *slot = None;
            }
            if let Some(conn) = slot.as_ref() {
                return Ok(conn.clone());
            }
            let connect = |e: redis::RedisError| {
                unavailable_or_other(&format!("connect to {}", self.inner.display), &e)
            };
            let conn = match &self.inner.client {
                Backend::Single(client) => {
                    let config = redis::aio::ConnectionManagerConfig::new()
                        .set_connection_timeout(Some(IO_TIMEOUT))
                        .set_response_timeout(Some(IO_TIMEOUT));
                    redis::aio::ConnectionManager::new_with_config(client.as_ref().clone(), config)
                        .await
                        .map(AsyncConn::Single)
                        .map_err(connect)?
                }
                Backend::Cluster(client) => {
                    client.get_async_connection().await.map(AsyncConn::Cluster).map_err(connect)?
                }
            };
            *slot = Some(conn.clone());
            Ok(conn)
        }

        /// The orgs among `indexed` whose record exists: 500 `EXISTS` at a time, concurrently,
        /// over the multiplexed cluster connection.
        async fn existing_orgs_async(&self, indexed: Vec<OrgId>) -> Result<Vec<OrgId>, StorageError> {
            let AsyncConn::Cluster(conn) = self.manager().await? else { return Ok(indexed) };
            let mut orgs = Vec::with_capacity(indexed.len());
            for chunk in indexed.chunks(500) {
                let mut checks = tokio::task::JoinSet::new();
                for (i, org) in chunk.iter().enumerate() {
                    let (mut conn, record) = (conn.clone(), self.record_key(&TokenKey::org(org)));
                    checks.spawn(async move {
                        let exists: Result<i64, redis::RedisError> =
                            redis::cmd("EXISTS").arg(record).query_async(&mut conn).await;
                        (i, exists)
                    });
                }
                let mut found = vec![false; chunk.len()];
                while let Some(done) = checks.join_next().await {
                    let (i, exists) =
                        done.map_err(|e| StorageError::other(format!("a redis check failed: {e}")))?;
                    found[i] = exists.map_err(|e| unavailable_or_other("list", &e))? == 1;
                }
                orgs.extend(chunk.iter().zip(found).filter(|(_, f)| *f).map(|(o, _)| o.clone()));
            }
            Ok(orgs)
        }

        async fn run_async(&self, op: Op, key: Option<&TokenKey>) -> Result<Reply, StorageError> {
            /// Marks the connection suspect unless the call it guards finished (with an answer
            /// or an error): dropped mid-way, the next call reconnects.
            struct Abandoned<'a>(&'a std::sync::atomic::AtomicBool, bool);
            impl Drop for Abandoned<'_> {
                fn drop(&mut self) {
                    if !self.1 {
                        self.0.store(true, std::sync::atomic::Ordering::Release);
                    }
                }
            }
            let mut guard = Abandoned(&self.inner.suspect, false);
            let conn = self.manager().await?;
            let invocation = self.invocation(&op)?;
            let reply: Result<Value, redis::RedisError> = match conn {
                AsyncConn::Single(mut c) => invocation.run_async(&mut c).await,
                AsyncConn::Cluster(mut c) => invocation.run_async(&mut c).await,
            };
            guard.1 = reply.as_ref().is_ok_or_not_timeout();
            let value = reply.map_err(|e| unavailable_or_other("command failed", &e))?;
            self.interpret(&op, key, value)
        }
    }

    coordinated_impl!(
        #[async_trait]
        CoordinatedTokenStorage,
        run_async,
        existing_orgs_async,
        async,
        await
    );
}

/// Whether a reply leaves the connection in step: an answer or an error from the server does;
/// a timeout may not (a reply may still come, for the wrong command).
#[cfg(feature = "async")]
trait InStep {
    fn is_ok_or_not_timeout(&self) -> bool;
}

#[cfg(feature = "async")]
impl InStep for Result<&Value, &redis::RedisError> {
    fn is_ok_or_not_timeout(&self) -> bool {
        match self {
            Ok(_) => true,
            Err(e) => !e.is_timeout(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_prefixes_and_redaction() {
        let s = RedisTokenStorage::open("redis://127.0.0.1:6379/2?prefix=app1").unwrap();
        assert_eq!(s.prefix(), "app1");
        assert_eq!(s.record_key(&TokenKey::org(&OrgId::from_static("o:1"))), "{app1}:org:o:1");
        assert_eq!(s.lease_key(&TokenKey::Integration), "{app1}:lease:integration");
        assert_eq!(RedisTokenStorage::open("redis://127.0.0.1/").unwrap().prefix(), "byova");
        assert!(RedisTokenStorage::open("redis://127.0.0.1/?prefix={x}").is_err());
        assert!(RedisTokenStorage::open("notaurl").is_err());
        assert_eq!(byova_core::backend::redact_url("redis://user:SECRET@host:1/0"), "redis://***@host:1/0");
        let err = RedisTokenStorage::open("redis://u:SECRET@").map(|_| ()).unwrap_err();
        assert!(!err.to_string().contains("SECRET"));
    }

    #[test]
    fn cluster_keys_share_a_slot_per_token_key_and_spread_across_keys() {
        let s = RedisTokenStorage::open("redis+cluster://127.0.0.1:7001,127.0.0.1:7002/?prefix=app").unwrap();
        let org = TokenKey::org(&OrgId::from_static("o1"));
        assert_eq!(s.record_key(&org), "{app:org:o1}:record");
        assert_eq!(s.lease_key(&org), "{app:org:o1}:lease");
        assert_eq!(s.counter_key(&org), "{app:org:o1}:version");
        assert_eq!(s.record_key(&TokenKey::Integration), "{app:integration}:record");
        assert_eq!(s.index_key(), "{app}:orgs");
        // Redis Cluster's key slot: CRC16/XMODEM of the hash tag (or the key), mod 16384.
        let slot = |k: &str| {
            let tagged = k.find('{').and_then(|i| {
                let rest = &k[i + 1..];
                rest.find('}').filter(|&j| j > 0).map(|j| &rest[..j])
            });
            let mut crc: u16 = 0;
            for byte in tagged.unwrap_or(k).bytes() {
                crc ^= u16::from(byte) << 8;
                for _ in 0..8 {
                    crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
                }
            }
            crc % 16384
        };
        assert_eq!(slot("foo"), 12182, "Redis's own example");
        assert_eq!(
            slot(&s.record_key(&org)),
            slot(&s.counter_key(&org)),
            "what a script touches shares a slot"
        );
        assert_eq!(slot(&s.record_key(&org)), slot(&s.lease_key(&org)));
        let slots: std::collections::HashSet<u16> = (0..100)
            .map(|i| slot(&s.record_key(&TokenKey::org(&OrgId::new(&format!("org-{i}")).unwrap()))))
            .collect();
        assert!(slots.len() > 90, "a fleet spreads over the slots: {}", slots.len());
        assert!(RedisTokenStorage::open("redis+cluster:///?prefix=app").is_err(), "no node named");
        let standalone = RedisTokenStorage::open("redis://127.0.0.1/?prefix=app").unwrap();
        assert_eq!(standalone.counter_key(&org), "{app}:version", "one server keeps the one-tag layout");
    }
}
