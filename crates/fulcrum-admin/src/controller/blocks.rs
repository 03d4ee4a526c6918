//! The runtime block list on the control plane: changes through the API (add, remove), the
//! sweep of entries that ended, the state file's copy, and publishing the list to the
//! workers (`fulcrum_proxy::Shared::set_blocks`). The rules of the table itself are
//! `fulcrum_core::acl::BlockTable`'s.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use fulcrum_config::BlockRecord;
use fulcrum_core::acl::{AddError, Block, BlockTable, MAX_BLOCKS, parse_net};
use serde_json::{Value, json};

use super::{ApiError, Controller, StateWrite};
use crate::events::EventKind;

/// Longest `for` a block may be given.
const MAX_FOR: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Longest `reason`, in bytes.
const MAX_REASON: usize = 256;

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The table the state file's entries describe. An entry that does not parse (a file edited
/// by hand) is logged and left out; one that ended while the daemon was down is dropped.
pub(super) fn table_of(records: &[BlockRecord]) -> BlockTable {
    let now = unix_ms();
    let blocks = records.iter().filter_map(|r| match parse_net(&r.cidr) {
        Ok(net) => Some(Block {
            net,
            created_ms: r.created_unix_ms,
            until_ms: r.until_unix_ms,
            reason: r.reason.clone(),
            cut: false,
        }),
        Err(e) => {
            tracing::error!(cidr = %r.cidr, error = %e, "state file: block entry ignored");
            None
        }
    });
    let mut t = BlockTable::new(blocks);
    t.expire(now);
    t
}

pub(super) fn records_of(t: &BlockTable) -> Vec<BlockRecord> {
    t.entries()
        .iter()
        .map(|b| BlockRecord {
            cidr: b.net.to_string(),
            created_unix_ms: b.created_ms,
            until_unix_ms: b.until_ms,
            reason: b.reason.clone(),
        })
        .collect()
}

/// A block as the API shows it.
pub fn block_json(b: &Block, now_unix_ms: u64) -> Value {
    json!({
        "cidr": b.net.to_string(),
        "created_unix_ms": b.created_ms,
        "until_unix_ms": b.until_ms,
        "expires_in_ms": b.until_ms.map(|u| u.saturating_sub(now_unix_ms)),
        "reason": b.reason,
    })
}

/// An address or range as the API and CLI take it.
fn net_of(cidr: &str) -> Result<ipnet::IpNet, ApiError> {
    parse_net(cidr).map_err(|e| ApiError::new(400, format!("cidr: {e}")))
}

impl Controller {
    /// The entries in force now.
    pub fn blocks(&self) -> (Vec<Block>, u64) {
        let now = unix_ms();
        (self.blocks.entries().iter().filter(|b| !b.expired(now)).cloned().collect(), now)
    }

    /// Blocks `cidr` for every frontend, for `duration` or until removed; `cut` also closes
    /// the open connections from it. Blocking a range again replaces its entry. Returns the
    /// entry, whether it replaced one, and the state-file write owed.
    pub fn add_block(
        &mut self,
        cidr: &str,
        duration: Option<Duration>,
        cut: bool,
        reason: Option<String>,
    ) -> Result<(Block, bool, StateWrite), ApiError> {
        let net = net_of(cidr)?;
        if duration.is_some_and(|d| d.is_zero() || d > MAX_FOR) {
            return Err(ApiError::new(400, "for: must be more than 0 and at most 10 years"));
        }
        if reason.as_ref().is_some_and(|r| r.len() > MAX_REASON) {
            return Err(ApiError::new(400, format!("reason: longer than {MAX_REASON} bytes")));
        }
        let now = unix_ms();
        let until_ms = duration.map(|d| now.saturating_add(d.as_millis() as u64));
        let block = Block { net, created_ms: now, until_ms, reason, cut };
        let replaced = match self.blocks.add(block.clone()) {
            Ok(old) => old.is_some(),
            Err(AddError::Full) => {
                return Err(ApiError::new(
                    409,
                    format!(
                        "the block list holds its most entries ({MAX_BLOCKS}): remove some first"
                    ),
                ));
            }
        };
        self.publish_blocks(cut);
        let what = match duration {
            Some(d) => format!("{net} blocked for {}s", d.as_secs()),
            None => format!("{net} blocked until removed"),
        };
        let why = block.reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default();
        let cutting = if cut { " (open connections cut)" } else { "" };
        self.events.push(EventKind::Block, None, None, format!("{what}{cutting}{why}"));
        tracing::info!(
            cidr = %net, until_unix_ms = until_ms, cut, reason = block.reason.as_deref(),
            "address blocked"
        );
        Ok((block, replaced, self.save_blocks()))
    }

    /// Removes the entry of exactly `cidr`.
    pub fn remove_block(&mut self, cidr: &str) -> Result<(Block, StateWrite), ApiError> {
        let net = net_of(cidr)?;
        let Some(old) = self.blocks.remove(&net) else {
            return Err(ApiError::new(404, format!("{net} is not in the block list")));
        };
        self.publish_blocks(false);
        self.events.push(EventKind::Block, None, None, format!("{net} block removed"));
        tracing::info!(cidr = %net, "block removed");
        Ok((old, self.save_blocks()))
    }

    /// Drops the entries that ended (the data path already ignores them).
    fn sweep_blocks(&mut self) -> StateWrite {
        let gone = self.blocks.expire(unix_ms());
        if gone.is_empty() {
            self.publish_expiry();
            return StateWrite(None);
        }
        for b in &gone {
            self.events.push(EventKind::Block, None, None, format!("{} block ended", b.net));
            tracing::info!(cidr = %b.net, "block ended");
        }
        self.publish_blocks(false);
        self.save_blocks()
    }

    /// Hands the table to the workers (`cut`: and closes what it says to cut).
    pub(super) fn publish_blocks(&mut self, cut: bool) {
        self.engine.shared().set_blocks(&self.blocks, cut);
        self.publish_expiry();
    }

    fn publish_expiry(&self) {
        self.block_expiry.store(self.blocks.next_expiry().unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    fn save_blocks(&mut self) -> StateWrite {
        self.overlay.blocks = records_of(&self.blocks);
        self.state_write()
    }
}

/// Takes the entries that ended out of the list and the state file, looking once a second
/// (without the controller's lock unless one is due). Ends with the controller.
pub(super) async fn sweep(controller: Weak<tokio::sync::Mutex<Controller>>, due: Arc<AtomicU64>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if due.load(Ordering::Relaxed) > unix_ms() {
            if controller.strong_count() == 0 {
                return;
            }
            continue;
        }
        let Some(c) = controller.upgrade() else { return };
        let write = c.lock().await.sweep_blocks();
        drop(c);
        // A failed write is logged by `finish`; the next change writes the whole list again.
        let _ = write.finish().await;
    }
}

/// Puts the bans the data path asks for (`[frontend.X.limits] ban`) on the block list, with
/// `cut` (a banned client's open connections close too), as `fulcrum ctl blocks add` would:
/// listed, kept in the state file, ended by the sweep. Ends with the controller.
pub(super) async fn bans(
    controller: Weak<tokio::sync::Mutex<Controller>>,
    engine: Arc<fulcrum_proxy::Shared>,
) {
    loop {
        engine.guard.ban_asked().notified().await;
        let asked = engine.guard.take_bans();
        let Some(c) = controller.upgrade() else { return };
        let mut write = None;
        {
            let mut c = c.lock().await;
            for ban in asked {
                let cidr = ban.cidr.clone();
                // A block of its own that lasts as long (one put by hand) is left as it is.
                let until = unix_ms().saturating_add(ban.duration.as_millis() as u64);
                let (entries, _) = c.blocks();
                if entries
                    .iter()
                    .any(|b| b.net.to_string() == cidr && b.until_ms.is_none_or(|u| u >= until))
                {
                    continue;
                }
                match c.add_block(&ban.cidr, Some(ban.duration), true, Some(ban.reason)) {
                    Ok((_, _, w)) => write = Some(w),
                    Err(e) => tracing::warn!(cidr = %cidr, error = %e.message, "ban not added"),
                }
            }
        }
        drop(c);
        // The last write holds the whole list; a failed one is logged by `finish`.
        if let Some(w) = write {
            let _ = w.finish().await;
        }
    }
}
