//! The one loop every background worker of Cascade runs — the site's
//! workers, the DP's sync, the agent's policy poll and the status
//! forwarder of DPs and agents: one step at a time until shutdown; at once
//! again while a step finds work, after a wake-up or an interval when it
//! finds none, and after a growing, jittered backoff ([`backoff`], the one
//! policy of the product) when it fails.
//!
//! After a failure only the backoff ends the wait: a wake-up would retry at
//! once, against a peer that may still be down.

use cascade_domain::backoff::Backoff;
use std::future::Future;
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// The first wait after a failure.
pub const FIRST_RETRY: Duration = Duration::from_millis(250);
/// The longest wait between two attempts.
pub const MAX_RETRY: Duration = Duration::from_secs(30);
/// Up to this fraction is added to each wait, so that many processes
/// failing together (a fleet of agents when their site restarts) do not
/// retry in step.
pub const RETRY_JITTER: f64 = 0.5;

/// The retry schedule of every worker: [`FIRST_RETRY`] doubling to
/// [`MAX_RETRY`], with up to [`RETRY_JITTER`] added.
pub fn backoff() -> Backoff {
    Backoff::new(FIRST_RETRY, MAX_RETRY, RETRY_JITTER)
}

/// What a step found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// It did some work: step again at once.
    Again,
    /// Nothing to do: wait for the wake-up or the worker's idle interval.
    Idle,
    /// Nothing to do for now: wait this long, or for the wake-up.
    After(Duration),
    /// The worker's work is over (its queue closed): end.
    Done,
}

/// A worker's work: one step at a time. Closures returning a future of
/// `Result<Step, E>` are work too (each call a step).
pub trait Work {
    /// What a failed step says (logged with its whole chain).
    type Error: std::error::Error;

    /// One step.
    fn step(&mut self) -> impl Future<Output = Result<Step, Self::Error>> + Send;
}

impl<F, Fut, E> Work for F
where
    F: FnMut() -> Fut + Send,
    Fut: Future<Output = Result<Step, E>> + Send,
    E: std::error::Error,
{
    type Error = E;

    fn step(&mut self) -> impl Future<Output = Result<Step, E>> + Send {
        self()
    }
}

/// A named worker, its shutdown signal and, optionally, its wake-up.
pub struct Worker<'a> {
    name: &'static str,
    shutdown: watch::Receiver<bool>,
    wake: Option<&'a Notify>,
    idle: Duration,
    finish_step: bool,
}

impl<'a> Worker<'a> {
    /// A worker named `name` (as failures are logged: "`name` failed; will
    /// retry"), ending when `shutdown` turns true. Idle, it looks again
    /// every 5 s unless told otherwise.
    pub fn new(name: &'static str, shutdown: watch::Receiver<bool>) -> Worker<'a> {
        Worker {
            name,
            shutdown,
            wake: None,
            idle: Duration::from_secs(5),
            finish_step: false,
        }
    }

    /// Idle or waiting ([`Step::Idle`], [`Step::After`]), it steps again as
    /// soon as `wake` is notified.
    pub fn woken_by(mut self, wake: &'a Notify) -> Worker<'a> {
        self.wake = Some(wake);
        self
    }

    /// How long an idle worker waits when no wake-up comes.
    pub fn idle(mut self, idle: Duration) -> Worker<'a> {
        self.idle = idle;
        self
    }

    /// At shutdown, a step in progress is let finish (the worker ends
    /// after it) instead of being dropped: for steps that must not stop
    /// half-way, such as a job's command an agent is running.
    pub fn finish_step_at_shutdown(mut self) -> Worker<'a> {
        self.finish_step = true;
        self
    }

    /// Runs `work` until shutdown (a step in progress is dropped then,
    /// unless [`Worker::finish_step_at_shutdown`]) or until a step answers
    /// [`Step::Done`].
    pub async fn run(mut self, mut work: impl Work) {
        let mut backoff = backoff();
        loop {
            if *self.shutdown.borrow() {
                return;
            }
            let result = if self.finish_step {
                work.step().await
            } else {
                tokio::select! {
                    result = work.step() => result,
                    _ = self.shutdown.changed() => return,
                }
            };
            let (wait, wake) = match result {
                Ok(Step::Again) => {
                    backoff.reset();
                    continue;
                }
                Ok(Step::Done) => return,
                Ok(Step::Idle) => {
                    backoff.reset();
                    (self.idle, self.wake)
                }
                Ok(Step::After(wait)) => {
                    backoff.reset();
                    (wait, self.wake)
                }
                Err(err) => {
                    let wait = backoff.next_delay(rand::random::<f64>());
                    tracing::warn!(
                        error = %crate::chain(&err),
                        retry_in_ms = wait.as_millis() as u64,
                        "{} failed; will retry",
                        self.name
                    );
                    (wait, None)
                }
            };
            let woken = async {
                match wake {
                    Some(wake) => wake.notified().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = woken => {}
                _ = tokio::time::sleep(wait) => {}
                _ = self.shutdown.changed() => return,
            }
        }
    }
}

/// A failure described by text only (what a step that reports strings
/// returns).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Failed(pub String);

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tokio::time::Instant;

    /// Records when each step ran, answering from `answers` in turn (the
    /// last one again once they run out).
    fn scripted(
        answers: Vec<Result<Step, Failed>>,
        times: Arc<Mutex<Vec<Instant>>>,
    ) -> impl FnMut() -> std::future::Ready<Result<Step, Failed>> + Send {
        let mut answers = answers.into_iter().peekable();
        let mut last = Ok(Step::Done);
        move || {
            times.lock().unwrap().push(Instant::now());
            let answer = match answers.next() {
                Some(answer) => answer,
                None => match &last {
                    Ok(step) => Ok(*step),
                    Err(Failed(text)) => Err(Failed(text.clone())),
                },
            };
            if answers.peek().is_none() {
                last = match &answer {
                    Ok(step) => Ok(*step),
                    Err(Failed(text)) => Err(Failed(text.clone())),
                };
            }
            std::future::ready(answer)
        }
    }

    fn gaps(times: &[Instant]) -> Vec<Duration> {
        times.windows(2).map(|pair| pair[1] - pair[0]).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn the_backoff_grows_to_the_cap_with_bounded_jitter_and_resets_on_success() {
        let times = Arc::new(Mutex::new(Vec::new()));
        let fail = || Err(Failed("down".into()));
        let mut answers: Vec<_> = (0..9).map(|_| fail()).collect();
        answers.push(Ok(Step::Again));
        answers.push(fail());
        answers.push(Ok(Step::Done));
        let (_stop, shutdown) = watch::channel(false);
        Worker::new("test", shutdown)
            .run(scripted(answers, times.clone()))
            .await;
        let gaps = gaps(&times.lock().unwrap());
        // Nine failures: 250 ms doubling, capped at 30 s, each stretched by
        // at most half.
        let mut base = FIRST_RETRY;
        for gap in &gaps[..9] {
            assert!(
                *gap >= base && *gap <= base.mul_f64(1.0 + RETRY_JITTER),
                "{gap:?} for {base:?}"
            );
            base = (base * 2).min(MAX_RETRY);
        }
        assert!(gaps[8] >= MAX_RETRY);
        // The success steps again at once; the failure after it starts over.
        assert_eq!(gaps[9], Duration::ZERO);
        assert!(
            gaps[10] <= FIRST_RETRY.mul_f64(1.0 + RETRY_JITTER),
            "{:?}",
            gaps[10]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_wake_up_ends_an_idle_wait_but_not_a_backoff() {
        let times = Arc::new(Mutex::new(Vec::new()));
        let wake = Arc::new(Notify::new());
        let answers = vec![Ok(Step::Idle), Err(Failed("down".into())), Ok(Step::Done)];
        let (_stop, shutdown) = watch::channel(false);
        let waker = {
            let wake = wake.clone();
            tokio::spawn(async move {
                // Into the idle wait, then into the backoff.
                tokio::time::sleep(Duration::from_millis(100)).await;
                wake.notify_one();
                tokio::time::sleep(Duration::from_millis(50)).await;
                wake.notify_one();
            })
        };
        Worker::new("test", shutdown)
            .woken_by(&wake)
            .idle(Duration::from_secs(60))
            .run(scripted(answers, times.clone()))
            .await;
        waker.await.unwrap();
        let gaps = gaps(&times.lock().unwrap());
        assert_eq!(
            gaps[0],
            Duration::from_millis(100),
            "the wake-up ended the idle wait"
        );
        assert!(
            gaps[1] >= FIRST_RETRY,
            "the wake-up cut the backoff short: {:?}",
            gaps[1]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn idle_and_after_wait_their_interval() {
        let times = Arc::new(Mutex::new(Vec::new()));
        let answers = vec![
            Ok(Step::Idle),
            Ok(Step::After(Duration::from_millis(300))),
            Ok(Step::Done),
        ];
        let (_stop, shutdown) = watch::channel(false);
        Worker::new("test", shutdown)
            .idle(Duration::from_secs(2))
            .run(scripted(answers, times.clone()))
            .await;
        assert_eq!(
            gaps(&times.lock().unwrap()),
            [Duration::from_secs(2), Duration::from_millis(300)]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_ends_the_worker_even_inside_a_step_or_a_wait() {
        // Inside a wait.
        let times = Arc::new(Mutex::new(Vec::new()));
        let (stop, shutdown) = watch::channel(false);
        let worker = tokio::spawn(
            Worker::new("test", shutdown)
                .idle(Duration::from_secs(3600))
                .run(scripted(vec![Ok(Step::Idle)], times.clone())),
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(1), worker)
            .await
            .expect("the worker did not end")
            .unwrap();
        // Inside a step that never ends.
        let (stop, shutdown) = watch::channel(false);
        let worker = tokio::spawn(Worker::new("test", shutdown).run(|| async {
            std::future::pending::<()>().await;
            Ok::<_, Failed>(Step::Again)
        }));
        tokio::time::sleep(Duration::from_millis(10)).await;
        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(1), worker)
            .await
            .expect("the worker did not end")
            .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_step_let_finish_at_shutdown_ends_and_the_worker_after_it() {
        let steps = Arc::new(Mutex::new(0u32));
        let (stop, shutdown) = watch::channel(false);
        let counted = steps.clone();
        let worker = tokio::spawn(Worker::new("test", shutdown).finish_step_at_shutdown().run(
            move || {
                let counted = counted.clone();
                async move {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    *counted.lock().unwrap() += 1;
                    Ok::<_, Failed>(Step::Again)
                }
            },
        ));
        tokio::time::sleep(Duration::from_secs(1)).await;
        stop.send(true).unwrap();
        let started = Instant::now();
        tokio::time::timeout(Duration::from_secs(60), worker)
            .await
            .expect("the worker did not end")
            .unwrap();
        // The step under way finished, and no other began.
        assert_eq!(*steps.lock().unwrap(), 1);
        assert_eq!(started.elapsed(), Duration::from_secs(9));
    }
}
