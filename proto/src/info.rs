//! The capability call, `Info` (an extension): the names under which an agent
//! lists its extensions, and [`AgentInfo`], what a host keeps of the answer.
//!
//! Names rather than a bit set: a new extension takes a new name without
//! coordinating bit numbers between branches, and `status` can show them as
//! they are. A host asks "does the agent support X" with
//! [`AgentInfo::supports`]; a peer that does not answer `Info` (nerdbox) is
//! [`AgentInfo::core_only`], so every extension gated on a name is off there.
//!
//! The extensions that came before `Info` keep their own negotiation (framing
//! bits, feature bits, calling a method and reading UNIMPLEMENTED); their
//! names are listed too, for people, and a host never turns one of them off
//! because its name is missing. Every extension added after `Info` is used
//! only when its name is listed.

use crate::rpc::InfoResponse;
use std::collections::BTreeSet;

/// `Socket.mode`/`uid`/`gid` (wire-protocol 8.1). Informational.
pub const SOCKET_OWNER: &str = "socket-owner";
/// End-of-stream framing (8.2). Informational: negotiated per stream.
pub const EOF_FRAMING: &str = "eof-framing";
/// The early-result feature bit (8.3). Informational: negotiated per request.
pub const EARLY_RESULT: &str = "early-result";
/// The `Shutdown` method (8.4). Informational.
pub const SHUTDOWN: &str = "shutdown";
/// The `Connect` method, local forwards (8.5). Informational.
pub const CONNECT: &str = "connect";
/// The `WatchPorts` method (8.6). Informational.
pub const WATCH_PORTS: &str = "watch-ports";
/// The `Unbind` method (8.7). Informational.
pub const UNBIND: &str = "unbind";
/// The `ListForwards` method (8.8). Informational.
pub const LIST_FORWARDS: &str = "list-forwards";

/// TCP listeners for remote forwards: `Socket.tcp_listen` and
/// `ForwardInfo.tcp_listen` (8.10). Used only when listed.
pub const TCP_LISTEN: &str = "tcp-listen";

/// Pre-opened streams: the `StreamPool` method and the in-band header and
/// verdict on pooled streams (8.11, [`crate::stream_pool`]). Used only when listed.
pub const STREAM_POOL: &str = "stream-pool";

/// Every extension this build of the agent supports, in the order `Info` lists them.
pub const SUPPORTED: &[&str] = &[
    SOCKET_OWNER,
    EOF_FRAMING,
    EARLY_RESULT,
    SHUTDOWN,
    CONNECT,
    WATCH_PORTS,
    UNBIND,
    LIST_FORWARDS,
    TCP_LISTEN,
    STREAM_POOL,
];

/// Most extension names a host keeps from one answer; the rest are ignored.
pub const MAX_EXTENSIONS: usize = 64;
/// Longest extension name, in bytes.
pub const MAX_NAME_LEN: usize = 64;
/// Longest version text a host keeps, in bytes (longer is clipped).
pub const MAX_VERSION_LEN: usize = 128;

/// Whether `name` is a well-formed extension name: 1 to [`MAX_NAME_LEN`]
/// bytes of `a-z 0-9 -`. A host ignores any other string in the list.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// What a host knows of an agent's capabilities, for one control session.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentInfo {
    version: Option<String>,
    extensions: BTreeSet<String>,
}

impl AgentInfo {
    /// A peer that does not answer `Info` (a nerdbox guest): no extension
    /// gated on a name is used.
    pub fn core_only() -> AgentInfo {
        AgentInfo::default()
    }

    /// What a host keeps of an answer: at most [`MAX_EXTENSIONS`] well-formed
    /// names (a peer cannot make the host hold more), and the version clipped
    /// to [`MAX_VERSION_LEN`] bytes. Also returns how many entries were dropped.
    pub fn from_response(resp: &InfoResponse) -> (AgentInfo, usize) {
        let mut extensions = BTreeSet::new();
        let mut dropped = 0;
        for name in &resp.extensions {
            if is_valid_name(name) && extensions.len() < MAX_EXTENSIONS {
                extensions.insert(name.clone());
            } else {
                dropped += 1;
            }
        }
        let version = clip(&resp.version, MAX_VERSION_LEN).to_owned();
        let info = AgentInfo {
            version: Some(version),
            extensions,
        };
        (info, dropped)
    }

    /// The answer an agent with `version` and `extensions` gives.
    pub fn response(version: &str, extensions: &[&str]) -> InfoResponse {
        let mut resp = InfoResponse::new();
        resp.version = version.to_owned();
        resp.extensions = extensions.iter().map(|&e| e.to_owned()).collect();
        resp
    }

    /// Whether the agent listed extension `name`.
    pub fn supports(&self, name: &str) -> bool {
        self.extensions.contains(name)
    }

    /// Whether the agent answered `Info` at all (false: a core-only peer).
    pub fn answered(&self) -> bool {
        self.version.is_some()
    }

    /// The agent's version text as it sent it (clipped; escape it for logs),
    /// `None` for a core-only peer.
    pub fn version(&self) -> Option<&str> {
        self.version.as_deref()
    }

    /// The listed extensions, sorted.
    pub fn extensions(&self) -> impl Iterator<Item = &str> {
        self.extensions.iter().map(String::as_str)
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn clip(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_core_only_peer_supports_nothing() {
        let info = AgentInfo::core_only();
        assert!(!info.answered());
        assert!(!info.supports(SOCKET_OWNER));
        assert_eq!(info.version(), None);
    }

    #[test]
    fn an_answer_is_kept_bounded_and_only_well_formed_names_count() {
        let mut resp = AgentInfo::response("sockfwd-agent 9.9.9", SUPPORTED);
        resp.extensions.push("Bad Name".into());
        resp.extensions.push(String::new());
        resp.extensions.push("x".repeat(MAX_NAME_LEN + 1));
        let (info, dropped) = AgentInfo::from_response(&resp);
        assert_eq!(dropped, 3);
        assert_eq!(info.version(), Some("sockfwd-agent 9.9.9"));
        assert!(SUPPORTED.iter().all(|e| info.supports(e)));
        assert!(!info.supports("bad name") && !info.supports("Bad Name"));

        let mut flood = InfoResponse::new();
        flood.version = "é".repeat(MAX_VERSION_LEN);
        flood.extensions = (0..1000).map(|i| format!("e{i}")).collect();
        let (info, dropped) = AgentInfo::from_response(&flood);
        assert_eq!(info.extensions().count(), MAX_EXTENSIONS);
        assert_eq!(dropped, 1000 - MAX_EXTENSIONS);
        let v = info.version().unwrap();
        assert!(
            v.len() <= MAX_VERSION_LEN && v.chars().all(|c| c == 'é'),
            "{v}"
        );
    }

    #[test]
    fn names_are_lowercase_words_with_hyphens() {
        for ok in SUPPORTED.iter().chain(&["a", "tcp-listen", "v2"]) {
            assert!(is_valid_name(ok), "{ok}");
        }
        for bad in ["", "TCP", "tcp_listen", "tcp listen", "é"] {
            assert!(!is_valid_name(bad), "{bad:?}");
        }
    }
}
