//! Property tests (run in CI) for the decoders that read peer or user input: the
//! handshake frame decoder, the address and target parsers, and the ID rules.
//! Arbitrary input must give a value or an error, never a panic, and valid
//! input must round-trip.

// An integration-test crate: every #[test] here is one, and a failed unwrap is a
// failed test.
#![allow(
    clippy::tests_outside_test_module,
    clippy::unwrap_used,
    clippy::expect_used
)]

use proptest::prelude::*;
use sockfwd_proto::handshake::{decode_id, HandshakeError};
use sockfwd_proto::target::Target;
use sockfwd_proto::transport::Address;
use sockfwd_proto::{forward_id, stream_id};

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn handshake_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600), max in 0usize..512) {
        match decode_id(&bytes, max) {
            Ok(Some(id)) => {
                prop_assert!(!id.is_empty());
                prop_assert!(id.len() <= max);
                prop_assert_eq!(&bytes[4..4 + id.len()], id.as_bytes());
            }
            Ok(None) => prop_assert!(bytes.len() < 4 || bytes.len() < 4 + u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize),
            Err(HandshakeError::TooLong { len, max: m }) => prop_assert!(len as usize > m),
            Err(_) => {}
        }
    }

    #[test]
    fn handshake_decoder_accepts_every_valid_id(id in "[A-Za-z0-9_-]{1,256}") {
        let mut frame = u32::try_from(id.len()).unwrap().to_be_bytes().to_vec();
        frame.extend_from_slice(id.as_bytes());
        prop_assert_eq!(decode_id(&frame, 256).unwrap(), Some(id));
    }

    #[test]
    fn address_parser_never_panics(s in "\\PC{0,80}") {
        let _ = s.parse::<Address>();
    }

    #[test]
    fn addresses_round_trip(cid in any::<u32>(), port in any::<u32>(), path in "/[a-z0-9/._-]{1,60}") {
        for a in [
            Address::Vsock { cid, port },
            Address::Unix(path.clone().into()),
            Address::Hybrid { path: path.clone().into(), port },
        ] {
            prop_assert_eq!(a.to_string().parse::<Address>().unwrap(), a);
        }
    }

    #[test]
    fn target_parser_never_panics_and_its_output_round_trips(s in "\\PC{0,80}") {
        if let Ok(t) = s.parse::<Target>() {
            prop_assert_eq!(t.to_string().parse::<Target>(), Ok(t));
        }
    }

    #[test]
    fn target_soup_round_trips(s in "(unix:)?[0-9a-z:\\[\\]/._-]{0,30}") {
        if let Ok(t) = s.parse::<Target>() {
            prop_assert_eq!(t.to_string().parse::<Target>(), Ok(t));
        }
    }

    #[test]
    fn stream_id_rule_is_printable_ascii_up_to_256(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let want = !bytes.is_empty() && bytes.len() <= 256 && bytes.iter().all(|b| (0x21..=0x7e).contains(b));
        prop_assert_eq!(stream_id::check_bytes(&bytes).is_ok(), want);
    }

    #[test]
    fn forward_id_rule_is_its_alphabet_up_to_128(s in "\\PC{0,140}") {
        let want = !s.is_empty() && s.len() <= 128
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        prop_assert_eq!(forward_id::check(&s).is_ok(), want);
    }
}
