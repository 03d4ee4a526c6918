//! fulcrum's configuration: the TOML file format, parsed into a validated model with every
//! error located (file, line, column, key path). This crate owns the meaning of every config
//! key and its default; docs/config.md documents the same keys and must agree with it.
//! It does no I/O besides what its caller hands it, with two exceptions: [`load_file`] reads
//! the file, and the parser reads the access-list files a frontend names (`allow_file`,
//! `deny_file`), so they are checked and loaded with the config. Host names in server
//! addresses are kept as names for the data plane to resolve.

mod addr;
mod error;
mod model;
mod overlay;
mod parse;
pub mod redact;

pub use addr::{ListenAddr, ServerAddr, parse_dest, parse_listen};
pub use error::{ConfigError, Errors, io_reason};
pub use model::*;
pub use overlay::{BlockRecord, ChangeError, Overlay, PoolOverlay, ServerOverride, StateFileError};
pub use parse::{parse_duration, parse_str};

use std::path::Path;

/// Reads and validates the configuration file at `path`.
pub fn load_file(path: &Path) -> Result<Config, Errors> {
    let file = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => parse_str(&text, &file),
        Err(e) => Err(Errors(vec![ConfigError {
            file,
            line: 0,
            column: 0,
            key: String::new(),
            message: format!("cannot read file: {}", error::io_reason(&e)),
        }])),
    }
}
