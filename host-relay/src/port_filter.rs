//! `--auto-forward all|PORTS`: which guest TCP ports get a local forward.

use std::str::FromStr;
use thiserror::Error;

/// Which guest ports are auto-forwarded: `all`, or ports and ranges
/// (`3000,8000-8999`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortFilter(Vec<(u16, u16)>);

/// What is wrong with a port list.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum PortFilterError {
    /// Not a number from 1 to 65535.
    #[error("{0:?} is not a port from 1 to 65535")]
    Port(String),
    /// `B-A` with B above A.
    #[error("range {0:?} is reversed")]
    Reversed(String),
}

impl PortFilter {
    /// Every port.
    pub fn all() -> PortFilter {
        PortFilter(Vec::new())
    }

    /// Whether `port` is forwarded.
    pub fn allows(&self, port: u16) -> bool {
        self.0.is_empty() || self.0.iter().any(|(a, b)| (*a..=*b).contains(&port))
    }
}

fn port(p: &str) -> Result<u16, PortFilterError> {
    p.parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| PortFilterError::Port(p.to_owned()))
}

impl FromStr for PortFilter {
    type Err = PortFilterError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "all" {
            return Ok(PortFilter::all());
        }
        let mut ranges = Vec::new();
        for part in s.split(',') {
            let (a, b) = part.split_once('-').unwrap_or((part, part));
            let (a, b) = (port(a)?, port(b)?);
            if a > b {
                return Err(PortFilterError::Reversed(part.to_owned()));
            }
            ranges.push((a, b));
        }
        Ok(PortFilter(ranges))
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
