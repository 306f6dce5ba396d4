//! Settings limits against a real PostgreSQL: `max_key_bytes` is bounded by what the primary-key B-tree can
//! hold. PostgreSQL limits a B-tree entry to 2704 bytes with 8 KiB pages, so an incompressible key of about
//! 2,700 bytes fails every write ("index row size exceeds maximum") and is silently never cached. The
//! largest accepted `max_key_bytes` (2048) always fits; one more is rejected by validation.

use pgcache_core::prelude::*;
use pgcache_core::Error;
use pgcache_tests::{connect, entries_table, node, settings_for, sql_client};
use serde_json::{json, Value};

/// The largest `max_key_bytes` that `CacheSettings::validate` accepts.
const KEY_LIMIT: usize = 2048;

/// `len` bytes of random printable ASCII (`' '..='~'`) from a xorshift64 seeded with `seed`: text neither
/// PostgreSQL's pglz nor anything else can compress, so it reaches the index at full length.
fn incompressible_key(len: usize, seed: u64) -> String {
    let mut state = seed.max(1);
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            char::from(b' ' + (state % 95) as u8)
        })
        .collect()
}

#[tokio::test]
async fn an_incompressible_key_of_the_largest_max_key_bytes_round_trips() -> anyhow::Result<()> {
    let settings = settings_for("key_limit").max_key_bytes(KEY_LIMIT);
    let writer = connect(&settings).await?;
    // A second node without a local cache, so its read comes from the table.
    let reader = connect(&node(&settings, "_reader").local_max_entries(0)).await?;
    let key = incompressible_key(KEY_LIMIT, 0x9e37_79b9_7f4a_7c15);
    assert_eq!(key.len(), KEY_LIMIT);

    writer.set(&key, &json!({"fits": true}), None).await?;
    assert_eq!(reader.get::<Value>(&key).await?, Some(json!({"fits": true})));
    assert_eq!(writer.get::<Value>(&key).await?, Some(json!({"fits": true})));

    // The row holds exactly that key, uncompressed.
    let sql = sql_client(&settings.dsn).await?;
    let query = format!(
        "SELECT octet_length(key)::bigint, pg_column_size(key)::bigint FROM {} WHERE key = $1",
        entries_table(&settings)
    );
    let row = sql.query_one(&query, &[&key]).await?;
    let (bytes, stored): (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
    assert_eq!(bytes, KEY_LIMIT as i64);
    assert!(stored > KEY_LIMIT as i64, "the key was compressed ({stored} bytes stored), so the test proves nothing");

    // One byte more is refused by the cache before it reaches PostgreSQL.
    let longer = format!("{key}x");
    let err = writer.set(&longer, &json!(1), None).await.expect_err("a key over max_key_bytes");
    assert!(matches!(err, Error::KeyTooLong { len, max: KEY_LIMIT } if len == KEY_LIMIT + 1), "{err:?}");

    assert!(writer.delete(&key).await?);
    assert_eq!(reader.get::<Value>(&key).await?, None);
    writer.close().await;
    reader.close().await;
    Ok(())
}

#[tokio::test]
async fn max_key_bytes_one_over_the_bound_is_rejected_by_connect() -> anyhow::Result<()> {
    let settings = settings_for("key_limit_over").max_key_bytes(KEY_LIMIT + 1);
    for result in [PostgresCache::init_db(&settings).await.err(), PostgresCache::connect(settings.clone()).await.err()]
    {
        match result {
            Some(Error::InvalidSetting { name: "max_key_bytes", reason }) => {
                assert!(reason.contains("between 1 and 2048"), "{reason}");
            }
            other => panic!("expected InvalidSetting for max_key_bytes, got {other:?}"),
        }
    }
    Ok(())
}

/// The reason for the bound: PostgreSQL itself refuses an incompressible key of 2,800 bytes in the
/// primary key, whatever pgcache does.
#[tokio::test]
async fn postgresql_refuses_an_incompressible_key_past_the_btree_limit() -> anyhow::Result<()> {
    let settings = settings_for("key_limit_pg");
    PostgresCache::init_db(&settings).await?;
    let sql = sql_client(&settings.dsn).await?;
    let insert = format!("INSERT INTO {} (key, value) VALUES ($1, '\\x00'::bytea)", entries_table(&settings));
    let fits = incompressible_key(KEY_LIMIT, 7);
    sql.execute(&insert, &[&fits]).await?;
    let too_long = incompressible_key(2800, 7);
    let err = sql.execute(&insert, &[&too_long]).await.expect_err("a 2800-byte key past the B-tree limit");
    let message = err.as_db_error().map(|e| e.message().to_owned()).unwrap_or_default();
    assert!(message.contains("index row size"), "{err:?}");
    Ok(())
}
