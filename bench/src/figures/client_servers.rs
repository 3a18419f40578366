//! The servers of the real-clients figure: a Redis and a PostgreSQL on Unix
//! sockets (PostgreSQL as the `postgres` user, initialised for pgbench), and
//! each path's forwarders to both (sockfwd: one relay with two `--forward`s;
//! socat: two chains each). They start once for all runs.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use crate::procs::{self, run_client, Bins, Daemon};
use crate::sys::{Ctx, Res};
use crate::topology::PathKind;

/// The file name of a PostgreSQL server's socket in its socket directory.
const PG_SOCKET: &str = ".s.PGSQL.5432";
const START_TIMEOUT: Duration = Duration::from_secs(30);

pub fn find_tool(name: &str, package: &str) -> Res<PathBuf> {
    procs::which(name).ok_or_else(|| {
        format!(
            "{name} is not installed (apt-get install {package}); or leave the real clients out: \
             --only with the other figures"
        )
    })
}

/// A PostgreSQL program from `/usr/lib/postgresql/<newest>/bin`.
pub fn pg_bin(name: &str) -> Res<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.flatten()
                .map(|e| e.path().join("bin").join(name))
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found.pop().ok_or_else(|| {
        format!(
            "{name} is not installed (apt-get install postgresql postgresql-client); or leave the real \
             clients out: --only with the other figures"
        )
    })
}

/// A path's forwarders for both servers (none for direct).
pub struct Forwarders {
    _daemons: Vec<Daemon>,
    /// The Redis socket this path reaches it by.
    pub redis: PathBuf,
    /// Directory holding the forwarded `.s.PGSQL.5432`.
    pub pg_dir: PathBuf,
}

/// The servers and every path's forwarders. Field order matters: daemons are
/// killed before the temp dir goes.
pub struct ClientPeers {
    /// Each path's way to both servers, by column.
    pub paths: [Option<Forwarders>; 3],
    _servers: Vec<Daemon>,
    /// redis-benchmark and pgbench.
    pub tools: [PathBuf; 2],
    dir: tempfile::TempDir,
}

fn os(s: impl Into<OsString>) -> OsString {
    s.into()
}

fn mkdir(p: &Path, mode: u32) -> Res<()> {
    std::fs::create_dir_all(p).with_ctx(|| format!("mkdir {}", p.display()))?;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .with_ctx(|| format!("chmod {}", p.display()))
}

fn start_postgres(d: &Path, servers: &mut Vec<Daemon>) -> Res<()> {
    let user = nix::unistd::User::from_name("postgres")
        .ok()
        .flatten()
        .ok_or("user `postgres` is missing: apt-get install postgresql")?;
    let (uid, gid) = (user.uid.as_raw(), user.gid.as_raw());
    // PostgreSQL refuses to run as root: its data and socket dirs are its user's.
    for sub in ["pgdata", "pg"] {
        mkdir(&d.join(sub), 0o700)?;
        std::os::unix::fs::chown(d.join(sub), Some(uid), Some(gid)).ctx("chown to postgres")?;
    }
    let mut initdb = Command::new(pg_bin("initdb")?);
    initdb
        .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
        .arg(d.join("pgdata"))
        .current_dir(d)
        .uid(uid)
        .gid(gid);
    run_client(initdb, Duration::from_secs(120), "initdb")?;
    let mut server = Command::new(pg_bin("postgres")?);
    server
        .arg("-D")
        .arg(d.join("pgdata"))
        .arg("-k")
        .arg(d.join("pg"))
        .args([
            "-c",
            "listen_addresses=",
            "-c",
            "fsync=off",
            "-c",
            "max_connections=200",
        ])
        .current_dir(d)
        .uid(uid)
        .gid(gid);
    let mut pg = Daemon::spawn_command("postgres", server, &d.join("postgres.log"))?;
    procs::wait_connectable(&d.join("pg").join(PG_SOCKET), &mut pg, START_TIMEOUT)?;
    servers.push(pg);
    let ready = Instant::now();
    loop {
        let mut probe = Command::new(pg_bin("pg_isready")?);
        probe.arg("-q").arg("-h").arg(d.join("pg"));
        match run_client(probe, Duration::from_secs(10), "pg_isready") {
            Ok(_) => break,
            Err(e) if ready.elapsed() > START_TIMEOUT => return Err(e),
            Err(_) => thread::sleep(Duration::from_millis(100)),
        }
    }
    let mut init = Command::new(pg_bin("pgbench")?);
    init.args(["-i", "-q", "-s", "1", "-U", "postgres", "-h"])
        .arg(d.join("pg"))
        .arg("postgres");
    run_client(init, Duration::from_secs(120), "pgbench -i")?;
    Ok(())
}

/// Two chained socats from `entry` to `target`, as the socat path is made.
fn socat_chain(
    socat: &Path,
    d: &Path,
    name: &str,
    entry: &Path,
    target: &Path,
) -> Res<Vec<Daemon>> {
    let chain = |listen: &Path, connect: &Path| -> Vec<OsString> {
        let mut l = OsString::from("UNIX-LISTEN:");
        l.push(listen);
        l.push(",fork");
        let mut c = OsString::from("UNIX-CONNECT:");
        c.push(connect);
        vec!["-b".into(), "262144".into(), l, c]
    };
    let mid = d.join(format!("socat-{name}-b.sock"));
    let mut b = Daemon::spawn(
        &format!("socat #2 ({name})"),
        socat,
        &chain(&mid, target),
        &d.join(format!("socat-{name}-b.log")),
    )?;
    procs::wait_bound(&mid, &mut b, START_TIMEOUT)?;
    let mut a = Daemon::spawn(
        &format!("socat #1 ({name})"),
        socat,
        &chain(entry, &mid),
        &d.join(format!("socat-{name}-a.log")),
    )?;
    procs::wait_bound(entry, &mut a, START_TIMEOUT)?;
    Ok(vec![b, a])
}

impl ClientPeers {
    /// Starts Redis, PostgreSQL (initialised for pgbench) and the forwarders of `paths`.
    pub fn start(
        paths: &[PathKind],
        bins: Option<&Bins>,
        socat: Option<&Path>,
        keep: bool,
    ) -> Res<Self> {
        let tools = [
            find_tool("redis-benchmark", "redis-tools")?,
            pg_bin("pgbench")?,
        ];
        let redis_server = find_tool("redis-server", "redis-server")?;
        let dir = tempfile::Builder::new()
            .prefix("sfbc.")
            .disable_cleanup(keep)
            .tempdir_in("/tmp")
            .ctx("temp dir")?;
        let d = dir.path().to_path_buf();
        // The postgres user must reach its sockets inside.
        mkdir(&d, 0o755)?;
        let mut servers = Vec::new();
        let redis_sock = d.join("redis.sock");
        let mut redis = Daemon::spawn(
            "redis-server",
            &redis_server,
            &[
                os("--port"),
                os("0"),
                os("--unixsocket"),
                redis_sock.clone().into_os_string(),
                os("--save"),
                os(""),
                os("--appendonly"),
                os("no"),
            ],
            &d.join("redis.log"),
        )?;
        procs::wait_connectable(&redis_sock, &mut redis, START_TIMEOUT)?;
        servers.push(redis);
        start_postgres(&d, &mut servers)?;
        let pg_sock = d.join("pg").join(PG_SOCKET);

        let mut fwd: [Option<Forwarders>; 3] = Default::default();
        fwd[PathKind::Direct.index()] = Some(Forwarders {
            _daemons: Vec::new(),
            redis: redis_sock.clone(),
            pg_dir: d.join("pg"),
        });
        if paths.contains(&PathKind::Socat) {
            let socat = socat.ok_or("socat is not installed (apt-get install socat)")?;
            mkdir(&d.join("socat-pg"), 0o755)?;
            let mut daemons =
                socat_chain(socat, &d, "redis", &d.join("socat-redis.sock"), &redis_sock)?;
            daemons.extend(socat_chain(
                socat,
                &d,
                "pg",
                &d.join("socat-pg").join(PG_SOCKET),
                &pg_sock,
            )?);
            fwd[PathKind::Socat.index()] = Some(Forwarders {
                _daemons: daemons,
                redis: d.join("socat-redis.sock"),
                pg_dir: d.join("socat-pg"),
            });
        }
        if paths.contains(&PathKind::Sockfwd) {
            let bins = bins.ok_or("sockfwd binaries not located")?;
            mkdir(&d.join("fwd-pg"), 0o755)?;
            let mut agent = Daemon::spawn(
                "sockfwd-agent",
                &bins.agent,
                &procs::agent_args(&d),
                &d.join("agent.log"),
            )?;
            procs::wait_connectable(&d.join("control.sock"), &mut agent, START_TIMEOUT)?;
            procs::wait_connectable(&d.join("streams.sock"), &mut agent, START_TIMEOUT)?;
            let forward = |guest: &Path, host: &Path| {
                let mut f = guest.as_os_str().to_owned();
                f.push(":");
                f.push(host);
                f
            };
            let mut args = vec![
                os("--control"),
                os(format!("unix://{}", d.join("control.sock").display())),
                os("--streams"),
                os(format!("unix://{}", d.join("streams.sock").display())),
                os("--forward"),
                forward(&d.join("fwd-redis.sock"), &redis_sock),
                os("--forward"),
                forward(&d.join("fwd-pg").join(PG_SOCKET), &pg_sock),
            ];
            args.extend(bins.relay_extra.iter().cloned());
            let mut relay =
                Daemon::spawn("sockfwd-relay", &bins.relay, &args, &d.join("relay.log"))?;
            procs::wait_bound(&d.join("fwd-redis.sock"), &mut relay, START_TIMEOUT)?;
            procs::wait_bound(&d.join("fwd-pg").join(PG_SOCKET), &mut relay, START_TIMEOUT)?;
            fwd[PathKind::Sockfwd.index()] = Some(Forwarders {
                _daemons: vec![relay, agent],
                redis: d.join("fwd-redis.sock"),
                pg_dir: d.join("fwd-pg"),
            });
        }
        Ok(Self {
            paths: fwd,
            _servers: servers,
            tools,
            dir,
        })
    }

    /// The temp dir the servers and forwarders live in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}
