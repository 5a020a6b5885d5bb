//! One client session: the command loop.
//!
//! # Prepared statements
//! The proxy hands out its own statement ids. A statement is prepared on the
//! backend where it first runs and, lazily, on any other backend it is later
//! sent to (a read prepared on a replica runs on the master while the session
//! waits for its own write to replicate). Parameter types, which a client
//! sends only with the first execution, are remembered and re-sent to a
//! backend that has not seen them. `COM_STMT_SEND_LONG_DATA` chunks are
//! buffered (at most `max_allowed_packet` per statement, leased from the
//! proxy's memory budget) and replayed just before the execution they
//! belong to.
//!
//! # Replica connections cannot write
//! Every replica connection starts with `SET SESSION TRANSACTION READ ONLY`:
//! a statement the router wrongly took for a read fails with error 1792 on
//! the replica instead of changing its data.
//!
//! # KILL
//! The thread id a client sees (greeting, `KILL`, the `mariadb` client's
//! Ctrl-C) is the proxy's session id. `KILL [QUERY] n` looks up session
//! `n` (of the same proxy user), and kills the statement it is running on
//! whichever backend runs it, from a separate connection of the same
//! backend account; `KILL CONNECTION n` also ends that session. A backend
//! connection id is never taken from a client.
//!
//! # Unsupported
//! Server-side cursors (`COM_STMT_EXECUTE` with cursor flags, `COM_STMT_FETCH`),
//! replication commands and LOCAL INFILE get an ERR packet.

use super::backend::{BackendConn, BackendError, Pool, PoolKey, Reply, Summary};
use super::command::{self, Command};
use super::config::{Consistency, UserConfig};
use super::handshake::{self, ClientStream, HandshakeError, CLIENT_DEPRECATE_EOF, CLIENT_MULTI_STATEMENTS};
use super::health::{lag_ok, BackendHealth, Gtid};
use super::lexer::ClientCharset;
use super::memory::Lease;
use super::metrics;
use super::packet::{
    err_payload, ok_payload, ErrPacket, PacketIo, ReadLimit, STATUS_AUTOCOMMIT, STATUS_IN_TRANS,
    STATUS_NO_BACKSLASH_ESCAPES,
};
use super::router::{classify_cached, Local, Route, Target};
use super::Shared;
use bytes::Bytes;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::Notify;

pub use super::handshake::clip;

const ER_OUT_OF_RESOURCES: u16 = 1041;
const ER_UNKNOWN_COM: u16 = 1047;
const ER_NO_SUCH_THREAD: u16 = 1094;
const ER_KILL_DENIED: u16 = 1095;
const ER_UNKNOWN_ERROR: u16 = 1105;
const ER_NOT_SUPPORTED: u16 = 1235;
const ER_UNKNOWN_STMT: u16 = 1243;
const ER_MAX_PREPARED_STMT_COUNT_REACHED: u16 = 1461;
const ER_CONNECTION_KILLED: u16 = 1927;
const ER_BAD_DB: u16 = 1049;
/// Errors a replica gives for a read when its schema is behind the master's:
/// no such table (1146), unknown column (1054), no such database (1049).
/// A plain read that fails so on a replica is answered by the master.
const SCHEMA_LAG_CODES: &[u16] = &[1146, 1054, ER_BAD_DB];

/// Errors after which the server closes the connection (packet too large,
/// network read/write errors and timeouts).
const CLOSING_CODES: &[u16] = &[1153, 1158, 1159, 1160, 1161];

/// Session settings replayed on new backend connections; beyond this many
/// distinct ones the session is pinned to the master instead.
const MAX_SETTINGS: usize = 32;

/// How long reads of a session whose database a replica lacks stay on the
/// master before a read tries the replica again. Under `dbmux run` a
/// database created on the master reaches the replicas later (with its first
/// rows): a session that logged in before must not read from the master for
/// the rest of its life. A try costs one `COM_INIT_DB` on the replica
/// connection the session keeps.
const LACKS_DB_RECHECK: Duration = Duration::from_secs(1);

/// Prepared statements one session may hold (MySQL's default
/// `max_prepared_stmt_count`, which is per server).
const MAX_STATEMENTS: usize = 16_382;

/// Route indexes into the metrics arrays (see `metrics::ROUTES`).
const M_MASTER: usize = 0;
const M_REPLICA: usize = 1;
const M_SESSION: usize = 2;
const M_LOCAL: usize = 3;
const M_CACHE: usize = 4;

/// What other sessions may know of a session: its user, the backend
/// statement it runs (for `KILL QUERY`), and a way to end it (`KILL`).
pub struct SessionHandle {
    pub id: u32,
    user: Mutex<String>,
    /// The backend connection running this session's command: 0 when none;
    /// else backend (0 master, `i + 1` replica `i`) << 48 | account << 32 |
    /// backend connection id.
    running: AtomicU64,
    killed: AtomicBool,
    kill: Notify,
}

impl SessionHandle {
    fn new(id: u32, user: &str) -> SessionHandle {
        SessionHandle {
            id,
            user: Mutex::new(user.to_string()),
            running: AtomicU64::new(0),
            killed: AtomicBool::new(false),
            kill: Notify::new(),
        }
    }

    pub fn user(&self) -> String {
        self.user.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set_user(&self, user: &str) {
        *self.user.lock().unwrap_or_else(|e| e.into_inner()) = user.to_string();
    }

    fn set_running(&self, which: Which, conn: &BackendConn) {
        let backend = match which {
            Which::Master => 0u64,
            Which::Replica(i) => i as u64 + 1,
        };
        self.running.store(
            backend << 48 | (conn.key.account as u64) << 32 | conn.connection_id as u64,
            Ordering::Relaxed,
        );
    }

    fn idle(&self) {
        self.running.store(0, Ordering::Relaxed);
    }

    /// Kills the backend statement this session runs now, if any, from a
    /// separate connection of the same backend and account.
    async fn kill_query(&self, shared: &Shared) {
        let r = self.running.load(Ordering::Relaxed);
        if r == 0 {
            return;
        }
        let (backend, account, id) = ((r >> 48) as usize, (r >> 32) as u16, r as u32);
        let pool: &Arc<Pool> = match backend {
            0 => &shared.master,
            i => match shared.replicas.get(i - 1) {
                Some(rep) => &rep.pool,
                None => return,
            },
        };
        let key = PoolKey {
            caps: 0,
            collation: handshake::DEFAULT_COLLATION,
            account,
        };
        match pool.get(key).await {
            Ok(mut c) => {
                match c.query_value(&format!("KILL QUERY {id}")).await {
                    Ok(Ok(_)) => pool.put(c),
                    Ok(Err(e)) => {
                        // Finished in the meantime, most likely.
                        tracing::debug!(session = self.id, error = %e.message, "KILL QUERY on the backend");
                        pool.put(c);
                    }
                    Err(e) => {
                        tracing::warn!(session = self.id, error = %e, "KILL QUERY on the backend failed")
                    }
                }
            }
            Err(e) => tracing::warn!(session = self.id, error = %e, "no backend connection for KILL QUERY"),
        }
    }

    /// Ends the session: it answers 1927 to its client at its next step.
    fn kill_connection(&self) {
        self.killed.store(true, Ordering::Relaxed);
        self.kill.notify_one();
    }
}

/// Removes a session from the registry and the gauges when it ends, also
/// when it ends by a panic.
struct Registered {
    shared: Arc<Shared>,
    id: u32,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.shared
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}

struct Gauge(Arc<Shared>);

impl Drop for Gauge {
    fn drop(&mut self) {
        self.0.metrics.connections.dec();
    }
}

/// Time a client has to finish the connection phase.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves one accepted client until it quits, idles out or fails.
///
/// `prelogin` is held until the connection phase ends and then dropped: the
/// listener's guard of the address's pre-login slot (the listener owns that
/// accounting; a connection only decides when login is over).
pub async fn run<G: Send>(socket: TcpStream, peer: SocketAddr, shared: Arc<Shared>, prelogin: G) {
    shared.metrics.connections.inc();
    let _gauge = Gauge(shared.clone());
    let conn_id = shared
        .next_conn_id
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        .max(1);
    let accepted = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        handshake::accept(socket, &shared.cfg, shared.tls.as_ref(), &shared.version, conn_id),
    )
    .await;
    drop(prelogin);
    match accepted {
        Ok(Ok(mut a)) => {
            tracing::debug!(%peer, user = %clip(&a.user.name, 64), tls = a.io.stream.is_tls(), "client logged in");
            a.io.max_packet = shared.cfg.max_allowed_packet;
            a.io.budget = Some(shared.memory.clone());
            let handle = Arc::new(SessionHandle::new(conn_id, &a.user.name));
            shared
                .sessions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(conn_id, handle.clone());
            let _registered = Registered {
                shared: shared.clone(),
                id: conn_id,
            };
            let mut s = Session::new(shared.clone(), a.io, a.user, a.caps, a.collation, a.db, handle);
            s.serve().await;
            s.release();
        }
        Ok(Err(HandshakeError::Refused(why))) => {
            shared.metrics.auth_failures.inc();
            shared.door.failed(peer.ip());
            tracing::info!(%peer, %why, "login refused");
        }
        Ok(Err(e)) => {
            if let HandshakeError::Io(io) = &e {
                if ReadLimit::of(io).is_some() {
                    shared.metrics.packets_refused.inc();
                }
            }
            tracing::debug!(%peer, error = %e, "handshake failed")
        }
        Err(_) => tracing::debug!(%peer, "handshake timed out"),
    }
}

/// Which backend connection of the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Which {
    Master,
    Replica(usize),
}

/// Why a command could not be completed.
enum Fail {
    /// The client went away: end quietly.
    Client(std::io::Error),
    /// The master connection broke: the session's state is lost; tell the client and end.
    MasterBroken(BackendError),
    /// No master connection could be made: tell the client, keep the session.
    MasterUnavailable(BackendError),
    /// Part of a replica's reply reached the client before the replica broke.
    ReplicaBrokeMidReply(BackendError),
    /// The server refused something the proxy did for the command (e.g.
    /// re-preparing a statement whose table is gone): report it, keep going.
    Sql(ErrPacket),
    /// `KILL CONNECTION` of this session: tell the client and end.
    Killed,
}

impl From<std::io::Error> for Fail {
    fn from(e: std::io::Error) -> Fail {
        Fail::Client(e)
    }
}

enum Exec {
    Done(Summary),
    /// The replica failed before the client saw anything: run it on the master.
    Retry,
}

enum TakeError {
    Backend(BackendError),
    /// Setting the connection up (database, settings) failed with this error.
    Sql(ErrPacket),
}

/// A prepared statement as the client knows it.
struct Stmt {
    route: Route,
    params: u16,
    /// Backend id on the master connection, and whether it has the parameter types.
    master: Option<(u32, bool)>,
    /// Backend id on the replica connection of generation `.0`.
    replica: Option<(u64, u32, bool)>,
    param_types: Option<Vec<u8>>,
    long_data: Vec<(Bytes, Option<Lease>)>,
    long_data_len: usize,
    /// More long data arrived than `max_allowed_packet`: the next execution fails.
    long_data_overflow: bool,
    sql: Bytes,
    _text: Option<Lease>,
}

struct Session {
    shared: Arc<Shared>,
    client: PacketIo<ClientStream>,
    user: UserConfig,
    /// The user's name, for error messages relayed from backends.
    mask_as: Arc<str>,
    handle: Arc<SessionHandle>,
    key: PoolKey,
    /// Pool account for replica connections ([`PoolKey::account`]).
    replica_account: u16,
    caps: u32,
    db: Option<String>,
    multi_statements: bool,
    /// The character set the session's statements are read in (the
    /// server's `character_set_client` of its replica connections).
    charset: ClientCharset,
    /// `COM_QUERY` payloads of session settings, replayed on new connections.
    settings: Vec<Bytes>,
    master: Option<BackendConn>,
    replica: Option<(usize, BackendConn)>,
    /// Bumped whenever the replica connection changes.
    replica_gen: u64,
    /// When a replica last could not use the session's database (it lacks
    /// it): reads go to the master until the database changes or
    /// [`LACKS_DB_RECHECK`] has passed (see there).
    replica_lacks_db: Option<Instant>,
    pin: Option<&'static str>,
    /// Status flags from the master's last reply (or, before there is a
    /// master connection, the autocommit the client asked for).
    master_status: u16,
    /// A statement that may have written ran since the last commit point.
    wrote: bool,
    /// A write committed whose GTID is not read yet; read from the master
    /// connection before the next read that could go to a replica (reading
    /// it right after the write would replace that statement's warnings,
    /// `ROW_COUNT()` and `FOUND_ROWS()` on the master connection).
    gtid_pending: bool,
    /// The commit of this session's last write.
    last_write: Option<Gtid>,
    /// Where the previous statement ran (with the replica generation).
    last: Option<(Which, u64)>,
    stmts: HashMap<u32, Stmt>,
    next_stmt: u32,
    /// A backend said this session's `sql_mode` has NO_BACKSLASH_ESCAPES:
    /// the router would lex strings differently from the server, so every
    /// statement goes to the master.
    no_backslash_escapes: bool,
    /// The master closed this session's connection (with its state): end
    /// the session after the current reply.
    close_after: bool,
    /// The current command's reply to the client was an SQL error (the
    /// `outcome` of the query metrics).
    answered_err: bool,
    /// Read-your-writes with the cache: the session's last write and a
    /// replica `seq` known to include it (a cached result must reach it).
    ryw_floor: Option<(Gtid, u64)>,
}

/// A cacheable statement, ready for the cache: its key and tables.
struct CachePlan {
    hash: String,
    tables: Vec<(String, String)>,
}

/// What the cache did for a read.
enum CacheStep {
    /// Answered (sent to the client).
    Hit,
    /// Not found: run it on this replica, and store the result read at this
    /// applied `seq` (when known).
    Fill { idx: usize, seq: Option<u64> },
    /// The cache does not apply now: run it here.
    Bypass(Which),
}

impl Session {
    fn new(
        shared: Arc<Shared>,
        client: PacketIo<ClientStream>,
        user: UserConfig,
        caps: u32,
        collation: u8,
        db: Option<String>,
        handle: Arc<SessionHandle>,
    ) -> Session {
        let (master_account, replica_account) = shared.accounts.get(&user.name).copied().unwrap_or((0, 0));
        let key = PoolKey {
            caps: caps & handshake::SESSION_CAPABILITIES,
            collation,
            account: master_account,
        };
        Session {
            shared,
            client,
            mask_as: user.name.as_str().into(),
            user,
            handle,
            key,
            replica_account,
            caps,
            db,
            multi_statements: caps & CLIENT_MULTI_STATEMENTS != 0,
            charset: ClientCharset::from_collation(collation as u16),
            settings: Vec::new(),
            master: None,
            replica: None,
            replica_gen: 0,
            replica_lacks_db: None,
            pin: None,
            master_status: STATUS_AUTOCOMMIT,
            wrote: false,
            gtid_pending: false,
            last_write: None,
            last: None,
            stmts: HashMap::new(),
            next_stmt: 1,
            no_backslash_escapes: false,
            close_after: false,
            answered_err: false,
            ryw_floor: None,
        }
    }

    fn in_txn(&self) -> bool {
        self.master_status & STATUS_IN_TRANS != 0 || self.master_status & STATUS_AUTOCOMMIT == 0
    }

    fn status(&self) -> u16 {
        self.master_status
    }

    fn health(&self, which: Which) -> Arc<BackendHealth> {
        match which {
            Which::Master => self.shared.master_health.clone(),
            Which::Replica(i) => self.shared.replicas[i].health.clone(),
        }
    }

    async fn serve(&mut self) {
        let idle = Duration::from_secs(self.shared.cfg.idle_timeout_secs);
        // One idle timer for the whole session instead of one per command
        // (registering and removing a timer costs two locks of the timer
        // wheel per command): when it fires early it is moved to the end of
        // the current wait.
        let timer = tokio::time::sleep(idle);
        tokio::pin!(timer);
        let handle = self.handle.clone();
        loop {
            let waiting_since = tokio::time::Instant::now();
            let read = loop {
                if handle.killed.load(Ordering::Relaxed) {
                    break None;
                }
                tokio::select! {
                    biased;
                    r = self.client.read_packet() => break Some(r),
                    () = handle.kill.notified() => {}
                    () = &mut timer => {
                        let deadline = waiting_since + idle;
                        if tokio::time::Instant::now() >= deadline {
                            tracing::debug!(user = %clip(&self.user.name, 64), "idle timeout");
                            return;
                        }
                        timer.as_mut().reset(deadline);
                    }
                }
            };
            let pkt = match read {
                None => {
                    let _ = self
                        .reply_err(ER_CONNECTION_KILLED, "70100", "Connection was killed")
                        .await;
                    return;
                }
                Some(Err(e)) => {
                    if let Some(limit) = ReadLimit::of(&e) {
                        self.shared.metrics.packets_refused.inc();
                        let (code, msg) = match limit {
                            ReadLimit::TooLarge(_) => (
                                handshake::ER_NET_PACKET_TOO_LARGE,
                                "Got a packet bigger than 'max_allowed_packet' bytes".to_string(),
                            ),
                            ReadLimit::OutOfMemory(_) => (
                                ER_OUT_OF_RESOURCES,
                                "Out of memory: dbmux's max_memory is in use by other sessions; try again later"
                                    .to_string(),
                            ),
                        };
                        tracing::info!(user = %clip(&self.user.name, 64), %limit, "client packet refused; closing the session");
                        // The rest of the packet is still unread: the
                        // connection cannot go on (as on a server).
                        let refused = Instant::now();
                        let _ = self.reply_err(code, "08S01", &msg).await;
                        // A command dbmux answered itself, with an error.
                        self.shared
                            .metrics
                            .record(M_LOCAL, metrics::ERROR, refused.elapsed());
                        super::packet::drain(&mut self.client).await;
                    }
                    return;
                }
                Some(Ok(None)) => return,
                Some(Ok(Some(p))) => p,
            };
            let cmd = match Command::parse(&pkt.payload) {
                Ok(c) => c,
                Err(e) => {
                    let started = Instant::now();
                    let sent = self.reply_err(ER_UNKNOWN_COM, "08S01", &e.to_string()).await;
                    // A malformed command, answered by dbmux with an error.
                    self.shared
                        .metrics
                        .record(M_LOCAL, metrics::ERROR, started.elapsed());
                    if sent.is_err() {
                        return;
                    }
                    continue;
                }
            };
            if cmd == Command::Quit {
                return;
            }
            let started = Instant::now();
            self.answered_err = false;
            let result = self.dispatch(cmd, pkt.payload).await;
            self.handle.idle();
            let outcome = match &result {
                Ok(Some(r)) if self.answered_err => Some((*r, metrics::ERROR)),
                Ok(Some(r)) => Some((*r, metrics::OK)),
                Ok(None) | Err(Fail::Client(_)) => None,
                Err(Fail::Sql(_)) => Some((M_MASTER, metrics::ERROR)),
                Err(Fail::MasterBroken(_) | Fail::MasterUnavailable(_)) => Some((M_MASTER, metrics::FAILED)),
                Err(Fail::ReplicaBrokeMidReply(_)) => Some((M_REPLICA, metrics::FAILED)),
                // `KILL` of the session's own connection: carried out, and
                // answered (as a server does) with error 1927.
                Err(Fail::Killed) => Some((M_LOCAL, metrics::ERROR)),
            };
            if let Some((route, outcome)) = outcome {
                self.shared.metrics.record(route, outcome, started.elapsed());
            }
            match result {
                Ok(_) => {}
                Err(Fail::Client(e)) => {
                    tracing::debug!(error = %e, "client connection failed");
                    return;
                }
                Err(Fail::Killed) => {
                    let _ = self
                        .reply_err(ER_CONNECTION_KILLED, "70100", "Connection was killed")
                        .await;
                    return;
                }
                Err(Fail::MasterBroken(e)) => {
                    tracing::warn!(error = %e, "master connection broke; ending the client session");
                    self.master = None;
                    let msg = "Connection was killed: dbmux lost this session's master connection \
                               (its transaction and session state are gone)";
                    let _ = self.reply_err(ER_CONNECTION_KILLED, "70100", msg).await;
                    return;
                }
                Err(Fail::ReplicaBrokeMidReply(e)) => {
                    tracing::warn!(error = %e, "replica broke in the middle of a reply; ending the client session");
                    return;
                }
                Err(Fail::Sql(e)) => {
                    if self.reply_err(e.code, "HY000", &e.message).await.is_err() {
                        return;
                    }
                }
                Err(Fail::MasterUnavailable(e)) => {
                    tracing::warn!(error = %e, "master unavailable for a client command");
                    let msg = "dbmux: the master is unavailable; try again later";
                    if self.reply_err(ER_UNKNOWN_ERROR, "HY000", msg).await.is_err() {
                        return;
                    }
                }
            }
            if self.handle.killed.load(Ordering::Relaxed) {
                let _ = self
                    .reply_err(ER_CONNECTION_KILLED, "70100", "Connection was killed")
                    .await;
                return;
            }
            if self.close_after {
                let _ = self.client.flush().await;
                return;
            }
        }
    }

    /// Runs one command; returns the metrics route it took.
    async fn dispatch(&mut self, cmd: Command, payload: Bytes) -> Result<Option<usize>, Fail> {
        match cmd {
            Command::Quit => Ok(None),
            Command::Ping => {
                self.reply_ok().await?;
                Ok(Some(M_LOCAL))
            }
            Command::Query => self.query(payload).await.map(Some),
            Command::InitDb(db) => {
                let route = Route {
                    use_db: Some(db),
                    ..Route {
                        target: Target::Session,
                        write: false,
                        pin: None,
                        use_db: None,
                        charset: None,
                        autocommit: None,
                    }
                };
                self.session_setting(payload, route).await?;
                Ok(Some(M_SESSION))
            }
            Command::FieldList | Command::Statistics => {
                let reply = if cmd == Command::FieldList {
                    Reply::UntilEof
                } else {
                    Reply::One
                };
                self.run_on(Which::Master, &payload, reply, None).await?;
                self.client.flush().await?;
                Ok(Some(M_MASTER))
            }
            Command::StmtPrepare => self.prepare(payload).await.map(Some),
            Command::StmtExecute { stmt_id, flags } => self.execute(payload, stmt_id, flags).await.map(Some),
            Command::StmtSendLongData { stmt_id } => {
                self.long_data(stmt_id, payload);
                Ok(None)
            }
            Command::StmtClose { stmt_id } => {
                self.close_stmt(stmt_id).await;
                Ok(None)
            }
            Command::StmtReset { stmt_id } => self.reset_stmt(stmt_id, payload).await.map(Some),
            Command::SetOption(opt) => {
                self.multi_statements = opt == 0;
                for c in self.open_conns() {
                    if c.set_multi_statements(opt == 0).await.is_err() {
                        c.dirty = true;
                    }
                }
                // The server answers COM_SET_OPTION with an EOF packet.
                if self.caps & CLIENT_DEPRECATE_EOF != 0 {
                    let mut p = ok_payload(0, self.status());
                    p[0] = 0xFE;
                    self.client.send(1, &p).await?;
                } else {
                    let s = self.status().to_le_bytes();
                    self.client.send(1, &[0xFE, 0, 0, s[0], s[1]]).await?;
                }
                Ok(Some(M_LOCAL))
            }
            Command::ResetConnection => {
                self.reset_connection().await;
                self.reply_ok().await?;
                Ok(Some(M_LOCAL))
            }
            Command::ChangeUser => self.change_user(&payload).await.map(Some),
            Command::ProcessKill(id) => self.kill(id as u64, false).await.map(Some),
            Command::StmtFetch { .. } => {
                self.reply_err(
                    ER_NOT_SUPPORTED,
                    "42000",
                    "dbmux does not support server-side cursors",
                )
                .await?;
                Ok(Some(M_LOCAL))
            }
            Command::Unsupported(code) => {
                let msg = format!("Unknown command 0x{code:02x} (not supported by dbmux)");
                self.reply_err(ER_UNKNOWN_COM, "08S01", &msg).await?;
                Ok(Some(M_LOCAL))
            }
        }
    }

    async fn reply_ok(&mut self) -> std::io::Result<()> {
        let status = self.status();
        self.client.send(1, &ok_payload(0, status)).await.map(|_| ())
    }

    async fn reply_err(&mut self, code: u16, state: &str, msg: &str) -> std::io::Result<()> {
        self.answered_err = true;
        self.client
            .send(1, &err_payload(code, state, msg))
            .await
            .map(|_| ())
    }

    fn open_conns(&mut self) -> impl Iterator<Item = &mut BackendConn> {
        self.master
            .iter_mut()
            .chain(self.replica.iter_mut().map(|(_, c)| c))
    }

    // -----------------------------------------------------------------------
    // KILL

    /// `KILL [QUERY] id` / `COM_PROCESS_KILL`: `id` is a proxy session id.
    async fn kill(&mut self, id: u64, query: bool) -> Result<usize, Fail> {
        let target = u32::try_from(id).ok().and_then(|id| self.shared.session(id));
        let Some(target) = target else {
            self.reply_err(ER_NO_SUCH_THREAD, "HY000", &format!("Unknown thread id: {id}"))
                .await?;
            return Ok(M_LOCAL);
        };
        if target.user() != self.user.name {
            self.reply_err(
                ER_KILL_DENIED,
                "HY000",
                &format!("You are not owner of thread {id}"),
            )
            .await?;
            return Ok(M_LOCAL);
        }
        self.shared.metrics.kills.inc();
        if target.id == self.handle.id {
            // This session runs nothing else now; killing its connection ends it.
            if query {
                self.reply_ok().await?;
                return Ok(M_LOCAL);
            }
            return Err(Fail::Killed);
        }
        target.kill_query(&self.shared).await;
        if !query {
            target.kill_connection();
        }
        self.reply_ok().await?;
        Ok(M_LOCAL)
    }

    // -----------------------------------------------------------------------
    // Choosing a backend.

    /// The replica a plain read may go to now, if any. `ignore_autocommit`:
    /// `autocommit = 0` alone does not keep the read on the master (the
    /// master is unreachable and the session holds nothing there).
    fn read_replica(&mut self, ignore_autocommit: bool) -> Option<usize> {
        let sh = &self.shared;
        let in_txn = if ignore_autocommit {
            self.master_status & STATUS_IN_TRANS != 0
        } else {
            self.in_txn()
        };
        if self.pin.is_some()
            || in_txn
            || sh.replicas.is_empty()
            || self
                .replica_lacks_db
                .is_some_and(|t| t.elapsed() < LACKS_DB_RECHECK)
            || self.no_backslash_escapes
            || sh.master_health.no_backslash_escapes()
        {
            return None;
        }
        let usable = |i: usize| {
            let r = &sh.replicas[i];
            r.health.is_up()
                && !r.health.no_backslash_escapes()
                && lag_ok(&r.health, &sh.latest_seq, sh.cfg.max_replica_lag)
        };
        let idx = match &self.replica {
            Some((i, _)) if usable(*i) => *i,
            _ => {
                // Weighted by inverse latency: the ping chart.
                let candidates: Vec<(usize, f64)> = (0..sh.replicas.len())
                    .filter(|&i| usable(i))
                    .map(|i| (i, replica_weight(&sh.replicas[i].health, *sh.latest_seq.borrow())))
                    .collect();
                let total: f64 = candidates.iter().map(|c| c.1).sum();
                if candidates.is_empty() {
                    return None;
                }
                let mut x = rand::random::<f64>() * total;
                let mut pick = candidates[0].0;
                for (i, w) in &candidates {
                    pick = *i;
                    if x < *w {
                        break;
                    }
                    x -= w;
                }
                pick
            }
        };
        if self.user.consistency == Consistency::ReadYourWrites {
            // A write whose commit position is not captured yet (it may
            // still be open): nothing can prove a replica has it.
            if self.wrote || self.gtid_pending {
                sh.metrics.ryw_master_reads.inc();
                return None;
            }
            if let Some(g) = &self.last_write {
                if !sh.positions.covers(&sh.replicas[idx].name, g) {
                    sh.metrics.ryw_master_reads.inc();
                    return None;
                }
            }
        }
        Some(idx)
    }

    /// Where a plain read runs now: reads the GTID of the session's last
    /// write first when it is still pending (see [`Session::gtid_pending`]).
    async fn read_target(&mut self, ignore_autocommit: bool) -> Result<Which, Fail> {
        if self.gtid_pending && self.master.is_some() {
            // Only worth a round trip when a replica would take the read.
            self.gtid_pending = false;
            let candidate = self.read_replica(ignore_autocommit).is_some();
            self.gtid_pending = true;
            if !candidate {
                return Ok(Which::Master);
            }
            self.capture_gtid().await?;
        }
        Ok(self
            .read_replica(ignore_autocommit)
            .map(Which::Replica)
            .unwrap_or(Which::Master))
    }

    /// Reads `@@last_gtid` on the master connection for read-your-writes.
    async fn capture_gtid(&mut self) -> Result<(), Fail> {
        let Some(m) = self.master.as_mut() else {
            return Ok(());
        };
        let health = self.shared.master_health.clone();
        let r = tokio::select! {
            biased;
            r = m.query_value("SELECT @@last_gtid") => r,
            () = health.wait_down() => Err(BackendError::Frozen),
        };
        match r {
            Ok(Ok(v)) => {
                self.gtid_pending = false;
                self.last_write = v.and_then(|v| v.parse::<Gtid>().ok()).or(self.last_write);
                Ok(())
            }
            Ok(Err(_)) => Ok(()),
            Err(e) => {
                self.master = None;
                Err(Fail::MasterBroken(e))
            }
        }
    }

    /// Takes the connection for `which` out of the session (opening and
    /// setting one up if needed). Put it back with [`Session::give`].
    async fn take(&mut self, which: Which) -> Result<BackendConn, TakeError> {
        let (mut conn, fresh) = match which {
            Which::Master => match self.master.take() {
                Some(c) => (c, false),
                None => {
                    let mut c = self
                        .shared
                        .master
                        .get(self.key)
                        .await
                        .map_err(login_error(self.key.account))?;
                    // Never pooled again: a session can leave state on the
                    // master connection no rule here sees (`SET TRANSACTION`
                    // for the next transaction, session status, …).
                    c.dirty = true;
                    (c, true)
                }
            },
            Which::Replica(idx) => {
                let held = match self.replica.take() {
                    Some((i, c))
                        if i == idx && !c.is_stale() && self.shared.replicas[i].pool.is_current(&c) =>
                    {
                        Some(c)
                    }
                    Some((i, c)) => {
                        self.shared.replicas[i].pool.put(c);
                        None
                    }
                    None => None,
                };
                match held {
                    Some(c) => (c, false),
                    None => {
                        let key = PoolKey {
                            account: self.replica_account,
                            ..self.key
                        };
                        let mut c = self.shared.replicas[idx]
                            .pool
                            .get(key)
                            .await
                            .map_err(login_error(key.account))?;
                        if !c.read_only {
                            // A routing mistake must fail loudly on a
                            // replica, not change its data.
                            let s = c
                                .command(b"\x03SET SESSION TRANSACTION READ ONLY", Reply::ResultSets)
                                .await
                                .map_err(TakeError::Backend)?;
                            if let Some(e) = s.err {
                                return Err(TakeError::Sql(e));
                            }
                            c.read_only = true;
                        }
                        self.replica_gen += 1;
                        (c, true)
                    }
                }
            }
        };
        if conn.mask_as.as_ref() != Some(&self.mask_as) {
            conn.mask_as = Some(self.mask_as.clone());
        }
        if fresh {
            if conn.login_status & STATUS_NO_BACKSLASH_ESCAPES != 0 {
                self.no_backslash_escapes = true;
            }
            for s in &self.settings {
                conn.dirty = true;
                let sum = conn
                    .command(s, Reply::ResultSets)
                    .await
                    .map_err(TakeError::Backend)?;
                if let Some(e) = sum.err {
                    return Err(TakeError::Sql(e));
                }
            }
            if which == Which::Master && self.master_status & STATUS_AUTOCOMMIT == 0 {
                // The client turned autocommit off before there was a master
                // connection (answered by the proxy).
                let sum = conn
                    .command(b"\x03SET autocommit = 0", Reply::ResultSets)
                    .await
                    .map_err(TakeError::Backend)?;
                if let Some(e) = sum.err {
                    return Err(TakeError::Sql(e));
                }
            }
        }
        if let Some(db) = &self.db {
            if let Err(e) = conn.use_db(db).await.map_err(TakeError::Backend)? {
                if let (Which::Replica(i), ER_BAD_DB) = (which, e.code) {
                    self.replica_lacks_db = Some(Instant::now());
                    // A good connection (with the session's settings) that
                    // only lacks the database: kept, so the next try is one
                    // COM_INIT_DB, not a new login.
                    self.replica = Some((i, conn));
                }
                return Err(TakeError::Sql(e));
            }
        }
        conn.set_multi_statements(self.multi_statements)
            .await
            .map_err(TakeError::Backend)?;
        Ok(conn)
    }

    fn give(&mut self, which: Which, conn: BackendConn) {
        match which {
            Which::Master => self.master = Some(conn),
            Which::Replica(i) => self.replica = Some((i, conn)),
        }
    }

    /// Sends `payload` on `which` and relays the reply to the client (not
    /// flushed yet). Long-data chunks go first. While it waits, a backend
    /// the health check marks down (frozen) ends the wait.
    async fn exec(
        &mut self,
        which: Which,
        payload: &[u8],
        reply: Reply,
        rewrite: Option<u32>,
        long_data: &[Vec<u8>],
        stmt_id: Option<u32>,
    ) -> Result<Exec, Fail> {
        let flushes = self.client.flushes;
        let mark = self.client.wbuf.len();
        let health = self.health(which);
        // Whether the master connection holds state of this session now
        // (before `take` moves it out): losing it then ends the session.
        let held = self.master_held_state();
        let r = tokio::select! {
            biased;
            r = self.exec_on(which, payload, reply, rewrite, long_data, stmt_id) => r,
            () = health.wait_down() => Err(Err(BackendError::Frozen)),
        };
        match r {
            Ok((conn, sum)) => {
                self.answered_err |= sum.err.is_some();
                if sum.err.as_ref().is_some_and(|e| CLOSING_CODES.contains(&e.code)) {
                    // The server closes the connection after these: a
                    // client's oversized packet must not cost the next
                    // statement its backend (nor, once that fails, anyone
                    // the backend).
                    self.last = Some((which, self.replica_gen));
                    if which == Which::Master && held {
                        // With it went the session's state: end the session
                        // once the client has the server's error.
                        self.close_after = true;
                    }
                    return Ok(Exec::Done(sum));
                }
                if let Some(st) = sum.status {
                    self.no_backslash_escapes = st & STATUS_NO_BACKSLASH_ESCAPES != 0;
                }
                if which == Which::Master {
                    if let Some(s) = sum.status {
                        self.master_status = s;
                    }
                }
                self.give(which, conn);
                self.last = Some((which, self.replica_gen));
                Ok(Exec::Done(sum))
            }
            Err(Ok(TakeError::Sql(e))) => {
                if let Which::Replica(_) = which {
                    return Ok(Exec::Retry);
                }
                self.client.put(1, &err_payload(e.code, "HY000", &e.message));
                self.answered_err = true;
                Ok(Exec::Done(Summary {
                    err: Some(e),
                    ..Summary::default()
                }))
            }
            Err(Ok(TakeError::Backend(e))) => match which {
                Which::Replica(i) => {
                    let r = &self.shared.replicas[i];
                    tracing::warn!(replica = %r.name, error = %e, "replica unavailable");
                    if e.is_backend_down() {
                        r.health.mark_down();
                    } else {
                        r.health.probe();
                    }
                    Ok(Exec::Retry)
                }
                Which::Master if held => Err(Fail::MasterBroken(e)),
                Which::Master => Err(Fail::MasterUnavailable(e)),
            },
            // The client left mid-reply; the backend connection is in the
            // middle of a response and is dropped, the backend is fine.
            Err(Err(BackendError::Client(e))) => Err(Fail::Client(e)),
            Err(Err(e)) => match which {
                Which::Replica(i) => {
                    let r = &self.shared.replicas[i];
                    tracing::warn!(replica = %r.name, error = %e, "replica failed; reading from the master");
                    // One broken connection does not prove the replica is
                    // down (the server may have closed it because of what
                    // this session sent): only a failed health check does.
                    if e.is_backend_down() && !matches!(e, BackendError::Io(_)) {
                        r.health.mark_down();
                    } else {
                        r.health.probe();
                    }
                    if self.client.flushes != flushes {
                        return Err(Fail::ReplicaBrokeMidReply(e));
                    }
                    self.client.wbuf.truncate(mark);
                    Ok(Exec::Retry)
                }
                Which::Master => {
                    self.shared.master_health.probe();
                    if held || self.client.flushes != flushes {
                        Err(Fail::MasterBroken(e))
                    } else {
                        self.client.wbuf.truncate(mark);
                        Err(Fail::MasterUnavailable(e))
                    }
                }
            },
        }
    }

    /// The part of [`Session::exec`] that owns the backend connection
    /// while it works: on success it hands it back with the summary.
    async fn exec_on(
        &mut self,
        which: Which,
        payload: &[u8],
        reply: Reply,
        rewrite: Option<u32>,
        long_data: &[Vec<u8>],
        stmt_id: Option<u32>,
    ) -> Result<(BackendConn, Summary), Result<TakeError, BackendError>> {
        let mut conn = self.take(which).await.map_err(Ok)?;
        self.handle.set_running(which, &conn);
        for ld in long_data {
            conn.io.put(0, ld);
        }
        let sent = match stmt_id {
            Some(id) => conn.send_command_with_stmt_id(payload, id).await,
            None => conn.send_command(payload).await,
        };
        sent.map_err(Err)?;
        let sum = conn
            .relay(reply, Some(&mut self.client), false, rewrite)
            .await
            .map_err(Err)?;
        Ok((conn, sum))
    }

    /// True when the master connection carries session state a new
    /// connection would not have. (A pin without a master connection was set
    /// by the command now running: nothing is on a master yet.)
    fn master_held_state(&self) -> bool {
        self.master.is_some() || self.master_status & STATUS_IN_TRANS != 0
    }

    /// Runs on `which`; a replica failure falls back to the master.
    async fn run_on(
        &mut self,
        which: Which,
        payload: &[u8],
        reply: Reply,
        rewrite: Option<u32>,
    ) -> Result<(Which, Summary), Fail> {
        if let Which::Replica(_) = which {
            if let Exec::Done(s) = self.exec(which, payload, reply, rewrite, &[], None).await? {
                return Ok((which, s));
            }
            self.shared.metrics.replica_failovers.inc();
        }
        match self
            .exec(Which::Master, payload, reply, rewrite, &[], None)
            .await?
        {
            Exec::Done(s) => Ok((Which::Master, s)),
            Exec::Retry => unreachable!("the master is never retried"),
        }
    }

    /// A plain read: on a replica when one may take it; on the master
    /// otherwise, and — when the master is unreachable and the session holds
    /// nothing there (only `autocommit = 0`) — on a replica after all.
    async fn run_read(
        &mut self,
        payload: &[u8],
        reply: Reply,
        rewrite: Option<u32>,
    ) -> Result<(Which, Summary), Fail> {
        let which = self.read_target(false).await?;
        let (mark, err_mark) = (self.client.wbuf.len(), self.answered_err);
        match self.run_on(which, payload, reply, rewrite).await {
            Ok((Which::Replica(_), s))
                if !s.flushed && s.err.as_ref().is_some_and(|e| SCHEMA_LAG_CODES.contains(&e.code)) =>
            {
                // The replica's schema is behind the master's (a table or
                // column created moments ago, replicated with the stream):
                // the client never sees that error; the master answers, with
                // its own error if the object does not exist there either.
                self.client.wbuf.truncate(mark);
                self.answered_err = err_mark;
                self.shared.metrics.replica_failovers.inc();
                self.run_on(Which::Master, payload, reply, rewrite).await
            }
            Err(Fail::MasterUnavailable(e)) if which == Which::Master && !self.master_held_state() => {
                match self.read_replica(true) {
                    Some(i) => {
                        tracing::debug!(error = %e, "master unavailable; the read goes to a replica");
                        self.run_on(Which::Replica(i), payload, reply, rewrite).await
                    }
                    None => Err(Fail::MasterUnavailable(e)),
                }
            }
            r => r,
        }
    }

    /// After a reply from the master: once a write is committed, note that
    /// its GTID is to be read (lazily) for read-your-writes.
    fn after_master(&mut self) {
        if !self.wrote || self.in_txn() {
            return;
        }
        self.wrote = false;
        if self.user.consistency != Consistency::ReadYourWrites || self.shared.replicas.is_empty() {
            return;
        }
        self.gtid_pending = true;
    }

    fn metrics_route(w: Which) -> usize {
        match w {
            Which::Master => M_MASTER,
            Which::Replica(_) => M_REPLICA,
        }
    }

    /// The backend that ran the previous statement, if the session still
    /// holds that connection; else the master.
    fn last_backend(&self) -> Which {
        match self.last {
            Some((Which::Replica(i), gen))
                if gen == self.replica_gen && self.replica.as_ref().is_some_and(|r| r.0 == i) =>
            {
                Which::Replica(i)
            }
            _ => Which::Master,
        }
    }

    // -----------------------------------------------------------------------
    // Commands.

    async fn query(&mut self, payload: Bytes) -> Result<usize, Fail> {
        let route = classify_cached(&payload[1..], self.charset);
        if let Target::Local(l) = route.target {
            return self.local(l).await;
        }
        if let Some(p) = route.pin {
            self.pin.get_or_insert(p);
        }
        if route.write {
            self.wrote = true;
        }
        if let Some(on) = route.autocommit {
            if self.master.is_none() {
                // A setting of the master connection, which this session
                // does not have yet: answered here, replayed when it does
                // (so drivers that set it at connect work while the master
                // is down).
                if on {
                    self.master_status |= STATUS_AUTOCOMMIT;
                } else {
                    self.master_status &= !STATUS_AUTOCOMMIT;
                }
                self.reply_ok().await?;
                return Ok(M_LOCAL);
            }
        }
        let ran = match route.target {
            Target::Session => {
                let charset = route.charset;
                let ok = self.session_setting(payload, route).await?;
                if let (true, Some(cs)) = (ok, charset) {
                    self.charset = cs;
                }
                return Ok(M_SESSION);
            }
            Target::Master => {
                self.run_on(Which::Master, &payload, Reply::ResultSets, None)
                    .await?
                    .0
            }
            Target::Last => {
                let which = self.last_backend();
                self.run_on(which, &payload, Reply::ResultSets, None).await?.0
            }
            Target::Replica => match self.cache_plan(&payload[1..], false, &[]) {
                None => self.run_read(&payload, Reply::ResultSets, None).await?.0,
                Some(plan) => match self.cache_lookup(&plan).await? {
                    CacheStep::Hit => return Ok(M_CACHE),
                    CacheStep::Bypass(_) => self.run_read(&payload, Reply::ResultSets, None).await?.0,
                    CacheStep::Fill { idx, seq } => {
                        let (mark, flushes) = (self.client.wbuf.len(), self.client.flushes);
                        let (ran, sum) = self
                            .run_on(Which::Replica(idx), &payload, Reply::ResultSets, None)
                            .await?;
                        if let (Which::Replica(i), None, Some(seq)) = (ran, &sum.err, seq) {
                            if i == idx && self.client.flushes == flushes {
                                self.spawn_fill(plan, seq, mark);
                            }
                        }
                        ran
                    }
                },
            },
            Target::Local(_) => unreachable!("answered above"),
        };
        if let Some(cs) = route.charset {
            // A character set change inside a master-only text: what the
            // master connection reads in is not known for sure any more.
            self.charset = cs;
        }
        self.client.flush().await?;
        if ran == Which::Master {
            self.after_master();
        }
        Ok(Self::metrics_route(ran))
    }

    /// A statement the proxy answers itself.
    async fn local(&mut self, l: Local) -> Result<usize, Fail> {
        match l {
            Local::Kill { query, id } => self.kill(id, query).await,
            Local::Refuse(why) => {
                self.reply_err(ER_NOT_SUPPORTED, "42000", why).await?;
                Ok(M_LOCAL)
            }
        }
    }

    /// A setting (or `USE`/`COM_INIT_DB`) runs on every open connection; the
    /// first one's reply goes to the client. With none open, it runs where a
    /// read would (a `USE` the replica refuses is tried on the master, which
    /// has every database). Returns whether it succeeded.
    async fn session_setting(&mut self, payload: Bytes, route: Route) -> Result<bool, Fail> {
        let mut answered: Option<Summary> = None;
        if self.master.is_some() {
            let (_, s) = self
                .run_on(Which::Master, &payload, Reply::ResultSets, None)
                .await?;
            answered = Some(s);
        }
        if let Some((idx, _)) = &self.replica {
            let idx = *idx;
            match &answered {
                Some(s) if s.err.is_some() => {}
                Some(_) => {
                    // Already answered: apply silently; a connection that
                    // cannot take it is dropped (a new one replays the list).
                    let (i, mut c) = self.replica.take().expect("checked");
                    match c.command(&payload, Reply::ResultSets).await {
                        Ok(s) if s.err.is_none() => {
                            c.dirty = true;
                            self.replica = Some((i, c));
                        }
                        _ => {}
                    }
                }
                None => {
                    let (mark, err_mark) = (self.client.wbuf.len(), self.answered_err);
                    let (_, s) = self
                        .run_on(Which::Replica(idx), &payload, Reply::ResultSets, None)
                        .await?;
                    if s.err.is_some() && route.use_db.is_some() {
                        // The client never sees the replica's error.
                        self.client.wbuf.truncate(mark);
                        self.answered_err = err_mark;
                        self.replica = None;
                        self.replica_lacks_db = Some(Instant::now());
                        let (_, s) = self
                            .run_on(Which::Master, &payload, Reply::ResultSets, None)
                            .await?;
                        answered = Some(s);
                    } else {
                        answered = Some(s);
                    }
                }
            }
        }
        let sum = match answered {
            Some(s) => s,
            None => {
                if route.use_db.is_some() {
                    self.replica_lacks_db = None;
                }
                let which = self.read_target(false).await?;
                let (mark, err_mark) = (self.client.wbuf.len(), self.answered_err);
                let (ran, s) = self.run_on(which, &payload, Reply::ResultSets, None).await?;
                if s.err.is_some() && ran != Which::Master && route.use_db.is_some() {
                    // The replica lacks the database; the master decides.
                    self.client.wbuf.truncate(mark);
                    self.answered_err = err_mark;
                    self.replica = None;
                    let (_, s) = self
                        .run_on(Which::Master, &payload, Reply::ResultSets, None)
                        .await?;
                    if s.err.is_none() {
                        self.replica_lacks_db = Some(Instant::now());
                    }
                    s
                } else {
                    s
                }
            }
        };
        self.client.flush().await?;
        if sum.err.is_some() {
            return Ok(false);
        }
        for c in self.open_conns() {
            c.dirty = true;
        }
        if let Some(db) = route.use_db {
            if self.db.as_deref() != Some(db.as_str()) && self.replica.is_some() {
                // A replica connection that took the USE has the database.
                self.replica_lacks_db = None;
            }
            for c in self.open_conns() {
                c.db = Some(db.clone());
            }
            self.db = Some(db);
        } else {
            self.settings.retain(|s| *s != payload);
            // A copy: the payload shares the allocation of the read buffer
            // it was cut from, which it would keep alive.
            self.settings.push(Bytes::copy_from_slice(&payload));
            if self.settings.len() > MAX_SETTINGS {
                self.pin.get_or_insert("too many session settings");
            }
        }
        Ok(true)
    }

    async fn prepare(&mut self, payload: Bytes) -> Result<usize, Fail> {
        let route = classify_cached(&payload[1..], self.charset);
        match route.target {
            Target::Local(Local::Refuse(why)) => {
                self.reply_err(ER_NOT_SUPPORTED, "42000", why).await?;
                return Ok(M_LOCAL);
            }
            Target::Local(Local::Kill { .. }) => {
                self.reply_err(
                    ER_NOT_SUPPORTED,
                    "42000",
                    "dbmux does not prepare KILL; send it as a query",
                )
                .await?;
                return Ok(M_LOCAL);
            }
            _ => {}
        }
        if self.stmts.len() >= MAX_STATEMENTS {
            let msg = format!(
                "Can't create more than max_prepared_stmt_count statements (current value: {MAX_STATEMENTS})"
            );
            self.reply_err(ER_MAX_PREPARED_STMT_COUNT_REACHED, "42000", &msg)
                .await?;
            return Ok(M_LOCAL);
        }
        // The text is kept for preparing it again on another backend.
        let text = if payload.len() > super::memory::UNCOUNTED {
            match self.shared.memory.take(payload.len()) {
                Some(l) => Some(l),
                None => {
                    self.shared.metrics.packets_refused.inc();
                    self.reply_err(
                        ER_OUT_OF_RESOURCES,
                        "HY000",
                        "Out of memory: dbmux's max_memory is in use",
                    )
                    .await?;
                    return Ok(M_LOCAL);
                }
            }
        } else {
            None
        };
        let id = self.next_stmt;
        self.next_stmt = self.next_stmt.wrapping_add(1).max(1);
        let which = match route.target {
            Target::Replica => self.read_target(false).await?,
            Target::Last => self.last_backend(),
            _ => Which::Master,
        };
        let (ran, sum) = self.run_on(which, &payload, Reply::Prepare, Some(id)).await?;
        self.client.flush().await?;
        if let Some((backend_id, _cols, params)) = sum.prepared {
            let mut stmt = Stmt {
                route,
                params,
                master: None,
                replica: None,
                param_types: None,
                long_data: Vec::new(),
                long_data_len: 0,
                long_data_overflow: false,
                // Copied for the same reason as settings.
                sql: Bytes::copy_from_slice(&payload[1..]),
                _text: text,
            };
            match ran {
                Which::Master => {
                    stmt.master = Some((backend_id, false));
                    if let Some(m) = self.master.as_mut() {
                        m.dirty = true;
                    }
                }
                Which::Replica(_) => {
                    stmt.replica = Some((self.replica_gen, backend_id, false));
                    if let Some((_, c)) = self.replica.as_mut() {
                        c.dirty = true;
                    }
                }
            }
            self.stmts.insert(id, stmt);
        }
        Ok(Self::metrics_route(ran))
    }

    /// `COM_STMT_SEND_LONG_DATA`: kept for the next execution, up to
    /// `max_allowed_packet` bytes per statement (as a server does).
    fn long_data(&mut self, id: u32, payload: Bytes) {
        let max = self.shared.cfg.max_allowed_packet;
        let memory = self.shared.memory.clone();
        let Some(s) = self.stmts.get_mut(&id) else {
            return;
        };
        if s.long_data_overflow {
            return;
        }
        let lease = memory.take(payload.len());
        if s.long_data_len + payload.len() > max || lease.is_none() {
            // Nothing is answered to this command; the execution reports it.
            s.long_data_overflow = true;
            s.long_data.clear();
            s.long_data_len = 0;
            self.shared.metrics.packets_refused.inc();
            return;
        }
        s.long_data_len += payload.len();
        s.long_data.push((Bytes::copy_from_slice(&payload), lease));
    }

    /// The backend statement id of `id` on `which`, preparing it there first
    /// if needed. `Ok(None)`: the replica is unusable, use the master.
    async fn ensure_prepared(&mut self, id: u32, which: Which) -> Result<Option<(u32, bool)>, Fail> {
        // A replica connection that died since its last use is replaced by
        // `take`; drop it here so the statement is prepared on the new one.
        if let Some((i, c)) = &self.replica {
            if c.is_stale() || !self.shared.replicas[*i].pool.is_current(c) {
                self.replica = None;
            }
        }
        let stmt = &self.stmts[&id];
        match which {
            Which::Master => {
                if let Some(x) = stmt.master {
                    return Ok(Some(x));
                }
            }
            Which::Replica(i) => {
                if let (Some((gen, bid, types)), Some((ri, _))) = (stmt.replica, &self.replica) {
                    if gen == self.replica_gen && *ri == i {
                        return Ok(Some((bid, types)));
                    }
                }
            }
        }
        let mut p = Vec::with_capacity(stmt.sql.len() + 1);
        p.push(command::COM_STMT_PREPARE);
        p.extend_from_slice(&stmt.sql);
        let health = self.health(which);
        let held = self.master_held_state();
        let taken = tokio::select! {
            biased;
            r = self.take(which) => r,
            () = health.wait_down() => Err(TakeError::Backend(BackendError::Frozen)),
        };
        let mut conn = match taken {
            Ok(c) => c,
            Err(TakeError::Backend(e)) => {
                return match which {
                    Which::Replica(i) => {
                        let h = &self.shared.replicas[i].health;
                        if e.is_backend_down() {
                            h.mark_down();
                        } else {
                            h.probe();
                        }
                        Ok(None)
                    }
                    Which::Master if held => Err(Fail::MasterBroken(e)),
                    Which::Master => Err(Fail::MasterUnavailable(e)),
                }
            }
            Err(TakeError::Sql(_)) if which != Which::Master => return Ok(None),
            Err(TakeError::Sql(e)) => {
                return Err(Fail::Sql(e));
            }
        };
        let r = tokio::select! {
            biased;
            r = conn.command(&p, Reply::Prepare) => r,
            () = health.wait_down() => Err(BackendError::Frozen),
        };
        conn.dirty = true;
        let bid = match r {
            Ok(Summary {
                prepared: Some((bid, _, _)),
                ..
            }) => {
                self.give(which, conn);
                bid
            }
            Ok(s) => {
                // The statement no longer prepares (schema changed): report it.
                self.give(which, conn);
                let e = s.err.unwrap_or(ErrPacket {
                    code: ER_UNKNOWN_ERROR,
                    message: "prepare failed".into(),
                });
                if which != Which::Master {
                    return Ok(None);
                }
                return Err(Fail::Sql(e));
            }
            Err(e) => {
                return match which {
                    Which::Replica(i) => {
                        self.shared.replicas[i].health.probe();
                        Ok(None)
                    }
                    Which::Master => Err(Fail::MasterBroken(e)),
                }
            }
        };
        let stmt = self.stmts.get_mut(&id).expect("exists");
        match which {
            Which::Master => stmt.master = Some((bid, false)),
            Which::Replica(_) => stmt.replica = Some((self.replica_gen, bid, false)),
        }
        Ok(Some((bid, false)))
    }

    async fn execute(&mut self, payload: Bytes, id: u32, flags: u8) -> Result<usize, Fail> {
        let Some(stmt) = self.stmts.get_mut(&id) else {
            let msg = format!("Unknown prepared statement handler ({id}) given to mysqld_stmt_execute");
            self.reply_err(ER_UNKNOWN_STMT, "HY000", &msg).await?;
            return Ok(M_LOCAL);
        };
        if flags != 0 {
            self.reply_err(
                ER_NOT_SUPPORTED,
                "42000",
                "dbmux does not support server-side cursors",
            )
            .await?;
            return Ok(M_LOCAL);
        }
        if std::mem::take(&mut stmt.long_data_overflow) {
            let msg =
                "Parameter of prepared statement which is set through mysql_send_long_data() is longer \
                       than 'max_allowed_packet' bytes";
            self.reply_err(handshake::ER_NET_PACKET_TOO_LARGE, "HY000", msg)
                .await?;
            return Ok(M_LOCAL);
        }
        // Remember the parameter types the first execution carries.
        let n = stmt.params as usize;
        let bound_at = 10 + n.div_ceil(8);
        let bound = n > 0 && payload.get(bound_at) == Some(&1);
        if bound {
            if let Some(t) = payload.get(bound_at + 1..bound_at + 1 + 2 * n) {
                // Clients re-send the same types with every execution: copy
                // them only when they change.
                if stmt.param_types.as_deref() != Some(t) {
                    stmt.param_types = Some(t.to_vec());
                }
            }
        }
        let (target, write, pin) = (stmt.route.target, stmt.route.write, stmt.route.pin);
        let long_data = std::mem::take(&mut stmt.long_data);
        stmt.long_data_len = 0;
        if let Some(p) = pin {
            self.pin.get_or_insert(p);
        }
        if write {
            self.wrote = true;
        }
        let mut fill: Option<(CachePlan, usize, u64)> = None;
        let plan = match target {
            Target::Replica if long_data.is_empty() => self.stmt_cache_plan(id, &payload, n, bound),
            _ => None,
        };
        let mut which = match (target, plan) {
            (Target::Replica, Some(plan)) => match self.cache_lookup(&plan).await? {
                CacheStep::Hit => return Ok(M_CACHE),
                CacheStep::Bypass(w) => w,
                CacheStep::Fill { idx, seq } => {
                    if let Some(seq) = seq {
                        fill = Some((plan, idx, seq));
                    }
                    Which::Replica(idx)
                }
            },
            (Target::Replica, None) => self.read_target(false).await?,
            (Target::Last, _) => self.last_backend(),
            _ => Which::Master,
        };
        let (mark, flushes) = (self.client.wbuf.len(), self.client.flushes);
        let answered_ok;
        loop {
            let Some((bid, types_sent)) = self.ensure_prepared(id, which).await? else {
                self.shared.metrics.replica_failovers.inc();
                which = Which::Master;
                continue;
            };
            let stmt = &self.stmts[&id];
            // Usually the client's payload goes out as it is, with only the
            // statement id replaced while it is buffered for the backend.
            let with_types = with_param_types(&payload, n, bound, types_sent, stmt.param_types.as_deref());
            let body = with_types.as_deref().unwrap_or(&payload);
            let chunks: Vec<Vec<u8>> = long_data
                .iter()
                .map(|(c, _)| command::with_stmt_id(c, bid))
                .collect();
            match self
                .exec(which, body, Reply::ResultSets, None, &chunks, Some(bid))
                .await?
            {
                Exec::Done(sum) => {
                    answered_ok = sum.err.is_none();
                    if n > 0 && (bound || types_sent) {
                        let stmt = self.stmts.get_mut(&id).expect("exists");
                        match which {
                            Which::Master => stmt.master = Some((bid, true)),
                            Which::Replica(_) => {
                                if let Some(r) = stmt.replica.as_mut() {
                                    r.2 = true;
                                }
                            }
                        }
                    }
                    break;
                }
                Exec::Retry => {
                    self.shared.metrics.replica_failovers.inc();
                    which = Which::Master;
                }
            }
        }
        if let Some((plan, idx, seq)) = fill {
            if answered_ok && which == Which::Replica(idx) && self.client.flushes == flushes {
                self.spawn_fill(plan, seq, mark);
            }
        }
        self.client.flush().await?;
        if which == Which::Master {
            self.after_master();
        }
        Ok(Self::metrics_route(which))
    }

    // -----------------------------------------------------------------------
    // The result cache (see `super::cache` and docs/cache.md).

    /// The cache plan of a statement text the router sends to a replica,
    /// when the cache is in use and the configuration caches it.
    /// `params`: an execution's parameter types and values.
    fn cache_plan(&self, text: &[u8], binary: bool, params: &[u8]) -> Option<CachePlan> {
        use super::cache::classify::{analyze, Verdict};
        let cache = self.shared.cache.as_ref()?;
        if !cache.available() || self.no_backslash_escapes {
            return None;
        }
        let a = analyze(text, self.charset)?;
        let Verdict::Cacheable(tables) = &a.verdict else {
            tracing::debug!(verdict = ?a.verdict, "cache: not cacheable");
            return None;
        };
        if (cache.cfg.hint_only && !a.hinted) || !cache.cfg.covers_statement(&a.shape) {
            return None;
        }
        let mut resolved = Vec::with_capacity(tables.len());
        for t in tables {
            let db = t.db.as_deref().or(self.db.as_deref())?;
            if !cache.cfg.covers_table(db, &t.name) {
                return None;
            }
            resolved.push((db.to_string(), t.name.clone()));
        }
        let statement = super::cache::normalize(text);
        let hash = super::cache::KeyParts {
            db: self.db.as_deref(),
            statement: &statement,
            binary,
            params,
            caps: self.key.caps,
            collation: self.key.collation,
            account: self.replica_account,
            settings: &self.settings,
        }
        .hash();
        Some(CachePlan {
            hash,
            tables: resolved,
        })
    }

    /// The cache plan of an execution of prepared statement `id`: keyed by
    /// its text, parameter types and values (`n` parameters; `bound`: the
    /// payload carries the types).
    fn stmt_cache_plan(&self, id: u32, payload: &[u8], n: usize, bound: bool) -> Option<CachePlan> {
        let stmt = self.stmts.get(&id)?;
        let mut params = Vec::new();
        if n > 0 {
            let nulls = payload.get(10..10 + n.div_ceil(8))?;
            let values_at = 10 + n.div_ceil(8) + 1 + if bound { 2 * n } else { 0 };
            let types = stmt.param_types.as_deref()?;
            params.extend_from_slice(&(types.len() as u32).to_le_bytes());
            params.extend_from_slice(types);
            params.extend_from_slice(nulls);
            params.extend_from_slice(payload.get(values_at..)?);
        }
        self.cache_plan(&stmt.sql, true, &params)
    }

    /// Looks a planned read up. Runs only where a plain read would go to a
    /// replica now (outside transactions, not pinned, the session's own
    /// writes applied there): a hit is sent to the client.
    async fn cache_lookup(&mut self, plan: &CachePlan) -> Result<CacheStep, Fail> {
        let which = self.read_target(false).await?;
        let Which::Replica(idx) = which else {
            tracing::debug!("cache: the read goes to the master");
            return Ok(CacheStep::Bypass(which));
        };
        let Some(cache) = self.shared.cache.clone() else {
            return Ok(CacheStep::Bypass(which));
        };
        // Read before the statement runs: the replica's state when it runs
        // includes at least this.
        let Some(seq) = self.shared.replicas[idx].health.applied_seq() else {
            return Ok(CacheStep::Bypass(which));
        };
        let Some(floor) = self.ryw_floor(idx) else {
            return Ok(CacheStep::Bypass(which));
        };
        match cache.lookup(&plan.hash, &plan.tables, floor, seq).await {
            Some(super::cache::Lookup::Hit(blob)) => {
                self.client.wbuf.extend_from_slice(&blob);
                self.client.flush().await?;
                // `SHOW WARNINGS` and friends run on the master from here.
                self.last = None;
                Ok(CacheStep::Hit)
            }
            Some(super::cache::Lookup::Miss) => Ok(CacheStep::Fill { idx, seq: Some(seq) }),
            None => Ok(CacheStep::Bypass(which)),
        }
    }

    /// The replica `seq` a cached result must reach for this session: 0
    /// without read-your-writes or without a write; else a `seq` of replica
    /// `idx` known to include the session's last write (`read_replica` has
    /// just checked that `idx` covers it; the health check stores a
    /// replica's applied `seq` before its GTID set, both read in that order,
    /// so the `seq` read after the GTID check includes the write).
    fn ryw_floor(&mut self, idx: usize) -> Option<u64> {
        if self.user.consistency != Consistency::ReadYourWrites {
            return Some(0);
        }
        let Some(g) = self.last_write else {
            return Some(0);
        };
        if let Some((w, s)) = self.ryw_floor {
            if w == g {
                return Some(s);
            }
        }
        let s = self.shared.replicas[idx].health.applied_seq()?;
        self.ryw_floor = Some((g, s));
        Some(s)
    }

    /// Stores the reply buffered since `mark` (not sent yet) in the
    /// background: the client does not wait for Redis.
    fn spawn_fill(&self, plan: CachePlan, seq: u64, mark: usize) {
        let Some(cache) = self.shared.cache.clone() else {
            return;
        };
        let Some(blob) = self.client.wbuf.get(mark..) else {
            return;
        };
        if blob.is_empty() || blob.len() > cache.cfg.max_result_bytes || !cache.reserve_fill(blob.len()) {
            return;
        }
        let blob = blob.to_vec();
        tokio::spawn(async move {
            cache.fill(&plan.hash, &plan.tables, seq, &blob).await;
            cache.filled(blob.len());
        });
    }

    async fn close_stmt(&mut self, id: u32) {
        let Some(stmt) = self.stmts.remove(&id) else {
            return;
        };
        if let (Some((bid, _)), Some(m)) = (stmt.master, self.master.as_mut()) {
            let _ = m
                .send_command(&command::with_stmt_id(
                    &[command::COM_STMT_CLOSE, 0, 0, 0, 0],
                    bid,
                ))
                .await;
        }
        if let (Some((gen, bid, _)), Some((_, c))) = (stmt.replica, self.replica.as_mut()) {
            if gen == self.replica_gen {
                let _ = c
                    .send_command(&command::with_stmt_id(
                        &[command::COM_STMT_CLOSE, 0, 0, 0, 0],
                        bid,
                    ))
                    .await;
            }
        }
    }

    async fn reset_stmt(&mut self, id: u32, payload: Bytes) -> Result<usize, Fail> {
        let Some(stmt) = self.stmts.get_mut(&id) else {
            let msg = format!("Unknown prepared statement handler ({id}) given to mysqld_stmt_reset");
            self.reply_err(ER_UNKNOWN_STMT, "HY000", &msg).await?;
            return Ok(M_LOCAL);
        };
        stmt.long_data.clear();
        stmt.long_data_len = 0;
        stmt.long_data_overflow = false;
        let (m, r) = (stmt.master, stmt.replica);
        if let (Some((bid, _)), Some(c)) = (m, self.master.as_mut()) {
            if let Err(e) = c.command(&command::with_stmt_id(&payload, bid), Reply::One).await {
                return Err(Fail::MasterBroken(e));
            }
        }
        if let (Some((gen, bid, _)), Some((_, c))) = (r, self.replica.as_mut()) {
            if gen == self.replica_gen
                && c.command(&command::with_stmt_id(&payload, bid), Reply::One)
                    .await
                    .is_err()
            {
                self.replica = None;
            }
        }
        self.reply_ok().await?;
        Ok(M_LOCAL)
    }

    /// `COM_CHANGE_USER`: authenticate again (always through an auth switch
    /// with a fresh nonce), then start over as a new session of that user.
    /// A failed attempt ends the connection, as on a server.
    async fn change_user(&mut self, payload: &[u8]) -> Result<usize, Fail> {
        let Some(cu) = handshake::parse_change_user(payload, self.caps) else {
            self.reply_err(handshake::ER_HANDSHAKE, "08S01", "Bad COM_CHANGE_USER packet")
                .await?;
            return Ok(M_LOCAL);
        };
        let login = handshake::Login {
            user: &cu.user,
            caps: self.caps,
            plugin: cu.plugin.as_deref(),
            auth: cu.auth.clone(),
        };
        let shared = self.shared.clone();
        match handshake::authenticate(&mut self.client, &shared.cfg, login, handshake::nonce(), 1, true).await
        {
            Ok(user) => {
                self.release();
                self.reset_state();
                let (m, r) = shared.accounts.get(&user.name).copied().unwrap_or((0, 0));
                self.key.account = m;
                self.replica_account = r;
                self.handle.set_user(&user.name);
                self.mask_as = user.name.as_str().into();
                self.user = user;
                self.db = cu.db;
                if let Some(c) = cu.collation {
                    self.key.collation = c;
                }
                self.charset = ClientCharset::from_collation(self.key.collation as u16);
                Ok(M_LOCAL)
            }
            Err(HandshakeError::Io(e)) => Err(Fail::Client(e)),
            Err(e) => {
                self.shared.metrics.auth_failures.inc();
                Err(Fail::Client(std::io::Error::other(format!(
                    "COM_CHANGE_USER refused: {e}"
                ))))
            }
        }
    }

    /// Forgets everything the session set up (not the connections).
    fn reset_state(&mut self) {
        self.ryw_floor = None;
        self.settings.clear();
        self.stmts.clear();
        self.pin = None;
        self.wrote = false;
        self.gtid_pending = false;
        self.last = None;
        self.replica_lacks_db = None;
        self.master_status = STATUS_AUTOCOMMIT;
        self.multi_statements = self.caps & CLIENT_MULTI_STATEMENTS != 0;
        self.no_backslash_escapes = false;
        self.charset = ClientCharset::from_collation(self.key.collation as u16);
    }

    async fn reset_connection(&mut self) {
        if let Some(mut m) = self.master.take() {
            if m.reset().await.is_ok() {
                m.dirty = true;
                self.master = Some(m);
            }
        }
        if let Some((i, c)) = self.replica.take() {
            self.shared.replicas[i].pool.put(c);
        }
        let db = self.db.take();
        self.reset_state();
        // COM_RESET_CONNECTION keeps the database.
        self.db = db;
    }

    /// Gives the backend connections back at the end of the session.
    fn release(&mut self) {
        if let Some(mut m) = self.master.take() {
            if self.pin.is_some() || self.in_txn() {
                m.dirty = true;
            }
            self.shared.master.put(m);
        }
        if let Some((i, c)) = self.replica.take() {
            self.shared.replicas[i].pool.put(c);
        }
    }
}

/// A failure to open a backend connection: a login refused for reasons of
/// the session's own (its character set, …) is that session's SQL error,
/// reported to it as the server's answer; a login refused for the user's own
/// backend account is that user's problem, reported without naming the
/// account; everything else is the backend's.
fn login_error(account: u16) -> impl Fn(BackendError) -> TakeError {
    move |e| match e {
        BackendError::Login(err) if !BackendError::Login(err.clone()).is_backend_down() => {
            TakeError::Sql(err)
        }
        BackendError::Login(err) if account != 0 => {
            tracing::warn!(account, code = err.code, error = %err.message, "the backend refused a user's own backend account");
            TakeError::Sql(ErrPacket {
                code: ER_UNKNOWN_ERROR,
                message: "dbmux: the backend refused this user's backend account (see the dbmux log)".into(),
            })
        }
        e => TakeError::Backend(e),
    }
}
/// How much read traffic a usable replica should get, relative to the
/// others: inversely proportional to its measured ping latency (the "ping
/// chart") and shrinking with its replication lag in `seq` (unknown lag
/// counts as none).
fn replica_weight(h: &super::health::BackendHealth, latest_seq: u64) -> f64 {
    let latency = h.latency_us() as f64 + 50.0;
    let lag = match h.applied_seq() {
        Some(applied) if latest_seq > 0 => latest_seq.saturating_sub(applied) as f64,
        _ => 0.0,
    };
    1.0 / (latency * (1.0 + lag / 100.0))
}

/// A `COM_STMT_EXECUTE` payload with the parameter types added, for a
/// backend that has not seen them (the client sent them with an earlier
/// execution only); `None` when the client's payload can go as it is. The
/// statement id is replaced when the payload is sent.
fn with_param_types(
    payload: &[u8],
    n: usize,
    bound: bool,
    types_sent: bool,
    types: Option<&[u8]>,
) -> Option<Vec<u8>> {
    let bound_at = 10 + n.div_ceil(8);
    match types {
        Some(t) if n > 0 && !bound && !types_sent && payload.len() > bound_at => {
            let mut p = Vec::with_capacity(payload.len() + t.len());
            p.extend_from_slice(&payload[..bound_at]);
            p.push(1);
            p.extend_from_slice(t);
            p.extend_from_slice(&payload[bound_at + 1..]);
            Some(p)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_weights_follow_latency_and_lag() {
        use super::super::health::BackendHealth;
        let fast = BackendHealth::new("fast");
        let slow = BackendHealth::new("slow");
        for _ in 0..50 {
            fast.record_latency(Duration::from_micros(100));
            slow.record_latency(Duration::from_micros(1000));
        }
        assert!(replica_weight(&fast, 0) > 5.0 * replica_weight(&slow, 0));
        // Lag shrinks the weight; unknown latest seq means no lag.
        fast.set_applied_seq(1000);
        assert_eq!(replica_weight(&fast, 0), replica_weight(&fast, 1000));
        assert!(replica_weight(&fast, 1500) < replica_weight(&fast, 1000) / 5.0);
    }

    #[test]
    fn execute_gets_types_added_for_a_new_backend() {
        // id 7, flags 0, iteration 1, 1 param: null bitmap 0, bound 0, value i32 5
        let mut p = vec![0x17, 7, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0];
        p.extend_from_slice(&5i32.to_le_bytes());
        let out = with_param_types(&p, 1, false, false, Some(&[3, 0])).unwrap();
        assert_eq!(&out[..11], &p[..11]);
        assert_eq!(&out[11..14], &[1, 3, 0]);
        assert_eq!(&out[14..], &5i32.to_le_bytes());
        // Types already known to that backend, or sent by the client: untouched.
        assert_eq!(with_param_types(&p, 1, false, true, Some(&[3, 0])), None);
        assert_eq!(with_param_types(&out, 1, true, false, Some(&[3, 0])), None);
        // The statement id is replaced as the payload is buffered, frame header first.
        let mut io = PacketIo::new(tokio::io::duplex(64).0);
        io.put_with_stmt_id(0, &out, 9);
        assert_eq!(&io.wbuf[..4], &[out.len() as u8, 0, 0, 0]);
        assert_eq!(&io.wbuf[5..9], &9u32.to_le_bytes());
        assert_eq!(&io.wbuf[9..], &out[5..]);
    }
}
