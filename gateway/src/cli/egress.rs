//! `ghgate egress`: what egress control recorded, as an allow-list.
//!
//! `baseline` reads the store (never the kernel) and prints the `[egress]` allow-list that the
//! recorded traffic implies, as TOML to paste into the config: names where the gateway's
//! resolver knew them, else the addresses themselves. It never widens a destination beyond what
//! was seen (one address is a /32 or /128, never its network).
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    io::Write as _,
    net::{IpAddr, SocketAddr},
    process::ExitCode,
};

use crate::record::{
    index::{Index, index_path},
    model::{self, EgressSeen, Micros},
    store,
};

use super::{
    ConfigArg,
    sessions::{format_time, parse_when},
};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Print the allow-list (TOML, ready to paste) that the recorded egress implies.
    Baseline {
        #[command(flatten)]
        config: ConfigArg,
        /// Only traffic since this time: RFC 3339 or an age ("2h", "7d").
        #[arg(long, default_value = "7d")]
        since: String,
    },
    /// List the connections egress control let through, oldest first (refusals are in
    /// `ghgate sessions refusals`).
    List {
        #[command(flatten)]
        config: ConfigArg,
        /// Only since this time: RFC 3339 or an age ("2h", "7d").
        #[arg(long, default_value = "7d")]
        since: String,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// The egress records since `since`, in store order.
fn seen_since(config: &ConfigArg, since: &str) -> anyhow::Result<(Micros, Vec<EgressSeen>)> {
    let since = parse_when(since)?;
    let dir = super::sessions::record_dir(config)?;
    let index = Index::open_read_only(&index_path(&dir))?;
    let mut seen = Vec::new();
    for (segment, offset) in index.records_of_kind("egress", since)? {
        if let (_, model::Record::Egress(e)) = store::read_at(&dir, segment, offset)? {
            seen.push(e);
        }
    }
    Ok((since, seen))
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Command::Baseline { config, since } => {
            let (since, seen) = seen_since(&config, &since)?;
            let mut out = std::io::stdout().lock();
            out.write_all(baseline(&seen, since).as_bytes())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::List { config, since, json } => {
            let (_, seen) = seen_since(&config, &since)?;
            let mut out = std::io::stdout().lock();
            for e in seen {
                if json {
                    writeln!(out, "{}", serde_json::to_string(&e)?)?;
                } else {
                    writeln!(
                        out,
                        "{}  {} {}{}  {} (pid {}, uid {}) ×{}",
                        format_time(e.at),
                        e.transport,
                        e.orig_dst,
                        e.name.map(|n| format!(" name {n}")).unwrap_or_default(),
                        e.comm,
                        e.tgid,
                        e.uid,
                        e.count
                    )?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Everything seen of one destination group.
#[derive(Default)]
struct Seen {
    ports: BTreeSet<u16>,
    count: u64,
    transports: BTreeSet<String>,
    comms: BTreeSet<String>,
}

impl Seen {
    fn add(&mut self, port: u16, e: &EgressSeen) {
        self.ports.insert(port);
        self.count += e.count;
        self.transports.insert(e.transport.as_str().to_owned());
        self.comms.insert(e.comm.clone());
    }

    fn comment(&self) -> String {
        let comms: Vec<&str> = self.comms.iter().map(String::as_str).take(5).collect();
        format!(
            "# seen {} time{} ({}) by {}{}\n",
            self.count,
            if self.count == 1 { "" } else { "s" },
            self.transports.iter().cloned().collect::<Vec<_>>().join(", "),
            comms.join(", "),
            if self.comms.len() > comms.len() {
                ", …"
            } else {
                ""
            }
        )
    }
}

/// The allow-list the records imply. An address that was ever seen under a name is listed by
/// that name, even in records made after its answer was forgotten.
pub fn baseline(records: &[EgressSeen], since: Micros) -> String {
    let mut name_of: BTreeMap<IpAddr, String> = BTreeMap::new();
    for e in records {
        if let (Some(name), Ok(dst)) = (&e.name, e.orig_dst.parse::<SocketAddr>()) {
            name_of.insert(dst.ip().to_canonical(), name.clone());
        }
    }
    let mut by_name: BTreeMap<String, Seen> = BTreeMap::new();
    let mut by_addr: BTreeMap<IpAddr, Seen> = BTreeMap::new();
    for e in records {
        let Ok(dst) = e.orig_dst.parse::<SocketAddr>() else {
            continue;
        };
        let ip = dst.ip().to_canonical();
        match e.name.clone().or_else(|| name_of.get(&ip).cloned()) {
            Some(name) => by_name.entry(name).or_default().add(dst.port(), e),
            None => by_addr.entry(ip).or_default().add(dst.port(), e),
        }
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# ghgate egress baseline: {} destination{} reached since {} ({} record{}).\n\
         # GitHub is always mediated and DNS always answered by the gateway: neither needs listing.",
        by_name.len() + by_addr.len(),
        if by_name.len() + by_addr.len() == 1 {
            ""
        } else {
            "s"
        },
        format_time(since),
        records.len(),
        if records.len() == 1 { "" } else { "s" },
    );
    out.push_str("[egress]\nmode = \"block\"\n");
    for (name, seen) in &by_name {
        out.push('\n');
        out.push_str(&seen.comment());
        let _ = writeln!(
            out,
            "[[egress.allow]]\nhosts = [{}]\nports = {:?}",
            toml_string(name),
            seen.ports.iter().collect::<Vec<_>>()
        );
    }
    for (ip, seen) in &by_addr {
        let net = match ip {
            IpAddr::V4(_) => format!("{ip}/32"),
            IpAddr::V6(_) => format!("{ip}/128"),
        };
        out.push('\n');
        out.push_str(&seen.comment());
        let _ = writeln!(
            out,
            "[[egress.allow]]\ncidrs = [{}]\nports = {:?}",
            toml_string(&net),
            seen.ports.iter().collect::<Vec<_>>()
        );
    }
    out
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

#[cfg(test)]
mod tests {
    use crate::record::model::{SessionId, Transport};

    use super::*;

    fn seen(dst: &str, name: Option<&str>, transport: Transport, comm: &str, count: u64) -> EgressSeen {
        EgressSeen {
            session: SessionId::from("s1".to_owned()),
            at: 1,
            orig_dst: dst.into(),
            transport,
            name: name.map(str::to_owned),
            count,
            tgid: 1,
            uid: 0,
            comm: comm.into(),
        }
    }

    #[test]
    fn names_where_known_else_single_addresses_with_their_ports() {
        let records = [
            seen("127.0.0.5:8080", Some("svc.test"), Transport::Tcp, "curl", 2),
            // Later, the name forgotten: still svc.test.
            seen("127.0.0.5:8443", None, Transport::Tcp, "curl", 1),
            seen("10.1.2.3:5000", None, Transport::Udp, "probe", 3),
            seen("[2001:db8::1]:443", None, Transport::Tcp, "node", 1),
            seen("[::ffff:10.1.2.3]:5000", None, Transport::Udp, "probe", 1),
        ];
        let text = baseline(&records, 0);
        // It is a config section that parses and validates.
        let parsed: toml::Table = toml::from_str(&text).unwrap();
        let egress: crate::egress::EgressConfig = parsed["egress"].clone().try_into().unwrap();
        egress.validate().unwrap();
        assert_eq!(egress.mode, crate::egress::EgressMode::Block);
        let rules: Vec<(Vec<String>, Vec<String>, Vec<u16>)> = egress
            .allow
            .iter()
            .map(|r| {
                (
                    r.hosts.clone(),
                    r.cidrs.iter().map(|c| c.to_string()).collect(),
                    r.ports.clone(),
                )
            })
            .collect();
        assert_eq!(
            rules,
            [
                (vec!["svc.test".to_owned()], vec![], vec![8080, 8443]),
                (vec![], vec!["10.1.2.3/32".to_owned()], vec![5000]),
                (vec![], vec!["2001:db8::1/128".to_owned()], vec![443]),
            ]
        );
        assert!(text.contains("# seen 3 times (tcp) by curl"), "{text}");
        assert!(text.contains("# seen 4 times (udp) by probe"), "{text}");
        assert!(
            text.starts_with("# ghgate egress baseline: 3 destinations"),
            "{text}"
        );
    }

    #[test]
    fn nothing_recorded_is_an_empty_allow_list() {
        let text = baseline(&[], 0);
        let parsed: toml::Table = toml::from_str(&text).unwrap();
        let egress: crate::egress::EgressConfig = parsed["egress"].clone().try_into().unwrap();
        assert!(egress.allow.is_empty());
    }
}
