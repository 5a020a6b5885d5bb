//! Schema changes on a PostgreSQL replica: a MySQL statement cannot be
//! replayed here, so the change is translated from what capture understood
//! of it ([`pipeline::ddl`]) and the table's definition after it.
//!
//! # What translates
//! - `CREATE TABLE` → the table from the definition (as when a table is
//!   created for its first row; `IF NOT EXISTS` and MariaDB's `OR REPLACE`
//!   are honoured; a plain `CREATE` of a table the replica already has stops
//!   that table);
//! - `DROP TABLE` → `DROP TABLE IF EXISTS`; `RENAME TABLE` → `ALTER TABLE …
//!   RENAME TO` (and `SET SCHEMA` across databases);
//! - columns: add (existing rows get the value the source gave them: the
//!   default, or MySQL's implicit one), drop, rename, change type (`USING
//!   col::type`, the cast of the new type), nullability, the CHECK keeping the
//!   source's domain (unsigned ranges, ENUM/SET labels), the `COLLATE "C"` of
//!   binary collations;
//! - keys: the primary key and UNIQUE keys are made equal to the
//!   definition's (dropped, added) by looking at the replica's own catalog;
//!   plain indexes are created and dropped by name (`<table>_<index>`);
//! - `CREATE`/`DROP DATABASE` → `CREATE`/`DROP SCHEMA`.
//!
//! # What does not, and stops the table
//! Whatever capture marked untranslatable (partitioning clauses, a column
//! filled by an expression or AUTO_INCREMENT, a statement it could not read);
//! a type change PostgreSQL cannot cast. The replica's transaction is rolled
//! back, the table is quarantined with the statement in the reason, and
//! everything else goes on.
//!
//! Defaults are not carried (every replicated row carries every value):
//! `SET/DROP DEFAULT` does nothing here.

use super::apply::PostgresSinkConfig;
use super::apply_sql::{self as sql, ZeroDates};
use pipeline::ddl::{AlterAction, DdlKind, Fill, SchemaChange};
use pipeline::schema::{ColumnDef, TableId, TableSchema};
use tokio_postgres::Client;

/// Why a schema change was not applied.
#[derive(Debug)]
pub enum DdlError {
    /// It cannot be translated, or PostgreSQL refused it: the reason, for
    /// the table's quarantine.
    Refused(String),
    /// The connection failed (retried like any transient error).
    Transient(tokio_postgres::Error),
}

impl From<String> for DdlError {
    fn from(s: String) -> Self {
        DdlError::Refused(s)
    }
}

/// Runs `statement` inside the open transaction.
async fn exec(client: &Client, statement: &str) -> Result<(), DdlError> {
    client.batch_execute(statement).await.map_err(|e| {
        if super::apply::classify_driver(&e) == pipeline::retry::ErrorClass::Transient {
            return DdlError::Transient(e);
        }
        let detail = e
            .as_db_error()
            .map_or_else(|| e.to_string(), |d| d.message().to_string());
        DdlError::Refused(format!("PostgreSQL refused `{statement}`: {detail}"))
    })
}

fn db(e: tokio_postgres::Error) -> DdlError {
    if super::apply::classify_driver(&e) == pipeline::retry::ErrorClass::Transient {
        DdlError::Transient(e)
    } else {
        DdlError::Refused(e.to_string())
    }
}

/// The replica's name for the table's index `name`.
pub fn index_name(target: &TableId, name: &str) -> String {
    sql::pg_name(&format!("{}_{}", target.name, name))
}

/// Whether the replica has `target`.
async fn exists(client: &Client, target: &TableId) -> Result<bool, DdlError> {
    let row = client
        .query_opt(
            "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
            &[&target.schema, &target.name],
        )
        .await
        .map_err(db)?;
    Ok(row.is_some())
}

/// The statements that create `target` from `renamed` (the definition with
/// the replica's names: columns and foreign-key columns) with the indexes
/// cascades need. `Err((column, message))` names the column that cannot be
/// created (empty when none is to blame).
pub fn create_statements(target: &TableId, renamed: &TableSchema) -> Result<Vec<String>, (String, String)> {
    let whole = |m: String| (String::new(), m);
    let mut out = vec![format!(
        "CREATE SCHEMA IF NOT EXISTS {}",
        sql::quote_ident(&target.schema).map_err(whole)?
    )];
    out.push(sql::create_table_sql(target, renamed)?);
    out.extend(fk_index_statements(target, renamed).map_err(whole)?);
    Ok(out)
}

/// An index on every foreign key's columns (the applier finds the rows a
/// cascade reaches by them). `renamed`'s foreign keys name replica columns.
fn fk_index_statements(target: &TableId, renamed: &TableSchema) -> Result<Vec<String>, String> {
    renamed
        .foreign_keys
        .iter()
        .map(|f| {
            let cols = f
                .columns
                .iter()
                .map(|c| sql::quote_ident(c))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(format!(
                "CREATE INDEX IF NOT EXISTS {} ON {} ({})",
                sql::quote_ident(&sql::pg_name(&format!("{}_{}_fk", target.name, f.name)))?,
                sql::quote_table(target)?,
                cols.join(", ")
            ))
        })
        .collect()
}

/// The renamed definition's column called `source_name` at the source.
fn column<'a>(
    renamed: &'a TableSchema,
    source: &TableSchema,
    source_name: &str,
) -> Result<&'a ColumnDef, String> {
    source
        .columns
        .iter()
        .position(|c| c.name == source_name)
        .map(|i| &renamed.columns[i])
        .ok_or_else(|| format!("the definition after the change has no column {source_name}"))
}

/// Applies one schema change inside the replica's open transaction.
/// `source` is the definition after the change, `renamed` the same with the
/// replica's names (table, columns, foreign-key columns).
pub async fn apply(
    client: &Client,
    config: &PostgresSinkConfig,
    source: &TableSchema,
    renamed: &TableSchema,
    change: &SchemaChange,
    zero_dates: ZeroDates,
) -> Result<(), DdlError> {
    if let Some(why) = change.untranslatable() {
        return Err(why.into());
    }
    let target = config.target_table(&source.id);
    // A database-level change names no table (its table name is empty).
    let table = match &change.kind {
        DdlKind::CreateDatabase | DdlKind::DropDatabase => String::new(),
        _ => sql::quote_table(&target)?,
    };
    match &change.kind {
        DdlKind::CreateTable {
            if_not_exists,
            or_replace,
        } => {
            if exists(client, &target).await? {
                if *or_replace {
                    exec(client, &format!("DROP TABLE {table}")).await?;
                } else if *if_not_exists {
                    return Ok(());
                } else {
                    return Err(format!("the replica already has a table {target}").into());
                }
            }
            let statements = create_statements(&target, renamed).map_err(|(c, m)| {
                DdlError::Refused(if c.is_empty() {
                    m
                } else {
                    format!("column {c}: {m}")
                })
            })?;
            for s in statements {
                exec(client, &s).await?;
            }
        }
        DdlKind::DropTable => exec(client, &format!("DROP TABLE IF EXISTS {table}")).await?,
        DdlKind::RenameTable { from } => rename(client, config, from, &target).await?,
        DdlKind::CreateDatabase => {
            let schema = sql::pg_name(config.target_schema(&source.id.schema));
            exec(
                client,
                &format!("CREATE SCHEMA IF NOT EXISTS {}", sql::quote_ident(&schema)?),
            )
            .await?;
        }
        DdlKind::DropDatabase => {
            if config.schema.is_some() {
                // Every source database shares one schema here: its other
                // tables must stay. The dropped database's tables were
                // dropped on the source with it; drop them here by hand.
                tracing::warn!(database = %source.id.schema,
                    "DROP DATABASE is not applied on a PostgreSQL replica that puts every table into one schema");
                return Ok(());
            }
            let schema = sql::pg_name(&source.id.schema);
            if schema == config.offsets_schema {
                return Err(format!(
                    "schema {schema} holds dbmux's own tables on this replica; it is not dropped"
                )
                .into());
            }
            exec(
                client,
                &format!("DROP SCHEMA IF EXISTS {} CASCADE", sql::quote_ident(&schema)?),
            )
            .await?;
        }
        DdlKind::Unknown { reason } => return Err(reason.clone().into()),
        DdlKind::AlterTable { actions } => {
            alter(client, config, source, renamed, &target, actions, zero_dates).await?;
        }
    }
    Ok(())
}

async fn rename(
    client: &Client,
    config: &PostgresSinkConfig,
    from: &TableId,
    to: &TableId,
) -> Result<(), DdlError> {
    let from = config.target_table(from);
    if from == *to {
        return Ok(());
    }
    let mut current = from.clone();
    if from.schema != to.schema {
        exec(
            client,
            &format!("CREATE SCHEMA IF NOT EXISTS {}", sql::quote_ident(&to.schema)?),
        )
        .await?;
        exec(
            client,
            &format!(
                "ALTER TABLE IF EXISTS {} SET SCHEMA {}",
                sql::quote_table(&from)?,
                sql::quote_ident(&to.schema)?
            ),
        )
        .await?;
        current = TableId::new(to.schema.clone(), from.name.clone());
    }
    if current.name != to.name {
        exec(
            client,
            &format!(
                "ALTER TABLE IF EXISTS {} RENAME TO {}",
                sql::quote_table(&current)?,
                sql::quote_ident(&to.name)?
            ),
        )
        .await?;
    }
    Ok(())
}

async fn alter(
    client: &Client,
    config: &PostgresSinkConfig,
    source: &TableSchema,
    renamed: &TableSchema,
    target: &TableId,
    actions: &[AlterAction],
    zero_dates: ZeroDates,
) -> Result<(), DdlError> {
    let table = sql::quote_table(target)?;
    let col_name = |n: &str| config.target_column(&source.id, n);
    let mut keys = false;
    for a in actions {
        match a {
            AlterAction::RenameTable { from } => rename(client, config, from, target).await?,
            AlterAction::AddColumn { name, fill } => {
                let col = column(renamed, source, name)?;
                let (ty, check) = sql::column_type_sql(col)?;
                let q = sql::quote_ident(&col.name)?;
                let fill = match fill {
                    Fill::Value(v) => sql::to_text(v, col, zero_dates)?,
                    Fill::Unknown(why) => return Err(format!("column {name}: {why}").into()),
                };
                let default = match &fill {
                    Some(text) => format!(" DEFAULT {}", sql::quote_string(text)?),
                    None => String::new(),
                };
                let null = if col.nullable { "NULL" } else { "NOT NULL" };
                let check = check.map_or(String::new(), |c| format!(" CHECK ({c})"));
                exec(
                    client,
                    &format!("ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {q} {ty}{default} {null}{check}"),
                )
                .await?;
                if fill.is_some() {
                    exec(
                        client,
                        &format!("ALTER TABLE {table} ALTER COLUMN {q} DROP DEFAULT"),
                    )
                    .await?;
                }
            }
            AlterAction::DropColumn { name } => {
                exec(
                    client,
                    &format!(
                        "ALTER TABLE {table} DROP COLUMN IF EXISTS {}",
                        sql::quote_ident(&col_name(name))?
                    ),
                )
                .await?;
                keys = true;
            }
            AlterAction::RenameColumn { from, to } => {
                let (a, b) = (col_name(from), col_name(to));
                if a != b {
                    exec(
                        client,
                        &format!(
                            "ALTER TABLE {table} RENAME COLUMN {} TO {}",
                            sql::quote_ident(&a)?,
                            sql::quote_ident(&b)?
                        ),
                    )
                    .await?;
                }
            }
            AlterAction::ModifyColumn { from, to } => {
                let (a, b) = (col_name(from), col_name(to));
                if a != b {
                    exec(
                        client,
                        &format!(
                            "ALTER TABLE {table} RENAME COLUMN {} TO {}",
                            sql::quote_ident(&a)?,
                            sql::quote_ident(&b)?
                        ),
                    )
                    .await?;
                }
                let col = column(renamed, source, to)?;
                modify(client, target, &table, col).await?;
            }
            AlterAction::SetDefault { .. } | AlterAction::DropDefault { .. } => {}
            AlterAction::Keys => keys = true,
            AlterAction::AddIndex { name, columns } => {
                let cols = columns
                    .iter()
                    .map(|c| sql::quote_ident(&col_name(c)))
                    .collect::<Result<Vec<_>, _>>()?;
                exec(
                    client,
                    &format!(
                        "CREATE INDEX IF NOT EXISTS {} ON {table} ({})",
                        sql::quote_ident(&index_name(target, name))?,
                        cols.join(", ")
                    ),
                )
                .await?;
            }
            AlterAction::DropIndex { name } => {
                exec(
                    client,
                    &format!(
                        "DROP INDEX IF EXISTS {}.{}",
                        sql::quote_ident(&target.schema)?,
                        sql::quote_ident(&index_name(target, name))?
                    ),
                )
                .await?;
            }
            AlterAction::RenameIndex { from, to } => {
                exec(
                    client,
                    &format!(
                        "ALTER INDEX IF EXISTS {}.{} RENAME TO {}",
                        sql::quote_ident(&target.schema)?,
                        sql::quote_ident(&index_name(target, from))?,
                        sql::quote_ident(&index_name(target, to))?
                    ),
                )
                .await?;
            }
            AlterAction::ForeignKeys => {
                for s in fk_index_statements(target, renamed)? {
                    exec(client, &s).await?;
                }
            }
            AlterAction::Options { .. } => {}
            AlterAction::Unsupported { clause } => {
                return Err(format!("clause `{clause}` is not translated").into())
            }
        }
    }
    if keys {
        reconcile_keys(client, target, &table, renamed).await?;
    }
    Ok(())
}

/// A column's type, collation, nullability and domain CHECK made equal to
/// `col`'s.
async fn modify(client: &Client, target: &TableId, table: &str, col: &ColumnDef) -> Result<(), DdlError> {
    let q = sql::quote_ident(&col.name)?;
    let (ty, check) = sql::column_type_sql(col)?;
    // The old domain CHECK would refuse new values (ENUM labels, ranges).
    let checks = client
        .query(
            "SELECT con.conname::text FROM pg_constraint con \
             JOIN pg_class c ON c.oid = con.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY(con.conkey) \
             WHERE n.nspname = $1 AND c.relname = $2 AND con.contype = 'c' AND a.attname = $3 \
             AND array_length(con.conkey, 1) = 1",
            &[&target.schema, &target.name, &col.name],
        )
        .await
        .map_err(db)?;
    for r in checks {
        let name: String = r.get(0);
        exec(
            client,
            &format!("ALTER TABLE {table} DROP CONSTRAINT {}", sql::quote_ident(&name)?),
        )
        .await?;
    }
    // The type without its COLLATE clause, for the cast.
    let cast = ty.split(" COLLATE").next().unwrap_or(&ty).to_string();
    exec(
        client,
        &format!("ALTER TABLE {table} ALTER COLUMN {q} TYPE {ty} USING {q}::{cast}"),
    )
    .await?;
    let null = if col.nullable {
        "DROP NOT NULL"
    } else {
        "SET NOT NULL"
    };
    exec(client, &format!("ALTER TABLE {table} ALTER COLUMN {q} {null}")).await?;
    if let Some(c) = check {
        exec(client, &format!("ALTER TABLE {table} ADD CHECK ({c})")).await?;
    }
    Ok(())
}

/// The replica's primary key and UNIQUE keys made equal to `renamed`'s.
async fn reconcile_keys(
    client: &Client,
    target: &TableId,
    table: &str,
    renamed: &TableSchema,
) -> Result<(), DdlError> {
    // Every unique index of the table: name, constraint (if one owns it),
    // primary or not, its columns in order.
    let rows = client
        .query(
            "SELECT ic.relname::text, con.conname::text, i.indisprimary, \
             array(SELECT a.attname::text FROM unnest(i.indkey) WITH ORDINALITY k(attnum, ord) \
                   JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum ORDER BY k.ord) \
             FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_class ic ON ic.oid = i.indexrelid \
             LEFT JOIN pg_constraint con ON con.conindid = i.indexrelid AND con.conrelid = c.oid \
             WHERE n.nspname = $1 AND c.relname = $2 AND i.indisunique AND i.indexprs IS NULL",
            &[&target.schema, &target.name],
        )
        .await
        .map_err(db)?;
    let names = |k: &[usize]| -> Vec<String> { k.iter().map(|&i| renamed.columns[i].name.clone()).collect() };
    let want_pk = names(&renamed.primary_key);
    let want_unique: Vec<Vec<String>> = renamed.unique_keys.iter().map(|k| names(k)).collect();
    let schema = sql::quote_ident(&target.schema)?;
    let mut have_pk = false;
    let mut have_unique: Vec<Vec<String>> = Vec::new();
    for r in rows {
        let (index, constraint, primary, cols): (String, Option<String>, bool, Vec<String>) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        let keep = if primary {
            cols == want_pk
        } else {
            want_unique.contains(&cols) && !have_unique.contains(&cols)
        };
        if keep {
            if primary {
                have_pk = true;
            } else {
                have_unique.push(cols);
            }
            continue;
        }
        match constraint {
            Some(c) => {
                exec(
                    client,
                    &format!("ALTER TABLE {table} DROP CONSTRAINT {}", sql::quote_ident(&c)?),
                )
                .await?
            }
            None => {
                exec(
                    client,
                    &format!("DROP INDEX {schema}.{}", sql::quote_ident(&index)?),
                )
                .await?
            }
        }
    }
    if !have_pk && !want_pk.is_empty() {
        let cols = want_pk
            .iter()
            .map(|c| sql::quote_ident(c))
            .collect::<Result<Vec<_>, _>>()?;
        exec(
            client,
            &format!("ALTER TABLE {table} ADD PRIMARY KEY ({})", cols.join(", ")),
        )
        .await?;
    }
    for k in want_unique.iter().filter(|k| !have_unique.contains(k)) {
        let cols = k
            .iter()
            .map(|c| sql::quote_ident(c))
            .collect::<Result<Vec<_>, _>>()?;
        exec(
            client,
            &format!(
                "CREATE UNIQUE INDEX {} ON {table} ({})",
                sql::quote_ident(&index_name(target, &format!("{}_key", k.join("_"))))?,
                cols.join(", ")
            ),
        )
        .await?;
    }
    Ok(())
}
