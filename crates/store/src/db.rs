//! Small helpers over sqlx's `Any` driver: typed bind values, placeholder lists and
//! chunked multi-row inserts (both backends limit the number of bind parameters).

use sqlx::any::{AnyArguments, AnyRow};
use sqlx::query::Query;
use sqlx::{Any, AnyConnection, Row};

use crate::error::Result;
use crate::Backend;

/// A bind value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Arg {
    I64(i64),
    F64(f64),
    Text(String),
    NullI64,
    NullF64,
    NullText,
}

impl From<i64> for Arg {
    fn from(v: i64) -> Arg {
        Arg::I64(v)
    }
}
impl From<f64> for Arg {
    fn from(v: f64) -> Arg {
        Arg::F64(v)
    }
}
impl From<&str> for Arg {
    fn from(v: &str) -> Arg {
        Arg::Text(v.to_string())
    }
}
impl From<String> for Arg {
    fn from(v: String) -> Arg {
        Arg::Text(v)
    }
}
impl From<Option<String>> for Arg {
    fn from(v: Option<String>) -> Arg {
        v.map(Arg::Text).unwrap_or(Arg::NullText)
    }
}
impl From<Option<&str>> for Arg {
    fn from(v: Option<&str>) -> Arg {
        v.map(|s| Arg::Text(s.to_string())).unwrap_or(Arg::NullText)
    }
}
impl From<Option<i64>> for Arg {
    fn from(v: Option<i64>) -> Arg {
        v.map(Arg::I64).unwrap_or(Arg::NullI64)
    }
}
impl From<Option<f64>> for Arg {
    fn from(v: Option<f64>) -> Arg {
        v.map(Arg::F64).unwrap_or(Arg::NullF64)
    }
}
impl From<bool> for Arg {
    fn from(v: bool) -> Arg {
        Arg::I64(v as i64)
    }
}

pub(crate) fn bind<'q>(mut q: Query<'q, Any, AnyArguments<'q>>, args: &'q [Arg]) -> Query<'q, Any, AnyArguments<'q>> {
    for a in args {
        q = match a {
            Arg::I64(v) => q.bind(*v),
            Arg::F64(v) => q.bind(*v),
            Arg::Text(v) => q.bind(v.as_str()),
            Arg::NullI64 => q.bind(None::<i64>),
            Arg::NullF64 => q.bind(None::<f64>),
            Arg::NullText => q.bind(None::<String>),
        };
    }
    q
}

/// Bind a ScopedKey's four columns (gufe key, org, campaign, project) as the next four
/// parameters.
pub(crate) fn bind_sk<'q>(q: Query<'q, Any, AnyArguments<'q>>, sk: &'q alchemiscale_model::ScopedKey) -> Query<'q, Any, AnyArguments<'q>> {
    q.bind(sk.gufe_key().as_str()).bind(sk.org()).bind(sk.campaign()).bind(sk.project())
}

/// Adapt the `$N` placeholders of a generated statement to the backend.
///
/// On SQLite every numbered or named parameter makes `sqlite3_bind_parameter_name`
/// (which sqlx calls once per parameter) walk a list of all parameters: binding a
/// statement with thousands of them is quadratic. Anonymous `?` parameters keep that list
/// empty, and bind in order — so when the placeholders are exactly `$1, $2, …` in text
/// order (as generated statements are), they become `?`. SQL text here never holds a `$`
/// outside placeholders.
pub(crate) fn dialect(backend: Backend, sql: &str) -> String {
    if backend == Backend::Postgres {
        return sql.to_string();
    }
    let mut out = String::with_capacity(sql.len());
    let mut expected = 1usize;
    let mut rest = sql;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let digits = rest[i + 1..].bytes().take_while(u8::is_ascii_digit).count();
        let n: usize = rest[i + 1..i + 1 + digits].parse().unwrap_or(0);
        if n != expected {
            // not in order: keep numbered placeholders (correct, just slower to bind)
            return sql.replace('$', "?");
        }
        out.push('?');
        expected += 1;
        rest = &rest[i + 1 + digits..];
    }
    out.push_str(rest);
    out
}

/// A subquery yielding the strings of a JSON array bound as the single parameter `$n`:
/// `x IN (<this>)` matches any of them. One parameter instead of thousands keeps binding
/// cheap and lifts the per-statement parameter limit.
pub(crate) fn json_text_list(backend: Backend, n: usize) -> String {
    match backend {
        Backend::Sqlite => format!("SELECT value FROM json_each(${n})"),
        Backend::Postgres => format!("SELECT jsonb_array_elements_text(CAST(${n} AS jsonb))"),
    }
}

/// A subquery yielding the integers of a JSON array bound as the single parameter `$n`
/// (the integer counterpart of [`json_text_list`]).
pub(crate) fn json_id_list(backend: Backend, n: usize) -> String {
    match backend {
        Backend::Sqlite => format!("SELECT value FROM json_each(${n})"),
        Backend::Postgres => format!("SELECT CAST(jsonb_array_elements_text(CAST(${n} AS jsonb)) AS BIGINT)"),
    }
}

/// `{col}` is one of the ids bound as parameter `$n` (see [`ids_param`]): on PostgreSQL
/// an array, whose length the planner sees, so it probes the index for each id instead of
/// guessing and scanning the table; on SQLite a JSON array.
pub(crate) fn in_ids(backend: Backend, col: &str, n: usize) -> String {
    match backend {
        Backend::Sqlite => format!("{col} IN (SELECT value FROM json_each(${n}))"),
        Backend::Postgres => format!("{col} = ANY(CAST(${n} AS BIGINT[]))"),
    }
}

/// The parameter for [`in_ids`].
pub(crate) fn ids_param(backend: Backend, ids: &[i64]) -> Arg {
    match backend {
        Backend::Sqlite => Arg::Text(json_ids(ids)),
        Backend::Postgres => {
            let list: Vec<String> = ids.iter().map(i64::to_string).collect();
            Arg::Text(format!("{{{}}}", list.join(",")))
        }
    }
}

/// `SELECT <one JSON text: an array of [cols…] rows> FROM …`: bulk reads aggregate their
/// rows into a single JSON value in the database, which is much cheaper to move through
/// the driver than thousands of rows (sqlx's SQLite driver hands rows over one by one).
/// `cols` is a comma-separated list of column expressions.
pub(crate) fn json_rows_select(backend: Backend, cols: &str) -> String {
    match backend {
        Backend::Sqlite => format!("SELECT json_group_array(json_array({cols}))"),
        Backend::Postgres => format!("SELECT CAST(COALESCE(json_agg(json_build_array({cols})), '[]') AS TEXT)"),
    }
}

/// Decode the single JSON value of a [`json_rows_select`] query into typed rows.
pub(crate) async fn fetch_json_rows<T: serde::de::DeserializeOwned>(conn: &mut AnyConnection, sql: &str, args: &[Arg]) -> Result<Vec<T>> {
    let row = bind(sqlx::query(sql), args).fetch_one(&mut *conn).await?;
    let text: Option<String> = row.try_get(0)?;
    serde_json::from_str(text.as_deref().unwrap_or("[]"))
        .map_err(|e| crate::error::StoreError::Invalid(format!("cannot decode stored rows: {e}")))
}

/// A column's SQL type in [`json_insert`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Col {
    Int,
    Real,
    Text,
}

/// `INSERT INTO {head} SELECT … FROM <the rows of a JSON array bound as $1> {tail}`: a
/// bulk insert with one parameter (each row a JSON array, one element per column of
/// `cols`; JSON null is SQL NULL). Far cheaper than binding every value, and not bounded
/// by the parameter limit. `head` is `table (col, …)`; `tail` may hold `ON CONFLICT …`
/// and `RETURNING …`.
pub(crate) fn json_insert(backend: Backend, head: &str, cols: &[Col], tail: &str) -> String {
    let exprs: Vec<String> = cols.iter().enumerate().map(|(i, &c)| json_element(backend, i, c)).collect();
    // (`WHERE true`: SQLite would read an `ON CONFLICT` right after the FROM as a join constraint)
    format!("INSERT INTO {head} SELECT {} FROM {} WHERE true {tail}", exprs.join(", "), json_rows(backend))
}

/// `UPDATE {table} SET … FROM <the rows of a JSON array bound as $1> WHERE …`: a bulk
/// update with one parameter, each row a JSON array. `set` and `key` name a column of
/// `table` with the index and type of the row element it is set to or matched with;
/// `extra` continues the WHERE. Take every key column from the rows (not from another
/// parameter): then the backends look each row up by its key, where SQLite, given a key
/// column as a parameter, reads every row matching that one column once per JSON row.
pub(crate) fn json_update(backend: Backend, table: &str, set: &[(&str, usize, Col)], key: &[(&str, usize, Col)], extra: &str) -> String {
    let set: Vec<String> = set.iter().map(|&(c, i, t)| format!("{c} = {}", json_element(backend, i, t))).collect();
    let key: Vec<String> = key.iter().map(|&(c, i, t)| format!("{table}.{c} = {}", json_element(backend, i, t))).collect();
    format!("UPDATE {table} SET {} FROM {} WHERE {}{extra}", set.join(", "), json_rows(backend), key.join(" AND "))
}

/// The rows of the JSON array bound as `$1`, as a FROM item (see [`json_element`]).
fn json_rows(backend: Backend) -> &'static str {
    match backend {
        Backend::Sqlite => "json_each($1)",
        Backend::Postgres => "jsonb_array_elements(CAST($1 AS jsonb)) AS e",
    }
}

/// Element `i` of a row of [`json_rows`] as an SQL value of type `col` (JSON null is NULL).
fn json_element(backend: Backend, i: usize, col: Col) -> String {
    match (backend, col) {
        (Backend::Sqlite, Col::Int) => format!("CAST(value ->> {i} AS INTEGER)"),
        (Backend::Sqlite, Col::Real) => format!("CAST(value ->> {i} AS REAL)"),
        (Backend::Sqlite, Col::Text) => format!("value ->> {i}"),
        (Backend::Postgres, Col::Int) => format!("CAST(e ->> {i} AS BIGINT)"),
        (Backend::Postgres, Col::Real) => format!("CAST(e ->> {i} AS DOUBLE PRECISION)"),
        (Backend::Postgres, Col::Text) => format!("e ->> {i}"),
    }
}

/// The JSON array text for [`json_text_list`].
pub(crate) fn json_array<'a>(items: impl IntoIterator<Item = &'a str>) -> String {
    serde_json::to_string(&items.into_iter().collect::<Vec<_>>()).expect("strings serialise")
}

/// The JSON array text for [`json_id_list`].
pub(crate) fn json_ids(ids: &[i64]) -> String {
    serde_json::to_string(ids).expect("integers serialise")
}

/// `$start, $start+1, …` (n placeholders).
pub(crate) fn placeholders(start: usize, n: usize) -> String {
    let mut s = String::with_capacity(n * 5);
    for i in 0..n {
        if i > 0 {
            s.push_str(", ");
        }
        s.push('$');
        s.push_str(&(start + i).to_string());
    }
    s
}

/// `($1, $2), ($3, $4), …` for `rows` rows of `cols` columns.
pub(crate) fn values_rows(rows: usize, cols: usize) -> String {
    let mut s = String::with_capacity(rows * cols * 5);
    for r in 0..rows {
        if r > 0 {
            s.push_str(", ");
        }
        s.push('(');
        s.push_str(&placeholders(r * cols + 1, cols));
        s.push(')');
    }
    s
}

/// Bind parameters per statement, safely under SQLite's 32766 and PostgreSQL's 65535.
pub(crate) const MAX_PARAMS: usize = 30_000;

/// `INSERT INTO … (cols) VALUES (…), (…) <suffix>` in chunks. Returns rows affected.
pub(crate) async fn insert_rows(
    conn: &mut AnyConnection,
    backend: Backend,
    head: &str,
    suffix: &str,
    cols: usize,
    rows: &[Vec<Arg>],
) -> Result<u64> {
    let mut affected = 0;
    let per_chunk = (MAX_PARAMS / cols).max(1);
    for chunk in rows.chunks(per_chunk) {
        let sql = dialect(backend, &format!("{head} VALUES {} {suffix}", values_rows(chunk.len(), cols)));
        let args: Vec<Arg> = chunk.iter().flat_map(|r| r.iter().cloned()).collect();
        affected += bind(sqlx::query(&sql), &args).persistent(false).execute(&mut *conn).await?.rows_affected();
    }
    Ok(affected)
}

/// Run `sql` (which must contain `{}` where an `IN` list of `n` placeholders goes,
/// starting at `$(fixed.len()+1)`) for chunks of `items`, with `fixed` args first.
pub(crate) async fn fetch_in_chunks(
    conn: &mut AnyConnection,
    backend: Backend,
    sql: &str,
    fixed: &[Arg],
    items: &[Arg],
) -> Result<Vec<AnyRow>> {
    let mut out = Vec::new();
    let per_chunk = MAX_PARAMS - fixed.len();
    for chunk in items.chunks(per_chunk) {
        let q = dialect(backend, &sql.replace("{}", &placeholders(fixed.len() + 1, chunk.len())));
        let args: Vec<Arg> = fixed.iter().cloned().chain(chunk.iter().cloned()).collect();
        out.extend(bind(sqlx::query(&q), &args).persistent(false).fetch_all(&mut *conn).await?);
    }
    Ok(out)
}

/// Like [`fetch_in_chunks`] for statements that change rows; returns rows affected.
pub(crate) async fn execute_in_chunks(conn: &mut AnyConnection, backend: Backend, sql: &str, fixed: &[Arg], items: &[Arg]) -> Result<u64> {
    let mut n = 0;
    let per_chunk = MAX_PARAMS - fixed.len();
    for chunk in items.chunks(per_chunk) {
        let q = dialect(backend, &sql.replace("{}", &placeholders(fixed.len() + 1, chunk.len())));
        let args: Vec<Arg> = fixed.iter().cloned().chain(chunk.iter().cloned()).collect();
        n += bind(sqlx::query(&q), &args).persistent(false).execute(&mut *conn).await?.rows_affected();
    }
    Ok(n)
}

pub(crate) fn get_i64(row: &AnyRow, i: usize) -> Result<i64> {
    Ok(row.try_get::<i64, _>(i)?)
}
pub(crate) fn get_str(row: &AnyRow, i: usize) -> Result<String> {
    Ok(row.try_get::<String, _>(i)?)
}
pub(crate) fn get_opt_str(row: &AnyRow, i: usize) -> Result<Option<String>> {
    Ok(row.try_get::<Option<String>, _>(i)?)
}
pub(crate) fn get_opt_i64(row: &AnyRow, i: usize) -> Result<Option<i64>> {
    Ok(row.try_get::<Option<i64>, _>(i)?)
}
pub(crate) fn get_f64(row: &AnyRow, i: usize) -> Result<f64> {
    Ok(row.try_get::<f64, _>(i)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dialects() {
        assert_eq!(dialect(Backend::Sqlite, "a = $1 AND b IN ($2, $3)"), "a = ? AND b IN (?, ?)");
        assert_eq!(dialect(Backend::Sqlite, "a = $2 AND b = $1"), "a = ?2 AND b = ?1");
        assert_eq!(dialect(Backend::Sqlite, "a = $1 OR c = $1"), "a = ?1 OR c = ?1");
        assert_eq!(dialect(Backend::Postgres, "a = $1"), "a = $1");
    }

    #[test]
    fn placeholder_lists() {
        assert_eq!(placeholders(3, 2), "$3, $4");
        assert_eq!(values_rows(2, 2), "($1, $2), ($3, $4)");
    }
}
