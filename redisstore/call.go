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
// waits and clients with ContextTimeoutEnabled stop by themselves. A client
// on its default options ignores a context deadline while it reads (go-redis
// waits ReadTimeout, 5s by default), so for such a client the round trip
// runs on its own goroutine, and the caller walks away at the timeout; the
// goroutine ends when the client gives up, and it can no longer retry since
// its context has ended. No lock is held meanwhile.
func (l *Limiter) roundTrip(ctx context.Context, script *redis.Script, keys []string, args []any) (any, error) {
	c := callPool.Get().(*call)
	c.script, c.keys, c.args = script, keys, args
	return l.do(ctx, c)
}

// do makes the round trip c describes, as roundTrip says.
func (l *Limiter) do(ctx context.Context, c *call) (any, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	rctx, cancel := context.WithTimeout(ctx, l.timeout)
	defer cancel()
	c.ctx = rctx
	if l.honoursDeadline {
		c.run(l.client)
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

// honoursDeadline reports whether client stops a read at the context's
// deadline (go-redis's ContextTimeoutEnabled), so that no goroutine is needed
// to bound a round trip.
func honoursDeadline(client redis.UniversalClient) bool {
	switch c := client.(type) {
	case *redis.Client:
		return c.Options().ContextTimeoutEnabled
	case *redis.ClusterClient:
		return c.Options().ContextTimeoutEnabled
	}
	return false
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
