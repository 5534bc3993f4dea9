//! What the router knows about each provider between requests: drained, cooling down, the
//! circuit breaker, in-flight requests and recent latency.
//!
//! Everything here is decided locally and cheaply, so a provider that is cooling or whose
//! breaker is open is skipped without a network round trip.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::BreakerConfig;

/// How many recent latencies the median is taken over.
const LATENCY_SAMPLES: usize = 64;
/// The most a `Retry-After` is honoured for: a provider asking for a day is treated as down.
const MAX_COOLDOWN: Duration = Duration::from_secs(3600);

/// Why a provider cannot take a request now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Unavailable {
    /// Drained by an operator.
    Drained,
    /// Cooling down for this much longer.
    CoolingDown(Duration, String),
    /// The breaker is open for this much longer (or a probe is already out).
    CircuitOpen(Option<Duration>),
    /// `max_concurrency` requests are in flight.
    Saturated(u32),
}

impl Unavailable {
    /// One line for an attempt's detail.
    pub(crate) fn describe(&self) -> String {
        match self {
            Self::Drained => "drained".to_owned(),
            Self::CoolingDown(left, reason) => {
                format!("cooling down for {} more ({reason})", seconds(*left))
            }
            Self::CircuitOpen(Some(left)) => {
                format!("circuit open for {} more", seconds(*left))
            }
            Self::CircuitOpen(None) => "circuit half-open, its probe is in flight".to_owned(),
            Self::Saturated(limit) => format!("saturated: {limit} requests in flight"),
        }
    }
}

/// Formats a duration as seconds with one decimal, e.g. "2.5 s".
pub(crate) fn seconds(duration: Duration) -> String {
    format!("{:.1} s", duration.as_secs_f64())
}

/// The breaker's state as the API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Breaker {
    /// Requests flow.
    Closed,
    /// Requests are refused until the open period ends.
    Open,
    /// The open period has ended: one probe may go through.
    HalfOpen,
}

/// Permission to send one request; releases the concurrency slot when dropped, and a probe
/// that ended without an outcome (the client went away), so the next request can probe.
#[derive(Debug)]
pub(crate) struct Admission {
    _permit: OwnedSemaphorePermit,
    state: Arc<ProviderState>,
    /// This request is the breaker's half-open probe.
    pub(crate) probe: bool,
    resolved: bool,
}

impl Admission {
    /// Records a success: closes a half-open breaker.
    pub(crate) fn succeeded(&mut self, latency: Duration, breaker: &BreakerConfig) {
        self.resolved = true;
        self.state.succeeded(self.probe, latency, breaker);
    }

    /// Records a failure. `counts` says whether it counts against the breaker (the provider's
    /// fault, not the request's); `cooldown` cools the provider for that long.
    pub(crate) fn failed(
        &mut self,
        counts: bool,
        cooldown: Option<(Duration, String)>,
        breaker: &BreakerConfig,
    ) {
        self.resolved = true;
        self.state.failed(self.probe, counts, cooldown, breaker);
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if self.probe && !self.resolved {
            self.state.lock().probe_in_flight = false;
        }
    }
}

/// A snapshot for `ListProviders` and metrics.
#[derive(Debug, Clone)]
pub(crate) struct ProviderSnapshot {
    /// Drained by an operator.
    pub(crate) drained: bool,
    /// Cooldown left and its reason.
    pub(crate) cooldown: Option<(Duration, String)>,
    /// The breaker.
    pub(crate) breaker: Breaker,
    /// Median of recent successful latencies.
    pub(crate) recent_latency: Option<Duration>,
    /// Requests in flight.
    pub(crate) in_flight: u32,
    /// Requests sent since start.
    pub(crate) requests: u64,
    /// Of which failed.
    pub(crate) failures: u64,
}

#[derive(Debug)]
struct Inner {
    drained: bool,
    cooldown_until: Option<(Instant, String)>,
    /// Recent outcomes (time, failed) within the breaker window.
    outcomes: VecDeque<(Instant, bool)>,
    open_until: Option<Instant>,
    probe_in_flight: bool,
    latencies: VecDeque<Duration>,
    requests: u64,
    failures: u64,
}

/// One provider's live state. Shared by all requests; kept across reloads when the provider's
/// name and base URL stay the same.
#[derive(Debug)]
pub(crate) struct ProviderState {
    inner: Mutex<Inner>,
    slots: Arc<Semaphore>,
    max_concurrency: u32,
}

impl ProviderState {
    /// A provider with nothing observed yet.
    pub(crate) fn new(max_concurrency: u32) -> Self {
        Self {
            inner: Mutex::new(Inner {
                drained: false,
                cooldown_until: None,
                outcomes: VecDeque::new(),
                open_until: None,
                probe_in_flight: false,
                latencies: VecDeque::with_capacity(LATENCY_SAMPLES),
                requests: 0,
                failures: 0,
            }),
            slots: Arc::new(Semaphore::new(max_concurrency as usize)),
            max_concurrency,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Nothing panics while holding the lock; a poisoned one still holds consistent data.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes a slot for one request, or says why not. Never waits.
    pub(crate) fn admit(self: &Arc<Self>, now: Instant) -> Result<Admission, Unavailable> {
        let mut inner = self.lock();
        if inner.drained {
            return Err(Unavailable::Drained);
        }
        if let Some((until, reason)) = &inner.cooldown_until {
            if *until > now {
                return Err(Unavailable::CoolingDown(*until - now, reason.clone()));
            }
            inner.cooldown_until = None;
        }
        let mut probe = false;
        if let Some(until) = inner.open_until {
            if until > now {
                return Err(Unavailable::CircuitOpen(Some(until - now)));
            }
            if inner.probe_in_flight {
                return Err(Unavailable::CircuitOpen(None));
            }
            probe = true;
        }
        let permit = Arc::clone(&self.slots)
            .try_acquire_owned()
            .map_err(|_| Unavailable::Saturated(self.max_concurrency))?;
        if probe {
            inner.probe_in_flight = true;
        }
        inner.requests += 1;
        Ok(Admission {
            _permit: permit,
            state: Arc::clone(self),
            probe,
            resolved: false,
        })
    }

    fn succeeded(&self, probe: bool, latency: Duration, breaker: &BreakerConfig) {
        let now = Instant::now();
        let mut inner = self.lock();
        if probe {
            inner.probe_in_flight = false;
            inner.open_until = None;
            inner.outcomes.clear();
        }
        record_outcome(&mut inner, now, false, breaker);
        if inner.latencies.len() == LATENCY_SAMPLES {
            inner.latencies.pop_front();
        }
        inner.latencies.push_back(latency);
    }

    fn failed(
        &self,
        probe: bool,
        counts: bool,
        cooldown: Option<(Duration, String)>,
        breaker: &BreakerConfig,
    ) {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.failures += 1;
        if let Some((duration, reason)) = cooldown {
            let until = now + duration.min(MAX_COOLDOWN);
            if inner
                .cooldown_until
                .as_ref()
                .is_none_or(|(current, _)| *current < until)
            {
                inner.cooldown_until = Some((until, reason));
            }
        }
        if probe {
            // The probe failed: open again for a full period.
            inner.probe_in_flight = false;
            inner.open_until = Some(now + Duration::from_millis(breaker.open_ms));
            return;
        }
        if counts {
            record_outcome(&mut inner, now, true, breaker);
        }
    }

    /// Drains (no new requests) or undrains.
    pub(crate) fn set_drained(&self, drained: bool) {
        self.lock().drained = drained;
    }

    /// Cools the provider for `duration`, as after a 429.
    pub(crate) fn cool(&self, duration: Duration, reason: String) {
        self.lock().cooldown_until = Some((Instant::now() + duration.min(MAX_COOLDOWN), reason));
    }

    /// Clears drain, cooldown and breaker.
    pub(crate) fn restore(&self) {
        let mut inner = self.lock();
        inner.drained = false;
        inner.cooldown_until = None;
        inner.open_until = None;
        inner.probe_in_flight = false;
        inner.outcomes.clear();
    }

    /// The state now.
    pub(crate) fn snapshot(&self) -> ProviderSnapshot {
        let now = Instant::now();
        let inner = self.lock();
        let breaker = match inner.open_until {
            None => Breaker::Closed,
            Some(until) if until > now || inner.probe_in_flight => Breaker::Open,
            Some(_) => Breaker::HalfOpen,
        };
        let mut latencies: Vec<Duration> = inner.latencies.iter().copied().collect();
        latencies.sort_unstable();
        ProviderSnapshot {
            drained: inner.drained,
            cooldown: inner
                .cooldown_until
                .as_ref()
                .filter(|(until, _)| *until > now)
                .map(|(until, reason)| (*until - now, reason.clone())),
            breaker,
            recent_latency: latencies.get(latencies.len() / 2).copied(),
            in_flight: u32::try_from(
                (self.max_concurrency as usize).saturating_sub(self.slots.available_permits()),
            )
            .unwrap_or(u32::MAX),
            requests: inner.requests,
            failures: inner.failures,
        }
    }
}

fn record_outcome(inner: &mut Inner, now: Instant, failed: bool, breaker: &BreakerConfig) {
    let window = Duration::from_millis(breaker.window_ms);
    while inner
        .outcomes
        .front()
        .is_some_and(|(at, _)| now.duration_since(*at) > window)
    {
        inner.outcomes.pop_front();
    }
    inner.outcomes.push_back((now, failed));
    if !failed || inner.open_until.is_some() {
        return;
    }
    let total = inner.outcomes.len();
    let failures = inner.outcomes.iter().filter(|(_, failed)| *failed).count();
    // Counts are small (one window of requests); the ratio needs no more precision.
    #[allow(clippy::cast_precision_loss)]
    let ratio = failures as f64 / total as f64;
    if total >= breaker.min_requests as usize && ratio >= breaker.error_ratio {
        inner.open_until = Some(now + Duration::from_millis(breaker.open_ms));
        inner.outcomes.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> BreakerConfig {
        BreakerConfig {
            window_ms: 10_000,
            min_requests: 4,
            error_ratio: 0.5,
            open_ms: 50,
            cooldown_ms: 1000,
        }
    }

    #[test]
    fn the_breaker_opens_on_the_error_ratio_and_one_probe_closes_it() {
        let state = Arc::new(ProviderState::new(8));
        let config = breaker();
        for failed in [false, true, false, true] {
            let mut admission = state.admit(Instant::now()).unwrap();
            if failed {
                admission.failed(true, None, &config);
            } else {
                admission.succeeded(Duration::from_millis(5), &config);
            }
        }
        assert!(matches!(
            state.admit(Instant::now()),
            Err(Unavailable::CircuitOpen(Some(_)))
        ));
        std::thread::sleep(Duration::from_millis(60));
        let abandoned = state.admit(Instant::now()).unwrap();
        assert!(abandoned.probe);
        assert_eq!(
            state.admit(Instant::now()).unwrap_err(),
            Unavailable::CircuitOpen(None),
            "only one probe at a time"
        );
        drop(abandoned);
        let mut probe = state.admit(Instant::now()).unwrap();
        assert!(probe.probe, "an abandoned probe frees the way for the next");
        probe.succeeded(Duration::from_millis(5), &config);
        assert_eq!(state.snapshot().breaker, Breaker::Closed);
        assert!(!state.admit(Instant::now()).unwrap().probe);
    }

    #[test]
    fn a_failed_probe_opens_the_breaker_again() {
        let state = Arc::new(ProviderState::new(8));
        let config = breaker();
        for _ in 0..4 {
            let mut admission = state.admit(Instant::now()).unwrap();
            admission.failed(true, None, &config);
        }
        std::thread::sleep(Duration::from_millis(60));
        let mut probe = state.admit(Instant::now()).unwrap();
        probe.failed(true, None, &config);
        assert!(matches!(
            state.admit(Instant::now()),
            Err(Unavailable::CircuitOpen(Some(_)))
        ));
    }

    #[test]
    fn cooldown_and_saturation_refuse_without_waiting() {
        let state = Arc::new(ProviderState::new(1));
        let config = breaker();
        let mut first = state.admit(Instant::now()).unwrap();
        assert_eq!(
            state.admit(Instant::now()).unwrap_err(),
            Unavailable::Saturated(1)
        );
        first.failed(
            false,
            Some((Duration::from_secs(30), "HTTP 429".to_owned())),
            &config,
        );
        drop(first);
        assert!(matches!(
            state.admit(Instant::now()),
            Err(Unavailable::CoolingDown(left, _)) if left > Duration::from_secs(29)
        ));
        state.restore();
        assert!(state.admit(Instant::now()).is_ok());
    }
}
