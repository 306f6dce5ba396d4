//! The schema: installing and repairing it (`init_db`), and checking what `connect` relies on.
//!
//! The SQL is in `sql/` (shipped inside this crate): `001_init.sql` creates the table, the version
//! sequence and the version trigger; `002_incarnation.sql` the row naming the table's current life
//! (a new one whenever the table is created); `003_refresh_at.sql` the `refresh_at` column of early
//! refresh; `004_invalidation_log.sql` the invalidation log; `005_capabilities.sql` what the polling
//! mode needs (the writer's transaction id, the change history, the pollers, the leases);
//! `006_flusher_wake.sql` the log's trigger that wakes a sleeping flusher; `notify_function.sql` the trigger function that appends other writers' changes to the log (it names
//! the channel) and its triggers (`notify_triggers_rows.sql`: row-level ones, for engines without
//! transition tables).
//! All are idempotent. `init_db` does not trust the version row alone: it
//! inspects the objects and re-applies the files when anything is missing or differs (a table or trigger
//! dropped by hand, a function changed, another channel), so running it again repairs the schema.
//! Identifiers are validated by [`CacheSettings::validate`] before they are formatted into SQL.

use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{GenericClient, Row};

use crate::conn::{bounded, open_one_shot, statement_bound};
use crate::error::{Error, Result};
use crate::lock_key::lock_key;
use crate::settings::CacheSettings;

/// The schema version this library writes and expects.
pub(crate) const SCHEMA_VERSION: i32 = 6;

/// The table, its version sequence and the version trigger.
const ENTRIES_SQL: &str = include_str!("../sql/001_init.sql");
/// The incarnation of the entries table (a new one whenever the table is created).
const INCARNATION_SQL: &str = include_str!("../sql/002_incarnation.sql");
/// Migration 3: the `refresh_at` column (early refresh).
const REFRESH_AT_SQL: &str = include_str!("../sql/003_refresh_at.sql");
/// Migration 4: the invalidation log (issue 9).
const INVALIDATION_LOG_SQL: &str = include_str!("../sql/004_invalidation_log.sql");
/// Migration 5: the writer's transaction id on log rows, the change history and the pollers (issue 14).
const CAPABILITIES_SQL: &str = include_str!("../sql/005_capabilities.sql");
/// Migration 6: the trigger that wakes a sleeping invalidation flusher.
const FLUSHER_WAKE_SQL: &str = include_str!("../sql/006_flusher_wake.sql");
/// Columns added after migration 1, each checked by `inspect`.
const ADDED_COLUMNS: [&str; 1] = ["refresh_at"];
/// The notification function and its triggers.
const NOTIFY_SQL: &str = include_str!("../sql/notify_function.sql");
/// Row-level replacements of the notify triggers, for engines without transition tables.
const ROW_TRIGGERS_SQL: &str = include_str!("../sql/notify_triggers_rows.sql");
/// The operator views (read-only, no cost to writes).
const VIEWS_SQL: &str = include_str!("../sql/views.sql");
/// The views `VIEWS_SQL` creates, by name suffix after the prefix.
const VIEWS: [&str; 5] = ["cache_stats", "cache_ages", "cache_largest", "cache_tags", "cache_http"];

/// Triggers every installed schema has, by name suffix after the prefix.
const TRIGGERS: [&str; 5] = [
    "cache_bump_version",
    "cache_notify_insert",
    "cache_notify_update",
    "cache_notify_delete",
    "cache_notify_truncate",
];
/// Functions every installed schema has, with the file that defines each.
const FUNCTIONS: [(&str, &str); 2] = [("cache_bump_version", ENTRIES_SQL), ("cache_notify", NOTIFY_SQL)];

/// Replaces the placeholders of a SQL file with validated identifiers.
fn render(sql: &str, settings: &CacheSettings) -> String {
    // Without UNLOGGED (an engine that lacks it, or told so), the table is created logged.
    let unlogged = settings.unlogged && !crate::capability::assumed_without(settings, crate::Capability::Unlogged);
    sql.replace("__UNLOGGED__", if unlogged { "UNLOGGED" } else { "" })
        .replace("__PREFIX__", &settings.schema_prefix)
        .replace("__CHANNEL__", &settings.notify_channel)
        .replace("__WAKE_KEY__", &crate::flusher::wake_key(&settings.schema_prefix).to_string())
        .replace("__WAKE_CHANNEL__", &crate::flusher::wake_channel(&settings.schema_prefix))
}

/// Function source compared as text, whatever line endings the files were checked out with.
fn same_text(source: &str) -> String {
    source.replace("\r\n", "\n")
}

/// A rendered file's text up to the end of its first `$fn$ ... $fn$;` function definition.
fn function_statement(rendered: &str) -> Option<&str> {
    let start = rendered.find("$fn$")? + "$fn$".len();
    let end = start + rendered.get(start..)?.find("$fn$;")? + "$fn$;".len();
    rendered.get(..end)
}

/// The body of the first `$fn$ ... $fn$` function in a rendered file: what `pg_proc.prosrc` holds.
fn function_body(rendered: &str) -> Option<&str> {
    let start = rendered.find("$fn$")? + "$fn$".len();
    let len = rendered.get(start..)?.find("$fn$")?;
    rendered.get(start..start + len)
}

fn quoted(settings: &CacheSettings, object: &str) -> String {
    format!("\"{}{object}\"", settings.schema_prefix)
}

/// Creates, upgrades or repairs the schema of the settings' prefix and channel. Idempotent and safe when
/// several processes run it at once (a per-prefix advisory lock serialises them). Does nothing, and
/// sends no DDL, when the schema is current and intact.
pub(crate) async fn init_db(settings: &CacheSettings) -> Result<()> {
    settings.validate()?;
    let mut client = open_one_shot(settings).await?;
    // Each statement is bounded on the client side too: a frozen server must not hang start-up.
    let bound = statement_bound(settings);
    let tx = bounded(bound, "init_db", async { client.transaction().await.map_err(Error::from_pg) }).await?;
    // IF NOT EXISTS / IF EXISTS print NOTICE lines; this is a normal run, not news.
    bounded(bound, "init_db", batch(&tx, "SET LOCAL client_min_messages = warning")).await?;
    let lock = lock_key(&settings.schema_prefix, "\u{0}pgcache:migrate");
    let take_lock = async { tx.execute("SELECT pg_advisory_xact_lock($1)", &[&lock]).await.map_err(Error::from_pg) };
    bounded(bound, "init_db: waiting for another process's init_db", take_lock).await?;
    let version_table = quoted(settings, "cache_schema");
    let create_version_table = format!(
        "CREATE TABLE IF NOT EXISTS {version_table} (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
    );
    bounded(bound, "init_db", batch(&tx, &create_version_table)).await?;
    let found = bounded(bound, "init_db", read_version(&tx, settings)).await?;
    if found > SCHEMA_VERSION {
        return Err(Error::SchemaTooNew { prefix: settings.schema_prefix.clone(), found, expected: SCHEMA_VERSION });
    }
    let mut problems = bounded(bound, "init_db", inspect(&tx, settings)).await?;
    problems.extend(bounded(bound, "init_db", missing_views(&tx, settings)).await?);
    if found < SCHEMA_VERSION || !problems.is_empty() {
        let apply = async {
            batch(&tx, &render(ENTRIES_SQL, settings)).await?;
            batch(&tx, &render(INCARNATION_SQL, settings)).await?;
            batch(&tx, &render(REFRESH_AT_SQL, settings)).await?;
            batch(&tx, &render(INVALIDATION_LOG_SQL, settings)).await?;
            batch(&tx, &render(CAPABILITIES_SQL, settings)).await?;
            batch(&tx, &render(FLUSHER_WAKE_SQL, settings)).await?;
            notify_triggers(&tx, settings).await?;
            batch(&tx, &render(VIEWS_SQL, settings)).await?;
            // One row per migration applied (a fresh install applies them all at once).
            let record = format!(
                "INSERT INTO {version_table} (version) SELECT generate_series(1, $1) ON CONFLICT (version) DO NOTHING"
            );
            tx.execute(&record, &[&SCHEMA_VERSION]).await.map_err(Error::from_pg)
        };
        bounded(bound, "init_db: applying the schema", apply).await?;
    }
    bounded(bound, "init_db", async { tx.commit().await.map_err(Error::from_pg) }).await?;
    if found == 0 {
        tracing::info!(target: "pgcache::schema", prefix = %settings.schema_prefix, version = SCHEMA_VERSION, "installed schema");
    } else if found < SCHEMA_VERSION || !problems.is_empty() {
        tracing::warn!(target: "pgcache::schema", prefix = %settings.schema_prefix, version = SCHEMA_VERSION, repaired = ?problems, "upgraded or repaired schema");
    }
    Ok(())
}

/// The notify function and its triggers: statement-level with transition tables, or row-level when the
/// engine refuses those (tried in a savepoint) or the settings say it lacks them.
async fn notify_triggers<C: GenericClient>(client: &C, settings: &CacheSettings) -> Result<()> {
    let rows = || async {
        // The function alone (the file's text up to the end of its `$fn$` body), then the row triggers.
        let rendered = render(NOTIFY_SQL, settings);
        let function = function_statement(&rendered).unwrap_or(&rendered);
        batch(client, function).await?;
        batch(client, &render(ROW_TRIGGERS_SQL, settings)).await
    };
    if crate::capability::assumed_without(settings, crate::Capability::TransitionTables) {
        return rows().await;
    }
    batch(client, "SAVEPOINT pgcache_notify_triggers").await?;
    match batch(client, &render(NOTIFY_SQL, settings)).await {
        Ok(()) => batch(client, "RELEASE SAVEPOINT pgcache_notify_triggers").await,
        Err(Error::Postgres(e))
            if e.code().is_some_and(|c| {
                *c == tokio_postgres::error::SqlState::FEATURE_NOT_SUPPORTED
                    || *c == tokio_postgres::error::SqlState::SYNTAX_ERROR
            }) =>
        {
            tracing::warn!(target: "pgcache::schema", error = %e, "statement-level triggers with transition tables refused; creating row-level triggers");
            batch(client, "ROLLBACK TO SAVEPOINT pgcache_notify_triggers").await?;
            rows().await
        }
        Err(e) => Err(e),
    }
}

async fn batch<C: GenericClient>(client: &C, sql: &str) -> Result<()> {
    client.batch_execute(sql).await.map_err(Error::from_pg)
}

/// The installed schema version of the prefix (0 when not installed), on a one-shot connection.
pub(crate) async fn schema_version(settings: &CacheSettings) -> Result<i32> {
    settings.validate()?;
    let client = open_one_shot(settings).await?;
    bounded(statement_bound(settings), "reading the schema version", read_version(&client, settings)).await
}

/// Whether the schema is at this library's version and intact, on a one-shot connection.
pub(crate) async fn schema_is_current(settings: &CacheSettings) -> Result<bool> {
    settings.validate()?;
    let client = open_one_shot(settings).await?;
    let check = async {
        Ok(read_version(&client, settings).await? == SCHEMA_VERSION && inspect(&client, settings).await?.is_empty())
    };
    bounded(statement_bound(settings), "checking the schema", check).await
}

/// What `connect` relies on: the schema is at this library's version, and the table, the triggers and a
/// notification function that notifies the configured channel are all there.
///
/// # Errors
/// [`Error::SchemaOutdated`] (not installed or older), [`Error::SchemaTooNew`], [`Error::SchemaDamaged`].
pub(crate) async fn verify<C: GenericClient>(client: &C, settings: &CacheSettings) -> Result<()> {
    let (prefix, expected) = (settings.schema_prefix.clone(), SCHEMA_VERSION);
    let found = read_version(client, settings).await?;
    match found.cmp(&SCHEMA_VERSION) {
        std::cmp::Ordering::Less => return Err(Error::SchemaOutdated { prefix, found, expected }),
        std::cmp::Ordering::Greater => return Err(Error::SchemaTooNew { prefix, found, expected }),
        std::cmp::Ordering::Equal => {}
    }
    let problems = inspect(client, settings).await?;
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::SchemaDamaged { prefix, what: problems.join("; ") })
    }
}

/// The one row of `sql`, whose parameters are all text, sent as one unnamed statement (`query_typed_one`).
/// `connect` runs these checks on a connection of `dsn`, which may be a transaction pooler: a named
/// statement (what `query_one` with a `&str` prepares first) can be gone in the next transaction
/// ("prepared statement \"s1\" does not exist").
async fn text_row<C: GenericClient>(client: &C, sql: &str, params: &[&str]) -> Result<Row> {
    let typed: Vec<(&(dyn ToSql + Sync), Type)> =
        params.iter().map(|param| (param as &(dyn ToSql + Sync), Type::TEXT)).collect();
    client.query_typed_one(sql, &typed).await.map_err(Error::from_pg)
}

/// Whether the relation `name` (quoted, as `to_regclass` reads it) exists.
async fn exists<C: GenericClient>(client: &C, name: &str) -> Result<bool> {
    text_row(client, "SELECT to_regclass($1) IS NOT NULL", &[name]).await?.try_get(0).map_err(Error::from_pg)
}

/// Whether the relation `table` (quoted) has the live column `column`.
async fn has_column<C: GenericClient>(client: &C, table: &str, column: &str) -> Result<bool> {
    let sql = "SELECT count(*) > 0 FROM pg_attribute WHERE attrelid = to_regclass($1) AND attname = $2 \
               AND NOT attisdropped";
    text_row(client, sql, &[table, column]).await?.try_get(0).map_err(Error::from_pg)
}

/// Reads the schema version through any client (0 when not installed).
async fn read_version<C: GenericClient>(client: &C, settings: &CacheSettings) -> Result<i32> {
    let table = quoted(settings, "cache_schema");
    if !exists(client, &table).await? {
        return Ok(0);
    }
    let sql = format!("SELECT coalesce(max(version), 0) FROM {table}");
    text_row(client, &sql, &[]).await?.try_get(0).map_err(Error::from_pg)
}

/// The operator views that are missing (checked by `init_db` only: `connect` does not need them).
async fn missing_views<C: GenericClient>(client: &C, settings: &CacheSettings) -> Result<Vec<String>> {
    let mut missing = Vec::new();
    for view in VIEWS.map(|view| quoted(settings, view)) {
        if !exists(client, &view).await? {
            missing.push(format!("view {view} is missing"));
        }
    }
    Ok(missing)
}

/// What is missing or differs from what this library installs: one line per problem, empty when intact.
async fn inspect<C: GenericClient>(client: &C, settings: &CacheSettings) -> Result<Vec<String>> {
    let prefix = &settings.schema_prefix;
    let mut problems = Vec::new();
    let table = quoted(settings, "cache_entries");
    let sequence = quoted(settings, "cache_version_seq");
    for (object, kind) in [(&table, "table"), (&sequence, "sequence")] {
        if !exists(client, object).await? {
            problems.push(format!("{kind} {object} is missing"));
        }
    }
    for log in
        ["cache_invalidations", "cache_changes", "cache_pollers", "cache_leases"].map(|name| quoted(settings, name))
    {
        if !exists(client, &log).await? {
            problems.push(format!("table {log} is missing"));
        }
    }
    // The writer's transaction id on log rows (migration 5): the polling mode's watermark needs it.
    let log = quoted(settings, "cache_invalidations");
    if !has_column(client, &log, "xid").await? {
        problems.push(format!("column xid of {log} is missing"));
    }
    let incarnation = quoted(settings, "cache_incarnation");
    if !exists(client, &incarnation).await? {
        problems.push(format!("table {incarnation} is missing"));
    } else {
        // The row must name the table as it is now: a table recreated by hand is a new life.
        let sql = format!("SELECT count(*) FROM {incarnation} WHERE entries = to_regclass($1)::oid");
        let named: i64 = text_row(client, &sql, &[&table]).await?.try_get(0).map_err(Error::from_pg)?;
        if named == 0 {
            problems.push(format!("no incarnation in {incarnation} names the current table {table}"));
        }
    }
    for column in ADDED_COLUMNS {
        if !has_column(client, &table, column).await? {
            problems.push(format!("column {column} of {table} is missing"));
        }
    }
    // The triggers that fire for ordinary sessions ('O'rigin, 'A'lways), with the function each calls:
    // found through the table, so a schema elsewhere on the search_path is inspected where it is.
    let rows = client
        .query_typed(
            "SELECT t.tgname::text, p.proname::text, p.prosrc FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid \
             WHERE t.tgrelid = to_regclass($1) AND NOT t.tgisinternal AND t.tgenabled IN ('O', 'A')",
            &[(&table, Type::TEXT)],
        )
        .await
        .map_err(Error::from_pg)?;
    let mut triggers = Vec::with_capacity(rows.len());
    let mut functions = std::collections::HashMap::new();
    for row in &rows {
        let (trigger, function, source): (String, String, String) = (
            row.try_get(0).map_err(Error::from_pg)?,
            row.try_get(1).map_err(Error::from_pg)?,
            row.try_get(2).map_err(Error::from_pg)?,
        );
        triggers.push(trigger);
        functions.insert(function, source);
    }
    for trigger in TRIGGERS {
        let name = format!("{prefix}{trigger}");
        if !triggers.contains(&name) {
            problems.push(format!("trigger \"{name}\" is missing or disabled"));
        }
    }
    // The log's wake trigger (migration 6): without it a sleeping flusher would never hear of a write.
    let wake = format!("{prefix}cache_wake_flusher");
    let sql = "SELECT count(*) > 0 FROM pg_trigger WHERE tgrelid = to_regclass($1) AND tgname = $2 \
               AND tgenabled IN ('O', 'A')";
    let woken: bool = text_row(client, sql, &[&log, &wake]).await?.try_get(0).map_err(Error::from_pg)?;
    if !woken {
        problems.push(format!("trigger \"{wake}\" on {log} is missing or disabled"));
    }
    for (function, file) in FUNCTIONS {
        let name = format!("{prefix}{function}");
        let rendered = render(file, settings);
        let expected = function_body(&rendered).map(same_text);
        match functions.get(&name) {
            // Its triggers are reported missing above.
            None => {}
            Some(src) if Some(same_text(src)) != expected => problems
                .push(format!("function \"{name}\" differs from this library's (another channel, or changed by hand)")),
            Some(_) => {}
        }
    }
    Ok(problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_replaces_every_placeholder() {
        let s = CacheSettings::new("postgresql://x@y/z").schema_prefix("mk_").notify_channel("ev").unlogged(true);
        let out = render(ENTRIES_SQL, &s);
        assert!(!out.contains("__"), "placeholder left in migration");
        assert!(out.contains("CREATE UNLOGGED TABLE IF NOT EXISTS \"mk_cache_entries\""));
        let incarnation = render(INCARNATION_SQL, &s);
        assert!(!incarnation.contains("__PREFIX__") && incarnation.contains("\"mk_cache_incarnation\""));
        let notify = render(NOTIFY_SQL, &s);
        assert!(notify.contains("channel ev ") && notify.contains("\"mk_cache_invalidations\""));
        assert!(!notify.contains("__CHANNEL__") && !notify.contains("__PREFIX__"));
        let wake = render(FLUSHER_WAKE_SQL, &s);
        assert!(!wake.contains("__"), "placeholder left in migration 6");
        let key = crate::flusher::wake_key("mk_");
        assert!(wake.contains(&format!("pg_try_advisory_xact_lock_shared({key})")));
        assert!(wake.contains(&format!("pg_notify('{}', '')", crate::flusher::wake_channel("mk_"))));
    }

    #[test]
    fn function_bodies_are_found() {
        let s = CacheSettings::new("postgresql://x@y/z").notify_channel("ev");
        for (_, file) in FUNCTIONS {
            let rendered = render(file, &s);
            let body = function_body(&rendered).unwrap_or("");
            assert!(body.contains("BEGIN") && body.contains("END"), "{body}");
        }
        assert!(function_body(&render(NOTIFY_SQL, &s)).is_some_and(|b| b.contains("channel ev ")));
    }
}
