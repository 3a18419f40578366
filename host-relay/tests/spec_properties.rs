//! Property tests (run in CI) for the forward spec parsers, which read user
//! input: arbitrary text gives a forward or an error, never a panic; a valid
//! spec round-trips into exactly the paths, addresses and IDs it names.

// An integration-test crate: every #[test] here is one, and a failed unwrap is a
// failed test.
#![allow(
    clippy::tests_outside_test_module,
    clippy::unwrap_used,
    clippy::expect_used
)]

use proptest::prelude::*;
use sockfwd_relay::spec::{derived_forward_id, derived_remote_id, nerdbox_forward_id};
use sockfwd_relay::{Forward, HostTarget, ListenAt};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

/// A GUEST_BIND as written (`None`: left out) and the address it means.
fn guest_bind() -> impl Strategy<Value = (Option<String>, IpAddr)> {
    prop_oneof![
        Just((None, "127.0.0.1".parse().unwrap())),
        Just((Some("localhost".to_owned()), "127.0.0.1".parse().unwrap())),
        Just((Some("*".to_owned()), "0.0.0.0".parse().unwrap())),
        Just((Some("[::1]".to_owned()), "::1".parse().unwrap())),
        any::<[u8; 4]>().prop_map(|o| {
            let ip = IpAddr::from(o);
            (Some(ip.to_string()), ip)
        }),
        any::<[u16; 8]>().prop_map(|s| {
            let ip = IpAddr::from(s);
            (Some(format!("[{ip}]")), ip)
        }),
    ]
}

/// A host target as written and what it means.
fn host_target() -> impl Strategy<Value = (String, HostTarget)> {
    prop_oneof![
        (
            "[a-z][a-z0-9-]{0,20}(\\.[a-z0-9-]{1,10}){0,2}",
            1..=u16::MAX
        )
            .prop_map(|(h, p)| { (format!("{h}:{p}"), HostTarget::Tcp { host: h, port: p }) }),
        (any::<[u8; 4]>(), 1..=u16::MAX).prop_map(|(o, p)| {
            let ip = IpAddr::from(o);
            (
                format!("{ip}:{p}"),
                HostTarget::Tcp {
                    host: ip.to_string(),
                    port: p,
                },
            )
        }),
        (any::<[u16; 8]>(), 1..=u16::MAX).prop_map(|(s, p)| {
            let ip = IpAddr::from(s);
            (
                format!("[{ip}]:{p}"),
                HostTarget::Tcp {
                    host: ip.to_string(),
                    port: p,
                },
            )
        }),
        "[/.][a-z0-9_.:=-]{1,40}".prop_map(|p| (p.clone(), HostTarget::Unix(PathBuf::from(p)))),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn forward_spec_parser_never_panics(s in "\\PC{0,200}") {
        if let Ok(f) = Forward::from_spec(&s) {
            let ListenAt::Unix(path) = &f.listen else {
                return Err(TestCaseError::fail("--forward listens on a socket file"));
            };
            let path = path.to_string_lossy();
            prop_assert!(path.starts_with('/'));
            prop_assert!(!path.contains(':'));
            prop_assert!(!f.id.is_empty());
        }
    }

    #[test]
    fn uds_mount_parser_never_panics(s in "\\PC{0,200}") {
        if let Ok(f) = Forward::from_uds_mount(&s, "/run/socketfwd") {
            prop_assert_eq!(f.id.len(), 64);
            prop_assert_eq!(f.listen, ListenAt::Unix(format!("/run/socketfwd/{}.sock", f.id).into()));
        }
    }

    #[test]
    fn valid_forward_specs_round_trip(
        guest in "/[a-z0-9_.-]{1,20}(/[a-z0-9_.-]{1,20}){0,3}",
        host in "/[a-z0-9_.:-]{1,40}",
        id in proptest::option::of("[A-Za-z0-9._-]{1,32}"),
    ) {
        let spec = match &id {
            Some(id) => format!("{id}={guest}:{host}"),
            None => format!("{guest}:{host}"),
        };
        let f = Forward::from_spec(&spec).unwrap();
        prop_assert_eq!(&f.listen, &ListenAt::Unix(guest.clone().into()));
        prop_assert_eq!(&f.target, &HostTarget::Unix(PathBuf::from(&host)));
        prop_assert_eq!(f.id, id.unwrap_or_else(|| derived_forward_id(&guest)));
    }

    #[test]
    fn uds_mount_ids_are_nerdboxs(container in "[a-f0-9]{1,64}", dest in "/[a-z/._-]{1,40}", host in "/[a-z0-9_.:-]{1,40}") {
        let f = Forward::from_uds_mount(&format!("{container}:{host}:{dest}"), "/run/socketfwd").unwrap();
        prop_assert_eq!(f.id, nerdbox_forward_id(&container, &dest));
        prop_assert_eq!(f.target, HostTarget::Unix(PathBuf::from(host)));
    }

    #[test]
    fn remote_spec_parser_never_panics(s in "\\PC{0,200}") {
        if let Ok(f) = Forward::from_remote_spec(&s) {
            prop_assert!(f.check().is_ok(), "{:?}", f);
            prop_assert_eq!(Forward::from_remote_spec(&f.spec_text()).map(|g| (g.listen, g.target)),
                Ok((f.listen, f.target)));
        }
    }

    #[test]
    fn valid_tcp_remote_specs_round_trip(
        (bind_text, bind) in guest_bind(),
        port in any::<u16>(),
        (target_text, target) in host_target(),
        id in proptest::option::of("[A-Za-z0-9._-]{1,32}"),
    ) {
        let listen_text = match &bind_text {
            Some(b) => format!("{b}:{port}:"),
            None => format!("{port}:"),
        };
        let spec = match &id {
            Some(id) => format!("{id}={listen_text}{target_text}"),
            None => format!("{listen_text}{target_text}"),
        };
        let f = Forward::from_remote_spec(&spec).unwrap();
        let listen = ListenAt::Tcp(SocketAddr::new(bind, port));
        prop_assert_eq!(&f.listen, &listen);
        prop_assert_eq!(&f.target, &target);
        prop_assert_eq!(&f.id, &id.unwrap_or_else(|| derived_remote_id(&listen, &target)));
        let again = Forward::from_remote_spec(&f.spec_text()).unwrap();
        prop_assert_eq!((again.listen, again.target), (listen, target));
    }

    #[test]
    fn valid_unix_remote_specs_round_trip(
        guest in "/[a-z0-9_.-]{1,20}(/[a-z0-9_.-]{1,20}){0,3}",
        (target_text, target) in host_target(),
    ) {
        let f = Forward::from_remote_spec(&format!("{guest}:{target_text}")).unwrap();
        prop_assert_eq!(&f.listen, &ListenAt::Unix(guest.clone().into()));
        prop_assert_eq!(&f.target, &target);
        // A socket file's ID is --forward's, whatever the target.
        prop_assert_eq!(f.id, derived_forward_id(&guest));
    }
}
