package redisstore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/apiquota/limiter"
	"github.com/redis/go-redis/v9"
)

var _ limiter.Acquirer = (*Limiter)(nil)

// Limiter is a sliding-window rate limiter whose state lives in Redis, so
// that every Limiter built with the same key and prefix on the same Redis
// shares one quota, whatever process or machine it runs in. Together they
// never admit more than limit calls in any interval of length window, timed
// by the Redis server's clock, and they admit a full burst of limit calls at
// once. With WithWindow every rule holds at the same time.
//
// Each admission is one round trip: a Lua script (EVALSHA) that reads the
// server's TIME, counts what is still in the windows, and admits or refuses
// the call atomically. Limiters that share a key must be built with the same
// rules and lease.
//
// There are three ways to ask: Allow reports at once whether a call may
// happen; Wait blocks until it may; Acquire is Wait in two phases, for a call
// whose end matters (an HTTP request the server counts when it arrives):
// its permit holds a slot until Done, after which the call counts from the
// time of Done for a full window. *Limiter is a limiter.Acquirer and a
// limiter.Pauser, so limiter.NewTransport takes it unchanged.
//
// Each Limiter remembers its own calls that still count. When Redis loses
// the quota's state (FLUSHDB, a restart without persistence, eviction), the
// first Limiter to notice puts its calls back and holds every process back
// for the shortest window, and every other puts its calls back on its next
// call; see the package documentation for the bound this gives.
//
// While Redis cannot be reached, or does not answer within WithTimeout, or
// refuses writes, the FailurePolicy or the fallback limiter decides (see
// WithFailurePolicy and WithFallback).
//
// A Limiter is safe for concurrent use by multiple goroutines. It holds no
// lock while it waits or calls Redis.
type Limiter struct {
	mu         sync.Mutex
	own        own                       // this Limiter's calls that still count
	localPause atomic.Pointer[time.Time] // the latest PauseUntil, honoured here whatever Redis says; set under mu
	pending    atomic.Bool               // own.pending() may be true; set under mu, read without it

	client          redis.UniversalClient
	honoursDeadline bool // the client stops reads at a context deadline
	deadline        atomic.Pointer[sharedDeadline]
	keys            []string // log, pause and fresh key, in admitSource's order
	leaseArg        any      // admitSource's lease, boxed once; read only
	ruleArgs        []any    // minus the limit and the window µs of every rule, smallest limit first; read only
	lease, longest  int64    // µs
	ttl, holdMs     int64    // key TTL to set (with the slack) and the hold after a loss, ms
	minLimit        int      // the smallest limit of any rule
	timeout         time.Duration
	policy          FailurePolicy
	fallback        *limiter.Limiter
	evictionRisk    error
}

// New returns a Limiter that admits at most limit calls in any interval of
// length window for the given key, across every process that uses the same
// Redis, key and prefix. It returns an error, and no Limiter, for a nil
// client, an empty key, a key or prefix with '{' or '}', limit <= 0,
// window <= 0, a lease or timeout <= 0, or a rule (from WithWindow) equal to
// or looser than an earlier one.
//
// New asks Redis once, waiting at most the timeout (WithTimeout), for its
// maxmemory-policy, and remembers whether it lets Redis evict the limiter's
// keys (see EvictionRisk); it does not fail when Redis cannot be reached or
// refuses CONFIG GET, as managed services do. Like every round trip of the
// Limiter, that call runs on a goroutine of its own only for a ClusterClient
// that ignores context deadlines, which outlives New only while Redis does
// not answer, until the client's own timeout.
//
// Redis has microsecond resolution: windows and the lease are rounded up to
// a whole microsecond.
func New(client redis.UniversalClient, key string, limit int, window time.Duration, opts ...Option) (*Limiter, error) {
	c := config{
		rules:   []rule{{limit, window}},
		prefix:  DefaultPrefix,
		lease:   DefaultLease,
		timeout: DefaultTimeout,
	}
	for _, opt := range opts {
		if opt == nil {
			return nil, errors.New("redisstore: nil Option")
		}
		opt(&c)
	}
	if v := reflect.ValueOf(client); client == nil || v.Kind() == reflect.Pointer && v.IsNil() {
		return nil, errors.New("redisstore: client must not be nil")
	}
	if key == "" {
		return nil, errors.New("redisstore: key must not be empty")
	}
	if strings.ContainsAny(key, "{}") {
		return nil, fmt.Errorf("redisstore: key must not contain '{' or '}' (the Redis Cluster hash tag), got %q", key)
	}
	if strings.ContainsAny(c.prefix, "{}") {
		return nil, fmt.Errorf("redisstore: prefix must not contain '{' or '}' (the Redis Cluster hash tag), got %q", c.prefix)
	}
	if err := c.check(); err != nil {
		return nil, err
	}
	l := newLimiter(client, c.prefix+"{"+key+"}:", &c)
	l.evictionRisk = l.checkEviction()
	return l, nil
}

// newLimiter builds the Limiter of valid settings c, with keys under base.
func newLimiter(client redis.UniversalClient, base string, c *config) *Limiter {
	longest, shortest, minLimit := c.rules[0].window, c.rules[0].window, c.rules[0].limit
	first := 0 // the rule of the smallest limit, first in ruleArgs for the fast path
	for i, r := range c.rules {
		longest, shortest = max(longest, r.window), min(shortest, r.window)
		if r.limit < minLimit {
			minLimit, first = r.limit, i
		}
	}
	var args []any
	for i := range c.rules {
		r := c.rules[(first+i)%len(c.rules)]
		args = append(args, -int64(r.limit), ceilDiv(r.window, time.Microsecond))
	}
	bounded, honours := boundedClient(client, c.timeout)
	l := &Limiter{
		own:             newOwn(longest),
		client:          bounded,
		honoursDeadline: honours,
		keys:            []string{base + "log", base + "pause", base + "fresh"},
		ruleArgs:        args,
		lease:           ceilDiv(c.lease, time.Microsecond),
		longest:         ceilDiv(longest, time.Microsecond),
		ttl:             ceilDiv(max(longest, c.lease), time.Millisecond) + ceilDiv(longest, 8*time.Millisecond),
		holdMs:          ceilDiv(shortest, time.Millisecond),
		minLimit:        minLimit,
		timeout:         c.timeout,
		policy:          c.policy,
		fallback:        c.fallback,
	}
	l.leaseArg = l.lease // boxed once, not per call
	return l
}

// Allow reports whether a call may happen now, and if so counts it. It never
// waits for a slot; it does make one round trip to Redis, none while this
// process is paused (PauseUntil).
//
// While Redis cannot be reached, Allow reports the fallback's answer, true
// under FailOpen, or false and the error under FailClosed.
func (l *Limiter) Allow(ctx context.Context) (bool, error) {
	if l.pausedFor() > 0 {
		_ = l.sync(ctx, false) // the pause reaches Redis as soon as it can
		return false, ctx.Err()
	}
	res, err := l.decide(ctx, opAllow, nextSeq())
	if err == nil {
		return res.ok(), nil
	}
	if err := l.unreachable(ctx, err); err != nil {
		return false, err
	}
	if l.fallback != nil {
		l.chargeFallback()
		if !l.fallback.Allow() {
			return false, nil
		}
		l.recordLocal()
	}
	return true, nil
}

// Wait blocks until a call may happen and counts it, or until ctx ends. It
// sleeps for exactly the time Redis reports until the next slot frees, then
// asks again; waiters in different processes are not served in order. When
// that time passes ctx's deadline, Wait fails at once with
// limiter.ErrWouldExceedDeadline. A Wait that fails takes no slot.
//
// While Redis cannot be reached, Wait delegates to the fallback, returns nil
// under FailOpen, or returns the error under FailClosed.
func (l *Limiter) Wait(ctx context.Context) error {
	down, err := l.wait(ctx, opWait, nextSeq())
	if err != nil || !down || l.fallback == nil {
		return err
	}
	l.chargeFallback()
	if err := l.fallback.Wait(ctx); err != nil {
		return err
	}
	l.recordLocal()
	return nil
}

// Acquire blocks like Wait until a call may happen, and returns a permit that
// holds one slot from now until the permit's Done (the call has finished; it
// counts from the time of Done, on the Redis clock, for a full window) or
// Cancel (the call was never made; the slot is free again). A permit that is
// neither frees its slot when its lease ends (see WithLease). Only the first
// Done or Cancel of a permit counts. A Done or Cancel that Redis does not
// take (unreachable, out of memory) is kept and written with this Limiter's
// next call to Redis; until then the slot stays taken.
//
// While Redis cannot be reached, Acquire delegates to the fallback, returns
// a permit that does nothing under FailOpen, or returns the error under
// FailClosed.
func (l *Limiter) Acquire(ctx context.Context) (limiter.Permit, error) {
	seq := nextSeq()
	down, err := l.wait(ctx, opAcquire, seq)
	switch {
	case err != nil:
		return nil, err
	case down && l.fallback != nil:
		l.chargeFallback()
		p, err := l.fallback.Acquire(ctx)
		if err != nil {
			return nil, err
		}
		return &localPermit{l: l, p: p}, nil
	case down:
		return openPermit{}, nil
	}
	return &permit{l: l, seq: seq}, nil
}

// Remaining returns how many calls Allow would admit right now, over every
// rule and every process sharing the quota; 0 while this process is paused.
// While Redis cannot be reached it returns the fallback's Remaining, the
// smallest limit of the rules under FailOpen, or the error under FailClosed.
func (l *Limiter) Remaining(ctx context.Context) (int, error) {
	if l.pausedFor() > 0 {
		_ = l.sync(ctx, false)
		return 0, ctx.Err()
	}
	res, err := l.decide(ctx, opRemaining, 0)
	if err == nil {
		return res.remaining, nil
	}
	if err := l.unreachable(ctx, err); err != nil {
		return 0, err
	}
	if l.fallback != nil {
		return l.fallback.Remaining(), nil
	}
	return l.minLimit, nil
}

// PauseUntil makes every Limiter sharing the quota admit nothing before t,
// for example after a server's Retry-After; a pause only ever extends. The
// pause is a Redis key that expires at t, so all processes honour it, and
// this Limiter honours it by itself whatever Redis does: when Redis cannot
// take the pause within the timeout, this process still waits, and the pause
// is written with its next call to Redis. limiter.Transport calls PauseUntil
// after a 429. The fallback, if any, is paused too.
func (l *Limiter) PauseUntil(t time.Time) {
	if l.fallback != nil {
		l.fallback.PauseUntil(t)
	}
	if time.Until(t) <= 0 {
		return
	}
	l.mu.Lock()
	if p := l.localPause.Load(); p == nil || t.After(*p) {
		l.localPause.Store(&t)
	}
	if t.After(l.own.pause) {
		l.own.pause = t
		l.pending.Store(true)
	}
	l.mu.Unlock()
	_ = l.sync(context.Background(), false) // on failure the pause stays pending
}

// EvictionRisk returns an error that wraps ErrEvictionRisk and names Redis's
// maxmemory-policy when New read a policy under which Redis may evict the
// limiter's keys (every policy but noeviction, once maxmemory is set), and
// nil otherwise, also when Redis did not answer New or refused CONFIG GET.
// Eviction is survived like any loss of state, within the bound the package
// documentation states, but memory pressure may evict again and again:
// give the limiter a Redis with noeviction, or check this at start-up.
func (l *Limiter) EvictionRisk() error { return l.evictionRisk }

// pausedFor returns how long this process's own pause still lasts.
func (l *Limiter) pausedFor() time.Duration {
	if p := l.localPause.Load(); p != nil {
		return time.Until(*p)
	}
	return 0
}

// wait runs op until it admits seq, ctx ends, or Redis cannot be reached.
// down reports that the failure policy or fallback must answer instead.
func (l *Limiter) wait(ctx context.Context, op string, seq uint64) (down bool, err error) {
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		if err := ctx.Err(); err != nil {
			return false, err
		}
		d := l.pausedFor()
		if d > 0 {
			_ = l.sync(ctx, false)
		} else {
			res, err := l.decide(ctx, op, seq)
			if err != nil {
				if err := l.unreachable(ctx, err); err != nil {
					return false, err
				}
				return true, nil
			}
			if res.ok() {
				return false, nil
			}
			d = max(res.wait, time.Millisecond/10) // never spin, whatever the reply
		}
		if deadline, ok := ctx.Deadline(); ok && d > time.Until(deadline) {
			// The core's own type, so that the error itself has Timeout and
			// NonRetriable, as net.Error checks and azcore look for.
			return false, &limiter.DeadlineError{Wait: d}
		}
		if err := waitTimer(ctx, &timer, d); err != nil {
			return false, err
		}
	}
}

// decide makes the round trip of op for the call seq: first it writes what
// Redis lacks (a pending Done, Cancel or pause), and when the script finds
// that Redis lost calls that still count, it puts this Limiter's calls back,
// holds every process back, and asks again.
func (l *Limiter) decide(ctx context.Context, op string, seq uint64) (result, error) {
	if err := l.sync(ctx, false); err != nil {
		return result{}, err
	}
	for range 3 {
		res, evidence, err := l.ask(ctx, op, seq)
		if err != nil || res.status != statusLost {
			return res, err
		}
		l.mu.Lock()
		gone := evidence != 0 && !l.own.counts(evidence, res.at)
		l.mu.Unlock()
		if gone {
			continue // cancelled, or out of every window, while the script ran: no loss
		}
		if err := l.sync(ctx, true); err != nil {
			return result{}, err
		}
	}
	return result{}, errStateLost
}

// errStateLost means that Redis lost the quota's state again each time it
// was put back (memory pressure evicting what was just written): Redis does
// not serve the quota, so the failure policy answers.
var errStateLost = errors.New("the quota's state vanished each time it was put back")

// ask runs admitScript once for op and records an admission. It returns
// the seq of the own call it gave as evidence of what the log holds (0: none).
func (l *Limiter) ask(ctx context.Context, op string, seq uint64) (result, uint64, error) {
	l.mu.Lock()
	now := l.own.serverNow(false)
	l.own.prune(now)
	evidence, proof, _ := l.own.evidence(now)
	horizon := l.own.horizon
	l.mu.Unlock()

	var id any = ""
	if seq != 0 {
		id = idOf(seq) // boxed once: the argument now, the evidence later
	}
	if proof != "" {
		horizon = 0 // a log that holds the evidence is not empty
	}
	args := make([]any, 0, 5+len(l.ruleArgs))
	args = append(args, op, id, l.leaseArg, proof, horizon)
	args = append(args, l.ruleArgs...)
	sent := time.Now()
	v, err := l.roundTrip(ctx, admitScript, l.keys, args)
	if err != nil {
		return result{}, 0, err
	}
	res, err := parseResult(v, op)
	if err != nil {
		return result{}, 0, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.own.observe(sent, res.at)
	if res.newest > 0 {
		l.own.horizon = max(l.own.horizon, res.newest+l.longest)
	}
	switch {
	case !res.ok():
	case op == opAcquire:
		l.own.flight[seq] = res.at + l.lease
	default:
		l.own.add(seq, id, res.at, true)
	}
	return res, evidence, nil
}

// sync writes what Redis lacks: a pending Done, Cancel or pause; with all,
// after a loss, also every own call that still counts, and the hold.
func (l *Limiter) sync(ctx context.Context, all bool) error {
	if !all && !l.pending.Load() {
		return nil // the common case, without the lock
	}
	l.mu.Lock()
	if !all && !l.own.pending() {
		l.pending.Store(false)
		l.mu.Unlock()
		return nil
	}
	rest, sent := l.own.syncArgs(all)
	removed, pause := len(l.own.removed), l.own.pause
	if all {
		l.own.restored()
	}
	l.mu.Unlock()

	var pauseMs, hold int64
	if d := time.Until(pause); d > 0 {
		pauseMs = ceilDiv(d, time.Millisecond)
	}
	if all {
		hold = l.holdMs
	}
	args := append([]any{l.ttl, l.longest, hold, pauseMs}, rest...)
	if _, err := l.roundTrip(ctx, syncScript, l.keys, args); err != nil {
		return err
	}
	l.mu.Lock()
	l.own.wrote(removed, sent, pause)
	l.pending.Store(l.own.pending())
	l.mu.Unlock()
	return nil
}

// chargeFallback counts against the fallback, once, the calls this Limiter
// admitted through Redis that still count in the fallback's window, so that
// on a switch the two do not add up: each counts in the fallback from the
// switch on, as many as it has room for.
func (l *Limiter) chargeFallback() {
	window := ceilDiv(l.fallback.Stats().Window, time.Microsecond)
	l.mu.Lock()
	n := 0
	if l.own.synced {
		n = l.own.uncharged(l.own.serverNow(false), window)
	}
	l.mu.Unlock()
	for range n {
		if !l.fallback.Allow() {
			return
		}
	}
}

// recordLocal remembers a call admitted through the fallback, to be written
// to Redis with the next call that reaches it, so that back on Redis the
// quota counts it. Its server time is an estimate that is never early.
func (l *Limiter) recordLocal() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.own.synced {
		return // no server time to give it
	}
	seq := nextSeq()
	l.own.add(seq, idOf(seq), l.own.serverNow(true), false)
	l.pending.Store(true)
	l.own.charged[seq] = true
}

// unreachable returns the error the caller gets for err, a failed call to
// Redis, or nil when Redis cannot be reached and the failure policy or the
// fallback answers instead. The caller's own cancellation is always returned.
func (l *Limiter) unreachable(ctx context.Context, err error) error {
	if ctxErr := ctx.Err(); ctxErr != nil {
		return ctxErr
	}
	if !isUnreachable(err) {
		return fmt.Errorf("redisstore: %w", err)
	}
	if l.fallback != nil || l.policy == FailOpen {
		return nil
	}
	return fmt.Errorf("redisstore: redis unreachable: %w", err)
}

// isUnreachable reports whether err means Redis could not serve the call (a
// network error, no reply within the timeout, a server still loading,
// failing over, or refusing writes), rather than a reply that says the call
// itself is wrong.
func isUnreachable(err error) bool {
	var rerr redis.Error
	if !errors.As(err, &rerr) {
		return true // errTimeout, errStateLost, network errors
	}
	for _, p := range []string{"LOADING", "BUSY", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN", "READONLY", "OOM", "MISCONF", "NOREPLICAS"} {
		if redis.HasErrorPrefix(err, p) {
			return true
		}
	}
	return false
}

// processID makes member ids unique across processes; seq within one.
var (
	processID = newProcessID()
	seqs      atomic.Uint64
)

func newProcessID() string {
	var b [8]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go 1.24+)
	return hex.EncodeToString(b[:]) + ":"
}

// nextSeq returns a call number no other call of this process uses; with
// processID it names a sorted-set member (idOf). It is never 0.
func nextSeq() uint64 { return seqs.Add(1) }

// newID returns a sorted-set member no other call of any process uses.
func newID() string { return idOf(nextSeq()) }

// ceilDiv returns d in units, rounded up.
func ceilDiv(d, unit time.Duration) int64 {
	q := d / unit
	if d%unit != 0 {
		q++
	}
	return int64(q)
}
