"""Contracts that outlive any one process: Avro schemas and ClickHouse DDL."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent
AVRO_DIR = ROOT / "avro"
CLICKHOUSE_DIR = ROOT / "clickhouse"
QUERIES_DIR = CLICKHOUSE_DIR / "queries"
