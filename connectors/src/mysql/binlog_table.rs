//! From a binlog TABLE_MAP event to a [`TableSchema`] and the decoders for its rows.
//!
//! # Where each fact comes from
//! The table map (with `binlog_row_metadata=FULL`) is the authority: column
//! types and their metadata (lengths, precision, fsp, BIT width), nullability,
//! signedness, collations, ENUM/SET labels, names and the primary key, all as
//! they were when the row was written. Lengths in characters are exact from it
//! (the server stores `chars × mbmaxlen` bytes). `information_schema` is read
//! once per new table map for what the binlog does not carry: the server's own
//! `COLUMN_TYPE` spelling and, on MariaDB, whether a LONGTEXT is a JSON column
//! (a `json_valid(col)` check constraint).
//!
//! `information_schema` shows the table *now*. It is used only when it
//! describes this table map: same column count, names and kinds, and every
//! `COLUMN_TYPE` equal to the one synthesized from the binlog (up to integer
//! display widths). Otherwise — the table was altered or dropped after the row
//! was written, e.g. a capture catching up behind a migration that creates,
//! fills and drops a table — the schema comes from the table map alone and a
//! warning is logged: values and types stay exact; `source_type` is synthesized
//! and a MariaDB JSON column shows as LONGTEXT. (We chose this over failing:
//! a definite error there would stop replication on an ordinary migration.)

use super::binlog_values::{BlobContent, Charset, ColumnDecoder};
use super::capture_error::MysqlCaptureError;
use mysql_common::binlog::events::{OptionalMetaExtractor, OptionalMetadataField, TableMapEvent};
use mysql_common::constants::ColumnType as MyType;
use pipeline::schema::{ColumnDef, ColumnType, ForeignKey, TableId, TableSchema};
use std::collections::HashMap;
use std::sync::Arc;

/// One column as `information_schema.COLUMNS` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoColumn {
    pub name: String,
    /// `DATA_TYPE`, lower case (`int`, `varchar`, `longtext`).
    pub data_type: String,
    /// `COLUMN_TYPE` (`int(10) unsigned`, `enum('a','b')`).
    pub column_type: String,
    pub nullable: bool,
    pub charset: Option<String>,
    /// `CHARACTER_MAXIMUM_LENGTH`: characters for text, bytes for binary strings.
    pub char_max_len: Option<u64>,
    /// MariaDB: a `json_valid(col)` check constraint exists.
    pub json_check: bool,
    /// `COLLATION_NAME`.
    pub collation: Option<String>,
}

/// What `information_schema` says about a table beyond its columns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableFacts {
    pub columns: Vec<InfoColumn>,
    /// The primary key's columns, in key order (empty: none).
    pub primary_key: Vec<String>,
    /// UNIQUE keys other than the primary key, as column names; keys with a
    /// prefix-length column are left out.
    pub unique_keys: Vec<Vec<String>>,
    /// The names of `unique_keys`, pairwise.
    pub unique_key_names: Vec<String>,
    /// Foreign keys of the table (it references others).
    pub foreign_keys: Vec<ForeignKey>,
    /// Foreign keys that change rows when this table's rows change, transitively.
    pub cascades: Vec<ForeignKey>,
}

/// A table's schema and how to decode its row images.
#[derive(Debug)]
pub struct TablePlan {
    pub schema: Arc<TableSchema>,
    pub decoders: Vec<ColumnDecoder>,
    /// Bytes of the row-image NULL bitmap (`ceil(columns / 8)`).
    pub null_bitmap_len: usize,
    /// Whether the facts described this table map (otherwise the schema
    /// comes from the table map alone).
    pub consistent: bool,
    /// Names of the schema's UNIQUE keys, pairwise.
    pub unique_key_names: Vec<String>,
}

/// One collation as the server names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollationInfo {
    /// Full name (`utf8mb4_bin`, MariaDB's `utf8mb3_uca1400_ai_ci`).
    pub name: String,
    /// Its character set (`utf8mb4`).
    pub charset: String,
}

/// The master's collations by id and the most bytes one character of each
/// character set takes (`information_schema.CHARACTER_SETS.MAXLEN`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerCharsets {
    pub collations: HashMap<u16, CollationInfo>,
    pub max_len: HashMap<String, u32>,
    /// Each character set's default collation.
    pub default_collation: HashMap<String, String>,
}

impl ServerCharsets {
    /// Bytes per character of `charset` at most. Servers report every charset;
    /// the fallback covers a charset missing from the report (never seen).
    pub fn max_len(&self, charset: &str) -> u32 {
        self.max_len.get(charset).copied().unwrap_or(match charset {
            "utf8mb4" | "utf16" | "utf16le" | "utf32" => 4,
            "utf8mb3" | "utf8" | "ujis" | "eucjpms" => 3,
            "ucs2" | "big5" | "sjis" | "cp932" | "euckr" | "gb2312" | "gbk" => 2,
            _ => 1,
        })
    }
}

/// What the table map says about one column.
struct MapColumn {
    name: Option<String>,
    ty: MyType,
    meta: Vec<u8>,
    nullable: bool,
    unsigned: bool,
    collation: Option<u16>,
    labels: Option<Vec<Vec<u8>>>,
}

fn unsupported(table: &TableId, column: &str, ty: impl Into<String>) -> MysqlCaptureError {
    MysqlCaptureError::UnsupportedType {
        table: table.to_string(),
        column: column.to_string(),
        ty: ty.into(),
    }
}

fn meta_err(table: &TableId, msg: impl Into<String>) -> MysqlCaptureError {
    MysqlCaptureError::TableMap {
        table: table.to_string(),
        message: msg.into(),
    }
}

/// Reads every per-column fact out of the table map.
fn map_columns(tme: &TableMapEvent<'_>, id: &TableId) -> Result<Vec<MapColumn>, MysqlCaptureError> {
    let n = tme.columns_count() as usize;
    let opt =
        OptionalMetaExtractor::new(tme.iter_optional_meta()).map_err(|e| meta_err(id, e.to_string()))?;
    let mut signedness = opt.iter_signedness();
    let mut charsets = opt.iter_charset();
    let mut enum_set_charsets = opt.iter_enum_and_set_charset();
    let mut names = opt.iter_column_name();
    let mut enum_labels = Vec::new();
    let mut set_labels = Vec::new();
    for field in tme.iter_optional_meta() {
        match field.map_err(|e| meta_err(id, e.to_string()))? {
            OptionalMetadataField::EnumStrValue(v) => {
                for col in v.iter_values() {
                    let col = col.map_err(|e| meta_err(id, e.to_string()))?;
                    enum_labels.push(
                        col.values()
                            .iter()
                            .map(|l| l.value_raw().to_vec())
                            .collect::<Vec<_>>(),
                    );
                }
            }
            OptionalMetadataField::SetStrValue(v) => {
                for col in v.iter_values() {
                    let col = col.map_err(|e| meta_err(id, e.to_string()))?;
                    set_labels.push(
                        col.values()
                            .iter()
                            .map(|l| l.value_raw().to_vec())
                            .collect::<Vec<_>>(),
                    );
                }
            }
            _ => {}
        }
    }
    let (mut enum_labels, mut set_labels) = (enum_labels.into_iter(), set_labels.into_iter());
    let nulls = tme.null_bitmask();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let name = names
            .next()
            .transpose()
            .map_err(|e| meta_err(id, e.to_string()))?
            .map(|c| c.name().into_owned());
        let label = || name.clone().unwrap_or_else(|| format!("#{}", i + 1));
        let raw = match tme.get_raw_column_type(i) {
            Ok(Some(t)) => t,
            Ok(None) => return Err(meta_err(id, format!("no type for column {}", i + 1))),
            Err(e) => return Err(unsupported(id, &label(), format!("binlog type code {}", e.0))),
        };
        let ty = tme
            .get_column_type(i)
            .map_err(|e| unsupported(id, &label(), format!("{raw:?} ({e})")))?
            .unwrap_or(raw);
        let meta = tme
            .get_column_metadata(i)
            .ok_or_else(|| meta_err(id, format!("no metadata for column {}", label())))?
            .to_vec();
        let unsigned = ty.is_numeric_type() && signedness.next().unwrap_or(false);
        let collation = if ty.is_character_type() {
            charsets
                .next()
                .transpose()
                .map_err(|e| meta_err(id, e.to_string()))?
        } else if ty.is_enum_or_set_type() {
            enum_set_charsets
                .next()
                .transpose()
                .map_err(|e| meta_err(id, e.to_string()))?
        } else {
            None
        };
        let labels = match ty {
            MyType::MYSQL_TYPE_ENUM => enum_labels.next(),
            MyType::MYSQL_TYPE_SET => set_labels.next(),
            _ => None,
        };
        out.push(MapColumn {
            name,
            ty,
            meta,
            nullable: nulls.get(i).is_some_and(|b| *b),
            unsigned,
            collation,
            labels,
        });
    }
    Ok(out)
}

/// Does `information_schema`'s `DATA_TYPE` name the same kind of column as the binlog type?
fn same_family(data_type: &str, ty: MyType) -> bool {
    use MyType::*;
    match data_type {
        "tinyint" => ty == MYSQL_TYPE_TINY,
        "smallint" => ty == MYSQL_TYPE_SHORT,
        "mediumint" => ty == MYSQL_TYPE_INT24,
        "int" | "integer" => ty == MYSQL_TYPE_LONG,
        "bigint" => ty == MYSQL_TYPE_LONGLONG,
        "float" => ty == MYSQL_TYPE_FLOAT,
        "double" | "real" => ty == MYSQL_TYPE_DOUBLE,
        "decimal" | "numeric" => ty == MYSQL_TYPE_NEWDECIMAL,
        "date" => matches!(ty, MYSQL_TYPE_DATE | MYSQL_TYPE_NEWDATE),
        "time" => matches!(ty, MYSQL_TYPE_TIME | MYSQL_TYPE_TIME2),
        "datetime" => matches!(ty, MYSQL_TYPE_DATETIME | MYSQL_TYPE_DATETIME2),
        "timestamp" => matches!(ty, MYSQL_TYPE_TIMESTAMP | MYSQL_TYPE_TIMESTAMP2),
        "year" => ty == MYSQL_TYPE_YEAR,
        "bit" => ty == MYSQL_TYPE_BIT,
        "enum" => ty == MYSQL_TYPE_ENUM,
        "set" => ty == MYSQL_TYPE_SET,
        "char" | "binary" => ty == MYSQL_TYPE_STRING,
        "varchar" | "varbinary" => ty == MYSQL_TYPE_VARCHAR,
        "tinytext" | "text" | "mediumtext" | "longtext" | "tinyblob" | "blob" | "mediumblob" | "longblob" => {
            ty == MYSQL_TYPE_BLOB
        }
        "json" => matches!(ty, MYSQL_TYPE_JSON | MYSQL_TYPE_BLOB),
        _ => false,
    }
}

/// `information_schema` types this capture knows it cannot carry.
fn known_unsupported(data_type: &str) -> bool {
    matches!(
        data_type,
        "uuid"
            | "inet4"
            | "inet6"
            | "vector"
            | "geometry"
            | "point"
            | "linestring"
            | "polygon"
            | "multipoint"
            | "multilinestring"
            | "multipolygon"
            | "geometrycollection"
            | "geomcollection"
    )
}

/// Builds the plan for a table map. `info` is `information_schema`'s view of the
/// table (empty when the table no longer exists).
pub fn build_plan(
    tme: &TableMapEvent<'_>,
    facts: &TableFacts,
    server: &ServerCharsets,
) -> Result<TablePlan, MysqlCaptureError> {
    build_plan_with(tme, facts, server, true)
}

/// Whether `facts` describe the table map (the same check [`build_plan`]
/// makes, without its warning).
pub fn describes(
    tme: &TableMapEvent<'_>,
    facts: &TableFacts,
    server: &ServerCharsets,
) -> Result<bool, MysqlCaptureError> {
    Ok(build_plan_with(tme, facts, server, false)?.consistent)
}

/// A catalog-like description of a definition from capture's schema history,
/// for [`build_plan`] (the history knows what the catalog knew when the row
/// was written).
pub fn facts_of(schema: &TableSchema, unique_key_names: &[String]) -> TableFacts {
    let data_type = |c: &ColumnDef| -> &'static str {
        match &c.ty {
            ColumnType::Bool | ColumnType::Integer { bytes: 1, .. } => "tinyint",
            ColumnType::Integer { bytes: 2, .. } => "smallint",
            ColumnType::Integer { bytes: 3, .. } => "mediumint",
            ColumnType::Integer { bytes: 4, .. } => "int",
            ColumnType::Integer { .. } => "bigint",
            ColumnType::Decimal { .. } => "decimal",
            ColumnType::Float => "float",
            ColumnType::Double => "double",
            ColumnType::Date => "date",
            ColumnType::Time { .. } => "time",
            ColumnType::DateTime { .. } => "datetime",
            ColumnType::Timestamp { .. } => "timestamp",
            ColumnType::Year => "year",
            ColumnType::Char { .. } => "char",
            ColumnType::VarChar { .. } => "varchar",
            ColumnType::Text { max_bytes: 255 } => "tinytext",
            ColumnType::Text { max_bytes: 65_535 } => "text",
            ColumnType::Text {
                max_bytes: 16_777_215,
            } => "mediumtext",
            ColumnType::Text { .. } | ColumnType::Json => "longtext",
            ColumnType::Binary { .. } => "binary",
            ColumnType::VarBinary { .. } => "varbinary",
            ColumnType::Blob { max_bytes: 255 } => "tinyblob",
            ColumnType::Blob { max_bytes: 65_535 } => "blob",
            ColumnType::Blob {
                max_bytes: 16_777_215,
            } => "mediumblob",
            ColumnType::Blob { .. } => "longblob",
            ColumnType::Enum { .. } => "enum",
            ColumnType::Set { .. } => "set",
            ColumnType::Bit { .. } => "bit",
            // PostgreSQL-source types never occur in a MySQL definition.
            ColumnType::Uuid
            | ColumnType::Other { .. }
            | ColumnType::Numeric
            | ColumnType::TimestampTz { .. }
            | ColumnType::Interval => "other",
        }
    };
    let char_len = |c: &ColumnDef| -> Option<u64> {
        match c.ty {
            ColumnType::Char { length }
            | ColumnType::VarChar { length }
            | ColumnType::Binary { length }
            | ColumnType::VarBinary { length } => Some(length as u64),
            _ => None,
        }
    };
    let name = |i: usize| schema.columns[i].name.clone();
    TableFacts {
        columns: schema
            .columns
            .iter()
            .map(|c| InfoColumn {
                name: c.name.clone(),
                data_type: data_type(c).into(),
                column_type: c.source_type.clone(),
                nullable: c.nullable,
                charset: c.charset.clone(),
                char_max_len: char_len(c),
                json_check: c.ty == ColumnType::Json,
                collation: c.collation.clone(),
            })
            .collect(),
        primary_key: schema.primary_key.iter().map(|&i| name(i)).collect(),
        unique_keys: schema
            .unique_keys
            .iter()
            .map(|k| k.iter().map(|&i| name(i)).collect())
            .collect(),
        unique_key_names: (0..schema.unique_keys.len())
            .map(|i| unique_key_names.get(i).cloned().unwrap_or_default())
            .collect(),
        foreign_keys: schema.foreign_keys.clone(),
        cascades: schema.cascades.clone(),
    }
}

fn build_plan_with(
    tme: &TableMapEvent<'_>,
    facts: &TableFacts,
    server: &ServerCharsets,
    warn: bool,
) -> Result<TablePlan, MysqlCaptureError> {
    let info = facts.columns.as_slice();
    let id = TableId::new(tme.database_name(), tme.table_name());
    let cols = map_columns(tme, &id)?;

    // Refuse types we know we cannot carry, even if the binlog looks decodable (MariaDB's
    // UUID/INET6 are logged as BINARY(16) but SELECT shows them as text).
    for (i, ic) in info.iter().enumerate() {
        if known_unsupported(&ic.data_type)
            && cols
                .get(i)
                .is_some_and(|c| c.name.as_deref().is_none_or(|n| n == ic.name))
        {
            return Err(unsupported(&id, &ic.name, ic.column_type.clone()));
        }
    }
    // Same names and kinds of columns: information_schema may describe this table map.
    let same_shape = info.len() == cols.len()
        && cols.iter().zip(info).all(|(c, ic)| {
            c.name.as_deref().is_none_or(|n| n == ic.name) && same_family(&ic.data_type, c.ty)
        });

    let mut columns = Vec::with_capacity(cols.len());
    let mut decoders = Vec::with_capacity(cols.len());
    for (i, c) in cols.iter().enumerate() {
        let ic = info.get(i).filter(|_| same_shape);
        let name = c
            .name
            .clone()
            .or_else(|| ic.map(|ic| ic.name.clone()))
            .unwrap_or_else(|| format!("@{}", i + 1));
        let (charset_name, collation_name) = match c.collation {
            Some(coll) => {
                let info = server.collations.get(&coll).ok_or_else(|| {
                    unsupported(
                        &id,
                        &name,
                        format!("column with collation id {coll}, unknown to this server"),
                    )
                })?;
                (Some(info.charset.clone()), Some(info.name.clone()))
            }
            // Without charset metadata (binlog_row_metadata=MINIMAL) fall back to the catalog.
            None if c.ty.is_character_type() || c.ty.is_enum_or_set_type() => (
                ic.and_then(|ic| ic.charset.clone()),
                ic.and_then(|ic| ic.collation.clone()),
            ),
            None => (None, None),
        };
        let charset = charset_name.as_deref().map(Charset::from_name_or_unsupported);
        let max_len = charset_name.as_deref().map_or(1, |cs| server.max_len(cs));
        let (ty, decoder, source_type) = column_type(c, charset, max_len, &id, &name)?;
        let text = !matches!(charset, Some(Charset::Binary) | None);
        columns.push(ColumnDef {
            name,
            ty,
            nullable: c.nullable,
            charset: if text { charset_name } else { None },
            collation: if text { collation_name } else { None },
            source_type,
        });
        decoders.push(decoder);
    }

    // information_schema describes the table map exactly when every column's type text agrees
    // (an ALTER since the row was written changes at least one); then take its spelling of the
    // types and, on MariaDB, which LONGTEXT columns are JSON.
    let agrees = |c: &ColumnDef, ic: &InfoColumn| {
        normalize_column_type(&c.source_type) == normalize_column_type(&ic.column_type)
    };
    let consistent = same_shape && columns.iter().zip(info).all(|(c, ic)| agrees(c, ic));
    if same_shape {
        // Column by column: a column whose type text agrees takes the catalog's
        // spelling and, on MariaDB, its JSON-ness (even when another column of
        // the table was altered since the row was written).
        for ((col, dec), ic) in columns.iter_mut().zip(decoders.iter_mut()).zip(info) {
            if !agrees(col, ic) {
                continue;
            }
            col.source_type = ic.column_type.clone();
            if let ColumnDecoder::Blob {
                pack,
                content: BlobContent::Text(cs),
            } = *dec
            {
                if ic.json_check || ic.data_type == "json" {
                    col.ty = ColumnType::Json;
                    *dec = ColumnDecoder::Blob {
                        pack,
                        content: BlobContent::JsonText(cs),
                    };
                }
            }
        }
    }
    if !consistent && warn {
        tracing::warn!(
            table = %id,
            binlog_columns = cols.len(),
            information_schema_columns = info.len(),
            "information_schema no longer matches the binlog table map (table altered or dropped since); \
             describing the table from the table map alone"
        );
    }
    let primary_key = primary_key(tme, &id, columns.len())?;
    // Unique keys from the catalog, when they still name columns of this table map.
    let (unique_keys, unique_key_names) = if consistent {
        resolve_unique_keys(facts, &columns, &primary_key)
    } else {
        (Vec::new(), Vec::new())
    };
    let mut schema = TableSchema {
        id,
        columns,
        primary_key,
        unique_keys,
        foreign_keys: facts.foreign_keys.clone(),
        cascades: facts.cascades.clone(),
    };
    let mut unique_key_names = unique_key_names;
    promote_identity(&mut schema, &mut unique_key_names);
    Ok(TablePlan {
        null_bitmap_len: schema.columns.len().div_ceil(8),
        schema: Arc::new(schema),
        decoders,
        consistent,
        unique_key_names,
    })
}

/// The facts' UNIQUE keys as column indexes (keys naming a column the table
/// does not have are left out, as is one equal to the primary key), with
/// their names.
fn resolve_unique_keys(
    facts: &TableFacts,
    columns: &[ColumnDef],
    primary_key: &[usize],
) -> (Vec<Vec<usize>>, Vec<String>) {
    facts
        .unique_keys
        .iter()
        .enumerate()
        .filter_map(|(i, k)| {
            let cols = k
                .iter()
                .map(|n| columns.iter().position(|c| &c.name == n))
                .collect::<Option<Vec<usize>>>()?;
            (!cols.is_empty() && cols != primary_key)
                .then(|| (cols, facts.unique_key_names.get(i).cloned().unwrap_or_default()))
        })
        .unzip()
}

/// A table without a primary key but with a UNIQUE key over NOT NULL columns
/// is keyed by that key, as InnoDB does (it becomes the clustered index): the
/// appliers upsert and delete by it, and a snapshot copies the table by its
/// ranges. The first such key (in the catalog's order) is taken.
pub fn promote_identity(schema: &mut TableSchema, names: &mut Vec<String>) {
    if schema.has_primary_key() {
        return;
    }
    let Some(i) = schema
        .unique_keys
        .iter()
        .position(|k| !k.is_empty() && k.iter().all(|&c| !schema.columns[c].nullable))
    else {
        return;
    };
    schema.primary_key = schema.unique_keys.remove(i);
    if i < names.len() {
        names.remove(i);
    }
}

/// A table's definition from the catalog alone (a snapshot's read view, where
/// there is no table map): the same definition [`build_plan`] gives for a
/// table map the catalog describes.
pub fn schema_from_facts(
    id: TableId,
    facts: &TableFacts,
    server: &ServerCharsets,
) -> Result<(TableSchema, Vec<String>), MysqlCaptureError> {
    let mut columns = Vec::with_capacity(facts.columns.len());
    for ic in &facts.columns {
        if known_unsupported(&ic.data_type) {
            return Err(unsupported(&id, &ic.name, ic.column_type.clone()));
        }
        let ty = column_type_from_info(ic, &id)?;
        let text = ic.charset.as_deref().is_some_and(|c| c != "binary")
            && matches!(
                ty,
                ColumnType::Char { .. }
                    | ColumnType::VarChar { .. }
                    | ColumnType::Text { .. }
                    | ColumnType::Json
                    | ColumnType::Enum { .. }
                    | ColumnType::Set { .. }
            );
        let _ = server;
        columns.push(ColumnDef {
            name: ic.name.clone(),
            ty,
            nullable: ic.nullable,
            charset: if text { ic.charset.clone() } else { None },
            collation: if text { ic.collation.clone() } else { None },
            source_type: ic.column_type.clone(),
        });
    }
    let primary_key = facts
        .primary_key
        .iter()
        .map(|n| {
            columns
                .iter()
                .position(|c| &c.name == n)
                .ok_or_else(|| meta_err(&id, format!("primary key column {n} is not a column")))
        })
        .collect::<Result<Vec<usize>, _>>()?;
    let (unique_keys, mut names) = resolve_unique_keys(facts, &columns, &primary_key);
    let mut schema = TableSchema {
        id,
        columns,
        primary_key,
        unique_keys,
        foreign_keys: facts.foreign_keys.clone(),
        cascades: facts.cascades.clone(),
    };
    promote_identity(&mut schema, &mut names);
    Ok((schema, names))
}

/// The `(…)` arguments of a `COLUMN_TYPE` (`decimal(10,2)` → `["10", "2"]`).
fn type_args(column_type: &str) -> Vec<&str> {
    let Some(open) = column_type.find('(') else {
        return Vec::new();
    };
    let Some(close) = column_type[open..].find(')') else {
        return Vec::new();
    };
    column_type[open + 1..open + close]
        .split(',')
        .map(str::trim)
        .collect()
}

/// ENUM/SET labels from a `COLUMN_TYPE` (`enum('a','it''s')`): quoted, `''`
/// standing for a quote.
pub fn type_labels(column_type: &str) -> Vec<String> {
    let Some(open) = column_type.find('(') else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut cur: Option<String> = None;
    let mut chars = column_type[open + 1..].chars().peekable();
    while let Some(c) = chars.next() {
        match (&mut cur, c) {
            (None, '\'') => cur = Some(String::new()),
            (None, ')') => break,
            (None, _) => {}
            (Some(label), '\'') => {
                if chars.peek() == Some(&'\'') {
                    chars.next();
                    label.push('\'');
                } else {
                    out.push(cur.take().expect("in a label"));
                }
            }
            (Some(label), c) => label.push(c),
        }
    }
    out
}

/// The pipeline type of one catalog column (the same one the table map gives).
fn column_type_from_info(ic: &InfoColumn, id: &TableId) -> Result<ColumnType, MysqlCaptureError> {
    let ct = ic.column_type.to_ascii_lowercase();
    let args = type_args(&ct);
    let num = |i: usize, default: u32| -> u32 { args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default) };
    let unsigned = ct.contains("unsigned");
    let len = || ic.char_max_len.unwrap_or(0) as u32;
    let int = |bytes: u8| ColumnType::Integer { bytes, unsigned };
    Ok(match ic.data_type.as_str() {
        "tinyint" => int(1),
        "smallint" => int(2),
        "mediumint" => int(3),
        "int" | "integer" => int(4),
        "bigint" => int(8),
        "decimal" | "numeric" => ColumnType::Decimal {
            precision: num(0, 10) as u8,
            scale: num(1, 0) as u8,
        },
        "float" => ColumnType::Float,
        "double" | "real" => ColumnType::Double,
        "date" => ColumnType::Date,
        "time" => ColumnType::Time { fsp: num(0, 0) as u8 },
        "datetime" => ColumnType::DateTime { fsp: num(0, 0) as u8 },
        "timestamp" => ColumnType::Timestamp { fsp: num(0, 0) as u8 },
        "year" => ColumnType::Year,
        "bit" => ColumnType::Bit {
            width: num(0, 1) as u16,
        },
        "enum" => ColumnType::Enum {
            labels: type_labels(&ic.column_type),
        },
        "set" => ColumnType::Set {
            labels: type_labels(&ic.column_type),
        },
        "char" => ColumnType::Char { length: len() },
        "varchar" => ColumnType::VarChar { length: len() },
        "binary" => ColumnType::Binary { length: len() },
        "varbinary" => ColumnType::VarBinary { length: len() },
        "tinytext" | "text" | "mediumtext" | "longtext" if ic.json_check => ColumnType::Json,
        "json" => ColumnType::Json,
        "tinytext" => ColumnType::Text { max_bytes: 255 },
        "text" => ColumnType::Text { max_bytes: 65_535 },
        "mediumtext" => ColumnType::Text {
            max_bytes: 16_777_215,
        },
        "longtext" => ColumnType::Text {
            max_bytes: 4_294_967_295,
        },
        "tinyblob" => ColumnType::Blob { max_bytes: 255 },
        "blob" => ColumnType::Blob { max_bytes: 65_535 },
        "mediumblob" => ColumnType::Blob {
            max_bytes: 16_777_215,
        },
        "longblob" => ColumnType::Blob {
            max_bytes: 4_294_967_295,
        },
        other => return Err(unsupported(id, &ic.name, format!("{other} ({})", ic.column_type))),
    })
}

fn primary_key(tme: &TableMapEvent<'_>, id: &TableId, n: usize) -> Result<Vec<usize>, MysqlCaptureError> {
    let opt =
        OptionalMetaExtractor::new(tme.iter_optional_meta()).map_err(|e| meta_err(id, e.to_string()))?;
    let mut pk = Vec::new();
    for idx in opt.iter_primary_key() {
        let idx = idx.map_err(|e| meta_err(id, e.to_string()))? as usize;
        if idx >= n {
            return Err(meta_err(
                id,
                format!("primary key column index {idx} beyond {n} columns"),
            ));
        }
        pk.push(idx);
    }
    Ok(pk)
}

/// The pipeline type, the decoder and a synthesized `COLUMN_TYPE` for one column.
fn column_type(
    c: &MapColumn,
    charset: Option<Charset>,
    max_len: u32,
    id: &TableId,
    name: &str,
) -> Result<(ColumnType, ColumnDecoder, String), MysqlCaptureError> {
    use MyType::*;
    let m = &c.meta;
    let meta = |i: usize| -> Result<u8, MysqlCaptureError> {
        m.get(i)
            .copied()
            .ok_or_else(|| meta_err(id, format!("column {name}: short {:?} metadata", c.ty)))
    };
    let uns = if c.unsigned { " unsigned" } else { "" };
    let int = |bytes: u8, sql: &str| {
        (
            ColumnType::Integer {
                bytes,
                unsigned: c.unsigned,
            },
            ColumnDecoder::Int {
                bytes,
                unsigned: c.unsigned,
            },
            format!("{sql}{uns}"),
        )
    };
    let text_charset = || charset.unwrap_or(Charset::Binary);
    // Characters from a byte length: the server stores `chars × mbmaxlen` bytes.
    let chars = |bytes: u32| -> u32 { bytes / max_len.max(1) };
    let decode_labels = |labels: &Option<Vec<Vec<u8>>>| -> Result<Vec<String>, MysqlCaptureError> {
        let cs = charset.unwrap_or(Charset::Utf8);
        labels
            .as_ref()
            .ok_or_else(|| {
                meta_err(
                    id,
                    format!("column {name}: no ENUM/SET labels (binlog_row_metadata must be FULL)"),
                )
            })?
            .iter()
            .map(|l| {
                cs.decode(l)
                    .map_err(|e| meta_err(id, format!("column {name}: label: {e}")))
            })
            .collect()
    };
    let quoted = |labels: &[String]| {
        labels
            .iter()
            .map(|l| format!("'{}'", l.replace('\'', "''")))
            .collect::<Vec<_>>()
            .join(",")
    };
    Ok(match c.ty {
        MYSQL_TYPE_TINY => int(1, "tinyint"),
        MYSQL_TYPE_SHORT => int(2, "smallint"),
        MYSQL_TYPE_INT24 => int(3, "mediumint"),
        MYSQL_TYPE_LONG => int(4, "int"),
        MYSQL_TYPE_LONGLONG => int(8, "bigint"),
        MYSQL_TYPE_FLOAT => (ColumnType::Float, ColumnDecoder::Float, format!("float{uns}")),
        MYSQL_TYPE_DOUBLE => (ColumnType::Double, ColumnDecoder::Double, format!("double{uns}")),
        MYSQL_TYPE_NEWDECIMAL => {
            let (precision, scale) = (meta(0)?, meta(1)?);
            (
                ColumnType::Decimal { precision, scale },
                ColumnDecoder::Decimal { precision, scale },
                format!("decimal({precision},{scale}){uns}"),
            )
        }
        MYSQL_TYPE_DATE | MYSQL_TYPE_NEWDATE => (ColumnType::Date, ColumnDecoder::Date, "date".into()),
        MYSQL_TYPE_TIME2 => {
            let fsp = meta(0)?;
            (
                ColumnType::Time { fsp },
                ColumnDecoder::Time2 { fsp },
                with_fsp("time", fsp),
            )
        }
        MYSQL_TYPE_DATETIME2 => {
            let fsp = meta(0)?;
            (
                ColumnType::DateTime { fsp },
                ColumnDecoder::DateTime2 { fsp },
                with_fsp("datetime", fsp),
            )
        }
        MYSQL_TYPE_TIMESTAMP2 => {
            let fsp = meta(0)?;
            (
                ColumnType::Timestamp { fsp },
                ColumnDecoder::Timestamp2 { fsp },
                with_fsp("timestamp", fsp),
            )
        }
        MYSQL_TYPE_TIME if m.is_empty() => {
            (ColumnType::Time { fsp: 0 }, ColumnDecoder::TimeOld, "time".into())
        }
        MYSQL_TYPE_DATETIME if m.is_empty() => (
            ColumnType::DateTime { fsp: 0 },
            ColumnDecoder::DateTimeOld,
            "datetime".into(),
        ),
        MYSQL_TYPE_TIMESTAMP if m.is_empty() => (
            ColumnType::Timestamp { fsp: 0 },
            ColumnDecoder::TimestampOld,
            "timestamp".into(),
        ),
        MYSQL_TYPE_YEAR => (ColumnType::Year, ColumnDecoder::Year, "year".into()),
        MYSQL_TYPE_BIT => {
            let width = meta(1)? as u16 * 8 + meta(0)? as u16;
            (
                ColumnType::Bit { width },
                ColumnDecoder::Bit { width },
                format!("bit({width})"),
            )
        }
        MYSQL_TYPE_ENUM => {
            let labels = decode_labels(&c.labels)?;
            let sql = format!("enum({})", quoted(&labels));
            (
                ColumnType::Enum {
                    labels: labels.clone(),
                },
                ColumnDecoder::Enum {
                    pack: meta(1)?,
                    labels,
                },
                sql,
            )
        }
        MYSQL_TYPE_SET => {
            let labels = decode_labels(&c.labels)?;
            let sql = format!("set({})", quoted(&labels));
            (
                ColumnType::Set {
                    labels: labels.clone(),
                },
                ColumnDecoder::Set {
                    pack: meta(1)?,
                    labels,
                },
                sql,
            )
        }
        MYSQL_TYPE_STRING => {
            let (m0, m1) = (meta(0)?, meta(1)?);
            // Lengths over 255 borrow two bits of the real-type byte (Field_string::save_field_metadata).
            let max_bytes = if m0 & 0x30 != 0x30 {
                ((((m0 & 0x30) ^ 0x30) as u32) << 4) | m1 as u32
            } else {
                m1 as u32
            };
            match text_charset() {
                Charset::Binary => (
                    ColumnType::Binary { length: max_bytes },
                    ColumnDecoder::Binary { length: max_bytes },
                    format!("binary({max_bytes})"),
                ),
                cs => {
                    let length = chars(max_bytes);
                    (
                        ColumnType::Char { length },
                        ColumnDecoder::Char {
                            max_bytes,
                            charset: cs,
                        },
                        format!("char({length})"),
                    )
                }
            }
        }
        MYSQL_TYPE_VARCHAR => {
            let max_bytes = u16::from_le_bytes([meta(0)?, meta(1)?]) as u32;
            match text_charset() {
                Charset::Binary => (
                    ColumnType::VarBinary { length: max_bytes },
                    ColumnDecoder::VarString {
                        max_bytes,
                        charset: Charset::Binary,
                    },
                    format!("varbinary({max_bytes})"),
                ),
                cs => {
                    let length = chars(max_bytes);
                    (
                        ColumnType::VarChar { length },
                        ColumnDecoder::VarString {
                            max_bytes,
                            charset: cs,
                        },
                        format!("varchar({length})"),
                    )
                }
            }
        }
        MYSQL_TYPE_BLOB => {
            let pack = meta(0)?;
            let (max_bytes, prefix) = match pack {
                1 => (255u64, "tiny"),
                2 => (65_535, ""),
                3 => (16_777_215, "medium"),
                4 => (4_294_967_295, "long"),
                p => return Err(meta_err(id, format!("column {name}: BLOB pack length {p}"))),
            };
            match text_charset() {
                Charset::Binary => (
                    ColumnType::Blob { max_bytes },
                    ColumnDecoder::Blob {
                        pack,
                        content: BlobContent::Bytes,
                    },
                    format!("{prefix}blob"),
                ),
                cs => (
                    ColumnType::Text { max_bytes },
                    ColumnDecoder::Blob {
                        pack,
                        content: BlobContent::Text(cs),
                    },
                    format!("{prefix}text"),
                ),
            }
        }
        MYSQL_TYPE_JSON => (
            ColumnType::Json,
            ColumnDecoder::JsonBinary { pack: meta(0)? },
            "json".into(),
        ),
        other => {
            let ty = format!("{other:?}");
            let ty = ty.strip_prefix("MYSQL_TYPE_").unwrap_or(&ty).to_ascii_lowercase();
            return Err(unsupported(id, name, ty));
        }
    })
}

/// `COLUMN_TYPE` text without what the binlog cannot know: integer display widths,
/// `ZEROFILL`, FLOAT/DOUBLE `(M,D)`.
fn normalize_column_type(t: &str) -> String {
    let t = t.trim().to_ascii_lowercase().replace(" zerofill", "");
    let base_end = t
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(t.len());
    let base = &t[..base_end];
    let strip = matches!(
        base,
        "tinyint"
            | "smallint"
            | "mediumint"
            | "int"
            | "integer"
            | "bigint"
            | "year"
            | "float"
            | "double"
            | "real"
    );
    if strip && t[base_end..].starts_with('(') {
        if let Some(close) = t[base_end..].find(')') {
            return format!("{base}{}", &t[base_end + close + 1..]);
        }
    }
    t
}

fn with_fsp(base: &str, fsp: u8) -> String {
    if fsp == 0 {
        base.to_owned()
    } else {
        format!("{base}({fsp})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_arguments_of_column_types() {
        assert_eq!(type_labels("enum('a','it''s','x,y')"), ["a", "it's", "x,y"]);
        assert_eq!(type_labels("set('')"), [""]);
        assert_eq!(type_labels("enum('(',')')"), ["(", ")"]);
        assert_eq!(type_args("decimal(10,2) unsigned"), ["10", "2"]);
        assert!(type_args("int").is_empty());
    }

    #[test]
    fn column_type_text_normalization() {
        assert_eq!(normalize_column_type("int(10) unsigned"), "int unsigned");
        assert_eq!(normalize_column_type("INT(11) UNSIGNED ZEROFILL"), "int unsigned");
        assert_eq!(normalize_column_type("year(4)"), "year");
        assert_eq!(normalize_column_type("double(10,2)"), "double");
        assert_eq!(normalize_column_type("decimal(10,2)"), "decimal(10,2)");
        assert_eq!(normalize_column_type("varchar(50)"), "varchar(50)");
        assert_eq!(normalize_column_type("enum('a','b')"), "enum('a','b')");
        assert_ne!(
            normalize_column_type("varchar(5)"),
            normalize_column_type("varchar(50)")
        );
    }
}
