//! The relay's own table of remote forwards: the only place a
//! `ConnectRequest.forward_id` is resolved (the guest never supplies a path or
//! an address), with each forward's counters, its own caps and, for a guest TCP
//! listener, the address the agent bound. Built from the configuration; the
//! admin socket and the library add and remove forwards while the relay runs.

use crate::limits::ForwardLimiter;
use crate::remote_spec::Forward;
use crate::rpc::{list_forwards, CallError};
use sockfwd_proto::counters::ForwardCounters;
use sockfwd_proto::info::{AgentInfo, TCP_LISTEN};
use sockfwd_proto::rpc::{BindRequest, ForwardInfo, Socket, SocketForwardClient};
use sockfwd_proto::transport::ListenAt;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard};
use std::time::Duration;
use thiserror::Error;

/// What the relay says of a guest TCP listener an agent without the
/// `tcp-listen` extension (a nerdbox guest) cannot have.
pub const NO_TCP_LISTEN: &str = "the guest agent does not support TCP listeners";

/// One forward with its live state.
#[derive(Debug)]
pub struct ForwardEntry {
    /// The configured forward.
    pub forward: Forward,
    /// Its counters, shared with its connections' tasks.
    pub counters: Arc<ForwardCounters>,
    /// Its own concurrency and rate caps.
    pub(crate) limiter: ForwardLimiter,
    /// A guest TCP listener's bound address, as the agent of the latest
    /// session listed it (`None`: not bound yet, or a socket file).
    bound: Mutex<Option<SocketAddr>>,
}

impl ForwardEntry {
    /// Where it listens in the guest now: the socket file, or the bound TCP
    /// address (with the port the agent picked for port 0); `None` while a TCP
    /// listener is not bound.
    pub fn guest_addr(&self) -> Option<ListenAt> {
        match &self.forward.listen {
            ListenAt::Unix(_) => Some(self.forward.listen.clone()),
            ListenAt::Tcp(_) => self.bound().map(ListenAt::Tcp),
        }
    }

    fn bound(&self) -> Option<SocketAddr> {
        *self.bound.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records the address the agent bound; whether it changed.
    pub(crate) fn set_bound(&self, addr: Option<SocketAddr>) -> bool {
        let mut b = self.bound.lock().unwrap_or_else(PoisonError::into_inner);
        std::mem::replace(&mut *b, addr) != addr
    }

    /// The guest side as `status` and the printed lines show it: the bound
    /// address when known, else the configured one.
    pub fn guest_text(&self) -> String {
        self.guest_addr()
            .unwrap_or_else(|| self.forward.listen.clone())
            .to_string()
    }

    /// The line printed on stdout once a guest TCP listener is bound (again
    /// when a new agent gives it another port): `remote GUEST -> TARGET`.
    pub fn remote_line(&self) -> String {
        format!("remote {} -> {}", self.guest_text(), self.forward.target)
    }
}

/// A `Bind` request for the agent of one session, and the forwards left out.
#[derive(Debug)]
pub struct BindPlan {
    /// The request.
    pub request: BindRequest,
    /// Forwards with a guest TCP listener, left out: the agent does not list
    /// the `tcp-listen` extension.
    pub no_tcp_listen: Vec<Arc<ForwardEntry>>,
}

/// Why a forward could not be added at runtime.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum InsertError {
    /// Another forward listens at the same place in the guest.
    #[error("guest listener {at} is already forward {id:?}")]
    ListenerTaken {
        /// The socket file or TCP address.
        at: ListenAt,
        /// The forward that has it.
        id: String,
    },
    /// The ID is taken.
    #[error("forward ID {0:?} is already in use")]
    IdTaken(String),
}

/// Forwards by ID.
#[derive(Debug)]
pub struct ForwardTable {
    by_id: RwLock<HashMap<String, Arc<ForwardEntry>>>,
    rate_per_forward: u32,
    /// Requests naming a forward ID not in the table.
    pub unknown: AtomicU64,
}

impl ForwardTable {
    /// Builds the table; `rate_per_forward` is new connections per second (0: no cap).
    /// IDs are assumed unique (the configuration checks it).
    pub fn new(forwards: &[Forward], rate_per_forward: u32) -> ForwardTable {
        let table = ForwardTable {
            by_id: RwLock::new(HashMap::new()),
            rate_per_forward,
            unknown: AtomicU64::new(0),
        };
        {
            let mut t = table.write();
            for f in forwards {
                t.insert(f.id.clone(), table.entry(f.clone()));
            }
        }
        table
    }

    fn entry(&self, forward: Forward) -> Arc<ForwardEntry> {
        Arc::new(ForwardEntry {
            forward,
            counters: Arc::default(),
            limiter: ForwardLimiter::new(self.rate_per_forward),
            bound: Mutex::new(None),
        })
    }

    fn read(&self) -> RwLockReadGuard<'_, HashMap<String, Arc<ForwardEntry>>> {
        // Every update is one insert or remove: a poisoned lock is still consistent.
        self.by_id.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<ForwardEntry>>> {
        self.by_id.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Resolves an ID the guest sent.
    pub fn get(&self, id: &str) -> Option<Arc<ForwardEntry>> {
        self.read().get(id).cloned()
    }

    /// Number of forwards.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether the table has no forwards.
    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    /// Every forward, sorted by ID.
    pub fn entries(&self) -> Vec<Arc<ForwardEntry>> {
        let mut v: Vec<_> = self.read().values().cloned().collect();
        v.sort_by(|a, b| a.forward.id.cmp(&b.forward.id));
        v
    }

    /// Adds a forward at runtime; refuses an ID or guest listener already there.
    pub fn insert(&self, forward: Forward) -> Result<Arc<ForwardEntry>, InsertError> {
        let mut t = self.write();
        if let Some(at) = forward.listen.place() {
            if let Some(e) = t.values().find(|e| e.forward.listen.place() == Some(at)) {
                return Err(InsertError::ListenerTaken {
                    at: at.clone(),
                    id: e.forward.id.clone(),
                });
            }
        }
        if t.contains_key(&forward.id) {
            return Err(InsertError::IdTaken(forward.id));
        }
        let entry = self.entry(forward);
        t.insert(entry.forward.id.clone(), Arc::clone(&entry));
        Ok(entry)
    }

    /// Removes a forward at runtime; its open connections keep their entry.
    pub fn remove(&self, id: &str) -> Option<Arc<ForwardEntry>> {
        self.write().remove(id)
    }

    /// The `Bind` request that creates every listener of the table the agent
    /// `info` describes can have: a guest TCP listener only for an agent that
    /// lists `tcp-listen` (a nerdbox guest would skip the field and bind an
    /// empty path).
    pub fn bind_plan(&self, info: &AgentInfo) -> BindPlan {
        let tcp = info.supports(TCP_LISTEN);
        let (sockets, no_tcp_listen): (Vec<_>, Vec<_>) = self
            .entries()
            .into_iter()
            .partition(|e| tcp || !e.forward.listens_on_tcp());
        let mut request = BindRequest::new();
        // A stable order makes the agent's logs and errors reproducible.
        request.sockets = sockets.iter().map(|e| socket(&e.forward)).collect();
        BindPlan {
            request,
            no_tcp_listen,
        }
    }

    /// Records the bound addresses of the table's guest TCP listeners from
    /// the agent's `ListForwards`; returns the forwards whose address changed.
    /// A forward the list leaves out is not bound.
    pub(crate) fn record_bound(&self, listed: &[ForwardInfo]) -> Vec<Arc<ForwardEntry>> {
        let by_id: HashMap<&str, &ForwardInfo> =
            listed.iter().map(|f| (f.forward_id.as_str(), f)).collect();
        self.entries()
            .into_iter()
            .filter(|e| e.forward.listens_on_tcp())
            .filter(|e| {
                let addr = by_id
                    .get(e.forward.id.as_str())
                    .and_then(|f| f.tcp_listen.parse::<SocketAddr>().ok());
                e.set_bound(addr) && addr.is_some()
            })
            .collect()
    }

    /// Asks the agent which addresses its TCP listeners got (`ListForwards`,
    /// within `limit`) and records them; returns the forwards whose address
    /// changed. An agent without `tcp-listen` (`info`) has none: nothing is
    /// asked (a nerdbox guest does not have the call), and none is bound.
    pub(crate) async fn learn_bound(
        &self,
        client: &SocketForwardClient,
        info: &AgentInfo,
        limit: Duration,
    ) -> Result<Vec<Arc<ForwardEntry>>, CallError> {
        let any_tcp = self.entries().iter().any(|e| e.forward.listens_on_tcp());
        if !any_tcp || !info.supports(TCP_LISTEN) {
            return Ok(self.record_bound(&[]));
        }
        let listed = list_forwards(client, limit).await?;
        Ok(self.record_bound(&listed))
    }
}

/// The `Bind` entry of one forward.
pub fn socket(f: &Forward) -> Socket {
    let mut s = Socket::new();
    s.forward_id = f.id.clone();
    s.socket_path = f.listen.socket_path();
    s.tcp_listen = f.listen.tcp_listen();
    if let ListenAt::Unix(_) = f.listen {
        s.mode = f.mode;
        s.uid = f.uid;
        s.gid = f.gid;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_only_configured_ids_and_builds_bind() {
        let mut f = Forward::from_spec("a=/g/a.sock:/h/a.sock").unwrap();
        f.mode = Some(0o660);
        f.gid = Some(5);
        let t = ForwardTable::new(&[f], 0);
        assert!(t.get("a").is_some());
        assert!(t.get("/h/a.sock").is_none());
        let req = t.bind_plan(&AgentInfo::core_only()).request;
        assert_eq!(req.sockets.len(), 1);
        assert_eq!(req.sockets[0].socket_path, "/g/a.sock");
        assert_eq!(req.sockets[0].tcp_listen, "");
        assert_eq!(req.sockets[0].mode, Some(0o660));
        assert_eq!(req.sockets[0].uid, None);
        assert_eq!(req.sockets[0].gid, Some(5));
    }

    #[test]
    fn tcp_listeners_go_only_to_an_agent_that_lists_them() {
        let forwards = [
            Forward::from_spec("a=/g/a.sock:/h/a.sock").unwrap(),
            Forward::from_remote_spec("t=0:localhost:5432").unwrap(),
        ];
        let t = ForwardTable::new(&forwards, 0);
        let plan = t.bind_plan(&AgentInfo::core_only());
        assert_eq!(plan.request.sockets.len(), 1);
        assert_eq!(plan.request.sockets[0].forward_id, "a");
        assert_eq!(plan.no_tcp_listen.len(), 1);
        assert_eq!(plan.no_tcp_listen[0].forward.id, "t");

        let (info, _) = AgentInfo::from_response(&AgentInfo::response("x", &[TCP_LISTEN]));
        let plan = t.bind_plan(&info);
        assert!(plan.no_tcp_listen.is_empty());
        let tcp = &plan.request.sockets[1];
        assert_eq!(
            (tcp.socket_path.as_str(), tcp.tcp_listen.as_str()),
            ("", "127.0.0.1:0")
        );
        assert_eq!((tcp.mode, tcp.uid, tcp.gid), (None, None, None));

        // The agent's list gives the port; a second identical list changes nothing.
        let mut listed = ForwardInfo::new();
        listed.forward_id = "t".into();
        listed.tcp_listen = "127.0.0.1:41233".into();
        let changed = t.record_bound(std::slice::from_ref(&listed));
        assert_eq!(changed.len(), 1);
        let entry = t.get("t").unwrap();
        assert_eq!(entry.guest_text(), "127.0.0.1:41233");
        assert!(t.record_bound(&[listed]).is_empty());
        assert_eq!(
            t.get("a").unwrap().guest_addr(),
            Some(ListenAt::Unix("/g/a.sock".into()))
        );
        assert_eq!(
            entry.remote_line(),
            "remote 127.0.0.1:41233 -> localhost:5432"
        );
        // A session whose agent lists nothing (a restarted one, not bound yet).
        assert!(t.record_bound(&[]).is_empty());
        assert_eq!(entry.guest_addr(), None);
        assert_eq!(entry.guest_text(), "127.0.0.1:0");
    }

    #[test]
    fn runtime_inserts_refuse_a_taken_id_or_guest_path() {
        let t = ForwardTable::new(&[Forward::from_spec("a=/g/a.sock:/h/a").unwrap()], 0);
        assert_eq!(
            t.insert(Forward::from_spec("b=/g/a.sock:/h/b").unwrap())
                .unwrap_err(),
            InsertError::ListenerTaken {
                at: ListenAt::Unix("/g/a.sock".into()),
                id: "a".into()
            }
        );
        assert_eq!(
            t.insert(Forward::from_spec("a=/g/c.sock:/h/c").unwrap())
                .unwrap_err()
                .to_string(),
            r#"forward ID "a" is already in use"#
        );
        t.insert(Forward::from_spec("b=/g/b.sock:/h/b").unwrap())
            .unwrap();
        assert_eq!(t.len(), 2);
        assert!(t.remove("a").is_some());
        assert_eq!(t.entries()[0].forward.id, "b");
    }
}
