//! Invalidation by the application's own rows: triggers on an application table that delete the cache
//! entries tagged after the rows a statement changed ([`PostgresCache::invalidate_on`]).
//!
//! The SQL is in `sql/row_invalidation.sql` (one shared function per prefix, four statement-level
//! triggers per table and template) and `sql/row_invalidation_drop.sql`. Every identifier is validated
//! (lowercase letters, digits, `_`) and quoted; the template's literal text reaches SQL only as string
//! literals with their quotes doubled, and the function quotes it again (`quote_literal`) before use.
//!
//! [`PostgresCache::invalidate_on`]: crate::PostgresCache::invalidate_on

use crate::conn::{bounded, open_one_shot, statement_bound};
use crate::error::{Error, Result};
use crate::lock_key::lock_key;
use crate::settings::{validate_identifier, CacheSettings};

const INSTALL_SQL: &str = include_str!("../sql/row_invalidation.sql");
const DROP_SQL: &str = include_str!("../sql/row_invalidation_drop.sql");

/// The setting name errors report.
const WHAT: &str = "invalidate_on";

/// A validated application table: `schema.table` or `table`.
#[derive(Debug, PartialEq, Eq)]
struct Table {
    schema: Option<String>,
    name: String,
}

impl Table {
    fn parse(text: &str) -> Result<Self> {
        let mut parts = text.split('.');
        let (first, second) = (parts.next().unwrap_or(""), parts.next());
        if parts.next().is_some() {
            return Err(invalid(format!("table {text:?} must be `table` or `schema.table`")));
        }
        for part in [Some(first), second].into_iter().flatten() {
            validate_identifier(WHAT, part, 1, 63)?;
        }
        Ok(match second {
            Some(name) => Self { schema: Some(first.to_owned()), name: name.to_owned() },
            None => Self { schema: None, name: first.to_owned() },
        })
    }

    /// The quoted name, for SQL.
    fn quoted(&self) -> String {
        match &self.schema {
            Some(schema) => format!("\"{schema}\".\"{}\"", self.name),
            None => format!("\"{}\"", self.name),
        }
    }
}

/// A tag template such as `order:{id}` or `line:{order_id}:{line_no}`: literal text and `{column}`
/// placeholders, alternating (the first and last parts are literals, possibly empty).
#[derive(Debug, PartialEq, Eq)]
struct Template {
    /// literal, column, literal, ..., literal.
    parts: Vec<String>,
}

impl Template {
    fn parse(text: &str) -> Result<Self> {
        if text.is_empty() || text.len() > 256 {
            return Err(invalid(format!("tag template {text:?} must be 1 to 256 bytes long")));
        }
        if let Some(c) = text.chars().find(|c| c.is_control() || *c == '\\') {
            return Err(invalid(format!("tag template {text:?} contains {c:?}")));
        }
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            let literal = rest.get(..open).unwrap_or("");
            let after = rest.get(open + 1..).unwrap_or("");
            let close = after.find('}').ok_or_else(|| invalid(format!("tag template {text:?}: `{{` without `}}`")))?;
            let column = after.get(..close).unwrap_or("");
            validate_identifier(WHAT, column, 1, 63)?;
            if literal.contains('}') {
                return Err(invalid(format!("tag template {text:?}: `}}` without `{{`")));
            }
            parts.push(literal.to_owned());
            parts.push(column.to_owned());
            rest = after.get(close + 1..).unwrap_or("");
        }
        if rest.contains('}') {
            return Err(invalid(format!("tag template {text:?}: `}}` without `{{`")));
        }
        parts.push(rest.to_owned());
        if parts.len() < 3 {
            return Err(invalid(format!("tag template {text:?} names no column: write e.g. \"order:{{id}}\"")));
        }
        Ok(Self { parts })
    }

    fn columns(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().skip(1).step_by(2).map(String::as_str)
    }

    /// The trigger arguments: every part as a string literal.
    fn arguments(&self) -> String {
        self.parts.iter().map(|p| format!("'{}'", p.replace('\'', "''"))).collect::<Vec<_>>().join(", ")
    }
}

fn invalid(reason: String) -> Error {
    Error::InvalidSetting { name: WHAT, reason }
}

/// The triggers' base name: the prefix and a hash of the template, so one table can carry several.
fn trigger_name(settings: &CacheSettings, template: &Template) -> String {
    let hash = xxhash_rust::xxh3::xxh3_64(template.parts.join("\u{0}").as_bytes());
    format!("{}inv_{hash:016x}", settings.schema_prefix)
}

/// `cache_schema` is the cache table's schema, already quoted by the server (`quote_ident`).
fn render(sql: &str, settings: &CacheSettings, table: &Table, template: &Template, cache_schema: &str) -> String {
    sql.replace("__TRIGGER__", &trigger_name(settings, template))
        .replace("__PREFIX__", &settings.schema_prefix)
        .replace("__CACHE_SCHEMA__", cache_schema)
        .replace("__TABLE__", &table.quoted())
        // Last: the literals are the only user text.
        .replace("__ARGS__", &template.arguments())
}

/// Installs (or re-installs: idempotent) the triggers that delete the entries tagged by `template` when
/// rows of `table` change.
pub(crate) async fn install(settings: &CacheSettings, table: &str, template: &str) -> Result<()> {
    let (table, template) = (Table::parse(table)?, Template::parse(template)?);
    run(settings, &table, &template, true).await.map(drop)
}

/// Removes them; true when they were installed.
pub(crate) async fn remove(settings: &CacheSettings, table: &str, template: &str) -> Result<bool> {
    let (table, template) = (Table::parse(table)?, Template::parse(template)?);
    run(settings, &table, &template, false).await
}

/// Checks the table and its columns, then applies `install` (or the drop file) in one transaction under
/// the prefix's migration lock. Returns whether the triggers existed before.
async fn run(settings: &CacheSettings, table: &Table, template: &Template, install: bool) -> Result<bool> {
    settings.validate()?;
    let mut client = open_one_shot(settings).await?;
    let bound = statement_bound(settings);
    let work = async {
        let tx = client.transaction().await.map_err(Error::from_pg)?;
        tx.batch_execute("SET LOCAL client_min_messages = warning").await.map_err(Error::from_pg)?;
        let lock = lock_key(&settings.schema_prefix, "\u{0}pgcache:migrate");
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&lock]).await.map_err(Error::from_pg)?;
        let quoted = table.quoted();
        let columns: Vec<String> = tx
            .query(
                "SELECT attname::text FROM pg_attribute WHERE attrelid = to_regclass($1) AND attnum > 0 \
                 AND NOT attisdropped",
                &[&quoted],
            )
            .await
            .map_err(Error::from_pg)?
            .iter()
            .map(|row| row.try_get(0))
            .collect::<std::result::Result<_, _>>()
            .map_err(Error::from_pg)?;
        if columns.is_empty() {
            return Err(invalid(format!("table {quoted} does not exist (or has no columns)")));
        }
        if let Some(missing) = template.columns().find(|c| !columns.iter().any(|have| have == c)) {
            return Err(invalid(format!("table {quoted} has no column \"{missing}\"")));
        }
        let name = trigger_name(settings, template);
        let existed: bool = tx
            .query_one(
                "SELECT count(*) > 0 FROM pg_trigger WHERE tgrelid = to_regclass($1) \
                 AND tgname::text IN ($2 || '_ins', $2 || '_upd', $2 || '_del', $2 || '_trn')",
                &[&quoted, &name],
            )
            .await
            .and_then(|row| row.try_get(0))
            .map_err(Error::from_pg)?;
        // The SECURITY DEFINER function's search_path names the cache table's own schema and puts
        // pg_temp last, so no temporary or user-created object can stand in for the cache table.
        let cache_schema: Option<String> = tx
            .query_opt(
                "SELECT quote_ident(n.nspname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.oid = to_regclass($1)",
                &[&format!("\"{}cache_entries\"", settings.schema_prefix)],
            )
            .await
            .map_err(Error::from_pg)?
            .map(|row| row.try_get(0))
            .transpose()
            .map_err(Error::from_pg)?;
        let sql = match (install, cache_schema) {
            (true, Some(schema)) => render(INSTALL_SQL, settings, table, template, &schema),
            (true, None) => return Err(invalid("the cache table does not exist: run init_db first".into())),
            (false, _) => render(DROP_SQL, settings, table, template, ""),
        };
        tx.batch_execute(&sql).await.map_err(Error::from_pg)?;
        tx.commit().await.map_err(Error::from_pg)?;
        Ok(existed)
    };
    bounded(bound, "invalidate_on", work).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_validated() {
        assert_eq!(Table::parse("orders").map(|t| t.quoted()).ok().as_deref(), Some("\"orders\""));
        assert_eq!(Table::parse("app.orders").map(|t| t.quoted()).ok().as_deref(), Some("\"app\".\"orders\""));
        for bad in ["", "a.b.c", "orders; drop table x", "Orders", "\"x\"", "a.", ".a"] {
            assert!(Table::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn templates_are_parsed_and_validated() {
        let t = Template::parse("order:{id}").unwrap();
        assert_eq!(t.parts, ["order:", "id", ""]);
        let t = Template::parse("{a}-{b}!").unwrap();
        assert_eq!(t.parts, ["", "a", "-", "b", "!"]);
        assert_eq!(t.columns().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(Template::parse("it's:{id}").unwrap().arguments(), "'it''s:', 'id', ''");
        for bad in ["", "order", "order:{id", "order:id}", "{}", "{Id}", "{id; drop}", "a\\{id}", "a\n{id}"] {
            assert!(Template::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn render_leaves_no_placeholder() {
        let s = CacheSettings::new("postgresql://x@y/z").schema_prefix("mk_");
        let (table, template) = (Table::parse("app.orders").unwrap(), Template::parse("o:{id}").unwrap());
        for file in [INSTALL_SQL, DROP_SQL] {
            let sql = render(file, &s, &table, &template, "public");
            assert!(!sql.contains("__TRIGGER__") && !sql.contains("__TABLE__") && !sql.contains("__PREFIX__"));
            assert!(!sql.contains("__CACHE_SCHEMA__"));
            assert!(sql.contains("ON \"app\".\"orders\""));
        }
        assert!(render(INSTALL_SQL, &s, &table, &template, "public")
            .contains("\"mk_cache_invalidate_rows\"('o:', 'id', '')"));
    }
}
