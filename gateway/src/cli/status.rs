//! `ghgate status`: what the kernel holds right now, read from the pinned maps and links.
use std::process::ExitCode;

use serde_json::json;

use super::ConfigArg;
use crate::redirect::{self, Maps, Pins, cgroup};

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
    if pins.maps_dir().exists() {
        let maps = Maps::open(&pins)?;
        let kcfg = maps.config()?;
        let alive =
            kcfg.gateway_tgid != 0 && std::path::Path::new(&format!("/proc/{}", kcfg.gateway_tgid)).exists();
        let entries: Vec<String> = maps.entries()?.iter().map(|e| e.to_string()).collect();
        let counters: serde_json::Map<String, serde_json::Value> = maps
            .counters()?
            .into_iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        report["gateway"] = json!({
            "tgid": kcfg.gateway_tgid,
            "running": alive,
            "on_gateway_down": if kcfg.on_gateway_down == gateway_common::ON_DOWN_BYPASS { "bypass" } else { "refuse" },
        });
        report["intercept"] = json!(entries);
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
    }
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
            g["tgid"],
            if g["running"] == true {
                "running"
            } else {
                "not running"
            },
            g["on_gateway_down"].as_str().unwrap_or("?")
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
