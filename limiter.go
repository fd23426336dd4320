// Package limiter keeps API clients inside the call quotas that servers
// enforce, such as 100 calls per 60 seconds for each connection.
//
// A Limiter built with New(n, w) never admits more than n calls in any
// interval of length w: it keeps a sliding log of the calls it admitted, not
// a token bucket and not fixed buckets. It admits a burst of n at once, then
// one more call each time the oldest call leaves the window. Several rules
// can hold at once (WithWindow), e.g. 100 per minute and 1,500 per hour.
//
// Call it directly before each request (Allow, Wait, Acquire), or wrap an
// http.RoundTripper with NewTransport, which also obeys the server's 429 and
// Retry-After. A Group keeps one Limiter per connection key.
//
// All time comes from a Clock. Tests pass a ManualClock and move it with
// Advance to check a window rollover to the nanosecond without sleeping; a
// Limiter on SystemClock also runs inside a testing/synctest bubble.
package limiter

import (
	"context"
	"errors"
	"fmt"
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

// ErrWouldExceedDeadline is returned, wrapped, by Wait and Acquire when no
// slot can free before the context's deadline, so waiting would be in vain.
// errors.Is(err, context.DeadlineExceeded) also reports true for it.
var ErrWouldExceedDeadline error = deadlineError{}

type deadlineError struct{}

func (deadlineError) Error() string {
	return "limiter: no slot frees before the context deadline"
}

func (deadlineError) Is(target error) bool { return target == context.DeadlineExceeded }

// config collects the options of New; err is the first bad option seen.
type config struct {
	rules      []window
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
// New(100, time.Minute, WithWindow(1500, time.Hour)). A rule that an
// earlier one already implies is an error.
func WithWindow(limit int, window time.Duration) Option {
	return func(cfg *config) { cfg.addRule(limit, window) }
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

func (cfg *config) addRule(limit int, size time.Duration) {
	switch {
	case limit <= 0:
		cfg.fail(fmt.Errorf("limiter: limit must be positive, got %d", limit))
		return
	case size <= 0:
		cfg.fail(fmt.Errorf("limiter: window must be positive, got %v", size))
		return
	}
	for _, r := range cfg.rules {
		// n1 calls per w1 allow at most n1*ceil(w2/w1) calls in any w2,
		// so a rule (n2, w2) at or above that can never bind.
		k := int64((size-1)/r.size) + 1
		if int64(r.limit) <= int64(limit)/k {
			cfg.fail(fmt.Errorf("limiter: rule %d per %v is no tighter than rule %d per %v", limit, size, r.limit, r.size))
			return
		}
	}
	cfg.rules = append(cfg.rules, window{limit: limit, size: size})
}

func newConfig(limit int, window time.Duration, opts []Option) (*config, error) {
	cfg := &config{clock: SystemClock(), maxWaiters: -1}
	cfg.addRule(limit, window)
	for _, opt := range opts {
		if opt == nil {
			cfg.fail(errors.New("limiter: nil Option"))
			continue
		}
		opt(cfg)
	}
	if cfg.err != nil {
		return nil, cfg.err
	}
	return cfg, nil
}

// A Limiter admits calls so that no interval of the length of a rule's
// window holds more than that rule's limit of calls. The first rule comes
// from New; WithWindow adds more, and every rule holds at once.
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
//
// Waiters are served first in, first out, and Allow never jumps the queue.
// PauseUntil holds every call back until a time the server names.
//
// Make a Limiter with New; the zero value is not usable. A Limiter is safe
// for concurrent use. It starts no goroutines and holds no lock while
// waiting.
type Limiter struct {
	mu          sync.Mutex
	rules       []window
	inflight    int           // permits granted and not yet Done or cancelled
	pausedUntil time.Duration // admit nothing before this instant
	last        time.Duration // the latest instant seen; time never runs backwards
	queue       waitQueue

	// Set by New, read-only after.
	clock      Clock
	system     bool      // clock is SystemClock: read time with time.Since
	epoch      time.Time // instants are durations since epoch
	maxWaiters int
}

// New returns a Limiter that admits at most limit calls in any interval of
// length window, and also obeys every rule added with WithWindow. It
// returns an error, and no Limiter, for a limit or window that is not
// positive, a rule no tighter than an earlier one, or a bad option.
func New(limit int, window time.Duration, opts ...Option) (*Limiter, error) {
	cfg, err := newConfig(limit, window, opts)
	if err != nil {
		return nil, err
	}
	return newLimiter(cfg), nil
}

func newLimiter(cfg *config) *Limiter {
	l := &Limiter{
		rules:      append([]window(nil), cfg.rules...),
		clock:      cfg.clock,
		maxWaiters: cfg.maxWaiters,
		epoch:      cfg.clock.Now(),
	}
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

// advanceLocked turns a clock reading into the limiter's now. A reading
// earlier than one already seen (a clock set backwards) is clamped to it, so
// the log stays ordered and no call is admitted early. It also drops the
// calls that no longer count. l.mu must be held.
func (l *Limiter) advanceLocked(t time.Duration) time.Duration {
	if t < l.last {
		t = l.last
	}
	l.last = t
	for i := range l.rules {
		l.rules[i].expire(t)
	}
	return t
}

// admitsLocked reports whether every rule has room for one more call at now
// and no pause holds. l.mu must be held and advanceLocked(now) called.
func (l *Limiter) admitsLocked(now time.Duration) bool {
	if now < l.pausedUntil {
		return false
	}
	for i := range l.rules {
		r := &l.rules[i]
		if r.n+l.inflight >= r.limit {
			return false
		}
	}
	return true
}

// nextLocked returns the earliest instant at which admitsLocked can hold
// without any permit finishing, or never. l.mu must be held.
func (l *Limiter) nextLocked(now time.Duration) time.Duration {
	at := max(now, l.pausedUntil)
	for i := range l.rules {
		at = max(at, l.rules[i].freeAt(now, l.inflight))
	}
	return at
}

// maxReplay bounds the waiters ahead for which earliestLocked replays the
// admissions of several rules; past it, it takes each rule's own bound.
const maxReplay = 1024

// earliestLocked returns a lower bound of the instant at which a waiter
// with ahead waiters before it can be admitted, assuming they all go first
// and every permit in flight is cancelled. l.mu must be held.
func (l *Limiter) earliestLocked(now time.Duration, ahead int) time.Duration {
	at := max(now, l.pausedUntil)
	if len(l.rules) == 1 || ahead > maxReplay {
		for i := range l.rules {
			at = max(at, l.rules[i].earliest(now, ahead))
		}
		return at
	}
	// One rule's delays push the others': replay the admissions ahead,
	// each as early as every rule allows. The j-th of them is call n+j of
	// a rule whose log holds n, and waits for call n+j-limit to leave.
	sim := make([]time.Duration, 0, ahead+1)
	for j := 0; j <= ahead; j++ {
		a := at
		for i := range l.rules {
			r := &l.rules[i]
			switch k := r.n + j - r.limit; {
			case k < 0:
			case k < r.n:
				a = max(a, addSat(r.at(k), r.size))
			default:
				a = max(a, addSat(sim[k-r.n], r.size))
			}
		}
		sim = append(sim, a)
	}
	return sim[ahead]
}

// untilDeadline returns how long remains before the context deadline dl,
// given the clock reading t. A deadline is on the real clock (or a
// synctest bubble's), while a ManualClock may read any time at all: on a
// clock other than SystemClock, dl is read on whichever of the two it lies
// nearer to, so that a deadline made with context.WithTimeout and one made
// from clock.Now() both work.
func (l *Limiter) untilDeadline(dl time.Time, t time.Duration) time.Duration {
	byClock := dl.Sub(l.epoch.Add(t))
	if l.system {
		return byClock
	}
	if byReal := time.Until(dl); byReal.Abs() < byClock.Abs() {
		return byReal
	}
	return byClock
}

// newTimer returns a timer that fires when the limiter's clock reaches the
// instant at, which lies after now. A ManualClock gets the instant itself,
// so that an Advance between reading now and making the timer cannot make
// the timer late.
func (l *Limiter) newTimer(at, now time.Duration) Timer {
	if c, ok := l.clock.(*ManualClock); ok {
		return c.timerAt(l.epoch.Add(at))
	}
	return l.clock.NewTimer(at - max(now, l.since()))
}

// recordLocked logs a call admitted at now in every rule.
func (l *Limiter) recordLocked(now time.Duration) {
	for i := range l.rules {
		l.rules[i].push(now)
	}
}

// Allow reports whether a call may happen now, and if so counts it. It
// never blocks. It reports false while callers wait in Wait or Acquire, so
// that they keep their turn.
func (l *Limiter) Allow() bool {
	t := l.since()
	l.mu.Lock()
	now := l.advanceLocked(t)
	ok := l.queue.len == 0 && l.admitsLocked(now)
	if ok {
		l.recordLocked(now)
	}
	l.mu.Unlock()
	return ok
}

// Wait blocks until a call is admitted, and counts it then. Waiters are
// admitted in the order they called. Wait returns ctx.Err() when ctx ends
// first, an error wrapping ErrWouldExceedDeadline at once when no slot can
// free before ctx's deadline, and ErrQueueFull when the queue is full; a
// call that fails takes no slot.
//
// The deadline check counts the waiters ahead and the rules' logs, and
// assumes that permits in flight may be cancelled, so it fails only when
// the deadline is certain to pass first. On a clock other than
// SystemClock, such as a ManualClock, the deadline is read on whichever of
// the real and the clock's timeline it lies nearer to.
func (l *Limiter) Wait(ctx context.Context) error {
	_, err := l.wait(ctx, false)
	return err
}

// Acquire waits like Wait, then returns a Permit that holds one slot of
// every rule while the call is in flight. The caller must end every
// permit: Done once the call has finished, after which its slot counts from
// the time of Done for a full window, or Cancel if the call was never sent,
// which returns the slot.
func (l *Limiter) Acquire(ctx context.Context) (Permit, error) {
	p, err := l.wait(ctx, true)
	if err != nil {
		return nil, err
	}
	return p, nil
}

// wait is the core of Wait and Acquire. With hold, the admitted call is
// held in flight behind the returned permit instead of being logged.
func (l *Limiter) wait(ctx context.Context, hold bool) (*permit, error) {
	ctxErr := ctx.Err()
	if ctxErr != nil && ctxErr != context.DeadlineExceeded {
		return nil, ctxErr
	}
	t := l.since()
	l.mu.Lock()
	now := l.advanceLocked(t)
	free := l.queue.len == 0 && l.admitsLocked(now)
	switch {
	case ctxErr != nil && free:
		l.mu.Unlock()
		return nil, ctxErr
	case ctxErr != nil:
		// The deadline has passed and no slot is free: both errors hold.
		l.mu.Unlock()
		return nil, fmt.Errorf("limiter: deadline passed with no slot free: %w", ErrWouldExceedDeadline)
	case free:
		p := l.grantLocked(now, hold)
		l.mu.Unlock()
		return p, nil
	}
	if l.maxWaiters >= 0 && l.queue.len >= l.maxWaiters {
		l.mu.Unlock()
		return nil, ErrQueueFull
	}
	if dl, ok := ctx.Deadline(); ok {
		// A context that ends as the slot frees cannot take it either.
		wait := l.earliestLocked(now, l.queue.len) - now
		if wait >= l.untilDeadline(dl, t) {
			l.mu.Unlock()
			return nil, fmt.Errorf("limiter: next slot in %v, after the context deadline: %w", wait, ErrWouldExceedDeadline)
		}
	}
	w := &waiter{ready: make(chan struct{}, 1)}
	l.queue.push(w)
	for {
		// l.mu is held here.
		var at time.Duration
		if l.queue.head == w {
			if l.admitsLocked(now) {
				l.queue.remove(w)
				p := l.grantLocked(now, hold)
				l.queue.wakeHead()
				l.mu.Unlock()
				return p, nil
			}
			at = l.nextLocked(now)
		} else {
			// Only the head can be admitted; the others sleep until about
			// their turn, or until the waiter before them wakes them.
			at = l.earliestLocked(now, l.queue.ahead(w))
		}
		l.mu.Unlock()

		var timer Timer
		var fired <-chan time.Time
		if at > now && at != never {
			timer = l.newTimer(at, now)
			fired = timer.C()
		}
		select {
		case <-w.ready:
		case <-fired:
		case <-ctx.Done():
		}
		if timer != nil {
			timer.Stop()
		}

		t = l.since()
		l.mu.Lock()
		now = l.advanceLocked(t)
		if err := ctx.Err(); err != nil {
			wasHead := l.queue.head == w
			l.queue.remove(w)
			if wasHead {
				l.queue.wakeHead()
			}
			l.mu.Unlock()
			return nil, err
		}
	}
}

// grantLocked admits one call at now. l.mu must be held.
func (l *Limiter) grantLocked(now time.Duration, hold bool) *permit {
	if !hold {
		l.recordLocked(now)
		return nil
	}
	l.inflight++
	return &permit{l: l}
}

// Remaining returns how many calls Allow would admit right now, one after
// another: 0 while paused or while callers wait.
func (l *Limiter) Remaining() int {
	t := l.since()
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.remainingLocked(l.advanceLocked(t))
}

func (l *Limiter) remainingLocked(now time.Duration) int {
	if now < l.pausedUntil || l.queue.len > 0 {
		return 0
	}
	rem := -1
	for i := range l.rules {
		r := &l.rules[i]
		if left := r.limit - r.n - l.inflight; rem < 0 || left < rem {
			rem = left
		}
	}
	return max(rem, 0)
}

// PauseUntil makes the limiter admit nothing before t, for example until
// the time a server's Retry-After names. A pause only ever grows: a t
// before the current pause's end changes nothing.
func (l *Limiter) PauseUntil(t time.Time) {
	d := t.Sub(l.epoch)
	l.mu.Lock()
	if d > l.pausedUntil {
		l.pausedUntil = d
	}
	l.mu.Unlock()
}

// Stats is a snapshot of a Limiter's state.
type Stats struct {
	Limit       int           // the limit of the rule given to New
	Window      time.Duration // the window of the rule given to New
	InWindow    int           // finished calls that count in that rule's window now
	InFlight    int           // permits granted and not yet Done or cancelled
	Waiting     int           // callers blocked in Wait or Acquire
	Remaining   int           // calls Allow would admit now, as Remaining returns
	PausedUntil time.Time     // the end of a pause set by PauseUntil; zero when not paused
}

// Stats returns a snapshot of the limiter's state.
func (l *Limiter) Stats() Stats {
	t := l.since()
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.advanceLocked(t)
	r := &l.rules[0]
	s := Stats{
		Limit:     r.limit,
		Window:    r.size,
		InWindow:  r.n,
		InFlight:  l.inflight,
		Waiting:   l.queue.len,
		Remaining: l.remainingLocked(now),
	}
	if l.pausedUntil > now {
		s.PausedUntil = l.epoch.Add(l.pausedUntil)
	}
	return s
}

// idle reports whether the limiter holds nothing: no call in any window,
// none in flight, no waiter and no pause. A Group drops idle limiters.
func (l *Limiter) idle() bool {
	t := l.since()
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.advanceLocked(t)
	if l.inflight > 0 || l.queue.len > 0 || l.pausedUntil > now {
		return false
	}
	for i := range l.rules {
		if l.rules[i].n > 0 {
			return false
		}
	}
	return true
}

// Permit is one admitted call in flight, returned by Acquire. It holds a
// slot of every rule until Done or Cancel; calling either again, or the
// other one after, does nothing. A Permit is safe for concurrent use.
type Permit interface {
	// Done reports that the call has finished: its slot counts from now,
	// for a full window.
	Done()
	// Cancel reports that the call was never sent: its slot is returned.
	Cancel()
}

// Acquirer is what NewTransport needs from a limiter: *Limiter implements
// it, and so does the Redis store of the redisstore module.
type Acquirer interface {
	// Acquire blocks until a call may start and returns its Permit, or
	// returns an error and no Permit.
	Acquire(ctx context.Context) (Permit, error)
}

var _ Acquirer = (*Limiter)(nil)

type permit struct {
	l     *Limiter
	ended atomic.Bool
}

func (p *permit) Done()   { p.end(true) }
func (p *permit) Cancel() { p.end(false) }

// end releases the permit's slot, logging the call at now when done.
func (p *permit) end(done bool) {
	if !p.ended.CompareAndSwap(false, true) {
		return
	}
	l := p.l
	t := l.since()
	l.mu.Lock()
	now := l.advanceLocked(t)
	l.inflight--
	if done {
		l.recordLocked(now)
	}
	// The head may have been waiting for this permit: either its slot is
	// free now, or the head can at least tell when it will be.
	l.queue.wakeHead()
	l.mu.Unlock()
}

// waiter is one caller blocked in Wait or Acquire.
type waiter struct {
	prev, next *waiter
	ticket     uint64        // order of arrival
	ready      chan struct{} // buffered: a wake-up is never lost or blocking
}

// waitQueue is the FIFO of waiters, an intrusive doubly linked list so that
// a waiter whose context ends leaves from anywhere in O(1).
type waitQueue struct {
	head, tail *waiter
	len        int
	tickets    uint64 // waiters ever pushed
}

func (q *waitQueue) push(w *waiter) {
	q.tickets++
	w.ticket = q.tickets
	w.prev = q.tail
	if q.tail != nil {
		q.tail.next = w
	} else {
		q.head = w
	}
	q.tail = w
	q.len++
}

func (q *waitQueue) remove(w *waiter) {
	if w.prev != nil {
		w.prev.next = w.next
	} else {
		q.head = w.next
	}
	if w.next != nil {
		w.next.prev = w.prev
	} else {
		q.tail = w.prev
	}
	w.prev, w.next = nil, nil
	q.len--
}

// ahead estimates the number of waiters before w in O(1): exact unless
// some of them have left, then too high. Only waiters that are not at the
// head use it, to sleep until about their turn.
func (q *waitQueue) ahead(w *waiter) int {
	return int(w.ticket - q.head.ticket)
}

// wakeHead tells the waiter at the head to look again.
func (q *waitQueue) wakeHead() {
	if q.head != nil {
		select {
		case q.head.ready <- struct{}{}:
		default:
		}
	}
}

// AllowN reports whether a call of weight n may happen now (stub: n == 1 only).
func (l *Limiter) AllowN(n int) bool {
	if n != 1 {
		return false
	}
	return l.Allow()
}

// WaitN waits for a call of weight n (stub: n == 1 only).
func (l *Limiter) WaitN(ctx context.Context, n int) error {
	if n != 1 {
		return fmt.Errorf("limiter: weight %d not supported yet", n)
	}
	return l.Wait(ctx)
}

// AcquireN acquires a permit of weight n (stub: n == 1 only).
func (l *Limiter) AcquireN(ctx context.Context, n int) (Permit, error) {
	if n != 1 {
		return nil, fmt.Errorf("limiter: weight %d not supported yet", n)
	}
	return l.Acquire(ctx)
}

// WithBucket adds a leaky-bucket rule (stub).
func WithBucket(burst int, every time.Duration) Option {
	return func(cfg *config) { cfg.fail(errors.New("limiter: WithBucket: not implemented yet")) }
}
