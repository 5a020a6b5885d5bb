//! A PostgreSQL *source* database for one test: created fresh, dropped (with
//! its replication slots) when the test ends, also when it panics.

use super::{env, pg_url, unique_name, with_db};
use std::process::Command;

pub struct PgSourceDb {
    /// Database name; also the slot and publication name the tests use.
    pub name: String,
    pub url: String,
}

pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connecting to {url}: {e}"));
    tokio::spawn(conn);
    client
}

impl PgSourceDb {
    pub async fn create(prefix: &str) -> PgSourceDb {
        let name = unique_name(prefix);
        let admin = connect(&pg_url()).await;
        admin
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .unwrap();
        PgSourceDb {
            url: with_db(&pg_url(), &name),
            name,
        }
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        connect(&self.url).await
    }

    pub async fn exec(&self, sql: &str) {
        self.client()
            .await
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    }

    /// `confirmed_flush_lsn` of slot `slot`, `None` when there is no such slot.
    pub async fn slot_confirmed(&self, slot: &str) -> Option<u64> {
        let row = self
            .client()
            .await
            .query_opt(
                "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .unwrap()?;
        let text: Option<String> = row.get(0);
        text.map(|t| parse_lsn(&t))
    }

    /// The server's current WAL insert position.
    pub async fn current_lsn(&self) -> u64 {
        let row = self
            .client()
            .await
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .unwrap();
        parse_lsn(&row.get::<_, String>(0))
    }
}

pub fn parse_lsn(t: &str) -> u64 {
    let t = t.trim_start_matches("pg:");
    let (hi, lo) = t.split_once('/').unwrap();
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

impl Drop for PgSourceDb {
    fn drop(&mut self) {
        // Slots pin WAL and block DROP DATABASE: end their walsenders, drop them.
        let db = &self.name;
        let statements = [
            format!("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE database = '{db}' AND active_pid IS NOT NULL"),
            "SELECT pg_sleep(0.3)".to_string(),
            format!("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = '{db}' AND NOT active"),
            format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"),
        ];
        let u = url::Url::parse(&pg_url()).unwrap();
        let mut cmd = Command::new(env("DBMUX_TEST_PSQL"));
        cmd.args(["-X", "-q", "-h", u.host_str().unwrap(), "-p"])
            .arg(u.port().unwrap().to_string())
            .args(["-U", u.username(), "-d", "postgres"])
            .env("PGPASSWORD", u.password().unwrap_or(""));
        for s in &statements {
            cmd.args(["-c", s]);
        }
        let _ = cmd.output();
    }
}
