//! Property tests (run in CI) for the forward spec parsers, which read user
//! input: arbitrary text gives a forward or an error, never a panic; a valid
//! spec round-trips into exactly the paths and IDs it names.

// An integration-test crate: every #[test] here is one, and a failed unwrap is a
// failed test.
#![allow(
    clippy::tests_outside_test_module,
    clippy::unwrap_used,
    clippy::expect_used
)]

use proptest::prelude::*;
use sockfwd_relay::spec::{derived_forward_id, nerdbox_forward_id};
use sockfwd_relay::Forward;

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn forward_spec_parser_never_panics(s in "\\PC{0,200}") {
        if let Ok(f) = Forward::from_spec(&s) {
            prop_assert!(f.guest_path.starts_with('/'));
            prop_assert!(!f.guest_path.contains(':'));
            prop_assert!(!f.id.is_empty());
        }
    }

    #[test]
    fn uds_mount_parser_never_panics(s in "\\PC{0,200}") {
        if let Ok(f) = Forward::from_uds_mount(&s, "/run/socketfwd") {
            prop_assert_eq!(f.id.len(), 64);
            prop_assert_eq!(f.guest_path, format!("/run/socketfwd/{}.sock", f.id));
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
        prop_assert_eq!(&f.guest_path, &guest);
        prop_assert_eq!(f.host_path.to_str().unwrap(), host.as_str());
        prop_assert_eq!(f.id, id.unwrap_or_else(|| derived_forward_id(&guest)));
    }

    #[test]
    fn uds_mount_ids_are_nerdboxs(container in "[a-f0-9]{1,64}", dest in "/[a-z/._-]{1,40}", host in "/[a-z0-9_.:-]{1,40}") {
        let f = Forward::from_uds_mount(&format!("{container}:{host}:{dest}"), "/run/socketfwd").unwrap();
        prop_assert_eq!(f.id, nerdbox_forward_id(&container, &dest));
        prop_assert_eq!(f.host_path.to_str().unwrap(), host.as_str());
    }
}
