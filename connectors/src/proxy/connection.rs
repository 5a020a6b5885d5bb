//! One client session: the command loop.
//!
//! # Prepared statements
//! The proxy hands out its own statement ids. A statement is prepared on the
//! backend where it first runs and, lazily, on any other backend it is later
//! sent to (a read prepared on a replica runs on the master while the session
//! waits for its own write to replicate). Parameter types, which a client
//! sends only with the first execution, are remembered and re-sent to a
//! backend that has not seen them. `COM_STMT_SEND_LONG_DATA` chunks are
//! buffered and replayed just before the execution they belong to.
//!
//! # Unsupported
//! Server-side cursors (`COM_STMT_EXECUTE` with cursor flags, `COM_STMT_FETCH`),
//! replication commands and LOCAL INFILE get an ERR packet.

use super::backend::{BackendConn, BackendError, PoolKey, Reply, Summary};
use super::command::{self, Command};
use super::config::{Consistency, UserConfig};
use super::handshake::{self, ClientStream, HandshakeError, CLIENT_DEPRECATE_EOF, CLIENT_MULTI_STATEMENTS};
use super::health::{lag_ok, Gtid};
use super::metrics;
use super::packet::{
    err_payload, ok_payload, ErrPacket, PacketIo, STATUS_AUTOCOMMIT, STATUS_IN_TRANS,
    STATUS_NO_BACKSLASH_ESCAPES,
};
use super::router::{classify_cached as classify, Route, Target};
use super::Shared;
use bytes::Bytes;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

const ER_UNKNOWN_COM: u16 = 1047;
const ER_NOT_SUPPORTED: u16 = 1235;
const ER_UNKNOWN_STMT: u16 = 1243;
const ER_MASTER_UNAVAILABLE: u16 = 2003;
const ER_LOST_CONNECTION: u16 = 2013;

/// Session settings replayed on new backend connections; beyond this many
/// distinct ones the session is pinned to the master instead.
const MAX_SETTINGS: usize = 32;

/// Route indexes into the metrics arrays (see `metrics::ROUTES`).
const M_MASTER: usize = 0;
const M_REPLICA: usize = 1;
const M_SESSION: usize = 2;
const M_LOCAL: usize = 3;

/// Serves one accepted client until it quits, idles out or fails.
pub async fn run(socket: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    shared.metrics.connections.inc();
    let conn_id = shared
        .next_conn_id
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let accepted = tokio::time::timeout(
        super::listener::HANDSHAKE_TIMEOUT,
        handshake::accept(socket, &shared.cfg, shared.tls.as_ref(), &shared.version, conn_id),
    )
    .await;
    match accepted {
        Ok(Ok(a)) => {
            tracing::debug!(%peer, user = %a.user.name, tls = a.io.stream.is_tls(), "client logged in");
            let mut s = Session::new(shared.clone(), a.io, a.user, a.caps, a.collation, a.db);
            s.serve().await;
            s.release();
        }
        Ok(Err(HandshakeError::Refused(why))) => {
            shared.metrics.auth_failures.inc();
            tracing::info!(%peer, %why, "login refused");
        }
        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "handshake failed"),
        Err(_) => tracing::debug!(%peer, "handshake timed out"),
    }
    shared.metrics.connections.dec();
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
    long_data: Vec<Bytes>,
    sql: String,
}

struct Session {
    shared: Arc<Shared>,
    client: PacketIo<ClientStream>,
    user: UserConfig,
    key: PoolKey,
    caps: u32,
    db: Option<String>,
    multi_statements: bool,
    /// `COM_QUERY` payloads of session settings, replayed on new connections.
    settings: Vec<Bytes>,
    master: Option<BackendConn>,
    replica: Option<(usize, BackendConn)>,
    /// Bumped whenever the replica connection changes.
    replica_gen: u64,
    pin: Option<&'static str>,
    /// Status flags from the master's last reply.
    master_status: u16,
    /// A statement that may have written ran since the last GTID capture.
    wrote: bool,
    /// The commit of this session's last write.
    last_write: Option<Gtid>,
    stmts: HashMap<u32, Stmt>,
    next_stmt: u32,
    /// A backend said this session's `sql_mode` has NO_BACKSLASH_ESCAPES:
    /// the router would lex strings differently from the server, so every
    /// statement goes to the master.
    no_backslash_escapes: bool,
    /// The current command's reply to the client was an SQL error (the
    /// `outcome` of the query metrics).
    answered_err: bool,
}

impl Session {
    fn new(
        shared: Arc<Shared>,
        client: PacketIo<ClientStream>,
        user: UserConfig,
        caps: u32,
        collation: u8,
        db: Option<String>,
    ) -> Session {
        let key = PoolKey {
            caps: caps & handshake::SESSION_CAPABILITIES,
            collation,
        };
        Session {
            shared,
            client,
            user,
            key,
            caps,
            db,
            multi_statements: caps & CLIENT_MULTI_STATEMENTS != 0,
            settings: Vec::new(),
            master: None,
            replica: None,
            replica_gen: 0,
            pin: None,
            master_status: STATUS_AUTOCOMMIT,
            wrote: false,
            last_write: None,
            stmts: HashMap::new(),
            next_stmt: 1,
            no_backslash_escapes: false,
            answered_err: false,
        }
    }

    fn in_txn(&self) -> bool {
        self.master_status & STATUS_IN_TRANS != 0 || self.master_status & STATUS_AUTOCOMMIT == 0
    }

    fn status(&self) -> u16 {
        self.master_status
    }

    async fn serve(&mut self) {
        let idle = Duration::from_secs(self.shared.cfg.idle_timeout_secs);
        // One idle timer for the whole session instead of one per command
        // (registering and removing a timer costs two locks of the timer
        // wheel per command): when it fires early it is moved to the end of
        // the current wait.
        let timer = tokio::time::sleep(idle);
        tokio::pin!(timer);
        loop {
            let waiting_since = tokio::time::Instant::now();
            let read = loop {
                tokio::select! {
                    biased;
                    r = self.client.read_packet() => break Some(r),
                    () = &mut timer => {
                        let deadline = waiting_since + idle;
                        if tokio::time::Instant::now() >= deadline {
                            break None;
                        }
                        timer.as_mut().reset(deadline);
                    }
                }
            };
            let pkt = match read {
                None => {
                    tracing::debug!(user = %self.user.name, "idle timeout");
                    return;
                }
                Some(Err(_)) | Some(Ok(None)) => return,
                Some(Ok(Some(p))) => p,
            };
            let cmd = match Command::parse(&pkt.payload) {
                Ok(c) => c,
                Err(e) => {
                    if self
                        .reply_err(ER_UNKNOWN_COM, "08S01", &e.to_string())
                        .await
                        .is_err()
                    {
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
            let outcome = match &result {
                Ok(Some(r)) if self.answered_err => Some((*r, metrics::ERROR)),
                Ok(Some(r)) => Some((*r, metrics::OK)),
                Ok(None) | Err(Fail::Client(_)) => None,
                Err(Fail::Sql(_)) => Some((M_MASTER, metrics::ERROR)),
                Err(Fail::MasterBroken(_) | Fail::MasterUnavailable(_)) => Some((M_MASTER, metrics::FAILED)),
                Err(Fail::ReplicaBrokeMidReply(_)) => Some((M_REPLICA, metrics::FAILED)),
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
                Err(Fail::MasterBroken(e)) => {
                    tracing::warn!(error = %e, "master connection broke; ending the client session");
                    self.master = None;
                    let msg = format!("Lost connection to the master backend: {e}");
                    let _ = self.reply_err(ER_LOST_CONNECTION, "HY000", &msg).await;
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
                    let msg = format!("dbmux: master backend unavailable: {e}");
                    if self
                        .reply_err(ER_MASTER_UNAVAILABLE, "HY000", &msg)
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
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
            Command::Query(sql) => self.query(payload, &sql).await.map(Some),
            Command::InitDb(db) => {
                let route = Route {
                    target: Target::Session,
                    write: false,
                    pin: None,
                    use_db: Some(db),
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
            Command::StmtPrepare(sql) => self.prepare(payload, sql).await.map(Some),
            Command::StmtExecute { stmt_id, flags } => self.execute(payload, stmt_id, flags).await.map(Some),
            Command::StmtSendLongData { stmt_id } => {
                if let Some(s) = self.stmts.get_mut(&stmt_id) {
                    s.long_data.push(payload);
                }
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
    // Choosing a backend.

    /// The replica a plain read may go to now, if any.
    fn read_replica(&mut self) -> Option<usize> {
        let sh = &self.shared;
        if self.pin.is_some()
            || self.in_txn()
            || sh.replicas.is_empty()
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
            if self.wrote {
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
                        .map_err(TakeError::Backend)?;
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
                        let c = self.shared.replicas[idx]
                            .pool
                            .get(self.key)
                            .await
                            .map_err(TakeError::Backend)?;
                        self.replica_gen += 1;
                        (c, true)
                    }
                }
            }
        };
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
        }
        if let Some(db) = &self.db {
            if let Err(e) = conn.use_db(db).await.map_err(TakeError::Backend)? {
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
    /// flushed yet). Long-data chunks go first.
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
        let mut conn = match self.take(which).await {
            Ok(c) => c,
            Err(TakeError::Sql(e)) => {
                if let Which::Replica(_) = which {
                    return Ok(Exec::Retry);
                }
                self.client.put(1, &err_payload(e.code, "HY000", &e.message));
                self.answered_err = true;
                return Ok(Exec::Done(Summary {
                    err: Some(e),
                    ..Summary::default()
                }));
            }
            Err(TakeError::Backend(e)) => {
                return match which {
                    Which::Replica(i) => {
                        tracing::warn!(replica = %self.shared.replicas[i].name, error = %e, "replica unavailable");
                        self.shared.replicas[i].health.mark_down();
                        Ok(Exec::Retry)
                    }
                    Which::Master if self.master_held_state() => Err(Fail::MasterBroken(e)),
                    Which::Master => Err(Fail::MasterUnavailable(e)),
                }
            }
        };
        let r = async {
            for ld in long_data {
                conn.io.put(0, ld);
            }
            match stmt_id {
                Some(id) => conn.send_command_with_stmt_id(payload, id).await?,
                None => conn.send_command(payload).await?,
            }
            conn.relay(reply, Some(&mut self.client), false, rewrite).await
        }
        .await;
        match r {
            Ok(sum) => {
                self.answered_err |= sum.err.is_some();
                if let Some(st) = sum.status {
                    self.no_backslash_escapes = st & STATUS_NO_BACKSLASH_ESCAPES != 0;
                }
                if which == Which::Master {
                    if let Some(s) = sum.status {
                        self.master_status = s;
                    }
                }
                self.give(which, conn);
                Ok(Exec::Done(sum))
            }
            // The client left mid-reply; the backend connection is in the
            // middle of a response and is dropped, the backend is fine.
            Err(BackendError::Client(e)) => Err(Fail::Client(e)),
            Err(e) => match which {
                Which::Replica(i) => {
                    tracing::warn!(replica = %self.shared.replicas[i].name, error = %e, "replica failed; reading from the master");
                    self.shared.replicas[i].health.mark_down();
                    self.shared.replicas[i].pool.clear();
                    if self.client.flushes != flushes {
                        return Err(Fail::ReplicaBrokeMidReply(e));
                    }
                    self.client.wbuf.truncate(mark);
                    Ok(Exec::Retry)
                }
                Which::Master => Err(Fail::MasterBroken(e)),
            },
        }
    }

    /// True when the master connection (if any) carries session state a
    /// new connection would not have.
    fn master_held_state(&self) -> bool {
        self.master.is_some() || self.pin.is_some() || self.in_txn()
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

    /// After a reply from the master: capture the commit of this session's
    /// write once it is committed, for read-your-writes.
    async fn after_master(&mut self) -> Result<(), Fail> {
        if !self.wrote || self.in_txn() {
            return Ok(());
        }
        self.wrote = false;
        if self.user.consistency != Consistency::ReadYourWrites || self.shared.replicas.is_empty() {
            return Ok(());
        }
        let Some(m) = self.master.as_mut() else {
            return Ok(());
        };
        match m.query_value("SELECT @@last_gtid").await {
            Ok(Ok(Some(v))) => {
                if let Ok(g) = v.parse::<Gtid>() {
                    self.last_write = Some(g);
                }
            }
            Ok(_) => {}
            Err(e) => return Err(Fail::MasterBroken(e)),
        }
        Ok(())
    }

    fn metrics_route(w: Which) -> usize {
        match w {
            Which::Master => M_MASTER,
            Which::Replica(_) => M_REPLICA,
        }
    }

    // -----------------------------------------------------------------------
    // Commands.

    async fn query(&mut self, payload: Bytes, sql: &str) -> Result<usize, Fail> {
        let route = classify(sql);
        if let Some(p) = route.pin {
            self.pin.get_or_insert(p);
        }
        if route.write {
            self.wrote = true;
        }
        match route.target {
            Target::Session => {
                self.session_setting(payload, route).await?;
                Ok(M_SESSION)
            }
            Target::Master => {
                self.run_on(Which::Master, &payload, Reply::ResultSets, None)
                    .await?;
                self.client.flush().await?;
                self.after_master().await?;
                Ok(M_MASTER)
            }
            Target::Replica => {
                let which = self.read_replica().map(Which::Replica).unwrap_or(Which::Master);
                let (ran, _) = self.run_on(which, &payload, Reply::ResultSets, None).await?;
                self.client.flush().await?;
                Ok(Self::metrics_route(ran))
            }
        }
    }

    /// A setting (or `USE`/`COM_INIT_DB`) runs on every open connection; the
    /// first one's reply goes to the client. With none open, it runs where a
    /// read would.
    async fn session_setting(&mut self, payload: Bytes, route: Route) -> Result<(), Fail> {
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
                    let (_, s) = self
                        .run_on(Which::Replica(idx), &payload, Reply::ResultSets, None)
                        .await?;
                    answered = Some(s);
                }
            }
        }
        let sum = match answered {
            Some(s) => s,
            None => {
                let which = self.read_replica().map(Which::Replica).unwrap_or(Which::Master);
                self.run_on(which, &payload, Reply::ResultSets, None).await?.1
            }
        };
        self.client.flush().await?;
        if sum.err.is_some() {
            return Ok(());
        }
        for c in self.open_conns() {
            c.dirty = true;
        }
        if let Some(db) = route.use_db {
            for c in self.open_conns() {
                c.db = Some(db.clone());
            }
            self.db = Some(db);
        } else {
            self.settings.retain(|s| *s != payload);
            self.settings.push(payload);
            if self.settings.len() > MAX_SETTINGS {
                self.pin.get_or_insert("too many session settings");
            }
        }
        Ok(())
    }

    async fn prepare(&mut self, payload: Bytes, sql: String) -> Result<usize, Fail> {
        let route = classify(&sql);
        let id = self.next_stmt;
        self.next_stmt = self.next_stmt.wrapping_add(1).max(1);
        let which = match route.target {
            Target::Replica => self.read_replica().map(Which::Replica).unwrap_or(Which::Master),
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
                sql,
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
        let mut p = vec![command::COM_STMT_PREPARE];
        p.extend_from_slice(stmt.sql.as_bytes());
        let mut conn = match self.take(which).await {
            Ok(c) => c,
            Err(TakeError::Backend(e)) => {
                return match which {
                    Which::Replica(i) => {
                        self.shared.replicas[i].health.mark_down();
                        Ok(None)
                    }
                    Which::Master if self.master_held_state() => Err(Fail::MasterBroken(e)),
                    Which::Master => Err(Fail::MasterUnavailable(e)),
                }
            }
            Err(TakeError::Sql(_)) if which != Which::Master => return Ok(None),
            Err(TakeError::Sql(e)) => {
                return Err(Fail::Sql(e));
            }
        };
        let r = conn.command(&p, Reply::Prepare).await;
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
                    code: 1105,
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
                        self.shared.replicas[i].health.mark_down();
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
        if let Some(p) = pin {
            self.pin.get_or_insert(p);
        }
        if write {
            self.wrote = true;
        }
        let mut which = match target {
            Target::Replica => self.read_replica().map(Which::Replica).unwrap_or(Which::Master),
            _ => Which::Master,
        };
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
            let chunks: Vec<Vec<u8>> = long_data.iter().map(|c| command::with_stmt_id(c, bid)).collect();
            match self
                .exec(which, body, Reply::ResultSets, None, &chunks, Some(bid))
                .await?
            {
                Exec::Done(_) => {
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
        self.client.flush().await?;
        if which == Which::Master {
            self.after_master().await?;
        }
        Ok(Self::metrics_route(which))
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
                self.user = user;
                self.db = cu.db;
                if let Some(c) = cu.collation {
                    self.key.collation = c;
                }
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
        self.settings.clear();
        self.stmts.clear();
        self.pin = None;
        self.wrote = false;
        self.master_status = STATUS_AUTOCOMMIT;
        self.multi_statements = self.caps & CLIENT_MULTI_STATEMENTS != 0;
        self.no_backslash_escapes = false;
    }

    async fn reset_connection(&mut self) {
        if let Some(mut m) = self.master.take() {
            match m.reset().await {
                Ok(()) => {
                    m.dirty = true;
                    self.master = Some(m);
                    self.master_status = STATUS_AUTOCOMMIT;
                }
                Err(_) => self.master_status = STATUS_AUTOCOMMIT,
            }
        }
        if let Some((i, c)) = self.replica.take() {
            self.shared.replicas[i].pool.put(c);
        }
        self.settings.clear();
        self.stmts.clear();
        self.pin = None;
        self.wrote = false;
        self.multi_statements = self.caps & CLIENT_MULTI_STATEMENTS != 0;
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
