//! Benchmark helper for `bench/pg-source.sh`: reads a logical replication
//! slot with dbmux's PostgreSQL source (connection, pgoutput decoding, typed
//! values, whole transactions) until `EVENTS` row changes have arrived, then
//! prints `events=<n> seconds=<s>`. Nothing is written anywhere, so this is
//! the decode rate alone, comparable with `pg_recvlogical -f /dev/null`.
//!
//! Usage: pg_source_decode URL SLOT PUBLICATION EVENTS

use connectors::postgres::capture::{PostgresSource, PostgresSourceConfig};
use pipeline::source::Source;
use std::time::Instant;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 {
        eprintln!("usage: {} URL SLOT PUBLICATION EVENTS", args[0]);
        std::process::exit(2);
    }
    let events: usize = args[4].parse().expect("EVENTS is a number");
    let config = PostgresSourceConfig {
        slot: args[2].clone(),
        publication: args[3].clone(),
        create_publication: false,
        ..PostgresSourceConfig::new(args[1].clone())
    };
    let mut source = PostgresSource::new(config).expect("valid configuration");
    let start = source.current_position().await.expect("the slot exists");
    let began = Instant::now();
    source.start(Some(start)).await.expect("streaming starts");
    let mut seen = 0usize;
    while seen < events {
        let t = source.next_transaction().await.expect("a transaction");
        seen += t.changes.len();
    }
    let seconds = began.elapsed().as_secs_f64();
    source.stop().await;
    println!("events={seen} seconds={seconds:.3}");
}
