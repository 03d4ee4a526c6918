//! fulcrum's control plane: the [`Controller`] that owns the running configuration (config
//! file + runtime overlay), applies changes and reloads to the engine without dropping a
//! connection, keeps the state file, runs health-check tasks; and the admin HTTP API (axum)
//! with Prometheus metrics and its OpenAPI description. Nothing here is on the data path:
//! workers only ever see the snapshots the controller publishes.

mod agent;
mod api;
mod blocks_api;
mod certwatch;
pub mod check;
mod clients_api;
mod controller;
mod dashboard;
pub mod events;
mod metrics;
pub mod notify;
mod openapi;
mod resolver;
mod scale;
mod stall;
mod statefile;

pub use agent::{AgentStats, listen_deep, read_key, serve_agent, start_agent};
pub use api::{AdminServer, serve_admin};
pub use certwatch::start_cert_watch;
pub use controller::{ApiError, Controller, Loaded, ReadView, reload_off_thread};
pub use dashboard::Dashboard;
pub use metrics::render as render_metrics;
pub use openapi::document as openapi_document;
pub use resolver::{ResolveStats, start_resolver};
pub use scale::{ScaleEvent, ScaleLog};
