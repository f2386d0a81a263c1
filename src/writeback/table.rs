//! Write-back tables: where queued records land in PostgreSQL, and how.
//!
//! A [`Table`] names a PostgreSQL table, the columns a record fills, and
//! a merge rule that makes writing a record twice (a redelivery after a
//! crash between a commit and its acknowledgement) the same as writing it
//! once:
//!
//! - [`Merge::InsertOnce`]: each row has a unique id; a row whose id is
//!   stored is left alone (and, optionally, its deliveries counted).
//! - [`Merge::LastWriterWins`]: rows are keyed; the version of the write
//!   (its queue entry id) decides, so the newest write of a key stays
//!   whatever order batches land in. A delete keeps its row, the value
//!   columns null, so that an older write cannot bring the key back.
//!   The table has `version_ms bigint` and `version_seq bigint` columns,
//!   which the database core fills.
//! - [`Merge::Append`]: every record's rows are appended once: the
//!   database core fills `wb_partition integer`, `wb_version_ms bigint`,
//!   `wb_version_seq bigint` and `wb_row integer`, on which the table has a
//!   unique constraint, so a redelivered record adds nothing.
//!
//! A record's payload is, by default, its one row's fields in PostgreSQL's
//! binary format ([`Row`] builds one; [`Fields`] reads one back). A table
//! may say otherwise ([`Table::with_rows`]: one record, several rows, as
//! an event batch is).
//!
//! Everything here is sans-IO: the SQL a table needs and the COPY bytes
//! of its rows, as values.

use std::fmt;
use std::sync::Arc;

/// A column's PostgreSQL type, as a record's payload encodes it (binary
/// format).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColumnType {
    /// `bytea`: any bytes.
    Bytea,
    /// `text`: UTF-8 without NUL.
    Text,
    /// `smallint`: 2 bytes, big-endian.
    Int2,
    /// `integer`: 4 bytes, big-endian.
    Int4,
    /// `bigint`: 8 bytes, big-endian.
    Int8,
    /// `boolean`: 1 byte.
    Bool,
    /// `double precision`: 8 bytes, IEEE 754, big-endian.
    Float8,
    /// `timestamptz`: microseconds since 2000-01-01 UTC, 8 bytes.
    Timestamptz,
    /// `uuid`: 16 bytes.
    Uuid,
    /// `jsonb`: the version byte 1, then the JSON text.
    Jsonb,
}

impl ColumnType {
    /// Whether `value` is a valid binary encoding of this type.
    pub fn accepts(self, value: &[u8]) -> bool {
        match self {
            ColumnType::Bytea => true,
            ColumnType::Text => !value.contains(&0) && std::str::from_utf8(value).is_ok(),
            ColumnType::Int2 => value.len() == 2,
            ColumnType::Int4 => value.len() == 4,
            ColumnType::Int8 | ColumnType::Float8 | ColumnType::Timestamptz => value.len() == 8,
            ColumnType::Bool => matches!(value, [0 | 1]),
            ColumnType::Uuid => value.len() == 16,
            ColumnType::Jsonb => match value.split_first() {
                Some((1, json)) => !json.contains(&0) && std::str::from_utf8(json).is_ok(),
                _ => false,
            },
        }
    }

    /// The SQL name.
    pub fn sql(self) -> &'static str {
        match self {
            ColumnType::Bytea => "bytea",
            ColumnType::Text => "text",
            ColumnType::Int2 => "smallint",
            ColumnType::Int4 => "integer",
            ColumnType::Int8 => "bigint",
            ColumnType::Bool => "boolean",
            ColumnType::Float8 => "double precision",
            ColumnType::Timestamptz => "timestamptz",
            ColumnType::Uuid => "uuid",
            ColumnType::Jsonb => "jsonb",
        }
    }
}

/// A column a record fills.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    /// Its name in the table.
    pub name: String,
    /// Its type.
    pub kind: ColumnType,
}

/// How a table's rows meet what the database already holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Merge {
    /// Rows are unique by `id`; a row whose id is stored is left as it is.
    InsertOnce {
        /// The unique column.
        id: String,
        /// An `integer` column that counts how many times each row's id
        /// reached the database (redeliveries, a client's retries).
        deliveries: Option<String>,
    },
    /// Rows are unique by `key`; the newest version wins.
    LastWriterWins {
        /// The unique column.
        key: String,
        /// A `timestamptz` column set to `now()` when a newer version
        /// replaces the row.
        touched: Option<String>,
    },
    /// Every record's rows, once.
    Append,
}

/// The columns the database core fills for a [`Merge::LastWriterWins`] table.
pub const VERSION_COLUMNS: [&str; 2] = ["version_ms", "version_seq"];

/// The columns the database core fills for a [`Merge::Append`] table.
pub const APPEND_COLUMNS: [&str; 4] = ["wb_partition", "wb_version_ms", "wb_version_seq", "wb_row"];

/// A queued record as the database core reads it back.
#[derive(Clone, Copy, Debug)]
pub struct RecordRef<'a> {
    /// The key that picked its partition (for a cached table, the key).
    pub key: &'a [u8],
    /// Its payload; `None` for a delete.
    pub payload: Option<&'a [u8]>,
}

/// How a record becomes rows: write each row's fields, in column order,
/// with [`RowWriter`]; an error sets the record aside.
pub type RowsFn = fn(&Table, RecordRef<'_>, &mut RowWriter) -> Result<(), String>;

/// How a row read from the database becomes a cached value (read-through):
/// given the row's value columns' fields, in column order, write the value.
pub type CacheValueFn = fn(&[Option<&[u8]>], &mut Vec<u8>);

/// A write-back table.
#[derive(Clone)]
pub struct Table {
    name: String,
    columns: Vec<Column>,
    merge: Merge,
    schema: String,
    rows: RowsFn,
    /// `rows` is the table's own: its payloads are not one row's fields.
    custom_rows: bool,
    cache_value: CacheValueFn,
    cached: bool,
}

impl fmt::Debug for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Table")
            .field("name", &self.name)
            .field("columns", &self.columns)
            .field("merge", &self.merge)
            .field("cached", &self.cached)
            .finish_non_exhaustive()
    }
}

/// Whether `name` is a plain lower-case SQL identifier.
fn is_identifier(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z' | b'_'))
        && bytes.all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_'))
        && name.len() <= 48
}

impl Table {
    /// A table called `name` (a lower-case SQL identifier, unique among the
    /// server's tables) whose records fill `columns` and merge by `merge`;
    /// `schema` creates it (idempotent: `create table if not exists`), and
    /// is applied at every start of the database core.
    pub fn new(
        name: &str,
        columns: &[(&str, ColumnType)],
        merge: Merge,
        schema: &str,
    ) -> Result<Table, String> {
        let bad = |why: String| Err(format!("write-back table {name:?}: {why}"));
        if !is_identifier(name) {
            return bad("a table name is a lower-case SQL identifier of at most 48 bytes".into());
        }
        if columns.is_empty() {
            return bad("no columns".into());
        }
        for (i, (column, _)) in columns.iter().enumerate() {
            if !is_identifier(column) {
                return bad(format!(
                    "column {column:?} is not a lower-case SQL identifier"
                ));
            }
            if columns[..i].iter().any(|(c, _)| c == column) {
                return bad(format!("column {column:?} is named twice"));
            }
            let reserved = match merge {
                Merge::LastWriterWins { .. } => VERSION_COLUMNS.contains(column),
                Merge::Append => APPEND_COLUMNS.contains(column),
                Merge::InsertOnce { .. } => false,
            };
            if reserved {
                return bad(format!("column {column:?} is filled by the database core"));
            }
        }
        let has = |c: &str| columns.iter().any(|(name, _)| *name == c);
        match &merge {
            Merge::InsertOnce { id, deliveries } => {
                if !has(id) {
                    return bad(format!("the id column {id:?} is not among the columns"));
                }
                if let Some(d) = deliveries
                    && (has(d) || !is_identifier(d))
                {
                    return bad(format!(
                        "the deliveries column {d:?} must be another column"
                    ));
                }
            }
            Merge::LastWriterWins { key, touched } => {
                if !has(key) {
                    return bad(format!("the key column {key:?} is not among the columns"));
                }
                if let Some(t) = touched
                    && (has(t) || !is_identifier(t))
                {
                    return bad(format!("the touched column {t:?} must be another column"));
                }
            }
            Merge::Append => {}
        }
        Ok(Table {
            name: name.to_string(),
            columns: columns
                .iter()
                .map(|(name, kind)| Column {
                    name: name.to_string(),
                    kind: *kind,
                })
                .collect(),
            merge,
            schema: schema.to_string(),
            rows: one_row,
            custom_rows: false,
            cache_value: all_fields,
            cached: false,
        })
    }

    /// Records of this table are not one row each: `rows` says what rows
    /// each becomes.
    pub fn with_rows(mut self, rows: RowsFn) -> Table {
        self.rows = rows;
        self.custom_rows = true;
        self
    }

    /// Keep each key's newest value in the Redis cache beside the queue
    /// (a [`Merge::LastWriterWins`] table only): writes go through the
    /// cache atomically with the queue, reads are answered from it and
    /// read through from PostgreSQL on a miss. `cache_value` makes the
    /// cached value of a row read from the database; it must give what a
    /// write's payload would have been.
    pub fn cached(mut self, cache_value: Option<CacheValueFn>) -> Result<Table, String> {
        if !matches!(self.merge, Merge::LastWriterWins { .. }) {
            return Err(format!(
                "write-back table {:?}: only a last-writer-wins table can be cached",
                self.name
            ));
        }
        self.cached = true;
        if let Some(f) = cache_value {
            self.cache_value = f;
        }
        Ok(self)
    }

    /// The table's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The columns a record fills, in order.
    pub fn columns(&self) -> &[Column] {
        &self.columns
    }

    /// The merge rule.
    pub fn merge(&self) -> &Merge {
        &self.merge
    }

    /// The statements that create it.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// Whether its values are cached in Redis.
    pub fn is_cached(&self) -> bool {
        self.cached
    }

    /// The rows `record` becomes, appended to `out`.
    pub fn rows(&self, record: RecordRef<'_>, out: &mut RowWriter) -> Result<(), String> {
        (self.rows)(self, record, out)
    }

    /// Check a one-row payload against the columns it holds (what [`Row`]
    /// builds; for a last-writer-wins table, every column but the key,
    /// which the record's key fills): so that a bad record is refused at
    /// the door, not in the database.
    pub fn check_payload(&self, payload: &[u8]) -> Result<(), String> {
        let mut fields = Fields::new(payload);
        for column in self.value_columns() {
            match fields.next() {
                None => {
                    return Err(format!(
                        "a row of {} is missing column {}",
                        self.name, column.name
                    ));
                }
                Some(Err(why)) => return Err(why),
                Some(Ok(None)) => {}
                Some(Ok(Some(value))) if column.kind.accepts(value) => {}
                Some(Ok(Some(_))) => {
                    return Err(format!(
                        "column {} of {} is not a valid {}",
                        column.name,
                        self.name,
                        column.kind.sql()
                    ));
                }
            }
        }
        if fields.next().is_some() {
            return Err(format!(
                "a row of {} has more fields than columns",
                self.name
            ));
        }
        Ok(())
    }

    /// Check a record's payload before it is queued: against the columns
    /// when it is one row's fields; a table with rows of its own checks its
    /// payloads itself (its handler does, before queueing).
    pub fn check_record(&self, payload: &[u8]) -> Result<(), String> {
        if self.custom_rows {
            Ok(())
        } else {
            self.check_payload(payload)
        }
    }

    /// Check a cached table's key against its key column's type, so that
    /// a key the database cannot compare never reaches a lookup.
    pub fn check_key(&self, key: &[u8]) -> Result<(), String> {
        let Merge::LastWriterWins { key: column, .. } = &self.merge else {
            return Ok(());
        };
        let kind = self
            .columns
            .iter()
            .find(|c| &c.name == column)
            .map_or(ColumnType::Bytea, |c| c.kind);
        if kind.accepts(key) {
            Ok(())
        } else {
            Err(format!(
                "a key of {} must be a valid {}",
                self.name,
                kind.sql()
            ))
        }
    }

    /// The cached value of a row read from the database, from its value
    /// columns' fields (every column but the key, in order).
    pub fn cache_value(&self, fields: &[Option<&[u8]>], out: &mut Vec<u8>) {
        (self.cache_value)(fields, out)
    }

    /// The columns the database core fills after a record's own.
    pub fn core_columns(&self) -> &'static [&'static str] {
        match self.merge {
            Merge::LastWriterWins { .. } => &VERSION_COLUMNS,
            Merge::Append => &APPEND_COLUMNS,
            Merge::InsertOnce { .. } => &[],
        }
    }

    /// The columns a payload holds: for a last-writer-wins table every
    /// column but the key, else every column.
    pub fn value_columns(&self) -> impl Iterator<Item = &Column> {
        let key = match &self.merge {
            Merge::LastWriterWins { key, .. } => Some(key.as_str()),
            _ => None,
        };
        self.columns
            .iter()
            .filter(move |c| Some(c.name.as_str()) != key)
    }

    // The SQL the database core runs.

    /// The session's staging table: COPY goes there, then the merge.
    pub fn staging_table(&self) -> String {
        format!("{}_wb_stage", self.name)
    }

    /// Create the staging table (a temporary table, emptied at commit).
    pub fn create_staging_sql(&self) -> String {
        format!(
            "create temp table if not exists {} (like {} including defaults) on commit delete rows",
            self.staging_table(),
            self.name
        )
    }

    /// Every column COPY fills, in order.
    pub fn copy_columns(&self) -> String {
        self.columns
            .iter()
            .map(|c| c.name.as_str())
            .chain(self.core_columns().iter().copied())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// `COPY` into `target` (the table, or its staging table).
    pub fn copy_sql(&self, target: &str) -> String {
        format!("copy {target} ({}) from stdin binary", self.copy_columns())
    }

    /// Whether rows may be copied straight into the table, falling back
    /// to staging and the merge when one is already there: insert-once
    /// tables, where almost every row is new.
    pub fn copies_directly(&self) -> bool {
        matches!(self.merge, Merge::InsertOnce { .. })
    }

    /// Merge the staging table into the table.
    pub fn merge_sql(&self) -> String {
        let (table, stage, columns) = (&self.name, self.staging_table(), self.copy_columns());
        match &self.merge {
            Merge::InsertOnce {
                id,
                deliveries: None,
            } => format!(
                "insert into {table} ({columns}) select distinct on ({id}) {columns} from {stage} \
                 order by {id} on conflict ({id}) do nothing"
            ),
            Merge::InsertOnce {
                id,
                deliveries: Some(d),
            } => format!(
                "insert into {table} ({columns}, {d}) select distinct on ({id}) {columns}, \
                 count(*) over (partition by {id}) from {stage} order by {id} \
                 on conflict ({id}) do update set {d} = {table}.{d} + excluded.{d}"
            ),
            Merge::LastWriterWins { key, touched } => {
                let mut set: Vec<String> = self
                    .columns
                    .iter()
                    .filter(|c| &c.name != key)
                    .map(|c| format!("{0} = excluded.{0}", c.name))
                    .chain(
                        VERSION_COLUMNS
                            .iter()
                            .map(|c| format!("{c} = excluded.{c}")),
                    )
                    .collect();
                if let Some(t) = touched {
                    set.push(format!("{t} = now()"));
                }
                format!(
                    "insert into {table} ({columns}) select distinct on ({key}) {columns} \
                     from {stage} order by {key}, version_ms desc, version_seq desc \
                     on conflict ({key}) do update set {} \
                     where ({table}.version_ms, {table}.version_seq) \
                     < (excluded.version_ms, excluded.version_seq)",
                    set.join(", ")
                )
            }
            Merge::Append => format!(
                "insert into {table} ({columns}) select {columns} from {stage} on conflict do nothing"
            ),
        }
    }

    /// A cached table's read-through: the key, the value columns and the
    /// version of each of `$1`'s keys (`bytea[]`).
    pub fn lookup_sql(&self) -> Option<String> {
        let Merge::LastWriterWins { key, .. } = &self.merge else {
            return None;
        };
        let values: Vec<&str> = self.value_columns().map(|c| c.name.as_str()).collect();
        Some(format!(
            "select {key}, {}, version_ms, version_seq from {} where {key} = any($1)",
            values.join(", "),
            self.name
        ))
    }

    /// Check that the table has the columns the database core fills, by
    /// selecting them (no rows).
    pub fn check_sql(&self) -> String {
        format!("select {} from {} limit 0", self.copy_columns(), self.name)
    }
}

/// The default [`RowsFn`]: the payload is one row's fields; for a
/// last-writer-wins table, every field but the key's, which the record's
/// key fills (and a delete, no payload, leaves the others null).
fn one_row(table: &Table, record: RecordRef<'_>, out: &mut RowWriter) -> Result<(), String> {
    let key_column = match &table.merge {
        Merge::LastWriterWins { key, .. } => key.as_str(),
        _ => {
            let Some(payload) = record.payload else {
                return Err(format!(
                    "a delete of {} has no row (only a last-writer-wins table takes deletes)",
                    table.name
                ));
            };
            table.check_payload(payload)?;
            out.row_fields(table.columns.len(), payload);
            return Ok(());
        }
    };
    table.check_key(record.key)?;
    let mut values = match record.payload {
        Some(payload) => {
            table.check_payload(payload)?;
            Some(Fields::new(payload))
        }
        None => None,
    };
    let mut fields: Vec<Option<&[u8]>> = Vec::with_capacity(table.columns.len());
    for column in &table.columns {
        if column.name == key_column {
            fields.push(Some(record.key));
            continue;
        }
        match values.as_mut().and_then(Iterator::next) {
            Some(Ok(field)) => fields.push(field),
            // Checked above.
            Some(Err(why)) => return Err(why),
            None => fields.push(None),
        }
    }
    out.row(&fields);
    Ok(())
}

/// The default [`CacheValueFn`]: the value columns' fields.
fn all_fields(fields: &[Option<&[u8]>], out: &mut Vec<u8>) {
    for field in fields {
        push_field(out, *field);
    }
}

/// The server's tables, by name.
#[derive(Clone, Debug, Default)]
pub struct Tables {
    tables: Arc<Vec<Table>>,
}

impl Tables {
    /// `tables`, whose names must differ.
    pub fn new(tables: Vec<Table>) -> Result<Tables, String> {
        for (i, table) in tables.iter().enumerate() {
            if tables[..i].iter().any(|t| t.name == table.name) {
                return Err(format!("two write-back tables are called {:?}", table.name));
            }
        }
        Ok(Tables {
            tables: Arc::new(tables),
        })
    }

    /// Every table, in the order given.
    pub fn all(&self) -> &[Table] {
        &self.tables
    }

    /// The table called `name`, and its index.
    pub fn find(&self, name: &[u8]) -> Option<(usize, &Table)> {
        self.tables
            .iter()
            .enumerate()
            .find(|(_, t)| t.name.as_bytes() == name)
    }

    /// Table `index`.
    pub fn get(&self, index: usize) -> Option<&Table> {
        self.tables.get(index)
    }
}

/// Append one field (`None`: null) in the binary COPY format.
pub fn push_field(out: &mut Vec<u8>, value: Option<&[u8]>) {
    match value {
        None => out.extend_from_slice(&(-1i32).to_be_bytes()),
        Some(value) => {
            out.extend_from_slice(&(value.len() as i32).to_be_bytes());
            out.extend_from_slice(value);
        }
    }
}

/// One row's fields in PostgreSQL's binary format: a record's payload.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Row {
    bytes: Vec<u8>,
}

/// Microseconds from the Unix epoch to PostgreSQL's, 2000-01-01 UTC.
const POSTGRES_EPOCH_US: i64 = 946_684_800_000_000;

impl Row {
    /// No fields yet.
    pub fn new() -> Row {
        Row::default()
    }

    /// A `bytea` field.
    pub fn bytes(mut self, value: &[u8]) -> Row {
        push_field(&mut self.bytes, Some(value));
        self
    }

    /// A `text` field.
    pub fn text(self, value: &str) -> Row {
        self.bytes(value.as_bytes())
    }

    /// A `smallint` field.
    pub fn int2(self, value: i16) -> Row {
        self.bytes(&value.to_be_bytes())
    }

    /// An `integer` field.
    pub fn int4(self, value: i32) -> Row {
        self.bytes(&value.to_be_bytes())
    }

    /// A `bigint` field.
    pub fn int8(self, value: i64) -> Row {
        self.bytes(&value.to_be_bytes())
    }

    /// A `boolean` field.
    pub fn bool(self, value: bool) -> Row {
        self.bytes(&[u8::from(value)])
    }

    /// A `double precision` field.
    pub fn float8(self, value: f64) -> Row {
        self.bytes(&value.to_bits().to_be_bytes())
    }

    /// A `timestamptz` field, from microseconds since the Unix epoch.
    pub fn timestamp_us(self, unix_us: i64) -> Row {
        self.int8(unix_us - POSTGRES_EPOCH_US)
    }

    /// A `uuid` field.
    pub fn uuid(self, value: [u8; 16]) -> Row {
        self.bytes(&value)
    }

    /// A `jsonb` field from JSON text.
    pub fn jsonb(mut self, json: &str) -> Row {
        let len = json.len() + 1;
        self.bytes.extend_from_slice(&(len as i32).to_be_bytes());
        self.bytes.push(1);
        self.bytes.extend_from_slice(json.as_bytes());
        self
    }

    /// A null field.
    pub fn null(mut self) -> Row {
        push_field(&mut self.bytes, None);
        self
    }

    /// The payload.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

/// The fields of a payload (or of a cached value built from one), in
/// order: each `Ok(None)` for a null, `Ok(Some(bytes))` for a value.
pub struct Fields<'a> {
    rest: &'a [u8],
}

impl<'a> Fields<'a> {
    /// The fields of `payload`.
    pub fn new(payload: &'a [u8]) -> Fields<'a> {
        Fields { rest: payload }
    }

    /// The next field as `text`.
    pub fn text(&mut self) -> Option<&'a str> {
        std::str::from_utf8(self.next()?.ok()??).ok()
    }

    /// The next field as `bigint`.
    pub fn int8(&mut self) -> Option<i64> {
        Some(i64::from_be_bytes(self.next()?.ok()??.try_into().ok()?))
    }

    /// The next field as `integer`.
    pub fn int4(&mut self) -> Option<i32> {
        Some(i32::from_be_bytes(self.next()?.ok()??.try_into().ok()?))
    }

    /// The next field as `bytea`.
    pub fn bytes(&mut self) -> Option<&'a [u8]> {
        self.next()?.ok()?
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<Option<&'a [u8]>, String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let Some((len, rest)) = self.rest.split_first_chunk::<4>() else {
            self.rest = &[];
            return Some(Err("a field's length is cut short".into()));
        };
        let len = i32::from_be_bytes(*len);
        if len == -1 {
            self.rest = rest;
            return Some(Ok(None));
        }
        match usize::try_from(len).ok().filter(|&l| l <= rest.len()) {
            Some(len) => {
                let (value, rest) = rest.split_at(len);
                self.rest = rest;
                Some(Ok(Some(value)))
            }
            None => {
                self.rest = &[];
                Some(Err("a field's length runs past the payload".into()))
            }
        }
    }
}

/// The binary COPY stream of one table's rows in one batch.
#[derive(Debug)]
pub struct RowWriter {
    buf: Vec<u8>,
    rows: u64,
    /// Fields per row, the core's included.
    width: i16,
    /// The core's fields, appended to each row.
    suffix: Vec<u8>,
    /// Fields per row the core fills.
    core: usize,
    /// Rows of the current record, for `wb_row`.
    record_rows: i32,
    append: bool,
}

/// The binary COPY header: signature, flags, no extension.
const COPY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

impl RowWriter {
    /// An empty stream for `table`.
    pub fn new(table: &Table) -> RowWriter {
        let mut buf = Vec::with_capacity(64 * 1024);
        buf.extend_from_slice(COPY_HEADER);
        RowWriter {
            buf,
            rows: 0,
            width: (table.columns.len() + table.core_columns().len()) as i16,
            core: table.core_columns().len(),
            suffix: Vec::new(),
            record_rows: 0,
            append: matches!(table.merge, Merge::Append),
        }
    }

    /// The next rows belong to the queue entry `version` of `partition`:
    /// the core's columns for them.
    pub fn start_record(&mut self, table: &Table, partition: u16, version: (i64, i64)) {
        self.suffix.clear();
        self.record_rows = 0;
        match table.merge {
            Merge::LastWriterWins { .. } => {
                push_field(&mut self.suffix, Some(&version.0.to_be_bytes()));
                push_field(&mut self.suffix, Some(&version.1.to_be_bytes()));
            }
            Merge::Append => {
                push_field(&mut self.suffix, Some(&i32::from(partition).to_be_bytes()));
                push_field(&mut self.suffix, Some(&version.0.to_be_bytes()));
                push_field(&mut self.suffix, Some(&version.1.to_be_bytes()));
            }
            Merge::InsertOnce { .. } => {}
        }
    }

    /// A row whose `count` fields are already encoded in `fields`.
    pub fn row_fields(&mut self, count: usize, fields: &[u8]) {
        debug_assert_eq!(count + self.core, self.width as usize);
        self.buf.extend_from_slice(&self.width.to_be_bytes());
        self.buf.extend_from_slice(fields);
        self.finish_row();
    }

    /// A row of `fields`.
    pub fn row(&mut self, fields: &[Option<&[u8]>]) {
        debug_assert_eq!(fields.len() + self.core, self.width as usize);
        self.buf.extend_from_slice(&self.width.to_be_bytes());
        for field in fields {
            push_field(&mut self.buf, *field);
        }
        self.finish_row();
    }

    fn finish_row(&mut self) {
        self.buf.extend_from_slice(&self.suffix);
        if self.append {
            push_field(&mut self.buf, Some(&self.record_rows.to_be_bytes()));
        }
        self.record_rows += 1;
        self.rows += 1;
    }

    /// Rows written.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Bytes so far, for a caller that rolls back a record's rows.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Nothing but the header.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Forget what was written after `len` bytes and `rows` rows (a record
    /// that failed half-way).
    pub fn truncate(&mut self, len: usize, rows: u64) {
        self.buf.truncate(len);
        self.rows = rows;
    }

    /// The whole stream, trailer included.
    pub fn finish(mut self) -> Vec<u8> {
        self.buf.extend_from_slice(&(-1i16).to_be_bytes());
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn links() -> Table {
        Table::new(
            "links",
            &[("code", ColumnType::Text), ("url", ColumnType::Text)],
            Merge::LastWriterWins {
                key: "code".into(),
                touched: None,
            },
            "",
        )
        .unwrap()
    }

    #[test]
    fn rows_round_trip_through_fields() {
        let row = Row::new()
            .text("abc")
            .null()
            .int8(-5)
            .bool(true)
            .jsonb("{}")
            .into_bytes();
        let fields: Vec<_> = Fields::new(&row).map(Result::unwrap).collect();
        assert_eq!(
            fields,
            vec![
                Some(&b"abc"[..]),
                None,
                Some(&(-5i64).to_be_bytes()[..]),
                Some(&[1][..]),
                Some(&b"\x01{}"[..])
            ]
        );
        let mut f = Fields::new(&row);
        assert_eq!(f.text(), Some("abc"));
        assert_eq!(f.bytes(), None);
        assert_eq!(f.int8(), Some(-5));
        // Cut short anywhere: an error, never a panic.
        for cut in 1..row.len() {
            let _ = Fields::new(&row[..cut]).collect::<Vec<_>>();
        }
        assert!(Fields::new(&row[..row.len() - 1]).any(|f| f.is_err()));
    }

    #[test]
    fn payloads_are_checked_against_the_columns() {
        // A last-writer-wins table's payload holds every column but the key.
        let t = links();
        assert!(t.check_payload(&Row::new().text("b").into_bytes()).is_ok());
        assert!(t.check_payload(&Row::new().null().into_bytes()).is_ok());
        let short = t.check_payload(&[]).unwrap_err();
        assert!(short.contains("missing column url"), "{short}");
        let long = t
            .check_payload(&Row::new().text("b").text("c").into_bytes())
            .unwrap_err();
        assert!(long.contains("more fields"), "{long}");
        let bad = t
            .check_payload(&Row::new().bytes(b"\xff").into_bytes())
            .unwrap_err();
        assert!(bad.contains("not a valid text"), "{bad}");
        assert!(t.check_key(b"abc").is_ok());
        assert!(t.check_key(b"a\0c").unwrap_err().contains("valid text"));
        assert!(!ColumnType::Int4.accepts(b"abc"));
        assert!(!ColumnType::Bool.accepts(&[2]));
    }

    #[test]
    fn declarations_are_checked() {
        let cols = [("id", ColumnType::Bytea)];
        let error = Table::new("Links", &cols, Merge::Append, "").unwrap_err();
        assert!(error.contains("identifier"), "{error}");
        let lww = Merge::LastWriterWins {
            key: "key".into(),
            touched: None,
        };
        let error = Table::new("t", &cols, lww.clone(), "").unwrap_err();
        assert!(error.contains("key column"), "{error}");
        let error = Table::new(
            "t",
            &[("version_ms", ColumnType::Int8), ("key", ColumnType::Bytea)],
            lww,
            "",
        )
        .unwrap_err();
        assert!(error.contains("filled by the database core"), "{error}");
        let once = Table::new(
            "t",
            &cols,
            Merge::InsertOnce {
                id: "id".into(),
                deliveries: None,
            },
            "",
        )
        .unwrap();
        assert!(
            once.cached(None).is_err(),
            "only last-writer-wins tables are cached"
        );
        let error = Tables::new(vec![links(), links()]).unwrap_err();
        assert!(error.contains("two write-back tables"), "{error}");
    }

    #[test]
    fn the_merge_sql_follows_the_rule() {
        let t = links();
        assert_eq!(t.copy_columns(), "code, url, version_ms, version_seq");
        let merge = t.merge_sql();
        assert!(merge.contains("distinct on (code)"), "{merge}");
        assert!(merge.contains("url = excluded.url"), "{merge}");
        assert!(
            merge.contains("where (links.version_ms, links.version_seq) < (excluded.version_ms, excluded.version_seq)"),
            "{merge}"
        );
        assert_eq!(
            t.lookup_sql().unwrap(),
            "select code, url, version_ms, version_seq from links where code = any($1)"
        );
        let clicks =
            Table::new("clicks", &[("code", ColumnType::Text)], Merge::Append, "").unwrap();
        assert_eq!(
            clicks.copy_columns(),
            "code, wb_partition, wb_version_ms, wb_version_seq, wb_row"
        );
        assert!(clicks.merge_sql().ends_with("on conflict do nothing"));
        assert!(clicks.lookup_sql().is_none());
    }

    #[test]
    fn a_keyed_record_fills_the_key_column_and_a_delete_nulls_the_rest() {
        let t = links();
        let mut writer = RowWriter::new(&t);
        writer.start_record(&t, 0, (5, 1));
        let payload = Row::new().text("https://x").into_bytes();
        t.rows(
            RecordRef {
                key: b"ab",
                payload: Some(&payload),
            },
            &mut writer,
        )
        .unwrap();
        writer.start_record(&t, 0, (6, 0));
        t.rows(
            RecordRef {
                key: b"ab",
                payload: None,
            },
            &mut writer,
        )
        .unwrap();
        assert!(
            t.rows(
                RecordRef {
                    key: b"\xff",
                    payload: None
                },
                &mut writer
            )
            .is_err()
        );
        let bytes = writer.finish();
        let body = &bytes[COPY_HEADER.len()..];
        assert_eq!(i16::from_be_bytes([body[0], body[1]]), 4);
        let first: Vec<_> = Fields::new(&body[2..])
            .take(4)
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            first,
            vec![
                Some(&b"ab"[..]),
                Some(&b"https://x"[..]),
                Some(&5i64.to_be_bytes()[..]),
                Some(&1i64.to_be_bytes()[..])
            ]
        );
        let second_at = 2
            + first
                .iter()
                .map(|f| 4 + f.map_or(0, <[u8]>::len))
                .sum::<usize>()
            + 2;
        let second: Vec<_> = Fields::new(&body[second_at..])
            .take(4)
            .map(Result::unwrap)
            .collect();
        assert_eq!(second[1], None, "the delete's value is null");
    }

    #[test]
    fn copy_rows_carry_the_cores_columns() {
        let clicks =
            Table::new("clicks", &[("code", ColumnType::Text)], Merge::Append, "").unwrap();
        let mut writer = RowWriter::new(&clicks);
        writer.start_record(&clicks, 3, (10, 2));
        writer.row(&[Some(b"a")]);
        writer.row(&[Some(b"b")]);
        assert_eq!(writer.rows(), 2);
        let bytes = writer.finish();
        assert!(bytes.starts_with(COPY_HEADER));
        let body = &bytes[COPY_HEADER.len()..bytes.len() - 2];
        // Two rows of 5 fields: code, partition, ms, seq, row number.
        let first_width = i16::from_be_bytes([body[0], body[1]]);
        assert_eq!(first_width, 5);
        let fields: Vec<_> = Fields::new(&body[2..])
            .take(5)
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            fields,
            vec![
                Some(&b"a"[..]),
                Some(&3i32.to_be_bytes()[..]),
                Some(&10i64.to_be_bytes()[..]),
                Some(&2i64.to_be_bytes()[..]),
                Some(&0i32.to_be_bytes()[..]),
            ]
        );
        assert!(bytes.ends_with(&(-1i16).to_be_bytes()));
    }
}
