//! Injectable incidents: `slow:COMPONENT@START[+DURATION]` multiplies latency
//! by 10, `errors:COMPONENT@START[+DURATION]` raises the error rate to 20%,
//! `disputed:COMPONENT@START[+DURATION]` lowers the approval of its
//! decisions' ratings to 30% (an uncertainty incident).
//! Times are event time from the start of the run; no duration = until the end.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncidentKind {
    Slow,
    Errors,
    Disputed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incident {
    pub kind: IncidentKind,
    pub component: String,
    pub start: Duration,
    pub duration: Option<Duration>,
}

impl Incident {
    /// Whether the incident covers `offset_ms` of event time since the start.
    pub fn covers(&self, offset_ms: i64) -> bool {
        let start = self.start.as_millis() as i64;
        offset_ms >= start && self.duration.is_none_or(|d| offset_ms < start + d.as_millis() as i64)
    }
}

impl FromStr for Incident {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let usage = "expected KIND:COMPONENT@START[+DURATION] with KIND slow (latency x10), errors (20% errors) or disputed \
             (30% approval), e.g. slow:checkout@5m+10m";
        let (kind, rest) = s.split_once(':').ok_or_else(|| format!("{s:?}: {usage}"))?;
        let kind = match kind {
            "slow" => IncidentKind::Slow,
            "errors" => IncidentKind::Errors,
            "disputed" => IncidentKind::Disputed,
            other => return Err(format!("{s:?}: unknown incident kind {other:?}; {usage}")),
        };
        let (component, times) = rest.split_once('@').ok_or_else(|| format!("{s:?}: missing @START; {usage}"))?;
        if component.is_empty() {
            return Err(format!("{s:?}: empty component; {usage}"));
        }
        let (start, duration) = match times.split_once('+') {
            Some((a, b)) => (a, Some(b)),
            None => (times, None),
        };
        let parse = |t: &str| {
            humantime::parse_duration(t).map_err(|e| format!("{s:?}: bad time {t:?} ({e}); use e.g. 90s, 5m, 1h"))
        };
        Ok(Incident {
            kind,
            component: component.to_string(),
            start: parse(start)?,
            duration: duration.map(parse).transpose()?,
        })
    }
}

impl fmt::Display for Incident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            IncidentKind::Slow => "slow",
            IncidentKind::Errors => "errors",
            IncidentKind::Disputed => "disputed",
        };
        write!(f, "{kind}:{}@{}", self.component, humantime::format_duration(self.start))?;
        if let Some(d) = self.duration {
            write!(f, "+{}", humantime::format_duration(d))?;
        }
        Ok(())
    }
}
