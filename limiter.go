// Package limiter keeps API clients inside the call quotas that servers
// enforce, such as 100 calls per 60 seconds for each connection.
//
// A Limiter built with New(n, w) never admits more than n calls in any
// interval of length w: it keeps a sliding log of the calls it admitted, not
// a token bucket and not fixed buckets. It admits a burst of n at once, then
// one more call each time the oldest call leaves the window. Several rules
// can hold at once (WithWindow), e.g. 100 per minute and 1,500 per hour,
// and leaky-bucket rules (WithBucket) fit servers that pace calls the way
// nginx's limit_req does. A call may weigh more than one (AllowN, WaitN,
// AcquireN), and a Limiter's state survives a restart (MarshalBinary).
//
// Call it directly before each request (Allow, Wait, Acquire), or wrap an
// http.RoundTripper with NewTransport, which also obeys the server's 429 and
// Retry-After. A Group keeps one Limiter per connection key.
//
// All time comes from a Clock. Tests pass a ManualClock and move it with
// Advance to check a window rollover to the nanosecond without sleeping; a
// Limiter on SystemClock also runs inside a testing/synctest bubble. A
// context deadline is always real time, whatever the clock.
package limiter

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"time"
)

// The per-connection quota of the APIs this package was built for.
const (
	DefaultLimit  = 100
	DefaultWindow = 60 * time.Second
)

// ErrQueueFull is returned by Wait and Acquire when the limiter already has
// as many waiters as WithMaxWaiters allows.
var ErrQueueFull = errors.New("limiter: too many waiters")

// ErrWouldExceedDeadline is the error, wrapped, that Wait and Acquire
// return at once when no slot can free before the context's deadline, so
// waiting would be in vain. Errors that match it also match
// context.DeadlineExceeded, have a Timeout method that reports true (so
// net.Error checks and (*url.Error).Timeout see a timeout), and a
// NonRetriable method, which tells retrying clients such as azcore not to
// sleep into the deadline to try again.
var ErrWouldExceedDeadline error = &DeadlineError{}

// DeadlineError is the type of the errors that match ErrWouldExceedDeadline.
// Wait is how long the call would have had to wait, when known.
type DeadlineError struct {
	Wait time.Duration
	msg  string
}

func (e *DeadlineError) Error() string {
	if e.msg == "" {
		return "limiter: no slot frees before the context deadline"
	}
	return e.msg
}

// Is reports whether target is ErrWouldExceedDeadline or
// context.DeadlineExceeded.
func (e *DeadlineError) Is(target error) bool {
	return target == ErrWouldExceedDeadline || target == context.DeadlineExceeded
}

// Timeout reports true: the call ran out of time.
func (e *DeadlineError) Timeout() bool { return true }

// Temporary reports true, as context.DeadlineExceeded does.
func (e *DeadlineError) Temporary() bool { return true }

// NonRetriable marks the error as one that a retry before the deadline
// cannot cure (the interface azcore's retry policy checks).
func (e *DeadlineError) NonRetriable() {}

func deadlineErr(wait time.Duration, format string, args ...any) error {
	return &DeadlineError{Wait: wait, msg: fmt.Sprintf(format, args...)}
}

// config collects the options of New; err is the first bad option seen.
type config struct {
	rules      []window // rules[0] is the rule given to New
	buckets    []bucket
	clock      Clock
	maxWaiters int // < 0: unbounded
	err        error
}

// Option configures a Limiter in New or a Group in NewGroup.
type Option func(*config)

// WithClock makes the limiter read time from c instead of SystemClock.
func WithClock(c Clock) Option {
	return func(cfg *config) {
		if c == nil {
			cfg.fail(errors.New("limiter: WithClock: clock must not be nil"))
			return
		}
		cfg.clock = c
	}
}

// WithWindow adds a rule: at most limit calls in any interval of length
// window, enforced together with the rule given to New, e.g.
// New(100, time.Minute, WithWindow(1500, time.Hour)). Two window rules of
// which one implies the other (equal rules, 200/min with 100/min, 6000/h
// with 100/min) are an error, whatever their order.
func WithWindow(limit int, window time.Duration) Option {
	return func(cfg *config) { cfg.addWindow(limit, window) }
}

// WithBucket adds a leaky-bucket rule: burst calls at once, then one more
// each every. The bucket holds the calls it admitted and drains one each
// every, continuously; it admits a call when, drained, it holds at most
// burst-1, so a full bucket admits its next call exactly every later and a
// half-drained one after half of that. This is the shape of nginx's
// limit_req (there burst=B admits B+1 at once: WithBucket(B+1, 1s/rate)),
// Envoy and redis_rate. Like every rule it counts a call from Done, and it
// combines with the window rules: New(100, time.Minute, WithBucket(6,
// 100*time.Millisecond)) is "100 per minute, at most 6 at once and one per
// 100 ms". Two bucket rules of which one implies the other are an error; a
// bucket never makes a window rule an error.
func WithBucket(burst int, every time.Duration) Option {
	return func(cfg *config) { cfg.addBucket(burst, every) }
}

// WithMaxWaiters bounds the number of callers that may wait in Wait and
// Acquire at once; past n they fail fast with ErrQueueFull. With n == 0 a
// call that cannot be admitted at once fails instead of waiting. By
// default the queue is unbounded.
func WithMaxWaiters(n int) Option {
	return func(cfg *config) {
		if n < 0 {
			cfg.fail(fmt.Errorf("limiter: WithMaxWaiters: n must not be negative, got %d", n))
			return
		}
		cfg.maxWaiters = n
	}
}

func (cfg *config) fail(err error) {
	if cfg.err == nil {
		cfg.err = err
	}
}

func (cfg *config) addWindow(limit int, size time.Duration) {
	switch {
	case limit <= 0:
		cfg.fail(fmt.Errorf("limiter: limit must be positive, got %d", limit))
	case size <= 0:
		cfg.fail(fmt.Errorf("limiter: window must be positive, got %v", size))
	default:
		cfg.rules = append(cfg.rules, window{limit: limit, size: size})
	}
}

func (cfg *config) addBucket(burst int, every time.Duration) {
	switch {
	case burst <= 0:
		cfg.fail(fmt.Errorf("limiter: WithBucket: burst must be positive, got %d", burst))
	case every <= 0:
		cfg.fail(fmt.Errorf("limiter: WithBucket: every must be positive, got %v", every))
	default:
		cfg.buckets = append(cfg.buckets, bucket{burst: burst, every: every})
	}
}

// checkRedundant fails on two rules of one kind of which one implies the
// other. Every pair is compared both ways, so the verdict does not depend
// on the order the rules were given; the error names the looser rule.
func (cfg *config) checkRedundant() {
	if err := redundant(cfg.rules); err != nil {
		cfg.fail(err)
	}
	if err := redundant(cfg.buckets); err != nil {
		cfg.fail(err)
	}
}

// ruleKind is what checkRedundant needs of a kind of rule.
type ruleKind[R any] interface {
	implies(R) bool
	String() string
}

func redundant[R ruleKind[R]](rs []R) error {
	for i, a := range rs {
		for _, b := range rs[i+1:] {
			if b.implies(a) {
				a, b = b, a
			}
			if a.implies(b) {
				return fmt.Errorf("limiter: rule %v is no tighter than rule %v", b, a)
			}
		}
	}
	return nil
}

func newConfig(limit int, window time.Duration, opts []Option) (*config, error) {
	cfg := &config{clock: SystemClock(), maxWaiters: -1}
	cfg.addWindow(limit, window)
	for _, opt := range opts {
		if opt == nil {
			cfg.fail(errors.New("limiter: nil Option"))
			continue
		}
		opt(cfg)
	}
	if cfg.err == nil {
		cfg.checkRedundant()
	}
	if cfg.err != nil {
		return nil, cfg.err
	}
	return cfg, nil
}

// A Limiter admits calls so that no interval of the length of a rule's
// window holds more than that rule's limit of calls. The first rule comes
// from New; WithWindow and WithBucket add more, and every rule holds at
// once.
//
// A call admitted at time t counts in every window that contains t and
// stops counting at exactly t + window: with the clock frozen at t0, the
// limit+1st call is refused, and it is admitted once the clock reads
// t0 + window. Nothing is smoothed: a burst of limit calls passes at once.
//
// There are three ways to call it. Allow admits a call now or reports
// false, never blocking. Wait blocks until a call is admitted or the
// context ends. Acquire is Wait in two phases, for calls that take time:
// the Permit it returns holds a slot while the call is in flight, and Done
// starts the call's window when the call has finished, so that network
// delay can never bring two calls at the server closer than the window.
// Most clients of an HTTP API want Acquire, or NewTransport, which uses it.
// AllowN, WaitN and AcquireN do the same for a call of weight n, which
// counts as n calls made at one instant.
//
// Waiters are served first in, first out, whatever their weights, and
// Allow never jumps the queue. PauseUntil holds every call back until a
// time the server names. MarshalBinary and UnmarshalBinary carry the calls
// that still count across a restart.
//
// Make a Limiter with New; the zero value is not usable. A Limiter is safe
// for concurrent use. It starts no goroutines and holds no lock while
// waiting.
type Limiter struct {
	mu          sync.Mutex
	rules       rules
	inflight    int           // units of the permits granted and not yet ended
	pausedUntil time.Duration // admit nothing before this instant
	last        time.Duration // the latest instant seen; time never runs backwards
	queue       waitQueue

	// Set by New, read-only after.
	maxWaiters int
	maxWeight  int // the heaviest call the rules can ever admit

	// What a refused Allow reads comes last, so that it shares a cache line.

	// gate is a lower bound of the earliest instant at which Allow could
	// admit a call: a reading before it is refused without the lock. It is
	// math.MinInt64 when a call may go at once and never while callers
	// wait. Written under mu by unlock, which sets it exactly; a change
	// that can only delay the next admission (Allow admitting a call) may
	// leave it as it is, lower, and the next call refused under the lock
	// sets it.
	gate atomic.Int64
	// Set by New, read-only after.
	clock  Clock
	system bool      // clock is SystemClock: read time with time.Since
	epoch  time.Time // instants are durations since epoch
}

// New returns a Limiter that admits at most limit calls in any interval of
// length window, and also obeys every rule added with WithWindow and
// WithBucket. It returns an error, and no Limiter, for a limit or window
// that is not positive, a rule implied by another of its kind, or a bad
// option.
func New(limit int, window time.Duration, opts ...Option) (*Limiter, error) {
	cfg, err := newConfig(limit, window, opts)
	if err != nil {
		return nil, err
	}
	return newLimiter(cfg), nil
}

func newLimiter(cfg *config) *Limiter {
	l := &Limiter{
		rules:      rules{windows: cfg.rules, buckets: cfg.buckets}.clone(),
		clock:      cfg.clock,
		maxWaiters: cfg.maxWaiters,
		epoch:      cfg.clock.Now(),
	}
	l.maxWeight = l.rules.maxWeight()
	l.gate.Store(math.MinInt64)
	_, l.system = cfg.clock.(systemClock)
	return l
}

// since reads the clock as a duration since the epoch. On SystemClock it
// uses time.Since, which reads only the monotonic clock.
func (l *Limiter) since() time.Duration {
	if l.system {
		return time.Since(l.epoch)
	}
	return l.clock.Now().Sub(l.epoch)
}

// lock takes l.mu and turns the clock reading t into the limiter's now. A
// reading earlier than one already seen (a clock set backwards) is clamped
// to it, so the log stays ordered and no call is admitted early. It also
// drops the calls that no longer count.
func (l *Limiter) lock(t time.Duration) time.Duration {
	l.mu.Lock()
	if t < l.last {
		t = l.last
	}
	l.last = t
	l.rules.expire(t)
	return t
}

// unlock publishes the gate for the state it leaves and releases l.mu.
// Every change of state happens between lock and unlock (or
// unlockDelayed). Time passing only ever opens the gate, so the published
// instant stays a lower bound until the next change that can admit a call
// sooner, which goes through unlock.
func (l *Limiter) unlock() {
	gate := time.Duration(math.MinInt64)
	switch {
	case l.queue.len > 0:
		gate = never
	case l.admitsLocked(l.last, 1):
		// The common case, and a cheaper test than nextLocked.
	default:
		gate = l.nextLocked(l.last, 1)
	}
	if int64(gate) != l.gate.Load() {
		l.gate.Store(int64(gate)) // an atomic store costs a locked instruction: skip it when unchanged
	}
	l.mu.Unlock()
}

// unlockDelayed releases l.mu after a change that can only delay the next
// admission, such as a call admitted: the published gate stays a lower
// bound, and the admitting path saves its update.
func (l *Limiter) unlockDelayed() { l.mu.Unlock() }

// admitsLocked reports whether every rule has room for n more calls at now
// and no pause holds. l.mu must be held.
func (l *Limiter) admitsLocked(now time.Duration, n int) bool {
	return now >= l.pausedUntil && l.rules.admits(now, l.inflight, n)
}

// nextLocked returns the earliest instant at which admitsLocked(n) can hold
// without any permit ending, or never. l.mu must be held.
func (l *Limiter) nextLocked(now time.Duration, n int) time.Duration {
	return max(l.pausedUntil, l.rules.freeAt(now, l.inflight, n))
}

// earliestLocked returns a lower bound of the instant at which a call of
// weight n can go after ahead units of waiters, if they all go first and
// every permit in flight is cancelled. l.mu must be held.
func (l *Limiter) earliestLocked(now time.Duration, ahead, n int) time.Duration {
	return max(l.pausedUntil, l.rules.earliest(now, ahead, n))
}

// grantLocked admits a call of weight n at now: logged at once, or, with
// hold, held in flight behind the returned permit. l.mu must be held.
func (l *Limiter) grantLocked(now time.Duration, n int, hold bool) *permit {
	if !hold {
		l.rules.record(now, n)
		return nil
	}
	l.inflight += n
	return &permit{l: l, n: n}
}

// Allow reports whether a call may happen now, and if so counts it. It
// never blocks. It reports false while callers wait in Wait or Acquire, so
// that they keep their turn.
func (l *Limiter) Allow() bool { return l.AllowN(1) }

// AllowN reports whether a call of weight n may happen now, and if so
// counts it as n calls made now. It reports false for a weight below 1 or
// above what some rule can ever admit.
func (l *Limiter) AllowN(n int) bool {
	t := l.since()
	if int64(t) < l.gate.Load() {
		return false // the published state refuses it: no lock needed
	}
	now := l.lock(t)
	if l.queue.len == 0 && n >= 1 && l.admitsLocked(now, n) {
		l.rules.record(now, n)
		l.unlockDelayed()
		return true
	}
	l.unlock()
	return false
}

// Wait blocks until a call is admitted, and counts it then. Waiters are
// admitted in the order they called. Wait returns ctx.Err() when ctx ends
// first, an error matching ErrWouldExceedDeadline at once when no slot can
// free before ctx's deadline, and ErrQueueFull when the queue is full; a
// call that fails takes no slot.
//
// A deadline is real time (time.Until, which a testing/synctest bubble
// fakes), whatever the limiter's clock: Wait compares the wait it needs,
// on its own clock, with the time left. The check counts the waiters ahead
// and the rules, and assumes that permits in flight may be cancelled, so it
// fails only when the deadline is certain to pass first.
func (l *Limiter) Wait(ctx context.Context) error { return l.WaitN(ctx, 1) }

// WaitN is Wait for a call of weight n, which counts as n calls made at
// the instant it is admitted. A weight below 1 or above what some rule can
// ever admit is an error at once.
func (l *Limiter) WaitN(ctx context.Context, n int) error {
	_, err := l.wait(ctx, n, false)
	return err
}

// Acquire waits like Wait, then returns a Permit that holds one slot of
// every rule while the call is in flight. The caller must end every
// permit: Done once the call has finished, after which its slot counts from
// the time of Done for a full window, or Cancel if the call was never sent,
// which returns the slot.
func (l *Limiter) Acquire(ctx context.Context) (Permit, error) { return l.AcquireN(ctx, 1) }

// AcquireN is Acquire for a call of weight n: its permit holds n slots of
// every rule, and Done counts n calls.
func (l *Limiter) AcquireN(ctx context.Context, n int) (Permit, error) {
	p, err := l.wait(ctx, n, true)
	if err != nil {
		return nil, err
	}
	return p, nil
}

// Remaining returns how many calls Allow would admit right now, one after
// another: 0 while paused or while callers wait.
func (l *Limiter) Remaining() int {
	t := l.since()
	if int64(t) < l.gate.Load() {
		return 0
	}
	now := l.lock(t)
	defer l.unlock()
	return l.remainingLocked(now)
}

func (l *Limiter) remainingLocked(now time.Duration) int {
	if now < l.pausedUntil || l.queue.len > 0 {
		return 0
	}
	rem := math.MaxInt
	for i := range l.rules.windows {
		w := &l.rules.windows[i]
		rem = min(rem, w.limit-w.n-l.inflight)
	}
	for i := range l.rules.buckets {
		b := &l.rules.buckets[i]
		held := 0 // calls the drained bucket still holds, rounded up
		if b.tat > now {
			held = int((b.tat - now + b.every - 1) / b.every)
		}
		rem = min(rem, b.burst-held-l.inflight)
	}
	return max(rem, 0)
}

// PauseUntil makes the limiter admit nothing before t, for example until
// the time a server's Retry-After names. A pause only ever grows: a t
// before the current pause's end changes nothing.
func (l *Limiter) PauseUntil(t time.Time) {
	d := t.Sub(l.epoch)
	l.lock(l.since())
	if d > l.pausedUntil {
		l.pausedUntil = d
	}
	l.unlock()
}

// Stats is a snapshot of a Limiter's state.
type Stats struct {
	Limit       int           // the limit of the rule given to New
	Window      time.Duration // the window of the rule given to New
	InWindow    int           // finished calls that count in that rule's window now
	InFlight    int           // calls (weights summed) granted and not yet Done or cancelled
	Waiting     int           // callers blocked in Wait or Acquire
	Remaining   int           // calls Allow would admit now, as Remaining returns
	PausedUntil time.Time     // the end of a pause set by PauseUntil; zero when not paused
}

// Stats returns a snapshot of the limiter's state.
func (l *Limiter) Stats() Stats {
	now := l.lock(l.since())
	defer l.unlock()
	w := &l.rules.windows[0]
	s := Stats{
		Limit:     w.limit,
		Window:    w.size,
		InWindow:  w.n,
		InFlight:  l.inflight,
		Waiting:   l.queue.len,
		Remaining: l.remainingLocked(now),
	}
	if l.pausedUntil > now {
		s.PausedUntil = l.epoch.Add(l.pausedUntil)
	}
	return s
}

// idle reports whether the limiter holds nothing: no call in any rule,
// none in flight, no waiter and no pause. A Group drops idle limiters.
func (l *Limiter) idle() bool {
	now := l.lock(l.since())
	defer l.unlock()
	return l.inflight == 0 && l.queue.len == 0 && l.pausedUntil <= now && l.rules.empty(now)
}
