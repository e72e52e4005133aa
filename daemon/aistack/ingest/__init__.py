"""`aistack ingest`: embed the documents of a JSONL file and upsert them into a collection."""
