//! Where an endpoint runs: `region/zone/subzone`, and patterns over it with `*` wildcards.

use std::fmt;
use std::str::FromStr;

/// Errors from parsing a locality or a locality pattern.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocalityError {
    /// The text has more than three `/`-separated parts.
    #[error("locality {0:?} has more than three parts (expected region/zone/subzone)")]
    TooManyParts(String),
    /// A part is empty, e.g. `sh//a` or a leading slash.
    #[error("locality {0:?} has an empty part")]
    EmptyPart(String),
    /// A part contains characters that cannot appear in a Kubernetes label value.
    #[error("locality {0:?} contains an invalid character {1:?}")]
    InvalidChar(String, char),
    /// A concrete locality contains `*`.
    #[error("locality {0:?} may not contain a wildcard here")]
    Wildcard(String),
}

/// A concrete locality. Empty parts mean "unknown" (e.g. a node without a zone label).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Locality {
    /// `topology.kubernetes.io/region`.
    pub region: String,
    /// `topology.kubernetes.io/zone`.
    pub zone: String,
    /// `topology.istio.io/subzone`.
    pub subzone: String,
}

impl Locality {
    /// Builds a locality from its parts.
    pub fn new(
        region: impl Into<String>,
        zone: impl Into<String>,
        subzone: impl Into<String>,
    ) -> Self {
        Self {
            region: region.into(),
            zone: zone.into(),
            subzone: subzone.into(),
        }
    }
}

impl fmt::Display for Locality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.region)?;
        if !self.zone.is_empty() || !self.subzone.is_empty() {
            write!(f, "/{}", self.zone)?;
        }
        if !self.subzone.is_empty() {
            write!(f, "/{}", self.subzone)?;
        }
        Ok(())
    }
}

fn split_parts(s: &str) -> Result<Vec<&str>, LocalityError> {
    let parts: Vec<&str> = s.split('/').collect();
    if parts.len() > 3 {
        return Err(LocalityError::TooManyParts(s.to_owned()));
    }
    for p in &parts {
        if p.is_empty() {
            return Err(LocalityError::EmptyPart(s.to_owned()));
        }
        if let Some(c) = p
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '*')))
        {
            return Err(LocalityError::InvalidChar(s.to_owned(), c));
        }
    }
    Ok(parts)
}

impl FromStr for Locality {
    type Err = LocalityError;

    /// Parses `region[/zone[/subzone]]`; wildcards are not allowed.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts = split_parts(s)?;
        if s.contains('*') {
            return Err(LocalityError::Wildcard(s.to_owned()));
        }
        let get = |i: usize| parts.get(i).map(|p| (*p).to_owned()).unwrap_or_default();
        Ok(Self {
            region: get(0),
            zone: get(1),
            subzone: get(2),
        })
    }
}

/// One part of a pattern: a literal or `*`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Part {
    Any,
    Exact(String),
}

impl Part {
    fn matches(&self, value: &str) -> bool {
        match self {
            Part::Any => true,
            Part::Exact(v) => v == value,
        }
    }
}

/// A locality pattern as written in policies: `region[/zone[/subzone]]`, where a part may be
/// `*`. Omitted trailing parts match anything, so `sh` matches every zone of region `sh`,
/// as in Istio's `localityLbSetting`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LocalityPattern {
    parts: [Part; 3],
    text: String,
}

impl LocalityPattern {
    /// Whether `l` is matched by this pattern.
    pub fn matches(&self, l: &Locality) -> bool {
        self.parts[0].matches(&l.region)
            && self.parts[1].matches(&l.zone)
            && self.parts[2].matches(&l.subzone)
    }

    /// How specific the pattern is: the number of literal parts. Used to prefer the most
    /// specific `distribute` rule when several match.
    pub fn specificity(&self) -> usize {
        self.parts
            .iter()
            .filter(|p| matches!(p, Part::Exact(_)))
            .count()
    }

    /// Whether some locality is matched by both this pattern and `other`.
    pub fn overlaps(&self, other: &LocalityPattern) -> bool {
        self.parts
            .iter()
            .zip(&other.parts)
            .all(|(a, b)| match (a, b) {
                (Part::Exact(x), Part::Exact(y)) => x == y,
                _ => true,
            })
    }

    /// The region, when the pattern names exactly one region.
    pub fn region(&self) -> Option<&str> {
        match &self.parts[0] {
            Part::Exact(r) => Some(r),
            Part::Any => None,
        }
    }
}

impl fmt::Display for LocalityPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for LocalityPattern {
    type Err = LocalityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts = split_parts(s)?;
        let part = |i: usize| match parts.get(i) {
            None | Some(&"*") => Ok(Part::Any),
            Some(p) if p.contains('*') => Err(LocalityError::InvalidChar(s.to_owned(), '*')),
            Some(p) => Ok(Part::Exact((*p).to_owned())),
        };
        Ok(Self {
            parts: [part(0)?, part(1)?, part(2)?],
            text: s.to_owned(),
        })
    }
}

impl From<&crate::proto::Locality> for Locality {
    fn from(l: &crate::proto::Locality) -> Self {
        Self::new(l.region.clone(), l.zone.clone(), l.subzone.clone())
    }
}

impl From<&Locality> for crate::proto::Locality {
    fn from(l: &Locality) -> Self {
        Self {
            region: l.region.clone(),
            zone: l.zone.clone(),
            subzone: l.subzone.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let l: Locality = "sh/2000400001/a".parse().unwrap();
        assert_eq!(l, Locality::new("sh", "2000400001", "a"));
        assert_eq!(l.to_string(), "sh/2000400001/a");
        assert_eq!("sh".parse::<Locality>().unwrap().to_string(), "sh");
        assert_eq!("sh/z".parse::<Locality>().unwrap().to_string(), "sh/z");
    }

    #[test]
    fn rejects_malformed() {
        assert!(matches!(
            "a/b/c/d".parse::<Locality>(),
            Err(LocalityError::TooManyParts(_))
        ));
        assert!(matches!(
            "a//c".parse::<Locality>(),
            Err(LocalityError::EmptyPart(_))
        ));
        assert!(matches!(
            "".parse::<Locality>(),
            Err(LocalityError::EmptyPart(_))
        ));
        assert!(matches!(
            "a b".parse::<Locality>(),
            Err(LocalityError::InvalidChar(_, ' '))
        ));
        assert!(matches!(
            "sh/*".parse::<Locality>(),
            Err(LocalityError::Wildcard(_))
        ));
        assert!("sh/z*".parse::<LocalityPattern>().is_err());
    }

    #[test]
    fn wildcards_match() {
        let l = Locality::new("sh", "2000400001", "a");
        for p in [
            "sh",
            "sh/*",
            "sh/2000400001/*",
            "*",
            "*/2000400001",
            "sh/2000400001/a",
        ] {
            assert!(p.parse::<LocalityPattern>().unwrap().matches(&l), "{p}");
        }
        for p in ["bj", "sh/200002", "sh/2000400001/b", "*/*/b"] {
            assert!(!p.parse::<LocalityPattern>().unwrap().matches(&l), "{p}");
        }
        assert_eq!("sh/*".parse::<LocalityPattern>().unwrap().specificity(), 1);
    }
}
