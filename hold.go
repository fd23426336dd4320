package limiter

import (
	"context"
	"time"
)

// The Transport's way into a Limiter. A request takes a permit of two or
// more limiters (a route's, what was learned, the connection's) and ends
// them all when its response arrives: one reading of the clock serves them
// all, and a slot granted at once is held without a Permit to allocate.
// Each function here is the path of Acquire or Done, with the reading
// given and nothing allocated; a call that has to wait goes the usual way.

// hold is a slot held in a Limiter for the Transport: p is nil when the
// caller's reading admitted it at once, and the Transport ends it exactly
// once; otherwise p is the permit that AcquireN's path granted. release
// ends it either way.
type hold struct {
	l *Limiter
	n int
	p *permit
}

// holdAt is AcquireN(ctx, n) with t, a reading of l's clock as a duration
// since its epoch, taken by the caller a little before the call: a call
// that t admits at once is held without a permit. Any other call is
// decided as AcquireN decides it, on a reading of its own, so that an old
// t can never make a call wait, or fail its deadline, that a fresh one
// would admit.
func (l *Limiter) holdAt(ctx context.Context, n int, t time.Duration) (hold, error) {
	if n >= 1 && n <= l.maxWeight && ctx.Err() == nil {
		now := l.lock(t)
		if l.queue.len == 0 && l.admitsLocked(now, n) {
			l.inflight += n // what grantLocked does, without the permit
			l.unlockDelayed()
			return hold{l: l, n: n}, nil
		}
		l.unlock()
	}
	p, err := l.wait(ctx, n, true)
	if err != nil {
		return hold{}, err
	}
	return hold{l: l, n: n, p: p}, nil
}

// reading returns l's clock as a duration since its epoch: now, the
// caller's reading of the same clock, when shared; otherwise a reading of
// l's own clock.
func (l *Limiter) reading(now time.Time, shared bool) time.Duration {
	if shared {
		return now.Sub(l.epoch)
	}
	return l.since()
}

// waited reports whether the hold was not granted at the caller's reading:
// it may have waited, and the caller's clock reading is old.
func (h hold) waited() bool { return h.p != nil }

// release ends the hold at t, a reading of its limiter's clock since the
// epoch: Done when done, otherwise Cancel.
func (h hold) release(t time.Duration, done bool) {
	if h.p == nil || h.p.ended.CompareAndSwap(false, true) {
		h.l.end(h.n, t, done)
	}
}
