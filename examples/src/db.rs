//! The `profiles` table the profiles examples read and write: the application's own data, in the same
//! PostgreSQL as the cache.

use std::time::Duration;

use anyhow::{Context, Result};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use serde::{Deserialize, Serialize};
use tokio_postgres::{NoTls, Row};

/// Creates the table; the transaction-scoped advisory lock lets several instances start at once.
const CREATE_TABLE: &str = "
    BEGIN;
    SELECT pg_advisory_xact_lock(7242001);
    CREATE TABLE IF NOT EXISTS profiles (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        name text NOT NULL,
        bio text NOT NULL DEFAULT ''
    );
    COMMIT;";
const SEED: &str = "INSERT INTO profiles (name, bio) SELECT 'Ava', 'The first profile'
    WHERE NOT EXISTS (SELECT 1 FROM profiles)";
const LIST: &str = "SELECT id, name, bio FROM profiles ORDER BY id";
const GET: &str = "SELECT id, name, bio FROM profiles WHERE id = $1";
const INSERT: &str = "INSERT INTO profiles (name, bio) VALUES ($1, $2) RETURNING id, name, bio";
const UPDATE: &str = "UPDATE profiles SET name = $2, bio = $3 WHERE id = $1 RETURNING id, name, bio";
const DELETE: &str = "DELETE FROM profiles WHERE id = $1";

/// A row of `profiles`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    /// Primary key.
    pub id: i64,
    /// Display name.
    pub name: String,
    /// Free text.
    pub bio: String,
}

impl Profile {
    fn from_row(row: &Row) -> Result<Self> {
        Ok(Profile { id: row.try_get(0)?, name: row.try_get(1)?, bio: row.try_get(2)? })
    }
}

/// The body of a create or update.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct NewProfile {
    /// Display name.
    pub name: String,
    /// Free text (empty when omitted).
    #[serde(default)]
    pub bio: String,
}

/// Access to the `profiles` table through a small pool.
#[derive(Clone)]
pub struct ProfileDb {
    pool: Pool,
}

impl ProfileDb {
    /// Opens a pool on `dsn` (every timeout set: deadpool waits forever by default), creates the table if
    /// needed and seeds one profile into an empty table.
    ///
    /// # Errors
    /// Bad DSN, unreachable database, SQL errors.
    pub async fn connect(dsn: &str) -> Result<Self> {
        let config: tokio_postgres::Config = dsn.parse().context("parsing PGCACHE_DSN")?;
        let manager = Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let timeout = Some(Duration::from_secs(2));
        let pool = Pool::builder(manager)
            .max_size(8)
            .wait_timeout(timeout)
            .create_timeout(timeout)
            .recycle_timeout(timeout)
            .runtime(Runtime::Tokio1)
            .build()?;
        let db = Self { pool };
        let client = db.pool.get().await?;
        client.batch_execute(CREATE_TABLE).await.context("creating the profiles table")?;
        client.execute(SEED, &[]).await?;
        Ok(db)
    }

    /// Every profile, by id.
    ///
    /// # Errors
    /// Database errors.
    pub async fn list(&self) -> Result<Vec<Profile>> {
        let client = self.pool.get().await?;
        let statement = client.prepare_cached(LIST).await?;
        client.query(&statement, &[]).await?.iter().map(Profile::from_row).collect()
    }

    /// One profile.
    ///
    /// # Errors
    /// Database errors.
    pub async fn get(&self, id: i64) -> Result<Option<Profile>> {
        let client = self.pool.get().await?;
        let statement = client.prepare_cached(GET).await?;
        client.query_opt(&statement, &[&id]).await?.as_ref().map(Profile::from_row).transpose()
    }

    /// Inserts a profile.
    ///
    /// # Errors
    /// Database errors.
    pub async fn create(&self, new: &NewProfile) -> Result<Profile> {
        let client = self.pool.get().await?;
        let statement = client.prepare_cached(INSERT).await?;
        Profile::from_row(&client.query_one(&statement, &[&new.name, &new.bio]).await?)
    }

    /// Updates a profile; `None` when there is none with this id.
    ///
    /// # Errors
    /// Database errors.
    pub async fn update(&self, id: i64, new: &NewProfile) -> Result<Option<Profile>> {
        let client = self.pool.get().await?;
        let statement = client.prepare_cached(UPDATE).await?;
        client.query_opt(&statement, &[&id, &new.name, &new.bio]).await?.as_ref().map(Profile::from_row).transpose()
    }

    /// Deletes a profile; returns whether it existed.
    ///
    /// # Errors
    /// Database errors.
    pub async fn delete(&self, id: i64) -> Result<bool> {
        let client = self.pool.get().await?;
        let statement = client.prepare_cached(DELETE).await?;
        Ok(client.execute(&statement, &[&id]).await? > 0)
    }
}
