//! `fulcrum ctl`: a client for the admin API, so operators never need curl. Prints what the
//! API answered in a readable form; exit 0 on success, 1 when the API refused or could not be
//! reached, 2 on usage errors.

use std::time::Duration;

use serde_json::{Value, json};

use crate::cli::{BlocksCommand, CtlArgs, CtlCommand, ServersCommand};
use crate::client::{Api, enc, server_path};
use crate::run::Failure;

pub fn run(args: CtlArgs) -> Result<(), Failure> {
    let api = Api::new(&args.api, Duration::from_secs(30))?;
    match args.command {
        CtlCommand::Reload => {
            api.call("POST", "/api/v1/reload", None)?;
            println!("reloaded");
        }
        CtlCommand::Servers(cmd) => servers(&api, cmd)?,
        CtlCommand::Blocks(cmd) => blocks(&api, cmd)?,
        CtlCommand::Certs => certs(&api)?,
        CtlCommand::TopClients { limit, frontend } => top_clients(&api, limit, frontend)?,
    }
    Ok(())
}

fn top_clients(api: &Api, limit: usize, frontend: Option<String>) -> Result<(), Failure> {
    let mut path = format!("/api/v1/clients/top?limit={limit}");
    if let Some(f) = frontend {
        // Frontend names are letters, digits, '-' and '_': nothing to escape in a query.
        if f.is_empty() || !f.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Err(Failure::Config(format!("--frontend {f:?}: not a frontend name")));
        }
        path.push_str("&frontend=");
        path.push_str(&f);
    }
    let v = api.call("GET", &path, None)?;
    let rows = v["clients"].as_array().cloned().unwrap_or_default();
    if rows.is_empty() {
        println!("no clients seen");
        return Ok(());
    }
    println!(
        "{:<12} {:<40} {:>7} {:>7} {:>12} {:>10} {:>9}",
        "FRONTEND", "ADDRESS", "ACTIVE", "PER S", "CONNECTIONS", "REQUESTS", "REFUSED"
    );
    for c in &rows {
        println!(
            "{:<12} {:<40} {:>7} {:>7} {:>12} {:>10} {:>9}",
            c["frontend"].as_str().unwrap_or(""),
            c["address"].as_str().unwrap_or(""),
            c["active"].as_u64().unwrap_or(0),
            c["per_second"].as_u64().unwrap_or(0),
            c["connections_total"].as_u64().unwrap_or(0),
            c["requests_total"].as_u64().unwrap_or(0),
            c["refused_total"].as_u64().unwrap_or(0),
        );
    }
    Ok(())
}

fn certs(api: &Api) -> Result<(), Failure> {
    let v = api.call("GET", "/api/v1/certs", None)?;
    let fronts = v["frontends"].as_array().cloned().unwrap_or_default();
    if fronts.is_empty() {
        println!("no https frontend");
        return Ok(());
    }
    println!(
        "{:<12} {:<9} {:<20} {:>9}  {:<28} FILE",
        "FRONTEND", "ROLE", "NOT AFTER", "DAYS LEFT", "NAMES"
    );
    let mut failures = Vec::new();
    for f in &fronts {
        let name = f["frontend"].as_str().unwrap_or("");
        for c in f["certificates"].as_array().into_iter().flatten() {
            let names: Vec<&str> =
                c["names"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
            // A CA has no DNS names: its subject says what it is.
            let shown = if names.is_empty() {
                c["subject"].as_str().unwrap_or("").to_string()
            } else {
                names.join(",")
            };
            println!(
                "{:<12} {:<9} {:<20} {:>9.1}  {:<28} {}",
                name,
                c["role"].as_str().unwrap_or(""),
                c["not_after"].as_str().unwrap_or(""),
                c["days_left"].as_f64().unwrap_or(0.0),
                shown,
                c["file"].as_str().unwrap_or("")
            );
        }
        if let Some(e) = f["last_error"].as_str() {
            failures.push(format!("{name}: the last certificate reload failed: {e}"));
        }
    }
    for line in failures {
        println!("{line}");
    }
    Ok(())
}

fn blocks(api: &Api, cmd: BlocksCommand) -> Result<(), Failure> {
    match cmd {
        BlocksCommand::List => {
            let v = api.call("GET", "/api/v1/blocks", None)?;
            println!("{:<43} {:>12}  REASON", "CIDR", "EXPIRES IN");
            for b in v["blocks"].as_array().into_iter().flatten() {
                let left = match b["expires_in_ms"].as_u64() {
                    Some(ms) => span(ms),
                    None => "never".to_string(),
                };
                println!(
                    "{:<43} {:>12}  {}",
                    b["cidr"].as_str().unwrap_or(""),
                    left,
                    b["reason"].as_str().unwrap_or("")
                );
            }
        }
        BlocksCommand::Add { cidr, duration, cut, reason } => {
            let mut body = json!({ "cidr": cidr, "cut": cut });
            if let Some(d) = &duration {
                body["for"] = json!(d);
            }
            if let Some(r) = &reason {
                body["reason"] = json!(r);
            }
            let v = api.call("POST", "/api/v1/blocks", Some(body))?;
            let net = v["cidr"].as_str().unwrap_or(&cidr);
            let how = match &duration {
                Some(d) => format!("for {d}"),
                None => "until removed".to_string(),
            };
            let cut = if cut { "; its open connections are closed" } else { "" };
            println!("blocked {net} {how}{cut}");
        }
        BlocksCommand::Remove { cidr } => {
            let v = api.call("DELETE", &format!("/api/v1/blocks/{}", enc(&cidr)), None)?;
            println!("unblocked {}", v["cidr"].as_str().unwrap_or(&cidr));
        }
    }
    Ok(())
}

/// A time left, to the second: `9m59s`, `2h0m5s`, `45s`.
fn span(ms: u64) -> String {
    let s = ms.div_ceil(1000);
    match (s / 3600, s / 60 % 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m{s}s"),
        (h, m, s) => format!("{h}h{m}m{s}s"),
    }
}

fn servers(api: &Api, cmd: ServersCommand) -> Result<(), Failure> {
    match cmd {
        ServersCommand::List { pool } => {
            let v = api.call("GET", "/api/v1/pools", None)?;
            println!(
                "{:<12} {:<24} {:<6} {:<6} {:>6} {:>7} {:>10} {:>8}",
                "POOL", "SERVER", "STATE", "HEALTH", "WEIGHT", "ACTIVE", "TOTAL", "FAILURES"
            );
            for p in v["pools"].as_array().into_iter().flatten() {
                let name = p["name"].as_str().unwrap_or("");
                if pool.as_deref().is_some_and(|want| want != name) {
                    continue;
                }
                for s in p["servers"].as_array().into_iter().flatten() {
                    let health = if s["ejected"] == true {
                        "ejected"
                    } else {
                        s["health"].as_str().unwrap_or("")
                    };
                    println!(
                        "{:<12} {:<24} {:<6} {:<6} {:>6} {:>7} {:>10} {:>8}",
                        name,
                        s["address"].as_str().unwrap_or(""),
                        s["state"].as_str().unwrap_or(""),
                        health,
                        s["weight"],
                        s["active_connections"],
                        s["connections_total"],
                        s["connect_failures"]
                    );
                }
            }
        }
        ServersCommand::Add { pool, address, weight } => {
            let body = json!({ "address": address, "weight": weight });
            let url = format!("/api/v1/pools/{}/servers", enc(&pool));
            let v = api.call("POST", &url, Some(body))?;
            println!(
                "added {} to {pool} (weight {weight})",
                v["address"].as_str().unwrap_or(&address)
            );
        }
        ServersCommand::Remove { pool, address } => {
            api.call("DELETE", &server_path(&pool, &address), None)?;
            println!("removed {address} from {pool}; its open connections finish");
        }
        ServersCommand::Drain { pool, address } => {
            api.call("PATCH", &server_path(&pool, &address), Some(json!({ "state": "drain" })))?;
            println!("draining {address} in {pool}: no new connections, open ones finish");
        }
        ServersCommand::Enable { pool, address } => {
            api.call("PATCH", &server_path(&pool, &address), Some(json!({ "state": "up" })))?;
            println!("{address} in {pool} is up");
        }
        ServersCommand::Maint { pool, address } => {
            api.call("PATCH", &server_path(&pool, &address), Some(json!({ "state": "maint" })))?;
            println!("{address} in {pool} is in maintenance");
        }
        ServersCommand::Weight { pool, address, weight } => {
            api.call("PATCH", &server_path(&pool, &address), Some(json!({ "weight": weight })))?;
            println!("{address} in {pool} now has weight {weight}");
        }
    }
    Ok(())
}
