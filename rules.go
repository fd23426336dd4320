package limiter

import (
	"fmt"
	"time"
)

// rules is the set of rules of one Limiter: sliding windows and leaky
// buckets. A call of weight n goes when every rule admits n more at once.
// Calls in flight (held) occupy room in every rule until they end.
//
// Its methods require the Limiter's mutex, and expire(now) to have been
// called for the now they are given.
type rules struct {
	windows []window // windows[0] is the rule given to New
	buckets []bucket
}

func (rs rules) clone() rules {
	return rules{
		windows: append([]window(nil), rs.windows...),
		buckets: append([]bucket(nil), rs.buckets...),
	}
}

// expire drops the window entries that no longer count at now.
func (rs *rules) expire(now time.Duration) {
	for i := range rs.windows {
		rs.windows[i].expire(now)
	}
}

// admits reports whether every rule has room for n more calls at now.
func (rs *rules) admits(now time.Duration, held, n int) bool {
	for i := range rs.windows {
		if !rs.windows[i].admits(held, n) {
			return false
		}
	}
	for i := range rs.buckets {
		if rs.buckets[i].freeAt(now, held, n) > now {
			return false
		}
	}
	return true
}

// freeAt returns the earliest instant, not before now, at which every rule
// admits n more calls if no call in flight ends: never if only an ending
// call can make room.
func (rs *rules) freeAt(now time.Duration, held, n int) time.Duration {
	at := now
	for i := range rs.windows {
		at = max(at, rs.windows[i].freeAt(now, held, n))
	}
	for i := range rs.buckets {
		at = max(at, rs.buckets[i].freeAt(now, held, n))
	}
	return at
}

// record counts n calls made at now in every rule.
func (rs *rules) record(now time.Duration, n int) {
	for i := range rs.windows {
		rs.windows[i].push(now, n)
	}
	for i := range rs.buckets {
		rs.buckets[i].push(now, n)
	}
}

// empty reports whether no call counts in any rule at now.
func (rs *rules) empty(now time.Duration) bool {
	for i := range rs.windows {
		if rs.windows[i].n > 0 {
			return false
		}
	}
	for i := range rs.buckets {
		if rs.buckets[i].tat > now {
			return false
		}
	}
	return true
}

// maxWeight returns the heaviest call that the rules can ever admit.
func (rs *rules) maxWeight() int {
	m := rs.windows[0].limit
	for i := range rs.windows {
		m = min(m, rs.windows[i].limit)
	}
	for i := range rs.buckets {
		m = min(m, rs.buckets[i].burst)
	}
	return m
}

// checkWeight returns an error for a weight that the rules, which admit at
// most m at once, can never admit.
func checkWeight(n, m int) error {
	if n < 1 {
		return fmt.Errorf("limiter: weight must be at least 1, got %d", n)
	}
	if n > m {
		return fmt.Errorf("limiter: weight %d exceeds %d, the most the rules ever admit at once", n, m)
	}
	return nil
}

// maxReplay bounds the calls for which earliest replays several rules
// together; past it, it takes each rule's own bound.
const maxReplay = 1024

// earliest returns a lower bound of the instant at which a call of weight n
// can go after ahead units of calls queued before it, assuming they all go
// first and every call in flight is cancelled.
func (rs *rules) earliest(now time.Duration, ahead, n int) time.Duration {
	if len(rs.windows)+len(rs.buckets) == 1 || ahead+n > maxReplay {
		at := now
		for i := range rs.windows {
			at = max(at, rs.windows[i].earliest(now, ahead, n))
		}
		for i := range rs.buckets {
			at = max(at, rs.buckets[i].earliest(now, ahead, n))
		}
		return at
	}
	return rs.replay(now, ahead+n)
}

// replay admits units one call of weight 1 each, every one as early as all
// rules allow, and returns the instant of the last. One rule's delays push
// the others', so this bound is tighter than each rule's own. It is a lower
// bound for calls of any weights: a call of weight n puts n units at one
// instant, which is one of the schedules the greedy replay beats.
func (rs *rules) replay(now time.Duration, units int) time.Duration {
	sim := make([]time.Duration, 0, units)
	tats := make([]time.Duration, len(rs.buckets))
	for i := range rs.buckets {
		tats[i] = max(rs.buckets[i].tat, now)
	}
	for j := range units {
		a := now
		for i := range rs.windows {
			// The j-th new unit is entry n+j of a rule whose log holds
			// n, and waits for entry n+j-limit to leave.
			w := &rs.windows[i]
			switch k := w.n + j - w.limit; {
			case k < 0:
			case k < w.n:
				a = max(a, addSat(w.at(k), w.size))
			default:
				a = max(a, addSat(sim[k-w.n], w.size))
			}
		}
		for i := range rs.buckets {
			b := &rs.buckets[i]
			a = max(a, tats[i]-mulSat(b.burst-1, b.every))
		}
		for i := range rs.buckets {
			tats[i] = addSat(max(tats[i], a), rs.buckets[i].every)
		}
		sim = append(sim, a)
	}
	return sim[units-1]
}

// mulSat returns n*d for n, d >= 0, saturating at never.
func mulSat(n int, d time.Duration) time.Duration {
	if n <= 0 || d <= 0 {
		return 0
	}
	if d > never/time.Duration(n) {
		return never
	}
	return time.Duration(n) * d
}

// addSat returns a+b for b >= 0, saturating at never.
func addSat(a, b time.Duration) time.Duration {
	if a > never-b {
		return never
	}
	return a + b
}
