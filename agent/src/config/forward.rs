//! Boot-time forwards (`forward`): sockets the agent binds at start, before any
//! host attaches. The text form (a flag, a `sockfwd.forward=` word, a string in
//! the file) is `ID:PATH[:MODE[:UID:GID]]` (an empty MODE, UID or GID keeps the
//! default; PATH holds no `:`) or `ID:tcp:IP:PORT` (`[IPV6]:PORT`); the file
//! may also give a table of `id` and `path` (with `mode`, `uid`, `gid`) or `tcp`.

use crate::config::values::{read_text, Gid, Kind, Mode, Uid, ValueError};
use serde::Deserialize;
use sockfwd_proto::forward_id;
use sockfwd_proto::rpc::Socket;
use sockfwd_proto::transport::ListenAt;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::str::FromStr;
use toml::Value as Toml;

/// A forward from the configuration, bound at start so that guest services
/// find its socket at once; its clients wait for a host like any other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootForward {
    /// The forward ID the host will use for it.
    pub id: String,
    /// Where it listens.
    pub listen: ListenAt,
    /// Its mode; `None`: the `socket_mode` setting.
    pub mode: Option<u32>,
    /// Its owner; `None`: the `socket_uid` setting.
    pub uid: Option<u32>,
    /// Its group; `None`: the `socket_gid` setting.
    pub gid: Option<u32>,
}

/// The kind of the `forward` key: a [`BootForward`], repeatable.
pub enum Forward {}

impl Kind for Forward {
    type Value = BootForward;
    const LIST: bool = true;
    const NAME: &'static str = "ID:PATH[:MODE[:UID:GID]]";
    const SAMPLE: &'static str = "f:/run/f.sock";
    fn parse(s: &str) -> Result<BootForward, ValueError> {
        s.parse()
    }
    fn show(f: &BootForward) -> Toml {
        let mut t = toml::Table::new();
        t.insert("id".into(), f.id.clone().into());
        let place = match f.listen {
            ListenAt::Unix(_) => "path",
            ListenAt::Tcp(_) => "tcp",
        };
        t.insert(place.into(), f.listen.to_string().into());
        if let Some(mode) = &f.mode {
            t.insert("mode".into(), Mode::show(mode));
        }
        for (key, id) in [("uid", f.uid), ("gid", f.gid)] {
            if let Some(id) = id {
                t.insert(key.into(), Toml::Integer(id.into()));
            }
        }
        Toml::Table(t)
    }
    fn read(value: Toml) -> Result<BootForward, ValueError> {
        if !value.is_table() {
            return read_text::<Self>(value);
        }
        /// A `[[forward]]` table as the file writes it; the numbers are read
        /// by their kinds, as in the text form.
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Table {
            id: String,
            path: Option<String>,
            tcp: Option<String>,
            mode: Option<Toml>,
            uid: Option<Toml>,
            gid: Option<Toml>,
        }
        let t = Table::deserialize(value).map_err(|e| ValueError::Table(e.message().to_owned()))?;
        let read = |name, v: Option<Toml>, read: fn(Toml) -> Result<u32, ValueError>| {
            v.map(read).transpose().map_err(|e| field(name, e))
        };
        let mode = read("mode", t.mode, Mode::read)?;
        let (uid, gid) = (
            read("uid", t.uid, Uid::read)?,
            read("gid", t.gid, Gid::read)?,
        );
        let table = |why: &str| Err(ValueError::Table(why.to_owned()));
        match (t.path, t.tcp) {
            (Some(path), None) => boot(&t.id, unix(&path), (mode, uid, gid)),
            (None, Some(addr)) if mode.or(uid).or(gid).is_none() => boot(&t.id, tcp(&addr), NONE),
            (None, Some(_)) => table("mode, uid and gid apply to a path, not to tcp"),
            (None, None) => table("missing field `path` (or `tcp`, for a TCP listener)"),
            (Some(_), Some(_)) => table("`path` or `tcp`, not both"),
        }
    }
}

impl FromStr for BootForward {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<BootForward, ValueError> {
        // A PATH is absolute, so `tcp:` after the ID can only mean TCP.
        if let Some((id, addr)) = s
            .split_once(':')
            .and_then(|(id, rest)| Some((id, rest.strip_prefix("tcp:")?)))
        {
            return boot(id, tcp(addr), NONE);
        }
        let (id, path, mode, uid, gid) = match s.split(':').collect::<Vec<_>>()[..] {
            [id, path] => (id, path, "", "", ""),
            [id, path, m] => (id, path, m, "", ""),
            [id, path, m, u, g] => (id, path, m, u, g),
            _ => return Err(ValueError::Expected(FORWARD)),
        };
        // An empty MODE, UID or GID keeps the setting's default.
        let opt = |name, v: &str, parse: fn(&str) -> Result<u32, ValueError>| {
            (!v.is_empty())
                .then(|| parse(v))
                .transpose()
                .map_err(|e| field(name, e))
        };
        let mode = opt("MODE", mode, Mode::parse)?;
        let ids = (opt("UID", uid, Uid::parse)?, opt("GID", gid, Gid::parse)?);
        boot(id, unix(path), (mode, ids.0, ids.1))
    }
}

const FORWARD: &str = "ID:PATH[:MODE[:UID:GID]] or ID:tcp:IP:PORT";
const TCP: &str = "IP:PORT, an IPv6 address in brackets";
/// No mode or owner given.
const NONE: (Option<u32>, Option<u32>, Option<u32>) = (None, None, None);

fn field(field: &'static str, error: ValueError) -> ValueError {
    ValueError::Field(field, Box::new(error))
}

/// A forward of checked fields: the ID first, then where it listens.
fn boot(
    id: &str,
    listen: Result<ListenAt, ValueError>,
    (mode, uid, gid): (Option<u32>, Option<u32>, Option<u32>),
) -> Result<BootForward, ValueError> {
    forward_id::check(id).map_err(|e| field("ID", e.into()))?;
    let (id, listen) = (id.to_owned(), listen?);
    Ok(BootForward {
        id,
        listen,
        mode,
        uid,
        gid,
    })
}

/// A Unix forward's path, which must be absolute.
fn unix(path: &str) -> Result<ListenAt, ValueError> {
    match Path::new(path).is_absolute() {
        true => Ok(ListenAt::Unix(path.into())),
        false => Err(field("PATH", ValueError::Expected("an absolute path"))),
    }
}

/// A TCP forward's address (no mode or owner: those are a file's).
fn tcp(addr: &str) -> Result<ListenAt, ValueError> {
    let addr = addr.parse::<SocketAddr>();
    addr.map(ListenAt::Tcp)
        .map_err(|_| field("tcp", ValueError::Expected(TCP)))
}

impl BootForward {
    /// The Bind request entry for this forward.
    pub fn to_socket(&self) -> Socket {
        Socket {
            forward_id: self.id.clone(),
            socket_path: self.listen.socket_path(),
            tcp_listen: self.listen.tcp_listen(),
            mode: self.mode,
            uid: self.uid,
            gid: self.gid,
            ..Default::default()
        }
    }
}

impl fmt::Display for BootForward {
    /// The text form (see the module docs), which reads back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.listen {
            ListenAt::Unix(p) => write!(f, "{}:{}", self.id, p.display())?,
            ListenAt::Tcp(a) => return write!(f, "{}:tcp:{a}", self.id),
        }
        if self.mode.is_some() || self.uid.is_some() || self.gid.is_some() {
            f.write_str(":")?;
            if let Some(mode) = self.mode {
                write!(f, "{mode:04o}")?;
            }
        }
        if self.uid.is_some() || self.gid.is_some() {
            let id = |v: Option<u32>| v.map(|v| v.to_string()).unwrap_or_default();
            write!(f, ":{}:{}", id(self.uid), id(self.gid))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boot(id: &str, path: &str) -> BootForward {
        BootForward {
            id: id.into(),
            listen: ListenAt::Unix(path.into()),
            mode: None,
            uid: None,
            gid: None,
        }
    }

    #[test]
    fn boot_forwards_print_in_the_command_line_form() {
        let mut f = boot("web", "/run/web.sock");
        assert_eq!(f.to_string(), "web:/run/web.sock");
        f.mode = Some(0o660);
        assert_eq!(f.to_string(), "web:/run/web.sock:0660");
        f.uid = Some(0);
        f.gid = Some(5);
        assert_eq!(f.to_string(), "web:/run/web.sock:0660:0:5");
        f.mode = None;
        assert_eq!(f.to_string(), "web:/run/web.sock::0:5");
        let s = f.to_socket();
        assert_eq!(s.socket_path, "/run/web.sock");
        assert_eq!((s.mode, s.uid, s.gid), (None, Some(0), Some(5)));
        assert_eq!(s.tcp_listen, "");

        let tcp = BootForward {
            listen: ListenAt::Tcp("[::1]:5432".parse().unwrap()),
            ..boot("db", "/unused")
        };
        assert_eq!(tcp.to_string(), "db:tcp:[::1]:5432");
        let s = tcp.to_socket();
        assert_eq!(
            (s.socket_path.as_str(), s.tcp_listen.as_str()),
            ("", "[::1]:5432")
        );
    }

    #[test]
    fn forward_specs_round_trip_their_text_and_table_forms() {
        for (spec, want) in [
            ("a:/r/a.sock", "a:/r/a.sock"),
            ("a:/r/a.sock:660", "a:/r/a.sock:0660"),
            ("a:/r/a.sock:0660:1:2", "a:/r/a.sock:0660:1:2"),
            ("a:/r/a.sock::1:", "a:/r/a.sock::1:"),
            ("db:tcp:127.0.0.1:5432", "db:tcp:127.0.0.1:5432"),
            ("db:tcp:[::1]:0", "db:tcp:[::1]:0"),
        ] {
            let f: BootForward = spec.parse().unwrap();
            assert_eq!(f.to_string(), want);
            assert_eq!(want.parse::<BootForward>().unwrap(), f);
            assert_eq!(Forward::read(Forward::show(&f)).unwrap(), f, "{spec}");
        }
        for bad in ["a", "a:/r:1:2", "a:/r/a.sock:1:2:3:4"] {
            let err = bad.parse::<BootForward>().unwrap_err().to_string();
            assert_eq!(err, "expected ID:PATH[:MODE[:UID:GID]] or ID:tcp:IP:PORT");
        }
        for bad in ["db:tcp:localhost:5432", "db:tcp:::1:5432", "db:tcp:1.2.3.4"] {
            let err = bad.parse::<BootForward>().unwrap_err().to_string();
            assert_eq!(err, "tcp: expected IP:PORT, an IPv6 address in brackets");
        }
    }
}
