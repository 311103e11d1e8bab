//! The catalog's tables. One statement list serves SQLite and PostgreSQL; the few types that
//! differ are spelled per dialect. Every integer is BIGINT so that both drivers decode i64.

use crate::catalog::Dialect;

/// Statements of each schema version, applied in order once.
pub(crate) fn migrations(dialect: Dialect) -> Vec<Vec<String>> {
    let double = match dialect {
        Dialect::Sqlite => "REAL",
        Dialect::Postgres => "DOUBLE PRECISION",
    };
    let v1 = [
        "CREATE TABLE IF NOT EXISTS tenant_keys (
            tenant TEXT PRIMARY KEY,
            key_hex TEXT NOT NULL,
            created_ns BIGINT NOT NULL
        )"
        .to_string(),
        "CREATE TABLE IF NOT EXISTS uploads (
            tenant TEXT NOT NULL,
            upload_id TEXT NOT NULL,
            metadata TEXT NOT NULL,
            size_bytes BIGINT NOT NULL,
            created_ns BIGINT NOT NULL,
            updated_ns BIGINT NOT NULL,
            recording_id TEXT,
            PRIMARY KEY (tenant, upload_id)
        )"
        .to_string(),
        "CREATE TABLE IF NOT EXISTS pending_writes (
            write_id TEXT PRIMARY KEY,
            tenant TEXT NOT NULL,
            prefixes_json TEXT NOT NULL,
            created_ns BIGINT NOT NULL
        )"
        .to_string(),
        format!(
            "CREATE TABLE IF NOT EXISTS recordings (
            tenant TEXT NOT NULL,
            recording_id TEXT NOT NULL,
            source_sha256 TEXT NOT NULL,
            subject_pseudonym TEXT NOT NULL,
            session TEXT,
            task TEXT,
            run TEXT,
            acquisition TEXT,
            datatype TEXT,
            format TEXT NOT NULL,
            start_time_ns BIGINT,
            duration_s {double} NOT NULL,
            record_duration_s {double} NOT NULL,
            record_duration_text TEXT NOT NULL,
            num_records BIGINT NOT NULL,
            source_bytes BIGINT NOT NULL,
            stored_bytes BIGINT NOT NULL,
            sex TEXT,
            age_years BIGINT,
            num_signals BIGINT NOT NULL,
            num_annotation_signals BIGINT NOT NULL,
            num_samples BIGINT NOT NULL,
            num_events BIGINT NOT NULL,
            patient_field TEXT NOT NULL,
            recording_field TEXT NOT NULL,
            warnings_json TEXT NOT NULL,
            sidecar_json TEXT,
            ingested_ns BIGINT NOT NULL,
            PRIMARY KEY (tenant, recording_id),
            UNIQUE (tenant, source_sha256)
        )"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS channels (
            tenant TEXT NOT NULL,
            recording_id TEXT NOT NULL,
            channel_index BIGINT NOT NULL,
            label TEXT NOT NULL,
            channel_type TEXT NOT NULL,
            unit TEXT NOT NULL,
            transducer TEXT NOT NULL,
            prefiltering TEXT NOT NULL,
            reserved TEXT NOT NULL,
            sample_rate {double} NOT NULL,
            samples_per_record BIGINT NOT NULL,
            physical_min {double} NOT NULL,
            physical_max {double} NOT NULL,
            physical_min_text TEXT NOT NULL,
            physical_max_text TEXT NOT NULL,
            digital_min BIGINT NOT NULL,
            digital_max BIGINT NOT NULL,
            gain {double} NOT NULL,
            phys_offset {double} NOT NULL,
            num_samples BIGINT NOT NULL,
            is_annotation BIGINT NOT NULL,
            PRIMARY KEY (tenant, recording_id, channel_index)
        )"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS segments (
            tenant TEXT NOT NULL,
            recording_id TEXT NOT NULL,
            segment_index BIGINT NOT NULL,
            first_record BIGINT NOT NULL,
            num_records BIGINT NOT NULL,
            onset_s {double} NOT NULL,
            PRIMARY KEY (tenant, recording_id, segment_index)
        )"
        ),
        "CREATE TABLE IF NOT EXISTS data_files (
            tenant TEXT NOT NULL,
            recording_id TEXT NOT NULL,
            path TEXT NOT NULL,
            kind TEXT NOT NULL,
            channel_index BIGINT,
            first_row BIGINT NOT NULL,
            num_rows BIGINT NOT NULL,
            size_bytes BIGINT NOT NULL,
            PRIMARY KEY (tenant, path)
        )"
        .to_string(),
        "CREATE INDEX IF NOT EXISTS data_files_by_recording
            ON data_files (tenant, recording_id, kind)"
            .to_string(),
        "CREATE TABLE IF NOT EXISTS event_appends (
            tenant TEXT NOT NULL,
            recording_id TEXT NOT NULL,
            idempotency_key TEXT NOT NULL,
            num_events BIGINT NOT NULL,
            PRIMARY KEY (tenant, recording_id, idempotency_key)
        )"
        .to_string(),
        "CREATE TABLE IF NOT EXISTS participants (
            tenant TEXT NOT NULL,
            subject_pseudonym TEXT NOT NULL,
            dataset TEXT NOT NULL,
            attributes_json TEXT NOT NULL,
            updated_ns BIGINT NOT NULL,
            PRIMARY KEY (tenant, subject_pseudonym)
        )"
        .to_string(),
    ];
    // v2: a commit sequence, so that a query reads one consistent snapshot and a named
    // snapshot keeps answering the same after later ingest. One counter row, bumped inside
    // each commit's transaction, orders commits as they become visible (a database sequence
    // would not: a later commit may take a lower number).
    let v2 = [
        "CREATE TABLE IF NOT EXISTS commit_counter (id BIGINT PRIMARY KEY, seq BIGINT NOT NULL)"
            .to_string(),
        "INSERT INTO commit_counter (id, seq) VALUES (1, 0)".to_string(),
        "ALTER TABLE recordings ADD COLUMN commit_seq BIGINT NOT NULL DEFAULT 0".to_string(),
        "ALTER TABLE data_files ADD COLUMN commit_seq BIGINT NOT NULL DEFAULT 0".to_string(),
        "CREATE TABLE IF NOT EXISTS participant_versions (
            tenant TEXT NOT NULL,
            subject_pseudonym TEXT NOT NULL,
            commit_seq BIGINT NOT NULL,
            dataset TEXT NOT NULL,
            attributes_json TEXT NOT NULL,
            updated_ns BIGINT NOT NULL,
            PRIMARY KEY (tenant, subject_pseudonym, commit_seq)
        )"
        .to_string(),
        "INSERT INTO participant_versions (tenant, subject_pseudonym, commit_seq, dataset, \
         attributes_json, updated_ns) SELECT tenant, subject_pseudonym, 0, dataset, \
         attributes_json, updated_ns FROM participants"
            .to_string(),
        "DROP TABLE participants".to_string(),
        "CREATE TABLE IF NOT EXISTS snapshots (
            tenant TEXT NOT NULL,
            name TEXT NOT NULL,
            seq BIGINT NOT NULL,
            created_ns BIGINT NOT NULL,
            PRIMARY KEY (tenant, name)
        )"
        .to_string(),
        "CREATE INDEX IF NOT EXISTS recordings_by_tenant_seq ON recordings (tenant, commit_seq)"
            .to_string(),
    ];
    // v3: live streams. A stream's recording is committed when the stream opens; each flush
    // of its samples to Parquet commits files and moves `flushed_seq`, the last chunk stored in
    // Parquet, so that a replay of the write-ahead log skips what is already there.
    let v3 = [
        "CREATE TABLE IF NOT EXISTS live_streams (
            tenant TEXT NOT NULL,
            stream_id TEXT NOT NULL,
            recording_id TEXT NOT NULL,
            owner TEXT NOT NULL,
            layout_hex TEXT NOT NULL,
            flushed_seq BIGINT NOT NULL,
            flushed_samples BIGINT NOT NULL,
            closed BIGINT NOT NULL,
            created_ns BIGINT NOT NULL,
            PRIMARY KEY (tenant, stream_id)
        )"
        .to_string(),
        "CREATE INDEX IF NOT EXISTS live_streams_by_owner ON live_streams (owner, closed)"
            .to_string(),
        // Files replaced by a compaction: invisible from `removed_seq` on, deleted once no
        // snapshot reads them.
        "ALTER TABLE data_files ADD COLUMN removed_seq BIGINT".to_string(),
        "ALTER TABLE data_files ADD COLUMN removed_ns BIGINT".to_string(),
    ];
    // v4: the feedback loop's decisions about model versions, with their evidence.
    let v4 = ["CREATE TABLE IF NOT EXISTS model_decisions (
            tenant TEXT NOT NULL,
            commit_seq BIGINT NOT NULL,
            model TEXT NOT NULL,
            version BIGINT NOT NULL,
            parent_version BIGINT,
            action TEXT NOT NULL,
            evidence_json TEXT NOT NULL,
            decided_ns BIGINT NOT NULL,
            PRIMARY KEY (tenant, commit_seq)
        )"
    .to_string()];
    vec![v1.to_vec(), v2.to_vec(), v3.to_vec(), v4.to_vec()]
}
