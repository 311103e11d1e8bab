//! Read-only SQL: which statements may run at all.
//!
//! A query reads; it never writes or touches files. Only `SELECT` (with `WITH`, set operations
//! and `VALUES`), `EXPLAIN` of one, and `SHOW TABLES`/`SHOW COLUMNS` pass. Everything else
//! (DDL, DML, `COPY … TO`, `CREATE EXTERNAL TABLE`, `SET`, transactions) is refused with
//! PermissionDenied, as is any relation named like a path or URL and any function that reads
//! one. The plan is checked again after planning (DataFusion's `SQLOptions`), and the session
//! has no file-reading functions or URL tables to begin with: three fences, not one.

use std::ops::ControlFlow;

use datafusion::sql::parser::{DFParser, Statement};
use datafusion::sql::sqlparser::ast::{
    Expr as SqlExpr, ObjectName, ObjectNamePart, Statement as SqlStatement, visit_expressions,
    visit_relations,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;

use crate::error::{Error, Result};

/// Functions that read a path or URL in DataFusion's and other engines' SQL.
const FILE_FUNCTIONS: &[&str] = &[
    "read_parquet",
    "read_csv",
    "read_csv_auto",
    "read_json",
    "read_json_auto",
    "read_ndjson",
    "read_avro",
    "read_arrow",
    "read_text",
    "read_blob",
    "parquet_scan",
    "parquet_metadata",
    "parquet_schema",
    "csv_scan",
    "glob",
    "read_file",
    "pg_read_file",
    "pg_read_binary_file",
    "lo_import",
    "load_file",
    "url",
    "http_get",
];

/// Parses `sql` and returns its one statement if it only reads.
pub fn read_only(sql: &str) -> Result<Statement> {
    if sql.trim().is_empty() {
        return Err(Error::invalid("query", "the SQL text is empty"));
    }
    let mut statements = DFParser::parse_sql_with_dialect(sql, &GenericDialect {})?;
    if statements.len() != 1 {
        return Err(Error::invalid(
            "query",
            format!("expected one statement, found {}", statements.len()),
        ));
    }
    let Some(statement) = statements.pop_front() else {
        return Err(Error::invalid("query", "expected one statement"));
    };
    check(&statement)?;
    Ok(statement)
}

fn denied(what: &str) -> Error {
    Error::PermissionDenied(format!(
        "{what} is not allowed: queries are read-only (SELECT, EXPLAIN, SHOW TABLES)"
    ))
}

fn check(statement: &Statement) -> Result<()> {
    match statement {
        Statement::Statement(s) => check_sql(s),
        Statement::Explain(e) => check(&e.statement),
        Statement::CreateExternalTable(_) => Err(denied("CREATE EXTERNAL TABLE")),
        Statement::CopyTo(_) => Err(denied("COPY … TO")),
        Statement::Reset(_) => Err(denied("RESET")),
    }
}

fn check_sql(s: &SqlStatement) -> Result<()> {
    match s {
        SqlStatement::Query(_)
        | SqlStatement::ShowTables { .. }
        | SqlStatement::ShowColumns { .. } => {}
        SqlStatement::Explain { statement, .. } => return check_sql(statement),
        other => {
            let keyword = other
                .to_string()
                .split_whitespace()
                .take(2)
                .collect::<Vec<_>>()
                .join(" ")
                .to_uppercase();
            return Err(denied(&keyword));
        }
    }
    let relations = visit_relations(s, |name| match check_relation(name) {
        Ok(()) => ControlFlow::Continue(()),
        Err(e) => ControlFlow::Break(e),
    });
    if let ControlFlow::Break(e) = relations {
        return Err(e);
    }
    let functions = visit_expressions(s, |e| match e {
        SqlExpr::Function(f) => match check_function(&f.name) {
            Ok(()) => ControlFlow::Continue(()),
            Err(e) => ControlFlow::Break(e),
        },
        _ => ControlFlow::Continue(()),
    });
    if let ControlFlow::Break(e) = functions {
        return Err(e);
    }
    Ok(())
}

fn last_part(name: &ObjectName) -> Option<String> {
    name.0.last().map(|p| match p {
        ObjectNamePart::Identifier(i) => i.value.clone(),
        ObjectNamePart::Function(f) => f.name.value.clone(),
    })
}

/// Relations and table functions: no paths, no URLs, no file readers.
fn check_relation(name: &ObjectName) -> Result<()> {
    for part in &name.0 {
        let text = match part {
            ObjectNamePart::Identifier(i) => &i.value,
            ObjectNamePart::Function(f) => &f.name.value,
        };
        if looks_like_path(text) {
            return Err(Error::PermissionDenied(format!(
                "relation {text:?} looks like a path or URL: queries read only the catalog's tables"
            )));
        }
    }
    check_function(name)
}

fn check_function(name: &ObjectName) -> Result<()> {
    let Some(last) = last_part(name) else {
        return Ok(());
    };
    let lower = last.to_ascii_lowercase();
    if FILE_FUNCTIONS.contains(&lower.as_str()) {
        return Err(Error::PermissionDenied(format!(
            "function {last} reads a path or URL: queries read only the catalog's tables"
        )));
    }
    Ok(())
}

fn looks_like_path(s: &str) -> bool {
    s.contains('/')
        || s.contains('\\')
        || s.contains("://")
        || s.starts_with('~')
        || [
            ".parquet", ".csv", ".json", ".arrow", ".avro", ".edf", ".bdf", ".gz",
        ]
        .iter()
        .any(|ext| s.to_ascii_lowercase().ends_with(ext))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(sql: &str) -> Option<tonic::Code> {
        read_only(sql).err().map(|e| tonic::Status::from(e).code())
    }

    #[test]
    fn lets_reads_through() {
        for sql in [
            "SELECT 1",
            "select * from samples where channel = 'C3' limit 5",
            "WITH x AS (SELECT * FROM events) SELECT count(*) FROM x",
            "SELECT * FROM epochs('left', -0.2, 0.8)",
            "EXPLAIN SELECT * FROM recordings",
            "EXPLAIN ANALYZE SELECT * FROM recordings",
            "SHOW TABLES",
            "SELECT * FROM snapshot_v1.recordings",
        ] {
            assert_eq!(code(sql), None, "{sql}");
        }
    }

    #[test]
    fn refuses_writes_and_files() {
        for sql in [
            "CREATE TABLE t (a INT)",
            "CREATE TABLE t AS SELECT 1",
            "CREATE VIEW v AS SELECT 1",
            "DROP TABLE samples",
            "INSERT INTO recordings VALUES (1)",
            "DELETE FROM events",
            "UPDATE events SET type = 'x'",
            "COPY (SELECT 1) TO '/tmp/x.parquet'",
            "COPY samples TO 'out.csv'",
            "CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION '/etc/'",
            "EXPLAIN COPY (SELECT 1) TO '/tmp/x'",
            "SET datafusion.execution.target_partitions = 1",
            "SELECT * FROM '/etc/passwd'",
            "SELECT * FROM 's3://bucket/data.parquet'",
            "SELECT * FROM \"data.parquet\"",
            "SELECT * FROM read_parquet('/etc/passwd')",
            "SELECT * FROM recordings WHERE recording_id IN (SELECT * FROM read_csv('x'))",
            "SELECT read_text('/etc/passwd')",
            "SELECT * FROM parquet_metadata('/tmp/x.parquet')",
        ] {
            assert_eq!(code(sql), Some(tonic::Code::PermissionDenied), "{sql}");
        }
    }

    #[test]
    fn reports_bad_sql_as_invalid() {
        assert_eq!(code("SELEC 1"), Some(tonic::Code::InvalidArgument));
        assert_eq!(code(""), Some(tonic::Code::InvalidArgument));
        assert_eq!(
            code("SELECT 1; SELECT 2"),
            Some(tonic::Code::InvalidArgument)
        );
    }
}
