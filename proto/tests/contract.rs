//! Golden bytes for the parts of the contract a nerdbox peer depends on: the
//! service name, and each message's field numbers and wire types. A renumbered
//! field or a renamed package fails here before it fails against nerdbox.

// An integration-test crate: every #[test] here is one, and a failed unwrap is a
// failed test.
#![allow(
    clippy::tests_outside_test_module,
    clippy::unwrap_used,
    clippy::expect_used
)]

use protobuf::Message;
use sockfwd_proto::rpc::{
    BindRequest, ConnectRequest, ConnectResult, ShutdownRequest, Socket, SERVICE_NAME,
};

#[test]
fn service_name_is_nerdboxs() {
    assert_eq!(
        SERVICE_NAME,
        "nerdbox.services.socketforward.v1.SocketForward"
    );
    let generated = include_str!(concat!(env!("OUT_DIR"), "/gen/socketforward_ttrpc.rs"));
    for method in ["Bind", "Accept", "Shutdown"] {
        assert!(
            generated.contains(&format!("\"{SERVICE_NAME}\", \"{method}\"")),
            "method {method} is served under the nerdbox service name"
        );
    }
}

#[test]
fn bind_request_bytes() {
    let req = BindRequest {
        sockets: vec![Socket {
            forward_id: "f".into(),
            socket_path: "/s".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    // field 1 (sockets), len 7: { field 1 "f", field 2 "/s" }
    assert_eq!(
        req.write_to_bytes().unwrap(),
        [0x0a, 7, 0x0a, 1, b'f', 0x12, 2, b'/', b's']
    );
    // The extensions are absent unless set, so a nerdbox guest sees the same bytes.
    let with_mode = Socket {
        mode: Some(0o600),
        uid: Some(0),
        gid: Some(5),
        ..Default::default()
    };
    assert_eq!(
        with_mode.write_to_bytes().unwrap(),
        [0x18, 0x80, 0x03, 0x20, 0, 0x28, 5]
    );
}

#[test]
fn connect_messages_bytes() {
    let req = ConnectRequest {
        stream_id: "s".into(),
        forward_id: "f".into(),
        ..Default::default()
    };
    assert_eq!(
        req.write_to_bytes().unwrap(),
        [0x0a, 1, b's', 0x12, 1, b'f']
    );
    let ext = ConnectRequest {
        framings: 1,
        ..Default::default()
    };
    assert_eq!(ext.write_to_bytes().unwrap(), [0x18, 1]);
    let res = ConnectResult {
        stream_id: "s".into(),
        error: "e".into(),
        framing: 1,
        ..Default::default()
    };
    assert_eq!(
        res.write_to_bytes().unwrap(),
        [0x0a, 1, b's', 0x12, 1, b'e', 0x18, 1]
    );
    let shutdown = ShutdownRequest {
        grace_period_ms: 300,
        ..Default::default()
    };
    assert_eq!(shutdown.write_to_bytes().unwrap(), [0x08, 0xac, 0x02]);
}

#[test]
fn a_nerdbox_message_without_extensions_decodes() {
    // What nerdbox's host sends: no framing field. It means raw.
    let res = ConnectResult::parse_from_bytes(&[0x0a, 1, b's']).unwrap();
    assert_eq!(
        (res.stream_id.as_str(), res.error.as_str(), res.framing),
        ("s", "", 0)
    );
}
