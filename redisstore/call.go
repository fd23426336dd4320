package redisstore

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// errTimeout is the error of a round trip that took longer than WithTimeout
// allows; it is one of the errors that make Redis unreachable.
var errTimeout = errors.New("no reply within the timeout")

// call is one round trip that its caller may abandon. The goroutine that
// makes it owns res and err until it sends on done; a caller that received
// from done may reuse the call, one that gave up never touches it again.
type call struct {
	script *redis.Script
	keys   []string
	args   []any
	fn     func(context.Context) (any, error) // instead of script, when set
	ctx    context.Context
	v      any
	err    error
	done   chan struct{} // buffered: the goroutine never blocks on it
}

var callPool = sync.Pool{New: func() any { return &call{done: make(chan struct{}, 1)} }}

func (c *call) run(client redis.Scripter) {
	if c.fn != nil {
		c.v, c.err = c.fn(c.ctx)
	} else {
		c.v, c.err = c.script.Run(c.ctx, client, c.keys, c.args...).Result()
	}
	c.done <- struct{}{}
}

// roundTrip runs script on Redis and returns its reply, waiting at most the
// limiter's timeout, or less when ctx ends first; then the error says which:
// errTimeout for the timeout, ctx's own error for the caller's end.
//
// The context given to the client carries the timeout, so that dials, pool
// waits and clients that honour deadlines (see boundedClient) stop by
// themselves, and the round trip runs on the caller's goroutine. A client
// that ignores a context deadline while it reads (a ClusterClient on
// go-redis's default options waits ReadTimeout, 5s) gets a goroutine of its
// own for the round trip, and the caller walks away at the timeout; the
// goroutine ends when the client gives up, and it can no longer retry since
// its context has ended. No lock is held meanwhile.
func (l *Limiter) roundTrip(ctx context.Context, script *redis.Script, keys []string, args []any) (any, error) {
	if l.honoursDeadline {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		rctx, cancel := l.bounded(ctx)
		v, err := script.Run(rctx, l.client, keys, args...).Result()
		if cancel != nil {
			cancel()
		}
		return v, roundTripErr(ctx, rctx, err)
	}
	c := callPool.Get().(*call)
	c.script, c.keys, c.args = script, keys, args
	return l.do(ctx, c)
}

// bounded returns ctx bounded by the limiter's timeout, and its cancel
// function, nil when there is none to call.
//
// A ctx that can never end (Background, or values over it: Done is nil)
// gets a deadline shared by every round trip that starts within a
// sixteenth of the timeout, from the first of them: each waits at most the
// timeout and at least fifteen sixteenths of it, and none pays for a
// context and a timer of its own. The shared context ends by itself at its
// deadline. Any other ctx gets a deadline of its own.
func (l *Limiter) bounded(ctx context.Context) (context.Context, context.CancelFunc) {
	if ctx.Done() != nil {
		return context.WithTimeout(ctx, l.timeout)
	}
	now := time.Now()
	d := l.deadline.Load()
	if d == nil || !now.Before(d.reuseUntil) {
		c, cancel := context.WithDeadline(context.Background(), now.Add(l.timeout))
		d = &sharedDeadline{ctx: c, cancel: cancel, reuseUntil: now.Add(l.timeout / 16)}
		l.deadline.Store(d) // racing stores are both right: each bounds its own callers
	}
	if ctx == context.Background() {
		return d.ctx, nil
	}
	return withValues{d.ctx, ctx}, nil
}

// sharedDeadline is the deadline that bounded shares between round trips
// that start before reuseUntil. cancel is never called: the context ends at
// its deadline, when round trips that still use it must end too.
type sharedDeadline struct {
	ctx        context.Context
	cancel     context.CancelFunc
	reuseUntil time.Time
}

// withValues is a shared deadline carrying the values of a caller's context
// that can never end (for tracing hooks of the client).
type withValues struct {
	context.Context
	values context.Context
}

func (c withValues) Value(key any) any { return c.values.Value(key) }

// do makes the round trip c describes, as roundTrip says.
func (l *Limiter) do(ctx context.Context, c *call) (any, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	rctx, cancel := context.WithTimeout(ctx, l.timeout)
	defer cancel()
	c.ctx = rctx
	if l.honoursDeadline {
		c.run(l.client) // sends on the buffered done: the select below takes it at once
	} else {
		go c.run(l.client)
	}
	select {
	case <-c.done:
		v, err := c.v, c.err
		*c = call{done: c.done}
		callPool.Put(c)
		return v, roundTripErr(ctx, rctx, err)
	case <-rctx.Done():
		return nil, roundTripErr(ctx, rctx, rctx.Err())
	}
}

// roundTripErr names the cause of err from a round trip run under rctx, a
// child of the caller's ctx with the limiter's timeout.
func roundTripErr(ctx, rctx context.Context, err error) error {
	if err == nil || errors.Is(err, redis.Nil) {
		return err
	}
	if ctxErr := ctx.Err(); ctxErr != nil {
		return ctxErr // the caller's deadline or cancellation, not Redis's fault
	}
	if rctx.Err() != nil {
		return errTimeout
	}
	return err
}

// boundedClient returns the client the Limiter calls Redis through, and
// whether that client stops a round trip at the context's deadline, so that
// no goroutine is needed to bound it.
//
// A *redis.Client on go-redis's default options ignores a context deadline
// while it reads (ReadTimeout, 5s). For it the Limiter uses a clone from
// WithTimeout, which shares the client's connection pool, with
// ContextTimeoutEnabled set on the clone's own options: the caller's
// goroutine makes the round trip, and a frozen Redis costs at most the
// timeout, retries included. A ClusterClient (and any other client) that
// ignores deadlines has no such clone; for it roundTrip leaves the call on a
// goroutine of its own at the timeout.
func boundedClient(client redis.UniversalClient, timeout time.Duration) (redis.UniversalClient, bool) {
	switch c := client.(type) {
	case *redis.Client:
		if c.Options().ContextTimeoutEnabled {
			return c, true
		}
		clone := c.WithTimeout(timeout)
		clone.Options().ContextTimeoutEnabled = true // the clone's options, not the caller's
		return clone, true
	case *redis.ClusterClient:
		return c, c.Options().ContextTimeoutEnabled
	}
	return client, false
}

// waitTimer sleeps d on t (made on first use), or until ctx ends.
func waitTimer(ctx context.Context, t **time.Timer, d time.Duration) error {
	if *t == nil {
		*t = time.NewTimer(d)
	} else {
		(*t).Reset(d)
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-(*t).C:
		return nil
	}
}
