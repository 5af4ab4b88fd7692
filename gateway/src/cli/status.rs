//! `ghgate status`: what the kernel holds right now, read from the pinned maps and links.
use std::process::ExitCode;

use serde_json::json;

use super::ConfigArg;
use crate::redirect::{self, Maps, Pins, cgroup, intercept::Action, watch};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    config: ConfigArg,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = args.config.load()?;
    redirect::check_privileges("ghgate status")?;
    let pins = Pins::new(&config.redirect.pin_dir);
    let cgroup_dir = cgroup::target_dir(&config.redirect.cgroup)?;
    let links: Vec<String> = pins
        .links()
        .into_iter()
        .map(|(_, p)| p.display().to_string())
        .collect();
    let attached = pins.attached();
    let mut report = json!({
        "pin_dir": pins.root(),
        "cgroup": cgroup_dir,
        "attached": attached,
        "links": links,
    });
    let state = watch::load(&config.state_dir);
    if pins.maps_dir().exists() {
        let maps = Maps::open(&pins)?;
        let kcfg = maps.config()?;
        // The gateway beats in its state file every couple of seconds while it runs.
        let pid = state.as_ref().map(|s| s.pid).unwrap_or(0);
        let alive = state.as_ref().is_some_and(|s| {
            s.stopped_at.is_none()
                && std::path::Path::new(&format!("/proc/{}", s.pid)).exists()
                && crate::record::model::now_micros().saturating_sub(s.alive_at)
                    < 4 * watch::BEAT.as_micros() as u64
        });
        let entries: Vec<String> = maps
            .entries()?
            .iter()
            .map(|(e, a)| match a {
                Action::Redirect => e.to_string(),
                Action::Pass => format!("{e} pass"),
            })
            .collect();
        let guarded: Vec<String> = maps.guards()?.iter().map(|n| n.to_string()).collect();
        let counters: serde_json::Map<String, serde_json::Value> = maps
            .counters()?
            .into_iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        report["gateway"] = json!({
            "pid": pid,
            "running": alive,
            "on_gateway_down": if kcfg.on_gateway_down == gateway_common::ON_DOWN_BYPASS { "bypass" } else { "refuse" },
        });
        report["intercept"] = json!(entries);
        report["guarded"] = json!(guarded);
        let (by_cookie, by_client) = maps.tracked()?;
        report["tracked"] = json!({ "open_redirected": by_cookie, "awaiting_accept": by_client });
        report["counters"] = json!(counters);
    }
    // The running gateway's own counters (what it masked), as it last wrote them.
    let metrics = std::fs::read_to_string(config.state_dir.join(super::run::METRICS_FILE))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok());
    if let Some(m) = &metrics {
        report["masked"] = m["masked"].clone();
        report["github_ranges"] = m["github_ranges"].clone();
    }
    let gaps: Vec<&crate::record::model::EnforcementGap> = state.iter().flat_map(|s| s.gaps.iter()).collect();
    report["enforcement_gaps"] = json!(
        gaps.iter()
            .map(|g| json!({
                "kind": g.kind,
                "since": crate::record::model::rfc3339(g.since),
                "until": crate::record::model::rfc3339(g.until),
                "span": watch::span(g),
                "lost_mediation": watch::lost_mediation(g),
                "refused": g.refused,
                "bypassed": g.bypassed,
                "detail": g.detail,
            }))
            .collect::<Vec<_>>()
    );
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("pin dir:   {}", pins.root().display());
    println!("cgroup:    {}", cgroup_dir.display());
    println!("attached:  {}", if attached { "yes" } else { "no" });
    for l in &links {
        println!("  link     {l}");
    }
    if let Some(g) = report.get("gateway") {
        println!(
            "gateway:   pid {} ({}), on_gateway_down = {}",
            g["pid"],
            if g["running"] == true {
                "running"
            } else {
                "not running"
            },
            g["on_gateway_down"].as_str().unwrap_or("?")
        );
        if let Some(r) = report.get("github_ranges").filter(|r| !r.is_null()) {
            println!(
                "github ranges: {} prefixes, {} of {}{}",
                r["prefixes"],
                r["source"].as_str().unwrap_or("?"),
                r["as_of"].as_str().unwrap_or("unknown date"),
                r["last_refresh_error"]
                    .as_str()
                    .map(|e| format!(" (last refresh failed: {e})"))
                    .unwrap_or_default()
            );
        }
        println!(
            "guarded:   {} prefixes (every port but the intercepted and allowed ones refused)",
            report["guarded"].as_array().map_or(0, |g| g.len())
        );
        println!("intercept:");
        for e in report["intercept"].as_array().into_iter().flatten() {
            println!("  {}", e.as_str().unwrap_or_default());
        }
        println!(
            "tracked:   {} open redirected connections, {} awaiting accept",
            report["tracked"]["open_redirected"], report["tracked"]["awaiting_accept"]
        );
        println!("counters:");
        for (k, v) in report["counters"].as_object().into_iter().flatten() {
            println!("  {k:<24} {v}");
        }
    }
    for g in report["enforcement_gaps"].as_array().into_iter().flatten() {
        println!(
            "enforcement gap: {} from {} to {} ({}){}: {}",
            g["kind"].as_str().unwrap_or("?"),
            g["since"].as_str().unwrap_or("?"),
            g["until"].as_str().unwrap_or("?"),
            g["span"].as_str().unwrap_or("?"),
            if g["lost_mediation"] == true {
                ", mediation LOST"
            } else {
                ""
            },
            g["detail"].as_str().unwrap_or("")
        );
    }
    if let Some(masked) = report.get("masked").and_then(|m| m.as_array()) {
        println!("masked since the gateway started:");
        for m in masked {
            println!(
                "  {:<28} {:<20} {}",
                m["rule"].as_str().unwrap_or("?"),
                m["place"].as_str().unwrap_or("?"),
                m["count"]
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
