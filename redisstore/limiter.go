package redisstore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/apiquota/limiter"
	"github.com/redis/go-redis/v9"
)

// settleTimeout bounds the network call behind Permit.Done, Permit.Cancel and
// PauseUntil, which have no context of their own.
const settleTimeout = time.Second

var _ limiter.Acquirer = (*Limiter)(nil)

// Limiter is a sliding-window rate limiter whose state lives in Redis, so
// that every Limiter built with the same key and prefix on the same Redis
// shares one quota, whatever process or machine it runs in. Together they
// never admit more than limit calls in any interval of length window, timed
// by the Redis server's clock, and they admit a full burst of limit calls at
// once. With WithWindow every rule holds at the same time.
//
// Each admission is one round trip: a Lua script (EVALSHA) that reads the
// server's TIME, drops what has left every window, and admits or refuses the
// call atomically. Limiters that share a key must be built with the same rules
// and lease.
//
// There are three ways to ask: Allow reports at once whether a call may
// happen; Wait blocks until it may; Acquire is Wait in two phases, for a call
// whose end matters (an HTTP request the server counts when it arrives):
// its permit holds a slot until Done, after which the call counts from the
// time of Done for a full window. *Limiter is a limiter.Acquirer, so
// limiter.NewTransport takes it unchanged.
//
// While Redis cannot be reached, the FailurePolicy or the fallback limiter
// decides (see WithFailurePolicy and WithFallback).
//
// A Limiter is safe for concurrent use by multiple goroutines. It starts no
// goroutine and holds no lock while it waits or calls Redis.
type Limiter struct {
	client   redis.UniversalClient
	keys     []string // log and pause key, in admitSource's order
	ruleArgs []any    // admitSource's ARGV from ARGV[3] on; read only
	minLimit int      // the smallest limit of any rule
	policy   FailurePolicy
	fallback *limiter.Limiter
}

// New returns a Limiter that admits at most limit calls in any interval of
// length window for the given key, across every process that uses the same
// Redis, key and prefix. It returns an error, and no Limiter, for a nil
// client, an empty key, a key or prefix with '{' or '}', limit <= 0,
// window <= 0, a lease <= 0, or a rule (from WithWindow) equal to or looser
// than an earlier one. New does not contact Redis.
//
// Redis has microsecond resolution: windows and the lease are rounded up to
// a whole microsecond.
func New(client redis.UniversalClient, key string, limit int, window time.Duration, opts ...Option) (*Limiter, error) {
	c := config{
		rules:  []rule{{limit, window}},
		prefix: DefaultPrefix,
		lease:  DefaultLease,
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

	base := c.prefix + "{" + key + "}:"
	longest, minLimit := c.rules[0].window, c.rules[0].limit
	for _, r := range c.rules {
		longest = max(longest, r.window)
		minLimit = min(minLimit, r.limit)
	}
	args := []any{
		ceilDiv(c.lease, time.Microsecond),
		ceilDiv(longest, time.Microsecond),
		ceilDiv(max(longest, c.lease), time.Millisecond),
	}
	for _, r := range c.rules {
		args = append(args, int64(r.limit), ceilDiv(r.window, time.Microsecond))
	}
	return &Limiter{
		client:   client,
		keys:     []string{base + "log", base + "pause"},
		ruleArgs: args,
		minLimit: minLimit,
		policy:   c.policy,
		fallback: c.fallback,
	}, nil
}

// Allow reports whether a call may happen now, and if so counts it. It never
// waits for a slot; it does make one round trip to Redis.
//
// While Redis cannot be reached, Allow reports the fallback's answer, true
// under FailOpen, or false and the error under FailClosed.
func (l *Limiter) Allow(ctx context.Context) (bool, error) {
	res, err := l.run(ctx, opAllow, newID())
	if err == nil {
		return res.ok, nil
	}
	if err := l.unreachable(ctx, err); err != nil {
		return false, err
	}
	if l.fallback != nil {
		return l.fallback.Allow(), nil
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
	_, down, err := l.wait(ctx, opWait, newID())
	if err != nil || !down || l.fallback == nil {
		return err
	}
	return l.fallback.Wait(ctx)
}

// Acquire blocks like Wait until a call may happen, and returns a permit that
// holds one slot from now until the permit's Done (the call has finished; it
// counts from the time of Done, on the Redis clock, for a full window) or
// Cancel (the call was never made; the slot is free again). A permit that is
// neither frees its slot when its lease ends (see WithLease). Only the first
// Done or Cancel of a permit counts. When Done cannot reach Redis, the slot
// stays taken until the lease ends.
//
// While Redis cannot be reached, Acquire delegates to the fallback, returns
// a permit that does nothing under FailOpen, or returns the error under
// FailClosed.
func (l *Limiter) Acquire(ctx context.Context) (limiter.Permit, error) {
	id := newID()
	_, down, err := l.wait(ctx, opAcquire, id)
	switch {
	case err != nil:
		return nil, err
	case down && l.fallback != nil:
		return l.fallback.Acquire(ctx)
	case down:
		return openPermit{}, nil
	}
	return &permit{l: l, id: id}, nil
}

// Remaining returns how many calls Allow would admit right now, over every
// rule and every process sharing the quota. While Redis cannot be reached it
// returns the fallback's Remaining, the smallest limit of the rules under
// FailOpen, or the error under FailClosed.
func (l *Limiter) Remaining(ctx context.Context) (int, error) {
	res, err := l.run(ctx, opRemaining, "")
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
// pause is a Redis key that expires at t, so all processes honour it.
// limiter.Transport calls PauseUntil after a 429. It is best effort: it
// gives Redis at most a second and ignores errors. The fallback, if any, is
// paused too.
func (l *Limiter) PauseUntil(t time.Time) {
	if l.fallback != nil {
		l.fallback.PauseUntil(t)
	}
	d := time.Until(t)
	if d <= 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), settleTimeout)
	defer cancel()
	_ = pauseScript.Run(ctx, l.client, l.keys[1:], ceilDiv(d, time.Millisecond)).Err()
}

// wait runs op until it admits id, ctx ends, or Redis cannot be reached.
// down reports that the failure policy or fallback must answer instead.
func (l *Limiter) wait(ctx context.Context, op, id string) (res result, down bool, err error) {
	if err := ctx.Err(); err != nil {
		return result{}, false, err
	}
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		res, err := l.run(ctx, op, id)
		if err != nil {
			if err := l.unreachable(ctx, err); err != nil {
				return result{}, false, err
			}
			return result{}, true, nil
		}
		if res.ok {
			return res, false, nil
		}
		if deadline, ok := ctx.Deadline(); ok && res.wait > time.Until(deadline) {
			return result{}, false, limiter.ErrWouldExceedDeadline
		}
		d := max(res.wait, time.Millisecond/10) // never spin, whatever the reply
		if timer == nil {
			timer = time.NewTimer(d)
		} else {
			timer.Reset(d)
		}
		select {
		case <-ctx.Done():
			return result{}, false, ctx.Err()
		case <-timer.C:
		}
	}
}

// run makes the one round trip of op.
func (l *Limiter) run(ctx context.Context, op, id string) (result, error) {
	args := make([]any, 0, 2+len(l.ruleArgs))
	args = append(args, op, id)
	args = append(args, l.ruleArgs...)
	v, err := admitScript.Run(ctx, l.client, l.keys, args...).Result()
	if err != nil {
		return result{}, err
	}
	return parseResult(v)
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
// network error, a timeout, a server still loading or failing over), rather
// than a reply that says the call itself is wrong.
func isUnreachable(err error) bool {
	var rerr redis.Error
	if !errors.As(err, &rerr) {
		return true
	}
	for _, p := range []string{"LOADING", "BUSY", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN", "READONLY"} {
		if redis.HasErrorPrefix(err, p) {
			return true
		}
	}
	return false
}

// permit is the limiter.Permit of an admission held in Redis.
type permit struct {
	l       *Limiter
	id      string
	settled atomic.Bool
}

// Done re-times the permit's entry to the Redis server's now.
func (p *permit) Done() { p.settle(opDone) }

// Cancel removes the permit's entry.
func (p *permit) Cancel() { p.settle(opCancel) }

func (p *permit) settle(op string) {
	if p.settled.Swap(true) {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), settleTimeout)
	defer cancel()
	// On failure the entry stays in flight until its lease ends: the slot is
	// held too long, never given out twice.
	_, _ = p.l.run(ctx, op, p.id)
}

// openPermit is the permit of a call admitted under FailOpen.
type openPermit struct{}

func (openPermit) Done()   {}
func (openPermit) Cancel() {}

// processID makes member ids unique across processes; seq within one.
var (
	processID = newProcessID()
	seq       atomic.Uint64
)

func newProcessID() string {
	var b [8]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go 1.24+)
	return hex.EncodeToString(b[:]) + ":"
}

// newID returns a sorted-set member no other call of any process uses.
func newID() string {
	return processID + strconv.FormatUint(seq.Add(1), 36)
}

// ceilDiv returns d in units, rounded up.
func ceilDiv(d, unit time.Duration) int64 {
	q := d / unit
	if d%unit != 0 {
		q++
	}
	return int64(q)
}
