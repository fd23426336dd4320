package limiter

import (
	"context"
	"time"
)

// waiter is one caller blocked in Wait or Acquire.
type waiter struct {
	prev, next *waiter
	ctx        context.Context
	n          int           // the weight of the call
	hold       bool          // Acquire: grant a permit, not a logged call
	ticket     int64         // units pushed before it, to estimate its turn
	queued     bool          // in the queue; false once granted or gone
	granted    bool          // admitted, by itself or by whoever admitted those before it
	permit     *permit       // with hold, the permit granted
	ready      chan struct{} // buffered: a wake-up is never lost or blocking
}

// waitQueue is the FIFO of waiters, an intrusive doubly linked list so that
// a waiter whose context ends leaves from anywhere in O(1).
type waitQueue struct {
	head, tail *waiter
	len        int
	units      int   // the weights of the waiters, summed
	tickets    int64 // units ever pushed
}

func (q *waitQueue) push(w *waiter) {
	w.ticket = q.tickets
	q.tickets += int64(w.n)
	w.prev = q.tail
	if q.tail != nil {
		q.tail.next = w
	} else {
		q.head = w
	}
	q.tail = w
	q.len++
	q.units += w.n
	w.queued = true
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
	q.units -= w.n
	w.queued = false
}

// ahead estimates the units of the waiters before w in O(1): exact unless
// some of them have left, then too high. Only waiters that are not at the
// head use it, to sleep until about their turn; the head is always told
// when the one before it leaves, and computes its turn exactly.
func (q *waitQueue) ahead(w *waiter) int {
	return int(w.ticket - q.head.ticket)
}

func (w *waiter) wake() {
	select {
	case w.ready <- struct{}{}:
	default:
	}
}

// wait is the core of Wait and Acquire. With hold, the admitted call is
// held in flight behind the returned permit instead of being logged.
func (l *Limiter) wait(ctx context.Context, n int, hold bool) (*permit, error) {
	if err := checkWeight(n, l.maxWeight); err != nil {
		return nil, err
	}
	ctxErr := ctx.Err()
	if ctxErr != nil && ctxErr != context.DeadlineExceeded {
		return nil, ctxErr
	}
	now := l.lock(l.since())
	w, p, err := l.enterLocked(ctx, ctxErr, now, n, hold)
	l.unlock()
	if w == nil {
		return p, err
	}
	return l.sleep(w)
}

// enterLocked decides a new call at now: admitted at once (a permit, or nil
// without hold), refused (an error), or queued (a waiter). l.mu must be
// held.
func (l *Limiter) enterLocked(ctx context.Context, ctxErr error, now time.Duration, n int, hold bool) (*waiter, *permit, error) {
	free := l.queue.len == 0 && l.admitsLocked(now, n)
	switch {
	case ctxErr != nil && free:
		return nil, nil, ctxErr
	case ctxErr != nil:
		// The deadline has passed and no slot is free: both errors hold.
		return nil, nil, deadlineErr(0, "limiter: deadline passed with no slot free")
	case free:
		return nil, l.grantLocked(now, n, hold), nil
	case l.maxWaiters >= 0 && l.queue.len >= l.maxWaiters:
		return nil, nil, ErrQueueFull
	}
	if dl, ok := ctx.Deadline(); ok {
		// A context that ends as the slot frees cannot take it either.
		wait := l.earliestLocked(now, l.queue.units, n) - now
		if left := time.Until(dl); wait >= left {
			return nil, nil, deadlineErr(wait, "limiter: next slot in %v, after the context deadline in %v", wait, left)
		}
	}
	w := &waiter{ctx: ctx, n: n, hold: hold, ready: make(chan struct{}, 1)}
	l.queue.push(w)
	return w, nil, nil
}

// sleep blocks w until it is granted or its context ends. Whichever waiter
// wakes first at an instant admits every waiter due by then, so a waiter's
// lateness is its own timer's, not a chain of wake-ups.
func (l *Limiter) sleep(w *waiter) (*permit, error) {
	for {
		now := l.lock(l.since())
		if !w.granted {
			if err := w.ctx.Err(); err != nil {
				l.leaveLocked(w, now)
				l.unlock()
				return nil, err
			}
			l.grantReadyLocked(now)
		}
		if w.granted {
			l.unlock()
			return w.permit, nil
		}
		at := l.wakeAtLocked(w, now)
		l.unlock()
		l.pause(w, at, now)
	}
}

// wakeAtLocked returns when the queued w should look again: the head at the
// instant it can go, the others at a lower bound of their turn.
func (l *Limiter) wakeAtLocked(w *waiter, now time.Duration) time.Duration {
	if l.queue.head == w {
		return l.nextLocked(now, w.n)
	}
	return l.earliestLocked(now, l.queue.ahead(w), w.n)
}

// pause blocks until w is woken, the clock reaches at, or w's context ends.
func (l *Limiter) pause(w *waiter, at, now time.Duration) {
	// A waiter with no instant to wait for (behind a permit in flight, or
	// behind the head) waits to be woken.
	var timer Timer
	var fired <-chan time.Time
	if at > now && at != never {
		timer = l.newTimer(at, now)
		fired = timer.C()
	}
	select {
	case <-w.ready:
	case <-fired:
	case <-w.ctx.Done():
	}
	if timer != nil {
		timer.Stop()
	}
}

// newTimer returns a timer that fires when the limiter's clock reaches the
// instant at, which lies after now. A clock that can make a timer for an
// instant (ManualClock) gets the instant itself, so that a clock moved
// between reading now and making the timer cannot make the timer late.
func (l *Limiter) newTimer(at, now time.Duration) Timer {
	if c, ok := l.clock.(TimerAtClock); ok {
		return c.TimerAt(l.epoch.Add(at))
	}
	return l.clock.NewTimer(at - max(now, l.since()))
}

// grantReadyLocked admits, in order, every waiter at the head that the
// rules admit at now, and drops those whose context has ended. It tells
// each one, and tells a new head to compute its turn. l.mu must be held.
func (l *Limiter) grantReadyLocked(now time.Duration) {
	head := l.queue.head
	for w := head; w != nil; w = l.queue.head {
		if w.ctx.Err() == nil {
			if !l.admitsLocked(now, w.n) {
				break
			}
			w.permit = l.grantLocked(now, w.n, w.hold)
			w.granted = true
		}
		l.queue.remove(w)
		w.wake()
	}
	if h := l.queue.head; h != nil && h != head {
		h.wake()
	}
}

// leaveLocked takes w, whose context has ended, out of the queue; when it
// was the head, those behind it may go now. l.mu must be held.
func (l *Limiter) leaveLocked(w *waiter, now time.Duration) {
	if !w.queued {
		return
	}
	wasHead := l.queue.head == w
	l.queue.remove(w)
	if wasHead {
		l.grantReadyLocked(now)
		if h := l.queue.head; h != nil {
			h.wake()
		}
	}
}
