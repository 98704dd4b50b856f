//! The OpenAPI 3.1 document served at `/openapi.json`, written by hand next to the routes it describes
//! (`rest.rs`); the end-to-end tests check that every route listed here answers.
use serde_json::{json, Value};

/// The document.
pub fn document() -> Value {
    let err = json!({"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    let body = |schema: &str| json!({"required": true, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}});
    let ok = |schema: &str| json!({"description": "ok", "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}});
    let name =
        json!({"name": "name", "in": "path", "required": true, "schema": {"type": "string"}});
    let id = json!({"name": "id", "in": "path", "required": true, "schema": {"type": "string"}});
    let timeout = json!({"name": crate::rest::TIMEOUT_HEADER, "in": "header", "required": false,
        "description": "a deadline in milliseconds, shorter than the server's request_timeout_ms (504 deadline_exceeded past it; an upsert's covers only its work before the log write)",
        "schema": {"type": "integer", "minimum": 0}});
    let op = |summary: &str, params: Vec<&Value>, req: Option<Value>, resp: Value| {
        let mut o = json!({"summary": summary, "parameters": params, "responses": {"200": resp, "default": err.clone()}});
        if let Some(r) = req {
            o["requestBody"] = r;
        }
        o
    };
    let tokens = json!({"type": "array", "description": "one array of `dimension` numbers per token", "items": {"type": "array", "items": {"type": "number"}}});
    json!({
        "openapi": "3.1.0",
        "info": {"title": "chamfer", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Multi-vector (ColBERT-style) retrieval: documents and queries are sets of token vectors, scored by Chamfer / MaxSim. The same operations are served over gRPC (package chamfer.v1)."},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}, "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"}},
            "schemas": {
                "Error": {"type": "object", "required": ["code", "message"], "properties": {"code": {"type": "string"}, "message": {"type": "string"}}},
                "CreateCollection": {"type": "object", "required": ["name", "dimension"], "properties": {
                    "name": {"type": "string", "pattern": "^[A-Za-z0-9_][A-Za-z0-9_-]{0,63}$"},
                    "dimension": {"type": "integer", "minimum": 1},
                    "fde": {"type": "object", "properties": {"num_repetitions": {"type": "integer"}, "num_simhash_projections": {"type": "integer"}, "seed": {"type": "integer"}, "projection_type": {"enum": ["identity", "ams_sketch"]}, "projection_dimension": {"type": "integer"}, "fill_empty_partitions": {"type": "boolean"}, "final_projection_dimension": {"type": "integer"}}},
                    "hnsw": {"type": "object", "properties": {"prefix_repetitions": {"type": "integer"}, "m": {"type": "integer"}, "ef_construction": {"type": "integer"}, "storage": {"enum": ["f16", "f32"]}, "min_docs": {"type": "integer"}}}}},
                "Collection": {"type": "object", "properties": {"name": {"type": "string"}, "dimension": {"type": "integer"}, "fde": {"type": "object"}, "hnsw": {"type": "object"},
                    "stats": {"type": "object", "properties": {"documents": {"type": "integer"}, "shards": {"type": "integer"}, "memtable_documents": {"type": "integer"}, "tombstones": {"type": "integer"}, "wal_bytes": {"type": "integer"}, "last_sequence": {"type": "integer"}}}}},
                "Collections": {"type": "object", "properties": {"collections": {"type": "array", "items": {"$ref": "#/components/schemas/Collection"}},
                    "unavailable": {"type": "array", "description": "collections on disk that cannot serve (damaged), with the reason; describe answers 503 collection_unavailable", "items": {"type": "object", "properties": {"name": {"type": "string"}, "reason": {"type": "string"}}}}}},
                "Document": {"type": "object", "required": ["id", "tokens"], "properties": {"id": {"type": "string"}, "tokens": tokens, "metadata": {"type": "object"}}},
                "Upsert": {"type": "object", "required": ["documents"], "properties": {"documents": {"type": "array", "items": {"$ref": "#/components/schemas/Document"}}}},
                "UpsertResult": {"type": "object", "properties": {"upserted": {"type": "integer"}, "sequence": {"type": "integer"}}},
                "Ids": {"type": "object", "required": ["ids"], "properties": {"ids": {"type": "array", "items": {"type": "string"}}, "with_tokens": {"type": "boolean"}}},
                "Documents": {"type": "object", "properties": {"documents": {"type": "array", "items": {"$ref": "#/components/schemas/Document"}}, "missing": {"type": "array", "items": {"type": "string"}}}},
                "DeleteResult": {"type": "object", "properties": {"deleted": {"type": "integer"}, "sequence": {"type": "integer"}}},
                "Filter": {"type": "object", "properties": {
                    "must": {"type": "array", "items": {"type": "object", "required": ["key"], "properties": {"key": {"type": "string"}, "equals": {}, "any_of": {"type": "array"}}}},
                    "ids": {"type": "array", "items": {"type": "string"}}}},
                "Search": {"type": "object", "required": ["query", "k"], "properties": {
                    "query": tokens, "k": {"type": "integer", "minimum": 1}, "ef": {"type": "integer"}, "candidates": {"type": "integer"}, "rerank": {"type": "integer"},
                    "prefix_repetitions": {"type": "integer"}, "exact": {"type": "boolean"}, "filter": {"$ref": "#/components/schemas/Filter"}, "with_metadata": {"type": "boolean"}}},
                "Hits": {"type": "object", "properties": {"hits": {"type": "array", "items": {"type": "object", "properties": {"id": {"type": "string"}, "score": {"type": "number"}, "metadata": {"type": "object"}}}}}},
                "SearchBatch": {"type": "object", "required": ["searches"], "properties": {"searches": {"type": "array", "items": {"$ref": "#/components/schemas/Search"}}}},
                "SearchBatchResult": {"type": "object", "properties": {"results": {"type": "array", "items": {"$ref": "#/components/schemas/Hits"}}}}
            }
        },
        "security": [{"bearer": []}, {"apiKey": []}],
        "paths": {
            "/healthz": {"get": {"summary": "liveness (no API key)", "security": [], "responses": {"200": {"description": "ok"}}}},
            "/readyz": {"get": {"summary": "readiness (no API key): 503 while collections open, during shutdown or while the disk is full; the body names the reason and lists unavailable collections", "security": [], "responses": {"200": {"description": "ready"}, "503": {"description": "not ready (body: status, reason, unavailable_collections, storage_full)"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text exposition"}}}},
            "/v1/collections": {
                "post": op("create a collection", vec![], Some(body("CreateCollection")), ok("Collection")),
                "get": op("list collections", vec![], None, ok("Collections"))},
            "/v1/collections/{name}": {
                "get": op("describe a collection", vec![&name], None, ok("Collection")),
                "delete": op("drop a collection", vec![&name], None, json!({"description": "dropped"}))},
            "/v1/collections/{name}/flush": {"post": op("flush the memtable into a shard now", vec![&name], None, ok("Collection"))},
            "/v1/collections/{name}/compact": {"post": op("merge shards, dropping deleted documents", vec![&name], None, ok("Collection"))},
            "/v1/collections/{name}/documents": {"post": op("upsert a batch (durable when answered)", vec![&name, &timeout], Some(body("Upsert")), ok("UpsertResult"))},
            "/v1/collections/{name}/documents/get": {"post": op("get documents by id", vec![&name, &timeout], Some(body("Ids")), ok("Documents"))},
            "/v1/collections/{name}/documents/delete": {"post": op("delete documents by id", vec![&name], Some(body("Ids")), ok("DeleteResult"))},
            "/v1/collections/{name}/documents/{id}": {
                "get": op("get one document (with tokens)", vec![&name, &id, &timeout], None, ok("Document")),
                "delete": op("delete one document", vec![&name, &id], None, ok("DeleteResult"))},
            "/v1/collections/{name}/search": {"post": op("search", vec![&name, &timeout], Some(body("Search")), ok("Hits"))},
            "/v1/collections/{name}/search/batch": {"post": op("several searches on one snapshot", vec![&name, &timeout], Some(body("SearchBatch")), ok("SearchBatchResult"))}
        }
    })
}
