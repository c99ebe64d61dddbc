//! The scheduler: keeps the next run of every scheduled source and fires
//! a callback when one is due.
//!
//! [`Plan`] is the pure part (what runs when, re-planned on reload);
//! [`run_scheduler`] is the loop around it, in the shape of mini-redis's
//! background task: `select!` on a sleep until the next run, a change of
//! the source list, and shutdown. It never sleeps longer than
//! [`MAX_SLEEP`] at once, so a jump of the wall clock (NTP, suspend) is
//! noticed within that time. Time comes from a [`Clock`], so tests run
//! days of schedules in paused tokio time.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::schedule::{Schedule, Seed, next_run, until};

/// The longest single sleep of the scheduler.
pub const MAX_SLEEP: Duration = Duration::from_secs(60);

/// The wall clock.
pub trait Clock: Send + Sync {
    /// Now.
    fn now(&self) -> DateTime<Utc>;
}

/// The system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A wall clock that follows tokio's clock from a fixed start, so that
/// `tokio::time::pause` and auto-advance move it too (tests).
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    base: DateTime<Utc>,
    start: tokio::time::Instant,
}

impl TokioClock {
    /// A clock reading `base` now.
    pub fn starting_at(base: DateTime<Utc>) -> TokioClock {
        TokioClock {
            base,
            start: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now(&self) -> DateTime<Utc> {
        crate::schedule::add(self.base, self.start.elapsed())
    }
}

/// A scheduled source: its name and schedule.
pub type ScheduledSource = (String, Schedule);

#[derive(Debug, Clone)]
struct Entry {
    schedule: Schedule,
    next: Option<DateTime<Utc>>,
}

/// What the plan changed on an update.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlanChanges {
    /// Sources that are now scheduled and were not.
    pub added: Vec<String>,
    /// Sources no longer scheduled.
    pub removed: Vec<String>,
    /// Sources whose schedule changed.
    pub rescheduled: Vec<String>,
}

/// The next run of every scheduled source.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    entries: BTreeMap<String, Entry>,
}

impl Plan {
    /// Adopt a new list of scheduled sources at `now`: removed sources
    /// stop, new ones are planned, changed schedules are re-planned, the
    /// others keep their next run.
    pub fn update(
        &mut self,
        sources: &[ScheduledSource],
        now: DateTime<Utc>,
        seed: &Seed,
    ) -> PlanChanges {
        let mut changes = PlanChanges::default();
        let wanted: BTreeMap<&str, &Schedule> =
            sources.iter().map(|(n, s)| (n.as_str(), s)).collect();
        self.entries.retain(|name, _| {
            let keep = wanted.contains_key(name.as_str());
            if !keep {
                changes.removed.push(name.clone());
            }
            keep
        });
        for (name, schedule) in wanted {
            match self.entries.get_mut(name) {
                Some(e) if e.schedule == *schedule => {}
                Some(e) => {
                    e.schedule = schedule.clone();
                    e.next = next_run(schedule, now, seed, name);
                    changes.rescheduled.push(name.to_string());
                }
                None => {
                    self.entries.insert(
                        name.to_string(),
                        Entry {
                            schedule: schedule.clone(),
                            next: next_run(schedule, now, seed, name),
                        },
                    );
                    changes.added.push(name.to_string());
                }
            }
        }
        changes
    }

    /// Sources due at `now` (in name order); each is planned again for
    /// its first run after `now` (runs missed while the host slept are
    /// not repeated).
    pub fn take_due(&mut self, now: DateTime<Utc>, seed: &Seed) -> Vec<String> {
        let mut due = Vec::new();
        for (name, e) in &mut self.entries {
            if e.next.is_some_and(|t| t <= now) {
                due.push(name.clone());
                e.next = next_run(&e.schedule, now, seed, name);
            }
        }
        due
    }

    /// The earliest next run.
    pub fn next_wakeup(&self) -> Option<DateTime<Utc>> {
        self.entries.values().filter_map(|e| e.next).min()
    }

    /// Next run of every scheduled source.
    pub fn next_runs(&self) -> BTreeMap<String, Option<DateTime<Utc>>> {
        self.entries
            .iter()
            .map(|(n, e)| (n.clone(), e.next))
            .collect()
    }
}

/// Run the scheduler until `shutdown` is cancelled (or the sender of
/// `sources` is gone): call `trigger` with each source when it is due;
/// after every change call `published` with the next runs.
pub async fn run_scheduler(
    clock: Arc<dyn Clock>,
    seed: Seed,
    mut sources: watch::Receiver<Vec<ScheduledSource>>,
    shutdown: CancellationToken,
    mut published: impl FnMut(&BTreeMap<String, Option<DateTime<Utc>>>, &PlanChanges) + Send,
    mut trigger: impl FnMut(&str) + Send,
) {
    let mut plan = Plan::default();
    let initial = sources.borrow_and_update().clone();
    let changes = plan.update(&initial, clock.now(), &seed);
    published(&plan.next_runs(), &changes);
    loop {
        let now = clock.now();
        let due = plan.take_due(now, &seed);
        for name in &due {
            trigger(name);
        }
        if !due.is_empty() {
            published(&plan.next_runs(), &PlanChanges::default());
        }
        let sleep = plan
            .next_wakeup()
            .map(|t| until(now, t))
            .unwrap_or(MAX_SLEEP)
            .min(MAX_SLEEP);
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            changed = sources.changed() => {
                if changed.is_err() {
                    break;
                }
                let list = sources.borrow_and_update().clone();
                let changes = plan.update(&list, clock.now(), &seed);
                published(&plan.next_runs(), &changes);
            }
            () = tokio::time::sleep(sleep) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn seed() -> Seed {
        Seed::from_bytes(*b"test seed bytes!")
    }

    fn src(name: &str, schedule: &str) -> ScheduledSource {
        (name.to_string(), Schedule::parse(schedule).unwrap())
    }

    #[test]
    fn plan_adds_removes_and_replans() {
        let now = t("2026-03-01T00:30:00Z");
        let mut plan = Plan::default();
        let c = plan.update(&[src("a", "@hourly"), src("b", "@daily")], now, &seed());
        assert_eq!(c.added, ["a", "b"]);
        assert_eq!(plan.next_wakeup(), Some(t("2026-03-01T01:00:00Z")));
        let c = plan.update(&[src("a", "@hourly"), src("c", "@every 10m")], now, &seed());
        assert_eq!(c.added, ["c"]);
        assert_eq!(c.removed, ["b"]);
        assert!(c.rescheduled.is_empty());
        let c = plan.update(
            &[src("a", "*/5 * * * *"), src("c", "@every 10m")],
            now,
            &seed(),
        );
        assert_eq!(c.rescheduled, ["a"]);
        assert_eq!(plan.next_runs()["a"], Some(t("2026-03-01T00:35:00Z")));
        assert_eq!(
            plan.take_due(t("2026-03-01T00:34:59Z"), &seed()),
            Vec::<String>::new()
        );
        assert_eq!(
            plan.take_due(t("2026-03-01T00:40:00Z"), &seed()),
            ["a", "c"]
        );
        assert_eq!(plan.next_runs()["a"], Some(t("2026-03-01T00:45:00Z")));
        // Missed runs (the host slept for hours) run once, not once each.
        assert_eq!(
            plan.take_due(t("2026-03-01T05:02:00Z"), &seed()),
            ["a", "c"]
        );
        assert_eq!(plan.next_runs()["c"], Some(t("2026-03-01T05:10:00Z")));
    }

    type Log = Arc<Mutex<Vec<(String, DateTime<Utc>)>>>;

    fn start(
        clock: TokioClock,
        list: Vec<ScheduledSource>,
    ) -> (
        watch::Sender<Vec<ScheduledSource>>,
        CancellationToken,
        Log,
        tokio::task::JoinHandle<()>,
    ) {
        let (tx, rx) = watch::channel(list);
        let stop = CancellationToken::new();
        let log: Log = Arc::default();
        let l = log.clone();
        let handle = tokio::spawn(run_scheduler(
            Arc::new(clock),
            seed(),
            rx,
            stop.clone(),
            |_, _| {},
            move |name| l.lock().unwrap().push((name.to_string(), clock.now())),
        ));
        (tx, stop, log, handle)
    }

    #[tokio::test(start_paused = true)]
    async fn runs_three_days_of_schedules_in_paused_time() {
        let wall = std::time::Instant::now();
        let clock = TokioClock::starting_at(t("2026-03-01T00:00:00.250Z"));
        let (_tx, stop, log, handle) = start(
            clock,
            vec![
                src("hourly", "@hourly"),
                src("nightly", "30 2 * * *"),
                src("spread", "@random_every 24h"),
            ],
        );
        tokio::time::sleep(Duration::from_secs(3 * 24 * 3600)).await;
        stop.cancel();
        handle.await.unwrap();
        let log = log.lock().unwrap().clone();
        let of = |n: &str| -> Vec<DateTime<Utc>> {
            log.iter()
                .filter(|(s, _)| s == n)
                .map(|(_, t)| *t)
                .collect()
        };
        let hourly = of("hourly");
        assert_eq!(hourly.len(), 72);
        assert_eq!(hourly[0], t("2026-03-01T01:00:00Z"));
        assert!(
            hourly
                .windows(2)
                .all(|w| w[1] - w[0] == chrono::TimeDelta::hours(1))
        );
        assert_eq!(
            of("nightly"),
            [
                t("2026-03-01T02:30:00Z"),
                t("2026-03-02T02:30:00Z"),
                t("2026-03-03T02:30:00Z")
            ]
        );
        let spread = of("spread");
        assert_eq!(spread.len(), 3);
        assert!(
            spread
                .windows(2)
                .all(|w| w[1] - w[0] == chrono::TimeDelta::days(1))
        );
        assert!(wall.elapsed() < Duration::from_secs(10), "no real sleeping");
    }

    #[tokio::test(start_paused = true)]
    async fn reload_starts_new_sources_and_stops_removed_ones() {
        let clock = TokioClock::starting_at(t("2026-03-01T00:00:00Z"));
        let (tx, stop, log, handle) = start(clock, vec![src("a", "@every 10m")]);
        tokio::time::sleep(Duration::from_secs(25 * 60)).await; // a at 10, 20
        tx.send(vec![src("b", "@every 15m")]).unwrap();
        tokio::time::sleep(Duration::from_secs(34 * 60)).await; // b at 30, 45
        tx.send(vec![src("b", "@every 1h")]).unwrap();
        tokio::time::sleep(Duration::from_secs(2 * 3600 + 120)).await; // b at 60, 120, 180
        stop.cancel();
        handle.await.unwrap();
        let got: Vec<(String, String)> = log
            .lock()
            .unwrap()
            .iter()
            .map(|(n, t)| (n.clone(), t.format("%H:%M").to_string()))
            .collect();
        let want: Vec<(String, String)> = [
            ("a", "00:10"),
            ("a", "00:20"),
            ("b", "00:30"),
            ("b", "00:45"),
            ("b", "01:00"),
            ("b", "02:00"),
            ("b", "03:00"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        assert_eq!(got, want);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_stops_the_scheduler_at_once() {
        let clock = TokioClock::starting_at(t("2026-03-01T00:00:00Z"));
        let (_tx, stop, log, handle) = start(clock, vec![src("a", "@daily")]);
        tokio::time::sleep(Duration::from_secs(3600)).await;
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(1), handle)
            .await
            .expect("scheduler stops within a second")
            .unwrap();
        tokio::time::sleep(Duration::from_secs(2 * 24 * 3600)).await;
        assert!(
            log.lock().unwrap().is_empty(),
            "nothing runs after shutdown"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_source_without_schedule_never_runs() {
        let clock = TokioClock::starting_at(t("2026-03-01T00:00:00Z"));
        let (_tx, stop, log, handle) = start(clock, vec![]);
        tokio::time::sleep(Duration::from_secs(7 * 24 * 3600)).await;
        stop.cancel();
        handle.await.unwrap();
        assert!(log.lock().unwrap().is_empty());
    }
}
