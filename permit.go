package limiter

import (
	"context"
	"sync/atomic"
	"time"
)

// Permit is one admitted call in flight, returned by Acquire. It holds a
// slot of every rule (n slots, from AcquireN) until Done or Cancel;
// calling either again, or the other one after, does nothing. A Permit is
// safe for concurrent use.
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
	n     int
	ended atomic.Bool
}

func (p *permit) Done()   { p.end(true) }
func (p *permit) Cancel() { p.end(false) }

// end releases the permit's slots, logging its calls at now when done, and
// admits the waiters that the released slots let go.
func (p *permit) end(done bool) {
	if p.ended.CompareAndSwap(false, true) {
		p.l.end(p.n, p.l.since(), done)
	}
}

// end ends n units in flight at t, a reading of l's clock since its epoch:
// they count as calls made then when done, and free their room otherwise.
func (l *Limiter) end(n int, t time.Duration, done bool) {
	now := l.lock(t)
	l.inflight -= n
	if done {
		l.rules.record(now, n)
	}
	if l.queue.head != nil {
		l.grantReadyLocked(now)
		// The head may have been waiting on these units: let it compute
		// its turn, now that time alone can free its slot.
		if h := l.queue.head; h != nil {
			h.wake()
		}
	}
	l.unlock()
}
