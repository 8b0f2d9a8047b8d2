//! `net VERB ...`: faults of the simulator's network, aimed at a listener address
//! (`unix:PATH` or `inet:HOST:PORT`): `partition` (nothing moves, new connections hang),
//! `heal` (end a partition or refusal), `drop` (close every connection silently, bytes in
//! flight lost), `reset [after=BYTES]` (reset now, or cut the connection that carries byte
//! BYTES+1 mid-message), `refuse` (new connections fail), and `latency LO..HI`.

use engine::env::net::NetAddr;

use super::outcome::Failure;
use super::syntax::Step;
use super::world::World;
use crate::config::parse_duration;

/// One network step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetStep {
    /// Hold every connection to the address.
    Partition(NetAddr),
    /// End a partition or a refusal.
    Heal(NetAddr),
    /// Close every connection to the address, losing bytes in flight.
    Drop(NetAddr),
    /// Reset connections to the address now, or after this many more bytes.
    Reset(NetAddr, Option<u64>),
    /// Refuse new connections.
    Refuse(NetAddr),
    /// One-way latency range in ns.
    Latency(u64, u64),
}

/// An address as scenarios write it.
pub fn parse_addr(s: &str) -> Result<NetAddr, String> {
    if let Some(path) = s.strip_prefix("unix:") {
        if path.is_empty() {
            return Err("empty unix socket path".into());
        }
        return Ok(NetAddr::Unix(path.to_string()));
    }
    if let Some(rest) = s.strip_prefix("inet:")
        && let Some((host, port)) = rest.rsplit_once(':')
        && let Ok(port) = port.parse::<u16>()
        && !host.is_empty()
    {
        return Ok(NetAddr::Inet {
            host: host.to_string(),
            port,
        });
    }
    Err(format!("bad address '{s}' (unix:PATH or inet:HOST:PORT)"))
}

/// Parse the words after `net`: the error names the index of the bad word.
pub fn parse_net(words: &[String]) -> Result<NetStep, (usize, String)> {
    let verb = words.first().ok_or((0, "'net' needs a verb".to_string()))?;
    if verb == "latency" {
        let v = words
            .get(1)
            .ok_or((1, "'net latency' needs a range".to_string()))?;
        let (a, b) = v.split_once("..").unwrap_or((v, v));
        return match (parse_duration(a), parse_duration(b)) {
            (Some(a), Some(b)) if a <= b => Ok(NetStep::Latency(a, b)),
            _ => Err((1, format!("bad latency range '{v}'"))),
        };
    }
    let addr = words
        .get(1)
        .ok_or((1, format!("'net {verb}' needs an address")))?;
    let addr = parse_addr(addr).map_err(|m| (1, m))?;
    let extra = |n: usize| match words.get(n) {
        Some(w) => Err((n, format!("unexpected '{w}'"))),
        None => Ok(()),
    };
    let step = match verb.as_str() {
        "partition" => NetStep::Partition(addr),
        "heal" => NetStep::Heal(addr),
        "drop" => NetStep::Drop(addr),
        "refuse" => NetStep::Refuse(addr),
        "reset" => {
            let after = match words.get(2).map(|w| w.strip_prefix("after=")) {
                None => None,
                Some(Some(n)) => Some(
                    n.parse()
                        .map_err(|_| (2, format!("bad byte count '{n}'")))?,
                ),
                Some(None) => return Err((2, format!("unexpected '{}'", words[2]))),
            };
            extra(3)?;
            return Ok(NetStep::Reset(addr, after));
        }
        other => return Err((0, format!("unknown net verb '{other}'"))),
    };
    extra(2)?;
    Ok(step)
}

impl World<'_> {
    /// Run a `net` step.
    pub(super) fn net_step(&mut self, step: &Step, net: &NetStep) -> Result<(), Failure> {
        let n = self.sim.net();
        let note = match net {
            NetStep::Partition(a) => {
                n.partition(a);
                format!("{} ({} connections held)", step.text, n.connections(a))
            }
            NetStep::Heal(a) => {
                n.heal(a);
                step.text.clone()
            }
            NetStep::Drop(a) => format!("{} ({} connections dropped)", step.text, n.drop_links(a)),
            NetStep::Reset(a, None) => {
                format!("{} ({} connections reset)", step.text, n.reset_now(a))
            }
            NetStep::Reset(a, Some(bytes)) => {
                n.reset_after(a, *bytes);
                step.text.clone()
            }
            NetStep::Refuse(a) => {
                n.refuse(a);
                step.text.clone()
            }
            NetStep::Latency(lo, hi) => {
                n.set_latency(*lo, *hi);
                step.text.clone()
            }
        };
        self.note(&note);
        Ok(())
    }
}
