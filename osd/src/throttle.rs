//! A token bucket that paces background copying to a byte rate.

use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

pub struct Throttle {
    /// Bytes per second; 0: unlimited.
    rate: u64,
    state: Mutex<(f64, Instant)>,
}

impl Throttle {
    pub fn new(rate: u64) -> Throttle {
        Throttle {
            rate,
            state: Mutex::new((rate as f64, Instant::now())),
        }
    }

    /// Take `n` bytes of budget, sleeping while the bucket is in debt. At most one second of
    /// burst accumulates.
    pub async fn take(&self, n: u64) {
        if self.rate == 0 {
            return;
        }
        let wait = {
            let mut s = self.state.lock().expect("throttle lock");
            let now = Instant::now();
            let rate = self.rate as f64;
            s.0 = (s.0 + now.duration_since(s.1).as_secs_f64() * rate).min(rate);
            s.1 = now;
            s.0 -= n as f64;
            if s.0 < 0.0 {
                Duration::from_secs_f64(-s.0 / rate)
            } else {
                Duration::ZERO
            }
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn paces_to_the_rate() {
        let t = Throttle::new(1000);
        let start = tokio::time::Instant::now();
        // One second of burst, then 3000 more bytes at 1000/s.
        for _ in 0..40 {
            t.take(100).await;
        }
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(2900), "{took:?}");
        let u = Throttle::new(0);
        u.take(u64::MAX).await;
    }
}
