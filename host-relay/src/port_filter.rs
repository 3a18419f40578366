//! `--auto-forward all|PORTS`: which guest TCP ports get a local forward.

use sockfwd_proto::target::PortRange;
/// What is wrong with a port list: a port or range as proto reads it.
pub use sockfwd_proto::target::PortRangeError as PortFilterError;
use std::str::FromStr;

/// Which guest ports are auto-forwarded: `all`, or ports and ranges
/// (`3000,8000-8999`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortFilter(Vec<PortRange>);

impl PortFilter {
    /// Every port.
    pub fn all() -> PortFilter {
        PortFilter(Vec::new())
    }

    /// Whether `port` is forwarded.
    pub fn allows(&self, port: u16) -> bool {
        self.0.is_empty() || self.0.iter().any(|r| r.contains(port))
    }
}

impl FromStr for PortFilter {
    type Err = PortFilterError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "all" {
            return Ok(PortFilter::all());
        }
        s.split(',')
            .map(str::parse)
            .collect::<Result<_, _>>()
            .map(PortFilter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_and_match() {
        let f: PortFilter = "3000,8000-8999".parse().unwrap();
        assert!(f.allows(3000) && f.allows(8500) && !f.allows(3001) && !f.allows(9000));
        assert!("all".parse::<PortFilter>().unwrap().allows(1));
        let cases = [
            ("", PortFilterError::Port(String::new())),
            ("0", PortFilterError::Port("0".into())),
            ("x", PortFilterError::Port("x".into())),
            ("9-8", PortFilterError::Reversed("9-8".into())),
            ("1,,2", PortFilterError::Port(String::new())),
            ("70000", PortFilterError::Port("70000".into())),
        ];
        for (bad, want) in cases {
            assert_eq!(bad.parse::<PortFilter>(), Err(want), "{bad:?}");
        }
    }
}
