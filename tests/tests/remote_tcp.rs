//! Remote forwards over TCP (`-R`, issue 11) through the real agent and relay:
//! every spec form reaching a host service (TCP and a Unix socket) from a
//! guest TCP listener or socket file; port 0 printed and in `status`; a start
//! that cannot create every listener leaves none; forwards added and removed
//! at runtime with their counters; `localhost` reaching a host service bound
//! to one loopback address only; and `--auto-forward all` leaving the agent's
//! own listeners alone, with the agent in a network namespace of its own (a
//! guest with its own ports, as in a VM).

// An integration-test crate: every #[test] here is one, and a failed unwrap is a
// failed test.
#![allow(
    clippy::tests_outside_test_module,
    clippy::unwrap_used,
    clippy::expect_used
)]

use sockfwd_tests::forwards::{self, admin, curl, free_port, http_tcp, metric, Relay};
use sockfwd_tests::{bin, peers, require_tool, wait_connectable, Daemon, Env, READY_DEADLINE};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn served_dir(env: &Env) -> std::path::PathBuf {
    forwards::served_dir(env, "www", "hello from the host\n")
}

/// Sends `msg` to a guest TCP address, half-closes, reads the whole answer.
fn tcp_request(addr: &str, msg: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(msg).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).unwrap();
    answer
}

/// A host TCP server on `ip` (a free port) answering each connection with
/// `tag` followed by what it read, then closing; its port.
fn tagged_echo(ip: &str, tag: &'static [u8]) -> u16 {
    let l = TcpListener::bind((ip, 0)).unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut got = Vec::new();
                let _ = s.read_to_end(&mut got);
                let _ = s.write_all(tag);
                let _ = s.write_all(&got);
            });
        }
    });
    port
}

#[test]
fn every_remote_spec_form_reaches_the_host_service() {
    let env = Env::new();
    let host_port = free_port();
    let _http = http_tcp(&served_dir(&env), host_port, env.path("http.log"));
    let host_unix = env.path("host-http.sock");
    let _unix_http = peers::http(&host_unix, env.path("unix-http.log"));
    let _agent = env.agent(&[]);
    let admin_sock = env.path("admin.sock");

    let fixed = free_port();
    let (h, hu) = (format!("127.0.0.1:{host_port}"), host_unix.display());
    let guest_sock = env.path("guest/tcp.sock");
    let guest_unix = env.path("guest/unix.sock");
    let specs = [
        format!("zero=0:{h}"),
        format!("fixed={fixed}:{hu}"),
        format!("sock={}:{h}", guest_sock.display()),
        format!("unix={}:{hu}", guest_unix.display()),
    ];
    let mut args = Relay::args(&env, &["--admin", &admin_sock.display().to_string()]);
    for s in &specs {
        args.extend(["-R".to_owned(), s.clone()]);
    }
    let relay = Relay::start(&env, &args);
    // The agent picked the port for 0; the relay printed it, and the fixed one.
    let zero = relay.remote_addr(&h);
    let zero_port: u16 = zero.strip_prefix("127.0.0.1:").unwrap().parse().unwrap();
    assert_ne!(zero_port, 0);
    assert_eq!(
        relay.remote_addr(&hu.to_string()),
        format!("127.0.0.1:{fixed}")
    );
    relay.daemon.wait_log("relay ready");
    let printed = relay.output();
    assert_eq!(
        printed.lines().count(),
        2,
        "one line per TCP listener: {printed}"
    );

    // Guest TCP port -> host TCP; guest TCP port -> host Unix socket.
    assert_eq!(
        curl(&[&format!("http://{zero}/hello.txt")]).unwrap(),
        "hello from the host\n"
    );
    assert_eq!(
        curl(&[&format!("http://127.0.0.1:{fixed}/tcp-to-unix")]).unwrap(),
        "hello /tcp-to-unix"
    );
    // Guest socket file -> host TCP; guest socket file -> host Unix socket.
    wait_connectable(&guest_sock);
    let g = guest_sock.display().to_string();
    assert_eq!(
        curl(&["--unix-socket", &g, "http://guest/hello.txt"]).unwrap(),
        "hello from the host\n"
    );
    let u = guest_unix.display().to_string();
    assert_eq!(
        curl(&["--unix-socket", &u, "http://guest/unix"]).unwrap(),
        "hello /unix"
    );

    // status: the bound address in the relay's row and in the agent's.
    let table = admin(&admin_sock, "status", &[]).unwrap();
    for (side, id, from, to) in [
        ("relay", "zero", zero.as_str(), h.as_str()),
        ("agent", "zero", zero.as_str(), ""),
        ("relay", "sock", g.as_str(), h.as_str()),
    ] {
        let row = table
            .lines()
            .find(|l| l.split_whitespace().take(3).eq(["guest_to_host", side, id]))
            .unwrap_or_else(|| panic!("{side} {id}\n{table}"));
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cols[3], from, "{table}");
        if !to.is_empty() {
            assert_eq!(cols[4], to, "{table}");
        }
    }
}

#[test]
fn localhost_reaches_a_host_service_on_either_loopback_address() {
    let env = Env::new();
    // Neither is reachable at the other address: each is found by name only
    // if the relay tries both (this machine's resolver lists 127.0.0.1 alone).
    let v6 = tagged_echo("::1", b"v6:");
    let v4 = tagged_echo("127.0.0.1", b"v4:");
    let _agent = env.agent(&[]);
    let args = Relay::args(
        &env,
        &[
            "-R",
            &format!("0:localhost:{v6}"),
            "-R",
            &format!("[::1]:0:localhost:{v4}"),
        ],
    );
    let relay = Relay::start(&env, &args);
    let to_v6 = relay.remote_addr(&format!("localhost:{v6}"));
    let to_v4 = relay.remote_addr(&format!("localhost:{v4}"));
    assert!(to_v4.starts_with("[::1]:"), "{to_v4}");
    assert_eq!(tcp_request(&to_v6, b"ping"), b"v6:ping");
    assert_eq!(tcp_request(&to_v4, b"pong"), b"v4:pong");
}

#[test]
fn a_listener_that_cannot_be_created_fails_the_start_and_leaves_none() {
    let env = Env::new();
    // The agent may listen anywhere, so the address's own absence is the cause.
    let _agent = env.agent(&["--allow-listen", "*:*"]);
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_port = busy.local_addr().unwrap().port();
    let first = env.path("guest/first.sock");
    // Bound in ID order: a and b are created before c fails.
    let cases = [
        (
            format!("c={busy_port}:127.0.0.1:1"),
            format!("127.0.0.1:{busy_port}:127.0.0.1:1"),
        ),
        (
            "c=192.0.2.1:5000:127.0.0.1:1".to_owned(),
            "192.0.2.1:5000:127.0.0.1:1".to_owned(),
        ),
    ];
    for (bad, canonical) in cases {
        let out = Command::new(bin("sockfwd-relay"))
            .args(Relay::args(&env, &[]))
            .args(["-R", &format!("a={}:/host/a.sock", first.display())])
            .args(["-R", "b=0:127.0.0.1:1", "-R", &bad])
            .args(["--boot-timeout", "10s"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{err}");
        assert!(
            err.contains(&format!("binding forward \"c\" ({canonical})")),
            "{err}"
        );
        assert!(err.contains("binding socket forward listener at"), "{err}");
        assert!(!first.exists(), "the socket file made before is gone");
        assert!(
            String::from_utf8_lossy(&out.stdout).is_empty(),
            "nothing was announced"
        );
    }
    drop(busy);
    // The agent has no forward left: a relay's status lists none of its.
    let admin_sock = env.path("admin.sock");
    let _relay = Relay::with_admin(&env, &admin_sock, &[]);
    let table = admin(&admin_sock, "status", &[]).unwrap();
    assert_eq!(table.lines().count(), 1, "only the header: {table}");
}

#[test]
fn remote_forwards_are_added_and_removed_at_runtime_with_their_counters() {
    let env = Env::new();
    let host_port = tagged_echo("127.0.0.1", b"");
    let _agent = env.agent(&[]);
    let admin_sock = env.path("admin.sock");
    let relay = Relay::with_admin(&env, &admin_sock, &[]);

    let spec = format!("0:localhost:{host_port}");
    let out = admin(&admin_sock, "add", &["-R", &spec]).unwrap();
    // ID remote 127.0.0.1:PORT -> localhost:HOSTPORT
    let words: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(words[1..2], ["remote"], "{out}");
    let (id, guest) = (words[0].to_owned(), words[2].to_owned());
    assert!(
        guest.starts_with("127.0.0.1:") && !guest.ends_with(":0"),
        "{out}"
    );
    assert_eq!(
        relay.remote_addr(&format!("localhost:{host_port}")),
        guest,
        "printed on stdout too"
    );
    for n in [1000usize, 2000, 3000] {
        assert_eq!(tcp_request(&guest, &vec![5u8; n]).len(), n);
    }
    let text = sockfwd_tests::wait_until("the counters to settle", READY_DEADLINE, || {
        let t = admin(&admin_sock, "status", &["--prometheus"]).ok()?;
        let done = metric(&t, "sockfwd_bytes_to_host_total", "relay", &id) == Some(6000)
            && metric(&t, "sockfwd_bytes_to_host_total", "agent", &id) == Some(6000);
        done.then_some(t)
    });
    for (m, side, v) in [
        ("sockfwd_connections_total", "relay", 3),
        ("sockfwd_connections_failed_total", "relay", 0),
        ("sockfwd_connections_active", "relay", 0),
        ("sockfwd_bytes_to_guest_total", "relay", 6000),
        ("sockfwd_connections_total", "agent", 3),
        ("sockfwd_bytes_to_guest_total", "agent", 6000),
    ] {
        assert_eq!(metric(&text, m, side, &id), Some(v), "{m} {side}\n{text}");
    }

    // A guest port that is taken: refused with the agent's reason, nothing added.
    let port = guest.rsplit(':').next().unwrap();
    let err = admin(&admin_sock, "add", &["-R", &format!("{port}:localhost:1")]).unwrap_err();
    assert!(
        err.contains(&format!("listener at 127.0.0.1:{port}")),
        "{err}"
    );
    let table = admin(&admin_sock, "status", &[]).unwrap();
    assert_eq!(table.lines().count(), 3, "one forward, both sides: {table}");

    // Removed by the spec it was added with: the guest port closes.
    assert_eq!(
        admin(&admin_sock, "remove", &[&spec]).unwrap(),
        format!("removed forward {id}\n")
    );
    assert!(
        TcpStream::connect(&guest).is_err(),
        "the guest port is closed"
    );
    let err = admin(&admin_sock, "remove", &[&id]).unwrap_err();
    assert!(
        err.contains(&format!("no forward or listener \"{id}\"")),
        "{err}"
    );
}

/// The agent in a network namespace of its own: its TCP listeners are the
/// guest's alone, as in a VM, so `--auto-forward all` sees exactly them.
fn agent_in_own_netns(env: &Env) -> Daemon {
    let unshare = require_tool("unshare", "util-linux");
    require_tool("ip", "iproute2");
    let mut cmd = Command::new(unshare);
    cmd.args(["-n", "sh", "-c", "ip link set lo up && exec \"$0\" \"$@\""])
        .arg(bin("sockfwd-agent"))
        .args(["--control", &env.control(), "--streams", &env.streams()]);
    let d = Daemon::spawn_command("sockfwd-agent", cmd, env.path("agent.log"));
    wait_connectable(&env.path("control.sock"));
    wait_connectable(&env.path("streams.sock"));
    d
}

/// `program args` run in `pid`'s network namespace.
fn in_netns(pid: u32, program: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(require_tool("nsenter", "util-linux"));
    cmd.arg(format!("--net=/proc/{pid}/ns/net"))
        .arg(program)
        .args(args);
    cmd
}

#[test]
fn auto_forward_all_leaves_the_agent_s_own_listeners_alone() {
    let env = Env::new();
    let host_port = free_port();
    let _http = http_tcp(&served_dir(&env), host_port, env.path("http.log"));
    let agent = agent_in_own_netns(&env);
    let h = format!("127.0.0.1:{host_port}");
    let relay = Relay::start(
        &env,
        &Relay::args(&env, &["--auto-forward", "all", "-R", &format!("0:{h}")]),
    );
    let remote = relay.remote_addr(&h);
    relay
        .daemon
        .wait_log("auto-forward: following the guest's TCP listeners");

    // A guest service starts after the -R listener: it is forwarded back.
    let guest_www = env.path("guest-www");
    std::fs::create_dir(&guest_www).unwrap();
    std::fs::write(guest_www.join("g.txt"), "from the guest\n").unwrap();
    let python = require_tool("python3", "python3");
    let guest_port = free_port().to_string();
    let www = guest_www.display().to_string();
    let service = in_netns(
        agent.pid(),
        &python,
        &[
            "-m",
            "http.server",
            &guest_port,
            "--bind",
            "127.0.0.1",
            "--directory",
            &www,
        ],
    );
    let _service = Daemon::spawn_command("guest http.server", service, env.path("guest-http.log"));
    let line = relay.wait_line("auto-forward 127.0.0.1:");
    assert!(
        line.contains(&format!("-> 127.0.0.1:{guest_port} ")),
        "{line}"
    );
    let host_side: SocketAddr = line
        .strip_prefix("auto-forward ")
        .and_then(|l| l.split(' ').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert_eq!(
        curl(&[&format!("http://{host_side}/g.txt")]).unwrap(),
        "from the guest\n"
    );
    // The -R listener was there first, in the agent's initial set: it was
    // never forwarded back to the host (which would loop).
    let printed = relay.output();
    assert_eq!(
        printed.matches("auto-forward 127.0.0.1:").count(),
        1,
        "{printed}"
    );
    assert!(!printed.contains(&format!("-> {remote} ")), "{printed}");
    // And it works from inside the guest.
    let curl_bin = require_tool("curl", "curl");
    let url = format!("http://{remote}/hello.txt");
    let out = in_netns(agent.pid(), &curl_bin, &["-sS", "--max-time", "20", &url])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from the host\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
