//! Parsing the Prometheus text exposition a gateway serves on `/metrics` (the subset
//! prometheus-client writes: `name{label="value",...} number`, `#` comments).

use std::collections::BTreeMap;

/// One sample: a series and its value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Sample {
    /// Metric name as exposed (`meridian_gateway_requests_total`).
    pub name: String,
    /// Labels by name.
    pub labels: BTreeMap<String, String>,
    /// The value.
    pub value: f64,
}

impl Sample {
    /// The value of label `name`, empty when absent.
    pub(crate) fn label(&self, name: &str) -> &str {
        self.labels.get(name).map_or("", String::as_str)
    }
}

/// Every sample of `text`; lines that are not samples (comments, `# EOF`, garbage) are
/// skipped, so one odd line does not hide the rest.
pub(crate) fn parse(text: &str) -> Vec<Sample> {
    text.lines().filter_map(sample).collect()
}

fn sample(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(['{', ' '])?;
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let (parsed, after) = label_set(inner)?;
        labels = parsed;
        rest = after;
    }
    // The value, then an optional timestamp.
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// Parses `k="v",...}` (after the `{`); returns the labels and the text after `}`.
fn label_set(mut s: &str) -> Option<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
    loop {
        s = s.trim_start_matches([',', ' ']);
        if let Some(after) = s.strip_prefix('}') {
            return Some((labels, after));
        }
        let (key, after) = s.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        labels.insert(key.trim().to_owned(), value);
        s = &after[end + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_samples_and_skips_the_rest() {
        let text = "# HELP x Requests.\n# TYPE x counter\n\
            x_total{service=\"a.b.global\",cluster=\"we\\\"st\",le=\"+Inf\"} 3\n\
            up 1\n\
            bucket{le=\"+Inf\"} +Inf\n\
            not a sample\n# EOF\n";
        let s = parse(text);
        assert_eq!(s.len(), 3, "{s:?}");
        assert_eq!(s[0].name, "x_total");
        assert_eq!(s[0].label("service"), "a.b.global");
        assert_eq!(s[0].label("cluster"), "we\"st");
        assert_eq!(s[0].label("le"), "+Inf");
        assert_eq!(s[0].label("missing"), "");
        assert_eq!(s[0].value, 3.0);
        assert_eq!((s[1].name.as_str(), s[1].value), ("up", 1.0));
        assert!(s[1].labels.is_empty());
        assert_eq!(s[2].value, f64::INFINITY);
    }
}
