//! A small reader for the Prometheus / OpenMetrics text exposition that
//! `GET /metrics` serves: enough to look samples up by name and labels,
//! and strict about the shape (`# EOF`, when there, last; a `# TYPE` for every
//! family).

use std::collections::{BTreeMap, HashMap};

/// One sample line: `name{k="v",...} value`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed exposition.
#[derive(Clone, Debug)]
pub struct Metrics {
    pub samples: Vec<Sample>,
    /// Family name to its `# TYPE` (counter, gauge, histogram, ...).
    pub types: HashMap<String, String>,
    /// The text as served, for assertion messages.
    pub text: String,
}

/// Suffixes a sample name may add to its family's name.
const SUFFIXES: &[&str] = &[
    "_total", "_bucket", "_count", "_sum", "_created", "_info", "_gcount", "_gsum",
];

impl Metrics {
    /// Parses `text`; Err says what is malformed: a line that is neither a
    /// comment nor a sample, a bad label set or value, no `# EOF` as the
    /// last line (OpenMetrics), or a sample whose family has no `# TYPE` line.
    pub fn parse(text: &str) -> Result<Metrics, String> {
        let lines: Vec<&str> = text.lines().collect();
        // OpenMetrics ends with `# EOF`; the classic text format has none.
        let last = lines.iter().rposition(|l| !l.trim().is_empty());
        if let Some(eof) = lines.iter().position(|l| *l == "# EOF")
            && Some(eof) != last
        {
            return Err("`# EOF` is not the last line".into());
        }
        let mut types = HashMap::new();
        let mut samples = Vec::new();
        for (i, line) in lines.iter().enumerate() {
            let at = |msg: String| format!("line {}: {msg}: {line:?}", i + 1);
            if line.trim().is_empty() {
                continue;
            }
            if let Some(comment) = line.strip_prefix('#') {
                let mut words = comment.split_whitespace();
                if words.next() == Some("TYPE") {
                    let (Some(family), Some(kind)) = (words.next(), words.next()) else {
                        return Err(at("incomplete # TYPE".into()));
                    };
                    types.insert(family.to_owned(), kind.to_owned());
                }
                continue;
            }
            samples.push(parse_sample(line).map_err(at)?);
        }
        let metrics = Metrics {
            samples,
            types,
            text: text.to_owned(),
        };
        for sample in &metrics.samples {
            if metrics.family_of(&sample.name).is_none() {
                return Err(format!("no # TYPE line for the sample {}", sample.name));
            }
        }
        Ok(metrics)
    }

    /// The family (a `# TYPE` name) a sample name belongs to: the name
    /// itself, or the name without one of the sample suffixes.
    pub fn family_of(&self, sample_name: &str) -> Option<&str> {
        if let Some((family, _)) = self.types.get_key_value(sample_name) {
            return Some(family);
        }
        SUFFIXES.iter().find_map(|suffix| {
            let base = sample_name.strip_suffix(suffix)?;
            self.types.get_key_value(base).map(|(f, _)| f.as_str())
        })
    }

    /// The `# TYPE` of the family `sample_name` belongs to.
    pub fn type_of(&self, sample_name: &str) -> Option<&str> {
        let family = self.family_of(sample_name)?;
        self.types.get(family).map(String::as_str)
    }

    /// The sample `name` with exactly the label set `labels`.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let wanted: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.samples
            .iter()
            .find(|s| s.name == name && s.labels == wanted)
            .map(|s| s.value)
    }

    /// The samples `name` whose labels include all of `labels`.
    pub fn matching(&self, name: &str, labels: &[(&str, &str)]) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).is_some_and(|x| x == v))
            })
            .collect()
    }

    /// Sum of the samples `name` whose labels include all of `labels`; 0
    /// when there are none (a counter not yet incremented may be absent).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).iter().map(|s| s.value).sum()
    }

    /// The one sample `name` with exactly `labels`; panics (showing the
    /// samples of that name) if there is none.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or_else(|| {
            let same_name: Vec<&Sample> = self.samples.iter().filter(|s| s.name == name).collect();
            panic!("no sample {name} with labels {labels:?}; samples of that name: {same_name:?}")
        })
    }

    /// Whether any sample carries `label="value"`.
    pub fn any_label(&self, label: &str, value: &str) -> bool {
        self.samples
            .iter()
            .any(|s| s.labels.get(label).is_some_and(|v| v == value))
    }
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .ok_or("no value")?;
    let name = &line[..name_end];
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    {
        return Err(format!("bad metric name {name:?}"));
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(after_brace) = rest.strip_prefix('{') {
        let (parsed, remainder) = parse_labels(after_brace)?;
        labels = parsed;
        rest = remainder;
    }
    // The value, then optionally a timestamp or an exemplar (ignored).
    let value = rest.split_whitespace().next().ok_or("no value")?;
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value: parse_value(value)?,
    })
}

/// Parses `k="v",k2="v2"}` (the text after `{`); returns the labels and
/// the text after `}`. Label values may hold `\\`, `\"` and `\n`.
fn parse_labels(mut text: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    loop {
        text = text.trim_start();
        if let Some(rest) = text.strip_prefix('}') {
            return Ok((labels, rest));
        }
        let eq = text.find('=').ok_or("label without =")?;
        let key = text[..eq].trim();
        if key.is_empty() {
            return Err("empty label name".into());
        }
        let after = text[eq + 1..].trim_start();
        let mut chars = after.char_indices();
        if chars.next().map(|(_, c)| c) != Some('"') {
            return Err(format!("label {key}: value not quoted"));
        }
        let mut value = String::new();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next().map(|(_, c)| c) {
                    Some('n') => value.push('\n'),
                    Some(other) => value.push(other),
                    None => return Err("dangling backslash".into()),
                },
                '"' => {
                    end = Some(i);
                    break;
                }
                other => value.push(other),
            }
        }
        let end = end.ok_or_else(|| format!("label {key}: unterminated value"))?;
        if labels.insert(key.to_owned(), value).is_some() {
            return Err(format!("label {key} twice"));
        }
        text = after[end + 1..].trim_start();
        if let Some(rest) = text.strip_prefix(',') {
            text = rest;
        } else if !text.starts_with('}') {
            return Err("expected , or } after a label".into());
        }
    }
}

fn parse_value(text: &str) -> Result<f64, String> {
    match text {
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => text
            .parse::<f64>()
            .map_err(|e| format!("bad value {text:?}: {e}")),
    }
}

/// `GET /metrics` from a daemon listening on `port`, parsed; panics with
/// the reason (no answer, not 200, malformed) otherwise.
/// Scrapes `/metrics` in the classic Prometheus text format (no `Accept`).
pub async fn scrape(port: u16) -> Metrics {
    let (status, body) = crate::setup::http_get(port, "/metrics")
        .await
        .unwrap_or_else(|e| panic!("scraping /metrics: {e}"));
    assert_eq!(status, 200, "GET /metrics: {body}");
    Metrics::parse(&body).unwrap_or_else(|e| panic!("malformed /metrics ({e}):\n{body}"))
}

/// Scrapes until `cond` holds (up to `limit`); returns whether it did and
/// the last scrape (None if no scrape succeeded).
pub async fn wait_for_metrics(
    port: u16,
    limit: std::time::Duration,
    mut cond: impl FnMut(&Metrics) -> bool,
) -> (bool, Option<Metrics>) {
    let deadline = tokio::time::Instant::now() + limit;
    let mut last = None;
    loop {
        if let Ok((200, body)) = crate::setup::http_get(port, "/metrics").await {
            let metrics = Metrics::parse(&body)
                .unwrap_or_else(|e| panic!("malformed /metrics ({e}):\n{body}"));
            let held = cond(&metrics);
            last = Some(metrics);
            if held {
                return (true, last);
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return (false, last);
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// Scrapes `/metrics` asking for OpenMetrics, as Prometheus does; the
/// answer must end with `# EOF`.
pub async fn scrape_openmetrics(port: u16) -> Metrics {
    let (status, body) = crate::setup::http_get_with(
        port,
        "/metrics",
        Some("application/openmetrics-text; version=1.0.0,text/plain;q=0.5"),
    )
    .await
    .unwrap_or_else(|e| panic!("scraping /metrics: {e}"));
    assert_eq!(status, 200, "GET /metrics: {body}");
    assert_eq!(
        body.lines().last(),
        Some("# EOF"),
        "OpenMetrics ends with # EOF:\n{body}"
    );
    Metrics::parse(&body).unwrap_or_else(|e| panic!("malformed /metrics ({e}):\n{body}"))
}
