"""The registry's tables, as numbered migrations applied once each (see ``Registry.migrate``).

Statements are portable SQL; ``{identity_pk}`` is the one type the
dialects spell differently. Lineage JSON is TEXT, not JSONB, so that it
reads back exactly as written on both stores.
"""

from __future__ import annotations

# Each entry: (version, description, statements). Append; never edit a released one.
MIGRATIONS: tuple[tuple[int, str, tuple[str, ...]], ...] = (
    (
        1,
        "models, versions with lineage, reference profiles, aliases, tags, champion history, audit log",
        (
            """CREATE TABLE models (
                model_id TEXT PRIMARY KEY,
                last_version BIGINT NOT NULL DEFAULT 0,
                created_at BIGINT NOT NULL,
                created_by TEXT NOT NULL
            )""",
            """CREATE TABLE model_versions (
                model_id TEXT NOT NULL REFERENCES models (model_id),
                version BIGINT NOT NULL,
                status TEXT NOT NULL,
                artifact_sha256 TEXT,
                reference_profile_sha256 TEXT,
                dataset_uri TEXT,
                dataset_sha256 TEXT,
                dataset_rows BIGINT,
                dataset_start_ms BIGINT,
                dataset_end_ms BIGINT,
                code_version TEXT,
                trainer TEXT,
                hyperparameters TEXT NOT NULL,
                train_metrics TEXT NOT NULL,
                holdout_metrics TEXT NOT NULL,
                parent_version BIGINT,
                request_id TEXT,
                evidence TEXT NOT NULL,
                note TEXT,
                created_at BIGINT NOT NULL,
                created_by TEXT NOT NULL,
                PRIMARY KEY (model_id, version)
            )""",
            "CREATE INDEX model_versions_request ON model_versions (model_id, request_id)",
            """CREATE TABLE reference_profiles (
                model_id TEXT NOT NULL,
                version BIGINT NOT NULL,
                sha256 TEXT NOT NULL,
                body TEXT NOT NULL,
                PRIMARY KEY (model_id, version),
                FOREIGN KEY (model_id, version) REFERENCES model_versions (model_id, version)
            )""",
            """CREATE TABLE aliases (
                model_id TEXT NOT NULL,
                alias TEXT NOT NULL,
                version BIGINT NOT NULL,
                updated_at BIGINT NOT NULL,
                PRIMARY KEY (model_id, alias),
                FOREIGN KEY (model_id, version) REFERENCES model_versions (model_id, version)
            )""",
            """CREATE TABLE tags (
                model_id TEXT NOT NULL,
                version BIGINT NOT NULL,
                tag_key TEXT NOT NULL,
                tag_value TEXT NOT NULL,
                PRIMARY KEY (model_id, version, tag_key),
                FOREIGN KEY (model_id, version) REFERENCES model_versions (model_id, version)
            )""",
            """CREATE TABLE champion_history (
                id {identity_pk},
                model_id TEXT NOT NULL,
                version BIGINT NOT NULL,
                promoted_at BIGINT NOT NULL,
                rolled_back_at BIGINT,
                FOREIGN KEY (model_id, version) REFERENCES model_versions (model_id, version)
            )""",
            "CREATE INDEX champion_history_model ON champion_history (model_id, id)",
            """CREATE TABLE audit_log (
                id {identity_pk},
                model_id TEXT NOT NULL,
                version BIGINT,
                action TEXT NOT NULL,
                actor TEXT NOT NULL,
                reason TEXT NOT NULL,
                details TEXT NOT NULL,
                occurred_at BIGINT NOT NULL
            )""",
            "CREATE INDEX audit_log_model ON audit_log (model_id, id)",
        ),
    ),
)
SCHEMA_VERSION = MIGRATIONS[-1][0]
