//! The built binary's boot-time forwards and systemd notification: forwards
//! from the kernel command line exist when READY=1 arrives, before any host
//! attaches; a guest connection made then waits for the host and is served
//! once a (fake) host attaches; without a host it is closed after
//! `--pending-timeout`. Unix sockets, and a TCP listener (`ID:tcp:IP:PORT`).

#[cfg(test)]
mod boot_forwards {
    use sockfwd_proto::handshake;
    use sockfwd_proto::rpc::{
        BindRequest, ConnectRequest, ConnectResult, Socket, SocketForwardClient,
    };
    use sockfwd_proto::transport::{dial, Address};
    use std::io::Read as _;
    use std::os::unix::fs::PermissionsExt as _;
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{UnixDatagram, UnixStream};
    use tokio::time::timeout;

    const AGENT: &str = env!("CARGO_BIN_EXE_sockfwd-agent");
    const LONG: Duration = Duration::from_secs(20);
    const LONG_NANOS: i64 = 20_000_000_000;

    /// The agent process; killed if a test fails before stopping it.
    struct Agent {
        child: Child,
        dir: tempfile::TempDir,
    }

    impl Agent {
        fn spawn(dir: tempfile::TempDir, args: &[&str], env: &[(&str, &str)]) -> Agent {
            let child = Command::new(AGENT)
                .args(args)
                .env_remove("NOTIFY_SOCKET")
                .env_remove("WATCHDOG_USEC")
                .env_remove("WATCHDOG_PID")
                .env("RUST_LOG", "info")
                .envs(env.iter().copied())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            Agent { child, dir }
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        /// SIGTERM, then the exit status and everything it logged.
        fn terminate(mut self) -> (Option<i32>, String) {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap());
            nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
            let deadline = Instant::now() + LONG;
            let status = loop {
                if let Some(status) = self.child.try_wait().unwrap() {
                    break status;
                }
                assert!(Instant::now() < deadline, "agent did not exit on SIGTERM");
                std::thread::sleep(Duration::from_millis(20));
            };
            let mut log = String::new();
            self.child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut log)
                .unwrap();
            (status.code(), log)
        }
    }

    impl Drop for Agent {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn unix(path: &Path) -> String {
        format!("unix://{}", path.display())
    }

    async fn next(socket: &UnixDatagram) -> String {
        let mut buf = vec![0u8; 4096];
        let n = timeout(LONG, socket.recv(&mut buf))
            .await
            .expect("a notification in time")
            .unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    /// A fake host relay: Bind, and one Accept stream that serves each request
    /// by opening its stream and answering `tag` + what the guest sent.
    struct Host {
        client: SocketForwardClient,
    }

    impl Host {
        async fn attach(control: &Path) -> Host {
            let s = dial(&Address::Unix(control.to_path_buf()), LONG)
                .await
                .unwrap();
            let socket = ttrpc::r#async::transport::Socket::new(s);
            Host {
                client: SocketForwardClient::new(ttrpc::r#async::Client::new(socket)),
            }
        }

        async fn bind(&self, id: &str, path: &Path) -> ttrpc::Result<()> {
            let req = BindRequest {
                sockets: vec![Socket {
                    forward_id: id.to_owned(),
                    socket_path: path.to_str().unwrap().to_owned(),
                    ..Default::default()
                }],
                ..Default::default()
            };
            self.client
                .bind(ttrpc::context::with_timeout(LONG_NANOS), &req)
                .await
                .map(|_| ())
        }

        async fn bind_tcp(&self, id: &str, addr: &str) -> ttrpc::Result<()> {
            let req = BindRequest {
                sockets: vec![Socket {
                    forward_id: id.to_owned(),
                    tcp_listen: addr.to_owned(),
                    ..Default::default()
                }],
                ..Default::default()
            };
            self.client
                .bind(ttrpc::context::with_timeout(LONG_NANOS), &req)
                .await
                .map(|_| ())
        }

        async fn serve(&self, streams: PathBuf, tag: &'static str) {
            let stream = self
                .client
                .accept(ttrpc::context::Context::default())
                .await
                .unwrap();
            tokio::spawn(async move {
                let (tx, mut rx) = stream.split();
                while let Ok(req) = rx.recv().await {
                    let req: ConnectRequest = req;
                    let tx = tx.clone();
                    let streams = streams.clone();
                    tokio::spawn(async move {
                        let mut s = dial(&Address::Unix(streams), LONG).await.unwrap();
                        handshake::open(&mut s, &req.stream_id, LONG).await.unwrap();
                        let ok = ConnectResult {
                            stream_id: req.stream_id.clone(),
                            ..Default::default()
                        };
                        tx.send(&ok).await.unwrap();
                        let mut got = Vec::new();
                        s.read_to_end(&mut got).await.unwrap();
                        s.write_all(tag.as_bytes()).await.unwrap();
                        s.write_all(&got).await.unwrap();
                        s.shutdown().await.unwrap();
                    });
                }
            });
        }
    }

    #[tokio::test]
    async fn boot_forwards_exist_at_ready_and_wait_for_the_host() {
        let dir = tempfile::tempdir().unwrap();
        let notify = dir.path().join("notify.sock");
        let notifications = UnixDatagram::bind(&notify).unwrap();
        let web = dir.path().join("guest/web.sock");
        let control = dir.path().join("control.sock");
        let streams = dir.path().join("streams.sock");
        let cmdline = dir.path().join("cmdline");
        std::fs::write(
            &cmdline,
            format!(
                "console=ttyS0 sockfwd.forward=web:{}:0660 sockfwd.nope=1 -- init-arg\n",
                web.display()
            ),
        )
        .unwrap();
        let agent = Agent::spawn(
            dir,
            &[
                "--control",
                &unix(&control),
                "--streams",
                &unix(&streams),
                "--cmdline-file",
                cmdline.to_str().unwrap(),
            ],
            &[
                ("NOTIFY_SOCKET", notify.to_str().unwrap()),
                ("WATCHDOG_USEC", "200000"),
            ],
        );

        let ready = next(&notifications).await;
        assert!(ready.starts_with("READY=1\n"), "{ready}");
        for path in [&control, &streams, &web] {
            assert!(path.exists(), "{} missing at READY=1", path.display());
        }
        let mode = std::fs::metadata(&web).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o660);

        // A guest service connects before any host is attached: it waits.
        let mut guest = UnixStream::connect(&web).await.unwrap();
        guest.write_all(b"early").await.unwrap();
        guest.shutdown().await.unwrap();
        let mut reply = String::new();
        let waited = timeout(Duration::from_millis(300), guest.read_to_string(&mut reply)).await;
        assert!(
            waited.is_err(),
            "the connection waits for a host: {reply:?}"
        );

        // The keep-alives run while it waits.
        assert_eq!(next(&notifications).await, "WATCHDOG=1");

        // A host attaches: binding the same forward is a no-op that takes it
        // over; binding its ID elsewhere is refused.
        let host = Host::attach(&control).await;
        host.bind("web", &web).await.unwrap();
        let elsewhere = agent.path("elsewhere.sock");
        let err = host.bind("web", &elsewhere).await.unwrap_err();
        assert!(format!("{err:?}").contains("already bound at"), "{err:?}");
        host.serve(streams.clone(), "host:").await;
        timeout(LONG, guest.read_to_string(&mut reply))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(reply, "host:early");

        // Later connections go straight through.
        let mut again = UnixStream::connect(&web).await.unwrap();
        again.write_all(b"later").await.unwrap();
        again.shutdown().await.unwrap();
        let mut reply = String::new();
        timeout(LONG, again.read_to_string(&mut reply))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(reply, "host:later");

        let stopping = async {
            loop {
                let msg = next(&notifications).await;
                if msg != "WATCHDOG=1" {
                    return msg;
                }
            }
        };
        let (code, log) = tokio::task::spawn_blocking(move || agent.terminate())
            .await
            .unwrap();
        assert!(stopping.await.starts_with("STOPPING=1"));
        assert_eq!(code, Some(0), "{log}");
        assert!(
            !web.exists(),
            "the boot forward's socket is removed at exit"
        );
        assert!(
            log.contains("unknown key sockfwd.nope on the kernel command line; ignored"),
            "{log}"
        );
    }

    #[tokio::test]
    async fn without_a_host_a_boot_forward_connection_is_closed_after_the_pending_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let web = dir.path().join("web.sock");
        let cmdline = dir.path().join("cmdline");
        std::fs::write(&cmdline, "").unwrap();
        let control = unix(&dir.path().join("control.sock"));
        let streams = unix(&dir.path().join("streams.sock"));
        let forward = format!("web:{}", web.display());
        let agent = Agent::spawn(
            dir,
            &[
                "--control",
                &control,
                "--streams",
                &streams,
                "--cmdline-file",
                cmdline.to_str().unwrap(),
                "--forward",
                &forward,
                "--pending-timeout",
                "300ms",
            ],
            &[],
        );
        // No NOTIFY_SOCKET: wait by retrying the connection until a deadline.
        let start = Instant::now();
        let mut guest = loop {
            match UnixStream::connect(&web).await {
                Ok(s) => break s,
                Err(_) if start.elapsed() < LONG => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => panic!("{} never accepted: {e}", web.display()),
            }
        };
        let connected = Instant::now();
        guest.write_all(b"nobody home").await.unwrap();
        let mut reply = Vec::new();
        let _ = timeout(LONG, guest.read_to_end(&mut reply)).await.unwrap();
        assert!(reply.is_empty());
        assert!(connected.elapsed() >= Duration::from_millis(250));
        let (code, log) = tokio::task::spawn_blocking(move || agent.terminate())
            .await
            .unwrap();
        assert_eq!(code, Some(0), "{log}");
    }

    #[tokio::test]
    async fn a_boot_time_tcp_forward_listens_at_ready_and_a_host_takes_it_over() {
        let dir = tempfile::tempdir().unwrap();
        let notify = dir.path().join("notify.sock");
        let notifications = UnixDatagram::bind(&notify).unwrap();
        let control = dir.path().join("control.sock");
        let streams = dir.path().join("streams.sock");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let cmdline = dir.path().join("cmdline");
        std::fs::write(&cmdline, format!("sockfwd.forward=db:tcp:{addr}\n")).unwrap();
        let agent = Agent::spawn(
            dir,
            &[
                "--control",
                &unix(&control),
                "--streams",
                &unix(&streams),
                "--cmdline-file",
                cmdline.to_str().unwrap(),
            ],
            &[("NOTIFY_SOCKET", notify.to_str().unwrap())],
        );
        assert!(next(&notifications).await.starts_with("READY=1\n"));
        let mut guest = tokio::net::TcpStream::connect(&addr).await.unwrap();
        guest.write_all(b"early").await.unwrap();
        guest.shutdown().await.unwrap();

        let host = Host::attach(&control).await;
        host.bind_tcp("db", &addr).await.unwrap();
        let err = host.bind_tcp("db", "[::1]:0").await.unwrap_err();
        assert!(format!("{err:?}").contains("already bound at"), "{err:?}");
        host.serve(streams.clone(), "host:").await;
        let mut reply = String::new();
        timeout(LONG, guest.read_to_string(&mut reply))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(reply, "host:early");
        let (code, log) = tokio::task::spawn_blocking(move || agent.terminate())
            .await
            .unwrap();
        assert_eq!(code, Some(0), "{log}");
        let closed = tokio::net::TcpStream::connect(&addr).await;
        assert!(closed.is_err(), "closed at exit");
    }
}
