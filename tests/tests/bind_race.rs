//! A guest process racing Bind's path checks (fault suite): a directory on the
//! path swapped with a symlink to elsewhere while Binds repeat never puts a
//! socket outside the allowed directory.

// An integration-test crate: every #[test] here is one, and a failed unwrap is a
// failed test.
#![allow(
    clippy::tests_outside_test_module,
    clippy::unwrap_used,
    clippy::expect_used
)]

use sockfwd_proto::rpc::{BindRequest, Socket, SocketForwardClient, UnbindRequest};
use sockfwd_proto::transport::{dial, Address};
use sockfwd_tests::{runtime, Env, READY_DEADLINE};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

const CALL: i64 = 10_000_000_000;

#[test]
fn a_symlink_swapped_into_the_path_never_redirects_a_bind() {
    let env = Env::new();
    let (allowed, outside) = (env.path("allowed"), env.path("outside"));
    std::fs::create_dir_all(allowed.join("sub")).unwrap();
    std::fs::create_dir(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, allowed.join("alt")).unwrap();
    let _agent = env.agent(&["--allow-dir", &allowed.display().to_string()]);

    // A guest process swapping allowed/sub (a directory) and allowed/alt (a
    // symlink to outside/), atomically, as fast as it can.
    let stop = Arc::new(AtomicBool::new(false));
    let flipper = {
        let (allowed, stop) = (allowed.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut flips = 0u64;
            while !stop.load(Ordering::Relaxed) {
                nix::fcntl::renameat2(
                    None,
                    &allowed.join("sub"),
                    None,
                    &allowed.join("alt"),
                    nix::fcntl::RenameFlags::RENAME_EXCHANGE,
                )
                .unwrap();
                flips += 1;
            }
            flips
        })
    };
    let target = allowed.join("sub/x.sock").display().to_string();
    let (bound, refused) = runtime().block_on(async {
        let conn = dial(&Address::Unix(env.path("control.sock")), READY_DEADLINE)
            .await
            .unwrap();
        let client = SocketForwardClient::new(ttrpc::r#async::Client::new(
            ttrpc::r#async::transport::Socket::new(conn),
        ));
        let (mut bound, mut refused) = (0u32, 0u32);
        for _ in 0..1000 {
            let mut s = Socket::new();
            s.forward_id = "race".into();
            s.socket_path = target.clone();
            let mut req = BindRequest::new();
            req.sockets.push(s);
            match client.bind(ttrpc::context::with_timeout(CALL), &req).await {
                Ok(_) => {
                    bound += 1;
                    // Before the Unbind, which would remove the evidence.
                    let stray: Vec<_> = std::fs::read_dir(&outside).unwrap().collect();
                    assert!(
                        stray.is_empty(),
                        "Bind put its socket outside the allowed directory: {stray:?}"
                    );
                    let mut un = UnbindRequest::new();
                    un.forward_id = "race".into();
                    client
                        .unbind(ttrpc::context::with_timeout(CALL), &un)
                        .await
                        .unwrap();
                }
                Err(e) => {
                    let text = format!("{e:?}");
                    assert!(
                        text.contains("is a symbolic link") || text.contains("changed while"),
                        "{text}"
                    );
                    refused += 1;
                }
            }
            let stray: Vec<_> = std::fs::read_dir(&outside).unwrap().collect();
            assert!(
                stray.is_empty(),
                "a socket outside the allowed directory: {stray:?}"
            );
        }
        (bound, refused)
    });
    stop.store(true, Ordering::Relaxed);
    let flips = flipper.join().unwrap();
    eprintln!("{bound} Binds bound in the allowed directory, {refused} refused, {flips} swaps");
    assert!(bound > 0, "no Bind got through: the test proved nothing");
}
