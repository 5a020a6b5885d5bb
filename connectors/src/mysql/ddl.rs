//! MySQL / MariaDB DDL: reading the statements capture sees in the binlog,
//! applying them to a table's definition, and rewriting their table names
//! for a replica.
//!
//! # Why a hand-written parser
//! `sqlparser` (used for DML elsewhere) refuses much of what MariaDB accepts
//! in `ALTER TABLE` (`ENGINE=`, `ALGORITHM=`, `CONVERT TO CHARACTER SET`,
//! `ADD UNIQUE KEY name`, partitions, `IF [NOT] EXISTS` clauses…), and a
//! replica needs more than an AST: the byte ranges of the table names, to
//! rewrite them for a mapped database while leaving the rest of the statement
//! exactly as the source ran it. This module tokenizes MySQL's lexical rules
//! (quoted identifiers, strings with both escapes, comments, executable
//! comments) and reads the statements that change tables; a clause it does
//! not know becomes [`Clause::Unsupported`] (a translating replica stops the
//! table), never a guess.
//!
//! # Definitions after a change
//! [`apply`] turns a statement and the table's previous definition into the
//! definition after it and the engine-neutral [`AlterAction`]s. Types are
//! mapped exactly as the binlog's table map maps them (tested against it), so
//! the definition a DDL event carries is the one the next row event has.

use super::binlog_table::{promote_identity, ServerCharsets};
use pipeline::ddl::{AlterAction, Fill};
use pipeline::schema::{ColumnDef, ColumnType, TableId, TableSchema};
use pipeline::value::{Date, DateTime, Time, Value};

// ---------------------------------------------------------------------------
// Tokens
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    /// An unquoted word: a keyword or an identifier.
    Word(String),
    /// A backquoted identifier.
    Quoted(String),
    /// A string literal ('…' or "…"), unescaped.
    Str(String),
    /// A number, hex or bit literal as written.
    Num(String),
    Punct(char),
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    start: usize,
    end: usize,
}

fn is_ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || c == '$' || !c.is_ascii()
}

fn lex(sql: &str) -> Result<Vec<Token>, String> {
    let b: Vec<(usize, char)> = sql.char_indices().collect();
    let end_of = |i: usize| b.get(i).map_or(sql.len(), |(p, _)| *p);
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let (start, c) = b[i];
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        // Comments: /* … */ (executable /*!nnnnn … */ comments are code),
        // -- to the end of the line, # to the end of the line.
        if c == '/' && b.get(i + 1).is_some_and(|x| x.1 == '*') {
            if b.get(i + 2).is_some_and(|x| x.1 == '!') {
                i += 3;
                while b.get(i).is_some_and(|x| x.1.is_ascii_digit()) {
                    i += 1;
                }
                continue;
            }
            let mut j = i + 2;
            while j + 1 < b.len() && !(b[j].1 == '*' && b[j + 1].1 == '/') {
                j += 1;
            }
            i = j + 2;
            continue;
        }
        if c == '*' && b.get(i + 1).is_some_and(|x| x.1 == '/') {
            // The end of an executable comment.
            i += 2;
            continue;
        }
        if (c == '-'
            && b.get(i + 1).is_some_and(|x| x.1 == '-')
            && b.get(i + 2).is_none_or(|x| x.1.is_whitespace()))
            || c == '#'
        {
            while b.get(i).is_some_and(|x| x.1 != '\n') {
                i += 1;
            }
            continue;
        }
        if c == '`' {
            let mut s = String::new();
            let mut j = i + 1;
            loop {
                match b.get(j) {
                    None => return Err("unterminated quoted identifier".into()),
                    Some((_, '`')) if b.get(j + 1).is_some_and(|x| x.1 == '`') => {
                        s.push('`');
                        j += 2;
                    }
                    Some((_, '`')) => break,
                    Some((_, ch)) => {
                        s.push(*ch);
                        j += 1;
                    }
                }
            }
            out.push(Token {
                tok: Tok::Quoted(s),
                start,
                end: end_of(j + 1),
            });
            i = j + 1;
            continue;
        }
        if c == '\'' || c == '"' {
            let q = c;
            let mut s = String::new();
            let mut j = i + 1;
            loop {
                match b.get(j) {
                    None => return Err("unterminated string".into()),
                    Some((_, '\\')) => {
                        let e = b.get(j + 1).map(|x| x.1).ok_or("unterminated string")?;
                        s.push(match e {
                            'n' => '\n',
                            't' => '\t',
                            'r' => '\r',
                            '0' => '\0',
                            'b' => '\u{8}',
                            'Z' => '\u{1a}',
                            other => other,
                        });
                        j += 2;
                    }
                    Some((_, ch)) if *ch == q && b.get(j + 1).is_some_and(|x| x.1 == q) => {
                        s.push(q);
                        j += 2;
                    }
                    Some((_, ch)) if *ch == q => break,
                    Some((_, ch)) => {
                        s.push(*ch);
                        j += 1;
                    }
                }
            }
            out.push(Token {
                tok: Tok::Str(s),
                start,
                end: end_of(j + 1),
            });
            i = j + 1;
            continue;
        }
        // x'..' / b'..' literals and 0x… / 0b… numbers.
        if (c == 'x' || c == 'X' || c == 'b' || c == 'B') && b.get(i + 1).is_some_and(|x| x.1 == '\'') {
            let mut j = i + 2;
            while b.get(j).is_some_and(|x| x.1 != '\'') {
                j += 1;
            }
            out.push(Token {
                tok: Tok::Num(sql[start..end_of(j + 1)].to_string()),
                start,
                end: end_of(j + 1),
            });
            i = j + 1;
            continue;
        }
        if c.is_ascii_digit() || (c == '.' && b.get(i + 1).is_some_and(|x| x.1.is_ascii_digit())) {
            let mut j = i;
            let mut word = false;
            while let Some((_, ch)) = b.get(j) {
                if ch.is_ascii_alphanumeric() || *ch == '.' || *ch == '_' || *ch == '$' {
                    if ch.is_ascii_alphabetic() && !matches!(ch, 'e' | 'E' | 'x' | 'X' | 'b' | 'B')
                        || *ch == '_'
                    {
                        word = true;
                    }
                    j += 1;
                } else if (*ch == '+' || *ch == '-') && matches!(b[j - 1].1, 'e' | 'E') {
                    j += 1;
                } else {
                    break;
                }
            }
            let text = sql[start..end_of(j)].to_string();
            // MySQL identifiers may start with a digit (`1abc`).
            let tok = if word && !text.contains('.') {
                Tok::Word(text)
            } else {
                Tok::Num(text)
            };
            out.push(Token {
                tok,
                start,
                end: end_of(j),
            });
            i = j;
            continue;
        }
        if is_ident_char(c) {
            let mut j = i;
            while b.get(j).is_some_and(|x| is_ident_char(x.1)) {
                j += 1;
            }
            out.push(Token {
                tok: Tok::Word(sql[start..end_of(j)].to_string()),
                start,
                end: end_of(j),
            });
            i = j;
            continue;
        }
        out.push(Token {
            tok: Tok::Punct(c),
            start,
            end: end_of(i + 1),
        });
        i += 1;
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Statements
// ---------------------------------------------------------------------------

/// A table name as written, with where it is in the statement.
#[derive(Debug, Clone, PartialEq)]
pub struct Name {
    pub db: Option<String>,
    pub table: String,
    pub span: (usize, usize),
}

impl Name {
    pub fn id(&self, default_db: &str) -> TableId {
        TableId::new(
            self.db.clone().unwrap_or_else(|| default_db.to_string()),
            self.table.clone(),
        )
    }
}

/// A column type as written.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TypeSpec {
    /// Lower case, multi-word types joined (`double precision`).
    pub base: String,
    pub args: Vec<String>,
    /// ENUM / SET labels.
    pub labels: Vec<String>,
    pub unsigned: bool,
    pub charset: Option<String>,
    pub collation: Option<String>,
    /// The `BINARY` attribute of a text type (its charset's binary collation).
    pub binary: bool,
}

/// A column's default as written.
#[derive(Debug, Clone, PartialEq)]
pub enum DefaultSpec {
    Null,
    /// A string literal.
    Str(String),
    /// A number, hex or bit literal, or `TRUE`/`FALSE`, with its sign.
    Num(String),
    CurrentTimestamp,
    /// Anything else, as written.
    Expr(String),
}

/// One column definition.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnSpec {
    pub name: String,
    pub ty: TypeSpec,
    pub nullable: Option<bool>,
    pub default: Option<DefaultSpec>,
    pub auto_increment: bool,
    pub primary: bool,
    pub unique: bool,
    pub generated: bool,
}

/// Where a column goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Placement {
    Last,
    First,
    After(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum KeyKind {
    Primary,
    Unique,
    Index,
    /// FULLTEXT / SPATIAL / vector indexes.
    Special,
    Foreign(Name),
    Check,
}

/// A key, index or constraint definition.
#[derive(Debug, Clone, PartialEq)]
pub struct KeySpec {
    pub kind: KeyKind,
    pub name: Option<String>,
    /// Columns, each with its prefix length when it has one.
    pub columns: Vec<(String, Option<u32>)>,
}

/// One clause of an `ALTER TABLE`.
#[derive(Debug, Clone, PartialEq)]
pub enum Clause {
    AddColumns(Vec<(ColumnSpec, Placement)>),
    AddKey(KeySpec),
    DropColumn(String),
    DropPrimaryKey,
    DropIndex(String),
    DropForeignKey(String),
    DropConstraint(String),
    SetDefault(String, DefaultSpec),
    DropDefault(String),
    Change {
        old: String,
        spec: ColumnSpec,
        placement: Placement,
    },
    Modify {
        spec: ColumnSpec,
        placement: Placement,
    },
    RenameColumn(String, String),
    RenameIndex(String, String),
    RenameTo(Name),
    ConvertCharset {
        charset: Option<String>,
        collation: Option<String>,
    },
    DefaultCharset {
        charset: Option<String>,
        collation: Option<String>,
    },
    /// Options that change nothing a replica's rows depend on.
    Option(String),
    /// A clause dbmux does not reproduce on another engine.
    Unsupported(String),
}

/// `CREATE TABLE` with a column list.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateTable {
    pub table: Name,
    pub if_not_exists: bool,
    pub or_replace: bool,
    pub columns: Vec<ColumnSpec>,
    pub keys: Vec<KeySpec>,
    pub charset: Option<String>,
    pub collation: Option<String>,
    /// `… SELECT …` / `… AS SELECT`: columns may come from the query.
    pub select: bool,
}

/// A statement that changes tables or databases.
#[derive(Debug, Clone, PartialEq)]
pub enum Statement {
    CreateTable(CreateTable),
    CreateTableLike {
        table: Name,
        like: Name,
        if_not_exists: bool,
        or_replace: bool,
    },
    Alter {
        table: Name,
        clauses: Vec<Clause>,
    },
    Rename(Vec<(Name, Name)>),
    Drop {
        tables: Vec<Name>,
    },
    CreateDatabase {
        name: String,
        span: (usize, usize),
    },
    DropDatabase {
        name: String,
        span: (usize, usize),
    },
    /// Temporary tables, views, routines, triggers, users, maintenance…:
    /// nothing that changes a captured table.
    Other,
}

struct Parser<'a> {
    sql: &'a str,
    t: Vec<Token>,
    i: usize,
    /// Every table name read, for rewriting.
    names: Vec<Name>,
}

type PResult<T> = Result<T, String>;

impl<'a> Parser<'a> {
    fn new(sql: &'a str) -> PResult<Self> {
        Ok(Parser {
            sql,
            t: lex(sql)?,
            i: 0,
            names: Vec::new(),
        })
    }

    fn peek(&self) -> Option<&Tok> {
        self.t.get(self.i).map(|t| &t.tok)
    }

    fn peek_at(&self, n: usize) -> Option<&Tok> {
        self.t.get(self.i + n).map(|t| &t.tok)
    }

    fn is_word(&self, w: &str) -> bool {
        matches!(self.peek(), Some(Tok::Word(x)) if x.eq_ignore_ascii_case(w))
    }

    fn is_word_at(&self, n: usize, w: &str) -> bool {
        matches!(self.peek_at(n), Some(Tok::Word(x)) if x.eq_ignore_ascii_case(w))
    }

    fn eat(&mut self, w: &str) -> bool {
        if self.is_word(w) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    /// Eats the words `ws` when they all come next.
    fn eat_all(&mut self, ws: &[&str]) -> bool {
        if ws.iter().enumerate().all(|(k, w)| self.is_word_at(k, w)) {
            self.i += ws.len();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, w: &str) -> PResult<()> {
        if self.eat(w) {
            Ok(())
        } else {
            Err(format!("expected {w} at {}", self.here()))
        }
    }

    fn punct(&self, c: char) -> bool {
        matches!(self.peek(), Some(Tok::Punct(x)) if *x == c)
    }

    fn eat_punct(&mut self, c: char) -> bool {
        if self.punct(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn here(&self) -> String {
        match self.t.get(self.i) {
            Some(t) => format!("`{}`", &self.sql[t.start..t.end]),
            None => "the end".into(),
        }
    }

    fn done(&self) -> bool {
        self.i >= self.t.len() || (self.punct(';') && self.i + 1 >= self.t.len())
    }

    /// An identifier (quoted, or a word).
    fn ident(&mut self) -> PResult<String> {
        match self.peek().cloned() {
            Some(Tok::Quoted(s)) | Some(Tok::Word(s)) => {
                self.i += 1;
                Ok(s)
            }
            Some(Tok::Str(s)) => {
                self.i += 1;
                Ok(s)
            }
            _ => Err(format!("expected a name at {}", self.here())),
        }
    }

    /// `name` or `db.name`.
    fn table_name(&mut self) -> PResult<Name> {
        let start = self.t.get(self.i).map_or(self.sql.len(), |t| t.start);
        let first = self.ident()?;
        let (db, table) = if self.eat_punct('.') {
            (Some(first), self.ident()?)
        } else {
            (None, first)
        };
        let end = self.t[self.i - 1].end;
        let n = Name {
            db,
            table,
            span: (start, end),
        };
        self.names.push(n.clone());
        Ok(n)
    }

    /// Skips a balanced `( … )`, returning its text.
    fn skip_parens(&mut self) -> PResult<String> {
        let start = self.t.get(self.i).map_or(self.sql.len(), |t| t.start);
        if !self.eat_punct('(') {
            return Err(format!("expected ( at {}", self.here()));
        }
        let mut depth = 1;
        while depth > 0 {
            match self.peek() {
                None => return Err("unbalanced parentheses".into()),
                Some(Tok::Punct('(')) => depth += 1,
                Some(Tok::Punct(')')) => depth -= 1,
                _ => {}
            }
            self.i += 1;
        }
        Ok(self.sql[start..self.t[self.i - 1].end].to_string())
    }

    /// Text from token `from` to the current one.
    fn text_from(&self, from: usize) -> String {
        let start = self.t.get(from).map_or(self.sql.len(), |t| t.start);
        let end = if self.i > from {
            self.t[self.i - 1].end
        } else {
            start
        };
        self.sql[start..end].to_string()
    }

    /// Skips to the next top-level `,` or the end (a clause's unread rest).
    fn skip_clause(&mut self) {
        let mut depth = 0;
        while let Some(t) = self.peek() {
            match t {
                Tok::Punct('(') => depth += 1,
                Tok::Punct(')') if depth == 0 => return,
                Tok::Punct(')') => depth -= 1,
                Tok::Punct(',') | Tok::Punct(';') if depth == 0 => return,
                _ => {}
            }
            self.i += 1;
        }
    }

    fn eat_if_not_exists(&mut self) -> bool {
        self.eat_all(&["IF", "NOT", "EXISTS"])
    }

    fn eat_if_exists(&mut self) -> bool {
        self.eat_all(&["IF", "EXISTS"])
    }

    fn eat_eq(&mut self) {
        self.eat_punct('=');
    }

    // ---- statements ----

    fn statement(&mut self) -> PResult<Statement> {
        if self.eat("CREATE") {
            let or_replace = self.eat_all(&["OR", "REPLACE"]);
            // Definer and algorithm clauses of views etc. mean "not a table".
            if self.eat("TEMPORARY") {
                return Ok(Statement::Other);
            }
            if self.eat("TABLE") {
                return self.create_table(or_replace);
            }
            if self.is_word("DATABASE") || self.is_word("SCHEMA") {
                self.i += 1;
                self.eat_if_not_exists();
                let start = self.t.get(self.i).map_or(0, |t| t.start);
                let name = self.ident()?;
                let end = self.t[self.i - 1].end;
                return Ok(Statement::CreateDatabase {
                    name,
                    span: (start, end),
                });
            }
            let mut k = 0;
            let mut unique = false;
            let mut special = false;
            while let Some(Tok::Word(w)) = self.peek_at(k) {
                match w.to_ascii_uppercase().as_str() {
                    "UNIQUE" => unique = true,
                    "FULLTEXT" | "SPATIAL" | "VECTOR" => special = true,
                    "ONLINE" | "OFFLINE" => {}
                    "INDEX" => {
                        self.i += k + 1;
                        return self.create_index(unique, special);
                    }
                    _ => break,
                }
                k += 1;
            }
            return Ok(Statement::Other);
        }
        if self.eat("ALTER") {
            self.eat("ONLINE");
            self.eat("IGNORE");
            if !self.eat("TABLE") {
                return Ok(Statement::Other);
            }
            self.eat_if_exists();
            let table = self.table_name()?;
            return self.alter(table);
        }
        if self.eat("RENAME") {
            if !(self.eat("TABLE") || self.eat("TABLES")) {
                return Ok(Statement::Other);
            }
            self.eat_if_exists();
            let mut pairs = Vec::new();
            loop {
                let from = self.table_name()?;
                self.eat_all(&["WAIT"]).then(|| self.i += 1);
                self.eat("NOWAIT");
                self.expect("TO")?;
                let to = self.table_name()?;
                pairs.push((from, to));
                if !self.eat_punct(',') {
                    break;
                }
            }
            return Ok(Statement::Rename(pairs));
        }
        if self.eat("DROP") {
            if self.eat("TEMPORARY") {
                return Ok(Statement::Other);
            }
            if self.eat("TABLE") || self.eat("TABLES") {
                self.eat_if_exists();
                let mut tables = Vec::new();
                loop {
                    tables.push(self.table_name()?);
                    if !self.eat_punct(',') {
                        break;
                    }
                }
                return Ok(Statement::Drop { tables });
            }
            if self.is_word("DATABASE") || self.is_word("SCHEMA") {
                self.i += 1;
                self.eat_if_exists();
                let start = self.t.get(self.i).map_or(0, |t| t.start);
                let name = self.ident()?;
                let end = self.t[self.i - 1].end;
                return Ok(Statement::DropDatabase {
                    name,
                    span: (start, end),
                });
            }
            self.eat("ONLINE");
            self.eat("OFFLINE");
            if self.eat("INDEX") {
                self.eat_if_exists();
                let name = self.ident()?;
                self.expect("ON")?;
                let table = self.table_name()?;
                return Ok(Statement::Alter {
                    table,
                    clauses: vec![if name.eq_ignore_ascii_case("PRIMARY") {
                        Clause::DropPrimaryKey
                    } else {
                        Clause::DropIndex(name)
                    }],
                });
            }
            return Ok(Statement::Other);
        }
        Ok(Statement::Other)
    }

    fn create_index(&mut self, unique: bool, special: bool) -> PResult<Statement> {
        self.eat_if_not_exists();
        let name = self.ident()?;
        if self.eat("USING") {
            self.ident()?;
        }
        self.expect("ON")?;
        let table = self.table_name()?;
        let columns = self.key_parts()?;
        let kind = if special {
            KeyKind::Special
        } else if unique {
            KeyKind::Unique
        } else {
            KeyKind::Index
        };
        Ok(Statement::Alter {
            table,
            clauses: vec![Clause::AddKey(KeySpec {
                kind,
                name: Some(name),
                columns,
            })],
        })
    }

    fn create_table(&mut self, or_replace: bool) -> PResult<Statement> {
        let if_not_exists = self.eat_if_not_exists();
        let table = self.table_name()?;
        if self.eat("LIKE") || (self.punct('(') && self.is_word_at(1, "LIKE")) {
            let paren = self.eat_punct('(');
            if paren {
                self.expect("LIKE")?;
            }
            let like = self.table_name()?;
            if paren {
                self.eat_punct(')');
            }
            return Ok(Statement::CreateTableLike {
                table,
                like,
                if_not_exists,
                or_replace,
            });
        }
        let mut ct = CreateTable {
            table,
            if_not_exists,
            or_replace,
            columns: Vec::new(),
            keys: Vec::new(),
            charset: None,
            collation: None,
            select: false,
        };
        if self.eat_punct('(') {
            loop {
                if let Some(k) = self.key_definition()? {
                    ct.keys.push(k);
                } else {
                    let c = self.column_spec()?;
                    ct.columns.push(c);
                }
                if self.eat_punct(',') {
                    continue;
                }
                if !self.eat_punct(')') {
                    return Err(format!("expected , or ) at {}", self.here()));
                }
                break;
            }
        }
        // Table options, partitioning, a SELECT.
        while !self.done() {
            if self.is_word("SELECT") || self.is_word("AS") || self.is_word("WITH") || self.punct('(') {
                ct.select = true;
                break;
            }
            self.eat_punct(',');
            self.eat("DEFAULT");
            if self.eat_all(&["CHARACTER", "SET"]) || self.eat("CHARSET") {
                self.eat_eq();
                ct.charset = Some(self.ident()?.to_ascii_lowercase());
                continue;
            }
            if self.eat("COLLATE") {
                self.eat_eq();
                ct.collation = Some(self.ident()?.to_ascii_lowercase());
                continue;
            }
            if self.is_word("PARTITION") {
                // Rows are still row events; partitioning is table layout.
                break;
            }
            self.i += 1;
        }
        Ok(Statement::CreateTable(ct))
    }

    /// `(col[(len)] [ASC|DESC], …)` of a key.
    fn key_parts(&mut self) -> PResult<Vec<(String, Option<u32>)>> {
        if !self.eat_punct('(') {
            return Err(format!("expected ( at {}", self.here()));
        }
        let mut out = Vec::new();
        loop {
            if self.punct('(') {
                // An expression part: not a column.
                self.skip_parens()?;
                out.push((String::new(), None));
            } else {
                let c = self.ident()?;
                let mut prefix = None;
                if self.eat_punct('(') {
                    if let Some(Tok::Num(n)) = self.peek().cloned() {
                        prefix = n.parse().ok();
                        self.i += 1;
                    }
                    self.eat_punct(')');
                }
                out.push((c, prefix));
            }
            self.eat("ASC");
            self.eat("DESC");
            if self.eat_punct(',') {
                continue;
            }
            if !self.eat_punct(')') {
                return Err(format!("expected , or ) in a key at {}", self.here()));
            }
            break;
        }
        Ok(out)
    }

    /// Index options after a key's columns (until the clause ends).
    fn key_options(&mut self) {
        self.skip_clause();
    }

    /// A key / index / constraint definition, or `None` when a column
    /// definition comes next.
    fn key_definition(&mut self) -> PResult<Option<KeySpec>> {
        let save = self.i;
        let mut constraint_name = None;
        if self.eat("CONSTRAINT")
            && !(self.is_word("PRIMARY")
                || self.is_word("UNIQUE")
                || self.is_word("FOREIGN")
                || self.is_word("CHECK"))
        {
            constraint_name = Some(self.ident()?);
        }
        let kind = if self.eat_all(&["PRIMARY", "KEY"]) {
            KeyKind::Primary
        } else if self.eat("UNIQUE") {
            let _ = self.eat("INDEX") || self.eat("KEY");
            KeyKind::Unique
        } else if self.eat("FOREIGN") {
            self.expect("KEY")?;
            KeyKind::Foreign(Name {
                db: None,
                table: String::new(),
                span: (0, 0),
            })
        } else if self.eat("CHECK") {
            self.skip_parens()?;
            self.skip_clause();
            return Ok(Some(KeySpec {
                kind: KeyKind::Check,
                name: constraint_name,
                columns: Vec::new(),
            }));
        } else if (self.is_word("FULLTEXT") || self.is_word("SPATIAL") || self.is_word("VECTOR"))
            && constraint_name.is_none()
        {
            self.i += 1;
            let _ = self.eat("INDEX") || self.eat("KEY");
            KeyKind::Special
        } else if (self.is_word("INDEX") || self.is_word("KEY")) && constraint_name.is_none() {
            self.i += 1;
            KeyKind::Index
        } else if self.is_word("PERIOD") && constraint_name.is_none() {
            self.skip_clause();
            return Ok(Some(KeySpec {
                kind: KeyKind::Check,
                name: None,
                columns: Vec::new(),
            }));
        } else {
            self.i = save;
            return Ok(None);
        };
        self.eat_if_not_exists();
        let mut name = constraint_name;
        if !self.punct('(') && !self.is_word("USING") {
            let n = self.ident()?;
            name = name.or(Some(n));
        }
        if self.eat("USING") {
            self.ident()?;
        }
        let columns = self.key_parts()?;
        let kind = match kind {
            KeyKind::Foreign(_) => {
                self.expect("REFERENCES")?;
                let parent = self.table_name()?;
                self.key_options();
                KeyKind::Foreign(parent)
            }
            k => {
                self.key_options();
                k
            }
        };
        Ok(Some(KeySpec { kind, name, columns }))
    }

    fn type_spec(&mut self) -> PResult<TypeSpec> {
        let mut base = match self.peek().cloned() {
            Some(Tok::Word(w)) => {
                self.i += 1;
                w.to_ascii_lowercase()
            }
            _ => return Err(format!("expected a type at {}", self.here())),
        };
        // Multi-word types.
        let mut national = false;
        if base == "national" {
            national = true;
            base = self.ident()?.to_ascii_lowercase();
        }
        if base == "double" && self.eat("PRECISION") {
            base = "double".into();
        } else if base == "long" {
            if self.eat("VARBINARY") {
                base = "mediumblob".into();
            } else {
                self.eat("VARCHAR");
                base = "mediumtext".into();
            }
        } else if (base == "character" || base == "char") && self.eat("VARYING") {
            base = "varchar".into();
        } else if base == "nchar" || base == "nvarchar" {
            national = true;
            base = if base == "nchar" { "char" } else { "varchar" }.into();
        }
        let mut ty = TypeSpec {
            base,
            ..TypeSpec::default()
        };
        if national {
            ty.charset = Some("utf8mb3".into());
        }
        if self.eat_punct('(') {
            loop {
                match self.peek().cloned() {
                    Some(Tok::Str(s)) => {
                        ty.labels.push(s);
                        self.i += 1;
                    }
                    Some(Tok::Num(n)) => {
                        ty.args.push(n);
                        self.i += 1;
                    }
                    Some(Tok::Word(w)) => {
                        ty.args.push(w);
                        self.i += 1;
                    }
                    _ => return Err(format!("unexpected {} in a type", self.here())),
                }
                if self.eat_punct(',') {
                    continue;
                }
                if !self.eat_punct(')') {
                    return Err(format!("expected ) in a type at {}", self.here()));
                }
                break;
            }
        }
        loop {
            if self.eat("UNSIGNED") {
                ty.unsigned = true;
            } else if self.eat("SIGNED") || self.eat("ZEROFILL") {
            } else if self.eat_all(&["CHARACTER", "SET"]) || self.eat("CHARSET") {
                self.eat_eq();
                ty.charset = Some(self.ident()?.to_ascii_lowercase());
            } else if self.eat("ASCII") {
                ty.charset = Some("latin1".into());
            } else if self.eat("UNICODE") {
                ty.charset = Some("ucs2".into());
            } else if self.eat("COLLATE") {
                self.eat_eq();
                ty.collation = Some(self.ident()?.to_ascii_lowercase());
            } else if self.is_word("BINARY") && !self.is_word_at(1, "(") {
                self.i += 1;
                ty.binary = true;
            } else {
                break;
            }
        }
        Ok(ty)
    }

    /// A default value: a literal, `CURRENT_TIMESTAMP` and its synonyms, or
    /// an expression.
    fn default_spec(&mut self) -> PResult<DefaultSpec> {
        let from = self.i;
        let sign = if self.eat_punct('-') {
            "-"
        } else {
            self.eat_punct('+');
            ""
        };
        Ok(match self.peek().cloned() {
            Some(Tok::Str(s)) => {
                self.i += 1;
                // Adjacent literals concatenate.
                let mut s = s;
                while let Some(Tok::Str(more)) = self.peek().cloned() {
                    s.push_str(&more);
                    self.i += 1;
                }
                DefaultSpec::Str(s)
            }
            Some(Tok::Num(n)) => {
                self.i += 1;
                DefaultSpec::Num(format!("{sign}{n}"))
            }
            Some(Tok::Word(w)) if w.eq_ignore_ascii_case("NULL") => {
                self.i += 1;
                DefaultSpec::Null
            }
            Some(Tok::Word(w)) if w.eq_ignore_ascii_case("TRUE") || w.eq_ignore_ascii_case("FALSE") => {
                self.i += 1;
                DefaultSpec::Num(if w.eq_ignore_ascii_case("TRUE") { "1" } else { "0" }.into())
            }
            Some(Tok::Word(w))
                if ["CURRENT_TIMESTAMP", "NOW", "LOCALTIME", "LOCALTIMESTAMP"]
                    .iter()
                    .any(|x| w.eq_ignore_ascii_case(x)) =>
            {
                self.i += 1;
                if self.punct('(') {
                    self.skip_parens()?;
                }
                DefaultSpec::CurrentTimestamp
            }
            Some(Tok::Punct('(')) => {
                self.skip_parens()?;
                DefaultSpec::Expr(self.text_from(from))
            }
            Some(Tok::Word(_)) => {
                self.i += 1;
                if self.punct('(') {
                    self.skip_parens()?;
                }
                DefaultSpec::Expr(self.text_from(from))
            }
            _ => return Err(format!("unreadable default at {}", self.here())),
        })
    }

    fn column_spec(&mut self) -> PResult<ColumnSpec> {
        let name = self.ident()?;
        self.column_spec_named(name)
    }

    fn column_spec_named(&mut self, name: String) -> PResult<ColumnSpec> {
        let ty = self.type_spec()?;
        let mut c = ColumnSpec {
            name,
            ty,
            nullable: None,
            default: None,
            auto_increment: false,
            primary: false,
            unique: false,
            generated: false,
        };
        loop {
            if self.eat_all(&["NOT", "NULL"]) {
                c.nullable = Some(false);
            } else if self.eat("NULL") {
                c.nullable = Some(true);
            } else if self.eat("DEFAULT") {
                c.default = Some(self.default_spec()?);
            } else if self.eat("AUTO_INCREMENT") {
                c.auto_increment = true;
            } else if self.eat_all(&["PRIMARY", "KEY"]) {
                c.primary = true;
            } else if self.eat("UNIQUE") {
                self.eat("KEY");
                c.unique = true;
            } else if self.eat("KEY") {
                c.primary = true;
            } else if self.eat("COMMENT") {
                self.i += 1;
            } else if self.eat_all(&["ON", "UPDATE"]) {
                self.default_spec()?;
            } else if self.eat_all(&["GENERATED", "ALWAYS"]) || self.is_word("AS") {
                self.eat("AS");
                self.skip_parens()?;
                c.generated = true;
                let _ = self.eat("VIRTUAL") || self.eat("STORED") || self.eat("PERSISTENT");
            } else if self.eat("INVISIBLE") || self.eat("VISIBLE") {
            } else if self.eat("COLUMN_FORMAT") || self.eat("STORAGE") {
                self.i += 1;
            } else if self.eat("COMPRESSED") {
                if self.eat_punct('=') {
                    self.i += 1;
                }
            } else if self.eat("CHECK")
                || (self.eat("CONSTRAINT") && {
                    self.ident()?;
                    self.expect("CHECK")?;
                    true
                })
            {
                self.skip_parens()?;
            } else if self.eat("REFERENCES") {
                self.table_name()?;
                if self.punct('(') {
                    self.skip_parens()?;
                }
                while self.eat("ON") {
                    self.i += 1; // DELETE / UPDATE
                    if self.eat_all(&["SET", "NULL"])
                        || self.eat_all(&["SET", "DEFAULT"])
                        || self.eat_all(&["NO", "ACTION"])
                    {
                    } else {
                        self.i += 1;
                    }
                }
            } else if self.eat_all(&["WITH", "SYSTEM", "VERSIONING"])
                || self.eat_all(&["WITHOUT", "SYSTEM", "VERSIONING"])
            {
            } else if self.eat("SERIAL") {
                self.expect("DEFAULT")?;
                self.expect("VALUE")?;
                c.nullable = Some(false);
                c.auto_increment = true;
                c.unique = true;
            } else {
                break;
            }
        }
        if c.ty.base == "serial" {
            c.ty = TypeSpec {
                base: "bigint".into(),
                unsigned: true,
                ..TypeSpec::default()
            };
            c.nullable = Some(false);
            c.auto_increment = true;
            c.unique = true;
        }
        Ok(c)
    }

    fn placement(&mut self) -> PResult<Placement> {
        if self.eat("FIRST") {
            Ok(Placement::First)
        } else if self.eat("AFTER") {
            Ok(Placement::After(self.ident()?))
        } else {
            Ok(Placement::Last)
        }
    }

    fn alter(&mut self, table: Name) -> PResult<Statement> {
        let mut clauses = Vec::new();
        // MariaDB: ALTER TABLE t WAIT n / NOWAIT before the clauses.
        if self.eat("WAIT") {
            self.i += 1;
        }
        self.eat("NOWAIT");
        while !self.done() {
            let from = self.i;
            let clause = self.alter_clause().unwrap_or_else(|e| {
                // An unreadable clause: skip it, named.
                self.i = from;
                self.skip_clause();
                Clause::Unsupported(format!("{} ({e})", self.text_from(from)))
            });
            clauses.push(clause);
            if !self.eat_punct(',') {
                if !self.done() {
                    // Options may follow without commas (`ENGINE=x COMMENT 'y'`).
                    continue;
                }
                break;
            }
        }
        Ok(Statement::Alter { table, clauses })
    }

    fn alter_clause(&mut self) -> PResult<Clause> {
        let from = self.i;
        if self.eat("ADD") {
            self.eat("COLUMN");
            if self.is_word("PARTITION") {
                self.skip_clause();
                return Ok(Clause::Unsupported(self.text_from(from)));
            }
            if let Some(k) = self.key_definition()? {
                return Ok(Clause::AddKey(k));
            }
            self.eat_if_not_exists();
            if self.eat_punct('(') {
                let mut cols = Vec::new();
                loop {
                    cols.push((self.column_spec()?, Placement::Last));
                    if self.eat_punct(',') {
                        continue;
                    }
                    self.eat_punct(')');
                    break;
                }
                return Ok(Clause::AddColumns(cols));
            }
            let c = self.column_spec()?;
            let p = self.placement()?;
            return Ok(Clause::AddColumns(vec![(c, p)]));
        }
        if self.eat("DROP") {
            if self.eat_all(&["PRIMARY", "KEY"]) {
                return Ok(Clause::DropPrimaryKey);
            }
            if self.eat("INDEX") || self.eat("KEY") {
                self.eat_if_exists();
                let n = self.ident()?;
                return Ok(if n.eq_ignore_ascii_case("PRIMARY") {
                    Clause::DropPrimaryKey
                } else {
                    Clause::DropIndex(n)
                });
            }
            if self.eat_all(&["FOREIGN", "KEY"]) {
                self.eat_if_exists();
                return Ok(Clause::DropForeignKey(self.ident()?));
            }
            if self.eat("CONSTRAINT") || self.eat("CHECK") {
                self.eat_if_exists();
                return Ok(Clause::DropConstraint(self.ident()?));
            }
            if self.is_word("PARTITION") || self.is_word("PERIOD") || self.is_word("SYSTEM") {
                self.skip_clause();
                return Ok(Clause::Unsupported(self.text_from(from)));
            }
            self.eat("COLUMN");
            self.eat_if_exists();
            let n = self.ident()?;
            self.eat("RESTRICT");
            self.eat("CASCADE");
            return Ok(Clause::DropColumn(n));
        }
        if self.eat("ALTER") {
            if self.eat("INDEX") || self.eat("KEY") {
                self.skip_clause();
                return Ok(Clause::Option(self.text_from(from)));
            }
            self.eat("COLUMN");
            self.eat_if_exists();
            let c = self.ident()?;
            if self.eat_all(&["SET", "DEFAULT"]) {
                return Ok(Clause::SetDefault(c, self.default_spec()?));
            }
            if self.eat_all(&["DROP", "DEFAULT"]) {
                return Ok(Clause::DropDefault(c));
            }
            self.skip_clause();
            return Ok(Clause::Option(self.text_from(from)));
        }
        if self.eat("CHANGE") {
            self.eat("COLUMN");
            self.eat_if_exists();
            let old = self.ident()?;
            let spec = self.column_spec()?;
            let placement = self.placement()?;
            return Ok(Clause::Change { old, spec, placement });
        }
        if self.eat("MODIFY") {
            self.eat("COLUMN");
            self.eat_if_exists();
            let spec = self.column_spec()?;
            let placement = self.placement()?;
            return Ok(Clause::Modify { spec, placement });
        }
        if self.eat("RENAME") {
            if self.eat("COLUMN") {
                self.eat_if_exists();
                let a = self.ident()?;
                self.expect("TO")?;
                return Ok(Clause::RenameColumn(a, self.ident()?));
            }
            if self.eat("INDEX") || self.eat("KEY") {
                self.eat_if_exists();
                let a = self.ident()?;
                self.expect("TO")?;
                return Ok(Clause::RenameIndex(a, self.ident()?));
            }
            let _ = self.eat("TO") || self.eat("AS");
            return Ok(Clause::RenameTo(self.table_name()?));
        }
        if self.eat("CONVERT") {
            self.expect("TO")?;
            let (charset, collation) = self.charset_and_collation()?;
            return Ok(Clause::ConvertCharset { charset, collation });
        }
        if self.is_word("DEFAULT")
            || self.is_word("CHARACTER")
            || self.is_word("CHARSET")
            || self.is_word("COLLATE")
        {
            self.eat("DEFAULT");
            let (charset, collation) = self.charset_and_collation()?;
            return Ok(Clause::DefaultCharset { charset, collation });
        }
        let unsupported = [
            "PARTITION",
            "COALESCE",
            "REORGANIZE",
            "EXCHANGE",
            "TRUNCATE",
            "REMOVE",
            "DISCARD",
            "IMPORT",
            "ORDER",
            "ADD",
        ];
        if unsupported.iter().any(|w| self.is_word(w)) {
            self.skip_clause();
            return Ok(Clause::Unsupported(self.text_from(from)));
        }
        // ENGINE=, COMMENT, AUTO_INCREMENT=, ROW_FORMAT=, ALGORITHM=, LOCK=,
        // FORCE, ENABLE/DISABLE KEYS, ANALYZE/CHECK/OPTIMIZE/REPAIR PARTITION…
        let option_words = [
            "ENGINE",
            "COMMENT",
            "AUTO_INCREMENT",
            "ROW_FORMAT",
            "ALGORITHM",
            "LOCK",
            "FORCE",
            "ENABLE",
            "DISABLE",
            "KEY_BLOCK_SIZE",
            "STATS_PERSISTENT",
            "STATS_AUTO_RECALC",
            "STATS_SAMPLE_PAGES",
            "PAGE_COMPRESSED",
            "PAGE_COMPRESSION_LEVEL",
            "CHECKSUM",
            "PACK_KEYS",
            "DELAY_KEY_WRITE",
            "MAX_ROWS",
            "MIN_ROWS",
            "AVG_ROW_LENGTH",
            "TRANSACTIONAL",
            "ENCRYPTED",
            "ENCRYPTION_KEY_ID",
            "INSERT_METHOD",
            "DATA",
            "INDEX",
            "ANALYZE",
            "CHECK",
            "OPTIMIZE",
            "REPAIR",
            "REBUILD",
            "SEQUENCE",
        ];
        if option_words.iter().any(|w| self.is_word(w)) {
            self.i += 1;
            // One option: `NAME [=] value`, not a comma-separated list.
            self.eat_eq();
            if !self.punct(',') && !self.done() && !option_words.iter().any(|w| self.is_word(w)) {
                if self.punct('(') {
                    self.skip_parens()?;
                } else {
                    self.i += 1;
                }
            }
            return Ok(Clause::Option(self.text_from(from)));
        }
        self.skip_clause();
        Ok(Clause::Unsupported(self.text_from(from)))
    }

    fn charset_and_collation(&mut self) -> PResult<(Option<String>, Option<String>)> {
        let mut charset = None;
        let mut collation = None;
        loop {
            if self.eat_all(&["CHARACTER", "SET"]) || self.eat("CHARSET") {
                self.eat_eq();
                charset = Some(self.ident()?.to_ascii_lowercase());
            } else if self.eat("COLLATE") {
                self.eat_eq();
                collation = Some(self.ident()?.to_ascii_lowercase());
            } else {
                break;
            }
        }
        if charset.is_none() && collation.is_none() {
            return Err(format!("expected CHARACTER SET or COLLATE at {}", self.here()));
        }
        Ok((charset, collation))
    }
}

/// Reads a statement; `Ok(Statement::Other)` when it changes no table.
pub fn parse(sql: &str) -> Result<Statement, String> {
    let mut p = Parser::new(sql)?;
    p.statement()
}

/// Every table name of a statement this module reads, and database names of
/// database statements, with their spans.
fn names_of(sql: &str) -> Result<(Statement, Vec<Name>), String> {
    let mut p = Parser::new(sql)?;
    let st = p.statement()?;
    Ok((st, p.names))
}

/// The statement with every table (and database) name it contains written
/// qualified, each database through `map` (unqualified names belong to
/// `default_db`): what a replica of the same engine replays, so that a mapped
/// database gets the change and the replica session's default database does
/// not matter. The rest of the text is the source's, byte for byte.
pub fn rewrite(sql: &str, default_db: &str, map: &dyn Fn(&str) -> String) -> Result<String, String> {
    let (st, names) = names_of(sql)?;
    let quote = |s: &str| format!("`{}`", s.replace('`', "``"));
    let mut edits: Vec<((usize, usize), String)> = names
        .iter()
        .filter(|n| !n.table.is_empty())
        .map(|n| {
            let db = n.db.clone().unwrap_or_else(|| default_db.to_string());
            if db.is_empty() {
                return Err(format!("{} has no database", n.table));
            }
            Ok((n.span, format!("{}.{}", quote(&map(&db)), quote(&n.table))))
        })
        .collect::<Result<_, String>>()?;
    match &st {
        Statement::CreateDatabase { name, span } | Statement::DropDatabase { name, span } => {
            edits.push((*span, quote(&map(name))));
        }
        _ => {}
    }
    edits.sort_by_key(|(s, _)| std::cmp::Reverse(s.0));
    let mut out = sql.to_string();
    for ((a, b), text) in edits {
        out.replace_range(a..b, &text);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Types and definitions
// ---------------------------------------------------------------------------

/// What a definition needs besides the statement: the server's collations,
/// the table's (or database's) default collation.
pub struct Context<'a> {
    pub server: &'a ServerCharsets,
    /// Default collation for text columns without their own.
    pub default_collation: Option<String>,
    /// The statement's time on the source (µs since the epoch), the value a
    /// `TIMESTAMP … DEFAULT CURRENT_TIMESTAMP` column added to existing rows
    /// takes.
    pub commit_ts_us: i64,
}

impl Context<'_> {
    fn charset_of(&self, collation: &str) -> Option<String> {
        self.server
            .collations
            .values()
            .find(|c| c.name.eq_ignore_ascii_case(collation))
            .map(|c| c.charset.clone())
    }

    fn default_collation_of(&self, charset: &str) -> Option<String> {
        self.server.default_collation.get(charset).cloned()
    }

    /// The (charset, collation) a text column gets.
    fn text_charset(&self, ty: &TypeSpec) -> (Option<String>, Option<String>) {
        let mut charset = ty
            .charset
            .clone()
            .map(|c| if c == "utf8" { "utf8mb3".into() } else { c });
        let mut collation = ty.collation.clone();
        if let (None, Some(coll)) = (&charset, &collation) {
            charset = self.charset_of(coll);
        }
        if charset.is_none() {
            collation = collation.or_else(|| self.default_collation.clone());
            charset = collation.as_deref().and_then(|c| self.charset_of(c));
        }
        if collation.is_none() {
            collation = charset.as_deref().and_then(|c| self.default_collation_of(c));
        }
        if ty.binary {
            collation = charset.as_ref().map(|c| format!("{c}_bin"));
        }
        (charset, collation)
    }
}

/// The pipeline type, charset and collation of a column type as written
/// (the same the binlog's table map gives for the column).
pub fn column_def(spec: &ColumnSpec, ctx: &Context<'_>) -> Result<ColumnDef, String> {
    let ty = &spec.ty;
    let num = |i: usize, default: u32| -> Result<u32, String> {
        match ty.args.get(i) {
            None => Ok(default),
            Some(a) => a.parse().map_err(|_| format!("bad type argument {a:?}")),
        }
    };
    let int = |bytes: u8| ColumnType::Integer {
        bytes,
        unsigned: ty.unsigned,
    };
    let (charset, collation) = ctx.text_charset(ty);
    let binary_charset = charset.as_deref() == Some("binary");
    let text_len = |bytes_for: &dyn Fn(u64) -> ColumnType| -> Result<ColumnType, String> {
        // TEXT(n) / BLOB(n): the smallest type holding n characters (bytes).
        let n = num(0, 65_535)? as u64;
        let max = charset.as_deref().map_or(1, |c| ctx.server.max_len(c)) as u64;
        Ok(bytes_for(n * if ty.base == "blob" { 1 } else { max }))
    };
    let pick = |bytes: u64| match bytes {
        0..=255 => 255,
        256..=65_535 => 65_535,
        65_536..=16_777_215 => 16_777_215,
        _ => 4_294_967_295,
    };
    let ct = match ty.base.as_str() {
        "tinyint" | "int1" => int(1),
        "bool" | "boolean" => ColumnType::Integer {
            bytes: 1,
            unsigned: false,
        },
        "smallint" | "int2" => int(2),
        "mediumint" | "int3" | "middleint" => int(3),
        "int" | "integer" | "int4" => int(4),
        "bigint" | "int8" => int(8),
        "decimal" | "dec" | "numeric" | "fixed" => ColumnType::Decimal {
            precision: num(0, 10)? as u8,
            scale: num(1, 0)? as u8,
        },
        "float" if ty.args.len() == 1 && num(0, 0)? > 24 => ColumnType::Double,
        "float" | "float4" => ColumnType::Float,
        "double" | "real" | "float8" => ColumnType::Double,
        "date" => ColumnType::Date,
        "time" => ColumnType::Time {
            fsp: num(0, 0)? as u8,
        },
        "datetime" => ColumnType::DateTime {
            fsp: num(0, 0)? as u8,
        },
        "timestamp" => ColumnType::Timestamp {
            fsp: num(0, 0)? as u8,
        },
        "year" => ColumnType::Year,
        "bit" => ColumnType::Bit {
            width: num(0, 1)? as u16,
        },
        "enum" => ColumnType::Enum {
            labels: ty.labels.clone(),
        },
        "set" => ColumnType::Set {
            labels: ty.labels.clone(),
        },
        "char" | "character" if binary_charset => ColumnType::Binary { length: num(0, 1)? },
        "char" | "character" => ColumnType::Char { length: num(0, 1)? },
        "varchar" if binary_charset => ColumnType::VarBinary { length: num(0, 0)? },
        "varchar" => ColumnType::VarChar { length: num(0, 0)? },
        "binary" => ColumnType::Binary { length: num(0, 1)? },
        "varbinary" => ColumnType::VarBinary { length: num(0, 0)? },
        "json" => ColumnType::Json,
        "tinytext" if binary_charset => ColumnType::Blob { max_bytes: 255 },
        "tinytext" => ColumnType::Text { max_bytes: 255 },
        "text" if ty.args.is_empty() && binary_charset => ColumnType::Blob { max_bytes: 65_535 },
        "text" if ty.args.is_empty() => ColumnType::Text { max_bytes: 65_535 },
        "text" => text_len(&|b| ColumnType::Text { max_bytes: pick(b) })?,
        "mediumtext" => ColumnType::Text {
            max_bytes: 16_777_215,
        },
        "longtext" => ColumnType::Text {
            max_bytes: 4_294_967_295,
        },
        "tinyblob" => ColumnType::Blob { max_bytes: 255 },
        "blob" if ty.args.is_empty() => ColumnType::Blob { max_bytes: 65_535 },
        "blob" => text_len(&|b| ColumnType::Blob { max_bytes: pick(b) })?,
        "mediumblob" => ColumnType::Blob {
            max_bytes: 16_777_215,
        },
        "longblob" => ColumnType::Blob {
            max_bytes: 4_294_967_295,
        },
        other => return Err(format!("type {other} is not mapped")),
    };
    let is_text = matches!(
        ct,
        ColumnType::Char { .. }
            | ColumnType::VarChar { .. }
            | ColumnType::Text { .. }
            | ColumnType::Enum { .. }
            | ColumnType::Set { .. }
            | ColumnType::Json
    );
    let (charset, collation) = if ct == ColumnType::Json {
        // MariaDB's JSON is LONGTEXT utf8mb4_bin.
        (Some("utf8mb4".to_string()), Some("utf8mb4_bin".to_string()))
    } else if is_text {
        (charset, collation)
    } else {
        (None, None)
    };
    let unsigned = if ty.unsigned { " unsigned" } else { "" };
    let args = if ty.args.is_empty() {
        String::new()
    } else {
        format!("({})", ty.args.join(","))
    };
    let source_type = match &ct {
        ColumnType::Enum { labels } | ColumnType::Set { labels } => format!(
            "{}({})",
            ty.base,
            labels
                .iter()
                .map(|l| format!("'{}'", l.replace('\'', "''")))
                .collect::<Vec<_>>()
                .join(",")
        ),
        ColumnType::Json => "longtext".into(),
        _ => format!("{}{args}{unsigned}", ty.base),
    };
    Ok(ColumnDef {
        name: spec.name.clone(),
        ty: ct,
        nullable: spec.nullable.unwrap_or(!spec.primary) && !spec.primary,
        charset,
        collation,
        source_type,
    })
}

/// The value existing rows take when `col` is added with `spec`.
fn fill_of(spec: &ColumnSpec, col: &ColumnDef, ctx: &Context<'_>) -> Fill {
    if spec.generated {
        return Fill::Unknown("a generated column is computed by the source".into());
    }
    if spec.auto_increment {
        return Fill::Unknown("existing rows are numbered by AUTO_INCREMENT".into());
    }
    let implicit = || -> Result<Value, String> {
        Ok(match &col.ty {
            ColumnType::Integer { unsigned: true, .. } => Value::UInt(0),
            ColumnType::Integer { .. } | ColumnType::Bool => Value::Int(0),
            ColumnType::Decimal { scale, .. } => Value::Decimal(if *scale == 0 {
                "0".into()
            } else {
                format!("0.{}", "0".repeat(*scale as usize))
            }),
            ColumnType::Float => Value::Float(0.0),
            ColumnType::Double => Value::Double(0.0),
            ColumnType::Date => Value::Date(Date {
                year: 0,
                month: 0,
                day: 0,
            }),
            ColumnType::DateTime { .. } => Value::DateTime(DateTime {
                date: Date {
                    year: 0,
                    month: 0,
                    day: 0,
                },
                hour: 0,
                minute: 0,
                second: 0,
                micros: 0,
            }),
            ColumnType::Timestamp { .. } => Value::Timestamp(0),
            ColumnType::Time { .. } => Value::Time(Time {
                negative: false,
                hours: 0,
                minutes: 0,
                seconds: 0,
                micros: 0,
            }),
            ColumnType::Year => Value::Year(0),
            ColumnType::Char { .. } | ColumnType::VarChar { .. } | ColumnType::Text { .. } => {
                Value::Text(String::new())
            }
            ColumnType::Binary { .. } | ColumnType::VarBinary { .. } | ColumnType::Blob { .. } => {
                Value::Bytes(Vec::new())
            }
            ColumnType::Enum { labels } => Value::Enum(labels.first().cloned().unwrap_or_default()),
            ColumnType::Set { .. } => Value::Set(Vec::new()),
            ColumnType::Bit { .. } => Value::Bit(0),
            other => return Err(format!("no implicit default for {other:?}")),
        })
    };
    let r = match &spec.default {
        None if col.nullable => Ok(Value::Null),
        None => implicit(),
        Some(DefaultSpec::Null) => Ok(Value::Null),
        Some(DefaultSpec::CurrentTimestamp) => match col.ty {
            ColumnType::Timestamp { fsp } => {
                let unit = 10i64.pow(6 - fsp.min(6) as u32);
                Ok(Value::Timestamp(
                    ctx.commit_ts_us - ctx.commit_ts_us.rem_euclid(unit),
                ))
            }
            _ => Err("CURRENT_TIMESTAMP in the source session's time zone".into()),
        },
        Some(DefaultSpec::Expr(e)) => Err(format!("filled by the expression {e}")),
        Some(DefaultSpec::Str(s)) => literal(s, &col.ty),
        Some(DefaultSpec::Num(n)) => number(n, &col.ty),
    };
    match r {
        Ok(v) => Fill::Value(v),
        Err(e) => Fill::Unknown(e),
    }
}

fn number(n: &str, ty: &ColumnType) -> Result<Value, String> {
    let bad = || format!("default {n} for a {ty:?} column");
    if n.starts_with(['x', 'X', 'b', 'B']) || n.starts_with("0x") || n.starts_with("0b") {
        return Err(bad());
    }
    Ok(match ty {
        ColumnType::Integer { unsigned: true, .. } => Value::UInt(n.parse().map_err(|_| bad())?),
        ColumnType::Integer { .. } | ColumnType::Bool => Value::Int(n.parse().map_err(|_| bad())?),
        ColumnType::Year => Value::Year(n.parse().map_err(|_| bad())?),
        ColumnType::Bit { .. } => Value::Bit(n.parse().map_err(|_| bad())?),
        ColumnType::Float => Value::Float(n.parse().map_err(|_| bad())?),
        ColumnType::Double => Value::Double(n.parse().map_err(|_| bad())?),
        ColumnType::Decimal { scale, .. } => {
            let (int, frac) = n.split_once('.').unwrap_or((n, ""));
            if frac.len() > *scale as usize || int.trim_start_matches('-').is_empty() {
                return Err(bad());
            }
            let frac = format!("{frac:0<width$}", width = *scale as usize);
            Value::Decimal(if *scale == 0 {
                int.to_string()
            } else {
                format!("{int}.{frac}")
            })
        }
        ColumnType::Char { .. } | ColumnType::VarChar { .. } | ColumnType::Text { .. } => {
            Value::Text(n.to_string())
        }
        _ => return Err(bad()),
    })
}

fn literal(s: &str, ty: &ColumnType) -> Result<Value, String> {
    let bad = || format!("default '{s}' for a {ty:?} column");
    let digits = |t: &str| t.parse::<u32>().map_err(|_| bad());
    let date = |t: &str| -> Result<Date, String> {
        let p: Vec<&str> = t.split('-').collect();
        match p.as_slice() {
            [y, m, d] => Ok(Date {
                year: digits(y)? as u16,
                month: digits(m)? as u8,
                day: digits(d)? as u8,
            }),
            _ => Err(bad()),
        }
    };
    let clock = |t: &str| -> Result<(u32, u8, u8, u32), String> {
        let (hms, frac) = t.split_once('.').unwrap_or((t, ""));
        let p: Vec<&str> = hms.split(':').collect();
        let [h, m, sec] = p.as_slice() else {
            return Err(bad());
        };
        let micros = if frac.is_empty() {
            0
        } else {
            digits(&format!("{frac:0<6}")[..6])?
        };
        Ok((digits(h)?, digits(m)? as u8, digits(sec)? as u8, micros))
    };
    Ok(match ty {
        ColumnType::Char { .. } | ColumnType::VarChar { .. } | ColumnType::Text { .. } => {
            Value::Text(s.to_string())
        }
        ColumnType::Binary { .. } | ColumnType::VarBinary { .. } | ColumnType::Blob { .. } => {
            Value::Bytes(s.as_bytes().to_vec())
        }
        ColumnType::Enum { labels } => {
            let l = labels
                .iter()
                .find(|l| l.eq_ignore_ascii_case(s))
                .ok_or_else(bad)?;
            Value::Enum(l.clone())
        }
        ColumnType::Set { labels } => Value::Set(if s.is_empty() {
            Vec::new()
        } else {
            let parts: Vec<&str> = s.split(',').collect();
            labels
                .iter()
                .filter(|l| parts.iter().any(|p| p.eq_ignore_ascii_case(l)))
                .cloned()
                .collect()
        }),
        ColumnType::Date => Value::Date(date(s)?),
        ColumnType::DateTime { .. } => {
            let (d, t) = s.split_once([' ', 'T']).unwrap_or((s, "00:00:00"));
            let (h, m, sec, micros) = clock(t)?;
            Value::DateTime(DateTime {
                date: date(d)?,
                hour: h as u8,
                minute: m,
                second: sec,
                micros,
            })
        }
        ColumnType::Time { .. } => {
            let (neg, t) = s.strip_prefix('-').map_or((false, s), |t| (true, t));
            let (hours, minutes, seconds, micros) = clock(t)?;
            Value::Time(Time {
                negative: neg,
                hours,
                minutes,
                seconds,
                micros,
            })
        }
        ColumnType::Timestamp { .. } if s.starts_with("0000-00-00") => Value::Timestamp(0),
        ColumnType::Timestamp { .. } => {
            return Err("a TIMESTAMP literal is read in the source session's time zone".into())
        }
        _ => number(s, ty)?,
    })
}

/// A table's definition with its keys' names, as capture's history keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct Definition {
    pub schema: TableSchema,
    /// Pairwise with `schema.unique_keys`.
    pub unique_key_names: Vec<String>,
}

fn key_indexes(schema: &TableSchema, k: &KeySpec) -> Option<Vec<usize>> {
    k.columns
        .iter()
        .map(|(c, prefix)| {
            if prefix.is_some() || c.is_empty() {
                None
            } else {
                schema.column_index(c)
            }
        })
        .collect()
}

/// MySQL's name for an unnamed index: its first column, `_2`, `_3`… on a clash.
fn auto_name(first: &str, taken: &[String]) -> String {
    if !taken.iter().any(|t| t.eq_ignore_ascii_case(first)) {
        return first.to_string();
    }
    (2..)
        .map(|n| format!("{first}_{n}"))
        .find(|n| !taken.iter().any(|t| t.eq_ignore_ascii_case(n)))
        .expect("some suffix is free")
}

fn place(columns: &mut Vec<ColumnDef>, col: ColumnDef, p: &Placement) -> Result<usize, String> {
    let at = match p {
        Placement::Last => columns.len(),
        Placement::First => 0,
        Placement::After(a) => {
            columns
                .iter()
                .position(|c| c.name.eq_ignore_ascii_case(a))
                .ok_or(format!("no column {a}"))?
                + 1
        }
    };
    columns.insert(at, col);
    Ok(at)
}

/// Renumbers key column indexes through `map` (`None`: the column is gone,
/// and so is its part of each key), dropping keys left empty.
fn renumber(def: &mut Definition, map: &dyn Fn(usize) -> Option<usize>) {
    let s = &mut def.schema;
    s.primary_key = s.primary_key.iter().filter_map(|&i| map(i)).collect();
    let mut keys = Vec::new();
    let mut names = Vec::new();
    for (i, k) in s.unique_keys.iter().enumerate() {
        let k: Vec<usize> = k.iter().filter_map(|&i| map(i)).collect();
        if !k.is_empty() {
            keys.push(k);
            names.push(def.unique_key_names.get(i).cloned().unwrap_or_default());
        }
    }
    s.unique_keys = keys;
    def.unique_key_names = names;
}

/// Key indexes after a column was inserted at `at`.
fn on_insert(def: &mut Definition, at: usize) {
    renumber(def, &|i| Some(if i >= at { i + 1 } else { i }));
}

/// Key indexes after column `at` was removed.
fn on_remove(def: &mut Definition, at: usize) {
    renumber(def, &|i| match i.cmp(&at) {
        std::cmp::Ordering::Less => Some(i),
        std::cmp::Ordering::Equal => None,
        std::cmp::Ordering::Greater => Some(i - 1),
    });
}

/// Key indexes after column `from` moved to `to`.
fn on_move(def: &mut Definition, from: usize, to: usize) {
    renumber(def, &|i| {
        if i == from {
            return Some(to);
        }
        let k = if i > from { i - 1 } else { i };
        Some(if k >= to { k + 1 } else { k })
    });
}

/// A `CREATE TABLE`'s definition.
pub fn create_definition(ct: &CreateTable, id: TableId, ctx: &Context<'_>) -> Result<Definition, String> {
    if ct.select {
        return Err("CREATE TABLE … SELECT: columns come from the query".into());
    }
    let mut schema = TableSchema {
        id,
        ..TableSchema::default()
    };
    for c in &ct.columns {
        schema.columns.push(column_def(c, ctx)?);
    }
    let mut def = Definition {
        schema,
        unique_key_names: Vec::new(),
    };
    for (i, c) in ct.columns.iter().enumerate() {
        if c.primary {
            def.schema.primary_key = vec![i];
        }
    }
    let mut taken: Vec<String> = Vec::new();
    for (i, c) in ct.columns.iter().enumerate() {
        if c.unique {
            let name = auto_name(&c.name, &taken);
            taken.push(name.clone());
            def.schema.unique_keys.push(vec![i]);
            def.unique_key_names.push(name);
        }
    }
    for k in &ct.keys {
        add_key(&mut def, k, &mut taken)?;
    }
    for &i in &def.schema.primary_key.clone() {
        def.schema.columns[i].nullable = false;
    }
    promote_identity(&mut def.schema, &mut def.unique_key_names);
    Ok(def)
}

fn add_key(def: &mut Definition, k: &KeySpec, taken: &mut Vec<String>) -> Result<Vec<AlterAction>, String> {
    let cols = key_indexes(&def.schema, k);
    let first = k.columns.first().map(|c| c.0.clone()).unwrap_or_default();
    Ok(match &k.kind {
        KeyKind::Primary => {
            let cols = cols.ok_or("a primary key with a prefix or expression part")?;
            def.schema.primary_key = cols;
            vec![AlterAction::Keys]
        }
        KeyKind::Unique => {
            let name = k.name.clone().unwrap_or_else(|| auto_name(&first, taken));
            taken.push(name.clone());
            match cols {
                Some(cols) if cols != def.schema.primary_key => {
                    def.schema.unique_keys.push(cols);
                    def.unique_key_names.push(name);
                    vec![AlterAction::Keys]
                }
                // A key with a prefix part is not carried (a replica key over
                // whole columns would be stricter than the source's).
                _ => vec![AlterAction::Options {
                    clause: format!("UNIQUE key {name} with a prefix or expression part"),
                }],
            }
        }
        KeyKind::Index => {
            let name = k.name.clone().unwrap_or_else(|| auto_name(&first, taken));
            taken.push(name.clone());
            vec![AlterAction::AddIndex {
                name,
                columns: k
                    .columns
                    .iter()
                    .map(|c| c.0.clone())
                    .filter(|c| !c.is_empty())
                    .collect(),
            }]
        }
        KeyKind::Special => vec![AlterAction::Options {
            clause: "a FULLTEXT/SPATIAL index".into(),
        }],
        KeyKind::Foreign(_) => vec![AlterAction::ForeignKeys],
        KeyKind::Check => vec![AlterAction::Options {
            clause: "a CHECK constraint".into(),
        }],
    })
}

/// An `ALTER TABLE`'s clauses applied to `before`: the definition after, and
/// what a replica of another engine must do. A clause that cannot be applied
/// to the definition (an unknown column) is an error: capture then falls
/// back to the catalog.
pub fn alter_definition(
    before: &Definition,
    clauses: &[Clause],
    new_id: Option<TableId>,
    ctx: &Context<'_>,
) -> Result<(Definition, Vec<AlterAction>), String> {
    let mut def = before.clone();
    let mut actions = Vec::new();
    let mut taken = def.unique_key_names.clone();
    let find = |def: &Definition, c: &str| -> Result<usize, String> {
        def.schema
            .columns
            .iter()
            .position(|x| x.name.eq_ignore_ascii_case(c))
            .ok_or_else(|| format!("no column {c}"))
    };
    for clause in clauses {
        match clause {
            Clause::AddColumns(cols) => {
                for (spec, p) in cols {
                    if def.schema.column_index(&spec.name).is_some() {
                        // `ADD COLUMN IF NOT EXISTS` of an existing column, or
                        // a definition that already has it (the catalog read
                        // after the change): a replica adds it if missing.
                        let col = column_def(spec, ctx)?;
                        actions.push(AlterAction::AddColumn {
                            name: spec.name.clone(),
                            fill: fill_of(spec, &col, ctx),
                        });
                        continue;
                    }
                    let col = column_def(spec, ctx)?;
                    let fill = fill_of(spec, &col, ctx);
                    let at = place(&mut def.schema.columns, col, p)?;
                    on_insert(&mut def, at);
                    if spec.primary {
                        def.schema.primary_key = vec![at];
                        actions.push(AlterAction::Keys);
                    }
                    if spec.unique {
                        let name = auto_name(&spec.name, &taken);
                        taken.push(name.clone());
                        def.schema.unique_keys.push(vec![at]);
                        def.unique_key_names.push(name);
                        actions.push(AlterAction::Keys);
                    }
                    actions.insert(
                        actions.len() - (spec.primary as usize + spec.unique as usize),
                        AlterAction::AddColumn {
                            name: spec.name.clone(),
                            fill,
                        },
                    );
                }
            }
            Clause::AddKey(k) => actions.extend(add_key(&mut def, k, &mut taken)?),
            Clause::DropColumn(c) => {
                let Ok(i) = find(&def, c) else {
                    actions.push(AlterAction::DropColumn { name: c.clone() });
                    continue;
                };
                let name = def.schema.columns[i].name.clone();
                def.schema.columns.remove(i);
                on_remove(&mut def, i);
                actions.push(AlterAction::DropColumn { name });
            }
            Clause::DropPrimaryKey => {
                def.schema.primary_key.clear();
                actions.push(AlterAction::Keys);
            }
            Clause::DropIndex(n) => {
                match def
                    .unique_key_names
                    .iter()
                    .position(|x| x.eq_ignore_ascii_case(n))
                {
                    Some(i) => {
                        def.schema.unique_keys.remove(i);
                        def.unique_key_names.remove(i);
                        actions.push(AlterAction::Keys);
                    }
                    None => actions.push(AlterAction::DropIndex { name: n.clone() }),
                }
            }
            Clause::DropForeignKey(_) => actions.push(AlterAction::ForeignKeys),
            Clause::DropConstraint(n) => match def
                .unique_key_names
                .iter()
                .position(|x| x.eq_ignore_ascii_case(n))
            {
                Some(i) => {
                    def.schema.unique_keys.remove(i);
                    def.unique_key_names.remove(i);
                    actions.push(AlterAction::Keys);
                }
                None => actions.push(AlterAction::ForeignKeys),
            },
            Clause::SetDefault(c, _) => {
                find(&def, c)?;
                actions.push(AlterAction::SetDefault { column: c.clone() });
            }
            Clause::DropDefault(c) => {
                find(&def, c)?;
                actions.push(AlterAction::DropDefault { column: c.clone() });
            }
            Clause::Change { spec, placement, .. } | Clause::Modify { spec, placement } => {
                let old = match clause {
                    Clause::Change { old, .. } => old.clone(),
                    _ => spec.name.clone(),
                };
                let Ok(i) = find(&def, &old) else {
                    // `CHANGE COLUMN IF EXISTS` of a missing column.
                    continue;
                };
                let from = def.schema.columns[i].name.clone();
                let mut col = column_def(spec, ctx)?;
                if def.schema.primary_key.contains(&i) {
                    col.nullable = false;
                }
                def.schema.columns[i] = col;
                if *placement != Placement::Last {
                    let col = def.schema.columns.remove(i);
                    let at = place(&mut def.schema.columns, col, placement)?;
                    on_move(&mut def, i, at);
                }
                if spec.primary {
                    let at = find(&def, &spec.name)?;
                    def.schema.primary_key = vec![at];
                    actions.push(AlterAction::Keys);
                }
                actions.push(AlterAction::ModifyColumn {
                    from,
                    to: spec.name.clone(),
                });
            }
            Clause::RenameColumn(a, b) => {
                let i = find(&def, a)?;
                let from = def.schema.columns[i].name.clone();
                def.schema.columns[i].name = b.clone();
                actions.push(AlterAction::RenameColumn { from, to: b.clone() });
            }
            Clause::RenameIndex(a, b) => {
                if let Some(i) = def
                    .unique_key_names
                    .iter()
                    .position(|x| x.eq_ignore_ascii_case(a))
                {
                    def.unique_key_names[i] = b.clone();
                }
                actions.push(AlterAction::RenameIndex {
                    from: a.clone(),
                    to: b.clone(),
                });
            }
            Clause::RenameTo(_) => {
                // The caller renames the definition (`new_id`).
            }
            Clause::ConvertCharset { charset, collation } => {
                let ty = TypeSpec {
                    charset: charset.clone(),
                    collation: collation.clone(),
                    ..TypeSpec::default()
                };
                let (cs, coll) = ctx.text_charset(&ty);
                for c in def.schema.columns.iter_mut() {
                    if c.charset.is_some() && c.ty != ColumnType::Json {
                        c.charset = cs.clone();
                        c.collation = coll.clone();
                        actions.push(AlterAction::ModifyColumn {
                            from: c.name.clone(),
                            to: c.name.clone(),
                        });
                    }
                }
                // MySQL may also widen TEXT types to keep byte lengths; the
                // catalog check at capture decides when it can.
            }
            Clause::DefaultCharset { .. } => actions.push(AlterAction::Options {
                clause: "the table's default character set".into(),
            }),
            Clause::Option(o) => actions.push(AlterAction::Options { clause: o.clone() }),
            Clause::Unsupported(c) => actions.push(AlterAction::Unsupported { clause: c.clone() }),
        }
    }
    if let Some(id) = new_id {
        def.schema.id = id;
    }
    for &i in &def.schema.primary_key.clone() {
        def.schema.columns[i].nullable = false;
    }
    promote_identity(&mut def.schema, &mut def.unique_key_names);
    Ok((def, actions))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pipeline::ddl::AlterAction as A;
    use std::collections::HashMap;

    fn server() -> ServerCharsets {
        let mut s = ServerCharsets::default();
        for (id, (name, cs)) in (1u16..).zip([
            ("utf8mb4_general_ci", "utf8mb4"),
            ("utf8mb4_bin", "utf8mb4"),
            ("latin1_swedish_ci", "latin1"),
            ("latin1_bin", "latin1"),
            ("utf8mb3_general_ci", "utf8mb3"),
        ]) {
            s.collations.insert(
                id,
                super::super::binlog_table::CollationInfo {
                    name: name.into(),
                    charset: cs.into(),
                },
            );
        }
        s.max_len = HashMap::from([("utf8mb4".into(), 4), ("latin1".into(), 1), ("utf8mb3".into(), 3)]);
        s.default_collation = HashMap::from([
            ("utf8mb4".into(), "utf8mb4_general_ci".into()),
            ("latin1".into(), "latin1_swedish_ci".into()),
            ("utf8mb3".into(), "utf8mb3_general_ci".into()),
        ]);
        s
    }

    fn ctx(s: &ServerCharsets) -> Context<'_> {
        Context {
            server: s,
            default_collation: Some("utf8mb4_general_ci".into()),
            commit_ts_us: 1_700_000_000_123_456,
        }
    }

    fn create(sql: &str) -> Definition {
        let s = server();
        match parse(sql).unwrap() {
            Statement::CreateTable(ct) => create_definition(&ct, ct.table.id("app"), &ctx(&s)).unwrap(),
            other => panic!("{other:?}"),
        }
    }

    fn alter(before: &Definition, sql: &str) -> (Definition, Vec<AlterAction>) {
        let s = server();
        match parse(sql).unwrap() {
            Statement::Alter { clauses, .. } => alter_definition(before, &clauses, None, &ctx(&s)).unwrap(),
            other => panic!("{other:?}"),
        }
    }

    fn names(d: &Definition) -> Vec<&str> {
        d.schema.columns.iter().map(|c| c.name.as_str()).collect()
    }

    #[test]
    fn creates_definitions_like_the_table_map() {
        let d = create(
            "CREATE TABLE IF NOT EXISTS `t` (id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT, \
             name VARCHAR(40) CHARACTER SET latin1 COLLATE latin1_bin NOT NULL DEFAULT 'x', \
             note TEXT, price DECIMAL(10,2), e ENUM('a','it''s') NOT NULL, j JSON, \
             created TIMESTAMP(3) NULL DEFAULT CURRENT_TIMESTAMP(3), b BINARY(4), flag BOOL, \
             PRIMARY KEY (id), UNIQUE KEY uk_name (name), KEY idx_price (price), \
             CONSTRAINT fk FOREIGN KEY (id) REFERENCES other.p (id) ON DELETE CASCADE) \
             ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
        );
        let s = &d.schema;
        assert_eq!(
            names(&d),
            ["id", "name", "note", "price", "e", "j", "created", "b", "flag"]
        );
        assert_eq!(s.primary_key, [0]);
        assert_eq!(s.unique_keys, [vec![1]]);
        assert_eq!(d.unique_key_names, ["uk_name"]);
        assert_eq!(
            s.columns[0].ty,
            ColumnType::Integer {
                bytes: 8,
                unsigned: true
            }
        );
        assert!(!s.columns[0].nullable);
        assert_eq!(s.columns[1].ty, ColumnType::VarChar { length: 40 });
        assert_eq!(s.columns[1].collation.as_deref(), Some("latin1_bin"));
        assert_eq!(s.columns[2].ty, ColumnType::Text { max_bytes: 65_535 });
        assert_eq!(s.columns[2].collation.as_deref(), Some("utf8mb4_general_ci"));
        assert_eq!(
            s.columns[3].ty,
            ColumnType::Decimal {
                precision: 10,
                scale: 2
            }
        );
        assert_eq!(
            s.columns[4].ty,
            ColumnType::Enum {
                labels: vec!["a".into(), "it's".into()]
            }
        );
        assert_eq!(s.columns[5].ty, ColumnType::Json);
        assert_eq!(s.columns[6].ty, ColumnType::Timestamp { fsp: 3 });
        assert_eq!(s.columns[7].ty, ColumnType::Binary { length: 4 });
        assert_eq!(s.columns[7].charset, None);
        // No primary key, a UNIQUE key over NOT NULL columns: keyed by it.
        let d = create("CREATE TABLE u (a INT NOT NULL, b INT, UNIQUE (a))");
        assert_eq!(d.schema.primary_key, [0]);
        assert!(d.schema.unique_keys.is_empty());
    }

    #[test]
    fn alters_columns_keys_and_names() {
        let d = create("CREATE TABLE t (id INT PRIMARY KEY, a INT, b VARCHAR(10), UNIQUE KEY ub (b))");
        let (d2, actions) = alter(
            &d,
            "ALTER TABLE t ADD COLUMN c INT NOT NULL DEFAULT 7 AFTER id, ADD d DATE FIRST, \
             DROP COLUMN a, CHANGE b b2 VARCHAR(20) NOT NULL, ALTER c SET DEFAULT 8, \
             ADD INDEX ic (c), DROP INDEX ub, ADD UNIQUE KEY uc (c), RENAME COLUMN c TO c2, \
             ENGINE=InnoDB, ALGORITHM=INPLACE, LOCK=NONE",
        );
        assert_eq!(names(&d2), ["d", "id", "c2", "b2"]);
        assert_eq!(d2.schema.primary_key, [1]);
        assert_eq!(d2.schema.unique_keys, [vec![2]]);
        assert_eq!(d2.unique_key_names, ["uc"]);
        assert_eq!(d2.schema.columns[3].ty, ColumnType::VarChar { length: 20 });
        assert!(!d2.schema.columns[3].nullable);
        assert_eq!(
            actions[0],
            A::AddColumn {
                name: "c".into(),
                fill: Fill::Value(Value::Int(7))
            }
        );
        assert_eq!(
            actions[1],
            A::AddColumn {
                name: "d".into(),
                fill: Fill::Value(Value::Null)
            }
        );
        assert!(actions.contains(&A::DropColumn { name: "a".into() }));
        assert!(actions.contains(&A::ModifyColumn {
            from: "b".into(),
            to: "b2".into()
        }));
        assert!(actions.contains(&A::Keys));
        assert!(actions.contains(&A::AddIndex {
            name: "ic".into(),
            columns: vec!["c".into()]
        }));
        assert_eq!(
            actions.iter().filter(|a| matches!(a, A::Options { .. })).count(),
            3
        );
        assert!(!actions.iter().any(|a| matches!(a, A::Unsupported { .. })));
        // Partitioning and fills by expression are named as untranslatable.
        let (_, actions) = alter(
            &d2,
            "ALTER TABLE t ADD PARTITION (PARTITION p3 VALUES LESS THAN (30))",
        );
        assert!(matches!(&actions[0], A::Unsupported { clause } if clause.contains("PARTITION")));
        let (_, actions) = alter(&d2, "ALTER TABLE t ADD u CHAR(36) NOT NULL DEFAULT (UUID())");
        assert!(matches!(
            &actions[0],
            A::AddColumn {
                fill: Fill::Unknown(_),
                ..
            }
        ));
        // Dropping the primary key; a key over a prefix is not a UNIQUE key here.
        let (d3, _) = alter(&d2, "ALTER TABLE t DROP PRIMARY KEY, ADD UNIQUE (b2(5))");
        assert!(d3.schema.primary_key.is_empty() || d3.schema.primary_key == [2]);
    }

    #[test]
    fn implicit_fills_and_timestamps() {
        let d = create("CREATE TABLE t (id INT PRIMARY KEY)");
        let (_, actions) = alter(
            &d,
            "ALTER TABLE t ADD a INT NOT NULL, ADD b VARCHAR(3) NOT NULL, ADD c DECIMAL(5,2) NOT NULL, \
             ADD e ENUM('x','y') NOT NULL, ADD ts TIMESTAMP(2) NOT NULL DEFAULT CURRENT_TIMESTAMP(2), \
             ADD dt DATETIME NOT NULL DEFAULT '2024-01-02 03:04:05.5'",
        );
        let fills: Vec<&Fill> = actions
            .iter()
            .map(|a| match a {
                A::AddColumn { fill, .. } => fill,
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(*fills[0], Fill::Value(Value::Int(0)));
        assert_eq!(*fills[1], Fill::Value(Value::Text(String::new())));
        assert_eq!(*fills[2], Fill::Value(Value::Decimal("0.00".into())));
        assert_eq!(*fills[3], Fill::Value(Value::Enum("x".into())));
        assert_eq!(*fills[4], Fill::Value(Value::Timestamp(1_700_000_000_120_000)));
        assert!(matches!(fills[5], Fill::Value(Value::DateTime(d)) if d.micros == 500_000 && d.second == 5));
    }

    #[test]
    fn statements_and_rewriting() {
        let map = |db: &str| {
            if db == "app" {
                "replica_app".to_string()
            } else {
                db.to_string()
            }
        };
        assert_eq!(
            rewrite("ALTER TABLE t /* c */ ADD c INT, RENAME TO `app`.u", "app", &map).unwrap(),
            "ALTER TABLE `replica_app`.`t` /* c */ ADD c INT, RENAME TO `replica_app`.`u`"
        );
        assert_eq!(
            rewrite("CREATE TABLE x.t LIKE s", "app", &map).unwrap(),
            "CREATE TABLE `x`.`t` LIKE `replica_app`.`s`"
        );
        assert_eq!(
            rewrite(
                "create database if not exists app character set utf8mb4",
                "",
                &map
            )
            .unwrap(),
            "create database if not exists `replica_app` character set utf8mb4"
        );
        assert!(matches!(
            parse("RENAME TABLE a TO b, db.c TO db2.d").unwrap(),
            Statement::Rename(p) if p.len() == 2 && p[1].1.db.as_deref() == Some("db2")
        ));
        assert!(matches!(
            parse("DROP TABLE IF EXISTS a, `b` /* generated by server */").unwrap(),
            Statement::Drop { tables } if tables.len() == 2
        ));
        assert!(matches!(
            parse("CREATE VIEW v AS SELECT 1").unwrap(),
            Statement::Other
        ));
        assert!(matches!(
            parse("CREATE TEMPORARY TABLE t (a INT)").unwrap(),
            Statement::Other
        ));
        assert!(matches!(
            parse("CREATE UNIQUE INDEX i ON t (a)").unwrap(),
            Statement::Alter { clauses, .. } if matches!(&clauses[0], Clause::AddKey(k) if k.kind == KeyKind::Unique)
        ));
        assert!(matches!(
            parse("ALTER TABLE t CONVERT TO CHARACTER SET latin1").unwrap(),
            Statement::Alter { clauses, .. } if matches!(&clauses[0], Clause::ConvertCharset { .. })
        ));
        // Comments and strings never confuse the lexer.
        assert!(matches!(
            parse("/*!40000 ALTER TABLE `t` DISABLE KEYS */").unwrap(),
            Statement::Alter { .. }
        ));
        let (st, names) = names_of("ALTER TABLE t COMMENT 'RENAME TO x'").unwrap();
        assert_eq!(names.len(), 1);
        assert!(matches!(st, Statement::Alter { clauses, .. } if matches!(&clauses[0], Clause::Option(_))));
    }
}
