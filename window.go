package limiter

import (
	"fmt"
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
// n + (calls in flight) <= limit. A call of weight k is k equal instants. Instants are durations since the
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

// pop drops the oldest instant.
func (w *window) pop() {
	w.head++
	if w.head == len(w.ring) {
		w.head = 0
	}
	w.n--
}

// expire drops the instants that no longer count at now. Its common case,
// nothing to drop, is small enough to be inlined.
func (w *window) expire(now time.Duration) {
	// now >= 0 and size > 0, so now-size cannot overflow where t+size can.
	if w.n > 0 && w.ring[w.head] <= now-w.size {
		w.drop(now)
	}
}

// drop pops the expired instants and shrinks a ring left mostly empty, at
// once to the size it would reach halving while a quarter full.
func (w *window) drop(now time.Duration) {
	limit, i, n := now-w.size, w.head, w.n
	for n > 0 && w.ring[i] <= limit {
		n--
		if i++; i == len(w.ring) {
			i = 0
		}
	}
	w.head, w.n = i, n
	if w.n == 0 {
		w.head = 0
	}
	c := len(w.ring)
	for c > minRing && w.n <= c/4 {
		c /= 2
	}
	if c < len(w.ring) {
		w.resize(c)
	}
}

// admits reports whether the rule has room for n more calls while held
// calls in flight occupy it. expire(now) must have been called.
func (w *window) admits(held, n int) bool { return w.n+held+n <= w.limit }

// push records k calls at now, which is no earlier than any logged
// instant. The caller has checked that the rule admits them; only after a
// restored snapshot can a call in flight overfill the log, and then the
// oldest instants go: with more than limit calls in the window, only the
// newest limit can decide an admission.
func (w *window) push(now time.Duration, k int) {
	// The common case, small enough to be inlined: one call, and room in
	// the ring, which never holds more than limit.
	if k == 1 && w.n < len(w.ring) {
		i := w.head + w.n
		if i >= len(w.ring) {
			i -= len(w.ring)
		}
		w.ring[i] = now
		w.n++
		return
	}
	w.pushSlow(now, k)
}

func (w *window) pushSlow(now time.Duration, k int) {
	for w.n > 0 && w.n+k > w.limit {
		w.pop()
	}
	if w.n+k > len(w.ring) {
		c := max(2*len(w.ring), minRing, w.n+k)
		w.resize(min(c, w.limit))
	}
	i := w.head + w.n
	if i >= len(w.ring) {
		i -= len(w.ring)
	}
	for range k {
		w.ring[i] = now
		if i++; i == len(w.ring) {
			i = 0
		}
	}
	w.n += k
}

func (w *window) resize(c int) {
	ring := make([]time.Duration, c)
	for i := 0; i < w.n; i++ {
		ring[i] = w.at(i)
	}
	w.ring, w.head = ring, 0
}

// freeAt returns the earliest instant at which the rule admits n more calls
// while held calls in flight occupy it and the log expires as time passes:
// now if it admits them now, never if only a finishing call in flight can
// make room. expire(now) must have been called.
func (w *window) freeAt(now time.Duration, held, n int) time.Duration {
	need := w.n + held + n - w.limit // logged instants that must expire first
	switch {
	case need <= 0:
		return now
	case need <= w.n:
		return addSat(w.at(need-1), w.size)
	default:
		return never
	}
}

// earliest returns a lower bound of the instant at which a call of weight n
// can go after ahead units queued before it, assuming those go first and
// every call in flight is cancelled. Units are then admitted in a sequence
// s where s[k] >= s[k-limit] + size; the logged instants are its start.
// expire(now) must have been called.
func (w *window) earliest(now time.Duration, ahead, n int) time.Duration {
	k := w.n + ahead + n - 1 // index of the call's last unit in the sequence
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

// implies reports whether every call sequence that w admits is one that v
// admits too: limit calls per size allow at most limit*ceil(v.size/size)
// calls in any interval of v.size.
func (w window) implies(v window) bool {
	k := int64((v.size-1)/w.size) + 1
	return int64(w.limit) <= int64(v.limit)/k
}

func (w window) String() string { return fmt.Sprintf("%d per %v", w.limit, w.size) }
