//! Today's tokens and cost per route, principal and provider; daily budgets; kept across
//! restarts in `usage.json` in the state directory.
//!
//! A budget is checked before a request and charged after it, so concurrent requests can
//! overshoot it by what they cost; the next request after that is refused.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// Distinct routes, principals or providers one day's usage names before it counts new ones
/// together (routes and providers come from the configuration; principals from keys and the
/// accounts that call).
pub(crate) const MAX_NAMES_PER_DAY: usize = 10_000;
/// The name new ones are counted under past [`MAX_NAMES_PER_DAY`].
pub(crate) const OTHERS: &str = "(others)";

/// Totals for one name on one day.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Totals {
    /// Requests served.
    pub(crate) requests: u64,
    /// Prompt tokens.
    pub(crate) input_tokens: u64,
    /// Generated tokens.
    pub(crate) output_tokens: u64,
    /// US dollars.
    pub(crate) cost_usd: f64,
}

impl Totals {
    fn add(&mut self, input_tokens: u64, output_tokens: u64, cost_usd: f64) {
        self.requests += 1;
        self.input_tokens += input_tokens;
        self.output_tokens += output_tokens;
        self.cost_usd += cost_usd;
    }
}

/// One day's usage.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Day {
    /// "YYYY-MM-DD", UTC.
    pub(crate) day: String,
    /// Per route.
    pub(crate) routes: BTreeMap<String, Totals>,
    /// Per principal.
    pub(crate) principals: BTreeMap<String, Totals>,
    /// Per provider.
    pub(crate) providers: BTreeMap<String, Totals>,
}

/// One served request's charge.
#[derive(Debug, Clone)]
pub(crate) struct Charge<'a> {
    /// The route.
    pub(crate) route: &'a str,
    /// The principal.
    pub(crate) principal: &'a str,
    /// The serving provider.
    pub(crate) provider: &'a str,
    /// Prompt tokens.
    pub(crate) input_tokens: u64,
    /// Generated tokens.
    pub(crate) output_tokens: u64,
    /// US dollars.
    pub(crate) cost_usd: f64,
}

/// The usage ledger.
#[derive(Debug)]
pub(crate) struct Ledger {
    today: Mutex<Day>,
    /// The day `today` is for, in days since the epoch: compared on every request, so the
    /// date string is only formatted when the day changes.
    day_number: AtomicU64,
    path: Option<PathBuf>,
    dirty: AtomicBool,
}

impl Ledger {
    /// A ledger that lives in memory only.
    pub(crate) fn in_memory() -> Self {
        Self {
            today: Mutex::new(Day {
                day: current_day(SystemTime::now()),
                ..Day::default()
            }),
            day_number: AtomicU64::new(day_number(SystemTime::now())),
            path: None,
            dirty: AtomicBool::new(false),
        }
    }

    /// Loads today's usage from `path`. A file from another day, or none, starts the day at
    /// zero; an unreadable one is an error rather than a silent reset of every budget.
    pub(crate) fn open(path: PathBuf) -> Result<Self, String> {
        let today = current_day(SystemTime::now());
        let mut day = Day {
            day: today.clone(),
            ..Day::default()
        };
        match std::fs::read(&path) {
            Ok(bytes) => {
                let stored: Day = serde_json::from_slice(&bytes)
                    .map_err(|error| format!("{}: not a usage file: {error}", path.display()))?;
                if stored.day == today {
                    day = stored;
                }
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(format!("{}: cannot read: {error}", path.display())),
        }
        Ok(Self {
            today: Mutex::new(day),
            day_number: AtomicU64::new(day_number(SystemTime::now())),
            path: Some(path),
            dirty: AtomicBool::new(false),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Day> {
        let mut day = self
            .today
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = SystemTime::now();
        let number = day_number(now);
        if self.day_number.swap(number, Ordering::Relaxed) != number {
            *day = Day {
                day: current_day(now),
                ..Day::default()
            };
        }
        day
    }

    /// Refuses when a budget is spent: the message names which, how much, and when it resets.
    pub(crate) fn check(
        &self,
        route: &str,
        route_budget: Option<f64>,
        principal: &str,
        principal_budget: Option<f64>,
    ) -> Result<(), String> {
        let day = self.lock();
        let spent = |totals: &BTreeMap<String, Totals>, name: &str| {
            totals.get(name).map_or(0.0, |totals| totals.cost_usd)
        };
        if let Some(limit) = route_budget {
            let spent = spent(&day.routes, route);
            if spent >= limit {
                return Err(format!(
                    "the daily budget of route {route:?} is spent: ${spent:.6} of ${limit:.6} \
                     today (UTC); it resets at midnight UTC"
                ));
            }
        }
        if let Some(limit) = principal_budget {
            let spent = spent(&day.principals, principal);
            if spent >= limit {
                return Err(format!(
                    "the daily budget of {principal} is spent: ${spent:.6} of \
                     ${limit:.6} today (UTC); it resets at midnight UTC"
                ));
            }
        }
        Ok(())
    }

    /// Records a served request. Past [`MAX_NAMES_PER_DAY`] distinct names in one table, a
    /// new name is counted under [`OTHERS`]: a day's usage stays bounded whoever calls.
    pub(crate) fn charge(&self, charge: &Charge<'_>) {
        let mut guard = self.lock();
        let day = &mut *guard;
        for (totals, name) in [
            (&mut day.routes, charge.route),
            (&mut day.principals, charge.principal),
            (&mut day.providers, charge.provider),
        ] {
            let name = if totals.len() >= MAX_NAMES_PER_DAY && !totals.contains_key(name) {
                OTHERS
            } else {
                name
            };
            totals.entry(name.to_owned()).or_default().add(
                charge.input_tokens,
                charge.output_tokens,
                charge.cost_usd,
            );
        }
        self.dirty.store(true, Ordering::Relaxed);
    }

    /// Today's usage.
    pub(crate) fn today(&self) -> Day {
        self.lock().clone()
    }

    /// Writes the day to disk if it changed: to a temporary file, synced, then renamed, so a
    /// crash leaves the old or the new file, never half of one.
    pub(crate) fn persist(&self) -> Result<(), String> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        if !self.dirty.swap(false, Ordering::Relaxed) {
            return Ok(());
        }
        let bytes = serde_json::to_vec_pretty(&self.today())
            .map_err(|error| format!("cannot encode usage: {error}"))?;
        let result = write_atomically(path, &bytes);
        if result.is_err() {
            self.dirty.store(true, Ordering::Relaxed);
        }
        result
    }
}

/// Writes `bytes` to `path` through a synced temporary file and a rename, mode 0600.
pub(crate) fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let temporary = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)?;
        if let Some(directory) = path.parent() {
            std::fs::File::open(directory)?.sync_all()?;
        }
        Ok(())
    };
    write().map_err(|error| format!("{}: cannot write: {error}", path.display()))
}

/// Days since 1970-01-01 of `now`, UTC.
fn day_number(now: SystemTime) -> u64 {
    now.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs() / 86_400)
}

/// The UTC day of `now`, "YYYY-MM-DD".
pub(crate) fn current_day(now: SystemTime) -> String {
    let days = i64::try_from(day_number(now)).unwrap_or(0);
    let (year, month, day) = civil_from_days(days);
    format!("{year:04}-{month:02}-{day:02}")
}

/// Days since 1970-01-01 to (year, month, day): Howard Hinnant's `civil_from_days`.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let shifted = days + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (
        year,
        u32::try_from(month).unwrap_or(1),
        u32::try_from(day).unwrap_or(1),
    )
}

/// Counts tokens of `text` when a provider reports none: about four bytes a token for
/// English text with BPE tokenizers. Replies say when a count is estimated this way.
pub(crate) fn estimate_tokens(text: &str) -> u64 {
    (text.len() as u64).div_ceil(4)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn days_are_utc_calendar_dates() {
        let at = |seconds| current_day(SystemTime::UNIX_EPOCH + Duration::from_secs(seconds));
        assert_eq!(at(0), "1970-01-01");
        assert_eq!(at(951_782_400), "2000-02-29");
        assert_eq!(at(1_795_305_599), "2026-11-21");
    }

    #[test]
    fn budgets_refuse_once_spent_and_survive_a_restart() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("usage.json");
        let ledger = Ledger::open(path.clone()).unwrap();
        ledger.check("default", Some(0.01), "alice", None).unwrap();
        ledger.charge(&Charge {
            route: "default",
            principal: "alice",
            provider: "groq",
            input_tokens: 10,
            output_tokens: 20,
            cost_usd: 0.02,
        });
        let refused = ledger
            .check("default", Some(0.01), "alice", None)
            .unwrap_err();
        assert!(refused.contains("route \"default\""), "{refused}");
        ledger.check("other", Some(0.01), "bob", Some(1.0)).unwrap();
        ledger.persist().unwrap();
        let reopened = Ledger::open(path).unwrap();
        assert!(
            reopened
                .check("x", None, "alice", Some(0.015))
                .unwrap_err()
                .contains("budget of alice is spent")
        );
    }
}
