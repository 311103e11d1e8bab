//! The catalog over sqlx's `Any` driver: one code path for SQLite and PostgreSQL. Statements
//! use `$N` placeholders, which both drivers bind by number.

use std::time::Duration;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, AssertSqlSafe, Executor, Row};

use crate::model::{
    ChannelRow, DataFileRow, FileKind, LiveFlush, LiveStreamRow, ModelDecision, NewRecording,
    Participant, PendingWrite, RecordingRow, SegmentRow, TenantView, UploadRow,
};
use crate::schema::migrations;
use crate::{Error, Result};

/// Which database is underneath.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// What a commit did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommitOutcome {
    Committed,
    /// The tenant already has a recording of these bytes; nothing was committed.
    Duplicate {
        recording_id: String,
    },
}

/// What an event append did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AppendOutcome {
    Appended {
        total_events: i64,
    },
    /// The idempotency key was used before; nothing was appended.
    Duplicate {
        total_events: i64,
    },
    /// No such recording for this tenant.
    UnknownRecording,
}

/// What opening a live stream found.
#[derive(Clone, Debug, PartialEq)]
pub enum LiveOpen {
    /// The stream and its recording are committed.
    Created,
    /// The tenant has a stream of that id already; nothing was committed.
    Existing(LiveStreamRow),
}

/// The catalog. Cheap to clone: it is a connection pool.
#[derive(Clone, Debug)]
pub struct Catalog {
    pool: AnyPool,
    dialect: Dialect,
}

const RECORDING_COLUMNS: &str = "tenant, recording_id, source_sha256, subject_pseudonym, session, \
    task, run, acquisition, datatype, format, start_time_ns, duration_s, record_duration_s, \
    record_duration_text, num_records, source_bytes, stored_bytes, sex, age_years, num_signals, \
    num_annotation_signals, num_samples, num_events, patient_field, recording_field, \
    warnings_json, sidecar_json, ingested_ns";

const LIVE_COLUMNS: &str = "tenant, stream_id, recording_id, owner, layout_hex, flushed_seq, \
    flushed_samples, closed, created_ns";

const CHANNEL_COLUMNS: &str = "channel_index, label, channel_type, unit, transducer, \
    prefiltering, reserved, sample_rate, samples_per_record, physical_min, physical_max, \
    physical_min_text, physical_max_text, digital_min, digital_max, gain, phys_offset, \
    num_samples, is_annotation";

impl Catalog {
    /// Connects and brings the schema up to date. `url` is `sqlite://...` (created if
    /// missing; `sqlite::memory:` for tests) or `postgres://...`, optionally with
    /// `?schema=NAME` to keep the tables in their own schema.
    pub async fn connect(url: &str) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let (url, dialect, schema) = normalize(url)?;
        let memory = url.contains(":memory:");
        let mut options = AnyPoolOptions::new()
            .max_connections(if memory { 1 } else { 8 })
            .acquire_timeout(Duration::from_secs(30));
        if memory {
            // Every connection to :memory: is a new database: keep the one.
            options = options.idle_timeout(None).max_lifetime(None);
        }
        let options = options.after_connect(move |conn, _meta| {
            let schema = schema.clone();
            Box::pin(async move {
                match dialect {
                    Dialect::Sqlite => {
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA synchronous = NORMAL").await?;
                        conn.execute("PRAGMA busy_timeout = 10000").await?;
                    }
                    Dialect::Postgres => {
                        if let Some(s) = schema {
                            sqlx::raw_sql(AssertSqlSafe(format!(
                                "CREATE SCHEMA IF NOT EXISTS \"{s}\""
                            )))
                            .execute(&mut *conn)
                            .await?;
                            sqlx::raw_sql(AssertSqlSafe(format!("SET search_path TO \"{s}\"")))
                                .execute(&mut *conn)
                                .await?;
                        }
                    }
                }
                Ok(())
            })
        });
        let pool = options.connect(&url).await?;
        let catalog = Self { pool, dialect };
        catalog.migrate().await?;
        Ok(catalog)
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    async fn migrate(&self) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        if self.dialect == Dialect::Postgres {
            // Several servers may start at once against one database.
            tx.execute("SELECT pg_advisory_xact_lock(7474746)").await?;
        }
        tx.execute("CREATE TABLE IF NOT EXISTS gb_schema_version (version BIGINT NOT NULL)")
            .await?;
        let current: Option<i64> = sqlx::query("SELECT MAX(version) AS v FROM gb_schema_version")
            .fetch_one(&mut *tx)
            .await?
            .try_get("v")?;
        let current = current.unwrap_or(0);
        for (i, statements) in migrations(self.dialect).into_iter().enumerate() {
            let version = i as i64 + 1;
            if version <= current {
                continue;
            }
            for s in statements {
                sqlx::raw_sql(AssertSqlSafe(s)).execute(&mut *tx).await?;
            }
            sqlx::query("INSERT INTO gb_schema_version (version) VALUES ($1)")
                .bind(version)
                .execute(&mut *tx)
                .await?;
            tracing::info!(version, "catalog schema migrated");
        }
        tx.commit().await?;
        Ok(())
    }

    /// The tenant's pseudonym key, creating it with `generate` the first time. Concurrent
    /// callers agree on one key.
    pub async fn tenant_key(
        &self,
        tenant: &str,
        now_ns: i64,
        generate: impl FnOnce() -> String,
    ) -> Result<String> {
        if let Some(k) = self.get_tenant_key(tenant).await? {
            return Ok(k);
        }
        let candidate = generate();
        let insert = sqlx::query(
            "INSERT INTO tenant_keys (tenant, key_hex, created_ns) VALUES ($1, $2, $3)",
        )
        .bind(tenant)
        .bind(&candidate)
        .bind(now_ns)
        .execute(&self.pool)
        .await;
        match insert {
            Ok(_) => Ok(candidate),
            Err(e) if is_unique_violation(&e) => self
                .get_tenant_key(tenant)
                .await?
                .ok_or_else(|| Error::Corrupt(format!("tenant key for {tenant} vanished"))),
            Err(e) => Err(e.into()),
        }
    }

    async fn get_tenant_key(&self, tenant: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT key_hex FROM tenant_keys WHERE tenant = $1")
            .bind(tenant)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get("key_hex")).transpose()?)
    }

    /// Registers an upload. If the tenant already has one with this id, returns it unchanged.
    pub async fn create_upload(&self, upload: &UploadRow) -> Result<UploadRow> {
        let insert = sqlx::query(
            "INSERT INTO uploads (tenant, upload_id, metadata, size_bytes, created_ns, \
             updated_ns, recording_id) VALUES ($1, $2, $3, $4, $5, $6, NULL)",
        )
        .bind(&upload.tenant)
        .bind(&upload.upload_id)
        .bind(&upload.metadata)
        .bind(upload.size_bytes)
        .bind(upload.created_ns)
        .bind(upload.created_ns)
        .execute(&self.pool)
        .await;
        match insert {
            Ok(_) => Ok(upload.clone()),
            Err(e) if is_unique_violation(&e) => self
                .get_upload(&upload.tenant, &upload.upload_id)
                .await?
                .ok_or_else(|| Error::Corrupt("upload vanished".into())),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn get_upload(&self, tenant: &str, upload_id: &str) -> Result<Option<UploadRow>> {
        let row = sqlx::query(
            "SELECT tenant, upload_id, metadata, size_bytes, created_ns, recording_id \
             FROM uploads WHERE tenant = $1 AND upload_id = $2",
        )
        .bind(tenant)
        .bind(upload_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| upload_from(&r)).transpose()
    }

    /// Records activity on an upload, so that it does not expire while a client works on it.
    pub async fn touch_upload(&self, tenant: &str, upload_id: &str, now_ns: i64) -> Result<()> {
        sqlx::query("UPDATE uploads SET updated_ns = $1 WHERE tenant = $2 AND upload_id = $3")
            .bind(now_ns)
            .bind(tenant)
            .bind(upload_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Uploads with no activity since `before_ns`, committed or not: after their time to live
    /// their staged bytes are garbage either way (a crash between commit and cleanup can leave
    /// some).
    pub async fn expired_uploads(&self, before_ns: i64) -> Result<Vec<UploadRow>> {
        let rows = sqlx::query(
            "SELECT tenant, upload_id, metadata, size_bytes, created_ns, recording_id \
             FROM uploads WHERE updated_ns < $1",
        )
        .bind(before_ns)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(upload_from).collect()
    }

    pub async fn delete_upload(&self, tenant: &str, upload_id: &str) -> Result<()> {
        sqlx::query("DELETE FROM uploads WHERE tenant = $1 AND upload_id = $2")
            .bind(tenant)
            .bind(upload_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Marks an upload as done with an existing recording (a duplicate upload). The upload's
    /// metadata (subject labels, sidecars) is cleared: the recording holds what is kept.
    pub async fn finish_upload(
        &self,
        tenant: &str,
        upload_id: &str,
        recording_id: &str,
    ) -> Result<()> {
        sqlx::query("UPDATE uploads SET recording_id = $1, metadata = '' WHERE tenant = $2 AND upload_id = $3")
            .bind(recording_id)
            .bind(tenant)
            .bind(upload_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Lists the object prefixes about to be written, before writing them.
    pub async fn begin_write(&self, write: &PendingWrite) -> Result<()> {
        let prefixes =
            serde_json::to_string(&write.prefixes).map_err(|e| Error::Corrupt(e.to_string()))?;
        sqlx::query(
            "INSERT INTO pending_writes (write_id, tenant, prefixes_json, created_ns) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(&write.write_id)
        .bind(&write.tenant)
        .bind(prefixes)
        .bind(write.created_ns)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Forgets a pending write whose objects were deleted.
    pub async fn end_write(&self, write_id: &str) -> Result<()> {
        sqlx::query("DELETE FROM pending_writes WHERE write_id = $1")
            .bind(write_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Pending writes older than `before_ns`: their commit never came.
    pub async fn abandoned_writes(&self, before_ns: i64) -> Result<Vec<PendingWrite>> {
        let rows = sqlx::query(
            "SELECT write_id, tenant, prefixes_json, created_ns FROM pending_writes \
             WHERE created_ns < $1",
        )
        .bind(before_ns)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let prefixes: String = r.try_get("prefixes_json")?;
                Ok(PendingWrite {
                    write_id: r.try_get("write_id")?,
                    tenant: r.try_get("tenant")?,
                    prefixes: serde_json::from_str(&prefixes)
                        .map_err(|e| Error::Corrupt(e.to_string()))?,
                    created_ns: r.try_get("created_ns")?,
                })
            })
            .collect()
    }

    /// The recording with these source bytes, if the tenant has one.
    pub async fn find_by_checksum(&self, tenant: &str, sha256: &str) -> Result<Option<String>> {
        let row = sqlx::query(
            "SELECT recording_id FROM recordings WHERE tenant = $1 AND source_sha256 = $2",
        )
        .bind(tenant)
        .bind(sha256)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| r.try_get("recording_id")).transpose()?)
    }

    /// Makes a recording visible: the recording, its channels, segments and files, the upload
    /// marked done and the pending write cleared, in one transaction.
    pub async fn commit_recording(&self, rec: &NewRecording) -> Result<CommitOutcome> {
        let r = &rec.row;
        let mut tx = self.pool.begin().await?;
        let seq = next_seq(&mut tx).await?;
        if let Err(e) = insert_recording(&mut tx, rec, seq).await {
            if let Error::Database(db) = &e
                && is_unique_violation(db)
            {
                tx.rollback().await?;
                return match self.find_by_checksum(&r.tenant, &r.source_sha256).await? {
                    Some(id) => Ok(CommitOutcome::Duplicate { recording_id: id }),
                    None => Err(e),
                };
            }
            return Err(e);
        }
        for f in &rec.files {
            insert_file(&mut tx, &r.tenant, &r.recording_id, f, seq).await?;
        }
        if let Some(upload) = &rec.upload_id {
            sqlx::query(
                "UPDATE uploads SET recording_id = $1, metadata = '' WHERE tenant = $2 AND upload_id = $3",
            )
            .bind(&r.recording_id)
            .bind(&r.tenant)
            .bind(upload)
            .execute(&mut *tx)
            .await?;
        }
        clear_write(&mut tx, &rec.write_id).await?;
        tx.commit().await?;
        Ok(CommitOutcome::Committed)
    }

    pub async fn get_recording(
        &self,
        tenant: &str,
        recording_id: &str,
    ) -> Result<Option<RecordingRow>> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {RECORDING_COLUMNS} FROM recordings WHERE tenant = $1 AND recording_id = $2"
        )))
        .bind(tenant)
        .bind(recording_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| recording_from(&r)).transpose()
    }

    /// Recordings in id order, after `after` if given.
    pub async fn list_recordings(
        &self,
        tenant: &str,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<RecordingRow>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {RECORDING_COLUMNS} FROM recordings WHERE tenant = $1 AND recording_id > $2 \
             ORDER BY recording_id LIMIT $3"
        )))
        .bind(tenant)
        .bind(after.unwrap_or(""))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(recording_from).collect()
    }

    pub async fn channels(&self, tenant: &str, recording_id: &str) -> Result<Vec<ChannelRow>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {CHANNEL_COLUMNS} FROM channels WHERE tenant = $1 AND recording_id = $2 \
             ORDER BY channel_index"
        )))
        .bind(tenant)
        .bind(recording_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(channel_from).collect()
    }

    pub async fn segments(&self, tenant: &str, recording_id: &str) -> Result<Vec<SegmentRow>> {
        let rows = sqlx::query(
            "SELECT segment_index, first_record, num_records, onset_s FROM segments \
             WHERE tenant = $1 AND recording_id = $2 ORDER BY segment_index",
        )
        .bind(tenant)
        .bind(recording_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(SegmentRow {
                    segment_index: r.try_get("segment_index")?,
                    first_record: r.try_get("first_record")?,
                    num_records: r.try_get("num_records")?,
                    onset_s: r.try_get("onset_s")?,
                })
            })
            .collect()
    }

    /// The recording's files of one kind, signal files by channel then first sample.
    pub async fn files(
        &self,
        tenant: &str,
        recording_id: &str,
        kind: FileKind,
    ) -> Result<Vec<DataFileRow>> {
        let rows = sqlx::query(
            "SELECT path, kind, channel_index, first_row, num_rows, size_bytes FROM data_files \
             WHERE tenant = $1 AND recording_id = $2 AND kind = $3 AND removed_seq IS NULL \
             ORDER BY channel_index, first_row, path",
        )
        .bind(tenant)
        .bind(recording_id)
        .bind(kind.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(file_from).collect()
    }

    /// Attaches an events file to a recording and bumps its event count, in one transaction,
    /// clearing the pending write. With an idempotency key that was used before, nothing
    /// changes. The transaction writes first, so that SQLite takes its write lock at once.
    pub async fn append_events(
        &self,
        tenant: &str,
        recording_id: &str,
        file: &DataFileRow,
        idempotency_key: Option<&str>,
        write_id: &str,
    ) -> Result<AppendOutcome> {
        let mut tx = self.pool.begin().await?;
        // The commit counter first, in every transaction that takes a number: one lock order,
        // so that two commits never wait on each other's rows (a deadlock otherwise, as an
        // attach waiting for the counter while a live flush holding it waits for the
        // recording's row).
        let seq = next_seq(&mut tx).await?;
        let updated = sqlx::query(
            "UPDATE recordings SET num_events = num_events + $1, stored_bytes = stored_bytes + $2 \
             WHERE tenant = $3 AND recording_id = $4",
        )
        .bind(file.num_rows)
        .bind(file.size_bytes)
        .bind(tenant)
        .bind(recording_id)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(AppendOutcome::UnknownRecording);
        }
        if let Some(key) = idempotency_key {
            let insert = sqlx::query(
                "INSERT INTO event_appends (tenant, recording_id, idempotency_key, num_events) \
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(tenant)
            .bind(recording_id)
            .bind(key)
            .bind(file.num_rows)
            .execute(&mut *tx)
            .await;
            if let Err(e) = insert {
                tx.rollback().await?;
                if is_unique_violation(&e) {
                    return Ok(AppendOutcome::Duplicate {
                        total_events: self.num_events(tenant, recording_id).await?,
                    });
                }
                return Err(e.into());
            }
        }
        insert_file(&mut tx, tenant, recording_id, file, seq).await?;
        clear_write(&mut tx, write_id).await?;
        let total: i64 = sqlx::query(
            "SELECT num_events FROM recordings WHERE tenant = $1 AND recording_id = $2",
        )
        .bind(tenant)
        .bind(recording_id)
        .fetch_one(&mut *tx)
        .await?
        .try_get("num_events")?;
        tx.commit().await?;
        Ok(AppendOutcome::Appended {
            total_events: total,
        })
    }

    /// Attaches a file of rows (predictions, outcomes) to a recording of `tenant` and clears
    /// its pending write, in one transaction. False when there is no such recording.
    pub async fn attach_file(
        &self,
        tenant: &str,
        recording_id: &str,
        file: &DataFileRow,
        write_id: &str,
    ) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        // The counter first: see append_events.
        let seq = next_seq(&mut tx).await?;
        let updated = sqlx::query(
            "UPDATE recordings SET stored_bytes = stored_bytes + $1 \
             WHERE tenant = $2 AND recording_id = $3",
        )
        .bind(file.size_bytes)
        .bind(tenant)
        .bind(recording_id)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        insert_file(&mut tx, tenant, recording_id, file, seq).await?;
        clear_write(&mut tx, write_id).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Records a decision about a model version; returns its commit.
    pub async fn record_decision(&self, tenant: &str, d: &ModelDecision) -> Result<i64> {
        let mut tx = self.pool.begin().await?;
        let seq = next_seq(&mut tx).await?;
        sqlx::query(
            "INSERT INTO model_decisions (tenant, commit_seq, model, version, parent_version, \
             action, evidence_json, decided_ns) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(tenant)
        .bind(seq)
        .bind(&d.model)
        .bind(d.version)
        .bind(d.parent_version)
        .bind(&d.action)
        .bind(&d.evidence_json)
        .bind(d.decided_ns)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(seq)
    }

    /// The tenant's model decisions up to commit `seq`, oldest first.
    pub async fn model_decisions(&self, tenant: &str, seq: i64) -> Result<Vec<ModelDecision>> {
        let rows = sqlx::query(
            "SELECT model, version, parent_version, action, evidence_json, decided_ns \
             FROM model_decisions WHERE tenant = $1 AND commit_seq <= $2 ORDER BY commit_seq",
        )
        .bind(tenant)
        .bind(seq)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ModelDecision {
                    model: r.try_get("model")?,
                    version: r.try_get("version")?,
                    parent_version: r.try_get("parent_version")?,
                    action: r.try_get("action")?,
                    evidence_json: r.try_get("evidence_json")?,
                    decided_ns: r.try_get("decided_ns")?,
                })
            })
            .collect()
    }

    async fn num_events(&self, tenant: &str, recording_id: &str) -> Result<i64> {
        let row = sqlx::query(
            "SELECT num_events FROM recordings WHERE tenant = $1 AND recording_id = $2",
        )
        .bind(tenant)
        .bind(recording_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get("num_events")?)
    }

    /// Inserts or replaces participants: each put is a new version, so snapshots taken
    /// before it keep seeing the old one.
    pub async fn put_participants(
        &self,
        tenant: &str,
        rows: &[Participant],
        now_ns: i64,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let seq = next_seq(&mut tx).await?;
        for p in rows {
            sqlx::query(
                "INSERT INTO participant_versions (tenant, subject_pseudonym, commit_seq, \
                 dataset, attributes_json, updated_ns) VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(tenant)
            .bind(&p.subject_pseudonym)
            .bind(seq)
            .bind(&p.dataset)
            .bind(&p.attributes_json)
            .bind(now_ns)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The latest version of each participant.
    pub async fn participants(&self, tenant: &str) -> Result<Vec<Participant>> {
        self.participants_at(tenant, i64::MAX).await
    }

    /// Each participant as of commit `seq`.
    pub async fn participants_at(&self, tenant: &str, seq: i64) -> Result<Vec<Participant>> {
        let rows = sqlx::query(
            "SELECT p.subject_pseudonym, p.dataset, p.attributes_json FROM participant_versions p \
             WHERE p.tenant = $1 AND p.commit_seq = (SELECT MAX(q.commit_seq) FROM \
             participant_versions q WHERE q.tenant = p.tenant AND q.subject_pseudonym = \
             p.subject_pseudonym AND q.commit_seq <= $2) ORDER BY p.subject_pseudonym",
        )
        .bind(tenant)
        .bind(seq)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Participant {
                    subject_pseudonym: r.try_get("subject_pseudonym")?,
                    dataset: r.try_get("dataset")?,
                    attributes_json: r.try_get("attributes_json")?,
                })
            })
            .collect()
    }

    /// The newest commit: a snapshot of everything visible now.
    pub async fn current_seq(&self) -> Result<i64> {
        let row = sqlx::query("SELECT seq FROM commit_counter WHERE id = 1")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("seq")?)
    }

    /// Names the current snapshot for a tenant. Fails with `SnapshotExists` if the name is
    /// taken.
    pub async fn create_snapshot(&self, tenant: &str, name: &str, now_ns: i64) -> Result<i64> {
        let seq = self.current_seq().await?;
        let insert = sqlx::query(
            "INSERT INTO snapshots (tenant, name, seq, created_ns) VALUES ($1, $2, $3, $4)",
        )
        .bind(tenant)
        .bind(name)
        .bind(seq)
        .bind(now_ns)
        .execute(&self.pool)
        .await;
        match insert {
            Ok(_) => Ok(seq),
            Err(e) if is_unique_violation(&e) => Err(Error::SnapshotExists(name.to_string())),
            Err(e) => Err(e.into()),
        }
    }

    /// The commit a named snapshot pins.
    pub async fn snapshot(&self, tenant: &str, name: &str) -> Result<Option<i64>> {
        let row = sqlx::query("SELECT seq FROM snapshots WHERE tenant = $1 AND name = $2")
            .bind(tenant)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get("seq")).transpose()?)
    }

    /// The tenant's named snapshots: (name, seq, created_ns).
    pub async fn snapshots(&self, tenant: &str) -> Result<Vec<(String, i64, i64)>> {
        let rows = sqlx::query(
            "SELECT name, seq, created_ns FROM snapshots WHERE tenant = $1 ORDER BY name",
        )
        .bind(tenant)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("name")?,
                    r.try_get("seq")?,
                    r.try_get("created_ns")?,
                ))
            })
            .collect()
    }

    pub async fn delete_snapshot(&self, tenant: &str, name: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM snapshots WHERE tenant = $1 AND name = $2")
            .bind(tenant)
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Everything a tenant can query as of commit `seq`, read in one transaction.
    pub async fn tenant_view(&self, tenant: &str, seq: i64) -> Result<TenantView> {
        let mut tx = self.pool.begin().await?;
        let recordings = sqlx::query(AssertSqlSafe(format!(
            "SELECT {RECORDING_COLUMNS} FROM recordings WHERE tenant = $1 AND commit_seq <= $2 \
             ORDER BY recording_id"
        )))
        .bind(tenant)
        .bind(seq)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(recording_from)
        .collect::<Result<Vec<_>>>()?;
        let channels = sqlx::query(AssertSqlSafe(format!(
            "SELECT c.recording_id, {} FROM channels c JOIN recordings r ON r.tenant = c.tenant \
             AND r.recording_id = c.recording_id WHERE c.tenant = $1 AND r.commit_seq <= $2 \
             ORDER BY c.recording_id, c.channel_index",
            CHANNEL_COLUMNS
                .split(", ")
                .map(|c| format!("c.{}", c.trim()))
                .collect::<Vec<_>>()
                .join(", ")
        )))
        .bind(tenant)
        .bind(seq)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| Ok((r.try_get("recording_id")?, channel_from(r)?)))
        .collect::<Result<Vec<_>>>()?;
        let segments = sqlx::query(
            "SELECT s.recording_id, s.segment_index, s.first_record, s.num_records, s.onset_s \
             FROM segments s JOIN recordings r ON r.tenant = s.tenant AND r.recording_id = \
             s.recording_id WHERE s.tenant = $1 AND r.commit_seq <= $2 \
             ORDER BY s.recording_id, s.segment_index",
        )
        .bind(tenant)
        .bind(seq)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| {
            Ok((
                r.try_get("recording_id")?,
                SegmentRow {
                    segment_index: r.try_get("segment_index")?,
                    first_record: r.try_get("first_record")?,
                    num_records: r.try_get("num_records")?,
                    onset_s: r.try_get("onset_s")?,
                },
            ))
        })
        .collect::<Result<Vec<_>>>()?;
        let files = sqlx::query(
            "SELECT recording_id, path, kind, channel_index, first_row, num_rows, size_bytes \
             FROM data_files WHERE tenant = $1 AND commit_seq <= $2 \
             AND (removed_seq IS NULL OR removed_seq > $2) \
             ORDER BY recording_id, kind, channel_index, first_row, path",
        )
        .bind(tenant)
        .bind(seq)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| Ok((r.try_get("recording_id")?, file_from(r)?)))
        .collect::<Result<Vec<_>>>()?;
        tx.commit().await?;
        Ok(TenantView {
            seq,
            recordings,
            channels,
            segments,
            files,
        })
    }

    /// Commits a live stream and its recording (no files yet), in one transaction. A stream
    /// of that id that exists already is returned instead.
    pub async fn create_live_stream(
        &self,
        rec: &NewRecording,
        stream: &LiveStreamRow,
    ) -> Result<LiveOpen> {
        let mut tx = self.pool.begin().await?;
        // The counter first: see append_events.
        let seq = next_seq(&mut tx).await?;
        let insert = sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO live_streams ({LIVE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
        )))
        .bind(&stream.tenant)
        .bind(&stream.stream_id)
        .bind(&stream.recording_id)
        .bind(&stream.owner)
        .bind(&stream.layout_hex)
        .bind(stream.flushed_seq)
        .bind(stream.flushed_samples)
        .bind(i64::from(stream.closed))
        .bind(stream.created_ns)
        .execute(&mut *tx)
        .await;
        if let Err(e) = insert {
            tx.rollback().await?;
            if is_unique_violation(&e)
                && let Some(existing) = self.live_stream(&stream.tenant, &stream.stream_id).await?
            {
                return Ok(LiveOpen::Existing(existing));
            }
            return Err(e.into());
        }
        insert_recording(&mut tx, rec, seq).await?;
        tx.commit().await?;
        Ok(LiveOpen::Created)
    }

    /// One live stream of a tenant.
    pub async fn live_stream(
        &self,
        tenant: &str,
        stream_id: &str,
    ) -> Result<Option<LiveStreamRow>> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {LIVE_COLUMNS} FROM live_streams WHERE tenant = $1 AND stream_id = $2"
        )))
        .bind(tenant)
        .bind(stream_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(live_from).transpose()
    }

    /// The streams of every tenant that `owner` takes chunks for and that are not closed:
    /// what a node's write-ahead log replays into.
    pub async fn open_live_streams(&self, owner: &str) -> Result<Vec<LiveStreamRow>> {
        sqlx::query(AssertSqlSafe(format!(
            "SELECT {LIVE_COLUMNS} FROM live_streams WHERE owner = $1 AND closed = 0 \
             ORDER BY tenant, stream_id"
        )))
        .bind(owner)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(live_from)
        .collect()
    }

    /// Commits one flush of a live stream: its files become visible, the recording and its
    /// channels count the samples, and the stream's flushed position moves, in one
    /// transaction. A flush that would move the position back (a retry of one already
    /// committed) changes nothing and returns false.
    pub async fn commit_live_flush(&self, flush: &LiveFlush) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        // The counter first: see append_events.
        let seq = if flush.files.is_empty() {
            None
        } else {
            Some(next_seq(&mut tx).await?)
        };
        let moved = sqlx::query(
            "UPDATE live_streams SET flushed_seq = $1, flushed_samples = $2, closed = $3 \
             WHERE tenant = $4 AND stream_id = $5 AND recording_id = $6 AND flushed_seq <= $1 \
             AND flushed_samples <= $2",
        )
        .bind(flush.flushed_seq)
        .bind(flush.flushed_samples)
        .bind(i64::from(flush.closed))
        .bind(&flush.tenant)
        .bind(&flush.stream_id)
        .bind(&flush.recording_id)
        .execute(&mut *tx)
        .await?;
        if moved.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        if let Some(seq) = seq {
            let bytes: i64 = flush.files.iter().map(|f| f.size_bytes).sum();
            sqlx::query(
                "UPDATE recordings SET num_samples = $1 * num_signals, duration_s = $2, \
                 stored_bytes = stored_bytes + $3 WHERE tenant = $4 AND recording_id = $5",
            )
            .bind(flush.flushed_samples)
            .bind(flush.duration_s)
            .bind(bytes)
            .bind(&flush.tenant)
            .bind(&flush.recording_id)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE channels SET num_samples = $1 WHERE tenant = $2 AND recording_id = $3",
            )
            .bind(flush.flushed_samples)
            .bind(&flush.tenant)
            .bind(&flush.recording_id)
            .execute(&mut *tx)
            .await?;
            for f in &flush.files {
                insert_file(&mut tx, &flush.tenant, &flush.recording_id, f, seq).await?;
            }
        }
        if let Some(write_id) = &flush.write_id {
            clear_write(&mut tx, write_id).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Replaces files of a recording with others holding the same rows (a compaction), in
    /// one commit: views from this commit on read `added`, earlier ones (snapshots) still read
    /// `removed` until [`Catalog::removed_files`] lets them go. The pending write that listed
    /// `added` is cleared. Fails, changing nothing, when a removed file is not current.
    pub async fn replace_files(
        &self,
        tenant: &str,
        recording_id: &str,
        removed: &[DataFileRow],
        added: &[DataFileRow],
        write_id: &str,
        now_ns: i64,
    ) -> Result<i64> {
        let mut tx = self.pool.begin().await?;
        clear_write(&mut tx, write_id).await?;
        let seq = next_seq(&mut tx).await?;
        for f in removed {
            let path = &f.path;
            let done = sqlx::query(
                "UPDATE data_files SET removed_seq = $1, removed_ns = $2 WHERE tenant = $3 \
                 AND recording_id = $4 AND path = $5 AND removed_seq IS NULL",
            )
            .bind(seq)
            .bind(now_ns)
            .bind(tenant)
            .bind(recording_id)
            .bind(path)
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() != 1 {
                tx.rollback().await?;
                return Err(Error::Corrupt(format!(
                    "file {path} of recording {recording_id} is not current; nothing replaced"
                )));
            }
        }
        for f in added {
            insert_file(&mut tx, tenant, recording_id, f, seq).await?;
        }
        let delta: i64 = added.iter().map(|f| f.size_bytes).sum::<i64>()
            - removed.iter().map(|f| f.size_bytes).sum::<i64>();
        sqlx::query(
            "UPDATE recordings SET stored_bytes = stored_bytes + $1 WHERE tenant = $2 \
             AND recording_id = $3",
        )
        .bind(delta)
        .bind(tenant)
        .bind(recording_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(seq)
    }

    /// Files replaced before `before_ns` that no snapshot reads: (tenant, path), at most
    /// `limit`.
    pub async fn removed_files(&self, before_ns: i64, limit: i64) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query(
            "SELECT f.tenant, f.path FROM data_files f WHERE f.removed_ns IS NOT NULL \
             AND f.removed_ns < $1 AND NOT EXISTS (SELECT 1 FROM snapshots s WHERE \
             s.tenant = f.tenant AND s.seq >= f.commit_seq AND s.seq < f.removed_seq) \
             ORDER BY f.removed_ns LIMIT $2",
        )
        .bind(before_ns)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("tenant")?, r.try_get("path")?)))
            .collect()
    }

    /// Forgets a replaced file whose object is deleted.
    pub async fn forget_file(&self, tenant: &str, path: &str) -> Result<()> {
        sqlx::query(
            "DELETE FROM data_files WHERE tenant = $1 AND path = $2 AND removed_seq IS NOT NULL",
        )
        .bind(tenant)
        .bind(path)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Takes the next commit sequence number. The counter row stays locked until the transaction
/// ends, so commits take their numbers in the order they become visible.
async fn next_seq(tx: &mut sqlx::Transaction<'_, sqlx::Any>) -> Result<i64> {
    sqlx::query("UPDATE commit_counter SET seq = seq + 1 WHERE id = 1")
        .execute(&mut **tx)
        .await?;
    let seq: i64 = sqlx::query("SELECT seq FROM commit_counter WHERE id = 1")
        .fetch_one(&mut **tx)
        .await?
        .try_get("seq")?;
    Ok(seq)
}

/// Inserts a recording's row, channels and segments at commit `seq` (files are the caller's).
async fn insert_recording(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    rec: &NewRecording,
    seq: i64,
) -> Result<()> {
    let r = &rec.row;
    let warnings = serde_json::to_string(&r.warnings).map_err(|e| Error::Corrupt(e.to_string()))?;
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO recordings ({RECORDING_COLUMNS}, commit_seq) VALUES ($1, $2, $3, $4, \
             $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, \
             $23, $24, $25, $26, $27, $28, $29)"
    )))
    .bind(&r.tenant)
    .bind(&r.recording_id)
    .bind(&r.source_sha256)
    .bind(&r.subject_pseudonym)
    .bind(&r.session)
    .bind(&r.task)
    .bind(&r.run)
    .bind(&r.acquisition)
    .bind(&r.datatype)
    .bind(&r.format)
    .bind(r.start_time_ns)
    .bind(r.duration_s)
    .bind(r.record_duration_s)
    .bind(&r.record_duration_text)
    .bind(r.num_records)
    .bind(r.source_bytes)
    .bind(r.stored_bytes)
    .bind(&r.sex)
    .bind(r.age_years)
    .bind(r.num_signals)
    .bind(r.num_annotation_signals)
    .bind(r.num_samples)
    .bind(r.num_events)
    .bind(&r.patient_field)
    .bind(&r.recording_field)
    .bind(warnings)
    .bind(&r.sidecar_json)
    .bind(r.ingested_ns)
    .bind(seq)
    .execute(&mut **tx)
    .await?;
    for c in &rec.channels {
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO channels (tenant, recording_id, {CHANNEL_COLUMNS}) VALUES ($1, $2, \
                 $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, \
                 $20, $21)"
        )))
        .bind(&r.tenant)
        .bind(&r.recording_id)
        .bind(c.channel_index)
        .bind(&c.label)
        .bind(&c.channel_type)
        .bind(&c.unit)
        .bind(&c.transducer)
        .bind(&c.prefiltering)
        .bind(&c.reserved)
        .bind(c.sample_rate)
        .bind(c.samples_per_record)
        .bind(c.physical_min)
        .bind(c.physical_max)
        .bind(&c.physical_min_text)
        .bind(&c.physical_max_text)
        .bind(c.digital_min)
        .bind(c.digital_max)
        .bind(c.gain)
        .bind(c.offset)
        .bind(c.num_samples)
        .bind(i64::from(c.is_annotation))
        .execute(&mut **tx)
        .await?;
    }
    for s in &rec.segments {
        sqlx::query(
            "INSERT INTO segments (tenant, recording_id, segment_index, first_record, \
                 num_records, onset_s) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&r.tenant)
        .bind(&r.recording_id)
        .bind(s.segment_index)
        .bind(s.first_record)
        .bind(s.num_records)
        .bind(s.onset_s)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// Clears a pending write in a commit's transaction: the commit's objects are now the
/// catalog's. Fails (and the transaction rolls back when dropped) if garbage collection took
/// the write meanwhile.
async fn clear_write(tx: &mut sqlx::Transaction<'_, sqlx::Any>, write_id: &str) -> Result<()> {
    let cleared = sqlx::query("DELETE FROM pending_writes WHERE write_id = $1")
        .bind(write_id)
        .execute(&mut **tx)
        .await?;
    if cleared.rows_affected() != 1 {
        return Err(Error::WriteCollected(write_id.to_string()));
    }
    Ok(())
}

async fn insert_file(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    tenant: &str,
    recording_id: &str,
    f: &DataFileRow,
    seq: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO data_files (tenant, recording_id, path, kind, channel_index, first_row, \
         num_rows, size_bytes, commit_seq) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(tenant)
    .bind(recording_id)
    .bind(&f.path)
    .bind(f.kind.as_str())
    .bind(f.channel_index)
    .bind(f.first_row)
    .bind(f.num_rows)
    .bind(f.size_bytes)
    .bind(seq)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn channel_from(r: &AnyRow) -> Result<ChannelRow> {
    Ok(ChannelRow {
        channel_index: r.try_get("channel_index")?,
        label: r.try_get("label")?,
        channel_type: r.try_get("channel_type")?,
        unit: r.try_get("unit")?,
        transducer: r.try_get("transducer")?,
        prefiltering: r.try_get("prefiltering")?,
        reserved: r.try_get("reserved")?,
        sample_rate: r.try_get("sample_rate")?,
        samples_per_record: r.try_get("samples_per_record")?,
        physical_min: r.try_get("physical_min")?,
        physical_max: r.try_get("physical_max")?,
        physical_min_text: r.try_get("physical_min_text")?,
        physical_max_text: r.try_get("physical_max_text")?,
        digital_min: r.try_get("digital_min")?,
        digital_max: r.try_get("digital_max")?,
        gain: r.try_get("gain")?,
        offset: r.try_get("phys_offset")?,
        num_samples: r.try_get("num_samples")?,
        is_annotation: r.try_get::<i64, _>("is_annotation")? != 0,
    })
}

fn live_from(r: &AnyRow) -> Result<LiveStreamRow> {
    Ok(LiveStreamRow {
        tenant: r.try_get("tenant")?,
        stream_id: r.try_get("stream_id")?,
        recording_id: r.try_get("recording_id")?,
        owner: r.try_get("owner")?,
        layout_hex: r.try_get("layout_hex")?,
        flushed_seq: r.try_get("flushed_seq")?,
        flushed_samples: r.try_get("flushed_samples")?,
        closed: r.try_get::<i64, _>("closed")? != 0,
        created_ns: r.try_get("created_ns")?,
    })
}

fn file_from(r: &AnyRow) -> Result<DataFileRow> {
    let kind: String = r.try_get("kind")?;
    Ok(DataFileRow {
        path: r.try_get("path")?,
        kind: FileKind::parse(&kind)
            .ok_or_else(|| Error::Corrupt(format!("file kind {kind:?}")))?,
        channel_index: r.try_get("channel_index")?,
        first_row: r.try_get("first_row")?,
        num_rows: r.try_get("num_rows")?,
        size_bytes: r.try_get("size_bytes")?,
    })
}

fn upload_from(r: &AnyRow) -> Result<UploadRow> {
    Ok(UploadRow {
        tenant: r.try_get("tenant")?,
        upload_id: r.try_get("upload_id")?,
        metadata: r.try_get("metadata")?,
        size_bytes: r.try_get("size_bytes")?,
        created_ns: r.try_get("created_ns")?,
        recording_id: r.try_get("recording_id")?,
    })
}

fn recording_from(r: &AnyRow) -> Result<RecordingRow> {
    let warnings: String = r.try_get("warnings_json")?;
    Ok(RecordingRow {
        tenant: r.try_get("tenant")?,
        recording_id: r.try_get("recording_id")?,
        source_sha256: r.try_get("source_sha256")?,
        subject_pseudonym: r.try_get("subject_pseudonym")?,
        session: r.try_get("session")?,
        task: r.try_get("task")?,
        run: r.try_get("run")?,
        acquisition: r.try_get("acquisition")?,
        datatype: r.try_get("datatype")?,
        format: r.try_get("format")?,
        start_time_ns: r.try_get("start_time_ns")?,
        duration_s: r.try_get("duration_s")?,
        record_duration_s: r.try_get("record_duration_s")?,
        record_duration_text: r.try_get("record_duration_text")?,
        num_records: r.try_get("num_records")?,
        source_bytes: r.try_get("source_bytes")?,
        stored_bytes: r.try_get("stored_bytes")?,
        sex: r.try_get("sex")?,
        age_years: r.try_get("age_years")?,
        num_signals: r.try_get("num_signals")?,
        num_annotation_signals: r.try_get("num_annotation_signals")?,
        num_samples: r.try_get("num_samples")?,
        num_events: r.try_get("num_events")?,
        patient_field: r.try_get("patient_field")?,
        recording_field: r.try_get("recording_field")?,
        warnings: serde_json::from_str(&warnings).map_err(|e| Error::Corrupt(e.to_string()))?,
        sidecar_json: r.try_get("sidecar_json")?,
        ingested_ns: r.try_get("ingested_ns")?,
    })
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.kind() == sqlx::error::ErrorKind::UniqueViolation)
}

/// Adds `mode=rwc` to SQLite URLs and takes our own `schema` parameter off PostgreSQL URLs.
fn normalize(url: &str) -> Result<(String, Dialect, Option<String>)> {
    let bad = |reason: &str| Error::Url {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    if url.starts_with("sqlite:") {
        if url.contains(":memory:") || url.contains("mode=") {
            return Ok((url.to_string(), Dialect::Sqlite, None));
        }
        let sep = if url.contains('?') { '&' } else { '?' };
        return Ok((format!("{url}{sep}mode=rwc"), Dialect::Sqlite, None));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let (base, query) = match url.split_once('?') {
            Some((b, q)) => (b, q),
            None => (url, ""),
        };
        let mut schema = None;
        let mut rest = Vec::new();
        for kv in query.split('&').filter(|s| !s.is_empty()) {
            match kv.split_once('=') {
                Some(("schema", v)) => {
                    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                        return Err(bad("schema must be letters, digits and '_'"));
                    }
                    schema = Some(v.to_string());
                }
                _ => rest.push(kv),
            }
        }
        let url = if rest.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", rest.join("&"))
        };
        return Ok((url, Dialect::Postgres, schema));
    }
    Err(bad("use sqlite://PATH or postgres://..."))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_urls() {
        assert_eq!(
            normalize("sqlite:///tmp/c.db").unwrap(),
            (
                "sqlite:///tmp/c.db?mode=rwc".to_string(),
                Dialect::Sqlite,
                None
            )
        );
        assert_eq!(
            normalize("postgres://u@h/db?schema=t1&sslmode=disable").unwrap(),
            (
                "postgres://u@h/db?sslmode=disable".to_string(),
                Dialect::Postgres,
                Some("t1".to_string())
            )
        );
        assert!(normalize("postgres://u@h/db?schema=a;drop").is_err());
        assert!(normalize("mysql://x").is_err());
    }
}
