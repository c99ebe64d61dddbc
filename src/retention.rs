//! Retention: which versions of a dataset a policy keeps, decided exactly
//! as `restic forget` decides (the same buckets, the same order, the same
//! reasons), so that `tabacco forget` never surprises someone who knows
//! restic.
//!
//! The decision is computed here rather than by `restic forget --keep-*`
//! because tabacco groups versions per host, source and dataset name, a
//! grouping restic cannot express (`--group-by tags` groups by the whole
//! tag set, and every snapshot carries its own backup id): delegating
//! would cost one repository open and one exclusive lock per dataset.
//! Here one `restic snapshots` lists everything and one `restic forget
//! ID...` removes what the policies decided. `tests/it/retention.rs`
//! proves the decisions equal to `restic forget --dry-run --json` on
//! generated two-year histories, with the restic the tests run.
//!
//! restic's rules changed once in the versions tabacco supports: from
//! 0.18.0 a bucket with counts left also keeps the group's oldest
//! snapshot ("oldest daily snapshot"); [`Rules::keep_oldest`] says which.
//!
//! A leaf module: pure functions over times and ids.

use chrono::{DateTime, Datelike, FixedOffset, NaiveDate, TimeDelta, Timelike, Utc};
use serde::{Deserialize, Serialize};

/// restic's calendar duration (`--keep-within 1y2m3d4h`): years, months,
/// days and hours, counted back from the group's newest snapshot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CalendarDuration {
    /// Years.
    pub years: i32,
    /// Months.
    pub months: i32,
    /// Days.
    pub days: i32,
    /// Hours.
    pub hours: i32,
}

impl CalendarDuration {
    /// Parse restic's format: numbers each followed by a unit `y`, `m`,
    /// `d` or `h` (`30d`, `1y6m`, `2d12h`). Unlike restic, negative numbers
    /// and an empty duration are refused.
    pub fn parse(s: &str) -> Result<CalendarDuration, String> {
        let text = s.trim();
        let mut d = CalendarDuration::default();
        let mut rest = text;
        if rest.is_empty() {
            return Err("is empty: write e.g. 30d, 1y6m, 2d12h".into());
        }
        while !rest.is_empty() {
            let digits = rest.chars().take_while(|c| c.is_ascii_digit()).count();
            if digits == 0 {
                return Err(format!(
                    "{text:?} is not a restic duration: expected a number at {rest:?} (write e.g. 30d, 1y6m, 2d12h)"
                ));
            }
            let num: i32 = rest[..digits]
                .parse()
                .map_err(|_| format!("{text:?}: the number {} is too large", &rest[..digits]))?;
            rest = &rest[digits..];
            let Some(unit) = rest.chars().next() else {
                return Err(format!(
                    "{text:?}: no unit after {num} (units: y, m, d, h; e.g. 30d)"
                ));
            };
            match unit {
                'y' => d.years = num,
                'm' => d.months = num,
                'd' => d.days = num,
                'h' => d.hours = num,
                other => {
                    return Err(format!(
                        "{text:?}: unknown unit {other:?} after {num} (units: y for years, m for months, d for days, h for hours)"
                    ));
                }
            }
            rest = &rest[unit.len_utf8()..];
        }
        if d.is_zero() {
            return Err(format!("{text:?} is zero: give a positive duration"));
        }
        Ok(d)
    }

    /// Whether every part is zero.
    pub fn is_zero(&self) -> bool {
        self.years == 0 && self.months == 0 && self.days == 0 && self.hours == 0
    }

    /// `t` minus this duration, as Go's `t.AddDate(-y, -m, -d).Add(-h
    /// hours)` computes it (days and months normalised: March 31 minus one
    /// month is March 3).
    pub fn before(&self, t: DateTime<FixedOffset>) -> Option<DateTime<FixedOffset>> {
        let months = i64::from(t.year()) * 12 + i64::from(t.month0())
            - i64::from(self.years) * 12
            - i64::from(self.months);
        let year = i32::try_from(months.div_euclid(12)).ok()?;
        let month0 = u32::try_from(months.rem_euclid(12)).ok()?;
        let first = NaiveDate::from_ymd_opt(year, month0 + 1, 1)?;
        let day = first.checked_add_signed(TimeDelta::days(
            i64::from(t.day()) - 1 - i64::from(self.days),
        ))?;
        let local = day.and_time(t.time());
        let shifted = local.and_local_timezone(*t.offset()).single()?;
        shifted.checked_sub_signed(TimeDelta::hours(i64::from(self.hours)))
    }
}

impl std::fmt::Display for CalendarDuration {
    /// restic's form: `1y2m3d4h`, zero parts left out.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (n, unit) in [
            (self.years, 'y'),
            (self.months, 'm'),
            (self.days, 'd'),
            (self.hours, 'h'),
        ] {
            if n != 0 {
                write!(f, "{n}{unit}")?;
            }
        }
        Ok(())
    }
}

/// A retention policy in restic's vocabulary (`retention:` of a source or
/// the default in `agent.yml`). Counts of 0 are unset.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Policy {
    /// Keep the newest N versions.
    pub keep_last: u32,
    /// Keep the newest version of each of the last N hours that have one.
    pub keep_hourly: u32,
    /// The same per day.
    pub keep_daily: u32,
    /// The same per ISO week.
    pub keep_weekly: u32,
    /// The same per month.
    pub keep_monthly: u32,
    /// The same per year.
    pub keep_yearly: u32,
    /// Keep every version made within this duration of the newest one.
    pub keep_within: Option<CalendarDuration>,
}

impl Policy {
    /// Whether the policy keeps nothing by itself (restic 0.14 would keep
    /// everything, newer versions refuse to run): tabacco never applies an
    /// empty policy.
    pub fn is_empty(&self) -> bool {
        self.keep_last == 0
            && self.keep_hourly == 0
            && self.keep_daily == 0
            && self.keep_weekly == 0
            && self.keep_monthly == 0
            && self.keep_yearly == 0
            && self.keep_within.is_none_or(|d| d.is_zero())
    }

    /// restic's description (`keep 2 latest, 7 daily snapshots and all
    /// snapshots within 30d of the newest`).
    pub fn describe(&self) -> String {
        let counts: Vec<String> = [
            (self.keep_last, "latest"),
            (self.keep_hourly, "hourly"),
            (self.keep_daily, "daily"),
            (self.keep_weekly, "weekly"),
            (self.keep_monthly, "monthly"),
            (self.keep_yearly, "yearly"),
        ]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("{n} {what}"))
        .collect();
        let mut s = String::new();
        if !counts.is_empty() {
            s = format!("{} snapshots", counts.join(", "));
        }
        if let Some(w) = self.keep_within.filter(|w| !w.is_zero()) {
            if !s.is_empty() {
                s.push_str(" and ");
            }
            s.push_str(&format!("all snapshots within {w} of the newest"));
        }
        if s.is_empty() {
            "keep everything (empty policy)".into()
        } else {
            format!("keep {s}")
        }
    }

    /// The `restic forget` flags of this policy (for tests and for an
    /// operator who wants to compare).
    pub fn restic_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        for (n, flag) in [
            (self.keep_last, "--keep-last"),
            (self.keep_hourly, "--keep-hourly"),
            (self.keep_daily, "--keep-daily"),
            (self.keep_weekly, "--keep-weekly"),
            (self.keep_monthly, "--keep-monthly"),
            (self.keep_yearly, "--keep-yearly"),
        ] {
            if n > 0 {
                args.push(flag.to_string());
                args.push(n.to_string());
            }
        }
        if let Some(w) = self.keep_within.filter(|w| !w.is_zero()) {
            args.push("--keep-within".into());
            args.push(w.to_string());
        }
        args
    }
}

/// The version-dependent parts of restic's rules.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rules {
    /// restic 0.18 and later: a bucket with counts left also keeps the
    /// group's oldest snapshot.
    pub keep_oldest: bool,
}

/// One version of a dataset, as retention sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    /// Snapshot id.
    pub id: String,
    /// Snapshot time, with the offset it was written with (restic's
    /// buckets use that wall clock).
    pub time: DateTime<FixedOffset>,
}

/// What the policy decided for one version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// Snapshot id.
    pub id: String,
    /// Snapshot time.
    pub time: DateTime<FixedOffset>,
    /// Kept (else removed).
    pub keep: bool,
    /// Why it is kept, in restic's words (`last snapshot`, `daily
    /// snapshot`, `within 30d`, ...); empty when removed.
    pub reasons: Vec<String>,
}

fn ymdh(t: &DateTime<FixedOffset>) -> i64 {
    i64::from(t.year()) * 1_000_000
        + i64::from(t.month()) * 10_000
        + i64::from(t.day()) * 100
        + i64::from(t.hour())
}

fn ymd(t: &DateTime<FixedOffset>) -> i64 {
    i64::from(t.year()) * 10_000 + i64::from(t.month()) * 100 + i64::from(t.day())
}

fn yw(t: &DateTime<FixedOffset>) -> i64 {
    let w = t.iso_week();
    i64::from(w.year()) * 100 + i64::from(w.week())
}

fn ym(t: &DateTime<FixedOffset>) -> i64 {
    i64::from(t.year()) * 100 + i64::from(t.month())
}

fn y(t: &DateTime<FixedOffset>) -> i64 {
    i64::from(t.year())
}

/// Apply `policy` to the versions of one group, as restic's
/// `ApplyPolicy` does: newest first (a stable sort, so versions with the
/// same time keep their given order), "within" counted back from the
/// newest version that is not in the future of `now`. Returns one
/// decision per version, newest first. An empty policy keeps everything.
pub fn apply(
    policy: &Policy,
    versions: &[Version],
    now: DateTime<Utc>,
    rules: Rules,
) -> Vec<Decision> {
    let mut list: Vec<&Version> = versions.iter().collect();
    list.sort_by_key(|v| std::cmp::Reverse(v.time));
    if policy.is_empty() {
        return list
            .into_iter()
            .map(|v| Decision {
                id: v.id.clone(),
                time: v.time,
                keep: true,
                reasons: vec!["policy is empty".into()],
            })
            .collect();
    }
    type Bucker = fn(&DateTime<FixedOffset>) -> i64;
    struct Bucket {
        count: u32,
        bucker: Option<Bucker>,
        last: Option<i64>,
        reason: &'static str,
    }
    let mut buckets = [
        Bucket {
            count: policy.keep_last,
            bucker: None,
            last: None,
            reason: "last snapshot",
        },
        Bucket {
            count: policy.keep_hourly,
            bucker: Some(ymdh),
            last: None,
            reason: "hourly snapshot",
        },
        Bucket {
            count: policy.keep_daily,
            bucker: Some(ymd),
            last: None,
            reason: "daily snapshot",
        },
        Bucket {
            count: policy.keep_weekly,
            bucker: Some(yw),
            last: None,
            reason: "weekly snapshot",
        },
        Bucket {
            count: policy.keep_monthly,
            bucker: Some(ym),
            last: None,
            reason: "monthly snapshot",
        },
        Bucket {
            count: policy.keep_yearly,
            bucker: Some(y),
            last: None,
            reason: "yearly snapshot",
        },
    ];
    // Go's zero time when every version is in the future.
    let latest = list
        .iter()
        .filter(|v| v.time.with_timezone(&Utc) < now)
        .map(|v| v.time)
        .max();
    let within_since = match (policy.keep_within.filter(|w| !w.is_zero()), latest) {
        (Some(w), Some(latest)) => Some(w.before(latest)),
        // Go: the zero time minus a duration; everything is after it.
        (Some(_), None) => Some(None),
        _ => None,
    };
    let n = list.len();
    let mut out = Vec::with_capacity(n);
    for (nr, cur) in list.into_iter().enumerate() {
        let mut reasons = Vec::new();
        if let (Some(since), Some(w)) = (within_since, policy.keep_within) {
            if since.is_none_or(|since| cur.time > since) {
                reasons.push(format!("within {w}"));
            }
        }
        let oldest = nr + 1 == n;
        for b in buckets.iter_mut() {
            if b.count == 0 {
                continue;
            }
            let val = match b.bucker {
                Some(f) => f(&cur.time),
                None => nr as i64,
            };
            let new_bucket = b.last != Some(val);
            if new_bucket || (rules.keep_oldest && oldest) {
                let reason = if !new_bucket {
                    format!("oldest {}", b.reason)
                } else {
                    b.reason.to_string()
                };
                b.last = Some(val);
                b.count -= 1;
                reasons.push(reason);
            }
        }
        out.push(Decision {
            id: cur.id.clone(),
            time: cur.time,
            keep: !reasons.is_empty(),
            reasons,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<FixedOffset> {
        DateTime::parse_from_rfc3339(s).unwrap()
    }

    fn versions(times: &[&str]) -> Vec<Version> {
        times
            .iter()
            .enumerate()
            .map(|(i, s)| Version {
                id: format!("{i:064x}"),
                time: t(s),
            })
            .collect()
    }

    fn kept(d: &[Decision]) -> Vec<String> {
        d.iter()
            .filter(|d| d.keep)
            .map(|d| d.time.to_rfc3339())
            .collect()
    }

    #[test]
    fn durations_parse_like_restic() {
        let d = CalendarDuration::parse("1y2m3d4h").unwrap();
        assert_eq!((d.years, d.months, d.days, d.hours), (1, 2, 3, 4));
        assert_eq!(d.to_string(), "1y2m3d4h");
        assert_eq!(CalendarDuration::parse(" 30d ").unwrap().to_string(), "30d");
        assert!(CalendarDuration::parse("").is_err());
        assert!(
            CalendarDuration::parse("30")
                .unwrap_err()
                .contains("no unit")
        );
        assert!(
            CalendarDuration::parse("2w")
                .unwrap_err()
                .contains("unknown unit")
        );
        assert!(CalendarDuration::parse("-1d").is_err());
        assert!(CalendarDuration::parse("0d").unwrap_err().contains("zero"));
    }

    #[test]
    fn within_subtracts_like_go_add_date() {
        let d = CalendarDuration::parse("1m").unwrap();
        // Go: 2024-03-31 minus one month is 2024-02-31, i.e. March 2.
        assert_eq!(
            d.before(t("2024-03-31T10:00:00+02:00")).unwrap(),
            t("2024-03-02T10:00:00+02:00")
        );
        let d = CalendarDuration::parse("1d5h").unwrap();
        assert_eq!(
            d.before(t("2024-01-01T03:00:00Z")).unwrap(),
            t("2023-12-30T22:00:00Z")
        );
    }

    #[test]
    fn keep_last_and_daily() {
        let v = versions(&[
            "2024-01-01T10:00:00Z",
            "2024-01-01T12:00:00Z",
            "2024-01-02T09:00:00Z",
            "2024-01-03T09:00:00Z",
            "2024-01-03T18:00:00Z",
        ]);
        let now = Utc::now();
        let p = Policy {
            keep_last: 2,
            ..Policy::default()
        };
        let d = apply(&p, &v, now, Rules::default());
        assert_eq!(
            kept(&d),
            ["2024-01-03T18:00:00+00:00", "2024-01-03T09:00:00+00:00"]
        );
        assert_eq!(d[0].reasons, ["last snapshot"]);
        let p = Policy {
            keep_daily: 5,
            ..Policy::default()
        };
        let d = apply(&p, &v, now, Rules::default());
        assert_eq!(
            kept(&d),
            [
                "2024-01-03T18:00:00+00:00",
                "2024-01-02T09:00:00+00:00",
                "2024-01-01T12:00:00+00:00"
            ]
        );
        // restic 0.18 also keeps the oldest while counts are left.
        let d = apply(&p, &v, now, Rules { keep_oldest: true });
        assert_eq!(kept(&d).len(), 4);
        assert_eq!(d[4].reasons, ["oldest daily snapshot"]);
    }

    #[test]
    fn buckets_use_the_snapshots_own_wall_clock() {
        // 23:30 at +02:00 is the 1st locally, the 1st at 21:30 UTC too;
        // 01:30 at +02:00 on the 2nd is 23:30 UTC on the 1st.
        let v = versions(&["2024-01-01T23:30:00+02:00", "2024-01-02T01:30:00+02:00"]);
        let p = Policy {
            keep_daily: 10,
            ..Policy::default()
        };
        let d = apply(&p, &v, Utc::now(), Rules::default());
        assert_eq!(kept(&d).len(), 2);
    }

    #[test]
    fn within_counts_from_the_newest_not_from_now() {
        let v = versions(&[
            "2020-01-01T00:00:00Z",
            "2020-01-20T00:00:00Z",
            "2020-02-01T00:00:00Z",
        ]);
        let p = Policy {
            keep_within: Some(CalendarDuration::parse("15d").unwrap()),
            ..Policy::default()
        };
        let d = apply(&p, &v, Utc::now(), Rules::default());
        assert_eq!(
            kept(&d),
            ["2020-02-01T00:00:00+00:00", "2020-01-20T00:00:00+00:00"]
        );
        assert_eq!(d[1].reasons, ["within 15d"]);
    }

    #[test]
    fn policies_describe_themselves_like_restic() {
        let p = Policy {
            keep_last: 2,
            keep_daily: 7,
            keep_within: Some(CalendarDuration::parse("30d").unwrap()),
            ..Policy::default()
        };
        assert_eq!(
            p.describe(),
            "keep 2 latest, 7 daily snapshots and all snapshots within 30d of the newest"
        );
        assert_eq!(
            p.restic_args(),
            [
                "--keep-last",
                "2",
                "--keep-daily",
                "7",
                "--keep-within",
                "30d"
            ]
        );
        assert!(Policy::default().is_empty());
    }
}
