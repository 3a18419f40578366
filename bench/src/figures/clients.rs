//! Real clients: `redis-benchmark` and `pgbench -S` through each path, as
//! ratios to direct in the same run (issue 13's target: at least 0.7,
//! reported, not asserted). Their servers are in [`client_servers`](super::client_servers).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::client_servers::ClientPeers;
use super::progress;
use crate::bench::{Bench, ClientsConfig};
use crate::procs::run_client;
use crate::sys::Res;
use crate::topology::PathKind;

/// requests/s of SET and GET from `redis-benchmark --csv`.
fn parse_redis_csv(text: &str) -> Option<[f64; 2]> {
    let rps = |test: &str| {
        text.lines().find_map(|l| {
            let mut f = l.split(',').map(|c| c.trim_matches('"'));
            (f.next()? == test).then(|| f.next()?.parse::<f64>().ok())?
        })
    };
    Some([rps("SET")?, rps("GET")?])
}

/// The `tps = N (without initial connection time)` of pgbench's report.
fn parse_pgbench_tps(text: &str) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with("tps = "))
        .find(|l| l.contains("without initial connection time"))
        .or_else(|| text.lines().find(|l| l.starts_with("tps = ")))?
        .strip_prefix("tps = ")?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn run_redis(tool: &Path, sock: &Path, c: &ClientsConfig) -> Res<[f64; 2]> {
    let mut redis = Command::new(tool);
    redis
        .arg("-s")
        .arg(sock)
        .args([
            "-c",
            &c.redis_clients.to_string(),
            "-n",
            &c.redis_requests.to_string(),
        ])
        .args(["-t", "set,get", "--csv"]);
    let out = run_client(redis, Duration::from_secs(300), "redis-benchmark")?;
    parse_redis_csv(&out)
        .ok_or_else(|| format!("redis-benchmark printed no SET/GET rates: {out:?}"))
}

fn run_pgbench(tool: &Path, dir: &Path, c: &ClientsConfig) -> Res<f64> {
    let mut pg = Command::new(tool);
    pg.args(["-S", "-n", "-c", &c.pg_clients.to_string(), "-j", "2"])
        .args(["-T", &c.pg_secs.to_string(), "-U", "postgres", "-h"])
        .arg(dir)
        .arg("postgres");
    let out = run_client(pg, Duration::from_secs(c.pg_secs + 120), "pgbench -S")?;
    parse_pgbench_tps(&out).ok_or_else(|| format!("pgbench printed no tps: {out:?}"))
}

impl Bench {
    /// A client failed on `p`: socat's failure is noted (it is the
    /// reference, and its listen backlog of 5 refuses concurrent clients);
    /// any other path's fails the bench.
    fn client_failed(&mut self, p: PathKind, client: &str, e: String) -> Res<()> {
        if p != PathKind::Socat {
            return Err(format!("{}: {e}", p.title()));
        }
        self.notes
            .add(format!("{}, {client}: failed in a run ({e})", p.title()));
        Ok(())
    }

    /// redis-benchmark and pgbench -S on every path.
    pub(crate) fn clients(&mut self, peers: &ClientPeers) -> Res<()> {
        let c = self.cfg.clients;
        let (mut set, mut get, mut tps) = ([None; 3], [None; 3], [None; 3]);
        for p in self.paths.clone() {
            let Some(f) = &peers.paths[p.index()] else {
                continue;
            };
            let i = p.index();
            match run_redis(&peers.tools[0], &f.redis, &c) {
                Ok([s, g]) => (set[i], get[i]) = (Some(s), Some(g)),
                Err(e) => self.client_failed(p, "redis-benchmark", e)?,
            }
            match run_pgbench(&peers.tools[1], &f.pg_dir, &c) {
                Ok(t) => tps[i] = Some(t),
                Err(e) => self.client_failed(p, "pgbench", e)?,
            }
        }
        progress("redis-benchmark GET/s", &get);
        progress("pgbench -S tps", &tps);
        self.res.record("redis_set", set);
        self.res.record("redis_get", get);
        self.res.record("pgbench", tps);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_clients_reports() {
        let csv = "\"test\",\"rps\",\"avg_latency_ms\"\n\"SET\",\"70422.53\",\"0.386\"\n\"GET\",\"79365.08\",\"0.394\"\n";
        assert_eq!(parse_redis_csv(csv), Some([70422.53, 79365.08]));
        assert_eq!(parse_redis_csv("\"SET\",\"1\"\n"), None);
        let pg = "number of transactions actually processed: 1000\n\
                  latency average = 0.5 ms\n\
                  initial connection time = 12.3 ms\n\
                  tps = 31234.567890 (without initial connection time)\n";
        assert_eq!(parse_pgbench_tps(pg), Some(31234.56789));
        assert_eq!(parse_pgbench_tps("no tps here"), None);
    }
}
