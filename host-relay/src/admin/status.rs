//! `sockfwd-relay status`: every forward's counters as a table or as
//! Prometheus text (exposition format 0.0.4), from the relay's own tables and,
//! when a session is up, the agent's `ListForwards`.

use sockfwd_proto::counters::CounterSnapshot;
use sockfwd_proto::log_text::escape_clipped;
use std::fmt::Write as _;

/// Longest ID, FROM or TO cell of the table, in characters.
const CELL_MAX: usize = 512;

/// Which way a forward goes, in the words of the status table and the
/// metrics (kept from before the vocabulary: dashboards and scripts read them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// A remote forward (`--forward`): listens in the guest, dials on the host.
    Remote,
    /// A local forward (`-L`, auto-forward): listens on the host, dials in the guest.
    Local,
}

impl Direction {
    /// The `direction` label: `guest_to_host` or `host_to_guest`.
    pub fn label(self) -> &'static str {
        match self {
            Direction::Remote => "guest_to_host",
            Direction::Local => "host_to_guest",
        }
    }
}

/// One forward's counters as reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// Which way it goes.
    pub direction: Direction,
    /// Whose counters: `relay` or `agent`.
    pub side: &'static str,
    /// The forward ID.
    pub id: String,
    /// Where connections come in.
    pub from: String,
    /// Where they go.
    pub to: String,
    /// The counters.
    pub counters: CounterSnapshot,
}

/// A fixed-width table, one row per forward. The ID, FROM and TO cells are
/// escaped and clipped as log text is: the agent's rows are what the guest
/// sent, and the table goes to a terminal.
pub fn table(rows: &[Row]) -> String {
    let head = [
        "DIRECTION",
        "SIDE",
        "ID",
        "FROM",
        "TO",
        "ACTIVE",
        "TOTAL",
        "REFUSED",
        "FAILED",
        "TO_GUEST",
        "TO_HOST",
    ];
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let c = &r.counters;
            vec![
                r.direction.label().to_owned(),
                r.side.to_owned(),
                escape_clipped(&r.id, CELL_MAX).to_string(),
                escape_clipped(&r.from, CELL_MAX).to_string(),
                escape_clipped(&r.to, CELL_MAX).to_string(),
                c.active.to_string(),
                c.total.to_string(),
                c.refused.to_string(),
                c.failed.to_string(),
                c.bytes_to_guest.to_string(),
                c.bytes_to_host.to_string(),
            ]
        })
        .collect();
    let widths: Vec<usize> = (0..head.len())
        .map(|i| {
            cells
                .iter()
                .map(|c| c[i].len())
                .chain([head[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    let line = |out: &mut String, cols: &[&str]| {
        let text: Vec<String> = cols
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(text.join("  ").trim_end());
        out.push('\n');
    };
    line(&mut out, &head);
    for c in &cells {
        let cols: Vec<&str> = c.iter().map(String::as_str).collect();
        line(&mut out, &cols);
    }
    out
}

/// The current session's pre-opened streams as Prometheus gauges: how many
/// are `open` of the `size` the agent granted (both 0 without a pool). Not
/// in the table, whose lines are one per forward for the scripts that read it.
pub fn pool_metrics(open: usize, size: usize) -> String {
    let mut out = String::new();
    for (name, help, value) in [
        (
            "sockfwd_stream_pool_open",
            "Pre-opened streams open (opening, parked or carrying a connection).",
            open,
        ),
        (
            "sockfwd_stream_pool_size",
            "Most pre-opened streams the agent granted this session (0: no pool).",
            size,
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
        let _ = writeln!(out, "{name} {value}");
    }
    out
}

/// A label value with `\`, `"` and newlines escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Prometheus text exposition.
pub fn prometheus(rows: &[Row]) -> String {
    type Metric = (
        &'static str,
        &'static str,
        &'static str,
        fn(&CounterSnapshot) -> u64,
    );
    let metrics: [Metric; 6] = [
        (
            "sockfwd_connections_active",
            "gauge",
            "Connections open now.",
            |c| c.active,
        ),
        (
            "sockfwd_connections_total",
            "counter",
            "Connections seen.",
            |c| c.total,
        ),
        (
            "sockfwd_connections_refused_total",
            "counter",
            "Connections refused by a cap.",
            |c| c.refused,
        ),
        (
            "sockfwd_connections_failed_total",
            "counter",
            "Connections that failed to set up.",
            |c| c.failed,
        ),
        (
            "sockfwd_bytes_to_guest_total",
            "counter",
            "Bytes relayed towards the guest (finished connections).",
            |c| c.bytes_to_guest,
        ),
        (
            "sockfwd_bytes_to_host_total",
            "counter",
            "Bytes relayed towards the host (finished connections).",
            |c| c.bytes_to_host,
        ),
    ];
    let mut out = String::new();
    for (name, kind, help, value) in metrics {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for r in rows {
            let _ = writeln!(
                out,
                "{name}{{direction=\"{}\",side=\"{}\",id=\"{}\"}} {}",
                r.direction.label(),
                r.side,
                label(&r.id),
                value(&r.counters)
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str) -> Row {
        Row {
            direction: Direction::Local,
            side: "relay",
            id: id.into(),
            from: "127.0.0.1:1".into(),
            to: "127.0.0.1:2".into(),
            counters: CounterSnapshot {
                active: 1,
                total: 2,
                refused: 0,
                failed: 1,
                bytes_to_guest: 10,
                bytes_to_host: 20,
            },
        }
    }

    #[test]
    fn table_aligns_columns() {
        let t = table(&[row("local-1")]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("DIRECTION      SIDE   ID"), "{t}");
        assert!(lines[1].ends_with("1       10        20"), "{t}");
    }

    #[test]
    fn table_cells_are_escaped() {
        let mut r = row("a\nb\u{1b}[31m");
        r.from = "/run/x\0.sock".into();
        let t = table(&[r]);
        assert_eq!(t.lines().count(), 2, "{t}");
        assert!(!t.chars().any(|c| c.is_control() && c != '\n'), "{t:?}");
    }

    #[test]
    fn prometheus_text_escapes_labels() {
        let p = prometheus(&[row("a\"b")]);
        assert!(
            p.contains("# TYPE sockfwd_connections_active gauge\n"),
            "{p}"
        );
        assert!(
            p.contains(
                "sockfwd_bytes_to_host_total{direction=\"host_to_guest\",side=\"relay\",id=\"a\\\"b\"} 20\n"
            ),
            "{p}"
        );
    }
}
