package limiter

import (
	"math"
	"time"
)

// never is the instant of a slot that no passage of time alone can free:
// it waits for an in-flight permit to finish.
const never = time.Duration(math.MaxInt64)

// minRing is the capacity a rule's log starts with and never shrinks below.
const minRing = 8

// window is the sliding log of one rule: at most limit calls in any
// half-open interval of length size. A call admitted at t counts for every
// instant in [t, t+size) and stops counting at exactly t+size.
//
// Invariant: the n instants that still count are in ring[head],
// ring[head+1], ... (indices wrap around), oldest first, and
// n + (calls in flight) <= limit. Instants are durations since the
// Limiter's epoch and never decrease, because the Limiter's clock never
// runs backwards. The ring grows by doubling up to limit and shrinks when
// mostly empty, so its memory follows the calls actually in the window.
type window struct {
	limit int
	size  time.Duration
	ring  []time.Duration
	head  int
	n     int
}

// at returns the i-th oldest instant in the log, 0 <= i < w.n.
func (w *window) at(i int) time.Duration {
	i += w.head
	if i >= len(w.ring) {
		i -= len(w.ring)
	}
	return w.ring[i]
}

// expire drops the instants that no longer count at now.
func (w *window) expire(now time.Duration) {
	for w.n > 0 && addSat(w.ring[w.head], w.size) <= now {
		w.head++
		if w.head == len(w.ring) {
			w.head = 0
		}
		w.n--
	}
	if w.n == 0 {
		w.head = 0
	}
	if len(w.ring) > minRing && w.n <= len(w.ring)/4 {
		w.resize(len(w.ring) / 2)
	}
}

// push records a call at now, which is no earlier than any logged instant.
// The caller has checked that the rule admits it.
func (w *window) push(now time.Duration) {
	if w.n == len(w.ring) {
		c := 2 * len(w.ring)
		if c < minRing {
			c = minRing
		}
		if c > w.limit {
			c = w.limit
		}
		w.resize(c)
	}
	i := w.head + w.n
	if i >= len(w.ring) {
		i -= len(w.ring)
	}
	w.ring[i] = now
	w.n++
}

func (w *window) resize(c int) {
	ring := make([]time.Duration, c)
	for i := 0; i < w.n; i++ {
		ring[i] = w.at(i)
	}
	w.ring, w.head = ring, 0
}

// freeAt returns the earliest instant at which the rule admits one more call
// while inflight calls hold slots and the log expires as time passes: now
// if it admits one now, never if only a finishing in-flight call can make
// room. expire(now) must have been called.
func (w *window) freeAt(now time.Duration, inflight int) time.Duration {
	need := w.n + inflight + 1 - w.limit // logged instants that must expire first
	switch {
	case need <= 0:
		return now
	case need <= w.n:
		return addSat(w.at(need-1), w.size)
	default:
		return never
	}
}

// earliest returns a lower bound of the instant at which the call that has
// ahead admissions before it can be admitted by this rule, assuming those
// go first and every in-flight call is cancelled. Calls are then admitted
// in a sequence s where s[k] >= s[k-limit] + size; the logged instants are
// its start. expire(now) must have been called.
func (w *window) earliest(now time.Duration, ahead int) time.Duration {
	k := w.n + ahead // index of this call in the sequence
	if k < w.limit {
		return now
	}
	rounds, i := k/w.limit, k%w.limit
	base := now
	if i < w.n {
		base = w.at(i)
	}
	if rounds > 0 && w.size > (never-base)/time.Duration(rounds) {
		return never
	}
	return base + time.Duration(rounds)*w.size
}

// addSat returns a+b for b >= 0, saturating at never.
func addSat(a, b time.Duration) time.Duration {
	if a > never-b {
		return never
	}
	return a + b
}
