//! The OpenAPI 3.0 description of the admin API, served at `/api/v1/openapi.json` so outside
//! tools (API fuzzers, clients) can use it. A test walks it against the router.

use serde_json::{Value, json};

fn err(desc: &str) -> Value {
    json!({ "description": desc, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } })
}

fn path_param(name: &str, desc: &str) -> Value {
    json!({ "name": name, "in": "path", "required": true, "description": desc, "schema": { "type": "string" } })
}

pub fn document() -> Value {
    let pool = path_param("pool", "Pool name");
    let address = path_param("address", "Server address as listed, e.g. 127.0.0.1:9004");
    let cidr =
        path_param("cidr", "An address or CIDR range, the slash percent-encoded: 203.0.113.0%2F24");
    let cidr_query = json!({ "name": "cidr", "in": "query", "required": true, "description": "An address or CIDR range", "schema": { "type": "string" } });
    json!({
        "openapi": "3.0.3",
        "info": { "title": "fulcrum admin API", "version": env!("CARGO_PKG_VERSION"),
                  "description": "Runtime control of the fulcrum load balancer. Every /api/ route needs `Authorization: Bearer <token>`." },
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "schemas": {
                "Error": { "type": "object", "required": ["error"], "properties": {
                    "error": { "type": "string" }, "errors": { "type": "array", "items": { "type": "string" } } } },
                "Server": { "type": "object", "properties": {
                    "address": { "type": "string" }, "state": { "type": "string", "enum": ["up", "drain", "maint"] },
                    "health": { "type": "string", "enum": ["up", "down"] }, "ejected": { "type": "boolean" },
                    "weight": { "type": "integer" }, "active_connections": { "type": "integer" },
                    "connections_total": { "type": "integer" }, "connect_failures": { "type": "integer" },
                    "max_connections": { "type": "integer", "nullable": true, "description": "The cap in force: the agent's fresh maxconn:N, else the configured one; null for none" },
                    "configured_max_connections": { "type": "integer", "nullable": true } } },
                "Pool": { "type": "object", "properties": {
                    "name": { "type": "string" }, "algorithm": { "type": "string" },
                    "health_check": { "type": "string", "nullable": true },
                    "queue": { "type": "object", "nullable": true, "description": "null when the pool has no queue", "properties": {
                        "size": { "type": "integer" }, "timeout_ms": { "type": "integer" } } },
                    "queue_length": { "type": "integer", "description": "clients waiting for a server below its cap" },
                    "servers": { "type": "array", "items": { "$ref": "#/components/schemas/Server" } } } },
                "NewServer": { "type": "object", "required": ["address"], "additionalProperties": false, "properties": {
                    "address": { "type": "string", "example": "127.0.0.1:9004" },
                    "weight": { "type": "integer", "minimum": 0, "maximum": 10000, "default": 1 },
                    "max_connections": { "type": "integer", "minimum": 1, "maximum": 10000000, "description": "cap of proxied client connections (none when absent)" } } },
                "ConfigText": { "type": "object", "required": ["config"], "additionalProperties": false, "properties": {
                    "config": { "type": "string", "description": "the whole TOML file; a value reading \"<hidden>\" keeps the running file's value" } } },
                "ServerChange": { "type": "object", "additionalProperties": false, "properties": {
                    "state": { "type": "string", "enum": ["up", "drain", "maint"] },
                    "weight": { "type": "integer", "minimum": 0, "maximum": 10000 } } },
                "Block": { "type": "object", "properties": {
                    "cidr": { "type": "string", "example": "203.0.113.0/24" },
                    "created_unix_ms": { "type": "integer" },
                    "until_unix_ms": { "type": "integer", "nullable": true, "description": "null: until removed" },
                    "expires_in_ms": { "type": "integer", "nullable": true },
                    "reason": { "type": "string", "nullable": true } } },
                "NewBlock": { "type": "object", "required": ["cidr"], "additionalProperties": false, "properties": {
                    "cidr": { "type": "string", "example": "203.0.113.7", "description": "an address or CIDR range" },
                    "for": { "type": "string", "example": "10m", "description": "how long (absent: until removed)" },
                    "cut": { "type": "boolean", "default": false, "description": "also close the open connections and UDP sessions from it" },
                    "reason": { "type": "string", "maxLength": 256 } } }
            }
        },
        "security": [ { "bearer": [] } ],
        "paths": {
            "/api/v1/pools": { "get": { "summary": "Pools, their servers, states, health and counters", "operationId": "listPools",
                "responses": { "200": { "description": "Pools", "content": { "application/json": { "schema": {
                    "type": "object", "properties": { "pools": { "type": "array", "items": { "$ref": "#/components/schemas/Pool" } } } } } } },
                    "401": err("Missing or wrong token") } } },
            "/api/v1/pools/{pool}/servers": { "post": { "summary": "Add a server", "operationId": "addServer",
                "parameters": [pool],
                "requestBody": { "required": true, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/NewServer" } } } },
                "responses": { "201": { "description": "Added" }, "400": err("Invalid request"), "401": err("Missing or wrong token"),
                    "404": err("No such pool"), "409": err("Already in the pool") } } },
            "/api/v1/pools/{pool}/servers/{address}": {
                "delete": { "summary": "Remove a server (its open connections finish)", "operationId": "removeServer",
                    "parameters": [pool, address],
                    "responses": { "200": { "description": "Removed" }, "400": err("Invalid address"), "401": err("Missing or wrong token"), "404": err("No such pool or server") } },
                "patch": { "summary": "Change a server's state (up, drain, maint) or weight", "operationId": "patchServer",
                    "parameters": [pool, address],
                    "requestBody": { "required": true, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/ServerChange" } } } },
                    "responses": { "200": { "description": "Changed" }, "400": err("Invalid request"), "401": err("Missing or wrong token"), "404": err("No such pool or server") } } },
            "/api/v1/reload": { "post": { "summary": "Re-read and apply the config file", "operationId": "reload",
                "responses": { "200": { "description": "Reloaded" }, "400": err("Invalid config: every error listed; the old config keeps serving"),
                    "401": err("Missing or wrong token"), "409": err("No config file") } } },
            "/api/v1/certs": certs(),
            "/api/v1/scale-events": { "get": { "summary": "Scale-out and scale-in signals fired (the last 100)", "operationId": "scaleEvents",
                "responses": { "200": { "description": "Events", "content": { "application/json": { "schema": {
                    "type": "object", "properties": { "events": { "type": "array", "items": { "type": "object", "properties": {
                        "pool": { "type": "string" }, "direction": { "type": "string", "enum": ["scale_out", "scale_in"] },
                        "server": { "type": "string", "nullable": true, "description": "scale_in: the server drained for the command to stop (FULCRUM_SERVER)" },
                        "load": { "type": "number" }, "servers": { "type": "integer" }, "at_unix_ms": { "type": "integer" },
                        "action": { "type": "string" }, "outcome": { "type": "string" } } } } } } } } },
                    "401": err("Missing or wrong token") } } },
            "/api/v1/clients/top": {
                "get": { "summary": "The client addresses holding the most connections and sessions, then the fastest", "operationId": "topClients",
                    "parameters": [
                        { "name": "limit", "in": "query", "required": false, "schema": { "type": "integer", "minimum": 1, "maximum": 1000, "default": 20 } },
                        { "name": "frontend", "in": "query", "required": false, "schema": { "type": "string" } } ],
                    "responses": { "200": { "description": "{clients: [{frontend, address, active, per_second, connections_total, requests_total, refused_total, idle_ms}]}" },
                        "400": err("Bad limit"), "401": err("Missing or wrong token"), "404": err("No such frontend") } } },
            "/api/v1/blocks": {
                "get": { "summary": "The runtime block list (applies to every frontend)", "operationId": "listBlocks",
                    "responses": { "200": { "description": "Blocks", "content": { "application/json": { "schema": {
                        "type": "object", "properties": { "blocks": { "type": "array", "items": { "$ref": "#/components/schemas/Block" } } } } } } },
                        "401": err("Missing or wrong token") } },
                "post": { "summary": "Block an address or range (again: replaces its entry)", "operationId": "addBlock",
                    "requestBody": { "required": true, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/NewBlock" } } } },
                    "responses": { "201": { "description": "Blocked" }, "200": { "description": "Its entry replaced" },
                        "400": err("Invalid request"), "401": err("Missing or wrong token"), "409": err("The block list is full") } },
                "delete": { "summary": "Remove the block of exactly this address or range", "operationId": "removeBlockByQuery",
                    "parameters": [cidr_query],
                    "responses": { "200": { "description": "Removed" }, "400": err("Invalid or missing cidr"), "401": err("Missing or wrong token"), "404": err("Not in the block list") } } },
            "/api/v1/blocks/{cidr}": {
                "delete": { "summary": "Remove the block of exactly this address or range", "operationId": "removeBlock",
                    "parameters": [cidr],
                    "responses": { "200": { "description": "Removed" }, "400": err("Invalid cidr"), "401": err("Missing or wrong token"), "404": err("Not in the block list") } } },
            "/api/v1/overview": { "get": { "summary": "Dashboard: every frontend, pool and server now (state, health, load, connections, rates, errors, latency percentiles)", "operationId": "overview",
                "responses": { "200": { "description": "The live view (docs/dashboard.md)" }, "401": err("Missing or wrong token") } } },
            "/api/v1/history": { "get": { "summary": "Dashboard: history kept in the daemon (the last hour at 1 s, the last day at 1 min)", "operationId": "history",
                "parameters": [
                    { "name": "series", "in": "query", "required": false, "description": "comma-separated: frontend/NAME, pool/NAME, server/POOL/ADDRESS (default: every frontend and pool)", "schema": { "type": "string" } },
                    { "name": "range", "in": "query", "required": false, "schema": { "type": "string", "enum": ["hour", "day"], "default": "hour" } } ],
                "responses": { "200": { "description": "Columns per series" }, "400": err("Bad range or too many series"), "401": err("Missing or wrong token") } } },
            "/api/v1/events": { "get": { "summary": "Recent events: health changes, ejections, reloads, config errors, registrations, server changes, scale signals, blocks", "operationId": "events",
                "parameters": [ { "name": "after", "in": "query", "required": false, "description": "only events with a larger seq", "schema": { "type": "integer" } } ],
                "responses": { "200": { "description": "{events, last}" }, "401": err("Missing or wrong token") } } },
            "/api/v1/session": { "post": { "summary": "Dashboard: a cookie (HttpOnly, SameSite=Strict) that opens the live stream", "operationId": "session",
                "responses": { "204": { "description": "Set-Cookie: fulcrum_stream" }, "401": err("Missing or wrong token") } } },
            "/api/v1/stream": { "get": { "summary": "Dashboard: server-sent `tick` events every second (the cookie of /api/v1/session, or the token)", "operationId": "stream",
                "responses": { "200": { "description": "text/event-stream" }, "401": err("No cookie and no token"), "503": err("Too many streams open") } } },
            "/api/v1/config": { "get": { "summary": "The config file as last loaded (secrets hidden) and the runtime changes over it", "operationId": "config",
                "responses": { "200": { "description": "{path, text, writable, not_writable_reason, runtime_changes}" }, "401": err("Missing or wrong token"), "409": err("No config file") } } },
            "/api/v1/config/check": { "post": { "summary": "Check a config text as `fulcrum check` does", "operationId": "checkConfig",
                "requestBody": { "required": true, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/ConfigText" } } } },
                "responses": { "200": { "description": "{valid: true, warnings}" }, "400": err("Every error"), "401": err("Missing or wrong token"), "409": err("No config file") } } },
            "/api/v1/config/apply": { "post": { "summary": "Check, write the file (the previous kept as .bak) and reload", "operationId": "applyConfig",
                "requestBody": { "required": true, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/ConfigText" } } } },
                "responses": { "200": { "description": "{status, backup, warnings}" }, "400": err("Every error (nothing written), or the reload failed (the previous file put back)"),
                    "401": err("Missing or wrong token"), "409": err("No config file, or it is not writable") } } },
            "/api/v1/openapi.json": { "get": { "summary": "This document", "operationId": "openapi",
                "responses": { "200": { "description": "OpenAPI document" }, "401": err("Missing or wrong token") } } },
            "/healthz": { "get": { "summary": "Liveness", "operationId": "healthz", "security": [],
                "responses": { "200": { "description": "Alive" } } } },
            "/readyz": { "get": { "summary": "Readiness: listeners open", "operationId": "readyz", "security": [],
                "responses": { "200": { "description": "Ready" }, "503": { "description": "Not ready" } } } },
            "/metrics": { "get": { "summary": "Prometheus metrics", "operationId": "metrics", "security": [],
                "responses": { "200": { "description": "OpenMetrics text" } } } }
        }
    })
}

/// `GET /api/v1/certs` (its own `json!`: one document is past the macro's recursion limit).
fn certs() -> Value {
    json!({ "get": { "summary": "Certificates loaded by https frontends, with their validity and reload results", "operationId": "certs",
                "responses": { "200": { "description": "Certificates", "content": { "application/json": { "schema": {
                    "type": "object", "properties": { "frontends": { "type": "array", "items": { "type": "object", "properties": {
                        "frontend": { "type": "string" }, "loaded_at": { "type": "string", "format": "date-time" },
                        "reloads": { "type": "integer" }, "reload_failures": { "type": "integer" },
                        "last_error": { "type": "string", "nullable": true, "description": "why the last attempt to load new files failed (the old certificates keep serving)" },
                        "certificates": { "type": "array", "items": { "type": "object", "properties": {
                            "role": { "type": "string", "enum": ["server", "chain", "client_ca"] }, "file": { "type": "string" },
                            "names": { "type": "array", "items": { "type": "string" } }, "subject": { "type": "string", "description": "RFC 4514" },
                            "not_before": { "type": "string", "format": "date-time" }, "not_after": { "type": "string", "format": "date-time" },
                            "not_after_unix": { "type": "integer" }, "days_left": { "type": "number", "description": "negative once expired" } } } } } } } } } } } },
                    "401": err("Missing or wrong token") } } })
}
