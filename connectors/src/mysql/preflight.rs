//! Preflight: does the master write a binlog dbmux can capture, and may we read it?
//!
//! [`gather`] reads the facts (GLOBAL variables — what new sessions and the
//! binlog will use — and the user's grants); [`check`] is pure and returns every
//! failure at once, each naming the setting, the value dbmux needs, the value
//! found, and how to fix it.

use mysql_async::prelude::Queryable;
use mysql_async::Conn;
use std::collections::HashMap;

/// What preflight looks at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerFacts {
    /// `@@version`, e.g. `10.11.19-MariaDB-0+deb12u1-log`.
    pub version: String,
    /// GLOBAL variables by lower-case name; a variable the server lacks is absent.
    pub variables: HashMap<String, String>,
    /// `SHOW GRANTS` lines; `None` when they could not be read.
    pub grants: Option<Vec<String>>,
    /// The `server_id` dbmux will register its binlog dump with.
    pub dump_server_id: u32,
}

impl ServerFacts {
    pub fn is_mariadb(&self) -> bool {
        self.version.to_ascii_lowercase().contains("mariadb")
    }
}

/// The variables preflight reads.
pub const VARIABLES: &[&str] = &[
    "log_bin",
    "binlog_format",
    "binlog_row_image",
    "binlog_row_metadata",
    "server_id",
    "log_bin_compress",
    "binlog_row_value_options",
];

/// Reads the facts from the server.
pub async fn gather(conn: &mut Conn, dump_server_id: u32) -> Result<ServerFacts, mysql_async::Error> {
    let version: Option<String> = conn.query_first("SELECT @@version").await?;
    let list = VARIABLES
        .iter()
        .map(|v| format!("'{v}'"))
        .collect::<Vec<_>>()
        .join(",");
    let rows: Vec<(String, String)> = conn
        .query(format!("SHOW GLOBAL VARIABLES WHERE Variable_name IN ({list})"))
        .await?;
    let variables = rows
        .into_iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect();
    let grants = conn.query::<String, _>("SHOW GRANTS").await.ok();
    Ok(ServerFacts {
        version: version.unwrap_or_default(),
        variables,
        grants,
        dump_server_id,
    })
}

fn is_on(v: &str) -> bool {
    matches!(v.to_ascii_uppercase().as_str(), "ON" | "1" | "TRUE" | "YES")
}

/// Every failure, or an empty list when capture can run.
pub fn check(facts: &ServerFacts) -> Vec<String> {
    let mut out = Vec::new();
    let var = |name: &str| facts.variables.get(name).map(String::as_str);
    let fix = |name: &str, want: &str| format!("SET GLOBAL {name}={want}, or {name}={want} in my.cnf");

    match var("log_bin") {
        Some(v) if is_on(v) => {}
        v => out.push(format!(
            "log_bin is {}; dbmux needs ON (add log_bin=<basename> to my.cnf and restart the server; \
             it cannot be changed at runtime)",
            v.unwrap_or("missing")
        )),
    }
    for (name, want) in [("binlog_format", "ROW"), ("binlog_row_image", "FULL")] {
        match var(name) {
            Some(v) if v.eq_ignore_ascii_case(want) => {}
            v => out.push(format!(
                "{name} is {}; dbmux needs {want} ({})",
                v.unwrap_or("missing"),
                fix(name, want)
            )),
        }
    }
    match var("binlog_row_metadata") {
        Some(v) if v.eq_ignore_ascii_case("FULL") => {}
        Some(v) => out.push(format!(
            "binlog_row_metadata is {v}; dbmux needs FULL ({})",
            fix("binlog_row_metadata", "FULL")
        )),
        None => out.push(format!(
            "binlog_row_metadata is not available on {}; dbmux needs FULL, which requires MariaDB 10.5 \
             or MySQL 8.0.1 or newer",
            facts.version
        )),
    }
    match var("server_id").and_then(|v| v.parse::<u64>().ok()) {
        Some(0) | None => out.push(format!(
            "server_id is {}; dbmux needs a non-zero server_id ({})",
            var("server_id").unwrap_or("missing"),
            fix("server_id", "1")
        )),
        Some(id) if id == facts.dump_server_id as u64 => out.push(format!(
            "server_id is {id}, the same as dbmux's source.server_id; dbmux needs a replication server_id \
             no server uses (change source.server_id)"
        )),
        Some(_) => {}
    }
    if let Some(v) = var("log_bin_compress") {
        if is_on(v) {
            out.push(format!(
                "log_bin_compress is {v}; dbmux needs OFF ({})",
                fix("log_bin_compress", "OFF")
            ));
        }
    }
    if let Some(v) = var("binlog_row_value_options") {
        if !v.is_empty() {
            out.push(format!(
                "binlog_row_value_options is {v}; dbmux needs '' (SET GLOBAL binlog_row_value_options='', \
                 or binlog_row_value_options='' in my.cnf)"
            ));
        }
    }
    if let Some(grants) = &facts.grants {
        if let Some(missing) = missing_privileges(grants, facts.is_mariadb()) {
            out.push(format!(
                "replication privileges are missing ({missing}); dbmux needs REPLICATION SLAVE and \
                 REPLICATION CLIENT{} (GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO <user>)",
                if facts.is_mariadb() {
                    " (BINLOG MONITOR)"
                } else {
                    ""
                }
            ));
        }
    }
    out
}

/// The missing global privileges, `None` when all are there or when the grants
/// include a role (whose privileges `SHOW GRANTS` does not expand).
fn missing_privileges(grants: &[String], mariadb: bool) -> Option<String> {
    let mut privs: Vec<String> = Vec::new();
    for g in grants {
        let upper = g.to_ascii_uppercase();
        let Some(rest) = upper.strip_prefix("GRANT ") else {
            continue;
        };
        let Some((list, target)) = rest.split_once(" ON ") else {
            // `GRANT role TO user`: privileges we cannot see here.
            return None;
        };
        if !target.trim_start().starts_with("*.*") {
            continue;
        }
        privs.extend(list.split(',').map(|p| p.trim().to_string()));
    }
    let has = |names: &[&str]| {
        privs
            .iter()
            .any(|p| p == "ALL PRIVILEGES" || p == "ALL" || names.contains(&p.as_str()))
    };
    let mut missing = Vec::new();
    if !has(&["REPLICATION SLAVE", "REPLICATION REPLICA"]) {
        missing.push("REPLICATION SLAVE");
    }
    let client: &[&str] = if mariadb {
        &["REPLICATION CLIENT", "BINLOG MONITOR", "SUPER"]
    } else {
        &["REPLICATION CLIENT", "SUPER"]
    };
    if !has(client) {
        missing.push(if mariadb {
            "BINLOG MONITOR"
        } else {
            "REPLICATION CLIENT"
        });
    }
    (!missing.is_empty()).then(|| missing.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> ServerFacts {
        ServerFacts {
            version: "10.11.19-MariaDB-log".into(),
            variables: [
                ("log_bin", "ON"),
                ("binlog_format", "ROW"),
                ("binlog_row_image", "FULL"),
                ("binlog_row_metadata", "FULL"),
                ("server_id", "1"),
                ("log_bin_compress", "OFF"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            grants: Some(vec![
                "GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.* TO `dbmux`@`%`".into(),
                "GRANT ALL PRIVILEGES ON `app`.* TO `dbmux`@`%`".into(),
            ]),
            dump_server_id: 65_000,
        }
    }

    #[test]
    fn a_good_master_passes() {
        assert_eq!(check(&good()), Vec::<String>::new());
    }

    #[test]
    fn statement_format_names_setting_expected_and_actual() {
        let mut f = good();
        f.variables.insert("binlog_format".into(), "STATEMENT".into());
        assert_eq!(
            check(&f),
            vec!["binlog_format is STATEMENT; dbmux needs ROW (SET GLOBAL binlog_format=ROW, or binlog_format=ROW in my.cnf)"]
        );
    }

    #[test]
    fn every_failure_is_reported() {
        let mut f = good();
        for (k, v) in [
            ("log_bin", "OFF"),
            ("binlog_format", "MIXED"),
            ("binlog_row_image", "MINIMAL"),
            ("binlog_row_metadata", "MINIMAL"),
            ("server_id", "0"),
            ("log_bin_compress", "ON"),
        ] {
            f.variables.insert(k.into(), v.into());
        }
        f.grants = Some(vec!["GRANT USAGE ON *.* TO `u`@`%`".into()]);
        let errs = check(&f);
        assert_eq!(errs.len(), 7, "{errs:#?}");
        assert!(errs[0].starts_with("log_bin is OFF; dbmux needs ON"));
        assert!(errs[2].starts_with("binlog_row_image is MINIMAL; dbmux needs FULL"));
        assert!(errs[4].starts_with("server_id is 0;"));
        assert!(
            errs[6].contains("REPLICATION SLAVE, BINLOG MONITOR"),
            "{}",
            errs[6]
        );
    }

    #[test]
    fn old_servers_and_clashing_ids() {
        let mut f = good();
        f.variables.remove("binlog_row_metadata");
        f.variables.insert("server_id".into(), "65000".into());
        let errs = check(&f);
        assert!(
            errs[0].contains("requires MariaDB 10.5 or MySQL 8.0.1"),
            "{}",
            errs[0]
        );
        assert!(
            errs[1].contains("same as dbmux's source.server_id"),
            "{}",
            errs[1]
        );
    }

    #[test]
    fn privileges() {
        let g = |lines: &[&str]| lines.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            missing_privileges(&g(&["GRANT ALL PRIVILEGES ON *.* TO `u`@`%`"]), true),
            None
        );
        assert_eq!(
            missing_privileges(
                &g(&["GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO `u`@`%`"]),
                false
            ),
            None
        );
        assert_eq!(
            missing_privileges(&g(&["GRANT SELECT ON *.* TO `u`@`%`"]), false).as_deref(),
            Some("REPLICATION SLAVE, REPLICATION CLIENT")
        );
        assert_eq!(missing_privileges(&g(&["GRANT `r` TO `u`@`%`"]), false), None);
    }
}
