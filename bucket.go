package limiter

import (
	"fmt"
	"time"
)

// bucket is a leaky-bucket rule: it holds the calls it admitted and drains
// one each every, continuously; it admits a call when, drained, it holds at
// most burst-1. So it admits burst calls at once, and a full bucket admits
// its next call exactly every later. This is nginx's limit_req (whose
// burst=B admits B+1 at once), Envoy's and redis_rate's shape.
//
// Invariant: the bucket is empty at the instant tat (the "theoretical
// arrival time" of the generic cell rate algorithm), and holds
// (tat-now)/every calls before it; tat only grows. It holds no log, so its
// memory is constant and every method is O(1) and exact to the nanosecond.
type bucket struct {
	burst int
	every time.Duration
	tat   time.Duration
}

// freeAt returns the earliest instant, not before now, at which the bucket
// admits n more calls while held calls in flight occupy it; never if it
// cannot hold them all.
func (b *bucket) freeAt(now time.Duration, held, n int) time.Duration {
	room := b.burst - held - n // calls that may still be in the bucket
	if room < 0 {
		return never
	}
	return max(now, b.tat-mulSat(room, b.every))
}

// push pours n calls made at now into the bucket.
func (b *bucket) push(now time.Duration, n int) {
	b.tat = addSat(max(b.tat, now), mulSat(n, b.every))
}

// earliest returns a lower bound of the instant at which a call of weight n
// can go after ahead units queued before it, if every call in flight is
// cancelled.
func (b *bucket) earliest(now time.Duration, ahead, n int) time.Duration {
	tat := addSat(max(b.tat, now), mulSat(ahead, b.every))
	return max(now, tat-mulSat(b.burst-n, b.every))
}

// implies reports whether every call sequence that b admits is one that c
// admits too: b is at least as tight as c.
func (b bucket) implies(c bucket) bool { return b.burst <= c.burst && b.every >= c.every }

func (b bucket) String() string { return fmt.Sprintf("bucket of %d, one per %v", b.burst, b.every) }
