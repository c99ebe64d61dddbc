//! Schedules: parsing a source's `schedule` and computing its next run.
//!
//! Forms (all times in **UTC**, so a fleet spread over time zones agrees on
//! what `0 3 * * *` means and no run is skipped or doubled at a daylight
//! saving change):
//!
//! - a five-field cron expression (`minute hour day-of-month month
//!   day-of-week`), evaluated with croner;
//! - `@hourly`, `@daily`, `@weekly`, `@monthly`: `0 * * * *`, `0 0 * * *`,
//!   `0 0 * * 0`, `0 0 1 * *`;
//! - `@every D`: at every multiple of `D` counted from the Unix epoch
//!   (`@every 6h` runs at 00:00, 06:00, 12:00 and 18:00 UTC), so the times
//!   do not depend on when the agent started;
//! - `@random_every D`: like `@every D`, shifted by a fixed offset inside
//!   the period derived from this host's random seed and the source name.
//!   A fleet spreads its load over the period, and a host keeps its slot
//!   across restarts (the seed lives in `random_seed_file`).
//!
//! [`next_run`] is a pure function of the schedule, a point in time, the
//! seed and the source name.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

/// A parsed schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schedule {
    /// A cron expression (the `@hourly`... shortcuts become one).
    Cron {
        /// The expression as written by the user.
        expr: String,
        /// The parsed expression.
        cron: Box<Cron>,
    },
    /// At every multiple of the period since the Unix epoch.
    Every(Duration),
    /// At every multiple of the period since the Unix epoch, plus a
    /// per-host, per-source offset inside the period.
    RandomEvery(Duration),
}

impl std::fmt::Display for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Schedule::Cron { expr, .. } => f.write_str(expr),
            Schedule::Every(d) => write!(f, "@every {}", humantime::format_duration(*d)),
            Schedule::RandomEvery(d) => {
                write!(f, "@random_every {}", humantime::format_duration(*d))
            }
        }
    }
}

impl Schedule {
    /// Parse a schedule expression; the error says what is wrong and which
    /// forms are accepted.
    pub fn parse(s: &str) -> Result<Schedule, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("is empty: remove the key for on-demand backups only".to_string());
        }
        if let Some(rest) = s.strip_prefix('@') {
            let (word, arg) = match rest.split_once(char::is_whitespace) {
                Some((w, a)) => (w, a.trim()),
                None => (rest, ""),
            };
            let shortcut = match word {
                "hourly" => Some("0 * * * *"),
                "daily" => Some("0 0 * * *"),
                "weekly" => Some("0 0 * * 0"),
                "monthly" => Some("0 0 1 * *"),
                _ => None,
            };
            return match (word, shortcut) {
                (_, Some(expr)) => {
                    if arg.is_empty() {
                        Ok(Schedule::Cron {
                            expr: s.to_string(),
                            cron: Box::new(parse_cron(expr)?),
                        })
                    } else {
                        Err(format!("@{word} takes no argument, got {arg:?}"))
                    }
                }
                ("every" | "random_every", None) => {
                    if arg.is_empty() {
                        return Err(format!("@{word} needs a duration, e.g. @{word} 6h"));
                    }
                    let d = parse_period(arg).map_err(|e| format!("@{word}: {e}"))?;
                    Ok(if word == "every" {
                        Schedule::Every(d)
                    } else {
                        Schedule::RandomEvery(d)
                    })
                }
                _ => Err(format!(
                    "unknown schedule {s:?}: use @hourly, @daily, @weekly, @monthly, @every DURATION, @random_every DURATION or a five-field cron expression"
                )),
            };
        }
        let fields = s.split_whitespace().count();
        if fields != 5 {
            return Err(format!(
                "{s:?} has {fields} field(s): a cron schedule has five (minute hour day-of-month month day-of-week)"
            ));
        }
        Ok(Schedule::Cron {
            expr: s.to_string(),
            cron: Box::new(parse_cron(s)?),
        })
    }
}

fn parse_cron(s: &str) -> Result<Cron, String> {
    let cron = CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .build()
        .parse(s)
        .map_err(|e| format!("{s:?} is not a valid cron expression: {e}"))?;
    // A valid expression may name a date that never comes (30 February).
    if cron.find_next_occurrence(&Utc::now(), false).is_err() {
        return Err(format!(
            "{s:?} never fires: no date matches its day-of-month and month fields"
        ));
    }
    Ok(cron)
}

/// Parse a period such as `90s`, `30m`, `6h` or `1h30m`: at least one
/// millisecond.
fn parse_period(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("{s:?} is not a duration ({e}): write e.g. 90s, 30m, 6h or 1h30m"))?;
    if d.as_millis() == 0 {
        return Err(format!("{s:?} is zero: a duration must be at least 1ms"));
    }
    if d.as_millis() > i64::MAX as u128 / 4 {
        return Err(format!("{s:?} is too long"));
    }
    Ok(d)
}

/// This host's random seed: bytes from `random_seed_file`.
#[derive(Clone, PartialEq, Eq)]
pub struct Seed(Vec<u8>);

impl std::fmt::Debug for Seed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Seed({} bytes)", self.0.len())
    }
}

/// Bytes written to a new seed file.
pub const SEED_BYTES: usize = 32;

/// The seed file could not be read or created.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    /// I/O on the seed file failed.
    #[error("random seed file {}: {context}: {source}", path.display())]
    Io {
        /// The seed file.
        path: PathBuf,
        /// What we were doing.
        context: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The file exists but holds too few bytes.
    #[error("random seed file {} holds {len} byte(s), fewer than 8: delete it and the agent creates a new one (the host's @random_every slots will move)", path.display())]
    TooShort {
        /// The seed file.
        path: PathBuf,
        /// Its length.
        len: usize,
    },
}

impl Seed {
    /// A seed from given bytes (tests, or a seed read elsewhere).
    pub fn from_bytes(bytes: impl Into<Vec<u8>>) -> Seed {
        Seed(bytes.into())
    }

    /// Read the seed file, creating it first (random bytes, mode 0600,
    /// parent directories as needed) if it does not exist.
    pub fn load_or_create(path: &Path) -> Result<Seed, SeedError> {
        let io = |context: &'static str| {
            move |source: std::io::Error| SeedError::Io {
                path: path.to_path_buf(),
                context,
                source,
            }
        };
        match std::fs::read(path) {
            Ok(bytes) if bytes.len() >= 8 => return Ok(Seed(bytes)),
            Ok(bytes) => {
                return Err(SeedError::TooShort {
                    path: path.to_path_buf(),
                    len: bytes.len(),
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("cannot read it")(e)),
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io("cannot create its directory"))?;
        }
        let mut bytes = vec![0u8; SEED_BYTES];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut bytes))
            .map_err(io("cannot read random bytes from /dev/urandom for it"))?;
        use std::os::unix::fs::OpenOptionsExt;
        let created = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path);
        match created {
            Ok(mut f) => {
                f.write_all(&bytes)
                    .and_then(|()| f.sync_all())
                    .map_err(io("cannot write it"))?;
                tracing::info!(path = %path.display(), "created a new random seed file");
                Ok(Seed(bytes))
            }
            // Another process created it meanwhile: use theirs.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let bytes = std::fs::read(path).map_err(io("cannot read it"))?;
                if bytes.len() < 8 {
                    return Err(SeedError::TooShort {
                        path: path.to_path_buf(),
                        len: bytes.len(),
                    });
                }
                Ok(Seed(bytes))
            }
            Err(e) => Err(io("cannot create it")(e)),
        }
    }
}

/// A stable 64-bit hash of the seed and the source name (FNV-1a, then the
/// SplitMix64 finaliser to spread the bits). Stable across versions and
/// platforms: hosts keep their slots after an upgrade.
pub fn slot_hash(seed: &Seed, source: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in seed
        .0
        .iter()
        .chain([0xffu8].iter())
        .chain(source.as_bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The offset of a `@random_every period` source inside its period.
pub fn random_offset(seed: &Seed, source: &str, period: Duration) -> Duration {
    let period_ms = period.as_millis().max(1) as u64;
    Duration::from_millis(slot_hash(seed, source) % period_ms)
}

/// The first time strictly after `after` at which `k * period + offset`
/// falls (k an integer, counted from the Unix epoch).
fn next_aligned(after: DateTime<Utc>, period: Duration, offset: Duration) -> Option<DateTime<Utc>> {
    let p = i64::try_from(period.as_millis()).ok()?.max(1);
    let o = i64::try_from(offset.as_millis()).ok()?;
    let t = after.timestamp_millis();
    let k = (t - o).div_euclid(p) + 1;
    let next = k.checked_mul(p)?.checked_add(o)?;
    DateTime::from_timestamp_millis(next)
}

/// When a source with this schedule runs next: the first run strictly
/// after `after`. `None` if the schedule never fires again.
pub fn next_run(
    schedule: &Schedule,
    after: DateTime<Utc>,
    seed: &Seed,
    source: &str,
) -> Option<DateTime<Utc>> {
    match schedule {
        Schedule::Cron { cron, .. } => cron.find_next_occurrence(&after, false).ok(),
        Schedule::Every(period) => next_aligned(after, *period, Duration::ZERO),
        Schedule::RandomEvery(period) => {
            next_aligned(after, *period, random_offset(seed, source, *period))
        }
    }
}

/// How long from `now` until `when` (zero if it is past).
pub fn until(now: DateTime<Utc>, when: DateTime<Utc>) -> Duration {
    (when - now).to_std().unwrap_or(Duration::ZERO)
}

/// `t` plus a duration, saturating.
pub fn add(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    TimeDelta::from_std(d)
        .ok()
        .and_then(|d| t.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn seed() -> Seed {
        Seed::from_bytes(*b"0123456789abcdef0123456789abcdef")
    }

    fn next(s: &str, after: &str) -> DateTime<Utc> {
        next_run(&Schedule::parse(s).unwrap(), t(after), &seed(), "src").unwrap()
    }

    #[test]
    fn parse_accepts_the_documented_forms() {
        for good in [
            "@hourly",
            "@daily",
            "@weekly",
            "@monthly",
            "@every 6h",
            "@every 1h30m",
            "@random_every 90s",
            "@random_every 1h 30m",
            "0 3 * * *",
            "*/15 * * * 1-5",
            "30 2 1 * sun",
            "  @daily ",
        ] {
            assert!(Schedule::parse(good).is_ok(), "{good:?}");
        }
        assert_eq!(
            Schedule::parse("@every 90s").unwrap(),
            Schedule::Every(Duration::from_secs(90))
        );
        assert_eq!(
            Schedule::parse("@random_every 1h 30m").unwrap().to_string(),
            "@random_every 1h 30m"
        );
        assert_eq!(
            Schedule::parse(" 0 3 * * * ").unwrap().to_string(),
            "0 3 * * *"
        );
    }

    #[test]
    fn parse_rejects_everything_else_with_a_reason() {
        for (bad, why) in [
            ("", "empty"),
            ("@yearly", "unknown schedule"),
            ("@daily 3", "no argument"),
            ("@every", "needs a duration"),
            ("@every 0s", "zero"),
            ("@every soon", "not a duration"),
            ("@random_every -5m", "not a duration"),
            ("* * * *", "4 field"),
            ("0 0 * * * *", "6 field"),
            ("61 * * * *", "not a valid cron"),
            ("daily", "1 field"),
            ("@reboot", "unknown schedule"),
            ("0 0 * * * * 2030", "7 field"),
            ("* 24 * * *", "not a valid cron"),
        ] {
            let e = Schedule::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }

    #[test]
    fn cron_that_never_fires_is_refused() {
        let e = Schedule::parse("0 0 30 2 *").unwrap_err();
        assert!(e.contains("never fires"), "{e}");
        // 29 February comes back every four years.
        assert!(Schedule::parse("0 0 29 2 *").is_ok());
    }

    #[test]
    fn cron_runs_strictly_after_in_utc() {
        assert_eq!(
            next("0 3 * * *", "2026-03-01T02:59:59Z"),
            t("2026-03-01T03:00:00Z")
        );
        assert_eq!(
            next("0 3 * * *", "2026-03-01T03:00:00Z"),
            t("2026-03-02T03:00:00Z")
        );
        assert_eq!(
            next("*/15 * * * *", "2026-03-01T10:07:30Z"),
            t("2026-03-01T10:15:00Z")
        );
        // 2026-03-06 is a Friday: the next weekday run is Monday.
        assert_eq!(
            next("0 9 * * 1-5", "2026-03-06T10:00:00Z"),
            t("2026-03-09T09:00:00Z")
        );
    }

    #[test]
    fn shortcuts_are_cron_expressions() {
        assert_eq!(
            next("@hourly", "2026-03-01T10:00:00Z"),
            t("2026-03-01T11:00:00Z")
        );
        assert_eq!(
            next("@daily", "2026-03-01T10:00:00Z"),
            t("2026-03-02T00:00:00Z")
        );
        // 2026-03-01 is a Sunday.
        assert_eq!(
            next("@weekly", "2026-03-01T10:00:00Z"),
            t("2026-03-08T00:00:00Z")
        );
        assert_eq!(
            next("@monthly", "2026-03-01T00:00:00Z"),
            t("2026-04-01T00:00:00Z")
        );
    }

    #[test]
    fn every_is_aligned_to_the_epoch() {
        assert_eq!(
            next("@every 6h", "2026-03-01T07:00:00Z"),
            t("2026-03-01T12:00:00Z")
        );
        assert_eq!(
            next("@every 6h", "2026-03-01T12:00:00Z"),
            t("2026-03-01T18:00:00Z")
        );
        assert_eq!(
            next("@every 2s", "2026-03-01T12:00:01.5Z"),
            t("2026-03-01T12:00:02Z")
        );
        // Not depending on when we ask: successive runs are one period apart.
        let a = next("@every 7m", "2026-03-01T12:00:00Z");
        let b = next_run(&Schedule::parse("@every 7m").unwrap(), a, &seed(), "src").unwrap();
        assert_eq!(b - a, TimeDelta::minutes(7));
    }

    #[test]
    fn random_every_keeps_its_slot_across_restarts() {
        let s = Schedule::parse("@random_every 24h").unwrap();
        let day = TimeDelta::days(1);
        let first = next_run(&s, t("2026-03-01T00:00:00Z"), &seed(), "src").unwrap();
        // Asking again from anywhere before the slot gives the same slot...
        let again = next_run(&s, first - TimeDelta::seconds(1), &seed(), "src").unwrap();
        assert_eq!(first, again);
        // ... and after it, the same time the next day.
        assert_eq!(next_run(&s, first, &seed(), "src").unwrap(), first + day);
        assert!(first > t("2026-03-01T00:00:00Z") && first <= t("2026-03-02T00:00:00Z"));
        // Another source or another host's seed has another slot.
        let other = next_run(&s, t("2026-03-01T00:00:00Z"), &seed(), "other").unwrap();
        assert_ne!(first, other);
        let host2 = Seed::from_bytes(*b"another host's seed bytes.......");
        assert_ne!(
            next_run(&s, t("2026-03-01T00:00:00Z"), &host2, "src").unwrap(),
            first
        );
    }

    #[test]
    fn random_every_spreads_a_fleet_over_the_period() {
        // 1000 hosts whose seeds differ in a few bytes only.
        let period = Duration::from_secs(24 * 3600);
        let mut offsets: Vec<u64> = (0u32..1000)
            .map(|i| {
                let mut b = [7u8; 32];
                b[..4].copy_from_slice(&i.to_le_bytes());
                random_offset(&Seed::from_bytes(b), "mysql", period).as_secs()
            })
            .collect();
        // Every hour of the day gets its share (expected 41.7 each).
        let mut per_hour = [0u32; 24];
        for o in &offsets {
            assert!(*o < 24 * 3600);
            per_hour[(*o / 3600) as usize] += 1;
        }
        for (h, n) in per_hour.iter().enumerate() {
            assert!(
                (20..=65).contains(n),
                "hour {h} has {n} hosts: {per_hour:?}"
            );
        }
        // No long empty stretch and no pile-up in any minute.
        offsets.sort_unstable();
        let max_gap = offsets.windows(2).map(|w| w[1] - w[0]).max().unwrap();
        let wrap = offsets[0] + 24 * 3600 - offsets[999];
        assert!(max_gap.max(wrap) < 20 * 60, "gap of {max_gap}s");
        let mut per_minute = std::collections::HashMap::new();
        for o in &offsets {
            *per_minute.entry(o / 60).or_insert(0u32) += 1;
        }
        assert!(per_minute.values().all(|&n| n <= 6), "clump in a minute");
    }

    #[test]
    fn slot_hash_is_stable_across_versions() {
        // A change here moves every host's slots: do not change it lightly.
        assert_eq!(
            slot_hash(&Seed::from_bytes(*b"12345678"), "mysql"),
            10_148_308_637_240_396_466
        );
    }

    #[test]
    fn seed_file_is_created_once_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/random_seed");
        let a = Seed::load_or_create(&path).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(meta.len(), SEED_BYTES as u64);
        let b = Seed::load_or_create(&path).unwrap();
        assert_eq!(a, b, "the second start reads the same seed");
        let other = dir.path().join("other");
        assert_ne!(Seed::load_or_create(&other).unwrap(), a, "seeds are random");
        std::fs::write(&other, b"abc").unwrap();
        let e = Seed::load_or_create(&other).unwrap_err().to_string();
        assert!(e.contains("delete it"), "{e}");
    }

    #[test]
    fn until_and_add_saturate() {
        let now = t("2026-03-01T00:00:00Z");
        assert_eq!(until(now, now - TimeDelta::seconds(5)), Duration::ZERO);
        assert_eq!(
            until(now, now + TimeDelta::seconds(5)),
            Duration::from_secs(5)
        );
        assert_eq!(add(now, Duration::from_secs(60)), t("2026-03-01T00:01:00Z"));
    }
}
